"""The decision rules end to end: what each decision writes, how bad decisions fail the
instance, what finishing drops, ordering within an instance, concurrency across instances,
and JSON round trips through PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from cereal import Decision, Manager, Task, TaskStatus, WorkflowInstance, WorkflowStatus
from tests.helpers.recorders import Flow, TaskLog
from tests.helpers.rows import count_rows
from tests.helpers.waiting import wait_for

WF = "wf"
MakeManager = Callable[..., Manager]
Handler = Callable[[WorkflowInstance, Any], Any]
AWAIT = 15.0


def manager(
    make_manager: MakeManager,
    flow: Flow,
    tasks: dict[str, Callable[[Task], Any]] | None = None,
    workers: int = 1,
    **options: Any,
) -> Manager:
    m = make_manager(**options)
    m.register_workflow_executor(WF, flow)
    for name, fn in (tasks or {}).items():
        m.register_task_executor(name, fn, workers=workers)
    m.start()
    return m


def run_sentinel(m: Manager) -> None:
    """Run one more instance through ``m`` whose task uses the name ``t``.

    Tasks of a name run oldest first, so once the sentinel finished, any task of the same name
    written before it would have run too.
    """
    m.enqueue_workflow(WF, "sentinel", "sentinel")
    info = m.await_workflow(WF, "sentinel", timeout=AWAIT)
    assert info.result == "sentinel", info


def sentinel_aware(handler: Handler) -> Handler:
    def on_start(inst: WorkflowInstance, ev: Any) -> Any:
        if inst.parameters == "sentinel":
            inst.enqueue_task("t", "sentinel")
            return inst.continue_with()
        return handler(inst, ev)

    return on_start


def complete_with_task_value(inst: WorkflowInstance, ev: Any) -> Decision:
    return inst.complete(ev.result.value)


# --- tasks are written only on continue ---------------------------------------------------------


def test_tasks_are_written_only_when_the_callback_continues(make_any_manager: MakeManager) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("t", "from a failing callback")
        return inst.fail("changed my mind")

    log = TaskLog()
    flow = Flow(on_start=sentinel_aware(on_start), on_task=complete_with_task_value)
    m = manager(make_any_manager, flow, {"t": log})
    m.enqueue_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert (info.status, info.error) == (WorkflowStatus.FAILED, "changed my mind")
    run_sentinel(m)
    assert log.runs == ["sentinel"]


def test_tasks_enqueued_before_a_raise_are_not_written(make_any_manager: MakeManager) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("t", "from a raising callback")
        raise LookupError("no such thing")

    log = TaskLog()
    flow = Flow(on_start=sentinel_aware(on_start), on_task=complete_with_task_value)
    m = manager(make_any_manager, flow, {"t": log})
    m.enqueue_workflow(WF, "a")
    assert m.await_workflow(WF, "a", timeout=AWAIT).error == "LookupError: no such thing"
    run_sentinel(m)
    assert log.runs == ["sentinel"]


def test_continue_writes_every_buffered_task_with_its_parameters(
    make_any_manager: MakeManager,
) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        for i in range(3):
            inst.enqueue_task("t", {"i": i})
        assert inst.total_enqueued_tasks == 3
        return inst.continue_with([])

    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        got = [*inst.payload, ev.result.value["i"]]
        if inst.total_completed_tasks == inst.total_enqueued_tasks:
            return inst.complete(sorted(got))
        return inst.continue_with(got)

    log = TaskLog()
    m = manager(make_any_manager, Flow(on_start=on_start, on_task=on_task), {"t": log}, workers=3)
    m.enqueue_workflow(WF, "a")
    assert m.await_workflow(WF, "a", timeout=AWAIT).result == [0, 1, 2]
    assert sorted(r["i"] for r in log.runs) == [0, 1, 2]


def test_enqueue_then_complete_fails_with_the_upstream_message(
    make_any_manager: MakeManager,
) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("t", "never")
        return inst.complete("too early")

    log = TaskLog()
    flow = Flow(on_start=sentinel_aware(on_start), on_task=complete_with_task_value)
    m = manager(make_any_manager, flow, {"t": log})
    m.enqueue_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status is WorkflowStatus.FAILED
    assert info.error == "EnqueueTask and Complete called in same workflow step"
    assert info.result is None
    run_sentinel(m)
    assert log.runs == ["sentinel"]


# --- bad decisions fail the instance cleanly ---------------------------------------------------


class Unserialisable:
    def __repr__(self) -> str:
        return "<Unserialisable>"


def raise_value_error(inst: WorkflowInstance, ev: Any) -> Decision:
    raise ValueError("bad state")


@pytest.mark.parametrize(
    ("decide", "error"),
    [
        pytest.param(raise_value_error, "ValueError: bad state", id="raises"),
        pytest.param(
            lambda inst, ev: "continue", "on_start returned str instead of a Decision", id="str"
        ),
        pytest.param(
            lambda inst, ev: None, "on_start returned NoneType instead of a Decision", id="none"
        ),
        pytest.param(
            lambda inst, ev: inst.continue_with({"obj": Unserialisable()}),
            "payload is not JSON-serialisable: Object of type Unserialisable is not JSON "
            "serializable",
            id="payload",
        ),
        pytest.param(
            lambda inst, ev: inst.complete([1.0, float("inf")]),
            "result is not JSON-serialisable: NaN and Infinity are not valid JSON",
            id="result",
        ),
        pytest.param(
            lambda inst, ev: inst.continue_with("nul \x00 inside"),
            "payload contains a NUL character, which PostgreSQL cannot store",
            id="nul-payload",
        ),
        pytest.param(
            lambda inst, ev: inst.fail(None),
            "InvalidDecisionError: fail() needs an error: got None",
            id="fail-none",
        ),
        pytest.param(
            lambda inst, ev: inst.fail(""),
            "InvalidDecisionError: fail() needs a non-empty error message, got ''",
            id="fail-empty",
        ),
    ],
)
def test_bad_on_start_fails_the_instance_once_with_a_clear_error(
    make_any_manager: MakeManager, decide: Handler, error: str
) -> None:
    completed: list[Any] = []
    flow = Flow(on_start=decide)
    m = manager(make_any_manager, flow, on_workflow_complete=completed.append)
    m.enqueue_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status is WorkflowStatus.FAILED
    assert info.error == error
    assert info.result is None
    assert flow.names() == ["on_start"]  # called once: no retry loop
    assert count_rows(m, "workflow_instances") == 0
    wait_for(lambda: completed, what="on_workflow_complete")
    assert [(i.instance_name, i.status, i.error) for i in completed] == [
        ("a", WorkflowStatus.FAILED, error)
    ]


def test_raising_on_task_complete_fails_the_instance_once(make_any_manager: MakeManager) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("t", 1)
        return inst.continue_with("before")

    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        raise KeyError("result")

    flow = Flow(on_start=on_start, on_task=on_task)
    m = manager(make_any_manager, flow, {"t": TaskLog()})
    m.enqueue_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.error == "KeyError: 'result'"
    assert flow.names() == ["on_start", "on_task_complete"]


def test_non_decision_from_on_cancel_fails_the_instance(make_any_manager: MakeManager) -> None:
    flow = Flow(on_cancel=lambda inst, ev: True)
    m = manager(make_any_manager, flow)
    m.enqueue_workflow(WF, "a")
    wait_for(
        lambda: m.get_workflow_instance(WF, "a").status is WorkflowStatus.RUNNING,
        what="on_start to commit",
    )
    m.cancel_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.error == "on_cancel returned bool instead of a Decision"
    assert flow.names() == ["on_start", "on_cancel"]


def test_failing_instance_does_not_hold_up_others(make_any_manager: MakeManager) -> None:
    def on_start(inst: WorkflowInstance, ev: Any) -> Any:
        if inst.instance_name.startswith("bad"):
            raise RuntimeError(inst.instance_name)
        return inst.complete(inst.instance_name)

    flow = Flow(on_start=on_start)
    m = manager(make_any_manager, flow)
    names = [f"{kind}{i}" for i in range(5) for kind in ("bad", "good")]
    for name in names:
        m.enqueue_workflow(WF, name)
    for name in names:
        info = m.await_workflow(WF, name, timeout=AWAIT)
        if name.startswith("bad"):
            assert info.error == f"RuntimeError: {name}"
        else:
            assert info.result == name
    assert sorted(flow.names()) == ["on_start"] * len(names)


# --- finishing drops what is outstanding --------------------------------------------------------


def test_complete_drops_queued_tasks_pending_events_and_stops_running_tasks(
    make_any_manager: MakeManager,
) -> None:
    slow_started = threading.Event()
    slow_cancelled = threading.Event()
    slow_returned = threading.Event()
    # The quick tasks wait for the slow one to be running, so it is outstanding at the end.
    quick = TaskLog(result=lambda task: slow_started.wait(5) and task.parameters)
    queued = TaskLog()

    def slow(task: Task) -> str:
        slow_started.set()
        if task.cancelled.wait(10):
            slow_cancelled.set()
        slow_returned.set()
        return "late"

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("slow")
        inst.enqueue_task("later", start_after=timedelta(hours=1))
        for i in range(3):
            inst.enqueue_task("quick", i)
        return inst.continue_with()

    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        if ev.task_name == "quick":
            return inst.complete(f"finished after quick {ev.result.value}")
        return inst.continue_with()

    flow = Flow(on_start=on_start, on_task=on_task)
    m = make_any_manager()
    m.register_workflow_executor(WF, flow)
    m.register_task_executor("slow", slow)
    m.register_task_executor("quick", quick, workers=3)
    m.register_task_executor("later", queued)
    m.start()
    m.enqueue_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED
    assert info.result is not None and info.result.startswith("finished after quick")
    assert flow.names() == ["on_start", "on_task_complete"]
    assert count_rows(m, "tasks") == 0
    assert count_rows(m, "workflow_events") == 0
    assert slow_started.is_set()
    assert slow_cancelled.wait(5), "the running task was not told to stop"
    assert slow_returned.wait(5)
    assert queued.runs == []
    # A later run of the same pair gets nothing left over from the first.
    m.enqueue_workflow(WF, "a")
    m.await_workflow(WF, "a", timeout=AWAIT)
    assert flow.names().count("on_task_complete") == 2
    assert [r for _, _, r in flow.calls if r is not None and r.task_name == "slow"] == []


def test_late_result_of_a_task_ignoring_cancelled_is_discarded(
    make_any_manager: MakeManager,
) -> None:
    release = threading.Event()
    blocked = threading.Event()
    finished_running = threading.Event()

    def stubborn(task: Task) -> str:
        blocked.set()
        release.wait(10)  # ignores task.cancelled on purpose
        finished_running.set()
        return "too late"

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        inst.enqueue_task("stubborn")
        return inst.continue_with()

    flow = Flow(on_start=on_start, on_task=lambda inst, ev: inst.continue_with("task reported"))
    m = manager(make_any_manager, flow, {"stubborn": stubborn})
    m.enqueue_workflow(WF, "a")
    assert blocked.wait(10)
    m.cancel_workflow(WF, "a")  # default on_cancel fails the instance
    assert m.await_workflow(WF, "a", timeout=AWAIT).error == "cancelled"
    release.set()
    assert finished_running.wait(5)
    # A new run of the same pair reports its own task once; the old result went nowhere.
    m.enqueue_workflow(WF, "a")
    wait_for(
        lambda: m.get_workflow_instance(WF, "a").payload == "task reported",
        what="the second run's task to report",
    )
    assert flow.names() == ["on_start", "on_cancel", "on_start", "on_task_complete"]


# --- ordering within an instance, concurrency across instances ---------------------------------


def test_count_to_n_ends_with_exactly_n(make_any_manager: MakeManager) -> None:
    n = 100
    mismatches: list[tuple[Any, int]] = []

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        for i in range(n):
            inst.enqueue_task("inc", i)
        return inst.continue_with(0)

    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.payload != inst.total_completed_tasks - 1:
            mismatches.append((inst.payload, inst.total_completed_tasks))
        value = inst.payload + 1
        if inst.total_completed_tasks == n:
            return inst.complete(value)
        return inst.continue_with(value)

    def inc(task: Task) -> None:
        time.sleep(0.002 * (task.parameters % 7))  # completions trickle in, in mixed order

    flow = Flow(on_start=on_start, on_task=on_task)
    # Two managers with several handlers each compete for the same instance's events.
    managers = [
        manager(make_any_manager, flow, {"inc": inc}, workers=8, workflow_workers=4)
        for _ in range(2)
    ]
    managers[0].enqueue_workflow(WF, "count")
    info = managers[1].await_workflow(WF, "count", timeout=30)
    assert info.status is WorkflowStatus.COMPLETED
    assert info.result == n
    assert mismatches == []
    assert flow.names().count("on_task_complete") == n


def test_events_of_different_instances_are_handled_concurrently(
    make_any_manager: MakeManager,
) -> None:
    barrier = threading.Barrier(2, timeout=5)

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return inst.fail("the other instance's on_start did not run alongside")
        return inst.complete("met")

    m = make_any_manager(workflow_workers=2)
    m.register_workflow_executor(WF, Flow(on_start=on_start))
    m.enqueue_workflow(WF, "a")
    m.enqueue_workflow(WF, "b")
    m.start()
    results = [m.await_workflow(WF, name, timeout=AWAIT) for name in ("a", "b")]
    assert [(i.status, i.result, i.error) for i in results] == [
        (WorkflowStatus.COMPLETED, "met", None)
    ] * 2


def test_events_of_instances_enqueued_while_running_are_handled_concurrently(
    make_any_manager: MakeManager,
) -> None:
    barrier = threading.Barrier(3, timeout=5)

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return inst.fail("not concurrent")
        return inst.complete(inst.instance_name)

    m = manager(make_any_manager, Flow(on_start=on_start), workflow_workers=3)
    for name in ("a", "b", "c"):
        m.enqueue_workflow(WF, name)
    for name in ("a", "b", "c"):
        assert m.await_workflow(WF, name, timeout=AWAIT).result == name


# --- JSON round trips ---------------------------------------------------------------------------

TRICKY = {
    "nested": {"list": [1, [2, [3, {"deep": None}]]], "empty": {}, "none": None},
    "unicode": "caf\u00e9 \u2603 \U0001f600 \u65e5\u672c",
    "big": 2**80,
    "negative": -(2**63) - 1,
    "floats": [0.1, -2.5, 1.5e-7, 3.141592653589793],
    "bools": [True, False],
    "looks_like_nul": "\\u0000 and \\\\u0000",
    'quote"key': "back\\slash",
    "": "empty key",
}


def test_parameters_payload_task_values_and_result_round_trip(
    make_any_manager: MakeManager,
) -> None:
    seen: dict[str, Any] = {}

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        seen["parameters"] = inst.parameters
        inst.enqueue_task("echo", inst.parameters)
        return inst.continue_with({"payload": inst.parameters})

    def on_task(inst: WorkflowInstance, ev: Any) -> Decision:
        seen["payload"] = inst.payload
        seen["task_parameters"] = ev.result.parameters
        seen["task_value"] = ev.result.value
        seen["task_status"] = ev.result.status
        return inst.complete([ev.result.value, inst.payload])

    def echo(task: Task) -> Any:
        seen["task_saw"] = task.parameters
        return task.parameters

    m = manager(make_any_manager, Flow(on_start=on_start, on_task=on_task), {"echo": echo})
    m.enqueue_workflow(WF, "a", TRICKY)
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED, info.error
    assert seen["parameters"] == TRICKY
    assert seen["task_saw"] == TRICKY
    assert seen["task_parameters"] == TRICKY
    assert seen["task_value"] == TRICKY
    assert seen["task_status"] is TaskStatus.SUCCESS
    assert seen["payload"] == {"payload": TRICKY}
    assert info.parameters == TRICKY
    assert info.result == [TRICKY, {"payload": TRICKY}]
    assert info.result[0]["big"] == 2**80 and isinstance(info.result[0]["big"], int)


@pytest.mark.parametrize(
    "value",
    [None, "plain", "\\u0000", 0, -(10**30), 2.5, True, [], {}, [None], {"k": None}],
    ids=repr,
)
def test_top_level_json_values_round_trip(make_any_manager: MakeManager, value: Any) -> None:
    payloads: list[Any] = []

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        assert inst.parameters == value
        return inst.continue_with(inst.parameters)

    def on_cancel(inst: WorkflowInstance, ev: Any) -> Decision:
        payloads.append(inst.payload)
        return inst.complete(inst.payload)

    m = manager(make_any_manager, Flow(on_start=on_start, on_cancel=on_cancel))
    m.enqueue_workflow(WF, "a", value)
    deadline = time.monotonic() + AWAIT
    while (live := m.get_workflow_instance(WF, "a")).status is not WorkflowStatus.RUNNING:
        assert live.is_running, live.error
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert live.payload == value and type(live.payload) is type(value)
    m.cancel_workflow(WF, "a")
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED, info.error
    assert payloads == [value]
    assert info.result == value and type(info.result) is type(value)
    assert info.parameters == value and type(info.parameters) is type(value)


def test_an_unstorable_decision_fails_only_its_own_instance(make_any_manager: MakeManager) -> None:
    """A decision the database refuses (here a start time out of its range) fails that
    instance; instances handled afterwards on the same connections are unaffected."""

    def on_start(inst: WorkflowInstance, ev: Any) -> Decision:
        if inst.parameters == "bad":
            inst.enqueue_task("never", start_after=timedelta(days=999_999_999))
            return inst.continue_with()
        return inst.complete(inst.instance_name)

    m = manager(make_any_manager, Flow(on_start=on_start), workflow_workers=1)
    names = [f"ok{i}" for i in range(12)]
    for name in names[:6]:  # enough runs for the statements to be prepared
        m.enqueue_workflow(WF, name)
        assert m.await_workflow(WF, name, timeout=AWAIT).result == name
    m.enqueue_workflow(WF, "bad", "bad")
    bad = m.await_workflow(WF, "bad", timeout=AWAIT)
    assert bad.status is WorkflowStatus.FAILED
    assert bad.error is not None and "cannot store the decision" in bad.error
    for name in names[6:]:
        m.enqueue_workflow(WF, name)
    for name in names[6:]:
        info = m.await_workflow(WF, name, timeout=AWAIT)
        assert (info.status, info.result, info.error) == (WorkflowStatus.COMPLETED, name, None)
