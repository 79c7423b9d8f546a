"""Side-by-side benchmarks against pgqueuer: ``python -m benchmarks.peers`` (or
``scripts/bench --peers``).

One PostgreSQL server (the embedded one unless ``--dsn`` is given), one run, alternating
rounds: in each round every workload runs once for cereal and once for pgqueuer (the order
flips from round to round), so both sides see the same machine at the same time. Each side
gets a database of its own, created for the run and dropped at the end.

Workloads:

- P1: drain of workflows that complete in ``on_start`` (no task), one manager, against
  pgqueuer's drain of plain jobs with a dequeue batch of 100 (one worker loop);
- P2: drain of single-task workflows (task ``workers=10`` and the default ``workers=1``)
  against pgqueuer's drain of plain jobs with its default settings;
- P3: latency from enqueue to the start of the task (cereal: ``enqueue_workflow`` ->
  ``on_start`` enqueues a task -> the task starts; pgqueuer: enqueue -> the job handler
  starts) at a steady low rate, by default and with ``eager_start`` (``on_start`` runs in
  the enqueuing thread and its commit claims the task), against the same pgqueuer run; the
  p99 is also given warm, without the first tenth of each side's samples, which measure the
  start (new connections planning and preparing their statements);
- F1: the floors of the server: the raw one-row commit rate of one client, a batched
  dequeue loop (``DELETE ... LIMIT 100 FOR UPDATE SKIP LOCKED RETURNING``) over a plain table,
  and cereal's own statements for P1's and P2's workflows driven 100 instances at a time by
  one thread straight through the driver (no manager, no callbacks, no threads): what the
  rows cereal writes per workflow cost the server, the bound for any manager on this schema;
- F2: the latency of one client's one-row commits at P3's pace (p50, p99, max), measured in
  each round just before P3: every P3 path waits for at least one commit, so a round whose
  commits stall puts both sides' P3 p99 at least that high. Beside it, the share of the
  machine's CPU time spent in iowait during each side's P3 runs (from ``/proc/stat``): a
  disk stall in one side's run shows there.

For each drain the commits and WAL bytes per item are read from the server's statistics
(``pg_stat_database``, ``pg_current_wal_lsn()``), and cereal's statements per item are
counted on the client. Nothing here is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cereal import (
    CancelEvent,
    Decision,
    Manager,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
    WorkflowInstanceInfo,
)
from cereal.backends.postgres import PostgresDriver
from cereal.driver import EventBatch, InstanceRow, StepOutcome, TaskClaim, TaskOutcome
from cereal.types import WorkflowStatus
from cereal.workflow import PendingTask

__all__ = ["PEER_MISSING", "main", "peer_available"]

PEER_MISSING = (
    "the peer side needs pgqueuer and asyncpg, which are not installed: run "
    "`.venv/bin/pip install -e '.[bench]'` (or `pip install pgqueuer asyncpg`), "
    "or pass --cereal-only"
)


def peer_available() -> bool:
    """Whether pgqueuer and its asyncpg driver can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("pgqueuer", "asyncpg"))


# -- measurement helpers ---------------------------------------------------------------------


@dataclass
class Cost:
    """What one drain cost the server, per item."""

    commits: float
    wal_bytes: float
    statements: float | None  # counted on cereal's client; None for the peer
    server_ms: float | None = None
    """Execution time of the side's top-level statements (pg_stat_statements), when loaded."""


@dataclass
class Drain:
    rate: float  # items per second
    cost: Cost


@dataclass
class Sizes:
    p1: int
    p2: int
    """Items in each P2 drain: both of cereal's (``workers=10`` and ``workers=1``) and the
    peer's, so that each side's start-up is spread over the same work."""
    p3_rate: float
    p3_count: int
    floor_commits: int
    floor_rows: int


