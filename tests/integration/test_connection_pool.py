"""The connection pools lend their most recently returned connection first.

A few warm connections (statements planned and prepared, caches loaded) then do the work,
instead of every connection of the pool in turn; the idle rest age out.
"""

from __future__ import annotations

import asyncio

from cereal.backends.postgres.connections import (
    Connections,
    RecentFirstAsyncPool,
    RecentFirstPool,
)


def _pid(conn: object) -> int:
    return int(conn.info.backend_pid)  # type: ignore[attr-defined]


def test_the_driver_pool_lends_the_connection_returned_last(pg_dsn: str, schema: str) -> None:
    connections = Connections(
        pg_dsn,
        schema,
        pool_size=4,
        pool_min_size=3,
        connect_timeout=10,
        application_name="cereal-test",
    )
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
