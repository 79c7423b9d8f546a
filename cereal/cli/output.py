"""How the ``cereal`` command prints: aligned tables that fit 80 columns, ``key: value``
blocks, and one JSON document on stdout for ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from cereal.types import Schedule, WorkflowInstanceInfo

__all__ = [
    "TERMINAL_WIDTH",
    "emit_json",
    "format_value",
    "instance_document",
    "print_fields",
    "print_table",
    "schedule_document",
]

TERMINAL_WIDTH = 80
_ELLIPSIS = "…"
_MIN_WIDTH = 8  # a truncated column keeps at least this many characters


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return str(value)


def emit_json(document: Any) -> None:
    """Print ``document`` as one JSON document (datetimes in ISO 8601) on stdout."""
    sys.stdout.write(json.dumps(document, default=_default, indent=2, ensure_ascii=False) + "\n")


def format_value(value: Any) -> str:
    """A value as a table cell: times as ``YYYY-MM-DD HH:MM:SS`` in UTC, JSON compact,
    None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value.replace("\n", " ")
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + _ELLIPSIS


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    wide: bool = False,
    width: int = TERMINAL_WIDTH,
    cut_first: Sequence[int] = (),
) -> None:
    """Print rows under ``headers`` in aligned columns, two spaces apart. Unless ``wide``,
    the widest columns are cut (ending in ``…``) until a line fits in ``width``: first
    those listed in ``cut_first`` (JSON values, say), then any."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if not wide:
        budget = width - 2 * (len(headers) - 1)
        for candidates in (list(cut_first), list(range(len(widths)))):
            while candidates and sum(widths) > budget:
                widest = max(candidates, key=lambda i: widths[i])
                floor = max(_MIN_WIDTH, len(headers[widest]))
                if widths[widest] <= floor:
                    candidates.remove(widest)
                    continue
                widths[widest] = max(floor, widths[widest] - (sum(widths) - budget))
    lines = [headers, *cells]
    for line in lines:
        text = "  ".join(_cut(c, w).ljust(w) for c, w in zip(line, widths, strict=True))
        sys.stdout.write(text.rstrip() + "\n")


def print_fields(fields: Mapping[str, Any], *, wide: bool = False) -> None:
    """Print ``name: value`` lines, names aligned; long values are cut unless ``wide``."""
    pad = max((len(k) for k in fields), default=0)
    for name, value in fields.items():
        text = format_value(value)
        if not wide:
            text = _cut(text, max(TERMINAL_WIDTH - pad - 2, _MIN_WIDTH))
        sys.stdout.write(f"{name.ljust(pad)}  {text}\n")


def instance_document(info: WorkflowInstanceInfo) -> dict[str, Any]:
    """The JSON form of a workflow instance."""
    return {
        "workflow_name": info.workflow_name,
        "instance_name": info.instance_name,
        "status": info.status.value,
        "is_running": info.is_running,
        "parameters": info.parameters,
        "payload": info.payload,
        "result": info.result,
        "error": info.error,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
    }


def schedule_document(schedule: Schedule) -> dict[str, Any]:
    """The JSON form of a schedule."""
    return {
        "workflow_name": schedule.workflow_name,
        "instance_name": schedule.instance_name,
        "parameters": schedule.parameters,
        "recurrence": schedule.recurrence,
        "enabled": schedule.enabled,
        "next_due_at": schedule.next_due_at,
        "last_enqueued_at": schedule.last_enqueued_at,
        "last_start": schedule.last_start,
        "last_end": schedule.last_end,
    }
