"""What the task pools know about a registered task name and about each claimed task."""

from __future__ import annotations

import enum
import inspect
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cereal.driver import ClaimedTask
from cereal.executors import TaskFunction
from cereal.retries import RetryPolicy
from cereal.types import Task

__all__ = ["Claim", "TaskRegistration", "TaskState"]


@dataclass(frozen=True, slots=True)
class TaskRegistration:
    """A task executor registered under ``name``."""

    name: str
    fn: TaskFunction
    workers: int
    timeout: float | None
    retry: RetryPolicy | None = None
    is_async: bool = field(init=False)
    """``fn`` is an ``async def`` function (or an object whose ``__call__`` is one)."""

    def __post_init__(self) -> None:
        is_async = inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(
            getattr(self.fn, "__call__", None)  # noqa: B004
        )
        object.__setattr__(self, "is_async", is_async)


class TaskState(enum.Enum):
    """The life of a claimed task in this process; it only ever moves forward."""

    CLAIMED = "claimed"
    """Claimed, waiting for a worker (a prefetched sync task); can still be handed back."""
    RUNNING = "running"
    """Its executor was called."""
    RESOLVED = "resolved"
    """Its outcome is decided (returned, raised, timed out) and waits to be written."""
    REPORTED = "reported"
    """Its outcome is written, or discarded because its row is gone: nothing left to do."""

    @property
    def active(self) -> bool:
        """Claimed or running: the outcome is still open."""
        return self is TaskState.CLAIMED or self is TaskState.RUNNING


@dataclass(eq=False)
class Claim:
    """A task claimed by this process, from claim to report. Guarded by the pools' lock."""

    task: Task
    claimed: ClaimedTask
    state: TaskState = TaskState.CLAIMED
    future: Future[Any] | None = None
    """The coroutine's future, for async executors (cancelled on timeout or stop)."""
    began: float | None = None
    """``time.perf_counter()`` when its executor was called (None before)."""
