"""The patterns end to end on PostgreSQL: single task, chain, parallel, and one on a schedule."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cereal import Manager, Task, WorkflowStatus
from cereal.errors import WorkflowInstanceNotFoundError
from cereal.patterns import (
    ChainState,
    ChainWorkflowExecutor,
    ParallelState,
    ParallelWorkflowExecutor,
    SingleTaskWorkflowExecutor,
    register_single_task_workflow,
)
from tests.helpers.schedules import schedule_soon
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]


class Squares:
    """Sums the squares of its parameters (a list), one ``square`` task per item."""

    def on_start(self, inst: Any, ev: Any) -> Any:
        if not inst.parameters:
            return inst.complete(0)
        for n in inst.parameters:
            inst.enqueue_task("square", n)
        return inst.continue_with(0)

    def on_task_complete(self, inst: Any, ev: Any) -> Any:
        if not ev.result.ok:
            return inst.fail(ev.result.error)
        total = inst.payload + ev.result.value
        if inst.total_completed_tasks == inst.total_enqueued_tasks:
            return inst.complete(total)
        return inst.continue_with(total)

    def on_cancel(self, inst: Any, ev: Any) -> Any:
        return inst.fail("stopped")


def square(task: Task) -> int:
    n = task.parameters
    if n < 0:
        raise ValueError(f"negative: {n}")
    return int(n * n)


def state(**fields: Any) -> dict[str, Any]:
    return {
        "payload": None,
        "result": None,
        "error": None,
        "enqueued_tasks": 0,
        "completed_tasks": 0,
        "finished": True,
    } | fields


# -- single task ----------------------------------------------------------------------------------


def test_single_task_workflow_completes_with_the_task_value(make_any_manager: MakeManager) -> None:
    manager = make_any_manager()
    register_single_task_workflow(manager, "square-one", square)
    manager.start()
    manager.enqueue_workflow("square-one", "a", 7)
    manager.enqueue_workflow("square-one", "b", -1)
    done = manager.await_workflow("square-one", "a", timeout=20)
    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, 49)
    failed = manager.await_workflow("square-one", "b", timeout=20)
    assert (failed.status, failed.error) == (WorkflowStatus.FAILED, "ValueError: negative: -1")


def test_single_task_workflow_honours_workers(make_any_manager: MakeManager) -> None:
    barrier = threading.Barrier(2, timeout=10)
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def paired(task: Task) -> str:
        with lock:
            running[0] += 1
            running[1] = max(running)
        try:
            barrier.wait()  # breaks (and fails the task) unless two run at once
            time.sleep(0.2)
        finally:
            with lock:
                running[0] -= 1
        return "ok"

    manager = make_any_manager()
    register_single_task_workflow(manager, "paired", paired, workers=2)
    manager.start()
    for i in range(4):
        manager.enqueue_workflow("paired", f"i{i}", i)
    results = [manager.await_workflow("paired", f"i{i}", timeout=30) for i in range(4)]
    assert [r.result for r in results] == ["ok"] * 4
    assert running[1] == 2


def test_single_task_workflow_honours_timeout(make_any_manager: MakeManager) -> None:
    def slow(task: Task) -> str:
        task.cancelled.wait(20)
        return "too late"

    manager = make_any_manager()
    register_single_task_workflow(manager, "slow", slow, timeout=0.5)
    manager.start()
    manager.enqueue_workflow("slow", "one")
    done = manager.await_workflow("slow", "one", timeout=20)
    assert done.status is WorkflowStatus.FAILED
    assert "timeout" in (done.error or "")


def test_single_task_workflow_cancel_is_ignored_unless_allowed(
    make_any_manager: MakeManager,
) -> None:
    started = threading.Event()
    release = threading.Event()
    cancels: list[str] = []

    class Recording(SingleTaskWorkflowExecutor):
        def on_cancel(self, inst: Any, ev: Any) -> Any:
            cancels.append(inst.instance_name)
            return super().on_cancel(inst, ev)

    def held(task: Task) -> str:
        started.set()
        wait_for(lambda: release.is_set() or task.cancelled.is_set(), timeout=20)
        return "finished"

    manager = make_any_manager()
    manager.register_task_executor("held", held)
    manager.register_workflow_executor("held", Recording("held"))
    register_single_task_workflow(manager, "stoppable", held, allow_cancel=True)
    manager.start()
    manager.enqueue_workflow("stoppable", "s")
    assert started.wait(10)
    manager.cancel_workflow("stoppable", "s")
    stopped = manager.await_workflow("stoppable", "s", timeout=20)
    assert (stopped.status, stopped.error) == (WorkflowStatus.FAILED, "cancelled")

    started.clear()
    manager.enqueue_workflow("held", "h")
    assert started.wait(10)
    manager.cancel_workflow("held", "h")
    wait_for(lambda: cancels == ["h"], what="the cancel to be handled")
    assert manager.get_workflow_instance("held", "h").is_running
    release.set()
    done = manager.await_workflow("held", "h", timeout=20)
    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, "finished")


# -- chain ----------------------------------------------------------------------------------------


def test_chain_runs_its_sub_workflows_in_order_and_completes_with_their_states(
    make_any_manager: MakeManager,
) -> None:
    manager = make_any_manager()
    manager.register_workflow_executor("chain", ChainWorkflowExecutor(Squares(), Squares()))
    manager.register_task_executor("square", square, workers=4)
    manager.start()
    manager.enqueue_workflow("chain", "c", [[1, 2, 3], [4]])
    done = manager.await_workflow("chain", "c", timeout=30)
    assert done.status is WorkflowStatus.COMPLETED
    assert done.result == {
        "cancelled": False,
        "workflows": [
            state(result=14, enqueued_tasks=3, completed_tasks=3),
            state(result=16, enqueued_tasks=1, completed_tasks=1),
        ],
    }
    read = ChainState.from_info(manager.get_workflow_instance("chain", "c"))
    assert not read.is_running and [w.result for w in read.workflows] == [14, 16]
    assert read.sub_workflow(1).parameters == [4]


def test_chain_stops_at_a_failure_in_the_middle(make_any_manager: MakeManager) -> None:
    manager = make_any_manager()
    manager.register_workflow_executor(
        "chain", ChainWorkflowExecutor(Squares(), Squares(), Squares())
    )
    manager.register_task_executor("square", square, workers=2)
    manager.start()
    manager.enqueue_workflow("chain", "c", [[1], [2, -3], [5]])
    done = manager.await_workflow("chain", "c", timeout=30)
    assert done.status is WorkflowStatus.COMPLETED  # as upstream: the chain itself completes
    assert done.result["cancelled"] is False
    first, second = done.result["workflows"]
    assert first == state(result=1, enqueued_tasks=1, completed_tasks=1)
    assert second["finished"] and second["error"] == "ValueError: negative: -3"
    assert second["enqueued_tasks"] == 2 and second["completed_tasks"] >= 1


def test_chain_cancel_goes_to_the_current_sub_workflow_and_stops_the_chain(
    make_any_manager: MakeManager,
) -> None:
    started = threading.Event()
    stopped = threading.Event()

    def block(task: Task) -> int:
        started.set()
        if task.cancelled.wait(20):
            stopped.set()
        return 0

    manager = make_any_manager()
    manager.register_workflow_executor("chain", ChainWorkflowExecutor(Squares(), Squares()))
    manager.register_task_executor("square", block)
    manager.start()
    manager.enqueue_workflow("chain", "c", [[1], [2]])
    assert started.wait(10)
    live = ChainState.from_info(manager.get_workflow_instance("chain", "c"))
    assert live.is_running and len(live.workflows) == 1 and not live.workflows[0].finished
    manager.cancel_workflow("chain", "c")
    done = manager.await_workflow("chain", "c", timeout=20)
    assert done.status is WorkflowStatus.COMPLETED
    assert done.result == {
        "cancelled": True,
        "workflows": [state(error="stopped", enqueued_tasks=1)],
    }
    assert stopped.wait(10)  # the chain finished: its running task is told to stop


# -- parallel -------------------------------------------------------------------------------------


def test_parallel_completes_with_mixed_outcomes(make_any_manager: MakeManager) -> None:
    manager = make_any_manager()
    manager.register_workflow_executor(
        "fan", ParallelWorkflowExecutor({"good": Squares(), "bad": Squares(), "none": Squares()})
    )
    manager.register_task_executor("square", square, workers=3)
    manager.start()
    manager.enqueue_workflow("fan", "f", {"good": [1, 2], "bad": [3, -4], "none": []})
    done = manager.await_workflow("fan", "f", timeout=30)
    assert done.status is WorkflowStatus.COMPLETED
    workflows = done.result["workflows"]
    assert sorted(workflows) == ["bad", "good", "none"]
    assert workflows["good"] == state(result=5, enqueued_tasks=2, completed_tasks=2)
    assert workflows["bad"]["error"] == "ValueError: negative: -4"
    assert workflows["none"] == state(result=0)
    read = ParallelState.from_info(manager.get_workflow_instance("fan", "f"))
    assert read.sub_workflow("good").completed and read.sub_workflow("bad").failed


def test_parallel_with_an_unknown_key_fails_naming_it(make_any_manager: MakeManager) -> None:
    manager = make_any_manager()
    manager.register_workflow_executor("fan", ParallelWorkflowExecutor({"a": Squares()}))
    manager.start()
    manager.enqueue_workflow("fan", "f", {"a": [], "zzz": []})
    done = manager.await_workflow("fan", "f", timeout=20)
    assert done.status is WorkflowStatus.FAILED and "'zzz'" in (done.error or "")
    assert ParallelState.from_info(done).error == done.error


def test_parallel_cancel_goes_to_every_unfinished_sub_workflow(
    make_any_manager: MakeManager,
) -> None:
    class Stubborn(Squares):
        def on_cancel(self, inst: Any, ev: Any) -> Any:
            return inst.continue_with(inst.payload)  # finishes its work anyway

    started = threading.Semaphore(0)
    release = threading.Event()

    def held(task: Task) -> int:
        started.release()
        if task.parameters == 2:
            release.wait(20)
        else:
            task.cancelled.wait(20)
        return int(task.parameters)

    manager = make_any_manager()
    manager.register_workflow_executor(
        "fan", ParallelWorkflowExecutor({"quits": Squares(), "stays": Stubborn()})
    )
    manager.register_task_executor("square", held, workers=2)
    manager.start()
    manager.enqueue_workflow("fan", "f", {"quits": [1], "stays": [2]})
    assert started.acquire(timeout=10) and started.acquire(timeout=10)
    manager.cancel_workflow("fan", "f")
    wait_for(
        lambda: (
            ParallelState.from_info(manager.get_workflow_instance("fan", "f"))
            .sub_workflow("quits")
            .finished
        ),
        what="the cancel to reach the sub-workflows",
    )
    assert manager.get_workflow_instance("fan", "f").is_running
    release.set()
    done = manager.await_workflow("fan", "f", timeout=20)
    assert done.result["workflows"]["quits"] == state(error="stopped", enqueued_tasks=1)
    assert done.result["workflows"]["stays"] == state(result=2, enqueued_tasks=1, completed_tasks=1)


# -- schedules ------------------------------------------------------------------------------------


def test_a_chain_runs_from_a_schedule(make_any_manager: MakeManager) -> None:
    manager = make_any_manager()
    manager.register_workflow_executor("nightly", ChainWorkflowExecutor(Squares(), Squares()))
    manager.register_task_executor("square", square, workers=2)
    manager.start()
    schedule_soon(manager, "nightly", "run", [[3], [1, 1]], rule="FREQ=DAILY;COUNT=1")

    def enqueued() -> bool:
        try:
            manager.get_workflow_instance("nightly", "run")
        except WorkflowInstanceNotFoundError:
            return False
        return True

    wait_for(enqueued, timeout=20, what="the schedule to enqueue the chain")
    done = manager.await_workflow("nightly", "run", timeout=30)
    assert done.status is WorkflowStatus.COMPLETED
    assert [w["result"] for w in done.result["workflows"]] == [9, 2]


# -- routing --------------------------------------------------------------------------------------


def test_a_running_chain_payload_has_the_shape_of_its_result(make_any_manager: MakeManager) -> None:
    release = threading.Event()

    def held(task: Task) -> int:
        release.wait(20)
        return int(task.parameters * task.parameters)

    manager = make_any_manager()
    manager.register_workflow_executor("chain", ChainWorkflowExecutor(Squares(), Squares()))
    manager.register_task_executor("square", held, workers=2)
    manager.start()
    manager.enqueue_workflow("chain", "c", [[1, 2], [3]])
    wait_for(
        lambda: manager.get_workflow_instance("chain", "c").payload is not None,
        what="the chain to start",
    )
    live = manager.get_workflow_instance("chain", "c")
    assert live.payload == {
        "cancelled": False,
        "workflows": [state(payload=0, enqueued_tasks=2, finished=False)],
    }
    release.set()
    done = manager.await_workflow("chain", "c", timeout=20)
    assert done.result == {
        "cancelled": False,
        "workflows": [
            state(result=5, enqueued_tasks=2, completed_tasks=2),
            state(result=9, enqueued_tasks=1, completed_tasks=1),
        ],
    }


def test_parallel_branches_with_identical_tasks_each_get_their_own_result(
    make_any_manager: MakeManager,
) -> None:
    # Both branches enqueue "square" with the same parameters; the task returns a different
    # value each time it runs. Each branch must get exactly one of them.
    lock = threading.Lock()
    runs: list[int] = []

    def numbered(task: Task) -> int:
        with lock:
            runs.append(len(runs) + 1)
            return runs[-1]

    manager = make_any_manager()
    manager.register_workflow_executor(
        "par", ParallelWorkflowExecutor({"a": Squares(), "b": Squares()})
    )
    manager.register_task_executor("square", numbered)
    manager.start()
    manager.enqueue_workflow("par", "p", {"a": [7], "b": [7]})
    done = manager.await_workflow("par", "p", timeout=20)
    assert done.status is WorkflowStatus.COMPLETED
    results = sorted(s["result"] for s in done.result["workflows"].values())
    assert results == [1, 2]
    assert set(done.result) == {"workflows"}
