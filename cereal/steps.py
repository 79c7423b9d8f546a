"""Turning a workflow instance's pending events into one outcome to commit.

This is the pure heart of event dispatch: given an instance's stored state and its next
events (in order), call the executor once per event and fold the decisions into a single
:class:`StepOutcome`. The caller commits the outcome in the same transaction that locked the
instance, so a crash anywhere re-delivers every event of the batch.
"""

from __future__ import annotations

import json
import time

from cereal import instrumentation, tracing
from cereal.codec import describe_error, storable_text, try_encode
from cereal.driver import EventRow, InstanceRow, StepOutcome
from cereal.executors import WorkflowExecutor
from cereal.logging import Logger, get_logger
from cereal.types import (
    CancelEvent,
    SignalEvent,
    StartEvent,
    TaskCompleteEvent,
    TaskResult,
    TaskStatus,
    WorkflowStatus,
)
from cereal.workflow import Decision, DecisionKind, WorkflowInstance

__all__ = [
    "CANCELED_STARTING",
    "ENQUEUE_AND_COMPLETE",
    "EventRow",
    "InstanceRow",
    "StepOutcome",
    "handles_signals",
    "run_events",
]

ENQUEUE_AND_COMPLETE = "EnqueueTask and Complete called in same workflow step"
CANCELED_STARTING = "canceled starting workflow"


def _task_result(event: EventRow) -> TaskResult:
    if event.problem is not None:
        return TaskResult(
            task_name=event.task_name or "",
            parameters=event.task_parameters,
            status=TaskStatus.UNUSABLE_RESULT,
            error=event.problem,
            attempts=event.task_attempts,
        )
    try:
        status = TaskStatus(event.task_status or "")
    except ValueError:
        return TaskResult(
            task_name=event.task_name or "",
            parameters=event.task_parameters,
            status=TaskStatus.UNUSABLE_RESULT,
            error=f"unknown task status {event.task_status!r}",
            attempts=event.task_attempts,
        )
    return TaskResult(
        task_name=event.task_name or "",
        parameters=event.task_parameters,
        status=status,
        value=event.task_result if status is TaskStatus.SUCCESS else None,
        error=event.task_error,
        attempts=event.task_attempts,
    )


def _call(executor: WorkflowExecutor, handle: WorkflowInstance, event: EventRow) -> object:
    if event.kind == "start":
        return executor.on_start(handle, StartEvent(event.enqueued_at))
    if event.kind == "cancel":
        return executor.on_cancel(handle, CancelEvent(event.enqueued_at))
    if event.kind == "signal":
        on_signal = executor.on_signal  # type: ignore[attr-defined]
        return on_signal(
            handle, SignalEvent(event.signal_name or "", event.signal_payload, event.enqueued_at)
        )
    result = _task_result(event)
    return executor.on_task_complete(
        handle, TaskCompleteEvent(result.task_name, result, event.enqueued_at, event.task_route)
    )


_CALLBACK = {
    "start": "on_start",
    "cancel": "on_cancel",
    "task_complete": "on_task_complete",
    "signal": "on_signal",
}


def handles_signals(executor: object) -> bool:
    """True if ``executor`` defines ``on_signal`` (signals to others are discarded)."""
    return callable(getattr(executor, "on_signal", None))


