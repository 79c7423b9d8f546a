"""Public value types: statuses, events, task results, instance snapshots and tasks."""

from __future__ import annotations

import enum
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cereal.config import count
from cereal.recurrence import load_recurrence

__all__ = [
    "CancelEvent",
    "Schedule",
    "SignalEvent",
    "StartEvent",
    "Task",
    "TaskCompleteEvent",
    "TaskResult",
    "TaskStatus",
    "WorkflowInstanceInfo",
    "WorkflowStatus",
]


class WorkflowStatus(enum.StrEnum):
    """Where a workflow instance is in its life."""

    STARTING = "starting"
    """Enqueued; ``on_start`` has not committed yet."""
    RUNNING = "running"
    """At least one ``continue_with`` decision has committed."""
    COMPLETED = "completed"
    """Finished through ``complete``."""
    FAILED = "failed"
    """Finished through ``fail``, a failing callback, or ``kill_workflow``."""


class TaskStatus(enum.StrEnum):
    """How a task ended, as reported to its workflow."""

    SUCCESS = "success"
    FAILED = "failed"
    LOST = "lost"
    """The task's process stopped sending heartbeats before it reported a result."""
    UNUSABLE_RESULT = "unusable_result"
    """The stored result could not be decoded."""


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one task, delivered to ``on_task_complete``."""

    task_name: str
    parameters: Any
    status: TaskStatus
    value: Any = None
    """The task's return value (``SUCCESS`` only)."""
    error: str | None = None
    """``"<ExceptionType>: <message>"`` for ``FAILED``, a description for ``LOST``."""
    attempts: int = 1
    """Attempts made (more than 1 only for tasks registered with a retry policy); the
    result is the last attempt's."""

    @property
    def ok(self) -> bool:
        """True when the task succeeded."""
        return self.status is TaskStatus.SUCCESS


@dataclass(frozen=True, slots=True)
class StartEvent:
    """Delivered once to ``on_start`` when an instance begins."""

    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class CancelEvent:
    """Delivered to ``on_cancel`` after ``cancel_workflow``."""

    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """Delivered to ``on_signal`` after ``signal_workflow``, always after ``on_start``."""

    name: str
    payload: Any
    """The JSON value sent with the signal (None when none was sent)."""
    enqueued_at: datetime


@dataclass(frozen=True, slots=True)
class TaskCompleteEvent:
    """Delivered to ``on_task_complete`` when one of the instance's tasks ended."""

    task_name: str
    result: TaskResult
    enqueued_at: datetime
    route: str | None = field(default=None, compare=False)
    """The route the task was enqueued with: set by the chain and parallel patterns, which
    route each result to the sub-workflow that enqueued the task; None otherwise."""


@dataclass(frozen=True, slots=True)
class WorkflowInstanceInfo:
    """A read-only snapshot of a workflow instance: the live run, or a finished one."""

    workflow_name: str
    instance_name: str
    status: WorkflowStatus
    parameters: Any = None
    payload: Any = None
    """The payload of the last ``continue_with`` (live instances only)."""
    result: Any = None
    """The ``complete`` result (completed instances only)."""
    error: str | None = None
    """Why the instance failed (failed instances only)."""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    cursor: str | None = field(default=None, compare=False, repr=False)
    """Opaque position of this row in a paged listing: pass it as ``after`` to
    ``list_workflow_instances`` to get the next page (None outside paged listings)."""

    @property
    def is_running(self) -> bool:
        """True while the instance is live (starting or running)."""
        return self.status in (WorkflowStatus.STARTING, WorkflowStatus.RUNNING)


_LAZY_LOCK = threading.Lock()


class _LazyEvent(threading.Event):
    """A :class:`threading.Event` that builds its lock and condition the first time it is set,
    cleared or waited on. Most tasks are never cancelled nor waited on, and ``is_set()`` needs
    neither: a task costs one object less to hand out."""

    def __init__(self) -> None:  # no super().__init__(): that builds the condition
        self._flag = False
        self._lazy: threading.Condition | None = None

    @property
    def _cond(self) -> threading.Condition:
        cond = self._lazy
        if cond is None:
            with _LAZY_LOCK:
                cond = self._lazy
                if cond is None:
                    cond = self._lazy = threading.Condition(threading.Lock())
        return cond


@dataclass(eq=False, slots=True)
class Task:
    """One task handed to a task executor's ``run``.

    Long-running executors should check ``cancelled`` (a :class:`threading.Event`) now and
    then: it is set when the task's workflow finished, its timeout passed, or the manager is
    stopping. Whatever ``run`` returns after that is discarded.
    """

    name: str
    parameters: Any
    enqueued_at: datetime
    workflow_name: str
    instance_name: str
    deadline: datetime | None = None
    """When the task's timeout passes (UTC), or None without a timeout."""
    id: int = 0
    cancelled: threading.Event = field(default_factory=_LazyEvent)
    attempt: int = 1
    """Which attempt this run is (1 for the first; more only with a retry policy)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring schedule as stored.

    ``recurrence`` is RFC 5545 text that round-trips exactly (time zone included).
    ``next_due_at`` is None once the rule has run out. ``last_start``/``last_end`` come from
    the latest finished run of the schedule's instance. ``clock_offset`` is how far the
    driver's clock (the database's) was ahead of this process's when the schedule was read;
    it is left out of comparisons and of ``repr``.
    """

    workflow_name: str
    instance_name: str
    parameters: Any
    recurrence: str
    enabled: bool
    next_due_at: datetime | None
    last_enqueued_at: datetime | None
    last_start: datetime | None
    last_end: datetime | None
    clock_offset: timedelta = field(default=timedelta(0), compare=False, repr=False)

    def next_occurrences(self, n: int, after: datetime | None = None) -> list[datetime]:
        """The next ``n`` occurrences (UTC) at or after ``after`` (default: now by the
        driver's clock, the one the scheduler runs by)."""
        count("n", n, minimum=0, maximum=sys.maxsize)
        start = datetime.now(UTC) + self.clock_offset if after is None else after
        return load_recurrence(self.recurrence).occurrences_after(start, n)
