"""Traces across processes: the trace context travels with the instance and its tasks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cereal import Manager
from cereal.backends.postgres import PostgresDriver
from cereal.tracing import ATTR_EVENT_KIND, ATTR_INSTANCE
from tests.helpers.doubler import Doubler, double
from tests.helpers.processes import Child
from tests.helpers.spans import read_span_file, record_of, recorded_spans, tree

pytestmark = pytest.mark.integration


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


def test_a_trace_spans_the_enqueuing_process_and_the_worker(
    pg_dsn: str, schema: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    span_file = tmp_path / "spans.jsonl"
    client = Manager(PostgresDriver(pg_dsn, schema=schema), close_driver=True)
    with Child(
        "tests.helpers.traced_worker",
        pg_dsn,
        schema,
        str(span_file),
        log_file=tmp_path / "worker.log",
    ) as worker:
        worker.expect("ready")
        with trace.get_tracer("test").start_as_current_span("request"):
            client.enqueue_workflow("pair", "far", 5)
        assert client.await_workflow("pair", "far", timeout=20).result == 10
        worker.finish()
        worker.expect("stopped")
    client.stop()
    here = [record_of(s, os.getpid()) for s in spans.get_finished_spans()]
    there = read_span_file(span_file)
    request = next(r for r in here if r.name == "request")
    assert tree(here + there, request) == {
        "name": "request",
        "children": [
            {
                "name": "cereal.enqueue pair",
                "children": [
                    {"name": "cereal.callback pair", "children": []},
                    {
                        "name": "cereal.callback pair",
                        "children": [{"name": "cereal.task double", "children": []}],
                    },
                ],
            }
        ],
    }
    assert {r.name for r in here} == {"request", "cereal.enqueue pair"}
    assert sorted(r.name for r in there) == [
        "cereal.callback pair",
        "cereal.callback pair",
        "cereal.task double",
    ]
    assert {r.trace_id for r in there} == {request.trace_id}
    assert {r.pid for r in there} == {worker.pid}
    assert {r.attributes[ATTR_INSTANCE] for r in there} == {"far"}
    assert sorted(
        r.attributes[ATTR_EVENT_KIND] for r in there if r.name == "cereal.callback pair"
    ) == ["start", "task_complete"]


def test_the_async_clients_enqueues_start_the_trace_too(
    make_manager: Callable[..., Manager], spans: InMemorySpanExporter
) -> None:
    manager = make_manager()
    manager.register_workflow_executor("pair", Doubler())
    manager.register_task_executor("double", double)

    async def enqueue() -> None:
        with trace.get_tracer("test").start_as_current_span("request"):
            await manager.aio.enqueue_workflow("pair", "one", 1)
            assert await manager.aio.enqueue_workflows([("pair", "two", 2)]) == []
        await manager.aio.close()

    asyncio.run(enqueue())
    manager.start()
    for name in ("one", "two"):
        manager.await_workflow("pair", name, timeout=20)
    manager.stop()
    records = [record_of(s) for s in spans.get_finished_spans()]
    request = next(r for r in records if r.name == "request")
    one_run = {
        "name": "cereal.enqueue pair",
        "children": [
            {"name": "cereal.callback pair", "children": []},
            {
                "name": "cereal.callback pair",
                "children": [{"name": "cereal.task double", "children": []}],
            },
        ],
    }
    assert tree(records, request) == {"name": "request", "children": [one_run, one_run]}
