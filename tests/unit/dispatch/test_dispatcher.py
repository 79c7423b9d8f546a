"""The workflow event dispatcher on the in-memory driver: order, concurrency, batching,
refused decisions and wakeups."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from cereal import Decision, WorkflowInstance, WorkflowStatus, dispatch
from cereal.dispatch import ResultHandover, WorkflowEventDispatcher
from cereal.driver import TaskOutcome
from cereal.errors import TransientDatabaseError
from cereal.executors import WorkflowExecutor
from cereal.testing import MemoryDriver
from cereal.testing.memory import MemoryEventBatch
from cereal.types import WorkflowInstanceInfo
from tests.helpers.memory import queue_tasks
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

WF = "wf"


class ObservedDriver(MemoryDriver):
    """A memory driver that records the size of every event batch it hands out, and can
    fail the next few claims as a lost connection would."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed: list[int] = []
        self.claims = 0
        """Every claim, empty ones included."""
        self.fail_claims = 0

    @contextmanager
    def claim_events(
        self, workflow_names: Sequence[str], limit: int, events_per_instance: int
    ) -> Iterator[MemoryEventBatch]:
        self.claims += 1
        if self.fail_claims:
            self.fail_claims -= 1
            raise TransientDatabaseError("connection lost")
        with super().claim_events(workflow_names, limit, events_per_instance) as batch:
            if batch.instances:
                self.claimed.append(len(batch.instances))
            yield batch


class Finished:
    """The ``on_finished`` callback: remembers every finished run."""

    def __init__(self) -> None:
        self.runs: list[WorkflowInstanceInfo] = []

    def __call__(self, runs: list[WorkflowInstanceInfo]) -> None:
        self.runs.extend(runs)

    def names(self) -> list[str]:
        return sorted(r.instance_name for r in self.runs)


@pytest.fixture
def driver() -> ObservedDriver:
    return ObservedDriver()


@pytest.fixture
def finished() -> Finished:
    return Finished()


@pytest.fixture
def start_dispatcher(
    driver: ObservedDriver, finished: Finished
) -> Iterator[Callable[..., WorkflowEventDispatcher]]:
    started: list[WorkflowEventDispatcher] = []

    def start(
        executor: WorkflowExecutor, *, workers: int = 1, poll_interval: float = 0.05, **kw: Any
    ) -> WorkflowEventDispatcher:
        dispatcher = WorkflowEventDispatcher(
            driver,
            {WF: executor},
            workers=workers,
            poll_interval=poll_interval,
            on_finished=finished,
            on_tasks_enqueued=lambda names: None,
            **kw,
        )
        dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        dispatcher.stop(5)


