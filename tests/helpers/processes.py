"""Child processes for the tests that exercise cereal across processes.

:class:`Child` runs ``python -m MODULE ARGS...`` from the repository root: the lines the child
prints on stdout are its protocol with the test (``ready``, ``claimed 12``, ...), its stderr
(logs, tracebacks) goes to a file. The fault workload (``tests/faults/chaos.py``) runs its
workers with it, and :func:`program` runs one of the programs of this module:

``blocker``
    A manager running task ``block``: the task prints ``claimed <task id>`` and then blocks
    forever (the test kills the process). Prints ``ready`` once started.
``client``
    An unstarted manager that reads commands from stdin, one per line:
    ``enqueue|cancel|kill WORKFLOW INSTANCE [JSON PARAMETERS]`` or
    ``signal WORKFLOW INSTANCE NAME [JSON PAYLOAD]``. For each it prints
    ``done <t0> <t1>`` (wall-clock ``time.time()`` before and after the call) or
    ``error <message>``. Prints ``ready`` first.
``worker LOG``
    A manager running workflow ``pair`` (two tasks, ``double`` and ``square``, each of
    ``parameters["x"]``; completes with ``{"double": 2x, "square": x*x}``). Every ``on_start``,
    task run and ``on_workflow_complete`` call is appended to the JSON-lines file ``LOG``. Prints
    ``ready`` once started and stops when stdin closes or says ``stop``.
``retrier MODE DELAY``
    A manager running task ``flaky`` only, with ``RetryPolicy(max_attempts=3,
    initial_delay=DELAY, backoff=1)``: each attempt prints ``attempt <task id> <attempt>``,
    then blocks forever (MODE ``block``) or raises (MODE ``fail``). Prints ``ready`` once
    started.
``signal-stall WORKFLOW``
    A manager running workflow ``WORKFLOW``: ``on_start`` continues and prints ``started
    <instance>``; ``on_signal`` prints ``signalled <instance> <name>`` and then blocks forever,
    so the signal is never committed (the test kills the process). Prints ``ready`` once
    started.
``migrate WHEN``
    Waits until wall-clock time ``WHEN``, migrates the schema and prints ``applied`` and the
    versions it applied as JSON.
``scheduler WORKFLOW RUNS``
    A manager with its scheduler on; its executor for ``WORKFLOW`` completes every instance at
    once and appends one line per start to the file ``RUNS``: ``<instance> <enqueued_at ISO>
    <pid>``. Prints ``ready`` once started and stops when stdin closes. Its log records go to
    stderr as JSON objects, one a line.

Every manager here runs with the fast intervals of :mod:`tests.helpers.timings`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cereal import Manager, RetryPolicy, Task, WorkflowInstance, WorkflowInstanceInfo
from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.migrations import migrate
from cereal.logging import CONTEXT_ATTRIBUTE
from tests.helpers.recorders import Flow, complete
from tests.helpers.timings import FAST_MANAGER_OPTIONS

ROOT = Path(__file__).resolve().parents[2]


class Child:
    """``python -m module *args`` in a child process (see the module docstring).

    A thread collects its stdout lines; its stderr goes to ``log_file``. Used as a context
    manager, the process is killed on exit if it is still running.
    """

    def __init__(self, module: str, *args: str, log_file: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log_file = log_file
        self._stderr: IO[str] = open(log_file, "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=env,
            cwd=ROOT,
        )
        self.name = " ".join([module, *args[:1]])
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def expect(self, word: str, timeout: float = 30.0) -> list[str]:
        """Wait for the next stdout line starting with ``word``; return its other words.

        Raises ``AssertionError`` (with the child's log) when the child says ``error`` first,
        exits, or says nothing of the kind within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.0)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(
                    f"child {self.name!r} did not say {word!r} within {timeout:g}s "
                    f"(exit code {self.proc.poll()}); its log:\n{self.log_tail()}"
                )
            words = line.split()
            if words and words[0] == word:
                return words[1:]
            if words and words[0] == "error":
                raise AssertionError(f"child reported: {line}")

    def send(self, line: str) -> None:
        """Write ``line`` to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of what the child wrote on stderr."""
        if not self._stderr.closed:
            self._stderr.flush()
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin (the child then stops) and wait for it to exit; return its exit code."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child if it still runs."""
        if self.alive():
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit and return its exit code (``TimeoutExpired`` after
        ``timeout`` seconds)."""
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the child and wait for it to be gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        """Kill the child if it still runs and release its pipes and log file."""
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._stderr.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def program(mode: str, dsn: str, schema: str, *args: str, log_file: Path) -> Child:
    """A child process running program ``mode`` of this module on ``schema`` of ``dsn``."""
    return Child("tests.helpers.processes", mode, dsn, schema, *args, log_file=log_file)


# -- the programs (run in the child process) ---------------------------------------------------


def say(*words: object) -> None:
    print(*words, flush=True)


def blocker(dsn: str, schema: str) -> None:

    def block(task: Task) -> None:
        say("claimed", task.id)
        threading.Event().wait()

    manager = Manager(PostgresDriver(dsn, schema=schema), scheduler=False, **FAST_MANAGER_OPTIONS)
    manager.register_task_executor("block", block)
    manager.start()
    say("ready")
    threading.Event().wait()


def retrier(dsn: str, schema: str, mode: str, delay: str) -> None:

    def flaky(task: Task) -> None:
        say("attempt", task.id, task.attempt)
        if mode == "block":
            threading.Event().wait()
        raise RuntimeError(f"attempt {task.attempt} failed")

    manager = Manager(PostgresDriver(dsn, schema=schema), scheduler=False, **FAST_MANAGER_OPTIONS)
    policy = RetryPolicy(max_attempts=3, initial_delay=float(delay), backoff=1)
    manager.register_task_executor("flaky", flaky, retry=policy)
    manager.start()
    say("ready")
    threading.Event().wait()


def client(dsn: str, schema: str) -> None:

    manager = Manager(PostgresDriver(dsn, schema=schema), close_driver=True)
    manager.driver.open()
    ops: dict[str, Callable[..., None]] = {
        "enqueue": manager.enqueue_workflow,
        "cancel": manager.cancel_workflow,
        "kill": manager.kill_workflow,
        "signal": manager.signal_workflow,
    }
    say("ready")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "stop":
            break
        op, workflow_name, instance_name, *rest = words
        args: list[Any] = [rest.pop(0)] if op == "signal" else []
        args += [json.loads(" ".join(rest))] if rest else []
        started = time.time()
        try:
            ops[op](workflow_name, instance_name, *args)
        except Exception as exc:
            say("error", f"{type(exc).__name__}: {exc}")
        else:
            say("done", started, time.time())
    manager.stop()


class _Stall:
    """Continues on start; blocks forever in ``on_signal`` (see ``signal-stall``)."""

    def on_start(self, instance: WorkflowInstance, event: Any) -> Any:
        say("started", instance.instance_name)
        return instance.continue_with(["started"])

    def on_task_complete(self, instance: WorkflowInstance, event: Any) -> Any:
        return instance.continue_with(instance.payload)

    def on_cancel(self, instance: WorkflowInstance, event: Any) -> Any:
        return instance.fail("cancelled")

    def on_signal(self, instance: WorkflowInstance, event: Any) -> Any:
        say("signalled", instance.instance_name, event.name)
        threading.Event().wait()


def signal_stall(dsn: str, schema: str, workflow: str) -> None:

    manager = Manager(PostgresDriver(dsn, schema=schema), scheduler=False, **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor(workflow, _Stall())
    manager.start()
    say("ready")
    threading.Event().wait()


class _Log:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def worker(dsn: str, schema: str, log_path: str) -> None:

    log = _Log(log_path)

    def on_start(instance: WorkflowInstance, event: Any) -> Any:
        # Runs double and square of parameters["x"] in parallel; on_task combines them.
        log.write(kind="start", instance=instance.instance_name, pid=os.getpid())
        x = instance.parameters["x"]
        instance.enqueue_task("double", {"x": x})
        instance.enqueue_task("square", {"x": x})
        return instance.continue_with({})

    def on_task(instance: WorkflowInstance, event: Any) -> Any:
        if not event.result.ok:
            return instance.fail(f"{event.task_name} failed: {event.result.error}")
        results = dict(instance.payload or {})
        results[event.task_name] = event.result.value
        if instance.total_completed_tasks == instance.total_enqueued_tasks:
            return instance.complete(results)
        return instance.continue_with(results)

    def finished(info: WorkflowInstanceInfo) -> None:
        log.write(
            kind="complete",
            instance=info.instance_name,
            status=info.status.value,
            result=info.result,
            error=info.error,
            pid=os.getpid(),
        )

    def double(task: Task) -> int:
        log.write(kind="task", instance=task.instance_name, task=task.name, pid=os.getpid())
        time.sleep(0.002)
        return int(task.parameters["x"]) * 2

    def square(task: Task) -> int:
        log.write(kind="task", instance=task.instance_name, task=task.name, pid=os.getpid())
        time.sleep(0.002)
        return int(task.parameters["x"]) ** 2

    manager = Manager(
        PostgresDriver(dsn, schema=schema),
        on_workflow_complete=finished,
        scheduler=False,
        **FAST_MANAGER_OPTIONS,
    )
    manager.register_workflow_executor("pair", Flow(on_start=on_start, on_task=on_task))
    manager.register_task_executor("double", double, workers=4)
    manager.register_task_executor("square", square, workers=4)
    manager.start()
    say("ready")
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    manager.stop(timeout=20)
    manager.driver.close()
    log.close()
    say("stopped")


def migrate_at(dsn: str, schema: str, when: str) -> None:

    driver = PostgresDriver(dsn, schema=schema)
    time.sleep(max(0.0, float(when) - time.time()))
    with driver.connect() as conn:
        say("applied", json.dumps(migrate(conn, schema)))


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:

        fields = getattr(record, CONTEXT_ATTRIBUTE, None) or {"event": record.getMessage()}
        return json.dumps({"level": record.levelname.lower(), **fields}, default=str)


def scheduler(dsn: str, schema: str, workflow: str, runs: str) -> None:

    lock = threading.Lock()

    def on_start(instance: WorkflowInstance, event: Any) -> Any:
        line = f"{instance.instance_name} {event.enqueued_at.isoformat()} {os.getpid()}\n"
        with lock, open(runs, "a", encoding="utf-8") as out:
            out.write(line)
        return instance.complete()

    manager = Manager(
        PostgresDriver(dsn, schema=schema),
        scheduler=True,
        close_driver=True,
        **FAST_MANAGER_OPTIONS,
    )
    manager.register_workflow_executor(
        workflow, Flow(on_start=on_start, on_task=complete, on_cancel=complete)
    )
    manager.start()
    try:
        say("ready")
        sys.stdin.read()  # until the parent closes our standard input
    finally:
        manager.stop(timeout=10)


def main(argv: list[str]) -> None:
    mode, dsn, schema, *rest = argv
    handler = logging.StreamHandler(sys.stderr)
    if mode == "scheduler":
        handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    programs: dict[str, Callable[..., None]] = {
        "blocker": blocker,
        "retrier": retrier,
        "client": client,
        "worker": worker,
        "migrate": migrate_at,
        "scheduler": scheduler,
        "signal-stall": signal_stall,
    }
    if mode not in programs:
        raise SystemExit(f"unknown mode {mode!r}")
    programs[mode](dsn, schema, *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
