"""Recurring workflow schedules: the :class:`Schedule` view and the manager's operations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from dateutil.rrule import rrule, rruleset

from cereal.backends.postgres.schedule_store import PostgresScheduleStore
from cereal.codec import check_name, encode
from cereal.errors import CerealError, InvalidScheduleError, WorkflowScheduleNotFoundError
from cereal.recurrence import Recurrence, load_recurrence, parse_recurrence
from cereal.types import Schedule

if TYPE_CHECKING:
    from cereal.backends.postgres.driver import PostgresDriver
    from cereal.services.scheduler import Scheduler

__all__ = ["UNCHANGED", "Schedule", "ScheduleOperations"]


RecurrenceInput = str | rrule | rruleset
T = TypeVar("T")


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()
"""Default of ``update_workflow_schedule(parameters=...)``: keep the stored parameters."""


class ScheduleOperations:
    """The schedule methods of :class:`cereal.Manager` (usable without ``start()``)."""

    driver: PostgresDriver

    @property
    def _schedules(self) -> PostgresScheduleStore:
        return PostgresScheduleStore(self.driver)

    def create_workflow_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters: Any = None,
        *,
        recurrence: RecurrenceInput,
        enabled: bool = True,
    ) -> None:
        """Enqueue ``(workflow_name, instance_name)`` with ``parameters`` at every occurrence
        of ``recurrence``: RFC 5545 text (``DTSTART[;TZID=...]:...`` plus ``RRULE:...``,
        optionally ``RDATE``/``EXDATE``) or a ``dateutil`` ``rrule``/``rruleset``.

        Raises :class:`WorkflowScheduleExistsError` for a duplicate pair and
        :class:`InvalidScheduleError` for a rule that does not parse or never occurs again.
        """
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        params = encode(parameters, f"parameters of schedule {workflow_name!r}")
        self._schedules.create(
            workflow_name,
            instance_name,
            params,
            lambda now: _parse(recurrence, now),
            _flag("enabled", enabled),
        )

    def update_workflow_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        *,
        enabled: bool | None = None,
        parameters: Any = UNCHANGED,
        recurrence: RecurrenceInput | None = None,
    ) -> None:
        """Change a schedule atomically. A new ``recurrence`` or re-enabling recomputes the
        next run from now (a stale occurrence is never fired); a rule with no occurrence
        left is rejected with :class:`InvalidScheduleError`."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        set_params = parameters is not UNCHANGED
        params = (
            encode(parameters, f"parameters of schedule {workflow_name!r}") if set_params else None
        )
        self._schedules.update(
            workflow_name,
            instance_name,
            enabled=None if enabled is None else _flag("enabled", enabled),
            parameters_json=params,
            set_parameters=set_params,
            parse=None if recurrence is None else (lambda now: _parse(recurrence, now)),
            load=_load,
        )

    def get_workflow_schedule(self, workflow_name: str, instance_name: str) -> Schedule:
        """The schedule of this pair; :class:`WorkflowScheduleNotFoundError` if none."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        rows = self._schedules.select(workflow_name, instance_name)
        if not rows:
            raise WorkflowScheduleNotFoundError(
                f"workflow schedule {workflow_name!r}/{instance_name!r} not found"
            )
        return rows[0]

    def list_workflow_schedules(self) -> list[Schedule]:
        """Every schedule, enabled or not, ordered by workflow and instance name."""
        return self._schedules.select()

    def delete_workflow_schedule(self, workflow_name: str, instance_name: str) -> None:
        """Remove a schedule (a run it already enqueued goes on)."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        self._schedules.delete(workflow_name, instance_name)

    def _make_scheduler(self) -> Scheduler:
        from cereal.services.scheduler import Scheduler

        return Scheduler(self._schedules, on_enqueued=self._on_schedule_enqueued)

    def _on_schedule_enqueued(self, workflow_name: str) -> None:
        """Hook for the manager to wake its event loop."""


def _checked(recurrence: object, evaluate: Callable[[], T]) -> T:
    """Run ``evaluate``: any failure to make sense of ``recurrence`` is an
    :class:`InvalidScheduleError` naming it, never a stray ``ValueError`` or ``OverflowError``."""
    try:
        return evaluate()
    except CerealError:
        raise
    except (ValueError, ArithmeticError, TypeError) as exc:
        raise InvalidScheduleError(f"invalid recurrence {recurrence!r}: {exc}") from exc


def _parse(recurrence: RecurrenceInput, now: datetime) -> Recurrence:
    return _checked(recurrence, lambda: parse_recurrence(recurrence, now=now))


def _load(text: str) -> Recurrence:
    return _checked(text, lambda: load_recurrence(text))


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise CerealError(f"{name} must be a bool, got {value!r}")
    return value
