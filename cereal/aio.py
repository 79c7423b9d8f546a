"""``Manager.aio``: the manager's instance and schedule operations as coroutines.

Each method has the name, arguments, validation and errors of its synchronous twin on
:class:`cereal.Manager`, and never blocks the running event loop: it talks to the database
through the driver's async twin (:class:`cereal.driver.AsyncDriver`), with no thread per
call. :meth:`AsyncManagerClient.await_workflow` sleeps until the database announces that a
run finished (one listening connection per client, shared by every waiter), re-checking
now and then only while that connection is down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from cereal import tracing
from cereal.checks import (
    KILLED,
    await_timed_out,
    check_list_filters,
    check_pair,
    enqueue_items,
    first_due,
    instance_exists,
    instance_not_found,
    schedule_change,
    schedule_exists,
    schedule_not_found,
    signal_arguments,
    wait_timeout,
)
from cereal.codec import encode
from cereal.config import flag
from cereal.driver import AsyncDriver, ScheduleChange, StoredSchedule
from cereal.errors import CerealError
from cereal.schedules import UNCHANGED, RecurrenceInput, _load, _parse
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus

__all__ = ["AsyncManagerClient"]


class AsyncManagerClient:
    """Coroutine versions of the manager's instance and schedule operations.

    Get one as ``manager.aio``; it works whether or not the manager is started, and its
    connections close when the manager stops (or on :meth:`close`; a later call opens
    them again). Connections belong to the event loop that opened them: a call from
    another loop opens fresh ones.
    """

    def __init__(self, driver: AsyncDriver) -> None:
        self._driver = driver

    @classmethod
    def for_driver(cls, driver: object) -> AsyncManagerClient:
        """A client on the async twin of a synchronous driver (its ``async_driver()``)."""
        make = getattr(driver, "async_driver", None)
        if not callable(make):
            raise CerealError(
                f"{type(driver).__name__} has no async twin (an async_driver() method), so "
                f"manager.aio is not available with it"
            )
        twin: AsyncDriver = make()
        return cls(twin)

    @property
    def driver(self) -> AsyncDriver:
        """The async driver this client uses."""
        return self._driver

    async def close(self) -> None:
        """Close the client's connections (a later call opens them again)."""
        await self._driver.close()

    def close_soon(self) -> None:
        """Close from synchronous code, in any thread, without waiting."""
        self._driver.close_soon()

    # -- workflow instances ------------------------------------------------------------------

    async def enqueue_workflow(
        self, workflow_name: str, instance_name: str, parameters: Any = None
    ) -> None:
        """Start a new instance. Raises :class:`~cereal.errors.WorkflowInstanceExistsError`
        while one with the same names is live, :class:`~cereal.errors.SerializationError`
        for non-JSON parameters."""
        check_pair(workflow_name, instance_name)
        params = encode(parameters, f"parameters of workflow {workflow_name!r}")
        with tracing.enqueue_span(workflow_name, instance_name) as span:
            if not await self._driver.enqueue_workflow(
                workflow_name, instance_name, params, trace_context=span.context
            ):
                raise instance_exists(workflow_name, instance_name)

    async def enqueue_workflows(
        self, items: Iterable[tuple[str, str, Any]]
    ) -> list[tuple[str, str]]:
        """Enqueue many ``(workflow_name, instance_name, parameters)`` in one round trip;
        return the pairs not enqueued because a live instance already existed (or because
        they appear twice). Bad names or parameters raise before anything is written."""
        checked = enqueue_items(items)
        if not checked:
            return []
        with tracing.bulk_enqueue_span(checked) as span:
            return await self._driver.enqueue_workflows(checked, trace_context=span.context)

    async def cancel_workflow(self, workflow_name: str, instance_name: str) -> None:
        """Deliver a cancel event to the executor's ``on_cancel``, which decides."""
        check_pair(workflow_name, instance_name)
        if not await self._driver.cancel_workflow(workflow_name, instance_name):
            raise instance_not_found(workflow_name, instance_name)

    async def kill_workflow(self, workflow_name: str, instance_name: str) -> None:
        """End a live instance at once as failed with error ``"killed"``."""
        check_pair(workflow_name, instance_name)
        if not await self._driver.kill_workflow(workflow_name, instance_name, KILLED):
            raise instance_not_found(workflow_name, instance_name)

    async def signal_workflow(
        self, workflow_name: str, instance_name: str, signal_name: str, payload: Any = None
    ) -> None:
        """Store a signal event for the live instance and wake its manager."""
        payload_json = signal_arguments(workflow_name, instance_name, signal_name, payload)
        if not await self._driver.signal_workflow(
            workflow_name, instance_name, signal_name, payload_json
        ):
            raise instance_not_found(workflow_name, instance_name)

    async def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo:
        """The live instance if any, else the most recent finished run."""
        check_pair(workflow_name, instance_name)
        info = await self._driver.get_workflow_instance(workflow_name, instance_name)
        if info is None:
            raise instance_not_found(workflow_name, instance_name)
        return info

    async def list_workflow_instances(
        self,
        *,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        """One row per ``(workflow_name, instance_name)``: the live instance, else its
        latest finished run. With ``limit``, at most that many rows, newest first; pass the
        last row's ``cursor`` as ``after`` for the next page."""
        wanted = check_list_filters(workflow_name, instance_name, is_running, status, limit, after)
        return await self._driver.list_workflow_instances(
            workflow_name, instance_name, is_running, wanted, limit, after
        )

    async def await_workflow(
        self, workflow_name: str, instance_name: str, timeout: float | None = None
    ) -> WorkflowInstanceInfo:
        """Wait until the instance has finished and return its final state.

        Raises :class:`TimeoutError` after ``timeout`` seconds and
        :class:`~cereal.errors.WorkflowInstanceNotFoundError` if no such instance was ever
        enqueued. Waiting costs no thread and no polling while the listener is connected.
        """
        seconds = wait_timeout(timeout)
        check_pair(workflow_name, instance_name)
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        watch = self._driver.watch_instance(workflow_name, instance_name)
        try:
            while True:
                info = await self.get_workflow_instance(workflow_name, instance_name)
                if not info.is_running:
                    return info
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise await_timed_out(workflow_name, instance_name, seconds)
                await watch.wait(left)
        finally:
            watch.close()

    # -- schedules ---------------------------------------------------------------------------

    async def create_workflow_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters: Any = None,
        *,
        recurrence: RecurrenceInput,
        enabled: bool = True,
    ) -> None:
        """Enqueue the pair with ``parameters`` at every occurrence of ``recurrence``
        (computed on the database's clock). Raises
        :class:`~cereal.errors.WorkflowScheduleExistsError` for a duplicate pair and
        :class:`~cereal.errors.InvalidScheduleError` for a rule that does not parse or
        never occurs again."""
        check_pair(workflow_name, instance_name)
        params = encode(parameters, f"parameters of schedule {workflow_name!r}")
        is_enabled = flag("enabled", enabled)
        now = await self._driver.now()
        rule = _parse(recurrence, now)
        next_due = first_due(rule, now)
        if not await self._driver.insert_schedule(
            workflow_name, instance_name, params, rule.text, is_enabled, next_due
        ):
            raise schedule_exists(workflow_name, instance_name)

    async def update_workflow_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        *,
        enabled: bool | None = None,
        parameters: Any = UNCHANGED,
        recurrence: RecurrenceInput | None = None,
    ) -> None:
        """Change a schedule atomically. A new ``recurrence`` or re-enabling recomputes the
        next run from now; a rule with no occurrence left is rejected with
        :class:`~cereal.errors.InvalidScheduleError`."""
        check_pair(workflow_name, instance_name)
        set_params = parameters is not UNCHANGED
        params = (
            encode(parameters, f"parameters of schedule {workflow_name!r}") if set_params else None
        )
        new_enabled = None if enabled is None else flag("enabled", enabled)

        def parse(now: datetime) -> Any:
            assert recurrence is not None
            return _parse(recurrence, now)

        def change(stored: StoredSchedule, now: datetime) -> ScheduleChange:
            return schedule_change(
                workflow_name,
                instance_name,
                stored,
                now,
                enabled=new_enabled,
                parameters_json=params,
                set_parameters=set_params,
                parse=None if recurrence is None else parse,
                load=_load,
            )

        if not await self._driver.update_schedule(workflow_name, instance_name, change):
            raise schedule_not_found(workflow_name, instance_name)

    async def get_workflow_schedule(self, workflow_name: str, instance_name: str) -> Schedule:
        """The schedule of this pair; :class:`~cereal.errors.WorkflowScheduleNotFoundError`
        if none."""
        check_pair(workflow_name, instance_name)
        rows = await self._driver.list_schedules(workflow_name, instance_name)
        if not rows:
            raise schedule_not_found(workflow_name, instance_name)
        return rows[0]

    async def list_workflow_schedules(self) -> list[Schedule]:
        """Every schedule, enabled or not, ordered by workflow and instance name."""
        return await self._driver.list_schedules()

    async def delete_workflow_schedule(self, workflow_name: str, instance_name: str) -> None:
        """Remove a schedule (a run it already enqueued goes on)."""
        check_pair(workflow_name, instance_name)
        if not await self._driver.delete_schedule(workflow_name, instance_name):
            raise schedule_not_found(workflow_name, instance_name)
