"""Dispatcher scenarios shared by the PostgreSQL and the in-memory tests.

Each ``check_*`` function takes ``make(**options)``, a factory of managers on one shared
storage (several calls: several processes on one database), and asserts what an operator
would see. The factories stop their managers after the test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from cereal import Manager, WorkflowInstance, WorkflowStatus
from cereal.dispatch import HANDOVER_SPARES

WF = "wf"
AWAIT = 15.0
MakeManager = Callable[..., Manager]


class CustomInterrupt(BaseException):
    """A BaseException subclass of the application's own."""


BASE_EXCEPTIONS: list[type[BaseException]] = [
    asyncio.CancelledError,
    SystemExit,
    KeyboardInterrupt,
    GeneratorExit,
    CustomInterrupt,
]


def handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("cereal-workflow-"))


class RaisesOnBad:
    """``on_start`` raises ``exc_type("boom")`` for the parameters ``"bad"``, else completes."""

    def __init__(self, exc_type: type[BaseException]) -> None:
        self.exc_type = exc_type

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        if inst.parameters == "bad":
            raise self.exc_type("boom")
        return inst.complete(inst.parameters)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("no tasks here")

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def check_base_exception_fails_only_its_instance(
    make: MakeManager, exc_type: type[BaseException]
) -> None:
    before = handler_threads()
    managers = [make(workflow_workers=4), make(workflow_workers=4)]
    for m in managers:
        m.register_workflow_executor(WF, RaisesOnBad(exc_type))
        m.start()
    first = managers[0]
    for i in range(4):
        first.enqueue_workflow(WF, f"bad-{i}", "bad")
    for i in range(8):
        first.enqueue_workflow(WF, f"good-{i}", i)
    for i in range(4):
        info = first.await_workflow(WF, f"bad-{i}", timeout=AWAIT)
        assert info.status is WorkflowStatus.FAILED, info
        assert info.error == f"{exc_type.__name__}: boom", info
    for i in range(8):
        info = first.await_workflow(WF, f"good-{i}", timeout=AWAIT)
        assert info.status is WorkflowStatus.COMPLETED and info.result == i, info
    threads = 2 * (4 + HANDOVER_SPARES)  # each manager's handlers and spares
    assert handler_threads() == before + threads, "a workflow handler thread died"
    for i in range(4):  # and they keep working afterwards
        first.enqueue_workflow(WF, f"after-{i}", i)
    for i in range(4):
        assert first.await_workflow(WF, f"after-{i}", timeout=AWAIT).result == i


class HangsOnStart:
    """``on_start`` signals ``entered`` and blocks until ``release``; then decides ``decision``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        self.entered.set()
        self.release.wait(30)
        try:
            inst.enqueue_task("from-the-hung-manager", None)
            return inst.continue_with("from the hung manager")
        finally:
            self.returned.set()

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("no tasks expected")

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


class CompletesOnStart(RaisesOnBad):
    def __init__(self) -> None:
        super().__init__(RuntimeError)


def check_stop_abandons_a_hung_callback(make: MakeManager, **first_options: Any) -> None:
    hung = HangsOnStart()
    first = make(**first_options)
    first.register_workflow_executor(WF, hung)
    first.start()
    first.enqueue_workflow(WF, "x", "from the other manager")
    assert hung.entered.wait(AWAIT), "on_start never ran"
    second = make()
    second.register_workflow_executor(WF, CompletesOnStart())
    second.start()
    began = time.monotonic()
    first.stop(timeout=1)
    stopped = time.monotonic()
    assert stopped - began < 2.5, f"stop(timeout=1) took {stopped - began:.1f} s"
    info = second.await_workflow(WF, "x", timeout=AWAIT)
    assert time.monotonic() - stopped < 3.0, "the event was not re-delivered promptly"
    assert info.status is WorkflowStatus.COMPLETED and info.result == "from the other manager"
    hung.release.set()
    assert hung.returned.wait(AWAIT)
    time.sleep(0.5)  # what the stopped manager's handler would now commit, it would by now
    info = second.get_workflow_instance(WF, "x")
    assert info.status is WorkflowStatus.COMPLETED and info.result == "from the other manager"


class OneSlow:
    """``on_start`` of the instance ``"slow"`` blocks until ``release``; others complete."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        if inst.parameters == "slow":
            self.entered.set()
            self.release.wait(30)
        return inst.complete(inst.parameters)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("no tasks expected")

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def check_slow_callback_does_not_hold_up_batch_mates(make: MakeManager) -> None:
    flow = OneSlow()
    m = make(workflow_workers=4)
    m.register_workflow_executor(WF, flow)
    names = [f"quick-{i:03}" for i in range(200)]
    for n, name in enumerate(names):
        if n == 60:
            m.enqueue_workflow(WF, "slow", "slow")
        m.enqueue_workflow(WF, name, name)
    m.start()
    try:
        assert flow.entered.wait(AWAIT), "the slow on_start never ran"

        deadline = time.monotonic() + 10
        for name in names:
            left = max(0.01, deadline - time.monotonic())
            info = m.await_workflow(WF, name, timeout=left)
            assert info.status is WorkflowStatus.COMPLETED, info
        assert m.get_workflow_instance(WF, "slow").status is not WorkflowStatus.COMPLETED
    finally:
        flow.release.set()
    assert m.await_workflow(WF, "slow", timeout=AWAIT).result == "slow"


class HeldWhileCancelled:
    """The callback named by ``hold_in`` ("start": ``on_start``; "task": ``on_task_complete``
    of the task ``on_start`` enqueues) blocks until ``release`` and continues; ``on_cancel``
    fails the run."""

    def __init__(self, hold_in: str = "start") -> None:
        self.hold_in = hold_in
        self.release = threading.Event()
        self.entered = threading.Event()

    def _hold(self, inst: WorkflowInstance) -> Any:
        self.entered.set()
        self.release.wait(30)
        return inst.continue_with("held")

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        if self.hold_in == "start":
            return self._hold(inst)
        inst.enqueue_task("t", None)
        return inst.continue_with("started")

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        if self.hold_in == "task":
            return self._hold(inst)
        return inst.fail("no tasks expected")

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def check_an_event_written_while_its_instance_is_held_runs_after_the_commit(
    make: MakeManager, hold_in: str = "start"
) -> None:
    """The cancel's wakeup reaches an idle handler, whose claim skips the held instance; the
    handler holding it must still take the cancel once it commits, long before a poll. With
    ``hold_in="task"`` the instance is held by the handler that recorded its task's result."""
    flow = HeldWhileCancelled(hold_in)
    m = make(workflow_workers=4, workflow_poll_interval=60.0)
    m.register_workflow_executor(WF, flow)
    m.register_task_executor("t", lambda task: None)
    m.start()
    m.enqueue_workflow(WF, "held")
    assert flow.entered.wait(AWAIT), f"the {hold_in} callback never ran"
    m.cancel_workflow(WF, "held")
    time.sleep(0.5)  # the wakeups of the cancel are spent on claims that find nothing
    flow.release.set()
    info = m.await_workflow(WF, "held", timeout=10)
    assert (info.status, info.error) == (WorkflowStatus.FAILED, "cancelled"), info