class _StatementCounter:
    """Counts the statements psycopg sends from this process while it is entered."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._saved: list[tuple[str, Any]] = []

    def __enter__(self) -> _StatementCounter:
        counter = self
        execute = psycopg.Cursor.execute
        executemany = psycopg.Cursor.executemany

        def counting_execute(cur: Any, *args: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.count += 1
            return execute(cur, *args, **kwargs)

        def counting_executemany(cur: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
            params_seq = list(params_seq)
            with counter._lock:
                counter.count += len(params_seq)
            return executemany(cur, query, params_seq, **kwargs)

        self._saved = [("execute", execute), ("executemany", executemany)]
        psycopg.Cursor.execute = counting_execute  # type: ignore[method-assign,assignment]
        psycopg.Cursor.executemany = counting_executemany  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved:
            setattr(psycopg.Cursor, name, original)


class Server:
    """The PostgreSQL server under test, with one database per side."""

    def __init__(self, dsn: str | None) -> None:
        self.server_dsn = PostgresDriver(dsn).dsn
        tag = uuid.uuid4().hex[:8]
        self.cereal_db = f"peers_cereal_{tag}"
        self.peer_db = f"peers_pgqueuer_{tag}"
        self._created: list[str] = []
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            for name in (self.cereal_db, self.peer_db):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                self._created.append(name)
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "?"
            row = conn.execute("SHOW shared_preload_libraries").fetchone()
            self.preloaded = str(row[0]) if row else ""
        self.cereal_dsn = make_conninfo(self.server_dsn, dbname=self.cereal_db)
        self.peer_dsn = make_conninfo(self.server_dsn, dbname=self.peer_db)
        # pg_stat_statements counts the whole server; its view is read from a database of
        # this run (created there, dropped with it).
        self.statement_times = False
        if "pg_stat_statements" in self.preloaded:
            try:
                with psycopg.connect(self.cereal_dsn, autocommit=True) as conn:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                self.statement_times = True
            except psycopg.Error:
                pass

    def cleanup(self) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            for name in self._created:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    def counters(self, dbname: str) -> tuple[int, int, float]:
        """(commits in ``dbname`` so far, current WAL position in bytes, milliseconds of
        top-level statement execution in ``dbname`` so far, 0 without pg_stat_statements)."""
        # Backends publish their counters when they exit or at most once a second while
        # idle; the drains close their connections before this is read.
        time.sleep(0.3)
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = %s),"
                " pg_current_wal_lsn() - '0/0'::pg_lsn",
                (dbname,),
            ).fetchone()
        assert row is not None
        spent = 0.0
        if self.statement_times:
            with psycopg.connect(self.cereal_dsn, autocommit=True) as conn:
                took = conn.execute(
                    "SELECT sum(s.total_exec_time) FROM pg_stat_statements s"
                    " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND s.toplevel",
                    (dbname,),
                ).fetchone()
            spent = float(took[0] or 0.0) if took else 0.0
        return int(row[0] or 0), int(row[1]), spent

    @contextmanager
    def cost(self, dbname: str, items: int, count_statements: bool) -> Iterator[list[Cost]]:
        """Measure the cost per item of the block; the result is appended to the yielded list."""
        out: list[Cost] = []
        commits0, wal0, spent0 = self.counters(dbname)
        counter = _StatementCounter()
        if count_statements:
            with counter:
                yield out
        else:
            yield out
        commits1, wal1, spent1 = self.counters(dbname)
        out.append(
            Cost(
                commits=(commits1 - commits0) / items,
                wal_bytes=(wal1 - wal0) / items,
                statements=counter.count / items if count_statements else None,
                server_ms=(spent1 - spent0) / items if self.statement_times else None,
            )
        )


# -- cereal side -----------------------------------------------------------------------------


class NoTask:
    """Completes in ``on_start``."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        return instance.complete()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete()

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


