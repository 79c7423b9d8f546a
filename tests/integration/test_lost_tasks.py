"""Heartbeats and lost tasks: long tasks stay alive, dead processes' tasks are reported LOST
exactly once, and tasks whose workflow finished are told to stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cereal import (
    CancelEvent,
    Decision,
    Manager,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
    WorkflowStatus,
)
from tests.helpers.processes import program
from tests.helpers.rows import count_rows, finished_runs
from tests.helpers.timings import LOST_TASK_TIMEOUT
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]


class Watch:
    """Enqueues the tasks named in ``parameters["tasks"]`` and keeps every reported result in
    its payload. It completes when a task named ``parameters.get("complete_on")`` reports, and
    on cancel; otherwise it keeps running, so later (duplicate) reports would show up."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        for name in instance.parameters["tasks"]:
            instance.enqueue_task(name)
        return instance.continue_with([])

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        result = event.result
        seen = [
            *instance.payload,
            {
                "task": result.task_name,
                "status": result.status.value,
                "value": result.value,
                "error": result.error,
                "completed": instance.total_completed_tasks,
                "enqueued": instance.total_enqueued_tasks,
            },
        ]
        if result.task_name == instance.parameters.get("complete_on"):
            return instance.complete(seen)
        return instance.continue_with(seen)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.complete(instance.payload)


def reports(manager: Manager, instance: str) -> list[dict[str, Any]]:
    """The task results the ``watch`` instance has seen so far."""
    info = manager.get_workflow_instance("watch", instance)
    return list((info.payload if info.is_running else info.result) or [])


