"""Workflow-event dispatch: claim instances with pending events, run their callbacks,
commit the decisions.

``workers`` handler threads each claim a batch of instances (locked until commit), deliver
every instance's pending events in order, and commit all the outcomes in one transaction.
Events of one instance are never handled concurrently; different instances are.

Work of the same manager skips the claim. The task pools hand over finished tasks' outcomes
(:meth:`~WorkflowEventDispatcher.take_result`): a handler records them and locks their
instances in one round trip. ``enqueue_workflow`` hands over an instance it stored and locked
(:meth:`~WorkflowEventDispatcher.hand_over`) to a handler it found idle. Either way the work is
committed before the lock is taken, so a failure anywhere leaves an ordinary pending event.
Besides the ``workers`` handlers, :data:`HANDOVER_SPARES` threads take only instances handed
over: when every handler is busy (a claim, a commit), an enqueue still finds one idle and skips
the queue, without more handlers claiming side by side in a drain.

A handler whose claim came back full brings in another idle handler: there is probably more
work. After a full claim of a single instance it waits :data:`SPREAD_DELAY` first, and does
not if that instance is done by then: at a low rate, every instance fills its claim of one,
and the extra claim would only compete with the first handler's commit.

Two rules keep one callback from harming others. An instance whose callbacks run longer than
:data:`CALLBACK_BUDGET` is split off its batch by a watchdog thread: the finished batch-mates
are committed, the ones not yet started are released for idle handlers, and the slow one stays
locked alone. And ``stop(timeout)`` aborts the batches still held when the timeout expires:
their locks go at once and nothing their callbacks decide afterwards is written.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cereal import instrumentation
from cereal.driver import ClaimedTask, Driver, EventBatch, TaskClaim, TaskOutcome
from cereal.errors import DatabaseError, SerializationError
from cereal.executors import WorkflowExecutor
from cereal.logging import get_logger
from cereal.steps import StepOutcome, run_events
from cereal.types import WorkflowInstanceInfo

__all__ = [
    "CALLBACK_BUDGET",
    "HANDOVER_SPARES",
    "SPREAD_DELAY",
    "ResultHandover",
    "WorkflowEventDispatcher",
]

log = get_logger("cereal.workflow")

CALLBACK_BUDGET = 0.05
"""Seconds an instance's callbacks may run before its batch-mates stop waiting for them."""

SPREAD_DELAY = 0.005
"""Seconds a handler holds a full claim of one instance before another handler is brought in."""

HANDOVER_SPARES = 2
"""Threads that run only the instances handed over by enqueues, beside the handlers."""


_Done = tuple[list[StepOutcome], list[WorkflowInstanceInfo], list[ClaimedTask]]
"""What a handled batch committed: the outcomes, the runs finished, the tasks claimed."""


@dataclass(frozen=True)
class ResultHandover:
    """How the task pools of the same manager hand finished tasks' outcomes to the handlers
    (see :meth:`WorkflowEventDispatcher.take_result`)."""

    owner: str
    """The owner the tasks were claimed for."""
    recorded: Callable[[list[TaskOutcome]], None]
    """Called with the outcomes the handlers recorded."""
    give_back: Callable[[list[TaskOutcome]], None]
    """Called with outcomes the handlers may not have recorded; the pools record them the
    usual way (:meth:`~cereal.driver.Driver.complete_tasks`, safe even if they were)."""


@dataclass(eq=False)
class _Run:
    """A batch whose callbacks one handler is running."""

    batch: EventBatch
    instances: int
    outcomes: list[StepOutcome] = field(default_factory=list)
    """Outcomes of the instances done so far (not yet committed)."""
    since: float | None = None
    """When the callbacks of instance ``len(outcomes)`` started; None between instances."""
    splitting: bool = False
    split: bool = False
    kept: bool = True
    split_error: Exception | None = None
    spread_at: float | None = None
    """When to bring in another handler if this batch is still held (a full claim of one)."""


