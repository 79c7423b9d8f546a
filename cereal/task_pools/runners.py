"""Where task executors run: a thread pool per sync task name, one event loop for async."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cereal.task_pools.state import TaskRegistration

__all__ = ["AsyncRunner", "SyncRunners"]


class SyncRunners:
    """A thread pool of ``workers`` threads for each sync task name."""

    def __init__(self, registrations: dict[str, TaskRegistration]) -> None:
        self._pools = {
            name: ThreadPoolExecutor(max_workers=reg.workers, thread_name_prefix=f"cereal-{name}")
            for name, reg in registrations.items()
            if not reg.is_async
        }

    def __contains__(self, task_name: str) -> bool:
        return task_name in self._pools

    def submit(self, task_name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a worker of ``task_name``; RuntimeError once shut down."""
        self._pools[task_name].submit(fn)

    def shutdown(self) -> None:
        """Take no more work; what is running goes on."""
        for pool in self._pools.values():
            pool.shutdown(wait=False)


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
