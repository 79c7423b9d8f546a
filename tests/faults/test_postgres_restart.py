"""A PostgreSQL restart in the middle of a run, on a server this test owns."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cereal.backends.postgres.embedded import embedded_dsn, stop_embedded
from tests.faults.chaos import Workload

MakeWorkload = Callable[..., Workload]

LONG_POLL = 60.0  # nothing below may wait for a poll: wakeups must come through LISTEN


def test_managers_reconnect_and_relisten_after_a_postgres_restart(
    make_workload: MakeWorkload, own_server: tuple[str, Path]
) -> None:
    dsn, data_dir = own_server
    workload = make_workload(
        dsn, instances=40, fan_out=4, workflow_poll=LONG_POLL, task_poll=LONG_POLL
    )
    workers = workload.start_workers(2)
    workload.enqueue()
    assert workload.wait_finished(12, timeout=30), workload.check().describe()

    workload.mark("restart")
    stop_embedded(data_dir)
    time.sleep(1.0)
    assert embedded_dsn(data_dir) == dsn
    workload.mark("restarted")

    # Well under the poll interval: progress after the restart needs no polling.
    assert workload.wait(25), workload.check().describe()
    report = workload.check()
    print(report.describe())  # throughput before and after the restart: reported, not asserted
    assert report.ok, report.describe()

    # Every worker listens again...
    expected = {w.application_name for w in workers}
    deadline = time.monotonic() + 10
    while (listening := workload.listening_workers()) != expected:
        assert time.monotonic() < deadline, f"listening: {listening}, expected: {expected}"
        time.sleep(0.1)
    # ... and a wakeup sent now (from this process) reaches them at once.
    for _ in range(3):
        started = time.monotonic()
        workload.enqueue(1, fan_out=1)
        assert workload.wait(5), "an instance enqueued after the restart was not picked up"
        assert time.monotonic() - started < 5

    assert workload.stop_all() == [0, 0]
    report = workload.check()
    assert report.ok, report.describe()
