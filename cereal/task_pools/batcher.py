"""A thread that drains a queue into batched calls."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher(Generic[T]):
    """Calls ``handle`` with whatever was :meth:`put` meanwhile, up to ``max_batch`` items
    at a time, in order, from one thread. While ``handle`` runs, new items accumulate into
    the next batch, so the batches grow with the load and a quiet queue costs nothing.

    :meth:`close` lets the thread handle everything already put, then end.
    """

    def __init__(
        self, name: str, handle: Callable[[list[T]], None], *, max_batch: int = 500
    ) -> None:
        self._name = name
        self._handle = handle
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[T | _Close] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def close(self) -> None:
        """Handle what is queued, then stop (returns at once; see :meth:`join`)."""
        self._queue.put(_CLOSE)

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            batch: list[T] = []
            if isinstance(first, _Close):
                closing = True
            else:
                batch.append(first)
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Close):
                    closing = True
                else:
                    batch.append(item)
            if batch:
                self._handle(batch)


class _Close:
    pass


_CLOSE = _Close()
