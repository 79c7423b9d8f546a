"""LISTEN/NOTIFY wakeups: with 30-second polls, work written by another process or manager is
picked up at once, and the listener survives losing its connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
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
    WorkflowInstanceInfo,
    WorkflowStatus,
)
from cereal.errors import WorkflowInstanceNotFoundError
from tests.helpers.processes import program
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]
SLOW_POLLS = {"workflow_poll_interval": 30, "task_poll_interval": 30}
PROMPT = 1.5  # seconds: far below any poll interval used here


class Timeline:
    """Wall-clock times (``time.time()``, comparable across processes) of what happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, float] = {}
        self._changed = threading.Condition(self._lock)

    def mark(self, what: str) -> None:
        with self._changed:
            self._times.setdefault(what, time.time())
            self._changed.notify_all()

    def wait(self, what: str, timeout: float = 10) -> float:
        with self._changed:
            if not self._changed.wait_for(lambda: what in self._times, timeout):
                raise AssertionError(f"{what!r} did not happen within {timeout:g}s")
            return self._times[what]


class OneTask:
    """Runs task ``t`` (unless ``parameters["task"]`` is false) and completes with its value;
    on cancel, completes with ``"cancelled"``."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        self.timeline.mark(f"start {instance.instance_name}")
        if (instance.parameters or {}).get("task", True):
            instance.enqueue_task("t", instance.instance_name)
        return instance.continue_with()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete(event.result.value)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        self.timeline.mark(f"cancel {instance.instance_name}")
        return instance.complete("cancelled")


def echo(task: Task) -> Any:
    return ["done", task.parameters]


def listening_backends(dsn: str, channel: str) -> list[int]:
    """Pids of idle server backends that issued ``LISTEN`` on ``channel``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE query LIKE 'LISTEN%%' AND position(%s in query) > 0 AND state = 'idle'"
            " AND pid <> pg_backend_pid()",
            (f'"{channel}"',),
        ).fetchall()
    return [r[0] for r in rows]


def started_manager(
    make_manager: MakeManager, pg_dsn: str, timeline: Timeline, **options: Any
) -> Manager:
    """A manager with slow polls running ``w`` and ``t``, listening before it is returned."""
    manager = make_manager(
        on_workflow_complete=lambda info: timeline.mark(f"end {info.instance_name}"),
        **(SLOW_POLLS | options),
    )
    manager.register_workflow_executor("w", OneTask(timeline))
    manager.register_task_executor("t", echo)
    manager.start()
    wait_for(lambda: listening_backends(pg_dsn, manager.driver.channel), 10, "the listener")
    return manager


