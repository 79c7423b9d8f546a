"""The storage seam: everything the core asks of a database, and the records that cross it.

The manager, the workflow-event dispatcher, the task pools, the background services and the
schedule operations are written against :class:`Driver` only. A backend implements it
structurally (no base class to inherit): :class:`cereal.backends.postgres.PostgresDriver`
for production, :class:`cereal.testing.MemoryDriver` for fast tests.

Rules every backend follows:

- It raises only :mod:`cereal.errors` types. A failure worth retrying (lost connection,
  read-only or shutting-down server, deadlock, serialisation failure) is a
  :class:`~cereal.errors.TransientDatabaseError`; any other database failure is a
  :class:`~cereal.errors.DatabaseError`; a value the database refuses to store is a
  :class:`~cereal.errors.SerializationError`.
- Values cross the seam as JSON text on the way in (``*_json`` fields, None for SQL NULL)
  and as decoded Python values on the way out. A stored value that cannot be decoded is
  reported in the record's ``problem`` field instead of raising.
- Wakeups (:data:`Wakeup`) are hints that something may have changed, never facts: the core
  confirms with the database before it acts on one.

The records built for every row a claim or a result reads (:class:`InstanceRow`,
:class:`EventRow`, :class:`ClaimedTask`, :class:`TaskOutcome`) are not frozen, which would
make each cost seven times as much to build; nothing changes them once built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cereal.retries import RetryPolicy
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus
from cereal.workflow import PendingTask

__all__ = [
    "PRUNE_BATCH",
    "AsyncDriver",
    "ClaimedTask",
    "Driver",
    "DueRun",
    "EventBatch",
    "EventRow",
    "EventsPending",
    "InstanceFinished",
    "InstanceRow",
    "InstanceTimeline",
    "InstanceWatch",
    "Listener",
    "Overview",
    "ScheduleChange",
    "SchedulesChanged",
    "SchemaStatus",
    "StepOutcome",
    "StoredSchedule",
    "TaskClaim",
    "TaskCount",
    "TaskInfo",
    "TaskOutcome",
    "TasksQueued",
    "TimelineEvent",
    "Wakeup",
]

PRUNE_BATCH = 10_000
"""Most finished runs :meth:`Driver.prune_history` deletes in one call."""


# -- workflow events --------------------------------------------------------------------------


@dataclass(slots=True)
class InstanceRow:
    """A live instance as stored, locked for event processing."""

    id: int
    workflow_name: str
    instance_name: str
    parameters: Any
    payload: Any
    status: WorkflowStatus
    enqueued_tasks: int
    completed_tasks: int
    started_at: datetime
    problem: str | None = None
    """Why the stored state cannot be used (it cannot be decoded); the instance then fails."""
    trace_context: str | None = None
    """The trace context stored at enqueue (opaque text from :mod:`cereal.tracing`), or None."""


@dataclass(slots=True)
class EventRow:
    """One pending event; the task fields are set for ``task_complete`` only."""

    id: int
    instance_id: int
    kind: str
    """``start``, ``task_complete``, ``cancel`` or ``signal``."""
    enqueued_at: datetime
    task_name: str | None = None
    task_parameters: Any = None
    task_status: str | None = None
    task_error: str | None = None
    task_result: Any = None
    signal_name: str | None = None
    signal_payload: Any = None
    problem: str | None = None
    """Why the stored task fields cannot be used; the result is then ``UNUSABLE_RESULT``."""
    task_attempts: int = 1
    """Attempts the task made (``task_complete`` only)."""
    task_route: str | None = None
    """The route the task was enqueued with (``task_complete`` only; see
    :class:`~cereal.workflow.PendingTask`)."""


_FINISHED = frozenset((WorkflowStatus.COMPLETED, WorkflowStatus.FAILED))
"""Looked up, not spelled out: on Python 3.11 reading an enum member off its class costs
more than the rest of the check."""


@dataclass(slots=True)
class StepOutcome:
    """What to commit for one instance after its events were handled."""

    instance: InstanceRow
    consumed: list[int] = field(default_factory=list)
    """Ids of the events handled (deleted on commit when the instance goes on)."""
    payload_json: str | None = None
    status: WorkflowStatus = WorkflowStatus.STARTING
    enqueued_tasks: int = 0
    completed_tasks: int = 0
    tasks: list[PendingTask] = field(default_factory=list)
    result_json: str | None = None
    error: str | None = None
    handled: int = 0
    """How many callbacks ran."""
    handled_kinds: list[str] = field(default_factory=list)
    """The event kind of each callback that ran, in order."""
    task_contexts: list[str | None] = field(default_factory=list)
    """The trace context to store with each of ``tasks``, in the same order (a missing
    entry means none)."""

    def traced_tasks(self) -> list[tuple[PendingTask, str | None]]:
        """``tasks`` paired with their trace contexts."""
        ctx = self.task_contexts
        return [(t, ctx[i] if i < len(ctx) else None) for i, t in enumerate(self.tasks)]

    @property
    def finished(self) -> bool:
        return self.status in _FINISHED


class EventBatch(Protocol):
    """Instances locked for event processing, with their next events in order.

    The locks are held until :meth:`commit`, or until the batch's context exits, which
    rolls back and so delivers every event again later.
    """

    instances: list[InstanceRow]
    events: dict[int, list[EventRow]]
    """Pending events per instance id, oldest first."""

    def commit(self, outcomes: Sequence[StepOutcome]) -> list[WorkflowInstanceInfo]:
        """Write every outcome atomically; return the runs that finished.

        After :meth:`abort`, raises :class:`~cereal.errors.TransientDatabaseError` and writes
        nothing."""
        ...

    def commit_claiming(
        self, outcomes: Sequence[StepOutcome], claim: TaskClaim
    ) -> tuple[list[WorkflowInstanceInfo], list[ClaimedTask]]:
        """:meth:`commit`, claiming for ``claim.owner`` in the same transaction the tasks it
        inserts that the committing process can start at once; return the finished runs and
        the tasks claimed.

        A task is claimed when its name is in ``claim.limits`` (at most ``limits[name]`` of
        each name, in the order of ``outcomes`` and their tasks), it is due now, and no older
        task of its name is queued and due (those go first). Its row is stored exactly as
        :meth:`Driver.claim_tasks` stores a first attempt (running, its heartbeat now, the
        retry policy of ``claim.retries``), so a process that dies before running it loses
        it as it would lose a claimed one; the other tasks are queued as by :meth:`commit`.
        Optional: the core calls :meth:`commit` on a batch without this method."""
        ...

    def split(
        self, done: Sequence[StepOutcome], keep: int
    ) -> tuple[list[WorkflowInstanceInfo], bool]:
        """Commit ``done`` now, let every other instance go except ``keep`` (an instance id of
        this batch), and go on holding ``keep`` alone; return the runs that finished.

        The boolean is False when ``keep`` could not be held on (another caller took it, or
        its events are gone): nothing of it may then be committed. Called from another thread
        than the batch's owner while the owner runs ``keep``'s callback; it never overlaps a
        :meth:`commit`."""
        ...

    def abort(self) -> None:
        """Give up the batch from any thread (waiting on the database for seconds at most):
        release its instances (at once, or as soon as the server notices the session closed;
        every event is delivered again), write nothing more, and make a later :meth:`commit`
        or :meth:`split` raise :class:`~cereal.errors.TransientDatabaseError`. A commit under
        way either completes before this returns or is cancelled. Harmless twice or after the
        batch ended."""
        ...


# -- tasks --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ClaimedTask:
    """A task row claimed by this process (now ``running``)."""

    id: int
    instance_id: int
    task_name: str
    parameters: Any
    enqueued_at: datetime
    workflow_name: str
    instance_name: str
    problem: str | None = None
    """Why the task cannot run (its stored parameters cannot be decoded), or None."""
    attempt: int = 1
    """Which attempt this is (1 for the first run)."""
    max_attempts: int = 1
    """Attempts allowed by the retry policy the claim stored in the row (1: no retries)."""
    trace_context: str | None = None
    """The trace context of the callback that enqueued the task, or None."""


@dataclass(frozen=True, slots=True)
class TaskClaim:
    """Free workers of the committing process, for :meth:`EventBatch.commit_claiming`."""

    owner: str
    limits: Mapping[str, int]
    """How many tasks of each name the process can start now."""
    retries: Mapping[str, RetryPolicy] = field(default_factory=dict)
    """The retry policies of those names (a name without one is not retried)."""

    def first_attempt(self, task_name: str) -> tuple[int, float | None]:
        """``(max_attempts, retry_delay)`` stored with a claimed first attempt of
        ``task_name``, as :meth:`Driver.claim_tasks` stores them."""
        policy = self.retries.get(task_name)
        if policy is None or policy.max_attempts <= 1:
            return (1 if policy is None else policy.max_attempts), None
        return policy.max_attempts, policy.delay(1)


@dataclass(slots=True)
class TaskOutcome:
    """The result of one task, to be recorded as a ``task_complete`` event."""

    id: int
    workflow_name: str
    status: str
    """A :class:`~cereal.types.TaskStatus` value."""
    error: str | None = None
    result_json: str | None = None
    retry: bool = False
    """Try the task again instead, if the row's stored policy has attempts left: the row is
    queued again, due after the policy's delay, and no event is recorded."""


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A queued or running task, as an operator sees it."""

    id: int
    task_name: str
    workflow_name: str
    instance_name: str
    state: str
    """``queued`` or ``running``."""
    parameters: Any
    enqueued_at: datetime
    start_after: datetime
    claimed_by: str | None
    heartbeat_age: float | None
    """Seconds since the last heartbeat of a running task (None while queued)."""
    attempt: int = 1
    """Which attempt this is (above 1: an earlier one failed or was lost and is retried)."""
    max_attempts: int = 1
    """Attempts its retry policy allows, as stored when an attempt was last claimed (1 while
    the first attempt is queued)."""


# -- schedules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """A schedule's stored state, read under its row lock by :meth:`Driver.update_schedule`."""

    parameters_json: str | None
    recurrence: str
    enabled: bool
    next_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class ScheduleChange:
    """The new state of a schedule, written by :meth:`Driver.update_schedule`."""

    parameters_json: str | None
    recurrence: str
    enabled: bool
    next_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class DueRun:
    """What :meth:`Driver.run_due_schedule` did with one due schedule."""

    workflow_name: str
    instance_name: str
    due_at: datetime
    ran_at: datetime
    enqueued: bool
    """False when the previous run was still live (the occurrence was skipped) or the
    schedule could not run (it was disabled: ``next_due_at`` is then None)."""
    next_due_at: datetime | None
    problem: str | None = None
    """Why the schedule was disabled instead of run, or None."""


