"""The async twin of :class:`~cereal.backends.postgres.PostgresDriver`, for ``Manager.aio``.

It runs the named statements of ``queries.sql`` on psycopg's async connections: an
:class:`~psycopg_pool.AsyncConnectionPool` for the operations and one async LISTEN
connection, shared by every waiter, for the notifications that a run finished. Nothing here
blocks the event loop or takes a thread per call; the only thread ever used is for the
one-time schema migration (and the embedded server's start) before the first connection.

Pool and listener belong to the event loop that opened them. A call made on another loop
(a second ``asyncio.run``, a test client's loop) opens fresh ones and lets the old go.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from cereal.backends.postgres.connections import (
    AsyncConnection,
    RecentFirstAsyncPool,
    warm_up_async,
)
from cereal.backends.postgres.errors import translate as shared_translate
from cereal.backends.postgres.jsonb import use_strict_jsonb
from cereal.backends.postgres.listing import BulkEnqueue, Listing
from cereal.backends.postgres.migrations import migrate
from cereal.backends.postgres.queries import load_queries
from cereal.backends.postgres.rows import Row, dumps, finished_info, live_info, schedule
from cereal.driver import ScheduleChange, StoredSchedule
from cereal.errors import (
    CerealError,
    TransientDatabaseError,
)
from cereal.logging import get_logger
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.backends.postgres.driver import PostgresDriver

__all__ = ["AsyncPostgresDriver"]

log = get_logger("cereal.postgres.aio")


POLL_INTERVAL = 1.0
"""How often waiters look at the database while the listen connection is down."""
RECHECK_INTERVAL = 10.0
"""How often waiters look anyway while it is up (a safety net; wakeups do the work)."""


class _Watch:
    """An :class:`~cereal.driver.InstanceWatch`: woken by the driver's checker."""

    def __init__(self, driver: AsyncPostgresDriver, pair: tuple[str, str]) -> None:
        self._driver = driver
        self.pair = pair
        self.woken = asyncio.Event()
        self.state: _LoopState | None = None

    async def wait(self, timeout: float | None) -> None:
        self._driver._attach(self)  # again after the client was closed and reopened
        if not self.woken.is_set():
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.woken.wait()
        self.woken.clear()

    def close(self) -> None:
        if self.state is not None:
            self.state.detach(self)
            self.state = None


