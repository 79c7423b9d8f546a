"""Read-only views behind the dashboard and the metrics: counts, failures, instance timelines.

The statements live in ``overview.sql`` (the task listing and schema checks are in
``operator_views.py``). Everything here only reads, so a dashboard or a
metrics scrape never takes a lock that workers wait for.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, LiteralString, cast

import psycopg

from cereal.backends.postgres.jsonb import Undecodable, use_lenient_jsonb
from cereal.driver import InstanceTimeline, Overview, TaskCount, TaskInfo, TimelineEvent
from cereal.errors import CerealError, DatabaseError
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.backends.postgres.driver import PostgresDriver

__all__ = [
    "instance_timeline",
    "load_overview_queries",
    "overview",
    "recent_failures",
]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load_overview_queries() -> dict[str, LiteralString]:
    """Return ``{name: sql}`` for every ``-- name:`` block of ``overview.sql``."""
    text = resources.files(__package__).joinpath("overview.sql").read_text("utf-8")
    parts = _HEADER.split(text)
    return {
        name: cast(LiteralString, body.strip().rstrip(";"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _q(name: str) -> LiteralString:
    return load_overview_queries()[name]


def _seconds(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value < 100 * 365 * 86400
    ):
        raise CerealError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CerealError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _database_error(exc: psycopg.Error) -> DatabaseError:
    return DatabaseError(f"cannot read the operator view: {exc}")


def overview(driver: PostgresDriver, stale_after: float) -> Overview:
    """Counts of live instances, finished runs, tasks and schedules in one statement."""
    stale = _seconds("stale_after", stale_after)
    try:
        with driver.connection() as conn:
            row = conn.execute(_q("overview"), {"stale_after": stale}).fetchone()
    except psycopg.Error as exc:
        raise _database_error(exc) from exc
    assert row is not None
    now, live, finished, tasks, schedules, overdue = row
    return Overview(
        instances={(w, s): int(n) for w, s, n in live},
        finished={(w, s): int(n) for w, s, n in finished},
        tasks=[
            TaskCount(
                task_name=name,
                queued=int(queued),
                running=int(running),
                oldest_queued_age=None if oldest is None else max(0.0, float(oldest)),
                stale=int(stale_count),
            )
            for name, queued, running, oldest, stale_count in tasks
        ],
        overdue_schedules=int(overdue),
        schedules=int(schedules),
        now=now,
    )


def recent_failures(driver: PostgresDriver, limit: int) -> list[WorkflowInstanceInfo]:
    """The newest failed runs, newest first."""
    params = {"limit": _count("limit", limit)}
    try:
        with driver.connection() as conn:
            cur = conn.cursor()
            use_lenient_jsonb(cur.adapters)
            rows = cur.execute(_q("recent_failures"), params).fetchall()
    except psycopg.Error as exc:
        raise _database_error(exc) from exc
    return [_run(r) for r in rows]


def instance_timeline(
    driver: PostgresDriver, workflow_name: str, instance_name: str, limit: int
) -> InstanceTimeline:
    """The pair's live instance (pending events, tasks) and finished runs, in one snapshot."""
    pair = {"workflow_name": workflow_name, "instance_name": instance_name}
    limit = _count("limit", limit)
    try:
        with driver.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = conn.cursor()
            use_lenient_jsonb(cur.adapters)
            head = cur.execute(_q("timeline_instance"), pair).fetchone()
            assert head is not None
            now, instance_id, enqueued, completed, updated_at = head
            events: list[tuple[Any, ...]] = []
            tasks: list[tuple[Any, ...]] = []
            if instance_id is not None:
                by_id = {"instance_id": instance_id, "limit": limit}
                events = cur.execute(_q("timeline_events"), by_id).fetchall()
                tasks = cur.execute(_q("timeline_tasks"), by_id).fetchall()
            runs = cur.execute(_q("timeline_runs"), pair | {"limit": limit}).fetchall()
    except psycopg.Error as exc:
        raise _database_error(exc) from exc
    return InstanceTimeline(
        now=now,
        live=instance_id is not None,
        updated_at=updated_at,
        enqueued_tasks=enqueued or 0,
        completed_tasks=completed or 0,
        events=[TimelineEvent(*e) for e in events],
        tasks=[
            TaskInfo(
                id=t[0],
                task_name=t[1],
                workflow_name=workflow_name,
                instance_name=instance_name,
                state=t[2],
                parameters=_shown(t[3]),
                enqueued_at=t[4],
                start_after=t[5],
                claimed_by=t[6],
                heartbeat_age=t[7],
                attempt=t[8],
                max_attempts=t[9],
            )
            for t in tasks
        ],
        runs=[_run(r) for r in runs],
    )


def _shown(value: Any) -> Any:
    """A stored value for display: one that cannot be decoded is described instead."""
    if isinstance(value, Undecodable):
        return f"<stored value cannot be decoded: {value.error}>"
    return value


def _run(r: tuple[Any, ...]) -> WorkflowInstanceInfo:
    status = WorkflowStatus(r[2])
    ended: datetime = r[7]
    return WorkflowInstanceInfo(
        workflow_name=r[0],
        instance_name=r[1],
        status=status,
        parameters=_shown(r[3]),
        result=_shown(r[4]) if status is WorkflowStatus.COMPLETED else None,
        error=r[5],
        started_at=r[6],
        ended_at=ended,
    )
