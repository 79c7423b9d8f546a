"""Connection-level failure: every connection of the workers terminated by the server."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.faults.chaos import Workload

MakeWorkload = Callable[..., Workload]


def test_terminated_connections_while_handlers_are_in_flight(
    make_workload: MakeWorkload,
) -> None:
    workload = make_workload(instances=40, fan_out=4, task_delay=0.2)
    workers = workload.start_workers(2)
    workload.enqueue()

    for _ in range(4):
        deadline = time.monotonic() + 5
        while not any(w.in_flight() for w in workers):
            assert time.monotonic() < deadline, "no task in flight"
            time.sleep(0.02)
        # Pool connections, the LISTEN connections, connections inside transactions.
        assert workload.terminate_worker_connections() > 0
        time.sleep(0.8)

    assert workload.wait(45), workload.check().describe()
    assert all(w.alive() for w in workers)
    assert workload.stop_all() == [0, 0]
    report = workload.check()
    print(report.describe())
    assert report.ok, report.describe()
