"""Running one workflow callback without a database, through the engine's own step code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cereal.codec import check_name, encode
from cereal.config import count as check_count
from cereal.driver import EventRow, InstanceRow
from cereal.errors import CerealError
from cereal.executors import WorkflowExecutor
from cereal.steps import run_events
from cereal.types import (
    CancelEvent,
    SignalEvent,
    StartEvent,
    TaskCompleteEvent,
    TaskResult,
    TaskStatus,
    WorkflowStatus,
)

__all__ = [
    "CallbackOutcome",
    "Event",
    "cancel_event",
    "run_callback",
    "signal_event",
    "start_event",
    "task_complete_event",
]

Event = StartEvent | TaskCompleteEvent | CancelEvent | SignalEvent
DecisionName = Literal["continue", "complete", "fail"]

_DEFAULT_ERRORS = {
    TaskStatus.FAILED: "task failed",
    TaskStatus.LOST: "task lost",
    TaskStatus.UNUSABLE_RESULT: "task result is unusable",
}


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    """What one callback decided, as the engine would commit it.

    ``payload`` is set when the decision is ``"continue"`` (the instance's new payload),
    ``result`` when it is ``"complete"``, ``error`` when it is ``"fail"``. ``tasks`` lists the
    tasks that would be written, as ``(task_name, parameters, start_after)``: always empty
    unless the instance continues, and ``task_routes`` their routes (None but for tasks of
    the chain and parallel patterns; pass one to :func:`task_complete_event` to deliver that
    task's result as the engine would). Values are JSON round-tripped, as stored.
    """

    decision: DecisionName
    payload: Any = None
    result: Any = None
    error: str | None = None
    tasks: list[tuple[str, Any, datetime | timedelta | None]] = field(default_factory=list)
    enqueued_tasks: int = 0
    """The instance's enqueued-task counter after the callback."""
    completed_tasks: int = 0
    """The instance's completed-task counter after the callback."""
    task_routes: list[str | None] = field(default_factory=list)
    """The route of each of ``tasks``, in the same order."""

    @property
    def task_names(self) -> list[str]:
        """The names of ``tasks``, in enqueue order."""
        return [name for name, _, _ in self.tasks]


def start_event() -> StartEvent:
    """A start event, enqueued now."""
    return StartEvent(datetime.now(UTC))


def cancel_event() -> CancelEvent:
    """A cancel event, enqueued now."""
    return CancelEvent(datetime.now(UTC))


def signal_event(name: str, payload: Any = None) -> SignalEvent:
    """A signal named ``name`` carrying the JSON value ``payload``, enqueued now."""
    check_name("signal_name", name)
    return SignalEvent(name, _roundtrip(payload, f"payload of signal {name!r}"), datetime.now(UTC))


def task_complete_event(
    task_name: str,
    value: Any = None,
    *,
    status: TaskStatus = TaskStatus.SUCCESS,
    error: str | None = None,
    parameters: Any = None,
    attempts: int = 1,
    route: str | None = None,
) -> TaskCompleteEvent:
    """The result of a task named ``task_name`` that was enqueued with ``parameters``.

    A successful task returned ``value``. For any other ``status``, ``error`` is the text the
    workflow sees (a generic one when omitted); ``value`` must then be None. ``attempts`` is
    how many attempts the task made (more than 1 only with a retry policy). ``route`` is the
    route the task was enqueued with (``CallbackOutcome.task_routes``).
    """
    check_name("task_name", task_name)
    check_count("attempts", attempts)
    status = TaskStatus(status)
    if status is TaskStatus.SUCCESS:
        if error is not None:
            raise CerealError(f"a successful task has no error, got error={error!r}")
    else:
        if value is not None:
            raise CerealError(
                f"only a successful task has a value; got value={value!r} with status "
                f"{status.value!r}"
            )
        error = error or _DEFAULT_ERRORS[status]
    result = TaskResult(
        task_name=task_name,
        parameters=_roundtrip(parameters, f"parameters of task {task_name!r}"),
        status=status,
        value=_roundtrip(value, f"value of task {task_name!r}"),
        error=error,
        attempts=attempts,
    )
    return TaskCompleteEvent(task_name, result, datetime.now(UTC), route)


def run_callback(
    executor: WorkflowExecutor,
    event: Event,
    *,
    workflow_name: str = "test",
    instance_name: str = "test",
    parameters: Any = None,
    payload: Any = None,
    enqueued_tasks: int = 0,
    completed_tasks: int = 0,
) -> CallbackOutcome:
    """Deliver ``event`` to ``executor`` exactly as the engine would, with no database.

    The instance has the given ``parameters`` and ``payload`` and the stored counters
    ``enqueued_tasks`` and ``completed_tasks``; as in the engine, a task-complete event counts
    the reported task, so the callback sees ``completed_tasks + 1``. The engine's rules apply
    unchanged: an exception, a return value that is not a decision, ``complete`` after
    ``enqueue_task`` or a value that is not JSON all give a ``"fail"`` outcome. A start event
    finds the instance starting; any other event finds it running.
    """
    check_name("workflow_name", workflow_name)
    check_name("instance_name", instance_name)
    for counter, count in (
        ("enqueued_tasks", enqueued_tasks),
        ("completed_tasks", completed_tasks),
    ):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise CerealError(f"{counter} must be a non-negative int, got {count!r}")
    row = _event_row(event)
    instance = InstanceRow(
        id=1,
        workflow_name=workflow_name,
        instance_name=instance_name,
        parameters=_roundtrip(parameters, "workflow parameters"),
        payload=_roundtrip(payload, "payload"),
        status=WorkflowStatus.STARTING if row.kind == "start" else WorkflowStatus.RUNNING,
        enqueued_tasks=enqueued_tasks,
        completed_tasks=completed_tasks,
        started_at=row.enqueued_at,
    )
    out = run_events(executor, instance, [row])
    if out.status is WorkflowStatus.FAILED:
        return CallbackOutcome(
            "fail",
            error=out.error,
            enqueued_tasks=out.enqueued_tasks,
            completed_tasks=out.completed_tasks,
        )
    if out.status is WorkflowStatus.COMPLETED:
        return CallbackOutcome(
            "complete",
            result=_loads(out.result_json),
            enqueued_tasks=out.enqueued_tasks,
            completed_tasks=out.completed_tasks,
        )
    tasks = [
        (
            t.name,
            _loads(t.parameters_json),
            t.start_at or (timedelta(seconds=t.delay) if t.delay else None),
        )
        for t in out.tasks
    ]
    return CallbackOutcome(
        "continue",
        payload=_loads(out.payload_json),
        tasks=tasks,
        task_routes=[t.route for t in out.tasks],
        enqueued_tasks=out.enqueued_tasks,
        completed_tasks=out.completed_tasks,
    )


def _event_row(event: Event) -> EventRow:
    if isinstance(event, StartEvent):
        return EventRow(id=1, instance_id=1, kind="start", enqueued_at=event.enqueued_at)
    if isinstance(event, CancelEvent):
        return EventRow(id=1, instance_id=1, kind="cancel", enqueued_at=event.enqueued_at)
    if isinstance(event, SignalEvent):
        return EventRow(
            id=1,
            instance_id=1,
            kind="signal",
            enqueued_at=event.enqueued_at,
            signal_name=event.name,
            signal_payload=_roundtrip(event.payload, f"payload of signal {event.name!r}"),
        )
    if isinstance(event, TaskCompleteEvent):
        result = event.result
        return EventRow(
            id=1,
            instance_id=1,
            kind="task_complete",
            enqueued_at=event.enqueued_at,
            task_name=event.task_name,
            task_parameters=_roundtrip(result.parameters, "task parameters"),
            task_status=TaskStatus(result.status).value,
            task_error=result.error,
            task_result=_roundtrip(result.value, "task value"),
            task_attempts=result.attempts,
            task_route=event.route,
        )
    raise CerealError(
        f"run_callback takes a StartEvent, TaskCompleteEvent, CancelEvent or SignalEvent "
        f"(see start_event() and the other builders), got {type(event).__name__}: {event!r}"
    )


def _roundtrip(value: Any, what: str) -> Any:
    """``value`` as it comes back from storage (raises ``SerializationError`` if not JSON)."""
    return _loads(encode(value, what))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
