"""Where task executors run: worker threads per sync task name, one event loop for async."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from cereal.logging import get_logger
from cereal.task_pools.state import TaskRegistration

__all__ = ["AsyncRunner", "SyncRunners"]

log = get_logger("cereal.tasks")


class _Workers:
    """Up to ``workers`` threads running the calls submitted, oldest first.

    A thread starts only when a call finds none idle, and waits for the next call once done.
    Lighter than ``concurrent.futures.ThreadPoolExecutor``, whose ``Future`` per call (and the
    condition inside it) nobody here reads: each task reports its own outcome. Like cereal's
    other threads they are daemons: a process that exits without ``Manager.stop()`` does not
    wait for its running tasks, which are then reported lost.
    """

    def __init__(self, task_name: str, workers: int) -> None:
        self._task_name = task_name
        self._max = workers
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        """Threads done with their call, less the calls queued for them since."""
        self._closed = False

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the workers of task {self._task_name!r} are shut down")
            start = not self._idle and self._threads < self._max
            if start:
                self._threads += 1
            elif self._idle:
                self._idle -= 1
            self._calls.put(fn)
            number = self._threads
        if start:
            name = f"cereal-{self._task_name}_{number - 1}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def shutdown(self) -> None:
        """Take no more calls; the threads exit once those already queued have run."""
        with self._lock:
            self._closed = True
            for _ in range(self._threads):
                self._calls.put(None)

    def _work(self) -> None:
        while (fn := self._calls.get()) is not None:
            try:
                fn()
            except BaseException as exc:  # the calls catch their own: this keeps the thread
                log.error("a task worker's call failed", task=self._task_name, error=repr(exc))
            with self._lock:
                self._idle += 1


class SyncRunners:
    """Worker threads, ``workers`` at most, for each sync task name."""

    def __init__(self, registrations: dict[str, TaskRegistration]) -> None:
        self._pools = {
            name: _Workers(name, reg.workers)
            for name, reg in registrations.items()
            if not reg.is_async
        }

    def __contains__(self, task_name: str) -> bool:
        return task_name in self._pools

    def submit(self, task_name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a worker of ``task_name``; RuntimeError once shut down."""
        self._pools[task_name].submit(fn)

    def shutdown(self) -> None:
        """Take no more work; what is running or queued goes on."""
        for pool in self._pools.values():
            pool.shutdown()


class AsyncRunner:
    """One event loop thread running every ``async`` executor's coroutines."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cereal-async-tasks", daemon=True
        )
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, None]) -> Future[None]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
