"""Scale benchmark: ``python -m benchmarks.scale`` (or ``scripts/bench --scale``).

Measures how cereal's costs move as the work grows, on the embedded PostgreSQL or ``--dsn``,
in a database of its own that is dropped at the end:

- a backlog sweep: W1 (single-task workflows enqueued up front, drained by one manager) with
  backlogs of 10,000, 100,000 and 1,000,000 instances, each in a fresh schema;
- a history sweep: the smallest backlog drained again with 0, 10,000, 1 million and 10
  million finished runs in history, grown in one schema (a listing of one workflow's runs or
  of failed runs, empty with no history, and ``get_workflow_instance``, which reads history
  for half of its calls once there is one, are compared with their values at 10,000);
- scheduler lag (due time -> ``on_start``) with 10,000 and 100,000 schedules stored.

Backlogs and history are written straight into the tables with ``generate_series`` (only the
instances whose enqueue is being timed go through the API). At every point it reports drain
rate, enqueue rate (one call at a time, and ``enqueue_workflows``), ``get_workflow_instance``
p50/p99, listing latency (first page, a deep page, one workflow's runs, running instances
when none run), table and index sizes, and dead tuples after the drain; each figure is also
shown as a ratio to its value at the smallest size. ``--quick`` uses smaller sizes (under
five minutes). Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from benchmarks.bench import LagRecorder
from cereal import (
    CancelEvent,
    Decision,
    Manager,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
    WorkflowInstanceInfo,
    WorkflowStatus,
)
from cereal.backends.postgres import PostgresDriver
from cereal.checks import encode_cursor

__all__ = ["main"]

PAGE = 100


@dataclass(frozen=True)
class Sizes:
    backlogs: list[int]
    histories: list[int]
    schedules: list[int]
    singles: int
    """Instances enqueued one call at a time at each point."""
    bulk: int
    """Instances enqueued by one ``enqueue_workflows`` call at each point."""
    bulk_calls: int
    """``enqueue_workflows`` calls timed at each point (their median rate is reported)."""
    samples: int
    """``get_workflow_instance`` calls timed at each point."""

    @property
    def bulk_total(self) -> int:
        """Instances enqueued by ``enqueue_workflows`` at each point, over all its calls."""
        return self.bulk * self.bulk_calls


FULL = Sizes(
    [10_000, 100_000, 1_000_000],
    [0, 10_000, 1_000_000, 10_000_000],
    [10_000, 100_000],
    1000,
    10_000,
    3,
    1000,
)
QUICK = Sizes(
    [2_000, 10_000, 40_000], [0, 10_000, 100_000, 500_000], [1_000, 10_000], 200, 1_000, 3, 400
)


@dataclass
class Point:
    """Figures measured at one size."""

    label: str
    figures: dict[str, float] = field(default_factory=dict)
    unlike: set[str] = field(default_factory=set)
    """Figures that measure something else here: with no history, a page of one workflow's
    runs or of failed runs is empty, and every ``get_workflow_instance`` finds a live
    instance (with history, half of them read a finished run). Their ratios start at the
    first point where they measure the same thing."""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SingleTask:
    """W1's workflow: one no-op task, then complete."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        instance.enqueue_task("noop")
        return instance.continue_with()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete(1)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


def noop(task: Task) -> None:
    return None


