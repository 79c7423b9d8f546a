"""Helpers shared by the integration tests: a recording workflow executor and polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cereal import Decision, WorkflowInstance

Handler = Callable[[WorkflowInstance, Any], Any]


class Flow:
    """A workflow executor built from per-test handlers; it records every callback."""

    def __init__(
        self,
        on_start: Handler | None = None,
        on_task: Handler | None = None,
        on_cancel: Handler | None = None,
    ) -> None:
        self._start = on_start or (lambda inst, ev: inst.continue_with())
        self._task = on_task or (lambda inst, ev: inst.continue_with(inst.payload))
        self._cancel = on_cancel or (lambda inst, ev: inst.fail("cancelled"))
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str, Any]] = []

    def _record(self, callback: str, inst: WorkflowInstance, detail: Any = None) -> None:
        with self._lock:
            self.calls.append((callback, inst.instance_name, detail))

    def names(self, instance_name: str | None = None) -> list[str]:
        with self._lock:
            return [c for c, i, _ in self.calls if instance_name in (None, i)]

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        self._record("on_start", inst)
        return self._start(inst, event)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        self._record("on_task_complete", inst, event.result)
        return self._task(inst, event)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        self._record("on_cancel", inst, inst.payload)
        return self._cancel(inst, event)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)
