"""What the in-memory driver promises beyond the shared contract (tests/contract)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from cereal import Manager
from cereal.driver import EventsPending, StepOutcome, TaskOutcome, Wakeup
from cereal.errors import CerealError, DatabaseError, SerializationError
from cereal.steps import run_events
from cereal.testing import MemoryDriver, MemoryStore
from cereal.types import (
    CancelEvent,
    StartEvent,
    TaskCompleteEvent,
    TaskStatus,
    WorkflowInstanceInfo,
    WorkflowStatus,
)
from cereal.workflow import Decision, PendingTask, WorkflowInstance

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_drivers_on_one_store_share_state_and_locks() -> None:
    first = MemoryDriver()
    second = MemoryDriver(store=first.store)
    assert first.enqueue_workflow("w", "a", None)
    assert not second.enqueue_workflow("w", "a", None)
    with first.claim_events(["w"], 10, 10) as held, second.claim_events(["w"], 10, 10) as other:
        assert len(held.instances) == 1 and other.instances == []
    assert MemoryDriver().get_workflow_instance("w", "a") is None  # a new store is empty


@pytest.mark.parametrize("text", ["{", "NaN", '"\\u0000"', "[1,]", "Infinity"])
def test_values_jsonb_would_refuse_are_refused_before_anything_is_written(text: str) -> None:
    driver = MemoryDriver()
    with pytest.raises(SerializationError, match="parameters"):
        driver.enqueue_workflow("w", "a", text)
    with pytest.raises(SerializationError):
        driver.enqueue_workflows([("w", "b", "1"), ("w", "c", text)])
    assert driver.list_workflow_instances() == []


def test_callers_never_share_mutable_values_with_the_store() -> None:
    driver = MemoryDriver()
    driver.enqueue_workflow("w", "a", json.dumps({"items": [1]}))
    info = driver.get_workflow_instance("w", "a")
    assert info is not None
    info.parameters["items"].append(2)
    again = driver.get_workflow_instance("w", "a")
    assert again is not None and again.parameters == {"items": [1]}


def test_a_commit_that_cannot_be_stored_writes_nothing_and_keeps_the_hold() -> None:
    driver = MemoryDriver()
    driver.enqueue_workflow("w", "a", None)
    with driver.claim_events(["w"], 10, 10) as batch:
        inst = batch.instances[0]
        bad = StepOutcome(
            instance=inst,
            consumed=[e.id for e in batch.events[inst.id]],
            payload_json="{}",
            status=WorkflowStatus.RUNNING,
            tasks=[PendingTask("t", "not json")],
        )
        with pytest.raises(SerializationError, match="task 't'"):
            batch.commit([bad])
        with driver.claim_events(["w"], 10, 10) as other:
            assert other.instances == []
    assert driver.claim_tasks({"t": 1}, "me") == ([], None)
    with driver.claim_events(["w"], 10, 10) as batch:
        assert [e.kind for e in batch.events[batch.instances[0].id]] == ["start"]


def test_a_batch_commits_once() -> None:
    driver = MemoryDriver()
    driver.enqueue_workflow("w", "a", None)
    with driver.claim_events(["w"], 10, 10) as batch:
        batch.commit([])
        with pytest.raises(CerealError, match="already committed"):
            batch.commit([])


def test_a_controlled_clock_drives_task_delays_and_schedules() -> None:
    clock = Clock()
    driver = MemoryDriver(MemoryStore(clock=clock))
    driver.enqueue_workflow("w", "a", None)
    with driver.claim_events(["w"], 10, 10) as batch:
        inst = batch.instances[0]
        batch.commit(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    status=WorkflowStatus.RUNNING,
                    tasks=[PendingTask("t", None, delay=30.0)],
                )
            ]
        )
    assert driver.claim_tasks({"t": 1}, "me") == ([], 30.0)
    clock.now += timedelta(seconds=30)
    assert len(driver.claim_tasks({"t": 1}, "me")[0]) == 1

    driver.insert_schedule("w", "s", None, "FREQ=HOURLY", True, T0 + timedelta(hours=1))
    assert driver.seconds_until_next_schedule() == 3600 - 30
    assert driver.run_due_schedule(lambda rule, now: now + timedelta(hours=1)) is None
    clock.now = T0 + timedelta(hours=1)
    run = driver.run_due_schedule(lambda rule, now: now + timedelta(hours=1))
    assert run is not None and run.enqueued and run.ran_at == clock.now


def test_an_enabled_schedule_needs_a_next_due_time() -> None:
    driver = MemoryDriver()
    with pytest.raises(DatabaseError, match="'w'/'s'"):
        driver.insert_schedule("w", "s", None, "FREQ=DAILY", True, None)
    assert driver.list_schedules() == []


def test_bad_listing_arguments_are_refused_by_name() -> None:
    driver = MemoryDriver()
    with pytest.raises(CerealError, match="after"):
        driver.list_workflow_instances(limit=5, after="not-a-cursor")
    with pytest.raises(CerealError, match="limit"):
        driver.list_workflow_instances(limit=-1)
    with pytest.raises(CerealError, match="'done'"):
        driver.list_workflow_instances(status="done")  # type: ignore[arg-type]
    with pytest.raises(CerealError, match="store"):
        MemoryDriver(store=object())  # type: ignore[arg-type]


def test_rows_outside_a_limited_listing_carry_no_cursor() -> None:
    driver = MemoryDriver()
    driver.enqueue_workflow("w", "a", None)
    assert driver.list_workflow_instances()[0].cursor is None
    assert driver.list_workflow_instances(limit=1)[0].cursor is not None


def test_a_failing_wakeup_callback_does_not_stop_the_listener() -> None:
    driver = MemoryDriver()
    got: list[Wakeup] = []
    seen = threading.Event()

    def on_wakeup(wakeup: Wakeup) -> None:
        got.append(wakeup)
        if len(got) == 1:
            raise RuntimeError("callback bug")
        seen.set()

    listener = driver.listener(on_wakeup, lambda: None)
    listener.start()
    try:
        driver.enqueue_workflow("w", "a", None)
        driver.enqueue_workflow("v", "a", None)
        assert seen.wait(5)
        assert got == [EventsPending("w"), EventsPending("v")]
    finally:
        listener.stop()
    driver.enqueue_workflow("x", "a", None)  # a stopped listener gets nothing more
    assert got == [EventsPending("w"), EventsPending("v")]


def test_the_store_is_always_current_and_has_no_sql() -> None:
    driver = MemoryDriver(schema="unit")
    status = driver.schema_status()
    assert (status.schema, status.applied, status.pending) == ("unit", [1], [])
    assert "no SQL schema" in driver.migration_sql()
    driver.close()
    driver.ping()
    assert driver.enqueue_workflow("w", "a", None)  # usable whether open or not


class Doubler:
    """Starts one ``double`` task and completes with twice its result."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        instance.enqueue_task("double", instance.parameters)
        return instance.continue_with({"asked": instance.parameters})

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete(event.result.value * 2)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