def test_events_of_one_instance_are_delivered_in_order_one_at_a_time(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    inside = threading.Semaphore(1)
    overlapped: list[int] = []
    values: list[int] = []

    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        if not inside.acquire(blocking=False):
            overlapped.append(ev.result.value)
        try:
            time.sleep(0.01)
            values.append(ev.result.value)
            return inst.continue_with() if len(values) < 5 else inst.complete(values)
        finally:
            inside.release()

    queue_tasks(driver, "t", list(range(5)), workflow_name=WF, instance_name="a")
    claimed, _ = driver.claim_tasks({"t": 5}, "someone")
    for task in sorted(claimed, key=lambda t: t.parameters):  # results land in this order
        driver.complete_tasks(
            [TaskOutcome(task.id, WF, "success", result_json=str(task.parameters))], "someone"
        )
    start_dispatcher(Flow(on_task=on_task), workers=4, events_per_instance=2)
    wait_for(lambda: finished.names() == ["a"], what="the instance to finish")
    assert overlapped == []
    assert finished.runs[0].result == [0, 1, 2, 3, 4]


def test_different_instances_are_handled_at_the_same_time(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    together = threading.Barrier(3, timeout=10)

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        together.wait()  # breaks (and fails the instances) unless three run at once
        return inst.complete()

    for name in "abc":
        driver.enqueue_workflow(WF, name, None)
    start_dispatcher(Flow(on_start=on_start), workers=3)
    wait_for(lambda: finished.names() == ["a", "b", "c"], what="three instances")
    assert {r.status for r in finished.runs} == {WorkflowStatus.COMPLETED}


def test_an_instance_handled_quickly_does_not_bring_in_another_handler(
    driver: ObservedDriver,
    finished: Finished,
    start_dispatcher: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At a low rate every claim of one comes back full. A second handler brought in at once
    # would only compete with the first one's commit, with one more claim per instance.
    monkeypatch.setattr(dispatch, "SPREAD_DELAY", 1.0)  # "quickly", even on a loaded machine
    dispatcher = start_dispatcher(
        Flow(on_start=lambda inst, ev: inst.complete()), workers=4, poll_interval=60
    )
    wait_for(lambda: driver.claims == 1, what="the claim made at start")
    for n in range(1, 6):
        driver.enqueue_workflow(WF, f"i{n}", None)
        dispatcher.wake()
        # One claim takes the instance, the next finds nothing and the handler goes idle.
        wait_for(lambda n=n: driver.claims == 1 + 2 * n, what="the claims of one instance")
        time.sleep(0.05)
        assert driver.claims == 1 + 2 * n
    assert len(finished.runs) == 5


def test_an_instance_whose_callback_runs_long_brings_in_another_handler(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    b_done = threading.Event()

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.instance_name == "a" and not b_done.wait(timeout=10):
            return inst.fail("b waited for a")
        if inst.instance_name == "b":
            b_done.set()
        return inst.complete()

    driver.enqueue_workflow(WF, "a", None)
    driver.enqueue_workflow(WF, "b", None)
    start_dispatcher(Flow(on_start=on_start), workers=2, poll_interval=60)
    wait_for(lambda: finished.names() == ["a", "b"], what="both instances")
    assert {r.status for r in finished.runs} == {WorkflowStatus.COMPLETED}
    assert driver.claimed[:2] == [1, 1]


@pytest.fixture
def no_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback budget no callback overruns. On a busy machine a trivial callback can be
    descheduled past the real one, and its batch is then split and the rest claimed again:
    the claim sizes some tests count would change."""
    monkeypatch.setattr(dispatch, "CALLBACK_BUDGET", 60.0)


@pytest.mark.usefixtures("no_splits")
def test_a_backlog_is_claimed_in_growing_batches_of_at_most_batch_size(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    names = [f"i{n:02}" for n in range(40)]
    for name in names:
        driver.enqueue_workflow(WF, name, None)
    start_dispatcher(Flow(on_start=lambda inst, ev: inst.complete()), workers=1, batch_size=8)
    wait_for(lambda: finished.names() == names, what="every instance")
    assert driver.claimed[:3] == [1, 4, 8]
    assert max(driver.claimed) == 8 and sum(driver.claimed) == 40


@pytest.mark.usefixtures("no_splits")
def test_a_backlog_after_the_last_one_drained_starts_again_from_one_instance(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    first = [f"a{n:02}" for n in range(21)]
    for name in first:
        driver.enqueue_workflow(WF, name, None)
    start_dispatcher(Flow(on_start=lambda inst, ev: inst.complete()), workers=1, batch_size=16)
    wait_for(lambda: finished.names() == first, what="the first backlog")
    assert driver.claimed == [1, 4, 16]  # and a claim that found nothing
    second = [f"b{n:02}" for n in range(10)]
    driver.enqueue_workflows([(WF, name, None) for name in second])
    wait_for(lambda: finished.names() == first + second, what="the second backlog")
    assert driver.claimed == [1, 4, 16, 1, 4, 5]


def test_a_decision_the_store_refuses_fails_only_its_own_instance(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.instance_name == "bad":
            inst.enqueue_task("t", start_after=timedelta(days=999_999_999))
            return inst.continue_with()
        return inst.complete(inst.instance_name)

    names = ["a", "b", "bad", "c", "d"]
    for name in names:
        driver.enqueue_workflow(WF, name, None)
    start_dispatcher(Flow(on_start=on_start), workers=1)
    wait_for(lambda: finished.names() == names, what="every instance")
    by_name = {r.instance_name: r for r in finished.runs}
    bad = by_name.pop("bad")
    assert bad.status is WorkflowStatus.FAILED
    assert bad.error is not None and "cannot store the decision" in bad.error
    assert {(n, r.status, r.result) for n, r in by_name.items()} == {
        (n, WorkflowStatus.COMPLETED, n) for n in ["a", "b", "c", "d"]
    }


def test_wake_claims_at_once_without_waiting_for_the_poll(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    dispatcher = start_dispatcher(Flow(on_start=lambda i, e: i.complete()), poll_interval=3600)
    time.sleep(0.1)  # the first look found nothing; the next poll is an hour away
    driver.enqueue_workflow(WF, "a", None)
    dispatcher.wake()
    wait_for(lambda: finished.names() == ["a"], timeout=10, what="the woken claim")


def test_a_failed_claim_is_retried(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    driver.fail_claims = 2
    driver.enqueue_workflow(WF, "a", None)
    start_dispatcher(Flow(on_start=lambda i, e: i.complete("done")))
    wait_for(lambda: finished.names() == ["a"], what="the instance after two failed claims")
    assert driver.fail_claims == 0 and finished.runs[0].result == "done"


def test_stop_lets_the_callback_in_flight_finish_and_commit(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    entered, go_on = threading.Event(), threading.Event()

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        entered.set()
        go_on.wait(10)
        return inst.complete("committed")

    driver.enqueue_workflow(WF, "a", None)
    dispatcher = start_dispatcher(Flow(on_start=on_start))
    assert entered.wait(5)
    stopping = threading.Thread(target=dispatcher.stop, args=(10,))
    stopping.start()
    time.sleep(0.1)
    go_on.set()
    stopping.join(10)
    assert driver.get_workflow_instance(WF, "a") is not None
    info = driver.get_workflow_instance(WF, "a")
    assert info is not None and (info.status, info.result) == (
        WorkflowStatus.COMPLETED,
        "committed",
    )


def test_results_past_one_fetch_of_events_are_handled_without_a_wakeup(
    driver: ObservedDriver, finished: Finished, start_dispatcher: Callable[..., Any]
) -> None:
    # Handed-over results are recorded with their instance held, so they wake nobody. A
    # handler that records ten results but fetches three events per instance must look
    # again for the other seven, not leave them to the next poll (a minute away).
    instance_id = queue_tasks(driver, "t", list(range(10)), workflow_name=WF, instance_name="a")
    claimed, _ = driver.claim_tasks({"t": 10}, "me")
    assert {c.instance_id for c in claimed} == {instance_id} and len(claimed) == 10

    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.total_completed_tasks == 10:
            return inst.complete(inst.total_completed_tasks)
        return inst.continue_with()

    dispatcher = start_dispatcher(
        Flow(on_task=on_task),
        poll_interval=60,
        events_per_instance=3,
        results=ResultHandover("me", lambda outcomes: None, lambda outcomes: None),
    )
    with dispatcher._cond:  # handed over together: one signal, and one batch for the handler
        for task in claimed:
            assert dispatcher.take_result(TaskOutcome(task.id, WF, "success", result_json="1"))
    wait_for(lambda: finished.names() == ["a"], timeout=10, what="the instance to finish")
    assert finished.runs[0].result == 10
