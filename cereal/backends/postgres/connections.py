"""Connections to PostgreSQL: the pool, new connections, and telling dead ones apart."""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from cereal.backends.postgres.errors import translate, translated
from cereal.backends.postgres.hot_path import HotPathPreparer, prepare_hot_path
from cereal.backends.postgres.jsonb import use_strict_jsonb
from cereal.backends.postgres.migrations import migrate
from cereal.backends.postgres.queries import load_queries
from cereal.codec import MAX_NAME_LENGTH
from cereal.errors import DatabaseError, TransientDatabaseError
from cereal.logging import get_logger

__all__ = [
    "Connection",
    "Connections",
    "DedicatedConnection",
    "RecentFirstAsyncPool",
    "RecentFirstPool",
    "prepare_on",
    "roll_back_open_transaction",
    "warm_up",
    "warm_up_async",
]

Connection = psycopg.Connection[tuple[Any, ...]]
AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]

log = get_logger("cereal.postgres")

READ_ONLY = "25006"
"""SQLSTATE read_only_sql_transaction."""


def _most_recent_first(idle: object) -> None:
    """Put the connection returned last at the head of a pool's idle queue, which the pool
    lends from. Lent round-robin (the pool's own order), every connection has to plan,
    prepare and cache every statement before a manager runs at speed, and the idle ones are
    never retired; lent most recent first, a few warm connections do the work and the rest
    age out after ``max_idle``. A pool without the expected queue keeps its own order."""
    if isinstance(idle, deque) and len(idle) > 1:
        idle.rotate(1)


class RecentFirstPool(ConnectionPool[psycopg.Connection[Any]]):
    """A :class:`~psycopg_pool.ConnectionPool` that lends its most recently returned
    connection first (see :func:`_most_recent_first`)."""

    def _get_ready_connection(self, timeout: float | None) -> psycopg.Connection[Any] | None:
        _most_recent_first(getattr(self, "_pool", None))  # called with the pool's lock held
        return super()._get_ready_connection(timeout)


class RecentFirstAsyncPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """The asyncio twin of :class:`RecentFirstPool`."""

    async def _get_ready_connection(
        self, timeout: float | None
    ) -> psycopg.AsyncConnection[Any] | None:
        _most_recent_first(getattr(self, "_pool", None))
        return await super()._get_ready_connection(timeout)


class Connections:
    """A lazily opened pool of autocommit connections to one schema (``search_path`` set,
    time zone UTC, ``jsonb`` decoded strictly), plus fresh connections outside the pool.

    Every psycopg error raised while a connection is used through :meth:`connection` or
    :meth:`connect` leaves as a :mod:`cereal.errors` type.
    """

    def __init__(
        self,
        dsn: str | None,
        schema: str,
        *,
        pool_size: int,
        pool_min_size: int,
        connect_timeout: float,
        application_name: str,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._pool_size = pool_size
        self._pool_min_size = max(0, min(pool_min_size, pool_size))
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._pool: ConnectionPool[Connection] | None = None
        self._lock = threading.Lock()
        self._preparer = HotPathPreparer(prepare_on)
        self._prepare_wanted = False

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
            error = translate(exc)
            raise type(error)(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            with translated():
                self._configure(conn)
        except DatabaseError:
            conn.close()
            raise
        return conn

    def _configure(self, conn: Connection) -> None:
        use_strict_jsonb(conn.adapters)
        # JIT compiles a plan whose estimated cost is high, as a generic plan's often is
        # (a claim's LIMIT is a parameter): 27 ms spent to save nothing on queue statements.
        conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false),"
            " set_config('jit', 'off', false)",
            ('"' + self._schema + '"',),
        )

    def _configure_pooled(self, conn: Connection) -> None:
        self._configure(conn)
        if warm_up(conn):
            self._preparer.add(conn.info.backend_pid)

    def prepare_hot_path(self) -> None:
        """From now on, prepare the statements of a workflow's life on the pooled
        connections, in a thread of its own, while the pool rests
        (:class:`~cereal.backends.postgres.hot_path.HotPathPreparer`). For a process that runs
        workflows; a client that only enqueues has no use for them."""
        with self._lock:
            self._prepare_wanted = True
            if self._pool is not None:
                self._preparer.start(self._pool)

    def open(self) -> None:
        """Migrate the schema and open the pool; does nothing if it is open."""
        with self._lock:
            if self._pool is not None:
                return
            with self.connect() as conn, translated():
                migrate(conn, self._schema)
            pool: ConnectionPool[Connection] = RecentFirstPool(
                self.dsn,
                min_size=self._pool_min_size,
                max_size=self._pool_size,
                kwargs={
                    "autocommit": True,
                    "connect_timeout": max(1, round(self._connect_timeout)),
                    "application_name": self._application_name,
                },
                configure=self._configure_pooled,
                open=False,
                name=f"cereal-{self._schema}",
            )
            with translated():
                pool.open(wait=self._pool_min_size > 0, timeout=self._connect_timeout)
            self._pool = pool
            if self._prepare_wanted:
                self._preparer.start(pool)

    def close(self) -> None:
        """Close the pool; it can be opened again."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            self._preparer.stop()
            pool.close(timeout=5)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Borrow a pooled connection (autocommit; wrap writes in ``conn.transaction()``)."""
        if self._pool is None:
            self.open()
        pool = self._pool
        if pool is None:
            raise TransientDatabaseError("the driver was closed")
        # Not less than 30 s: after an outage the pool reconnects with a growing backoff, and
        # a shorter wait fails the first calls made once the server is back.
        timeout = max(self._connect_timeout, 30.0)
        with translated():
            # After a server restart or pg_terminate_backend, every idle pooled connection is
            # dead and the pool would hand each one out once, failing that caller's statement.
            # Skip the ones that visibly are (a poll() call each, no round trip); the pool
            # replaces them.
            for _ in range(self._pool_size):
                conn = pool.getconn(timeout=timeout)
                if not is_dead(conn):
                    break
                conn.close()
                pool.putconn(conn)
            else:
                conn = pool.getconn(timeout=timeout)
            try:
                with conn:
                    yield conn
            except psycopg.Error as exc:
                if exc.sqlstate == READ_ONLY:
                    # A session opened while the server was read-only (or on a standby)
                    # stays so: drop it, the pool's next one may reach a writable server.
                    conn.close()
                raise
            finally:
                pool.putconn(conn)


