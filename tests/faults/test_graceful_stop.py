"""Graceful ``stop()`` under load: in-flight work finishes or is handed over cleanly."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from tests.faults.chaos import Workload

MakeWorkload = Callable[..., Workload]

ROUNDS = 5


def test_graceful_stop_under_load_then_a_new_manager_finishes_everything(
    make_workload: MakeWorkload,
) -> None:
    # Short tasks keep the claimers busy, so that stops land in the middle of claims too.
    workload = make_workload(instances=120, fan_out=8, task_delay=0.05)
    workload.enqueue()
    for _ in range(ROUNDS):
        workers = workload.start_workers(2)
        deadline = time.monotonic() + 10
        while sum(w.in_flight() for w in workers) < 2:
            assert time.monotonic() < deadline, "no task in flight"
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.3))
        started = time.monotonic()
        assert workload.stop_all(timeout=30) == [0, 0]
        took = time.monotonic() - started
        # Tasks take 0.05 s: stop() waited for no timeout, and left no task claimed.
        assert took < 5, f"stop took {took:.1f}s"
        running = workload._query("SELECT count(*) FROM tasks WHERE state = 'running'")
        assert running == [(0,)], "a stopped manager left a task claimed"

    workload.start_workers(1)
    assert workload.wait(45), workload.check().describe()
    assert workload.stop_all() == [0]
    report = workload.check()
    print(report.describe())
    assert report.ok, report.describe()
    # Nothing was abandoned: no task was reported lost and every run returned.
    assert report.lost == 0
    assert report.interrupted_runs == 0
