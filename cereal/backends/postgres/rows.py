"""Rows turned into the seam's records.

The rows a claim reads come as plain values (psycopg's default ``tuple_row``) with a map of
column positions (:func:`columns`): building a dictionary for each row cost more than the
record made from it. Other rows are read by column name (``dict_row``). Records are built
with positional arguments, in field order: keywords cost twice the rest of the work.

Values the lenient ``jsonb`` loader could not decode arrive as
:class:`~cereal.backends.postgres.jsonb.Undecodable`; they become None plus a ``problem``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from cereal.backends.postgres.jsonb import Undecodable
from cereal.driver import ClaimedTask, EventRow, InstanceRow
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus

__all__ = [
    "Columns",
    "Row",
    "as_dict",
    "claimed_starts",
    "claimed_tasks",
    "columns",
    "dumps",
    "event_row",
    "event_rows",
    "finished_info",
    "instance_row",
    "instance_rows",
    "listed_info",
    "live_info",
    "loads",
    "schedule",
]

Row = dict[str, Any]
Columns = dict[str, int]
"""Each column's position in the rows of one result, by name."""


def _undecodable(what: str, value: Any) -> str | None:
    if isinstance(value, Undecodable):
        return f"stored {what} cannot be decoded: {value.error}"
    return None


def _decoded(value: Any) -> Any:
    return None if isinstance(value, Undecodable) else value


def _problems(*found: str | None) -> str | None:
    return "; ".join(p for p in found if p is not None) or None


_STATUS = {status.value: status for status in WorkflowStatus}
"""Statuses by stored value: a dictionary lookup, where ``WorkflowStatus(value)`` costs as much
as building the rest of a row."""


def columns(cursor: psycopg.Cursor[Any]) -> Columns:
    """Where each column of ``cursor``'s current result is in its rows."""
    return {column.name: at for at, column in enumerate(cursor.description or ())}


def as_dict(values: Sequence[Any], at: Columns) -> Row:
    """One row of plain values as a dictionary by column name."""
    return {name: values[i] for name, i in at.items()}


def instance_rows(rows: Iterable[Sequence[Any]], at: Columns) -> list[InstanceRow]:
    """The instances among ``rows`` (plain values, each column where ``at`` says). A row
    whose id is NULL is not an instance (a claim's last row carries its floor): skipped."""
    i_id, i_workflow, i_instance, i_parameters, i_payload = (
        at["id"],
        at["workflow_name"],
        at["instance_name"],
        at["parameters"],
        at["payload"],
    )
    i_status, i_enqueued, i_completed, i_started = (
        at["status"],
        at["enqueued_tasks"],
        at["completed_tasks"],
        at["started_at"],
    )
    i_trace = at.get("trace_context")
    found = []
    for v in rows:
        if v[i_id] is None:
            continue
        parameters, payload = v[i_parameters], v[i_payload]
        problem = None
        if isinstance(parameters, Undecodable) or isinstance(payload, Undecodable):
            problem = _problems(
                _undecodable("parameters", parameters), _undecodable("payload", payload)
            )
            parameters, payload = _decoded(parameters), _decoded(payload)
        found.append(
            InstanceRow(
                v[i_id],
                v[i_workflow],
                v[i_instance],
                parameters,
                payload,
                _STATUS[v[i_status]],
                v[i_enqueued],
                v[i_completed],
                v[i_started],
                problem,
                None if i_trace is None else v[i_trace],
            )
        )
    return found


def instance_row(r: Row) -> InstanceRow:
    """One instance read as a dictionary (``dict_row``)."""
    (row,) = instance_rows([list(r.values())], {name: i for i, name in enumerate(r)})
    return row


def event_rows(rows: Iterable[Sequence[Any]], at: Columns) -> list[EventRow]:
    """The events in ``rows`` (plain values, each column where ``at`` says)."""
    i_id, i_instance, i_type, i_enqueued, i_task = (
        at["id"],
        at["instance_id"],
        at["event_type"],
        at["enqueued_at"],
        at["task_name"],
    )
    i_parameters, i_status, i_error, i_result, i_attempts = (
        at["task_parameters"],
        at["task_status"],
        at["task_error"],
        at["task_result"],
        at["task_attempts"],
    )
    i_route, i_signal, i_signal_payload = at["task_route"], at["signal_name"], at["signal_payload"]
    found = []
    for v in rows:
        parameters, result, signal = v[i_parameters], v[i_result], v[i_signal_payload]
        problem = None
        if (
            isinstance(parameters, Undecodable)
            or isinstance(result, Undecodable)
            or isinstance(signal, Undecodable)
        ):
            problem = _problems(
                _undecodable("task parameters", parameters),
                _undecodable("task result", result),
                _undecodable("signal payload", signal),
            )
            parameters, result, signal = _decoded(parameters), _decoded(result), _decoded(signal)
        found.append(
            EventRow(
                v[i_id],
                v[i_instance],
                v[i_type],
                v[i_enqueued],
                v[i_task],
                parameters,
                v[i_status],
                v[i_error],
                result,
                v[i_signal],
                signal,
                problem,
                v[i_attempts] or 1,
                v[i_route],
            )
        )
    return found