def warm_up(conn: Connection) -> bool:
    """Run the writes of a workflow's life on a new connection and roll them back
    (``warm_up_writes`` in queries.sql says why); True if they ran. Best effort: a role that
    may not write, a read-only server or a schema not migrated yet leaves the connection as
    it was (False), and so does any error.

    psycopg looks at the first ROLLBACK a connection runs and deallocates every statement
    prepared by then; later ones it leaves alone. The warm-up runs that first ROLLBACK with
    nothing prepared, so the rollbacks of idle polls never cost the hot statements their
    preparation (nor the ones :func:`prepare_on` prepares).
    """
    queries = load_queries()
    try:
        allowed = conn.execute(queries["warm_up_allowed"], prepare=False).fetchone()
        if allowed is None or not allowed[0]:
            return False
        conn.execute("BEGIN", prepare=False)
        params = _warm_up_params(conn)
        row = conn.execute(queries["warm_up_writes"], params, prepare=False).fetchone()
        if row is not None:
            conn.execute(queries["warm_up_cascade"], {"id": row[0]}, prepare=False)
    except psycopg.Error as exc:
        _warm_up_skipped(exc)
        return False
    finally:
        roll_back_open_transaction(conn)
    return True


def prepare_on(conn: Connection, step: int) -> None:
    """Run step ``step`` of preparing the statements of a workflow's life on a warmed-up
    connection (:func:`~cereal.backends.postgres.hot_path.prepare_hot_path`), in a
    transaction rolled back. Best effort, as the warm-up."""
    try:
        conn.execute("BEGIN", prepare=False)
        prepare_hot_path(conn, load_queries(), _warm_up_params(conn)["name"], step)
    except psycopg.Error as exc:
        _warm_up_skipped(exc)
    finally:
        roll_back_open_transaction(conn)


async def warm_up_async(conn: AsyncConnection) -> None:
    """The asyncio twin of :func:`warm_up`, for the pools of ``Manager.aio``."""
    queries = load_queries()
    try:
        cur = await conn.execute(queries["warm_up_allowed"], prepare=False)
        allowed = await cur.fetchone()
        if allowed is None or not allowed[0]:
            return
        await conn.execute("BEGIN", prepare=False)
        params = _warm_up_params(conn)
        cur = await conn.execute(queries["warm_up_writes"], params, prepare=False)
        row = await cur.fetchone()
        if row is not None:
            await conn.execute(queries["warm_up_cascade"], {"id": row[0]}, prepare=False)
    except psycopg.Error as exc:
        _warm_up_skipped(exc)
    finally:
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                await conn.execute("ROLLBACK", prepare=False)


def _warm_up_params(conn: Connection | AsyncConnection) -> dict[str, str]:
    """The warm-up's name: longer than names may be, so that no caller's can collide."""
    return {"name": f"cereal warm-up {conn.info.backend_pid} " + "~" * MAX_NAME_LENGTH}


def _warm_up_skipped(exc: psycopg.Error) -> None:
    log.debug("connection warm-up skipped", error=str(exc))


def roll_back_open_transaction(conn: Connection) -> None:
    """Roll back the transaction ``conn`` was left in, if any. A broken connection fails
    this too, silently; the pool then discards it."""
    if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
        with suppress(psycopg.Error):
            conn.execute("ROLLBACK", prepare=False)


class DedicatedConnection:
    """One connection of its own, outside the pool, for work that must not wait behind
    it: task heartbeats. After an outage the pool reconnects with a growing backoff and may
    be busy with everyone's retries; this connection is opened again on the very next call
    after any failure (bounded by the connect timeout), so liveness comes back as soon as
    the server does. Calls are serialised; psycopg errors leave as :mod:`cereal.errors`
    types."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Use the connection (autocommit), opening it first if needed."""
        with self._lock:
            conn = self._conn
            if conn is None or is_dead(conn):
                self._conn = None
                if conn is not None:
                    conn.close()
                conn = self._conn = self._connections.connect()
            try:
                with translated():
                    yield conn
            except BaseException:
                # Whatever went wrong (a lost link, a read-only session after a failover),
                # the next call starts from a fresh connection.
                self._conn = None
                conn.close()
                raise

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def is_dead(conn: Connection) -> bool:
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


def _embedded() -> str:
    from cereal.backends.postgres.embedded import embedded_dsn

    return embedded_dsn()
