"""An in-memory :class:`~cereal.driver.Driver` for fast tests: one process, no database.

:class:`MemoryDriver` keeps cereal's state in a :class:`MemoryStore` and behaves like the
PostgreSQL driver, rule for rule (the contract tests in ``tests/contract`` run against both):

- one live instance per ``(workflow_name, instance_name)``; finished runs are kept as history
  and the newest one answers ``get_workflow_instance`` and listings;
- :meth:`MemoryDriver.claim_events` holds the instances it returns until the batch commits or
  its context exits (which discards the batch): another claimer skips held instances, and
  ``kill_workflow`` and ``fail_instance`` wait for them, as PostgreSQL's row locks do.
  Calling those from the thread that holds the batch therefore waits forever. A batch's
  ``split`` lets all but one instance go, and ``abort`` (from any thread) lets them all go;
- values arrive as JSON text, are checked as PostgreSQL's ``jsonb`` would check them, are
  stored as text and decoded on every read, so callers never share objects with the store;
- every write that PostgreSQL would announce produces the same typed wakeups, delivered to
  the started listeners of every driver on the store, from each listener's own thread.

Several drivers may share one store (``MemoryDriver(store=other.store)``), like processes
sharing one database: two managers in one test can then compete for the same work.
Everything runs under one lock; callbacks passed in (``update_schedule``'s ``change``,
``run_due_schedule``'s ``next_due``) run outside it while their schedule is held: the
scheduler then skips that schedule, and other updates and deletes of it wait.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cereal.checks import decode_cursor, encode_cursor
from cereal.codec import encode
from cereal.driver import (
    PRUNE_BATCH,
    ClaimedTask,
    DueRun,
    EventRow,
    EventsPending,
    InstanceFinished,
    InstanceRow,
    InstanceTimeline,
    Overview,
    ScheduleChange,
    SchedulesChanged,
    SchemaStatus,
    StepOutcome,
    StoredSchedule,
    TaskClaim,
    TaskCount,
    TaskInfo,
    TaskOutcome,
    TasksQueued,
    TimelineEvent,
    Wakeup,
)
from cereal.errors import CerealError, DatabaseError, SerializationError, TransientDatabaseError
from cereal.logging import get_logger
from cereal.retries import RetryPolicy
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus
from cereal.workflow import PendingTask

if TYPE_CHECKING:
    from cereal.driver import AsyncDriver, Driver
    from cereal.testing.memory_aio import AsyncMemoryDriver

__all__ = ["MEMORY_MIGRATION", "MemoryDriver", "MemoryEventBatch", "MemoryListener", "MemoryStore"]

log = get_logger("cereal.memory")

MEMORY_MIGRATION = (1, "memory")
"""The one pseudo-migration a memory store reports as applied: it is always current."""

_REAP_BATCH = 1000
_STATUSES = frozenset(s.value for s in WorkflowStatus)
Pair = tuple[str, str]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- stored rows (text values, decoded on every read) -----------------------------------------


@dataclass(slots=True)
class _Instance:
    id: int
    workflow_name: str
    instance_name: str
    parameters: str | None
    started_at: datetime
    payload: str | None = None
    status: WorkflowStatus = WorkflowStatus.STARTING
    enqueued_tasks: int = 0
    completed_tasks: int = 0
    trace_context: str | None = None

    @property
    def pair(self) -> Pair:
        return (self.workflow_name, self.instance_name)


@dataclass(slots=True)
class _Event:
    id: int
    instance_id: int
    kind: str
    enqueued_at: datetime
    task_name: str | None = None
    task_parameters: str | None = None
    task_status: str | None = None
    task_error: str | None = None
    task_result: str | None = None
    signal_name: str | None = None
    signal_payload: str | None = None
    task_attempts: int | None = None
    task_route: str | None = None


@dataclass(slots=True)
class _Task:
    id: int
    instance_id: int
    task_name: str
    parameters: str | None
    enqueued_at: datetime
    start_after: datetime
    state: str = "queued"
    claimed_by: str | None = None
    heartbeat_at: datetime | None = None
    trace_context: str | None = None
    route: str | None = None
    attempt: int = 1
    max_attempts: int = 1
    retry_delay: float | None = None
    """Seconds before the next attempt, stored at claim (None: no attempts left)."""

    def release(self) -> None:
        """Put back in the queue unchanged: the claim never ran."""
        self.state, self.claimed_by, self.heartbeat_at = "queued", None, None

    def requeue(self, now: datetime) -> None:
        """Queue the next attempt, due after the stored delay."""
        self.release()
        self.start_after = now + timedelta(seconds=self.retry_delay or 0.0)
        self.attempt += 1

    @property
    def retryable(self) -> bool:
        return self.attempt < self.max_attempts


@dataclass(slots=True)
class _Result:
    id: int
    workflow_name: str
    instance_name: str
    parameters: str | None
    status: WorkflowStatus
    result: str | None
    error: str | None
    started_at: datetime
    ended_at: datetime


@dataclass(slots=True)
class _Schedule:
    id: int
    workflow_name: str
    instance_name: str
    parameters: str | None
    recurrence: str
    enabled: bool
    next_due_at: datetime | None
    last_enqueued_at: datetime | None = None


class MemoryStore:
    """The shared state behind one or more :class:`MemoryDriver` objects ("one database").

    ``clock`` returns the store's current time (UTC, default the system clock); a test may
    pass a controllable clock to move schedules and task delays along without sleeping.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock: Callable[[], datetime] = clock or _utcnow
        self.lock = threading.Lock()
        self.released = threading.Condition(self.lock)
        """Notified whenever a held instance or schedule is let go."""
        self._ids = itertools.count(1)
        self.instances: dict[int, _Instance] = {}
        self.live: dict[Pair, int] = {}
        self.events: dict[int, list[_Event]] = {}
        """Pending events per live instance id, in insertion (id) order."""
        self.tasks: dict[int, _Task] = {}
        self.results: dict[int, _Result] = {}
        """Finished runs in id order (oldest first)."""
        self.history: dict[Pair, list[_Result]] = {}
        self.schedules: dict[Pair, _Schedule] = {}
        self.held_instances: set[int] = set()
        self.held_schedules: set[Pair] = set()
        self.listeners: list[MemoryListener] = []

    def next_id(self) -> int:
        return next(self._ids)

    # The helpers below expect the caller to hold ``lock``.

    def insert_instance(
        self, pair: Pair, parameters: str | None, now: datetime, trace_context: str | None = None
    ) -> int | None:
        if pair in self.live:
            return None
        inst = _Instance(
            self.next_id(), pair[0], pair[1], parameters, now, trace_context=trace_context
        )
        self.instances[inst.id] = inst
        self.live[pair] = inst.id
        self.events[inst.id] = [_Event(self.next_id(), inst.id, "start", now)]
        return inst.id

    def finish_instance(
        self,
        inst: _Instance,
        status: WorkflowStatus,
        result: str | None,
        error: str | None,
        now: datetime,
    ) -> _Result:
        """Move a live instance to history; its queued tasks and pending events go with it."""
        del self.instances[inst.id]
        del self.live[inst.pair]
        del self.events[inst.id]
        for task_id in [t.id for t in self.tasks.values() if t.instance_id == inst.id]:
            del self.tasks[task_id]
        row = _Result(
            self.next_id(),
            inst.workflow_name,
            inst.instance_name,
            inst.parameters,
            status,
            result,
            error,
            inst.started_at,
            now,
        )
        self.results[row.id] = row
        self.history.setdefault(inst.pair, []).append(row)
        return row

    def latest(self, pair: Pair) -> _Result | None:
        runs = self.history.get(pair)
        return runs[-1] if runs else None

    def wait_for_instance(self, pair: Pair) -> _Instance | None:
        """The live instance of ``pair`` once no batch holds it (None if none is live)."""
        while True:
            inst_id = self.live.get(pair)
            if inst_id is None or inst_id not in self.held_instances:
                return None if inst_id is None else self.instances[inst_id]
            self.released.wait()

    def emit(self, wakeups: Iterable[Wakeup]) -> None:
        unique = list(dict.fromkeys(wakeups))
        if unique:
            for listener in self.listeners:
                listener.deliver(unique)