def run_events(
    executor: WorkflowExecutor,
    instance: InstanceRow,
    events: list[EventRow],
    log: Logger | None = None,
) -> StepOutcome:
    """Deliver ``events`` in order and return the combined outcome.

    Stops at the first decision that finishes the instance; later events are left to be
    deleted with the instance. What goes wrong is logged through ``log``, bound to the
    instance's names (only then: most batches log nothing).
    """
    base = log or get_logger("cereal.workflow")

    def bound() -> Logger:
        return base.bind(workflow=instance.workflow_name, instance=instance.instance_name)

    out = StepOutcome(
        instance=instance,
        payload_json=None,
        status=instance.status,
        enqueued_tasks=instance.enqueued_tasks,
        completed_tasks=instance.completed_tasks,
    )
    if instance.problem is not None:
        bound().error("workflow instance cannot be decoded; failing it", error=instance.problem)
        _finish(out, WorkflowStatus.FAILED, error=instance.problem)
        return out
    payload = instance.payload
    payload_changed = False
    for event in events:
        if event.kind == "start" and out.status is not WorkflowStatus.STARTING:
            out.consumed.append(event.id)  # a duplicate start cannot be acted on twice
            continue
        if out.status is WorkflowStatus.STARTING and (
            event.kind == "cancel" or any(e.kind == "cancel" for e in events)
        ):
            _finish(out, WorkflowStatus.FAILED, error=CANCELED_STARTING)
            break
        if event.kind == "signal":
            if out.status is WorkflowStatus.STARTING:
                break  # never before on_start: the signal waits for a later batch
            if not handles_signals(executor):
                bound().warning(
                    "signal discarded: the workflow executor has no on_signal",
                    signal=event.signal_name,
                    event_id=event.id,
                )
                out.consumed.append(event.id)
                continue
        if event.kind == "task_complete":
            out.completed_tasks += 1
        handle = WorkflowInstance(
            instance.workflow_name,
            instance.instance_name,
            instance.parameters,
            payload,
            out.enqueued_tasks,
            out.completed_tasks,
        )
        callback = _CALLBACK.get(event.kind, event.kind)
        out.handled += 1
        out.handled_kinds.append(event.kind)
        try:
            decision, span = _call_observed(executor, handle, event, instance)
        except BaseException as exc:
            # User code: CancelledError, SystemExit, KeyboardInterrupt and the like fail the
            # instance like any exception; letting them out would kill the handler thread.
            bound().warning(
                "workflow callback raised",
                callback=callback,
                event_id=event.id,
                error=describe_error(exc),
            )
            _finish(out, WorkflowStatus.FAILED, error=describe_error(exc))
            break
        if not isinstance(decision, Decision):
            _finish(
                out,
                WorkflowStatus.FAILED,
                error=f"{callback} returned {type(decision).__name__} instead of a Decision",
            )
            break
        known = len(out.tasks)
        if _apply(out, handle, decision):
            break
        if len(out.tasks) > known:
            # The tasks continue the trace as children of the callback that enqueued them.
            del out.task_contexts[known:]
            out.task_contexts.extend([span.context] * (len(out.tasks) - known))
        out.consumed.append(event.id)
        payload = json.loads(out.payload_json) if out.payload_json is not None else None
        payload_changed = True
    if not payload_changed and not out.finished:
        out.payload_json, _ = try_encode(instance.payload, "payload")
    if out.finished and out.tasks:
        out.tasks.clear()
        out.task_contexts.clear()
    return out


def _call_observed(
    executor: WorkflowExecutor, handle: WorkflowInstance, event: EventRow, instance: InstanceRow
) -> tuple[object, tracing.Span]:
    """:func:`_call` inside the callback's span, reporting the decision (``fail`` when the
    callback raised or returned no Decision) to the span and to the instrumentation
    observers. Returns the decision and the (ended) span, whose context the tasks keep."""
    span = tracing.callback_span(
        instance.workflow_name, instance.instance_name, event.kind, instance.trace_context
    )
    with span:
        began = time.perf_counter()
        try:
            decision = _call(executor, handle, event)
        except BaseException as exc:
            _observed(span, event.kind, instance, "fail", began, describe_error(exc))
            raise
        if isinstance(decision, Decision):
            _observed(span, event.kind, instance, decision.kind.value, began, decision.error)
        else:
            _observed(span, event.kind, instance, "fail", began, "no Decision returned")
    return decision, span


def _observed(
    span: tracing.Span,
    kind: str,
    instance: InstanceRow,
    decision: str,
    began: float,
    error: str | None,
) -> None:
    instrumentation.callback_finished(
        instance.workflow_name, kind, decision, time.perf_counter() - began
    )
    span.finish(decision, error)


def _apply(out: StepOutcome, handle: WorkflowInstance, decision: Decision) -> bool:
    """Fold one decision into ``out``; return True if it finished the instance."""
    if decision.kind is DecisionKind.CONTINUE:
        text, err = try_encode(decision.value, "payload")
        if err is not None:
            _finish(out, WorkflowStatus.FAILED, error=err)
            return True
        pending = handle.pending_tasks
        out.tasks.extend(pending)
        out.enqueued_tasks += len(pending)
        out.payload_json = text
        out.status = WorkflowStatus.RUNNING
        return False
    if decision.kind is DecisionKind.COMPLETE:
        if handle.pending_tasks:
            _finish(out, WorkflowStatus.FAILED, error=ENQUEUE_AND_COMPLETE)
            return True
        text, err = try_encode(decision.value, "result")
        if err is not None:
            _finish(out, WorkflowStatus.FAILED, error=err)
        else:
            _finish(out, WorkflowStatus.COMPLETED, result_json=text)
        return True
    _finish(out, WorkflowStatus.FAILED, error=decision.error or "failed")
    return True


def _finish(
    out: StepOutcome,
    status: WorkflowStatus,
    *,
    result_json: str | None = None,
    error: str | None = None,
) -> None:
    out.status = status
    out.result_json = result_json
    out.error = None if error is None else storable_text(error)
