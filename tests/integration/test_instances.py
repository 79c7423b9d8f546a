"""Workflow-instance operations against PostgreSQL: enqueue, get, list, cancel, kill, await,
argument checking and the manager's lifecycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from cereal import (
    Decision,
    Manager,
    Task,
    WorkflowInstance,
    WorkflowInstanceInfo,
    WorkflowStatus,
)
from cereal.errors import (
    CerealError,
    InvalidNameError,
    ManagerStateError,
    SerializationError,
    WorkflowInstanceExistsError,
    WorkflowInstanceNotFoundError,
)
from tests.helpers.recorders import Flow
from tests.helpers.rows import count_rows
from tests.helpers.waiting import wait_for

WF = "wf"
MakeManager = Callable[..., Manager]
Handler = Callable[[WorkflowInstance, Any], Decision]
AWAIT = 15.0


def wait_status(m: Manager, name: str, status: WorkflowStatus, wf: str = WF) -> Any:
    return wait_for(
        lambda: (i := m.get_workflow_instance(wf, name)).status is status and i,
        what=f"{wf}/{name} to be {status}",
    )


def started(make_manager: MakeManager, flow: Flow, wf: str = WF, **options: Any) -> Manager:
    m = make_manager(**options)
    m.register_workflow_executor(wf, flow)
    m.start()
    return m


def finishes_with(result: Any) -> Flow:
    return Flow(on_start=lambda inst, ev: inst.complete(result))


# --- enqueue ------------------------------------------------------------------------------------


def test_enqueue_duplicate_live_pair_raises_exists_without_side_effects(
    make_any_manager: MakeManager,
) -> None:
    m = make_any_manager()
    m.enqueue_workflow(WF, "a", {"run": 1})
    with pytest.raises(WorkflowInstanceExistsError, match="'wf'/'a'"):
        m.enqueue_workflow(WF, "a", {"run": 2})
    info = m.get_workflow_instance(WF, "a")
    assert info.parameters == {"run": 1}
    assert count_rows(m, "workflow_instances") == 1
    assert count_rows(m, "workflow_events") == 1
    # Another instance name or workflow name is a different pair.
    m.enqueue_workflow(WF, "b")
    m.enqueue_workflow("other", "a")
    assert count_rows(m, "workflow_instances") == 3


def test_same_pair_can_be_enqueued_again_after_it_finishes_and_history_keeps_old_run(
    make_manager: MakeManager,
) -> None:
    flow = Flow(on_start=lambda inst, ev: inst.complete({"echo": inst.parameters}))
    m = started(make_manager, flow)
    m.enqueue_workflow(WF, "a", 1)
    first = m.await_workflow(WF, "a", timeout=AWAIT)
    assert first.result == {"echo": 1}
    m.enqueue_workflow(WF, "a", 2)
    second = m.await_workflow(WF, "a", timeout=AWAIT)
    assert second.result == {"echo": 2}
    assert second.started_at is not None and first.started_at is not None
    assert second.started_at >= first.started_at
    assert m.get_workflow_instance(WF, "a").result == {"echo": 2}
    with m.driver.connection() as conn:
        rows = conn.execute(
            "SELECT parameters, result FROM workflow_results"
            " WHERE workflow_name = 'wf' AND instance_name = 'a' ORDER BY id"
        ).fetchall()
    assert rows == [(1, {"echo": 1}), (2, {"echo": 2})]


# --- get ---------------------------------------------------------------------------------------


def test_get_returns_starting_instance_before_any_manager_ran_it(
    make_any_manager: MakeManager,
) -> None:
    m = make_any_manager()
    m.enqueue_workflow(WF, "a", {"p": [1, 2]})
    info = m.get_workflow_instance(WF, "a")
    assert isinstance(info, WorkflowInstanceInfo)
    assert (info.workflow_name, info.instance_name) == (WF, "a")
    assert info.status is WorkflowStatus.STARTING
    assert info.is_running
    assert info.parameters == {"p": [1, 2]}
    assert info.payload is None and info.result is None and info.error is None
    assert info.started_at is not None and info.started_at.utcoffset() == timedelta(0)
    assert info.ended_at is None


def test_get_returns_running_instance_with_its_payload(make_any_manager: MakeManager) -> None:
    m = started(make_any_manager, Flow(on_start=lambda inst, ev: inst.continue_with({"step": 1})))
    m.enqueue_workflow(WF, "a", "params")
    info = wait_status(m, "a", WorkflowStatus.RUNNING)
    assert info.is_running
    assert info.payload == {"step": 1}
    assert info.parameters == "params"
    assert info.result is None and info.error is None and info.ended_at is None


def test_get_returns_completed_run_with_result_and_no_payload(
    make_any_manager: MakeManager,
) -> None:
    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        return inst.complete({"got": ev.result.value, "payload_was": inst.payload})

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("t")
        return inst.continue_with("mid-run payload")

    m = make_any_manager()
    m.register_workflow_executor(WF, Flow(on_start=on_start, on_task=on_task))
    m.register_task_executor("t", lambda task: 5)
    m.start()
    m.enqueue_workflow(WF, "a", {"x": 1})
    m.await_workflow(WF, "a", timeout=AWAIT)
    info = m.get_workflow_instance(WF, "a")
    assert info.status is WorkflowStatus.COMPLETED
    assert not info.is_running
    assert info.result == {"got": 5, "payload_was": "mid-run payload"}
    assert info.payload is None
    assert info.error is None
    assert info.parameters == {"x": 1}
    assert info.started_at is not None and info.ended_at is not None
    assert info.ended_at >= info.started_at


def test_get_returns_failed_run_with_error_and_no_result(make_any_manager: MakeManager) -> None:
    m = started(make_any_manager, Flow(on_start=lambda inst, ev: inst.fail("nope")))
    m.enqueue_workflow(WF, "a")
    m.await_workflow(WF, "a", timeout=AWAIT)
    info = m.get_workflow_instance(WF, "a")
    assert info.status is WorkflowStatus.FAILED
    assert not info.is_running
    assert info.error == "nope"
    assert info.result is None and info.payload is None
    assert info.started_at is not None and info.ended_at is not None


def test_get_prefers_the_live_instance_over_a_finished_run(make_any_manager: MakeManager) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.parameters == "quick":
            return inst.complete("done")
        return inst.continue_with("waiting")

    m = started(make_any_manager, Flow(on_start=on_start))
    m.enqueue_workflow(WF, "a", "quick")
    m.await_workflow(WF, "a", timeout=AWAIT)
    m.enqueue_workflow(WF, "a", "slow")
    info = wait_status(m, "a", WorkflowStatus.RUNNING)
    assert info.parameters == "slow"
    assert info.payload == "waiting"
    assert info.result is None


def test_get_unknown_instance_raises_not_found(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.enqueue_workflow(WF, "a")
    with pytest.raises(WorkflowInstanceNotFoundError, match="'wf'/'b'"):
        m.get_workflow_instance(WF, "b")
    with pytest.raises(WorkflowInstanceNotFoundError):
        m.get_workflow_instance("other", "a")


# --- list --------------------------------------------------------------------------------------


def test_list_returns_one_row_per_pair_and_filters(make_any_manager: MakeManager) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.parameters == "fail":
            return inst.fail("failed on purpose")
        if inst.parameters == "run":
            return inst.continue_with({"running": True})
        return inst.complete(inst.parameters)

    m = make_any_manager()
    flow = Flow(on_start=on_start)
    m.register_workflow_executor("wf1", flow)
    m.register_workflow_executor("wf2", flow)
    m.start()
    for params in ("first", "second"):  # two finished runs of wf1/a: only the latest is listed
        m.enqueue_workflow("wf1", "a", params)
        m.await_workflow("wf1", "a", timeout=AWAIT)
    m.enqueue_workflow("wf2", "a", "fail")
    m.await_workflow("wf2", "a", timeout=AWAIT)
    m.enqueue_workflow("wf1", "b", "run")
    wait_status(m, "b", WorkflowStatus.RUNNING, wf="wf1")
    m.enqueue_workflow("wf3", "c", "nobody runs wf3")  # stays STARTING: no executor anywhere

    def summary(rows: list[WorkflowInstanceInfo]) -> list[tuple[str, str, str]]:
        return sorted((r.workflow_name, r.instance_name, r.status.value) for r in rows)

    everything = m.list_workflow_instances()
    assert summary(everything) == [
        ("wf1", "a", "completed"),
        ("wf1", "b", "running"),
        ("wf2", "a", "failed"),
        ("wf3", "c", "starting"),
    ]
    by_pair = {(r.workflow_name, r.instance_name): r for r in everything}
    assert by_pair["wf1", "a"].result == "second"
    assert by_pair["wf1", "a"].parameters == "second"
    assert by_pair["wf1", "a"].ended_at is not None
    assert by_pair["wf1", "b"].payload == {"running": True}
    assert by_pair["wf1", "b"].result is None and by_pair["wf1", "b"].ended_at is None
    assert by_pair["wf2", "a"].error == "failed on purpose"
    assert by_pair["wf2", "a"].payload is None

    assert summary(m.list_workflow_instances(workflow_name="wf1")) == [
        ("wf1", "a", "completed"),
        ("wf1", "b", "running"),
    ]
    assert summary(m.list_workflow_instances(instance_name="a")) == [
        ("wf1", "a", "completed"),
        ("wf2", "a", "failed"),
    ]
    assert summary(m.list_workflow_instances(workflow_name="wf2", instance_name="a")) == [
        ("wf2", "a", "failed")
    ]
    assert summary(m.list_workflow_instances(is_running=True)) == [
        ("wf1", "b", "running"),
        ("wf3", "c", "starting"),
    ]
    assert summary(m.list_workflow_instances(is_running=False)) == [
        ("wf1", "a", "completed"),
        ("wf2", "a", "failed"),
    ]
    assert summary(m.list_workflow_instances(workflow_name="wf1", is_running=False)) == [
        ("wf1", "a", "completed")
    ]
    assert m.list_workflow_instances(workflow_name="nope") == []


def test_list_shows_live_row_not_history_for_a_rerun_pair(make_any_manager: MakeManager) -> None:
    m = started(make_any_manager, Flow(on_start=lambda inst, ev: inst.complete("old")))
    m.enqueue_workflow(WF, "a")
    m.await_workflow(WF, "a", timeout=AWAIT)
    m.enqueue_workflow("unrun", "a")  # a different pair, never processed
    m.stop()
    m2 = make_any_manager()  # not started: the re-enqueued pair stays STARTING
    m2.enqueue_workflow(WF, "a", "again")
    rows = m2.list_workflow_instances(workflow_name=WF)
    assert [(r.status, r.parameters) for r in rows] == [(WorkflowStatus.STARTING, "again")]
    assert m2.list_workflow_instances(workflow_name=WF, is_running=False) == []
    assert len(m2.list_workflow_instances(workflow_name=WF, is_running=True)) == 1


# --- cancel ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decide", "status", "result", "error"),
    [
        (lambda inst, ev: inst.complete("stopped cleanly"), "completed", "stopped cleanly", None),
        (lambda inst, ev: inst.fail("cancelled by user"), "failed", None, "cancelled by user"),
    ],
    ids=["complete", "fail"],
)
def test_cancel_delivers_on_cancel_which_decides(
    make_any_manager: MakeManager, decide: Handler, status: str, result: Any, error: Any
) -> None:
    flow = Flow(on_start=lambda inst, ev: inst.continue_with("p"), on_cancel=decide)
    m = started(make_any_manager, flow)
    m.enqueue_workflow(WF, "a")
    wait_status(m, "a", WorkflowStatus.RUNNING)
    m.cancel_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status.value == status
    assert (info.result, info.error) == (result, error)
    assert flow.names() == ["on_start", "on_cancel"]
    assert flow.calls[1][2] == "p"  # on_cancel saw the payload


def test_cancel_answered_with_continue_keeps_the_instance_running(
    make_any_manager: MakeManager,
) -> None:
    flow = Flow(on_cancel=lambda inst, ev: inst.continue_with("ignored the cancel"))
    m = started(make_any_manager, flow)
    m.enqueue_workflow(WF, "a")
    wait_status(m, "a", WorkflowStatus.RUNNING)
    m.cancel_workflow(WF, "a")
    info = wait_for(
        lambda: (i := m.get_workflow_instance(WF, "a")).payload == "ignored the cancel" and i,
        what="on_cancel's payload",
    )
    assert info.status is WorkflowStatus.RUNNING
    assert flow.names() == ["on_start", "on_cancel"]


def test_cancel_of_unknown_or_finished_instance_raises_not_found(
    make_any_manager: MakeManager,
) -> None:
    m = started(make_any_manager, finishes_with("done"))
    with pytest.raises(WorkflowInstanceNotFoundError, match="'wf'/'never'"):
        m.cancel_workflow(WF, "never")
    m.enqueue_workflow(WF, "a")
    m.await_workflow(WF, "a", timeout=AWAIT)
    with pytest.raises(WorkflowInstanceNotFoundError):
        m.cancel_workflow(WF, "a")
    assert m.get_workflow_instance(WF, "a").status is WorkflowStatus.COMPLETED


def _run_on_start_then_stop(make_manager: MakeManager, flow: Flow) -> None:
    first = started(make_manager, flow)
    first.enqueue_workflow(WF, "a")
    wait_status(first, "a", WorkflowStatus.RUNNING)
    first.stop()


def test_second_cancel_is_delivered_when_the_first_continued(make_any_manager: MakeManager) -> None:
    def on_cancel(inst: WorkflowInstance, ev: Any) -> Decision:
        seen = (inst.payload or 0) + 1
        return inst.complete(seen) if seen == 2 else inst.continue_with(seen)

    flow = Flow(on_cancel=on_cancel)
    _run_on_start_then_stop(make_any_manager, flow)
    idle = make_any_manager()  # two cancels queue up while no manager runs
    idle.cancel_workflow(WF, "a")
    idle.cancel_workflow(WF, "a")
    m = started(make_any_manager, flow)
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED
    assert info.result == 2
    assert flow.names() == ["on_start", "on_cancel", "on_cancel"]
    assert [c[2] for c in flow.calls[1:]] == [None, 1]


def test_second_cancel_is_dropped_when_the_first_finished(make_any_manager: MakeManager) -> None:
    flow = Flow(on_cancel=lambda inst, ev: inst.complete("first cancel"))
    _run_on_start_then_stop(make_any_manager, flow)
    idle = make_any_manager()
    idle.cancel_workflow(WF, "a")
    idle.cancel_workflow(WF, "a")
    assert count_rows(idle, "workflow_events", "cancel") == 2
    m = started(make_any_manager, flow)
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.result == "first cancel"
    assert flow.names() == ["on_start", "on_cancel"]
    assert count_rows(m, "workflow_events") == 0


def test_cancel_before_on_start_ran_fails_without_calling_on_start(
    make_any_manager: MakeManager,
) -> None:
    idle = make_any_manager()
    idle.enqueue_workflow(WF, "a")
    idle.cancel_workflow(WF, "a")
    flow = Flow()
    m = started(make_any_manager, flow)
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status is WorkflowStatus.FAILED
    assert info.error == "canceled starting workflow"
    assert flow.calls == []


# --- kill --------------------------------------------------------------------------------------


def test_kill_fails_the_instance_with_killed_without_calling_the_executor(
    make_any_manager: MakeManager,
) -> None:
    completed: list[WorkflowInstanceInfo] = []
    flow = Flow(on_start=lambda inst, ev: inst.continue_with("busy"))
    m = started(make_any_manager, flow, on_workflow_complete=completed.append)
    m.enqueue_workflow(WF, "a", {"k": 1})
    wait_status(m, "a", WorkflowStatus.RUNNING)
    m.kill_workflow(WF, "a")
    info = m.get_workflow_instance(WF, "a")
    assert info.status is WorkflowStatus.FAILED
    assert info.error == "killed"
    assert info.parameters == {"k": 1}
    assert info.payload is None and info.result is None
    assert info.ended_at is not None
    assert m.await_workflow(WF, "a", timeout=AWAIT).error == "killed"
    assert flow.names() == ["on_start"]  # neither on_cancel nor anything else
    assert count_rows(m, "workflow_instances") == 0


def test_kill_before_start_means_on_start_never_runs(make_any_manager: MakeManager) -> None:
    idle = make_any_manager()
    idle.enqueue_workflow(WF, "a")
    idle.enqueue_workflow(WF, "b")
    idle.kill_workflow(WF, "a")
    flow = Flow(on_start=lambda inst, ev: inst.complete("ran"))
    m = started(make_any_manager, flow)
    assert m.await_workflow(WF, "b", timeout=AWAIT).result == "ran"
    assert m.get_workflow_instance(WF, "a").error == "killed"
    assert flow.names("a") == []


def test_kill_drops_queued_tasks_and_stops_running_ones(make_any_manager: MakeManager) -> None:
    running = threading.Event()
    saw_cancel = threading.Event()
    returned = threading.Event()
    runs: list[Any] = []

    def slow(task: Task) -> str:
        runs.append(task.parameters)
        if task.parameters == "sentinel":
            return "sentinel ran"
        running.set()
        if task.cancelled.wait(10):
            saw_cancel.set()
        returned.set()
        return "late result"

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.parameters == "sentinel":
            inst.enqueue_task("slow", "sentinel")
        else:
            for i in range(4):  # one runs (workers=1), three wait in the queue
                inst.enqueue_task("slow", i)
            inst.enqueue_task("slow", "later", start_after=timedelta(hours=1))
        return inst.continue_with()

    flow = Flow(on_start=on_start, on_task=lambda inst, ev: inst.complete(ev.result.value))
    m = make_any_manager(heartbeat_interval=0.5)
    m.register_workflow_executor(WF, flow)
    m.register_task_executor("slow", slow, workers=1)
    m.start()
    m.enqueue_workflow(WF, "victim")
    assert running.wait(10), "the first task never started"
    assert count_rows(m, "tasks", "queued") == 4
    killed_at = time.monotonic()
    m.kill_workflow(WF, "victim")
    assert saw_cancel.wait(5), "the running task was not told to stop"
    assert time.monotonic() - killed_at < 2.5  # within a few heartbeats at most
    assert returned.wait(5)
    assert count_rows(m, "tasks") == 0
    # Tasks run oldest first: a task enqueued now runs only after any left-over queued one.
    m.enqueue_workflow(WF, "sentinel", "sentinel")
    assert m.await_workflow(WF, "sentinel", timeout=AWAIT).result == "sentinel ran"
    assert runs == [0, "sentinel"]
    assert flow.names("victim") == ["on_start"]  # the late result never reached the workflow
    assert m.get_workflow_instance(WF, "victim").error == "killed"


def test_kill_waits_for_a_callback_in_flight_and_wins(make_any_manager: MakeManager) -> None:
    entered = threading.Event()
    release = threading.Event()

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        entered.set()
        release.wait(10)
        inst.enqueue_task("t", "written by the in-flight callback")
        return inst.continue_with("committed before the kill")

    m = make_any_manager()
    m.register_workflow_executor(WF, Flow(on_start=on_start))
    m.register_task_executor("t", lambda task: None)
    m.start()
    m.enqueue_workflow(WF, "a")
    assert entered.wait(10)
    outcome: list[Any] = []

    def kill() -> None:
        try:
            m.kill_workflow(WF, "a")
            outcome.append("killed")
        except Exception as exc:
            outcome.append(exc)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    killer.join(0.3)
    assert killer.is_alive(), "kill did not wait for the callback holding the instance"
    release.set()
    killer.join(10)
    assert outcome == ["killed"]
    info = m.get_workflow_instance(WF, "a")
    assert (info.status, info.error) == (WorkflowStatus.FAILED, "killed")
    assert count_rows(m, "tasks") == 0  # the callback's task went with it


def test_kill_twice_raises_not_found(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.enqueue_workflow(WF, "a")
    m.kill_workflow(WF, "a")
    with pytest.raises(WorkflowInstanceNotFoundError, match="'wf'/'a'"):
        m.kill_workflow(WF, "a")
    with pytest.raises(WorkflowInstanceNotFoundError):
        m.kill_workflow(WF, "never enqueued")
    assert count_rows(m, "workflow_results") == 1


# --- await -------------------------------------------------------------------------------------


def test_await_workflow_returns_the_final_info(make_any_manager: MakeManager) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("t", inst.parameters)
        return inst.continue_with()

    m = make_any_manager()
    m.register_workflow_executor(
        WF, Flow(on_start=on_start, on_task=lambda inst, ev: inst.complete(ev.result.value))
    )
    m.register_task_executor("t", lambda task: task.parameters * 2)
    m.start()
    m.enqueue_workflow(WF, "a", 21)
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert isinstance(info, WorkflowInstanceInfo)
    assert info.status is WorkflowStatus.COMPLETED
    assert info.result == 42
    assert info.ended_at is not None
    assert info == m.get_workflow_instance(WF, "a")


def test_await_workflow_raises_timeout_error_while_running(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.enqueue_workflow(WF, "a")  # no manager runs it
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="'wf'/'a'"):
        m.await_workflow(WF, "a", timeout=0.3)
    assert 0.25 <= time.monotonic() - began < 3.0
    with pytest.raises(TimeoutError):
        m.await_workflow(WF, "a", timeout=0)


def test_await_workflow_of_unknown_instance_raises_not_found(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    with pytest.raises(WorkflowInstanceNotFoundError):
        m.await_workflow(WF, "never", timeout=1)


@pytest.mark.parametrize("timeout", ["5", float("nan"), -1, True, [1]])
def test_await_workflow_rejects_a_bad_timeout(make_any_manager: MakeManager, timeout: Any) -> None:
    m = make_any_manager()
    m.enqueue_workflow(WF, "a")
    with pytest.raises(CerealError, match="timeout must be a number"):
        m.await_workflow(WF, "a", timeout=timeout)


def test_await_workflow_wakes_when_another_manager_finishes_it(
    make_any_manager: MakeManager,
) -> None:
    waiter = make_any_manager()
    waiter.enqueue_workflow(WF, "a")
    done: list[WorkflowInstanceInfo] = []
    thread = threading.Thread(
        target=lambda: done.append(waiter.await_workflow(WF, "a", timeout=AWAIT)), daemon=True
    )
    thread.start()
    started(make_any_manager, finishes_with("elsewhere"))
    thread.join(AWAIT + 2)
    assert [i.result for i in done] == ["elsewhere"]


# --- operations without start() and argument checking --------------------------------------


def test_instance_operations_work_without_start(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.enqueue_workflow(WF, "a", [1])
    m.enqueue_workflow(WF, "b")
    assert m.get_workflow_instance(WF, "a").status is WorkflowStatus.STARTING
    assert [r.instance_name for r in m.list_workflow_instances(is_running=True)] == ["a", "b"]
    m.cancel_workflow(WF, "a")
    m.kill_workflow(WF, "b")
    assert m.await_workflow(WF, "b", timeout=5).error == "killed"
    assert [r.instance_name for r in m.list_workflow_instances(is_running=False)] == ["b"]
    # The queued cancel is honoured once a manager runs the workflow.
    flow = Flow()
    other = started(make_any_manager, flow)
    assert other.await_workflow(WF, "a", timeout=AWAIT).error == "canceled starting workflow"


BAD_NAMES = ["", None, 3, "x" * 201, "nul\x00", "\ud800"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_operations_reject_bad_names_with_invalid_name_error(
    make_any_manager: MakeManager, bad: Any
) -> None:
    m = make_any_manager()
    operations: list[Callable[[], Any]] = [
        lambda: m.enqueue_workflow(bad, "i"),
        lambda: m.enqueue_workflow(WF, bad),
        lambda: m.cancel_workflow(bad, "i"),
        lambda: m.cancel_workflow(WF, bad),
        lambda: m.kill_workflow(bad, "i"),
        lambda: m.kill_workflow(WF, bad),
        lambda: m.get_workflow_instance(bad, "i"),
        lambda: m.get_workflow_instance(WF, bad),
        lambda: m.await_workflow(bad, "i", timeout=1),
        lambda: m.await_workflow(WF, bad, timeout=1),
        lambda: m.register_workflow_executor(bad, Flow()),
        lambda: m.register_task_executor(bad, lambda task: None),
    ]
    if bad is not None:  # None means "no filter" for list
        operations += [
            lambda: m.list_workflow_instances(workflow_name=bad),
            lambda: m.list_workflow_instances(instance_name=bad),
        ]
    for operation in operations:
        with pytest.raises(InvalidNameError):
            operation()
    assert m.list_workflow_instances() == []


@pytest.mark.parametrize(
    "params",
    [{1, 2}, float("nan"), {"k": float("inf")}, "nul\x00", ["\udc00"], object(), b"raw"],
)
def test_enqueue_rejects_non_json_parameters_with_serialization_error(
    make_any_manager: MakeManager, params: Any
) -> None:
    m = make_any_manager()
    with pytest.raises(SerializationError, match="parameters of workflow 'wf'") as info:
        m.enqueue_workflow(WF, "a", params)
    assert isinstance(info.value, TypeError)
    assert m.list_workflow_instances() == []


def test_list_rejects_a_non_bool_is_running(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    with pytest.raises(CerealError, match="is_running"):
        m.list_workflow_instances(is_running="yes")  # type: ignore[arg-type]


def test_register_rejects_objects_that_are_not_executors(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    with pytest.raises(CerealError, match="on_task_complete"):
        m.register_workflow_executor(WF, object())  # type: ignore[arg-type]
    with pytest.raises(CerealError, match="run"):
        m.register_task_executor("t", 42)  # type: ignore[arg-type]


# --- lifecycle ----------------------------------------------------------------------------------


def test_registration_after_start_raises_manager_state_error(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.register_workflow_executor(WF, Flow())
    m.start()
    with pytest.raises(ManagerStateError, match="before start"):
        m.register_workflow_executor("late", Flow())
    with pytest.raises(ManagerStateError, match="before start") as info:
        m.register_task_executor("late", lambda task: None)
    assert isinstance(info.value, RuntimeError)


def test_second_start_raises_manager_state_error(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.start()
    with pytest.raises(ManagerStateError, match="only once"):
        m.start()
    m.stop()
    with pytest.raises(ManagerStateError, match="cannot be restarted"):
        m.start()


def test_stop_before_start_and_twice_is_safe(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.stop()
    m.stop()
    m2 = make_any_manager()
    m2.start()
    m2.stop(timeout=5)
    m2.stop(timeout=5)
    # Instance operations keep working through the driver after stop.
    m2.enqueue_workflow(WF, "a")
    assert m2.get_workflow_instance(WF, "a").status is WorkflowStatus.STARTING


def test_context_manager_starts_and_stops(make_any_manager: MakeManager) -> None:
    m = make_any_manager()
    m.register_workflow_executor(WF, finishes_with("inside"))
    with m as entered:
        assert entered is m
        m.enqueue_workflow(WF, "a")
        assert m.await_workflow(WF, "a", timeout=AWAIT).result == "inside"
        with pytest.raises(ManagerStateError):
            m.start()
    with pytest.raises(ManagerStateError, match="cannot be restarted"):
        m.start()


def test_on_workflow_complete_receives_info_for_complete_and_fail(
    make_any_manager: MakeManager,
) -> None:
    seen: list[WorkflowInstanceInfo] = []
    lock = threading.Lock()

    def record(info: WorkflowInstanceInfo) -> None:
        with lock:
            seen.append(info)

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.instance_name == "ok":
            return inst.complete({"r": inst.parameters})
        return inst.fail(RuntimeError("bad"))

    m = started(make_any_manager, Flow(on_start=on_start), on_workflow_complete=record)
    m.enqueue_workflow(WF, "ok", 1)
    m.enqueue_workflow(WF, "bad", 2)
    m.await_workflow(WF, "ok", timeout=AWAIT)
    m.await_workflow(WF, "bad", timeout=AWAIT)
    wait_for(lambda: len(seen) == 2, what="two completion callbacks")
    by_name = {i.instance_name: i for i in seen}
    ok, bad = by_name["ok"], by_name["bad"]
    assert isinstance(ok, WorkflowInstanceInfo)
    assert (ok.workflow_name, ok.status, ok.result, ok.error) == (
        WF,
        WorkflowStatus.COMPLETED,
        {"r": 1},
        None,
    )
    assert ok.parameters == 1
    assert ok.started_at is not None and ok.ended_at is not None
    assert (bad.status, bad.result, bad.error, bad.parameters) == (
        WorkflowStatus.FAILED,
        None,
        "bad",
        2,
    )
    assert not ok.is_running and not bad.is_running
    assert ok.ended_at == m.get_workflow_instance(WF, "ok").ended_at


def test_on_workflow_complete_errors_do_not_break_the_manager(
    make_any_manager: MakeManager,
) -> None:
    def explode(info: WorkflowInstanceInfo) -> None:
        raise RuntimeError("callback bug")

    m = started(make_any_manager, finishes_with("x"), on_workflow_complete=explode)
    for name in ("a", "b"):
        m.enqueue_workflow(WF, name)
        assert m.await_workflow(WF, name, timeout=AWAIT).result == "x"
