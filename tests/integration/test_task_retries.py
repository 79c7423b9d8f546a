"""Task retries on PostgreSQL: attempts, backoff on the database clock, timeouts, non-JSON
results, finished workflows, lost attempts after SIGKILL, and retries that outlive the
process that scheduled them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cereal import (
    Decision,
    Manager,
    RetryPolicy,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
    WorkflowStatus,
)
from cereal.backends.postgres import PostgresDriver
from cereal.errors import CerealError
from cereal.patterns import register_single_task_workflow
from tests.contract.test_driver_contract import OWNER, with_tasks
from tests.helpers.processes import program
from tests.helpers.timings import LOST_TASK_TIMEOUT
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]
FAST = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff=2.0, max_delay=5.0)


class OneTask:
    """Enqueues one ``parameters["task"]`` task (and ``parameters.get("also")`` if given);
    completes with the first result of a task named ``parameters["complete_on"]`` (default:
    the first task), as a dict."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        instance.enqueue_task(instance.parameters["task"], instance.parameters.get("args"))
        if "also" in instance.parameters:
            instance.enqueue_task(instance.parameters["also"])
        return instance.continue_with()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        wanted = instance.parameters.get("complete_on", instance.parameters["task"])
        if event.task_name != wanted:
            return instance.continue_with()
        r = event.result
        return instance.complete(
            {"status": r.status.value, "value": r.value, "error": r.error, "attempts": r.attempts}
        )

    def on_cancel(self, instance: WorkflowInstance, event: Any) -> Decision:
        return instance.fail("cancelled")


