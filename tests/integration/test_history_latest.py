"""History marks the latest finished run of each (workflow, instance) pair, whatever
statement records runs and however many runs a pair already has."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import Connection

from cereal.backends.postgres import PostgresDriver


def record(driver: PostgresDriver, *names: str) -> None:
    """Record one finished run per name, all in one statement, in order."""
    with driver.connection() as conn:
        conn.execute(
            "INSERT INTO workflow_results (workflow_name, instance_name, status, started_at)"
            " SELECT 'w', n, 'completed', now() FROM unnest(%s::text[]) WITH ORDINALITY"
            " AS t(n, o) ORDER BY o",
            (list(names),),
        )


def latest(driver: PostgresDriver) -> dict[str, list[int]]:
    """Ids of the runs marked latest, per instance name."""
    with driver.connection() as conn:
        rows = conn.execute(
            "SELECT instance_name, array_agg(id ORDER BY id) FROM workflow_results"
            " WHERE latest GROUP BY instance_name"
        ).fetchall()
    return {name: ids for name, ids in rows}


def newest(driver: PostgresDriver, name: str) -> int:
    with driver.connection() as conn:
        row = conn.execute(
            "SELECT max(id) FROM workflow_results WHERE instance_name = %s", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_new_run_supersedes_the_previous_latest_one(driver: PostgresDriver) -> None:
    record(driver, *(f"h{n}" for n in range(200)))  # a large first statement
    record(driver, "a", "b")
    record(driver, "a", "h7")
    marked = latest(driver)
    assert marked["a"] == [newest(driver, "a")]
    assert marked["h7"] == [newest(driver, "h7")]
    assert marked["b"] == [newest(driver, "b")]
    assert len(marked) == 202


def test_runs_of_one_pair_in_one_statement_leave_only_the_last_marked(
    driver: PostgresDriver,
) -> None:
    record(driver, "a")
    record(driver, "a", "a", "b", "a")
    assert latest(driver) == {"a": [newest(driver, "a")], "b": [newest(driver, "b")]}


def test_a_pair_whose_latest_run_was_pruned_gets_its_new_run_marked(
    driver: PostgresDriver,
) -> None:
    record(driver, "a")
    record(driver, "a")
    with driver.connection() as conn:
        conn.execute("DELETE FROM workflow_results WHERE id = %s", (newest(driver, "a"),))
    record(driver, "a")
    assert latest(driver) == {"a": [newest(driver, "a")]}


def test_recording_runs_reads_a_few_index_entries_however_large_history_has_grown(
    driver: PostgresDriver, pg_dsn: str, schema: str
) -> None:
    driver.list_workflow_instances()  # migrated
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        # The trigger's statement is planned on this session's first call, on an empty
        # table whose statistics say so.
        conn.execute("ANALYZE workflow_results")
        record_in(conn, "first", 1)
        for chunk in range(20):  # then history grows, a batch at a time
            record_in(conn, f"h{chunk}-", 500)
        with conn.transaction():
            record_in(conn, "new", 100)
            record_in(conn, "first", 1)
            # Index entries and rows this transaction read from history.
            row = conn.execute(
                "SELECT (SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index"
                "        WHERE indrelid = 'workflow_results'::regclass)"
                "     + pg_stat_get_xact_tuples_returned('workflow_results'::regclass)"
            ).fetchone()
    assert row is not None
    assert row[0] < 500, f"recording 101 runs read {row[0]} rows of history"
    assert latest(driver)["first1"] == [newest(driver, "first1")]


def record_in(conn: Connection[Any], prefix: str, count: int) -> None:
    """Record ``count`` runs named ``prefix1`` .. ``prefixN`` in one statement."""
    conn.execute(
        "INSERT INTO workflow_results (workflow_name, instance_name, status, started_at)"
        " SELECT 'w', %s || g, 'completed', now() FROM generate_series(1, %s) g",
        (prefix, count),
    )
