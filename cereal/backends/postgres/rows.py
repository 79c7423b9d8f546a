"""Rows read by column name (psycopg's ``dict_row``) and turned into the seam's records.

The per-row records are built with positional arguments, in field order: a manager builds
several for every workflow, and keywords cost twice the rest of the work.

Values the lenient ``jsonb`` loader could not decode arrive as
:class:`~cereal.backends.postgres.jsonb.Undecodable`; they become None plus a ``problem``.
"""

from __future__ import annotations

import json
from typing import Any

from cereal.backends.postgres.jsonb import Undecodable
from cereal.driver import ClaimedTask, EventRow, InstanceRow
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus

__all__ = [
    "Row",
    "claimed_task",
    "dumps",
    "event_row",
    "finished_info",
    "instance_row",
    "listed_info",
    "live_info",
    "loads",
    "schedule",
]

Row = dict[str, Any]


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


def instance_row(r: Row) -> InstanceRow:
    parameters, payload = r["parameters"], r["payload"]
    problem = None
    if isinstance(parameters, Undecodable) or isinstance(payload, Undecodable):
        problem = _problems(
            _undecodable("parameters", parameters), _undecodable("payload", payload)
        )
        parameters, payload = _decoded(parameters), _decoded(payload)
    return InstanceRow(
        r["id"],
        r["workflow_name"],
        r["instance_name"],
        parameters,
        payload,
        _STATUS[r["status"]],
        r["enqueued_tasks"],
        r["completed_tasks"],
        r["started_at"],
        problem,
        r.get("trace_context"),
    )


def event_row(e: Row) -> EventRow:
    parameters, result, signal = e["task_parameters"], e["task_result"], e["signal_payload"]
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
    return EventRow(
        e["id"],
        e["instance_id"],
        e["event_type"],
        e["enqueued_at"],
        e["task_name"],
        parameters,
        e["task_status"],
        e["task_error"],
        result,
        e["signal_name"],
        signal,
        problem,
        e["task_attempts"] or 1,
        e["task_route"],
    )


def claimed_task(r: Row) -> ClaimedTask:
    parameters = r["parameters"]
    problem = _undecodable("task parameters", parameters)
    return ClaimedTask(
        r["id"],
        r["instance_id"],
        r["task_name"],
        None if problem else parameters,
        r["enqueued_at"],
        r["workflow_name"],
        r["instance_name"],
        problem,
        r["attempt"],
        r["max_attempts"],
        r.get("trace_context"),
    )


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
    )


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def dumps(value: Any) -> str | None:
    """Stored JSON back to text (None for SQL NULL)."""
    return None if value is None else json.dumps(value, separators=(",", ":"))