class Scale:
    def __init__(self, dsn: str | None, sizes: Sizes) -> None:
        self.server_dsn = PostgresDriver(dsn).dsn
        self.sizes = sizes
        self.database = "cereal_scale_" + uuid.uuid4().hex[:8]
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self.dsn = make_conninfo(self.server_dsn, dbname=self.database)
        self.history = 0

    def cleanup(self) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.database)
                )
            )

    def sql(self, schema: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def wal_position(self, schema: str) -> int:
        """The server's current WAL position, in bytes (server-wide)."""
        return int(self.sql(schema, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])

    def new_schema(self) -> str:
        schema = "scale_" + uuid.uuid4().hex[:8]
        PostgresDriver(self.dsn, schema=schema).open()  # migrate
        return schema

    # -- building state straight into the tables ---------------------------------------

    def add_backlog(self, schema: str, count: int, tag: str) -> None:
        """``count`` live W1 instances with their start events, as enqueue would write."""
        if count <= 0:
            return
        self.sql(
            schema,
            "WITH i AS (INSERT INTO workflow_instances (workflow_name, instance_name, parameters)"
            " SELECT 'w1', %s || g, '{\"tasks\": 1}'::jsonb FROM generate_series(1, %s) g"
            " RETURNING id)"
            " INSERT INTO workflow_events (instance_id, event_type, workflow_name)"
            " SELECT id, 'start', 'w1' FROM i ORDER BY id",
            (tag + "-", count),
        )

    def grow_history(self, schema: str, target: int) -> None:
        """Add finished runs until history holds ``target`` generated runs: ten workflows of
        one-off runs (1% failed) started over the last 30 days, and one pair that ran every
        fiftieth time (a schedule), whose newest run only is the latest."""
        start, self.history = self.history, target
        if target <= start:
            return
        self.sql(schema, "ALTER TABLE workflow_results DISABLE TRIGGER workflow_results_supersede")
        try:
            self.sql(
                schema,
                "UPDATE workflow_results SET latest = false"
                " WHERE workflow_name = 'hist-sched' AND latest",
            )
            self.sql(
                schema,
                "INSERT INTO workflow_results (workflow_name, instance_name, parameters, status,"
                " result, error, started_at, ended_at, latest)"
                " SELECT CASE WHEN g %% 50 = 0 THEN 'hist-sched' ELSE 'hist' || g %% 10 END,"
                "        CASE WHEN g %% 50 = 0 THEN 'daily' ELSE 'r' || g END,"
                "        '{\"tasks\": 1}'::jsonb,"
                "        CASE WHEN g %% 100 = 1 THEN 'failed' ELSE 'completed' END,"
                "        CASE WHEN g %% 100 = 1 THEN NULL ELSE '1'::jsonb END,"
                "        CASE WHEN g %% 100 = 1 THEN 'RuntimeError: boom' END,"
                "        t, t + interval '20 ms',"
                "        g %% 50 <> 0 OR g > %(end)s - 50"
                " FROM generate_series(%(start)s + 1, %(end)s) g,"
                "      LATERAL (SELECT now() - interval '30 days'"
                "               + (g * (interval '1 day' / 1000000)) AS t) s",
                {"start": start, "end": target},
            )
        finally:
            self.sql(
                schema, "ALTER TABLE workflow_results ENABLE TRIGGER workflow_results_supersede"
            )
        # A long-lived system has had autovacuum visit its history (visibility map, stats).
        self.sql(schema, "VACUUM ANALYZE workflow_results")

    # -- one point ------------------------------------------------------------------------

    def manager(self, schema: str, **options: Any) -> Manager:
        return Manager(PostgresDriver(self.dsn, schema=schema), close_driver=True, **options)

    def measure(self, schema: str, backlog: int, label: str, tag: str) -> Point:
        s = self.sizes
        point = Point(label)
        f = point.figures
        generated = backlog - s.singles - s.bulk_total
        self.add_backlog(schema, generated, tag)
        if generated > 0:
            # Statistics for what was written straight into the tables. Not for empty ones:
            # a table analysed empty and then filled in one statement is planned as tiny.
            self.sql(schema, "ANALYZE")
        done = threading.Semaphore(0)
        m = self.manager(schema, on_workflow_complete=lambda info: done.release())
        drained = False
        try:
            start = time.perf_counter()
            for i in range(s.singles):
                m.enqueue_workflow("w1", f"{tag}-s{i}", {"tasks": 1})
            f["enqueue, one call at a time /s"] = s.singles / (time.perf_counter() - start)
            wal = self.wal_position(schema)
            rates = []
            skipped = []
            for call in range(s.bulk_calls):
                first = call * s.bulk
                items = [("w1", f"{tag}-b{i}", {"tasks": 1}) for i in range(first, first + s.bulk)]
                start = time.perf_counter()
                skipped += m.enqueue_workflows(items)
                rates.append(s.bulk / (time.perf_counter() - start))
            f[f"enqueue_workflows ({s.bulk:,} a call, median of {s.bulk_calls}) /s"] = (
                statistics.median(rates)
            )
            # What the server wrote for it: tells a slow point caused by WAL volume (the
            # full-page images of index pages first touched after a checkpoint starts)
            # from one caused by plans, whose WAL per instance stays the same.
            f["enqueue_workflows WAL bytes per instance"] = (
                self.wal_position(schema) - wal
            ) / s.bulk_total
            assert not skipped, "bulk enqueue skipped new pairs"
            self._reads(m, schema, point, live_tag=tag, backlog=backlog)
            for name, table, indexes in self.sql(
                schema,
                "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid)"
                " FROM pg_class c WHERE c.oid IN"
                " ('workflow_instances'::regclass, 'workflow_events'::regclass)",
            ):
                f[f"bytes per backlog instance: {name} table"] = table / backlog
                f[f"bytes per backlog instance: {name} indexes"] = indexes / backlog
            f["W1 drain /s"] = self._drain(m, backlog, done)
            drained = True
        finally:
            if not drained:
                m.driver.close()
        f["list running (none running), first page ms"] = _median_ms(
            lambda: m.list_workflow_instances(is_running=True, limit=PAGE), 10
        )
        f["list running (none running), all rows ms"] = _median_ms(
            lambda: m.list_workflow_instances(is_running=True), 10
        )
        time.sleep(1.5)  # let the manager's sessions' statistics reach the collector
        dead = self.sql(
            schema,
            "SELECT relname, n_dead_tup, n_live_tup FROM pg_stat_user_tables"
            " WHERE schemaname = current_schema()",
        )
        for name, dead_tuples, _ in sorted(dead):
            if name in ("workflow_instances", "workflow_events", "tasks"):
                f[f"dead tuples after drain per instance: {name}"] = dead_tuples / backlog
        # Dead rows left by the drain are what a listing of the live table must skip until
        # autovacuum visits; after a VACUUM the same listing shows the cost without them.
        self.sql(schema, "VACUUM workflow_instances, workflow_events, tasks")
        f["list running (none running), first page after VACUUM ms"] = _median_ms(
            lambda: m.list_workflow_instances(is_running=True, limit=PAGE), 10
        )
        self.sql(schema, "ANALYZE workflow_results")
        for name, table, indexes, rows in self.sql(
            schema,
            "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), c.reltuples"
            " FROM pg_class c WHERE c.oid = 'workflow_results'::regclass",
        ):
            f[f"bytes per finished run: {name} table"] = table / max(1.0, rows)
            f[f"bytes per finished run: {name} indexes"] = indexes / max(1.0, rows)
        m.driver.close()
        return point

    def _reads(self, m: Manager, schema: str, point: Point, live_tag: str, backlog: int) -> None:
        s = self.sizes
        f = point.figures
        rng = random.Random(7)
        pairs = [
            ("w1", f"{live_tag}-b{rng.randrange(s.bulk_total)}") for _ in range(s.samples // 2)
        ]
        if self.history:
            pairs += [
                ("hist" + str(g % 10), f"r{g}")
                for g in (rng.randrange(1, self.history) for _ in range(s.samples // 2))
                if g % 50
            ]
        rng.shuffle(pairs)
        times = []
        for w, i in pairs:
            start = time.perf_counter()
            m.get_workflow_instance(w, i)
            times.append((time.perf_counter() - start) * 1000)
        f["get_workflow_instance p50 ms"] = _pct(times, 0.5)
        f["get_workflow_instance p99 ms"] = _pct(times, 0.99)
        if not self.history:
            point.unlike |= {"get_workflow_instance p50 ms", "get_workflow_instance p99 ms"}
        f["list first page ms"] = _median_ms(lambda: m.list_workflow_instances(limit=PAGE), 20)
        # A cursor half way down the listing (the newest-first order over live + history).
        depth = (backlog + self.history) // 2
        deep = self._cursor_at(schema, depth, backlog)
        f["list deep page ms"] = _median_ms(
            lambda: m.list_workflow_instances(limit=PAGE, after=deep), 20
        )
        filtered: dict[str, dict[str, Any]] = {
            "list one workflow's runs, first page ms": {"workflow_name": "hist3"},
            "list status=failed, first page ms": {"status": "failed"},
        }
        for name, filters in filtered.items():
            page = functools.partial(m.list_workflow_instances, limit=PAGE, **filters)
            f[name] = _median_ms(page, 20)
            if len(page()) < PAGE:
                point.unlike.add(name)

    def _cursor_at(self, schema: str, depth: int, backlog: int) -> str:
        if depth < backlog:
            row = self.sql(
                schema,
                "SELECT started_at, workflow_name, instance_name FROM workflow_instances"
                " ORDER BY started_at DESC, workflow_name DESC, instance_name DESC"
                " OFFSET %s LIMIT 1",
                (depth,),
            )
        else:
            row = self.sql(
                schema,
                "SELECT started_at, workflow_name, instance_name FROM workflow_results"
                " WHERE latest ORDER BY started_at DESC, workflow_name DESC, instance_name DESC"
                " OFFSET %s LIMIT 1",
                (max(0, depth - backlog),),
            )
        ts, w, i = row[0]
        row_info = WorkflowInstanceInfo(w, i, WorkflowStatus.COMPLETED, started_at=ts)
        return encode_cursor((None, None, None, None), row_info)

    def _drain(self, m: Manager, count: int, done: threading.Semaphore) -> float:
        m.register_workflow_executor("w1", SingleTask())
        m.register_task_executor("noop", noop, workers=8)
        start = time.perf_counter()
        m.start()
        for _ in range(count):
            if not done.acquire(timeout=120):
                raise RuntimeError("the drain did not finish")
        took = time.perf_counter() - start
        m.stop()
        return count / took

    # -- schedules --------------------------------------------------------------------------

    def scheduler_lag(self, stored: int, due: int = 100) -> list[float]:
        """Lag (ms) of ``due`` schedules due within 4 s, with ``stored`` schedules in all
        (the others due in 2030 or later), every one written straight into the table."""
        schema = self.new_schema()
        recorder = LagRecorder()

        m = self.manager(schema)
        m.register_workflow_executor("once", recorder)
        m.create_workflow_schedule(
            "filler", "template", recurrence="DTSTART:20300101T000000Z\nRRULE:FREQ=YEARLY"
        )
        self.sql(
            schema,
            "INSERT INTO workflow_schedules (workflow_name, instance_name, parameters,"
            " recurrence, enabled, next_due_at)"
            " SELECT 'filler', 'f' || g, parameters, recurrence, true,"
            "        next_due_at + g * interval '1 second'"
            " FROM workflow_schedules, generate_series(1, %s) g"
            " WHERE instance_name = 'template'",
            (max(0, stored - due - 1),),
        )
        self.sql(schema, "VACUUM ANALYZE workflow_schedules")
        # The due schedules (yearly rules, so each runs once here) are written with their
        # due time, 2 to 5 s ahead of the database clock, just before the manager starts.
        rows = self.sql(
            schema,
            "INSERT INTO workflow_schedules (workflow_name, instance_name, parameters,"
            " recurrence, enabled, next_due_at)"
            " SELECT 'once', 's' || g, NULL, recurrence, true,"
            "        date_trunc('second', now()) + (2 + g %% 4) * interval '1 second'"
            " FROM workflow_schedules, generate_series(1, %s) g"
            " WHERE instance_name = 'template'"
            " RETURNING instance_name, extract(epoch FROM next_due_at)::float8",
            (due,),
        )
        recorder.due.update({name: float(at) for name, at in rows})
        with m:
            deadline = time.monotonic() + 30
            while len(recorder.lags) < due and time.monotonic() < deadline:
                time.sleep(0.05)
        return recorder.lags


def _median_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return _pct(times, 0.5)


def run(dsn: str | None, quick: bool, out: Callable[[str], None] = print) -> None:
    sizes = QUICK if quick else FULL
    scale = Scale(dsn, sizes)
    began = time.perf_counter()
    try:
        backlog_points = []
        for n in sizes.backlogs:
            out(f"# backlog {n:,} ...")
            backlog_points.append(scale.measure(scale.new_schema(), n, f"backlog {n:,}", f"q{n}"))
        _table(out, "Backlog sweep (no history)", backlog_points)
        history_points = [backlog_points[0]]
        backlog_points[0].label = f"backlog {sizes.backlogs[0]:,} / history 0"
        schema = scale.new_schema()
        for h in sizes.histories[1:]:
            out(f"# history {h:,} ...")
            scale.grow_history(schema, h)
            history_points.append(
                scale.measure(schema, sizes.backlogs[0], f"history {h:,}", f"h{h}")
            )
        _table(out, f"History sweep (backlog {sizes.backlogs[0]:,})", history_points)
        lags = []
        for n in sizes.schedules:
            out(f"# {n:,} schedules ...")
            lags.append((n, scale.scheduler_lag(n)))
    finally:
        scale.cleanup()
    out("")
    out("Scheduler lag (due time -> on_start, 100 schedules due within 4 s)")
    base50 = _pct(lags[0][1], 0.5)
    base99 = _pct(lags[0][1], 0.99)
    for n, values in lags:
        p50, p99 = _pct(values, 0.5), _pct(values, 0.99)
        out(
            f"  {n:>9,} schedules stored: p50 {p50:7.1f} ms ({p50 / base50:4.2f}x)  "
            f"p99 {p99:7.1f} ms ({p99 / base99:4.2f}x)  ({len(values)} of 100 ran)"
        )
    with psycopg.connect(scale.server_dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        vacuum = conn.execute("SHOW autovacuum").fetchone()
    out(
        f"\nPostgreSQL {row[0] if row else '?'} (autovacuum {vacuum[0] if vacuum else '?'}); "
        f"Python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs; {'--quick; ' if quick else ''}"
        f"{time.perf_counter() - began:.0f} s; {time.strftime('%Y-%m-%d %H:%M')}"
    )


def _table(out: Callable[[str], None], title: str, points: list[Point]) -> None:
    out(f"\n{title}: figure (ratio to the first column; * to the first that compares)")
    names = list(points[0].figures)
    width = max(len(n) for n in names) + 2
    out(f"  {''.ljust(width)}" + "".join(f"  {p.label:>22}" for p in points))
    for name in names:
        first = next((p for p in points if name not in p.unlike), points[0])
        base = first.figures[name]
        label = name if first is points[0] else name + " *"
        cells = []
        for p in points:
            value = p.figures.get(name, float("nan"))
            ratio = f"({value / base:5.2f}x)" if base else "        "
            shown = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
            cells.append(f"  {shown:>13} {ratio:>8}")
        out(f"  {label.ljust(width)}" + "".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --scale", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL URL (default: the embedded PostgreSQL)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 5 minutes)")
    parser.add_argument("--scale", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    run(args.dsn, args.quick, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
