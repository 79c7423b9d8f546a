"""PostgreSQL storage for cereal: :class:`PostgresDriver`, the operations of the seam.

The parts it is built from each have one job: :mod:`.connections` (the pool and its
health), :mod:`.errors` (psycopg's exceptions translated), :mod:`.events` (the event-batch
commit), :mod:`.rows` (rows read by column name), :mod:`.schedules` (schedule rows),
:mod:`.notify` (the wakeup format) and :mod:`.listener`. The statements are in
``queries.sql``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, LiteralString

from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.rows import dict_row

from cereal.backends.postgres import notify, operator_views
from cereal.backends.postgres import overview as dashboard_views
from cereal.backends.postgres.arrays import bool_array, in_statements, int_array, text_array
from cereal.backends.postgres.connections import Connection, Connections, DedicatedConnection
from cereal.backends.postgres.errors import translated
from cereal.backends.postgres.events import (
    PostgresEventBatch,
    claim_events,
    complete_tasks_held,
    enqueue_and_hold,
    enqueue_held,
)
from cereal.backends.postgres.floors import EventFloor, TaskFloors
from cereal.backends.postgres.jsonb import use_lenient_jsonb
from cereal.backends.postgres.listener import PostgresListener
from cereal.backends.postgres.listing import BulkEnqueue, Listing
from cereal.backends.postgres.migrations import LOCK_NAMESPACE
from cereal.backends.postgres.queries import load_queries
from cereal.backends.postgres.rows import (
    Row,
    claimed_starts,
    claimed_tasks,
    columns,
    finished_info,
    live_info,
)
from cereal.backends.postgres.schedules import ScheduleStatements
from cereal.config import count, seconds
from cereal.driver import (
    ClaimedTask,
    DueRun,
    InstanceTimeline,
    Overview,
    ScheduleChange,
    SchemaStatus,
    StoredSchedule,
    TaskInfo,
    TaskOutcome,
    TasksQueued,
    Wakeup,
)
from cereal.errors import CerealError, InvalidNameError
from cereal.retries import RetryPolicy
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.backends.postgres.async_driver import AsyncPostgresDriver

__all__ = ["PostgresDriver", "validate_schema"]

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SCHEMA_LENGTH = 48
ANALYZE_MIN_CHANGES = 1000
"""Rows changed in a queue table, or in history, since its statistics were taken before
vacuum_queues refreshes them (and only once that is a fifth of the table)."""
_NO_RETRY = RetryPolicy(max_attempts=1)


def validate_schema(schema: object) -> str:
    """Return ``schema`` if it is a plain SQL identifier cereal can own, else raise."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise InvalidNameError(
            f"schema must be a plain identifier (letters, digits, underscores, not starting "
            f"with a digit), got {schema!r}"
        )
    if len(schema) > MAX_SCHEMA_LENGTH:
        raise InvalidNameError(
            f"schema name is {len(schema)} characters; the limit is {MAX_SCHEMA_LENGTH}: {schema!r}"
        )
    if schema.lower().startswith("pg_") or schema.lower() == "information_schema":
        raise InvalidNameError(f"schema name {schema!r} is reserved by PostgreSQL")
    return schema


