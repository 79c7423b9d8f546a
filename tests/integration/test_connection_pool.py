"""The connection pools lend their most recently returned connection first, and warm each
new connection up before lending it.

A few warm connections (statements planned and prepared, caches loaded) then do the work,
instead of every connection of the pool in turn; the idle rest age out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.connections import (
    Connections,
    RecentFirstAsyncPool,
    RecentFirstPool,
    warm_up,
)
from cereal.backends.postgres.notify import channel_name
from cereal.manager import Manager
from tests.helpers.doubler import Doubler, double
from tests.helpers.waiting import wait_for


def _connections(dsn: str, schema: str, *, size: int, min_size: int) -> Connections:
    return Connections(
        dsn,
        schema,
        pool_size=size,
        pool_min_size=min_size,
        connect_timeout=10,
        application_name="cereal-test",
    )


def _pid(conn: object) -> int:
    return int(conn.info.backend_pid)  # type: ignore[attr-defined]


def test_the_driver_pool_lends_the_connection_returned_last(pg_dsn: str, schema: str) -> None:
    connections = _connections(pg_dsn, schema, size=4, min_size=3)
    connections.open()
    try:
        with connections.connection() as a, connections.connection() as b:
            first = _pid(a)
            assert _pid(b) != first
        # a went back last (after b); a round-robin pool would lend the idle third next.
        for _ in range(3):
            with connections.connection() as c:
                assert _pid(c) == first
    finally:
        connections.close()


def test_the_pool_classes_lend_the_connection_returned_last(pg_dsn: str) -> None:
    with RecentFirstPool(pg_dsn, min_size=3, max_size=3, open=True) as pool:
        pool.wait(timeout=10)
        held = [pool.getconn() for _ in range(3)]
        pids = [_pid(c) for c in held]
        for conn in held:
            pool.putconn(conn)
        for _ in range(3):
            with pool.connection() as conn:
                assert _pid(conn) == pids[-1]


def test_the_async_pool_lends_the_connection_returned_last(pg_dsn: str) -> None:
    async def scenario() -> None:
        async with RecentFirstAsyncPool(pg_dsn, min_size=3, max_size=3, open=False) as pool:
            await pool.wait(timeout=10)
            held = [await pool.getconn() for _ in range(3)]
            pids = [_pid(c) for c in held]
            for conn in held:
                await pool.putconn(conn)
            for _ in range(3):
                async with pool.connection() as conn:
                    assert _pid(conn) == pids[-1]

    asyncio.run(scenario())


def test_each_new_pooled_connection_is_warmed_up_and_nothing_of_it_stays(
    pg_dsn: str, schema: str
) -> None:
    connections = _connections(pg_dsn, schema, size=3, min_size=3)
    with psycopg.connect(pg_dsn, autocommit=True) as watcher:
        connections.open()  # migrates, so the channel's listener can only start here
        watcher.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name(schema))))
        try:
            with connections.connection() as a, connections.connection() as b:
                for conn in (a, b):
                    assert conn.info.transaction_status is TransactionStatus.IDLE
            # A connection opened after the pool's first ones is warmed up as well.
            connections.close()
            connections.open()
            counts = watcher.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {s}.workflow_instances),"
                    " (SELECT count(*) FROM {s}.workflow_events),"
                    " (SELECT count(*) FROM {s}.tasks),"
                    " (SELECT count(*) FROM {s}.workflow_results),"
                    " (SELECT last_value FROM {s}.workflow_instances_id_seq)"
                ).format(s=sql.Identifier(schema))
            ).fetchone()
        finally:
            connections.close()
        assert counts is not None
        *rows, instance_ids_used = counts
        assert rows == [0, 0, 0, 0]
        assert instance_ids_used == 6, "each of the six connections ran the warm-up once"
        assert list(watcher.notifies(timeout=0.2)) == []


def test_the_async_pool_warms_each_new_connection_up_once_and_leaves_nothing(
    pg_dsn: str, schema: str
) -> None:
    driver = PostgresDriver(pg_dsn, schema=schema, pool_size=3)
    aio = driver.async_driver()

    async def scenario() -> set[int]:
        pids: set[int] = set()
        all_lent = asyncio.Event()

        async def borrow() -> None:
            async with aio._connection() as conn:
                pids.add(conn.info.backend_pid)
                if len(pids) == 3:
                    all_lent.set()
                await all_lent.wait()  # all three lent at once: three connections
                assert conn.info.transaction_status is TransactionStatus.IDLE
                cur = await conn.execute("SELECT current_setting('jit')")
                assert await cur.fetchone() == ("off",)

        try:
            await asyncio.gather(borrow(), borrow(), borrow())
            await aio.enqueue_workflow("w", "after the warm-up", None)
        finally:
            await aio.close()
        return pids

    try:
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            # The synchronous pool stays closed: the async one migrates the schema.
            watcher.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_name(schema))))
            pids = asyncio.run(scenario())
            counts = watcher.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {s}.workflow_instances),"
                    " (SELECT count(*) FROM {s}.workflow_results),"
                    " (SELECT last_value FROM {s}.workflow_instances_id_seq)"
                ).format(s=sql.Identifier(schema))
            ).fetchone()
            notes = [n.payload for n in watcher.notifies(timeout=0.2)]
    finally:
        driver.close()
    assert len(pids) == 3
    assert counts == (1, 0, 4), "three warm-ups (rolled back) and the one real instance"
    assert notes == ["ew"], "only the real enqueue notified"


def test_a_connection_that_may_not_write_is_left_as_it_was(pg_dsn: str, schema: str) -> None:
    Connections(
        pg_dsn, schema, pool_size=1, pool_min_size=0, connect_timeout=10, application_name="t"
    ).open()  # migrated
    with psycopg.connect(
        pg_dsn, autocommit=True, options="-c default_transaction_read_only=on"
    ) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        warm_up(conn)
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM workflow_instances").fetchone() == (0,)


def test_a_connection_to_a_schema_without_the_tables_is_left_as_it_was(
    pg_dsn: str, schema: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        warm_up(conn)
        assert conn.info.transaction_status is TransactionStatus.IDLE
        assert conn.execute("SELECT to_regclass('workflow_instances')").fetchone() == (None,)


def test_a_claim_that_finds_nothing_keeps_the_statements_its_connection_prepared(
    pg_dsn: str, schema: str
) -> None:
    # psycopg looks at the first ROLLBACK a connection runs, and deallocates every statement
    # prepared by then. The warm-up runs that first ROLLBACK before anything is prepared, so
    # an idle poll (a claim that finds nothing rolls back) leaves the hot statements alone.
    driver = PostgresDriver(pg_dsn, schema=schema, pool_size=2)  # used one at a time
    try:
        for n in range(7):  # prepared on its sixth run
            driver.enqueue_workflow("w", f"i{n}", None)

        def prepared() -> set[str]:
            with driver.connection() as conn:
                rows = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
            return {row[0] for row in rows}

        before = prepared()
        assert before
        for _ in range(8):
            with driver.claim_events(["nobody"], 10, 10) as batch:
                assert batch.instances == []
        assert before <= prepared()
        with driver.claim_events(["w"], 10, 10) as batch:
            assert len(batch.instances) == 7  # left without a commit: rolled back
        assert driver.has_events(["w"])
    finally:
        driver.close()


def _prepared_statements(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT statement FROM pg_prepared_statements")]


def test_the_preparer_leaves_the_last_idle_connection_to_callers(pg_dsn: str, schema: str) -> None:
    connections = _connections(pg_dsn, schema, size=2, min_size=2)
    connections.open()
    try:
        with connections.connection() as a, connections.connection() as b:
            order = [_pid(a), _pid(b)]  # a goes back last, so it is lent first
        connections.prepare_hot_path()
        preparer = connections._preparer
        with connections.connection() as busy:
            time.sleep(0.5)
            assert preparer.pending() == 2, "the one idle connection is left alone"
            assert _prepared_statements(busy) == []
        wait_for(lambda: order[0] not in preparer._pending, what="the connection lent first")
        preparer.stop()
        with connections.connection() as first, connections.connection() as second:
            assert [_pid(first), _pid(second)] == order, "the pool's order is kept"
            fetch = "-- The oldest pending events of each instance"
            assert any(s.startswith(fetch) for s in _prepared_statements(first))
            assert _prepared_statements(second) == [], "the last idle one was never taken"
            for conn in (first, second):
                assert conn.info.transaction_status is TransactionStatus.IDLE
            rows = first.execute("SELECT count(*) FROM workflow_instances").fetchone()
            assert rows == (0,), "the preparation wrote nothing that stays"
    finally:
        connections.close()


def _statement_runs(pool: RecentFirstPool) -> list[tuple[int, str, int]]:
    """(connection, statement, runs) of each statement prepared on a connection of ``pool``
    (all of them lent at once)."""
    held = [pool.getconn(timeout=10) for _ in range(pool.get_stats()["pool_size"])]
    try:
        return [
            (_pid(conn), str(text), int(runs))
            for conn in held
            for text, runs in conn.execute(
                "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements"
            )
        ]
    finally:
        for conn in reversed(held):
            pool.putconn(conn)


def test_a_workflow_runs_on_the_statements_prepared_beforehand(pg_dsn: str, schema: str) -> None:
    # Had a real call sent a statement with other parameter types than the preparer's, psycopg
    # would have run it unprepared (and prepared a copy of its own on its sixth run): the
    # preparer's copy would have stayed at its own runs.
    driver = PostgresDriver(pg_dsn, schema=schema, pool_size=3)
    m = Manager(driver, close_driver=True)
    m.register_workflow_executor("w", Doubler())
    m.register_task_executor("double", double)
    with m:
        preparer = driver._db._preparer
        pool = driver._db._pool
        assert isinstance(pool, RecentFirstPool)
        wait_for(lambda: preparer.prepared() >= 1, what="a connection prepared")
        preparer.stop()
        before = {(pid, text): runs for pid, text, runs in _statement_runs(pool)}
        for n in range(20):  # one at a time: mostly on the connection lent first
            m.enqueue_workflow("w", f"i{n}", n)
            assert m.await_workflow("w", f"i{n}", timeout=30).result == 2 * n
        statements = _statement_runs(pool)
    after = {(pid, text): runs for pid, text, runs in statements}
    copies = Counter((pid, text) for pid, text, _ in statements)
    assert max(copies.values()) == 1, "no statement prepared twice on one connection"

    def used(header: str) -> bool:
        """A statement starting with ``header``, prepared beforehand, ran again."""
        found = [key for key in before if key[1].startswith(header)]
        assert found, f"nothing prepared beforehand starts with {header!r}"
        return any(after.get(key, 0) > before[key] for key in found)

    assert used("-- The oldest pending events of each instance")  # fetch_events
    assert used("-- Move finished instances to history")  # finish_instances
    assert used("-- enqueue_workflow for enqueue_and_hold")
    assert used("-- insert_tasks, claiming") or used("-- Write the tasks of continuing")
