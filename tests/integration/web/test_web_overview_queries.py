"""The overview's cost: a fixed number of statements, whatever the amount of data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from cereal import Manager
from cereal.backends.postgres import PostgresDriver


@contextmanager
def counting_statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record every statement sent through psycopg (``Connection.execute`` goes through a
    cursor too)."""
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query)[:60])
        return real(self, query, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(psycopg.Cursor, "execute", execute)
        yield sent


def fill_history(driver: PostgresDriver, runs: int, failed_every: int) -> None:
    with driver.connection() as conn:
        conn.execute(
            "INSERT INTO workflow_results (workflow_name, instance_name, status, error, "
            "started_at, ended_at) SELECT 'wf' || (g %% 7), 'i' || g, "
            "CASE WHEN g %% %s = 0 THEN 'failed' ELSE 'completed' END, "
            "CASE WHEN g %% %s = 0 THEN 'boom ' || g END, now(), now() "
            "FROM generate_series(1, %s) AS g",
            (failed_every, failed_every, runs),
        )


def test_overview_costs_the_same_statements_with_little_or_much_data(
    driver: PostgresDriver,
    make_manager: Callable[..., Manager],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cereal.web import create_app

    manager = make_manager()
    c = TestClient(create_app(driver))
    c.get("/")  # migrate and open the pool first
    fill_history(driver, 10, 3)
    with counting_statements(monkeypatch) as small:
        assert c.get("/").status_code == 200
    fill_history(driver, 5000, 3)
    for i in range(40):
        manager.enqueue_workflow(f"live{i % 4}", f"i{i}")
    with counting_statements(monkeypatch) as large:
        assert c.get("/").status_code == 200
    assert len(small) == len(large) == 2, (small, large)


def test_overview_counts_stale_tasks_and_overdue_schedules(
    driver: PostgresDriver, make_manager: Callable[..., Manager]
) -> None:
    manager = make_manager()
    manager.enqueue_workflow("wf", "a")
    manager.create_workflow_schedule(
        "wf", "late", recurrence="DTSTART:20250101T000000Z\nRRULE:FREQ=DAILY"
    )
    with driver.connection() as conn:
        instance_id = conn.execute("SELECT id FROM workflow_instances").fetchone()[0]
        conn.execute(
            "INSERT INTO tasks (instance_id, task_name, state, claimed_by, heartbeat_at) "
            "VALUES (%s, 'slow', 'running', 'gone', now() - interval '10 minutes'), "
            "(%s, 'slow', 'running', 'here', now()), "
            "(%s, 'slow', 'queued', NULL, NULL)",
            (instance_id, instance_id, instance_id),
        )
        conn.execute("UPDATE workflow_schedules SET next_due_at = now() - interval '1 hour'")
    view = driver.overview(60)
    assert view.instances == {("wf", "starting"): 1}
    (slow,) = view.tasks
    assert (slow.task_name, slow.queued, slow.running, slow.stale) == ("slow", 1, 2, 1)
    assert slow.oldest_queued_age is not None and slow.oldest_queued_age >= 0
    assert (view.schedules, view.overdue_schedules) == (1, 1)
    with driver.connection() as conn:
        conn.execute("UPDATE workflow_schedules SET next_due_at = now() + interval '1 hour'")
    assert driver.overview(60).overdue_schedules == 0