# -- operator views -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskCount:
    """Queued and running tasks of one task name."""

    task_name: str
    queued: int
    running: int
    oldest_queued_age: float | None
    """Seconds the oldest due, queued task has waited (None when none is due)."""
    stale: int
    """Running tasks whose heartbeat is older than the ``stale_after`` asked for."""


@dataclass(frozen=True, slots=True)
class Overview:
    """Counts for dashboards and metrics, read in one consistent snapshot."""

    instances: dict[tuple[str, str], int]
    """Live instances per ``(workflow_name, status)``."""
    finished: dict[tuple[str, str], int]
    """Finished runs kept in history per ``(workflow_name, status)``."""
    tasks: list[TaskCount]
    overdue_schedules: int
    """Enabled schedules whose next run is due but not yet enqueued."""
    schedules: int
    now: datetime
    """The database's clock when the snapshot was taken."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """How the schema compares with the migrations this version ships."""

    schema: str
    applied: list[int]
    """Versions applied, in order (empty when the schema does not exist)."""
    available: list[tuple[int, str]]
    """Every migration this version ships, as ``(version, name)``."""

    @property
    def pending(self) -> list[tuple[int, str]]:
        done = set(self.applied)
        return [m for m in self.available if m[0] not in done]

    @property
    def is_current(self) -> bool:
        return not self.pending


# -- wakeups --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventsPending:
    """Events may be pending for instances of ``workflow_name``."""

    workflow_name: str


@dataclass(frozen=True, slots=True)
class TasksQueued:
    """Tasks named ``task_name`` may be ready to claim."""

    task_name: str


@dataclass(frozen=True, slots=True)
class InstanceFinished:
    """The instance with this id may have finished (its running tasks should stop once the
    database confirms their rows are gone)."""

    instance_id: int


@dataclass(frozen=True, slots=True)
class SchedulesChanged:
    """A schedule was created or changed: the scheduler should look again."""


Wakeup = EventsPending | TasksQueued | InstanceFinished | SchedulesChanged


class Listener(Protocol):
    """Delivers wakeups from other processes in a background thread until stopped."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


