"""Schema creation and migration: idempotent, safe under concurrency, validated, atomic."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.migrations import migrate
from cereal.backends.postgres.queries import load_migrations
from cereal.errors import CerealError, MigrationError
from tests.helpers.processes import program

VERSIONS = [version for version, _, _ in load_migrations()]


def fetch(dsn: str, query: str, *params: Any, schema: str | None = None) -> list[tuple[Any, ...]]:
    """Run one query (with ``search_path`` set to ``schema`` if given) and return its rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if schema is not None:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def applied_versions(dsn: str, schema: str) -> list[int]:
    rows = fetch(dsn, "SELECT version FROM schema_migrations ORDER BY version", schema=schema)
    return [r[0] for r in rows]


def test_migration_files_are_numbered_from_one_without_gaps() -> None:
    assert list(range(1, len(VERSIONS) + 1)) == VERSIONS
    assert load_migrations()[0][1] == "core"


def test_migrating_again_applies_nothing(driver: PostgresDriver, pg_dsn: str, schema: str) -> None:
    with driver.connect() as conn:
        assert migrate(conn, schema) == VERSIONS
        assert migrate(conn, schema) == []
    history = "SELECT version, applied_at FROM schema_migrations ORDER BY version"
    first = fetch(pg_dsn, history, schema=schema)

    for _ in range(2):
        driver.open()
        driver.close()

    again = fetch(pg_dsn, history, schema=schema)
    assert again == first
    assert [v for v, _ in again] == VERSIONS


def test_drop_schema_removes_everything_and_a_reopened_driver_starts_afresh(
    driver: PostgresDriver, pg_dsn: str, schema: str
) -> None:
    driver.enqueue_workflow("w", "i", None)
    driver.drop_schema()
    assert fetch(pg_dsn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", schema) == []
    driver.open()
    assert driver.get_workflow_instance("w", "i") is None
    assert applied_versions(pg_dsn, schema) == [v for v, _, _ in load_migrations()]


def test_first_use_creates_the_schema_without_an_explicit_open(
    driver: PostgresDriver, pg_dsn: str, schema: str
) -> None:
    assert fetch(pg_dsn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", schema) == []
    assert driver.get_workflow_instance("w", "i") is None
    assert applied_versions(pg_dsn, schema) == VERSIONS


def test_concurrent_first_opens_on_threads_all_succeed_and_apply_each_migration_once(
    pg_dsn: str, schema: str
) -> None:
    count = 6
    drivers = [PostgresDriver(pg_dsn, schema=schema) for _ in range(count)]
    barrier = threading.Barrier(count)
    applied: list[list[int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def first_open(drv: PostgresDriver) -> None:
        try:
            with drv.connect() as conn:
                barrier.wait(10)
                done = migrate(conn, schema)
            drv.open()
            with lock:
                applied.append(done)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=first_open, args=(d,)) for d in drivers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for drv in drivers:
            drv.close()

    assert errors == []
    assert len(applied) == count
    # Exactly one opener applied each migration; the others found nothing left to do.
    assert sorted(v for done in applied for v in done) == VERSIONS
    assert applied_versions(pg_dsn, schema) == VERSIONS


@pytest.mark.slow
def test_concurrent_first_opens_in_separate_processes_apply_each_migration_once(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    when = str(time.time() + 2.0)  # all three start migrating at this moment
    children = [
        program("migrate", pg_dsn, schema, when, log_file=tmp_path / f"m{n}.log") for n in range(3)
    ]
    applied: list[list[int]] = []
    try:
        for child in children:
            applied.append(json.loads(" ".join(child.expect("applied", timeout=30))))
            assert child.finish() == 0, child.log_tail()
    finally:
        for child in children:
            child.close()

    assert sorted(v for done in applied for v in done) == VERSIONS
    assert Counter(len(done) for done in applied) == {len(VERSIONS): 1, 0: 2}
    assert applied_versions(pg_dsn, schema) == VERSIONS


@pytest.mark.parametrize(
    "name",
    ["bad-name", "1abc", "", "a" * 100, "pg_x", "PG_Catalog", "information_schema", 'x"y', "a b"],
    ids=[
        "dash",
        "digit-first",
        "empty",
        "100-chars",
        "pg_-prefix",
        "pg_-any-case",
        "info",
        "quote",
        "space",
    ],
)
def test_bad_schema_name_is_rejected_when_the_driver_is_created(name: str) -> None:
    started = time.monotonic()
    with pytest.raises(CerealError) as caught:
        # Nothing listens there: only validation can answer this quickly.
        PostgresDriver("postgresql://nobody@127.0.0.1:9/none", schema=name)
    assert time.monotonic() - started < 1
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize("name", [None, 7, b"cereal"])
def test_schema_name_that_is_not_a_str_is_rejected(name: Any) -> None:
    with pytest.raises(CerealError, match=re.escape(repr(name))):
        PostgresDriver("postgresql://nobody@127.0.0.1:9/none", schema=name)


@pytest.mark.parametrize("name", ["cereal", "_x", "Mixed_Case_9", "a" * 48])
def test_plain_identifiers_are_accepted_as_schema_names(name: str) -> None:
    assert PostgresDriver("postgresql://nobody@127.0.0.1:9/none", schema=name).schema == name


def test_schema_has_the_core_foreign_keys_and_indexes(
    driver: PostgresDriver, pg_dsn: str, schema: str
) -> None:
    driver.open()
    core = load_migrations()[0][2]
    declared = set(re.findall(r"CREATE (?:UNIQUE )?INDEX (\w+)", core))
    assert {"tasks_queued", "tasks_running", "tasks_instance", "workflow_events_instance"} <= (
        declared
    )

    indexes = dict(
        fetch(pg_dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", schema)
    )
    assert declared <= set(indexes)
    assert "WHERE (state = 'queued'::text)" in indexes["tasks_queued"]
    assert "WHERE (state = 'running'::text)" in indexes["tasks_running"]
    assert "workflow_instances_name" in indexes  # the unique (workflow_name, instance_name)

    foreign_keys = fetch(
        pg_dsn,
        """
        SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text,
               c.confdeltype,
               EXISTS (SELECT 1 FROM pg_index i
                       WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND c.connamespace = %s::regnamespace
        ORDER BY 1
        """,
        schema,
        schema=schema,
    )
    assert foreign_keys == [
        # (table, column, referenced table, ON DELETE CASCADE, an index leads with the column)
        ("tasks", "instance_id", "workflow_instances", "c", True),
        ("workflow_events", "instance_id", "workflow_instances", "c", True),
    ]


def test_failed_migration_raises_migration_error_and_leaves_no_partial_state(
    driver: PostgresDriver, pg_dsn: str, schema: str
) -> None:
    # 0001 creates workflow_instances and workflow_events before it reaches tasks.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {}.tasks (anything int)").format(sql.Identifier(schema)))

    with pytest.raises(MigrationError) as caught:
        driver.open()
    message = str(caught.value)
    assert "0001_core" in message
    assert repr(schema) in message
    assert 'relation "tasks" already exists' in message

    tables = {
        r[0] for r in fetch(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = %s", schema)
    }
    assert tables == {"tasks", "schema_migrations"}
    assert applied_versions(pg_dsn, schema) == []
    assert {
        r[0]
        for r in fetch(pg_dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = %s", schema)
    } == {"schema_migrations_pkey"}

    # Once the conflict is gone, the next open applies everything.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}.tasks").format(sql.Identifier(schema)))
    driver.open()
    assert applied_versions(pg_dsn, schema) == VERSIONS
    assert driver.get_workflow_instance("w", "i") is None