class OneTask:
    """Enqueues one task in ``on_start`` and completes when it is back."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        instance.enqueue_task("noop")
        return instance.continue_with()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete()

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


def _noop(task: Task) -> None:
    return None


def _manager(server: Server, schema: str | None = None, **options: Any) -> Manager:
    schema = schema or "peers_" + uuid.uuid4().hex[:8]
    return Manager(PostgresDriver(server.cereal_dsn, schema=schema), close_driver=True, **options)


def cereal_drain(server: Server, items: int, with_task: bool, workers: int = 1) -> Drain:
    """Enqueue ``items`` workflows up front, then time one manager draining them."""
    done = threading.Semaphore(0)

    def finished(info: WorkflowInstanceInfo) -> None:
        done.release()

    schema = "peers_" + uuid.uuid4().hex[:8]
    # Enqueue through a manager of its own, closed before the drain, so that its commits
    # cannot reach the statistics inside the measured window.
    producer = _manager(server, schema)
    try:
        for i in range(items):
            producer.enqueue_workflow("wf", f"i{i}", None)
    finally:
        producer.driver.close()
    m = _manager(server, schema, on_workflow_complete=finished)
    m.register_workflow_executor("wf", OneTask() if with_task else NoTask())
    if with_task:
        m.register_task_executor("noop", _noop, workers=workers)
    m.driver.open()  # connected before the clock starts, as pgqueuer's side is
    with server.cost(server.cereal_db, items, count_statements=True) as cost:
        start = time.perf_counter()
        m.start()
        try:
            for _ in range(items):
                if not done.acquire(timeout=300):
                    raise RuntimeError("the cereal drain did not finish in 300 s")
            took = time.perf_counter() - start
        finally:
            m.stop()  # closes its connections, which publishes their statistics
    return Drain(items / took, cost[0])


def cereal_latency(server: Server, rate: float, count: int, eager: bool = False) -> list[float]:
    """Milliseconds from ``enqueue_workflow`` to the start of the task its ``on_start`` enqueues
    (with ``eager``: the manager's ``eager_start``)."""
    enqueued: dict[str, float] = {}
    started: dict[str, float] = {}

    def run(task: Task) -> None:
        started.setdefault(task.instance_name, time.perf_counter())

    m = _manager(server, eager_start=eager)
    m.register_workflow_executor("wf", OneTask())
    m.register_task_executor("noop", run, workers=4)
    with m:
        time.sleep(0.5)
        _paced(rate, count, lambda i: _cereal_enqueue(m, enqueued, f"i{i}"))
        for i in range(count):
            m.await_workflow("wf", f"i{i}", timeout=60)
    return [(started[n] - enqueued[n]) * 1000 for n in enqueued if n in started]


def _cereal_enqueue(m: Manager, enqueued: dict[str, float], name: str) -> None:
    enqueued[name] = time.perf_counter()
    m.enqueue_workflow("wf", name, None)


def _paced(rate: float, count: int, send: Callable[[int], None]) -> None:
    start = time.perf_counter()
    for i in range(count):
        send(i)
        time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))


# -- peer side (pgqueuer) --------------------------------------------------------------------


async def _connect(dsn: str) -> Any:
    """An asyncpg connection to the database that the libpq string ``dsn`` names."""
    import asyncpg

    parts = conninfo_to_dict(dsn)
    keys = {"host": "host", "port": "port", "user": "user", "password": "password"}
    kwargs: dict[str, Any] = {k: parts[v] for k, v in keys.items() if parts.get(v)}
    kwargs["database"] = parts.get("dbname")
    return await asyncpg.connect(**kwargs)


async def _pgq_fresh(dsn: str) -> None:
    from pgqueuer import AsyncpgDriver, Queries

    conn = await _connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if await queries.schema_is_installed():
            await queries.uninstall()
        await queries.install()
    finally:
        await conn.close()


async def _pgq_drain(dsn: str, items: int, batch_size: int | None) -> float:
    from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

    await _pgq_fresh(dsn)
    conn = await _connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        for offset in range(0, items, 1000):
            k = min(1000, items - offset)
            await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    finally:
        await conn.close()

    conn = await _connect(dsn)
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))
        seen = 0

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal seen
            seen += 1
            if seen == items:
                qm.shutdown.set()

        start = time.perf_counter()
        # run() returns once shutdown is set and the buffered acknowledgements are written.
        if batch_size is None:
            await qm.run()
        else:
            await qm.run(batch_size=batch_size)
        return items / (time.perf_counter() - start)
    finally:
        await conn.close()


async def _pgq_latency(dsn: str, rate: float, count: int) -> list[float]:
    from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

    await _pgq_fresh(dsn)
    enqueued: dict[int, float] = {}
    started: dict[int, float] = {}
    conn = await _connect(dsn)
    producer_conn = await _connect(dsn)
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            assert job.payload is not None
            started.setdefault(int(job.payload), time.perf_counter())
            if len(started) == count:
                qm.shutdown.set()

        worker = asyncio.create_task(qm.run())
        await asyncio.sleep(0.5)
        queries = Queries(AsyncpgDriver(producer_conn))
        start = time.perf_counter()
        for i in range(count):
            enqueued[i] = time.perf_counter()
            await queries.enqueue("noop", str(i).encode())
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        await asyncio.wait_for(worker, timeout=60)
    finally:
        await producer_conn.close()
        await conn.close()
    return [(started[i] - enqueued[i]) * 1000 for i in enqueued if i in started]


