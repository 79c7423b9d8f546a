"""Task retries run the same on the in-memory driver, with no database at all."""

from __future__ import annotations

from typing import Any

from cereal import Manager, RetryPolicy, Task, WorkflowInstance
from cereal.testing import MemoryDriver
from tests.helpers.timings import FAST_MANAGER_OPTIONS


class OneTask:
    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        inst.enqueue_task("flaky")
        return inst.continue_with()

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        r = event.result
        return inst.complete([r.status.value, r.value, r.error, r.attempts])

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def test_a_task_failing_twice_succeeds_on_its_third_attempt() -> None:
    seen: list[int] = []

    def flaky(task: Task) -> str:
        seen.append(task.attempt)
        if task.attempt < 3:
            raise ValueError(f"attempt {task.attempt}")
        return "third time lucky"

    manager = Manager(MemoryDriver(), **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("one", OneTask())
    manager.register_task_executor("flaky", flaky, retry=RetryPolicy(initial_delay=0.05))
    with manager:
        manager.enqueue_workflow("one", "i")
        info = manager.await_workflow("one", "i", timeout=10)
    assert info.result == ["success", "third time lucky", None, 3]
    assert seen == [1, 2, 3]


def test_the_last_error_reaches_the_workflow_when_attempts_run_out() -> None:
    def broken(task: Task) -> None:
        raise ValueError(f"attempt {task.attempt}")

    manager = Manager(MemoryDriver(), **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("one", OneTask())
    policy = RetryPolicy(max_attempts=2, initial_delay=0.05)
    manager.register_task_executor("flaky", broken, retry=policy)
    with manager:
        manager.enqueue_workflow("one", "i")
        info = manager.await_workflow("one", "i", timeout=10)
    assert info.result == ["failed", None, "ValueError: attempt 2", 2]
