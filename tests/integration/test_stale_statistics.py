"""Hot statements read only the rows they need, even when the queue tables were last analysed
while empty.

A queue table is often empty when VACUUM or ANALYZE visits it, and it keeps its pages
(``vacuum_truncate`` is off). Its statistics then say "no rows", and PostgreSQL plans every
statement on it for a single row until the next ANALYZE, however many rows arrive
meanwhile. A plan that walks a whole index, or a whole table, per call costs nothing on one
row and milliseconds on a backlog: a drain in that state ran at half speed.

Each statement below runs under ``EXPLAIN ANALYZE`` against 8,000 instances, events and
queued tasks that the statistics do not know about, for ten of them; no plan node may read
more rows of the queue tables than a small multiple of ten.

It runs twice: planned for its parameters, as its first executions are, and planned once for
any parameters, as a prepared statement is from its sixth execution on (psycopg prepares a
statement on its fifth). The generic plan knows neither the arrays' lengths nor their values;
there, no scan of any kind (a table, a function such as ``unnest``, a CTE) may read more than
that multiple over all its loops: a nested loop that scans the whole parameter array, or the
whole table, once for every row picked is quadratic in the batch.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.events import lock_statement
from cereal.backends.postgres.queries import load_queries

BACKLOG = 8_000
ASKED = 10
MOST_ROWS_READ = 4 * ASKED
QUEUE_TABLES = ("tasks", "workflow_instances", "workflow_events")


def fill_queues(conn: psycopg.Connection, tag: str) -> None:
    """BACKLOG instances, each with a start event and a queued task. The newest instance's
    task is due first, so that a walk of any table in key order passes every other row
    before it reaches the rows a statement is about."""
    conn.execute(
        "INSERT INTO workflow_instances (workflow_name, instance_name)"
        " SELECT 'w', %s || g FROM generate_series(1, %s) g",
        (tag, BACKLOG),
    )
    conn.execute(
        "INSERT INTO workflow_events (instance_id, event_type, workflow_name)"
        " SELECT id, 'start', 'w' FROM workflow_instances ORDER BY id"
    )
    conn.execute(
        "INSERT INTO tasks (instance_id, task_name, parameters, start_after)"
        " SELECT id, 'noop', '{}', now() - make_interval(secs => id) FROM workflow_instances"
    )


@pytest.fixture(scope="module")
def stale(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """Full queue tables whose statistics were taken while they were empty, in a schema of
    this module's own (each test's changes are rolled back). Autovacuum stays away from
    them, so that nothing corrects the statistics while the tests run."""
    schema = "t_" + uuid.uuid4().hex[:10]
    PostgresDriver(pg_dsn, schema=schema).open()  # migrate
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        for table in QUEUE_TABLES:
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")  # type: ignore[arg-type]
        fill_queues(conn, "old-")
        conn.execute("DELETE FROM workflow_instances")  # events and tasks go with them
        conn.execute("VACUUM ANALYZE workflow_instances, workflow_events, tasks")
        rows = conn.execute(
            "SELECT relname, reltuples, relpages FROM pg_class"
            " WHERE relname = ANY(%s) AND relnamespace = current_schema()::regnamespace",
            (list(QUEUE_TABLES),),
        ).fetchall()
        assert len(rows) == 3 and all(r[1] == 0 and r[2] > 0 for r in rows), rows
        fill_queues(conn, "new-")
        try:
            yield conn
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def rows_read(
    conn: psycopg.Connection,
    statement: str,
    make_params: Callable[[psycopg.Connection], dict[str, Any]],
    *,
    any_scan: bool = False,
) -> list[int]:
    """Rows each plan node over a queue table read (returned or filtered out, over all
    loops; with ``any_scan``, function and CTE scans too), with the effects of the statement
    and of its set-up rolled back."""
    with conn.transaction(force_rollback=True):
        params = make_params(conn)
        row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params).fetchone()
    assert row is not None
    return rows_per_scan(row[0][0]["Plan"], any_scan=any_scan)


def rows_per_scan(plan: dict[str, Any], *, any_scan: bool) -> list[int]:
    """Rows each node of ``plan`` over a queue table read (returned or filtered out, over
    all loops); with ``any_scan``, each function and CTE scan too."""
    read: list[int] = []

    def walk(node: dict[str, Any]) -> None:
        queue = node.get("Relation Name") in QUEUE_TABLES and node["Node Type"] != "ModifyTable"
        if queue or (any_scan and node["Node Type"] in ("Function Scan", "CTE Scan")):
            per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            read.append(int(per_loop * node["Actual Loops"]))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    assert read, "no plan node reads the queue tables"
    return read


def generic_rows_read(
    conn: psycopg.Connection,
    statement: str,
    make_params: Callable[[psycopg.Connection], dict[str, Any]],
) -> list[int]:
    """Rows each scan of the generic plan of ``statement`` read over all its loops (queue
    tables, functions and CTEs), with its effects rolled back."""
    names: list[str] = []

    def number(found: re.Match[str]) -> str:
        if found.group(1) not in names:
            names.append(found.group(1))
        return f"${names.index(found.group(1)) + 1}"

    numbered = re.sub(r"%\((\w+)\)s", number, statement)
    prepared = "stale_" + uuid.uuid4().hex[:8]
    try:
        with conn.transaction(force_rollback=True):
            params = make_params(conn)
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.execute(
                sql.SQL("PREPARE {} AS ").format(sql.Identifier(prepared)) + sql.SQL(numbered)
            )  # type: ignore[arg-type]
            args = sql.SQL(", ").join(sql.Literal(params[n]) for n in names)
            execute = sql.SQL("EXECUTE {}").format(sql.Identifier(prepared))
            if names:
                execute += sql.SQL(" ({})").format(args)
            row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + execute).fetchone()
    finally:
        conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(prepared)))
    assert row is not None
    return rows_per_scan(row[0][0]["Plan"], any_scan=True)


def newest(conn: psycopg.Connection, table: str) -> list[int]:
    query = f"SELECT id FROM {table} ORDER BY id DESC LIMIT %s"
    return [r[0] for r in conn.execute(query, (ASKED,))]  # type: ignore[arg-type]


def running(conn: psycopg.Connection) -> list[int]:
    """The newest tasks, made running for "me"."""
    ids = newest(conn, "tasks")
    conn.execute(
        "UPDATE tasks SET state = 'running', claimed_by = 'me', heartbeat_at = now()"
        " WHERE id = ANY(%s)",
        (ids,),
    )
    return ids


def claim_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "names": ["noop"],
        "limits": [ASKED],
        "max_attempts": [1],
        "initials": [1.0],
        "backoffs": [2.0],
        "max_delays": [60.0],
        "floors": [None],
        "owner": "me",
    }


def lock_instances_of_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    return {"ids": newest(conn, "tasks")}


def complete_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    ids = running(conn)
    return {
        "ids": ids,
        "statuses": ["success"] * ASKED,
        "errors": [None] * ASKED,
        "results": ["1"] * ASKED,
        "workflows": ["w"] * ASKED,
        "owner": "me",
        "channel": "cereal_test",
    }


def hold_instances_of_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    return complete_tasks(conn) | {"names": ["w"]}


def held_instances(conn: psycopg.Connection) -> dict[str, Any]:
    """complete_tasks with the settings hold_instances_of_tasks leaves: half the instances
    of the running tasks held (their events wake nobody), half not."""
    params = hold_instances_of_tasks(conn)
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT instance_id FROM tasks WHERE id = ANY(%s) ORDER BY id", (params["ids"],)
        )
    ]
    held = ",".join(str(i) for i in ids[::2])
    conn.execute(
        "SELECT set_config('cereal.held_instances', %s, true),"
        " set_config('cereal.quiet_instances', %s, true)",
        (held, held),
    )
    return params


def complete_tasks_retrying(conn: psycopg.Connection) -> dict[str, Any]:
    return complete_tasks(conn) | {"retries": [True, False] * (ASKED // 2)}


def reap_lost_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    ids = running(conn)
    conn.execute(
        "UPDATE tasks SET heartbeat_at = now() - interval '1 hour' WHERE id = ANY(%s)", (ids,)
    )
    instances = conn.execute("SELECT instance_id FROM tasks WHERE id = ANY(%s)", (ids,))
    return {
        "timeout": 60,
        "error": "lost",
        "channel": "cereal_test",
        "instances": [r[0] for r in instances],
    }


def update_instances(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "ids": newest(conn, "workflow_instances"),
        "payloads": ["{}"] * ASKED,
        "enqueued": [1] * ASKED,
        "completed": [0] * ASKED,
    }


def finish_instances(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "ids": newest(conn, "workflow_instances"),
        "statuses": ["completed"] * ASKED,
        "results": ["1"] * ASKED,
        "errors": [None] * ASKED,
    }


def insert_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "instance_ids": newest(conn, "workflow_instances"),
        "names": ["other"] * ASKED,
        "parameters": ["{}"] * ASKED,
        "start_ats": [None] * ASKED,
        "delays": [0.0] * ASKED,
        "trace_contexts": [None] * ASKED,
        "routes": [None] * ASKED,
    }


def insert_tasks_claiming(conn: psycopg.Connection) -> dict[str, Any]:
    return insert_tasks(conn) | {
        "claim_names": ["other"],
        "claim_limits": [ASKED],
        "max_attempts": [1],
        "retry_delays": [0.0],
        "floors": [None],
        "owner": "me",
        "channel": "cereal_test",
    }


def claim_events(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "names": ["w"],
        "name": "w",
        "limit": ASKED,
        "floor": 0,
        "mark_id": None,
        "mark_xid": None,
    }


def claim_events_of_two(conn: psycopg.Connection) -> dict[str, Any]:
    return claim_events(conn) | {"names": ["w", "nobody"]}


def lock_instances_of_silent_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    reap_lost_tasks(conn)
    return {"timeout": 60}


def heartbeat_tasks(conn: psycopg.Connection) -> dict[str, Any]:
    return {"ids": running(conn), "owner": "me"}


def not_live(conn: psycopg.Connection) -> dict[str, Any]:
    return {"workflow_names": ["w", "w"], "instance_names": [f"new-{BACKLOG}", "gone"]}


def by_name(conn: psycopg.Connection) -> dict[str, Any]:
    """The newest instance, by name, for the statements that act on one."""
    return {
        "workflow_name": "w",
        "instance_name": f"new-{BACKLOG}",
        "error": "stopped",
        "signal_name": "s",
        "payload": None,
        "channel": "cereal_test",
    }


def new_instance(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "workflow_name": "w",
        "instance_name": "fresh",
        "parameters": None,
        "trace_context": None,
        "channel": "cereal_test",
    }


def has_events(conn: psycopg.Connection) -> dict[str, Any]:
    return {"names": ["w", "nobody"], "floor": 0}


def fetch_events(conn: psycopg.Connection) -> dict[str, Any]:
    ids = ",".join(str(i) for i in newest(conn, "workflow_instances"))
    conn.execute("SELECT set_config('cereal.locked_instances', %s, true)", (ids,))
    return {"per_instance": ASKED}


def one_instance(conn: psycopg.Connection) -> dict[str, Any]:
    return {"id": newest(conn, "workflow_instances")[0]}


def one_event(conn: psycopg.Connection) -> dict[str, Any]:
    return {"event_id": newest(conn, "workflow_events")[0]}


def events(conn: psycopg.Connection) -> dict[str, Any]:
    return {"ids": newest(conn, "workflow_events")}


def notify(conn: psycopg.Connection) -> dict[str, Any]:
    return {"channel": "cereal_test", "payloads": ["ew"]}


STATEMENTS: dict[str, Callable[[psycopg.Connection], dict[str, Any]]] = {
    "claim_tasks": claim_tasks,
    "lock_instances_of_tasks": lock_instances_of_tasks,
    "complete_tasks": held_instances,
    "complete_tasks_retrying": complete_tasks_retrying,
    "hold_instances_of_tasks": hold_instances_of_tasks,
    "relock_held_instances": held_instances,
    "reap_lost_tasks": reap_lost_tasks,
    "update_instances": update_instances,
    "finish_instances": finish_instances,
    "insert_tasks_claiming": insert_tasks_claiming,
    "lock_instances_with_events/1": claim_events,
    "lock_instances_with_events/2": claim_events_of_two,
    "lock_instances_of_silent_tasks": lock_instances_of_silent_tasks,
    "heartbeat_tasks": heartbeat_tasks,
    "release_tasks": heartbeat_tasks,
    "get_live_instance": by_name,
    "cancel_workflow": by_name,
    "signal_workflow": by_name,
    "kill_workflow": by_name,
    "not_live": not_live,
    "enqueue_workflow": new_instance,
    "enqueue_holding": new_instance,
    "enqueue_held": new_instance,
    "has_events": has_events,
    "fetch_events": fetch_events,
    "relock_instance": one_instance,
    "event_still_pending": one_event,
    "delete_events": events,
    "insert_tasks": insert_tasks,
    "notify": notify,
}


WRITES_ONLY = {"enqueue_workflow", "enqueue_holding", "enqueue_held", "insert_tasks", "notify"}
"""Statements that read no queue table: what they read of their parameters is checked."""


def hot_statement(queries: dict[str, LiteralString], name: str) -> LiteralString:
    """The statement ``name`` names: an event claim for N workflows is ``.../N``."""
    if "/" in name:
        return lock_statement(queries, int(name.rsplit("/", 1)[1]))
    return queries[name]


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_a_hot_statement_reads_only_its_own_rows(stale: psycopg.Connection, name: str) -> None:
    queries = dict(load_queries())
    statement = hot_statement(queries, name)
    read = rows_read(stale, statement, STATEMENTS[name], any_scan=name in WRITES_ONLY)
    assert max(read) <= MOST_ROWS_READ, read


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_a_hot_statement_planned_for_any_parameters_reads_only_its_own_rows(
    stale: psycopg.Connection, name: str
) -> None:
    queries = dict(load_queries())
    statement = hot_statement(queries, name)
    read = generic_rows_read(stale, statement, STATEMENTS[name])
    assert max(read) <= MOST_ROWS_READ, read