class WorkflowEventDispatcher:
    """Dispatches workflow events to the executors registered in one manager."""

    def __init__(
        self,
        driver: Driver,
        executors: dict[str, WorkflowExecutor],
        *,
        workers: int,
        poll_interval: float,
        on_finished: Callable[[list[WorkflowInstanceInfo]], None],
        on_tasks_enqueued: Callable[[set[str]], None],
        batch_size: int = 128,
        events_per_instance: int = 64,
        reserve_tasks: Callable[[Mapping[str, int]], TaskClaim | None] | None = None,
        adopt_tasks: Callable[[TaskClaim, list[ClaimedTask], bool], None] | None = None,
        results: ResultHandover | None = None,
    ) -> None:
        self._driver = driver
        self._executors = executors
        self._names = sorted(executors)
        self._workers = workers
        self._poll_interval = poll_interval
        self._on_finished = on_finished
        self._on_tasks_enqueued = on_tasks_enqueued
        self._reserve_tasks = reserve_tasks
        self._adopt_tasks = adopt_tasks
        self._handover = results if callable(getattr(driver, "complete_tasks_held", None)) else None
        # Spares only run what enqueues hand over, which needs the driver's enqueue_and_hold.
        self._spares = HANDOVER_SPARES if callable(getattr(driver, "enqueue_and_hold", None)) else 0
        self._results: list[TaskOutcome] = []  # handed over, not taken by a handler yet
        self._taking_results = False
        # Every wake() counts, and sets the flag until a handler starts a claim: a handler
        # that only recorded results claims afterwards only if either says a claim is due.
        self._wakes = 0
        self._claim_wanted = False
        # Batches held for a handler by the caller that enqueued their instance
        # (hand_over), each with the call that lets it go; at most one per idle handler or
        # spare. A spare is called (_spare_cond) only when no handler is idle.
        self._handed: list[tuple[EventBatch, Callable[[], None]]] = []
        self._idle = 0
        self._spares_idle = 0
        self._spare_calls = 0
        self._promised = 0
        self._batch_size = batch_size
        self._per_instance = events_per_instance
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._spare_cond = threading.Condition(lock)
        self._signals = 0
        self._stopping = False
        self._single_until = 0.0
        self._ramp = 1  # the size of a handler's first claim (see _drain)
        self._threads: list[threading.Thread] = []
        self._watch = threading.Condition()
        self._runs: list[_Run] = []
        self._aborted = False
        self._closed = False

    def start(self) -> None:
        if not self._names:
            return
        self._taking_results = self._handover is not None
        self._signals = 1  # handle whatever is already pending at once
        for n in range(self._workers):
            thread = threading.Thread(
                target=self._handler, args=(n == 0,), name=f"cereal-workflow-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        for n in range(self._spares):
            thread = threading.Thread(
                target=self._spare, name=f"cereal-workflow-spare-{n}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._watchdog, name="cereal-dispatch-watch", daemon=True).start()

    def stop(self, timeout: float | None) -> None:
        """Stop claiming; handlers finish (and commit) the batch they hold.

        A batch still held when ``timeout`` expires is aborted: its instances are released at
        once (their events go to another manager) and nothing its callbacks decide is written.
        """
        with self._cond:
            self._stopping = True
            self._taking_results = False
            self._cond.notify_all()
            self._spare_cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        with self._cond:
            untaken, self._results = self._results, []
            handed, self._handed = self._handed, []
        if untaken and self._handover is not None:
            self._handover.give_back(untaken)
        for _, release in handed:
            release()  # the instance's start event waits for the next claim
        with self._watch:
            self._aborted = self._closed = True
            held = [run.batch for run in self._runs]
            self._watch.notify_all()
        for batch in held:
            log.warning("stop timed out with a workflow callback running; abandoning its batch")
            batch.abort()

    def wake(self) -> None:
        """New events may be pending: have one idle handler look.

        A signal no handler has taken yet already promises a claim that starts after this
        call, so it covers these events too: wakes coming in a burst (the local one and the
        NOTIFY echo of the same commit) cost one claim, not one each.
        """
        with self._cond:
            self._wakes += 1
            self._claim_wanted = True
            if self._signals == 0:
                self._signals = 1
                self._cond.notify()

    def take_result(self, outcome: TaskOutcome) -> bool:
        """Take a finished task's outcome to record: a handler records it, holding its
        instance in the same round trip, and handles the event at once (no wakeup, no
        claim). False when this dispatcher does not take it (not running, no handover, an
        outcome asking for a retry, or a workflow handled elsewhere): the caller records it
        itself."""
        if outcome.retry or outcome.workflow_name not in self._executors:
            return False
        with self._cond:
            if not self._taking_results:
                return False
            self._results.append(outcome)
            if self._signals == 0:
                self._signals = 1
                self._cond.notify()
        return True

    def promise_handler(self) -> bool:
        """Promise an idle handler or spare to a batch the caller is about to hold (an
        instance it enqueues); False when none is idle, or this dispatcher is not running.
        Follow with :meth:`hand_over`, or :meth:`break_promise` if no batch comes."""
        with self._cond:
            if (
                self._stopping
                or not self._threads
                or self._promised >= self._idle + self._spares_idle
            ):
                return False
            self._promised += 1
            return True

    def break_promise(self) -> None:
        with self._cond:
            self._promised -= 1

    def hand_over(self, batch: EventBatch, release: Callable[[], None]) -> None:
        """Have the promised handler (a spare when no handler is idle) run ``batch``'s
        callbacks and commit; it calls ``release`` (which ends the batch's context) once
        done."""
        with self._cond:
            stopping = self._stopping
            if not stopping:
                self._handed.append((batch, release))
                if self._idle <= self._signals and self._spares_idle > self._spare_calls:
                    self._spare_calls += 1  # every handler is busy, or called already
                    self._spare_cond.notify()
                elif self._signals < self._workers:
                    self._signals += 1
                    self._cond.notify()
        if stopping:
            release()  # stop() began meanwhile: the start event waits for the next claim

    def _take_handed(self) -> tuple[EventBatch, Callable[[], None]] | None:
        with self._cond:
            if not self._handed:
                return None
            self._promised -= 1
            return self._handed.pop(0)

    def _take_results(self) -> list[TaskOutcome]:
        """The outcomes handed over so far, up to a batch's worth."""
        with self._cond:
            if not self._results:
                return []
            taken = self._results[: self._batch_size]
            del self._results[: self._batch_size]
            more = bool(self._results)
        if more:
            self._spread()
        return taken

    def _spread(self) -> None:
        """More work than one handler took: bring in another idle handler."""
        with self._cond:
            if self._signals < self._workers:
                self._signals += 1
                self._cond.notify()

    def _handler(self, poller: bool) -> None:
        failures = 0
        while True:
            with self._cond:
                if not self._signals and not self._stopping:
                    self._idle += 1
                    self._cond.wait(self._poll_interval if poller else None)
                    self._idle -= 1
                if self._stopping:
                    return
                signalled = self._signals > 0
                if signalled:
                    self._signals -= 1
            try:
                if signalled or self._driver.has_events(self._names):
                    self._drain()
                failures = 0
            except BaseException as exc:  # a handler thread must survive whatever happens
                if self._aborted:
                    return
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning(
                    "workflow event handling failed; retrying", error=repr(exc), retry_in=delay
                )
                time.sleep(delay)
                self.wake()

    def _spare(self) -> None:
        """A thread that runs only batches handed over (see :data:`HANDOVER_SPARES`)."""
        while True:
            with self._cond:
                while not self._spare_calls and not self._stopping:
                    self._spares_idle += 1
                    self._spare_cond.wait()
                    self._spares_idle -= 1
                if self._stopping:
                    return
                self._spare_calls -= 1
                wakes = self._wakes
            handed = self._take_handed()
            if handed is None:
                continue  # a handler took it first
            try:
                more = self._handle_handed(*handed)
            except BaseException as exc:  # a spare must survive whatever happens
                if self._aborted:
                    return
                log.warning("a handed-over instance failed; the handlers claim it", error=repr(exc))
                more = True
            with self._cond:
                # As a handler would claim next: the instance may have events past those
                # fetched, or a wakeup's claim may have skipped it while it was held here.
                again = more or self._wakes != wakes
            if again:
                self.wake()

    def _drain(self) -> None:
        # Claim one instance first and grow the claim fourfold only while batches come back
        # full. A handler that grabbed every pending instance at once would run their
        # callbacks one after another while the other handlers sat idle; starting small lets
        # the handler it wakes take the next instance, and large batches still form under
        # sustained load. The size reached is shared: a handler brought in by a full batch
        # starts where the others are, and the first claim that is not full starts over.
        # Task outcomes handed over (take_result) go first: holding their instances is the
        # claim, and the events they record are handled in it.
        grow = self._ramp
        while not self._stopping:
            handed = self._take_handed()
            results = [] if handed else self._take_results()
            if handed or results:
                wakes = self._wakes
                more = self._handle_handed(*handed) if handed else self._handle_results(results)
                with self._cond:
                    # Claim only if asked to (an event for an instance held here meanwhile
                    # may have been skipped by the claim its wakeup led to), or if an
                    # instance may have events past those fetched: results recorded while
                    # their instance was held woke nobody.
                    if not (
                        more
                        or self._handed
                        or self._results
                        or self._claim_wanted
                        or self._wakes != wakes
                    ):
                        return
                continue
            with self._cond:
                self._claim_wanted = False
            single = time.monotonic() < self._single_until
            limit = 1 if single else min(grow, self._batch_size)
            try:
                with self._driver.claim_events(self._names, limit, self._per_instance) as batch:
                    if len(batch.instances) < limit:
                        self._ramp = 1
                    if not batch.instances:
                        return
                    run = _Run(batch, len(batch.instances))
                    if len(batch.instances) == limit:
                        # Probably more work: bring in another handler, so that instances
                        # enqueued in a burst run concurrently; after a claim of one, only if
                        # this batch is still held SPREAD_DELAY from now (the watchdog's job).
                        grow = self._ramp = min(limit * 4, self._batch_size)
                        if limit > 1:
                            self._spread()
                        else:
                            run.spread_at = time.monotonic() + SPREAD_DELAY
                    done = self._handle(run)
            except _Unstorable as refused:
                done = self._fail_unstorable(refused.outcome)
            if done is None:
                return  # stop() gave up on this handler meanwhile
            self._after_commit(*done)

    def _handle_handed(self, batch: EventBatch, release: Callable[[], None]) -> bool:
        """Run a batch handed over by :meth:`hand_over` and commit it; True when an
        instance may have events left past those fetched."""
        done: _Done | None = ([], [], [])
        try:
            try:
                if batch.instances:
                    done = self._handle(_Run(batch, len(batch.instances)))
            finally:
                release()
        except _Unstorable as refused:
            done = self._fail_unstorable(refused.outcome)
        if done is not None:
            self._after_commit(*done)
        return self._fetch_was_full(batch)

    def _fetch_was_full(self, batch: EventBatch) -> bool:
        """Whether an instance of ``batch`` had as many events as one fetch takes."""
        per = self._per_instance
        return any(len(batch.events.get(inst.id, ())) >= per for inst in batch.instances)

    def _handle_results(self, results: list[TaskOutcome]) -> bool:
        """Record handed-over outcomes and hold their instances in one round trip, then
        handle the instances' events (the new results among them) and commit; True when an
        instance may have events left past those fetched."""
        assert self._handover is not None
        done: _Done | None = ([], [], [])
        opened = more = False
        try:
            with self._driver.complete_tasks_held(
                results, self._handover.owner, self._names, self._per_instance
            ) as batch:
                opened = True
                self._handover.recorded(results)
                more = self._fetch_was_full(batch)
                if batch.instances:
                    done = self._handle(_Run(batch, len(batch.instances)))
        except _Unstorable as refused:
            done = self._fail_unstorable(refused.outcome)
        except (DatabaseError, SerializationError) as exc:
            if opened:
                raise  # the batch's own failure (the results are stored), as after a claim
            # Whether they were recorded is unknown: the pools record them again, which is
            # safe (a task reports once), and report a value the database refuses.
            self._handover.give_back(results)
            if _transient(exc):
                raise
            log.debug("task results not recorded with their instances held", error=repr(exc))
            return False
        if done is not None:
            self._after_commit(*done)
        return more

    def _handle(self, run: _Run) -> _Done | None:
        """Run a held batch's callbacks and commit their outcomes; return them with the runs
        finished and the tasks claimed, for :meth:`_after_commit` (empty when the watchdog
        split the batch and let its slow instance go), or None when stop() gave up on this
        handler meanwhile. Raises :class:`_Unstorable` for a lone decision the database
        refuses (the caller fails its instance once the batch is let go)."""
        batch = run.batch
        with self._watch:
            if self._aborted:
                return None
            self._runs.append(run)
            if run.spread_at is not None:
                self._watch.notify()
        try:  # registered until committed: stop() may abort the commit too
            outcomes = self._run_callbacks(run)
            if self._aborted:
                return None
            if not outcomes:
                return [], [], []  # nothing left to commit here (split off)
            try:
                finished, claimed = self._commit(batch, outcomes)
            except (DatabaseError, SerializationError) as exc:
                if self._aborted:
                    return None
                if _transient(exc):
                    raise
                if len(outcomes) > 1:
                    # Find the poisoned instance by committing one at a time.
                    log.warning(
                        "batch commit failed; retrying instances one by one", error=repr(exc)
                    )
                    self._single_until = time.monotonic() + 5.0
                    raise
                outcomes[0].error = f"cannot store the decision: {exc}"
                raise _Unstorable(outcomes[0]) from exc
        finally:
            with self._watch:
                self._runs.remove(run)
        return outcomes, finished, claimed

    def start_held(self, batch: EventBatch) -> bool:
        """Eager start: run the callbacks of a batch the caller holds (an instance it just
        inserted) in the caller's thread and commit it, claiming its first tasks for this
        process as a handler would. True once committed; False when the commit failed for
        good (nothing was stored: the caller enqueues the instance for the handlers instead,
        which run ``on_start`` again). A transient failure raises."""
        outcomes = [
            run_events(
                self._executors[inst.workflow_name],
                inst,
                batch.events[inst.id],
                log,
            )
            for inst in batch.instances
        ]
        try:
            finished, claimed = self._commit(batch, outcomes)
        except (DatabaseError, SerializationError) as exc:
            if _transient(exc):
                raise
            log.warning("eager start could not commit; the handlers take over", error=repr(exc))
            return False
        self._after_commit(outcomes, finished, claimed)
        return True

    def _commit(
        self, batch: EventBatch, outcomes: list[StepOutcome]
    ) -> tuple[list[WorkflowInstanceInfo], list[ClaimedTask]]:
        """Commit the outcomes, claiming the tasks this manager's free workers can start at
        once (see :meth:`_reserve`), which start right away; return the finished runs and
        the tasks claimed. Reserved slots the commit did not use are freed, also when it
        raises."""
        claim = self._reserve(batch, outcomes)
        if claim is None:
            return batch.commit(outcomes), []
        try:
            finished, claimed = batch.commit_claiming(outcomes, claim)
        except BaseException:
            if self._adopt_tasks is not None:
                self._adopt_tasks(claim, [], False)  # free the slots
            raise
        assert self._adopt_tasks is not None
        self._adopt_tasks(claim, claimed, True)  # they start at once
        return finished, claimed

    def _reserve(self, batch: EventBatch, outcomes: list[StepOutcome]) -> TaskClaim | None:
        """Free workers of this manager for the tasks the commit inserts due now, so that the
        commit claims them at once (no wakeup and claim round trip before they start)."""
        if self._reserve_tasks is None or not callable(getattr(batch, "commit_claiming", None)):
            return None
        wanted = Counter(
            t.name
            for o in outcomes
            if not o.finished
            for t in o.tasks
            if t.start_at is None and t.delay <= 0
        )
        return self._reserve_tasks(wanted) if wanted else None

    def _run_callbacks(self, run: _Run) -> list[StepOutcome]:
        """Run the batch's callbacks in order; return the outcomes left to commit."""
        instances = list(run.batch.instances)
        for index, inst in enumerate(instances):
            with self._watch:
                if self._aborted:
                    return []
                run.since = time.monotonic()
                if index == 0 and run.instances > 1:
                    self._watch.notify()  # a batch to watch over
            try:
                outcome = run_events(
                    self._executors[inst.workflow_name],
                    inst,
                    run.batch.events[inst.id],
                    log,
                )
            finally:
                with self._watch:
                    run.since = None
                    self._watch.wait_for(lambda: not run.splitting)
            if run.split_error is not None:
                if not _transient(run.split_error):
                    self._single_until = time.monotonic() + 5.0  # alone, nothing is split
                raise run.split_error
            if run.split:
                if run.kept:
                    return [outcome]
                log.warning(
                    "instance taken over while its callback ran; its decision is discarded",
                    workflow=inst.workflow_name,
                    instance=inst.instance_name,
                )
                return []
            run.outcomes.append(outcome)
        return run.outcomes

    def _watchdog(self) -> None:
        """Split off every instance whose callbacks overrun the budget, and bring in another
        handler for the full claims of one held past their ``spread_at`` (see the module)."""
        while True:
            spread = 0
            with self._watch:
                target: _Run | None = None
                while target is None and not spread:
                    if self._closed:
                        return
                    now, wake_at = time.monotonic(), None
                    for run in self._runs:
                        if run.spread_at is not None:
                            if run.spread_at <= now:
                                run.spread_at = None
                                spread += 1
                            else:
                                wake_at = _earlier(wake_at, run.spread_at)
                        if run.split or run.instances < 2:
                            continue
                        # Between two instances: the next one starts without a notify.
                        at = (now if run.since is None else run.since) + CALLBACK_BUDGET
                        if at <= now:
                            target = run
                            break
                        wake_at = _earlier(wake_at, at)
                    if target is None and not spread:
                        self._watch.wait(None if wake_at is None else wake_at - now)
                if target is not None:
                    target.splitting = True
                    done = list(target.outcomes)
                    keep = target.batch.instances[len(done)].id
                    others = target.instances - len(done) - 1
            for _ in range(spread):
                self._spread()
            if target is not None:
                self._split(target, done, keep, others)

    def _split(self, target: _Run, done: list[StepOutcome], keep: int, others: int) -> None:
        """Commit the finished batch-mates of ``target``'s slow instance ``keep`` and release
        the ``others`` not started yet (the watchdog's half of a split)."""
        try:
            finished, kept = target.batch.split(done, keep)
        except Exception as exc:
            log.warning("cannot commit the batch-mates of a slow callback", error=repr(exc))
            with self._watch:
                target.split_error = exc
                target.split, target.splitting = True, False
                self._watch.notify_all()
            return
        with self._watch:
            target.split, target.kept, target.splitting = True, kept, False
            self._watch.notify_all()
        if others:
            self._spread()  # idle handlers take the batch-mates it released
        try:
            self._after_commit(done, finished)
        except BaseException as exc:  # the watchdog must outlive any hook
            log.warning("after-commit hook failed", error=repr(exc))

    def _fail_unstorable(self, outcome: StepOutcome) -> _Done:
        """A decision the database refuses fails its instance instead of looping forever."""
        inst = outcome.instance
        error = outcome.error or "cannot store the decision"
        log.error(
            "decision could not be stored; failing the instance",
            error=error,
            workflow=inst.workflow_name,
            instance=inst.instance_name,
        )
        info = self._driver.fail_instance(inst.id, error)
        return [outcome], [] if info is None else [info], []

    def _after_commit(
        self,
        outcomes: list[StepOutcome],
        finished: list[WorkflowInstanceInfo],
        claimed: list[ClaimedTask] | None = None,
    ) -> None:
        for o in outcomes:
            for kind in o.handled_kinds:
                instrumentation.event_handled(o.instance.workflow_name, kind)
        queued = Counter(t.name for o in outcomes if not o.finished for t in o.tasks)
        queued.subtract(row.task_name for row in claimed or ())
        names = {name for name, n in queued.items() if n > 0}
        if names:
            self._on_tasks_enqueued(names)
        if finished:
            self._on_finished(finished)


class _Unstorable(Exception):
    """The database refused the decision of a batch's only instance."""

    def __init__(self, outcome: StepOutcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _earlier(when: float | None, other: float) -> float:
    return other if when is None else min(when, other)


def _transient(exc: Exception) -> bool:
    return isinstance(exc, DatabaseError) and exc.transient
