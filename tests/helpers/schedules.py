"""Schedules whose first occurrence is a moment away, immune to a slow machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cereal import Manager
from cereal.errors import InvalidScheduleError

__all__ = ["schedule_soon"]


def schedule_soon(
    manager: Manager,
    workflow_name: str,
    instance_name: str,
    parameters: Any = None,
    *,
    rule: str = "FREQ=HOURLY",
    lead: float = 2.0,
) -> datetime:
    """Create a schedule of ``rule`` whose ``DTSTART`` is about ``lead`` seconds from now and
    return that first occurrence.

    A rule's first occurrence must still lie ahead when the schedule is created, or the
    schedule's next run is the following occurrence (an hour later for ``FREQ=HOURLY``) or
    the rule is rejected (``COUNT=1``). On a loaded machine creating it can take longer than
    ``lead``; the schedule is then made again with twice the lead, so a test never waits for
    an occurrence that was skipped.
    """
    for _ in range(5):
        due = (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)
        text = f"DTSTART:{due:%Y%m%dT%H%M%SZ}\nRRULE:{rule}"
        lead *= 2
        try:
            manager.create_workflow_schedule(
                workflow_name, instance_name, parameters, recurrence=text
            )
        except InvalidScheduleError:
            continue  # a COUNT-limited rule whose occurrences had all passed
        stored = manager.get_workflow_schedule(workflow_name, instance_name)
        if stored.next_due_at == due or stored.last_enqueued_at is not None:
            return due
        manager.delete_workflow_schedule(workflow_name, instance_name)
    raise AssertionError(f"could not schedule {instance_name!r} ahead of the clock")
