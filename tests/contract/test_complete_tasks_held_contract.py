"""The storage contract of ``Driver.complete_tasks_held``, checked on every driver.

It holds the instances finished tasks belong to with their pending events, as a claim would,
followed by the tasks' outcomes as ``task_complete`` events: the caller handles the new results
without a wakeup and a claim of its own. The batch's first commit records the outcomes in the
same transaction as the decisions; a batch that never commits records nothing, and the tasks
are running again for their owner to report the usual way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from cereal.driver import Driver, EventBatch, EventsPending, StepOutcome, TaskOutcome
from cereal.errors import CerealError, SerializationError, TransientDatabaseError
from cereal.types import WorkflowStatus
from cereal.workflow import PendingTask
from tests.contract.test_driver_contract import (
    OWNER,
    W,
    claim,
    events_of,
    in_thread,
    instance_of,
    js,
    listening,
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


def results_of(d: Driver, name: str, workflow: str = W) -> list[tuple[str, object]]:
    return [(e.kind, e.task_result) for e in events_of(d, name, workflow)]


def consuming(batch: EventBatch, keep: int, kinds: Sequence[str]) -> StepOutcome:
    """``keep`` goes on, having handled its events of these kinds only."""
    inst = next(i for i in batch.instances if i.id == keep)
    return StepOutcome(
        instance=inst,
        consumed=[e.id for e in batch.events[inst.id] if e.kind in kinds],
        payload_json=js("on"),
        status=WorkflowStatus.RUNNING,
        enqueued_tasks=inst.enqueued_tasks,
        completed_tasks=inst.completed_tasks,
    )


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
        assert batch.carried_tasks == {one, two}
        assert not batch.results_stored
        with claim(d) as other:
            assert other.instances == []  # held: no claim takes it
        batch.commit(continuing(batch))
        assert batch.results_stored
    assert not d.has_events([W])
    assert d.heartbeat_tasks([one, two], OWNER) == set()  # the task rows are gone
    assert d.complete_tasks([ok(one), ok(two)], OWNER) == set()  # reported once only


def test_a_result_event_carries_what_a_recorded_one_would(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    failed = TaskOutcome(task, W, "failed", error="boom", result_json=js({"b": 1, "a": [2]}))
    with held(d, [failed]) as batch:
        (event,) = batch.events[batch.instances[0].id]
    (recorded,) = running(d, "b", "t")
    d.complete_tasks(
        [TaskOutcome(recorded, W, "failed", error="boom", result_json=failed.result_json)], OWNER
    )
    (stored,) = events_of(d, "b")
    assert event.kind == stored.kind == "task_complete"
    assert (event.task_name, event.task_parameters) == (stored.task_name, stored.task_parameters)
    assert (event.task_status, event.task_error) == ("failed", "boom")
    assert event.task_result == stored.task_result == {"a": [2], "b": 1}
    assert event.task_attempts == stored.task_attempts == 1
    assert event.problem is None


def test_results_come_after_every_pending_event_so_a_full_fetch_leaves_them_for_later(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    for n in range(3):
        d.signal_workflow(W, "a", f"s{n}", None)
    with held(d, [ok(task, 7)], per=2) as batch:
        inst = batch.instances[0]
        assert [e.signal_name for e in batch.events[inst.id]] == ["s0", "s1"]
        assert batch.carried_tasks == {task}
        batch.commit([consuming(batch, inst.id, ["signal"])])
    assert d.heartbeat_tasks([task], OWNER) == set()
    assert [(e.kind, e.signal_name, e.task_result) for e in events_of(d, "a")] == [
        ("signal", "s2", None),
        ("task_complete", None, 7),
    ]


def test_results_after_a_fetch_that_was_not_full_are_all_delivered(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    ids = running(d, "a", "t", "t", "t")
    with held(d, [ok(i) for i in ids], per=2) as batch:
        (inst,) = batch.instances
        assert [e.kind for e in batch.events[inst.id]] == ["task_complete"] * 3


def test_nothing_is_recorded_if_the_batch_is_never_committed(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with held(d, [ok(task, 7)]) as batch:
        assert batch.carried_tasks == {task}
    assert not batch.results_stored
    assert not d.has_events([W])
    assert d.heartbeat_tasks([task], OWNER) == {task}  # running again, for its owner
    assert d.complete_tasks([ok(task, 7)], OWNER) == {task}  # which records it
    assert results_of(d, "a") == [("task_complete", 7)]


def test_an_exception_inside_the_batch_leaves_the_task_running(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with pytest.raises(RuntimeError), held(d, [ok(task, 3)]):
        raise RuntimeError("callback blew up")
    assert d.heartbeat_tasks([task], OWNER) == {task}
    assert results_of(d, "a") == []


def test_an_aborted_batch_leaves_the_task_running(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with held(d, [ok(task, 3)]) as batch:
        batch.abort()
        with pytest.raises(TransientDatabaseError):
            batch.commit(completing(batch))
    assert not batch.results_stored
    assert d.heartbeat_tasks([task], OWNER) == {task}
    info = d.get_workflow_instance(W, "a")
    assert info is not None and info.is_running


def test_a_commit_completes_the_instance(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    with held(d, [ok(task, 7)]) as batch:
        assert batch.commit(completing(batch))[0].result == "done"
    info = d.get_workflow_instance(W, "a")
    assert info is not None and info.status is WorkflowStatus.COMPLETED
    assert d.complete_tasks([ok(task, 7)], OWNER) == set()


def test_a_result_the_decision_did_not_consume_is_stored_as_a_pending_event(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    d.signal_workflow(W, "a", "poke", None)
    with held(d, [ok(task, 5)]) as batch:
        batch.commit([consuming(batch, batch.instances[0].id, ["signal"])])
    assert d.heartbeat_tasks([task], OWNER) == set()
    assert results_of(d, "a") == [("task_complete", 5)]


def test_a_split_stores_the_results_of_the_instances_it_lets_go_and_keeps(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (ta,) = running(d, "a", "t")
    (tb,) = running(d, "b", "t")
    (tc,) = running(d, "c", "t")
    with held(d, [ok(ta, 1), ok(tb, 2), ok(tc, 3)]) as batch:
        a, b = instance_of(batch, "a"), instance_of(batch, "b")
        first_b = batch.events[b.id][0].id
        _, kept = batch.split([consuming(batch, a.id, ["task_complete"])], b.id)
        assert kept and [i.id for i in batch.instances] == [b.id]
        assert batch.results_stored
        assert results_of(d, "c") == [("task_complete", 3)]  # let go, with its result
        with claim(d) as other:
            assert [i.instance_name for i in other.instances] == ["c"]
        assert [e.id for e in batch.events[b.id]] == [first_b]
        batch.commit(continuing(batch))  # b consumes its result, stored by the split
    assert results_of(d, "b") == []
    assert results_of(d, "a") == []
    assert d.heartbeat_tasks([ta, tb, tc], OWNER) == set()


def test_an_instance_held_elsewhere_is_left_out_and_its_result_recorded_for_its_holder(
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
            assert batch.carried_tasks == {mine, theirs}
            batch.commit(completing(batch))
    assert d.heartbeat_tasks([theirs], OWNER) == set()
    assert d.complete_tasks([ok(theirs, 3)], OWNER) == set()  # reported once only
    assert results_of(d, "b") == [("cancel", None), ("task_complete", 3)]


def test_a_batch_without_instances_records_its_results_with_an_empty_commit(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    (task,) = running(d, "b", "v", workflow="other")
    outcome = TaskOutcome(task, "other", "success", result_json=js(9))
    with held(d, [outcome]) as batch:  # a workflow not named
        assert batch.instances == [] and batch.carried_tasks == {task}
    assert d.heartbeat_tasks([task], OWNER) == {task}  # not committed: nothing recorded
    with held(d, [outcome]) as batch:
        batch.commit([])
    assert d.heartbeat_tasks([task], OWNER) == set()
    assert results_of(d, "b", "other") == [("task_complete", 9)]


def test_tasks_of_other_owners_or_gone_are_not_carried(contract_driver: Driver) -> None:
    d = contract_driver
    (gone,) = running(d, "a", "t")
    d.kill_workflow(W, "a", "killed")
    (foreign,) = running(d, "c", "t")
    with held(d, [ok(gone), ok(foreign)], owner="intruder") as batch:
        assert batch.instances == [] and batch.carried_tasks == frozenset()
        batch.commit([])
    assert d.heartbeat_tasks([foreign], OWNER) == {foreign}  # not the intruder's to report
    assert results_of(d, "c") == []


def test_an_outcome_asking_for_a_retry_is_refused(contract_driver: Driver) -> None:
    d = contract_driver
    (task,) = running(d, "a", "t")
    retry = TaskOutcome(task, W, "failed", error="boom", retry=True)
    with pytest.raises(CerealError, match="retry"), held(d, [retry]):
        pass
    assert d.heartbeat_tasks([task], OWNER) == {task}


def test_a_result_the_database_refuses_raises_and_holds_nothing(
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


def test_only_results_of_instances_not_in_the_batch_wake_their_handlers(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    (mine,) = running(d, "a", "t")
    (unconsumed,) = running(d, "b", "t")
    (theirs,) = running(d, "c", "v", workflow="other")
    (later,) = running(d, "d", "t")
    d.signal_workflow(W, "b", "poke", None)
    with listening(twin_driver) as got:
        outcomes = [ok(mine), ok(unconsumed), TaskOutcome(theirs, "other", "success")]
        with held(d, outcomes) as batch:
            a, b = instance_of(batch, "a"), instance_of(batch, "b")
            batch.commit(
                [completing(batch)[batch.instances.index(a)], consuming(batch, b.id, ["signal"])]
            )
        assert results_of(d, "b") == [("task_complete", None)]  # stored, silently
        wait_for(lambda: EventsPending("other") in got, what="the other workflow woken")
        # Recording a result the usual way wakes its workflow; wakeups arrive in order.
        d.complete_tasks([ok(later)], OWNER)
        wait_for(lambda: EventsPending(W) in got, what="the usual wakeup")
        assert got.count(EventsPending(W)) == 1
