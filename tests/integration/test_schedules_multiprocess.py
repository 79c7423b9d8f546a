"""Schedules with schedulers in two processes on one schema: each occurrence runs once."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cereal import Manager
from cereal.backends.postgres import PostgresDriver
from tests.helpers.logs import capture_logs
from tests.helpers.processes import program
from tests.helpers.recorders import Flow, complete

pytestmark = pytest.mark.timeout(60)

WF = "scheduled"


def second_after(seconds: float) -> datetime:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=0) + timedelta(seconds=1 if moment.microsecond else 0)


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
    with (
        program("scheduler", pg_dsn, schema, WF, str(runs_file), log_file=log_file) as child,
        capture_logs() as logs,
    ):
        child.expect("ready")

        recorder = Flow(on_start=complete, on_task=complete, on_cancel=complete)
        manager = make_manager()
        manager.register_workflow_executor(WF, recorder)
        manager.start()

        first = second_after(1)
        manager.create_workflow_schedule(
            WF,
            "shared",
            recurrence=f"DTSTART:{first:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=SECONDLY;INTERVAL=1",
        )
        time.sleep(max(0.0, (first + timedelta(seconds=6.5) - datetime.now(UTC)).total_seconds()))
        manager.delete_workflow_schedule(WF, "shared")
        stopped_at = datetime.now(UTC)
        time.sleep(0.5)  # the last run finishes
        assert child.finish(timeout=20) == 0, child.log_tail()
    enqueued_here = {start.enqueued_at for start in recorder.starts()}

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
    assert not child_runs & enqueued_here
    assert sorted(child_runs | enqueued_here) == starts

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
