"""What chains and parallels share: sub-workflow states, running a sub-workflow's callback,
and routing task results back to the sub-workflow that enqueued the task.

A pattern runs several *sub-workflows* inside one workflow instance. Each sub-workflow's
state is a JSON object ``{"payload", "result", "error", "enqueued_tasks",
"completed_tasks", "finished"}`` kept in the pattern's payload (and, once the pattern
finished, in its result).

Routing: task parameters are never touched, and the payload keeps the shape of the result.
Every task a sub-workflow enqueues carries a route (:attr:`cereal.workflow.PendingTask.route`):
``[sub_workflow, inner]``, where ``inner`` is the route the sub-workflow itself gave the task
(a pattern nested in a pattern), and the engine hands it back with the task's result. Results
may come back in any order and several sub-workflows may use the same task name.

Instances started by earlier versions kept a routing table in the running payload under
``"routes"`` (``[sub_workflow, task_name, digest]`` per task still out, ``digest``
identifying the task's parameters): a result without a route is matched to the oldest record
with the same task name and parameters, and the table is written back until it is empty.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cereal.codec import describe_error, try_encode
from cereal.errors import InvalidExecutorError
from cereal.logging import get_logger
from cereal.types import TaskCompleteEvent, WorkflowInstanceInfo, WorkflowStatus
from cereal.workflow import Decision, DecisionKind, WorkflowInstance

__all__ = [
    "ROUTES",
    "SubCall",
    "SubWorkflowState",
    "check_executor",
    "finished_state",
    "new_state",
    "parameters_digest",
    "pattern_value",
    "read_routes",
    "read_state",
    "route_of_result",
    "run_sub_workflow",
    "take_route",
]

log = get_logger("cereal.patterns")

ROUTES = "routes"
"""Key of the routing table in the running payload of an instance started by an earlier
version."""

StateDict = dict[str, Any]
Key = int | str
SubCall = Callable[[WorkflowInstance], object]


@dataclass(frozen=True, slots=True)
class SubWorkflowState:
    """One sub-workflow of a chain or parallel instance, as a reader sees it."""

    parameters: Any
    """The parameters the sub-workflow was given."""
    payload: Any
    """Its payload from its last ``continue_with`` (None once it finished)."""
    result: Any
    """Its ``complete`` result (None unless it completed)."""
    error: str | None
    """Why it failed (None unless it failed)."""
    enqueued_tasks: int
    completed_tasks: int
    finished: bool

    @property
    def completed(self) -> bool:
        """True if the sub-workflow finished successfully."""
        return self.finished and self.error is None

    @property
    def failed(self) -> bool:
        """True if the sub-workflow finished with an error."""
        return self.finished and self.error is not None

    @classmethod
    def from_value(cls, value: Any, parameters: Any = None) -> SubWorkflowState:
        """Read a stored state object (missing fields take their defaults)."""
        state = read_state(value)
        return cls(
            parameters=parameters,
            payload=state["payload"],
            result=state["result"],
            error=state["error"],
            enqueued_tasks=state["enqueued_tasks"],
            completed_tasks=state["completed_tasks"],
            finished=state["finished"],
        )


def pattern_value(info: WorkflowInstanceInfo) -> Any:
    """The stored value holding a pattern's states: the payload while the instance is live,
    the result once it completed, None when it failed (or has not started)."""
    if info.is_running:
        return info.payload
    return info.result if info.status is WorkflowStatus.COMPLETED else None


def check_executor(executor: object, where: str) -> None:
    """Raise :class:`InvalidExecutorError` unless ``executor`` is a workflow executor."""
    missing = [
        m
        for m in ("on_start", "on_task_complete", "on_cancel")
        if not callable(getattr(executor, m, None))
    ]
    if missing:
        raise InvalidExecutorError(f"{where} lacks {', '.join(missing)}: {executor!r}")


def new_state() -> StateDict:
    """The state of a sub-workflow that has not run a callback yet."""
    return {
        "payload": None,
        "result": None,
        "error": None,
        "enqueued_tasks": 0,
        "completed_tasks": 0,
        "finished": False,
    }


def read_state(value: Any) -> StateDict:
    """A full state dict from a stored one; raises ``ValueError`` if it is not an object."""
    if not isinstance(value, dict):
        raise ValueError(f"a sub-workflow state must be an object, got {value!r}")
    state = new_state()
    for key in state:
        if key in value:
            state[key] = value[key]
    for counter in ("enqueued_tasks", "completed_tasks"):
        if isinstance(state[counter], bool) or not isinstance(state[counter], int):
            raise ValueError(f"sub-workflow {counter} must be an int, got {state[counter]!r}")
    state["finished"] = bool(state["finished"])
    return state


def finished_state(
    previous: StateDict, *, result: Any = None, error: str | None = None
) -> StateDict:
    """``previous`` finished with ``result`` (success) or ``error``; counters kept."""
    return {
        "payload": None,
        "result": result if error is None else None,
        "error": error,
        "enqueued_tasks": previous["enqueued_tasks"],
        "completed_tasks": previous["completed_tasks"],
        "finished": True,
    }


def parameters_digest(parameters: Any) -> str:
    """A short, order-insensitive fingerprint of JSON parameters."""
    text = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()[:16]


def run_sub_workflow(
    real: WorkflowInstance,
    key: Key,
    label: str,
    parameters: Any,
    previous: StateDict,
    callback: str,
    call: SubCall,
) -> tuple[StateDict, DecisionKind]:
    """Run one callback of a sub-workflow and fold its decision into a new state.

    ``call`` receives the sub-workflow's own instance (its parameters, payload and counters).
    On ``continue_with`` its buffered tasks are enqueued on the real instance, routed to
    ``key``; on ``complete`` they are dropped (a sub-workflow may enqueue and complete in one
    step). A callback that raises, returns something other than a :class:`Decision`, or
    gives a value that is not JSON fails the sub-workflow (not the pattern), with an error
    naming it (``label``). Returns the new state and what the sub-workflow decided.
    """
    sub = WorkflowInstance(
        real.workflow_name,
        real.instance_name,
        parameters,
        previous["payload"],
        previous["enqueued_tasks"],
        previous["completed_tasks"],
    )
    try:
        decision = call(sub)
    except Exception as exc:
        log.warning(
            "sub-workflow callback raised",
            workflow=real.workflow_name,
            instance=real.instance_name,
            sub_workflow=label,
            callback=callback,
            error=describe_error(exc),
        )
        error = f"{callback} of {label} raised {describe_error(exc)}"
        return finished_state(previous, error=error), DecisionKind.FAIL
    if not isinstance(decision, Decision):
        error = f"{callback} of {label} returned {type(decision).__name__} instead of a Decision"
        return finished_state(previous, error=error), DecisionKind.FAIL
    if decision.kind is DecisionKind.FAIL:
        return finished_state(previous, error=decision.error or "failed"), DecisionKind.FAIL
    if decision.kind is DecisionKind.COMPLETE:
        _, err = try_encode(decision.value, f"result of {label}")
        if err is not None:
            return finished_state(previous, error=err), DecisionKind.FAIL
        return finished_state(previous, result=decision.value), DecisionKind.COMPLETE
    _, err = try_encode(decision.value, f"payload of {label}")
    if err is not None:
        return finished_state(previous, error=err), DecisionKind.FAIL
    pending = sub.pending_tasks
    for task in pending:
        real._add_task(replace(task, route=_route(key, task.route)))
    state = new_state()
    state["payload"] = decision.value
    state["enqueued_tasks"] = previous["enqueued_tasks"] + len(pending)
    state["completed_tasks"] = previous["completed_tasks"]
    return state, DecisionKind.CONTINUE


def _route(key: Key, inner: str | None) -> str:
    return json.dumps([key, inner], separators=(",", ":"), ensure_ascii=False)


def route_of_result(
    event: TaskCompleteEvent, routes: list[list[Any]]
) -> tuple[Key | None, TaskCompleteEvent]:
    """The sub-workflow a task result goes to, and the event to give it (with the
    sub-workflow's own route): from the route the task carries, else from an earlier
    version's ``routes`` table (the matched record is removed). None when neither says."""
    tag = event.route
    if tag is not None:
        try:
            decoded = json.loads(tag)
        except ValueError:
            decoded = None
        if (
            isinstance(decoded, list)
            and len(decoded) == 2
            and isinstance(decoded[0], int | str)
            and not isinstance(decoded[0], bool)
            and (decoded[1] is None or isinstance(decoded[1], str))
        ):
            return decoded[0], replace(event, route=decoded[1])
    return take_route(routes, event.task_name, event.result.parameters), event


def read_routes(payload: dict[str, Any]) -> list[list[Any]]:
    """The routing table of a pattern's payload (empty when absent or malformed)."""
    table = payload.get(ROUTES)
    if not isinstance(table, list):
        return []
    return [list(r) for r in table if isinstance(r, list) and len(r) == 3]


def take_route(routes: list[list[Any]], task_name: str, parameters: Any) -> Key | None:
    """Remove and return the sub-workflow of the oldest record for this task (same name and
    parameters; failing that, same name), or None when no record matches."""
    digest = parameters_digest(parameters)
    for match_parameters in (True, False):
        for i, (key, name, recorded) in enumerate(routes):
            if name == task_name and (recorded == digest or not match_parameters):
                del routes[i]
                return key  # type: ignore[no-any-return]
    return None
