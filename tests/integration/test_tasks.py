"""Task executors: results, failures, executor kinds, Task fields, workers, timeouts, delays."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

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
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]


class RunTasks:
    """Enqueues the tasks listed in ``parameters["tasks"]`` and completes with their results.

    Each entry is ``{"name": ..., "params": ..., "delay": seconds, "at": epoch seconds,
    "naive": bool}``; the result is the list of reported task results, in arrival order.
    """

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        for spec in instance.parameters["tasks"]:
            start_after: datetime | timedelta | None = None
            if "delay" in spec:
                start_after = timedelta(seconds=spec["delay"])
            elif "at" in spec:
                start_after = datetime.fromtimestamp(spec["at"], UTC)
                if spec.get("naive"):
                    start_after = start_after.replace(tzinfo=None)
            instance.enqueue_task(spec["name"], spec.get("params"), start_after=start_after)
        return instance.continue_with([])

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        result = event.result
        seen = [
            *instance.payload,
            {
                "task": result.task_name,
                "params": result.parameters,
                "status": result.status.value,
                "ok": result.ok,
                "value": result.value,
                "error": result.error,
                "completed": instance.total_completed_tasks,
            },
        ]
        if instance.total_completed_tasks == instance.total_enqueued_tasks:
            return instance.complete(seen)
        return instance.continue_with(seen)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


def start_manager(make_manager: MakeManager, tasks: dict[str, Any], **options: Any) -> Manager:
    """A started manager running ``RunTasks`` as workflow ``run`` and the given task executors.

    ``tasks`` maps a task name to an executor or to ``(executor, {registration options})``.
    """
    manager = make_manager(**options)
    manager.register_workflow_executor("run", RunTasks())
    for name, spec in tasks.items():
        executor, kwargs = spec if isinstance(spec, tuple) else (spec, {})
        manager.register_task_executor(name, executor, **kwargs)
    manager.start()
    return manager


def run_workflow(
    manager: Manager, instance: str, tasks: list[dict[str, Any]], timeout: float = 15
) -> list[dict[str, Any]]:
    """Enqueue ``run``/``instance`` with ``tasks``, wait for it and return the task results."""
    manager.enqueue_workflow("run", instance, {"tasks": tasks})
    info = manager.await_workflow("run", instance, timeout=timeout)
    assert info.status is WorkflowStatus.COMPLETED, info
    return list(info.result)


# -- results ---------------------------------------------------------------------------------


def test_returned_value_is_recorded_as_success_with_that_value(
    make_any_manager: MakeManager,
) -> None:
    def echo(task: Task) -> Any:
        return {"got": task.parameters, "list": [1, 2.5, None, "x"]}

    manager = start_manager(make_any_manager, {"echo": echo})
    [result] = run_workflow(manager, "i1", [{"name": "echo", "params": {"n": 7}}])

    assert result["status"] == "success"
    assert result["ok"] is True
    assert result["value"] == {"got": {"n": 7}, "list": [1, 2.5, None, "x"]}
    assert result["error"] is None
    assert result["params"] == {"n": 7}


def test_raised_exception_is_recorded_as_failed_with_type_and_message(
    make_any_manager: MakeManager,
) -> None:
    class QuotaExceeded(Exception):
        pass

    def explode(task: Task) -> None:
        raise QuotaExceeded(f"quota of {task.parameters['who']} is used up")

    manager = start_manager(make_any_manager, {"explode": explode})
    [result] = run_workflow(manager, "i1", [{"name": "explode", "params": {"who": "ann"}}])

    assert result["status"] == "failed"
    assert result["ok"] is False
    assert result["error"] == "QuotaExceeded: quota of ann is used up"
    assert result["value"] is None


def test_unserialisable_return_value_is_recorded_as_failed(make_any_manager: MakeManager) -> None:
    def bad(task: Task) -> Any:
        return {"when": datetime.now(UTC)}

    manager = start_manager(make_any_manager, {"bad": bad})
    [result] = run_workflow(manager, "i1", [{"name": "bad"}])

    assert result["status"] == "failed"
    assert result["value"] is None
    assert "not JSON-serialisable" in result["error"]
    assert "datetime" in result["error"]


def _plain(task: Task) -> Any:
    return ["plain", task.parameters]


class _SyncRun:
    def run(self, task: Task) -> Any:
        return ["object", task.parameters]


class _AsyncRun:
    async def run(self, task: Task) -> Any:
        await asyncio.sleep(0.01)
        return ["async object", task.parameters]


async def _coroutine_function(task: Task) -> Any:
    await asyncio.sleep(0.01)
    return ["coroutine function", task.parameters]


@pytest.mark.parametrize(
    ("executor", "tag"),
    [
        (_plain, "plain"),
        (_SyncRun(), "object"),
        (_AsyncRun(), "async object"),
        (_coroutine_function, "coroutine function"),
    ],
    ids=["function", "object-run", "async-run-method", "coroutine-function"],
)
def test_every_kind_of_task_executor_runs(
    make_any_manager: MakeManager, executor: Any, tag: str
) -> None:
    manager = start_manager(make_any_manager, {"job": executor})
    results = run_workflow(
        manager, "i1", [{"name": "job", "params": 1}, {"name": "job", "params": 2}]
    )

    assert sorted(r["value"][1] for r in results) == [1, 2]
    assert {r["value"][0] for r in results} == {tag}
    assert all(r["status"] == "success" for r in results)


def test_both_sync_and_async_executors_run_side_by_side(make_any_manager: MakeManager) -> None:
    manager = start_manager(make_any_manager, {"sync": _plain, "async": _coroutine_function})
    results = run_workflow(
        manager, "i1", [{"name": "sync", "params": "a"}, {"name": "async", "params": "b"}]
    )

    assert sorted(r["value"][0] for r in results) == ["coroutine function", "plain"]


# -- the Task object -----------------------------------------------------------------------


def test_task_carries_name_parameters_enqueue_time_workflow_instance_and_deadline(
    make_any_manager: MakeManager,
) -> None:
    seen: dict[str, Task] = {}
    ran_at: dict[str, datetime] = {}

    def capture(task: Task) -> None:
        ran_at[task.name] = datetime.now(UTC)
        seen[task.name] = task

    manager = start_manager(
        make_any_manager, {"timed": (capture, {"timeout": 30}), "untimed": capture}
    )
    before = datetime.now(UTC)
    run_workflow(
        manager,
        "inst-7",
        [{"name": "timed", "params": {"a": [1, 2]}}, {"name": "untimed", "params": "s"}],
    )
    after = datetime.now(UTC)

    timed, untimed = seen["timed"], seen["untimed"]
    assert (timed.name, untimed.name) == ("timed", "untimed")
    assert timed.parameters == {"a": [1, 2]}
    assert untimed.parameters == "s"
    for task in (timed, untimed):
        assert task.workflow_name == "run"
        assert task.instance_name == "inst-7"
        assert task.enqueued_at.tzinfo is not None
        assert before - timedelta(seconds=1) <= task.enqueued_at <= after
        assert isinstance(task.cancelled, threading.Event)
        assert not task.cancelled.is_set()
    assert untimed.deadline is None
    assert timed.deadline is not None
    expected = ran_at["timed"] + timedelta(seconds=30)
    assert abs((timed.deadline - expected).total_seconds()) < 1.0


# -- workers ---------------------------------------------------------------------------------


class ConcurrencyMeter:
    """Counts how many runs are in progress at once."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.runs = 0

    def __call__(self, task: Task) -> int:
        with self.lock:
            self.now += 1
            self.runs += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(self.hold)
        finally:
            with self.lock:
                self.now -= 1
        return int(task.parameters)


