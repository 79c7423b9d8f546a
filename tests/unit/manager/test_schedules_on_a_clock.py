"""Recurring schedules run by a manager on the in-memory driver, with a clock that moves only
when the test says so: every occurrence is checked without waiting for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from cereal import Manager, WorkflowInstanceInfo, WorkflowStatus
from cereal.driver import SchedulesChanged
from cereal.errors import WorkflowInstanceNotFoundError
from cereal.testing import MemoryStore
from tests.helpers.memory import T0, Clock
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

WF = "report"
HOURLY = "DTSTART:20300101T010000Z\nRRULE:FREQ=HOURLY"
HOUR = timedelta(hours=1)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def memory_store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock)


def advance(clock: Clock, store: MemoryStore, delta: timedelta) -> None:
    """Move the clock, then tell the schedulers to look (the scheduler sleeps in real time,
    so it is woken as when another process changes a schedule)."""
    clock.advance(delta)
    with store.lock:
        store.emit([SchedulesChanged()])


def scheduled(make_memory_manager: Callable[..., Manager], flow: Flow) -> Manager:
    manager = make_memory_manager()
    manager.register_workflow_executor(WF, flow)
    return manager


def runs(store: MemoryStore) -> int:
    with store.lock:
        return len(store.history.get((WF, "hourly"), [])) + ((WF, "hourly") in store.live)


def first_run(manager: Manager, store: MemoryStore) -> WorkflowInstanceInfo:
    """The scheduled run, once the scheduler has enqueued it and it has finished."""
    wait_for(lambda: runs(store) > 0, what="the scheduled run")
    return manager.await_workflow(WF, "hourly", timeout=10)


def test_a_schedule_enqueues_its_workflow_when_its_time_comes_and_not_before(
    make_memory_manager: Callable[..., Manager], clock: Clock, memory_store: MemoryStore
) -> None:
    manager = scheduled(make_memory_manager, Flow(on_start=lambda i, e: i.complete(i.parameters)))
    manager.create_workflow_schedule(WF, "hourly", {"n": 1}, recurrence=HOURLY)
    assert manager.get_workflow_schedule(WF, "hourly").next_due_at == T0 + HOUR
    manager.start()
    advance(clock, memory_store, HOUR - timedelta(seconds=1))
    time.sleep(0.3)  # the woken scheduler looks, and must find nothing due
    with pytest.raises(WorkflowInstanceNotFoundError):
        manager.get_workflow_instance(WF, "hourly")

    advance(clock, memory_store, timedelta(seconds=1))
    done = first_run(manager, memory_store)
    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, {"n": 1})
    assert done.started_at == T0 + HOUR
    schedule = manager.get_workflow_schedule(WF, "hourly")
    assert schedule.last_enqueued_at == T0 + HOUR
    assert schedule.next_due_at == T0 + 2 * HOUR


def test_occurrences_missed_meanwhile_are_run_once_not_caught_up(
    make_memory_manager: Callable[..., Manager], clock: Clock, memory_store: MemoryStore
) -> None:
    manager = scheduled(make_memory_manager, Flow(on_start=lambda i, e: i.complete()))
    manager.create_workflow_schedule(WF, "hourly", recurrence=HOURLY)
    manager.start()
    advance(clock, memory_store, 5 * HOUR + timedelta(minutes=30))
    wait_for(
        lambda: manager.get_workflow_schedule(WF, "hourly").next_due_at == T0 + 6 * HOUR,
        what="the schedule to move on",
    )
    manager.await_workflow(WF, "hourly", timeout=10)
    assert runs(memory_store) == 1


def test_an_occurrence_due_while_the_previous_run_is_live_is_skipped(
    make_memory_manager: Callable[..., Manager], clock: Clock, memory_store: MemoryStore
) -> None:
    manager = scheduled(make_memory_manager, Flow())  # continues: the run stays live
    manager.create_workflow_schedule(WF, "hourly", recurrence=HOURLY)
    manager.start()
    advance(clock, memory_store, HOUR)
    wait_for(lambda: runs(memory_store) > 0, what="the first run")
    first = manager.get_workflow_instance(WF, "hourly")
    advance(clock, memory_store, HOUR)
    wait_for(
        lambda: manager.get_workflow_schedule(WF, "hourly").next_due_at == T0 + 3 * HOUR,
        what="the second occurrence to pass",
    )
    assert runs(memory_store) == 1
    assert manager.get_workflow_instance(WF, "hourly").started_at == first.started_at
    assert manager.get_workflow_schedule(WF, "hourly").last_enqueued_at == T0 + HOUR


def test_a_disabled_schedule_never_runs_and_re_enabling_counts_from_now(
    make_memory_manager: Callable[..., Manager], clock: Clock, memory_store: MemoryStore
) -> None:
    manager = scheduled(make_memory_manager, Flow(on_start=lambda i, e: i.complete()))
    manager.create_workflow_schedule(WF, "hourly", recurrence=HOURLY, enabled=False)
    manager.start()
    advance(clock, memory_store, 2 * HOUR + timedelta(minutes=30))
    time.sleep(0.3)  # the woken scheduler looks, and must skip the disabled schedule
    assert manager.get_workflow_schedule(WF, "hourly").last_enqueued_at is None
    assert runs(memory_store) == 0

    manager.update_workflow_schedule(WF, "hourly", enabled=True)
    assert manager.get_workflow_schedule(WF, "hourly").next_due_at == T0 + 3 * HOUR
    advance(clock, memory_store, timedelta(minutes=30))
    done = first_run(manager, memory_store)
    assert done.started_at == T0 + 3 * HOUR and runs(memory_store) == 1


def test_a_rule_with_a_last_occurrence_disables_itself_after_running_it(
    make_memory_manager: Callable[..., Manager], clock: Clock, memory_store: MemoryStore
) -> None:
    manager = scheduled(make_memory_manager, Flow(on_start=lambda i, e: i.complete()))
    manager.create_workflow_schedule(WF, "hourly", recurrence=HOURLY + ";COUNT=1")
    manager.start()
    advance(clock, memory_store, 3 * HOUR)
    wait_for(
        lambda: manager.get_workflow_schedule(WF, "hourly").next_due_at is None,
        what="the schedule to run out",
    )
    schedule = manager.get_workflow_schedule(WF, "hourly")
    assert not schedule.enabled and schedule.last_enqueued_at == T0 + 3 * HOUR
    manager.await_workflow(WF, "hourly", timeout=10)
    assert runs(memory_store) == 1
