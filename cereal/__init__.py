"""cereal: durable, PostgreSQL-backed decision-callback workflows with recurring schedules."""

from cereal.executors import TaskExecutor, WorkflowExecutor
from cereal.manager import Manager
from cereal.retries import RetryPolicy
from cereal.types import (
    CancelEvent,
    Schedule,
    SignalEvent,
    StartEvent,
    Task,
    TaskCompleteEvent,
    TaskResult,
    TaskStatus,
    WorkflowInstanceInfo,
    WorkflowStatus,
)
from cereal.workflow import Decision, WorkflowInstance

__all__ = [
    "CancelEvent",
    "Decision",
    "Manager",
    "RetryPolicy",
    "Schedule",
    "SignalEvent",
    "StartEvent",
    "Task",
    "TaskCompleteEvent",
    "TaskExecutor",
    "TaskResult",
    "TaskStatus",
    "WorkflowExecutor",
    "WorkflowInstance",
    "WorkflowInstanceInfo",
    "WorkflowStatus",
]
__version__ = "0.2.0"
