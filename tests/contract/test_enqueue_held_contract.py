"""The storage contract of ``Driver.enqueue_held`` (eager start), checked on every driver.

``enqueue_held`` inserts an instance with its start event and holds it as a batch of one, as a
claim would: committing the batch stores the instance and its outcome together, and leaving
without a commit stores nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from cereal.driver import Driver, EventBatch, StepOutcome, TaskClaim
from cereal.errors import SerializationError
from cereal.types import WorkflowStatus
from cereal.workflow import PendingTask
from tests.contract.test_driver_contract import OWNER, W, claim, js, require, start


@contextmanager
def held(d: Driver, name: str, params: object = None) -> Iterator[EventBatch | None]:
    require(d, "enqueue_held")
    with d.enqueue_held(W, name, js(params), trace_context="trace-1") as batch:
        yield batch


def continuing(batch: EventBatch, tasks: Sequence[PendingTask] = ()) -> StepOutcome:
    (inst,) = batch.instances
    return StepOutcome(
        instance=inst,
        consumed=[e.id for e in batch.events[inst.id]],
        payload_json=js({"step": 1}),
        status=WorkflowStatus.RUNNING,
        enqueued_tasks=len(tasks),
        tasks=list(tasks),
    )


def test_the_held_batch_is_the_new_instance_with_its_start_event(
    contract_driver: Driver,
) -> None:
    with held(contract_driver, "a", {"n": 1}) as batch:
        assert batch is not None
        (inst,) = batch.instances
        assert (inst.workflow_name, inst.instance_name, inst.parameters) == (W, "a", {"n": 1})
        assert (inst.status, inst.payload, inst.enqueued_tasks) == (
            WorkflowStatus.STARTING,
            None,
            0,
        )
        assert inst.trace_context == "trace-1"
        assert [e.kind for e in batch.events[inst.id]] == ["start"]
        with claim(contract_driver) as other:
            assert other.instances == []  # held: no claim takes it
        batch.commit([continuing(batch)])


def test_a_commit_stores_the_instance_with_its_decision_and_tasks(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with held(d, "a") as batch:
        assert batch is not None
        assert batch.commit([continuing(batch, [PendingTask("t", js(1))])]) == []
    info = d.get_workflow_instance(W, "a")
    assert (
        info is not None and info.status is WorkflowStatus.RUNNING and info.payload == {"step": 1}
    )
    assert not d.has_events([W])  # the start event was consumed
    (task,), _ = d.claim_tasks({"t": 5}, OWNER)
    assert (task.instance_name, task.parameters) == ("a", 1)


def test_a_commit_can_claim_the_first_tasks(contract_driver: Driver) -> None:
    d = contract_driver
    with held(d, "a") as batch:
        assert batch is not None
        require(batch, "commit_claiming")
        finished, claimed = batch.commit_claiming(
            [continuing(batch, [PendingTask("t", js(1)), PendingTask("t", js(2))])],
            TaskClaim(OWNER, {"t": 1}, {}),
        )
    assert finished == []
    assert [(t.task_name, t.parameters, t.instance_name) for t in claimed] == [("t", 1, "a")]
    (queued,), _ = d.claim_tasks({"t": 5}, OWNER)
    assert queued.parameters == 2


def test_a_run_that_finishes_in_on_start_goes_straight_to_history(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with held(d, "a", 7) as batch:
        assert batch is not None
        (inst,) = batch.instances
        (info,) = batch.commit(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    status=WorkflowStatus.COMPLETED,
                    result_json=js("done"),
                )
            ]
        )
    assert (info.status, info.result, info.parameters) == (WorkflowStatus.COMPLETED, "done", 7)
    stored = d.get_workflow_instance(W, "a")
    assert stored is not None and stored.status is WorkflowStatus.COMPLETED
    assert start(d, "a")  # the pair is free again


def test_leaving_without_a_commit_stores_nothing(contract_driver: Driver) -> None:
    d = contract_driver
    with held(d, "a") as batch:
        assert batch is not None
    assert d.get_workflow_instance(W, "a") is None
    assert not d.has_events([W])
    assert start(d, "a")


def test_an_exception_in_the_hold_stores_nothing(contract_driver: Driver) -> None:
    d = contract_driver
    with pytest.raises(RuntimeError), held(d, "a") as batch:
        assert batch is not None
        raise RuntimeError("on_start crashed the process")
    assert d.get_workflow_instance(W, "a") is None
    assert not d.has_events([W])


def test_a_live_pair_yields_none_and_changes_nothing(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a", {"first": True})
    with held(d, "a", {"second": True}) as batch:
        assert batch is None
    info = d.get_workflow_instance(W, "a")
    assert info is not None and info.parameters == {"first": True}
    with claim(d) as batch:
        assert [e.kind for e in batch.events[batch.instances[0].id]] == ["start"]


def test_parameters_that_are_not_json_are_refused(contract_driver: Driver) -> None:
    require(contract_driver, "enqueue_held")
    with (
        pytest.raises(SerializationError),
        contract_driver.enqueue_held(W, "a", "{not json") as batch,
    ):
        pytest.fail(f"held {batch!r}")
    assert contract_driver.get_workflow_instance(W, "a") is None
