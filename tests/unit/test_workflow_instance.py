"""Unit tests of WorkflowInstance: buffering tasks, start_after forms, and building decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cereal import Decision, WorkflowInstance
from cereal.errors import CerealError, InvalidDecisionError, InvalidNameError, SerializationError
from cereal.workflow import DecisionKind


def make_instance(enqueued: int = 0, completed: int = 0) -> WorkflowInstance:
    return WorkflowInstance("wf", "inst", {"p": 1}, {"state": 2}, enqueued, completed)


def test_instance_exposes_names_parameters_payload_and_counters() -> None:
    inst = make_instance(enqueued=5, completed=3)
    assert (inst.workflow_name, inst.instance_name) == ("wf", "inst")
    assert inst.parameters == {"p": 1}
    assert inst.payload == {"state": 2}
    assert inst.total_enqueued_tasks == 5
    assert inst.total_completed_tasks == 3
    assert inst.pending_tasks == []


def test_enqueue_task_buffers_encoded_parameters_in_order() -> None:
    inst = make_instance()
    inst.enqueue_task("a", {"x": [1, 2]})
    inst.enqueue_task("b")
    inst.enqueue_task("a", "text")
    tasks = inst.pending_tasks
    assert [t.name for t in tasks] == ["a", "b", "a"]
    assert [t.parameters_json for t in tasks] == ['{"x":[1,2]}', None, '"text"']
    assert all(t.start_at is None and t.delay == 0.0 for t in tasks)


def test_total_enqueued_tasks_counts_buffered_tasks() -> None:
    inst = make_instance(enqueued=2)
    inst.enqueue_task("a")
    inst.enqueue_task("b")
    assert inst.total_enqueued_tasks == 4
    assert inst.total_completed_tasks == 0


def test_pending_tasks_is_a_copy() -> None:
    inst = make_instance()
    inst.enqueue_task("a")
    inst.pending_tasks.clear()
    assert len(inst.pending_tasks) == 1


@pytest.mark.parametrize("name", ["", None, 7, "x" * 201, "a\x00", "\udc00"])
def test_enqueue_task_rejects_bad_task_names(name: Any) -> None:
    inst = make_instance()
    with pytest.raises(InvalidNameError, match="task_name"):
        inst.enqueue_task(name)
    assert inst.pending_tasks == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({1, 2}, "Object of type set"),
        (float("nan"), "NaN and Infinity"),
        ({"k": "\x00"}, "NUL character"),
        ("\ud800", "not valid Unicode"),
        (object(), "Object of type object"),
    ],
)
def test_enqueue_task_rejects_non_json_parameters_at_once(params: Any, message: str) -> None:
    inst = make_instance()
    with pytest.raises(SerializationError, match=message) as info:
        inst.enqueue_task("work", params)
    assert "parameters of task 'work'" in str(info.value)
    assert inst.pending_tasks == []
    assert inst.total_enqueued_tasks == 0


def test_start_after_timedelta_becomes_a_delay_on_the_database_clock() -> None:
    inst = make_instance()
    inst.enqueue_task("a", start_after=timedelta(minutes=2))
    (task,) = inst.pending_tasks
    assert task.start_at is None
    assert task.delay == 120.0


def test_negative_start_after_timedelta_means_now() -> None:
    inst = make_instance()
    inst.enqueue_task("a", start_after=timedelta(seconds=-30))
    assert inst.pending_tasks[0].delay == 0.0


def test_start_after_aware_datetime_is_converted_to_utc() -> None:
    inst = make_instance()
    when = datetime(2030, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    inst.enqueue_task("a", start_after=when)
    (task,) = inst.pending_tasks
    assert task.start_at == datetime(2030, 5, 1, 10, 0, tzinfo=UTC)
    assert task.start_at is not None and task.start_at.utcoffset() == timedelta(0)
    assert task.delay == 0.0


def test_start_after_naive_datetime_is_taken_as_utc() -> None:
    inst = make_instance()
    inst.enqueue_task("a", start_after=datetime(2030, 5, 1, 12, 0))
    assert inst.pending_tasks[0].start_at == datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("start_after", [5, 2.5, "2030-01-01", datetime(2030, 1, 1).date()])
def test_start_after_of_another_type_is_rejected(start_after: Any) -> None:
    inst = make_instance()
    with pytest.raises(InvalidDecisionError, match="start_after must be a datetime"):
        inst.enqueue_task("a", start_after=start_after)
    assert inst.pending_tasks == []


# --- decisions --------------------------------------------------------------------------------


def test_continue_with_carries_the_payload() -> None:
    decision = make_instance().continue_with({"n": 1})
    assert isinstance(decision, Decision)
    assert decision.kind is DecisionKind.CONTINUE
    assert decision.is_continuing and not decision.is_complete and not decision.is_failed
    assert decision.value == {"n": 1}
    assert make_instance().continue_with().value is None


def test_complete_carries_the_result() -> None:
    decision = make_instance().complete([1, 2])
    assert decision.is_complete and not decision.is_continuing and not decision.is_failed
    assert decision.value == [1, 2]
    assert make_instance().complete().value is None


def test_fail_stores_str_of_an_exception() -> None:
    decision = make_instance().fail(ValueError("bad input"))
    assert decision.is_failed
    assert decision.error == "bad input"


def test_fail_stores_a_string_as_is() -> None:
    assert make_instance().fail("it broke").error == "it broke"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (None, "fail\\(\\) needs an error: got None"),
        ("", "non-empty error message"),
        (ValueError(), "non-empty error message"),
        (42, "takes an exception or a str, got int"),
    ],
)
def test_fail_rejects_missing_or_empty_errors(error: Any, message: str) -> None:
    with pytest.raises(InvalidDecisionError, match=message) as info:
        make_instance().fail(error)
    assert isinstance(info.value, CerealError)
