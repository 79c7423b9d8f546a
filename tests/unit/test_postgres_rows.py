"""The PostgreSQL driver's rows become the seam's records field by field.

The builders pass their arguments by position (they run for every row a claim reads), so each
test gives every column a value of its own and checks where each one lands. A claim's rows
come as plain values with a map of column positions, in whatever order the statement
selects them.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from cereal.backends.postgres.jsonb import Undecodable
from cereal.backends.postgres.rows import (
    as_dict,
    claimed_starts,
    claimed_tasks,
    event_row,
    event_rows,
    instance_row,
    instance_rows,
    schedule,
)
from cereal.driver import ClaimedTask
from cereal.types import WorkflowStatus

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def instance_columns(**changes: Any) -> dict[str, Any]:
    return {
        "id": 11,
        "workflow_name": "wf",
        "instance_name": "inst",
        "parameters": {"p": 1},
        "payload": {"q": 2},
        "status": "running",
        "enqueued_tasks": 3,
        "completed_tasks": 2,
        "started_at": T0,
        "trace_context": "trace",
        **changes,
    }


def event_columns(**changes: Any) -> dict[str, Any]:
    return {
        "id": 21,
        "instance_id": 11,
        "event_type": "task_complete",
        "enqueued_at": T0,
        "task_name": "fetch",
        "task_parameters": {"url": "u"},
        "task_status": "failed",
        "task_error": "boom",
        "task_result": [1, 2],
        "task_attempts": 4,
        "task_route": "r",
        "signal_name": "sig",
        "signal_payload": {"s": True},
        **changes,
    }


def claimed_task(columns: dict[str, Any]) -> ClaimedTask:
    (task,) = claimed_tasks([list(columns.values())], {n: i for i, n in enumerate(columns)})
    return task


def task_columns(**changes: Any) -> dict[str, Any]:
    return {
        "id": 31,
        "instance_id": 11,
        "task_name": "fetch",
        "parameters": {"url": "u"},
        "enqueued_at": T0,
        "workflow_name": "wf",
        "instance_name": "inst",
        "attempt": 2,
        "max_attempts": 5,
        "trace_context": "trace",
        **changes,
    }


def test_an_instance_row_keeps_every_column_in_its_field() -> None:
    row = instance_row(instance_columns())

    # The columns carry the fields' names; the status becomes its enum member.
    assert dataclasses.asdict(row) == instance_columns() | {
        "status": WorkflowStatus.RUNNING,
        "problem": None,
    }


def test_an_instance_status_is_the_enum_member() -> None:
    for status in WorkflowStatus:
        assert instance_row(instance_columns(status=status.value)).status is status


def test_an_instance_row_without_a_trace_column_has_no_trace_context() -> None:
    columns = instance_columns()
    del columns["trace_context"]

    assert instance_row(columns).trace_context is None


def test_undecodable_instance_values_become_none_and_a_problem() -> None:
    row = instance_row(
        instance_columns(parameters=Undecodable("bad number"), payload=Undecodable("too deep"))
    )

    assert (row.parameters, row.payload) == (None, None)
    assert row.problem == (
        "stored parameters cannot be decoded: bad number; "
        "stored payload cannot be decoded: too deep"
    )


def test_an_event_row_keeps_every_column_in_its_field() -> None:
    columns = event_columns()
    row = event_row(columns)

    # The columns carry the fields' names, but for the event's kind.
    expected = {name: value for name, value in columns.items() if name != "event_type"}
    assert dataclasses.asdict(row) == expected | {"kind": "task_complete", "problem": None}


def test_an_event_without_attempts_counts_one() -> None:
    assert event_row(event_columns(task_attempts=None)).task_attempts == 1


def test_undecodable_event_values_become_none_and_a_problem() -> None:
    row = event_row(
        event_columns(
            task_parameters=Undecodable("a"),
            task_result=Undecodable("b"),
            signal_payload=Undecodable("c"),
        )
    )

    assert (row.task_parameters, row.task_result, row.signal_payload) == (None, None, None)
    assert row.problem == (
        "stored task parameters cannot be decoded: a; "
        "stored task result cannot be decoded: b; "
        "stored signal payload cannot be decoded: c"
    )


def test_one_undecodable_event_value_leaves_the_others() -> None:
    row = event_row(event_columns(task_result=Undecodable("b")))

    assert (row.task_parameters, row.task_result) == ({"url": "u"}, None)
    assert row.problem == "stored task result cannot be decoded: b"


def test_a_claimed_task_keeps_every_column_in_its_field() -> None:
    row = claimed_task(task_columns())

    assert dataclasses.asdict(row) == task_columns() | {"problem": None}


def test_undecodable_task_parameters_become_none_and_a_problem() -> None:
    row = claimed_task(task_columns(parameters=Undecodable("bad")))

    assert row.parameters is None
    assert row.problem == "stored task parameters cannot be decoded: bad"


def test_a_claimed_task_with_falsy_parameters_keeps_them() -> None:
    for value in (0, "", [], {}, False, None):
        assert claimed_task(task_columns(parameters=value)).parameters == value


def test_timestamps_pass_through_unchanged() -> None:
    later = T0 + timedelta(seconds=1)

    assert instance_row(instance_columns(started_at=later)).started_at == later
    assert event_row(event_columns(enqueued_at=later)).enqueued_at == later


def as_values(rows: list[dict[str, Any]]) -> tuple[list[list[Any]], dict[str, int]]:
    """``rows`` as plain values with their columns in reverse order."""
    names = list(reversed(rows[0]))
    return [[r[n] for n in names] for r in rows], {n: i for i, n in enumerate(names)}


def test_instances_read_from_plain_values_match_those_read_by_name() -> None:
    by_name = [instance_columns(), instance_columns(id=12, instance_name="other")]
    values, at = as_values(by_name)

    assert instance_rows(values, at) == [instance_row(r) for r in by_name]


def test_a_row_without_an_instance_id_is_not_an_instance() -> None:
    floor_row = dict.fromkeys(instance_columns()) | {"status": None}
    values, at = as_values([instance_columns(), floor_row])

    assert [row.id for row in instance_rows(values, at)] == [11]
    assert as_dict(values[1], at) == floor_row


def test_instances_without_a_trace_column_have_no_trace_context() -> None:
    columns = instance_columns()
    del columns["trace_context"]
    values, at = as_values([columns])

    assert instance_rows(values, at)[0].trace_context is None


def test_events_read_from_plain_values_match_those_read_by_name() -> None:
    by_name = [
        event_columns(),
        event_columns(id=22, event_type="start", task_result=Undecodable("b")),
    ]
    values, at = as_values(by_name)

    assert event_rows(values, at) == [event_row(r) for r in by_name]


def test_claimed_tasks_without_names_take_them_from_their_instances() -> None:
    columns = task_columns()
    del columns["workflow_name"], columns["instance_name"]
    values, at = as_values([columns, dict.fromkeys(columns)])
    owner = instance_row(instance_columns(workflow_name="w2", instance_name="i2"))

    (task,) = claimed_tasks(values, at, {11: owner})

    assert (task.id, task.workflow_name, task.instance_name) == (31, "w2", "i2")


def test_claimed_starts_name_each_claimed_task_and_its_due_time() -> None:
    columns = task_columns(start_after=T0)
    values, at = as_values([columns, dict.fromkeys(columns)])

    assert claimed_starts(values, at) == [("fetch", T0)]


def test_a_schedule_row_carries_how_far_the_database_clock_is_ahead() -> None:
    read_at = datetime.now(UTC) + timedelta(hours=2)
    row = {
        "workflow_name": "w",
        "instance_name": "nightly",
        "parameters": {"x": 1},
        "recurrence": "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY",
        "enabled": True,
        "next_due_at": T0,
        "last_enqueued_at": None,
        "last_start": None,
        "last_end": None,
        "read_at": read_at,
    }
    stored = schedule(row)
    assert timedelta(hours=2) - timedelta(seconds=5) < stored.clock_offset <= timedelta(hours=2)
    (upcoming,) = stored.next_occurrences(1)
    assert upcoming == (read_at + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
