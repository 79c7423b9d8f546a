"""Failed migrations: a migration that fails midway, and an unusable migration history, raise
``MigrationError`` naming the problem.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from cereal.errors import (
    MigrationError,
)
from tests.integration.bad_input.hostile import (
    WF,
    MakeManager,
    Noop,
)


def superuser(pg_dsn: str, *statements: sql.Composable) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_migration_that_fails_midway_raises_migration_error_naming_it(
    pg_dsn: str, schema: str, make_manager: MakeManager
) -> None:
    ident = sql.Identifier(schema)
    superuser(
        pg_dsn,
        sql.SQL("CREATE SCHEMA {}").format(ident),
        sql.SQL("CREATE VIEW {}.workflow_schedules AS SELECT 1 AS x").format(ident),
    )
    m = make_manager()
    m.register_workflow_executor(WF, Noop())
    for _ in range(2):  # the same clear error each time, no partial state, no hang
        with pytest.raises(MigrationError) as caught:
            m.driver.open()
        assert "0002_schedules" in str(caught.value)
        assert repr(schema) in str(caught.value)
        assert "workflow_schedules" in str(caught.value)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        versions = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(ident)
        ).fetchall()
    assert versions == [(1,)]
    with pytest.raises(MigrationError):
        m.start()
    m.stop()  # a manager whose start failed still stops cleanly

    superuser(pg_dsn, sql.SQL("DROP VIEW {}.workflow_schedules").format(ident))
    fixed = make_manager()
    fixed.register_workflow_executor(WF, Noop())
    fixed.start()
    fixed.create_workflow_schedule(WF, "s", recurrence="FREQ=DAILY")


def test_unusable_migration_history_raises_migration_error(
    pg_dsn: str, schema: str, make_manager: MakeManager
) -> None:
    ident = sql.Identifier(schema)
    superuser(
        pg_dsn,
        sql.SQL("CREATE SCHEMA {}").format(ident),
        sql.SQL("CREATE TABLE {}.schema_migrations (something text)").format(ident),
    )
    m = make_manager()
    with pytest.raises(MigrationError) as caught:
        m.enqueue_workflow(WF, "i")
    assert "schema_migrations" in str(caught.value)
    assert repr(schema) in str(caught.value)
