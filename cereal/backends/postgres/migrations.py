"""Create or upgrade cereal's schema, once, even when many processes start together."""

from __future__ import annotations

import psycopg
from psycopg import sql

from cereal.backends.postgres.queries import load_migrations
from cereal.errors import MigrationError
from cereal.logging import get_logger

__all__ = ["LOCK_NAMESPACE", "migrate"]

LOCK_NAMESPACE = 0x6365_7265  # "cere": keeps our advisory locks apart from other users'
log = get_logger("cereal.migrations")


def migrate(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[int]:
    """Apply every missing numbered migration to ``schema``; return the versions applied.

    Runs under a session advisory lock keyed on the schema name, so concurrent callers wait
    for the first one and then find nothing left to do. Each migration commits on its own
    together with its row in ``schema_migrations``.
    """
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, schema))
    try:
        applied = _prepare(conn, schema)
        done: list[int] = []
        for version, name, text in load_migrations():
            if version in applied:
                continue
            try:
                with conn.transaction():
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {version:04d}_{name} failed on schema {schema!r}: {exc}"
                ) from exc
            log.info("applied migration", schema=schema, version=version, name=name)
            done.append(version)
        return done
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_NAMESPACE, schema))


def _prepare(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> set[object]:
    """Create the schema and its ``schema_migrations`` table if missing; return the versions
    already applied. Any failure is a :class:`MigrationError` saying what could not be done."""
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if not exists:
        try:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MigrationError(
                f"cannot create schema {schema!r}: {exc}. Create it beforehand, owned by the "
                f"role cereal connects as (CREATE SCHEMA {schema} AUTHORIZATION <role>), or "
                f"grant that role CREATE on the database"
            ) from exc
        except psycopg.Error as exc:
            raise MigrationError(f"cannot create schema {schema!r}: {exc}") from exc
    row = conn.execute(
        "SELECT current_user, has_schema_privilege(%s, 'USAGE')", (schema,)
    ).fetchone()
    if row is not None and not row[1]:
        raise MigrationError(
            f"role {row[0]!r} may not use schema {schema!r} (no USAGE privilege): make the "
            f"role its owner (ALTER SCHEMA {schema} OWNER TO {row[0]}), or grant it USAGE "
            f"and CREATE on the schema"
        )
    try:
        conn.execute("SELECT set_config('search_path', %s, false)", (_quoted(schema),))
        # Checked first: a server in read-only mode opens an up-to-date schema fine.
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    except psycopg.Error as exc:
        raise MigrationError(
            f"cannot create or read the migration history (table schema_migrations) of "
            f"schema {schema!r}: {exc}"
        ) from exc


def _quoted(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'
