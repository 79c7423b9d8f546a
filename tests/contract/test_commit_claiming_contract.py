"""The storage contract of ``EventBatch.commit_claiming``, checked on every driver.

A commit can claim, for the process committing it, the tasks it inserts that this process can
start at once. A task claimed so is stored exactly like a first attempt claimed by
``claim_tasks``: heartbeats, results, retries, hand-backs and the reaper treat it the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from cereal import RetryPolicy
from cereal.driver import ClaimedTask, Driver, StepOutcome, TaskClaim, TaskOutcome
from cereal.types import WorkflowStatus
from cereal.workflow import PendingTask
from tests.contract.test_driver_contract import (
    OWNER,
    W,
    claim,
    events_of,
    instance_of,
    js,
    require,
    start,
    with_tasks,
)
from tests.contract.test_retries_contract import THREE, claim_one, failed


def step_claiming(
    d: Driver,
    name: str,
    tasks: Sequence[PendingTask],
    limits: Mapping[str, int],
    retries: Mapping[str, RetryPolicy] | None = None,
) -> list[ClaimedTask]:
    """Commit the instance's pending events as a ``continue_with`` enqueuing ``tasks``,
    claiming what ``limits`` allows; return the tasks claimed."""
    with claim(d) as batch:
        require(batch, "commit_claiming")
        inst = instance_of(batch, name)
        outcome = StepOutcome(
            instance=inst,
            consumed=[e.id for e in batch.events[inst.id]],
            payload_json=js(None),
            status=WorkflowStatus.RUNNING,
            enqueued_tasks=inst.enqueued_tasks + len(tasks),
            completed_tasks=inst.completed_tasks,
            tasks=list(tasks),
        )
        finished, claimed = batch.commit_claiming(
            [outcome], TaskClaim(OWNER, limits, retries or {})
        )
    assert finished == []
    return claimed


def task(name: str, n: int, delay: float = 0.0) -> PendingTask:
    return PendingTask(name, js(n), delay=delay)


def test_a_commit_claims_due_tasks_up_to_each_limit_in_order(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    claimed = step_claiming(
        d,
        "a",
        [task("t", 1), task("t", 2, delay=3600.0), task("t", 3), task("t", 4), task("u", 5)],
        {"t": 2},
    )
    assert [(c.task_name, c.parameters) for c in claimed] == [("t", 1), ("t", 3)]
    assert {(c.workflow_name, c.instance_name, c.attempt, c.max_attempts) for c in claimed} == {
        (W, "a", 1, 1)
    }
    # Claimed for the owner: heartbeats see them, nobody else can claim them.
    assert d.heartbeat_tasks([c.id for c in claimed], OWNER) == {c.id for c in claimed}
    rest, due_in = d.claim_tasks({"t": 10, "u": 10}, "worker-2")
    assert sorted((t.task_name, t.parameters) for t in rest) == [("t", 4), ("u", 5)]
    assert due_in is not None and due_in > 3000  # the delayed one stays queued


def test_an_older_due_task_of_the_name_goes_first(contract_driver: Driver) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")  # queued and due
    start(d, "b")
    claimed = step_claiming(d, "b", [task("t", 1), task("u", 2)], {"t": 1, "u": 1})
    assert [(c.task_name, c.parameters) for c in claimed] == [("u", 2)]
    rest, _ = d.claim_tasks({"t": 10}, "worker-2")
    assert sorted(t.instance_name for t in rest) == ["a", "b"]


def test_without_limits_every_task_is_queued(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    assert step_claiming(d, "a", [task("t", 1)], {"t": 0, "u": 3}) == []
    rest, _ = d.claim_tasks({"t": 10}, "worker-2")
    assert [t.parameters for t in rest] == [1]


def test_a_claimed_task_stores_its_retry_policy_like_a_claim(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    (first,) = step_claiming(d, "a", [task("t", 1)], {"t": 1}, {"t": THREE})
    assert (first.attempt, first.max_attempts) == (1, 3)
    assert d.complete_tasks([failed(first.id)], OWNER) == {first.id}
    assert events_of(d, "a") == []  # the next attempt is queued instead
    tasks, due_in = d.claim_tasks({"t": 1}, OWNER, {"t": THREE})
    assert tasks == [] and due_in is not None and 0.0 < due_in <= 0.3
    second = claim_one(d)
    assert (second.id, second.attempt) == (first.id, 2)


def test_a_claimed_task_reports_releases_and_is_reaped_like_a_claim(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    start(d, "a")
    done, back, silent = step_claiming(d, "a", [task("t", 1), task("t", 2), task("t", 3)], {"t": 3})
    assert d.complete_tasks([TaskOutcome(done.id, W, "success", result_json=js(7))], OWNER) == {
        done.id
    }
    d.release_tasks([back.id], OWNER)
    ((again,), _) = d.claim_tasks({"t": 1}, "worker-2")
    assert (again.id, again.attempt) == (back.id, 1)
    d.heartbeat_tasks([again.id], "worker-2")
    assert d.reap_lost_tasks(3600, "lost") == 0
    # silent's heartbeat is 1.5 s old, again's fresh: a second apart, so that a slow machine
    # between the heartbeat and the reap cannot make again look lost too.
    time.sleep(1.5)
    d.heartbeat_tasks([again.id], "worker-2")
    assert d.reap_lost_tasks(1.0, "no heartbeat") == 1
    events = events_of(d, "a")
    assert [(e.task_status, e.task_result, e.task_attempts) for e in events] == [
        ("success", 7, 1),
        ("lost", None, 1),
    ]
    assert d.complete_tasks([TaskOutcome(silent.id, W, "success")], OWNER) == set()
