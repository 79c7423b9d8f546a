"""TaskPools on the in-memory driver: what they claim, how they run tasks, what they record."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cereal.driver import StepOutcome
from cereal.executors import task_callable
from cereal.task_pools import TaskPools, TaskRegistration
from cereal.task_pools.pools import PREFETCH_MAX
from cereal.testing import MemoryDriver
from cereal.types import Task, WorkflowStatus
from cereal.workflow import PendingTask
from tests.helpers.memory import Reported, queue_tasks, queued_and_claimed, reported
from tests.helpers.recorders import Gate
from tests.helpers.waiting import wait_for

OWNER = "pools-under-test"


class CountingDriver(MemoryDriver):
    """A memory driver that counts the result writes it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def complete_tasks(self, outcomes: Any, owner: str) -> set[int]:
        self.writes.append(len(outcomes))
        return super().complete_tasks(outcomes, owner)


@pytest.fixture
def driver() -> CountingDriver:
    return CountingDriver()


@pytest.fixture
def start_pools(driver: CountingDriver) -> Iterator[Callable[..., TaskPools]]:
    """``start_pools(name=(fn, workers, timeout), ...)``: started pools, stopped after the test."""
    started: list[TaskPools] = []

    def start(**tasks: tuple[Any, int, float | None]) -> TaskPools:
        regs = {
            name: TaskRegistration(name, task_callable(fn), workers, timeout)
            for name, (fn, workers, timeout) in tasks.items()
        }
        pools = TaskPools(driver, regs, owner=OWNER, poll_interval=0.05, on_reported=lambda: None)
        pools.start()
        started.append(pools)
        return pools

    yield start
    for pools in started:
        pools.stop(5)


def wait_for_reports(driver: MemoryDriver, instance_id: int, count: int) -> list[Reported]:
    wait_for(lambda: len(reported(driver, instance_id)) == count, what=f"{count} outcomes")
    return reported(driver, instance_id)


