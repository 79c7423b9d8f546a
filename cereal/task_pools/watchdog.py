"""Enforcing task timeouts."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

__all__ = ["TimeoutWatchdog"]


class TimeoutWatchdog:
    """Calls ``on_expired(task_id)`` from its own thread once a watched task's time is up
    (the callback decides whether the task is still running)."""

    def __init__(self, on_expired: Callable[[int], None]) -> None:
        self._on_expired = on_expired
        self._cond = threading.Condition()
        self._deadlines: list[tuple[float, int]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cereal-task-watchdog", daemon=True)
        self._thread.start()

    def watch(self, task_id: int, seconds: float) -> None:
        """Expire ``task_id`` ``seconds`` from now."""
        with self._cond:
            heapq.heappush(self._deadlines, (time.monotonic() + seconds, task_id))
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                expired = None
                if self._deadlines:
                    wait = max(0.0, self._deadlines[0][0] - time.monotonic())
                    if wait == 0.0:
                        expired = heapq.heappop(self._deadlines)[1]
                else:
                    wait = 1.0
                if expired is None:
                    self._cond.wait(wait)
                    continue
            self._on_expired(expired)
