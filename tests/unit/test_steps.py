"""Unit tests of cereal.steps.run_events: how events fold into one outcome to commit."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from cereal import (
    CancelEvent,
    Decision,
    StartEvent,
    TaskCompleteEvent,
    TaskStatus,
    WorkflowInstance,
    WorkflowStatus,
)
from cereal.steps import (
    CANCELED_STARTING,
    ENQUEUE_AND_COMPLETE,
    EventRow,
    InstanceRow,
    run_events,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)

Handler = Callable[[WorkflowInstance, Any], Any]


@dataclass
class Call:
    callback: str
    event: Any
    payload: Any
    parameters: Any
    enqueued: int
    completed: int


@dataclass
class Scripted:
    """A workflow executor whose callbacks are given per test and whose calls are recorded."""

    start: Handler | None = None
    task: Handler | None = None
    cancel: Handler | None = None
    calls: list[Call] = field(default_factory=list)

    def _run(self, name: str, fn: Handler | None, inst: WorkflowInstance, event: Any) -> Any:
        self.calls.append(
            Call(
                name,
                event,
                inst.payload,
                inst.parameters,
                inst.total_enqueued_tasks,
                inst.total_completed_tasks,
            )
        )
        if fn is None:
            raise AssertionError(f"{name} was not expected")
        return fn(inst, event)

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        return self._run("on_start", self.start, instance, event)  # type: ignore[no-any-return]

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return self._run("on_task_complete", self.task, instance, event)  # type: ignore[no-any-return]

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return self._run("on_cancel", self.cancel, instance, event)  # type: ignore[no-any-return]


def row(
    status: WorkflowStatus = WorkflowStatus.STARTING,
    payload: Any = None,
    enqueued: int = 0,
    completed: int = 0,
    parameters: Any = None,
) -> InstanceRow:
    return InstanceRow(7, "wf", "inst", parameters, payload, status, enqueued, completed, T0)


def start(eid: int = 1) -> EventRow:
    return EventRow(eid, 7, "start", T0)


def cancel(eid: int = 2) -> EventRow:
    return EventRow(eid, 7, "cancel", T0)


def done(
    eid: int,
    value: Any = None,
    *,
    status: str = "success",
    name: str = "work",
    params: Any = None,
    error: str | None = None,
) -> EventRow:
    return EventRow(eid, 7, "task_complete", T0, name, params, status, error, value)


# --- continue ---------------------------------------------------------------------------------


def test_continue_writes_buffered_tasks_and_payload() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("a", {"i": 1})
        inst.enqueue_task("b")
        return inst.continue_with({"step": 1})

    ex = Scripted(start=on_start)
    out = run_events(ex, row(), [start(11)])
    assert out.status is WorkflowStatus.RUNNING
    assert not out.finished
    assert [(t.name, t.parameters_json) for t in out.tasks] == [("a", '{"i":1}'), ("b", None)]
    assert out.enqueued_tasks == 2
    assert json.loads(out.payload_json or "null") == {"step": 1}
    assert out.consumed == [11]
    assert out.handled == 1
    assert out.error is None and out.result_json is None


def test_continue_with_none_stores_null_payload() -> None:
    ex = Scripted(task=lambda inst, _: inst.continue_with(None))
    out = run_events(ex, row(WorkflowStatus.RUNNING, payload={"old": 1}), [done(3)])
    assert out.payload_json is None
    assert out.status is WorkflowStatus.RUNNING


def test_start_event_sees_parameters_and_empty_payload() -> None:
    ex = Scripted(start=lambda inst, _: inst.continue_with())
    run_events(ex, row(parameters={"p": [1]}), [start()])
    (call,) = ex.calls
    assert call.callback == "on_start"
    assert isinstance(call.event, StartEvent)
    assert call.event.enqueued_at == T0
    assert call.parameters == {"p": [1]}
    assert call.payload is None
    assert (call.enqueued, call.completed) == (0, 0)


# --- complete ---------------------------------------------------------------------------------


def test_complete_finishes_with_the_encoded_result() -> None:
    ex = Scripted(start=lambda inst, _: inst.complete({"answer": 42}))
    out = run_events(ex, row(), [start()])
    assert out.status is WorkflowStatus.COMPLETED
    assert out.finished
    assert json.loads(out.result_json or "null") == {"answer": 42}
    assert out.error is None
    assert out.tasks == []


def test_complete_with_none_result_stores_null() -> None:
    ex = Scripted(start=lambda inst, _: inst.complete())
    out = run_events(ex, row(), [start()])
    assert out.status is WorkflowStatus.COMPLETED
    assert out.result_json is None


def test_complete_after_enqueue_task_fails_with_upstream_message() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("a")
        return inst.complete("done")

    out = run_events(Scripted(start=on_start), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "EnqueueTask and Complete called in same workflow step"
    assert out.error == ENQUEUE_AND_COMPLETE
    assert out.tasks == []
    assert out.result_json is None


# --- fail -------------------------------------------------------------------------------------


def test_fail_decision_stores_the_error_text_and_drops_tasks() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("a")
        return inst.fail(KeyError("missing"))

    out = run_events(Scripted(start=on_start), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "'missing'"
    assert out.tasks == []


def test_raising_callback_fails_with_type_and_message() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("a")
        raise ValueError("no good")

    out = run_events(Scripted(start=on_start), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "ValueError: no good"
    assert out.tasks == []
    assert out.handled == 1


def test_callback_calling_fail_none_fails_with_a_clear_message() -> None:
    out = run_events(Scripted(start=lambda inst, _: inst.fail(None)), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "InvalidDecisionError: fail() needs an error: got None"


def test_callback_calling_fail_with_empty_text_fails_with_a_clear_message() -> None:
    out = run_events(Scripted(start=lambda inst, _: inst.fail("")), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error is not None
    assert out.error.startswith("InvalidDecisionError: fail() needs a non-empty error message")


def test_enqueueing_unserialisable_parameters_in_a_callback_fails_the_instance() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("a", {1, 2})
        return inst.continue_with()

    out = run_events(Scripted(start=on_start), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error is not None
    assert out.error.startswith("SerializationError: parameters of task 'a'")
    assert out.tasks == []


@pytest.mark.parametrize(
    ("returned", "type_name"),
    [(None, "NoneType"), ("continue", "str"), ({"kind": "complete"}, "dict")],
)
def test_non_decision_return_fails_with_a_clear_message(returned: Any, type_name: str) -> None:
    out = run_events(Scripted(start=lambda inst, _: returned), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == f"on_start returned {type_name} instead of a Decision"


def test_non_decision_message_names_the_callback() -> None:
    ex = Scripted(task=lambda inst, _: 3)
    out = run_events(ex, row(WorkflowStatus.RUNNING), [done(5)])
    assert out.error == "on_task_complete returned int instead of a Decision"


def test_unserialisable_payload_fails_with_the_serialiser_message() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("a")
        return inst.continue_with({"s": {1}})

    out = run_events(Scripted(start=on_start), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert (
        out.error == "payload is not JSON-serialisable: Object of type set is not JSON serializable"
    )
    assert out.tasks == []
    assert out.payload_json is None


def test_unserialisable_result_fails_with_the_serialiser_message() -> None:
    out = run_events(Scripted(start=lambda inst, _: inst.complete(float("nan"))), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "result is not JSON-serialisable: NaN and Infinity are not valid JSON"
    assert out.result_json is None


def test_payload_with_nul_character_fails_instead_of_reaching_the_database() -> None:
    out = run_events(Scripted(start=lambda inst, _: inst.continue_with("a\x00")), row(), [start()])
    assert out.status is WorkflowStatus.FAILED
    assert out.error is not None and "NUL character" in out.error


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_before_start_fails_without_calling_any_callback() -> None:
    ex = Scripted()
    out = run_events(ex, row(), [start(1), cancel(2)])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "canceled starting workflow"
    assert out.error == CANCELED_STARTING
    assert ex.calls == []
    assert out.handled == 0


def test_cancel_first_on_starting_instance_fails_it() -> None:
    ex = Scripted()
    out = run_events(ex, row(), [cancel(1), start(2)])
    assert out.error == CANCELED_STARTING
    assert ex.calls == []


def test_cancel_of_running_instance_is_delivered_to_on_cancel() -> None:
    ex = Scripted(cancel=lambda inst, _: inst.complete("stopped"))
    out = run_events(ex, row(WorkflowStatus.RUNNING, payload=[1]), [cancel(9)])
    assert out.status is WorkflowStatus.COMPLETED
    assert json.loads(out.result_json or "null") == "stopped"
    (call,) = ex.calls
    assert isinstance(call.event, CancelEvent)
    assert call.payload == [1]


def test_second_cancel_is_delivered_only_after_a_continue() -> None:
    ex = Scripted(cancel=lambda inst, _: inst.continue_with((inst.payload or 0) + 1))
    out = run_events(ex, row(WorkflowStatus.RUNNING), [cancel(1), cancel(2)])
    assert [c.callback for c in ex.calls] == ["on_cancel", "on_cancel"]
    assert out.payload_json == "2"
    assert out.consumed == [1, 2]

    ex = Scripted(cancel=lambda inst, _: inst.fail("cancelled"))
    out = run_events(ex, row(WorkflowStatus.RUNNING), [cancel(1), cancel(2)])
    assert len(ex.calls) == 1
    assert out.error == "cancelled"


# --- task completion and counters -------------------------------------------------------------


def test_task_complete_counter_includes_the_task_being_reported() -> None:
    ex = Scripted(task=lambda inst, _: inst.continue_with(inst.payload))
    out = run_events(ex, row(WorkflowStatus.RUNNING, enqueued=3, completed=1), [done(4)])
    (call,) = ex.calls
    assert call.completed == 2
    assert call.enqueued == 3
    assert out.completed_tasks == 2
    assert out.enqueued_tasks == 3


def test_task_complete_event_carries_the_result() -> None:
    ex = Scripted(task=lambda inst, _: inst.continue_with())
    run_events(
        ex, row(WorkflowStatus.RUNNING), [done(4, {"v": 1}, name="fetch", params={"url": "u"})]
    )
    event = ex.calls[0].event
    assert isinstance(event, TaskCompleteEvent)
    assert event.task_name == "fetch"
    assert event.enqueued_at == T0
    result = event.result
    assert result.ok
    assert result.status is TaskStatus.SUCCESS
    assert result.value == {"v": 1}
    assert result.parameters == {"url": "u"}
    assert result.error is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [("failed", TaskStatus.FAILED), ("lost", TaskStatus.LOST)],
)
def test_unsuccessful_task_results_carry_no_value(status: str, expected: TaskStatus) -> None:
    ex = Scripted(task=lambda inst, _: inst.continue_with())
    out = run_events(
        ex, row(WorkflowStatus.RUNNING), [done(4, "ignored", status=status, error="E: x")]
    )
    result = ex.calls[0].event.result
    assert result.status is expected
    assert not result.ok
    assert result.value is None
    assert result.error == "E: x"
    assert out.completed_tasks == 1  # lost and failed tasks count as completed


def test_unknown_task_status_is_reported_as_unusable_result() -> None:
    ex = Scripted(task=lambda inst, _: inst.continue_with())
    run_events(ex, row(WorkflowStatus.RUNNING), [done(4, status="weird")])
    result = ex.calls[0].event.result
    assert result.status is TaskStatus.UNUSABLE_RESULT
    assert "weird" in (result.error or "")


def test_enqueued_counter_counts_buffered_tasks_across_events() -> None:
    def on_task(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("x")
        inst.enqueue_task("y")
        return inst.continue_with()

    ex = Scripted(task=on_task)
    out = run_events(ex, row(WorkflowStatus.RUNNING, enqueued=1), [done(1), done(2)])
    assert [c.enqueued for c in ex.calls] == [1, 3]
    assert out.enqueued_tasks == 5
    assert len(out.tasks) == 4


# --- several events ---------------------------------------------------------------------------


def test_events_are_folded_in_order_with_payload_threaded_through() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        for i in range(3):
            inst.enqueue_task("add", i)
        return inst.continue_with({"sum": 0, "seen": []})

    def on_task(inst: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        state = dict(inst.payload)
        state["sum"] += event.result.value
        state["seen"] = [*state["seen"], event.result.parameters]
        return inst.continue_with(state)

    ex = Scripted(start=on_start, task=on_task)
    events = [start(1), done(2, 10, params=0), done(3, 20, params=1), done(4, 30, params=2)]
    out = run_events(ex, row(), events)
    assert [c.callback for c in ex.calls] == ["on_start", *["on_task_complete"] * 3]
    assert [c.payload for c in ex.calls[1:]] == [
        {"sum": 0, "seen": []},
        {"sum": 10, "seen": [0]},
        {"sum": 30, "seen": [0, 1]},
    ]
    assert [c.completed for c in ex.calls] == [0, 1, 2, 3]
    assert json.loads(out.payload_json or "null") == {"sum": 60, "seen": [0, 1, 2]}
    assert out.consumed == [1, 2, 3, 4]
    assert out.completed_tasks == 3
    assert out.enqueued_tasks == 3
    assert out.status is WorkflowStatus.RUNNING


def test_payload_handed_to_the_next_event_is_a_decoded_copy() -> None:
    shared: dict[str, list[int]] = {"items": []}

    def on_task(inst: WorkflowInstance, _: Any) -> Decision:
        if inst.payload is None:
            return inst.continue_with(shared)
        assert inst.payload is not shared
        return inst.continue_with(inst.payload)

    ex = Scripted(task=on_task)
    run_events(ex, row(WorkflowStatus.RUNNING), [done(1), done(2)])
    shared["items"].append(1)  # mutating the caller's object after the fact changes nothing
    assert ex.calls[1].payload == {"items": []}


def test_stops_at_the_first_finishing_decision() -> None:
    def on_task(inst: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        if event.result.value == "last":
            return inst.complete(inst.payload)
        return inst.continue_with((inst.payload or 0) + 1)

    ex = Scripted(task=on_task)
    events = [done(1, "a"), done(2, "last"), done(3, "b"), cancel(4)]
    out = run_events(ex, row(WorkflowStatus.RUNNING), events)
    assert len(ex.calls) == 2
    assert out.status is WorkflowStatus.COMPLETED
    assert out.result_json == "1"
    assert out.tasks == []


def test_tasks_of_earlier_continues_are_dropped_when_a_later_event_finishes() -> None:
    def on_start(inst: WorkflowInstance, _: Any) -> Decision:
        inst.enqueue_task("a")
        return inst.continue_with()

    def on_task(inst: WorkflowInstance, _: Any) -> Decision:
        raise RuntimeError("boom")

    out = run_events(Scripted(start=on_start, task=on_task), row(), [start(1), done(2)])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "RuntimeError: boom"
    assert out.tasks == []


def test_duplicate_start_of_running_instance_is_consumed_without_a_call() -> None:
    ex = Scripted()
    out = run_events(ex, row(WorkflowStatus.RUNNING, payload={"k": 1}), [start(5)])
    assert ex.calls == []
    assert out.consumed == [5]
    assert out.status is WorkflowStatus.RUNNING
    assert json.loads(out.payload_json or "null") == {"k": 1}


def test_no_events_keeps_the_stored_state() -> None:
    out = run_events(Scripted(), row(WorkflowStatus.RUNNING, payload=[1], enqueued=2), [])
    assert out.status is WorkflowStatus.RUNNING
    assert out.payload_json == "[1]"
    assert out.enqueued_tasks == 2
    assert out.consumed == []
    assert out.handled == 0