def test_workers_bounds_concurrent_runs_of_a_task_name(make_any_manager: MakeManager) -> None:
    three = ConcurrencyMeter(hold=0.15)
    one = ConcurrencyMeter(hold=0.05)
    manager = start_manager(
        make_any_manager, {"three": (three, {"workers": 3}), "one": (one, {"workers": 1})}
    )
    tasks = [{"name": "three", "params": n} for n in range(12)]
    tasks += [{"name": "one", "params": n} for n in range(4)]
    results = run_workflow(manager, "i1", tasks, timeout=30)

    assert len(results) == 16
    assert all(r["status"] == "success" for r in results)
    assert three.runs == 12
    assert 1 < three.peak <= 3
    assert one.runs == 4
    assert one.peak == 1


def test_workers_bounds_async_task_concurrency_too(make_any_manager: MakeManager) -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    async def meter(task: Task) -> None:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.1)
        with lock:
            state["now"] -= 1

    manager = start_manager(make_any_manager, {"meter": (meter, {"workers": 2})})
    results = run_workflow(manager, "i1", [{"name": "meter"}] * 8, timeout=30)

    assert len(results) == 8
    assert state["peak"] == 2


def test_workers_bounds_short_tasks_claimed_ahead(make_any_manager: MakeManager) -> None:
    quick = ConcurrencyMeter(hold=0.002)
    manager = start_manager(make_any_manager, {"quick": (quick, {"workers": 2})})
    tasks = [{"name": "quick", "params": n} for n in range(60)]
    results = run_workflow(manager, "i1", tasks, timeout=30)

    assert sorted(r["value"] for r in results) == list(range(60))
    assert quick.runs == 60
    assert quick.peak <= 2