def test_no_more_tasks_of_a_name_are_claimed_than_it_has_workers(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    slow, other = Gate(), Gate()
    queue_tasks(driver, "slow", list(range(5)), instance_name="a")
    queue_tasks(driver, "other", list(range(3)), instance_name="b")
    start_pools(slow=(slow, 2, None), other=(other, 1, None))
    wait_for(lambda: slow.inside == 2 and other.inside == 1, what="three tasks running")
    time.sleep(0.3)  # several claim polls: none may take more
    assert queued_and_claimed(driver, "slow") == (3, 2)
    assert queued_and_claimed(driver, "other") == (2, 1)
    slow.open.set()
    other.open.set()
    wait_for(lambda: queued_and_claimed(driver, "slow") == (0, 0), what="every slow task")
    assert slow.most_inside == 2 and other.most_inside == 1


def test_sync_and_async_executors_both_run_and_report_their_values(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    async def triple(task: Task) -> int:
        await asyncio.sleep(0)
        return int(task.parameters) * 3

    inst = queue_tasks(driver, "double", [1, 2])
    other = queue_tasks(driver, "triple", [1, 2], instance_name="j")
    start_pools(double=(lambda task: task.parameters * 2, 2, None), triple=(triple, 2, None))
    doubled = wait_for_reports(driver, inst, 2)
    tripled = wait_for_reports(driver, other, 2)
    assert sorted((r.parameters, r.status, r.result) for r in doubled) == [
        (1, "success", 2),
        (2, "success", 4),
    ]
    assert sorted((r.parameters, r.status, r.result) for r in tripled) == [
        (1, "success", 3),
        (2, "success", 6),
    ]


def test_a_raising_task_is_reported_failed_with_its_exception(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    def boom(task: Task) -> None:
        raise KeyError(task.parameters)

    inst = queue_tasks(driver, "boom", ["x"])
    start_pools(boom=(boom, 1, None))
    (outcome,) = wait_for(lambda: reported(driver, inst), what="the outcome")
    assert outcome.status == "failed" and outcome.error == "KeyError: 'x'"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_past_its_timeout_is_cancelled_and_reported_failed_once(
    kind: str, driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    saw_cancel = threading.Event()

    def sync_wait(task: Task) -> str:
        if task.cancelled.wait(10):
            saw_cancel.set()
        return "too late"

    async def async_wait(task: Task) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return "too late"

    inst = queue_tasks(driver, "wait", [None])
    start_pools(wait=(sync_wait if kind == "sync" else async_wait, 1, 0.2))
    (outcome,) = wait_for(lambda: reported(driver, inst), what="the timeout")
    assert outcome.status == "failed"
    assert outcome.error == ("TimeoutError: task 'wait' did not finish within its timeout of 0.2s")
    assert saw_cancel.wait(5)
    time.sleep(0.2)  # the late return must not add a second outcome
    assert len(reported(driver, inst)) == 1


def test_outcomes_finished_meanwhile_are_written_together(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    inst = queue_tasks(driver, "quick", list(range(200)))
    start_pools(quick=(lambda task: task.parameters, 8, None))
    outcomes = wait_for_reports(driver, inst, 200)
    assert sorted(o.result for o in outcomes) == list(range(200))
    assert sum(driver.writes) == 200
    assert len(driver.writes) < 200  # some writes carried several outcomes


def test_stop_cancels_running_tasks_and_hands_back_claimed_ones_that_never_started(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    ran: list[Any] = []
    warmed = threading.Event()

    def work(task: Task) -> Any:
        ran.append(task.parameters)
        if task.parameters == "block":
            warmed.set()
            task.cancelled.wait(10)
        return task.parameters

    warm = queue_tasks(driver, "t", ["warm-up"] * 5, instance_name="warm")
    pools = start_pools(t=(work, 1, None))
    wait_for(lambda: len(reported(driver, warm)) == 5, what="the warm-up tasks")
    # Short runs so far: the pool now claims ahead of its single worker.
    queue_tasks(driver, "t", ["block", "later", "later", "later"], instance_name="main")
    assert warmed.wait(5)
    wait_for(lambda: queued_and_claimed(driver, "t")[1] == 4, what="tasks claimed ahead")
    pools.stop(5)
    assert ran.count("later") == 0
    assert queued_and_claimed(driver, "t") == (3, 0)  # "block" reported, the rest back


def test_a_single_worker_claims_millisecond_tasks_by_the_dozen(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    started = threading.Event()
    release = threading.Event()

    def work(task: Task) -> Any:
        if task.parameters == "block":
            started.set()
            release.wait(10)
        return task.parameters

    warm = queue_tasks(driver, "t", ["warm-up"] * 5, instance_name="warm")
    start_pools(t=(work, 1, None))
    wait_for(lambda: len(reported(driver, warm)) == 5, what="the warm-up tasks")
    # Runs of microseconds: PREFETCH_MAX tasks fit in the queued-work budget of one worker.
    later = PREFETCH_MAX + 30
    queue_tasks(driver, "t", ["block"] + ["later"] * later, instance_name="main")
    assert started.wait(5)
    try:
        wait_for(
            lambda: queued_and_claimed(driver, "t")[1] == 1 + PREFETCH_MAX,
            what="tasks claimed ahead",
        )
        assert queued_and_claimed(driver, "t") == (later - PREFETCH_MAX, 1 + PREFETCH_MAX)
    finally:
        release.set()


def test_heartbeats_keep_running_tasks_and_forget_drops_tasks_whose_rows_are_gone(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    gate = Gate()
    stopped = threading.Event()

    def wait(task: Task) -> None:
        gate(task)
        if task.cancelled.is_set():
            stopped.set()

    queue_tasks(driver, "t", [1])
    pools = start_pools(t=(wait, 1, None))
    wait_for(lambda: gate.inside == 1, what="the task to run")
    (task_id,) = pools.unreported()
    assert driver.heartbeat_tasks([task_id], OWNER) == {task_id}
    assert driver.kill_workflow("w", "i", "killed")
    pools.confirm_gone([task_id], "workflow finished")
    assert pools.unreported() == []
    gate.open.set()  # it was told to stop; its result has nowhere to go
    wait_for(lambda: gate.inside == 0, what="the task to return")
    time.sleep(0.2)
    assert driver.writes == []


def test_a_finished_instance_hint_checks_only_its_tasks_still_running(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    checked: list[list[int]] = []
    heartbeat = driver.heartbeat_tasks

    def counting_heartbeat(task_ids: Any, owner: str) -> set[int]:
        checked.append(list(task_ids))
        return heartbeat(task_ids, owner)

    driver.heartbeat_tasks = counting_heartbeat  # type: ignore[method-assign]
    gate = Gate()
    pools = start_pools(quick=(lambda task: 1, 1, None), slow=(gate, 1, None))
    held: list[Any] = []
    pools.hand_results_to(lambda outcome: held.append(outcome) or True)  # never recorded
    decided = queue_tasks(driver, "quick", [1], instance_name="decided")
    running = queue_tasks(driver, "slow", [2], instance_name="running")
    wait_for(lambda: len(held) == 1 and gate.inside == 1, what="one outcome, one task running")
    pools.instance_finished(decided)  # its task returned: nothing to stop or check
    pools.instance_finished(running + decided + 1000)  # no task of this process
    assert checked == []
    pools.instance_finished(running)  # a wrong hint: the row is there, the task runs on
    assert len(checked) == 1 and len(checked[0]) == 1
    assert len(pools.unreported()) == 2
    gate.open.set()


def claim_in_commit(
    driver: MemoryDriver, pools: TaskPools, task_name: str, parameters: list[Any], name: str
) -> list[Any]:
    """Queue tasks as a workflow commit does, claiming what the pools reserve; return the
    ids of the tasks the commit claimed (already handed to the pools)."""
    assert driver.enqueue_workflow("w", name, None)
    claim = pools.reserve({task_name: len(parameters)})
    claimed: list[Any] = []
    with driver.claim_events(["w"], 1, 10) as batch:
        (inst,) = batch.instances
        outcome = StepOutcome(
            instance=inst,
            consumed=[e.id for e in batch.events[inst.id]],
            status=WorkflowStatus.RUNNING,
            tasks=[PendingTask(task_name, json.dumps(p)) for p in parameters],
        )
        if claim is None:
            batch.commit([outcome])
        else:
            _, claimed = batch.commit_claiming([outcome], claim)
    if claim is not None:
        pools.adopt(claim, claimed)
    return [c.id for c in claimed]


def test_a_commit_claims_only_free_workers_and_the_claimer_leaves_them_alone(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    gate = Gate()
    pools = start_pools(t=(gate, 2, None))
    claimed = claim_in_commit(driver, pools, "t", [1, 2, 3], "a")
    assert len(claimed) == 2  # two workers, no run time known yet: no claiming ahead
    wait_for(lambda: gate.inside == 2, what="the two claimed tasks running")
    time.sleep(0.2)  # claim polls: the third stays queued
    assert queued_and_claimed(driver, "t") == (1, 2)
    assert pools.reserve({"t": 1}) is None  # no worker free
    gate.open.set()
    wait_for(lambda: queued_and_claimed(driver, "t") == (0, 0), what="every task")
    assert sorted(gate.ran) == [1, 2, 3] and gate.most_inside == 2


def test_tasks_a_commit_claimed_after_stop_began_go_back_to_the_queue(
    driver: CountingDriver, start_pools: Callable[..., TaskPools]
) -> None:
    gate = Gate()
    pools = start_pools(t=(gate, 1, None))
    assert driver.enqueue_workflow("w", "a", None)
    claim = pools.reserve({"t": 1})
    assert claim is not None
    with driver.claim_events(["w"], 1, 10) as batch:
        (inst,) = batch.instances
        _, claimed = batch.commit_claiming(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    status=WorkflowStatus.RUNNING,
                    tasks=[PendingTask("t", "1")],
                )
            ],
            claim,
        )
    assert len(claimed) == 1
    pools.stop(5)  # does not wait for the reserved slot
    pools.adopt(claim, claimed)
    assert gate.ran == []
    assert queued_and_claimed(driver, "t") == (1, 0)
    assert pools.reserve({"t": 1}) is None


class SlowClaims(CountingDriver):
    """A memory driver whose task claims wait for ``release`` once ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.inside = threading.Event()
        self.release = threading.Event()

    def claim_tasks(self, limits: Any, owner: str, retries: Any = None) -> Any:
        if self.hold.is_set():
            self.inside.set()
            self.release.wait(10)
        return super().claim_tasks(limits, owner, retries)


def test_a_commit_is_not_promised_the_workers_of_a_claim_in_flight() -> None:
    driver = SlowClaims()
    gate = Gate()
    regs = {"t": TaskRegistration("t", task_callable(gate), 2, None)}
    pools = TaskPools(driver, regs, owner=OWNER, poll_interval=0.05, on_reported=lambda: None)
    driver.hold.set()
    pools.start()
    try:
        assert driver.inside.wait(5), "the claimer never claimed"
        # The claimer has taken both workers' slots and waits on the database: a workflow
        # commit meanwhile must not be promised them (both would start their tasks).
        assert pools.reserve({"t": 2}) is None
        queue_tasks(driver, "t", [1, 2, 3], instance_name="a")
        driver.release.set()
        wait_for(lambda: gate.inside == 2, what="two tasks running")
        assert pools.reserve({"t": 1}) is None
        gate.open.set()
        wait_for(lambda: queued_and_claimed(driver, "t") == (0, 0), what="every task")
        assert sorted(gate.ran) == [1, 2, 3] and gate.most_inside == 2
    finally:
        gate.open.set()
        driver.release.set()
        pools.stop(5)


class ClaimCounter(MemoryDriver):
    """A memory driver that counts task claims."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    def claim_tasks(self, *args: Any, **kwargs: Any) -> Any:
        self.claims += 1
        return super().claim_tasks(*args, **kwargs)


@pytest.fixture
def quiet_pools() -> Iterator[Callable[..., tuple[ClaimCounter, TaskPools]]]:
    """``quiet_pools(fn, workers)``: pools of one task name ``t`` that never poll, so every
    claim they make answers a wake."""
    started: list[TaskPools] = []

    def start(fn: Any, workers: int) -> tuple[ClaimCounter, TaskPools]:
        driver = ClaimCounter()
        regs = {"t": TaskRegistration("t", task_callable(fn), workers, None)}
        pools = TaskPools(driver, regs, owner=OWNER, poll_interval=60, on_reported=lambda: None)
        pools.start()
        started.append(pools)
        wait_for(lambda: driver.claims == 1, what="the claim made at start")
        return driver, pools

    yield start
    for pools in started:
        pools.stop(5)


def test_a_finished_task_claims_again_only_if_more_were_waiting(
    quiet_pools: Callable[..., tuple[ClaimCounter, TaskPools]],
) -> None:
    # At a low rate each task comes with a wake: a claim takes it and the claimer looks once
    # more for what came in meanwhile. A claim after each finished task as well would find
    # nothing, once per task.
    driver, pools = quiet_pools(lambda task: task.parameters, 2)
    for n in range(1, 4):
        instance = queue_tasks(driver, "t", [n], instance_name=f"i{n}")
        pools.wake("t")
        wait_for_reports(driver, instance, 1)
        time.sleep(0.05)
        assert driver.claims == 1 + 2 * n


def test_a_task_queued_while_every_worker_is_busy_runs_when_one_frees_up(
    quiet_pools: Callable[..., tuple[ClaimCounter, TaskPools]],
) -> None:
    gate = Gate()
    driver, pools = quiet_pools(gate, 1)
    queue_tasks(driver, "t", ["first"], instance_name="a")
    pools.wake("t")
    wait_for(lambda: gate.inside == 1, what="the first task running")
    second = queue_tasks(driver, "t", ["second"], instance_name="b")
    pools.wake("t")  # no free worker: nothing is claimed now
    time.sleep(0.05)
    assert queued_and_claimed(driver, "t") == (1, 1)
    gate.open.set()
    assert [r.result for r in wait_for_reports(driver, second, 1)] == ["second"]