def pgq_drain(server: Server, items: int, batch_size: int | None) -> Drain:
    """pgqueuer draining ``items`` plain jobs with one worker loop (its default batch if None)."""
    with server.cost(server.peer_db, items, count_statements=False) as cost:
        rate = asyncio.run(_pgq_drain(server.peer_dsn, items, batch_size))
    return Drain(rate, cost[0])


def pgq_latency(server: Server, rate: float, count: int) -> list[float]:
    return asyncio.run(_pgq_latency(server.peer_dsn, rate, count))


# -- floors ----------------------------------------------------------------------------------


FLOOR_TABLE = "CREATE TEMP TABLE floor_commit (id bigserial PRIMARY KEY, v int)"
ONE_ROW_COMMIT = (
    "WITH j AS (INSERT INTO floor_commit (v) VALUES (1) RETURNING id) "
    "DELETE FROM floor_commit WHERE id = (SELECT id FROM j)"
)
"""The one-row transaction of the commit floors (F1's rate, F2's latency), autocommitted."""


def raw_commit_rate(server: Server, commits: int) -> float:
    """One client inserting and deleting one row per transaction."""
    with psycopg.connect(server.cereal_dsn, autocommit=True) as conn:
        conn.execute(FLOOR_TABLE)
        start = time.perf_counter()
        for _ in range(commits):
            conn.execute(ONE_ROW_COMMIT)
        return commits / (time.perf_counter() - start)


class CpuWindow:
    """The share of this machine's CPU time spent waiting on the disk (iowait) inside the
    ``with`` block, from ``/proc/stat`` (NaN where there is none)."""

    def __init__(self) -> None:
        self._start: list[int] | None = None
        self.iowait = float("nan")

    def __enter__(self) -> CpuWindow:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        if self._start is None or end is None:
            return
        spent = [b - a for a, b in zip(self._start, end, strict=False)]
        total = sum(spent[:8])  # user .. steal; guest time is counted inside user
        if total > 0:
            self.iowait = 100.0 * spent[4] / total

    @staticmethod
    def _read() -> list[int] | None:
        try:
            with open("/proc/stat") as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        if len(fields) < 6 or fields[0] != "cpu":
            return None
        return [int(f) for f in fields[1:]]


def commit_latency(server: Server, rate: float, count: int) -> list[float]:
    """Milliseconds each one-row commit of one client takes at P3's pace: the floor under
    P3, whose every path waits for at least one commit (cereal's default path and pgqueuer's
    two, one after the other)."""
    latencies: list[float] = []
    with psycopg.connect(server.cereal_dsn, autocommit=True) as conn:
        conn.execute(FLOOR_TABLE)

        def commit(_: int) -> None:
            start = time.perf_counter()
            conn.execute(ONE_ROW_COMMIT)
            latencies.append((time.perf_counter() - start) * 1000)

        _paced(rate, count, commit)
    return latencies


