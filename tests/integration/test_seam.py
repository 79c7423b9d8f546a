"""The storage seam: the manager works with any object that implements ``Driver``.

``Delegating`` implements the protocol by forwarding every call to a ``PostgresDriver``,
without inheriting from anything, and counts the calls: the manager must run workflows,
tasks and schedules through it alone.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import pytest

from cereal import Manager, RetryPolicy, Task, WorkflowInstance, WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.driver import (
    ClaimedTask,
    Driver,
    DueRun,
    EventBatch,
    InstanceFinished,
    Listener,
    Overview,
    Schedule,
    ScheduleChange,
    SchemaStatus,
    StoredSchedule,
    TaskInfo,
    TaskOutcome,
    Wakeup,
)
from cereal.errors import CerealError
from cereal.types import WorkflowInstanceInfo
from tests.helpers.schedules import schedule_soon
from tests.helpers.timings import FAST_MANAGER_OPTIONS
from tests.helpers.waiting import wait_for


class Delegating:
    """A ``Driver`` that forwards to another one and records which methods were called."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.wakeups: list[Wakeup] = []
        self._lock = threading.Lock()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[name] += 1
        return getattr(self._inner, name)(*args, **kwargs)

    @property
    def schema(self) -> str:
        return str(self._inner.schema)

    def open(self) -> None:
        self._call("open")

    def close(self) -> None:
        self._call("close")

    def listener(
        self, on_wakeup: Callable[[Wakeup], None], on_reconnect: Callable[[], None]
    ) -> Listener:
        def seen(wakeup: Wakeup) -> None:
            with self._lock:
                self.wakeups.append(wakeup)
            on_wakeup(wakeup)

        return self._call("listener", seen, on_reconnect)  # type: ignore[no-any-return]

    def enqueue_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> bool:
        return bool(
            self._call(
                "enqueue_workflow", workflow_name, instance_name, parameters_json, trace_context
            )
        )

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        return bool(self._call("cancel_workflow", workflow_name, instance_name))

    def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        return bool(self._call("kill_workflow", workflow_name, instance_name, error))

    def signal_workflow(
        self, workflow_name: str, instance_name: str, signal_name: str, payload: str | None
    ) -> bool:
        return bool(
            self._call("signal_workflow", workflow_name, instance_name, signal_name, payload)
        )

    def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        return self._call("get_workflow_instance", workflow_name, instance_name)  # type: ignore[no-any-return]

    def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]], trace_context: str | None = None
    ) -> list[tuple[str, str]]:
        return self._call("enqueue_workflows", items, trace_context)  # type: ignore[no-any-return]

    def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        paging = {k: v for k, v in (("status", status), ("limit", limit), ("after", after)) if v}
        return self._call(  # type: ignore[no-any-return]
            "list_workflow_instances", workflow_name, instance_name, is_running, **paging
        )

    def has_events(self, workflow_names: Sequence[str]) -> bool:
        return bool(self._call("has_events", workflow_names))

    def claim_events(
        self, workflow_names: Sequence[str], limit: int, per_instance: int
    ) -> AbstractContextManager[EventBatch]:
        return self._call("claim_events", workflow_names, limit, per_instance)  # type: ignore[no-any-return]

    def fail_instance(self, instance_id: int, error: str) -> WorkflowInstanceInfo | None:
        return self._call("fail_instance", instance_id, error)  # type: ignore[no-any-return]

    def claim_tasks(
        self,
        limits: dict[str, int],
        owner: str,
        retries: Mapping[str, RetryPolicy] | None = None,
    ) -> tuple[list[ClaimedTask], float | None]:
        return self._call("claim_tasks", limits, owner, retries)  # type: ignore[no-any-return]

    def complete_tasks(self, outcomes: Sequence[TaskOutcome], owner: str) -> set[int]:
        return self._call("complete_tasks", outcomes, owner)  # type: ignore[no-any-return]

    def heartbeat_tasks(self, task_ids: Sequence[int], owner: str) -> set[int]:
        return self._call("heartbeat_tasks", task_ids, owner)  # type: ignore[no-any-return]

    def release_tasks(self, task_ids: Sequence[int], owner: str) -> None:
        self._call("release_tasks", task_ids, owner)

    def reap_lost_tasks(self, timeout: float, error: str) -> int:
        return int(self._call("reap_lost_tasks", timeout, error))

    def now(self) -> datetime:
        return self._call("now")  # type: ignore[no-any-return]

    def insert_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        recurrence: str,
        enabled: bool,
        next_due_at: datetime | None,
    ) -> bool:
        return bool(
            self._call(
                "insert_schedule",
                workflow_name,
                instance_name,
                parameters_json,
                recurrence,
                enabled,
                next_due_at,
            )
        )

    def update_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        return bool(self._call("update_schedule", workflow_name, instance_name, change))

    def delete_schedule(self, workflow_name: str, instance_name: str) -> bool:
        return bool(self._call("delete_schedule", workflow_name, instance_name))

    def list_schedules(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        return self._call("list_schedules", workflow_name, instance_name)  # type: ignore[no-any-return]

    def run_due_schedule(
        self,
        next_due: Callable[[str, datetime], datetime | None],
        trace_context: str | None = None,
    ) -> DueRun | None:
        return self._call("run_due_schedule", next_due, trace_context)  # type: ignore[no-any-return]

    def seconds_until_next_schedule(self) -> float | None:
        return self._call("seconds_until_next_schedule")  # type: ignore[no-any-return]

    def prune_history(self, max_age: float | None, max_runs: int | None) -> int:
        return int(self._call("prune_history", max_age, max_runs))

    def vacuum_queues(self, min_dead_rows: int) -> list[str]:
        return list(self._call("vacuum_queues", min_dead_rows))

    def list_tasks(
        self,
        *,
        task_name: str | None = None,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        limit: int | None = None,
    ) -> list[TaskInfo]:
        return self._call(  # type: ignore[no-any-return]
            "list_tasks",
            task_name=task_name,
            workflow_name=workflow_name,
            instance_name=instance_name,
            limit=limit,
        )

    def overview(self, stale_after: float) -> Overview:
        return self._call("overview", stale_after)  # type: ignore[no-any-return]

    def schema_status(self) -> SchemaStatus:
        return self._call("schema_status")  # type: ignore[no-any-return]

    def migration_sql(self) -> str:
        return str(self._call("migration_sql"))

    def ping(self) -> None:
        self._call("ping")


def _typed(driver: Delegating) -> Driver:
    return driver  # the type checker proves Delegating implements the protocol


class Doubler:
    """Starts one task per number; completes with the doubled numbers."""

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        for n in inst.parameters or [1]:
            inst.enqueue_task("double", n)
        return inst.continue_with([])

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        done = [*inst.payload, event.result.value]
        if len(done) == len(inst.parameters or [1]):
            return inst.complete(sorted(done))
        return inst.continue_with(done)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def double(task: Task) -> int:
    return int(task.parameters) * 2


def test_a_delegating_driver_runs_workflows_tasks_and_schedules(pg_dsn: str, schema: str) -> None:
    wrapper = Delegating(PostgresDriver(pg_dsn, schema=schema))
    finished: list[WorkflowInstanceInfo] = []
    manager = Manager(
        _typed(wrapper),
        close_driver=True,
        on_workflow_complete=finished.append,
        **FAST_MANAGER_OPTIONS,
    )
    manager.register_workflow_executor("doubler", Doubler())
    manager.register_task_executor("double", double, workers=2)
    schedule_soon(manager, "doubler", "scheduled", [5], rule="FREQ=SECONDLY;COUNT=1", lead=3.0)
    with manager:
        manager.enqueue_workflow("doubler", "direct", [1, 2, 3])
        direct = manager.await_workflow("doubler", "direct", timeout=30)
        wait_for(
            lambda: manager.get_workflow_schedule("doubler", "scheduled").last_enqueued_at,
            15,
            "the schedule to run",
        )
        scheduled = manager.await_workflow("doubler", "scheduled", timeout=30)
        wait_for(lambda: not manager.get_workflow_schedule("doubler", "scheduled").enabled)
    assert (direct.status, direct.result) == (WorkflowStatus.COMPLETED, [2, 4, 6])
    assert (scheduled.status, scheduled.result) == (WorkflowStatus.COMPLETED, [10])
    assert {(f.instance_name, f.status) for f in finished} >= {
        ("direct", WorkflowStatus.COMPLETED),
        ("scheduled", WorkflowStatus.COMPLETED),
    }
    used = set(wrapper.calls)
    assert {
        "open",
        "listener",
        "enqueue_workflow",
        "claim_events",
        "claim_tasks",
        "complete_tasks",
        "insert_schedule",
        "run_due_schedule",
        "close",
    } <= used
    assert any(isinstance(w, InstanceFinished) for w in wrapper.wakeups)


@pytest.mark.parametrize("candidate", ["postgresql://localhost/db", object(), 42])
def test_an_object_without_the_driver_methods_is_refused(candidate: object) -> None:
    with pytest.raises(CerealError, match=r"driver must implement cereal\.driver\.Driver"):
        Manager(candidate)  # type: ignore[arg-type]


class OneSlowTask:
    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        inst.enqueue_task("slow", None)
        return inst.continue_with()

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.complete(event.result.value)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")


def test_an_instance_finished_hint_stops_no_task_whose_row_is_still_there(
    make_manager: Callable[..., Manager],
) -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def slow(task: Task) -> str:
        started.set()
        release.wait(10)
        seen.append(task.cancelled.is_set())
        return "finished"

    manager = make_manager()
    manager.register_workflow_executor("w", OneSlowTask())
    manager.register_task_executor("slow", slow)
    manager.start()
    manager.enqueue_workflow("w", "i")
    assert started.wait(10)
    driver = manager.driver
    assert isinstance(driver, PostgresDriver)
    with driver.connection() as conn:
        row = conn.execute("SELECT id FROM workflow_instances").fetchone()
    assert row is not None
    # A wrong hint: the instance is live and its task row is there.
    driver.notify([InstanceFinished(row[0])])
    threading.Event().wait(1.0)  # the listener has delivered it (at once, on an idle machine)
    release.set()
    info = manager.await_workflow("w", "i", timeout=20)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, "finished")
    assert seen == [False]


def test_killing_an_instance_stops_its_running_task(make_manager: Callable[..., Manager]) -> None:
    started, stopped = threading.Event(), threading.Event()

    def slow(task: Task) -> None:
        started.set()
        if task.cancelled.wait(10):
            stopped.set()

    manager = make_manager()
    manager.register_workflow_executor("w", OneSlowTask())
    manager.register_task_executor("slow", slow)
    manager.start()
    manager.enqueue_workflow("w", "i")
    assert started.wait(10)
    other = make_manager()  # never started: the hint reaches the first one through LISTEN
    other.kill_workflow("w", "i")
    assert stopped.wait(10)