class PostgresDriver:
    """Stores cereal's state in a PostgreSQL schema; implements :class:`cereal.driver.Driver`.

    ``dsn`` is a libpq connection string or URI. When it is None, ``CEREAL_DATABASE_URL``
    is used; when that is unset too, an embedded PostgreSQL (the ``cereal[embedded]``
    extra) is started or reused in ``CEREAL_EMBEDDED_DIR`` or a per-user data directory.

    The schema (default ``cereal``) is created and migrated on first use. Options:
    ``pool_size`` (most connections, default 10), ``pool_min_size`` (default 1),
    ``connect_timeout`` (seconds, default 10) and ``application_name``.

    Every method raises :mod:`cereal.errors` types only (see
    :mod:`cereal.backends.postgres.errors`).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = "cereal",
        pool_size: int = 10,
        pool_min_size: int = 1,
        connect_timeout: float = 10.0,
        application_name: str = "cereal",
        **unknown: Any,
    ) -> None:
        if unknown:
            raise CerealError(
                f"unknown PostgresDriver option(s): {', '.join(sorted(unknown))} (known: "
                "schema, pool_size, pool_min_size, connect_timeout, application_name)"
            )
        self._schema = validate_schema(schema)
        if dsn is not None and not isinstance(dsn, str):
            raise CerealError(f"dsn must be a str or None, got {type(dsn).__name__}")
        pool_size = count("pool_size", pool_size, minimum=2)
        pool_min_size = count("pool_min_size", pool_min_size, minimum=0)
        connect_timeout = seconds("connect_timeout", connect_timeout, maximum=86400)
        if not isinstance(application_name, str) or "\x00" in application_name:
            raise CerealError(
                f"application_name must be a str without NUL characters, got {application_name!r}"
            )
        # Read by the async twin (AsyncPostgresDriver.twin_of) to mirror these options.
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._db = Connections(
            dsn,
            self._schema,
            pool_size=pool_size,
            pool_min_size=pool_min_size,
            connect_timeout=connect_timeout,
            application_name=application_name,
        )
        self._liveness = DedicatedConnection(self._db)
        self._q = load_queries()
        self.channel = notify.channel_name(self._schema)
        self._schedules = ScheduleStatements(self._db, self._q, self.channel)
        # Where this process's claims start reading the queues (floors.py).
        self._floors_lock = threading.Lock()
        self._event_floors: dict[frozenset[str], EventFloor] = {}
        self._task_floors = TaskFloors()

    # -- connections -----------------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding cereal's tables."""
        return self._schema

    @property
    def dsn(self) -> str:
        """The connection string in use (resolving the environment and embedded default)."""
        return self._db.dsn

    def connect(self) -> Connection:
        """Open a new connection outside the pool (autocommit, UTC, search_path set)."""
        return self._db.connect()

    def open(self) -> None:
        """Migrate the schema and open the pool. Safe to call again after :meth:`close`."""
        self._db.open()

    def close(self) -> None:
        """Close the pool and the heartbeat connection. The driver can be opened again."""
        self._liveness.close()
        self._db.close()

    def drop_schema(self) -> None:
        """Close the driver and drop its schema with everything in it (cereal's tables and the
        history they keep). Meant for tests and teardown; opened again, the driver migrates
        a fresh schema."""
        self.close()
        with self._db.connect() as conn, translated():
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self._schema))
            )

    def __enter__(self) -> PostgresDriver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connection(self) -> AbstractContextManager[Connection]:
        """Borrow a pooled connection (autocommit; wrap writes in ``conn.transaction()``)."""
        return self._db.connection()

    def query(self, name: str) -> LiteralString:
        """The text of a named statement of ``queries.sql``."""
        return self._q[name]

    def _rows(self, name: str, params: dict[str, Any]) -> list[Row]:
        with self._db.connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(self._q[name], params).fetchall()

    # -- wakeups ------------------------------------------------------------------------------

    def listener(
        self, on_wakeup: Callable[[Wakeup], None], on_reconnect: Callable[[], None]
    ) -> PostgresListener:
        """A LISTEN connection on this schema's channel (not started)."""
        return PostgresListener(self.connect, self.channel, on_wakeup, on_reconnect)

    def notify(self, wakeups: Sequence[Wakeup | str]) -> None:
        """Announce wakeups (or raw payloads, see :mod:`.notify`) to every listener."""
        payloads = [w if isinstance(w, str) else notify.encode(w) for w in wakeups]
        with self._db.connection() as conn:
            conn.execute(self._q["notify"], {"channel": self.channel, "payloads": payloads})

    # -- workflow instances ------------------------------------------------------------------

    def enqueue_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> bool:
        """Insert a live instance with its start event; False if the pair is live."""
        params = _enqueue_params(workflow_name, instance_name, parameters_json, trace_context)
        rows = self._rows("enqueue_workflow", params | {"channel": self.channel})
        return bool(rows)

    def cancel_workflow(self, workflow_name: str, instance_name: str) -> bool:
        """Queue a cancel event; False if there is no live instance."""
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        return bool(self._rows("cancel_workflow", params | {"channel": self.channel}))

    def signal_workflow(
        self,
        workflow_name: str,
        instance_name: str,
        signal_name: str,
        signal_payload_json: str | None,
    ) -> bool:
        """Queue a signal event and wake the workflow's handlers in one statement; False if
        there is no live instance."""
        params = {
            "workflow_name": workflow_name,
            "instance_name": instance_name,
            "signal_name": signal_name,
            "payload": signal_payload_json,
            "channel": self.channel,
        }
        return bool(self._rows("signal_workflow", params))

    def kill_workflow(self, workflow_name: str, instance_name: str, error: str) -> bool:
        """Finish a live instance as failed with ``error``; False if none is live."""
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        rows = self._rows("kill_workflow", params | {"error": error, "channel": self.channel})
        return bool(rows)

    def get_workflow_instance(
        self, workflow_name: str, instance_name: str
    ) -> WorkflowInstanceInfo | None:
        """The live instance, else its latest finished run, else None."""
        params = {"workflow_name": workflow_name, "instance_name": instance_name}
        with self._db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(self._q["get_live_instance"], params).fetchone()
            if row is not None:
                return live_info(row)
            row = cur.execute(self._q["get_latest_result"], params).fetchone()
        return None if row is None else finished_info(row)

    def list_workflow_instances(
        self,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        is_running: bool | None = None,
        status: WorkflowStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowInstanceInfo]:
        """One row per pair: the live instance, else the latest finished run. Without
        ``limit`` every match by names; with it one page, newest first, after the row whose
        ``cursor`` is ``after`` (see :mod:`cereal.backends.postgres.listing`)."""
        listing = Listing.of(workflow_name, instance_name, is_running, status, limit, after)
        if listing.statement is None:
            return []
        with self._db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(self._q[listing.statement], listing.params, prepare=False)
            return listing.read(rows.fetchall())

    def enqueue_workflows(
        self, items: Sequence[tuple[str, str, str | None]], trace_context: str | None = None
    ) -> list[tuple[str, str]]:
        """Insert many instances with their start events in one statement; return the pairs
        not inserted (live already, or repeated in ``items``)."""
        bulk = BulkEnqueue.of(items)
        params = bulk.params(trace_context, self.channel)
        return bulk.not_enqueued([] if params is None else self._rows("enqueue_workflows", params))

    def enqueue_and_hold(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
        *,
        per_instance: int = 64,
    ) -> AbstractContextManager[PostgresEventBatch | None]:
        """Enqueue and commit an instance, then hold it with its start event as a claim
        would (None if the pair is live): one round trip, no notification."""
        params = _enqueue_params(workflow_name, instance_name, parameters_json, trace_context)
        return enqueue_and_hold(
            self._db, self._q, self.channel, self._task_floors, params, per_instance
        )

    def prepare_for_workflows(self) -> None:
        """Prepare the statements of a workflow's life on each pooled connection, in the
        background, whenever the pool rests (see :mod:`~cereal.backends.postgres.hot_path`):
        a manager that runs workflows asks for it when it starts."""
        self._db.prepare_hot_path()

    def enqueue_held(
        self,
        workflow_name: str,
        instance_name: str,
        parameters_json: str | None,
        trace_context: str | None = None,
    ) -> AbstractContextManager[PostgresEventBatch | None]:
        """Insert a live instance with its start event and hold it as a batch of one (None
        if the pair is live). Other sessions see nothing until the batch commits; leaving
        the context without a commit stores nothing. Eager start runs ``on_start`` on it."""
        params = _enqueue_params(workflow_name, instance_name, parameters_json, trace_context)
        return enqueue_held(self._db, self._q, self.channel, self._task_floors, params)

    # -- workflow events ---------------------------------------------------------------------

    def has_events(self, workflow_names: Sequence[str]) -> bool:
        """Cheap check: is any event pending for these workflows?"""
        floor = self._event_floor(workflow_names).scan_from()
        rows = self._rows("has_events", {"names": list(workflow_names), "floor": floor})
        return bool(rows and rows[0]["pending"])

    def claim_events(
        self, workflow_names: Sequence[str], limit: int, per_instance: int
    ) -> AbstractContextManager[PostgresEventBatch]:
        """Lock up to ``limit`` instances with pending events and fetch their next events.

        The instances stay locked until the batch commits or the context exits (which rolls
        back, so every event is delivered again later). A batch costs two round trips.
        """
        return claim_events(
            self._db,
            self._q,
            self.channel,
            workflow_names,
            limit,
            per_instance,
            self._event_floor(workflow_names),
            self._task_floors,
        )

    def _event_floor(self, workflow_names: Sequence[str]) -> EventFloor:
        key = frozenset(workflow_names)
        with self._floors_lock:
            floor = self._event_floors.get(key)
            if floor is None:
                floor = self._event_floors[key] = EventFloor()
            return floor

    def fail_instance(self, instance_id: int, error: str) -> WorkflowInstanceInfo | None:
        """Finish a live instance as failed, waiting for whoever holds it; None if it is no
        longer live."""
        rows = self._rows(
            "fail_instance", {"id": instance_id, "error": error, "channel": self.channel}
        )
        return finished_info(rows[0]) if rows else None

    # -- tasks ---------------------------------------------------------------------------------

    def claim_tasks(
        self,
        limits: dict[str, int],
        owner: str,
        retries: Mapping[str, RetryPolicy] | None = None,
    ) -> tuple[list[ClaimedTask], float | None]:
        """Claim due tasks (up to ``limits[name]`` each) for ``owner``, storing each name's
        retry policy (``retries``) in its rows for this attempt.

        Also returns the seconds until the next queued task of these names becomes due.
        """
        names = [n for n, lim in limits.items() if lim > 0]
        if not names:
            return [], None
        policies = [(retries or {}).get(n) or _NO_RETRY for n in names]
        params = {
            "names": names,
            "limits": [limits[n] for n in names],
            "max_attempts": [p.max_attempts for p in policies],
            "initials": [p.initial_delay for p in policies],
            "backoffs": [p.backoff for p in policies],
            "max_delays": [p.max_delay for p in policies],
            "floors": self._task_floors.for_claim(names),
            "owner": owner,
        }
        with self._db.connection() as conn:
            cur = conn.cursor()
            use_lenient_jsonb(cur.adapters)  # a task we cannot decode is reported failed
            rows, at = cur.execute(self._q["claim_tasks"], params).fetchall(), columns(cur)
        self._task_floors.claimed(claimed_starts(rows, at))
        task_id = at["id"]
        next_due = next((v[at["next_due_in"]] for v in rows if v[task_id] is None), None)
        return claimed_tasks(rows, at), next_due

    def complete_tasks(self, outcomes: Sequence[TaskOutcome], owner: str) -> set[int]:
        """Record task outcomes as events, or requeue those asking for a retry that have
        attempts left; return the ids that were still live."""
        if not outcomes:
            return set()
        # Batches without retries (the common case) keep the plain statement.
        retrying = any(o.retry for o in outcomes)
        query = "complete_tasks_retrying" if retrying else "complete_tasks"
        # One transaction in one round trip: the instances' locks first (see
        # lock_instances_of_tasks), then the statements whose notifications go out with the
        # commit (PostgreSQL sends each distinct payload once per transaction).
        try:
            with self._db.connection() as conn:
                try:
                    with conn.pipeline():
                        conn.execute("BEGIN")
                        ids = int_array(o.id for o in outcomes)
                        conn.execute(self._q["lock_instances_of_tasks"], {"ids": ids})
                        cursors = []
                        for part in in_statements(outcomes):
                            cur = conn.cursor(row_factory=dict_row)
                            cur.execute(self._q[query], self._outcome_params(part, owner, retrying))
                            cursors.append(cur)
                        conn.execute("COMMIT")
                    rows = [r for cur in cursors for r in cur.fetchall()]
                except pgerrors.ForeignKeyViolation:
                    raise _InstanceGone from None
        except _InstanceGone:
            if len(outcomes) == 1:
                return set()  # its workflow finished meanwhile: the result is discarded
            return set().union(*(self.complete_tasks([o], owner) for o in outcomes))
        return {r["id"] for r in rows}

    def complete_tasks_held(
        self,
        outcomes: Sequence[TaskOutcome],
        owner: str,
        workflow_names: Sequence[str],
        per_instance: int,
    ) -> AbstractContextManager[PostgresEventBatch]:
        """:meth:`complete_tasks`, then hold the instances of ``workflow_names`` the outcomes
        belong to with their pending events, as :meth:`claim_events` would: one round trip.
        Only the instances this batch does not hold get a notification."""
        if any(o.retry for o in outcomes):
            raise CerealError("complete_tasks_held takes no outcome asking for a retry")
        holding = {
            "ids": int_array(o.id for o in outcomes),
            "owner": owner,
            "names": list(workflow_names),
        }
        parts = [self._outcome_params(part, owner) for part in in_statements(outcomes)]
        return complete_tasks_held(
            self._db, self._q, self.channel, self._task_floors, holding, parts, per_instance
        )

    def _outcome_params(
        self, outcomes: Sequence[TaskOutcome], owner: str, retrying: bool = False
    ) -> dict[str, object]:
        """The parameters of ``complete_tasks`` (with ``retrying``: of
        ``complete_tasks_retrying``) for at most :data:`.ROWS_PER_STATEMENT` outcomes (arrays
        as literals, see :mod:`~cereal.backends.postgres.arrays`)."""
        params: dict[str, object] = {
            "ids": int_array(o.id for o in outcomes),
            "statuses": text_array(o.status for o in outcomes),
            "errors": text_array(o.error for o in outcomes),
            "results": text_array(o.result_json for o in outcomes),
            "workflows": text_array(o.workflow_name for o in outcomes),
            "owner": owner,
            "channel": self.channel,
        }
        if retrying:
            params["retries"] = bool_array(o.retry for o in outcomes)
        return params

    def heartbeat_tasks(self, task_ids: Sequence[int], owner: str) -> set[int]:
        """Refresh running tasks' heartbeats; return the ids that still exist.

        Runs on a connection of its own (see :class:`.DedicatedConnection`), never queued
        behind the pool, so that live tasks do not look lost after an outage."""
        if not task_ids:
            return set()
        params = {"ids": list(task_ids), "owner": owner}
        with self._liveness.connection() as conn:
            rows = conn.execute(self._q["heartbeat_tasks"], params).fetchall()
        return {r[0] for r in rows}

    def release_tasks(self, task_ids: Sequence[int], owner: str) -> None:
        """Hand claimed tasks that never started back to the queue."""
        if task_ids:
            rows = self._rows("release_tasks", {"ids": list(task_ids), "owner": owner})
            if rows:
                self.notify([TasksQueued(r["task_name"]) for r in rows])

    def release_unknown_tasks(self, known: Sequence[int], owner: str, older_than: float) -> int:
        """Requeue the tasks claimed for ``owner`` that it never learned of (see
        :meth:`cereal.driver.Driver.release_unknown_tasks`); return how many."""
        rows = self._rows(
            "release_unknown_tasks",
            {"known": list(known), "owner": owner, "older_than": older_than},
        )
        if rows:
            self.notify([TasksQueued(r["task_name"]) for r in rows])
        return sum(int(r["released"]) for r in rows)

    def reap_lost_tasks(self, timeout: float, error: str) -> int:
        """Requeue tasks silent for ``timeout`` seconds that have attempts left, turn the
        others into ``lost`` results; return how many were handled."""
        with self._db.connection() as conn, conn.transaction():
            locking = conn.execute(self._q["lock_instances_of_silent_tasks"], {"timeout": timeout})
            instances = [r[0] for r in locking.fetchall()]
            if not instances:  # every task belongs to a live instance: none is silent
                return 0
            cur = conn.cursor(row_factory=dict_row)
            params = {"timeout": timeout, "error": error, "instances": instances}
            rows = cur.execute(self._q["reap_lost_tasks"], params).fetchall()
            if rows:
                payloads = sorted({r["wakeup"] for r in rows})
                conn.execute(self._q["notify"], {"channel": self.channel, "payloads": payloads})
        return len(rows)

    # -- schedules -------------------------------------------------------------------------

    def now(self) -> datetime:
        """The database's clock (UTC)."""
        return self._schedules.now()

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
        return self._schedules.insert(
            workflow_name, instance_name, parameters_json, recurrence, enabled, next_due_at
        )

    def update_schedule(
        self,
        workflow_name: str,
        instance_name: str,
        change: Callable[[StoredSchedule, datetime], ScheduleChange],
    ) -> bool:
        """Lock the schedule, call ``change(stored, now)``, write what it returns; False if
        there is no such schedule."""
        return self._schedules.update(workflow_name, instance_name, change)

    def delete_schedule(self, workflow_name: str, instance_name: str) -> bool:
        """Remove a schedule; False if there is none."""
        return self._schedules.delete(workflow_name, instance_name)

    def list_schedules(
        self, workflow_name: str | None = None, instance_name: str | None = None
    ) -> list[Schedule]:
        """Schedules (all, or one pair's), with their latest finished run."""
        return self._schedules.select(workflow_name, instance_name)

    def run_due_schedule(
        self,
        next_due: Callable[[str, datetime], datetime | None],
        trace_context: str | None = None,
    ) -> DueRun | None:
        """Handle the most overdue enabled schedule nobody else holds (see
        :meth:`cereal.driver.Driver.run_due_schedule`)."""
        return self._schedules.run_due(next_due, trace_context)

    def seconds_until_next_schedule(self) -> float | None:
        """Seconds until the earliest enabled schedule is due (negative when overdue)."""
        return self._schedules.seconds_until_next()

    # -- retention ---------------------------------------------------------------------------

    def vacuum_queues(self, min_dead_rows: int) -> list[str]:
        """``VACUUM`` each queue table (``workflow_instances``, ``workflow_events``,
        ``tasks``) with at least ``min_dead_rows`` dead rows, and ``ANALYZE`` those, and
        history (``workflow_results``), whose statistics are missing or stale
        (:data:`ANALYZE_MIN_CHANGES` rows and a fifth of the table changed since); return
        the names of the tables touched. Skipped (``[]``) while another session of this
        schema does it. A role that does not own the tables gets a server warning per table
        and nothing is done."""
        lock = {"lock_ns": LOCK_NAMESPACE, "lock_key": self._schema + ".vacuum"}
        with self._db.connection() as conn, translated():
            row = conn.execute(self._q["lock_queue_vacuum"], lock).fetchone()
            if row is None or not row[0]:
                return []
            try:
                params = {
                    "schema": self._schema,
                    "min_dead": min_dead_rows,
                    "min_changed": ANALYZE_MIN_CHANGES,
                }
                rows = conn.execute(self._q["queue_tables_to_vacuum"], params).fetchall()
                for table, vacuum, analyze in rows:
                    target = sql.Identifier(self._schema, table)
                    if vacuum:
                        command = "VACUUM (ANALYZE) {}" if analyze else "VACUUM {}"
                    else:
                        command = "ANALYZE {}"
                    conn.execute(sql.SQL(command).format(target), prepare=False)
                return [r[0] for r in rows]
            finally:
                conn.execute(self._q["unlock_queue_vacuum"], lock)

    def prune_history(self, max_age: float | None, max_runs: int | None) -> int:
        """Delete up to PRUNE_BATCH finished runs past the retention policy; return how many."""
        if max_age is None and max_runs is None:
            return 0
        rows = self._rows(
            "prune_history",
            {
                "lock_ns": LOCK_NAMESPACE,
                "lock_key": self._schema + ".prune",
                "max_age": max_age,
                "max_runs": max_runs,
            },
        )
        return int(rows[0]["pruned"]) if rows else 0

    # -- operator views (cereal/backends/postgres/operator_views.py) ----------------------

    def list_tasks(
        self,
        *,
        task_name: str | None = None,
        workflow_name: str | None = None,
        instance_name: str | None = None,
        limit: int | None = None,
    ) -> list[TaskInfo]:
        """Queued and running tasks, oldest first, with the age of each running task's
        last heartbeat."""
        return operator_views.list_tasks(
            self,
            task_name=task_name,
            workflow_name=workflow_name,
            instance_name=instance_name,
            limit=limit,
        )

    def schema_status(self) -> SchemaStatus:
        """Which migrations are applied (creates and migrates nothing)."""
        return operator_views.schema_status(self)

    def migration_sql(self) -> str:
        """The SQL that creates this schema from scratch; touches no database."""
        return operator_views.migration_sql(self._schema)

    def ping(self) -> None:
        """Raise :class:`~cereal.errors.DatabaseError` unless the server answers."""
        operator_views.ping(self)

    def async_driver(self) -> AsyncPostgresDriver:
        """This driver's async twin (same database, schema and options), for ``Manager.aio``."""
        from cereal.backends.postgres.async_driver import AsyncPostgresDriver

        return AsyncPostgresDriver.twin_of(self)

    # -- dashboard views (cereal/backends/postgres/overview.py) ----------------------------

    def overview(self, stale_after: float) -> Overview:
        """Counts of instances, runs, tasks and schedules, in one snapshot."""
        return dashboard_views.overview(self, stale_after)

    def recent_failures(self, limit: int) -> list[WorkflowInstanceInfo]:
        """The newest failed runs kept in history, newest first."""
        return dashboard_views.recent_failures(self, limit)

    def instance_timeline(
        self, workflow_name: str, instance_name: str, limit: int
    ) -> InstanceTimeline:
        """A pair's pending events, queued and running tasks, and finished runs."""
        return dashboard_views.instance_timeline(self, workflow_name, instance_name, limit)


class _InstanceGone(Exception):
    """An outcome's instance finished while the outcomes were being recorded."""


def _enqueue_params(
    workflow_name: str, instance_name: str, parameters_json: str | None, trace_context: str | None
) -> dict[str, object]:
    """The parameters the statements enqueuing one instance share."""
    return {
        "workflow_name": workflow_name,
        "instance_name": instance_name,
        "parameters": parameters_json,
        "trace_context": trace_context,
    }
