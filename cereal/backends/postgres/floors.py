"""Where this process's claims start reading the queue indexes.

Handled events and finished instances are deleted, and claimed tasks move out of the queued
state, so the low end of the indexes claims walk (``workflow_events_instance`` for events,
``tasks_queued`` for tasks) fills with entries of dead rows until VACUUM removes them. A claim
that starts from the lowest key steps over all of them on every batch: with 240,000 of a
million instances drained and no VACUUM yet, that was 40 ms a claim (when event claims still
walked the primary key of ``workflow_instances``), and the drain slowed as it went. Each
claim here starts at a floor instead, and one claim in every ``FULL_SCAN_EVERY`` seconds still
reads from the lowest key, so whatever the floor misses waits that long at most.

Instances. ``EventFloor.floor`` is an instance id below which no instance of these workflows
is live. A claim reports a mark: ``mark_id``, the highest instance id it locked (so committed
before its snapshot), and ``mark_xid``, an xid assigned after its snapshot. Once a later
snapshot's xmin has passed ``mark_xid``, the transactions that wrote instances up to
``mark_id`` have ended (an insert takes its xid right after its id: only a writer paused
between the two could be later, and the full scans cover that), so the lowest live instance
id that snapshot sees, capped at ``mark_id + 1``, is the new floor. A live instance keeps the
floor at or below it however long it runs (its next event must be claimed), and a long
transaction holding xmin back keeps the floor where it is.

Tasks. Tasks are claimed by (start_after, id), and a task can be queued again below anything
claimed so far (released by a stopping process, or given a ``start_after`` in the past), so
the floor of each task name trails the oldest ``start_after`` this process claimed by
``TASK_FLOOR_MARGIN``; a task below it is claimed by the next full scan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

__all__ = ["FULL_SCAN_EVERY", "TASK_FLOOR_MARGIN", "EventFloor", "TaskFloors"]

TASK_FLOOR_MARGIN = timedelta(seconds=10)
"""How far a task name's floor trails the oldest start_after claimed: a task written by a
transaction that began less than this before the claim is never below it."""

FULL_SCAN_EVERY = 2.0
"""Seconds between claims that read from the lowest key (for each kind of claim)."""


class EventFloor:
    """The instance-id floor of one set of workflow names, shared by the handler threads."""

    def __init__(self, full_scan_every: float = FULL_SCAN_EVERY) -> None:
        self._lock = threading.Lock()
        self.floor = 0
        self._mark: tuple[int, int] | None = None  # (mark_id, mark_xid), not yet ripe
        self._every = full_scan_every
        self._last_full = float("-inf")

    def scan_from(self) -> int:
        """Where the next scan starts: the floor, or 0 when a full scan is due."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_full >= self._every:
                self._last_full = now
                return 0
            return self.floor

    def params(self) -> dict[str, int | None]:
        floor = self.scan_from()
        with self._lock:
            mark_id, mark_xid = self._mark if self._mark is not None else (None, None)
            return {"floor": floor, "mark_id": mark_id, "mark_xid": mark_xid}

    def update(self, used: dict[str, int | None], row: dict[str, int | None]) -> None:
        """Take what a claim (made with ``used``) reported: a new floor if the mark it
        passed was ripe, and a fresh mark."""
        new_floor, mark_id, mark_xid = row["new_floor"], row["mark_id"], row["mark_xid"]
        with self._lock:
            if new_floor is not None:
                self.floor = max(self.floor, new_floor)
                if self._mark == (used["mark_id"], used["mark_xid"]):
                    self._mark = None  # spent: the next claim takes a new one
            if self._mark is None and mark_id is not None and mark_xid is not None:
                self._mark = (mark_id, mark_xid)


class TaskFloors:
    """Per task name, the start_after below which a claim does not look (except in a full
    scan), for one process."""

    def __init__(
        self,
        margin: timedelta = TASK_FLOOR_MARGIN,
        full_scan_every: float = FULL_SCAN_EVERY,
    ) -> None:
        self._lock = threading.Lock()
        self._floors: dict[str, datetime] = {}
        self._margin = margin
        self._every = full_scan_every
        self._last_full = float("-inf")

    def for_claim(self, names: Sequence[str]) -> list[datetime | None]:
        """The floor of each name for the next claim; all None when a full scan is due."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_full >= self._every:
                self._last_full = now
                return [None] * len(names)
            return [self._floors.get(n) for n in names]

    def current(self, names: Sequence[str]) -> list[datetime | None]:
        """The floor of each name as it stands (None: none yet), without a full scan: for a
        look at the queue that may miss what lies below (a workflow commit asking whether
        older tasks of a name wait before it claims new ones)."""
        with self._lock:
            return [self._floors.get(n) for n in names]

    def claimed(self, rows: Iterable[tuple[str, datetime]]) -> None:
        """Raise each name's floor to the oldest start_after claimed, less the margin."""
        oldest: dict[str, datetime] = {}
        for name, start_after in rows:
            if name not in oldest or start_after < oldest[name]:
                oldest[name] = start_after
        if not oldest:
            return
        with self._lock:
            for name, at in oldest.items():
                try:
                    floor = at - self._margin
                except OverflowError:  # a start_after near year 1: nothing can lie below
                    continue
                if name not in self._floors or floor > self._floors[name]:
                    self._floors[name] = floor
