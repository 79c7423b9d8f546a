"""SIGKILL of worker processes: in the middle of task execution, and inside a workflow callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.chaos import Workload

MakeWorkload = Callable[..., Workload]


def test_sigkill_during_tasks_reports_them_lost_and_totals_stay_right(
    make_workload: MakeWorkload,
) -> None:
    workload = make_workload(instances=40, fan_out=4, task_delay=0.3)
    workload.start_workers(3)
    workload.enqueue()

    interrupted = 0
    for _ in range(3):
        time.sleep(1.0)
        victim = workload.kill_worker(busy_within=5.0)
        interrupted += victim.in_flight()
        workload.start_worker()

    assert workload.wait(60), workload.check().describe()
    assert workload.stop_all() == [0, 0, 0]
    report = workload.check()
    print(report.describe())
    assert report.ok, report.describe()
    # The killed workers were in the middle of tasks; each such task came back LOST and ran
    # again (report.ok also checks that every interrupted run has a next attempt).
    assert interrupted > 0
    assert report.interrupted_runs == interrupted
    assert report.lost >= interrupted


@pytest.mark.parametrize("callback", ["start", "task"])
def test_sigkill_inside_a_callback_redelivers_the_event_and_applies_it_once(
    make_workload: MakeWorkload, tmp_path: Path, callback: str
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    workload = make_workload(instances=12, fan_out=3, task_delay=0.05)
    victim = workload.start_worker(hold=str(hold), hold_on=callback)
    workload.enqueue()

    deadline = time.monotonic() + 20
    while not victim.held():
        assert time.monotonic() < deadline, f"no {callback} callback was held"
        assert victim.alive()
        time.sleep(0.02)
    time.sleep(0.2)  # let the other handler threads reach the hold too
    held = victim.held()
    workload.kill_worker(victim)
    hold.unlink()

    workload.start_workers(2)
    assert workload.wait(30), workload.check().describe()
    assert workload.stop_all() == [0, 0]
    report = workload.check()
    print(report.describe())
    assert report.ok, report.describe()
    # Each held event was delivered again, by another process, and its effects (payload,
    # tasks, completion) were committed once: report.ok checks the counters and results.
    assert held and all(r["ev"] == callback for r in held)
    for record in held:
        assert report.redelivered_by_another(record), record
    assert report.redelivered >= len(held)
