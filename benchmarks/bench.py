"""Benchmarks: ``python -m benchmarks.bench`` from the repository root (or ``scripts/bench``).

Each workload runs in a fresh schema on the embedded PostgreSQL (or ``--dsn``) and prints one
table. Throughputs are also shown as a ratio to the raw commit rate of a trivial one-row
transaction measured on the same database in the same run, which makes figures from
different machines comparable. Nothing here is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cereal import (
    CancelEvent,
    Decision,
    Manager,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
)
from cereal.backends.postgres import PostgresDriver

__all__ = ["main"]


@dataclass
class Row:
    name: str
    value: float
    unit: str
    note: str = ""
    per_commit: bool = False


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class FanOut:
    """Enqueues ``tasks`` no-op tasks on start and completes when all are back."""

    def __init__(self, on_start_hook: Callable[[str], None] | None = None) -> None:
        self.hook = on_start_hook

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        if self.hook is not None:
            self.hook(instance.instance_name)
        for _ in range(instance.parameters["tasks"]):
            instance.enqueue_task("noop")
        return instance.continue_with()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        if instance.total_completed_tasks >= instance.parameters["tasks"]:
            return instance.complete(instance.total_completed_tasks)
        return instance.continue_with()

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


def noop(task: Task) -> None:
    return None


class LagRecorder:
    """A workflow executor for the scheduler benchmarks: each run completes at once, and
    ``lags`` records how late (ms) its ``on_start`` ran after the due time noted in ``due``
    (epoch seconds per instance name)."""

    def __init__(self) -> None:
        self.due: dict[str, float] = {}
        self.lags: list[float] = []
        self._lock = threading.Lock()

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        with self._lock:
            self.lags.append((time.time() - self.due[instance.instance_name]) * 1000)
        return instance.complete()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete()

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.complete()


class Bench:
    def __init__(self, dsn: str | None, quick: bool, *, own_database: bool = True) -> None:
        self.server_dsn = PostgresDriver(dsn).dsn
        self.quick = quick
        self.schemas: list[str] = []
        self.database: str | None = None
        self.driver_dsn = self.server_dsn
        if own_database:
            # A database of its own keeps other clients out of the transaction counts.
            self.database = "cereal_bench_" + uuid.uuid4().hex[:8]
            with psycopg.connect(self.server_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
            self.driver_dsn = make_conninfo(self.server_dsn, dbname=self.database)

    def schema(self) -> str:
        name = "bench_" + uuid.uuid4().hex[:8]
        self.schemas.append(name)
        return name

    def cleanup(self) -> None:
        if self.database is not None:
            with psycopg.connect(self.server_dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.database)
                    )
                )
            return
        with psycopg.connect(self.driver_dsn, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )

    def manager(self, schema: str, **options: Any) -> Manager:
        return Manager(PostgresDriver(self.driver_dsn, schema=schema), close_driver=True, **options)

    # -- reference -------------------------------------------------------------------------

    def raw_commit_rate(self, clients: int = 1) -> float:
        schema = self.schema()
        with psycopg.connect(self.driver_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(
                sql.SQL("CREATE TABLE {}.jobs (id bigserial PRIMARY KEY, v int)").format(
                    sql.Identifier(schema)
                )
            )
        n = 500 if self.quick else 2000
        stmt = sql.SQL(
            "WITH j AS (INSERT INTO {}.jobs (v) VALUES (1) RETURNING id) "
            "DELETE FROM {}.jobs WHERE id = (SELECT id FROM j)"
        ).format(sql.Identifier(schema), sql.Identifier(schema))

        def work() -> None:
            with psycopg.connect(self.driver_dsn, autocommit=True) as conn:
                for _ in range(n):
                    conn.execute(stmt)

        threads = [threading.Thread(target=work) for _ in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return n * clients / (time.perf_counter() - start)

    # -- throughput ------------------------------------------------------------------------

    def drain(self, instances: int, tasks: int, **options: Any) -> tuple[float, float]:
        """Enqueue up front, start, wait for all; return (seconds, RSS MB after)."""
        schema = self.schema()
        task_workers = options.pop("task_workers", 8)
        done = threading.Semaphore(0)
        m = self.manager(schema, on_workflow_complete=lambda info: done.release(), **options)
        m.register_workflow_executor("fan", FanOut())
        m.register_task_executor("noop", noop, workers=task_workers)
        for i in range(instances):
            m.enqueue_workflow("fan", f"i{i}", {"tasks": tasks})
        start = time.perf_counter()
        m.start()
        for _ in range(instances):
            if not done.acquire(timeout=600):
                raise RuntimeError("benchmark workload did not finish")
        took = time.perf_counter() - start
        m.stop()
        return took, _rss_mb()

    def w1_two_processes(self, instances: int) -> float:
        schema = self.schema()
        m = self.manager(schema)
        for i in range(instances):
            m.enqueue_workflow("fan", f"i{i}", {"tasks": 1})
        cmd = [sys.executable, "-m", "benchmarks.bench", "--worker", self.driver_dsn, schema]
        procs = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            for p in procs:  # both connected and migrated: time the drain, not the start-up
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            start = time.perf_counter()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            while m.list_workflow_instances(workflow_name="fan", is_running=True):
                time.sleep(0.01)
            took = time.perf_counter() - start
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
            m.stop()
        return instances / took

    # -- latency -----------------------------------------------------------------------------

    def l1_l2(self, rate: float, count: int) -> tuple[list[float], list[float]]:
        schema = self.schema()
        enq: dict[str, float] = {}
        started: dict[str, float] = {}
        task_started: dict[str, float] = {}

        def on_start(name: str) -> None:
            started.setdefault(name, time.perf_counter())

        def run(task: Task) -> None:
            task_started.setdefault(task.instance_name, time.perf_counter())

        m = self.manager(schema)
        m.register_workflow_executor("fan", FanOut(on_start))
        m.register_task_executor("noop", run, workers=4)
        with m:
            time.sleep(0.5)
            for i in range(count):
                name = f"i{i}"
                enq[name] = time.perf_counter()
                m.enqueue_workflow("fan", name, {"tasks": 1})
                time.sleep(max(0.0, enq[name] + 1 / rate - time.perf_counter()))
            for i in range(count):
                m.await_workflow("fan", f"i{i}", timeout=60)
        l1 = [(started[n] - enq[n]) * 1000 for n in enq if n in started]
        l2 = [(task_started[n] - started[n]) * 1000 for n in enq if n in task_started]
        return l1, l2

    def idle_round_trips(self, seconds: float) -> float:
        """Round trips per second of an idle manager with 5 task executors, counted on the
        client: every statement, plus BEGIN and COMMIT of explicit transactions."""
        schema = self.schema()
        m = self.manager(schema)
        m.register_workflow_executor("fan", FanOut())
        for i in range(5):
            m.register_task_executor(f"t{i}", noop)
        counter = _RoundTripCounter()
        with m:
            time.sleep(1.0)
            with counter:
                time.sleep(seconds)
        return counter.count / seconds

    def scheduler_lag(self, schedules: int) -> list[float]:
        schema = self.schema()
        recorder = LagRecorder()

        m = self.manager(schema)
        m.register_workflow_executor("once", recorder)
        base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        with m:
            for i in range(schedules):
                at = base + timedelta(seconds=i % 4)
                recorder.due[f"s{i}"] = at.timestamp()
                m.create_workflow_schedule(
                    "once",
                    f"s{i}",
                    recurrence=f"DTSTART:{at:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=DAILY;COUNT=1",
                )
            deadline = time.monotonic() + 30
            while len(recorder.lags) < schedules and time.monotonic() < deadline:
                time.sleep(0.05)
        return recorder.lags


class _RoundTripCounter:
    """Counts psycopg statements, and BEGIN/COMMIT pairs, sent while it is entered."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._saved: list[tuple[type, str, Any]] = []

    def _bump(self, n: int) -> None:
        with self._lock:
            self.count += n

    def __enter__(self) -> _RoundTripCounter:
        counter = self
        execute = psycopg.Connection.execute
        transaction = psycopg.Connection.transaction

        def counting_execute(conn: Any, *args: Any, **kwargs: Any) -> Any:
            if not conn._pipeline:
                counter._bump(1)
            return execute(conn, *args, **kwargs)

        def counting_transaction(conn: Any, *args: Any, **kwargs: Any) -> Any:
            counter._bump(2)
            return transaction(conn, *args, **kwargs)

        self._saved = [
            (psycopg.Connection, "execute", execute),
            (psycopg.Connection, "transaction", transaction),
        ]
        psycopg.Connection.execute = counting_execute  # type: ignore[method-assign,assignment]
        psycopg.Connection.transaction = counting_transaction  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker(dsn: str, schema: str) -> None:
    m = Manager(PostgresDriver(dsn, schema=schema), close_driver=True)
    m.register_workflow_executor("fan", FanOut())
    m.register_task_executor("noop", noop, workers=8)
    m.driver.open()
    print("ready", flush=True)
    sys.stdin.readline()
    m.start()
    try:
        threading.Event().wait()
    finally:
        m.stop()


