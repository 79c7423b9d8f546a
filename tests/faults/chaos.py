"""A fault-injection workload that proves cereal loses and duplicates nothing.

``python -m tests.faults.chaos run`` (or ``scripts/chaos``) runs the workload against an embedded
PostgreSQL it owns (or ``--dsn``), SIGKILLs a worker process every few seconds, restarts the
server once (embedded only) and prints what the checker found. Optional I/O faults (``--io-faults``
turns them all on): read-only windows with every worker session terminated, a loop of backend
terminations, task results over PostgreSQL's ``jsonb`` limit (their instances must end with a
``FAILED`` task result saying the database refused it) and forged notifications.
``python -m tests.faults.chaos worker ...`` is one worker process; :class:`Workload` drives
them and is what the fault tests use.

The workflow (``chaos``): ``on_start`` fans out ``k`` ``chaos_part`` tasks; when every part
is back it enqueues one chained ``chaos_final`` task with the part values, and completes with
the final task's value. A ``LOST`` task is enqueued again as the next attempt of the same
key. The payload holds the attempt outstanding for every key, so a result that arrives twice,
or for an attempt that is not outstanding, fails the instance loudly with ``duplicate
result``. The result repeats the task counters so that the checker can verify them.

Every task run (start and end), every callback delivery and every ``on_workflow_complete``
call is appended, one JSON object a line, to the worker's log file; :meth:`Workload.check`
compares those logs and the database with what a correct run must produce.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import structlog
from psycopg import sql

from cereal import (
    CancelEvent,
    Decision,
    Manager,
    StartEvent,
    Task,
    TaskCompleteEvent,
    TaskStatus,
    WorkflowInstance,
    WorkflowInstanceInfo,
)
from cereal.backends.postgres import PostgresDriver
from tests.helpers.processes import Child

__all__ = [
    "FINAL_TASK",
    "PART_TASK",
    "WORKFLOW",
    "ChaosReport",
    "ChaosWorkflow",
    "Worker",
    "WorkerOptions",
    "Workload",
    "expected_total",
    "main",
    "part_value",
]

WORKFLOW = "chaos"
PART_TASK = "chaos_part"
FINAL_TASK = "chaos_final"
BIG_WORKFLOW = "chaos_big"
BIG_TASK = "chaos_big"
BIG_RESULT_BYTES = 2**28 + 2**20
"""A task result this long is over PostgreSQL's jsonb limit (268435455 bytes a string)."""
REFUSED = "refused"
FINAL_KEY = "final"
DUPLICATE = "duplicate result"


def part_value(n: int, key: int) -> int:
    """The value task ``key`` of instance number ``n`` returns."""
    x = (n * 7919 + key * 104729) % 1009
    return (x * x) % 9973


def expected_total(n: int, fan_out: int) -> int:
    """The result ``total`` instance number ``n`` must complete with."""
    return sum(part_value(n, key) for key in range(fan_out)) + n


def instance_name(n: int) -> str:
    """The instance name of instance number ``n``."""
    return f"c{n:05d}"


# -- the records every worker writes -------------------------------------------------------


