"""Argument checks and errors shared by the manager's operations and their async twins.

:class:`cereal.Manager` and :class:`cereal.aio.AsyncManagerClient` validate through these
functions, so a bad argument gets the same exception type and message from either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from cereal.codec import check_name, encode
from cereal.config import MAX_SECONDS
from cereal.driver import ScheduleChange, StoredSchedule
from cereal.errors import (
    CerealError,
    InvalidScheduleError,
    WorkflowInstanceExistsError,
    WorkflowInstanceNotFoundError,
    WorkflowScheduleExistsError,
    WorkflowScheduleNotFoundError,
)
from cereal.recurrence import Recurrence
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

__all__ = [
    "KILLED",
    "MAX_PAGE",
    "MAX_SECONDS",
    "ListFilters",
    "await_timed_out",
    "check_list_filters",
    "check_pair",
    "decode_cursor",
    "encode_cursor",
    "enqueue_items",
    "first_due",
    "instance_exists",
    "instance_not_found",
    "schedule_change",
    "schedule_exists",
    "schedule_not_found",
    "signal_arguments",
    "timeout_seconds",
    "wait_timeout",
]

KILLED = "killed"
"""The error stored for an instance ended by ``kill_workflow``."""


MAX_PAGE = 10_000
"""Largest ``limit`` of a paged listing."""

_CURSOR_PREFIX = "c1."


# -- workflow instances -----------------------------------------------------------------------


def check_pair(workflow_name: object, instance_name: object) -> None:
    """Raise :class:`~cereal.errors.InvalidNameError` unless both names are valid."""
    check_name("workflow_name", workflow_name)
    check_name("instance_name", instance_name)


def instance_exists(workflow_name: str, instance_name: str) -> WorkflowInstanceExistsError:
    return WorkflowInstanceExistsError(
        f"workflow instance {workflow_name!r}/{instance_name!r} already exists"
    )


def instance_not_found(workflow_name: str, instance_name: str) -> WorkflowInstanceNotFoundError:
    return WorkflowInstanceNotFoundError(
        f"workflow instance {workflow_name!r}/{instance_name!r} not found"
    )


def enqueue_items(items: object) -> list[tuple[str, str, str | None]]:
    """Validate and encode the items of ``enqueue_workflows``, all before anything is written:
    ``(workflow_name, instance_name, parameters_json)`` for each."""
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise CerealError(f"items must be an iterable of 3-tuples, got {items!r}")
    checked: list[tuple[str, str, str | None]] = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 3:
            raise CerealError(
                f"each item must be a (workflow_name, instance_name, parameters) tuple, "
                f"got {item!r}"
            )
        workflow_name, instance_name, parameters = item
        check_pair(workflow_name, instance_name)
        what = f"parameters of workflow instance {workflow_name!r}/{instance_name!r}"
        checked.append((workflow_name, instance_name, encode(parameters, what)))
    return checked


def check_list_filters(
    workflow_name: object,
    instance_name: object,
    is_running: object,
    status: object = None,
    limit: object = None,
    after: object = None,
) -> WorkflowStatus | None:
    """Validate the filters of ``list_workflow_instances``; return ``status`` as a
    :class:`~cereal.types.WorkflowStatus` (or None). ``after`` is checked to be a string
    only: :func:`decode_cursor` reads it against the filters."""
    if workflow_name is not None:
        check_name("workflow_name", workflow_name)
    if instance_name is not None:
        check_name("instance_name", instance_name)
    if is_running is not None and not isinstance(is_running, bool):
        raise CerealError(f"is_running must be a bool or None, got {is_running!r}")
    wanted = _status_filter(status)
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE
    ):
        raise CerealError(f"limit must be an int from 1 to {MAX_PAGE} or None, got {limit!r}")
    if after is not None:
        if not isinstance(after, str):
            raise CerealError(f"after must be a cursor string or None, got {after!r}")
        if limit is None:
            raise CerealError("after needs a limit: pass the limit of the listing it came from")
    return wanted


def _status_filter(status: object) -> WorkflowStatus | None:
    if status is None or isinstance(status, WorkflowStatus):
        return status
    if isinstance(status, str) and status in WorkflowStatus._value2member_map_:
        return WorkflowStatus(status)
    allowed = ", ".join(s.value for s in WorkflowStatus)
    raise CerealError(f"status must be a WorkflowStatus ({allowed}) or None, got {status!r}")


ListFilters = tuple[str | None, str | None, bool | None, WorkflowStatus | None]
"""``(workflow_name, instance_name, is_running, status)`` of a listing."""


def _fingerprint(filters: ListFilters) -> str:
    workflow_name, instance_name, is_running, status = filters
    key = json.dumps([workflow_name, instance_name, is_running, status and status.value])
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def encode_cursor(filters: ListFilters, info: WorkflowInstanceInfo) -> str:
    """The opaque ``after`` cursor of a row of a paged listing with these filters: the
    row's position (``started_at``, workflow and instance name) and the filters' print."""
    assert info.started_at is not None
    body = json.dumps(
        [
            _fingerprint(filters),
            info.started_at.isoformat(),
            info.workflow_name,
            info.instance_name,
        ],
        ensure_ascii=True,
        separators=(",", ":"),
    )
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(body.encode("ascii")).decode("ascii")


def decode_cursor(after: str, filters: ListFilters) -> tuple[datetime, str, str]:
    """``(started_at, workflow_name, instance_name)`` of a cursor made for a listing with
    these filters, else :class:`CerealError`."""
    shown = after if len(after) <= 80 else after[:77] + "..."
    try:
        if not after.startswith(_CURSOR_PREFIX):
            raise ValueError("unknown prefix")
        raw = base64.urlsafe_b64decode(after[len(_CURSOR_PREFIX) :].encode("ascii"))
        fingerprint, stamp, workflow_name, instance_name = json.loads(raw)
        started_at = datetime.fromisoformat(stamp)
        if (
            not isinstance(fingerprint, str)
            or not isinstance(workflow_name, str)
            or not isinstance(instance_name, str)
            or started_at.tzinfo is None
        ):
            raise ValueError("bad fields")
    except (ValueError, TypeError, UnicodeError, binascii.Error) as exc:
        raise CerealError(f"after is not a listing cursor: {shown!r}") from exc
    if fingerprint != _fingerprint(filters):
        raise CerealError(
            f"after is a cursor of a listing with other filters: {shown!r}; page with the "
            f"filters the cursor was made for, or start again without after"
        )
    return started_at, workflow_name, instance_name


def signal_arguments(
    workflow_name: object, instance_name: object, signal_name: object, payload: Any
) -> str | None:
    """Validate the arguments of ``signal_workflow``; return the payload as JSON text."""
    check_pair(workflow_name, instance_name)
    check_name("signal_name", signal_name)
    return encode(payload, f"payload of signal {signal_name!r}")


def timeout_seconds(value: object) -> float | None:
    """A wait's ``timeout``: None (no limit) or a number of seconds (<= 0: do not wait)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise CerealError(f"timeout must be a number of seconds or None, got {value!r}")
    if value > MAX_SECONDS:  # longer than any wait can last (and maybe not even a float)
        return None
    return max(float(value), 0.0) if value > -1 else 0.0


