"""Single task: a workflow that runs one task and finishes with its outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cereal.codec import check_name
from cereal.executors import TaskExecutor, TaskFunction
from cereal.retries import RetryPolicy
from cereal.types import CancelEvent, StartEvent, TaskCompleteEvent
from cereal.workflow import Decision, WorkflowInstance

if TYPE_CHECKING:
    from cereal.manager import Manager

__all__ = ["SingleTaskWorkflowExecutor", "register_single_task_workflow"]


class SingleTaskWorkflowExecutor:
    """Runs one ``task_name`` task with the workflow's parameters, unchanged.

    The workflow completes with the task's return value when it succeeds, and fails with
    the task's error otherwise (failed, timed out, lost). A cancel fails the workflow with
    ``"cancelled"`` when ``allow_cancel`` is true; otherwise it is ignored and the task
    finishes normally.
    """

    def __init__(self, task_name: str, *, allow_cancel: bool = False) -> None:
        self.task_name = check_name("task_name", task_name)
        self.allow_cancel = bool(allow_cancel)

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        instance.enqueue_task(self.task_name, instance.parameters)
        return instance.continue_with(None)

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        result = event.result
        if result.ok:
            return instance.complete(result.value)
        return instance.fail(result.error or f"task {result.task_name!r} {result.status.value}")

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        if self.allow_cancel:
            return instance.fail("cancelled")
        return instance.continue_with(instance.payload)


def register_single_task_workflow(
    manager: Manager,
    workflow_name: str,
    executor: TaskExecutor | TaskFunction,
    *,
    allow_cancel: bool = False,
    workers: int = 1,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
) -> None:
    """Register ``workflow_name`` as a single-task workflow on ``manager``.

    The task executor is registered under the task name ``workflow_name`` with ``workers``,
    ``timeout`` and ``retry`` (a :class:`~cereal.RetryPolicy`), and the workflow executor is a
    :class:`SingleTaskWorkflowExecutor`. Call it before ``manager.start()``.
    """
    check_name("workflow_name", workflow_name)
    workflow = SingleTaskWorkflowExecutor(workflow_name, allow_cancel=allow_cancel)
    manager.register_task_executor(
        workflow_name, executor, workers=workers, timeout=timeout, retry=retry
    )
    manager.register_workflow_executor(workflow_name, workflow)
