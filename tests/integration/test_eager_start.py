"""Eager start (``Manager(eager_start=True)``): ``enqueue_workflow`` of a workflow the running
manager handles runs ``on_start`` in the calling thread and commits the instance, its decision
and its first tasks together; anything else enqueues as usual."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from cereal import (
    Manager,
    Task,
    WorkflowInstance,
    WorkflowStatus,
)
from cereal.backends.postgres import PostgresDriver
from cereal.errors import CerealError, WorkflowInstanceExistsError
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

WF = "wf"
AWAIT = 15.0
MakeManager = Callable[..., Manager]


def one_task(inst: WorkflowInstance, event: Any) -> Any:
    inst.enqueue_task("t", inst.parameters)
    return inst.continue_with("waiting")


def test_on_start_runs_in_the_enqueuing_thread_before_enqueue_returns(
    make_any_manager: MakeManager,
) -> None:
    threads: list[int] = []
    ran: list[Any] = []
    running, go = threading.Event(), threading.Event()

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        threads.append(threading.get_ident())
        return one_task(inst, event)

    def task(t: Task) -> int:
        ran.append(t.parameters)
        running.set()
        go.wait(AWAIT)
        return 2 * int(t.parameters)

    m = make_any_manager(eager_start=True)
    m.register_workflow_executor(
        WF, Flow(on_start=on_start, on_task=lambda inst, ev: inst.complete(ev.result.value))
    )
    m.register_task_executor("t", task)
    m.start()
    m.enqueue_workflow(WF, "a", 21)
    assert threads == [threading.get_ident()]
    assert running.wait(AWAIT) and ran == [21]
    live = m.get_workflow_instance(WF, "a")
    assert (live.status, live.payload) == (WorkflowStatus.RUNNING, "waiting")
    go.set()
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 42)
    assert threads == [threading.get_ident()]  # the start was never handled again


def test_a_run_that_completes_in_on_start_is_finished_when_enqueue_returns(
    make_any_manager: MakeManager,
) -> None:
    finished: list[str] = []
    m = make_any_manager(
        eager_start=True, on_workflow_complete=lambda info: finished.append(info.instance_name)
    )
    m.register_workflow_executor(WF, Flow(on_start=lambda inst, ev: inst.complete("now")))
    m.start()
    m.enqueue_workflow(WF, "a")
    info = m.get_workflow_instance(WF, "a")
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, "now")
    assert finished == ["a"]
    m.enqueue_workflow(WF, "a")  # the pair is free again


def test_a_live_pair_raises_and_runs_nothing(make_any_manager: MakeManager) -> None:
    flow = Flow()
    m = make_any_manager(eager_start=True)
    m.register_workflow_executor(WF, flow)
    m.start()
    m.enqueue_workflow(WF, "a", 1)
    with pytest.raises(WorkflowInstanceExistsError):
        m.enqueue_workflow(WF, "a", 2)
    assert flow.names("a") == ["on_start"]
    assert m.get_workflow_instance(WF, "a").parameters == 1


def test_on_start_raising_fails_the_run_without_raising_from_enqueue(
    make_any_manager: MakeManager,
) -> None:
    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        raise ValueError("bad order")

    m = make_any_manager(eager_start=True)
    m.register_workflow_executor(WF, Flow(on_start=on_start))
    m.start()
    m.enqueue_workflow(WF, "a")
    info = m.get_workflow_instance(WF, "a")
    assert info.status is WorkflowStatus.FAILED
    assert info.error is not None and "ValueError: bad order" in info.error


def test_a_decision_the_database_refuses_is_handed_to_the_handlers(
    make_any_manager: MakeManager,
) -> None:
    """The eager commit stores nothing; the handlers run on_start again and fail the run as
    they fail any unstorable decision."""
    starts: list[int] = []

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        starts.append(threading.get_ident())
        inst.enqueue_task("never", start_after=timedelta(days=999_999_999))
        return inst.continue_with()

    m = make_any_manager(eager_start=True)
    m.register_workflow_executor(WF, Flow(on_start=on_start))
    m.start()
    m.enqueue_workflow(WF, "bad")
    info = m.await_workflow(WF, "bad", timeout=AWAIT)
    assert info.status is WorkflowStatus.FAILED
    assert info.error is not None and "cannot store the decision" in info.error
    assert starts[0] == threading.get_ident() and len(starts) >= 2


def test_without_a_running_manager_for_the_workflow_enqueue_is_as_usual(
    make_any_manager: MakeManager,
) -> None:
    flow = Flow()
    m = make_any_manager(eager_start=True)
    m.register_workflow_executor(WF, flow)
    m.enqueue_workflow(WF, "before start")
    m.enqueue_workflow("elsewhere", "a")  # handled by some other manager
    assert flow.names() == []
    assert m.get_workflow_instance(WF, "before start").status is WorkflowStatus.STARTING
    m.start()
    wait_for(
        lambda: m.get_workflow_instance(WF, "before start").status is WorkflowStatus.RUNNING,
        what="the handlers to start it",
    )
    assert flow.names() == ["on_start"]
    assert m.get_workflow_instance("elsewhere", "a").status is WorkflowStatus.STARTING


def test_eager_start_is_off_by_default(make_any_manager: MakeManager) -> None:
    threads: list[int] = []

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        threads.append(threading.get_ident())
        return inst.complete()

    m = make_any_manager()
    m.register_workflow_executor(WF, Flow(on_start=on_start))
    m.start()
    m.enqueue_workflow(WF, "a")
    m.await_workflow(WF, "a", timeout=AWAIT)
    assert threads and threads[0] != threading.get_ident()


def test_eager_start_takes_a_bool_only() -> None:
    with pytest.raises(CerealError, match="eager_start must be a bool"):
        Manager(PostgresDriver("postgresql://unused"), eager_start="yes")


def test_other_sessions_see_nothing_until_the_eager_commit(
    make_manager: MakeManager, pg_dsn: str, schema: str
) -> None:
    seen: list[Any] = []
    other = PostgresDriver(pg_dsn, schema=schema)

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        seen.append(other.get_workflow_instance(WF, inst.instance_name))
        seen.append(other.list_workflow_instances(workflow_name=WF))
        return inst.continue_with()

    try:
        m = make_manager(eager_start=True)
        m.register_workflow_executor(WF, Flow(on_start=on_start))
        m.start()
        m.enqueue_workflow(WF, "a")
        assert seen == [None, []]
        info = other.get_workflow_instance(WF, "a")
        assert info is not None and info.status is WorkflowStatus.RUNNING
    finally:
        other.close()
