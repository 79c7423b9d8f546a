"""Schedules with schedulers in two processes on one schema: each occurrence runs once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from cereal import Manager, StartEvent, WorkflowInstance
from cereal.backends.postgres import PostgresDriver

pytestmark = pytest.mark.timeout(60)

WF = "scheduled"
ROOT = Path(__file__).resolve().parents[2]
PROC = ROOT / "tests" / "schedule_proc.py"


class Recorder:
    """Records the enqueue time of each start; completes every instance at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enqueued: set[datetime] = set()

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Any:
        with self.lock:
            self.enqueued.add(event.enqueued_at)
        return instance.complete()

    def on_task_complete(self, instance: WorkflowInstance, event: Any) -> Any:
        return instance.complete()

    def on_cancel(self, instance: WorkflowInstance, event: Any) -> Any:
        return instance.complete()


def second_after(seconds: float) -> datetime:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=0) + timedelta(seconds=1 if moment.microsecond else 0)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def history(driver: PostgresDriver, instance_name: str) -> list[datetime]:
    """Enqueue times of every run of ``(WF, instance_name)``, finished or live."""
    with driver.connection() as conn:
        rows = conn.execute(
            "SELECT started_at FROM workflow_results"
            " WHERE workflow_name = %s AND instance_name = %s"
            " UNION ALL SELECT started_at FROM workflow_instances"
            " WHERE workflow_name = %s AND instance_name = %s ORDER BY 1",
            (WF, instance_name, WF, instance_name),
        ).fetchall()
    return [row[0] for row in rows]


def test_each_occurrence_is_enqueued_once_with_schedulers_in_two_processes(
    make_manager: Callable[..., Manager],
    driver: PostgresDriver,
    pg_dsn: str,
    schema: str,
    tmp_path: Path,
) -> None:
    runs_file = tmp_path / "runs.txt"
    log_file = tmp_path / "child.log"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    }
    with log_file.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, str(PROC), pg_dsn, schema, WF, str(runs_file)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        wait_until(
            lambda: Path(f"{runs_file}.ready").exists() or child.poll() is not None,
            30,
            "the child manager to start",
        )
        assert child.poll() is None, log_file.read_text()

        recorder = Recorder()
        manager = make_manager()
        manager.register_workflow_executor(WF, recorder)
        manager.start()

        first = second_after(1)
        with structlog.testing.capture_logs() as logs:
            manager.create_workflow_schedule(
                WF,
                "shared",
                recurrence=f"DTSTART:{first:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=SECONDLY;INTERVAL=1",
            )
            time.sleep(
                max(0.0, (first + timedelta(seconds=6.5) - datetime.now(UTC)).total_seconds())
            )
            manager.delete_workflow_schedule(WF, "shared")
            stopped_at = datetime.now(UTC)
            time.sleep(0.5)  # the last run finishes
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0, log_file.read_text()

    occurrences = math.floor((stopped_at - first).total_seconds()) + 1  # 7
    starts = history(driver, "shared")
    windows = Counter(math.floor((s - first).total_seconds()) for s in starts)
    assert windows and max(windows.values()) == 1, windows
    assert all(0 <= k < occurrences for k in windows), windows
    assert occurrences - 1 <= len(starts) <= occurrences, (occurrences, starts)

    # Every run was started exactly once, by one process or the other.
    child_runs = (
        {
            datetime.fromisoformat(line.split()[1])
            for line in runs_file.read_text().splitlines()
            if line.startswith("shared ")
        }
        if runs_file.exists()
        else set()
    )
    assert not child_runs & recorder.enqueued
    assert sorted(child_runs | recorder.enqueued) == starts

    # No occurrence was handled by both schedulers either (a second enqueue of an occurrence
    # whose run is still live would be hidden from the history as a skip).
    here = [e["due_at"] for e in logs if e.get("instance") == "shared" and "due_at" in e]
    there = []
    for line in log_file.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("instance") == "shared" and "due_at" in entry:
            there.append(entry["due_at"])
    handled = Counter(here + there)
    assert handled and max(handled.values()) == 1, (here, there)
    assert len(handled) >= len(starts), (handled, starts)  # every run was logged
