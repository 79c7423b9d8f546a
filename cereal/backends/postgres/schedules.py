"""The schedule operations of the PostgreSQL driver: primitive reads and writes only.

Parsing rules and computing due times is the core's job (:mod:`cereal.schedules`); here
every time comes from the database clock (``now()``), so due checks and the core's maths of
the next occurrence share one clock, whichever machine runs the manager.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import LiteralString

from psycopg.rows import dict_row

from cereal.backends.postgres import notify
from cereal.backends.postgres.connections import Connection, Connections
from cereal.backends.postgres.jsonb import Undecodable, use_lenient_jsonb
from cereal.backends.postgres.rows import dumps, schedule
from cereal.driver import DueRun, ScheduleChange, SchedulesChanged, StoredSchedule
from cereal.types import Schedule

__all__ = ["ScheduleStatements"]

_CHANGED = notify.encode(SchedulesChanged())


class ScheduleStatements:
    """Schedule rows of one schema; every write announces :class:`SchedulesChanged`."""

    def __init__(
        self, connections: Connections, queries: dict[str, LiteralString], channel: str
    ) -> None:
        self._connections = connections
        self._q = queries
        self._channel = channel

    def now(self) -> datetime:
        with self._connections.connection() as conn:
            return _now(conn, self._q)

    def insert(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        recurrence: str,
        enabled: bool,
        next_due_at: datetime | None,
    ) -> bool:
        with self._connections.connection() as conn, conn.transaction():
            row = conn.execute(
                self._q["insert_schedule"],
                {
                    "workflow_name": workflow_name,
                    "instance_name": instance_name,
                    "parameters": parameters_json,
                    "recurrence": recurrence,
                    "enabled": enabled,
                    "next_due_at": next_due_at,
                },
            ).fetchone()
            if row is None:
                return False
            self._announce(conn)
        return True

    def update(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        with self._connections.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(
                self._q["lock_schedule"],
                {"workflow_name": workflow_name, "instance_name": instance_name},
            ).fetchone()
            if row is None:
                return False
            stored = StoredSchedule(
                parameters_json=dumps(row["parameters"]),
                recurrence=row["recurrence"],
                enabled=row["enabled"],
                next_due_at=row["next_due_at"],
            )
            new = change(stored, _now(conn, self._q))
            conn.execute(
                self._q["update_schedule"],
                {
                    "id": row["id"],
                    "parameters": new.parameters_json,
                    "recurrence": new.recurrence,
                    "enabled": new.enabled,
                    "next_due_at": new.next_due_at,
                },
            )
            self._announce(conn)
        return True

    def delete(self, workflow_name: str, instance_name: str) -> bool:
        with self._connections.connection() as conn, conn.transaction():
            row = conn.execute(
                self._q["delete_schedule"],
                {"workflow_name": workflow_name, "instance_name": instance_name},
            ).fetchone()
            if row is None:
                return False
            self._announce(conn)
        return True

    def select(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        with self._connections.connection() as conn:
            rows = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    self._q["select_schedules"],
                    {"workflow_name": workflow_name, "instance_name": instance_name},
                )
                .fetchall()
            )
        return [schedule(r) for r in rows]

    def run_due(
        self,
        next_due: Callable[[str, datetime], datetime | None],
        trace_context: str | None = None,
    ) -> DueRun | None:
        """Handle the most overdue schedule in one transaction; None when nothing is due.

        Enqueues the instance unless the previous run is still live (that occurrence is then
        skipped), and moves ``next_due_at`` to ``next_due(recurrence, now)``: missed
        occurrences collapse into this one run. A stored row this process cannot use
        (undecodable parameters, a rule ``next_due`` rejects) disables its schedule once
        instead of failing every scheduler pass.
        """
        with self._connections.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            use_lenient_jsonb(cur.adapters)
            row = cur.execute(self._q["lock_due_schedule"]).fetchone()
            if row is None:
                return None
            workflow_name, instance_name = row["workflow_name"], row["instance_name"]
            params, text, due_at, now = (
                row["parameters"],
                row["recurrence"],
                row["due_at"],
                row["now"],
            )
            try:
                if isinstance(params, Undecodable):
                    raise ValueError(f"stored parameters cannot be decoded: {params.error}")
                following = next_due(text, now)
            except (ValueError, ArithmeticError, TypeError) as exc:  # InvalidScheduleError too
                conn.execute(self._q["disable_schedule"], {"id": row["id"]})
                return DueRun(workflow_name, instance_name, due_at, now, False, None, str(exc))
            enqueued = bool(
                conn.execute(
                    self._q["enqueue_workflow"],
                    {
                        "workflow_name": workflow_name,
                        "instance_name": instance_name,
                        "parameters": dumps(params),
                        "trace_context": trace_context,
                        "channel": self._channel,
                    },
                ).fetchall()
            )
            conn.execute(
                self._q["schedule_ran"],
                {
                    "id": row["id"],
                    "next_due_at": following,
                    "enabled": following is not None,
                    "enqueued": enqueued,
                },
            )
            return DueRun(workflow_name, instance_name, due_at, now, enqueued, following)

    def seconds_until_next(self) -> float | None:
        with self._connections.connection() as conn:
            row = conn.cursor(row_factory=dict_row).execute(self._q["next_schedule_in"]).fetchone()
        return None if row is None or row["seconds"] is None else float(row["seconds"])

    def _announce(self, conn: Connection) -> None:
        conn.execute(self._q["notify"], {"channel": self._channel, "payloads": [_CHANGED]})


def _now(conn: Connection, queries: dict[str, LiteralString]) -> datetime:
    row = conn.cursor(row_factory=dict_row).execute(queries["db_now"]).fetchone()
    assert row is not None
    value: datetime = row["now"]
    return value
