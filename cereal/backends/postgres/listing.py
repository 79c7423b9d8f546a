"""Paged listings and bulk enqueue, for both PostgreSQL drivers: which statement to run with
which parameters, and what its rows mean. The sync and async drivers only run the statement.

Paged listings are ordered newest first: by ``started_at`` descending, then by
``workflow_name`` and ``instance_name`` descending (the pair is unique among listed rows).
A live instance and the finished run it becomes share ``started_at``, so a row keeps its
place when its instance finishes between two pages. Cursors (:func:`cereal.checks.encode_cursor`)
hold the position of the last row of a page and a fingerprint of the filters it was made for.

Listings are planned for their arguments every time (run them with ``prepare=False``): a plan
made once for any arguments cannot drop the side a filter excludes, and may scan all history
in parallel; planning costs a millisecond or two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cereal.backends.postgres.rows import Row, listed_info
from cereal.checks import decode_cursor, encode_cursor
from cereal.errors import CerealError
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

__all__ = ["BulkEnqueue", "Listing"]

_LIVE = [WorkflowStatus.STARTING.value, WorkflowStatus.RUNNING.value]
_FINISHED = [WorkflowStatus.COMPLETED.value, WorkflowStatus.FAILED.value]

Filters = tuple[str | None, str | None, bool | None, WorkflowStatus | None]


@dataclass(frozen=True)
class Listing:
    """One call of ``list_workflow_instances`` (arguments already validated)."""

    statement: str | None
    """The named statement to run; None when no row can match."""
    params: dict[str, Any]
    filters: Filters
    paged: bool

    @classmethod
    def of(
        cls,
        workflow_name: str | None,
        instance_name: str | None,
        is_running: bool | None,
        status: WorkflowStatus | None,
        limit: int | None,
        after: str | None,
    ) -> Listing:
        statuses = _LIVE + _FINISHED if status is None else [status.value]
        include_live = is_running is not False and any(s in _LIVE for s in statuses)
        include_finished = is_running is not True and any(s in _FINISHED for s in statuses)
        params: dict[str, Any] = {
            "workflow_name": workflow_name,
            "instance_name": instance_name,
            "include_live": include_live,
            "include_finished": include_finished,
        }
        filters: Filters = (workflow_name, instance_name, is_running, status)
        if limit is None:
            if after is not None:
                raise CerealError("after needs a limit: pass the limit of the listing it came from")
            return cls("list_instances", params, filters, paged=False)
        ts, wf, inst = ("infinity", "", "") if after is None else decode_cursor(after, filters)
        params |= {"ts": ts, "wf": wf, "inst": inst, "statuses": statuses, "limit": limit}
        if not include_live and not include_finished:
            return cls(None, params, filters, paged=True)
        statement = "list_page" if workflow_name is None else "list_page_workflow"
        return cls(statement, params, filters, paged=True)

    def read(self, rows: Sequence[Row]) -> list[WorkflowInstanceInfo]:
        """The statement's rows as the listing's records (with cursors when paged)."""
        infos = [listed_info(r) for r in rows]
        if self.paged:
            return [dataclasses.replace(i, cursor=encode_cursor(self.filters, i)) for i in infos]
        status = self.filters[3]
        return infos if status is None else [i for i in infos if i.status is status]


@dataclass(frozen=True)
class BulkEnqueue:
    """One call of ``enqueue_workflows``: the statement ``enqueue_workflows`` inserts the
    distinct pairs; a pair repeated in the items, or live already, is not enqueued."""

    items: Sequence[tuple[str, str, str | None]]
    unique: list[tuple[str, str, str | None]]
    repeated: list[int]
    """Positions in ``items`` of pairs seen earlier in ``items``."""

    @classmethod
    def of(cls, items: Sequence[tuple[str, str, str | None]]) -> BulkEnqueue:
        unique: list[tuple[str, str, str | None]] = []
        seen: set[tuple[str, str]] = set()
        repeated: list[int] = []
        for position, item in enumerate(items):
            pair = (item[0], item[1])
            if pair in seen:
                repeated.append(position)
            else:
                seen.add(pair)
                unique.append(item)
        return cls(items, unique, repeated)

    def params(self, trace_context: str | None, channel: str) -> dict[str, Any] | None:
        """The statement's parameters; None when there is nothing to insert."""
        if not self.unique:
            return None
        return {
            "workflow_names": [u[0] for u in self.unique],
            "instance_names": [u[1] for u in self.unique],
            "parameters": [u[2] for u in self.unique],
            "trace_context": trace_context,
            "count": len(self.unique),
            "channel": channel,
        }

    def not_enqueued(self, rows: Sequence[Row]) -> list[tuple[str, str]]:
        """The pairs not inserted, in the order of ``items``, from the statement's rows (the
        1-based ordinals, over the distinct items, of those that were live already)."""
        skipped = [(p, (self.items[p][0], self.items[p][1])) for p in self.repeated]
        dropped = set(self.repeated)
        places = [p for p in range(len(self.items)) if p not in dropped]
        for row in rows:
            if row["ordinal"] is not None:
                index = int(row["ordinal"]) - 1
                skipped.append((places[index], (self.unique[index][0], self.unique[index][1])))
        skipped.sort()
        return [pair for _, pair in skipped]
