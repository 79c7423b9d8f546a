"""Programs that integration tests run in child processes, to exercise cereal across processes.

Usage: ``python tests/procs.py MODE DSN SCHEMA [ARGS...]``. Lines on stdout are the protocol with
the parent test; logs go to stderr. Modes:

``blocker``
    A manager running task ``block``: the task prints ``claimed <task id>`` and then blocks
    forever (the test kills the process). Prints ``ready`` once started.
``client``
    An unstarted manager that reads commands from stdin, one per line:
    ``enqueue|cancel|kill WORKFLOW INSTANCE [JSON PARAMETERS]``. For each it prints
    ``done <t0> <t1>`` (wall-clock ``time.time()`` before and after the call) or
    ``error <message>``. Prints ``ready`` first.
``worker LOG``
    A manager running workflow ``pair`` (two tasks, ``double`` and ``square``, each of
    ``parameters["x"]``; completes with ``{"double": 2x, "square": x*x}``). Every ``on_start``,
    task run and ``on_workflow_complete`` call is appended to the JSON-lines file ``LOG``. Prints
    ``ready`` once started and stops when stdin closes or says ``stop``.
``migrate``
    Waits until wall-clock time ``ARGS[0]``, migrates the schema and prints ``applied`` and the
    versions it applied as JSON.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import structlog

from cereal import (
    Decision,
    Manager,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
    WorkflowInstanceInfo,
)
from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent

FAST = {
    "workflow_poll_interval": 0.5,
    "task_poll_interval": 0.5,
    "heartbeat_interval": 0.5,
    "lost_task_timeout": 3,
    "scheduler": False,
}


def say(*words: object) -> None:
    print(*words, flush=True)


def blocker(dsn: str, schema: str) -> None:
    def block(task: Task) -> None:
        say("claimed", task.id)
        threading.Event().wait()

    manager = Manager(PostgresDriver(dsn, schema=schema), **FAST)
    manager.register_task_executor("block", block)
    manager.start()
    say("ready")
    threading.Event().wait()


def client(dsn: str, schema: str) -> None:
    manager = Manager(PostgresDriver(dsn, schema=schema), close_driver=True)
    manager.driver.open()
    ops = {
        "enqueue": manager.enqueue_workflow,
        "cancel": manager.cancel_workflow,
        "kill": manager.kill_workflow,
    }
    say("ready")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "stop":
            break
        op, workflow_name, instance_name, *rest = words
        args = [json.loads(" ".join(rest))] if rest else []
        started = time.time()
        try:
            ops[op](workflow_name, instance_name, *args)
        except Exception as exc:
            say("error", f"{type(exc).__name__}: {exc}")
        else:
            say("done", started, time.time())
    manager.stop()


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


class Pair:
    """Runs ``double`` and ``square`` of ``parameters["x"]`` in parallel and combines them."""

    def __init__(self, log: _Log) -> None:
        self._log = log

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        self._log.write(kind="start", instance=instance.instance_name, pid=os.getpid())
        x = instance.parameters["x"]
        instance.enqueue_task("double", {"x": x})
        instance.enqueue_task("square", {"x": x})
        return instance.continue_with({})

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        if not event.result.ok:
            return instance.fail(f"{event.task_name} failed: {event.result.error}")
        results = dict(instance.payload or {})
        results[event.task_name] = event.result.value
        if instance.total_completed_tasks == instance.total_enqueued_tasks:
            return instance.complete(results)
        return instance.continue_with(results)

    def on_cancel(self, instance: WorkflowInstance, event: object) -> Decision:
        return instance.fail("cancelled")


def worker(dsn: str, schema: str, log_path: str) -> None:
    log = _Log(log_path)

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

    manager = Manager(PostgresDriver(dsn, schema=schema), on_workflow_complete=finished, **FAST)
    manager.register_workflow_executor("pair", Pair(log))
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


class Child:
    """A child process running one mode of this module (see the module docstring).

    A thread collects its stdout lines; its stderr (logs) goes to ``log_file``. Used as a
    context manager, the process is killed on exit if it is still running.
    """

    def __init__(self, mode: str, dsn: str, schema: str, *args: str, log_file: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log_file = log_file
        self._stderr: IO[str] = open(log_file, "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, __file__, mode, dsn, schema, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, word: str, timeout: float = 30.0) -> list[str]:
        """Wait for the next stdout line starting with ``word``; return its other words."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.0)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(
                    f"child {self.proc.args[2]!r} did not say {word!r} within {timeout:g}s "
                    f"(exit code {self.proc.poll()}); its log:\n{self.log_tail()}"
                )
            words = line.split()
            if words and words[0] == word:
                return words[1:]
            if words and words[0] == "error":
                raise AssertionError(f"child reported: {line}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def log_tail(self, chars: int = 4000) -> str:
        self._stderr.flush()
        return self.log_file.read_text(encoding="utf-8", errors="replace")[-chars:]

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin (the child then stops) and wait for it to exit; return its exit code."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self._stderr.close()


def main(argv: list[str]) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    mode, dsn, schema, *rest = argv
    if mode == "blocker":
        blocker(dsn, schema)
    elif mode == "client":
        client(dsn, schema)
    elif mode == "worker":
        worker(dsn, schema, *rest)
    elif mode == "migrate":
        migrate_at(dsn, schema, *rest)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
