"""Rows read by column name (psycopg's ``dict_row``) and turned into the seam's records.

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


def instance_row(r: Row) -> InstanceRow:
    return InstanceRow(
        id=r["id"],
        workflow_name=r["workflow_name"],
        instance_name=r["instance_name"],
        parameters=_decoded(r["parameters"]),
        payload=_decoded(r["payload"]),
        status=WorkflowStatus(r["status"]),
        enqueued_tasks=r["enqueued_tasks"],
        completed_tasks=r["completed_tasks"],
        started_at=r["started_at"],
        problem=_problems(
            _undecodable("parameters", r["parameters"]), _undecodable("payload", r["payload"])
        ),
        trace_context=r.get("trace_context"),
    )


def event_row(e: Row) -> EventRow:
    return EventRow(
        id=e["id"],
        instance_id=e["instance_id"],
        kind=e["event_type"],
        enqueued_at=e["enqueued_at"],
        task_name=e["task_name"],
        task_parameters=_decoded(e["task_parameters"]),
        task_status=e["task_status"],
        task_error=e["task_error"],
        task_result=_decoded(e["task_result"]),
        task_attempts=e["task_attempts"] or 1,
        task_route=e["task_route"],
        signal_name=e["signal_name"],
        signal_payload=_decoded(e["signal_payload"]),
        problem=_problems(
            _undecodable("task parameters", e["task_parameters"]),
            _undecodable("task result", e["task_result"]),
            _undecodable("signal payload", e["signal_payload"]),
        ),
    )


def claimed_task(r: Row) -> ClaimedTask:
    return ClaimedTask(
        id=r["id"],
        instance_id=r["instance_id"],
        task_name=r["task_name"],
        parameters=_decoded(r["parameters"]),
        enqueued_at=r["enqueued_at"],
        workflow_name=r["workflow_name"],
        instance_name=r["instance_name"],
        problem=_undecodable("task parameters", r["parameters"]),
        attempt=r["attempt"],
        max_attempts=r["max_attempts"],
        trace_context=r.get("trace_context"),
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
