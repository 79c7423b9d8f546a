"""Counting stored rows on either driver, so that a behavioural test can check what is left in
storage (instances, events, tasks, finished runs) whichever driver its manager runs on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql

from cereal import Manager
from cereal.driver import Driver
from cereal.testing import MemoryDriver

_COLUMNS = {"workflow_events": "event_type", "tasks": "state"}


def count_rows(manager: Manager, table: str, kind: str | None = None) -> int:
    """Rows of ``table`` in the manager's storage: ``workflow_instances`` (live instances),
    ``workflow_events`` (pending events, of ``event_type`` ``kind`` if given), ``tasks``
    (queued and running, in ``state`` ``kind`` if given) or ``workflow_results``."""
    driver: Any = manager.driver
    if isinstance(driver, MemoryDriver):
        store = driver.store
        with store.lock:
            if table == "workflow_instances":
                return len(store.instances)
            if table == "workflow_results":
                return len(store.results)
            if table == "workflow_events":
                events = [e for pending in store.events.values() for e in pending]
                return sum(kind in (None, e.kind) for e in events)
            if table == "tasks":
                return sum(kind in (None, t.state) for t in store.tasks.values())
        raise ValueError(f"no such table: {table!r}")
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    if kind is not None:
        query = sql.SQL("{} WHERE {} = {}").format(
            query, sql.Identifier(_COLUMNS[table]), sql.Literal(kind)
        )
    with driver.connection() as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def run_starts(driver: Driver, workflow_name: str, instance_name: str) -> list[datetime]:
    """Start times of every run of ``(workflow_name, instance_name)``, finished or live,
    oldest first, as the driver stored them."""
    if isinstance(driver, MemoryDriver):
        store = driver.store
        pair = (workflow_name, instance_name)
        with store.lock:
            starts = [run.started_at for run in store.history.get(pair, [])]
            if pair in store.live:
                starts.append(store.instances[store.live[pair]].started_at)
        return sorted(starts)
    with driver.connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            "SELECT started_at FROM workflow_results"
            " WHERE workflow_name = %s AND instance_name = %s"
            " UNION ALL SELECT started_at FROM workflow_instances"
            " WHERE workflow_name = %s AND instance_name = %s ORDER BY 1",
            (workflow_name, instance_name, workflow_name, instance_name),
        ).fetchall()
    return [row[0] for row in rows]


def finished_runs(driver: Driver, workflow_name: str, instance_name: str) -> list[tuple[str, Any]]:
    """``(status, error)`` of every finished run of the pair, as stored, oldest first."""
    if isinstance(driver, MemoryDriver):
        with driver.store.lock:
            runs = list(driver.store.history.get((workflow_name, instance_name), []))
        return [(run.status.value, run.error) for run in runs]
    with driver.connection() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            "SELECT status, error FROM workflow_results"
            " WHERE workflow_name = %s AND instance_name = %s ORDER BY id",
            (workflow_name, instance_name),
        ).fetchall()
    return [(row[0], row[1]) for row in rows]