def test_short_tasks_claimed_ahead_are_handed_back_unrun_at_stop(
    make_manager: MakeManager, pg_dsn: str, schema: str
) -> None:
    ran: list[Any] = []
    blocking = threading.Event()

    def step(task: Task) -> None:
        ran.append(task.parameters)
        if task.parameters == "block":
            blocking.set()
            task.cancelled.wait(10)

    # The first run is short, so the next claim takes one task more than the free worker:
    # "block" runs while "ahead" waits for the worker, claimed but not started.
    manager = start_manager(make_manager, {"step": step})
    names = ["quick", "block", "ahead"]
    manager.enqueue_workflow("run", "i1", {"tasks": [{"name": "step", "params": n} for n in names]})
    assert blocking.wait(10)

    def claimed() -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return conn.execute(
                f'SELECT parameters, state, claimed_by IS NULL FROM "{schema}".tasks'
            ).fetchall()

    wait_for(lambda: ("ahead", "running", False) in claimed(), 10, "the task claimed ahead")
    manager.stop(timeout=10)

    assert ran == ["quick", "block"]
    assert ("ahead", "queued", True) in claimed()


# -- timeouts --------------------------------------------------------------------------------


def test_sync_task_past_its_timeout_is_cancelled_failed_and_its_late_return_discarded(
    make_any_manager: MakeManager,
) -> None:
    observed: dict[str, Any] = {}
    returned = threading.Event()

    def slow(task: Task) -> str:
        observed["deadline"] = task.deadline
        observed["cancelled"] = task.cancelled.wait(10)
        observed["cancelled_at"] = datetime.now(UTC)
        returned.set()
        return "late value"

    def marker(task: Task) -> str:
        return "marker"

    manager = start_manager(make_any_manager, {"slow": (slow, {"timeout": 0.5}), "marker": marker})
    # The marker runs well after the slow task's late return: if that return were recorded,
    # the workflow would complete on it and never see the marker.
    results = run_workflow(
        manager, "i1", [{"name": "slow"}, {"name": "marker", "delay": 1.5}], timeout=20
    )

    assert returned.is_set()
    assert observed["cancelled"] is True
    lateness = (observed["cancelled_at"] - observed["deadline"]).total_seconds()
    assert -0.1 <= lateness < 1.0
    assert [r["task"] for r in results] == ["slow", "marker"]
    slow_result = results[0]
    assert slow_result["status"] == "failed"
    assert slow_result["value"] is None
    assert "TimeoutError" in slow_result["error"]
    assert "timeout" in slow_result["error"]
    assert "0.5" in slow_result["error"]
    assert results[1]["value"] == "marker"


def test_async_task_past_its_timeout_is_cancelled_and_failed(make_any_manager: MakeManager) -> None:
    observed: dict[str, Any] = {}

    async def sleepy(task: Task) -> str:
        started = time.monotonic()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            observed["cancelled_after"] = time.monotonic() - started
            observed["event_set"] = task.cancelled.is_set()
            raise
        return "never"

    manager = start_manager(make_any_manager, {"sleepy": (sleepy, {"timeout": 0.5})})
    started = time.monotonic()
    [result] = run_workflow(manager, "i1", [{"name": "sleepy"}], timeout=10)

    assert time.monotonic() - started < 5
    assert result["status"] == "failed"
    assert "TimeoutError" in result["error"]
    # The failure is recorded without waiting for the coroutine to unwind; the cancellation
    # reaches it on the event loop thread soon after.
    wait_for(lambda: "cancelled_after" in observed, timeout=5, what="the coroutine cancelled")
    assert 0.4 <= observed["cancelled_after"] < 2.0
    assert observed["event_set"] is True