def test_workflow_enqueued_by_another_process_runs_end_to_end_at_once(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    timeline = Timeline()
    manager = started_manager(make_manager, pg_dsn, timeline)
    time.sleep(0.3)  # let the start-up round finish: from now on only a wakeup helps

    with program("client", pg_dsn, schema, log_file=tmp_path / "client.log") as client:
        client.expect("ready")
        for instance in ("i1", "i2", "i3"):
            client.send(f"enqueue w {instance}")
            _, enqueued = map(float, client.expect("done"))
            assert timeline.wait(f"start {instance}") - enqueued < PROMPT
            assert timeline.wait(f"end {instance}") - enqueued < PROMPT
            info = manager.get_workflow_instance("w", instance)
            assert info.status is WorkflowStatus.COMPLETED
            assert info.result == ["done", instance]
        client.finish()


def test_cancel_from_another_process_wakes_the_workflow_loop_at_once(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    timeline = Timeline()
    manager = started_manager(make_manager, pg_dsn, timeline)

    with program("client", pg_dsn, schema, log_file=tmp_path / "client.log") as client:
        client.expect("ready")
        client.send('enqueue w i1 {"task": false}')  # no task: it waits for the cancel
        client.expect("done")
        timeline.wait("start i1")
        wait_for(
            lambda: manager.get_workflow_instance("w", "i1").status is WorkflowStatus.RUNNING,
            5,
            "on_start to commit",
        )
        client.send("cancel w i1")
        _, cancelled = map(float, client.expect("done"))
        client.finish()

    assert timeline.wait("cancel i1") - cancelled < PROMPT
    info = manager.await_workflow("w", "i1", timeout=5)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, "cancelled")


def test_kill_from_another_process_stops_running_tasks_at_once(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    running = threading.Event()
    stopped: list[float] = []

    def wait(task: Task) -> None:
        running.set()
        if task.cancelled.wait(20):
            stopped.append(time.time())

    # Heartbeats far apart: only the notification can stop the task quickly.
    manager = make_manager(heartbeat_interval=10, lost_task_timeout=30, **SLOW_POLLS)
    manager.register_workflow_executor("w", OneTask(Timeline()))
    manager.register_task_executor("t", wait)
    manager.start()
    wait_for(lambda: listening_backends(pg_dsn, manager.driver.channel), 10, "the listener")

    with program("client", pg_dsn, schema, log_file=tmp_path / "client.log") as client:
        client.expect("ready")
        client.send("enqueue w i1")
        client.expect("done")
        assert running.wait(5)
        client.send("kill w i1")
        _, killed = map(float, client.expect("done"))
        client.finish()

    wait_for(lambda: stopped, 5, "the task to see task.cancelled")
    assert stopped[0] - killed < PROMPT
    info = manager.await_workflow("w", "i1", timeout=1)
    assert (info.status, info.error) == (WorkflowStatus.FAILED, "killed")


def test_start_processes_pending_workflow_events_at_once(make_manager: MakeManager) -> None:
    timeline = Timeline()
    manager = make_manager(**SLOW_POLLS)
    manager.register_workflow_executor("w", OneTask(timeline))
    manager.register_task_executor("t", echo)
    manager.enqueue_workflow("w", "i1")
    manager.enqueue_workflow("w", "i2", {"task": False})
    manager.cancel_workflow("w", "i2")  # cancel before start: fails at once

    started = time.monotonic()
    manager.start()
    first = manager.await_workflow("w", "i1", timeout=5)
    second = manager.await_workflow("w", "i2", timeout=5)

    assert time.monotonic() - started < PROMPT
    assert (first.status, first.result) == (WorkflowStatus.COMPLETED, ["done", "i1"])
    assert (second.status, second.error) == (WorkflowStatus.FAILED, "canceled starting workflow")


def test_task_manager_started_later_claims_queued_tasks_at_once_and_wakes_the_workflow(
    make_manager: MakeManager, pg_dsn: str
) -> None:
    timeline = Timeline()
    deciders = make_manager(**SLOW_POLLS)  # workflows only: task t stays queued
    deciders.register_workflow_executor("w", OneTask(timeline))
    deciders.start()
    wait_for(lambda: listening_backends(pg_dsn, deciders.driver.channel), 10, "the listener")
    deciders.enqueue_workflow("w", "i1")
    timeline.wait("start i1")
    time.sleep(0.3)
    assert deciders.get_workflow_instance("w", "i1").status is WorkflowStatus.RUNNING

    workers = make_manager(**SLOW_POLLS)  # tasks only
    workers.register_task_executor("t", echo)
    started = time.monotonic()
    workers.start()
    info = deciders.await_workflow("w", "i1", timeout=5)

    assert time.monotonic() - started < PROMPT
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, ["done", "i1"])


def test_tasks_and_results_wake_managers_that_split_workflows_and_tasks(
    make_manager: MakeManager, pg_dsn: str
) -> None:
    timeline = Timeline()
    ended: list[WorkflowInstanceInfo] = []
    deciders = make_manager(on_workflow_complete=ended.append, **SLOW_POLLS)
    deciders.register_workflow_executor("w", OneTask(timeline))
    workers = make_manager(**SLOW_POLLS)
    workers.register_task_executor("t", echo)
    for manager in (deciders, workers):
        manager.start()
        wait_for(lambda m=manager: listening_backends(pg_dsn, m.driver.channel), 10, "listeners")
    time.sleep(0.3)

    for n in range(3):
        started = time.monotonic()
        deciders.enqueue_workflow("w", f"i{n}")
        info = deciders.await_workflow("w", f"i{n}", timeout=5)
        assert time.monotonic() - started < PROMPT
        assert info.result == ["done", f"i{n}"]
    # The hook runs just after await_workflow is woken: give the last call a moment.
    wait_for(lambda: len(ended) >= 3, 5, "on_workflow_complete of every run")
    assert [i.instance_name for i in ended] == ["i0", "i1", "i2"]


def test_delayed_task_queued_by_another_manager_runs_on_time_despite_slow_polls(
    make_manager: MakeManager, pg_dsn: str
) -> None:
    ran: list[float] = []

    class Delayed(OneTask):
        def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
            instance.enqueue_task("t", "later", start_after=timedelta(seconds=1))
            return instance.continue_with()

    def stamp(task: Task) -> Any:
        ran.append(time.monotonic())
        return task.parameters

    deciders = make_manager(**SLOW_POLLS)
    deciders.register_workflow_executor("w", Delayed(Timeline()))
    workers = make_manager(**SLOW_POLLS)
    workers.register_task_executor("t", stamp)
    for manager in (deciders, workers):
        manager.start()
        wait_for(lambda m=manager: listening_backends(pg_dsn, m.driver.channel), 10, "listeners")

    enqueued = time.monotonic()
    deciders.enqueue_workflow("w", "i1")
    info = deciders.await_workflow("w", "i1", timeout=10)

    assert info.result == "later"
    assert 0.95 <= ran[0] - enqueued < 1 + PROMPT


def test_listener_reconnects_after_its_connection_is_terminated(
    make_manager: MakeManager, pg_dsn: str
) -> None:
    timeline = Timeline()
    manager = started_manager(make_manager, pg_dsn, timeline)
    channel = manager.driver.channel
    [old] = listening_backends(pg_dsn, channel)

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    [new] = wait_for(
        lambda: [p for p in listening_backends(pg_dsn, channel) if p != old],
        15,
        "the listener to reconnect",
    )
    assert new != old
    time.sleep(0.3)  # the catch-up round after reconnecting is over

    # Another manager (never started) only writes: the wakeup must come through LISTEN.
    other = make_manager()
    before = time.time()
    other.enqueue_workflow("w", "after-reconnect")
    assert timeline.wait("end after-reconnect") - before < PROMPT
    info = manager.get_workflow_instance("w", "after-reconnect")
    assert info.result == ["done", "after-reconnect"]


def test_cancel_racing_the_instance_finishing_raises_not_found(
    make_manager: MakeManager, pg_dsn: str, schema: str
) -> None:
    """The instance is live when the cancel starts, and gone when it commits."""
    manager = make_manager()
    manager.enqueue_workflow("w", "i1")
    outcome: list[BaseException | None] = []

    def cancel() -> None:
        try:
            manager.cancel_workflow("w", "i1")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with psycopg.connect(pg_dsn) as finisher:  # a transaction finishing the instance
        finisher.execute(
            sql.SQL("DELETE FROM {}.workflow_instances").format(sql.Identifier(schema))
        )
        canceller = threading.Thread(target=cancel)
        canceller.start()
        with psycopg.connect(pg_dsn, autocommit=True) as observer:
            wait_for(
                lambda: (
                    observer.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND query LIKE '%%cancel%%'"
                    ).fetchone()
                    == (1,)
                ),
                10,
                "the cancel to wait for the finishing transaction",
            )
        finisher.commit()
    canceller.join(10)

    [error] = outcome
    assert isinstance(error, WorkflowInstanceNotFoundError), repr(error)
    with pytest.raises(WorkflowInstanceNotFoundError):
        manager.get_workflow_instance("w", "i1")


def test_runs_finished_by_one_commit_are_announced_together(
    make_manager: MakeManager, pg_dsn: str
) -> None:
    # Every listening session receives every notification: one per finished run would cost
    # each of them a wakeup per run.
    manager = make_manager(**SLOW_POLLS)
    manager.register_workflow_executor("w", Flow(on_start=lambda inst, ev: inst.complete(None)))
    names = [f"i{n}" for n in range(300)]
    manager.enqueue_workflows([("w", name, None) for name in names])
    payloads: list[str] = []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(manager.driver.channel)))
        manager.start()
        for name in names:
            manager.await_workflow("w", name, timeout=30)
        manager.driver.notify(["f-end"])  # an unknown payload, sent after every finish
        for note in conn.notifies(timeout=10):
            if note.payload == "f-end":
                break
            if note.payload.startswith("f"):
                payloads.append(note.payload)
    ids = [int(i) for payload in payloads for i in payload[1:].split(",")]
    assert len(ids) == len(set(ids)) == len(names)
    assert len(payloads) < len(names) / 4, f"{len(payloads)} notifications for {len(names)} runs"
