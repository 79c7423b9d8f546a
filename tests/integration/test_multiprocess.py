"""Two managers in separate processes share one schema: every instance runs exactly once."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cereal import Manager, WorkflowStatus
from tests.helpers.processes import program

MakeManager = Callable[..., Manager]
INSTANCES = 200


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.mark.slow
def test_two_processes_drain_a_shared_queue_completing_each_instance_exactly_once(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    logs = [tmp_path / f"worker{n}.jsonl" for n in (1, 2)]
    with (
        program("worker", pg_dsn, schema, str(logs[0]), log_file=tmp_path / "w1.log") as one,
        program("worker", pg_dsn, schema, str(logs[1]), log_file=tmp_path / "w2.log") as two,
    ):
        one.expect("ready")
        two.expect("ready")

        client = make_manager()  # never started: it only enqueues
        for n in range(INSTANCES):
            client.enqueue_workflow("pair", f"i{n:03d}", {"x": n})

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            deadline = time.monotonic() + 60
            while True:
                (done,) = conn.execute("SELECT count(*) FROM workflow_results").fetchone() or (0,)
                if done >= INSTANCES:
                    break
                assert time.monotonic() < deadline, f"only {done} of {INSTANCES} finished"
                time.sleep(0.1)
            leftovers = {
                table: conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                ).fetchone()
                for table in ("workflow_instances", "workflow_events", "tasks")
            }

        for child in (one, two):
            assert child.finish(timeout=30) == 0, child.log_tail()

    assert leftovers == dict.fromkeys(leftovers, (0,))
    names = [f"i{n:03d}" for n in range(INSTANCES)]
    expected = {f"i{n:03d}": {"double": 2 * n, "square": n * n} for n in range(INSTANCES)}

    history = client.list_workflow_instances(workflow_name="pair")
    assert [i.instance_name for i in history] == names
    assert all(i.status is WorkflowStatus.COMPLETED for i in history)
    assert {i.instance_name: i.result for i in history} == expected

    records = [r for path in logs for r in read_log(path)]
    starts = Counter(r["instance"] for r in records if r["kind"] == "start")
    completions = [r for r in records if r["kind"] == "complete"]
    tasks = Counter((r["instance"], r["task"]) for r in records if r["kind"] == "task")
    # on_start runs once, except for an instance taken over while its callback (on_start,
    # say) ran: a split batch whose slow instance another process locked in the instant
    # between committing its batch-mates and locking it again. That decision is dropped and
    # the taker runs the callback again. Each such instance is logged; decisions, tasks and
    # completions stay exactly once.
    taken_over = Counter(
        match
        for path in (tmp_path / "w1.log", tmp_path / "w2.log")
        for match in re.findall(
            r"instance taken over while its callback ran.*instance='(i\d{3})'",
            path.read_text(encoding="utf-8"),
        )
    )
    assert set(starts) == set(names)
    extra = {name: starts[name] - 1 for name in names if starts[name] > 1}
    assert all(extra[name] <= taken_over[name] for name in extra), (extra, taken_over)
    assert Counter(r["instance"] for r in completions) == dict.fromkeys(names, 1)
    assert {r["instance"]: r["result"] for r in completions} == expected
    assert all(r["status"] == "completed" and r["error"] is None for r in completions)
    assert tasks == {(name, task): 1 for name in names for task in ("double", "square")}

    # Both processes handled workflow events and ran tasks.
    pids = {one.pid, two.pid}
    work = Counter((r["pid"], "task" if r["kind"] == "task" else "event") for r in records)
    assert set(work) == {(pid, kind) for pid in pids for kind in ("task", "event")}, work