def test_task_finishing_within_its_timeout_succeeds(make_any_manager: MakeManager) -> None:
    def quick(task: Task) -> str:
        time.sleep(0.1)
        assert not task.cancelled.is_set()
        return "in time"

    manager = start_manager(make_any_manager, {"quick": (quick, {"timeout": 5})})
    [result] = run_workflow(manager, "i1", [{"name": "quick"}])

    assert result["status"] == "success"
    assert result["value"] == "in time"


# -- start_after -----------------------------------------------------------------------------


def test_start_after_timedelta_delays_the_task(make_any_manager: MakeManager) -> None:
    ran: list[float] = []

    def stamp(task: Task) -> None:
        ran.append(time.monotonic())

    manager = start_manager(make_any_manager, {"stamp": stamp})
    enqueued = time.monotonic()
    run_workflow(manager, "i1", [{"name": "stamp", "delay": 1.2}])

    # The delay starts on the database's clock when on_start commits, after `enqueued`.
    assert 1.15 <= ran[0] - enqueued < 1.2 + 1.5


@pytest.mark.parametrize("naive", [False, True], ids=["aware", "naive-utc"])
def test_start_after_datetime_delays_the_task_until_then(
    make_any_manager: MakeManager, naive: bool
) -> None:
    ran: list[float] = []

    def stamp(task: Task) -> None:
        ran.append(time.time())

    manager = start_manager(make_any_manager, {"stamp": stamp})
    at = time.time() + 1.2
    run_workflow(manager, "i1", [{"name": "stamp", "at": at, "naive": naive}])

    assert at - 0.05 <= ran[0] < at + 1.5


def test_tasks_without_start_after_run_before_delayed_ones(make_any_manager: MakeManager) -> None:
    def name(task: Task) -> Any:
        return task.parameters

    manager = start_manager(make_any_manager, {"name": (name, {"workers": 2})})
    results = run_workflow(
        manager,
        "i1",
        [{"name": "name", "params": "later", "delay": 1}, {"name": "name", "params": "now"}],
    )

    assert [r["value"] for r in results] == ["now", "later"]


# -- unregistered task names -----------------------------------------------------------------


def test_tasks_of_an_unregistered_name_wait_in_the_queue_until_someone_runs_them(
    make_manager: MakeManager, pg_dsn: str, schema: str
) -> None:
    manager = start_manager(make_manager, {"other": _plain})
    manager.enqueue_workflow("run", "i1", {"tasks": [{"name": "orphan", "params": 5}]})

    def orphan_rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return conn.execute(
                f'SELECT state, claimed_by FROM "{schema}".tasks WHERE task_name = %s',
                ("orphan",),
            ).fetchall()

    wait_for(orphan_rows, 10, "the orphan task to be queued")
    # Several task polls and more than one lost-task period later, it is still queued.
    time.sleep(1.5)
    assert orphan_rows() == [("queued", None)]
    assert manager.get_workflow_instance("run", "i1").status is WorkflowStatus.RUNNING

    helper = make_manager()
    helper.register_task_executor("orphan", lambda task: task.parameters * 10)
    helper.start()
    info = manager.await_workflow("run", "i1", timeout=10)

    assert info.status is WorkflowStatus.COMPLETED
    assert [(r["task"], r["status"], r["value"]) for r in info.result] == [
        ("orphan", "success", 50)
    ]


# -- stopping --------------------------------------------------------------------------------


def test_stopping_the_manager_sets_cancelled_for_running_tasks(
    make_any_manager: MakeManager,
) -> None:
    started, started_async = threading.Event(), threading.Event()
    observed: dict[str, Any] = {}

    def patient(task: Task) -> str:
        started.set()
        observed["cancelled"] = task.cancelled.wait(15)
        return "stopped early"

    async def patient_async(task: Task) -> str:
        started_async.set()
        while not task.cancelled.is_set():
            await asyncio.sleep(0.02)
        observed["async cancelled"] = True
        return "stopped early"

    manager = start_manager(make_any_manager, {"patient": patient, "patient_async": patient_async})
    manager.enqueue_workflow(
        "run", "i1", {"tasks": [{"name": "patient"}, {"name": "patient_async"}]}
    )
    assert started.wait(10)
    assert started_async.wait(10)

    stopping = time.monotonic()
    manager.stop(timeout=10)

    assert time.monotonic() - stopping < 3
    assert observed["cancelled"] is True
    assert observed["async cancelled"] is True
