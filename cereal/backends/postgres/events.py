"""Workflow-event batches: lock instances with pending events, commit their outcomes.

A batch costs two round trips: BEGIN, the locking statement and the statement reading the
events travel in one pipeline, and COMMIT travels in another with every write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg.rows import dict_row

from cereal.backends.postgres import notify
from cereal.backends.postgres.arrays import (
    float_array,
    in_statements,
    int_array,
    text_array,
    timestamp_array,
)
from cereal.backends.postgres.connections import (
    Connection,
    Connections,
    roll_back_open_transaction,
)
from cereal.backends.postgres.errors import translate
from cereal.backends.postgres.floors import EventFloor, TaskFloors
from cereal.backends.postgres.jsonb import use_lenient_jsonb
from cereal.backends.postgres.rows import (
    Columns,
    as_dict,
    claimed_starts,
    claimed_tasks,
    columns,
    event_row,
    event_rows,
    instance_row,
    instance_rows,
    loads,
)
from cereal.driver import (
    ClaimedTask,
    EventRow,
    InstanceRow,
    StepOutcome,
    TaskClaim,
    TasksQueued,
)
from cereal.errors import TransientDatabaseError
from cereal.types import WorkflowInstanceInfo

__all__ = [
    "PostgresEventBatch",
    "claim_events",
    "complete_tasks_held",
    "enqueue_and_hold",
    "enqueue_held",
]


def claim_events(
    connections: Connections,
    queries: dict[str, LiteralString],
    channel: str,
    workflow_names: Sequence[str],
    limit: int,
    per_instance: int,
    floor: EventFloor,
    task_floors: TaskFloors,
) -> AbstractContextManager[PostgresEventBatch]:
    """Lock up to ``limit`` instances with pending events and fetch their next events.

    The instances stay locked until the batch commits or the context exits (which rolls
    back, so every event is delivered again later). The scan starts at ``floor``, which the
    statement moves up (see :mod:`cereal.backends.postgres.floors`). A claim for one workflow
    reads only that workflow's events, and so does one for several, up to
    :data:`MERGED_WALK_MAX` names (see :func:`lock_statement`).
    """
    names = list(workflow_names)
    statement = lock_statement(queries, len(names))

    def begin(conn: Connection) -> PostgresEventBatch:
        # One round trip: BEGIN, the locks and the events travel in one pipeline.
        used = floor.params()
        with conn.pipeline():
            conn.execute("BEGIN")
            params = {"names": names, "name": names[0], "limit": limit, **used}
            locking, fetching = _lock(conn, queries, statement, params, per_instance)
            rows, at = locking.fetchall(), columns(locking)
            floor.update(used, as_dict(rows[-1], at))  # the last row reports the floor
            instances, events = _locked(rows, at, fetching)
        return PostgresEventBatch(conn, queries, channel, instances, events, task_floors)

    return _holding(connections, begin)


def enqueue_held(
    connections: Connections,
    queries: dict[str, LiteralString],
    channel: str,
    task_floors: TaskFloors,
    params: dict[str, Any],
) -> AbstractContextManager[PostgresEventBatch | None]:
    """Insert a live instance with its start event in an open transaction and hold it as a
    one-instance batch (None when the pair is live already). Nothing is stored unless the
    batch commits. ``params``: those of ``enqueue_held`` but the channel."""

    def begin(conn: Connection) -> PostgresEventBatch | None:
        with conn.pipeline():
            conn.execute("BEGIN")
            inserting = conn.cursor(row_factory=dict_row)
            use_lenient_jsonb(inserting.adapters)
            inserting.execute(queries["enqueue_held"], params)
            row = inserting.fetchone()
        if row is None:
            return None
        inst = instance_row(row)
        start = event_row(
            dict.fromkeys(_EVENT_COLUMNS)
            | {
                "id": row["event_id"],
                "instance_id": inst.id,
                "event_type": "start",
                "enqueued_at": row["event_enqueued_at"],
            }
        )
        return PostgresEventBatch(conn, queries, channel, [inst], {inst.id: [start]}, task_floors)

    return _holding(connections, begin)


def complete_tasks_held(
    connections: Connections,
    queries: dict[str, LiteralString],
    channel: str,
    task_floors: TaskFloors,
    holding: dict[str, Any],
    parts: Sequence[dict[str, Any]],
    per_instance: int,
) -> AbstractContextManager[PostgresEventBatch]:
    """Record finished tasks' outcomes and commit, then hold the instances they belong to
    with their pending events, in one round trip. ``holding``: the parameters of
    ``hold_instances_of_tasks`` (every task's id, the owner, the workflow names); ``parts``:
    those of ``complete_tasks``, one statement each.

    The instances are locked before the results are written and again right after their
    commit: those another session held in the first lock get a notification with the commit,
    and one taken in between is handled by whoever took it (its lock came after the commit).
    """

    def begin(conn: Connection) -> PostgresEventBatch:
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute(queries["hold_instances_of_tasks"], holding)
            conn.execute(queries["lock_instances_of_tasks"], {"ids": holding["ids"]})
            for params in parts:
                conn.execute(queries["complete_tasks"], params)
            conn.execute("COMMIT")
            instances, events = _relock(conn, queries, per_instance)
        return PostgresEventBatch(conn, queries, channel, instances, events, task_floors)

    return _holding(connections, begin)


def enqueue_and_hold(
    connections: Connections,
    queries: dict[str, LiteralString],
    channel: str,
    task_floors: TaskFloors,
    params: dict[str, Any],
    per_instance: int,
) -> AbstractContextManager[PostgresEventBatch | None]:
    """Enqueue an instance and commit, then lock it again with its events, in one round trip
    (None when the pair is live). No notification: the batch is the instance's claim.
    ``params``: those of ``enqueue_holding``."""

    def begin(conn: Connection) -> PostgresEventBatch | None:
        with conn.pipeline():
            conn.execute("BEGIN")
            inserting = conn.execute(queries["enqueue_holding"], params)
            conn.execute("COMMIT")
            instances, events = _relock(conn, queries, per_instance)
            row = inserting.fetchone()
        if row is None or row[0] is None:
            return None
        return PostgresEventBatch(conn, queries, channel, instances, events, task_floors)

    return _holding(connections, begin)


def _lock(
    conn: Connection,
    queries: dict[str, LiteralString],
    statement: LiteralString,
    params: dict[str, Any],
    per_instance: int,
) -> tuple[psycopg.Cursor[tuple[Any, ...]], psycopg.Cursor[tuple[Any, ...]]]:
    """Queue, in the open pipeline, a statement locking instances (it lists them for
    fetch_events) and fetch_events after it; return their cursors. A value that cannot be
    decoded fails its instance instead of the batch."""
    locking = conn.cursor()
    use_lenient_jsonb(locking.adapters)
    locking.execute(statement, params)
    fetching = conn.cursor()
    use_lenient_jsonb(fetching.adapters)
    fetching.execute(queries["fetch_events"], {"per_instance": per_instance})
    return locking, fetching


def _locked(
    rows: list[tuple[Any, ...]], at: Columns, fetching: psycopg.Cursor[tuple[Any, ...]]
) -> tuple[list[InstanceRow], dict[int, list[EventRow]]]:
    """The instances of a locking statement's ``rows`` (a row without an id is not one: it
    carries the floor, or only makes sure a setting was written), with their events."""
    instances = instance_rows(rows, at)
    events: dict[int, list[EventRow]] = {i.id: [] for i in instances}
    for e in event_rows(fetching.fetchall(), columns(fetching)):
        events[e.instance_id].append(e)
    return instances, events


def _relock(
    conn: Connection, queries: dict[str, LiteralString], per_instance: int
) -> tuple[list[InstanceRow], dict[int, list[EventRow]]]:
    """In a new transaction of the open pipeline, lock again the instances held before the
    commit (relock_held_instances) and read their events."""
    conn.execute("BEGIN")
    locking, fetching = _lock(conn, queries, queries["relock_held_instances"], {}, per_instance)
    return _locked(locking.fetchall(), columns(locking), fetching)


_EVENT_COLUMNS = (
    "task_name",
    "task_parameters",
    "task_status",
    "task_error",
    "task_result",
    "task_attempts",
    "task_route",
    "signal_name",
    "signal_payload",
)

Held = TypeVar("Held", bound="PostgresEventBatch | None")


@contextmanager
def _holding(connections: Connections, begin: Callable[[Connection], Held]) -> Iterator[Held]:
    """Borrow a pooled connection and open a batch on it with ``begin`` (which starts the
    transaction); when the context exits, roll back what was not committed, and drop the
    connection if a psycopg error or the batch left it broken."""
    with connections.connection() as conn:
        batch: PostgresEventBatch | None = None
        try:
            held = begin(conn)
            batch = held
            yield held
        except psycopg.Error:
            conn.close()  # see PostgresEventBatch.broken
            raise
        finally:
            if batch is not None:
                batch.detach()  # from here on, abort() leaves the connection alone
                if batch.broken:
                    conn.close()
            roll_back_open_transaction(conn)


MERGED_WALK_MAX = 32
"""Most workflow names whose pending events a claim walks name by name (merged); a claim for
more walks every pending event, those of other workflows too."""


def lock_statement(queries: dict[str, LiteralString], names: int) -> LiteralString:
    """``lock_instances_with_events`` for a claim of ``names`` workflows, with its walk:
    ``pending_of_one_workflow`` for one, ``pending_of_each_workflow`` with one branch per
    name for up to :data:`MERGED_WALK_MAX`, ``pending_of_workflows`` beyond (built once per
    count and kept in ``queries``)."""
    key = f"lock_instances_with_events/{names}"
    found = queries.get(key)
    if found is None:
        if names == 1:
            walk = queries["pending_of_one_workflow"]
        elif names <= MERGED_WALK_MAX:
            branch = queries["pending_of_nth_workflow"]  # /*n*/: a position in names
            walk = queries["pending_of_each_workflow"].replace(
                "/*branches*/",
                " UNION ALL ".join(branch.replace("/*n*/", str(n)) for n in range(1, names + 1)),
            )
        else:
            walk = queries["pending_of_workflows"]
        found = queries[key] = queries["lock_instances_with_events"].replace("/*pending*/", walk)
    return found


class PostgresEventBatch:
    """Instances locked in one open transaction, with their pending events.

    ``split`` and ``abort`` come from other threads than the owner's: a lock keeps them from
    using the connection at the same time as a commit, and ``abort`` closes the connection
    only while the batch still owns it (never once it went back to the pool)."""

    def __init__(
        self,
        conn: Connection,
        queries: dict[str, LiteralString],
        channel: str,
        instances: list[InstanceRow],
        events: dict[int, list[EventRow]],
        task_floors: TaskFloors,
    ) -> None:
        self._conn = conn
        self._task_floors = task_floors
        self._q = queries
        self._channel = channel
        self.instances = instances
        self.events = events
        self.broken = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = False  # a commit or split is using the connection
        self._owned = True  # the connection is still this batch's
        self._aborted = False
        """A statement failed inside the write pipeline: psycopg's prepared-statement cache
        may be out of step with the server, so the connection is not reused."""

    def commit(self, outcomes: Sequence[StepOutcome]) -> list[WorkflowInstanceInfo]:
        """Write every outcome and commit; return the runs that finished."""
        ended, _, _ = self._guarded(outcomes, None, None)
        return self._finished(outcomes, ended)

    def commit_claiming(
        self, outcomes: Sequence[StepOutcome], claim: TaskClaim
    ) -> tuple[list[WorkflowInstanceInfo], list[ClaimedTask]]:
        """:meth:`commit`, inserting the tasks ``claim`` can take as claimed by its owner
        (see :class:`~cereal.driver.EventBatch`); return the finished runs and those tasks."""
        ended, _, claimed = self._guarded(outcomes, None, claim)
        return self._finished(outcomes, ended), claimed

    def split(
        self, done: Sequence[StepOutcome], keep: int
    ) -> tuple[list[WorkflowInstanceInfo], bool]:
        """Commit ``done`` (which releases every lock), and in the same pipeline lock ``keep``
        again in a new transaction if nobody took it in between and its first event is still
        there; the batch then holds ``keep`` alone."""
        first = self.events[keep][0].id if self.events.get(keep) else None
        ended, kept, _ = self._guarded(done, (keep, first), None)
        self.instances = [i for i in self.instances if i.id == keep]
        self.events = {keep: self.events.get(keep, [])}
        return self._finished(done, ended), kept

    def abort(self) -> None:
        """Close the connection from the calling thread (the server rolls back and releases
        the locks at once); a commit under way is cancelled first and waited for."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
            if self._busy:
                with suppress(psycopg.Error):
                    self._conn.cancel_safe(timeout=2.0)
                self._idle.wait_for(lambda: not self._busy, timeout=5.0)
            if self._owned and not self._conn.closed:
                self.broken = True
                with suppress(psycopg.Error):
                    self._conn.close()

    def detach(self) -> None:
        """The batch's context is ending: the connection goes back to its owner."""
        with self._lock:
            self._owned = False

    def _guarded(
        self,
        outcomes: Sequence[StepOutcome],
        relock: tuple[int, int | None] | None,
        claim: TaskClaim | None,
    ) -> tuple[dict[int, datetime], bool, list[ClaimedTask]]:
        with self._lock:
            if self._aborted:
                raise TransientDatabaseError("this event batch was aborted; nothing was written")
            self._busy = True
        try:
            return self._write(outcomes, relock, claim)
        except psycopg.Error as exc:
            self.broken = True
            if self._aborted:
                raise TransientDatabaseError(
                    "this event batch was aborted; nothing was written"
                ) from exc
            raise translate(exc) from exc
        finally:
            with self._lock:
                self._busy = False
                self._idle.notify_all()

    def _finished(
        self, outcomes: Sequence[StepOutcome], ended: dict[int, datetime]
    ) -> list[WorkflowInstanceInfo]:
        finished: list[WorkflowInstanceInfo] = []
        for o in outcomes:
            if not o.finished or o.instance.id not in ended:
                continue
            finished.append(
                WorkflowInstanceInfo(
                    workflow_name=o.instance.workflow_name,
                    instance_name=o.instance.instance_name,
                    status=o.status,
                    parameters=o.instance.parameters,
                    result=loads(o.result_json),
                    error=o.error,
                    started_at=o.instance.started_at,
                    ended_at=ended[o.instance.id],
                )
            )
        return finished

    def _write(
        self,
        outcomes: Sequence[StepOutcome],
        relock: tuple[int, int | None] | None,
        claim: TaskClaim | None,
    ) -> tuple[dict[int, datetime], bool, list[ClaimedTask]]:
        q, conn = self._q, self._conn
        going = [o for o in outcomes if not o.finished]
        done = [o for o in outcomes if o.finished]
        consumed = [eid for o in going for eid in o.consumed]
        tasks = [(o.instance.id, t, c) for o in going for t, c in o.traced_tasks()]
        claiming = [n for n, k in claim.limits.items() if k > 0] if claim and tasks else []
        notes = sorted(
            # insert_tasks_claiming wakes the claimers of the tasks it leaves queued
            {notify.encode(TasksQueued(t.name)) for _, t, _ in tasks if not claiming}
        ) + notify.encode_finished(o.instance.id for o in done)
        with conn.pipeline():
            if consumed:
                conn.execute(q["delete_events"], {"ids": int_array(consumed)})
            for part in in_statements(going):
                conn.execute(
                    q["update_instances"],
                    {
                        "ids": int_array(o.instance.id for o in part),
                        "payloads": text_array(o.payload_json for o in part),
                        "enqueued": int_array(o.enqueued_tasks for o in part),
                        "completed": int_array(o.completed_tasks for o in part),
                    },
                )
            taking = None
            if tasks:
                rows = {
                    "instance_ids": int_array(i for i, _, _ in tasks),
                    "names": text_array(t.name for _, t, _ in tasks),
                    "parameters": text_array(t.parameters_json for _, t, _ in tasks),
                    "start_ats": timestamp_array(t.start_at for _, t, _ in tasks),
                    "delays": float_array(t.delay for _, t, _ in tasks),
                    "trace_contexts": text_array(c for _, _, c in tasks),
                    "routes": text_array(t.route for _, t, _ in tasks),
                }
                if claiming and claim is not None:
                    policies = [claim.first_attempt(n) for n in claiming]
                    taking = conn.cursor()
                    use_lenient_jsonb(taking.adapters)  # as claim_tasks reads parameters
                    taking.execute(
                        q["insert_tasks_claiming"],
                        rows
                        | {
                            "claim_names": claiming,
                            "claim_limits": [claim.limits[n] for n in claiming],
                            "max_attempts": [m for m, _ in policies],
                            "retry_delays": [d for _, d in policies],
                            "floors": self._task_floors.current(claiming),
                            "owner": claim.owner,
                            "channel": self._channel,
                        },
                    )
                else:
                    conn.execute(q["insert_tasks"], rows)
            finishing = []
            for part in in_statements(done):
                cur = conn.cursor(row_factory=dict_row)
                cur.execute(
                    q["finish_instances"],
                    {
                        "ids": int_array(o.instance.id for o in part),
                        "statuses": text_array(o.status.value for o in part),
                        "results": text_array(o.result_json for o in part),
                        "errors": text_array(o.error for o in part),
                    },
                )
                finishing.append(cur)
            if notes:
                conn.execute(q["notify"], {"channel": self._channel, "payloads": notes})
            conn.execute("COMMIT")
            held = pending = None
            if relock is not None:
                conn.execute("BEGIN")
                held = conn.execute(q["relock_instance"], {"id": relock[0]})
                pending = conn.execute(q["event_still_pending"], {"event_id": relock[1]})
            ended = {r["id"]: r["ended_at"] for cur in finishing for r in cur.fetchall()}
            kept = False
            if held is not None and pending is not None:
                locked, still = held.fetchone(), pending.fetchone()
                kept = locked is not None and still is not None and bool(still[0])
            if taking is None:
                return ended, kept, []
            taken, at = taking.fetchall(), columns(taking)
            self._task_floors.claimed(claimed_starts(taken, at))
            return ended, kept, claimed_tasks(taken, at, {o.instance.id: o.instance for o in going})
