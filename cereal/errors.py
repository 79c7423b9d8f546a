"""Every exception cereal raises on bad input or misuse.

All of them derive from :class:`CerealError`, so ``except CerealError`` catches anything the
library raises deliberately. Messages name the offending value.
"""

from __future__ import annotations

__all__ = [
    "CerealError",
    "DatabaseError",
    "InvalidDecisionError",
    "InvalidExecutorError",
    "InvalidNameError",
    "InvalidScheduleError",
    "ManagerStateError",
    "MigrationError",
    "SerializationError",
    "TransientDatabaseError",
    "WorkflowInstanceExistsError",
    "WorkflowInstanceNotFoundError",
    "WorkflowScheduleExistsError",
    "WorkflowScheduleNotFoundError",
]


class CerealError(Exception):
    """Base class of every error cereal raises."""


class InvalidNameError(CerealError, ValueError):
    """A workflow, instance, task or schema name is empty, too long, or not a string."""


class SerializationError(CerealError, TypeError):
    """A value cannot be stored as JSON (not JSON-serialisable, NaN, a NUL character...)."""


class ManagerStateError(CerealError, RuntimeError):
    """The manager is in the wrong state for the call (e.g. registering after ``start()``)."""


class InvalidExecutorError(CerealError, TypeError):
    """A registered executor does not have the methods cereal calls."""


class InvalidDecisionError(CerealError, ValueError):
    """A workflow callback built a decision that cannot be applied (e.g. ``fail(None)``)."""


class WorkflowInstanceExistsError(CerealError):
    """A live instance with this ``(workflow_name, instance_name)`` already exists."""


class WorkflowInstanceNotFoundError(CerealError, LookupError):
    """No instance with this ``(workflow_name, instance_name)`` exists (live, or finished)."""


class WorkflowScheduleExistsError(CerealError):
    """A schedule for this ``(workflow_name, instance_name)`` already exists."""


class WorkflowScheduleNotFoundError(CerealError, LookupError):
    """No schedule exists for this ``(workflow_name, instance_name)``."""


class InvalidScheduleError(CerealError, ValueError):
    """A recurrence rule does not parse, or has no occurrence at or after now."""


class MigrationError(CerealError):
    """The database schema could not be created or upgraded."""


class DatabaseError(CerealError):
    """The database rejected or could not complete an operation; the message is the
    server's. ``transient`` is True when the same call may succeed later."""

    transient: bool = False


class TransientDatabaseError(DatabaseError):
    """The database cannot complete the operation now (connection lost, server read-only,
    shutting down or not accepting connections yet, deadlock, serialisation failure);
    retrying later may succeed."""

    transient = True
