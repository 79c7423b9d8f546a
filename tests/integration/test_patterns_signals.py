"""Signals through the patterns on PostgreSQL: a chain hands each one to its current
sub-workflow, a parallel to every sub-workflow still running."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cereal import Manager, SignalEvent, WorkflowStatus
from cereal.patterns import ChainWorkflowExecutor, ParallelState, ParallelWorkflowExecutor
from tests.helpers.logs import capture_logs
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]


class Approval:
    """Waits for signals: keeps the name of each it gets, and completes with those names on
    a signal whose payload is its own ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_start(self, inst: Any, ev: Any) -> Any:
        return inst.continue_with([])

    def on_task_complete(self, inst: Any, ev: Any) -> Any:
        return inst.continue_with(inst.payload)

    def on_cancel(self, inst: Any, ev: Any) -> Any:
        return inst.fail("stopped")

    def on_signal(self, inst: Any, ev: SignalEvent) -> Any:
        names = [*inst.payload, ev.name]
        return inst.complete(names) if ev.payload == self.key else inst.continue_with(names)


class Deaf(Approval):
    """An :class:`Approval` without ``on_signal``: it only ever stops on cancel."""

    on_signal = None  # type: ignore[assignment]


def sub_results(info: Any) -> Any:
    workflows = info.result["workflows"]
    if isinstance(workflows, dict):
        return {k: (w["finished"], w["result"], w["error"]) for k, w in workflows.items()}
    return [(w["finished"], w["result"], w["error"]) for w in workflows]


def test_a_chain_hands_each_signal_to_its_current_sub_workflow(make_manager: MakeManager) -> None:
    manager = make_manager()
    manager.register_workflow_executor(
        "chain", ChainWorkflowExecutor(Approval("first"), Approval("second"))
    )
    manager.start()
    manager.enqueue_workflow("chain", "c", [None, None])
    manager.signal_workflow("chain", "c", "note")
    manager.signal_workflow("chain", "c", "approve", "first")  # the first completes here
    manager.signal_workflow("chain", "c", "approve", "second")
    done = manager.await_workflow("chain", "c", timeout=20)
    assert done.status is WorkflowStatus.COMPLETED
    assert sub_results(done) == [
        (True, ["note", "approve"], None),
        (True, ["approve"], None),
    ]


def test_a_chain_whose_current_sub_workflow_has_no_on_signal_drops_the_signal_and_warns(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    manager.register_workflow_executor("chain", ChainWorkflowExecutor(Deaf("x"), Approval("y")))
    manager.start()
    manager.enqueue_workflow("chain", "c", [None, None])
    with capture_logs() as logs:
        manager.signal_workflow("chain", "c", "approve", "x")
        wait_for(lambda: [e for e in logs if e.get("signal") == "approve"], what="a warning")
    info = wait_for(  # the warning is logged before the step commits
        lambda: (i := manager.get_workflow_instance("chain", "c")).payload and i,
        what="the chain's state",
    )
    assert info.is_running
    assert info.payload["workflows"][0]["payload"] == []  # the sub-workflow's state is kept
    manager.cancel_workflow("chain", "c")
    done = manager.await_workflow("chain", "c", timeout=20)
    assert sub_results(done) == [(True, None, "stopped")]


def test_a_parallel_sends_each_signal_to_every_unfinished_sub_workflow(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    manager.register_workflow_executor(
        "fan", ParallelWorkflowExecutor({"a": Approval("a"), "b": Approval("b")})
    )
    manager.start()
    manager.enqueue_workflow("fan", "f", {"a": None, "b": None})
    manager.signal_workflow("fan", "f", "approve", "a")  # both get it; a completes

    def a_finished() -> bool:
        subs = ParallelState.from_info(manager.get_workflow_instance("fan", "f")).workflows
        return "a" in subs and subs["a"].finished

    wait_for(a_finished, what="sub-workflow a finished")
    manager.signal_workflow("fan", "f", "poke")  # b only: a has finished
    manager.signal_workflow("fan", "f", "approve", "b")
    done = manager.await_workflow("fan", "f", timeout=20)
    assert done.status is WorkflowStatus.COMPLETED
    assert sub_results(done) == {
        "a": (True, ["approve"], None),
        "b": (True, ["approve", "poke", "approve"], None),
    }