def event_row(e: Row) -> EventRow:
    """One event read as a dictionary (``dict_row``)."""
    (row,) = event_rows([list(e.values())], {name: i for i, name in enumerate(e)})
    return row


def claimed_tasks(
    rows: Iterable[Sequence[Any]],
    at: Columns,
    instances: Mapping[int, InstanceRow] | None = None,
) -> list[ClaimedTask]:
    """The claimed tasks in ``rows`` (plain values, each column where ``at`` says); a row
    whose id is NULL carries something else and is skipped. Rows without the instance's
    names take them from ``instances``, by instance id."""
    i_id, i_instance, i_task, i_parameters, i_enqueued = (
        at["id"],
        at["instance_id"],
        at["task_name"],
        at["parameters"],
        at["enqueued_at"],
    )
    i_attempt, i_max_attempts, i_trace = at["attempt"], at["max_attempts"], at.get("trace_context")
    i_workflow, i_name = at.get("workflow_name"), at.get("instance_name")
    found = []
    for v in rows:
        if v[i_id] is None:
            continue
        if i_workflow is None or i_name is None:
            if instances is None:
                raise KeyError("claimed task rows without their instance's names")
            owner = instances[v[i_instance]]
            workflow, name = owner.workflow_name, owner.instance_name
        else:
            workflow, name = v[i_workflow], v[i_name]
        parameters = v[i_parameters]
        problem = _undecodable("task parameters", parameters)
        found.append(
            ClaimedTask(
                v[i_id],
                v[i_instance],
                v[i_task],
                None if problem else parameters,
                v[i_enqueued],
                workflow,
                name,
                problem,
                v[i_attempt],
                v[i_max_attempts],
                None if i_trace is None else v[i_trace],
            )
        )
    return found


def claimed_starts(rows: Iterable[Sequence[Any]], at: Columns) -> list[tuple[str, datetime]]:
    """``(task_name, start_after)`` of each claimed task in ``rows`` (a row whose id is NULL
    is skipped, as by :func:`claimed_tasks`), for the process's task floors."""
    i_id, i_task, i_start = at["id"], at["task_name"], at["start_after"]
    return [(v[i_task], v[i_start]) for v in rows if v[i_id] is not None]


def live_info(r: Row) -> WorkflowInstanceInfo:
    return WorkflowInstanceInfo(
        workflow_name=r["workflow_name"],
        instance_name=r["instance_name"],
        status=WorkflowStatus(r["status"]),
        parameters=r["parameters"],
        payload=r["payload"],
        started_at=r["started_at"],
    )


def finished_info(r: Row) -> WorkflowInstanceInfo:
    status = WorkflowStatus(r["status"])
    return WorkflowInstanceInfo(
        workflow_name=r["workflow_name"],
        instance_name=r["instance_name"],
        status=status,
        parameters=r["parameters"],
        result=r["result"] if status is WorkflowStatus.COMPLETED else None,
        error=r["error"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
    )


def listed_info(r: Row) -> WorkflowInstanceInfo:
    """A row of a listing: a live instance (payload) or a finished run (result, error)."""
    status = WorkflowStatus(r["status"])
    return WorkflowInstanceInfo(
        workflow_name=r["workflow_name"],
        instance_name=r["instance_name"],
        status=status,
        parameters=r["parameters"],
        payload=r["payload"],
        result=r["result"] if status is WorkflowStatus.COMPLETED else None,
        error=r["error"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
    )


def schedule(r: Row) -> Schedule:
    """A ``select_schedules`` row; its ``read_at`` (the database's clock) against this
    process's clock gives the schedule's ``clock_offset``."""
    return Schedule(
        workflow_name=r["workflow_name"],
        instance_name=r["instance_name"],
        parameters=r["parameters"],
        recurrence=r["recurrence"],
        enabled=r["enabled"],
        next_due_at=r["next_due_at"],
        last_enqueued_at=r["last_enqueued_at"],
        last_start=r["last_start"],
        last_end=r["last_end"],
        clock_offset=r["read_at"] - datetime.now(UTC),
    )


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def dumps(value: Any) -> str | None:
    """Stored JSON back to text (None for SQL NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))
