"""The worker threads of sync task executors: at most ``workers`` calls of a name run at
once, the rest wait in submission order, and a shutdown takes no more calls but lets those
queued run."""

from __future__ import annotations

import threading

import pytest

from cereal.task_pools.runners import SyncRunners
from cereal.task_pools.state import TaskRegistration
from tests.helpers.logs import capture_logs
from tests.helpers.recorders import Gate
from tests.helpers.waiting import wait_for


def runners(workers: int, name: str = "t") -> SyncRunners:
    return SyncRunners({name: TaskRegistration(name, lambda task: None, workers, None)})


def workers_of(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"cereal-{name}_")]


def test_at_most_workers_calls_run_at_once_and_the_rest_wait_in_order() -> None:
    pool, gate = runners(3), Gate()
    for n in range(10):
        pool.submit("t", gate.call(n))
    wait_for(lambda: gate.inside == 3, what="three calls running")
    assert sorted(gate.ran) == [0, 1, 2]
    gate.open.set()
    wait_for(lambda: len(gate.ran) == 10, what="every call run")
    assert gate.most_inside == 3
    assert gate.ran[3:] == list(range(3, 10))
    pool.shutdown()


def test_a_thread_is_started_only_when_none_is_idle() -> None:
    pool, done = runners(8, "sequential"), threading.Semaphore(0)
    workers = pool._pools["sequential"]
    for _ in range(20):  # one after the other: the first thread serves them all
        pool.submit("sequential", done.release)
        assert done.acquire(timeout=5)
        wait_for(lambda: workers._idle == 1, what="the thread idle again")
    assert len(workers_of("sequential")) == 1
    pool.shutdown()


def test_after_shutdown_queued_calls_run_new_ones_are_refused_and_threads_exit() -> None:
    pool, gate = runners(1, "closing"), Gate()
    pool.submit("closing", gate.call(0))
    pool.submit("closing", gate.call(1))
    wait_for(lambda: gate.inside == 1, what="the first call running")
    pool.shutdown()
    with pytest.raises(RuntimeError, match="'closing' are shut down"):
        pool.submit("closing", gate.call(2))
    gate.open.set()
    wait_for(lambda: gate.ran == [0, 1], what="the queued call run")
    wait_for(lambda: not workers_of("closing"), what="the worker thread gone")


def test_a_failing_call_is_logged_and_its_thread_goes_on() -> None:
    pool, done = runners(1, "failing"), threading.Event()

    def boom() -> None:
        raise ValueError("boom")

    with capture_logs() as logs:
        pool.submit("failing", boom)
        pool.submit("failing", done.set)
        assert done.wait(5)
    assert [e["error"] for e in logs if e["event"] == "a task worker's call failed"] == [
        "ValueError('boom')"
    ]
    assert len(workers_of("failing")) == 1
    pool.shutdown()