def wait_timeout(timeout: object) -> float | None:
    """The ``timeout`` of ``await_workflow``: None or a number of seconds >= 0."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise CerealError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return timeout_seconds(timeout)


def await_timed_out(workflow_name: str, instance_name: str, timeout: float | None) -> TimeoutError:
    return TimeoutError(
        f"workflow instance {workflow_name!r}/{instance_name!r} did not finish "
        f"within {timeout or 0:g}s"
    )


# -- schedules --------------------------------------------------------------------------------


def _pair(workflow_name: str, instance_name: str) -> str:
    return f"{workflow_name!r}/{instance_name!r}"


def schedule_exists(workflow_name: str, instance_name: str) -> WorkflowScheduleExistsError:
    return WorkflowScheduleExistsError(
        f"workflow schedule {_pair(workflow_name, instance_name)} already exists"
    )


def schedule_not_found(workflow_name: str, instance_name: str) -> WorkflowScheduleNotFoundError:
    return WorkflowScheduleNotFoundError(
        f"workflow schedule {_pair(workflow_name, instance_name)} not found"
    )


def first_due(rule: Recurrence, now: datetime) -> datetime:
    """When a new schedule first runs: its first occurrence at or after ``now``."""
    next_due = rule.next_after(now, inclusive=True)
    if next_due is None:
        raise InvalidScheduleError(
            f"recurrence has no occurrence at or after {now.isoformat()}: {rule.text!r}"
        )
    return next_due


def schedule_change(
    workflow_name: str,
    instance_name: str,
    stored: StoredSchedule,
    now: datetime,
    *,
    enabled: bool | None,
    parameters_json: str | None,
    set_parameters: bool,
    parse: Callable[[datetime], Recurrence] | None,
    load: Callable[[str], Recurrence],
) -> ScheduleChange:
    """The new state of a schedule for ``update_workflow_schedule``: a new rule or a
    re-enable recomputes the next run from ``now`` (a stale occurrence never fires)."""
    text, next_due = stored.recurrence, stored.next_due_at
    new_enabled = stored.enabled if enabled is None else enabled
    if parse is not None or (new_enabled and not stored.enabled):
        rule = parse(now) if parse is not None else load(text)
        text = rule.text
        next_due = rule.next_after(now, inclusive=True)
        if next_due is None:
            raise InvalidScheduleError(
                f"recurrence has no occurrence at or after {now.isoformat()}, so "
                f"schedule {_pair(workflow_name, instance_name)} cannot run again: "
                f"{text!r}"
            )
    return ScheduleChange(
        parameters_json=parameters_json if set_parameters else stored.parameters_json,
        recurrence=text,
        enabled=new_enabled,
        next_due_at=next_due,
    )
