"""Queue upkeep on PostgreSQL: finished work leaves dead rows in the queue tables, and a
manager vacuums them itself once there are enough (whether or not autovacuum runs)."""

from __future__ import annotations

import threading
from typing import Literal

import psycopg
from psycopg import sql

from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.listing import BulkEnqueue
from cereal.backends.postgres.migrations import LOCK_NAMESPACE
from cereal.backends.postgres.queries import load_queries
from tests.helpers.waiting import wait_for


def vacuum_count(driver: PostgresDriver, schema: str, table: str) -> int:
    """How many times VACUUM was run on the table by a session (not by autovacuum)."""
    with driver.connection() as conn:
        row = conn.execute(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
            (schema, table),
        ).fetchone()
    return 0 if row is None else int(row[0])


def finish_instances(driver: PostgresDriver, count: int) -> None:
    """Enqueue and kill ``count`` instances: each leaves a dead instance and event row."""
    for n in range(count):
        driver.enqueue_workflow("w", f"i{n}", None)
        driver.kill_workflow("w", f"i{n}", "killed")


def test_queue_tables_with_enough_dead_rows_are_vacuumed(
    driver: PostgresDriver, schema: str
) -> None:
    finish_instances(driver, 40)
    assert driver.vacuum_queues(10**9) == []  # not enough dead rows
    assert vacuum_count(driver, schema, "workflow_instances") == 0
    touched = wait_for(
        lambda: driver.vacuum_queues(20), timeout=15, what="the statistics to count the rows"
    )
    assert "workflow_instances" in touched
    assert set(touched) <= {"workflow_instances", "workflow_events", "tasks"}
    # Whether VACUUM can remove the dead rows depends on the oldest snapshot on the whole
    # server (other sessions, other tests); what the manager controls is that it ran.
    assert wait_for(
        lambda: vacuum_count(driver, schema, "workflow_instances"), what="the vacuum counted"
    )


def test_one_session_per_schema_vacuums_at_a_time(driver: PostgresDriver, schema: str) -> None:
    finish_instances(driver, 40)
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with driver.connection() as conn:
            key = (LOCK_NAMESPACE, schema + ".vacuum")
            conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", key)
            held.set()
            release.wait(30)
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert held.wait(10)
        assert driver.vacuum_queues(1) == []
    finally:
        release.set()
        holder.join(10)
    assert wait_for(lambda: driver.vacuum_queues(1), timeout=15, what="a vacuum")


def analyzed(driver: PostgresDriver, schema: str, table: str) -> bool:
    return ran(driver, schema, table, "analyze")


def vacuumed(driver: PostgresDriver, schema: str, table: str) -> bool:
    return ran(driver, schema, table, "vacuum")


def ran(
    driver: PostgresDriver, schema: str, table: str, command: Literal["analyze", "vacuum"]
) -> bool:
    """Whether ``command`` ever ran on the table, by hand or by autovacuum."""
    query = sql.SQL(
        "SELECT coalesce({}, {}) IS NOT NULL"
        " FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s"
    ).format(sql.Identifier("last_" + command), sql.Identifier("last_auto" + command))
    with driver.connection() as conn:
        row = conn.execute(query, (schema, table)).fetchone()
    return bool(row and row[0])


def test_a_queue_that_grew_without_statistics_is_analyzed(
    driver: PostgresDriver, schema: str
) -> None:
    # A backlog enqueued into a new schema: without statistics, claims walk the wrong index.
    driver.enqueue_workflows([("w", f"i{n}", None) for n in range(3000)])
    touched = wait_for(
        lambda: driver.vacuum_queues(10**9), timeout=15, what="the statistics to count the rows"
    )
    assert {"workflow_instances", "workflow_events"} <= set(touched)
    assert analyzed(driver, schema, "workflow_instances")
    assert analyzed(driver, schema, "workflow_events")
    assert driver.vacuum_queues(10**9) == []  # fresh statistics: nothing more to do


def test_a_drained_queue_keeps_its_pages_so_the_next_burst_checks_keys_by_index(
    driver: PostgresDriver, pg_dsn: str, schema: str
) -> None:
    driver.enqueue_workflows([("w", f"old{n}", None) for n in range(2000)])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        conn.execute("DELETE FROM workflow_instances")  # drained
        conn.execute("VACUUM ANALYZE workflow_instances, workflow_events")
        pages = conn.execute("SELECT pg_relation_size('workflow_instances') / 8192").fetchone()
        assert pages is not None and pages[0] > 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        queries = load_queries()
        for n in range(10):  # the session settles on its plan for the events' key check
            one = {"workflow_name": "w", "instance_name": f"one{n}", "parameters": None}
            conn.execute(
                queries["enqueue_workflow"],
                one | {"trace_context": None, "channel": driver.channel},
            )
        burst = BulkEnqueue.of([("w", f"new{n}", None) for n in range(2000)])
        params = burst.params(None, driver.channel)
        assert params is not None
        with conn.transaction():
            conn.execute(queries["enqueue_workflows"], params).fetchall()
            row = conn.execute(
                "SELECT pg_stat_get_xact_tuples_returned('workflow_instances'::regclass)"
            ).fetchone()
    assert row is not None and row[0] < 1000, f"the burst read {row[0]} rows sequentially"


def test_history_that_grew_without_statistics_is_analyzed_not_vacuumed(
    driver: PostgresDriver, pg_dsn: str, schema: str
) -> None:
    # Runs written straight into history (an import, a restore): without statistics, a page
    # of one workflow's runs reads and sorts all of them.
    driver.open()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        conn.execute(
            "INSERT INTO workflow_results (workflow_name, instance_name, status, started_at)"
            " SELECT 'w', 'r' || g, 'completed', now() FROM generate_series(1, 3000) g"
        )
        conn.execute("DELETE FROM workflow_results WHERE id % 2 = 0")  # dead rows as well
    touched = wait_for(
        lambda: driver.vacuum_queues(1), timeout=15, what="the statistics to count the rows"
    )
    assert "workflow_results" in touched
    assert analyzed(driver, schema, "workflow_results")
    assert not vacuumed(driver, schema, "workflow_results")
