"""Signals in cereal.steps.run_events: delivered to on_signal, in order, never before
on_start, and discarded with a warning by executors without on_signal."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from cereal import SignalEvent, WorkflowStatus
from cereal.steps import CANCELED_STARTING, EventRow, InstanceRow, run_events
from tests.helpers.scripted import SignalSub, Sub

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def row(status: WorkflowStatus = WorkflowStatus.RUNNING, payload: Any = None) -> InstanceRow:
    return InstanceRow(7, "wf", "inst", {"p": 1}, payload, status, 1, 0, T0)


def start(eid: int = 1) -> EventRow:
    return EventRow(eid, 7, "start", T0)


def signal(eid: int, name: str = "poke", payload: Any = None) -> EventRow:
    return EventRow(eid, 7, "signal", T0, signal_name=name, signal_payload=payload)


def cancel(eid: int) -> EventRow:
    return EventRow(eid, 7, "cancel", T0)


def test_signal_is_delivered_to_on_signal_with_its_name_and_payload() -> None:
    seen: list[Any] = []

    def on_signal(inst: Any, ev: Any) -> Any:
        seen.append(ev)
        return inst.continue_with({"signals": [ev.name, ev.payload]})

    out = run_events(SignalSub(on_signal=on_signal), row(), [signal(5, "poke", {"n": 1})])
    assert seen == [SignalEvent("poke", {"n": 1}, T0)]
    assert json.loads(out.payload_json or "null") == {"signals": ["poke", {"n": 1}]}
    assert out.consumed == [5] and out.handled == 1
    assert out.status is WorkflowStatus.RUNNING


def test_signal_decision_can_complete_or_fail_the_instance() -> None:
    done = run_events(
        SignalSub(on_signal=lambda inst, ev: inst.complete(ev.name)), row(), [signal(5)]
    )
    assert done.status is WorkflowStatus.COMPLETED and done.result_json == '"poke"'
    failed = run_events(SignalSub(on_signal=lambda inst, ev: inst.fail("stop")), row(), [signal(5)])
    assert failed.status is WorkflowStatus.FAILED and failed.error == "stop"


def test_signal_without_on_signal_leaves_the_instance_unchanged_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cereal")
    out = run_events(Sub(), row(payload={"keep": 1}), [signal(5, "nudge")])
    assert out.consumed == [5]
    assert out.handled == 0
    assert out.status is WorkflowStatus.RUNNING
    assert json.loads(out.payload_json or "null") == {"keep": 1}
    assert out.tasks == [] and out.enqueued_tasks == 1
    assert any("nudge" in r.getMessage() for r in caplog.records)


def test_signals_are_delivered_in_order_with_other_events() -> None:
    order: list[str] = []

    def on_signal(inst: Any, ev: Any) -> Any:
        order.append(ev.name)
        return inst.continue_with((inst.payload or 0) + 1)

    def on_start(inst: Any, ev: Any) -> Any:
        order.append("start")
        return inst.continue_with(0)

    ex = SignalSub(on_signal=on_signal, on_start=on_start)
    out = run_events(ex, row(WorkflowStatus.STARTING), [start(1), signal(2, "a"), signal(3, "b")])
    assert order == ["start", "a", "b"]
    assert out.payload_json == "2"
    assert out.consumed == [1, 2, 3]


def test_signal_never_runs_before_on_start() -> None:
    ex = SignalSub(on_signal=lambda inst, ev: inst.complete())
    out = run_events(ex, row(WorkflowStatus.STARTING), [signal(2)])
    assert ex.calls == []
    assert out.consumed == [] and out.status is WorkflowStatus.STARTING


def test_signal_is_not_taken_for_a_cancel_before_start() -> None:
    ex = SignalSub(
        on_signal=lambda inst, ev: inst.continue_with("signalled"),
        on_start=lambda inst, ev: inst.continue_with("started"),
    )
    out = run_events(ex, row(WorkflowStatus.STARTING), [start(1), signal(2)])
    assert out.error != CANCELED_STARTING
    assert out.status is WorkflowStatus.RUNNING
    assert out.payload_json == '"signalled"'


def test_signal_callback_that_raises_fails_the_instance() -> None:
    def on_signal(inst: Any, ev: Any) -> Any:
        raise KeyError("missing")

    out = run_events(SignalSub(on_signal=on_signal), row(), [signal(5)])
    assert out.status is WorkflowStatus.FAILED
    assert out.error == "KeyError: 'missing'"


def test_what_goes_wrong_is_logged_with_the_instance_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cereal")

    def on_signal(inst: Any, ev: Any) -> Any:
        raise RuntimeError("boom")

    run_events(Sub(), row(), [signal(5, "nudge")])
    run_events(SignalSub(on_signal=on_signal), row(), [signal(6, "poke")])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert all("workflow='wf'" in m and "instance='inst'" in m for m in messages), messages
    assert "workflow callback raised" in messages[1] and "boom" in messages[1]