def dequeue_floor(server: Server, rows: int) -> float:
    """Rows per second taken off a plain table 100 at a time, each batch its own commit."""
    with psycopg.connect(server.cereal_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS floor_queue")
        conn.execute("CREATE TABLE floor_queue (id bigserial PRIMARY KEY, payload bytea)")
        conn.execute(
            "INSERT INTO floor_queue (payload) SELECT NULL FROM generate_series(1, %s)", (rows,)
        )
        conn.execute("VACUUM ANALYZE floor_queue")
        taken = 0
        start = time.perf_counter()
        while True:
            got = conn.execute(
                "DELETE FROM floor_queue WHERE id IN (SELECT id FROM floor_queue ORDER BY id"
                " LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id"
            ).fetchall()
            if not got:
                break
            taken += len(got)
        took = time.perf_counter() - start
        conn.execute("DROP TABLE floor_queue")
    return taken / took


def statement_floor(server: Server, items: int, with_task: bool) -> float:
    """Workflows per second through cereal's statements alone: one thread claims the start
    events of 100 instances, commits them (complete, or one task each, claimed by the commit
    as a free worker would be), records the tasks' results and commits the completions, 100
    at a time. No manager, callback or wakeup is involved: this is what the rows cereal
    writes for such a workflow cost the server."""
    driver = PostgresDriver(server.cereal_dsn, schema="floor_" + uuid.uuid4().hex[:8])
    try:
        for first in range(0, items, 5000):
            names = range(first, min(items, first + 5000))
            driver.enqueue_workflows([("wf", f"i{i}", None) for i in names])
        owner, done = "floor", 0
        claim = TaskClaim(owner, {"noop": 100})
        start = time.perf_counter()
        while done < items:
            with driver.claim_events(["wf"], 100, 64) as batch:
                if not batch.instances:
                    raise RuntimeError("the statement floor found no pending start event")
                steps = [_floor_step(batch, i, with_task) for i in batch.instances]
                if not with_task:
                    done += len(batch.commit(steps))
                    continue
                _, claimed = batch.commit_claiming(steps, claim)
            driver.complete_tasks(
                [TaskOutcome(t.id, "wf", "success", result_json="null") for t in claimed], owner
            )
            with driver.claim_events(["wf"], 100, 64) as batch:
                steps = [_floor_step(batch, i, False) for i in batch.instances]
                done += len(batch.commit(steps))
        return items / (time.perf_counter() - start)
    finally:
        driver.close()


def _floor_step(batch: EventBatch, instance: InstanceRow, with_task: bool) -> StepOutcome:
    """What a workflow's callback decides for ``instance``'s events: enqueue one task and go
    on, or complete with every task it enqueued back."""
    consumed = [e.id for e in batch.events[instance.id]]
    if with_task:
        return StepOutcome(
            instance,
            consumed=consumed,
            status=WorkflowStatus.RUNNING,
            enqueued_tasks=1,
            tasks=[PendingTask("noop", None)],
            handled=1,
        )
    return StepOutcome(
        instance,
        consumed=consumed,
        status=WorkflowStatus.COMPLETED,
        enqueued_tasks=instance.enqueued_tasks,
        completed_tasks=instance.enqueued_tasks,
        result_json="null",
        handled=1,
    )


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Series:
    """One workload's figures, round by round."""

    title: str
    unit: str
    higher_is_better: bool
    cereal: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)

    def ratio(self, i: int) -> float:
        c, p = self.cereal[i], self.peer[i]
        if not c or not p:
            return float("nan")
        return c / p if self.higher_is_better else p / c


