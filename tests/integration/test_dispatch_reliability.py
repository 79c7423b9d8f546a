"""The workflow-event dispatcher under hostile callbacks, on PostgreSQL: a callback raising a
BaseException fails only its instance, ``stop(timeout)`` abandons a hung callback and releases
its instance at once, and a slow callback does not hold up the instances claimed with it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from cereal import WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.driver import StepOutcome
from tests.helpers.claims import (
    check_a_given_up_result_is_reported_lost_not_put_back,
    check_a_task_claimed_unseen_runs_once_as_its_first_attempt,
)
from tests.helpers.dispatch import (
    BASE_EXCEPTIONS,
    WF,
    MakeManager,
    check_an_event_written_while_its_instance_is_held_runs_after_the_commit,
    check_base_exception_fails_only_its_instance,
    check_slow_callback_does_not_hold_up_batch_mates,
    check_stop_abandons_a_hung_callback,
)
from tests.helpers.waiting import wait_for


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda t: t.__name__)
def test_callback_raising_base_exception_fails_its_instance_and_handlers_survive(
    make_manager: MakeManager, exc_type: type[BaseException]
) -> None:
    check_base_exception_fails_only_its_instance(make_manager, exc_type)


@pytest.mark.parametrize("close_driver", [False, True])
def test_stop_with_timeout_releases_a_hung_callbacks_instance_and_commits_nothing(
    make_manager: MakeManager, close_driver: bool
) -> None:
    check_stop_abandons_a_hung_callback(make_manager, close_driver=close_driver)


def test_slow_callback_does_not_hold_up_instances_claimed_with_it(
    make_manager: MakeManager,
) -> None:
    check_slow_callback_does_not_hold_up_batch_mates(make_manager)


def test_split_never_loses_a_kill_waiting_on_the_slow_instance(
    driver: PostgresDriver, schema: str
) -> None:
    for name in ("a", "b"):
        driver.enqueue_workflow(WF, name, None)
    with driver.claim_events([WF], 10, 10) as batch:
        slow = next(i for i in batch.instances if i.instance_name == "b")
        killer = threading.Thread(target=driver.fail_instance, args=(slow.id, "killed"))
        killer.start()
        wait_for(lambda: tuple_lock_waiters(driver, schema), what="the kill waiting on the row")
        # Whoever locks the row first after the commit wins: this batch again (the kill then
        # waits for the decision) or the kill (the decision is then dropped).
        finished, kept = batch.split([], keep=slow.id)
        assert finished == []
        if kept:
            assert killer.is_alive()
            outcome = StepOutcome(
                instance=slow,
                consumed=[e.id for e in batch.events[slow.id]],
                payload_json="1",
                status=WorkflowStatus.RUNNING,
            )
            batch.commit([outcome])
    killer.join(10)
    info = driver.get_workflow_instance(WF, "b")
    assert info is not None and info.status is WorkflowStatus.FAILED and info.error == "killed"


def test_split_lets_go_of_the_slow_instance_when_its_events_are_gone(
    driver: PostgresDriver,
) -> None:
    for name in ("a", "b"):
        driver.enqueue_workflow(WF, name, None)
    with driver.claim_events([WF], 10, 10) as batch:
        slow = next(i for i in batch.instances if i.instance_name == "b")
        with driver.connection() as conn:  # what a handler elsewhere would have consumed
            conn.execute("DELETE FROM workflow_events WHERE instance_id = %s", (slow.id,))
        assert batch.split([], keep=slow.id) == ([], False)  # its decision must be dropped


def test_split_lets_go_when_another_session_handled_the_events_just_before_the_relock(
    driver: PostgresDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The relock statement is slowed between taking its snapshot and locking the row, so that
    # another session can lock the instance, consume its event and commit in that gap. The
    # relock must see that commit: keeping the instance would write its decision (and its
    # tasks) a second time.
    statements = driver._q  # fault injection into one statement
    original = statements["relock_instance"]
    slowed = original.replace(
        "WHERE i.id = %(id)s", "WHERE i.id = %(id)s AND (SELECT pg_sleep(0.5)) IS NOT NULL"
    )
    assert slowed != original
    monkeypatch.setitem(statements, "relock_instance", slowed)
    for name in ("a", "b"):
        driver.enqueue_workflow(WF, name, None)
    handled = threading.Event()

    def handle_elsewhere() -> None:
        while not handled.is_set():
            with driver.claim_events([WF], 10, 10) as other:
                mine = [i for i in other.instances if i.instance_name == "b"]
                if mine:
                    other.commit([running_outcome(mine[0], other.events[mine[0].id], '"other"')])
                    handled.set()
            handled.wait(0.005)

    with driver.claim_events([WF], 10, 10) as batch:
        slow = next(i for i in batch.instances if i.instance_name == "b")
        elsewhere = threading.Thread(target=handle_elsewhere)
        elsewhere.start()
        finished, kept = batch.split([], keep=slow.id)
        assert handled.is_set()
        assert (finished, kept) == ([], False)
    elsewhere.join(10)
    info = driver.get_workflow_instance(WF, "b")
    assert info is not None and info.payload == "other"


def running_outcome(instance: Any, events: Sequence[Any], payload_json: str) -> StepOutcome:
    """A decision that consumes ``events`` and stores ``payload_json``."""
    return StepOutcome(
        instance=instance,
        consumed=[e.id for e in events],
        payload_json=payload_json,
        status=WorkflowStatus.RUNNING,
    )


def tuple_lock_waiters(driver: PostgresDriver, schema: str) -> int:
    """Sessions queued for a row of this schema (the first waiter holds the tuple lock)."""
    with driver.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE l.locktype = 'tuple' AND n.nspname = %s",
            (schema,),
        ).fetchone()
    return 0 if row is None else int(row[0])


@pytest.mark.parametrize("where", ["workflow commit", "task claimer"])
def test_a_task_claimed_by_a_commit_whose_answer_was_lost_runs_once(
    make_manager: MakeManager, where: str
) -> None:
    check_a_task_claimed_unseen_runs_once_as_its_first_attempt(make_manager, where)


def test_a_task_whose_result_was_given_up_is_reported_lost_not_put_back(
    make_manager: MakeManager,
) -> None:
    check_a_given_up_result_is_reported_lost_not_put_back(make_manager)


@pytest.mark.parametrize("hold_in", ["start", "task"])
def test_an_event_written_while_its_instance_is_held_runs_right_after_the_commit(
    make_manager: MakeManager, hold_in: str
) -> None:
    check_an_event_written_while_its_instance_is_held_runs_after_the_commit(make_manager, hold_in)
