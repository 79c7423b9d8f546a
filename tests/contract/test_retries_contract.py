"""The storage contract of task retries, checked on every driver.

A claim stores the name's retry policy in the row; an outcome asking for a retry, or a
silent attempt found by the reaper, queues the row again as its next attempt while the
stored policy has attempts left, and only the last attempt becomes a ``task_complete`` event
carrying the attempts made.
"""

from __future__ import annotations

import time

from cereal import RetryPolicy
from cereal.driver import ClaimedTask, Driver, TaskOutcome
from tests.contract.test_driver_contract import (
    OWNER,
    W,
    events_of,
    finish,
    require,
    with_tasks,
)
from tests.helpers.waiting import wait_for

THREE = RetryPolicy(max_attempts=3, initial_delay=0.3, backoff=2.0, max_delay=10.0)


def failed(task_id: int, *, retry: bool = True) -> TaskOutcome:
    return TaskOutcome(task_id, W, "failed", error="RuntimeError: boom", retry=retry)


def claim_one(d: Driver, policy: RetryPolicy | None = THREE, owner: str = OWNER) -> ClaimedTask:
    """Wait for the one task named ``t`` to be due and claim it."""

    def claimed() -> list[ClaimedTask]:
        return d.claim_tasks({"t": 1}, owner, {"t": policy} if policy else None)[0]

    return wait_for(claimed, 10, "a due task")[0]


