"""Task worker pools: claim tasks, run them, report their results.

One claimer thread claims due tasks for every registered name with free capacity in a single
round trip. Sync executors run in a thread pool per task name (``workers`` threads at most);
``async def`` executors run on one event loop thread. A writer thread records results in
batches, and a watchdog enforces timeouts.

Short sync tasks are claimed a little ahead: while their recent runs take under
``PREFETCH_BELOW`` seconds, up to ``PREFETCH_FACTOR * workers`` more than the free workers
are claimed, so the workers need not wait for a claim round trip between tasks and each
claim, result write and event batch carries more tasks. A claimed task that has not
started yet is heartbeated like a running one, its timeout starts when it starts, and at stop
it is handed back to the queue instead of being run.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import errors as pgerrors

from cereal.backends.postgres.driver import PostgresDriver, is_transient
from cereal.codec import describe_error, try_encode
from cereal.driver import ClaimedTask, TaskOutcome
from cereal.executors import TaskFunction
from cereal.logging import get_logger
from cereal.types import Task, TaskStatus

__all__ = ["TaskPools", "TaskRegistration"]

log = get_logger("cereal.tasks")

PREFETCH_BELOW = 0.05
"""Claim ahead for a sync task name while its runs average less than this (seconds)."""
PREFETCH_FACTOR = 3
"""How many tasks per worker to claim ahead (at most PREFETCH_FACTOR * PREFETCH_BELOW
seconds of queued work per worker)."""


@dataclass(frozen=True, slots=True)
class TaskRegistration:
    """A task executor registered under ``name``."""

    name: str
    fn: TaskFunction
    workers: int
    timeout: float | None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(
            getattr(self.fn, "__call__", None)  # noqa: B004
        )


@dataclass(eq=False)
class _Running:
    task: Task
    claimed: ClaimedTask
    resolved: bool = False
    reported: bool = False
    started: bool = False
    future: Future[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TaskPools:
    """Every task executor of one manager, sharing one claimer, writer and watchdog."""

    def __init__(
        self,
        driver: PostgresDriver,
        registrations: dict[str, TaskRegistration],
        *,
        owner: str,
        poll_interval: float,
        on_reported: Callable[[], None],
        write_batch: int = 500,
    ) -> None:
        self._driver = driver
        self._regs = registrations
        self._owner = owner
        self._poll_interval = poll_interval
        self._on_reported = on_reported
        self._write_batch = write_batch
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wanted = True
        self._stopping = False
        self._busy = dict.fromkeys(registrations, 0)
        # Recent run time per sync task name (None until one finished): decides prefetching.
        self._run_time: dict[str, float | None] = dict.fromkeys(registrations)
        self._running: dict[int, _Running] = {}
        self._outbox: queue.SimpleQueue[TaskOutcome | None] = queue.SimpleQueue()
        self._deadlines: list[tuple[float, int]] = []
        self._pools = {
            name: ThreadPoolExecutor(max_workers=reg.workers, thread_name_prefix=f"cereal-{name}")
            for name, reg in registrations.items()
            if not reg.is_async
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._claimer: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if any(reg.is_async for reg in self._regs.values()):
            self._loop = asyncio.new_event_loop()
            self._spawn("cereal-async-tasks", self._loop.run_forever)
        self._claimer = self._spawn("cereal-task-claimer", self._claim_loop)
        self._spawn("cereal-task-writer", self._write_loop)
        self._spawn("cereal-task-watchdog", self._watchdog_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def stop(self, timeout: float | None) -> None:
        """Stop claiming, tell running tasks to stop, wait for them, write their results."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            waiting = self._drop_unstarted(set(self._running))
            for run in self._running.values():
                run.task.cancelled.set()
            self._cond.notify_all()
        # A claim in flight commits tasks to this process: let the claimer hand them to the
        # executors before these shut down, so that they run and report like the others.
        if self._claimer is not None:
            self._claimer.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:  # and hand back what that claim prefetched, unrun
            waiting += self._drop_unstarted(set(self._running))
        for pool in self._pools.values():
            pool.shutdown(wait=False)
        if waiting:
            self._release(waiting)
        with self._cond:
            while any(self._busy.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            abandoned = sum(self._busy.values())
        if abandoned:
            log.warning("tasks still running at stop; they will be reported lost", count=abandoned)
        self._outbox.put(None)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            thread.join(left)

    # -- signals from other services ----------------------------------------------------------

    def wake(self, task_name: str | None = None) -> None:
        """Claim again soon (a task of ``task_name`` was enqueued or a slot freed)."""
        if task_name is not None and task_name not in self._regs:
            return
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def unreported(self) -> list[int]:
        """Ids of running tasks whose outcome is not yet recorded (for heartbeats)."""
        with self._lock:
            return [tid for tid, run in self._running.items() if not run.reported]

    def forget(self, task_ids: set[int], reason: str) -> None:
        """The rows of these tasks are gone: stop them and discard their results."""
        with self._lock:
            self._drop_unstarted(task_ids)
            runs = [self._running[t] for t in task_ids if t in self._running]
            for run in runs:
                run.resolved = True
                run.reported = True
                self._running.pop(run.claimed.id, None)
        for run in runs:
            log.info(
                "task stopped",
                task=run.task.name,
                task_id=run.claimed.id,
                reason=reason,
                workflow=run.task.workflow_name,
                instance=run.task.instance_name,
            )
            self._cancel(run)

    def cancel_instance(self, instance_id: int) -> None:
        """The workflow instance finished: stop its running tasks."""
        with self._lock:
            ids = {t for t, r in self._running.items() if r.claimed.instance_id == instance_id}
        if ids:
            self.forget(ids, "workflow finished")

    def _drop_unstarted(self, task_ids: set[int]) -> list[int]:
        """Take claimed tasks that have not started out of the pool (lock held); they will
        never run here. Return their ids."""
        dropped = []
        for tid in task_ids:
            run = self._running.get(tid)
            if run is None or run.started or run.resolved:
                continue
            run.resolved = True
            run.reported = True
            self._running.pop(tid)
            self._busy[run.task.name] -= 1
            dropped.append(tid)
        if dropped:
            self._cond.notify_all()
        return dropped

    def _release(self, task_ids: list[int]) -> None:
        try:
            self._driver.release_tasks(task_ids, self._owner)
        except Exception as exc:  # they are reported lost after the lost-task timeout
            log.warning("could not hand back unstarted tasks", error=repr(exc), count=len(task_ids))

    def _capacity(self, name: str) -> int:
        """How many tasks of ``name`` to claim now (lock held)."""
        reg = self._regs[name]
        limit = reg.workers
        recent = self._run_time[name]
        if recent is not None and recent < PREFETCH_BELOW and name in self._pools:
            limit += PREFETCH_FACTOR * reg.workers
        return limit - self._busy[name]

    # -- claiming ---------------------------------------------------------------------------

    def _claim_loop(self) -> None:
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
                limits = {n: self._capacity(n) for n in self._busy}
            if not any(v > 0 for v in limits.values()):
                continue
            try:
                claimed, due_in = self._driver.claim_tasks(limits, self._owner)
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(0.2 * 2**failures, 5.0)
                log.warning("claiming tasks failed; retrying", error=repr(exc), retry_in=delay)
                time.sleep(delay)
                self.wake()
                continue
            next_due = None if due_in is None else time.monotonic() + max(due_in, 0.0)
            for row in claimed:
                self._dispatch(row)
            if claimed:
                self.wake()

    def _dispatch(self, row: ClaimedTask) -> None:
        if row.problem is not None:
            log.error(
                "task cannot be run; reporting it failed",
                task=row.task_name,
                task_id=row.id,
                workflow=row.workflow_name,
                instance=row.instance_name,
                error=row.problem,
            )
            self._outbox.put(
                TaskOutcome(row.id, row.workflow_name, TaskStatus.FAILED.value, error=row.problem)
            )
            return
        reg = self._regs[row.task_name]
        run_async = reg.is_async and self._loop is not None
        deadline = None
        if reg.timeout is not None and run_async:
            deadline = datetime.now(UTC) + timedelta(seconds=reg.timeout)
        task = Task(
            name=row.task_name,
            parameters=row.parameters,
            enqueued_at=row.enqueued_at,
            workflow_name=row.workflow_name,
            instance_name=row.instance_name,
            deadline=deadline,
            id=row.id,
        )
        run = _Running(task, row, started=run_async)
        with self._cond:
            self._busy[row.task_name] += 1
            self._running[row.id] = run
            if reg.timeout is not None and run_async:
                heapq.heappush(self._deadlines, (time.monotonic() + reg.timeout, row.id))
                self._cond.notify_all()
        if self._stopping:
            task.cancelled.set()
        try:
            if run_async and self._loop is not None:
                run.future = asyncio.run_coroutine_threadsafe(self._run_async(reg, run), self._loop)
            else:
                self._pools[row.task_name].submit(self._run_sync, reg, run)
        except RuntimeError:  # shut down: stop() gave up waiting for this claim
            with self._cond:
                self._busy[row.task_name] -= 1
                self._running.pop(row.id, None)
                self._cond.notify_all()
            log.warning("task claimed while stopping; it will be reported lost", task_id=row.id)

    # -- running ----------------------------------------------------------------------------

    def _run_sync(self, reg: TaskRegistration, run: _Running) -> None:
        with self._cond:
            if run.resolved:  # dropped (or its workflow finished) before it started
                return
            run.started = True
            if reg.timeout is not None:
                run.task.deadline = datetime.now(UTC) + timedelta(seconds=reg.timeout)
                heapq.heappush(self._deadlines, (time.monotonic() + reg.timeout, run.claimed.id))
                self._cond.notify_all()
        began = time.monotonic()
        try:
            value = reg.fn(run.task)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
        except BaseException as exc:  # a task must never take its worker down
            self._finish(run, error=exc, took=time.monotonic() - began)
        else:
            self._finish(run, value=value, took=time.monotonic() - began)

    async def _run_async(self, reg: TaskRegistration, run: _Running) -> None:
        try:
            value = await reg.fn(run.task)
        except BaseException as exc:  # includes CancelledError after a timeout
            self._finish(run, error=exc)
        else:
            self._finish(run, value=value)

    def _finish(
        self,
        run: _Running,
        *,
        value: Any = None,
        error: BaseException | None = None,
        took: float | None = None,
    ) -> None:
        with self._cond:
            self._busy[run.task.name] -= 1
            if took is not None:
                recent = self._run_time[run.task.name]
                if recent is not None:
                    took = 0.8 * recent + 0.2 * took
                self._run_time[run.task.name] = took
            self._wanted = True
            self._cond.notify_all()
            first = not run.resolved
            run.resolved = True
        if not first:
            return
        if error is not None:
            outcome = TaskOutcome(
                run.claimed.id,
                run.task.workflow_name,
                TaskStatus.FAILED.value,
                error=describe_error(error),
            )
        else:
            text, err = try_encode(value, f"result of task {run.task.name!r}")
            status = TaskStatus.SUCCESS if err is None else TaskStatus.FAILED
            outcome = TaskOutcome(
                run.claimed.id, run.task.workflow_name, status.value, error=err, result_json=text
            )
        self._outbox.put(outcome)

    def _cancel(self, run: _Running) -> None:
        run.task.cancelled.set()
        if run.future is not None:
            run.future.cancel()

    # -- timeouts ---------------------------------------------------------------------------

    def _watchdog_loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                wait = None
                if self._deadlines:
                    wait = max(0.0, self._deadlines[0][0] - time.monotonic())
                    if wait == 0.0:
                        _, tid = heapq.heappop(self._deadlines)
                        run = self._running.get(tid)
                        if run is None or run.resolved:
                            continue
                        run.resolved = True
                    else:
                        run = None
                else:
                    run = None
                if run is None:
                    self._cond.wait(wait if wait is not None else 1.0)
                    continue
            self._cancel(run)
            reg = self._regs[run.task.name]
            log.warning(
                "task timed out",
                task=run.task.name,
                task_id=run.claimed.id,
                workflow=run.task.workflow_name,
                instance=run.task.instance_name,
            )
            self._outbox.put(
                TaskOutcome(
                    run.claimed.id,
                    run.task.workflow_name,
                    TaskStatus.FAILED.value,
                    error=f"TimeoutError: task {run.task.name!r} did not finish within "
                    f"its timeout of {reg.timeout:g}s",
                )
            )

    # -- reporting --------------------------------------------------------------------------

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._outbox.get()
            if first is None:
                stopping = True
                batch: list[TaskOutcome] = []
            else:
                batch = [first]
            while len(batch) < self._write_batch:
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)

    def _write(self, batch: list[TaskOutcome]) -> None:
        delay, permanent_failures = 0.1, 0
        while True:
            try:
                self._driver.complete_tasks(batch, self._owner)
                break
            except pgerrors.ForeignKeyViolation:
                if len(batch) == 1:
                    break  # its workflow finished meanwhile: the result is discarded
                for one in batch:
                    self._write([one])
                return
            except Exception as exc:
                if not is_transient(exc):
                    permanent_failures += 1
                    if permanent_failures >= 3:
                        # Give up: without heartbeats these tasks are reported lost.
                        log.error(
                            "cannot record task results",
                            error=repr(exc),
                            task_ids=[o.id for o in batch],
                        )
                        break
                log.warning(
                    "recording task results failed; retrying", error=repr(exc), retry_in=delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        with self._lock:
            for outcome in batch:
                run = self._running.pop(outcome.id, None)
                if run is not None:
                    run.reported = True
        self._on_reported()


async def _await(value: Any) -> Any:
    return await value