class _LoopState:
    """The pool, listener, watches and change counter of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pool: AsyncConnectionPool[AsyncConnection] | None = None
        self.opening: asyncio.Task[AsyncConnectionPool[AsyncConnection]] | None = None
        self.listener: asyncio.Task[None] | None = None
        self.checker: asyncio.Task[None] | None = None
        self.pools: list[AsyncConnectionPool[AsyncConnection]] = []
        """Every pool made on this loop, closed by the guard whatever happens."""
        self.guard: asyncio.Task[None] | None = None
        self.watches: dict[tuple[str, str], set[_Watch]] = {}
        self.connected = False
        self.counter = 0
        self.changed: asyncio.Future[None] = loop.create_future()

    def detach(self, watch: _Watch) -> None:
        watching = self.watches.get(watch.pair)
        if watching is not None:
            watching.discard(watch)
            if not watching:
                del self.watches[watch.pair]

    def bump(self) -> None:
        self.counter += 1
        if not self.changed.done():
            self.changed.set_result(None)
        self.changed = self.loop.create_future()


class AsyncPostgresDriver:
    """Implements :class:`cereal.driver.AsyncDriver` on PostgreSQL.

    Made by :meth:`PostgresDriver.async_driver` (same database, schema and options);
    ``prepare`` resolves the connection string and migrates the schema (run once, in a
    worker thread, before the first connection).
    """

    def __init__(
        self,
        prepare: Callable[[], str],
        *,
        schema: str,
        channel: str,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        application_name: str = "cereal",
    ) -> None:
        self._prepare = prepare
        self._dsn: str | None = None
        self._schema = schema
        self._channel = channel
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._q = load_queries()
        self._st: _LoopState | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def twin_of(cls, driver: PostgresDriver) -> AsyncPostgresDriver:
        """The async twin of a synchronous driver."""

        def prepare() -> str:
            with driver.connect() as conn:
                migrate(conn, driver.schema)
            return driver.dsn

        return cls(
            prepare,
            schema=driver.schema,
            channel=driver.channel,
            pool_size=getattr(driver, "_pool_size", 10),
            connect_timeout=getattr(driver, "_connect_timeout", 10.0),
            application_name=getattr(driver, "_application_name", "cereal"),
        )

    @property
    def schema(self) -> str:
        return self._schema

    # -- lifecycle -----------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        st = self._st
        if st is None or st.loop is not loop:
            if st is not None:
                self._abandon(st)
            st = self._st = _LoopState(loop)
            st.guard = loop.create_task(self._guard(st))
        return st

    async def _guard(self, st: _LoopState) -> None:
        """Close the loop's pools when this task is cancelled: by :meth:`close`, or by
        ``asyncio.run`` ending. psycopg's pool workers ignore cancellation, so a pool left
        open would keep ``asyncio.run`` from ever returning."""
        try:
            await st.loop.create_future()  # until cancelled
        finally:
            st.connected = False
            for pool in st.pools:
                with suppress(Exception):
                    await pool.close(timeout=5)

    async def _pool(self) -> AsyncConnectionPool[AsyncConnection]:
        st = self._state()
        if st.pool is not None:
            return st.pool
        opening = st.opening
        if opening is None or (opening.done() and (opening.cancelled() or opening.exception())):
            opening = st.opening = st.loop.create_task(self._open_pool(st))
        return await asyncio.shield(opening)

    async def _open_pool(self, st: _LoopState) -> AsyncConnectionPool[AsyncConnection]:
        if self._dsn is None:
            self._dsn = await asyncio.to_thread(self._prepare)
        pool: AsyncConnectionPool[AsyncConnection] = RecentFirstAsyncPool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            kwargs=self._connect_kwargs(),
            configure=self._configure,
            check=_check_connection,
            open=False,
            name=f"cereal-aio-{self._schema}",
        )
        st.pools.append(pool)
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.Error as exc:
            st.pools.remove(pool)
            await pool.close(timeout=0)
            raise TransientDatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc
        st.pool = pool
        return pool

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": max(1, round(self._connect_timeout)),
            "application_name": self._application_name,
        }

    async def _configure(self, conn: AsyncConnection) -> None:
        """Set up a new pooled connection as the synchronous driver's pool does (search
        path, UTC, strict ``jsonb``, no JIT), then warm it up."""
        use_strict_jsonb(conn.adapters)
        await conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false),"
            " set_config('jit', 'off', false)",
            ('"' + self._schema + '"',),
        )
        await warm_up_async(conn)

    async def close(self) -> None:
        st, self._st = self._st, None
        if st is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is st.loop:
            await self._close_state(st)
        else:
            self._abandon(st)

    def close_soon(self) -> None:
        st, self._st = self._st, None
        if st is not None:
            self._abandon(st)

    def _abandon(self, st: _LoopState) -> None:
        """Close ``st`` on its own loop as well as we can from here, without waiting on it."""
        loop = st.loop
        if loop.is_closed():
            return  # its tasks were cancelled when it closed; the sockets go with the objects
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(self._close_state(st))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close_state(st), loop)

    async def _close_state(self, st: _LoopState) -> None:
        for watching in st.watches.values():
            for watch in watching:
                watch.state = None
                watch.woken.set()  # it looks again, and watches on through fresh connections
        st.watches.clear()
        for task in (st.checker, st.listener, st.opening, st.guard):
            if task is not None and not task.done():
                task.cancel()
                with suppress(BaseException):
                    await task

    # -- connections ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection; psycopg errors inside come out as :mod:`cereal.errors`."""
        try:
            pool = await self._pool()
            async with pool.connection(timeout=max(self._connect_timeout, 30.0)) as conn:
                yield conn
        except CerealError:
            raise
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def _rows(
        self, name: str, params: dict[str, Any], *, prepare: bool | None = None
    ) -> list[Row]:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(self._q[name], params, prepare=prepare)
            return await cur.fetchall()

    async def _notify(self, conn: AsyncConnection, payloads: Sequence[str]) -> None:
        await conn.execute(
            self._q["notify"], {"channel": self._channel, "payloads": list(payloads)}
        )

    # -- workflow instances --------------------------------------------------------------------

    async def enqueue_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> bool:
        rows = await self._rows(
            "enqueue_workflow",
            {
                "workflow_name": workflow_name,
                "instance_name": instance_name,
                "parameters": parameters_json,
                "trace_context": trace_context,
                "channel": self._channel,
            },
        )
        return bool(rows)

    async def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]], trace_context: str | None = None
    ) -> list[tuple[str, str]]:
        bulk = BulkEnqueue.of(items)
        params = bulk.params(trace_context, self._channel)
        rows = [] if params is None else await self._rows("enqueue_workflows", params)
        return bulk.not_enqueued(rows)

    async def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        return bool(await self._rows("cancel_workflow", params | {"channel": self._channel}))

    async def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        rows = await self._rows(
            "kill_workflow", params | {"error": error, "channel": self._channel}
        )
        return bool(rows)

    async def signal_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        signal_name: str,
        signal_payload_json: str | None,
    ) -> bool:
        rows = await self._rows(
            "signal_workflow",
            {
                "workflow_name": workflow_name,
                "instance_name": instance_name,
                "signal_name": signal_name,
                "payload": signal_payload_json,
                "channel": self._channel,
            },
        )
        return bool(rows)

    async def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = await (await cur.execute(self._q["get_live_instance"], params)).fetchone()
            if row is not None:
                return live_info(row)
            row = await (await cur.execute(self._q["get_latest_result"], params)).fetchone()
        return None if row is None else finished_info(row)

    async def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        listing = Listing.of(workflow_name, instance_name, is_running, status, limit, after)
        if listing.statement is None:
            return []
        return listing.read(await self._rows(listing.statement, listing.params, prepare=False))

    # -- waiting for runs to finish ------------------------------------------------------------

    def watch_instance(self, workflow_name: str, instance_name: str) -> _Watch:
        watch = _Watch(self, (workflow_name, instance_name))
        self._attach(watch)
        return watch

    def _attach(self, watch: _Watch) -> None:
        st = self._state()
        if watch.state is st:
            return
        if watch.state is not None:
            watch.state.detach(watch)
        watch.state = st
        st.watches.setdefault(watch.pair, set()).add(watch)
        if st.listener is None or st.listener.done():
            st.listener = st.loop.create_task(self._listen(st))
        if st.checker is None or st.checker.done():
            st.checker = st.loop.create_task(self._check_watches(st))

    async def _check_watches(self, st: _LoopState) -> None:
        """While anything is watched: after each wakeup (or a re-check interval), ask the
        database in one statement which watched pairs are no longer live; wake their
        watches."""
        seen = -1  # look once at the start: a finish may predate the listener
        while st.watches:
            if st.counter == seen:
                wait = RECHECK_INTERVAL if st.connected else POLL_INTERVAL
                await asyncio.wait([st.changed], timeout=wait)
            seen = st.counter
            pairs = list(st.watches)
            if not pairs:
                break
            try:
                rows = await self._rows(
                    "not_live",
                    {
                        "workflow_names": [w for w, _ in pairs],
                        "instance_names": [i for _, i in pairs],
                    },
                )
            except CerealError as exc:
                _reraise_cancel(exc)
                log.warning("cannot check awaited instances; trying again", error=str(exc))
                continue
            for row in rows:
                for watch in st.watches.get((row["workflow_name"], row["instance_name"]), ()):
                    watch.woken.set()

    async def _listen(self, st: _LoopState) -> None:
        """Keep a LISTEN connection on this schema's channel; count finish notifications."""
        delay = POLL_INTERVAL
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
        while True:
            try:
                await self._pool()  # resolves the connection string and migrates once
                assert self._dsn is not None
                conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs())
                async with conn:
                    await conn.execute(listen)
                    st.connected = True
                    delay = POLL_INTERVAL
                    st.bump()  # finishes announced while we were not listening are lost
                    async for note in conn.notifies():
                        if note.payload.startswith("f"):
                            st.bump()
            except Exception as exc:
                _reraise_cancel(exc)
                log.warning(
                    "async listen connection lost; waiters poll until it is back",
                    error=str(exc),
                    delay=delay,
                )
            finally:
                st.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    # -- schedules -----------------------------------------------------------------------------

    async def now(self) -> datetime:
        async with self._connection() as conn:
            return await _now(conn, self._q["db_now"])

    async def insert_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        recurrence: str,
        enabled: bool,
        next_due_at: datetime | None,
    ) -> bool:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                self._q["insert_schedule"],
                {
                    "workflow_name": workflow_name,
                    "instance_name": instance_name,
                    "parameters": parameters_json,
                    "recurrence": recurrence,
                    "enabled": enabled,
                    "next_due_at": next_due_at,
                },
            )
            if await cur.fetchone() is None:
                return False
            await self._notify(conn, ["s"])
        return True

    async def update_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                self._q["lock_schedule"],
                {"workflow_name": workflow_name, "instance_name": instance_name},
            )
            row = await cur.fetchone()
            if row is None:
                return False
            sched_id, params, text, enabled, next_due = row  # lock_schedule's columns, in order
            now = await _now(conn, self._q["db_now"])
            new = change(StoredSchedule(dumps(params), text, enabled, next_due), now)
            await conn.execute(
                self._q["update_schedule"],
                {
                    "id": sched_id,
                    "parameters": new.parameters_json,
                    "recurrence": new.recurrence,
                    "enabled": new.enabled,
                    "next_due_at": new.next_due_at,
                },
            )
            await self._notify(conn, ["s"])
        return True

    async def delete_schedule(self, workflow_name: str, instance_name: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                self._q["delete_schedule"],
                {"workflow_name": workflow_name, "instance_name": instance_name},
            )
            if await cur.fetchone() is None:
                return False
            await self._notify(conn, ["s"])
        return True

    async def list_schedules(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        rows = await self._rows(
            "select_schedules", {"workflow_name": workflow_name, "instance_name": instance_name}
        )
        return [schedule(r) for r in rows]


def _reraise_cancel(exc: BaseException) -> None:
    """Let a cancelled background task end even when psycopg turned the cancellation into
    an error of its own (e.g. while connecting); otherwise it would retry for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def translate(exc: psycopg.Error) -> CerealError:
    """The :mod:`cereal.errors` type of a psycopg error (the message is the server's): the
    synchronous driver's classification (:func:`cereal.backends.postgres.errors.translate`),
    so that both clients raise the same type for the same failure."""
    return shared_translate(exc)


async def _check_connection(conn: AsyncConnection) -> None:
    """Refuse a pooled connection that is visibly dead, without a round trip when it is
    quiet (an idle session is silent: anything to read is an error or the end)."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        readable = bool(poller.poll(0))
    else:  # Windows
        readable = bool(select.select([conn.fileno()], [], [], 0)[0])
    if readable:
        await AsyncConnectionPool.check_connection(conn)


async def _now(conn: AsyncConnection, query: LiteralString) -> datetime:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    assert row is not None
    value: datetime = row[0]
    return value
