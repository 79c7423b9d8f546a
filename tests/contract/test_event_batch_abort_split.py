"""The event batch's ``abort`` and ``split``, on every driver: abort releases the instances at
once and writes nothing more; split commits the finished instances, releases the unstarted ones
and keeps holding one."""

from __future__ import annotations

import threading

import pytest

from cereal.driver import Driver, EventBatch, StepOutcome
from cereal.errors import TransientDatabaseError
from cereal.types import WorkflowStatus
from tests.contract.test_driver_contract import W, claim, instance_of, start
from tests.helpers.waiting import wait_for


def going_on(batch: EventBatch, name: str) -> StepOutcome:
    inst = instance_of(batch, name)
    return StepOutcome(
        instance=inst,
        consumed=[e.id for e in batch.events[inst.id]],
        payload_json='"handled"',
        status=WorkflowStatus.RUNNING,
    )


def pending(d: Driver) -> list[str]:
    with claim(d) as batch:
        return sorted(i.instance_name for i in batch.instances)


def test_abort_from_another_thread_releases_the_instances_and_refuses_the_commit(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    for name in ("a", "b"):
        start(d, name)
    with claim(d) as batch:
        assert pending(twin_driver) == []
        aborter = threading.Thread(target=batch.abort)
        aborter.start()
        aborter.join(10)
        # PostgreSQL releases the locks when the closed session ends, a moment later.
        wait_for(lambda: pending(twin_driver) == ["a", "b"], timeout=2, what="the release")
        outcome = going_on(batch, "a")
        with pytest.raises(TransientDatabaseError):
            batch.commit([outcome])
        batch.abort()  # harmless twice
    assert pending(twin_driver) == ["a", "b"]  # nothing was written


def test_split_commits_the_done_releases_the_unstarted_and_keeps_one(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    for name in ("a", "b", "c"):
        start(d, name)
    with claim(d) as batch:
        done, slow = going_on(batch, "a"), going_on(batch, "b")
        finished, kept = batch.split([done], keep=slow.instance.id)
        assert (finished, kept) == ([], True)
        assert [i.instance_name for i in batch.instances] == ["b"]
        assert pending(twin_driver) == ["c"]  # a is done, b still held
        batch.commit([slow])
    assert pending(twin_driver) == ["c"]
    assert d.get_workflow_instance(W, "a").status is WorkflowStatus.RUNNING


def test_split_returns_the_runs_it_finished(contract_driver: Driver) -> None:
    d = contract_driver
    for name in ("a", "b"):
        start(d, name)
    with claim(d) as batch:
        inst = instance_of(batch, "a")
        done = StepOutcome(
            instance=inst, status=WorkflowStatus.COMPLETED, result_json="7", handled=1
        )
        finished, kept = batch.split([done], keep=instance_of(batch, "b").id)
        assert kept
        assert [(f.instance_name, f.status, f.result) for f in finished] == [
            ("a", WorkflowStatus.COMPLETED, 7)
        ]
