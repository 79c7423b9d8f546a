"""Recurring workflow schedules: the :class:`Schedule` view and the manager's operations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from dateutil.rrule import rrule, rruleset

from cereal.checks import first_due, schedule_change, schedule_exists, schedule_not_found
from cereal.codec import check_name, encode
from cereal.config import flag
from cereal.driver import ScheduleChange, StoredSchedule
from cereal.errors import (
    CerealError,
    InvalidScheduleError,
)
from cereal.recurrence import Recurrence, load_recurrence, parse_recurrence
from cereal.types import Schedule

if TYPE_CHECKING:
    from cereal.driver import Driver

__all__ = ["UNCHANGED", "Schedule", "ScheduleOperations", "next_due_after"]


RecurrenceInput = str | rrule | rruleset
T = TypeVar("T")


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()
"""Default of ``update_workflow_schedule(parameters=...)``: keep the stored parameters."""


class ScheduleOperations:
    """The schedule methods of :class:`cereal.Manager` (usable without ``start()``).

    Rules are parsed and next runs computed here, on the driver's clock; the driver only
    stores schedules (:meth:`~cereal.driver.Driver.update_schedule` runs the change under
    the schedule's row lock).
    """

    driver: Driver

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
        enabled = flag("enabled", enabled)
        now = self.driver.now()
        rule = _parse(recurrence, now)
        next_due = first_due(rule, now)
        if not self.driver.insert_schedule(
            workflow_name, instance_name, params, rule.text, enabled, next_due
        ):
            raise schedule_exists(workflow_name, instance_name)

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
        if enabled is not None:
            enabled = flag("enabled", enabled)

        def change(stored: StoredSchedule, now: datetime) -> ScheduleChange:
            return schedule_change(
                workflow_name,
                instance_name,
                stored,
                now,
                enabled=enabled,
                parameters_json=params,
                set_parameters=set_params,
                parse=None if recurrence is None else (lambda at: _parse(recurrence, at)),
                load=_load,
            )

        if not self.driver.update_schedule(workflow_name, instance_name, change):
            raise schedule_not_found(workflow_name, instance_name)

    def get_workflow_schedule(self, workflow_name: str, instance_name: str) -> Schedule:
        """The schedule of this pair; :class:`WorkflowScheduleNotFoundError` if none."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        rows = self.driver.list_schedules(workflow_name, instance_name)
        if not rows:
            raise schedule_not_found(workflow_name, instance_name)
        return rows[0]

    def list_workflow_schedules(self) -> list[Schedule]:
        """Every schedule, enabled or not, ordered by workflow and instance name."""
        return self.driver.list_schedules()

    def delete_workflow_schedule(self, workflow_name: str, instance_name: str) -> None:
        """Remove a schedule (a run it already enqueued goes on)."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        if not self.driver.delete_schedule(workflow_name, instance_name):
            raise schedule_not_found(workflow_name, instance_name)


def next_due_after(recurrence: str, now: datetime) -> datetime | None:
    """The first occurrence of stored ``recurrence`` strictly after ``now`` (None: it ran
    out); what the scheduler moves a schedule to after running it. Missed occurrences
    collapse into the run that just happened."""
    return load_recurrence(recurrence).next_after(now, inclusive=False)


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
