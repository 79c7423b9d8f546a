"""The manager runs on any Driver: here the in-memory one, with no database at all."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from cereal import Manager, Task, WorkflowInstance, WorkflowStatus
from cereal.testing import MemoryDriver
from tests.helpers.schedules import schedule_soon
from tests.helpers.timings import FAST_MANAGER_OPTIONS


class Summer:
    """One task per number; completes with the sum of the tasks' squares."""

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        for n in inst.parameters:
            inst.enqueue_task("square", n)
        return inst.continue_with({"left": len(inst.parameters), "total": 0})

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        state = {
            "left": inst.payload["left"] - 1,
            "total": inst.payload["total"] + event.result.value,
        }
        return inst.complete(state["total"]) if state["left"] == 0 else inst.continue_with(state)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def square(task: Task) -> int:
    return int(task.parameters) ** 2


def test_workflows_tasks_and_schedules_run_on_the_memory_driver() -> None:
    manager = Manager(MemoryDriver(), **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("sum", Summer())
    manager.register_task_executor("square", square, workers=3)
    start = schedule_soon(manager, "sum", "nightly", [4], rule="FREQ=DAILY", lead=3.0)
    with manager:
        manager.enqueue_workflow("sum", "now", [1, 2, 3])
        assert manager.await_workflow("sum", "now", timeout=10).result == 14
        deadline = time.monotonic() + 10
        while manager.get_workflow_schedule("sum", "nightly").last_enqueued_at is None:
            assert time.monotonic() < deadline, "the schedule did not run"
            time.sleep(0.02)
        assert manager.await_workflow("sum", "nightly", timeout=10).result == 16
    assert manager.get_workflow_schedule("sum", "nightly").next_due_at == start + timedelta(days=1)


def test_two_managers_on_one_store_share_the_work_and_kill_stops_a_task() -> None:
    first = MemoryDriver()
    second = MemoryDriver(store=first.store)  # another process on the same storage
    started, stopped = threading.Event(), threading.Event()

    def wait(task: Task) -> None:
        started.set()
        if task.cancelled.wait(10):
            stopped.set()

    class OneTask:
        def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
            inst.enqueue_task("wait", None)
            return inst.continue_with()

        def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
            return inst.complete()

        def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
            return inst.fail("cancelled")

    worker = Manager(first, **FAST_MANAGER_OPTIONS)
    worker.register_workflow_executor("w", OneTask())
    worker.register_task_executor("wait", wait)
    with worker:
        client = Manager(second, **FAST_MANAGER_OPTIONS)  # never started: only writes
        client.enqueue_workflow("w", "i")
        assert started.wait(10)
        client.kill_workflow("w", "i")
        assert stopped.wait(10)
        info = client.get_workflow_instance("w", "i")
        assert (info.status, info.error) == (WorkflowStatus.FAILED, "killed")
