"""Claiming due tasks for every registered task name in one round trip."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from cereal.driver import ClaimedTask, Driver
from cereal.errors import DatabaseError
from cereal.logging import get_logger
from cereal.retries import RetryPolicy

__all__ = ["Claimer"]

log = get_logger("cereal.tasks")


class Claimer:
    """One thread that claims tasks whenever it is woken (a task was enqueued, a slot
    freed), when the next delayed task becomes due, and every ``poll_interval`` seconds.

    ``capacity()`` says how many tasks of each name to claim now (and may hold those slots
    until the claim is done); ``dispatch`` gets each claimed task; ``retries`` are the task
    names' retry policies, stored with each claim. ``claimed(limits, tasks)`` hears of each
    claim before its tasks are dispatched, ``release(limits)`` of each claim not made or
    failed, and ``uncertain()`` of each that failed in a way that may have committed (a
    lost connection). Failures are retried with backoff.
    """

    def __init__(
        self,
        driver: Driver,
        owner: str,
        *,
        poll_interval: float,
        capacity: Callable[[], dict[str, int]],
        dispatch: Callable[[ClaimedTask], None],
        retries: Mapping[str, RetryPolicy] | None = None,
        claimed: Callable[[dict[str, int], list[ClaimedTask]], None] | None = None,
        release: Callable[[dict[str, int]], None] | None = None,
        uncertain: Callable[[], None] | None = None,
    ) -> None:
        self._driver = driver
        self._retries = retries or None
        self._owner = owner
        self._poll_interval = poll_interval
        self._capacity = capacity
        self._dispatch = dispatch
        self._claimed = claimed
        self._release = release
        self._uncertain = uncertain
        self._cond = threading.Condition()
        self._wanted = True
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cereal-task-claimer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Claim again soon."""
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Claim no more (a claim in flight still dispatches what it got)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        next_due: float | None = None
        failures = 0
        while True:
            with self._cond:
                while not self._stopping and not self._wanted:
                    wait = self._poll_interval
                    if next_due is not None:
                        wait = min(wait, max(0.0, next_due - time.monotonic()))
                    if not self._cond.wait(wait) or (
                        next_due is not None and time.monotonic() >= next_due
                    ):
                        self._wanted = True
                if self._stopping:
                    return
                self._wanted = False
            limits = self._capacity()
            if not any(v > 0 for v in limits.values()):
                if self._release is not None:
                    self._release(limits)
                continue
            try:
                if self._retries is None:  # the two-argument form every driver has had
                    claimed, due_in = self._driver.claim_tasks(limits, self._owner)
                else:
                    claimed, due_in = self._driver.claim_tasks(limits, self._owner, self._retries)
                failures = 0
            except Exception as exc:
                if self._release is not None:
                    self._release(limits)
                if self._uncertain is not None and isinstance(exc, DatabaseError) and exc.transient:
                    self._uncertain()  # the claim may have committed all the same
                failures += 1
                delay = min(0.2 * 2**failures, 5.0)
                log.warning("claiming tasks failed; retrying", error=repr(exc), retry_in=delay)
                time.sleep(delay)
                self.wake()
                continue
            next_due = None if due_in is None else time.monotonic() + max(due_in, 0.0)
            if self._claimed is not None:
                self._claimed(limits, claimed)
            for row in claimed:
                self._dispatch(row)
            if claimed:
                self.wake()