def test_a_first_claim_is_attempt_one_with_the_policys_max_attempts(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t", "u")
    tasks, _ = d.claim_tasks({"t": 1, "u": 1}, OWNER, {"t": THREE})
    by_name = {t.task_name: t for t in tasks}
    assert (by_name["t"].attempt, by_name["t"].max_attempts) == (1, 3)
    assert (by_name["u"].attempt, by_name["u"].max_attempts) == (1, 1)


def test_a_retry_requeues_the_row_as_the_next_attempt_after_the_delay(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")
    first = claim_one(d)
    assert d.complete_tasks([failed(first.id)], OWNER) == {first.id}
    assert events_of(d, "a") == []  # no result reaches the workflow yet
    tasks, due_in = d.claim_tasks({"t": 1}, OWNER, {"t": THREE})
    assert tasks == []
    assert due_in is not None and 0.0 < due_in <= 0.3
    second = claim_one(d)
    assert (second.id, second.attempt) == (first.id, 2)


def test_delays_grow_by_the_backoff_up_to_max_delay(contract_driver: Driver) -> None:
    d = contract_driver
    policy = RetryPolicy(max_attempts=4, initial_delay=0.2, backoff=3.0, max_delay=1.0)
    with_tasks(d, "a", "t")
    seen = []
    for _ in range(3):
        task = claim_one(d, policy)
        d.complete_tasks([failed(task.id)], OWNER)
        _, due_in = d.claim_tasks({"t": 1}, OWNER, {"t": policy})
        assert due_in is not None
        seen.append(due_in)
    # 0.2, then 0.6, then min(1.8, 1.0): each measured just after the retry was written.
    for measured, expected in zip(seen, [0.2, 0.6, 1.0], strict=True):
        assert expected - 0.15 <= measured <= expected


def test_the_last_attempt_records_its_result_with_the_attempts_made(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    policy = RetryPolicy(max_attempts=2, initial_delay=0.1)
    with_tasks(d, "a", "t")
    first = claim_one(d, policy)
    d.complete_tasks([failed(first.id)], OWNER)
    second = claim_one(d, policy)
    assert d.complete_tasks([failed(second.id)], OWNER) == {second.id}
    assert [(e.kind, e.task_status, e.task_error, e.task_attempts) for e in events_of(d, "a")] == [
        ("task_complete", "failed", "RuntimeError: boom", 2)
    ]


def test_an_outcome_without_retry_is_recorded_even_with_attempts_left(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t", "t")
    one, two = d.claim_tasks({"t": 2}, OWNER, {"t": THREE})[0]
    d.complete_tasks(
        [failed(one.id, retry=False), TaskOutcome(two.id, W, "success", result_json="7")], OWNER
    )
    assert sorted((e.task_status, e.task_result, e.task_attempts) for e in events_of(d, "a")) == [
        ("failed", None, 1),
        ("success", 7, 1),
    ]


def test_a_retry_without_a_stored_policy_is_recorded(contract_driver: Driver) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")
    (task,), _ = d.claim_tasks({"t": 1}, OWNER)
    d.complete_tasks([failed(task.id)], OWNER)
    assert [(e.task_status, e.task_attempts) for e in events_of(d, "a")] == [("failed", 1)]


def test_a_retry_in_a_mixed_batch_leaves_the_other_outcomes_recorded(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t", "t")
    one, two = d.claim_tasks({"t": 2}, OWNER, {"t": THREE})[0]
    live = d.complete_tasks([failed(one.id), TaskOutcome(two.id, W, "success")], OWNER)
    assert live == {one.id, two.id}
    assert [(e.task_status, e.task_attempts) for e in events_of(d, "a")] == [("success", 1)]
    again = claim_one(d)
    assert (again.id, again.attempt) == (one.id, 2)


def test_a_retry_from_another_owner_is_discarded(contract_driver: Driver) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")
    task = claim_one(d)
    assert d.complete_tasks([failed(task.id)], "intruder") == set()
    assert d.heartbeat_tasks([task.id], OWNER) == {task.id}


def test_a_pending_retry_is_dropped_when_the_workflow_finishes(contract_driver: Driver) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")
    task = claim_one(d)
    d.complete_tasks([failed(task.id)], OWNER)
    finish(d, "a", result="done")
    time.sleep(0.4)
    assert d.claim_tasks({"t": 1}, OWNER, {"t": THREE}) == ([], None)


def test_the_reaper_requeues_a_silent_attempt_with_attempts_left(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    policy = RetryPolicy(max_attempts=2, initial_delay=0.1)
    with_tasks(d, "a", "t")
    first = claim_one(d, policy)
    time.sleep(0.2)
    assert d.reap_lost_tasks(0.1, "no heartbeat") == 1
    assert events_of(d, "a") == []
    assert d.complete_tasks([TaskOutcome(first.id, W, "success")], OWNER) == set()
    second = claim_one(d, policy, owner="worker-2")
    assert (second.id, second.attempt) == (first.id, 2)
    time.sleep(0.2)
    assert d.reap_lost_tasks(0.1, "no heartbeat") == 1
    assert [(e.task_status, e.task_error, e.task_attempts) for e in events_of(d, "a")] == [
        ("lost", "no heartbeat", 2)
    ]
    assert d.claim_tasks({"t": 1}, OWNER, {"t": policy}) == ([], None)


def test_a_long_run_of_attempts_keeps_the_delay_at_max_delay(contract_driver: Driver) -> None:
    d = contract_driver
    # backoff ** 40 is far beyond a float: the delay must stay max_delay, not overflow.
    policy = RetryPolicy(max_attempts=42, initial_delay=1e-9, backoff=3e9, max_delay=0.001)
    with_tasks(d, "a", "t")
    for attempt in range(1, 42):
        task = claim_one(d, policy)
        assert task.attempt == attempt
        d.complete_tasks([failed(task.id)], OWNER)
    last = claim_one(d, policy)
    d.complete_tasks([failed(last.id)], OWNER)
    assert [(e.task_status, e.task_attempts) for e in events_of(d, "a")] == [("failed", 42)]


def test_operator_views_show_which_attempt_a_task_is_at(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "list_tasks")
    require(d, "instance_timeline")
    with_tasks(d, "a", "t")
    [queued] = d.list_tasks()
    assert (queued.state, queued.attempt, queued.max_attempts) == ("queued", 1, 1)
    first = claim_one(d)
    [running] = d.list_tasks()
    assert (running.state, running.attempt, running.max_attempts) == ("running", 1, 3)
    d.complete_tasks([failed(first.id)], OWNER)
    [retry] = d.list_tasks()
    assert (retry.state, retry.attempt, retry.max_attempts) == ("queued", 2, 3)
    [shown] = d.instance_timeline(W, "a", 10).tasks
    assert (shown.attempt, shown.max_attempts) == (2, 3)


def test_a_policy_without_delay_makes_the_next_attempt_due_at_once(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    at_once = RetryPolicy(max_attempts=2, initial_delay=0)
    with_tasks(d, "a", "t")
    first = claim_one(d, at_once)
    d.complete_tasks([failed(first.id)], OWNER)
    tasks, _ = d.claim_tasks({"t": 1}, OWNER, {"t": at_once})
    assert [(t.id, t.attempt) for t in tasks] == [(first.id, 2)]
