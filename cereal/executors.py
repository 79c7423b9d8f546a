"""The two kinds of user code cereal runs: workflow executors and task executors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from cereal.errors import InvalidExecutorError
from cereal.types import CancelEvent, StartEvent, Task, TaskCompleteEvent
from cereal.workflow import Decision, WorkflowInstance

__all__ = ["TaskExecutor", "TaskFunction", "WorkflowExecutor", "task_callable"]


@runtime_checkable
class WorkflowExecutor(Protocol):
    """Decides what a workflow instance does next, one event at a time.

    Callbacks may run more than once for the same event (they are re-delivered if their
    transaction did not commit), so they must be deterministic: put side effects in tasks.
    """

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision: ...

    def on_task_complete(
        self, instance: WorkflowInstance, event: TaskCompleteEvent
    ) -> Decision: ...

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision: ...


@runtime_checkable
class TaskExecutor(Protocol):
    """Runs one task. ``run`` may be a plain or an ``async def`` method.

    The return value (JSON) is the task's result; an exception fails the task.
    """

    def run(self, task: Task) -> Any: ...


TaskFunction = Callable[[Task], Any]


def task_callable(executor: TaskExecutor | TaskFunction) -> TaskFunction:
    """Return the callable that runs a task for ``executor`` (an object or a function)."""
    run = getattr(executor, "run", None)
    if callable(run):
        return run  # type: ignore[no-any-return]
    if callable(executor):
        return executor
    raise InvalidExecutorError(
        f"task executor must have a run(task) method or be callable: {executor!r}"
    )