def query(dsn: str, schema: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(text, params).fetchall()  # type: ignore[arg-type]


def test_heartbeats_keep_a_task_longer_than_the_lost_task_timeout_alive(
    make_manager: MakeManager,
) -> None:
    lost_task_timeout = 3.0

    def long(task: Task) -> str:
        time.sleep(1.5 * lost_task_timeout)
        return "survived"

    worker = make_manager(heartbeat_interval=0.5, lost_task_timeout=lost_task_timeout)
    worker.register_workflow_executor("watch", Watch())
    worker.register_task_executor("long", long)
    worker.start()
    # Another manager's lost-task reaper is watching too.
    bystander = make_manager(heartbeat_interval=0.5, lost_task_timeout=lost_task_timeout)
    bystander.start()

    worker.enqueue_workflow("watch", "i1", {"tasks": ["long"], "complete_on": "long"})
    info = worker.await_workflow("watch", "i1", timeout=15)

    assert info.status is WorkflowStatus.COMPLETED
    assert info.result == [
        {
            "task": "long",
            "status": "success",
            "value": "survived",
            "error": None,
            "completed": 1,
            "enqueued": 1,
        }
    ]


@pytest.mark.slow
def test_task_of_a_killed_process_is_reported_lost_once_by_another_manager(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    lost_task_timeout = LOST_TASK_TIMEOUT  # the child's, and these managers'
    manager = make_manager(lost_task_timeout=lost_task_timeout)
    manager.register_workflow_executor("watch", Watch())
    manager.start()
    # A second live manager whose reaper races the first one for the report.
    make_manager(lost_task_timeout=lost_task_timeout).start()

    with program("blocker", pg_dsn, schema, log_file=tmp_path / "blocker.log") as child:
        child.expect("ready")
        manager.enqueue_workflow("watch", "victim", {"tasks": ["block"]})
        [task_id] = child.expect("claimed")
        [(state, owner)] = query(
            pg_dsn, schema, "SELECT state, claimed_by FROM tasks WHERE id = %s", int(task_id)
        )
        assert state == "running"
        assert f":{child.pid}:" in owner

        # Its heartbeats keep it alive while the process lives.
        time.sleep(1.0)
        assert reports(manager, "victim") == []

        child.kill()
        killed = time.monotonic()

    found = wait_for(lambda: reports(manager, "victim"), 15, "the LOST report")
    elapsed = time.monotonic() - killed
    # The last heartbeat was at most one heartbeat interval (0.5 s) before the kill.
    assert lost_task_timeout - 1.0 <= elapsed <= lost_task_timeout + 2.5
    [report] = found
    assert report["task"] == "block"
    assert report["status"] == "lost"
    assert report["value"] is None
    assert "lost" in report["error"]
    assert report["completed"] == 1
    assert report["enqueued"] == 1
    assert query(pg_dsn, schema, "SELECT count(*) FROM tasks") == [(0,)]

    # Several reaper rounds later there is still exactly one report.
    time.sleep(2.0)
    assert len(reports(manager, "victim")) == 1
    manager.cancel_workflow("watch", "victim")
    info = manager.await_workflow("watch", "victim", timeout=10)
    assert [r["status"] for r in info.result] == ["lost"]


@pytest.mark.parametrize("how", ["kill", "complete"])
def test_task_whose_workflow_finished_is_cancelled_promptly_and_its_late_result_discarded(
    make_any_manager: MakeManager, how: str
) -> None:
    heartbeat = 0.5
    running = threading.Event()
    returned = threading.Event()
    observed: dict[str, Any] = {}

    def wait(task: Task) -> str:
        running.set()
        observed["cancelled"] = task.cancelled.wait(10)
        observed["at"] = time.monotonic()
        returned.set()
        return "late"

    def release(task: Task) -> str:
        assert running.wait(10)
        return "released"

    manager = make_any_manager(heartbeat_interval=heartbeat)
    manager.register_workflow_executor("watch", Watch())
    manager.register_task_executor("wait", wait)
    manager.register_task_executor("release", release)
    manager.start()

    if how == "kill":
        manager.enqueue_workflow("watch", "i1", {"tasks": ["wait"]})
        assert running.wait(10)
        manager.kill_workflow("watch", "i1")
        finished = time.monotonic()
    else:
        manager.enqueue_workflow(
            "watch", "i1", {"tasks": ["wait", "release"], "complete_on": "release"}
        )
        manager.await_workflow("watch", "i1", timeout=10)
        finished = time.monotonic()

    assert returned.wait(heartbeat + 2)
    assert observed["cancelled"] is True
    assert observed["at"] - finished <= heartbeat + 0.7

    # A new run under the same name must not receive the old run's late result.
    manager.enqueue_workflow("watch", "i1", {"tasks": []})
    wait_for(
        lambda: manager.get_workflow_instance("watch", "i1").status is WorkflowStatus.RUNNING,
        10,
        "the second run to start",
    )
    time.sleep(0.5)  # time for a (wrongly) recorded result to arrive
    assert reports(manager, "i1") == []
    assert count_rows(manager, "workflow_events") == 0
    assert count_rows(manager, "tasks") == 0
    [(status, error)] = finished_runs(manager.driver, "watch", "i1")
    if how == "kill":
        assert (status, error) == ("failed", "killed")
    else:
        assert (status, error) == ("completed", None)


def test_task_reported_lost_elsewhere_is_stopped_by_its_heartbeat_and_its_result_discarded(
    make_any_manager: MakeManager,
) -> None:
    """A task presumed dead (say its process stalled past the lost-task timeout) is reported
    LOST by someone else; when it comes back, its heartbeat finds the row gone."""
    heartbeat = 0.5
    running = threading.Event()
    observed: dict[str, Any] = {}

    def wait(task: Task) -> str:
        running.set()
        observed["cancelled"] = task.cancelled.wait(10)
        observed["at"] = time.monotonic()
        return "late"

    manager = make_any_manager(heartbeat_interval=heartbeat, lost_task_timeout=30)
    other = make_any_manager()  # another manager on the same storage, never started
    manager.register_workflow_executor("watch", Watch())
    manager.register_task_executor("wait", wait)
    manager.start()
    manager.enqueue_workflow("watch", "i1", {"tasks": ["wait"]})
    assert running.wait(10)

    # What another manager's reaper does when this task's heartbeats stop for long enough.
    wait_for(lambda: other.driver.reap_lost_tasks(0.0, "task lost: test") == 1, 5, "the reap")
    reaped = time.monotonic()

    wait_for(lambda: "at" in observed, heartbeat + 3, "the task to be cancelled")
    assert observed["cancelled"] is True
    assert observed["at"] - reaped <= heartbeat + 0.7
    time.sleep(0.5)  # time for a (wrongly) recorded late result to arrive
    assert [(r["status"], r["error"]) for r in reports(manager, "i1")] == [
        ("lost", "task lost: test")
    ]


def test_kill_waiting_for_an_in_flight_callback_drops_the_tasks_that_callback_enqueued(
    make_manager: MakeManager, pg_dsn: str, schema: str
) -> None:
    in_callback, release = threading.Event(), threading.Event()
    task_runs: list[bool] = []

    class SlowStart(Watch):
        def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
            in_callback.set()
            assert release.wait(10)
            return super().on_start(instance, event)

    def t(task: Task) -> None:
        task_runs.append(task.cancelled.wait(5))

    manager = make_manager()
    manager.register_workflow_executor("watch", SlowStart())
    manager.register_task_executor("t", t, workers=4)
    manager.start()
    manager.enqueue_workflow("watch", "i1", {"tasks": ["t", "t", "t"]})
    assert in_callback.wait(10)

    outcome: list[BaseException | None] = []

    def kill() -> None:
        try:
            manager.kill_workflow("watch", "i1")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    killer = threading.Thread(target=kill)
    killer.start()
    wait_for(
        lambda: (
            query(
                pg_dsn,
                schema,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%%FOR UPDATE%%' AND query LIKE '%%workflow_results%%'",
            )
            == [(1,)]
        ),
        10,
        "the kill to wait for the callback's transaction",
    )
    release.set()
    killer.join(10)

    assert outcome == [None]
    info = manager.get_workflow_instance("watch", "i1")
    assert (info.status, info.error) == (WorkflowStatus.FAILED, "killed")
    for table in ("tasks", "workflow_events", "workflow_instances"):
        assert query(pg_dsn, schema, f"SELECT count(*) FROM {table}") == [(0,)], table
    time.sleep(0.5)  # a task claimed in the instant before the kill would have run by now
    assert all(task_runs), "a task of the killed instance ran without being cancelled"
