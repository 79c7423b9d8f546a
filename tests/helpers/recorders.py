"""Recording executors: a workflow executor built from per-test handlers, and a task executor,
both of which remember every call so that a test can assert on what the manager delivered."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cereal import Decision, Task, WorkflowInstance
from tests.helpers.waiting import wait_for

Handler = Callable[[WorkflowInstance, Any], Any]


@dataclass(frozen=True)
class Start:
    """One ``on_start`` delivery."""

    instance_name: str
    parameters: Any
    enqueued_at: datetime  # the database time of the transaction that enqueued the run
    seen_at: datetime  # time of the call, on the flow's clock (default this machine's)


class Flow:
    """A workflow executor built from per-test handlers; it records every callback.

    Without handlers it continues on start, continues with its payload on every task result
    and fails on cancel. ``calls`` holds ``(callback, instance name, detail)`` for every
    callback; ``starts()`` the start deliveries, a re-delivered start event counted once.
    ``clock`` gives the time a start is seen at (a test on a controlled clock passes its own).
    """

    def __init__(
        self,
        on_start: Handler | None = None,
        on_task: Handler | None = None,
        on_cancel: Handler | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._start = on_start or (lambda inst, ev: inst.continue_with())
        self._task = on_task or (lambda inst, ev: inst.continue_with(inst.payload))
        self._cancel = on_cancel or (lambda inst, ev: inst.fail("cancelled"))
        self._clock = clock
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str, Any]] = []
        self._starts: dict[tuple[str, datetime], Start] = {}

    def _record(self, callback: str, inst: WorkflowInstance, detail: Any = None) -> None:
        with self._lock:
            self.calls.append((callback, inst.instance_name, detail))

    def names(self, instance_name: str | None = None) -> list[str]:
        """The callbacks delivered so far (of ``instance_name`` only, if given), in order."""
        with self._lock:
            return [c for c, i, _ in self.calls if instance_name in (None, i)]

    def starts(self, instance_name: str | None = None) -> list[Start]:
        """The runs started so far (of ``instance_name`` only, if given), oldest enqueue first."""
        with self._lock:
            found = [s for s in self._starts.values() if instance_name in (None, s.instance_name)]
        return sorted(found, key=lambda s: s.enqueued_at)

    def wait_for_starts(
        self, count: int, timeout: float, instance_name: str | None = None
    ) -> list[Start]:
        """Wait until at least ``count`` runs have started; return them (see :meth:`starts`)."""

        def enough() -> list[Start]:
            starts = self.starts(instance_name)
            return starts if len(starts) >= count else []

        return wait_for(enough, timeout, f"{count} run(s) of {instance_name or 'any instance'}")

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        start = Start(inst.instance_name, inst.parameters, event.enqueued_at, self._clock())
        with self._lock:
            self._starts.setdefault((start.instance_name, start.enqueued_at), start)
        self._record("on_start", inst)
        return self._start(inst, event)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        self._record("on_task_complete", inst, event.result)
        return self._task(inst, event)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        self._record("on_cancel", inst, inst.payload)
        return self._cancel(inst, event)


def complete(inst: WorkflowInstance, event: Any) -> Decision:
    """A handler that completes the instance with no result."""
    return inst.complete()


class TaskLog:
    """A task executor that records the parameters of every run and returns ``result(task)``
    (by default the task's parameters)."""

    def __init__(self, result: Callable[[Task], Any] = lambda task: task.parameters) -> None:
        self._result = result
        self._lock = threading.Lock()
        self.runs: list[Any] = []

    def __call__(self, task: Task) -> Any:
        with self._lock:
            self.runs.append(task.parameters)
        return self._result(task)


class Gate:
    """A task function that blocks until opened, tracking how many runs are inside at once
    and the order they came in. ``gate(task)`` passes ``task.parameters`` through;
    ``gate.call(value)`` is the same run as a call of no arguments."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.ran: list[Any] = []

    def __call__(self, task: Task) -> Any:
        return self._through(task.parameters)

    def call(self, value: Any) -> Callable[[], Any]:
        return lambda: self._through(value)

    def _through(self, value: Any) -> Any:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.ran.append(value)
        try:
            self.open.wait(10)
            return value
        finally:
            with self._lock:
                self.inside -= 1
