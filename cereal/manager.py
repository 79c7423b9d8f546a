"""The :class:`Manager`: registration, lifecycle, and every workflow-instance operation."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cereal.backends.postgres.driver import PostgresDriver
from cereal.checks import (
    KILLED,
    MAX_SECONDS,
    await_timed_out,
    check_list_filters,
    enqueue_items,
    instance_exists,
    wait_timeout,
)
from cereal.checks import instance_not_found as _not_found
from cereal.checks import timeout_seconds as _timeout
from cereal.codec import check_name, describe_error, encode
from cereal.errors import (
    CerealError,
    InvalidExecutorError,
    ManagerStateError,
)
from cereal.event_loop import WorkflowEventLoop
from cereal.executors import TaskExecutor, TaskFunction, WorkflowExecutor, task_callable
from cereal.logging import get_logger
from cereal.schedules import ScheduleOperations
from cereal.services.heartbeat import Heartbeat, LostTaskReaper
from cereal.services.pruner import HistoryPruner
from cereal.task_pool import TaskPools, TaskRegistration
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.aio import AsyncManagerClient

__all__ = ["Manager"]

log = get_logger("cereal.manager")


def _positive(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_SECONDS  # also rejects NaN and infinities
    ):
        raise CerealError(
            f"{name} must be a positive number of seconds (at most {MAX_SECONDS:g}), got {value!r}"
        )
    return float(value)


class Manager(ScheduleOperations):
    """Runs registered workflow and task executors against a database.

    Options (times in seconds): ``workflow_poll_interval`` (5), ``task_poll_interval`` (5),
    ``workflow_workers`` (4 concurrent event handlers), ``heartbeat_interval`` (5),
    ``lost_task_timeout`` (30, silence after which a running task is reported ``LOST``),
    ``scheduler`` (True: run the schedule loop here), ``on_workflow_complete`` (called with
    the :class:`WorkflowInstanceInfo` of each run this manager finishes), ``event_batch_size``
    (32 instances claimed per transaction), ``history_max_age`` (30 days; None keeps runs
    forever) and ``history_max_runs`` (None) for the retention of finished runs, pruned every
    ``history_prune_interval`` (60). Polling is only a fallback: LISTEN/NOTIFY wakes
    the right loop as soon as any process enqueues, completes, cancels or kills.

    Instance and schedule operations work without :meth:`start`.
    """

    def __init__(
        self,
        driver: PostgresDriver | None = None,
        *,
        workflow_poll_interval: float = 5.0,
        task_poll_interval: float = 5.0,
        workflow_workers: int = 4,
        heartbeat_interval: float = 5.0,
        lost_task_timeout: float = 30.0,
        scheduler: bool = True,
        on_workflow_complete: Callable[[WorkflowInstanceInfo], Any] | None = None,
        event_batch_size: int = 32,
        history_max_age: float | None = 30 * 86400.0,
        history_max_runs: int | None = None,
        history_prune_interval: float = 60.0,
        close_driver: bool | None = None,
        **options: Any,
    ) -> None:
        if options:
            raise CerealError(f"unknown Manager option(s): {', '.join(sorted(options))}")
        if driver is not None and not isinstance(driver, PostgresDriver):
            raise CerealError(f"driver must be a PostgresDriver, got {type(driver).__name__}")
        self._owns_driver = driver is None if close_driver is None else close_driver
        self.driver = driver if driver is not None else PostgresDriver()
        self._workflow_poll = _positive("workflow_poll_interval", workflow_poll_interval)
        self._task_poll = _positive("task_poll_interval", task_poll_interval)
        self._heartbeat_interval = _positive("heartbeat_interval", heartbeat_interval)
        self._lost_task_timeout = _positive("lost_task_timeout", lost_task_timeout)
        assert self._heartbeat_interval and self._lost_task_timeout
        if self._lost_task_timeout <= self._heartbeat_interval:
            raise CerealError(
                f"lost_task_timeout ({lost_task_timeout!r}) must be longer than "
                f"heartbeat_interval ({heartbeat_interval!r})"
            )
        for name, count in (
            ("workflow_workers", workflow_workers),
            ("event_batch_size", event_batch_size),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise CerealError(f"{name} must be a positive int, got {count!r}")
        if on_workflow_complete is not None and not callable(on_workflow_complete):
            raise CerealError("on_workflow_complete must be callable")
        self._history_max_age = _positive("history_max_age", history_max_age, allow_none=True)
        if history_max_runs is not None and (
            isinstance(history_max_runs, bool)
            or not isinstance(history_max_runs, int)
            or history_max_runs < 0
        ):
            raise CerealError(
                f"history_max_runs must be a non-negative int or None, got {history_max_runs!r}"
            )
        self._history_max_runs = history_max_runs
        self._prune_interval = _positive("history_prune_interval", history_prune_interval)
        self._workflow_workers = workflow_workers
        self._event_batch_size = event_batch_size
        self._run_scheduler = bool(scheduler)
        self._on_complete = on_workflow_complete
        self._workflows: dict[str, WorkflowExecutor] = {}
        self._tasks: dict[str, TaskRegistration] = {}
        self._state = "new"
        self._state_lock = threading.Lock()
        self._finished = threading.Condition()
        self._finish_seq = 0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._services: list[Any] = []
        self._event_loop: WorkflowEventLoop | None = None
        self._pools: TaskPools | None = None
        self._listener: Any = None
        self._scheduler: Any = None
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
    ) -> None:
        """Run tasks named ``task_name`` with ``executor``: an object with ``run(task)`` or
        a function of a :class:`Task`, sync or ``async``. At most ``workers`` run at once in
        this process; ``timeout`` (seconds) fails a task that runs longer."""
        self._require_new("register_task_executor")
        check_name("task_name", task_name)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise CerealError(f"workers must be a positive int, got {workers!r}")
        seconds = _positive("timeout", timeout, allow_none=True)
        self._tasks[task_name] = TaskRegistration(
            task_name, task_callable(executor), workers, seconds
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the event loop, task pools and background services; returns at once."""
        with self._state_lock:
            if self._state != "new":
                raise ManagerStateError(
                    "start() can be called only once"
                    if self._state == "started"
                    else "a stopped manager cannot be restarted"
                )
            self._state = "started"
        self.driver.open()
        self._pools = TaskPools(
            self.driver,
            self._tasks,
            owner=self.owner,
            poll_interval=self._task_poll or 5.0,
            on_reported=self._on_tasks_reported,
        )
        self._event_loop = WorkflowEventLoop(
            self.driver,
            self._workflows,
            workers=self._workflow_workers,
            poll_interval=self._workflow_poll or 5.0,
            on_finished=self._on_finished,
            on_tasks_enqueued=self._on_tasks_enqueued,
            batch_size=self._event_batch_size,
        )
        self._listener = self.driver.listener(self._on_notify, self._wake_all)
        self._services = [
            Heartbeat(self.driver, self._pools, self.owner, self._heartbeat_interval or 5.0),
            LostTaskReaper(self.driver, self._lost_task_timeout or 30.0),
            HistoryPruner(
                self.driver,
                max_age=self._history_max_age,
                max_runs=self._history_max_runs,
                interval=self._prune_interval or 60.0,
            ),
        ]
        if self._run_scheduler:
            self._scheduler = self._make_scheduler()
            if self._scheduler is not None:
                self._services.append(self._scheduler)
        self._listener.start()
        self._pools.start()
        self._event_loop.start()
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
        timeout = _timeout(timeout)
        with self._state_lock:
            was, self._state = self._state, "stopped"
        if was == "started":
            deadline = None if timeout is None else time.monotonic() + timeout

            def left() -> float | None:
                return None if deadline is None else max(0.0, deadline - time.monotonic())

            if self._event_loop is not None:
                self._event_loop.stop(left())
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

    def _on_notify(self, payload: str) -> None:
        kind, rest = payload[:1], payload[1:]
        if kind == "e":
            if rest in self._workflows and self._event_loop is not None:
                self._event_loop.wake()
        elif kind == "t":
            if self._pools is not None:
                self._pools.wake(rest)
        elif kind == "f":
            if self._pools is not None and rest.isdigit():
                self._pools.cancel_instance(int(rest))
            self._signal_finished()
        elif kind == "s" and self._scheduler is not None:
            self._scheduler.wake()

    def _wake_all(self) -> None:
        if self._event_loop is not None:
            self._event_loop.wake()
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
        if self._event_loop is not None and workflow_name in self._workflows:
            self._event_loop.wake()

    def _on_tasks_enqueued(self, names: set[str]) -> None:
        if self._pools is not None:
            for name in names:
                self._pools.wake(name)

    def _on_tasks_reported(self) -> None:
        if self._event_loop is not None:
            self._event_loop.wake()

    def _on_finished(self, runs: list[WorkflowInstanceInfo]) -> None:
        self._signal_finished()
        for info in runs:
            self.log.info(
                "workflow finished",
                workflow=info.workflow_name,
                instance=info.instance_name,
                status=info.status.value,
                error=info.error,
            )
            if self._on_complete is not None:
                try:
                    self._on_complete(info)
                except Exception as exc:
                    self.log.error("on_workflow_complete raised", error=describe_error(exc))

    # -- workflow instances -----------------------------------------------------------------

    def enqueue_workflow(
        self, workflow_name: str, instance_name: str, parameters: Any = None
    ) -> None:
        """Start a new instance. Raises :class:`WorkflowInstanceExistsError` while one with
        the same names is live, :class:`SerializationError` for non-JSON parameters."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        params = encode(parameters, f"parameters of workflow {workflow_name!r}")
        if not self.driver.enqueue_workflow(workflow_name, instance_name, params):
            raise instance_exists(workflow_name, instance_name)
        if self._event_loop is not None and workflow_name in self._workflows:
            self._event_loop.wake()

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> None:
        """Deliver a cancel event to the executor's ``on_cancel``, which decides."""
        check_name("workflow_name", workflow_name)
        check_name("instance_name", instance_name)
        if not self.driver.cancel_workflow(workflow_name, instance_name):
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
        skipped = self.driver.enqueue_workflows(rows)
        if self._event_loop is not None and any(r[0] in self._workflows for r in rows):
            self._event_loop.wake()
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
        if scheduler is not None:
            if not isinstance(scheduler, bool):
                raise CerealError(f"scheduler must be a bool, got {scheduler!r}")
            self._run_scheduler = scheduler
        if workflow_workers is not None:
            if (
                isinstance(workflow_workers, bool)
                or not isinstance(workflow_workers, int)
                or workflow_workers < 1
            ):
                raise CerealError(
                    f"workflow_workers must be a positive int, got {workflow_workers!r}"
                )
            self._workflow_workers = workflow_workers

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
