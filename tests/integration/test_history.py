"""Retention of finished runs: pruned by age and by count, one pruner at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from cereal import Decision, Manager, WorkflowInstance
from cereal.backends.postgres import PostgresDriver


class CompleteAtOnce:
    def on_start(self, instance: WorkflowInstance, event: Any) -> Decision:
        return instance.complete(instance.instance_name)

    def on_task_complete(self, instance: WorkflowInstance, event: Any) -> Decision:
        return instance.complete()

    def on_cancel(self, instance: WorkflowInstance, event: Any) -> Decision:
        return instance.complete()


def _runs(pg_dsn: str, schema: str) -> list[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT instance_name FROM {}.workflow_results ORDER BY id").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    return [r[0] for r in rows]


def _finish(manager: Manager, names: list[str]) -> None:
    """Run one instance at a time, so that history rows are in the order of ``names``."""
    for name in names:
        manager.enqueue_workflow("w", name)
        manager.await_workflow("w", name, timeout=20)


def test_history_keeps_only_the_newest_max_runs(
    make_manager: Callable[..., Manager], pg_dsn: str, schema: str
) -> None:
    m = make_manager(history_max_age=None)
    m.register_workflow_executor("w", CompleteAtOnce())
    m.start()
    _finish(m, [f"r{i}" for i in range(8)])
    assert m.driver.prune_history(None, 3) == 5
    assert _runs(pg_dsn, schema) == ["r5", "r6", "r7"]
    assert m.driver.prune_history(None, 3) == 0


def test_history_prunes_runs_older_than_max_age(
    make_manager: Callable[..., Manager], pg_dsn: str, schema: str
) -> None:
    m = make_manager(history_max_age=None)
    m.register_workflow_executor("w", CompleteAtOnce())
    m.start()
    _finish(m, ["old1", "old2", "new"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {}.workflow_results SET ended_at = now() - interval '2 hours'"
                " WHERE instance_name LIKE 'old%%'"
            ).format(sql.Identifier(schema))
        )
    assert m.driver.prune_history(3600.0, None) == 2
    assert _runs(pg_dsn, schema) == ["new"]
    assert m.get_workflow_instance("w", "new").result == "new"


def test_started_manager_prunes_in_the_background(
    make_manager: Callable[..., Manager], pg_dsn: str, schema: str
) -> None:
    m = make_manager(history_max_runs=2, history_max_age=None, history_prune_interval=0.2)
    m.register_workflow_executor("w", CompleteAtOnce())
    m.start()
    _finish(m, [f"r{i}" for i in range(6)])
    deadline = time.monotonic() + 10
    while len(_runs(pg_dsn, schema)) > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _runs(pg_dsn, schema) == ["r4", "r5"]


def test_only_one_process_prunes_at_a_time(pg_dsn: str, schema: str) -> None:
    """While one transaction holds the pruning lock, another pruner skips its round."""
    driver = PostgresDriver(pg_dsn, schema=schema)
    try:
        driver.open()
        with driver.connection() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (0x6365_7265, schema + ".prune"),
            )
            conn.execute(
                "INSERT INTO workflow_results (workflow_name, instance_name, status, started_at)"
                " VALUES ('w', 'a', 'completed', now()), ('w', 'b', 'completed', now())"
            )
            with PostgresDriver(pg_dsn, schema=schema) as other:
                assert other.prune_history(None, 0) == 0
    finally:
        driver.close()
    with PostgresDriver(pg_dsn, schema=schema) as other:
        assert other.prune_history(None, 0) == 2
