"""A manager with its scheduler on, run in a process of its own by the multi-process tests.

Usage: ``python tests/schedule_proc.py DSN SCHEMA WORKFLOW RUNS_FILE``

The manager works on ``SCHEMA``; its executor for ``WORKFLOW`` completes every instance at once
and appends one line per start to ``RUNS_FILE``: ``<instance> <enqueued_at ISO> <pid>``. Once the
manager has started, ``RUNS_FILE.ready`` is created. The process stops its manager and exits when
its standard input is closed. Log events go to standard output, one JSON object a line.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import structlog

from cereal import Manager, StartEvent, WorkflowInstance
from cereal.backends.postgres import PostgresDriver


class RecordingExecutor:
    def __init__(self, runs_file: Path) -> None:
        self._runs_file = runs_file
        self._lock = threading.Lock()

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Any:
        line = f"{instance.instance_name} {event.enqueued_at.isoformat()} {os.getpid()}\n"
        with self._lock, self._runs_file.open("a", encoding="utf-8") as out:
            out.write(line)
        return instance.complete()

    def on_task_complete(self, instance: WorkflowInstance, event: Any) -> Any:
        return instance.complete()

    def on_cancel(self, instance: WorkflowInstance, event: Any) -> Any:
        return instance.complete()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    dsn, schema, workflow, runs = argv
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    runs_file = Path(runs)
    manager = Manager(
        PostgresDriver(dsn, schema=schema),
        workflow_poll_interval=0.5,
        task_poll_interval=0.5,
        heartbeat_interval=0.5,
        lost_task_timeout=3,
        scheduler=True,
        close_driver=True,
    )
    manager.register_workflow_executor(workflow, RecordingExecutor(runs_file))
    manager.start()
    try:
        Path(f"{runs}.ready").touch()
        sys.stdin.read()  # until the parent closes our standard input
    finally:
        manager.stop(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
