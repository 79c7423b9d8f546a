"""Prometheus metrics: gauges read from the database, counters fed by this process's engine.

Database gauges come from one :meth:`~cereal.driver.Driver.overview` call per scrape
(:class:`DatabaseCollector`), so every process that exposes them reports the same numbers.
Per-process counters and histograms (:class:`ProcessMetrics`) observe
:mod:`cereal.instrumentation`, so they count only the work of managers in this process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cereal import instrumentation
from cereal.driver import Driver
from cereal.logging import get_logger

__all__ = [
    "DEFAULT_STALE_AFTER",
    "DatabaseCollector",
    "ProcessMetrics",
    "make_registry",
    "process_metrics",
    "start_metrics_server",
]

log = get_logger("cereal.metrics")

DEFAULT_STALE_AFTER = 30.0
"""Seconds without a heartbeat after which a running task counts as stale (the manager's
default ``lost_task_timeout``)."""

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape (one ``overview`` query).

    A scrape while the database does not answer reports ``cereal_database_up 0`` and none of
    the other gauges, instead of failing the whole scrape.
    """

    def __init__(self, driver: Driver, *, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self._driver = driver
        self._stale_after = stale_after

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "cereal_database_up", "1 when the last read of the database succeeded, else 0"
        )
        try:
            view = self._driver.overview(self._stale_after)
        except Exception as exc:
            log.warning("metrics: cannot read the database", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        live = GaugeMetricFamily(
            "cereal_workflow_instances",
            "Live workflow instances per workflow and status (starting, running)",
            labels=["workflow", "status"],
        )
        for (workflow, status), n in sorted(view.instances.items()):
            live.add_metric([workflow, status], n)
        yield live

        runs = GaugeMetricFamily(
            "cereal_workflow_runs_kept",
            "Finished runs kept in history per workflow and status (completed, failed)",
            labels=["workflow", "status"],
        )
        for (workflow, status), n in sorted(view.finished.items()):
            runs.add_metric([workflow, status], n)
        yield runs

        tasks = GaugeMetricFamily(
            "cereal_tasks",
            "Queued and running tasks per task name and state (queued, running)",
            labels=["task", "state"],
        )
        oldest = GaugeMetricFamily(
            "cereal_task_oldest_queued_age_seconds",
            "Seconds the oldest due, queued task of each name has waited (0 when none waits)",
            labels=["task"],
        )
        stale = GaugeMetricFamily(
            "cereal_tasks_stale",
            "Running tasks whose heartbeat is older than the stale threshold (about to be "
            "reported lost)",
            labels=["task"],
        )
        for count in view.tasks:
            tasks.add_metric([count.task_name, "queued"], count.queued)
            tasks.add_metric([count.task_name, "running"], count.running)
            oldest.add_metric([count.task_name], count.oldest_queued_age or 0.0)
            stale.add_metric([count.task_name], count.stale)
        yield tasks
        yield oldest
        yield stale

        schedules = GaugeMetricFamily("cereal_schedules", "Schedules stored (enabled or not)")
        schedules.add_metric([], view.schedules)
        yield schedules
        overdue = GaugeMetricFamily(
            "cereal_schedules_overdue",
            "Enabled schedules whose next run is due and not yet enqueued",
        )
        overdue.add_metric([], view.overdue_schedules)
        yield overdue


class ProcessMetrics(instrumentation.Observer):
    """Counters and histograms of the engine's work in this process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.events = Counter(
            "cereal_events_handled",
            "Workflow events handled by this process, per workflow and event kind",
            ["workflow", "kind"],
            **kw,
        )
        self.decisions = Counter(
            "cereal_decisions",
            "Callback decisions taken in this process, per workflow and decision "
            "(continue, complete, fail)",
            ["workflow", "decision"],
            **kw,
        )
        self.task_runs = Counter(
            "cereal_task_runs",
            "Task runs finished in this process, per task name and status",
            ["task", "status"],
            **kw,
        )
        self.task_seconds = Histogram(
            "cereal_task_run_seconds",
            "Wall time of task runs in this process, per task name",
            ["task"],
            buckets=_DURATION_BUCKETS,
            **kw,
        )
        self.callback_seconds = Histogram(
            "cereal_callback_seconds",
            "Wall time of workflow callbacks in this process, per workflow and event kind",
            ["workflow", "kind"],
            buckets=_DURATION_BUCKETS,
            **kw,
        )
        self.lag = Histogram(
            "cereal_scheduler_lag_seconds",
            "How late this process's scheduler enqueued each schedule occurrence",
            buckets=_LAG_BUCKETS,
            **kw,
        )

    def event_handled(self, workflow_name: str, kind: str) -> None:
        self.events.labels(workflow_name, kind).inc()

    def callback_finished(
        self, workflow_name: str, kind: str, decision: str, seconds: float
    ) -> None:
        self.decisions.labels(workflow_name, decision).inc()
        self.callback_seconds.labels(workflow_name, kind).observe(max(0.0, seconds))

    def task_finished(self, task_name: str, status: str, seconds: float) -> None:
        self.task_runs.labels(task_name, status).inc()
        self.task_seconds.labels(task_name).observe(max(0.0, seconds))

    def scheduler_lag(self, seconds: float) -> None:
        self.lag.observe(max(0.0, seconds))


_process_lock = threading.Lock()
_process: tuple[CollectorRegistry, ProcessMetrics] | None = None


def process_metrics() -> tuple[CollectorRegistry, ProcessMetrics]:
    """The registry of this process's counters, created and observing on first use."""
    global _process
    with _process_lock:
        if _process is None:
            registry = CollectorRegistry(auto_describe=True)
            metrics = ProcessMetrics(registry)
            instrumentation.add_observer(metrics)
            _process = (registry, metrics)
        return _process


class _Joined(Collector):
    def __init__(self, *parts: CollectorRegistry) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Any]:
        for part in self._parts:
            yield from part.collect()


def make_registry(
    driver: Driver | None, *, stale_after: float = DEFAULT_STALE_AFTER
) -> CollectorRegistry:
    """A registry with the database gauges of ``driver`` (when given) and this process's
    counters: what ``/metrics`` serves."""
    registry = CollectorRegistry(auto_describe=False)
    if driver is not None:
        registry.register(DatabaseCollector(driver, stale_after=stale_after))
    registry.register(_Joined(process_metrics()[0]))
    return registry


def start_metrics_server(
    port: int,
    driver: Driver | None = None,
    *,
    addr: str = "0.0.0.0",
    stale_after: float = DEFAULT_STALE_AFTER,
) -> Any:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread and return at once (as
    ``cereal worker APP --metrics-port PORT`` does). Returns the server; call its
    ``shutdown()`` to stop it."""
    registry = make_registry(driver, stale_after=stale_after)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    log.info("metrics server started", addr=addr, port=port)
    return server
