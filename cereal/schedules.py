"""Recurring workflow schedules: the manager's schedule operations."""

from __future__ import annotations

from typing import Any

__all__ = ["ScheduleOperations"]


class ScheduleOperations:
    """Schedule methods of :class:`cereal.Manager`."""

    def _make_scheduler(self) -> Any:
        return None
