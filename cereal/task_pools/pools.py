"""The task pools of one manager: claimed tasks from claim to report."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cereal import instrumentation, tracing
from cereal.codec import describe_error, try_encode
from cereal.driver import ClaimedTask, Driver, TaskClaim, TaskOutcome
from cereal.errors import DatabaseError
from cereal.logging import get_logger
from cereal.task_pools.claimer import Claimer
from cereal.task_pools.runners import AsyncRunner, SyncRunners
from cereal.task_pools.state import Claim, TaskRegistration, TaskState
from cereal.task_pools.watchdog import TimeoutWatchdog
from cereal.task_pools.writer import ResultWriter
from cereal.types import Task, TaskStatus

__all__ = ["PREFETCH_BELOW", "PREFETCH_FACTOR", "PREFETCH_MAX", "TaskPools"]

log = get_logger("cereal.tasks")

PREFETCH_BELOW = 0.05
"""Claim ahead for a sync task name while its runs average less than this (seconds)."""
PREFETCH_FACTOR = 3
"""How many tasks per worker to claim ahead at least (at most PREFETCH_FACTOR *
PREFETCH_BELOW seconds of queued work per worker)."""
PREFETCH_MAX = 128
"""Shorter runs are claimed further ahead, as many as fit in those seconds of queued work per
worker, up to this many per task name (or PREFETCH_FACTOR per worker, if more): one worker
running millisecond tasks then takes them a hundred at a time, not three, and a claim's fixed
cost is shared by that many. What waits stays within those seconds of work (128 runs of
1 ms at most for one worker); it is also what a crash of the process leaves to be reported
lost without having started."""


class TaskPools:
    """Every task executor of one manager, sharing one claimer, writer and watchdog.

    Tracks each claimed task's :class:`TaskState` and how many of each name are busy, which
    decides how many to claim (prefetching short sync tasks).
    """

    def __init__(
        self,
        driver: Driver,
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
        self._on_reported = on_reported
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = dict.fromkeys(registrations, 0)
        # Slots promised to a commit that claims the tasks it inserts (see reserve()).
        self._reserved = dict.fromkeys(registrations, 0)
        # Names whose last claim took all it asked for, or whose commit found older tasks
        # waiting: more are probably queued, which a commit would not claim.
        self._backlog = dict.fromkeys(registrations, False)
        # Names a claim passed over for want of a free worker: the wake that started it may
        # have been for their tasks, so the next worker of theirs to free up claims again.
        # (Otherwise a finished task wakes the claimer only for a backlog.)
        self._unserved: set[str] = set()
        # Recent run time per sync task name (None until one finished): decides prefetching.
        self._run_time: dict[str, float | None] = dict.fromkeys(registrations)
        self._claims: dict[int, Claim] = {}
        self._claims_of: Counter[int] = Counter()  # claims kept per instance id
        self._uncertain_at: float | None = None  # see claims_uncertain()
        self._given_up: dict[int, float] = {}  # task id -> when its outcome was given up
        self._sync = SyncRunners(registrations)
        self._async = AsyncRunner() if any(reg.is_async for reg in registrations.values()) else None
        self._retries = {n: r.retry for n, r in registrations.items() if r.retry is not None}
        self._claimer = Claimer(
            driver,
            owner,
            poll_interval=poll_interval,
            capacity=self._capacities,
            dispatch=self._dispatch,
            retries=self._retries,
            claimed=self._claimed,
            release=self._release_capacity,
            uncertain=self.claims_uncertain,
        )
        self._writer = ResultWriter(
            driver, owner, self._written, on_given_up=self._results_given_up, max_batch=write_batch
        )
        self._handover: Callable[[TaskOutcome], bool] | None = None
        self._watchdog = TimeoutWatchdog(self._expired)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._async is not None:
            self._async.start()
        self._claimer.start()
        self._writer.start()
        self._watchdog.start()

    def stop(self, timeout: float | None) -> None:
        """Stop claiming, tell running tasks to stop, wait for them, write their results."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left(least: float = 0.0) -> float | None:
            return None if deadline is None else max(least, deadline - time.monotonic())

        with self._cond:
            self._stopping = True
            waiting = self._drop_unstarted(set(self._claims))
            for claim in self._claims.values():
                claim.task.cancelled.set()
        self._claimer.stop()
        self._watchdog.stop()
        # A claim in flight commits tasks to this process: let the claimer hand them to the
        # executors before these shut down, so that they run and report like the others.
        self._claimer.join(left())
        with self._cond:  # and hand back what that claim prefetched, unrun
            waiting += self._drop_unstarted(set(self._claims))
        self._sync.shutdown()
        if waiting:
            self._release(waiting)
        with self._cond:
            while any(self._busy.values()):
                wait = left()
                if wait is not None and wait <= 0:
                    break
                self._cond.wait(wait)
            abandoned = sum(self._busy.values())
        if abandoned:
            log.warning("tasks still running at stop; they will be reported lost", count=abandoned)
        self._writer.close()
        if self._async is not None:
            self._async.stop()
        self._writer.join(left(0.1))
        self._writer.abandon()  # out of time: commit nothing more after stop returns
        self._watchdog.join(left(0.1))
        if self._async is not None:
            self._async.join(left(0.1))

    def hand_results_to(self, take: Callable[[TaskOutcome], bool]) -> None:
        """Offer each finished task's outcome to ``take`` first (the workflow handlers, which
        record it and handle its event at once); the writer records those it declines and
        those given back through :meth:`record_results`."""
        self._handover = take

    def record_results(self, outcomes: list[TaskOutcome]) -> None:
        """Record these outcomes through the writer (the handlers gave them back)."""
        for outcome in outcomes:
            self._writer.put(outcome)

    def results_recorded(self, outcomes: list[TaskOutcome]) -> None:
        """The handlers recorded these outcomes (they need no wakeup: the handlers hold
        their instances)."""
        self._written(outcomes, wake=False)

    # -- signals from other parts ------------------------------------------------------------

    def wake(self, task_name: str | None = None) -> None:
        """Claim again soon (a task of ``task_name`` was enqueued or a slot freed)."""
        if task_name is None or task_name in self._regs:
            self._claimer.wake()

    def unreported(self) -> list[int]:
        """Ids of claimed tasks whose outcome is not yet recorded (for heartbeats)."""
        with self._cond:
            return [tid for tid, c in self._claims.items() if c.state is not TaskState.REPORTED]

    def claims_uncertain(self) -> None:
        """A claim failed in a way that may have committed (a lost connection during
        COMMIT): tasks may be running for this process that it never heard of."""
        with self._cond:
            self._uncertain_at = time.monotonic()

    def claims_uncertain_within(self, seconds: float) -> bool:
        """Did a claim fail that way in the last ``seconds``?"""
        with self._cond:
            at = self._uncertain_at
        return at is not None and time.monotonic() - at <= seconds

    def given_up_within(self, seconds: float) -> list[int]:
        """Ids of tasks whose outcome the writer gave up on in the last ``seconds``. Their
        rows still run for this process, unheartbeated, until the lost-task reaper reports
        them: they are known claims, not ones to put back in the queue."""
        horizon = time.monotonic() - seconds
        with self._cond:
            for tid in [tid for tid, at in self._given_up.items() if at < horizon]:
                del self._given_up[tid]
            return list(self._given_up)

    def _results_given_up(self, task_ids: list[int]) -> None:
        now = time.monotonic()
        with self._cond:
            self._given_up.update(dict.fromkeys(task_ids, now))

    def forget(self, task_ids: Iterable[int], reason: str) -> None:
        """The rows of these tasks are gone: stop them and discard their results."""
        task_ids = set(task_ids)
        with self._cond:
            self._drop_unstarted(task_ids)
            claims = [c for c in map(self._pop_claim, task_ids) if c is not None]
            for claim in claims:
                claim.state = TaskState.REPORTED
        for claim in claims:
            log.info(
                "task stopped",
                task=claim.task.name,
                task_id=claim.claimed.id,
                reason=reason,
                workflow=claim.task.workflow_name,
                instance=claim.task.instance_name,
            )
            self._cancel(claim)

    def confirm_gone(self, task_ids: Iterable[int], reason: str) -> None:
        """Stop those of these tasks whose rows the database confirms are gone."""
        ids = set(task_ids)
        if not ids:
            return
        try:
            alive = self._driver.heartbeat_tasks(sorted(ids), self._owner)
        except DatabaseError as exc:  # the next heartbeat finds them
            log.warning("could not check on tasks", error=repr(exc), count=len(ids))
            return
        gone = ids - alive
        if gone:
            # A task reported between the snapshot and the check is gone too; that's fine.
            self.forget(gone & set(self.unreported()), reason)

    def instance_finished(self, instance_id: int) -> None:
        """The instance may have finished: stop its tasks still running once the database
        confirms that their rows are gone. (A task whose outcome is decided has nothing left
        to stop: its outcome is discarded when it is recorded.)"""
        with self._cond:
            if not self._claims_of.get(instance_id):
                return
            ids = [
                t
                for t, c in self._claims.items()
                if c.claimed.instance_id == instance_id and c.state.active
            ]
        self.confirm_gone(ids, "workflow finished")

    def _put_claim(self, claim: Claim) -> None:
        """Keep ``claim`` (lock held)."""
        self._claims[claim.claimed.id] = claim
        self._claims_of[claim.claimed.instance_id] += 1

    def _pop_claim(self, task_id: int) -> Claim | None:
        """Drop the claim of ``task_id``, if kept (lock held); return it."""
        claim = self._claims.pop(task_id, None)
        if claim is not None:
            iid = claim.claimed.instance_id
            self._claims_of[iid] -= 1
            if not self._claims_of[iid]:
                del self._claims_of[iid]
        return claim

    def _drop_unstarted(self, task_ids: set[int]) -> list[int]:
        """Take claimed tasks that have not started out of the pool (lock held); they will
        never run here. Return their ids."""
        dropped = []
        for tid in task_ids:
            claim = self._claims.get(tid)
            if claim is None or claim.state is not TaskState.CLAIMED:
                continue
            claim.state = TaskState.REPORTED
            self._pop_claim(tid)
            self._busy[claim.task.name] -= 1
            dropped.append(tid)
        if dropped:
            self._cond.notify_all()
        return dropped

    def _release(self, task_ids: list[int]) -> None:
        try:
            self._driver.release_tasks(task_ids, self._owner)
        except Exception as exc:  # they are reported lost after the lost-task timeout
            log.warning("could not hand back unstarted tasks", error=repr(exc), count=len(task_ids))

    # -- tasks claimed by workflow commits -----------------------------------------------------

    def reserve(self, wanted: Mapping[str, int]) -> TaskClaim | None:
        """Promise free workers to tasks a workflow commit is about to insert (``wanted``:
        how many of each name are due now), so that the commit can claim them for this
        process; None when no worker is free (or the pools are stopping). Names with a
        backlog are left to the claimer: the commit could not claim their new tasks ahead of
        older ones, and a reservation would only keep the claimer from those meanwhile.

        The slots count as taken until :meth:`adopt` gets the tasks the commit claimed,
        which must follow, even when the commit fails (with no tasks)."""
        with self._cond:
            if self._stopping:
                return None
            limits: dict[str, int] = {}
            for name, n in wanted.items():
                if name in self._regs and not self._backlog[name]:
                    k = min(n, self._capacity(name))
                    if k > 0:
                        self._reserved[name] += k
                        limits[name] = k
        if not limits:
            return None
        return TaskClaim(self._owner, limits, self._retries)

    def adopt(
        self, claim: TaskClaim, claimed: Sequence[ClaimedTask], committed: bool = True
    ) -> None:
        """Run the tasks a commit claimed with the slots of :meth:`reserve`, and free the
        slots it did not use (all of them when the commit failed: ``committed`` False; it
        may have committed unseen, see :meth:`claims_uncertain`). Tasks that can no longer
        run here go back to the queue."""
        if not committed:
            self.claims_uncertain()
        unused = dict(claim.limits)
        for row in claimed:
            unused[row.task_name] -= 1
        runnable = [row for row in claimed if not self._unrunnable(row)]
        prepared = [self._prepare(row) for row in runnable]
        back: list[int] = []
        with self._cond:
            for name, k in claim.limits.items():
                self._reserved[name] -= k
                if unused[name] and committed:
                    self._backlog[name] = True  # older tasks of the name were due
            if self._stopping:
                back = [row.id for row in runnable]
            else:
                # Registered with the stopping check: stop() finds them (and hands back
                # those that have not started) whenever it comes.
                for _, c, _ in prepared:
                    self._busy[c.task.name] += 1
                    self._put_claim(c)
            self._cond.notify_all()
        if back:
            self._release(back)
        else:
            for reg, c, run_async in prepared:
                self._start(reg, c, run_async)
        if any(unused.values()):
            self._claimer.wake()

    # -- claiming ------------------------------------------------------------------------------

    def _capacities(self) -> dict[str, int]:
        """How many tasks of each name to claim now. The slots are reserved for the claim
        until :meth:`_claimed` or :meth:`_release_capacity` returns them: a workflow commit
        claiming meanwhile (:meth:`reserve`) cannot be promised the same ones."""
        with self._cond:
            limits = {name: self._capacity(name) for name in self._busy}
            for name, k in limits.items():
                self._reserved[name] += k
            return limits

    def _release_capacity(self, limits: Mapping[str, int]) -> None:
        """The claim for ``limits`` was not made (or failed): its slots are free again, and
        the tasks it was woken for may still be queued (see :meth:`_claimed`)."""
        with self._cond:
            for name, k in limits.items():
                self._reserved[name] -= k
                self._unserved.add(name)
            self._cond.notify_all()

    def _capacity(self, name: str) -> int:
        reg = self._regs[name]
        limit = reg.workers
        recent = self._run_time[name]
        ahead = 0
        if recent is not None and recent < PREFETCH_BELOW and name in self._sync:
            ahead = PREFETCH_FACTOR * reg.workers
            fit = int(PREFETCH_FACTOR * PREFETCH_BELOW * reg.workers / max(recent, 1e-6))
            ahead = max(ahead, min(fit, PREFETCH_MAX))
        free = limit + ahead - self._busy[name] - self._reserved[name]
        # Claiming ahead, claim again once half of what waits is used, not after each run:
        # a claim then takes several tasks. A worker never idles for it: while one is idle,
        # nothing waits and more than half the claim-ahead slots are free.
        return free if free > ahead // 2 else 0

    def _claimed(self, limits: dict[str, int], rows: list[ClaimedTask]) -> None:
        """The claimer took ``rows`` for ``limits``: the runnable ones count as busy from now
        (their slots pass from reserved to busy at once), and a name that got all it asked
        for probably has more queued."""
        got = Counter(row.task_name for row in rows)
        with self._cond:
            for name, limit in limits.items():
                self._reserved[name] -= limit
                if limit > 0:
                    self._backlog[name] = got[name] >= limit
                    self._unserved.discard(name)
                else:
                    self._unserved.add(name)
            for row in rows:
                if row.problem is None:
                    self._busy[row.task_name] += 1
            self._cond.notify_all()

    def _dispatch(self, row: ClaimedTask) -> None:
        """Run a task of the claimer's (already counted busy by :meth:`_claimed`)."""
        if self._unrunnable(row):
            return
        reg, claim, run_async = self._prepare(row)
        with self._cond:
            self._put_claim(claim)
        self._start(reg, claim, run_async)

    def _unrunnable(self, row: ClaimedTask) -> bool:
        """Report a task whose parameters cannot be decoded as failed, at once."""
        if row.problem is None:
            return False
        log.error(
            "task cannot be run; reporting it failed",
            task=row.task_name,
            task_id=row.id,
            workflow=row.workflow_name,
            instance=row.instance_name,
            error=row.problem,
        )
        instrumentation.task_finished(row.task_name, TaskStatus.FAILED.value, 0.0)
        self._writer.put(
            TaskOutcome(row.id, row.workflow_name, TaskStatus.FAILED.value, error=row.problem)
        )
        return True

    def _prepare(self, row: ClaimedTask) -> tuple[TaskRegistration, Claim, bool]:
        reg = self._regs[row.task_name]
        run_async = reg.is_async and self._async is not None
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
            attempt=row.attempt,
        )
        state = TaskState.RUNNING if run_async else TaskState.CLAIMED
        return reg, Claim(task, row, state), run_async

    def _start(self, reg: TaskRegistration, claim: Claim, run_async: bool) -> None:
        """Hand a registered claim to its executor."""
        row = claim.claimed
        if reg.timeout is not None and run_async:
            self._watchdog.watch(row.id, reg.timeout)
        if self._stopping:
            claim.task.cancelled.set()
        try:
            if run_async and self._async is not None:
                claim.future = self._async.submit(self._run_async(reg, claim))
            else:
                self._sync.submit(row.task_name, lambda: self._run_sync(reg, claim))
        except RuntimeError:  # shut down: stop() gave up waiting for this claim
            with self._cond:
                if self._claims.get(row.id) is claim:  # not handed back by stop() meanwhile
                    self._pop_claim(row.id)
                    self._busy[row.task_name] -= 1
                    self._cond.notify_all()
            log.warning("task claimed while stopping; it will be reported lost", task_id=row.id)

    # -- running ---------------------------------------------------------------------------------

    def _run_sync(self, reg: TaskRegistration, claim: Claim) -> None:
        with self._cond:
            if claim.state is not TaskState.CLAIMED:  # dropped, or its workflow finished
                return
            claim.state = TaskState.RUNNING
            if reg.timeout is not None:
                claim.task.deadline = datetime.now(UTC) + timedelta(seconds=reg.timeout)
        if reg.timeout is not None:
            self._watchdog.watch(claim.claimed.id, reg.timeout)
        began = time.monotonic()
        with self._span(claim) as span:
            claim.began = time.perf_counter()
            try:
                value = reg.fn(claim.task)
                if inspect.isawaitable(value):
                    value = asyncio.run(_await(value))
            except BaseException as exc:  # a task must never take its worker down
                self._finish(claim, error=exc, took=time.monotonic() - began, span=span)
            else:
                self._finish(claim, value=value, took=time.monotonic() - began, span=span)

    async def _run_async(self, reg: TaskRegistration, claim: Claim) -> None:
        with self._span(claim) as span:
            claim.began = time.perf_counter()
            try:
                value = await reg.fn(claim.task)
            except BaseException as exc:  # includes CancelledError after a timeout
                self._finish(claim, error=exc, span=span)
            else:
                self._finish(claim, value=value, span=span)

    @staticmethod
    def _span(claim: Claim) -> tracing.Span:
        row = claim.claimed
        return tracing.task_span(
            row.task_name, row.workflow_name, row.instance_name, row.trace_context
        )

    @staticmethod
    def _report(claim: Claim, outcome: TaskOutcome, span: tracing.Span | None = None) -> None:
        """Tell the observers (and the run's span) how a task run ended."""
        seconds = 0.0 if claim.began is None else time.perf_counter() - claim.began
        instrumentation.task_finished(claim.task.name, outcome.status, seconds)
        if span is not None:
            span.finish(outcome.status, outcome.error)

    def _finish(
        self,
        claim: Claim,
        *,
        value: Any = None,
        error: BaseException | None = None,
        took: float | None = None,
        span: tracing.Span | None = None,
    ) -> None:
        with self._cond:
            self._busy[claim.task.name] -= 1
            if took is not None:
                recent = self._run_time[claim.task.name]
                if recent is not None:
                    took = 0.8 * recent + 0.2 * took
                self._run_time[claim.task.name] = took
            self._cond.notify_all()
            first = claim.state.active
            if first:
                claim.state = TaskState.RESOLVED
            name = claim.task.name
            waiting = self._backlog[name] or name in self._unserved
        if waiting:  # the freed worker can take a queued task; otherwise wakes bring new ones
            self._claimer.wake()
        if not first:
            return
        if error is not None:
            outcome = TaskOutcome(
                claim.claimed.id,
                claim.task.workflow_name,
                TaskStatus.FAILED.value,
                error=describe_error(error),
                retry=_has_attempts_left(claim.claimed),
            )
        else:
            text, err = try_encode(value, f"result of task {claim.task.name!r}")
            status = TaskStatus.SUCCESS if err is None else TaskStatus.FAILED
            outcome = TaskOutcome(
                claim.claimed.id,
                claim.task.workflow_name,
                status.value,
                error=err,
                result_json=text,
            )
        self._report(claim, outcome, span)
        self._record(outcome)

    def _cancel(self, claim: Claim) -> None:
        claim.task.cancelled.set()
        if claim.future is not None:
            claim.future.cancel()

    def _expired(self, task_id: int) -> None:
        """The watchdog says ``task_id`` ran out of time."""
        with self._cond:
            claim = self._claims.get(task_id)
            if claim is None or not claim.state.active:
                return
            claim.state = TaskState.RESOLVED
        self._cancel(claim)
        reg = self._regs[claim.task.name]
        log.warning(
            "task timed out",
            task=claim.task.name,
            task_id=claim.claimed.id,
            workflow=claim.task.workflow_name,
            instance=claim.task.instance_name,
        )
        outcome = TaskOutcome(
            claim.claimed.id,
            claim.task.workflow_name,
            TaskStatus.FAILED.value,
            error=f"TimeoutError: task {claim.task.name!r} did not finish within "
            f"its timeout of {reg.timeout:g}s",
            retry=_has_attempts_left(claim.claimed),
        )
        self._report(claim, outcome)
        self._record(outcome)

    # -- reporting -----------------------------------------------------------------------------

    def _record(self, outcome: TaskOutcome) -> None:
        take = self._handover
        if take is None or not take(outcome):
            self._writer.put(outcome)

    def _written(self, outcomes: list[TaskOutcome], *, wake: bool = True) -> None:
        retried = False
        with self._cond:
            for outcome in outcomes:
                retried = retried or outcome.retry
                claim = self._pop_claim(outcome.id)
                if claim is not None:
                    claim.state = TaskState.REPORTED
        if retried:  # learn when the next attempt is due
            self._claimer.wake()
        if wake:  # the handlers have events to handle
            self._on_reported()


def _has_attempts_left(row: ClaimedTask) -> bool:
    """May a failed attempt be retried? (The database decides, from the row.)"""
    return row.attempt < row.max_attempts


async def _await(value: Any) -> Any:
    return await value
