"""cereal.testing: run_callback applies the engine's own rules, and the event builders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cereal import TaskStatus
from cereal.errors import CerealError, InvalidNameError, SerializationError
from cereal.steps import ENQUEUE_AND_COMPLETE
from cereal.testing import (
    CallbackOutcome,
    cancel_event,
    run_callback,
    signal_event,
    start_event,
    task_complete_event,
)
from tests.helpers.scripted import SignalSub, Sub


class Fanout:
    """Enqueues one task per item, sums the results, completes when all are back."""

    def on_start(self, inst: Any, ev: Any) -> Any:
        for item in inst.parameters:
            inst.enqueue_task("square", item)
        return inst.continue_with(0)

    def on_task_complete(self, inst: Any, ev: Any) -> Any:
        total = inst.payload + ev.result.value
        if inst.total_completed_tasks == inst.total_enqueued_tasks:
            return inst.complete(total)
        return inst.continue_with(total)

    def on_cancel(self, inst: Any, ev: Any) -> Any:
        return inst.fail("cancelled")


def test_an_executor_is_unit_tested_in_three_lines() -> None:
    outcome = run_callback(Fanout(), start_event(), parameters=[2, 3])
    assert outcome.decision == "continue" and outcome.payload == 0
    assert outcome.tasks == [("square", 2, None), ("square", 3, None)]


def test_a_task_complete_event_counts_the_reported_task_as_the_engine_does() -> None:
    last = run_callback(
        Fanout(), task_complete_event("square", 9), payload=4, enqueued_tasks=2, completed_tasks=1
    )
    assert last == CallbackOutcome("complete", result=13, enqueued_tasks=2, completed_tasks=2)
    first = run_callback(Fanout(), task_complete_event("square", 4), payload=0, enqueued_tasks=2)
    assert (first.decision, first.payload, first.completed_tasks) == ("continue", 4, 1)


def test_a_callback_that_raises_fails_with_the_exception_type_and_message() -> None:
    def boom(inst: Any, ev: Any) -> Any:
        raise ValueError("bad input")

    out = run_callback(Sub(on_start=boom), start_event())
    assert (out.decision, out.error) == ("fail", "ValueError: bad input")


def test_a_callback_returning_a_non_decision_fails() -> None:
    out = run_callback(Sub(on_start=lambda inst, ev: None), start_event())  # type: ignore[arg-type,return-value]
    assert out.decision == "fail"
    assert out.error == "on_start returned NoneType instead of a Decision"


def test_enqueue_then_complete_fails_as_in_the_engine() -> None:
    def on_start(inst: Any, ev: Any) -> Any:
        inst.enqueue_task("t")
        return inst.complete()

    out = run_callback(Sub(on_start=on_start), start_event())
    assert (out.decision, out.error, out.tasks) == ("fail", ENQUEUE_AND_COMPLETE, [])


def test_a_payload_that_is_not_json_fails() -> None:
    out = run_callback(Sub(on_start=lambda inst, ev: inst.continue_with({1j})), start_event())
    assert out.decision == "fail" and "not JSON-serialisable" in (out.error or "")


def test_task_start_after_is_reported_as_given() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)

    def on_start(inst: Any, ev: Any) -> Any:
        inst.enqueue_task("later", start_after=timedelta(seconds=30))
        inst.enqueue_task("at", start_after=at)
        return inst.continue_with()

    out = run_callback(Sub(on_start=on_start), start_event())
    assert out.tasks == [("later", None, timedelta(seconds=30)), ("at", None, at)]
    assert out.task_names == ["later", "at"]


def test_values_reach_the_callback_as_stored_json() -> None:
    seen: list[Any] = []

    def on_task(inst: Any, ev: Any) -> Any:
        seen.extend([inst.parameters, inst.payload, ev.result.parameters, ev.result.value])
        return inst.continue_with(inst.payload)

    run_callback(
        Sub(on_task=on_task),
        task_complete_event("t", (1, 2), parameters={"k": (3,)}),
        parameters=(4, 5),
        payload={"p": (6,)},
    )
    assert seen == [[4, 5], {"p": [6]}, {"k": [3]}, [1, 2]]


def test_a_cancel_reaches_on_cancel_of_a_running_instance() -> None:
    out = run_callback(Fanout(), cancel_event(), payload=3)
    assert (out.decision, out.error) == ("fail", "cancelled")


def test_a_signal_reaches_on_signal() -> None:
    ex = SignalSub(on_signal=lambda inst, ev: inst.continue_with([ev.name, ev.payload]))
    out = run_callback(ex, signal_event("poke", {"n": 1}))
    assert out.payload == ["poke", {"n": 1}]


def test_a_signal_to_an_executor_without_on_signal_changes_nothing() -> None:
    out = run_callback(Fanout(), signal_event("poke"), payload={"kept": True}, enqueued_tasks=2)
    assert out == CallbackOutcome("continue", payload={"kept": True}, enqueued_tasks=2)


def test_failed_task_events_carry_an_error() -> None:
    failed = task_complete_event("t", status=TaskStatus.FAILED)
    assert failed.result.error and not failed.result.ok and failed.result.value is None
    lost = task_complete_event("t", status=TaskStatus.LOST, error="gone")
    assert (lost.result.status, lost.result.error) == (TaskStatus.LOST, "gone")
    ok = task_complete_event("t", 5, parameters={"a": 1})
    assert (ok.task_name, ok.result.value, ok.result.parameters, ok.result.ok) == (
        "t",
        5,
        {"a": 1},
        True,
    )


def test_builders_reject_bad_input_with_clear_errors() -> None:
    with pytest.raises(CerealError, match="only a successful task has a value"):
        task_complete_event("t", 1, status=TaskStatus.FAILED)
    with pytest.raises(CerealError, match="no error"):
        task_complete_event("t", error="x")
    with pytest.raises(SerializationError, match="parameters of task 't'"):
        task_complete_event("t", parameters={1j})
    with pytest.raises(InvalidNameError, match="signal_name"):
        signal_event("")
    with pytest.raises(CerealError, match="got str"):
        run_callback(Fanout(), "start")  # type: ignore[arg-type]
    with pytest.raises(CerealError, match="enqueued_tasks"):
        run_callback(Fanout(), start_event(), enqueued_tasks=-1)
    with pytest.raises(SerializationError, match="workflow parameters"):
        run_callback(Fanout(), start_event(), parameters=object())


def test_a_task_complete_event_carries_the_attempts_made_to_the_callback() -> None:
    seen: list[int] = []

    class Reads:
        def on_start(self, instance: Any, event: Any) -> Any:
            return instance.continue_with()

        def on_task_complete(self, instance: Any, event: Any) -> Any:
            seen.append(event.result.attempts)
            return instance.complete(None)

        def on_cancel(self, instance: Any, event: Any) -> Any:
            return instance.fail("cancelled")

    run_callback(Reads(), task_complete_event("t", 1, attempts=3), enqueued_tasks=1)
    assert seen == [3]
