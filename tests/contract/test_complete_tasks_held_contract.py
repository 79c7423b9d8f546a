"""The storage contract of ``Driver.complete_tasks_held``, checked on every driver.

It records finished tasks' outcomes as ``complete_tasks`` does, then holds the instances they
belong to with their pending events, as a claim would: the caller handles the new results
without a wakeup and a claim of its own. The outcomes are stored before the batch is handed
out, whatever becomes of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from cereal.driver import Driver, EventBatch, EventsPending, StepOutcome, TaskOutcome
from cereal.errors import CerealError, SerializationError
from cereal.types import WorkflowStatus
from cereal.workflow import PendingTask
from tests.contract.test_driver_contract import (
    MANY,
    OWNER,
    W,
    claim,
    events_of,
    in_thread,
    js,
    listening,
    many_running_tasks,
    require,
    start,
    step,
)
from tests.helpers.waiting import wait_for


@contextmanager
def held(
    d: Driver,
    outcomes: Sequence[TaskOutcome],
    names: Sequence[str] = (W,),
    per: int = 100,
    owner: str = OWNER,
) -> Iterator[EventBatch]:
    require(d, "complete_tasks_held")
    with d.complete_tasks_held(outcomes, owner, names, per) as batch:
        yield batch


def ok(task_id: int, value: object = None) -> TaskOutcome:
    return TaskOutcome(task_id, W, "success", result_json=js(value))


def completing(batch: EventBatch) -> list[StepOutcome]:
    return [
        StepOutcome(instance=inst, status=WorkflowStatus.COMPLETED, result_json=js("done"))
        for inst in batch.instances
    ]


def continuing(batch: EventBatch) -> list[StepOutcome]:
    return [
        StepOutcome(
            instance=inst,
            consumed=[e.id for e in batch.events[inst.id]],
            payload_json=js({"seen": len(batch.events[inst.id])}),
            status=WorkflowStatus.RUNNING,
            enqueued_tasks=inst.enqueued_tasks,
            completed_tasks=inst.completed_tasks + len(batch.events[inst.id]),
        )
        for inst in batch.instances
    ]


def running(d: Driver, name: str, *task_names: str, workflow: str = W) -> list[int]:
    """A running instance of ``workflow`` with these tasks claimed by OWNER; their ids."""
    start(d, name, workflow=workflow)
    step(d, name, tasks=[PendingTask(t, js({"n": t})) for t in task_names], workflow=workflow)
    claimed, _ = d.claim_tasks(dict(Counter(task_names)), OWNER)
    return [t.id for t in claimed if t.instance_name == name]


def results_of(d: Driver, name: str) -> list[tuple[str, object]]:
    return [(e.kind, e.task_result) for e in events_of(d, name)]


def test_the_batch_holds_the_instance_with_its_pending_events_and_the_new_results(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    one, two = running(d, "a", "t", "t")
    d.signal_workflow(W, "a", "poke", js(1))
    with held(d, [ok(two, 2), ok(one, 1)]) as batch:
        (inst,) = batch.instances
        assert inst.instance_name == "a" and inst.status is WorkflowStatus.RUNNING
        assert [(e.kind, e.task_result) for e in batch.events[inst.id]] == [
            ("signal", None),
            ("task_complete", 1),
            ("task_complete", 2),
        ]
        with claim(d) as other:
            assert other.instances == []  # held: no claim takes it
        batch.commit(continuing(batch))
    assert not d.has_events([W])
    assert d.heartbeat_tasks([one, two], OWNER) == set()  # the task rows are gone
    assert d.complete_tasks([ok(one), ok(two)], OWNER) == set()  # reported once only


def test_per_instance_limits_the_events_fetched(contract_driver: Driver) -> None:
    d = contract_driver
    ids = running(d, "a", "t", "t", "t")
    with held(d, [ok(i) for i in ids], per=2) as batch:
        (inst,) = batch.instances
        assert len(batch.events[inst.id]) == 2


def test_the_results_are_stored_even_if_the_batch_is_never_committed(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with held(d, [ok(task, 7)]) as batch:
        assert len(batch.instances) == 1
    assert d.heartbeat_tasks([task], OWNER) == set()
    assert d.has_events([W])  # delivered to the next claim
    assert results_of(d, "a") == [("task_complete", 7)]
    assert d.complete_tasks([ok(task, 7)], OWNER) == set()


def test_an_exception_inside_the_batch_lets_the_instance_go_with_its_results(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with pytest.raises(RuntimeError), held(d, [ok(task, 3)]):
        raise RuntimeError("callback blew up")
    assert results_of(d, "a") == [("task_complete", 3)]


def test_a_commit_completes_the_instance(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with held(d, [ok(task, 7)]) as batch:
        assert batch.commit(completing(batch))[0].result == "done"
    info = d.get_workflow_instance(W, "a")
    assert info is not None and info.status is WorkflowStatus.COMPLETED


def test_an_instance_held_elsewhere_is_skipped_but_its_results_are_recorded(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    (mine,) = running(d, "a", "t")
    (theirs,) = running(d, "b", "u")
    d.cancel_workflow(W, "b")
    with claim(twin_driver) as other:
        assert [i.instance_name for i in other.instances] == ["b"]
        with held(d, [ok(mine, 1), ok(theirs, 3)]) as batch:
            assert [i.instance_name for i in batch.instances] == ["a"]
            batch.commit(completing(batch))
    assert d.complete_tasks([ok(theirs, 3)], OWNER) == set()
    assert results_of(d, "b") == [("cancel", None), ("task_complete", 3)]


def test_tasks_of_other_owners_other_workflows_or_gone_hold_nothing(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (gone,) = running(d, "a", "t")
    d.kill_workflow(W, "a", "killed")
    (elsewhere,) = running(d, "b", "v", workflow="other")
    (foreign,) = running(d, "c", "t")
    with held(d, [ok(gone), ok(foreign)], owner="intruder") as batch:
        assert batch.instances == []
    assert d.heartbeat_tasks([foreign], OWNER) == {foreign}  # not the intruder's to report
    with held(d, [TaskOutcome(elsewhere, "other", "success", result_json=js(9))]) as batch:
        assert batch.instances == []  # a workflow not named: recorded, not held
    assert d.has_events(["other"])
    assert results_of_workflow(d, "other", "b") == [("task_complete", 9)]


def results_of_workflow(d: Driver, workflow: str, name: str) -> list[tuple[str, object]]:
    return [(e.kind, e.task_result) for e in events_of(d, name, workflow)]


def test_an_outcome_asking_for_a_retry_is_refused(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    retry = TaskOutcome(task, W, "failed", error="boom", retry=True)
    with pytest.raises(CerealError, match="retry"), held(d, [retry]):
        pass
    assert d.heartbeat_tasks([task], OWNER) == {task}


def test_a_result_the_database_refuses_raises_and_records_nothing(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    refused = TaskOutcome(task, W, "success", result_json='"\\u0000"')
    with pytest.raises(SerializationError), held(d, [refused]):
        pass
    assert d.heartbeat_tasks([task], OWNER) == {task}
    assert not d.has_events([W])
    with claim(d) as batch:
        assert batch.instances == []  # and holds nothing


def test_kill_waits_for_the_batch_holding_the_instance(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with held(d, [ok(task)]) as batch:
        thread, out = in_thread(lambda: d.kill_workflow(W, "a", "killed"))
        thread.join(0.3)
        assert thread.is_alive()  # waits for the holder
        batch.commit(continuing(batch))
    thread.join(10)
    assert out == [True]
    info = d.get_workflow_instance(W, "a")
    assert info is not None and info.status is WorkflowStatus.FAILED


def test_only_the_instances_not_held_wake_their_workflows_handlers(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    (mine,) = running(d, "a", "t")
    (theirs,) = running(d, "b", "v", workflow="other")
    (later,) = running(d, "c", "t")
    with listening(twin_driver) as got:
        with held(d, [ok(mine), TaskOutcome(theirs, "other", "success")]) as batch:
            batch.commit(completing(batch))
        wait_for(lambda: EventsPending("other") in got, what="the other workflow woken")
        d.cancel_workflow("other", "b")  # a later wakeup: everything before it has arrived
        wait_for(lambda: got.count(EventsPending("other")) == 2, what="the cancel's wakeup")
        assert EventsPending(W) not in got
        # The silence was this batch's: recording a result the usual way wakes its workflow.
        d.complete_tasks([ok(later)], OWNER)
        wait_for(lambda: EventsPending(W) in got, what="the usual wakeup")


def test_a_batch_larger_than_one_statement_records_every_outcome_and_holds_every_instance(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    claimed = many_running_tasks(d)
    outcomes = [ok(t.id, {"of": t.instance_name}) for t in reversed(claimed)]
    with held(d, outcomes, per=10) as batch:
        assert len(batch.instances) == MANY
        for inst in batch.instances:
            (event,) = batch.events[inst.id]
            assert (event.kind, event.task_result) == ("task_complete", {"of": inst.instance_name})
