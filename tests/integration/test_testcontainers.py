"""cereal on a throw-away PostgreSQL 16 container; skipped where no Docker engine answers."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql


@pytest.mark.slow
def test_container_answers(docker_pg_dsn: str) -> None:
    with psycopg.connect(docker_pg_dsn, connect_timeout=30) as conn:
        row = conn.execute("select version()").fetchone()
    assert row is not None
    assert str(row[0]).startswith("PostgreSQL 16")


@pytest.mark.slow
def test_driver_on_container(docker_pg_dsn: str) -> None:
    try:
        from cereal.backends.postgres import PostgresDriver
    except ImportError:
        pytest.skip("PostgresDriver is not available")
    schema = "t_" + uuid.uuid4().hex[:10]
    with PostgresDriver(docker_pg_dsn, schema=schema) as driver:  # opening migrates the schema
        assert driver.list_workflow_instances() == []
    with psycopg.connect(docker_pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from information_schema.tables where table_schema = %s", (schema,)
        ).fetchone()
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
    assert row is not None
    assert row[0] > 0
