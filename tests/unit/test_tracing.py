"""Spans of a run, recorded by the OpenTelemetry SDK in this process (memory driver)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cereal import Manager, WorkflowStatus
from cereal.driver import SchedulesChanged
from cereal.testing import MemoryDriver, MemoryStore
from cereal.tracing import (
    ATTR_DECISION,
    ATTR_EVENT_KIND,
    ATTR_INSTANCE,
    ATTR_TASK,
    ATTR_TASK_STATUS,
    ATTR_WORKFLOW,
)
from tests.helpers.doubler import Doubler, double
from tests.helpers.memory import T0, Clock
from tests.helpers.processes import ROOT
from tests.helpers.spans import SpanRecord, record_of, recorded_spans, tree
from tests.helpers.timings import FAST_MANAGER_OPTIONS
from tests.helpers.waiting import wait_for


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


def _manager() -> Manager:
    manager = Manager(MemoryDriver(), scheduler=False, **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("pair", Doubler())
    manager.register_task_executor("double", double)
    return manager


def _records(spans: InMemorySpanExporter) -> list[SpanRecord]:
    return [record_of(s) for s in spans.get_finished_spans()]


def _named(records: list[SpanRecord], name: str) -> list[SpanRecord]:
    return [r for r in records if r.name == name]


def _callback(records: list[SpanRecord], kind: str) -> SpanRecord:
    return next(
        r for r in _named(records, "cereal.callback pair") if r.attributes[ATTR_EVENT_KIND] == kind
    )


ONE_RUN = {
    "name": "cereal.enqueue pair",
    "children": [
        {"name": "cereal.callback pair", "children": []},
        {
            "name": "cereal.callback pair",
            "children": [{"name": "cereal.task double", "children": []}],
        },
    ],
}
"""enqueue -> callback (start) -> task, and enqueue -> callback (task_complete)."""


def test_a_run_is_one_tree_under_the_span_active_at_enqueue(spans: InMemorySpanExporter) -> None:
    with _manager() as manager:
        with trace.get_tracer("test").start_as_current_span("request"):
            manager.enqueue_workflow("pair", "one", 21)
        assert manager.await_workflow("pair", "one", timeout=10).result == 42
    records = _records(spans)
    request = _named(records, "request")[0]
    assert tree(records, request) == {"name": "request", "children": [ONE_RUN]}
    assert {r.trace_id for r in records} == {request.trace_id}
    start = _callback(records, "start")
    assert start.attributes == {
        ATTR_WORKFLOW: "pair",
        ATTR_INSTANCE: "one",
        ATTR_EVENT_KIND: "start",
        ATTR_DECISION: "continue",
    }
    assert _callback(records, "task_complete").attributes[ATTR_DECISION] == "complete"
    task = _named(records, "cereal.task double")[0]
    assert task.parent_id == start.span_id
    assert task.attributes == {
        ATTR_TASK: "double",
        ATTR_WORKFLOW: "pair",
        ATTR_INSTANCE: "one",
        ATTR_TASK_STATUS: "success",
    }
    assert task.status == "UNSET"


def test_failures_mark_their_spans_as_errors(spans: InMemorySpanExporter) -> None:
    with _manager() as manager:
        manager.enqueue_workflow("pair", "bad", -1)
        assert manager.await_workflow("pair", "bad", timeout=10).status is WorkflowStatus.FAILED
    records = _records(spans)
    task = _named(records, "cereal.task double")[0]
    assert (task.attributes[ATTR_TASK_STATUS], task.status) == ("failed", "ERROR")
    ended = _callback(records, "task_complete")
    assert (ended.attributes[ATTR_DECISION], ended.status) == ("fail", "ERROR")


def test_without_a_span_at_enqueue_each_run_is_a_trace_of_its_own(
    spans: InMemorySpanExporter,
) -> None:
    with _manager() as manager:
        manager.enqueue_workflow("pair", "c", 3)
        manager.enqueue_workflow("pair", "d", 4)
        for name in "cd":
            manager.await_workflow("pair", name, timeout=10)
    records = _records(spans)
    roots = [r for r in records if r.parent_id is None]
    assert sorted(r.attributes[ATTR_INSTANCE] for r in roots) == ["c", "d"]
    for root in roots:
        assert tree(records, root) == ONE_RUN
        assert len([r for r in records if r.trace_id == root.trace_id]) == 4


def test_a_bulk_enqueue_puts_every_run_in_its_trace(spans: InMemorySpanExporter) -> None:
    with _manager() as manager:
        assert manager.enqueue_workflows([("pair", "a", 1), ("pair", "b", 2)]) == []
        for name in "ab":
            manager.await_workflow("pair", name, timeout=10)
    records = _records(spans)
    (bulk,) = _named(records, "cereal.enqueue pair")
    assert bulk.parent_id is None
    assert [r.name for r in records if r.parent_id == bulk.span_id] == ["cereal.callback pair"] * 4
    assert {r.trace_id for r in records} == {bulk.trace_id}


NO_SDK = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "hidden":
        sys.modules["opentelemetry"] = None  # importing it fails, as if not installed
    from cereal import Manager, tracing
    from cereal.testing import MemoryDriver
    from tests.helpers.doubler import Doubler, double

    driver = MemoryDriver()
    manager = Manager(driver, scheduler=False, workflow_poll_interval=0.2)
    manager.register_workflow_executor("pair", Doubler())
    manager.register_task_executor("double", double)
    with manager:
        manager.enqueue_workflow("pair", "x", 2)
        stored = [i.trace_context for i in driver.store.instances.values()]
        assert manager.await_workflow("pair", "x", timeout=10).result == 4
    assert stored == [None], stored
    assert not tracing.enabled()
    assert tracing.callback_span("pair", "x", "start", None) is tracing.task_span(
        "double", "pair", "x", None
    )
    print("ok")
    """
)


@pytest.mark.parametrize("mode", ["api", "hidden"])
def test_without_an_sdk_nothing_is_stored_or_recorded(mode: str) -> None:
    """A fresh process with the API but no SDK configured, or without the API at all."""
    done = subprocess.run(
        [sys.executable, "-c", NO_SDK, mode], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr[-3000:]


def test_a_scheduled_run_is_one_trace_under_its_schedule_span(
    spans: InMemorySpanExporter,
) -> None:
    clock = Clock(T0)
    store = MemoryStore(clock=clock)
    manager = Manager(MemoryDriver(store=store), **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("pair", Doubler())
    manager.register_task_executor("double", double)
    manager.create_workflow_schedule(
        "pair", "hourly", 5, recurrence="DTSTART:20300101T010000Z\nRRULE:FREQ=HOURLY"
    )
    with manager:
        time.sleep(0.2)  # scheduler passes that find nothing due record nothing
        assert _records(spans) == []
        clock.advance(timedelta(hours=1))
        with store.lock:
            store.emit([SchedulesChanged()])
        wait_for(lambda: len(_records(spans)) == 4, what="the scheduled run's spans")
        assert manager.await_workflow("pair", "hourly", timeout=10).result == 10
    records = _records(spans)
    (root,) = [r for r in records if r.parent_id is None]
    assert tree(records, root) == {**ONE_RUN, "name": "cereal.schedule pair"}
    assert root.attributes[ATTR_INSTANCE] == "hourly"
    assert {r.trace_id for r in records} == {root.trace_id}