def _dispatch(driver: MemoryDriver) -> list[WorkflowInstanceInfo]:
    with driver.claim_events(["double"], 10, 10) as batch:
        outcomes = [run_events(Doubler(), inst, batch.events[inst.id]) for inst in batch.instances]
        return batch.commit(outcomes)


def test_a_workflow_runs_to_completion_on_the_engines_own_step_logic() -> None:
    driver = MemoryDriver()
    driver.enqueue_workflow("double", "a", "21")
    assert _dispatch(driver) == []
    running = driver.get_workflow_instance("double", "a")
    assert running is not None and running.payload == {"asked": 21}
    ((task,), _) = driver.claim_tasks({"double": 1}, "me")
    assert task.parameters == 21
    driver.complete_tasks(
        [TaskOutcome(task.id, "double", TaskStatus.SUCCESS, result_json=str(task.parameters))],
        "me",
    )
    (done,) = _dispatch(driver)
    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, 42)
    stored = driver.get_workflow_instance("double", "a")
    assert stored is not None and stored.result == 42


def test_next_occurrences_counts_from_the_drivers_clock_not_the_process_clock() -> None:
    clock = Clock()
    manager = Manager(MemoryDriver(MemoryStore(clock=clock)))
    manager.create_workflow_schedule(
        "w", "daily", recurrence="DTSTART:20200101T120000Z\nRRULE:FREQ=DAILY"
    )
    schedule = manager.get_workflow_schedule("w", "daily")
    assert schedule.next_occurrences(2) == [T0 + timedelta(hours=12), T0 + timedelta(hours=36)]
    assert schedule.next_occurrences(1) == [schedule.next_due_at]
    assert schedule.next_occurrences(1, datetime(2025, 1, 1, tzinfo=UTC)) == [
        datetime(2025, 1, 1, 12, tzinfo=UTC)
    ]
