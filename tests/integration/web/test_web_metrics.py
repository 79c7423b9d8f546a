"""Prometheus metrics: database gauges, per-process counters, the worker's metrics server."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from cereal import Manager, instrumentation
from cereal.backends.postgres import PostgresDriver
from cereal.web.metrics import start_metrics_server
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for
from tests.integration.web.web_helpers import Seeded


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape as ``{(name, sorted labels): value}`` (the parser must accept
    the whole text)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def test_metrics_parse_and_report_the_database(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    reply = client().get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert value(text, "cereal_database_up") == 1
    assert value(text, "cereal_workflow_instances", workflow="reports", status="running") == 1
    assert value(text, "cereal_workflow_runs_kept", workflow="sync", status="failed") == 1
    assert value(text, "cereal_tasks", task="render", state="running") == 1
    assert value(text, "cereal_tasks", task="never-run", state="queued") == 1
    oldest = value(text, "cereal_task_oldest_queued_age_seconds", task="never-run")
    assert oldest is not None and oldest >= 0
    assert value(text, "cereal_tasks_stale", task="render") == 0
    assert value(text, "cereal_schedules") == 1
    assert value(text, "cereal_schedules_overdue") == 0


def test_metrics_move_when_work_runs(
    driver: PostgresDriver,
    make_manager: Callable[..., Manager],
    client: Callable[..., TestClient],
) -> None:
    c = client()
    producer = make_manager()
    for i in range(3):
        producer.enqueue_workflow("work", f"w{i}", {"task": "step"})
    before = c.get("/metrics").text
    assert value(before, "cereal_workflow_instances", workflow="work", status="starting") == 3
    assert value(before, "cereal_workflow_runs_kept", workflow="work", status="completed") is None

    worker = make_manager()

    def start(inst: Any, event: Any) -> Any:
        inst.enqueue_task("step", None)
        return inst.continue_with()

    worker.register_workflow_executor(
        "work", Flow(start, lambda inst, ev: inst.complete(ev.result.value))
    )
    worker.register_task_executor("step", lambda task: 1)
    worker.start()
    for i in range(3):
        worker.await_workflow("work", f"w{i}", timeout=15)
    after = c.get("/metrics").text
    assert value(after, "cereal_workflow_instances", workflow="work", status="starting") is None
    assert value(after, "cereal_workflow_runs_kept", workflow="work", status="completed") == 3


class _Recorder(instrumentation.Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def task_finished(self, task_name: str, status: str, seconds: float) -> None:
        self.calls.append(("task", task_name, status, seconds))


def test_process_counters_follow_the_instrumentation_hooks(
    driver: PostgresDriver, client: Callable[..., TestClient]
) -> None:
    c = client()
    before = c.get("/metrics").text
    runs_before = value(before, "cereal_task_runs_total", task="t-metrics", status="success") or 0
    instrumentation.event_handled("wf-metrics", "start")
    instrumentation.callback_finished("wf-metrics", "start", "continue", 0.02)
    instrumentation.task_finished("t-metrics", "success", 0.3)
    instrumentation.task_finished("t-metrics", "failed", 1.5)
    instrumentation.scheduler_lag(0.7)
    text = c.get("/metrics").text
    assert value(text, "cereal_events_handled_total", workflow="wf-metrics", kind="start") == 1
    assert value(text, "cereal_decisions_total", workflow="wf-metrics", decision="continue") == 1
    assert (
        value(text, "cereal_task_runs_total", task="t-metrics", status="success") == runs_before + 1
    )
    assert value(text, "cereal_task_run_seconds_count", task="t-metrics") == 2
    assert value(text, "cereal_task_run_seconds_sum", task="t-metrics") == pytest.approx(1.8)
    assert value(text, "cereal_callback_seconds_count", workflow="wf-metrics", kind="start") == 1
    assert (value(text, "cereal_scheduler_lag_seconds_count") or 0) >= 1


def test_an_observer_that_raises_never_breaks_the_caller() -> None:
    class Broken(instrumentation.Observer):
        def task_finished(self, task_name: str, status: str, seconds: float) -> None:
            raise RuntimeError("observer bug")

    good = _Recorder()
    remove_broken = instrumentation.add_observer(Broken())
    remove_good = instrumentation.add_observer(good)
    try:
        instrumentation.task_finished("t", "success", 0.1)
    finally:
        remove_broken()
        remove_good()
    instrumentation.task_finished("t", "success", 0.2)  # no longer observed
    assert good.calls == [("task", "t", "success", 0.1)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_metrics_server_serves_database_and_process_metrics(
    seeded: Seeded, driver: PostgresDriver
) -> None:
    port = _free_port()
    server = start_metrics_server(port, driver, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return str(reply.read().decode())

        text = wait_for(scrape, what="the metrics server to answer")
        assert value(text, "cereal_database_up") == 1
        assert value(text, "cereal_tasks", task="render", state="running") == 1
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"cereal_task_runs", "cereal_scheduler_lag_seconds"} <= families
    finally:
        server.shutdown()
        server.server_close()
