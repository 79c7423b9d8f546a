"""The storage contract of ``Driver.enqueue_and_hold``, checked on every driver.

It enqueues an instance as ``enqueue_workflow`` does, committed at once, and then holds it with
its start event as a claim would, with no wakeup: a running manager hands the batch to an
idle handler, which runs ``on_start`` without waiting for a notification and a claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cereal.driver import Driver, EventBatch, EventsPending, StepOutcome
from cereal.errors import SerializationError
from cereal.types import WorkflowStatus
from tests.contract.test_driver_contract import (
    W,
    claim,
    in_thread,
    js,
    listening,
    require,
    start,
)
from tests.helpers.waiting import wait_for


@contextmanager
def holding(d: Driver, name: str, params: str | None = None) -> Iterator[EventBatch | None]:
    require(d, "enqueue_and_hold")
    with d.enqueue_and_hold(W, name, params, trace_context="trace-1") as batch:
        yield batch


def continuing(batch: EventBatch) -> list[StepOutcome]:
    return [
        StepOutcome(
            instance=inst,
            consumed=[e.id for e in batch.events[inst.id]],
            payload_json=js("started"),
            status=WorkflowStatus.RUNNING,
        )
        for inst in batch.instances
    ]


def test_the_batch_holds_the_new_instance_with_its_start_event(contract_driver: Driver) -> None:
    d = contract_driver
    with holding(d, "a", js({"n": 1})) as batch:
        assert batch is not None
        (inst,) = batch.instances
        assert (inst.workflow_name, inst.instance_name, inst.parameters) == (W, "a", {"n": 1})
        assert inst.status is WorkflowStatus.STARTING and inst.trace_context == "trace-1"
        assert [e.kind for e in batch.events[inst.id]] == ["start"]
        with claim(d) as other:
            assert other.instances == []  # held: no claim takes it
        batch.commit(continuing(batch))
    info = d.get_workflow_instance(W, "a")
    assert info is not None and (info.status, info.payload) == (WorkflowStatus.RUNNING, "started")
    assert not d.has_events([W])


def test_the_instance_is_stored_before_the_batch_is_handed_out(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    with holding(d, "a") as batch:
        assert batch is not None
        info = twin_driver.get_workflow_instance(W, "a")
        assert info is not None and info.status is WorkflowStatus.STARTING
        assert start(twin_driver, "a") is False  # the pair is live
    # Left without a commit: the start event waits for the next claim.
    with claim(d) as again:
        (inst,) = again.instances
        assert [e.kind for e in again.events[inst.id]] == ["start"]


def test_a_live_pair_holds_nothing(contract_driver: Driver) -> None:
    d = contract_driver
    assert start(d, "a")
    with holding(d, "a") as batch:
        assert batch is None
    with claim(d) as other:
        (inst,) = other.instances
        assert len(other.events[inst.id]) == 1  # no second start event


def test_parameters_the_database_refuses_store_nothing(contract_driver: Driver) -> None:
    d = contract_driver
    with pytest.raises(SerializationError), holding(d, "a", '"\\u0000"'):
        pass
    assert d.get_workflow_instance(W, "a") is None
    assert not d.has_events([W])


def test_kill_waits_for_the_batch_holding_the_instance(contract_driver: Driver) -> None:
    d = contract_driver
    with holding(d, "a") as batch:
        assert batch is not None
        thread, out = in_thread(lambda: d.kill_workflow(W, "a", "killed"))
        thread.join(0.3)
        assert thread.is_alive()
        batch.commit(continuing(batch))
    thread.join(10)
    assert out == [True]


def test_no_wakeup_goes_out_for_the_held_instance(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    with listening(twin_driver) as got:
        with holding(d, "a") as batch:
            assert batch is not None
            batch.commit(continuing(batch))
        start(d, "later", workflow="other")  # a later wakeup: everything before it arrived
        wait_for(lambda: EventsPending("other") in got, what="the later wakeup")
        assert EventsPending(W) not in got
