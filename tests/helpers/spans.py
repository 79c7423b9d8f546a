"""Recording OpenTelemetry spans in tests, in this process or in a child, and reading them
back as trees.

:func:`recorded_spans` installs, for one block, an SDK tracer provider that keeps every
finished span in memory. A child process records to a JSON-lines file instead
(:func:`export_to_file`), which :func:`read_span_file` reads back, so that the test can join
the spans of both processes into one tree.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


@dataclass(frozen=True)
class SpanRecord:
    """The parts of a finished span the tests look at (ids as hex strings)."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    status: str
    pid: int = 0


def record_of(span: ReadableSpan, pid: int = 0) -> SpanRecord:
    ctx = span.get_span_context()
    assert ctx is not None
    return SpanRecord(
        name=span.name,
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        parent_id=None if span.parent is None else f"{span.parent.span_id:016x}",
        attributes=dict(span.attributes or {}),
        status=span.status.status_code.name,
        pid=pid,
    )


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Record every span finished inside the block in memory, with an SDK tracer provider
    installed for the block only (the API's globals are put back as they were, so later
    tests run without tracing, as applications do by default)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_globals()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_globals()


def _reset_globals() -> None:
    # The API allows one set_tracer_provider per process; its own test utilities reset
    # these two globals in the same way.
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


class _FileExporter(SpanExporter):
    def __init__(self, path: Path, pid: int) -> None:
        self._path = path
        self._pid = pid
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(record_of(s, self._pid).__dict__) + "\n" for s in spans]
        with self._lock, self._path.open("a", encoding="utf-8") as f:
            f.writelines(lines)
        return SpanExportResult.SUCCESS


def export_to_file(path: Path, pid: int) -> None:
    """Install an SDK tracer provider appending each finished span to ``path`` (JSON lines)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_FileExporter(path, pid)))
    trace.set_tracer_provider(provider)


def read_span_file(path: Path) -> list[SpanRecord]:
    if not path.exists():
        return []
    return [SpanRecord(**json.loads(line)) for line in path.read_text().splitlines() if line]


def tree(records: Iterable[SpanRecord], root: SpanRecord) -> dict[str, Any]:
    """``{"name": ..., "children": [...]}`` below ``root`` (children in a fixed order)."""
    by_parent: dict[str | None, list[SpanRecord]] = {}
    for r in records:
        by_parent.setdefault(r.parent_id, []).append(r)

    def build(r: SpanRecord) -> dict[str, Any]:
        kids = [build(k) for k in by_parent.get(r.span_id, [])]
        kids.sort(key=lambda k: json.dumps(k, sort_keys=True))
        return {"name": r.name, "children": kids}

    return build(root)
