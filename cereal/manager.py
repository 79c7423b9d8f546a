"""The :class:`Manager`: registration, lifecycle, and every workflow-instance operation."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cereal import tracing
from cereal.checks import (
    KILLED,
    await_timed_out,
    check_list_filters,
    enqueue_items,
    instance_exists,
    signal_arguments,
    timeout_seconds,
    wait_timeout,
)
from cereal.checks import instance_not_found as _not_found
from cereal.codec import check_name, describe_error, encode
from cereal.config import ManagerConfig, count, default_driver, flag, optional_seconds
from cereal.dispatch import ResultHandover, WorkflowEventDispatcher
from cereal.driver import (
    Driver,
    EventsPending,
    InstanceFinished,
    Listener,
    SchedulesChanged,
    TasksQueued,
    Wakeup,
)
from cereal.errors import (
    CerealError,
    InvalidExecutorError,
    ManagerStateError,
)
from cereal.executors import TaskExecutor, TaskFunction, WorkflowExecutor, task_callable
from cereal.logging import get_logger
from cereal.retries import RetryPolicy
from cereal.schedules import ScheduleOperations
from cereal.services.base import PeriodicService
from cereal.services.heartbeat import Heartbeat, LostTaskReaper
from cereal.services.pruner import HistoryPruner
from cereal.services.scheduler import Scheduler
from cereal.services.vacuum import QueueVacuum
from cereal.task_pools import TaskPools, TaskRegistration
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.aio import AsyncManagerClient

__all__ = ["Manager"]

log = get_logger("cereal.manager")
_stdlib_log = logging.getLogger("cereal.manager")

_DRIVER_METHODS = (
    "open",
    "close",
    "listener",
    "enqueue_workflow",
    "enqueue_workflows",
    "cancel_workflow",
    "kill_workflow",
    "signal_workflow",
    "get_workflow_instance",
    "list_workflow_instances",
    "has_events",
    "claim_events",
    "fail_instance",
    "claim_tasks",
    "complete_tasks",
    "heartbeat_tasks",
    "release_tasks",
    "reap_lost_tasks",
    "now",
    "insert_schedule",
    "update_schedule",
    "delete_schedule",
    "list_schedules",
    "run_due_schedule",
    "seconds_until_next_schedule",
    "prune_history",
    "vacuum_queues",
)
"""The :class:`~cereal.driver.Driver` methods the manager calls."""


def _check_driver(driver: object) -> Driver:
    missing = [m for m in _DRIVER_METHODS if not callable(getattr(driver, m, None))]
    if missing:
        raise CerealError(
            f"driver must implement cereal.driver.Driver; {type(driver).__name__} lacks "
            f"{', '.join(missing)}"
        )
    return driver  # type: ignore[return-value]


class Manager(ScheduleOperations):
    """Runs registered workflow and task executors against a database.

    ``driver`` is any object implementing :class:`cereal.driver.Driver`; None builds the
    default (:func:`cereal.config.default_driver`: PostgreSQL at ``CEREAL_DATABASE_URL``).
    The keyword options are the fields of :class:`~cereal.config.ManagerConfig`, where each
    is documented with its default; an unknown option raises :class:`CerealError`.

    Instance and schedule operations work without :meth:`start`.
    """

    def __init__(self, driver: Driver | None = None, **options: Any) -> None:
        self.config = ManagerConfig.from_options(**options)
        if driver is not None:
            _check_driver(driver)
        close = self.config.close_driver
        self._owns_driver = driver is None if close is None else close
        self.driver: Driver = driver if driver is not None else default_driver()
        self._workflows: dict[str, WorkflowExecutor] = {}
        self._tasks: dict[str, TaskRegistration] = {}
        self._state = "new"
        self._state_lock = threading.Lock()
        self._finished = threading.Condition()
        self._finish_seq = 0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._services: list[PeriodicService] = []
        self._dispatcher: WorkflowEventDispatcher | None = None
        self._pools: TaskPools | None = None
        self._listener: Listener | None = None
        self._scheduler: Scheduler | None = None
        self.log = log.bind(owner=self.owner)

    # -- registration ------------------------------------------------------------------------

    def _require_new(self, what: str) -> None:
        if self._state != "new":
            raise ManagerStateError(f"{what} must be called before start()")

    def register_workflow_executor(self, workflow_name: str, executor: WorkflowExecutor) -> None:
        """Handle events of ``workflow_name`` with ``executor`` (replaces an earlier one)."""
        self._require_new("register_workflow_executor")
        check_name("workflow_name", workflow_name)
        missing = [
            m
            for m in ("on_start", "on_task_complete", "on_cancel")
            if not callable(getattr(executor, m, None))
        ]
        if missing:
            raise InvalidExecutorError(
                f"workflow executor for {workflow_name!r} lacks {', '.join(missing)}: {executor!r}"
            )
        self._workflows[workflow_name] = executor

    def register_task_executor(
        self,
        task_name: str,
        executor: TaskExecutor | TaskFunction,
        *,
        workers: int = 1,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Run tasks named ``task_name`` with ``executor``: an object with ``run(task)`` or
        a function of a :class:`Task`, sync or ``async``. At most ``workers`` run at once in
        this process; ``timeout`` (seconds) fails a task that runs longer. With ``retry``, an
        attempt that raises, times out or is lost is tried again as the policy says (see
        :class:`~cereal.RetryPolicy`)."""
        self._require_new("register_task_executor")
        check_name("task_name", task_name)
        workers = count("workers", workers)
        seconds = optional_seconds("timeout", timeout)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise CerealError(f"retry must be a RetryPolicy or None, got {retry!r}")
        self._tasks[task_name] = TaskRegistration(
            task_name, task_callable(executor), workers, seconds, retry
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the event dispatcher, task pools and background services; returns at once."""
        with self._state_lock:
            if self._state != "new":
                raise ManagerStateError(
                    "start() can be called only once"
                    if self._state == "started"
                    else "a stopped manager cannot be restarted"
                )
            self._state = "started"
        config = self.config
        self.driver.open()
        prepare = getattr(self.driver, "prepare_for_workflows", None)  # optional, see there
        if prepare is not None and self._workflows:
            prepare()
        self._pools = TaskPools(
            self.driver,
            self._tasks,
            owner=self.owner,
            poll_interval=config.task_poll_interval,
            on_reported=self._on_tasks_reported,
        )
        self._dispatcher = WorkflowEventDispatcher(
            self.driver,
            self._workflows,
            workers=config.workflow_workers,
            poll_interval=config.workflow_poll_interval,
            on_finished=self._on_finished,
            on_tasks_enqueued=self._on_tasks_enqueued,
            batch_size=config.event_batch_size,
            reserve_tasks=self._pools.reserve,
            adopt_tasks=self._pools.adopt,
            results=ResultHandover(
                self.owner, self._pools.results_recorded, self._pools.record_results
            ),
        )
        self._pools.hand_results_to(self._dispatcher.take_result)
        self._listener = self.driver.listener(self._on_wakeup, self._wake_all)
        self._services = [
            Heartbeat(
                self.driver,
                self._pools,
                self.owner,
                config.heartbeat_interval,
                config.lost_task_timeout,
            ),
            LostTaskReaper(self.driver, config.lost_task_timeout),
            HistoryPruner(
                self.driver,
                max_age=config.history_max_age,
                max_runs=config.history_max_runs,
                interval=config.history_prune_interval,
            ),
            QueueVacuum(self.driver),
        ]
        if config.scheduler:
            self._scheduler = Scheduler(self.driver, on_enqueued=self._on_schedule_enqueued)
            self._services.append(self._scheduler)
        self._listener.start()
        self._pools.start()
        self._dispatcher.start()
        for service in self._services:
            service.start()
        self.log.info(
            "manager started", workflows=sorted(self._workflows), tasks=sorted(self._tasks)
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, let running handlers and tasks finish, then close.

        Running tasks see ``task.cancelled`` set. With ``timeout``, stop waits at most that
        long; work still running then is picked up again by another manager (events are
        re-delivered, tasks reported lost). Safe to call twice or before :meth:`start`.
        """
        timeout = timeout_seconds(timeout)
        with self._state_lock:
            was, self._state = self._state, "stopped"
        if was == "started":
            deadline = None if timeout is None else time.monotonic() + timeout

            def left() -> float | None:
                return None if deadline is None else max(0.0, deadline - time.monotonic())

            if self._dispatcher is not None:
                self._dispatcher.stop(left())
            if self._pools is not None:
                self._pools.stop(left())
            for service in self._services:
                service.stop(left())
            if self._listener is not None:
                self._listener.stop()
            self.log.info("manager stopped")
        if self._owns_driver and was != "stopped":
            self.driver.close()
        if self._aio is not None:
            self._aio.close_soon()
        with self._finished:
            self._finished.notify_all()

    def __enter__(self) -> Manager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- wakeups -----------------------------------------------------------------------------

    def _on_wakeup(self, wakeup: Wakeup) -> None:
        """A hint from the driver's listener that another process changed something."""
        if isinstance(wakeup, EventsPending):
            if wakeup.workflow_name in self._workflows and self._dispatcher is not None:
                self._dispatcher.wake()
        elif isinstance(wakeup, TasksQueued):
            if self._pools is not None:
                self._pools.wake(wakeup.task_name)
        elif isinstance(wakeup, InstanceFinished):
            if self._pools is not None:
                self._pools.instance_finished(wakeup.instance_id)
            self._signal_finished()
        elif isinstance(wakeup, SchedulesChanged) and self._scheduler is not None:
            self._scheduler.wake()

    def _wake_all(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.wake()
        if self._pools is not None:
            self._pools.wake()
        if self._scheduler is not None:
            self._scheduler.wake()
        self._signal_finished()

    def _signal_finished(self) -> None:
        with self._finished:
            self._finish_seq += 1
            self._finished.notify_all()

    def _on_schedule_enqueued(self, workflow_name: str) -> None:
        if self._dispatcher is not None and workflow_name in self._workflows:
            self._dispatcher.wake()

    def _on_tasks_enqueued(self, names: set[str]) -> None:
        if self._pools is not None:
            for name in names:
                self._pools.wake(name)

    def _on_tasks_reported(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.wake()

    def _on_finished(self, runs: list[WorkflowInstanceInfo]) -> None:
        self._signal_finished()
        logged = _stdlib_log.isEnabledFor(logging.INFO)  # skips building records nobody reads
        for info in runs:
            if logged:
                self.log.info(
                    "workflow finished",
                    workflow=info.workflow_name,
                    instance=info.instance_name,
                    status=info.status.value,
                    error=info.error,
                )
            if self.config.on_workflow_complete is not None:
                try:
                    self.config.on_workflow_complete(info)
                except Exception as exc:
                    self.log.error("on_workflow_complete raised", error=describe_error(exc))

    # -- workflow instances -----------------------------------------------------------------

    def enqueue_workflow(
        self, workflow_name: str, instance_name: str, parameters: Any = None
    ) -> None:
        """Start a new instance. Raises :class:`WorkflowInstanceExistsError` while one with
        the same names is live, :class:`SerializationError` for non-JSON parameters.

        With ``eager_start``, a workflow this running manager handles has its ``on_start``
        run here, before this returns (see :class:`~cereal.config.ManagerConfig`)."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        params = encode(parameters, f"parameters of workflow {workflow_name!r}")
        with tracing.enqueue_span(workflow_name, instance_name) as span:
            handled = self._start_eagerly(workflow_name, instance_name, params, span.context)
            if handled is None:
                handled = self._enqueue_to_handler(
                    workflow_name, instance_name, params, span.context
                )
            inserted = (
                self.driver.enqueue_workflow(
                    workflow_name, instance_name, params, trace_context=span.context
                )
                if handled is None
                else handled
            )
            if not inserted:
                raise instance_exists(workflow_name, instance_name)
        if handled is None and self._dispatcher is not None and workflow_name in self._workflows:
            self._dispatcher.wake()

    def _enqueue_to_handler(
        self, workflow_name: str, instance_name: str, params: str | None, trace: str | None
    ) -> bool | None:
        """Enqueue an instance of a workflow this manager handles and hold it for an idle
        handler, which runs ``on_start`` at once (no wakeup, no claim): True once handed
        over, False if the pair is live. None: enqueue as usual (no idle handler, not this
        manager's workflow, not running, or a driver without ``enqueue_and_hold``)."""
        hold = getattr(self.driver, "enqueue_and_hold", None)
        dispatcher = self._running_dispatcher(workflow_name)
        if hold is None or dispatcher is None or not dispatcher.promise_handler():
            return None
        stack = ExitStack()
        try:
            batch = stack.enter_context(hold(workflow_name, instance_name, params, trace))
        except BaseException:
            dispatcher.break_promise()
            raise
        if batch is None or not batch.instances:
            stack.close()
            dispatcher.break_promise()
            return batch is not None
        dispatcher.hand_over(batch, stack.close)
        return True

    def _start_eagerly(
        self, workflow_name: str, instance_name: str, params: str | None, trace: str | None
    ) -> bool | None:
        """With ``eager_start``: insert the instance held, run ``on_start`` here and commit
        (True), or find the pair live (False). None: enqueue as usual (not eager, not this
        manager's workflow, not running, or the eager commit failed for good)."""
        hold = getattr(self.driver, "enqueue_held", None)
        dispatcher = self._running_dispatcher(workflow_name)
        if not self.config.eager_start or hold is None or dispatcher is None:
            return None
        with hold(workflow_name, instance_name, params, trace) as batch:
            if batch is None:
                return False
            return True if dispatcher.start_held(batch) else None

    def _running_dispatcher(self, workflow_name: str) -> WorkflowEventDispatcher | None:
        """The event dispatcher, while this manager runs and handles ``workflow_name``."""
        if self._state != "started" or workflow_name not in self._workflows:
            return None
        return self._dispatcher

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> None:
        """Deliver a cancel event to the executor's ``on_cancel``, which decides."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        if not self.driver.cancel_workflow(workflow_name, instance_name):
            raise _not_found(workflow_name, instance_name)

    def signal_workflow(
        self, workflow_name: str, instance_name: str, signal_name: str, payload: Any = None
    ) -> None:
        """Store a signal event for the live instance and wake its manager.

        The executor's ``on_signal`` gets it as a :class:`~cereal.types.SignalEvent`, in order
        with the instance's other events and never before ``on_start``. Raises
        :class:`~cereal.errors.WorkflowInstanceNotFoundError` when no instance is live,
        :class:`~cereal.errors.InvalidNameError` for a bad name and
        :class:`~cereal.errors.SerializationError` when ``payload`` is not JSON.
        """
        payload_json = signal_arguments(workflow_name, instance_name, signal_name, payload)
        if not self.driver.signal_workflow(workflow_name, instance_name, signal_name, payload_json):
            raise _not_found(workflow_name, instance_name)

    def kill_workflow(self, workflow_name: str, instance_name: str) -> None:
        """End a live instance at once as failed with error ``"killed"``, without calling
        its executor; queued tasks are dropped and running tasks told to stop."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        if not self.driver.kill_workflow(workflow_name, instance_name, KILLED):
            raise _not_found(workflow_name, instance_name)

    def get_workflow_instance(self, workflow_name: str, instance_name: str) -> WorkflowInstanceInfo:
        """The live instance if any, else the most recent finished run."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        info = self.driver.get_workflow_instance(workflow_name, instance_name)
        if info is None:
            raise _not_found(workflow_name, instance_name)
        return info

    def list_workflow_instances(
        self,
        *,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        """One row per ``(workflow_name, instance_name)``: the live instance, else its
        latest finished run. Each filter left as None matches everything.

        Without ``limit``: every matching row, by workflow and instance name. With ``limit``
        (1 to 10,000): at most that many rows, newest first (by ``started_at``,
        then workflow and instance name, descending); pass the last row's ``cursor`` as
        ``after`` for the next page. Rows added after the first page (new runs) are not
        returned by later pages; a live instance that finishes keeps its place.
        """
        wanted = check_list_filters(workflow_name, instance_name, is_running, status, limit, after)
        return self.driver.list_workflow_instances(
            workflow_name, instance_name, is_running, wanted, limit, after
        )

    def enqueue_workflows(self, items: Iterable[tuple[str, str, Any]]) -> list[tuple[str, str]]:
        """Start many instances in one round trip. ``items`` are ``(workflow_name,
        instance_name, parameters)``; returns the pairs that were not enqueued because a
        live instance existed (or the pair came earlier in ``items``), in the order given.
        Bad names or non-JSON parameters raise before anything is written."""
        rows = enqueue_items(items)
        if not rows:
            return []
        with tracing.bulk_enqueue_span(rows) as span:
            skipped = self.driver.enqueue_workflows(rows, trace_context=span.context)
        if self._dispatcher is not None and any(r[0] in self._workflows for r in rows):
            self._dispatcher.wake()
        return skipped

    def await_workflow(
        self, workflow_name: str, instance_name: str, timeout: float | None = None
    ) -> WorkflowInstanceInfo:
        """Block until the instance has finished and return its final state.

        Raises :class:`TimeoutError` after ``timeout`` seconds and
        :class:`WorkflowInstanceNotFoundError` if no such instance was ever enqueued.
        """
        timeout = wait_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            with self._finished:
                seq = self._finish_seq
            info = self.get_workflow_instance(workflow_name, instance_name)
            if not info.is_running:
                return info
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise await_timed_out(workflow_name, instance_name, timeout)
            wait = pause if left is None else min(pause, left)
            with self._finished:
                if self._finish_seq == seq:
                    self._finished.wait(wait)
            pause = min(pause * 2, 0.5 if self._state == "started" else 0.25)

    # -- late configuration --------------------------------------------------------------------

    def configure(
        self, *, scheduler: bool | None = None, workflow_workers: int | None = None
    ) -> None:
        """Change run options of a manager that is built but not started (as the ``cereal
        worker`` command does with ``--no-scheduler`` and ``--workflow-workers``). Each
        option left as None keeps its value. Raises :class:`ManagerStateError` after
        :meth:`start` and :class:`CerealError` for a bad value."""
        self._require_new("configure()")
        changes: dict[str, Any] = {}
        if scheduler is not None:
            changes["scheduler"] = flag("scheduler", scheduler)
        if workflow_workers is not None:
            changes["workflow_workers"] = count("workflow_workers", workflow_workers)
        self.config = dataclasses.replace(self.config, **changes)

    # -- async client ------------------------------------------------------------------------

    _aio: AsyncManagerClient | None = None

    @property
    def aio(self) -> AsyncManagerClient:
        """The instance and schedule operations as coroutines that never block the event
        loop (same names, arguments and errors). Closed by :meth:`stop`, usable without
        :meth:`start`."""
        if self._aio is None:
            from cereal.aio import AsyncManagerClient

            self._aio = AsyncManagerClient.for_driver(self.driver)
        return self._aio
