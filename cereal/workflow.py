"""What a workflow callback sees (:class:`WorkflowInstance`) and returns (:class:`Decision`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cereal.codec import check_name, encode
from cereal.errors import InvalidDecisionError

__all__ = ["Decision", "DecisionKind", "PendingTask", "WorkflowInstance"]


class DecisionKind(enum.Enum):
    CONTINUE = "continue"
    COMPLETE = "complete"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class PendingTask:
    """A task buffered by ``enqueue_task``; written only if the callback continues."""

    name: str
    parameters_json: str | None
    start_at: datetime | None = None
    """Absolute earliest start (UTC), or None."""
    delay: float = 0.0
    """Seconds after the database's ``now()`` when ``start_at`` is None."""
    route: str | None = None
    """An opaque tag stored with the task and handed back with its result (the chain and
    parallel patterns route results to their sub-workflows with it); None for plain tasks."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one workflow callback. Build it with the instance's
    ``continue_with``, ``complete`` or ``fail`` methods, never directly."""

    kind: DecisionKind
    value: Any = None
    """The payload (continue) or result (complete)."""
    error: str | None = None
    """The failure text (fail)."""

    @property
    def is_continuing(self) -> bool:
        return self.kind is DecisionKind.CONTINUE

    @property
    def is_complete(self) -> bool:
        return self.kind is DecisionKind.COMPLETE

    @property
    def is_failed(self) -> bool:
        return self.kind is DecisionKind.FAIL


class WorkflowInstance:
    """The instance a workflow callback is acting on.

    ``parameters`` are those given to ``enqueue_workflow``; ``payload`` is the value of the
    last ``continue_with`` (None at first). Tasks enqueued with :meth:`enqueue_task` are
    written only if the callback returns :meth:`continue_with`.
    """

    __slots__ = (
        "_completed",
        "_enqueued",
        "_tasks",
        "instance_name",
        "parameters",
        "payload",
        "workflow_name",
    )

    def __init__(
        self,
        workflow_name: str,
        instance_name: str,
        parameters: Any,
        payload: Any,
        enqueued_tasks: int,
        completed_tasks: int,
    ) -> None:
        self.workflow_name = workflow_name
        self.instance_name = instance_name
        self.parameters = parameters
        self.payload = payload
        self._enqueued = enqueued_tasks
        self._completed = completed_tasks
        self._tasks: list[PendingTask] = []

    @property
    def total_enqueued_tasks(self) -> int:
        """Tasks enqueued by committed steps, plus those enqueued so far in this callback."""
        return self._enqueued + len(self._tasks)

    @property
    def total_completed_tasks(self) -> int:
        """Tasks that have ended (lost ones included), counting the one being reported."""
        return self._completed

    @property
    def pending_tasks(self) -> list[PendingTask]:
        """The tasks buffered by this callback so far."""
        return list(self._tasks)

    def enqueue_task(
        self,
        task_name: str,
        parameters: Any = None,
        *,
        start_after: datetime | timedelta | None = None,
    ) -> None:
        """Buffer a task; it is written when the callback returns ``continue_with``.

        ``start_after`` delays the task: an absolute time (a naive datetime is taken as UTC)
        or a delay measured on the database's clock. Raises ``SerializationError`` at once
        if ``parameters`` is not JSON-serialisable.
        """
        check_name("task_name", task_name)
        params = encode(parameters, f"parameters of task {task_name!r}")
        start_at: datetime | None = None
        delay = 0.0
        if isinstance(start_after, timedelta):
            delay = max(start_after.total_seconds(), 0.0)
        elif isinstance(start_after, datetime):
            start_at = (
                start_after.replace(tzinfo=UTC)
                if start_after.tzinfo is None
                else start_after.astimezone(UTC)
            )
        elif start_after is not None:
            raise InvalidDecisionError(
                f"start_after must be a datetime, a timedelta or None, "
                f"got {type(start_after).__name__}: {start_after!r}"
            )
        self._tasks.append(PendingTask(task_name, params, start_at, delay))

    def _add_task(self, task: PendingTask) -> None:
        """Buffer a task built by another instance's :meth:`enqueue_task` (a pattern's
        sub-workflow), as it is."""
        self._tasks.append(task)

    def continue_with(self, payload: Any = None) -> Decision:
        """Keep the instance running with a new payload, writing the buffered tasks."""
        return Decision(DecisionKind.CONTINUE, value=payload)

    def complete(self, result: Any = None) -> Decision:
        """Finish the instance successfully with ``result``."""
        return Decision(DecisionKind.COMPLETE, value=result)

    def fail(self, error: BaseException | str) -> Decision:
        """Finish the instance as failed; the stored error text is ``str(error)``."""
        if error is None:
            raise InvalidDecisionError("fail() needs an error: got None")
        if not isinstance(error, BaseException | str):
            raise InvalidDecisionError(
                f"fail() takes an exception or a str, got {type(error).__name__}: {error!r}"
            )
        text = str(error)
        if not text:
            raise InvalidDecisionError(f"fail() needs a non-empty error message, got {error!r}")
        return Decision(DecisionKind.FAIL, error=text)