# -- the driver -------------------------------------------------------------------------------


class Driver(Protocol):
    """Everything the core needs from storage. Every method is thread-safe."""

    @property
    def schema(self) -> str:
        """The name space this driver's data lives in."""
        ...

    def open(self) -> None:
        """Create or migrate the storage and get ready; safe to call again after close."""
        ...

    def close(self) -> None:
        """Release connections; the driver can be opened again."""
        ...

    def listener(
        self, on_wakeup: Callable[[Wakeup], None], on_reconnect: Callable[[], None]
    ) -> Listener:
        """A listener (not started) for wakeups written by any process. ``on_reconnect`` is
        called after each (re)connection, since wakeups sent meanwhile are lost."""
        ...

    # workflow instances

    def enqueue_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> bool:
        """Insert a live instance with its start event; False if the pair is live.
        ``trace_context`` is stored with the instance and returned in its
        :class:`InstanceRow`."""
        ...

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        """Queue a cancel event; False if there is no live instance."""
        ...

    def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        """Finish a live instance as failed with ``error``; False if none is live."""
        ...

    def signal_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        signal_name: str,
        signal_payload_json: str | None,
    ) -> bool:
        """Queue a ``signal`` event (after the instance's other events) and wake the handlers
        of its workflow, atomically; False if there is no live instance."""
        ...

    def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        """The live instance, else its latest finished run, else None."""
        ...

    def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]], trace_context: str | None = None
    ) -> list[tuple[str, str]]:
        """Insert many ``(workflow_name, instance_name, parameters_json)`` instances with
        their start events in one round trip; return the pairs that were not inserted
        because a live instance already existed (or that appear twice in ``items``).
        ``trace_context`` is stored with every instance inserted."""
        ...

    def enqueue_and_hold(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
        *,
        per_instance: int = 64,
    ) -> AbstractContextManager[EventBatch | None]:
        """:meth:`enqueue_workflow` (committed before the context is entered), then hold the
        new instance with its pending events as :meth:`claim_events` would; None when the pair
        is live already. No wakeup goes out: the batch is the instance's claim. The batch is
        empty if another caller took the instance between the commit and the hold; leaving
        the context without a commit lets the instance go, its start event pending.

        A running manager enqueues this way when one of its handlers is idle, and hands the
        batch to that handler: ``on_start`` runs with no wakeup and no claim before it.
        Optional: without it, the manager enqueues with :meth:`enqueue_workflow`."""
        ...

    def enqueue_held(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> AbstractContextManager[EventBatch | None]:
        """Insert a live instance with its start event and hold it as an :class:`EventBatch`
        of that one instance, as :meth:`claim_events` would hold it; None when the pair is
        live already. Committing the batch stores the instance with its outcome at once;
        leaving the context without a commit stores nothing (no instance, no event).

        Eager start (``Manager(eager_start=True)``) runs ``on_start`` on this batch in the
        enqueuing thread. Optional: without it, eager start enqueues as usual."""
        ...

    def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        """One row per pair (the live instance, else the latest finished run).

        Without ``limit``: every matching row, ordered by workflow and instance name. With
        ``limit``: at most that many, newest first, continuing after the row whose
        ``cursor`` is ``after`` (keyset paging, constant memory at any size)."""
        ...

    # workflow events

    def has_events(self, workflow_names: Sequence[str]) -> bool:
        """Is any event pending for instances of these workflows?"""
        ...

    def claim_events(
        self, workflow_names: Sequence[str], limit: int, per_instance: int
    ) -> AbstractContextManager[EventBatch]:
        """Lock up to ``limit`` instances with pending events (skipping instances another
        caller holds) and read up to ``per_instance`` events of each."""
        ...

    def fail_instance(self, instance_id: int, error: str) -> WorkflowInstanceInfo | None:
        """Finish a live instance as failed, waiting for whoever holds it; None if it is no
        longer live. Used when the database refuses an instance's decision."""
        ...

    # tasks

    def claim_tasks(
        self,
        limits: dict[str, int],
        owner: str,
        retries: Mapping[str, RetryPolicy] | None = None,
    ) -> tuple[list[ClaimedTask], float | None]:
        """Claim due tasks (up to ``limits[name]`` of each name) for ``owner``; also return
        the seconds until the next queued task of these names becomes due (None: none).

        Each claimed row stores what a retry of this attempt needs (the ``max_attempts`` of
        ``retries[name]``, 1 without a policy, and the delay after this attempt), so that
        :meth:`complete_tasks` and :meth:`reap_lost_tasks` can requeue it in any process."""
        ...

    def complete_tasks(self, outcomes: Sequence[TaskOutcome], owner: str) -> set[int]:
        """Record outcomes as ``task_complete`` events carrying the attempts made; return
        the ids still live (the others' rows are gone: their results are discarded).

        An outcome with ``retry`` whose row has attempts left is not recorded: the row goes
        back to the queue as the next attempt, due after the delay stored at claim, and
        waiting claimers are woken."""
        ...

    def complete_tasks_held(
        self,
        outcomes: Sequence[TaskOutcome],
        owner: str,
        workflow_names: Sequence[str],
        per_instance: int,
    ) -> AbstractContextManager[EventBatch]:
        """Record the outcomes as :meth:`complete_tasks` does (committed before the context
        is entered), then hold, as :meth:`claim_events` would, the live instances of
        ``workflow_names`` those tasks belonged to, with up to ``per_instance`` pending events
        each, the new ``task_complete`` events included, in order.

        Instances another caller holds are skipped, and only their workflows' handlers are
        woken: the events of the instances in the batch are not announced. An instance taken
        by another caller between the commit and the hold is skipped too (that caller sees
        the events). No outcome may ask for a retry (:class:`~cereal.errors.CerealError`).
        If the call raises, the outcomes may or may not be recorded: recording them again
        with :meth:`complete_tasks` is safe, since a task reports once.

        The manager's task pools hand finished tasks' outcomes to its workflow handlers
        through this: the result and the decision it leads to cost one round trip less, and
        no wakeup. Optional: without it, results are recorded with :meth:`complete_tasks`."""
        ...

    def heartbeat_tasks(self, task_ids: Sequence[int], owner: str) -> set[int]:
        """Refresh running tasks' heartbeats; return the ids whose rows still exist."""
        ...

    def release_tasks(self, task_ids: Sequence[int], owner: str) -> None:
        """Put claimed tasks that never started back in the queue."""
        ...

    def release_unknown_tasks(self, known: Sequence[int], owner: str, older_than: float) -> int:
        """Put back in the queue, as the same attempt, every task running for ``owner`` that
        is not in ``known`` and whose heartbeat (its claim time, for such a row) is more than
        ``older_than`` seconds old; return how many, and wake the claimers of their names.

        Those are claims whose COMMIT went through while the connection that sent it was
        lost: the owner never learned of them, never ran them and never heartbeats them.
        Optional: without it, such tasks wait for :meth:`reap_lost_tasks`."""
        ...

    def reap_lost_tasks(self, timeout: float, error: str) -> int:
        """Handle tasks silent for ``timeout`` seconds, once each: requeue those with
        attempts left as their next attempt (due after the delay stored at claim), report
        the others as ``lost``; return how many were handled."""
        ...

    # schedules

    def now(self) -> datetime:
        """The storage's clock (UTC): schedules are computed on it."""
        ...

    def insert_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        recurrence: str,
        enabled: bool,
        next_due_at: datetime | None,
    ) -> bool:
        """Create a schedule; False if the pair already has one."""
        ...

    def update_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        """Lock the schedule, call ``change(stored, now)`` and write what it returns, in one
        transaction (an exception from ``change`` writes nothing and propagates). False if
        there is no such schedule."""
        ...

    def delete_schedule(self, workflow_name: str, instance_name: str) -> bool:
        """Remove a schedule; False if there is none."""
        ...

    def list_schedules(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        """Schedules (all, or one pair's), with their latest finished run."""
        ...

    def run_due_schedule(
        self,
        next_due: Callable[[str, datetime], datetime | None],
        trace_context: str | None = None,
    ) -> DueRun | None:
        """Handle the most overdue enabled schedule nobody else holds, in one transaction:
        enqueue its instance unless the previous run is live (storing ``trace_context`` with
        it, as :meth:`enqueue_workflow` does), then move it to ``next_due(recurrence, now)``
        (disabling it on None, or when ``next_due`` raises
        ``ValueError``/``ArithmeticError``/``TypeError``). None when nothing is due."""
        ...

    def seconds_until_next_schedule(self) -> float | None:
        """Seconds until the earliest enabled schedule is due (negative when overdue)."""
        ...

    # retention

    def prune_history(self, max_age: float | None, max_runs: int | None) -> int:
        """Delete up to :data:`PRUNE_BATCH` finished runs older than ``max_age`` seconds or
        beyond the newest ``max_runs``; return how many (0 while another process prunes)."""
        ...

    def vacuum_queues(self, min_dead_rows: int) -> list[str]:
        """Reclaim the space of finished work in the storage's queues when at least
        ``min_dead_rows`` rows of one queue are dead (PostgreSQL: ``VACUUM`` of the tables of
        live instances, events and tasks, whose deleted rows stay until vacuumed, even where
        autovacuum is off), and refresh the planner's view of a queue, or of history, that
        changed a lot since it was last measured (PostgreSQL: ``ANALYZE``); return the
        tables touched. One process at a time does it (the others return []); a backend with
        nothing to do returns []."""
        ...

    # operator views

    def list_tasks(
        self,
        *,
        task_name: str | None = None,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        limit: int | None = None,
    ) -> list[TaskInfo]:
        """Queued and running tasks, oldest first."""
        ...

    def overview(self, stale_after: float) -> Overview:
        """Counts of instances, runs, tasks and schedules, in one snapshot."""
        ...

    def schema_status(self) -> SchemaStatus:
        """Which migrations are applied (does not create or migrate anything)."""
        ...

    def migration_sql(self) -> str:
        """The SQL that creates the schema from scratch, without touching the database."""
        ...

    def ping(self) -> None:
        """Raise :class:`~cereal.errors.DatabaseError` unless the storage answers."""
        ...

    # dashboard views (cereal.web)

    def recent_failures(self, limit: int) -> list[WorkflowInstanceInfo]:
        """The newest failed runs kept in history, newest first (every run, not one per
        pair), at most ``limit``."""
        ...

    def instance_timeline(
        self, workflow_name: str, instance_name: str, limit: int
    ) -> InstanceTimeline:
        """What the storage still keeps about one pair, in one snapshot: the live instance's
        pending events and queued/running tasks, and its finished runs (at most ``limit`` of
        each)."""
        ...


# -- the async client driver ------------------------------------------------------------------


class InstanceWatch(Protocol):
    """A watch on one ``(workflow_name, instance_name)``, from
    :meth:`AsyncDriver.watch_instance`. However many there are, the driver looks at the
    database once per wakeup for all of them, not once per watch."""

    async def wait(self, timeout: float | None) -> None:
        """Return once the pair may have no live instance any more (confirm with the
        database), or after ``timeout`` seconds (None: no limit). While the listener is
        disconnected the driver polls, so this still returns soon after a finish."""
        ...

    def close(self) -> None:
        """Stop watching."""
        ...


class AsyncDriver(Protocol):
    """The client operations of :class:`Driver` as coroutines, for ``Manager.aio``.

    A backend's sync driver makes its twin with ``async_driver()``. The same rules apply
    (only :mod:`cereal.errors` types, JSON text in, decoded values out), and one more: no
    method blocks the running event loop or holds a thread while it waits. Resources are
    opened lazily by the first call, on the event loop making it.
    """

    @property
    def schema(self) -> str:
        """The name space this driver's data lives in."""
        ...

    async def close(self) -> None:
        """Release connections and stop listening; a later call opens them again."""
        ...

    def close_soon(self) -> None:
        """Close from synchronous code in any thread (e.g. ``Manager.stop``) without waiting
        for the event loop the resources belong to."""
        ...

    # workflow instances

    async def enqueue_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> bool:
        """As :meth:`Driver.enqueue_workflow`."""
        ...

    async def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]], trace_context: str | None = None
    ) -> list[tuple[str, str]]:
        """As :meth:`Driver.enqueue_workflows`."""
        ...

    async def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        """As :meth:`Driver.cancel_workflow`."""
        ...

    async def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        """As :meth:`Driver.kill_workflow`."""
        ...

    async def signal_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        signal_name: str,
        signal_payload_json: str | None,
    ) -> bool:
        """As :meth:`Driver.signal_workflow`."""
        ...

    async def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        """As :meth:`Driver.get_workflow_instance`."""
        ...

    async def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        """As :meth:`Driver.list_workflow_instances`."""
        ...

    # waiting for runs to finish

    def watch_instance(self, workflow_name: str, instance_name: str) -> InstanceWatch:
        """Start watching the pair for the end of its live instance (this starts listening
        for finishes in every process). Watch before looking at the database, then
        :meth:`InstanceWatch.wait`, so that no finish goes unnoticed."""
        ...

    # schedules

    async def now(self) -> datetime:
        """As :meth:`Driver.now`."""
        ...

    async def insert_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        recurrence: str,
        enabled: bool,
        next_due_at: datetime | None,
    ) -> bool:
        """As :meth:`Driver.insert_schedule`."""
        ...

    async def update_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        """As :meth:`Driver.update_schedule` (``change`` is a plain function, run on the
        event loop inside the transaction)."""
        ...

    async def delete_schedule(self, workflow_name: str, instance_name: str) -> bool:
        """As :meth:`Driver.delete_schedule`."""
        ...

    async def list_schedules(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        """As :meth:`Driver.list_schedules`."""
        ...


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """A pending event of a live instance, as an operator sees it."""

    id: int
    kind: str
    """``start``, ``task_complete``, ``cancel`` or ``signal``."""
    enqueued_at: datetime
    task_name: str | None = None
    task_status: str | None = None
    task_error: str | None = None
    signal_name: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceTimeline:
    """Everything the storage keeps about one ``(workflow_name, instance_name)`` pair."""

    now: datetime
    """The storage's clock when the snapshot was taken."""
    live: bool
    """True while an instance of the pair is live."""
    updated_at: datetime | None
    """When the live instance last changed state (None when none is live, or when the
    storage does not record it)."""
    enqueued_tasks: int
    completed_tasks: int
    events: list[TimelineEvent]
    """Pending events of the live instance, oldest first."""
    tasks: list[TaskInfo]
    """Queued and running tasks of the live instance, oldest first."""
    runs: list[WorkflowInstanceInfo]
    """Finished runs of the pair kept in history, newest first."""
