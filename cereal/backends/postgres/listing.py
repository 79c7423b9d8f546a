"""Paged listings and bulk enqueue for :class:`~cereal.backends.postgres.PostgresDriver`.

Paged listings are ordered newest first: by ``started_at`` descending, then by
``workflow_name`` and ``instance_name`` descending (the pair is unique among listed rows).
A live instance and the finished run it becomes share ``started_at``, so a row keeps its
place when its instance finishes between two pages. Cursors (:func:`cereal.checks.encode_cursor`)
hold the position of the last row of a page and a fingerprint of the filters it was made for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cereal.checks import decode_cursor, encode_cursor
from cereal.errors import CerealError
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

if TYPE_CHECKING:
    from cereal.backends.postgres.driver import PostgresDriver

__all__ = ["enqueue_many", "list_instances"]

_LIVE = [WorkflowStatus.STARTING.value, WorkflowStatus.RUNNING.value]
_FINISHED = [WorkflowStatus.COMPLETED.value, WorkflowStatus.FAILED.value]


def list_instances(
    driver: PostgresDriver,
    workflow_name: str | None,
    instance_name: str | None,
    is_running: bool | None,
    status: WorkflowStatus | None,
    limit: int | None,
    after: str | None,
) -> list[WorkflowInstanceInfo]:
    """Rows of :meth:`PostgresDriver.list_workflow_instances` (filters already validated)."""
    statuses = _LIVE + _FINISHED if status is None else [status.value]
    include_live = is_running is not False and any(s in _LIVE for s in statuses)
    include_finished = is_running is not True and any(s in _FINISHED for s in statuses)
    params: dict[str, Any] = {
        "workflow_name": workflow_name,
        "instance_name": instance_name,
        "include_live": include_live,
        "include_finished": include_finished,
    }
    filters = (workflow_name, instance_name, is_running, status)
    if limit is None:
        if after is not None:
            raise CerealError("after needs a limit: pass the limit of the listing it came from")
        # Listings are planned for their arguments every time (prepare=False): a plan made
        # once for any arguments cannot drop the side a filter excludes, and may scan all
        # history in parallel; planning costs a millisecond or two.
        with driver.connection() as conn:
            rows = conn.execute(driver.query("list_instances"), params, prepare=False).fetchall()
        infos = [_info(r) for r in rows]
        return infos if status is None else [i for i in infos if i.status is status]
    if after is None:
        params |= {"ts": "infinity", "wf": "", "inst": ""}
    else:
        ts, wf, inst = decode_cursor(after, filters)
        params |= {"ts": ts, "wf": wf, "inst": inst}
    params |= {"statuses": statuses, "limit": limit}
    if not include_live and not include_finished:
        return []
    query = "list_page" if workflow_name is None else "list_page_workflow"
    with driver.connection() as conn:
        rows = conn.execute(driver.query(query), params, prepare=False).fetchall()
    infos = [_info(r) for r in rows]
    return [dataclasses.replace(i, cursor=encode_cursor(filters, i)) for i in infos]


def enqueue_many(
    driver: PostgresDriver,
    items: Sequence[tuple[str, str, str | None]],
    trace_context: str | None = None,
) -> list[tuple[str, str]]:
    """Rows of :meth:`PostgresDriver.enqueue_workflows`: insert in one statement, return the
    pairs not inserted (live already, or repeated in ``items``), in the order given."""
    unique: list[tuple[str, str, str | None]] = []
    seen: set[tuple[str, str]] = set()
    repeated: list[int] = []
    for position, (workflow_name, instance_name, parameters_json) in enumerate(items):
        pair = (workflow_name, instance_name)
        if pair in seen:
            repeated.append(position)
            continue
        seen.add(pair)
        unique.append((workflow_name, instance_name, parameters_json))
    skipped: list[tuple[int, tuple[str, str]]] = [(p, (items[p][0], items[p][1])) for p in repeated]
    if unique:
        rows = driver._rows(
            "enqueue_workflows",
            {
                "workflow_names": [u[0] for u in unique],
                "instance_names": [u[1] for u in unique],
                "parameters": [u[2] for u in unique],
                "trace_context": trace_context,
                "count": len(unique),
                "channel": driver.channel,
            },
        )
        # Map each ordinal (1-based, over the unique items) back to its place in ``items``.
        dropped = set(repeated)
        places = [p for p in range(len(items)) if p not in dropped] if repeated else None
        for row in rows:
            ordinal = row["ordinal"]
            if ordinal is None:
                continue
            index = int(ordinal) - 1
            place = places[index] if places is not None else index
            skipped.append((place, (unique[index][0], unique[index][1])))
    skipped.sort()
    return [pair for _, pair in skipped]


def _info(r: tuple[Any, ...]) -> WorkflowInstanceInfo:
    status = WorkflowStatus(r[2])
    return WorkflowInstanceInfo(
        workflow_name=r[0],
        instance_name=r[1],
        status=status,
        parameters=r[3],
        payload=r[4],
        result=r[5] if status is WorkflowStatus.COMPLETED else None,
        error=r[6],
        started_at=r[7],
        ended_at=r[8],
    )
