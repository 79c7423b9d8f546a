"""A scripted workflow executor for unit tests of patterns and of the testing kit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cereal import Decision, WorkflowInstance

Handler = Callable[[WorkflowInstance, Any], Decision]


def _unexpected(name: str) -> Handler:
    def handler(instance: WorkflowInstance, event: Any) -> Decision:
        raise AssertionError(f"{name} should not have been called")

    return handler


class Sub:
    """A workflow executor built from per-test handlers. A handler not given fails the test
    if it is called. Every call is recorded as ``(callback, parameters, payload, enqueued,
    completed)``."""

    def __init__(
        self,
        on_start: Handler | None = None,
        on_task: Handler | None = None,
        on_cancel: Handler | None = None,
    ) -> None:
        self._start = on_start or _unexpected("on_start")
        self._task = on_task or _unexpected("on_task_complete")
        self._cancel = on_cancel or _unexpected("on_cancel")
        self.calls: list[tuple[str, Any, Any, int, int]] = []

    def _record(self, name: str, inst: WorkflowInstance) -> None:
        self.calls.append(
            (
                name,
                inst.parameters,
                inst.payload,
                inst.total_enqueued_tasks,
                inst.total_completed_tasks,
            )
        )

    def on_start(self, instance: WorkflowInstance, event: Any) -> Decision:
        self._record("on_start", instance)
        return self._start(instance, event)

    def on_task_complete(self, instance: WorkflowInstance, event: Any) -> Decision:
        self._record("on_task_complete", instance)
        return self._task(instance, event)

    def on_cancel(self, instance: WorkflowInstance, event: Any) -> Decision:
        self._record("on_cancel", instance)
        return self._cancel(instance, event)


class SignalSub(Sub):
    """A :class:`Sub` that also handles signals."""

    def __init__(self, on_signal: Handler, **handlers: Any) -> None:
        super().__init__(**handlers)
        self._signal = on_signal

    def on_signal(self, instance: WorkflowInstance, event: Any) -> Decision:
        self._record("on_signal", instance)
        return self._signal(instance, event)


def state(**fields: Any) -> dict[str, Any]:
    """A sub-workflow state with defaults for the fields not given."""
    base: dict[str, Any] = {
        "payload": None,
        "result": None,
        "error": None,
        "enqueued_tasks": 0,
        "completed_tasks": 0,
        "finished": False,
    }
    return base | fields
