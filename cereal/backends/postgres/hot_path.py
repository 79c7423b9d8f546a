"""Preparing the statements of a workflow's life on the pooled connections of a manager.

A statement's first runs on a connection cost more than the later ones: psycopg sends it
unnamed (parsed each time) until its sixth run and prepares it then, and PostgreSQL plans the
first five runs of a prepared statement for their parameters before it settles on a plan. On
each connection of a new pool, the first workflows of a manager paid for that: 7 to 14 ms from
enqueue to task start against 3 ms once warm.

:func:`prepare_hot_path` runs the statements of a single-task workflow's life once, on rows of
its own, in a transaction the caller rolls back; ``RUNS_TO_SETTLE`` such steps prepare each
statement and settle its plan. Later calls find each statement prepared with its plan settled,
provided they send the same text with parameters of the same types: the parameters here are
built as the driver builds them (arrays as literals, names and payloads as text).

The six steps take about 40 ms on a new connection, too long to run before the pool lends it:
a drain that makes the pool grow would wait that long for each new connection.
:class:`HotPathPreparer` runs them instead in a thread of its own, a step at a time, on
connections nobody needs at that moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from cereal.backends.postgres.arrays import float_array, int_array, text_array, timestamp_array
from cereal.logging import get_logger

__all__ = [
    "GIVE_UP_AFTER",
    "QUIET_CHECK",
    "QUIET_LOOKS",
    "RUNS_TO_SETTLE",
    "HotPathPreparer",
    "prepare_hot_path",
]

RUNS_TO_SETTLE = 6
"""Runs of a prepared statement after which PostgreSQL keeps its plan: five planned for their
parameters, then the generic plan weighed against them."""

EVENTS_PER_INSTANCE = 64
"""The events fetched per instance by default (``ManagerConfig``); any value below 32,768 is
sent as the same parameter type."""

CHANNEL = "cereal_warm_up"
"""The channel the statements that notify are given (a rolled-back transaction sends
nothing; channel names are limited to 63 bytes, which the instance name is not)."""

log = get_logger("cereal.postgres")

QUIET_CHECK = 0.05
"""Seconds between looks at the pool while connections wait to be prepared."""

QUIET_LOOKS = 2
"""Looks in a row (``QUIET_CHECK`` apart) that must find every connection of the pool idle
before a step: a pool draining a backlog is seldom found idle twice, and is left alone."""

GIVE_UP_AFTER = 100
"""Looks in a row without a step done after which the connections still waiting are
forgotten (a pool that never rests, or a connection it keeps out of reach)."""

Connection = psycopg.Connection[tuple[Any, ...]]


class HotPathPreparer:
    """Runs ``prepare(conn, step)`` for steps 0 to ``RUNS_TO_SETTLE - 1`` on each pooled
    connection :meth:`add` names, in a thread of its own, one step at a time: only when the
    pool has rested (every connection idle at ``QUIET_LOOKS`` looks in a row), and only while
    another connection stays idle for callers.

    The pool lends its most recently returned connection first, and a new connection joins
    the pool as such. A step borrows connections in that order, while at least two are idle
    and nobody waits, until it finds one to prepare, runs one step on it (5 to 15 ms), and gives
    them back in the reverse order, which leaves the pool's order as it was. The connections
    that do the work at low load are the most recent ones, which this reaches; the least
    recently used one may stay cold, as it would have without this.
    """

    def __init__(self, prepare: Callable[[Connection, int], None]) -> None:
        self._prepare = prepare
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # backend pid: steps done
        self._prepared = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, backend_pid: int) -> None:
        """A new pooled connection (by its backend's pid) is to be prepared."""
        with self._lock:
            self._pending[backend_pid] = 0
        self._wake.set()

    def pending(self) -> int:
        """How many connections wait to be prepared."""
        with self._lock:
            return len(self._pending)

    def prepared(self) -> int:
        """How many connections have been prepared so far."""
        with self._lock:
            return self._prepared

    def start(self, pool: ConnectionPool[Any]) -> None:
        """Prepare the connections of ``pool`` from now on (until :meth:`stop`)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, args=(pool,), name="cereal-prepare", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop, giving back any connection held; the pending ones are forgotten."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._pending.clear()
        if thread is not None:
            self._stopping.set()
            self._wake.set()
            thread.join(timeout=5)

    def _run(self, pool: ConnectionPool[Any]) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait()
                self._wake.clear()
                idle_looks = quiet = 0
                while self.pending() and not self._stopping.is_set():
                    quiet = quiet + 1 if _resting(pool) else 0
                    if quiet >= QUIET_LOOKS and self._step(pool):
                        idle_looks = 0
                        continue
                    idle_looks += 1
                    if idle_looks >= GIVE_UP_AFTER:
                        with self._lock:
                            self._pending.clear()
                        break
                    self._stopping.wait(QUIET_CHECK)
        except Exception as exc:  # the pool closed under it, say: the connections stay cold
            log.debug("hot path preparation stopped", error=repr(exc))

    def _step(self, pool: ConnectionPool[Any]) -> bool:
        """Run one step on the first pending connection within reach; False if none was."""
        held: list[Connection] = []
        try:
            while not self._stopping.is_set():
                stats = pool.get_stats()
                if stats.get("requests_waiting", 0) or stats.get("pool_available", 0) < 2:
                    return False
                try:
                    conn = pool.getconn(timeout=QUIET_CHECK)
                except PoolTimeout:
                    return False
                held.append(conn)
                pid = conn.info.backend_pid
                with self._lock:
                    step = self._pending.get(pid)
                if step is None:
                    continue
                self._prepare(conn, step)
                with self._lock:
                    if step + 1 >= RUNS_TO_SETTLE:
                        self._pending.pop(pid, None)
                        self._prepared += 1
                    elif pid in self._pending:
                        self._pending[pid] = step + 1
                return True
            return False
        finally:
            for conn in reversed(held):
                pool.putconn(conn)


def _resting(pool: ConnectionPool[Any]) -> bool:
    """Every connection of ``pool`` idle and nobody waiting."""
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    idle = stats.get("pool_available", 0)
    return size > 0 and idle == size and not stats.get("requests_waiting", 0)


def prepare_hot_path(
    conn: Connection, queries: dict[str, LiteralString], name: str, step: int
) -> None:
    """Run the statements of a single-task workflow's life once in the open transaction, on
    an instance and a task named ``name`` (followed by ``step``), preparing each statement at
    its first run; ``RUNS_TO_SETTLE`` steps settle their plans. The caller rolls the
    transaction back: nothing stays but the prepared statements, and no notification goes
    out."""
    instance = f"{name} {step}"

    def run(statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(queries[statement], params, prepare=True)
        return cur.fetchall() if cur.description else []

    enqueue = {"workflow_name": name, "instance_name": instance, "parameters": None}
    run("enqueue_held", enqueue | {"instance_name": instance + " held", "trace_context": None})
    queued = enqueue | {"instance_name": instance + " queued", "trace_context": None}
    run("enqueue_workflow", queued | {"channel": CHANNEL})
    run("enqueue_holding", enqueue | {"trace_context": None})
    instance_id = int(run("relock_held_instances", {})[0]["id"])
    events = run("fetch_events", {"per_instance": EVENTS_PER_INSTANCE})
    run("delete_events", {"ids": int_array(e["id"] for e in events)})
    run(
        "update_instances",
        {
            "ids": int_array([instance_id]),
            "payloads": text_array([None]),
            "enqueued": int_array([1]),
            "completed": int_array([0]),
        },
    )
    tasks = {
        "instance_ids": int_array([instance_id]),
        "names": text_array([name]),
        "parameters": text_array([None]),
        "start_ats": timestamp_array([None]),
        "delays": float_array([0.0]),
        "trace_contexts": text_array([None]),
        "routes": text_array([None]),
    }
    run("insert_tasks", tasks)
    claimed = run(
        "insert_tasks_claiming",
        tasks
        | {
            "claim_names": [name],
            "claim_limits": [1],
            "max_attempts": [1],
            "retry_delays": [None],
            "floors": [datetime.now(UTC)],
            "owner": name,
            "channel": CHANNEL,
        },
    )
    task_ids = int_array(r["id"] for r in claimed if r["id"] is not None)
    run("hold_instances_of_tasks", {"ids": task_ids, "owner": name, "names": [name]})
    run("lock_instances_of_tasks", {"ids": task_ids})
    run(
        "complete_tasks",
        {
            "ids": task_ids,
            "statuses": text_array(["success"]),
            "errors": text_array([None]),
            "results": text_array([None]),
            "workflows": text_array([name]),
            "owner": name,
            "channel": CHANNEL,
        },
    )
    run(
        "finish_instances",
        {
            "ids": int_array([instance_id]),
            "statuses": text_array(["completed"]),
            "results": text_array([None]),
            "errors": text_array([None]),
        },
    )
    run("notify", {"channel": CHANNEL, "payloads": [name]})