@dataclass
class Results:
    """Everything one run measured."""

    series: list[Series]
    floors: dict[str, list[float]]
    """Rates per second, round by round."""
    commit_ms: dict[str, list[float]]
    """p50, p99 and max of one-row commits at P3's pace, round by round."""
    p3_iowait: dict[str, list[float]]
    """Percent of the machine's CPU time in iowait during each side's P3 runs, by round."""
    costs: dict[str, list[Cost]]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _warm(latencies: list[float]) -> list[float]:
    """The samples after the first tenth, in the order they were sent: what is left once each
    side's new connections have planned and prepared their statements."""
    return latencies[len(latencies) // 10 :]


def run(server: Server, rounds: int, sizes: Sizes, with_peer: bool) -> Results:
    peer = "pgqueuer" if with_peer else "(peer skipped)"
    series = {
        "p1": Series(
            f"P1 no-task workflow drain, {sizes.p1} items, vs {peer} batch 100", "items/s", True
        ),
        "p2w10": Series(
            f"P2 single-task workflow drain, {sizes.p2} items, workers=10, vs {peer} default",
            "items/s",
            True,
        ),
        "p2w1": Series(
            f"P2 single-task workflow drain, {sizes.p2} items, workers=1"
            f" (default), vs {peer} default",
            "items/s",
            True,
        ),
        "p3p50": Series(
            f"P3 enqueue -> task start p50, {sizes.p3_rate:.0f}/s x {sizes.p3_count}", "ms", False
        ),
        "p3p99": Series(
            f"P3 enqueue -> task start p99, {sizes.p3_rate:.0f}/s x {sizes.p3_count}", "ms", False
        ),
        "p3p99w": Series(
            f"P3 enqueue -> task start p99, warm (all but the first tenth of the samples),"
            f" {sizes.p3_rate:.0f}/s x {sizes.p3_count}",
            "ms",
            False,
        ),
        "p3ep50": Series(
            f"P3 with eager_start, p50, {sizes.p3_rate:.0f}/s x {sizes.p3_count}", "ms", False
        ),
        "p3ep99": Series(
            f"P3 with eager_start, p99, {sizes.p3_rate:.0f}/s x {sizes.p3_count}", "ms", False
        ),
        "p3ep99w": Series(
            f"P3 with eager_start, p99, warm (all but the first tenth of the samples),"
            f" {sizes.p3_rate:.0f}/s x {sizes.p3_count}",
            "ms",
            False,
        ),
    }
    floors: dict[str, list[float]] = {
        "raw commit rate, 1 client": [],
        "batched dequeue floor (100 per commit)": [],
        "cereal statements, P1 workflow (100/batch)": [],
        "cereal statements, P2 workflow (100/batch)": [],
    }
    commit_ms: dict[str, list[float]] = {"p50": [], "p99": [], "max": []}
    p3_iowait: dict[str, list[float]] = {"cereal": [], "cereal eager_start": [], "pgqueuer": []}
    costs: dict[str, list[Cost]] = {}

    def note(key: str, d: Drain) -> float:
        costs.setdefault(key, []).append(d.cost)
        return d.rate

    for r in range(rounds):
        cereal_first = r % 2 == 0
        floors["raw commit rate, 1 client"].append(raw_commit_rate(server, sizes.floor_commits))
        floors["batched dequeue floor (100 per commit)"].append(
            dequeue_floor(server, sizes.floor_rows)
        )
        floors["cereal statements, P1 workflow (100/batch)"].append(
            statement_floor(server, sizes.p1, False)
        )
        floors["cereal statements, P2 workflow (100/batch)"].append(
            statement_floor(server, sizes.p2, True)
        )

        def cereal_p1() -> None:
            series["p1"].cereal.append(note("cereal P1", cereal_drain(server, sizes.p1, False)))

        def peer_p1() -> None:
            series["p1"].peer.append(note("pgqueuer P1", pgq_drain(server, sizes.p1, 100)))

        def cereal_p2() -> None:
            series["p2w10"].cereal.append(
                note("cereal P2 workers=10", cereal_drain(server, sizes.p2, True, 10))
            )
            series["p2w1"].cereal.append(
                note("cereal P2 workers=1", cereal_drain(server, sizes.p2, True, 1))
            )

        def peer_p2() -> None:
            rate = note("pgqueuer P2", pgq_drain(server, sizes.p2, None))
            series["p2w10"].peer.append(rate)
            series["p2w1"].peer.append(rate)

        commits = commit_latency(server, sizes.p3_rate, sizes.p3_count)
        for key, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            commit_ms[key].append(_pct(commits, q))

        def cereal_p3() -> None:
            for eager, key in ((False, "p3"), (True, "p3e")):
                with CpuWindow() as cpu:
                    lat = cereal_latency(server, sizes.p3_rate, sizes.p3_count, eager)
                p3_iowait["cereal eager_start" if eager else "cereal"].append(cpu.iowait)
                series[key + "p50"].cereal.append(_pct(lat, 0.5))
                series[key + "p99"].cereal.append(_pct(lat, 0.99))
                series[key + "p99w"].cereal.append(_pct(_warm(lat), 0.99))

        def peer_p3() -> None:
            with CpuWindow() as cpu:
                lat = pgq_latency(server, sizes.p3_rate, sizes.p3_count)
            p3_iowait["pgqueuer"].append(cpu.iowait)
            for key in ("p3", "p3e"):
                series[key + "p50"].peer.append(_pct(lat, 0.5))
                series[key + "p99"].peer.append(_pct(lat, 0.99))
                series[key + "p99w"].peer.append(_pct(_warm(lat), 0.99))

        for ours, theirs in ((cereal_p1, peer_p1), (cereal_p2, peer_p2), (cereal_p3, peer_p3)):
            pair = (ours, theirs) if cereal_first else (theirs, ours)
            for step in pair:
                if step is ours or with_peer:
                    step()
        if not with_peer:
            for s in series.values():
                s.peer.append(float("nan"))
            p3_iowait["pgqueuer"].append(float("nan"))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return Results(list(series.values()), floors, commit_ms, p3_iowait, costs)


def _median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def _by_round(name: str, values: list[float], decimals: int) -> str:
    """One row of a floor table: the figure of each round, then their median."""
    per_round = "  ".join(f"{v:9.{decimals}f}" for v in values)
    return f"  {name:<40}{per_round}   median {_median(values):9.{decimals}f}"


def report(server: Server, results: Results) -> str:
    """The tables, as text."""
    lines: list[str] = []
    for s in results.series:
        lines.append(f"\n{s.title} ({s.unit}; ratio > 1: cereal ahead)")
        lines.append(f"  {'round':<7}{'cereal':>10}{'pgqueuer':>10}{'ratio':>8}")
        for i in range(len(s.cereal)):
            lines.append(f"  {i + 1:<7}{s.cereal[i]:>10.1f}{s.peer[i]:>10.1f}{s.ratio(i):>8.2f}")
        ratios = [s.ratio(i) for i in range(len(s.cereal))]
        lines.append(
            f"  {'median':<7}{_median(s.cereal):>10.1f}{_median(s.peer):>10.1f}"
            f"{_median(ratios):>8.2f}"
        )
    lines.append("\nF1 floors of this server (per second)")
    lines += [_by_round(name, values, 0) for name, values in results.floors.items()]
    lines.append(
        "\nF2 one-row commit of one client at P3's pace, just before P3 (ms; the floor under"
        " P3's figures)"
    )
    lines += [_by_round(name, values, 1) for name, values in results.commit_ms.items()]
    lines.append(
        "  iowait during P3, % of CPU time (a round whose sides differ here had its disk"
        " stall in one side's run)"
    )
    lines += [_by_round("  " + name, values, 1) for name, values in results.p3_iowait.items()]
    lines.append(
        "\nCost per item, median over rounds (WAL is server-wide: other clients add to it)"
    )
    lines.append(
        f"  {'drain':<24}{'commits':>9}{'WAL bytes':>11}{'statements':>12}{'server us':>11}"
    )
    for name, spent in results.costs.items():
        stmts = [c.statements for c in spent if c.statements is not None]
        shown = f"{_median(stmts):>12.1f}" if stmts else f"{'n/a':>12}"
        times = [c.server_ms * 1000 for c in spent if c.server_ms is not None]
        timed = f"{_median(times):>11.0f}" if times else f"{'n/a':>11}"
        lines.append(
            f"  {name:<24}{_median([c.commits for c in spent]):>9.2f}"
            f"{_median([c.wal_bytes for c in spent]):>11.0f}{shown}{timed}"
        )
    lines.append("  statements: counted on cereal's client")
    lines.append(
        "  server us: microseconds of top-level statement execution per item, from"
        " pg_stat_statements"
        + ("" if server.statement_times else " (not loaded on this server: n/a)")
    )
    lines.append(
        f"\nPostgreSQL {server.version}; Python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench --peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", help="PostgreSQL URL (default: the embedded PostgreSQL)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 4; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument(
        "--cereal-only", action="store_true", help="measure cereal and the floors, skip the peer"
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick or args.tiny else 4)
    if rounds < 1:
        parser.error(f"--rounds must be at least 1, got {rounds}")
    with_peer = not args.cereal_only
    if with_peer and not peer_available():
        print(f"scripts/bench --peers: {PEER_MISSING}", file=sys.stderr)
        return 2
    logging.disable(logging.WARNING)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.tiny:
        sizes = Sizes(50, 30, 50.0, 20, 100, 500)
    elif args.quick:
        sizes = Sizes(2000, 1500, 100.0, 200, 500, 10000)
    else:
        sizes = Sizes(5000, 4000, 100.0, 500, 2000, 50000)
    server = Server(args.dsn)
    try:
        results = run(server, rounds, sizes, with_peer)
    finally:
        server.cleanup()
    print(report(server, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