def _memory(dsn: str, rounds: int, instances: int) -> None:
    """Child process: print RSS idle and after each W1 round as JSON."""
    bench = Bench(dsn, quick=True, own_database=False)
    schema = bench.schema()
    done = threading.Semaphore(0)
    m = bench.manager(schema, on_workflow_complete=lambda info: done.release())
    m.register_workflow_executor("fan", FanOut())
    m.register_task_executor("noop", noop, workers=8)
    for i in range(5):
        m.register_task_executor(f"t{i}", noop)
    out = {}
    with m:
        time.sleep(1)
        out["idle"] = _rss_mb()
        for r in range(rounds):
            for i in range(instances):
                m.enqueue_workflow("fan", f"r{r}-{i}", {"tasks": 1})
            for _ in range(instances):
                done.acquire(timeout=600)
            out[f"after_w1_{r + 1}"] = _rss_mb()
    bench.cleanup()
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL URL (default: the embedded PostgreSQL)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (< 2 minutes)")
    parser.add_argument("--only", help="comma-separated workloads: raw,w1,w1x2,w2,w3,l1,i1,m1,s1")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.worker:
        _worker(*args.worker)
        return 0
    if args.memory:
        _memory(args.memory[0], int(args.memory[1]), int(args.memory[2]))
        return 0
    wanted = set((args.only or "raw,w1,w1x2,w2,w3,l1,i1,m1,s1").split(","))
    q = args.quick
    bench = Bench(args.dsn, q)
    rows: list[Row] = []
    try:
        if "i1" in wanted:
            idle = bench.idle_round_trips(10 if q else 30)
        raw = bench.raw_commit_rate(1)
        raw4 = bench.raw_commit_rate(4) if "raw" in wanted else float("nan")
        rows.append(Row("raw commit rate, 1 client", raw, "commits/s"))
        rows.append(Row("raw commit rate, 4 clients", raw4, "commits/s"))
        if "i1" in wanted:
            rows.append(Row("I1 idle manager, 5 task executors", idle, "round trips/s"))
        n1 = 1000 if q else 5000
        if "w1" in wanted:
            took, _ = bench.drain(n1, 1)
            rows.append(
                Row(f"W1 {n1} single-task workflows", n1 / took, "workflows/s", per_commit=True)
            )
        if "w1x2" in wanted:
            rate = bench.w1_two_processes(n1)
            rows.append(
                Row(f"W1 {n1} workflows, 2 processes", rate, "workflows/s", per_commit=True)
            )
        if "w2" in wanted:
            n2 = 2000 if q else 10000
            took, _ = bench.drain(1, n2)
            rows.append(Row(f"W2 1 workflow x {n2} tasks", n2 / took, "tasks/s", per_commit=True))
        if "w3" in wanted:
            k = 30 if q else 100
            took, _ = bench.drain(k, 100)
            rows.append(
                Row(f"W3 {k} workflows x 100 tasks", k * 100 / took, "tasks/s", per_commit=True)
            )
        if "l1" in wanted:
            l1, l2 = bench.l1_l2(100, 200 if q else 500)
            rows.append(Row("L1 enqueue -> on_start p50 (100/s)", _pct(l1, 0.5), "ms"))
            rows.append(Row("L1 enqueue -> on_start p99 (100/s)", _pct(l1, 0.99), "ms"))
            rows.append(
                Row(
                    "L2 enqueue_task -> run p50",
                    _pct(l2, 0.5),
                    "ms",
                    "from the callback, before its commit",
                )
            )
            rows.append(Row("L2 enqueue_task -> run p99", _pct(l2, 0.99), "ms"))
        if "m1" in wanted:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench",
                    "--memory",
                    bench.driver_dsn,
                    "3",
                    str(n1),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            mem = json.loads(out.strip().splitlines()[-1])
            rows.append(Row("M1 RSS idle", mem["idle"], "MB"))
            for key in sorted(k for k in mem if k != "idle"):
                rows.append(Row(f"M1 RSS {key.replace('_', ' ')} ({n1})", mem[key], "MB"))
        if "s1" in wanted:
            lags = bench.scheduler_lag(100)
            rows.append(Row("S1 scheduler lag p50 (100 schedules)", _pct(lags, 0.5), "ms"))
            rows.append(Row("S1 scheduler lag p99 (100 schedules)", _pct(lags, 0.99), "ms"))
    finally:
        bench.cleanup()
    with psycopg.connect(bench.server_dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    _print(rows, raw, row[0] if row else "?")
    return 0


def _print(rows: list[Row], raw: float, server: str) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{'workload'.ljust(width)}  {'figure':>10}  {'unit':<15} x raw commit rate")
    for r in rows:
        ratio = f"{r.value / raw:6.2f}" if r.per_commit and raw else ""
        print(f"{r.name.ljust(width)}  {r.value:10.1f}  {r.unit:<15} {ratio} {r.note}")
    print(
        f"\nPostgreSQL {server}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


if __name__ == "__main__":
    sys.exit(main())
