"""Chain: sub-workflows run one after another inside one workflow instance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cereal.errors import CerealError, WorkflowInstanceNotFoundError
from cereal.executors import WorkflowExecutor
from cereal.logging import get_logger
from cereal.patterns.state import (
    ROUTES,
    SubCall,
    SubWorkflowState,
    check_executor,
    new_state,
    pattern_value,
    read_routes,
    read_state,
    route_of_result,
    run_sub_workflow,
)
from cereal.steps import handles_signals
from cereal.types import (
    CancelEvent,
    SignalEvent,
    StartEvent,
    TaskCompleteEvent,
    WorkflowInstanceInfo,
    WorkflowStatus,
)
from cereal.workflow import Decision, DecisionKind, WorkflowInstance

__all__ = ["ChainState", "ChainWorkflowExecutor"]

log = get_logger("cereal.patterns")

States = list[dict[str, Any]]
Routes = list[list[Any]]


class ChainWorkflowExecutor:
    """Runs its sub-workflows in order under one workflow instance.

    The instance's parameters are a list with one entry per sub-workflow. Each sub-workflow
    sees its own parameters, payload and task counters, and gets the results of the tasks it
    enqueued (their parameters untouched). When one completes, the next starts; when one
    fails, the chain stops. Either way the chain itself **completes**, with the result
    ``{"cancelled": bool, "workflows": [state, ...]}`` (one state per sub-workflow started);
    its running payload has the same shape. A cancel goes to the current sub-workflow, and
    the chain stops once that one finishes. A signal goes to the current sub-workflow if its
    executor defines ``on_signal``.
    """

    def __init__(self, *executors: WorkflowExecutor) -> None:
        if not executors:
            raise CerealError("ChainWorkflowExecutor needs at least one workflow executor")
        for i, executor in enumerate(executors):
            check_executor(executor, f"chain sub-workflow {i}")
        self._executors = tuple(executors)

    def _label(self, idx: int) -> str:
        return f"chain sub-workflow {idx} ({type(self._executors[idx]).__name__})"

    # -- reading the instance -----------------------------------------------------------------

    def _parameters(self, instance: WorkflowInstance) -> list[Any] | str:
        params = instance.parameters
        count = len(self._executors)
        if not isinstance(params, list):
            return (
                f"chain parameters must be a list with one entry per sub-workflow "
                f"({count}), got {type(params).__name__}: {params!r}"
            )
        if len(params) != count:
            return (
                f"chain has {count} sub-workflow(s) but its parameters give {len(params)}: "
                f"pass a list of {count}"
            )
        return params

    def _payload(self, instance: WorkflowInstance) -> tuple[bool, States, Routes] | str:
        payload = instance.payload
        if payload is None:
            return False, [], []
        if not isinstance(payload, dict) or not isinstance(payload.get("workflows"), list):
            return f"chain payload is not a chain state: {payload!r}"
        try:
            states = [read_state(s) for s in payload["workflows"]]
        except ValueError as exc:
            return f"chain payload is not a chain state: {exc}"
        if len(states) > len(self._executors):
            return (
                f"chain payload holds {len(states)} sub-workflow states, "
                f"but the chain has {len(self._executors)}"
            )
        return bool(payload.get("cancelled", False)), states, read_routes(payload)

    def _read(
        self, instance: WorkflowInstance, what: str
    ) -> tuple[list[Any], bool, States, Routes] | str:
        params = self._parameters(instance)
        if isinstance(params, str):
            return params
        payload = self._payload(instance)
        if isinstance(payload, str):
            return payload
        cancelled, states, routes = payload
        if not states:
            return f"chain received {what} before any sub-workflow started"
        return params, cancelled, states, routes

    # -- decisions ------------------------------------------------------------------------------

    @staticmethod
    def _continue(
        instance: WorkflowInstance, cancelled: bool, states: States, routes: Routes
    ) -> Decision:
        payload: dict[str, Any] = {"cancelled": cancelled, "workflows": states}
        if routes:
            payload[ROUTES] = routes
        return instance.continue_with(payload)

    @staticmethod
    def _complete(instance: WorkflowInstance, cancelled: bool, states: States) -> Decision:
        return instance.complete({"cancelled": cancelled, "workflows": states})

    def _start_next(
        self,
        instance: WorkflowInstance,
        params: list[Any],
        cancelled: bool,
        states: States,
        routes: Routes,
        enqueued_at: datetime,
    ) -> Decision:
        """Start sub-workflows after the last finished one until one keeps running."""
        while not cancelled and len(states) < len(self._executors):
            idx = len(states)
            executor = self._executors[idx]
            event = StartEvent(enqueued_at)
            state, kind = run_sub_workflow(
                instance,
                idx,
                self._label(idx),
                params[idx],
                new_state(),
                "on_start",
                _starter(executor, event),
            )
            states.append(state)
            if kind is DecisionKind.FAIL:
                break
            if kind is DecisionKind.CONTINUE:
                return self._continue(instance, cancelled, states, routes)
        return self._complete(instance, cancelled, states)

    def _after(
        self,
        instance: WorkflowInstance,
        kind: DecisionKind,
        params: list[Any],
        cancelled: bool,
        states: States,
        routes: Routes,
        enqueued_at: datetime,
    ) -> Decision:
        if kind is DecisionKind.FAIL:
            return self._complete(instance, cancelled, states)
        if kind is DecisionKind.COMPLETE:
            return self._start_next(instance, params, cancelled, states, routes, enqueued_at)
        return self._continue(instance, cancelled, states, routes)

    # -- callbacks ------------------------------------------------------------------------------

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        params = self._parameters(instance)
        if isinstance(params, str):
            return instance.fail(params)
        return self._start_next(instance, params, False, [], [], event.enqueued_at)

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        read = self._read(instance, f"the result of task {event.task_name!r}")
        if isinstance(read, str):
            return instance.fail(read)
        params, cancelled, states, routes = read
        key, sub_event = route_of_result(event, routes)
        if key is None:
            # No route (a task enqueued outside the chain, or a test's hand-made event): the
            # current sub-workflow is the only one that can still be waiting for it.
            key = len(states) - 1
        if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(states):
            return instance.fail(
                f"task {event.task_name!r} is routed to chain sub-workflow {key!r}, "
                f"which has not started"
            )
        states[key]["completed_tasks"] += 1
        if states[key]["finished"]:
            return self._continue(instance, cancelled, states, routes)  # a late result
        executor = self._executors[key]
        states[key], kind = run_sub_workflow(
            instance,
            key,
            self._label(key),
            params[key],
            states[key],
            "on_task_complete",
            lambda sub: executor.on_task_complete(sub, sub_event),
        )
        return self._after(instance, kind, params, cancelled, states, routes, event.enqueued_at)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        read = self._read(instance, "a cancel")
        if isinstance(read, str):
            return instance.fail(read)
        params, _, states, routes = read
        idx = len(states) - 1
        if states[idx]["finished"]:
            return self._complete(instance, True, states)
        executor = self._executors[idx]
        states[idx], kind = run_sub_workflow(
            instance,
            idx,
            self._label(idx),
            params[idx],
            states[idx],
            "on_cancel",
            lambda sub: executor.on_cancel(sub, event),
        )
        if kind is DecisionKind.CONTINUE:
            return self._continue(instance, True, states, routes)
        return self._complete(instance, True, states)

    def on_signal(self, instance: WorkflowInstance, event: SignalEvent) -> Decision:
        read = self._read(instance, f"signal {event.name!r}")
        if isinstance(read, str):
            return instance.fail(read)
        params, cancelled, states, routes = read
        idx = len(states) - 1
        executor = self._executors[idx]
        if states[idx]["finished"] or not handles_signals(executor):
            log.warning(
                "signal discarded: the current chain sub-workflow has no on_signal",
                workflow=instance.workflow_name,
                instance=instance.instance_name,
                signal=event.name,
                sub_workflow=self._label(idx),
            )
            return instance.continue_with(instance.payload)
        states[idx], kind = run_sub_workflow(
            instance,
            idx,
            self._label(idx),
            params[idx],
            states[idx],
            "on_signal",
            lambda sub: executor.on_signal(sub, event),  # type: ignore[attr-defined]
        )
        return self._after(instance, kind, params, cancelled, states, routes, event.enqueued_at)


def _starter(executor: WorkflowExecutor, event: StartEvent) -> SubCall:
    return lambda sub: executor.on_start(sub, event)


@dataclass(frozen=True, slots=True)
class ChainState:
    """The sub-workflow states of a chain instance, live or finished.

    ``workflows`` has one entry per sub-workflow started so far. ``error`` is set when the
    chain instance itself failed (bad parameters, killed...): it then has no states.
    """

    is_running: bool
    cancelled: bool
    workflows: list[SubWorkflowState]
    error: str | None = None

    @classmethod
    def from_value(cls, value: Any, parameters: Any = None, *, is_running: bool) -> ChainState:
        """Read a chain payload or result (``parameters``: the chain's, to attach each
        sub-workflow's own). Raises ``CerealError`` if ``value`` is not a chain state."""
        if value is None:
            return cls(is_running=is_running, cancelled=False, workflows=[])
        if not isinstance(value, dict) or not isinstance(value.get("workflows"), list):
            raise CerealError(f"not a chain payload or result: {value!r}")
        params = parameters if isinstance(parameters, list) else []
        try:
            states = [
                SubWorkflowState.from_value(s, params[i] if i < len(params) else None)
                for i, s in enumerate(value["workflows"])
            ]
        except ValueError as exc:
            raise CerealError(f"not a chain payload or result: {exc}") from exc
        return cls(is_running=is_running, cancelled=bool(value.get("cancelled")), workflows=states)

    @classmethod
    def from_info(cls, info: WorkflowInstanceInfo) -> ChainState:
        """The chain state of an instance from ``get_workflow_instance``."""
        if info.status is WorkflowStatus.FAILED:
            return cls(is_running=False, cancelled=False, workflows=[], error=info.error)
        return cls.from_value(pattern_value(info), info.parameters, is_running=info.is_running)

    def sub_workflow(self, idx: int) -> SubWorkflowState:
        """The state of sub-workflow ``idx``; ``WorkflowInstanceNotFoundError`` if it has
        not started."""
        if not 0 <= idx < len(self.workflows):
            raise WorkflowInstanceNotFoundError(
                f"chain sub-workflow {idx} has not started ({len(self.workflows)} started)"
            )
        return self.workflows[idx]
