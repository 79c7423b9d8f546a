"""A pending task retry survives a PostgreSQL restart, on a server this test owns."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cereal import (
    Decision,
    Manager,
    RetryPolicy,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
    WorkflowInstanceInfo,
    WorkflowStatus,
)
from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.embedded import embedded_dsn, stop_embedded
from tests.helpers.recorders import Flow
from tests.helpers.timings import FAST_MANAGER_OPTIONS
from tests.helpers.waiting import wait_for


@pytest.mark.timeout(120)
def test_a_retry_pending_across_a_postgres_restart_runs_once_the_database_is_back(
    own_server: tuple[str, Path],
) -> None:
    dsn, data_dir = own_server
    seen: list[int] = []
    lock = threading.Lock()

    def flaky(task: Task) -> str:
        with lock:
            seen.append(task.attempt)
        if task.attempt == 1:
            raise ConnectionError("first attempt fails")
        return "second attempt"

    def start(inst: WorkflowInstance, event: StartEvent) -> Decision:
        inst.enqueue_task("flaky")
        return inst.continue_with()

    def result(inst: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return inst.complete({"value": event.result.value, "attempts": event.result.attempts})

    driver = PostgresDriver(dsn, schema="retries")
    manager = Manager(driver, scheduler=False, close_driver=True, **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("one", Flow(on_start=start, on_task=result))
    manager.register_task_executor(
        "flaky", flaky, retry=RetryPolicy(max_attempts=2, initial_delay=3.0)
    )
    manager.start()
    try:
        manager.enqueue_workflow("one", "i", None)
        wait_for(lambda: seen == [1], 15, "the first attempt")
        # Its retry is the task's row, queued again and due in 3 s.
        wait_for(
            lambda: [t.state for t in driver.list_tasks(task_name="flaky")] == ["queued"],
            5,
            "the retry row",
        )

        stop_embedded(data_dir)
        time.sleep(1.0)
        assert embedded_dsn(data_dir) == dsn

        info = wait_for(lambda: _finished(manager), 40, "the retried attempt after the restart")
        assert info is not None
        assert (info.status, info.result) == (
            WorkflowStatus.COMPLETED,
            {"value": "second attempt", "attempts": 2},
        )
        assert seen == [1, 2]
    finally:
        manager.stop(timeout=10)


def _finished(manager: Manager) -> WorkflowInstanceInfo | None:
    try:
        info = manager.get_workflow_instance("one", "i")
    except Exception:  # the database may still be coming back
        return None
    return None if info.is_running else info
