"""Liveness has its own path: tasks that outlive a short PostgreSQL outage are not lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from cereal import Manager, Task, WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.embedded import embedded_dsn, stop_embedded
from tests.helpers.recorders import Flow
from tests.helpers.timings import FAST_MANAGER_OPTIONS

LOST_TASK_TIMEOUT = 12.0
OUTAGE = 8.0  # seconds the server is down (it takes a little longer to come back)
TASKS = 4


def _manager(dsn: str, schema: str, **options: Any) -> Manager:
    driver = PostgresDriver(dsn, schema=schema, connect_timeout=2)
    return Manager(
        driver,
        close_driver=True,
        **(FAST_MANAGER_OPTIONS | {"lost_task_timeout": LOST_TASK_TIMEOUT} | options),
    )


def test_tasks_running_through_a_restart_shorter_than_the_lost_timeout_are_recorded(
    own_server: tuple[str, Path],
) -> None:
    dsn, data_dir = own_server
    schema = "liveness"
    release = threading.Event()
    running = threading.Semaphore(0)

    def task(t: Task) -> Any:
        running.release()
        release.wait(60)
        return t.parameters

    def on_task(inst: Any, ev: Any) -> Any:
        r = ev.result
        return inst.complete(r.value) if r.ok else inst.fail(f"{r.status.value}: {r.error}")

    worker = _manager(dsn, schema)
    worker.register_workflow_executor(
        "w",
        Flow(
            on_start=lambda i, e: i.enqueue_task("t", i.instance_name) or i.continue_with(),
            on_task=on_task,
        ),
    )
    worker.register_task_executor("t", task, workers=TASKS)
    # Another manager on the same schema, as in production: it reaps lost tasks too. It
    # starts once the server is back, so its reaper looks at once and then every few
    # seconds: the worst case for the worker, whose heartbeats must come back first.
    watcher = _manager(dsn, schema)
    worker.start()
    try:
        for n in range(TASKS):
            worker.enqueue_workflow("w", f"i{n}")
        for _ in range(TASKS):
            assert running.acquire(timeout=30), "the tasks never started"
        down_at = time.monotonic()
        stop_embedded(data_dir)
        time.sleep(OUTAGE)
        assert embedded_dsn(data_dir) == dsn
        back_after = time.monotonic() - down_at
        assert back_after < LOST_TASK_TIMEOUT - 2, f"the server took {back_after:.1f}s to return"
        watcher.start()
        release.set()  # the tasks finish just after the server is back
        infos = [worker.await_workflow("w", f"i{n}", timeout=60) for n in range(TASKS)]
        assert [(i.status, i.result, i.error) for i in infos] == [
            (WorkflowStatus.COMPLETED, f"i{n}", None) for n in range(TASKS)
        ]
    finally:
        release.set()
        watcher.stop(timeout=10)
        worker.stop(timeout=10)
