"""SingleTaskWorkflowExecutor, one callback at a time."""

from __future__ import annotations

from typing import Any

import pytest

from cereal import RetryPolicy, TaskStatus
from cereal.errors import InvalidNameError
from cereal.patterns import SingleTaskWorkflowExecutor, register_single_task_workflow
from cereal.testing import cancel_event, run_callback, start_event, task_complete_event


@pytest.mark.parametrize("parameters", [None, {"a": [1, 2]}, [1, "x"], 3])
def test_single_task_enqueues_one_task_with_the_workflow_parameters(parameters: Any) -> None:
    out = run_callback(SingleTaskWorkflowExecutor("work"), start_event(), parameters=parameters)
    assert out.decision == "continue"
    assert out.tasks == [("work", parameters, None)]
    assert out.payload is None


def test_single_task_completes_with_the_task_value() -> None:
    out = run_callback(
        SingleTaskWorkflowExecutor("work"),
        task_complete_event("work", {"done": 1}),
        enqueued_tasks=1,
    )
    assert (out.decision, out.result) == ("complete", {"done": 1})


def test_single_task_completes_with_no_result_when_the_task_returns_nothing() -> None:
    out = run_callback(
        SingleTaskWorkflowExecutor("work"), task_complete_event("work"), enqueued_tasks=1
    )
    assert (out.decision, out.result) == ("complete", None)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (TaskStatus.FAILED, "ValueError: bad"),
        (TaskStatus.LOST, "task lost: no heartbeat for 30s"),
        (TaskStatus.UNUSABLE_RESULT, "cannot decode"),
    ],
)
def test_single_task_fails_with_the_task_error(status: TaskStatus, error: str) -> None:
    out = run_callback(
        SingleTaskWorkflowExecutor("work"),
        task_complete_event("work", status=status, error=error),
        enqueued_tasks=1,
    )
    assert (out.decision, out.error) == ("fail", error)


def test_single_task_ignores_a_cancel_unless_allowed() -> None:
    out = run_callback(SingleTaskWorkflowExecutor("work"), cancel_event(), enqueued_tasks=1)
    assert out.decision == "continue" and out.tasks == []


def test_single_task_fails_with_cancelled_when_cancel_is_allowed() -> None:
    executor = SingleTaskWorkflowExecutor("work", allow_cancel=True)
    out = run_callback(executor, cancel_event(), enqueued_tasks=1)
    assert (out.decision, out.error) == ("fail", "cancelled")


def test_single_task_rejects_a_bad_task_name() -> None:
    with pytest.raises(InvalidNameError, match="task_name"):
        SingleTaskWorkflowExecutor("")


class RecordingManager:
    """Records registrations."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, Any, dict[str, Any]]] = []
        self.workflows: list[tuple[str, Any]] = []

    def register_task_executor(self, name: str, executor: Any, **options: Any) -> None:
        self.tasks.append((name, executor, options))

    def register_workflow_executor(self, name: str, executor: Any) -> None:
        self.workflows.append((name, executor))


def test_register_single_task_workflow_passes_every_option() -> None:
    manager = RecordingManager()
    policy = RetryPolicy(max_attempts=5)
    register_single_task_workflow(
        manager,  # type: ignore[arg-type]
        "resize",
        print,
        allow_cancel=True,
        workers=3,
        timeout=2.5,
        retry=policy,
    )
    assert manager.tasks == [("resize", print, {"workers": 3, "timeout": 2.5, "retry": policy})]
    [(name, workflow)] = manager.workflows
    assert name == "resize" and workflow.task_name == "resize" and workflow.allow_cancel


def test_register_single_task_workflow_defaults_to_no_retries() -> None:
    manager = RecordingManager()
    register_single_task_workflow(manager, "resize", print)  # type: ignore[arg-type]
    assert manager.tasks == [("resize", print, {"workers": 1, "timeout": None, "retry": None})]
    assert manager.workflows[0][1].allow_cancel is False
