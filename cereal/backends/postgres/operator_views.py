"""What operators ask of the PostgreSQL backend: queued and running tasks, the state of the
schema, the SQL that creates it, and whether the server answers.

The statements live in ``operator.sql``. :meth:`PostgresDriver.list_tasks` and friends are
thin wrappers over the functions here. ``schema_status`` and ``ping`` use a connection of
their own, outside the pool, so they never create or migrate the schema; ``migration_sql``
touches no database at all. Every database failure comes out as a
:class:`~cereal.errors.DatabaseError` (a :class:`~cereal.errors.TransientDatabaseError`
when retrying may help).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, LiteralString, cast

import psycopg
from psycopg import sql

from cereal.backends.postgres.jsonb import use_lenient_jsonb
from cereal.backends.postgres.queries import load_migrations
from cereal.driver import SchemaStatus, TaskInfo
from cereal.errors import CerealError, DatabaseError, TransientDatabaseError

if TYPE_CHECKING:
    from cereal.backends.postgres.driver import PostgresDriver

__all__ = ["list_tasks", "migration_sql", "ping", "schema_status"]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _queries() -> dict[str, LiteralString]:
    text = resources.files(__package__).joinpath("operator.sql").read_text("utf-8")
    parts = _HEADER.split(text)
    return {
        name: cast(LiteralString, body.strip().rstrip(";"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


@contextmanager
def _database_errors(what: str) -> Iterator[None]:
    """Turn a psycopg exception into the matching :mod:`cereal.errors` type."""
    try:
        yield
    except CerealError:
        raise
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise TransientDatabaseError(f"{what}: {exc}") from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"{what}: {exc}") from exc


def list_tasks(
    driver: PostgresDriver,
    *,
    task_name: str | None = None,
    workflow_name: str | None = None,
    instance_name: str | None = None,
    limit: int | None = None,
) -> list[TaskInfo]:
    """Queued and running tasks of live instances, oldest first (at most ``limit``)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise CerealError(f"limit must be a positive int or None, got {limit!r}")
    params: dict[str, Any] = {
        "task_name": task_name,
        "workflow_name": workflow_name,
        "instance_name": instance_name,
        "limit": limit,
    }
    with _database_errors("cannot list tasks"), driver.connection() as conn:
        cur = conn.cursor()
        use_lenient_jsonb(cur.adapters)  # an undecodable parameter is shown, not raised
        rows = cur.execute(_queries()["list_tasks"], params).fetchall()
    return [
        TaskInfo(
            id=r[0],
            task_name=r[1],
            workflow_name=r[2],
            instance_name=r[3],
            state=r[4],
            parameters=r[5],
            enqueued_at=r[6],
            start_after=r[7],
            claimed_by=r[8],
            heartbeat_age=r[9],
            attempt=r[10],
            max_attempts=r[11],
        )
        for r in rows
    ]


def schema_status(driver: PostgresDriver) -> SchemaStatus:
    """Which migrations the schema has, read without creating or migrating anything."""
    available = [(version, name) for version, name, _ in load_migrations()]
    schema = driver.schema
    applied: list[int] = []
    what = f"cannot read the migrations of schema {schema!r}"
    with _database_errors(what), driver.connect() as conn:
        row = conn.execute(_queries()["schema_exists"], {"schema": schema}).fetchone()
        if row is not None and row[0]:
            query = sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version")
            rows = conn.execute(query.format(sql.Identifier(schema))).fetchall()
            applied = [int(r[0]) for r in rows]
    return SchemaStatus(schema=schema, applied=applied, available=available)


def migration_sql(schema: str) -> str:
    """The SQL script that creates ``schema`` from scratch (as ``open()`` would), for a
    database administrator to review or run with ``psql -v ON_ERROR_STOP=1``."""
    quoted = sql.Identifier(schema).as_string(None)
    parts = [
        "-- cereal schema " + quoted + ": " + str(len(load_migrations())) + " migration(s)",
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {};").format(sql.Identifier(schema)).as_string(None),
        sql.SQL("SET search_path TO {};").format(sql.Identifier(schema)).as_string(None),
        "CREATE TABLE IF NOT EXISTS schema_migrations (\n"
        "    version integer PRIMARY KEY,\n"
        "    name text NOT NULL,\n"
        "    applied_at timestamptz NOT NULL DEFAULT now()\n"
        ");",
    ]
    for version, name, text in load_migrations():
        record = sql.SQL("INSERT INTO schema_migrations (version, name) VALUES ({}, {});").format(
            sql.Literal(version), sql.Literal(name)
        )
        parts.append(
            "\n-- migration "
            + f"{version:04d}_{name}"
            + "\nBEGIN;\n"
            + text.strip()
            + "\n"
            + record.as_string(None)
            + "\nCOMMIT;"
        )
    return "\n".join(parts) + "\n"


def ping(driver: PostgresDriver) -> None:
    """Raise :class:`~cereal.errors.DatabaseError` unless the server answers a query."""
    with _database_errors("the database does not answer"), driver.connect() as conn:
        conn.execute(_queries()["ping"]).fetchone()