class RecordLog:
    """Appends JSON records to a file, one line per ``write`` system call.

    A single small ``write`` on an ``O_APPEND`` file is complete once it returns, so a
    SIGKILL loses no record that was written and never leaves half a line.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def write(self, kind: str, **fields: Any) -> None:
        record = {"e": kind, "pid": self._pid, "at": time.time(), **fields}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one log file (a torn last line, if any, is skipped)."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


# -- the workflow and its tasks -------------------------------------------------------------


class ChaosWorkflow:
    """The workflow executor of the workload (see the module docstring).

    With ``hold`` set, a callback of kind ``hold_on`` (``start``, ``task`` or ``any``) that
    ends while the file ``hold`` exists writes a ``held`` record and then waits, decision
    computed but not returned, until the file is removed: a test kills the process there.
    """

    def __init__(self, log: RecordLog, *, hold: Path | None = None, hold_on: str = "any") -> None:
        self._log = log
        self._hold = hold
        self._hold_on = hold_on

    def _delivered(self, kind: str, instance: WorkflowInstance, **fields: Any) -> None:
        self._log.write("cb", i=instance.instance_name, ev=kind, **fields)

    def _maybe_hold(self, kind: str, instance: WorkflowInstance, **fields: Any) -> None:
        if self._hold is None or self._hold_on not in (kind, "any"):
            return
        if not self._hold.exists():
            return
        self._log.write("held", i=instance.instance_name, ev=kind, **fields)
        while self._hold.exists():
            time.sleep(0.02)

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        n, k = int(instance.parameters["n"]), int(instance.parameters["k"])
        self._delivered("start", instance)
        for key in range(k):
            instance.enqueue_task(PART_TASK, {"n": n, "key": key, "try": 1})
        payload = {"out": {str(key): 1 for key in range(k)}, "vals": {}, "retries": 0}
        self._maybe_hold("start", instance)
        return instance.continue_with(payload)

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        result = event.result
        params = dict(result.parameters)
        key, attempt = str(params["key"]), int(params["try"])
        ids = {"key": key, "try": attempt, "st": result.status.value}
        self._delivered("task", instance, **ids)
        state = instance.payload
        out: dict[str, int] = dict(state["out"])
        vals: dict[str, int] = dict(state["vals"])
        retries = int(state["retries"])
        if out.get(key) != attempt:
            self._log.write("dup", i=instance.instance_name, outstanding=out.get(key), **ids)
            return instance.fail(
                f"{DUPLICATE}: {result.task_name} key {key} attempt {attempt} "
                f"({result.status.value}); outstanding attempt: {out.get(key)}"
            )
        del out[key]
        decision: Decision
        if result.status is TaskStatus.LOST:
            retries += 1
            out[key] = attempt + 1
            instance.enqueue_task(result.task_name, params | {"try": attempt + 1})
        elif not result.ok:
            return instance.fail(f"{result.task_name} {key} failed: {result.error}")
        elif key == FINAL_KEY:
            k = int(instance.parameters["k"])
            if out or len(vals) != k:
                return instance.fail(f"final result before every part: {sorted(out)}")
            decision = instance.complete(
                {
                    "total": result.value,
                    "parts": len(vals),
                    "retries": retries,
                    "enqueued": instance.total_enqueued_tasks,
                    "completed": instance.total_completed_tasks,
                }
            )
            self._maybe_hold("task", instance, **ids)
            return decision
        else:
            vals[key] = int(result.value)
            k = int(instance.parameters["k"])
            if len(vals) == k:
                values = [vals[str(i)] for i in range(k)]
                n = int(instance.parameters["n"])
                instance.enqueue_task(
                    FINAL_TASK, {"n": n, "key": FINAL_KEY, "try": 1, "values": values}
                )
                out[FINAL_KEY] = 1
        decision = instance.continue_with({"out": out, "vals": vals, "retries": retries})
        self._maybe_hold("task", instance, **ids)
        return decision

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


class ChaosTasks:
    """The two task executors; each run is logged when it starts and when it returns."""

    def __init__(self, log: RecordLog, delay: float) -> None:
        self._log = log
        self._delay = delay

    def _run(self, task: Task, value: int) -> int:
        ids = {"id": task.id, "i": task.instance_name, "t": task.name}
        ids |= {"key": str(task.parameters["key"]), "try": task.parameters["try"]}
        self._log.write("run", **ids)
        if self._delay > 0:
            # Jitter spreads the finishing times; a stopping manager cuts the wait short.
            task.cancelled.wait(self._delay * random.uniform(0.5, 1.5))
        self._log.write("done", **ids)
        return value

    def part(self, task: Task) -> int:
        p = task.parameters
        return self._run(task, part_value(int(p["n"]), int(p["key"])))

    def final(self, task: Task) -> int:
        p = task.parameters
        return self._run(task, sum(int(v) for v in p["values"]) + int(p["n"]))


class OversizedWorkflow:
    """``chaos_big``: one task whose result is over the jsonb limit. The instance completes
    with ``"refused"`` once the task's result comes back ``FAILED`` because the database
    refused it; a ``LOST`` task is enqueued again; anything else fails the instance."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        instance.enqueue_task(BIG_TASK, {"try": 1})
        return instance.continue_with()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        result = event.result
        if result.status is TaskStatus.LOST:
            instance.enqueue_task(BIG_TASK, {"try": int(result.parameters["try"]) + 1})
            return instance.continue_with()
        if result.status is TaskStatus.FAILED and "refused" in (result.error or ""):
            return instance.complete(REFUSED)
        return instance.fail(f"oversized result came back {result.status.value}: {result.error}")

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


def oversized_result(task: Task) -> str:
    """The result of a ``chaos_big`` task: a string over the jsonb limit."""
    return "x" * BIG_RESULT_BYTES


# -- worker processes ----------------------------------------------------------------------


@dataclass
class WorkerOptions:
    """How a worker process runs its manager (times in seconds)."""

    task_delay: float = 0.05
    task_workers: int = 4
    workflow_workers: int = 4
    workflow_poll: float = 0.5
    task_poll: float = 0.5
    heartbeat: float = 0.5
    lost_timeout: float = 2.5
    stop_timeout: float = 30.0
    hold: str | None = None
    hold_on: str = "any"

    def argv(self) -> list[str]:
        """These options as ``worker`` command-line arguments."""
        args = [
            f"--task-delay={self.task_delay}",
            f"--task-workers={self.task_workers}",
            f"--workflow-workers={self.workflow_workers}",
            f"--workflow-poll={self.workflow_poll}",
            f"--task-poll={self.task_poll}",
            f"--heartbeat={self.heartbeat}",
            f"--lost-timeout={self.lost_timeout}",
            f"--stop-timeout={self.stop_timeout}",
            f"--hold-on={self.hold_on}",
        ]
        if self.hold is not None:
            args.append(f"--hold={self.hold}")
        return args


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    d = WorkerOptions()
    parser.add_argument("--task-delay", type=float, default=d.task_delay)
    parser.add_argument("--task-workers", type=int, default=d.task_workers)
    parser.add_argument("--workflow-workers", type=int, default=d.workflow_workers)
    parser.add_argument("--workflow-poll", type=float, default=d.workflow_poll)
    parser.add_argument("--task-poll", type=float, default=d.task_poll)
    parser.add_argument("--heartbeat", type=float, default=d.heartbeat)
    parser.add_argument("--lost-timeout", type=float, default=d.lost_timeout)
    parser.add_argument("--stop-timeout", type=float, default=d.stop_timeout)
    parser.add_argument("--hold", default=None)
    parser.add_argument("--hold-on", choices=("start", "task", "any"), default=d.hold_on)


