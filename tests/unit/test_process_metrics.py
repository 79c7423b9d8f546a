"""Per-process counters move when a manager in this process works (memory driver)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cereal import Manager, WorkflowStatus
from cereal.testing import MemoryDriver
from cereal.web.metrics import make_registry
from tests.helpers.doubler import Doubler, double
from tests.helpers.schedules import schedule_soon
from tests.helpers.timings import FAST_MANAGER_OPTIONS
from tests.helpers.waiting import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(driver: MemoryDriver) -> Samples:
    """Every sample of ``/metrics`` as served for ``driver``, parsed as Prometheus does."""
    text = generate_latest(make_registry(driver)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_when_work_runs() -> None:
    driver = MemoryDriver()
    manager = Manager(driver, **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("pair", Doubler())
    manager.register_task_executor("double", double)
    before = scrape(driver)
    schedule_soon(manager, "pair", "nightly", 1, rule="FREQ=DAILY")
    with manager:
        manager.enqueue_workflow("pair", "ok", 2)
        manager.enqueue_workflow("pair", "bad", -2)
        assert manager.await_workflow("pair", "ok", timeout=10).result == 4
        assert manager.await_workflow("pair", "bad", timeout=10).status is WorkflowStatus.FAILED
        wait_for(
            lambda: manager.get_workflow_schedule("pair", "nightly").last_enqueued_at,
            what="the scheduled run",
        )
        manager.await_workflow("pair", "nightly", timeout=10)
    after = scrape(driver)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cereal_events_handled_total", workflow="pair", kind="start") == 3
    assert moved("cereal_events_handled_total", workflow="pair", kind="task_complete") == 3
    assert moved("cereal_decisions_total", workflow="pair", decision="continue") == 3
    assert moved("cereal_decisions_total", workflow="pair", decision="complete") == 2
    assert moved("cereal_decisions_total", workflow="pair", decision="fail") == 1
    assert moved("cereal_callback_seconds_count", workflow="pair", kind="start") == 3
    assert moved("cereal_task_runs_total", task="double", status="success") == 2
    assert moved("cereal_task_runs_total", task="double", status="failed") == 1
    assert moved("cereal_task_run_seconds_count", task="double") == 3
    assert moved("cereal_scheduler_lag_seconds_count") == 1
    assert 0 <= moved("cereal_scheduler_lag_seconds_sum") < 5
    assert value(after, "cereal_database_up") == 1
    assert value(after, "cereal_workflow_runs_kept", workflow="pair", status="completed") == 2


def test_a_callback_that_raises_counts_as_a_fail_decision() -> None:
    class Raising(Doubler):
        def on_start(self, inst: object, event: object) -> object:
            raise RuntimeError("boom")

    driver = MemoryDriver()
    manager = Manager(driver, scheduler=False, **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("raiser", Raising())
    before = scrape(driver)
    with manager:
        manager.enqueue_workflow("raiser", "x")
        manager.await_workflow("raiser", "x", timeout=10)
    after = scrape(driver)
    key = ("cereal_decisions_total", frozenset({"workflow": "raiser", "decision": "fail"}.items()))
    assert after[key] - before.get(key, 0.0) == 1
