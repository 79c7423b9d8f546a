"""Schedule storage: create, update, read and run recurring schedules in PostgreSQL.

Every time used here comes from the database (``now()``), so due checks and the maths of
the next occurrence share one clock, whichever machine runs the manager.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cereal.backends.postgres.jsonb import Undecodable, use_lenient_jsonb
from cereal.errors import (
    InvalidScheduleError,
    WorkflowScheduleExistsError,
    WorkflowScheduleNotFoundError,
)
from cereal.logging import get_logger
from cereal.recurrence import Recurrence
from cereal.types import Schedule

if TYPE_CHECKING:
    from cereal.backends.postgres.driver import Connection, PostgresDriver

__all__ = ["DueRun", "PostgresScheduleStore"]

log = get_logger("cereal.scheduler")
Parse = Callable[[datetime], Recurrence]


@dataclass(frozen=True, slots=True)
class DueRun:
    """What happened to one due schedule."""

    workflow_name: str
    instance_name: str
    due_at: datetime
    ran_at: datetime
    enqueued: bool
    next_due_at: datetime | None


def _pair(workflow_name: str, instance_name: str) -> str:
    return f"{workflow_name!r}/{instance_name!r}"


class PostgresScheduleStore:
    """The schedule half of :class:`~cereal.backends.postgres.PostgresDriver`."""

    def __init__(self, driver: PostgresDriver) -> None:
        self._driver = driver
        self._q = driver.query

    def create(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        parse: Parse,
        enabled: bool,
    ) -> None:
        with self._driver.connection() as conn, conn.transaction():
            now = self._now(conn)
            rule = parse(now)
            next_due = rule.next_after(now, inclusive=True)
            if next_due is None:
                raise InvalidScheduleError(
                    f"recurrence has no occurrence at or after {now.isoformat()}: {rule.text!r}"
                )
            row = conn.execute(
                self._q("insert_schedule"),
                {
                    "workflow_name": workflow_name,
                    "instance_name": instance_name,
                    "parameters": parameters_json,
                    "recurrence": rule.text,
                    "enabled": enabled,
                    "next_due_at": next_due,
                },
            ).fetchone()
            if row is None:
                raise WorkflowScheduleExistsError(
                    f"workflow schedule {_pair(workflow_name, instance_name)} already exists"
                )
            self._notify(conn)

    def update(
        self,
        workflow_name: str,
        instance_name: str,
        *,
        enabled: bool | None,
        parameters_json: str | None,
        set_parameters: bool,
        parse: Parse | None,
        load: Callable[[str], Recurrence],
    ) -> None:
        """Change a schedule atomically; a new rule or a re-enable recomputes the next run."""
        with self._driver.connection() as conn, conn.transaction():
            row = conn.execute(
                self._q("lock_schedule"),
                {"workflow_name": workflow_name, "instance_name": instance_name},
            ).fetchone()
            if row is None:
                raise WorkflowScheduleNotFoundError(
                    f"workflow schedule {_pair(workflow_name, instance_name)} not found"
                )
            sched_id, params, text, was_enabled, next_due = row
            now = self._now(conn)
            new_enabled = was_enabled if enabled is None else enabled
            if parse is not None or (new_enabled and not was_enabled):
                rule = parse(now) if parse is not None else load(text)
                text = rule.text
                next_due = rule.next_after(now, inclusive=True)
                if next_due is None:
                    raise InvalidScheduleError(
                        f"recurrence has no occurrence at or after {now.isoformat()}, so "
                        f"schedule {_pair(workflow_name, instance_name)} cannot run again: "
                        f"{text!r}"
                    )
            conn.execute(
                self._q("update_schedule"),
                {
                    "id": sched_id,
                    "parameters": parameters_json if set_parameters else _json(params),
                    "recurrence": text,
                    "enabled": new_enabled,
                    "next_due_at": next_due,
                },
            )
            self._notify(conn)

    def delete(self, workflow_name: str, instance_name: str) -> None:
        with self._driver.connection() as conn, conn.transaction():
            row = conn.execute(
                self._q("delete_schedule"),
                {"workflow_name": workflow_name, "instance_name": instance_name},
            ).fetchone()
            if row is None:
                raise WorkflowScheduleNotFoundError(
                    f"workflow schedule {_pair(workflow_name, instance_name)} not found"
                )
            self._notify(conn)

    def select(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        with self._driver.connection() as conn:
            rows = conn.execute(
                self._q("select_schedules"),
                {"workflow_name": workflow_name, "instance_name": instance_name},
            ).fetchall()
        return [Schedule(*r) for r in rows]

    def run_next_due(self, load: Callable[[str], Recurrence]) -> DueRun | None:
        """Handle the most overdue schedule in one transaction; None when nothing is due.

        Enqueues the instance unless the previous run is still live (that occurrence is then
        skipped), and moves ``next_due_at`` to the first occurrence after now: missed
        occurrences collapse into this one run. A rule that ran out disables the schedule.
        """
        with self._driver.connection() as conn, conn.transaction():
            cur = conn.cursor()
            use_lenient_jsonb(cur.adapters)  # undecodable parameters disable the schedule
            row = cur.execute(self._q("lock_due_schedule")).fetchone()
            if row is None:
                return None
            sched_id, workflow_name, instance_name, params, text, due_at, now = row
            # A stored row this process cannot use (edited by hand, written by another
            # version) disables its schedule once instead of failing every scheduler pass.
            try:
                if isinstance(params, Undecodable):
                    raise ValueError(f"stored parameters cannot be decoded: {params.error}")
                next_due = load(text).next_after(now, inclusive=False)
            except (ValueError, ArithmeticError, TypeError) as exc:  # InvalidScheduleError too
                log.error(
                    "disabling schedule that cannot run",
                    workflow=workflow_name,
                    instance=instance_name,
                    recurrence=text,
                    error=str(exc),
                )
                conn.execute(self._q("disable_schedule"), {"id": sched_id})
                return DueRun(workflow_name, instance_name, due_at, now, False, None)
            enqueued = bool(
                conn.execute(
                    self._q("enqueue_workflow"),
                    {
                        "workflow_name": workflow_name,
                        "instance_name": instance_name,
                        "parameters": _json(params),
                        "channel": self._driver.channel,
                    },
                ).fetchall()
            )
            conn.execute(
                self._q("schedule_ran"),
                {
                    "id": sched_id,
                    "next_due_at": next_due,
                    "enabled": next_due is not None,
                    "enqueued": enqueued,
                },
            )
            return DueRun(workflow_name, instance_name, due_at, now, enqueued, next_due)

    def seconds_until_next(self) -> float | None:
        """Seconds until the earliest enabled schedule is due (None without any)."""
        with self._driver.connection() as conn:
            row = conn.execute(self._q("next_schedule_in")).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def _now(self, conn: Connection) -> datetime:
        row = conn.execute(self._q("db_now")).fetchone()
        assert row is not None
        value: datetime = row[0]
        return value

    def _notify(self, conn: Connection) -> None:
        conn.execute(self._q("notify"), {"channel": self._driver.channel, "payloads": ["s"]})


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))
