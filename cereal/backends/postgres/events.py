"""Workflow-event batches: lock instances with pending events, commit their outcomes.

A batch costs three round trips: BEGIN travels with the locking statement, the events are
read by a statement of their own, and COMMIT travels in one pipeline with every write.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import LiteralString

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from cereal.backends.postgres import notify
from cereal.backends.postgres.connections import Connection, Connections
from cereal.backends.postgres.errors import translate
from cereal.backends.postgres.jsonb import use_lenient_jsonb
from cereal.backends.postgres.rows import event_row, instance_row, loads
from cereal.driver import EventRow, InstanceFinished, InstanceRow, StepOutcome, TasksQueued
from cereal.types import WorkflowInstanceInfo

__all__ = ["PostgresEventBatch", "claim_events"]


@contextmanager
def claim_events(
    connections: Connections,
    queries: dict[str, LiteralString],
    channel: str,
    workflow_names: Sequence[str],
    limit: int,
    per_instance: int,
) -> Iterator[PostgresEventBatch]:
    """Lock up to ``limit`` instances with pending events and fetch their next events.

    The instances stay locked until the batch commits or the context exits (which rolls
    back, so every event is delivered again later).
    """
    with connections.connection() as conn:
        batch: PostgresEventBatch | None = None
        try:
            conn.execute("BEGIN")
            cur = conn.cursor(row_factory=dict_row)
            use_lenient_jsonb(cur.adapters)  # a value we cannot decode fails its instance
            rows = cur.execute(
                queries["lock_instances_with_events"],
                {"names": list(workflow_names), "limit": limit},
            ).fetchall()
            instances = [instance_row(r) for r in rows]
            events: dict[int, list[EventRow]] = {i.id: [] for i in instances}
            if instances:
                # A statement of its own: its snapshot is taken after the locks, so it sees
                # every event committed by the previous holder of each instance.
                for e in cur.execute(
                    queries["fetch_events"], {"ids": list(events), "per_instance": per_instance}
                ).fetchall():
                    events[e["instance_id"]].append(event_row(e))
            batch = PostgresEventBatch(conn, queries, channel, instances, events)
            yield batch
        except psycopg.Error:
            conn.close()  # see PostgresEventBatch.broken
            raise
        finally:
            if batch is not None and batch.broken:
                conn.close()
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                # A broken connection fails this too; the pool then discards it.
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")


class PostgresEventBatch:
    """Instances locked in one open transaction, with their pending events."""

    def __init__(
        self,
        conn: Connection,
        queries: dict[str, LiteralString],
        channel: str,
        instances: list[InstanceRow],
        events: dict[int, list[EventRow]],
    ) -> None:
        self._conn = conn
        self._q = queries
        self._channel = channel
        self.instances = instances
        self.events = events
        self.broken = False
        """A statement failed inside the write pipeline: psycopg's prepared-statement cache
        may be out of step with the server, so the connection is not reused."""

    def commit(self, outcomes: Sequence[StepOutcome]) -> list[WorkflowInstanceInfo]:
        """Write every outcome and commit; return the runs that finished."""
        try:
            ended = self._write(outcomes)
        except psycopg.Error as exc:
            self.broken = True
            raise translate(exc) from exc
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

    def _write(self, outcomes: Sequence[StepOutcome]) -> dict[int, datetime]:
        q, conn = self._q, self._conn
        going = [o for o in outcomes if not o.finished]
        done = [o for o in outcomes if o.finished]
        consumed = [eid for o in going for eid in o.consumed]
        tasks = [(o.instance.id, t) for o in going for t in o.tasks]
        notes = sorted(
            {notify.encode(TasksQueued(t.name)) for _, t in tasks}
            | {notify.encode(InstanceFinished(o.instance.id)) for o in done}
        )
        with conn.pipeline():
            if consumed:
                conn.execute(q["delete_events"], {"ids": consumed})
            if going:
                conn.execute(
                    q["update_instances"],
                    {
                        "ids": [o.instance.id for o in going],
                        "payloads": [o.payload_json for o in going],
                        "enqueued": [o.enqueued_tasks for o in going],
                        "completed": [o.completed_tasks for o in going],
                    },
                )
            if tasks:
                conn.execute(
                    q["insert_tasks"],
                    {
                        "instance_ids": [i for i, _ in tasks],
                        "names": [t.name for _, t in tasks],
                        "parameters": [t.parameters_json for _, t in tasks],
                        "start_ats": [t.start_at for _, t in tasks],
                        "delays": [t.delay for _, t in tasks],
                    },
                )
            cur = None
            if done:
                cur = conn.cursor(row_factory=dict_row)
                cur.execute(
                    q["finish_instances"],
                    {
                        "ids": [o.instance.id for o in done],
                        "statuses": [o.status.value for o in done],
                        "results": [o.result_json for o in done],
                        "errors": [o.error for o in done],
                    },
                )
            if notes:
                conn.execute(q["notify"], {"channel": self._channel, "payloads": notes})
            conn.execute("COMMIT")
            return {r["id"]: r["ended_at"] for r in cur.fetchall()} if cur is not None else {}
