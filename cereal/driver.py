"""The interface between the manager and a storage backend.

The manager never writes SQL: everything it asks of the database goes through a
:class:`Driver`. :class:`cereal.backends.postgres.PostgresDriver` is the implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cereal.steps import EventRow, InstanceRow, StepOutcome
from cereal.types import WorkflowInstanceInfo

__all__ = [
    "ClaimedTask",
    "Driver",
    "EventBatch",
    "Listener",
    "TaskOutcome",
]


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task row claimed by this process (now ``running``)."""

    id: int
    instance_id: int
    task_name: str
    parameters: Any
    enqueued_at: datetime
    workflow_name: str
    instance_name: str
    problem: str | None = None
    """Why the task cannot run (its stored parameters cannot be decoded), or None."""


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """The result of one task, to be recorded as a ``task_complete`` event."""

    id: int
    workflow_name: str
    status: str
    error: str | None = None
    result_json: str | None = None


class EventBatch(Protocol):
    """Instances locked for event processing, with their next events.

    The locks are held until :meth:`commit` (or until the batch's context exits, which
    rolls back and so re-delivers every event).
    """

    instances: list[InstanceRow]
    events: dict[int, list[EventRow]]

    def commit(self, outcomes: Sequence[StepOutcome]) -> list[WorkflowInstanceInfo]:
        """Write every outcome and commit; return the runs that finished."""
        ...


class Listener(Protocol):
    """A background LISTEN connection that survives reconnects."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Driver(Protocol):
    """What the manager needs from storage."""

    @property
    def schema(self) -> str: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def enqueue_workflow(
        self, workflow_name: str, instance_name: str, parameters_json: str | None
    ) -> bool: ...

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool: ...

    def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool: ...

    def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None: ...

    def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
    ) -> list[WorkflowInstanceInfo]: ...

    def has_events(self, workflow_names: Sequence[str]) -> bool: ...

    def claim_events(
        self, workflow_names: Sequence[str], limit: int, per_instance: int
    ) -> AbstractContextManager[EventBatch]: ...

    def claim_tasks(
        self, limits: dict[str, int], owner: str
    ) -> tuple[list[ClaimedTask], float | None]: ...

    def complete_tasks(self, outcomes: Sequence[TaskOutcome], owner: str) -> set[int]: ...

    def heartbeat_tasks(self, task_ids: Sequence[int], owner: str) -> set[int]: ...

    def release_tasks(self, task_ids: Sequence[int], owner: str) -> None: ...

    def reap_lost_tasks(self, timeout: float, error: str) -> int: ...

    def listener(
        self, on_notify: Callable[[str], None], on_reconnect: Callable[[], None]
    ) -> Listener: ...
