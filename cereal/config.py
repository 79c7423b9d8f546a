"""Options, their checks, and the default driver.

:class:`ManagerConfig` holds every option of :class:`cereal.Manager` with its default. The
small set of checks below (:func:`seconds`, :func:`optional_seconds`, :func:`count`,
:func:`optional_count`, :func:`flag`) validates options everywhere in
cereal, so that a bad value always gets the same clear error naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cereal.errors import CerealError

if TYPE_CHECKING:
    from cereal.driver import Driver
    from cereal.types import WorkflowInstanceInfo

__all__ = [
    "MAX_SECONDS",
    "ManagerConfig",
    "count",
    "default_driver",
    "flag",
    "optional_count",
    "optional_seconds",
    "seconds",
]

MAX_SECONDS = 100 * 365 * 86400.0
"""Longest accepted time option: beyond it, waits and deadlines overflow."""


def seconds(
    name: str,
    value: object,
    *,
    maximum: float = MAX_SECONDS,
    error: type[Exception] = CerealError,
    zero: bool = False,
) -> float:
    """``value`` as a float if it is a positive number of seconds up to ``maximum`` (or 0,
    with ``zero``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not ((value >= 0 if zero else value > 0) and value <= maximum)  # NaN, inf too
    ):
        kind = "a number of seconds from 0" if zero else "a positive number of seconds"
        raise error(f"{name} must be {kind} (at most {maximum:g}), got {value!r}")
    return float(value)


def optional_seconds(name: str, value: object, *, maximum: float = MAX_SECONDS) -> float | None:
    """None, or ``value`` checked by :func:`seconds`."""
    return None if value is None else seconds(name, value, maximum=maximum)


def count(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    error: type[Exception] = CerealError,
    or_none: bool = False,
) -> int:
    """``value`` if it is an int (not a bool) from ``minimum`` to ``maximum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        least = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        most = "" if maximum is None else f" (at most {maximum})"
        alternative = " or None" if or_none else ""
        raise error(f"{name} must be {least}{most}{alternative}, got {value!r}")
    return value


def optional_count(name: str, value: object, *, minimum: int = 0) -> int | None:
    """None, or ``value`` checked by :func:`count`."""
    if value is None:
        return None
    return count(name, value, minimum=minimum, or_none=True)


def flag(name: str, value: object) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise CerealError(f"{name} must be a bool, got {value!r}")
    return value


def _callback(name: str, value: object) -> Any:
    if value is not None and not callable(value):
        raise CerealError(f"{name} must be callable or None, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    """Every option of :class:`cereal.Manager` (times in seconds), checked on creation.

    Polling is only a fallback: wakeups from the driver (LISTEN/NOTIFY on PostgreSQL) rouse
    the right part as soon as any process enqueues, completes, cancels or kills.
    """

    workflow_poll_interval: float = 5.0
    """How often idle workflow-event handlers look for events nobody announced."""
    task_poll_interval: float = 5.0
    """How often an idle task claimer looks for tasks nobody announced."""
    workflow_workers: int = 4
    """Workflow events handled concurrently (one instance's events never are)."""
    heartbeat_interval: float = 5.0
    """How often running tasks' heartbeats are refreshed."""
    lost_task_timeout: float = 30.0
    """Heartbeat silence after which a running task is reported ``LOST`` (must exceed
    ``heartbeat_interval``)."""
    scheduler: bool = True
    """Run the recurring-schedule loop in this manager (any value is taken as a truth)."""
    on_workflow_complete: Callable[[WorkflowInstanceInfo], Any] | None = None
    """Called with the :class:`~cereal.types.WorkflowInstanceInfo` of each run this manager
    finishes; its exceptions are logged."""
    event_batch_size: int = 128
    """Most instances claimed in one event-handling transaction."""
    history_max_age: float | None = 30 * 86400.0
    """Finished runs older than this are pruned (None keeps them forever)."""
    history_max_runs: int | None = None
    """Keep at most this many finished runs (None: no limit)."""
    history_prune_interval: float = 60.0
    """How often finished runs are pruned."""
    eager_start: bool = False
    """:meth:`~cereal.Manager.enqueue_workflow` of a workflow this manager handles runs
    ``on_start`` in the calling thread and commits the new instance, the decision and the
    first tasks (claimed for this manager's free workers) in one transaction: the tasks start
    without a claim round trip. The call returns once that commit is made."""
    close_driver: bool | None = None
    """Close the driver at :meth:`~cereal.Manager.stop` (default: only the one the manager
    built itself)."""

    def __post_init__(self) -> None:
        checked: dict[str, Callable[[str, object], object]] = {
            "workflow_poll_interval": seconds,
            "task_poll_interval": seconds,
            "heartbeat_interval": seconds,
            "lost_task_timeout": seconds,
            "history_prune_interval": seconds,
            "history_max_age": optional_seconds,
            "workflow_workers": count,
            "event_batch_size": count,
            "history_max_runs": optional_count,
            "on_workflow_complete": _callback,
        }
        for name, check in checked.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        object.__setattr__(self, "scheduler", bool(self.scheduler))
        object.__setattr__(self, "eager_start", flag("eager_start", self.eager_start))
        if self.close_driver is not None:
            object.__setattr__(self, "close_driver", bool(self.close_driver))
        if self.lost_task_timeout <= self.heartbeat_interval:
            raise CerealError(
                f"lost_task_timeout ({self.lost_task_timeout!r}) must be longer than "
                f"heartbeat_interval ({self.heartbeat_interval!r})"
            )

    @classmethod
    def from_options(cls, **options: Any) -> ManagerConfig:
        """Build a config from keyword options; unknown ones raise :class:`CerealError`
        naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise CerealError(f"unknown Manager option(s): {', '.join(unknown)}")
        return cls(**options)


def default_driver(dsn: str | None = None, **options: Any) -> Driver:
    """The driver used when none is given: PostgreSQL, at ``dsn`` or ``CEREAL_DATABASE_URL``
    (or an embedded server), in the schema ``options["schema"]``, else ``CEREAL_SCHEMA``, else
    ``cereal``. Imported here, lazily, so ``import cereal`` loads no backend."""
    from cereal.backends.postgres import PostgresDriver

    if "schema" not in options and os.environ.get("CEREAL_SCHEMA"):
        options["schema"] = os.environ["CEREAL_SCHEMA"]
    return PostgresDriver(dsn, **options)
