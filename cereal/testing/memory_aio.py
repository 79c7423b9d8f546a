"""The async twin of :class:`~cereal.testing.MemoryDriver`, so that ``manager.aio`` works on
the in-memory driver too.

Each operation runs the memory driver's synchronous one in a worker thread (``kill_workflow``
waits for a callback in flight, which must not stall the event loop). Waiters of
:meth:`AsyncMemoryDriver.watch_instance` are woken by the store's "instance finished"
wakeups, through one listener per driver, as the PostgreSQL twin is by its notifications.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING

from cereal.driver import InstanceFinished, ScheduleChange, StoredSchedule, Wakeup
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.testing.memory import MemoryDriver, MemoryListener

__all__ = ["AsyncMemoryDriver"]


class _Watch:
    def __init__(self, owner: AsyncMemoryDriver) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()

    def poke(self) -> None:
        """Wake the waiter (from any thread)."""
        with suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self._woken.set)

    async def wait(self, timeout: float | None) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)
        self._woken.clear()

    def close(self) -> None:
        self._owner._forget(self)


class AsyncMemoryDriver:
    """Implements :class:`cereal.driver.AsyncDriver` on a :class:`MemoryDriver`'s store."""

    def __init__(self, driver: MemoryDriver) -> None:
        self._driver = driver
        self._lock = threading.Lock()
        self._watches: set[_Watch] = set()
        self._listener: MemoryListener | None = None

    @property
    def schema(self) -> str:
        return self._driver.schema

    async def close(self) -> None:
        self.close_soon()

    def close_soon(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    # -- workflow instances --------------------------------------------------------------------

    async def enqueue_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> bool:
        return await asyncio.to_thread(
            self._driver.enqueue_workflow,
            workflow_name,
            instance_name,
            parameters_json,
            trace_context,
        )

    async def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]], trace_context: str | None = None
    ) -> list[tuple[str, str]]:
        return await asyncio.to_thread(self._driver.enqueue_workflows, items, trace_context)

    async def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        return await asyncio.to_thread(self._driver.cancel_workflow, workflow_name, instance_name)

    async def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        return await asyncio.to_thread(
            self._driver.kill_workflow, workflow_name, instance_name, error
        )

    async def signal_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        signal_name: str,
        signal_payload_json: str | None,
    ) -> bool:
        return await asyncio.to_thread(
            self._driver.signal_workflow,
            workflow_name,
            instance_name,
            signal_name,
            signal_payload_json,
        )

    async def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        return await asyncio.to_thread(
            self._driver.get_workflow_instance, workflow_name, instance_name
        )

    async def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        return await asyncio.to_thread(
            self._driver.list_workflow_instances,
            workflow_name,
            instance_name,
            is_running,
            status,
            limit,
            after,
        )

    # -- waiting for runs to finish ------------------------------------------------------------

    def watch_instance(self, workflow_name: str, instance_name: str) -> _Watch:
        # Any finish wakes every watch; each waiter then looks at its own pair.
        watch = _Watch(self)
        with self._lock:
            self._watches.add(watch)
            if self._listener is None:
                self._listener = self._driver.listener(self._on_wakeup, self._poke_all)
                self._listener.start()  # registered with the store before this returns
        return watch

    def _forget(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def _on_wakeup(self, wakeup: Wakeup) -> None:
        if isinstance(wakeup, InstanceFinished):
            self._poke_all()

    def _poke_all(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.poke()

    # -- schedules -----------------------------------------------------------------------------

    async def now(self) -> datetime:
        return self._driver.now()

    async def insert_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        recurrence: str,
        enabled: bool,
        next_due_at: datetime | None,
    ) -> bool:
        return await asyncio.to_thread(
            self._driver.insert_schedule,
            workflow_name,
            instance_name,
            parameters_json,
            recurrence,
            enabled,
            next_due_at,
        )

    async def update_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        return await asyncio.to_thread(
            self._driver.update_schedule, workflow_name, instance_name, change
        )

    async def delete_schedule(self, workflow_name: str, instance_name: str) -> bool:
        return await asyncio.to_thread(self._driver.delete_schedule, workflow_name, instance_name)

    async def list_schedules(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        return await asyncio.to_thread(self._driver.list_schedules, workflow_name, instance_name)