class Attempts:
    """A task executor that records every attempt and fails the first ``failures`` of them."""

    def __init__(
        self,
        failures: int,
        value: Any = "ok",
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.failures = failures
        self.value = value
        self._now = now
        self.seen: list[int] = []
        self.started: list[datetime] = []
        self._lock = threading.Lock()

    def __call__(self, task: Task) -> Any:
        with self._lock:
            self.seen.append(task.attempt)
            if self._now is not None:
                self.started.append(self._now())
        if task.attempt <= self.failures:
            raise RuntimeError(f"attempt {task.attempt} failed")
        return self.value


def query(dsn: str, schema: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(text, params).fetchall()


def queued_retries(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    """``(attempt, seconds until due)`` of every queued retry (attempt > 1)."""
    return query(
        dsn,
        schema,
        "SELECT attempt, extract(epoch FROM start_after - now())::float8 FROM tasks"
        " WHERE state = 'queued' AND attempt > 1",
    )


def started(make_manager: MakeManager, task: Attempts | None, **options: Any) -> Manager:
    manager = make_manager()
    manager.register_workflow_executor("one", OneTask())
    if task is not None:
        manager.register_task_executor("flaky", task, **options)
    manager.start()
    return manager


def run(manager: Manager, instance: str = "i", timeout: float = 20, **params: Any) -> Any:
    manager.enqueue_workflow("one", instance, {"task": "flaky", **params})
    info = manager.await_workflow("one", instance, timeout=timeout)
    assert info.status is WorkflowStatus.COMPLETED, info
    return info.result


def test_a_success_on_attempt_two_gives_its_value_and_two_attempts(
    make_manager: MakeManager,
) -> None:
    task = Attempts(failures=1, value={"n": 1})
    manager = started(make_manager, task, retry=FAST)
    assert run(manager) == {"status": "success", "value": {"n": 1}, "error": None, "attempts": 2}
    assert task.seen == [1, 2]


def test_the_last_attempts_error_reaches_the_workflow_once_attempts_run_out(
    make_manager: MakeManager,
) -> None:
    task = Attempts(failures=99)
    manager = started(make_manager, task, retry=FAST)
    assert run(manager) == {
        "status": "failed",
        "value": None,
        "error": "RuntimeError: attempt 3 failed",
        "attempts": 3,
    }
    assert task.seen == [1, 2, 3]


def test_without_a_policy_a_failure_is_reported_at_once(make_manager: MakeManager) -> None:
    task = Attempts(failures=1)
    manager = started(make_manager, task)
    result = run(manager)
    assert (result["status"], result["attempts"]) == ("failed", 1)
    assert task.seen == [1]


def test_delays_between_attempts_follow_the_backoff_on_the_database_clock(
    make_manager: MakeManager,
) -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=0.5, backoff=2.0, max_delay=1.5)
    manager = make_manager()
    task = Attempts(failures=99, now=manager.driver.now)
    manager.register_workflow_executor("one", OneTask())
    manager.register_task_executor("flaky", task, retry=policy)
    manager.start()
    assert run(manager, timeout=30)["attempts"] == 4
    gaps = [(b - a).total_seconds() for a, b in zip(task.started, task.started[1:], strict=False)]
    # 0.5, 1.0, then min(2.0, 1.5); an attempt never starts early, and not much later.
    for gap, delay in zip(gaps, [0.5, 1.0, 1.5], strict=True):
        assert delay <= gap <= delay + 2.0, gaps


def test_a_timed_out_attempt_is_retried(make_manager: MakeManager) -> None:
    seen: list[int] = []

    def slow_once(task: Task) -> str:
        seen.append(task.attempt)
        if task.attempt == 1:
            task.cancelled.wait(10)
            return "too late"
        return "in time"

    manager = make_manager()
    manager.register_workflow_executor("one", OneTask())
    manager.register_task_executor("flaky", slow_once, timeout=0.3, retry=FAST)
    manager.start()
    assert run(manager) == {"status": "success", "value": "in time", "error": None, "attempts": 2}
    assert seen == [1, 2]


def test_a_non_json_return_value_is_not_retried(make_manager: MakeManager) -> None:
    task = Attempts(failures=0, value=object())
    manager = started(make_manager, task, retry=FAST)
    result = run(manager)
    assert (result["status"], result["attempts"]) == ("failed", 1)
    assert "JSON" in result["error"] or "json" in result["error"]
    time.sleep(2 * FAST.initial_delay)
    assert task.seen == [1]


@pytest.mark.parametrize("ending", ["kill", "complete"])
def test_a_pending_retry_is_dropped_when_its_workflow_finishes(
    make_manager: MakeManager, pg_dsn: str, schema: str, ending: str
) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=1.5)
    task = Attempts(failures=99)
    failed_once = threading.Event()

    def flaky(t: Task) -> Any:
        failed_once.set()
        return task(t)

    def quick(t: Task) -> str:
        failed_once.wait(10)  # finish the workflow only once the retry is pending
        wait_for(lambda: queued_retries(pg_dsn, schema), 10, "the queued retry")
        return "done"

    manager = make_manager()
    manager.register_workflow_executor("one", OneTask())
    manager.register_task_executor("flaky", flaky, retry=policy)
    manager.register_task_executor("quick", quick)
    manager.start()
    if ending == "kill":
        manager.enqueue_workflow("one", "i", {"task": "flaky"})
        wait_for(lambda: queued_retries(pg_dsn, schema), 10, "the queued retry")
        manager.kill_workflow("one", "i")
        status = WorkflowStatus.FAILED
    else:
        manager.enqueue_workflow(
            "one", "i", {"task": "flaky", "also": "quick", "complete_on": "quick"}
        )
        status = WorkflowStatus.COMPLETED
    assert manager.await_workflow("one", "i", timeout=15).status is status
    assert query(pg_dsn, schema, "SELECT count(*) FROM tasks") == [(0,)]
    time.sleep(policy.initial_delay + 1.0)  # past the moment the retry was due
    assert task.seen == [1]


def test_register_task_executor_rejects_a_retry_that_is_not_a_policy(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    with pytest.raises(CerealError, match="retry must be a RetryPolicy"):
        manager.register_task_executor("flaky", print, retry=3)  # type: ignore[arg-type]


def test_single_task_workflows_retry_with_the_policy_given(make_manager: MakeManager) -> None:
    task = Attempts(failures=2, value=42)
    manager = make_manager()
    register_single_task_workflow(manager, "resize", task, retry=FAST)
    manager.start()
    manager.enqueue_workflow("resize", "i", None)
    info = manager.await_workflow("resize", "i", timeout=20)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 42)
    assert task.seen == [1, 2, 3]


@pytest.mark.timeout(90)
def test_a_lost_attempt_is_retried_and_never_by_a_manager_without_the_executor(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    # This manager handles the workflow and reaps lost tasks, but cannot run "flaky".
    handler = started(make_manager, None)
    with program("retrier", pg_dsn, schema, "block", "0.5", log_file=tmp_path / "c.log") as child:
        child.expect("ready")
        handler.enqueue_workflow("one", "i", {"task": "flaky"})
        task_id, attempt = child.expect("attempt")
        assert attempt == "1"
        child.kill()
        killed = time.monotonic()

    [(attempt_no, due_in)] = wait_for(
        lambda: queued_retries(pg_dsn, schema), LOST_TASK_TIMEOUT + 10, "the lost attempt's retry"
    )
    assert time.monotonic() - killed >= LOST_TASK_TIMEOUT - 1.0
    assert attempt_no == 2 and due_in <= 0.5
    # Due, but nobody here may run it: it stays queued and the workflow hears nothing.
    time.sleep(1.5)
    assert query(pg_dsn, schema, "SELECT id, attempt, state FROM tasks") == [
        (int(task_id), 2, "queued")
    ]
    info = handler.get_workflow_instance("one", "i")
    assert info is not None and info.is_running

    task = Attempts(failures=0, value="second try")
    worker = make_manager()
    worker.register_task_executor("flaky", task, retry=FAST)
    worker.start()
    info = handler.await_workflow("one", "i", timeout=20)
    assert info.result == {"status": "success", "value": "second try", "error": None, "attempts": 2}
    assert task.seen == [2]


@pytest.mark.timeout(90)
def test_a_retry_survives_the_worker_that_scheduled_it_being_killed(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    handler = started(make_manager, None)
    with program("retrier", pg_dsn, schema, "fail", "3", log_file=tmp_path / "c.log") as child:
        child.expect("ready")
        handler.enqueue_workflow("one", "i", {"task": "flaky"})
        _, attempt = child.expect("attempt")
        assert attempt == "1"
        # The failed attempt's retry is a row, due in 3 s; then its scheduler dies.
        [(attempt_no, _)] = wait_for(lambda: queued_retries(pg_dsn, schema), 10, "the retry row")
        assert attempt_no == 2
        child.kill()

    task = Attempts(failures=0, value="after the crash")
    worker = make_manager()
    worker.register_task_executor("flaky", task, retry=FAST)
    worker.start()
    info = handler.await_workflow("one", "i", timeout=20)
    assert info.result == {
        "status": "success",
        "value": "after the crash",
        "error": None,
        "attempts": 2,
    }
    assert task.seen == [2]


POLICIES = [
    RetryPolicy(max_attempts=50, initial_delay=1.0, backoff=2.0, max_delay=300.0),
    RetryPolicy(max_attempts=50, initial_delay=0.25, backoff=1.5, max_delay=7.0),
    RetryPolicy(max_attempts=50, initial_delay=3.0, backoff=1.0, max_delay=3.0),
    RetryPolicy(max_attempts=50, initial_delay=1e-9, backoff=3e9, max_delay=0.001),
    RetryPolicy(max_attempts=50, initial_delay=0, backoff=2.0, max_delay=10.0),
    RetryPolicy(max_attempts=50, initial_delay=5.0, backoff=2.0, max_delay=0),
    RetryPolicy(max_attempts=50, initial_delay=2.0, backoff=10.0, max_delay=1e9),
]


@pytest.mark.parametrize("policy", POLICIES, ids=range(len(POLICIES)))
def test_the_delay_a_claim_stores_is_the_one_the_policy_computes(
    driver: PostgresDriver, pg_dsn: str, schema: str, policy: RetryPolicy
) -> None:
    # The claim works the delay out in SQL, so that a reaper without the policy can retry
    # a lost attempt; it must agree with RetryPolicy.delay for every attempt.
    with_tasks(driver, "a", "t")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        for attempt in (*range(1, 45), 49, 50):
            conn.execute("UPDATE tasks SET state = 'queued', attempt = %s", (attempt,))
            (task,), _ = driver.claim_tasks({"t": 1}, OWNER, {"t": policy})
            assert task.attempt == attempt
            row = conn.execute("SELECT retry_delay FROM tasks").fetchone()
            assert row is not None
            if attempt >= policy.max_attempts:
                assert row[0] is None  # the last attempt: nothing to wait for
            else:
                assert row[0] == pytest.approx(policy.delay(attempt), rel=1e-12), attempt
