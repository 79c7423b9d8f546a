"""Parallel: named sub-workflows run side by side inside one workflow instance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
from cereal.workflow import Decision, WorkflowInstance

__all__ = ["ParallelState", "ParallelWorkflowExecutor"]

log = get_logger("cereal.patterns")

States = dict[str, dict[str, Any]]
Routes = list[list[Any]]


class ParallelWorkflowExecutor:
    """Runs named sub-workflows side by side under one workflow instance.

    The instance's parameters are ``{key: parameters}``: every key's sub-workflow starts in
    ``on_start`` (in sorted key order) with its own parameters; a key with no executor fails
    the instance. Each sub-workflow gets the results of the tasks it enqueued (their
    parameters untouched). The instance completes once every sub-workflow has finished,
    completed or failed, with ``{"workflows": {key: state}}``; its running payload has the
    same shape. A cancel goes to every unfinished sub-workflow, a signal to every unfinished
    one whose executor defines ``on_signal``.
    """

    def __init__(self, executors: Mapping[str, WorkflowExecutor]) -> None:
        if not isinstance(executors, Mapping):
            raise CerealError(
                f"ParallelWorkflowExecutor takes a mapping of keys to workflow executors, "
                f"got {type(executors).__name__}: {executors!r}"
            )
        for key, executor in executors.items():
            if not isinstance(key, str):
                raise CerealError(f"parallel sub-workflow keys must be str, got {key!r}")
            check_executor(executor, f"parallel sub-workflow {key!r}")
        self._executors = dict(executors)

    def _label(self, key: str) -> str:
        return f"parallel sub-workflow {key!r} ({type(self._executors[key]).__name__})"

    def _unknown(self, key: str) -> str:
        known = ", ".join(repr(k) for k in sorted(self._executors)) or "none"
        return f"parallel workflow has no executor for sub-workflow {key!r} (known: {known})"

    # -- reading the instance -----------------------------------------------------------------

    def _parameters(self, instance: WorkflowInstance) -> dict[str, Any] | str:
        params = instance.parameters
        if not isinstance(params, dict):
            return (
                f"parallel parameters must be an object mapping sub-workflow keys to their "
                f"parameters, got {type(params).__name__}: {params!r}"
            )
        for key in sorted(params):
            if key not in self._executors:
                return self._unknown(key)
        return params

    def _read(self, instance: WorkflowInstance, what: str) -> tuple[States, Routes] | str:
        payload = instance.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("workflows"), dict):
            return f"parallel workflow received {what} but its payload is not a parallel state"
        states: States = {}
        for key, value in payload["workflows"].items():
            try:
                states[key] = read_state(value)
            except ValueError as exc:
                return f"parallel payload is not a parallel state: {exc}"
        return states, read_routes(payload)

    @staticmethod
    def _sub_parameters(instance: WorkflowInstance, key: str) -> Any:
        params = instance.parameters
        return params.get(key) if isinstance(params, dict) else None

    # -- decisions ------------------------------------------------------------------------------

    @staticmethod
    def _decide(instance: WorkflowInstance, states: States, routes: Routes) -> Decision:
        ordered = {k: states[k] for k in sorted(states)}
        if all(s["finished"] for s in ordered.values()):
            return instance.complete({"workflows": ordered})
        payload: dict[str, Any] = {"workflows": ordered}
        if routes:
            payload[ROUTES] = routes
        return instance.continue_with(payload)

    def _run(
        self,
        instance: WorkflowInstance,
        key: str,
        parameters: Any,
        previous: dict[str, Any],
        callback: str,
        call: SubCall,
    ) -> dict[str, Any]:
        state, _ = run_sub_workflow(
            instance, key, self._label(key), parameters, previous, callback, call
        )
        return state

    # -- callbacks ------------------------------------------------------------------------------

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        params = self._parameters(instance)
        if isinstance(params, str):
            return instance.fail(params)
        states: States = {}
        routes: Routes = []
        for key in sorted(params):
            executor = self._executors[key]
            states[key] = self._run(
                instance,
                key,
                params[key],
                new_state(),
                "on_start",
                _call(executor, "on_start", event),
            )
        return self._decide(instance, states, routes)

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        read = self._read(instance, f"the result of task {event.task_name!r}")
        if isinstance(read, str):
            return instance.fail(read)
        states, routes = read
        key, sub_event = route_of_result(event, routes)
        if key is None:
            # No route (a task enqueued outside the pattern, or a test's hand-made event):
            # deliver it only if a single sub-workflow can be waiting for a task.
            running = [k for k, s in states.items() if not s["finished"]]
            waiting = [
                k for k in running if states[k]["enqueued_tasks"] > states[k]["completed_tasks"]
            ]
            if len(waiting) != 1:
                waiting = running
            if len(waiting) != 1:
                return instance.fail(
                    f"cannot tell which parallel sub-workflow enqueued task "
                    f"{event.task_name!r}: no routing record matches it"
                )
            key = waiting[0]
        if not isinstance(key, str) or key not in states:
            return instance.fail(
                f"task {event.task_name!r} is routed to parallel sub-workflow {key!r}, "
                f"which is not running in this instance"
            )
        states[key]["completed_tasks"] += 1
        if not states[key]["finished"]:
            if key not in self._executors:
                return instance.fail(self._unknown(key))
            states[key] = self._run(
                instance,
                key,
                self._sub_parameters(instance, key),
                states[key],
                "on_task_complete",
                _call(self._executors[key], "on_task_complete", sub_event),
            )
        return self._decide(instance, states, routes)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return self._broadcast(instance, "on_cancel", event, "a cancel")

    def on_signal(self, instance: WorkflowInstance, event: SignalEvent) -> Decision:
        return self._broadcast(instance, "on_signal", event, f"signal {event.name!r}")

    def _broadcast(
        self, instance: WorkflowInstance, callback: str, event: object, what: str
    ) -> Decision:
        read = self._read(instance, what)
        if isinstance(read, str):
            return instance.fail(read)
        states, routes = read
        targets = sorted(k for k, s in states.items() if not s["finished"])
        for key in targets:
            if key not in self._executors:
                return instance.fail(self._unknown(key))
        for key in targets:
            executor = self._executors[key]
            if callback == "on_signal" and not handles_signals(executor):
                log.warning(
                    "signal discarded by a parallel sub-workflow without on_signal",
                    workflow=instance.workflow_name,
                    instance=instance.instance_name,
                    signal=getattr(event, "name", None),
                    sub_workflow=self._label(key),
                )
                continue
            states[key] = self._run(
                instance,
                key,
                self._sub_parameters(instance, key),
                states[key],
                callback,
                _call(executor, callback, event),
            )
        return self._decide(instance, states, routes)


def _call(executor: WorkflowExecutor, callback: str, event: object) -> SubCall:
    method = getattr(executor, callback)
    return lambda sub: method(sub, event)


@dataclass(frozen=True, slots=True)
class ParallelState:
    """The sub-workflow states of a parallel instance, live or finished.

    ``error`` is set when the parallel instance itself failed (an unknown key, killed...):
    it then has no states.
    """

    is_running: bool
    workflows: dict[str, SubWorkflowState]
    error: str | None = None

    @classmethod
    def from_value(cls, value: Any, parameters: Any = None, *, is_running: bool) -> ParallelState:
        """Read a parallel payload or result (``parameters``: the instance's, to attach each
        sub-workflow's own). Raises ``CerealError`` if ``value`` is not a parallel state."""
        if value is None:
            return cls(is_running=is_running, workflows={})
        if not isinstance(value, dict) or not isinstance(value.get("workflows"), dict):
            raise CerealError(f"not a parallel payload or result: {value!r}")
        params = parameters if isinstance(parameters, dict) else {}
        try:
            states = {
                k: SubWorkflowState.from_value(s, params.get(k))
                for k, s in sorted(value["workflows"].items())
            }
        except ValueError as exc:
            raise CerealError(f"not a parallel payload or result: {exc}") from exc
        return cls(is_running=is_running, workflows=states)

    @classmethod
    def from_info(cls, info: WorkflowInstanceInfo) -> ParallelState:
        """The parallel state of an instance from ``get_workflow_instance``."""
        if info.status is WorkflowStatus.FAILED:
            return cls(is_running=False, workflows={}, error=info.error)
        return cls.from_value(pattern_value(info), info.parameters, is_running=info.is_running)

    def sub_workflow(self, key: str) -> SubWorkflowState:
        """The state of sub-workflow ``key``; ``WorkflowInstanceNotFoundError`` if it has
        not started."""
        if key not in self.workflows:
            raise WorkflowInstanceNotFoundError(
                f"parallel sub-workflow {key!r} has not started "
                f"(started: {', '.join(map(repr, self.workflows)) or 'none'})"
            )
        return self.workflows[key]
