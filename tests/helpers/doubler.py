"""A one-task workflow for the tracing and metrics tests (imports no OpenTelemetry)."""

from __future__ import annotations

from typing import Any

from cereal import Task, WorkflowInstance


class Doubler:
    """Runs task ``double`` once and completes with its value; fails if the task fails."""

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        inst.enqueue_task("double", inst.parameters)
        return inst.continue_with()

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        if not event.result.ok:
            return inst.fail(event.result.error)
        return inst.complete(event.result.value)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def double(task: Task) -> int:
    """Twice the parameter; raises ``ValueError`` for a negative one."""
    if task.parameters < 0:
        raise ValueError("negative")
    return int(task.parameters) * 2
