"""Counting stored rows on either driver, so that a behavioural test can check what is left in
storage (instances, events, tasks, finished runs) whichever driver its manager runs on."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from cereal import Manager
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
