"""Recurring workflow schedules: the :class:`Schedule` view and the manager's operations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dateutil.rrule import rrule, rruleset

from cereal.backends.postgres.schedule_store import PostgresScheduleStore, ScheduleRow
from cereal.codec import check_name, encode
from cereal.errors import CerealError, WorkflowScheduleNotFoundError
from cereal.recurrence import load_recurrence, parse_recurrence

if TYPE_CHECKING:
    from cereal.backends.postgres.driver import PostgresDriver
    from cereal.services.scheduler import Scheduler

__all__ = ["UNCHANGED", "Schedule", "ScheduleOperations"]


RecurrenceInput = str | rrule | rruleset


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()
"""Default of ``update_workflow_schedule(parameters=...)``: keep the stored parameters."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring schedule as stored.

    ``recurrence`` is RFC 5545 text that round-trips exactly (time zone included).
    ``next_due_at`` is None once the rule has run out. ``last_start``/``last_end`` come from
    the latest finished run of the schedule's instance.
    """

    workflow_name: str
    instance_name: str
    parameters: Any
    recurrence: str
    enabled: bool
    next_due_at: datetime | None
    last_enqueued_at: datetime | None
    last_start: datetime | None
    last_end: datetime | None

    def next_occurrences(self, n: int, after: datetime | None = None) -> list[datetime]:
        """The next ``n`` occurrences (UTC) at or after ``after`` (default: now)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise CerealError(f"n must be a non-negative int, got {n!r}")
        start = datetime.now(UTC) if after is None else after
        return load_recurrence(self.recurrence).occurrences_after(start, n)

    @classmethod
    def _from_row(cls, row: ScheduleRow) -> Schedule:
        return cls(
            workflow_name=row.workflow_name,
            instance_name=row.instance_name,
            parameters=row.parameters,
            recurrence=row.recurrence,
            enabled=row.enabled,
            next_due_at=row.next_due_at,
            last_enqueued_at=row.last_enqueued_at,
            last_start=row.last_start,
            last_end=row.last_end,
        )


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
            lambda now: parse_recurrence(recurrence, now=now),
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
            parse=None
            if recurrence is None
            else (lambda now: parse_recurrence(recurrence, now=now)),
            load=load_recurrence,
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
        return Schedule._from_row(rows[0])

    def list_workflow_schedules(self) -> list[Schedule]:
        """Every schedule, enabled or not, ordered by workflow and instance name."""
        return [Schedule._from_row(r) for r in self._schedules.select()]

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


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise CerealError(f"{name} must be a bool, got {value!r}")
    return value
