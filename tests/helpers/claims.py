"""Claims whose COMMIT went through while the answer was lost, shared by the PostgreSQL and
the in-memory tests (``make`` as in :mod:`tests.helpers.dispatch`).

The process never learns of such a claim: the task is running for it in the database, but it
never runs it or heartbeats it. The manager puts it back in the queue (as the same attempt)
before the lost-task reaper would report it lost, and the task runs once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from cereal import Manager, RetryPolicy, Task, WorkflowInstance, WorkflowStatus
from cereal.driver import ClaimedTask
from cereal.errors import DatabaseError, TransientDatabaseError
from cereal.task_pools.writer import PERMANENT_FAILURES
from tests.helpers.dispatch import AWAIT, WF, MakeManager
from tests.helpers.waiting import wait_for

TASK = "triple"
LOST_TASK_TIMEOUT = 6.0
"""Long enough that putting the task back (after half of it) clearly beats the reaper."""


class OneTask:
    """``on_start`` enqueues one task (``delay`` seconds later: the task claimer then takes
    it, not the commit); ``on_task_complete`` completes with what it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        later = timedelta(seconds=self.delay) if self.delay else None
        inst.enqueue_task(TASK, inst.parameters, start_after=later)
        return inst.continue_with(None)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        r = event.result
        return inst.complete({"status": r.status.value, "value": r.value, "attempts": r.attempts})

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


class Runs:
    def __init__(self) -> None:
        self.runs: list[tuple[Any, int]] = []
        self._lock = threading.Lock()

    def __call__(self, task: Task) -> Any:
        with self._lock:
            self.runs.append((task.parameters, task.attempt))
        return task.parameters * 3


def lose_the_commit_answer(manager: Manager) -> list[int]:
    """The first workflow commit that claims tasks commits, then fails as if the connection
    had dropped before its answer came back (whether the batch was claimed, or held for a
    handler by the enqueue)."""
    lost: list[int] = []

    def losing(real_hold: Any) -> Any:
        @contextmanager
        def hold(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with real_hold(*args, **kwargs) as batch:
                if batch is not None:
                    real = batch.commit_claiming

                    def commit_claiming(outcomes: Any, claim: Any) -> Any:
                        result = real(outcomes, claim)
                        if not lost and result[1]:
                            lost.append(len(result[1]))
                            raise TransientDatabaseError("connection lost during COMMIT (injected)")
                        return result

                    batch.commit_claiming = commit_claiming
                yield batch

        return hold

    driver: Any = manager.driver
    driver.claim_events = losing(driver.claim_events)
    driver.enqueue_and_hold = losing(driver.enqueue_and_hold)
    return lost


def lose_the_claim_answer(manager: Manager) -> list[int]:
    """The first task claim that takes something commits, then fails the same way."""
    lost: list[int] = []
    real = manager.driver.claim_tasks

    def claim_tasks(
        limits: dict[str, int], owner: str, retries: Mapping[str, RetryPolicy] | None = None
    ) -> tuple[list[ClaimedTask], float | None]:
        claimed, due_in = real(limits, owner, retries)
        if not lost and claimed:
            lost.append(len(claimed))
            raise TransientDatabaseError("connection lost during COMMIT (injected)")
        return claimed, due_in

    manager.driver.claim_tasks = claim_tasks  # type: ignore[method-assign]
    return lost


class _ClaimsInFlight:
    """Counts the manager's task claims under way."""

    def __init__(self, manager: Manager) -> None:
        self.started = 0
        self.running = 0
        self._lock = threading.Lock()
        real = manager.driver.claim_tasks

        def claim_tasks(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.started += 1
                self.running += 1
            try:
                return real(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        manager.driver.claim_tasks = claim_tasks  # type: ignore[method-assign]

    def settle(self, manager: Manager) -> None:
        """Wait for the claims a manager makes as it starts: one at once, one more when its
        listener connects (it may have missed notifications)."""
        listener = getattr(manager, "_listener", None)
        connected = getattr(listener, "connected", None)
        if isinstance(connected, threading.Event):
            assert connected.wait(AWAIT), "the listener never connected"
        deadline = time.monotonic() + AWAIT
        quiet_since = None
        while time.monotonic() < deadline:
            with self._lock:
                idle = self.started > 0 and self.running == 0
            if not idle:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 0.1:
                return
            time.sleep(0.005)
        raise AssertionError("the task claimer did not settle")


def check_a_task_claimed_unseen_runs_once_as_its_first_attempt(
    make: MakeManager, where: str
) -> None:
    task = Runs()
    m = make(lost_task_timeout=LOST_TASK_TIMEOUT)
    m.register_workflow_executor(WF, OneTask(0.0 if where == "workflow commit" else 0.2))
    m.register_task_executor(TASK, task)
    lost = lose_the_commit_answer(m) if where == "workflow commit" else lose_the_claim_answer(m)
    claims = _ClaimsInFlight(m)
    m.start()
    # A task claim in flight holds the only worker's slot: the commit could not claim the
    # task (it would be queued for the claimer instead) and nothing would be injected.
    claims.settle(m)
    m.enqueue_workflow(WF, "x", 5)
    info = m.await_workflow(WF, "x", timeout=AWAIT)
    assert lost == [1], "the injected failure did not happen"
    assert info.status is WorkflowStatus.COMPLETED
    # Run once, as its first attempt: never reported lost.
    assert info.result == {"status": "success", "value": 15, "attempts": 1}
    assert task.runs == [(5, 1)]


def check_a_given_up_result_is_reported_lost_not_put_back(make: MakeManager) -> None:
    """A task whose result the writer gives up on (the database keeps refusing it) stays
    running for its process until the reaper reports it lost. Putting claims back that the
    process never heard of (after a claim whose answer was lost) must not put it back as
    well: it ran, and it must not run again."""
    task = Runs()
    workflows = make(lost_task_timeout=LOST_TASK_TIMEOUT)
    workflows.register_workflow_executor(WF, OneTask())
    # A manager without the workflow: its result writer records every outcome.
    m = make(lost_task_timeout=LOST_TASK_TIMEOUT)
    m.register_task_executor(TASK, task)
    refused: list[int] = []
    real_complete = m.driver.complete_tasks

    def complete_tasks(outcomes: Any, owner: str) -> Any:
        if any(o.result_json == "3" for o in outcomes):
            refused.append(len(outcomes))
            raise DatabaseError("permission denied for table tasks (injected)")
        return real_complete(outcomes, owner)

    m.driver.complete_tasks = complete_tasks  # type: ignore[method-assign]
    workflows.start()
    m.start()
    workflows.enqueue_workflow(WF, "given-up", 1)
    wait_for(lambda: len(refused) >= PERMANENT_FAILURES, AWAIT, "the writer to give up")
    # Now a claim whose answer is lost: the process puts back the claims it does not know.
    lost = lose_the_claim_answer(m)
    workflows.enqueue_workflow(WF, "unseen", 5)
    unseen = workflows.await_workflow(WF, "unseen", timeout=AWAIT)
    given_up = workflows.await_workflow(WF, "given-up", timeout=AWAIT)
    assert lost == [1], "the injected failure did not happen"
    assert sorted(task.runs) == [(1, 1), (5, 1)], "a task ran again"
    assert given_up.result == {"status": "lost", "value": None, "attempts": 1}, given_up
    assert unseen.result == {"status": "success", "value": 15, "attempts": 1}, unseen