class MemoryListener:
    """Delivers the wakeups written to a :class:`MemoryStore`, from a thread of its own.

    ``on_reconnect`` is called once when the listener starts (its "connection"); nothing is
    ever lost afterwards. Exceptions from the callbacks are logged and do not stop it.
    """

    def __init__(
        self,
        store: MemoryStore,
        on_wakeup: Callable[[Wakeup], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._store = store
        self._on_wakeup = on_wakeup
        self._on_reconnect = on_reconnect
        self._queue: queue.SimpleQueue[Wakeup | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def deliver(self, wakeups: Sequence[Wakeup]) -> None:
        for wakeup in wakeups:
            self._queue.put(wakeup)

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._store.lock:
            self._store.listeners.append(self)
        self._thread = threading.Thread(
            target=self._run, name="cereal-memory-listener", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._store.lock:
            if self in self._store.listeners:
                self._store.listeners.remove(self)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5)

    def _run(self) -> None:
        self._call(self._on_reconnect)
        while (wakeup := self._queue.get()) is not None:
            self._call(self._on_wakeup, wakeup)

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:
            log.error("wakeup callback raised", error=repr(exc))


# -- values ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _checked(text: str | None, what: str) -> str | None:
    """Return ``text`` if PostgreSQL's ``jsonb`` would store it, else raise
    :class:`SerializationError` naming the value."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise SerializationError(f"{what} must be JSON text or None, got {type(text).__name__}")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise SerializationError(f"{what} is not valid JSON text ({exc}): {text[:200]!r}") from exc
    encode(value, what)  # NUL characters, lone surrogates, excessive nesting
    return text


def _decode(text: str | None, what: str) -> tuple[Any, str | None]:
    """Decode stored text: ``(value, None)``, or ``(None, problem)`` when it cannot be."""
    if text is None:
        return None, None
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as exc:
        return None, f"stored {what} cannot be decoded: {exc}"


def _value(text: str | None) -> Any:
    return _decode(text, "value")[0]


def _problems(*found: str | None) -> str | None:
    return "; ".join(p for p in found if p is not None) or None


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def _status(status: object) -> WorkflowStatus:
    if isinstance(status, str) and status in _STATUSES:
        return WorkflowStatus(status)
    raise CerealError(f"status must be a WorkflowStatus, got {status!r}")


def _check_limit(limit: object, what: str = "limit") -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise CerealError(f"{what} must be a non-negative int, got {limit!r}")


# -- the driver -----------------------------------------------------------------------------


class MemoryDriver:
    """A complete, thread-safe :class:`~cereal.driver.Driver` that keeps its state in memory.

    ``store`` is the state to use (default: a new, empty :class:`MemoryStore`); pass another
    driver's ``store`` to let two managers share "one database". ``schema`` is only a label.

    Nothing survives the process. :meth:`open` and :meth:`close` only mark the driver's
    state: like the PostgreSQL driver, which reopens its pool on use, every operation works
    whether or not the driver is open, and :meth:`ping` always succeeds.
    :meth:`migration_sql` returns an SQL comment saying there is no schema (rather than
    raising), so tools that print it keep working.

    Example (two managers sharing one in-memory "database")::

        driver = MemoryDriver()
        first = Manager(driver=driver)
        second = Manager(driver=MemoryDriver(store=driver.store))
    """

    def __init__(self, store: MemoryStore | None = None, *, schema: str = "memory") -> None:
        if store is not None and not isinstance(store, MemoryStore):
            raise CerealError(f"store must be a MemoryStore or None, got {type(store).__name__}")
        if not isinstance(schema, str) or not schema:
            raise CerealError(f"schema must be a non-empty str, got {schema!r}")
        self._store = store if store is not None else MemoryStore()
        self._schema = schema
        self.is_open = False

    @property
    def store(self) -> MemoryStore:
        """The state this driver reads and writes (shareable with other drivers)."""
        return self._store

    @property
    def schema(self) -> str:
        """A label for this driver's name space (the store is the real one)."""
        return self._schema

    def open(self) -> None:
        """Mark the driver open; there is nothing to create or migrate."""
        self.is_open = True

    def close(self) -> None:
        """Mark the driver closed; the store and its data stay (open it again at will)."""
        self.is_open = False

    def __enter__(self) -> MemoryDriver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def async_driver(self) -> AsyncMemoryDriver:
        """This driver's async twin (same store), for ``Manager.aio``."""
        from cereal.testing.memory_aio import AsyncMemoryDriver

        return AsyncMemoryDriver(self)

    def listener(
        self, on_wakeup: Callable[[Wakeup], None], on_reconnect: Callable[[], None]
    ) -> MemoryListener:
        """A listener (not started) for the wakeups of every driver on this store."""
        return MemoryListener(self._store, on_wakeup, on_reconnect)

    # -- workflow instances ----------------------------------------------------------------

    def enqueue_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> bool:
        """Insert a live instance with its start event; False if the pair is live."""
        params = _checked(parameters_json, "parameters")
        s = self._store
        with s.lock:
            inserted = s.insert_instance(
                (workflow_name, instance_name), params, s.clock(), trace_context
            )
            if inserted is not None:
                s.emit([EventsPending(workflow_name)])
        return inserted is not None

    def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]], trace_context: str | None = None
    ) -> list[tuple[str, str]]:
        """Insert many instances at once; return the pairs that were not (already live, or
        repeated in ``items``). Bad JSON in any item raises before anything is written."""
        checked = [(w, i, _checked(p, f"parameters of {w!r}/{i!r}")) for w, i, p in items]
        s = self._store
        skipped: list[tuple[str, str]] = []
        with s.lock:
            now = s.clock()
            names: list[Wakeup] = []
            for w, i, params in checked:
                if s.insert_instance((w, i), params, now, trace_context) is None:
                    skipped.append((w, i))
                else:
                    names.append(EventsPending(w))
            s.emit(names)
        return skipped

    @contextmanager
    def enqueue_and_hold(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
        *,
        per_instance: int = 64,
    ) -> Iterator[MemoryEventBatch | None]:
        """Enqueue an instance, then hold it with its pending events (None if the pair is
        live); no wakeup goes out."""
        _check_limit(per_instance, "per_instance")
        params = _checked(parameters_json, "parameters")
        s = self._store
        with s.lock:
            inst_id = s.insert_instance(
                (workflow_name, instance_name), params, s.clock(), trace_context
            )
            if inst_id is None:
                batch = None
            else:
                s.held_instances.add(inst_id)
                inst = s.instances[inst_id]
                events = [_event_row(e) for e in s.events[inst_id][:per_instance]]
                batch = MemoryEventBatch(s, [_instance_row(inst)], {inst_id: events})
        try:
            yield batch
        finally:
            if batch is not None:
                batch.release()

    @contextmanager
    def enqueue_held(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> Iterator[MemoryEventBatch | None]:
        """Insert a live instance with its start event, held as a batch of one (None if the
        pair is live); leaving the context without a commit removes both again. Unlike
        PostgreSQL, readers see the held instance meanwhile (and wait for it, as for any
        held instance)."""
        params = _checked(parameters_json, "parameters")
        s = self._store
        with s.lock:
            inst_id = s.insert_instance(
                (workflow_name, instance_name), params, s.clock(), trace_context
            )
            if inst_id is not None:
                s.held_instances.add(inst_id)
                inst = s.instances[inst_id]
                batch = MemoryEventBatch(
                    s, [_instance_row(inst)], {inst_id: [_event_row(e) for e in s.events[inst_id]]}
                )
        if inst_id is None:
            yield None
            return
        try:
            yield batch
        finally:
            with s.lock:
                if batch.holds(inst_id):  # not committed: as if never enqueued
                    s.events.pop(inst_id, None)
                    s.live.pop((workflow_name, instance_name), None)
                    s.instances.pop(inst_id, None)
            batch.release()

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        """Queue a cancel event (even while a batch holds the instance); False if none is
        live."""
        return self._add_event(workflow_name, instance_name, "cancel")

    def signal_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        signal_name: str,
        signal_payload_json: str | None,
    ) -> bool:
        """Queue a signal event for the live instance (even while a batch holds it); False if
        none is live."""
        payload = _checked(signal_payload_json, f"payload of signal {signal_name!r}")
        return self._add_event(
            workflow_name, instance_name, "signal", signal_name=signal_name, signal_payload=payload
        )

    def _add_event(self, workflow_name: str, instance_name: str, kind: str, **fields: Any) -> bool:
        s = self._store
        with s.lock:
            inst_id = s.live.get((workflow_name, instance_name))
            if inst_id is None:
                return False
            s.events[inst_id].append(_Event(s.next_id(), inst_id, kind, s.clock(), **fields))
            s.emit([EventsPending(workflow_name)])
        return True

    def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        """Finish a live instance as failed with ``error``, waiting for a batch that holds
        it; False if none is live (then or once the batch let go)."""
        s = self._store
        with s.lock:
            inst = s.wait_for_instance((workflow_name, instance_name))
            if inst is None:
                return False
            s.finish_instance(inst, WorkflowStatus.FAILED, None, error, s.clock())
            s.emit([InstanceFinished(inst.id)])
        return True

    def fail_instance(self, instance_id: int, error: str) -> WorkflowInstanceInfo | None:
        """Finish a live instance as failed, waiting for whoever holds it; None if it is no
        longer live."""
        s = self._store
        with s.lock:
            while instance_id in s.held_instances:
                s.released.wait()
            inst = s.instances.get(instance_id)
            if inst is None:
                return None
            row = s.finish_instance(inst, WorkflowStatus.FAILED, None, error, s.clock())
            s.emit([InstanceFinished(inst.id)])
        return _finished_info(row)

    def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        """The live instance, else its latest finished run, else None."""
        s = self._store
        pair = (workflow_name, instance_name)
        with s.lock:
            inst_id = s.live.get(pair)
            if inst_id is not None:
                return _live_info(s.instances[inst_id])
            row = s.latest(pair)
            return None if row is None else _finished_info(row)

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

        Without ``limit``: every matching row by workflow and instance name. With ``limit``:
        at most that many, newest first (``started_at``, then names, descending), after the
        row whose ``cursor`` is ``after``; each row then carries its ``cursor``."""
        if limit is not None:
            _check_limit(limit)
        if after is not None and not isinstance(after, str):
            raise CerealError(f"after must be a cursor str or None, got {after!r}")
        if after is not None and limit is None:
            raise CerealError("after needs a limit: pass the limit of the listing it came from")
        wanted = None if status is None else _status(status)
        filters = (workflow_name, instance_name, is_running, wanted)
        start = None if after is None else decode_cursor(after, filters)
        s = self._store
        with s.lock:
            rows: list[WorkflowInstanceInfo] = []
            if is_running is not False:
                rows += [_live_info(i) for i in s.instances.values()]
            if is_running is not True:
                rows += [
                    _finished_info(runs[-1])
                    for pair, runs in s.history.items()
                    if runs and pair not in s.live
                ]
        rows = [
            r
            for r in rows
            if (workflow_name is None or r.workflow_name == workflow_name)
            and (instance_name is None or r.instance_name == instance_name)
            and (wanted is None or r.status is wanted)
        ]
        if limit is None:
            return sorted(rows, key=lambda r: (r.workflow_name, r.instance_name))
        rows.sort(key=_page_key, reverse=True)
        if start is not None:
            rows = [r for r in rows if _page_key(r) < start]
        return [replace(r, cursor=encode_cursor(filters, r)) for r in rows[:limit]]

    # -- workflow events -------------------------------------------------------------------

    def has_events(self, workflow_names: Sequence[str]) -> bool:
        """Is any event pending for instances of these workflows (held ones included)?"""
        names = set(workflow_names)
        s = self._store
        with s.lock:
            return any(
                events and s.instances[inst_id].workflow_name in names
                for inst_id, events in s.events.items()
            )

    @contextmanager
    def claim_events(
        self, workflow_names: Sequence[str], limit: int, per_instance: int
    ) -> Iterator[MemoryEventBatch]:
        """Hold up to ``limit`` instances with pending events (oldest instance first,
        skipping held ones) with up to ``per_instance`` of their events each. The hold ends
        on commit or when the context exits; uncommitted work is discarded."""
        _check_limit(limit)
        _check_limit(per_instance, "per_instance")
        names = set(workflow_names)
        s = self._store
        with s.lock:
            chosen = [
                inst
                for inst in s.instances.values()
                if inst.workflow_name in names
                and s.events[inst.id]
                and inst.id not in s.held_instances
            ][:limit]
            s.held_instances.update(inst.id for inst in chosen)
            instances = [_instance_row(inst) for inst in chosen]
            events = {
                inst.id: [_event_row(e) for e in s.events[inst.id][:per_instance]]
                for inst in chosen
            }
        batch = MemoryEventBatch(s, instances, events)
        try:
            yield batch
        finally:
            batch.release()

    # -- tasks -----------------------------------------------------------------------------

    def claim_tasks(
        self,
        limits: dict[str, int],
        owner: str,
        retries: Mapping[str, RetryPolicy] | None = None,
    ) -> tuple[list[ClaimedTask], float | None]:
        """Claim due tasks (up to ``limits[name]`` of each name, oldest due first) for
        ``owner``, storing each name's retry policy for this attempt in the task; also return
        the seconds until the next queued, not yet due task of these names (None: none)."""
        names = {n: lim for n, lim in limits.items() if lim > 0}
        if not names:
            return [], None
        s = self._store
        claimed: list[ClaimedTask] = []
        with s.lock:
            now = s.clock()
            queued = sorted(
                (t for t in s.tasks.values() if t.state == "queued" and t.task_name in names),
                key=lambda t: (t.start_after, t.id),
            )
            taken = dict.fromkeys(names, 0)
            later: list[datetime] = []
            for task in queued:
                if task.start_after > now:
                    later.append(task.start_after)
                elif taken[task.task_name] < names[task.task_name]:
                    taken[task.task_name] += 1
                    task.state, task.claimed_by, task.heartbeat_at = "running", owner, now
                    policy = (retries or {}).get(task.task_name)
                    task.max_attempts = 1 if policy is None else policy.max_attempts
                    task.retry_delay = (
                        policy.delay(task.attempt)
                        if policy is not None and task.retryable
                        else None
                    )
                    claimed.append(_claimed_task(task, s.instances[task.instance_id]))
        next_due = _seconds(min(later) - now) if later else None
        return claimed, next_due

    def complete_tasks(self, outcomes: Sequence[TaskOutcome], owner: str) -> set[int]:
        """Turn outcomes of tasks still running for ``owner`` into ``task_complete`` events,
        or into their next attempt (``retry`` with attempts left); return their ids.
        Outcomes of tasks gone or not owned are discarded."""
        with self._store.lock:
            return self._complete(outcomes, owner, quiet=set())

    def _complete(self, outcomes: Sequence[TaskOutcome], owner: str, quiet: set[int]) -> set[int]:
        """:meth:`complete_tasks` with the store's lock held; the events of the ``quiet``
        instances wake nobody."""
        results = [_checked(o.result_json, f"result of task {o.id}") for o in outcomes]
        s = self._store
        done: set[int] = set()
        now = s.clock()
        wakeups: list[Wakeup] = []
        # In task order, as PostgreSQL inserts the events.
        for outcome, result in sorted(zip(outcomes, results, strict=True), key=_by_task):
            task = s.tasks.get(outcome.id)
            if task is None or task.state != "running" or task.claimed_by != owner:
                continue
            done.add(task.id)
            if outcome.retry and task.retryable:
                task.requeue(now)
                wakeups.append(TasksQueued(task.task_name))
                continue
            del s.tasks[task.id]
            event = _task_complete(s, task, outcome.status, outcome.error, result, now)
            s.events[task.instance_id].append(event)
            if task.instance_id not in quiet:
                wakeups.append(EventsPending(outcome.workflow_name))
        s.emit(wakeups)
        return done

    @contextmanager
    def complete_tasks_held(
        self,
        outcomes: Sequence[TaskOutcome],
        owner: str,
        workflow_names: Sequence[str],
        per_instance: int,
    ) -> Iterator[MemoryEventBatch]:
        """:meth:`complete_tasks`, then hold the instances of ``workflow_names`` the recorded
        tasks belonged to (skipping held ones) with their pending events; only the workflows
        of the instances skipped get a wakeup."""
        if any(o.retry for o in outcomes):
            raise CerealError("complete_tasks_held takes no outcome asking for a retry")
        _check_limit(per_instance, "per_instance")
        names = set(workflow_names)
        s = self._store
        with s.lock:
            owners = [s.tasks.get(o.id) for o in outcomes]
            wanted = {
                t.instance_id
                for t in owners
                if t is not None and t.state == "running" and t.claimed_by == owner
            }
            held = sorted(
                i
                for i in wanted
                if i not in s.held_instances and s.instances[i].workflow_name in names
            )
            s.held_instances.update(held)
            try:
                self._complete(outcomes, owner, quiet=set(held))
            except BaseException:
                s.held_instances.difference_update(held)
                raise
            instances = [_instance_row(s.instances[i]) for i in held]
            events = {i: [_event_row(e) for e in s.events[i][:per_instance]] for i in held}
        batch = MemoryEventBatch(s, instances, events)
        try:
            yield batch
        finally:
            batch.release()

    def heartbeat_tasks(self, task_ids: Sequence[int], owner: str) -> set[int]:
        """Refresh running tasks' heartbeats; return the ids still running for ``owner``."""
        s = self._store
        alive: set[int] = set()
        with s.lock:
            now = s.clock()
            for task_id in task_ids:
                task = s.tasks.get(task_id)
                if task is not None and task.state == "running" and task.claimed_by == owner:
                    task.heartbeat_at = now
                    alive.add(task_id)
        return alive

    def release_tasks(self, task_ids: Sequence[int], owner: str) -> None:
        """Put tasks claimed by ``owner`` that never started back in the queue."""
        s = self._store
        with s.lock:
            wakeups: list[Wakeup] = []
            for task_id in task_ids:
                task = s.tasks.get(task_id)
                if task is not None and task.state == "running" and task.claimed_by == owner:
                    task.release()
                    wakeups.append(TasksQueued(task.task_name))
            s.emit(wakeups)

    def release_unknown_tasks(self, known: Sequence[int], owner: str, older_than: float) -> int:
        """Requeue, as the same attempt, the tasks running for ``owner`` that are not in
        ``known`` and were not heartbeated for ``older_than`` seconds; return how many."""
        s = self._store
        keep = set(known)
        with s.lock:
            cutoff = s.clock() - timedelta(seconds=older_than)
            wakeups: list[Wakeup] = []
            for task in s.tasks.values():
                if (
                    task.state == "running"
                    and task.claimed_by == owner
                    and task.id not in keep
                    and task.heartbeat_at is not None
                    and task.heartbeat_at < cutoff
                ):
                    task.release()
                    wakeups.append(TasksQueued(task.task_name))
            s.emit(wakeups)
        return len(wakeups)

    def reap_lost_tasks(self, timeout: float, error: str) -> int:
        """Handle running tasks without a heartbeat for ``timeout`` seconds (at most 1000 a
        call, each exactly once): requeue those with attempts left as their next attempt,
        report the others as ``lost``; return how many were handled."""
        s = self._store
        with s.lock:
            now = s.clock()
            cutoff = now - timedelta(seconds=timeout)
            lost = sorted(
                (
                    t
                    for t in s.tasks.values()
                    if t.state == "running"
                    and t.heartbeat_at is not None
                    and t.heartbeat_at < cutoff
                ),
                key=lambda t: (t.heartbeat_at or now, t.id),
            )[:_REAP_BATCH]
            wakeups: list[Wakeup] = []
            for task in sorted(lost, key=lambda t: t.id):
                if task.retryable:
                    task.requeue(now)
                    wakeups.append(TasksQueued(task.task_name))
                    continue
                del s.tasks[task.id]
                s.events[task.instance_id].append(_task_complete(s, task, "lost", error, None, now))
                wakeups.append(EventsPending(s.instances[task.instance_id].workflow_name))
            s.emit(wakeups)
        return len(lost)

    # -- schedules -------------------------------------------------------------------------

    def now(self) -> datetime:
        """The store's clock (UTC)."""
        return self._store.clock()

    def insert_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        recurrence: str,
        enabled: bool,
        next_due_at: datetime | None,
    ) -> bool:
        """Create a schedule; False if the pair already has one. An enabled schedule needs a
        ``next_due_at`` (else :class:`DatabaseError`, as PostgreSQL's check refuses it)."""
        params = _checked(parameters_json, "schedule parameters")
        _check_due(workflow_name, instance_name, enabled, next_due_at)
        s = self._store
        pair = (workflow_name, instance_name)
        with s.lock:
            if pair in s.schedules:
                return False
            s.schedules[pair] = _Schedule(
                s.next_id(), *pair, params, recurrence, enabled, next_due_at
            )
            s.emit([SchedulesChanged()])
        return True

    def update_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        """Hold the schedule (waiting for another holder), call ``change(stored, now)``
        outside the store's lock and write what it returns. An exception from ``change``
        (or a change that cannot be stored) writes nothing and propagates. False if there
        is no such schedule."""
        s = self._store
        pair = (workflow_name, instance_name)
        with s.lock:
            while pair in s.held_schedules:
                s.released.wait()
            sched = s.schedules.get(pair)
            if sched is None:
                return False
            stored = StoredSchedule(
                sched.parameters, sched.recurrence, sched.enabled, sched.next_due_at
            )
            now = s.clock()
            s.held_schedules.add(pair)
        try:
            new = change(stored, now)
            params = _checked(new.parameters_json, "schedule parameters")
            _check_due(workflow_name, instance_name, new.enabled, new.next_due_at)
            with s.lock:
                sched.parameters, sched.recurrence = params, new.recurrence
                sched.enabled, sched.next_due_at = new.enabled, new.next_due_at
                s.emit([SchedulesChanged()])
        finally:
            with s.lock:
                s.held_schedules.discard(pair)
                s.released.notify_all()
        return True

    def delete_schedule(self, workflow_name: str, instance_name: str) -> bool:
        """Remove a schedule (waiting for a holder); False if there is none."""
        s = self._store
        pair = (workflow_name, instance_name)
        with s.lock:
            while pair in s.held_schedules:
                s.released.wait()
            if s.schedules.pop(pair, None) is None:
                return False
            s.emit([SchedulesChanged()])
        return True

    def list_schedules(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        """Schedules (all, or those matching the names), by name, with their latest
        finished run's start and end."""
        s = self._store
        with s.lock:
            offset = s.clock() - datetime.now(UTC)
            found: list[Schedule] = []
            for pair in sorted(s.schedules):
                if workflow_name is not None and pair[0] != workflow_name:
                    continue
                if instance_name is not None and pair[1] != instance_name:
                    continue
                sched = s.schedules[pair]
                last = s.latest(pair)
                found.append(
                    Schedule(
                        sched.workflow_name,
                        sched.instance_name,
                        _value(sched.parameters),
                        sched.recurrence,
                        sched.enabled,
                        sched.next_due_at,
                        sched.last_enqueued_at,
                        None if last is None else last.started_at,
                        None if last is None else last.ended_at,
                        offset,
                    )
                )
        return found

    def run_due_schedule(
        self,
        next_due: Callable[[str, datetime], datetime | None],
        trace_context: str | None = None,
    ) -> DueRun | None:
        """Run the most overdue enabled schedule nobody holds: enqueue its instance unless
        the previous run is live, then move it to ``next_due(recurrence, now)``. A None
        answer disables it after this run; ``ValueError``, ``ArithmeticError`` or
        ``TypeError`` from ``next_due`` disables it without running. None when nothing is
        due."""
        s = self._store
        with s.lock:
            now = s.clock()
            due = [
                sc
                for pair, sc in s.schedules.items()
                if sc.enabled
                and sc.next_due_at is not None
                and sc.next_due_at <= now
                and pair not in s.held_schedules
            ]
            if not due:
                return None
            sched = min(due, key=lambda sc: (sc.next_due_at or now, sc.id))
            pair = (sched.workflow_name, sched.instance_name)
            due_at = sched.next_due_at or now
            s.held_schedules.add(pair)
        try:
            problem: str | None = None
            try:
                following = next_due(sched.recurrence, now)
            except (ValueError, ArithmeticError, TypeError) as exc:
                problem = str(exc) or type(exc).__name__
                following = None
            with s.lock:
                if problem is not None:
                    log.error(
                        "disabling schedule that cannot run",
                        workflow=pair[0],
                        instance=pair[1],
                        recurrence=sched.recurrence,
                        error=problem,
                    )
                    sched.enabled = False
                    return DueRun(*pair, due_at, now, False, None, problem)
                enqueued = s.insert_instance(pair, sched.parameters, now, trace_context) is not None
                if enqueued:
                    sched.last_enqueued_at = now
                    s.emit([EventsPending(pair[0])])
                sched.next_due_at, sched.enabled = following, following is not None
                return DueRun(*pair, due_at, now, enqueued, following)
        finally:
            with s.lock:
                s.held_schedules.discard(pair)
                s.released.notify_all()

    def seconds_until_next_schedule(self) -> float | None:
        """Seconds until the earliest enabled schedule is due (negative when overdue)."""
        s = self._store
        with s.lock:
            dues = [sc.next_due_at for sc in s.schedules.values() if sc.enabled and sc.next_due_at]
            return _seconds(min(dues) - s.clock()) if dues else None

    # -- retention ---------------------------------------------------------------------------

    def vacuum_queues(self, min_dead_rows: int) -> list[str]:
        """Nothing to reclaim: deleted entries leave no trace in memory."""
        return []

    def prune_history(self, max_age: float | None, max_runs: int | None) -> int:
        """Delete up to :data:`~cereal.driver.PRUNE_BATCH` finished runs (oldest first) that
        ended more than ``max_age`` seconds ago or are beyond the newest ``max_runs``."""
        if max_age is None and max_runs is None:
            return 0
        s = self._store
        with s.lock:
            now = s.clock()
            ids = list(s.results)  # oldest first
            beyond = set(ids[: max(len(ids) - max_runs, 0)]) if max_runs is not None else set()
            cutoff = None if max_age is None else now - timedelta(seconds=max_age)
            doomed = [
                rid
                for rid in ids
                if rid in beyond or (cutoff is not None and s.results[rid].ended_at < cutoff)
            ][:PRUNE_BATCH]
            for rid in doomed:
                row = s.results.pop(rid)
                pair = (row.workflow_name, row.instance_name)
                s.history[pair].remove(row)
                if not s.history[pair]:
                    del s.history[pair]
        return len(doomed)

    # -- operator views ----------------------------------------------------------------------

    def list_tasks(
        self,
        *,
        task_name: str | None = None,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        limit: int | None = None,
    ) -> list[TaskInfo]:
        """Queued and running tasks, oldest first."""
        if limit is not None:
            _check_limit(limit)
        s = self._store
        with s.lock:
            now = s.clock()
            found: list[TaskInfo] = []
            for task in sorted(s.tasks.values(), key=lambda t: (t.enqueued_at, t.id)):
                inst = s.instances[task.instance_id]
                if (
                    (task_name is not None and task.task_name != task_name)
                    or (workflow_name is not None and inst.workflow_name != workflow_name)
                    or (instance_name is not None and inst.instance_name != instance_name)
                ):
                    continue
                if limit is not None and len(found) >= limit:
                    break
                found.append(
                    TaskInfo(
                        task.id,
                        task.task_name,
                        inst.workflow_name,
                        inst.instance_name,
                        task.state,
                        _value(task.parameters),
                        task.enqueued_at,
                        task.start_after,
                        task.claimed_by,
                        None if task.heartbeat_at is None else _seconds(now - task.heartbeat_at),
                        task.attempt,
                        task.max_attempts,
                    )
                )
        return found

    def overview(self, stale_after: float) -> Overview:
        """Counts of live instances, kept runs, tasks and schedules, in one snapshot."""
        s = self._store
        with s.lock:
            now = s.clock()
            instances: dict[tuple[str, str], int] = {}
            for inst in s.instances.values():
                key = (inst.workflow_name, inst.status.value)
                instances[key] = instances.get(key, 0) + 1
            finished: dict[tuple[str, str], int] = {}
            for row in s.results.values():
                key = (row.workflow_name, row.status.value)
                finished[key] = finished.get(key, 0) + 1
            stale_cutoff = now - timedelta(seconds=stale_after)
            tasks: list[TaskCount] = []
            for name in sorted({t.task_name for t in s.tasks.values()}):
                mine = [t for t in s.tasks.values() if t.task_name == name]
                due = [t.start_after for t in mine if t.state == "queued" and t.start_after <= now]
                running = [t for t in mine if t.state == "running"]
                tasks.append(
                    TaskCount(
                        name,
                        sum(t.state == "queued" for t in mine),
                        len(running),
                        _seconds(now - min(due)) if due else None,
                        sum(
                            t.heartbeat_at is not None and t.heartbeat_at < stale_cutoff
                            for t in running
                        ),
                    )
                )
            overdue = sum(
                sc.enabled and sc.next_due_at is not None and sc.next_due_at <= now
                for sc in s.schedules.values()
            )
            return Overview(instances, finished, tasks, overdue, len(s.schedules), now)

    def schema_status(self) -> SchemaStatus:
        """Always current: a memory store reports its one pseudo-migration as applied."""
        return SchemaStatus(self._schema, [MEMORY_MIGRATION[0]], [MEMORY_MIGRATION])

    def migration_sql(self) -> str:
        """Explains, as an SQL comment, that a memory store has no schema to create (so
        tools that print the migration SQL keep working)."""
        return (
            "-- cereal's in-memory driver keeps its state in process memory:\n"
            "-- there is no SQL schema to create and nothing to migrate.\n"
        )

    def ping(self) -> None:
        """Memory always answers."""

    # -- dashboard views ---------------------------------------------------------------------

    def recent_failures(self, limit: int) -> list[WorkflowInstanceInfo]:
        """The newest failed runs kept in history, newest first, at most ``limit``."""
        _check_limit(limit)
        s = self._store
        with s.lock:
            failed = [r for r in s.results.values() if r.status is WorkflowStatus.FAILED]
            return [_finished_info(r) for r in sorted(failed, key=lambda r: -r.id)[:limit]]

    def instance_timeline(
        self, workflow_name: str, instance_name: str, limit: int
    ) -> InstanceTimeline:
        """The pair's pending events, queued and running tasks, and finished runs (memory
        does not record when a live instance last changed: ``updated_at`` is None)."""
        _check_limit(limit)
        s = self._store
        pair = (workflow_name, instance_name)
        with s.lock:
            now = s.clock()
            inst_id = s.live.get(pair)
            inst = None if inst_id is None else s.instances[inst_id]
            events: list[TimelineEvent] = []
            tasks: list[TaskInfo] = []
            if inst is not None:
                events = [
                    TimelineEvent(
                        e.id,
                        e.kind,
                        e.enqueued_at,
                        e.task_name,
                        e.task_status,
                        e.task_error,
                        e.signal_name,
                    )
                    for e in s.events.get(inst.id, [])[:limit]
                ]
                mine = sorted(
                    (t for t in s.tasks.values() if t.instance_id == inst.id), key=lambda t: t.id
                )
                tasks = [
                    TaskInfo(
                        t.id,
                        t.task_name,
                        workflow_name,
                        instance_name,
                        t.state,
                        _value(t.parameters),
                        t.enqueued_at,
                        t.start_after,
                        t.claimed_by,
                        None if t.heartbeat_at is None else _seconds(now - t.heartbeat_at),
                        t.attempt,
                        t.max_attempts,
                    )
                    for t in mine[:limit]
                ]
            runs = [_finished_info(r) for r in reversed(s.history.get(pair, []))][:limit]
            return InstanceTimeline(
                now=now,
                live=inst is not None,
                updated_at=None,
                enqueued_tasks=inst.enqueued_tasks if inst is not None else 0,
                completed_tasks=inst.completed_tasks if inst is not None else 0,
                events=events,
                tasks=tasks,
                runs=runs,
            )


class MemoryEventBatch:
    """Instances held by :meth:`MemoryDriver.claim_events`, with their next events."""

    def __init__(
        self,
        store: MemoryStore,
        instances: list[InstanceRow],
        events: dict[int, list[EventRow]],
    ) -> None:
        self._store = store
        self.instances = instances
        self.events = events
        self._held = {inst.id for inst in instances}
        self._aborted = False

    def commit(self, outcomes: Sequence[StepOutcome]) -> list[WorkflowInstanceInfo]:
        """Apply every outcome at once and let the instances go; return the finished runs.

        A value that cannot be stored raises :class:`SerializationError` before anything is
        written (the instances stay held until the context exits)."""
        return self._apply(outcomes, keep=None)[0]

    def commit_claiming(
        self, outcomes: Sequence[StepOutcome], claim: TaskClaim
    ) -> tuple[list[WorkflowInstanceInfo], list[ClaimedTask]]:
        """:meth:`commit`, inserting the tasks ``claim`` can take as claimed by its owner
        (see :class:`~cereal.driver.EventBatch`); return the finished runs and those tasks."""
        return self._apply(outcomes, keep=None, claim=claim)

    def split(
        self, done: Sequence[StepOutcome], keep: int
    ) -> tuple[list[WorkflowInstanceInfo], bool]:
        """Apply ``done`` and let every instance go but ``keep``, which stays held (always
        True here: nothing can take a held instance)."""
        if keep not in self._held:
            raise CerealError(f"instance {keep} is not held by this batch")
        finished, _ = self._apply(done, keep=keep)
        self.instances = [i for i in self.instances if i.id == keep]
        self.events = {keep: self.events[keep]}
        return finished, True

    def abort(self) -> None:
        """Let the instances go and refuse any later commit."""
        with self._store.lock:
            self._aborted = True
            self._release_locked()

    def _apply(
        self, outcomes: Sequence[StepOutcome], keep: int | None, claim: TaskClaim | None = None
    ) -> tuple[list[WorkflowInstanceInfo], list[ClaimedTask]]:
        if self._aborted:
            raise TransientDatabaseError("this event batch was aborted; nothing was written")
        if not self._held and self.instances:
            raise CerealError("this event batch was already committed or discarded")
        for o in outcomes:
            if o.instance.id not in self._held or o.instance.id == keep:
                raise CerealError(f"instance {o.instance.id} is not held by this batch")
        checked = [
            (
                o,
                _checked(o.result_json if o.finished else o.payload_json, "result or payload"),
                [_checked(t.parameters_json, f"parameters of task {t.name!r}") for t in o.tasks],
            )
            for o in outcomes
        ]
        s = self._store
        finished: list[WorkflowInstanceInfo] = []
        claimed: list[ClaimedTask] = []
        with s.lock:
            if self._aborted:  # abort() won the race for the lock
                raise TransientDatabaseError("this event batch was aborted; nothing was written")
            now = s.clock()
            starts = [[_start_time(t, now) for t in o.tasks] for o in outcomes]
            # Free workers left per name; none where an older task of the name is due.
            free: dict[str, int] = {}
            if claim is not None:
                names = {t.name for o in outcomes if not o.finished for t in o.tasks}
                free = {n: k for n, k in claim.limits.items() if k > 0 and n in names}
            if free:
                for t in s.tasks.values():
                    if t.state == "queued" and t.start_after <= now:
                        free.pop(t.task_name, None)
            wakeups: list[Wakeup] = []
            for (o, value, task_params), task_starts in zip(checked, starts, strict=True):
                inst = s.instances[o.instance.id]
                if o.finished:
                    row = s.finish_instance(inst, o.status, value, o.error, now)
                    info = _finished_info(row)
                    # The run as committed: the result is reported whatever the status.
                    finished.append(replace(info, result=_value(value)))
                    wakeups.append(InstanceFinished(inst.id))
                    continue
                consumed = set(o.consumed)
                s.events[inst.id] = [e for e in s.events[inst.id] if e.id not in consumed]
                inst.payload, inst.status = value, WorkflowStatus.RUNNING
                inst.enqueued_tasks, inst.completed_tasks = o.enqueued_tasks, o.completed_tasks
                for (task, trace), params, start in zip(
                    o.traced_tasks(), task_params, task_starts, strict=True
                ):
                    row_id = s.next_id()
                    added = s.tasks[row_id] = _Task(
                        row_id,
                        inst.id,
                        task.name,
                        params,
                        now,
                        start,
                        trace_context=trace,
                        route=task.route,
                    )
                    if claim is not None and start <= now and free.get(task.name, 0) > 0:
                        free[task.name] -= 1
                        added.state, added.claimed_by, added.heartbeat_at = (
                            "running",
                            claim.owner,
                            now,
                        )
                        added.max_attempts, added.retry_delay = claim.first_attempt(task.name)
                        claimed.append(_claimed_task(added, inst))
                    else:
                        wakeups.append(TasksQueued(task.name))
            self._release_locked(keep)
            s.emit(wakeups)
        return finished, claimed

    def holds(self, instance_id: int) -> bool:
        """Whether the batch still holds the instance (not committed, split off or let go)."""
        return instance_id in self._held

    def release(self) -> None:
        """Let the instances go (discarding uncommitted work); harmless after commit."""
        with self._store.lock:
            self._release_locked()

    def _release_locked(self, keep: int | None = None) -> None:
        going = self._held - {keep}
        if going:
            self._store.held_instances.difference_update(going)
            self._held -= going
            self._store.released.notify_all()


def _by_task(pair: tuple[TaskOutcome, str | None]) -> int:
    return pair[0].id


def _task_complete(
    s: MemoryStore,
    task: _Task,
    status: str,
    error: str | None,
    result: str | None,
    now: datetime,
) -> _Event:
    """The ``task_complete`` event recording how ``task`` ended."""
    return _Event(
        s.next_id(),
        task.instance_id,
        "task_complete",
        now,
        task_name=task.task_name,
        task_parameters=task.parameters,
        task_status=status,
        task_error=error,
        task_result=result,
        task_attempts=task.attempt,
        task_route=task.route,
    )


def _start_time(task: PendingTask, now: datetime) -> datetime:
    """When a task becomes due; a time PostgreSQL could not store is refused as it would be."""
    if task.start_at is not None:
        return task.start_at
    try:
        return now + timedelta(seconds=task.delay)
    except OverflowError:
        raise DatabaseError(
            f"start time of task {task.name!r} is out of range: now + {task.delay:g}s"
        ) from None


# -- records ----------------------------------------------------------------------------------


def _check_due(
    workflow_name: str, instance_name: str, enabled: bool, next_due_at: datetime | None
) -> None:
    if enabled and next_due_at is None:
        raise DatabaseError(
            f"schedule {workflow_name!r}/{instance_name!r} cannot be enabled without a next_due_at"
        )


def _page_key(info: WorkflowInstanceInfo) -> tuple[datetime, str, str]:
    assert info.started_at is not None
    return (info.started_at, info.workflow_name, info.instance_name)


def _live_info(inst: _Instance) -> WorkflowInstanceInfo:
    return WorkflowInstanceInfo(
        workflow_name=inst.workflow_name,
        instance_name=inst.instance_name,
        status=inst.status,
        parameters=_value(inst.parameters),
        payload=_value(inst.payload),
        started_at=inst.started_at,
    )


def _finished_info(row: _Result) -> WorkflowInstanceInfo:
    return WorkflowInstanceInfo(
        workflow_name=row.workflow_name,
        instance_name=row.instance_name,
        status=row.status,
        parameters=_value(row.parameters),
        result=_value(row.result) if row.status is WorkflowStatus.COMPLETED else None,
        error=row.error,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def _instance_row(inst: _Instance) -> InstanceRow:
    params, p1 = _decode(inst.parameters, "parameters")
    payload, p2 = _decode(inst.payload, "payload")
    return InstanceRow(
        inst.id,
        inst.workflow_name,
        inst.instance_name,
        params,
        payload,
        inst.status,
        inst.enqueued_tasks,
        inst.completed_tasks,
        inst.started_at,
        problem=_problems(p1, p2),
        trace_context=inst.trace_context,
    )


def _event_row(e: _Event) -> EventRow:
    params, p1 = _decode(e.task_parameters, "task parameters")
    result, p2 = _decode(e.task_result, "task result")
    signal, p3 = _decode(e.signal_payload, "signal payload")
    return EventRow(
        e.id,
        e.instance_id,
        e.kind,
        e.enqueued_at,
        task_name=e.task_name,
        task_parameters=params,
        task_status=e.task_status,
        task_error=e.task_error,
        task_result=result,
        signal_name=e.signal_name,
        signal_payload=signal,
        problem=_problems(p1, p2, p3),
        task_attempts=e.task_attempts or 1,
        task_route=e.task_route,
    )


def _claimed_task(task: _Task, inst: _Instance) -> ClaimedTask:
    params, problem = _decode(task.parameters, "task parameters")
    return ClaimedTask(
        task.id,
        task.instance_id,
        task.task_name,
        params,
        task.enqueued_at,
        inst.workflow_name,
        inst.instance_name,
        problem=problem,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        trace_context=task.trace_context,
    )


if TYPE_CHECKING:
    _static_check: Driver = MemoryDriver()
    _static_async_check: AsyncDriver = MemoryDriver().async_driver()