def run_worker(
    dsn: str, schema: str, log_path: Path, options: WorkerOptions, application_name: str
) -> int:
    """Run one worker manager until SIGTERM/SIGINT, then stop it gracefully.

    Prints ``ready`` on stdout once started and ``stopped`` after a graceful stop.
    """
    log = RecordLog(log_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def finished(info: WorkflowInstanceInfo) -> None:
        log.write("finished", i=info.instance_name, status=info.status.value, error=info.error)

    driver = PostgresDriver(dsn, schema=schema, application_name=application_name)
    manager = Manager(
        driver,
        close_driver=True,
        workflow_poll_interval=options.workflow_poll,
        task_poll_interval=options.task_poll,
        workflow_workers=options.workflow_workers,
        heartbeat_interval=options.heartbeat,
        lost_task_timeout=options.lost_timeout,
        scheduler=False,
        on_workflow_complete=finished,
    )
    hold = Path(options.hold) if options.hold else None
    manager.register_workflow_executor(
        WORKFLOW, ChaosWorkflow(log, hold=hold, hold_on=options.hold_on)
    )
    tasks = ChaosTasks(log, options.task_delay)
    manager.register_task_executor(PART_TASK, tasks.part, workers=options.task_workers)
    manager.register_task_executor(FINAL_TASK, tasks.final, workers=options.task_workers)
    manager.register_workflow_executor(BIG_WORKFLOW, OversizedWorkflow())
    manager.register_task_executor(BIG_TASK, oversized_result)
    manager.start()
    log.write("ready")
    print("ready", flush=True)
    while not stop.wait(0.5):
        pass
    log.write("stopping")
    manager.stop(timeout=options.stop_timeout)
    log.write("stopped")  # the log stays open: a task abandoned by stop() may still write
    print("stopped", flush=True)
    return 0


class Worker:
    """A worker process started by :meth:`Workload.start_worker`."""

    def __init__(self, index: int, application_name: str, log_path: Path, child: Child) -> None:
        self.index = index
        self.application_name = application_name
        self.log_path = log_path
        self.child = child
        self.killed = False

    @property
    def pid(self) -> int:
        """The process id."""
        return self.child.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.child.alive()

    def records(self) -> list[dict[str, Any]]:
        """Everything this worker logged so far."""
        return read_records(self.log_path)

    def in_flight(self) -> int:
        """Task runs this worker started and has not finished."""
        count = Counter(r["e"] for r in self.records())
        return count["run"] - count["done"]

    def held(self) -> list[dict[str, Any]]:
        """The callbacks this worker is holding (see :class:`ChaosWorkflow`)."""
        return [r for r in self.records() if r["e"] == "held"]

    def stderr_tail(self, chars: int = 3000) -> str:
        """The end of the worker's log output."""
        return self.child.log_tail(chars)

    def __repr__(self) -> str:
        return f"Worker({self.index}, pid={self.pid}, alive={self.alive()})"


# -- the report ----------------------------------------------------------------------------


@dataclass
class ChaosReport:
    """What :meth:`Workload.check` found. :attr:`ok` is the verdict."""

    expected: int
    completed: int = 0
    finished_runs: int = 0
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wrong: dict[str, Any] = field(default_factory=dict)
    finished_twice: list[str] = field(default_factory=list)
    duplicate_results: list[str] = field(default_factory=list)
    tasks_run_twice: list[int] = field(default_factory=list)
    unrecovered_runs: list[str] = field(default_factory=list)
    lost: int = 0
    task_runs: int = 0
    interrupted_runs: int = 0
    callbacks: int = 0
    redelivered: int = 0
    held: list[dict[str, Any]] = field(default_factory=list)
    leftovers: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float = 0.0
    marks: list[tuple[str, float]] = field(default_factory=list)
    end_times: list[float] = field(default_factory=list)
    task_end_times: list[float] = field(default_factory=list)
    callback_keys: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    callback_pids: dict[tuple[Any, ...], set[int]] = field(default_factory=dict)
    oversized_expected: int = 0
    oversized_refused: int = 0
    oversized_wrong: dict[str, str] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Results applied twice, runs finished twice and tasks executed twice."""
        return len(self.duplicate_results) + len(self.finished_twice) + len(self.tasks_run_twice)

    @property
    def leftover_rows(self) -> int:
        """Live instances, pending events and tasks still in the database."""
        return sum(self.leftovers.values())

    @property
    def ok(self) -> bool:
        """Every instance completed once with the right result, nothing applied twice, no
        interrupted task left unrecovered and nothing left behind."""
        return (
            self.completed == self.expected
            and not self.missing
            and not self.failed
            and not self.wrong
            and self.duplicates == 0
            and not self.unrecovered_runs
            and self.leftover_rows == 0
            and self.oversized_refused == self.oversized_expected
        )

    @property
    def elapsed(self) -> float:
        """Seconds from enqueue to the last finished run."""
        return max(0.0, self.ended_at - self.started_at)

    def throughput(self, start: float | None = None, end: float | None = None) -> float:
        """Instances finished per second between two ``time.time()`` values (default: the
        whole run)."""
        lo = self.started_at if start is None else start
        hi = self.ended_at if end is None else end
        if hi <= lo:
            return 0.0
        return sum(1 for t in self.end_times if lo <= t < hi) / (hi - lo)

    def task_throughput(self, start: float | None = None, end: float | None = None) -> float:
        """Task runs finished per second between two ``time.time()`` values."""
        lo = self.started_at if start is None else start
        hi = self.ended_at if end is None else end
        if hi <= lo:
            return 0.0
        return sum(1 for t in self.task_end_times if lo <= t < hi) / (hi - lo)

    def mark(self, label: str) -> float | None:
        """The time of the first mark called ``label``, if any."""
        return next((t for name, t in self.marks if name == label), None)

    def redelivered_by_another(self, record: dict[str, Any]) -> bool:
        """True if the callback event of ``record`` (e.g. a ``held`` one) was delivered
        again by a process other than the one that logged it."""
        pids = self.callback_pids.get(_callback_key(record), set())
        return bool(pids - {record["pid"]})

    def describe(self) -> str:
        """A multi-line human summary."""
        lines = [
            f"completed/expected : {self.completed}/{self.expected}"
            f"  ({self.finished_runs} finished runs)",
            f"duplicates         : {self.duplicates}"
            f"  (results applied twice {len(self.duplicate_results)}, runs finished twice "
            f"{len(self.finished_twice)}, task ids run twice {len(self.tasks_run_twice)})",
            f"leftovers          : {self.leftover_rows}  {self.leftovers}",
            f"missing / failed / wrong : {len(self.missing)} / {len(self.failed)} / "
            f"{len(self.wrong)}",
            f"tasks              : {self.task_runs} runs, {self.lost} reported LOST, "
            f"{self.interrupted_runs} interrupted, {len(self.unrecovered_runs)} unrecovered",
            f"callbacks          : {self.callbacks} deliveries, {self.redelivered} re-deliveries,"
            f" {len(self.held)} held",
            f"elapsed            : {self.elapsed:.1f} s, {self.throughput():.1f} instances/s, "
            f"{self.task_throughput():.1f} tasks/s",
        ]
        down, up = self.mark("restart"), self.mark("restarted")
        if down is not None and up is not None:
            after = [t for t in self.end_times if t >= up]
            recovery = (min(after) - up) if after else float("nan")
            lines.append(
                f"restart            : server down {up - down:.1f} s; first completion "
                f"{recovery:.2f} s after it was back"
            )
            lines.append(
                f"throughput before  : {self.throughput(end=down):.1f} instances/s, "
                f"{self.task_throughput(end=down):.1f} tasks/s"
            )
            lines.append(
                f"throughput after   : {self.throughput(start=up):.1f} instances/s, "
                f"{self.task_throughput(start=up):.1f} tasks/s"
            )
        kills = sum(1 for name, _ in self.marks if name == "kill")
        if kills:
            lines.append(f"workers killed     : {kills}")
        faults = Counter(name for name, _ in self.marks)
        if faults["read-only"]:
            lines.append(f"read-only windows  : {faults['read-only']}")
        if faults["terminate"]:
            lines.append(f"terminations       : {faults['terminate']} rounds")
        if faults["forge"]:
            lines.append(f"forged notices     : {faults['forge']} rounds")
        if self.oversized_expected:
            lines.append(
                f"oversized results  : {self.oversized_refused}/{self.oversized_expected} "
                f"refused and reported FAILED to their workflow"
            )
        for label, items in (
            ("failed", self.failed),
            ("wrong", self.wrong),
            ("missing", self.missing),
            ("finished twice", self.finished_twice),
            ("duplicate results", self.duplicate_results),
            ("task ids run twice", self.tasks_run_twice),
            ("unrecovered runs", self.unrecovered_runs),
            ("oversized wrong", self.oversized_wrong),
        ):
            if items:
                shown = list(items.items() if isinstance(items, dict) else items)[:5]
                lines.append(f"  {label}: {shown}")
        lines.append(f"verdict            : {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def _callback_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["i"], record["ev"], record.get("key"), record.get("try"), record.get("st"))


# -- the harness ---------------------------------------------------------------------------


class Workload:
    """Drives a chaos run: worker processes, the enqueued instances, and the checker.

    ``instances`` instances of ``fan_out`` parts each go into ``schema`` of ``dsn``. Worker
    processes log into ``log_dir`` (a temporary directory if None, removed by
    :meth:`close`). Worker connections carry the application name
    ``<app_prefix>-w<index>``, so that a test can find and terminate them.
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        instances: int = 50,
        fan_out: int = 4,
        options: WorkerOptions | None = None,
        log_dir: Path | None = None,
        app_prefix: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.instances = instances
        self.fan_out = fan_out
        self.options = options or WorkerOptions()
        self._own_log_dir = log_dir is None
        if log_dir is None:
            log_dir = Path(tempfile.mkdtemp(prefix="cereal-chaos-"))
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.app_prefix = app_prefix or f"chaos-{schema}"
        self.workers: list[Worker] = []
        self.marks: list[tuple[str, float]] = []
        self.enqueued: list[str] = []
        self.started_at = 0.0
        self._client: Manager | None = None
        self._next_n = 0
        self._fan_outs: dict[str, int] = {}
        self.oversized: list[str] = []

    # -- set-up and teardown ---------------------------------------------------------------

    def prepare(self) -> None:
        """Create and migrate the schema."""
        self.client.driver.open()

    @property
    def client(self) -> Manager:
        """An unstarted manager for enqueueing and inspecting instances."""
        if self._client is None:
            driver = PostgresDriver(
                self.dsn, schema=self.schema, application_name=f"{self.app_prefix}-client"
            )
            self._client = Manager(driver, close_driver=True)
        return self._client

    def close(self) -> None:
        """Kill every worker still running and release everything."""
        self.kill_all()
        for worker in self.workers:
            worker.child.close()
        if self._client is not None:
            self._client.stop()
            self._client = None
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> Workload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- workers ---------------------------------------------------------------------------

    def start_worker(self, *, wait: float = 30.0, **overrides: Any) -> Worker:
        """Start a worker process (``overrides`` change :class:`WorkerOptions` fields) and
        wait until its manager has started."""
        return self.start_workers(1, wait=wait, **overrides)[0]

    def start_workers(self, count: int, *, wait: float = 30.0, **overrides: Any) -> list[Worker]:
        """Start ``count`` worker processes at once and wait until all have started."""
        workers = [self._spawn(**overrides) for _ in range(count)]
        for worker in workers:
            self._expect(worker, "ready", wait)
        return workers

    def _spawn(self, **overrides: Any) -> Worker:
        options = WorkerOptions(**(self.options.__dict__ | overrides))
        index = len(self.workers)
        name = f"{self.app_prefix}-w{index}"
        log_path = self.log_dir / f"worker-{index}.jsonl"
        child = Child(
            "tests.faults.chaos",
            "worker",
            f"--dsn={self.dsn}",
            f"--schema={self.schema}",
            f"--log={log_path}",
            f"--application-name={name}",
            *options.argv(),
            log_file=log_path.with_suffix(".log"),
        )
        worker = Worker(index, name, log_path, child)
        self.workers.append(worker)
        return worker

    def _expect(self, worker: Worker, word: str, timeout: float) -> None:
        try:
            worker.child.expect(word, timeout)
        except AssertionError:
            worker.child.kill()
            raise

    def alive_workers(self) -> list[Worker]:
        """The workers whose process is running."""
        return [w for w in self.workers if w.alive()]

    def kill_worker(self, worker: Worker | None = None, *, busy_within: float = 5.0) -> Worker:
        """SIGKILL ``worker`` (default: a running worker, preferably one that is running a
        task; waits up to ``busy_within`` seconds for one)."""
        if worker is None:
            deadline = time.monotonic() + busy_within
            while True:
                alive = self.alive_workers()
                if not alive:
                    raise RuntimeError("no worker is running")
                busy = [w for w in alive if w.in_flight() > 0]
                if busy or time.monotonic() >= deadline:
                    worker = random.choice(busy or alive)
                    break
                time.sleep(0.05)
        worker.child.kill()
        worker.killed = True
        self.mark("kill")
        return worker

    def stop_worker(self, worker: Worker, timeout: float = 60.0) -> int:
        """Stop ``worker`` gracefully (SIGTERM) and return its exit code."""
        self.signal_stop(worker)
        return self.wait_stopped(worker, timeout)

    def signal_stop(self, worker: Worker) -> None:
        """Ask ``worker`` to stop gracefully without waiting."""
        worker.child.signal(signal.SIGTERM)

    def wait_stopped(self, worker: Worker, timeout: float = 60.0) -> int:
        """Wait for ``worker`` to exit; return its exit code (killing it after ``timeout``)."""
        try:
            return worker.child.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.child.kill()
            raise RuntimeError(
                f"worker {worker.index} did not stop within {timeout:g}s:\n{worker.stderr_tail()}"
            ) from None

    def stop_all(self, timeout: float = 60.0) -> list[int]:
        """Stop every running worker gracefully, all at once; return their exit codes."""
        alive = self.alive_workers()
        for worker in alive:
            self.signal_stop(worker)
        return [self.wait_stopped(worker, timeout) for worker in alive]

    def kill_all(self) -> None:
        """SIGKILL every running worker."""
        for worker in self.alive_workers():
            worker.child.kill()

    def terminate_worker_connections(self) -> int:
        """``pg_terminate_backend`` every connection of the workers; return how many."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (self.app_prefix.replace("_", r"\_") + r"-w%",),
            ).fetchall()
        self.mark("terminate")
        return sum(1 for (ok,) in rows if ok)

    def set_read_only(self, on: bool, *, terminate: bool) -> int:
        """Make new sessions of the workload's database read-only (or writable again) and,
        with ``terminate``, end the workers' sessions (what a failover looks like); return
        how many were ended. Use a database of the run's own: this alters the database."""
        with self._writable() as conn:
            name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                    sql.Identifier(name), sql.SQL("on" if on else "off")
                )
            )
        self.mark("read-only" if on else "writable")
        return self.terminate_worker_connections() if terminate else 0

    def _writable(self) -> psycopg.Connection[Any]:
        """A connection of the harness that a read-only window does not make read-only."""
        return psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=10,
            options="-c default_transaction_read_only=off",
        )

    def forge_notifications(self) -> int:
        """Send what any role that can connect could send on the schema's channel: finish
        notices for live instances, and garbage; return how many."""
        live = self._query("SELECT id FROM workflow_instances ORDER BY random() LIMIT 20")
        payloads = [f"f{r[0]}" for r in live]
        payloads += ["f\u00b2", "f-1", "f", "f" + "9" * 300, "e" + WORKFLOW, "t" + PART_TASK]
        payloads += ["s", "", "\u2603", "e" + "x" * 5000]
        with self._writable() as conn:
            for payload in payloads:
                conn.execute("SELECT pg_notify(%s, %s)", (f"cereal_{self.schema}", payload))
        self.mark("forge")
        return len(payloads)

    def enqueue_oversized(self, count: int) -> list[str]:
        """Enqueue ``count`` ``chaos_big`` instances (see :class:`OversizedWorkflow`)."""
        names = [f"b{len(self.oversized) + i:05d}" for i in range(count)]
        for name in names:
            self.client.enqueue_workflow(BIG_WORKFLOW, name)
        self.oversized.extend(names)
        return names

    def listening_workers(self) -> set[str]:
        """Application names of the workers that have a LISTEN connection."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT DISTINCT application_name FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND query LIKE 'LISTEN %%'",
                (self.app_prefix.replace("_", r"\_") + r"-w%",),
            ).fetchall()
        return {r[0] for r in rows}

    # -- the workload ----------------------------------------------------------------------

    def mark(self, label: str) -> float:
        """Record that ``label`` happened now (kills, restarts: the report uses them)."""
        now = time.time()
        self.marks.append((label, now))
        return now

    def enqueue(self, count: int | None = None, *, fan_out: int | None = None) -> list[str]:
        """Enqueue ``count`` more instances (default: the configured number); return their
        names. The first call starts the clock of the run."""
        count = self.instances if count is None else count
        k = self.fan_out if fan_out is None else fan_out
        if not self.enqueued:
            self.started_at = self.mark("enqueue")
        names = []
        for _ in range(count):
            n = self._next_n
            self._next_n += 1
            name = instance_name(n)
            self.client.enqueue_workflow(WORKFLOW, name, {"n": n, "k": k})
            names.append(name)
        self.enqueued.extend(names)
        self._fan_outs.update(dict.fromkeys(names, k))
        return names

    def _query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            return conn.execute(text.encode(), params).fetchall()

    def finished_count(self) -> int | None:
        """How many enqueued instances have finished (None while the database is down)."""
        try:
            rows = self._query(
                "SELECT count(DISTINCT (workflow_name, instance_name)) FROM workflow_results"
                " WHERE workflow_name = ANY(%s)",
                ([WORKFLOW, BIG_WORKFLOW],),
            )
        except psycopg.Error:
            return None
        return int(rows[0][0])

    def wait(self, timeout: float, *, poll: float = 0.2) -> bool:
        """Wait until every enqueued instance has finished; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.finished_count()
            if done is not None and done >= len(self.enqueued) + len(self.oversized):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def wait_finished(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` instances have finished; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.finished_count()
            if done is not None and done >= count:
                return True
            time.sleep(0.05)
        return False

    def records(self) -> list[dict[str, Any]]:
        """Every record every worker logged."""
        return [r for w in self.workers for r in w.records()]

    def check(self) -> ChaosReport:
        """Compare the database and the workers' records with what a correct run produces."""
        report = ChaosReport(expected=len(self.enqueued), started_at=self.started_at)
        report.marks = list(self.marks)
        runs = self._query(
            "SELECT instance_name, status, result, error, extract(epoch FROM ended_at)::float8"
            " FROM workflow_results WHERE workflow_name = %s ORDER BY id",
            (WORKFLOW,),
        )
        report.leftovers = {
            table: int(self._query(query)[0][0])
            for table, query in (
                ("workflow_instances", "SELECT count(*) FROM workflow_instances"),
                ("workflow_events", "SELECT count(*) FROM workflow_events"),
                ("tasks", "SELECT count(*) FROM tasks"),
            )
        }
        report.finished_runs = len(runs)
        per_instance = Counter(r[0] for r in runs)
        report.finished_twice = sorted(name for name, c in per_instance.items() if c > 1)
        report.missing = sorted(set(self.enqueued) - set(per_instance))
        for name, status, result, error, ended in runs:
            report.end_times.append(float(ended))
            if status != "completed":
                report.failed[name] = str(error)
                if error and DUPLICATE in error:
                    report.duplicate_results.append(name)
                continue
            n, k = int(name[1:]), self._fan_outs.get(name, self.fan_out)
            retries = int(result.get("retries", -1))
            good = (
                result.get("total") == expected_total(n, k)
                and result.get("parts") == k
                and result.get("enqueued") == result.get("completed") == k + 1 + retries
            )
            if not good:
                report.wrong[name] = result
            elif per_instance[name] == 1:
                report.completed += 1
            report.lost += max(retries, 0)
        report.ended_at = max(report.end_times, default=report.started_at)
        report.oversized_expected = len(self.oversized)
        if self.oversized:
            for name, status, result, error in self._query(
                "SELECT instance_name, status, result, error FROM workflow_results"
                " WHERE workflow_name = %s",
                (BIG_WORKFLOW,),
            ):
                if status == "completed" and result == REFUSED:
                    report.oversized_refused += 1
                else:
                    report.oversized_wrong[name] = f"{status}: {error}"
        self._check_records(report)
        return report

    def _check_records(self, report: ChaosReport) -> None:
        records = self.records()
        runs = [r for r in records if r["e"] == "run"]
        done = {(r["id"], r["pid"]) for r in records if r["e"] == "done"}
        report.task_runs = len(runs)
        report.task_end_times = [float(r["at"]) for r in records if r["e"] == "done"]
        by_id = Counter(r["id"] for r in runs)
        report.tasks_run_twice = sorted(tid for tid, c in by_id.items() if c > 1)
        attempts = {(r["i"], r["key"], r["try"]) for r in runs}
        for r in runs:
            if (r["id"], r["pid"]) in done:
                continue
            report.interrupted_runs += 1
            # A run that never returned must have been reported LOST, so its workflow ran
            # the next attempt of the same key.
            if (r["i"], r["key"], r["try"] + 1) not in attempts:
                report.unrecovered_runs.append(f"{r['i']}/{r['key']}#{r['try']} id {r['id']}")
        callbacks = [r for r in records if r["e"] == "cb"]
        report.callbacks = len(callbacks)
        for r in callbacks:
            key = _callback_key(r)
            report.callback_keys[key] += 1
            report.callback_pids.setdefault(key, set()).add(int(r["pid"]))
        report.redelivered = sum(c - 1 for c in report.callback_keys.values())
        report.held = [r for r in records if r["e"] == "held"]
        hooks = Counter(r["i"] for r in records if r["e"] == "finished")
        # on_workflow_complete runs after the commit: a kill may skip it, never repeat it.
        report.finished_twice = sorted(
            set(report.finished_twice) | {name for name, c in hooks.items() if c > 1}
        )

    def drop_schema(self) -> None:
        """Drop the workload's schema."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )


# -- the command line ----------------------------------------------------------------------


@dataclass
class _EmbeddedServer:
    """An embedded PostgreSQL in a temporary directory, owned by one ``run``."""

    parent: Path
    dsn: str = ""

    @property
    def data_dir(self) -> Path:
        return self.parent / "pg"

    @classmethod
    def start(cls) -> _EmbeddedServer:
        from cereal.backends.postgres.embedded import embedded_dsn

        server = cls(Path(tempfile.mkdtemp(prefix="cereal-chaos-pg-")))
        server.dsn = embedded_dsn(server.data_dir)
        return server

    def restart(self, workload: Workload, pause: float) -> None:
        from cereal.backends.postgres.embedded import embedded_dsn, stop_embedded

        workload.mark("restart")
        stop_embedded(self.data_dir)
        time.sleep(pause)
        embedded_dsn(self.data_dir)
        workload.mark("restarted")

    def remove(self) -> None:
        from cereal.backends.postgres.embedded import stop_embedded

        try:
            stop_embedded(self.data_dir)
        finally:
            shutil.rmtree(self.parent, ignore_errors=True)


def _scratch_database(dsn: str) -> tuple[str, Callable[[], None]]:
    """Create a database of the run's own on ``dsn``'s server (read-only windows alter
    it); return its DSN and a function that drops it."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "cereal_chaos_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo("", **params), drop


def _run(args: argparse.Namespace) -> int:
    if args.io_faults:
        args.read_only_every = args.read_only_every or 20.0
        args.terminate_every = args.terminate_every or 10.0
        args.oversized = args.oversized or 1
        args.forge_every = args.forge_every or 1.0
    if args.read_only_every > 0 and args.lost_timeout <= 2 * args.read_only_for:
        # A window longer than the lost-task timeout loses running tasks by design.
        args.lost_timeout = 3 * args.read_only_for
    server: _EmbeddedServer | None = None
    dsn: str | None = args.dsn
    if dsn is None:
        server = _EmbeddedServer.start()
        dsn = server.dsn
    drop_database: Callable[[], None] | None = None
    if args.read_only_every > 0:
        dsn, drop_database = _scratch_database(dsn)
    options = WorkerOptions(
        task_delay=args.task_delay,
        task_workers=args.task_workers,
        heartbeat=args.heartbeat,
        lost_timeout=args.lost_timeout,
    )
    workload = Workload(
        dsn,
        "chaos_" + uuid.uuid4().hex[:8],
        instances=args.instances,
        fan_out=args.fan_out,
        options=options,
        log_dir=Path(args.log_dir) if args.log_dir else None,
    )
    began = time.monotonic()
    total = args.instances + args.oversized

    def say(text: str) -> None:
        done = workload.finished_count()
        progress = "?" if done is None else str(done)
        print(f"[{time.monotonic() - began:6.1f}s] {progress:>5}/{total} {text}", flush=True)

    try:
        workload.prepare()
        for _ in range(args.workers):
            workload.start_worker()
        say(f"{args.workers} workers started")
        workload.enqueue()
        say(f"enqueued {args.instances} instances x {args.fan_out} parts + 1 chained task")
        if args.oversized:
            workload.enqueue_oversized(args.oversized)
            say(f"enqueued {args.oversized} instances whose task result is over the jsonb limit")
        restart_at = None
        if server is not None and args.restart_at > 0:
            restart_at = int(args.restart_at * args.instances)
        elif server is None:
            say("no PostgreSQL restart: the server is not this run's own (--dsn)")
        deadline = time.monotonic() + args.timeout
        next_kill = time.monotonic() + args.kill_every
        done_at_kill = -1
        next_terminate = time.monotonic() + args.terminate_every
        next_read_only = time.monotonic() + args.read_only_every
        next_forge = time.monotonic() + args.forge_every
        forged = 0
        calm = False
        while True:
            now = time.monotonic()
            done = workload.finished_count()
            if done is not None and done >= total:
                break
            if now >= deadline:
                say(f"not finished after {args.timeout:g}s; checking anyway")
                break
            if done is not None and done >= args.instances and not calm:
                # What is left (the oversized results: ~270 MiB a write) must get through
                # once the faults stop; under a termination loop shorter than one such
                # write, it never would.
                calm = True
                say("faults stop; waiting for the rest")
            if calm:
                time.sleep(0.2)
                continue
            if server is not None and restart_at is not None and (done or 0) >= restart_at:
                restart_at = None
                say("restarting PostgreSQL")
                server.restart(workload, args.restart_pause)
                say("PostgreSQL is back")
            # Never kill twice without progress in between: near the end, the only busy worker
            # runs the last task, and killing it every few seconds would never let it finish.
            if args.kill_every > 0 and now >= next_kill and (done or 0) > done_at_kill:
                done_at_kill = done or 0
                victim = workload.kill_worker(busy_within=1.0)
                workload.start_worker()
                say(f"SIGKILLed worker {victim.index} (pid {victim.pid}); started a replacement")
                next_kill = time.monotonic() + args.kill_every
            if args.terminate_every > 0 and now >= next_terminate:
                try:
                    count = workload.terminate_worker_connections()
                except psycopg.Error as exc:
                    say(f"could not terminate connections: {exc}")
                else:
                    say(f"terminated {count} worker connections")
                next_terminate = time.monotonic() + args.terminate_every
            if args.read_only_every > 0 and now >= next_read_only:
                count = workload.set_read_only(True, terminate=True)
                say(f"database read-only for {args.read_only_for:g}s; ended {count} sessions")
                time.sleep(args.read_only_for)
                workload.set_read_only(False, terminate=False)
                say("database writable again (sessions opened meanwhile stay read-only)")
                next_read_only = time.monotonic() + args.read_only_every
            if args.forge_every > 0 and now >= next_forge:
                with contextlib.suppress(psycopg.Error):
                    forged += workload.forge_notifications()
                next_forge = time.monotonic() + args.forge_every
            time.sleep(0.1)
        if forged:
            say(f"sent {forged} forged notifications")
        codes = workload.stop_all()
        say(f"workers stopped (exit codes {codes})")
        report = workload.check()
        print()
        print(report.describe())
        return 0 if report.ok else 1
    finally:
        workload.close()
        if drop_database is not None:
            with contextlib.suppress(psycopg.Error):
                drop_database()
        if server is not None:
            server.remove()
        elif not args.keep and drop_database is None:
            with contextlib.suppress(psycopg.Error):
                workload.drop_schema()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tests.faults.chaos``."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.chaos", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the workload with faults and check it (scripts/chaos)",
        description="Run the chaos workload: SIGKILL a worker every few seconds, restart "
        "PostgreSQL once (embedded server only), then check that every instance completed "
        "exactly once with the right result and that nothing was left behind. Exit status 1 "
        "when a guarantee broke.",
    )
    run.add_argument("--dsn", help="PostgreSQL URL (default: an embedded server in a temp dir)")
    run.add_argument("--instances", type=int, default=500, help="workflow instances (500)")
    run.add_argument("--fan-out", type=int, default=5, help="parallel tasks per instance (5)")
    run.add_argument("--workers", type=int, default=3, help="worker processes (3)")
    run.add_argument("--task-delay", type=float, default=0.15, help="seconds per task (0.15)")
    run.add_argument("--task-workers", type=int, default=4, help="task threads per name (4)")
    run.add_argument("--heartbeat", type=float, default=0.5, help="heartbeat interval (0.5)")
    run.add_argument("--lost-timeout", type=float, default=2.5, help="lost-task timeout (2.5)")
    run.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills (4)")
    run.add_argument(
        "--terminate-every",
        type=float,
        default=0.0,
        help="seconds between pg_terminate_backend of the workers' connections (0: never)",
    )
    run.add_argument(
        "--restart-at",
        type=float,
        default=0.4,
        help="restart PostgreSQL once this fraction has finished (0.4; 0: never)",
    )
    run.add_argument("--restart-pause", type=float, default=1.0, help="seconds down (1)")
    run.add_argument(
        "--read-only-every",
        type=float,
        default=0.0,
        help="seconds between read-only windows (0: never); the run then uses a database of "
        "its own on the server",
    )
    run.add_argument(
        "--read-only-for", type=float, default=3.5, help="seconds each window lasts (3.5)"
    )
    run.add_argument(
        "--oversized",
        type=int,
        default=0,
        help="instances whose task result is over the jsonb limit (0; ~270 MiB each)",
    )
    run.add_argument(
        "--forge-every",
        type=float,
        default=0.0,
        help="seconds between rounds of forged notifications (0: never)",
    )
    run.add_argument(
        "--io-faults",
        action="store_true",
        help="all I/O faults: read-only every 20 s, terminations every 10 s, 1 oversized "
        "result, forged notifications every second (explicit options win); with read-only "
        "windows the lost-task timeout is raised to 3 windows unless it is over 2",
    )
    run.add_argument("--timeout", type=float, default=110.0, help="give up after (110 s)")
    run.add_argument("--log-dir", help="keep the workers' records and logs here")
    run.add_argument("--keep", action="store_true", help="keep the schema (with --dsn)")
    worker = sub.add_parser("worker", help="one worker process (used by run and the tests)")
    worker.add_argument("--dsn", required=True)
    worker.add_argument("--schema", required=True)
    worker.add_argument("--log", required=True, help="JSON-lines file for the records")
    worker.add_argument("--application-name", default="cereal-chaos")
    _add_worker_options(worker)
    args = parser.parse_args(argv)
    if args.command == "worker":
        level = logging.WARNING
        logging.basicConfig(stream=sys.stderr, level=level)
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )
        options = WorkerOptions(
            task_delay=args.task_delay,
            task_workers=args.task_workers,
            workflow_workers=args.workflow_workers,
            workflow_poll=args.workflow_poll,
            task_poll=args.task_poll,
            heartbeat=args.heartbeat,
            lost_timeout=args.lost_timeout,
            stop_timeout=args.stop_timeout,
            hold=args.hold,
            hold_on=args.hold_on,
        )
        return run_worker(args.dsn, args.schema, Path(args.log), options, args.application_name)
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
