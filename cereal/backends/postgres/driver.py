"""PostgreSQL storage for cereal: a connection pool and the statements of ``queries.sql``."""

from __future__ import annotations

import json
import os
import re
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from cereal.backends.postgres import operator_views
from cereal.backends.postgres import overview as dashboard_views
from cereal.backends.postgres.jsonb import Undecodable, use_lenient_jsonb, use_strict_jsonb
from cereal.backends.postgres.listener import PostgresListener
from cereal.backends.postgres.listing import enqueue_many, list_instances
from cereal.backends.postgres.migrations import LOCK_NAMESPACE, migrate
from cereal.backends.postgres.queries import load_queries
from cereal.driver import (
    ClaimedTask,
    InstanceTimeline,
    Overview,
    SchemaStatus,
    TaskInfo,
    TaskOutcome,
)
from cereal.errors import CerealError, DatabaseError, InvalidNameError
from cereal.logging import get_logger
from cereal.steps import EventRow, InstanceRow, StepOutcome
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.backends.postgres.async_driver import AsyncPostgresDriver

__all__ = ["PostgresDriver"]

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SCHEMA_LENGTH = 48
log = get_logger("cereal.postgres")

Connection = psycopg.Connection[tuple[Any, ...]]


def validate_schema(schema: object) -> str:
    """Return ``schema`` if it is a plain SQL identifier cereal can own, else raise."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidNameError(
            f"schema must be a plain identifier (letters, digits, underscores, not starting "
            f"with a digit), got {schema!r}"
        )
    if len(schema) > MAX_SCHEMA_LENGTH:
        raise InvalidNameError(
            f"schema name is {len(schema)} characters; the limit is {MAX_SCHEMA_LENGTH}: {schema!r}"
        )
    if schema.lower().startswith("pg_") or schema.lower() == "information_schema":
        raise InvalidNameError(f"schema name {schema!r} is reserved by PostgreSQL")
    return schema


class PostgresDriver:
    """Stores cereal's state in a PostgreSQL schema.

    ``dsn`` is a libpq connection string or URI. When it is None, ``CEREAL_DATABASE_URL``
    is used; when that is unset too, an embedded PostgreSQL (the ``cereal[embedded]``
    extra) is started or reused in ``CEREAL_EMBEDDED_DIR`` or a per-user data directory.

    The schema (default ``cereal``) is created and migrated on first use. Options:
    ``pool_size`` (most connections, default 10), ``pool_min_size`` (default 1),
    ``connect_timeout`` (seconds, default 10) and ``application_name``.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = "cereal",
        pool_size: int = 10,
        pool_min_size: int = 1,
        connect_timeout: float = 10.0,
        application_name: str = "cereal",
    ) -> None:
        self._schema = validate_schema(schema)
        if dsn is not None and not isinstance(dsn, str):
            raise CerealError(f"dsn must be a str or None, got {type(dsn).__name__}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 2:
            raise CerealError(f"pool_size must be an int of at least 2, got {pool_size!r}")
        if (
            isinstance(pool_min_size, bool)
            or not isinstance(pool_min_size, int)
            or pool_min_size < 0
        ):
            raise CerealError(f"pool_min_size must be an int >= 0, got {pool_min_size!r}")
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, int | float)
            or not 0 < connect_timeout <= 86400
        ):
            raise CerealError(
                f"connect_timeout must be a number of seconds in (0, 86400], "
                f"got {connect_timeout!r}"
            )
        if not isinstance(application_name, str) or "\x00" in application_name:
            raise CerealError(
                f"application_name must be a str without NUL characters, got {application_name!r}"
            )
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool_min_size = max(0, min(pool_min_size, pool_size))
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._pool: ConnectionPool[Connection] | None = None
        self._lock = threading.Lock()
        self._q = load_queries()
        self.channel = f"cereal_{self._schema}"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding cereal's tables."""
        return self._schema

    @property
    def dsn(self) -> str:
        """The connection string in use (resolving the environment and embedded default)."""
        if self._dsn is None:
            self._dsn = os.environ.get("CEREAL_DATABASE_URL") or _embedded()
        return self._dsn

    def connect(self) -> Connection:
        """Open a new connection outside the pool (autocommit, UTC, search_path set)."""
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name=self._application_name,
            )
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
        self._configure(conn)
        return conn

    def _configure(self, conn: Connection) -> None:
        use_strict_jsonb(conn.adapters)
        conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false)",
            ('"' + self._schema + '"',),
        )

    def open(self) -> None:
        """Migrate the schema and open the pool. Safe to call again after :meth:`close`."""
        with self._lock:
            if self._pool is not None:
                return
            with self.connect() as conn:
                migrate(conn, self._schema)
            pool: ConnectionPool[Connection] = ConnectionPool(
                self.dsn,
                min_size=self._pool_min_size,
                max_size=self._pool_size,
                kwargs={
                    "autocommit": True,
                    "connect_timeout": max(1, round(self._connect_timeout)),
                    "application_name": self._application_name,
                },
                configure=self._configure,
                open=False,
                name=f"cereal-{self._schema}",
            )
            pool.open(wait=self._pool_min_size > 0, timeout=self._connect_timeout)
            self._pool = pool

    def close(self) -> None:
        """Close the pool. The driver can be opened again later."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=5)

    def __enter__(self) -> PostgresDriver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Borrow a pooled connection (autocommit; wrap writes in ``conn.transaction()``)."""
        if self._pool is None:
            self.open()
        pool = self._pool
        if pool is None:
            raise DatabaseError("the driver was closed")
        timeout = max(self._connect_timeout, 30.0)
        # After a server restart or pg_terminate_backend, every idle pooled connection is dead
        # and the pool would hand each one out once, failing that caller's statement. Skip
        # the ones that visibly are (a poll() call each, no round trip); the pool replaces them.
        for _ in range(self._pool_size):
            conn = pool.getconn(timeout=timeout)
            if not _is_dead(conn):
                break
            conn.close()
            pool.putconn(conn)
        else:
            conn = pool.getconn(timeout=timeout)
        try:
            with conn:
                yield conn
        finally:
            pool.putconn(conn)

    def query(self, name: str) -> LiteralString:
        """The text of a named statement of ``queries.sql``."""
        return self._q[name]

    def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self.connection() as conn:
            return conn.execute(self._q[name], params).fetchall()

    # -- workflow instances ------------------------------------------------------------

    def enqueue_workflow(
        self, workflow_name: str, instance_name: str, parameters_json: str | None
    ) -> bool:
        """Insert a live instance with its start event; False if the pair is live."""
        rows = self._rows(
            "enqueue_workflow",
            {
                "workflow_name": workflow_name,
                "instance_name": instance_name,
                "parameters": parameters_json,
                "channel": self.channel,
            },
        )
        return bool(rows)

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        """Queue a cancel event; False if there is no live instance."""
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        return bool(self._rows("cancel_workflow", params | {"channel": self.channel}))

    def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        """Finish a live instance as failed with ``error``; False if none is live."""
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        rows = self._rows("kill_workflow", params | {"error": error, "channel": self.channel})
        return bool(rows)

    def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        """The live instance, else its latest finished run, else None."""
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        with self.connection() as conn:
            row = conn.execute(self._q["get_live_instance"], params).fetchone()
            if row is not None:
                return WorkflowInstanceInfo(
                    workflow_name=row[0],
                    instance_name=row[1],
                    status=WorkflowStatus(row[2]),
                    parameters=row[3],
                    payload=row[4],
                    started_at=row[5],
                )
            row = conn.execute(self._q["get_latest_result"], params).fetchone()
        if row is None:
            return None
        return _finished_info(row)

    def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        """One row per pair: the live instance, else the latest finished run. Without
        ``limit`` every match by names; with it one page, newest first, after the row whose
        ``cursor`` is ``after`` (see :mod:`cereal.backends.postgres.listing`)."""
        return list_instances(self, workflow_name, instance_name, is_running, status, limit, after)

    def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]]
    ) -> list[tuple[str, str]]:
        """Insert many instances with their start events in one statement; return the pairs
        not inserted (live already, or repeated in ``items``)."""
        return enqueue_many(self, items)

    # -- workflow events ---------------------------------------------------------------

    def has_events(self, workflow_names: Sequence[str]) -> bool:
        """Cheap check: is any event pending for these workflows?"""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM workflow_events e JOIN workflow_instances i"
                " ON i.id = e.instance_id WHERE i.workflow_name = ANY(%s))",
                (list(workflow_names),),
            ).fetchone()
        return bool(row and row[0])

    @contextmanager
    def claim_events(
        self, workflow_names: Sequence[str], limit: int, per_instance: int
    ) -> Iterator[_PostgresEventBatch]:
        """Lock up to ``limit`` instances with pending events and fetch their next events.

        The instances stay locked until the batch commits or the context exits (which rolls
        back, so every event is delivered again later). BEGIN travels with the locking
        statement and COMMIT with the batch's writes, so a batch costs three round trips.
        """
        with self.connection() as conn:
            try:
                conn.execute("BEGIN")
                cur = conn.cursor()
                use_lenient_jsonb(cur.adapters)  # a value we cannot decode fails its instance
                rows = cur.execute(
                    self._q["lock_instances_with_events"],
                    {"names": list(workflow_names), "limit": limit},
                ).fetchall()
                instances = [_instance_row(r) for r in rows]
                events: dict[int, list[EventRow]] = {i.id: [] for i in instances}
                if instances:
                    # A statement of its own: its snapshot is taken after the locks, so it
                    # sees every event committed by the previous holder of each instance.
                    for e in cur.execute(
                        self._q["fetch_events"],
                        {"ids": list(events), "per_instance": per_instance},
                    ).fetchall():
                        events[e[1]].append(_event_row(e))
                yield _PostgresEventBatch(self, conn, instances, events)
            except psycopg.Error:
                # A statement that failed inside the write pipeline can leave psycopg's
                # prepared-statement cache out of step with the server; start afresh.
                conn.close()
                raise
            finally:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    # A broken connection fails this too; the pool then discards it.
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")

    # -- tasks ---------------------------------------------------------------------------

    def claim_tasks(
        self, limits: dict[str, int], owner: str
    ) -> tuple[list[ClaimedTask], float | None]:
        """Claim due tasks (up to ``limits[name]`` each) for ``owner``.

        Also returns the seconds until the next queued task of these names becomes due.
        """
        names = [n for n, lim in limits.items() if lim > 0]
        if not names:
            return [], None
        with self.connection() as conn:
            cur = conn.cursor()
            use_lenient_jsonb(cur.adapters)  # a task we cannot decode is reported failed
            rows = cur.execute(
                self._q["claim_tasks"],
                {"names": names, "limits": [limits[n] for n in names], "owner": owner},
            ).fetchall()
        tasks = [_claimed_task(r) for r in rows if r[0] is not None]
        next_due = next((r[7] for r in rows if r[0] is None), None)
        return tasks, next_due

    def complete_tasks(self, outcomes: Sequence[TaskOutcome], owner: str) -> set[int]:
        """Record task outcomes as events; return the ids that were still live."""
        if not outcomes:
            return set()
        params = {
            "ids": [o.id for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "errors": [o.error for o in outcomes],
            "results": [o.result_json for o in outcomes],
            "workflows": [o.workflow_name for o in outcomes],
            "owner": owner,
            "channel": self.channel,
        }
        # One statement: atomic on its own, and the notifications go out with its commit
        # (PostgreSQL sends each distinct payload once per transaction).
        return {r[0] for r in self._rows("complete_tasks", params)}

    def heartbeat_tasks(self, task_ids: Sequence[int], owner: str) -> set[int]:
        """Refresh running tasks' heartbeats; return the ids that still exist."""
        if not task_ids:
            return set()
        rows = self._rows("heartbeat_tasks", {"ids": list(task_ids), "owner": owner})
        return {r[0] for r in rows}

    def release_tasks(self, task_ids: Sequence[int], owner: str) -> None:
        """Hand claimed tasks that never started back to the queue."""
        if task_ids:
            names = self._rows("release_tasks", {"ids": list(task_ids), "owner": owner})
            if names:
                self.notify(["t" + r[0] for r in names])

    def reap_lost_tasks(self, timeout: float, error: str) -> int:
        """Turn tasks silent for ``timeout`` seconds into ``lost`` results; return how many."""
        with self.connection() as conn, conn.transaction():
            names = [
                r[0]
                for r in conn.execute(
                    self._q["reap_lost_tasks"], {"timeout": timeout, "error": error}
                )
            ]
            if names:
                self._notify(conn, ["e" + n for n in sorted(set(names))])
        return len(names)

    def prune_history(self, max_age: float | None, max_runs: int | None) -> int:
        """Delete up to 10000 finished runs past the retention policy; return how many."""
        if max_age is None and max_runs is None:
            return 0
        rows = self._rows(
            "prune_history",
            {
                "lock_ns": LOCK_NAMESPACE,
                "lock_key": self._schema + ".prune",
                "max_age": max_age,
                "max_runs": max_runs,
            },
        )
        return int(rows[0][1]) if rows else 0

    def _notify(self, conn: Connection, payloads: Sequence[str]) -> None:
        conn.execute(self._q["notify"], {"channel": self.channel, "payloads": list(payloads)})

    def notify(self, payloads: Sequence[str]) -> None:
        """Send notifications on this schema's channel."""
        with self.connection() as conn:
            self._notify(conn, payloads)

    def listener(
        self, on_notify: Callable[[str], None], on_reconnect: Callable[[], None]
    ) -> PostgresListener:
        """A LISTEN connection on this schema's channel (not started)."""
        return PostgresListener(self.connect, self.channel, on_notify, on_reconnect)

    # -- operator views (cereal/backends/postgres/operator_views.py) ----------------------

    def list_tasks(
        self,
        *,
        task_name: str | None = None,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        limit: int | None = None,
    ) -> list[TaskInfo]:
        """Queued and running tasks, oldest first, with the age of each running task's
        last heartbeat."""
        return operator_views.list_tasks(
            self,
            task_name=task_name,
            workflow_name=workflow_name,
            instance_name=instance_name,
            limit=limit,
        )

    def schema_status(self) -> SchemaStatus:
        """Which migrations are applied (creates and migrates nothing)."""
        return operator_views.schema_status(self)

    def migration_sql(self) -> str:
        """The SQL that creates this schema from scratch; touches no database."""
        return operator_views.migration_sql(self._schema)

    def ping(self) -> None:
        """Raise :class:`~cereal.errors.DatabaseError` unless the server answers."""
        operator_views.ping(self)

    def async_driver(self) -> AsyncPostgresDriver:
        """This driver's async twin (same database, schema and options), for ``Manager.aio``."""
        from cereal.backends.postgres.async_driver import AsyncPostgresDriver

        return AsyncPostgresDriver.twin_of(self)

    # -- dashboard views (cereal/backends/postgres/overview.py) ----------------------------

    def overview(self, stale_after: float) -> Overview:
        """Counts of instances, runs, tasks and schedules, in one snapshot."""
        return dashboard_views.overview(self, stale_after)

    def recent_failures(self, limit: int) -> list[WorkflowInstanceInfo]:
        """The newest failed runs kept in history, newest first."""
        return dashboard_views.recent_failures(self, limit)

    def instance_timeline(
        self, workflow_name: str, instance_name: str, limit: int
    ) -> InstanceTimeline:
        """A pair's pending events, queued and running tasks, and finished runs."""
        return dashboard_views.instance_timeline(self, workflow_name, instance_name, limit)


class _PostgresEventBatch:
    def __init__(
        self,
        driver: PostgresDriver,
        conn: Connection,
        instances: list[InstanceRow],
        events: dict[int, list[EventRow]],
    ) -> None:
        self._driver = driver
        self._conn = conn
        self.instances = instances
        self.events = events

    def commit(self, outcomes: Sequence[StepOutcome]) -> list[WorkflowInstanceInfo]:
        q = self._driver.query
        conn = self._conn
        going = [o for o in outcomes if not o.finished]
        done = [o for o in outcomes if o.finished]
        consumed = [eid for o in going for eid in o.consumed]
        tasks = [(o.instance.id, t) for o in going for t in o.tasks]
        notes = sorted({"t" + t.name for _, t in tasks} | {f"f{o.instance.id}" for o in done})
        finished: list[WorkflowInstanceInfo] = []
        with conn.pipeline():
            if consumed:
                conn.execute(q("delete_events"), {"ids": consumed})
            if going:
                conn.execute(
                    q("update_instances"),
                    {
                        "ids": [o.instance.id for o in going],
                        "payloads": [o.payload_json for o in going],
                        "enqueued": [o.enqueued_tasks for o in going],
                        "completed": [o.completed_tasks for o in going],
                    },
                )
            if tasks:
                conn.execute(
                    q("insert_tasks"),
                    {
                        "instance_ids": [i for i, _ in tasks],
                        "names": [t.name for _, t in tasks],
                        "parameters": [t.parameters_json for _, t in tasks],
                        "start_ats": [t.start_at for _, t in tasks],
                        "delays": [t.delay for _, t in tasks],
                    },
                )
            cur = None
            if done:
                cur = conn.execute(
                    q("finish_instances"),
                    {
                        "ids": [o.instance.id for o in done],
                        "statuses": [o.status.value for o in done],
                        "results": [o.result_json for o in done],
                        "errors": [o.error for o in done],
                    },
                )
            if notes:
                conn.execute(q("notify"), {"channel": self._driver.channel, "payloads": notes})
            conn.execute("COMMIT")
            ended = {r[0]: r[1] for r in cur.fetchall()} if cur is not None else {}
        for o in done:
            if o.instance.id not in ended:
                continue
            finished.append(
                WorkflowInstanceInfo(
                    workflow_name=o.instance.workflow_name,
                    instance_name=o.instance.instance_name,
                    status=o.status,
                    parameters=o.instance.parameters,
                    result=_loads(o.result_json),
                    error=o.error,
                    started_at=o.instance.started_at,
                    ended_at=ended[o.instance.id],
                )
            )
        return finished


def _undecodable(what: str, value: Any) -> str | None:
    if isinstance(value, Undecodable):
        return f"stored {what} cannot be decoded: {value.error}"
    return None


def _decoded(value: Any) -> Any:
    return None if isinstance(value, Undecodable) else value


def _instance_row(r: tuple[Any, ...]) -> InstanceRow:
    problems = [
        p
        for p in (_undecodable("parameters", r[3]), _undecodable("payload", r[4]))
        if p is not None
    ]
    return InstanceRow(
        r[0],
        r[1],
        r[2],
        _decoded(r[3]),
        _decoded(r[4]),
        WorkflowStatus(r[5]),
        r[6],
        r[7],
        r[8],
        problem="; ".join(problems) or None,
    )


def _event_row(e: tuple[Any, ...]) -> EventRow:
    problems = [
        p
        for p in (_undecodable("task parameters", e[5]), _undecodable("task result", e[8]))
        if p is not None
    ]
    return EventRow(
        e[0],
        e[1],
        e[2],
        e[3],
        e[4],
        _decoded(e[5]),
        e[6],
        e[7],
        _decoded(e[8]),
        problem="; ".join(problems) or None,
    )


def _claimed_task(r: tuple[Any, ...]) -> ClaimedTask:
    return ClaimedTask(
        r[0],
        r[1],
        r[2],
        _decoded(r[3]),
        r[4],
        r[5],
        r[6],
        problem=_undecodable("task parameters", r[3]),
    )


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _finished_info(row: tuple[Any, ...]) -> WorkflowInstanceInfo:
    status = WorkflowStatus(row[2])
    return WorkflowInstanceInfo(
        workflow_name=row[0],
        instance_name=row[1],
        status=status,
        parameters=row[3],
        result=row[4] if status is WorkflowStatus.COMPLETED else None,
        error=row[5],
        started_at=row[6],
        ended_at=row[7],
    )


def _embedded() -> str:
    from cereal.backends.postgres.embedded import embedded_dsn

    return embedded_dsn()


def _is_dead(conn: Connection) -> bool:
    """True if an idle connection cannot be used: closed, or the server has sent something
    (an idle session is normally silent: here it is the error of a terminated backend, or
    the end of the stream) and the connection fails a round trip."""
    if conn.closed:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)
            readable = bool(poller.poll(0))
        else:  # Windows
            readable = bool(select.select([conn.fileno()], [], [], 0)[0])
        if not readable:
            return False
        ConnectionPool.check_connection(conn)  # e.g. a notice: harmless
    except Exception:
        return True
    return False


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: lost connections, deadlocks, serialisation failures,
    and a prepared statement the server no longer has (the connection is then replaced)."""
    return isinstance(
        exc,
        psycopg.OperationalError
        | pgerrors.DeadlockDetected
        | pgerrors.SerializationFailure
        | pgerrors.InvalidSqlStatementName
        | psycopg.InterfaceError,
    )
