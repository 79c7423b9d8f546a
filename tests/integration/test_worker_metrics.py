"""``cereal worker APP --metrics-port N`` serves this worker's metrics while it runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cereal import Manager
from cereal.backends.postgres import PostgresDriver
from tests.helpers.processes import ROOT
from tests.helpers.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_BIN = Path(sys.executable).parent / "cereal"
COMMAND = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "cereal.cli"]

APP = """
import os

from cereal import Manager
from cereal.backends.postgres import PostgresDriver
from tests.helpers.doubler import Doubler, double


def build():
    driver = PostgresDriver(os.environ["CEREAL_DATABASE_URL"], schema=os.environ["CEREAL_SCHEMA"])
    manager = Manager(driver, workflow_poll_interval=0.5, task_poll_interval=0.5)
    manager.register_workflow_executor("pair", Doubler())
    manager.register_task_executor("double", double)
    return manager
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(pg_dsn: str, schema: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "doublerapp.py").write_text(APP)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CEREAL_")}
    return clean | {
        "CEREAL_DATABASE_URL": pg_dsn,
        "CEREAL_SCHEMA": schema,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_worker_serves_metrics_that_move_when_it_works(
    env: dict[str, str], tmp_path: Path, pg_dsn: str, schema: str
) -> None:
    port = _free_port()
    worker = subprocess.Popen(
        [*COMMAND, "worker", "doublerapp:build", "--metrics-port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        up = ("cereal_database_up", frozenset())
        # The endpoint starts just before the manager, which may still be creating the schema.
        wait_for(
            lambda: (s := _scrape(port)) is not None and s.get(up) == 1,
            timeout=30,
            what="the metrics endpoint to read the database",
        )
        with Manager(PostgresDriver(pg_dsn, schema=schema), close_driver=True) as client:
            client.enqueue_workflow("pair", "one", 4)
            assert client.await_workflow("pair", "one", timeout=20).result == 8
        runs = (
            "cereal_task_runs_total",
            frozenset({"task": "double", "status": "success"}.items()),
        )
        later = wait_for(
            lambda: (s := _scrape(port)) is not None and s.get(runs) == 1 and s,
            what="the task run counted",
        )
        assert (
            later[
                (
                    "cereal_events_handled_total",
                    frozenset({"workflow": "pair", "kind": "start"}.items()),
                )
            ]
            == 1
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        for stream in (worker.stdout, worker.stderr):
            if stream is not None:
                stream.close()


def test_metrics_port_without_the_web_extra_is_a_one_line_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    # A module of the same name earlier on the path stands in for a missing install.
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    done = subprocess.run(
        [*COMMAND, "worker", "doublerapp:build", "--metrics-port", str(_free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cereal[web]" in lines[0] and "--metrics-port" in lines[0]


def test_metrics_port_must_be_a_port(env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        [*COMMAND, "worker", "doublerapp:build", "--metrics-port", "70000"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--metrics-port" in done.stderr
