"""Paged listings on PostgreSQL: newest first, keyset cursors, the status filter, and the
checks on limit, status and cursors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cereal import Manager, WorkflowInstanceInfo, WorkflowStatus
from cereal.backends.postgres.listing import Listing
from cereal.backends.postgres.queries import load_queries
from cereal.errors import CerealError
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def record_run(
    m: Manager,
    workflow_name: str,
    instance_name: str,
    started_at: datetime,
    status: str = "completed",
    result: Any = None,
) -> None:
    """Write one finished run straight into history, as a finished instance would."""
    with m.driver.connection() as conn:
        conn.execute(
            "INSERT INTO workflow_results (workflow_name, instance_name, status, result, error,"
            " started_at, ended_at) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s)",
            (
                workflow_name,
                instance_name,
                status,
                None if result is None else str(result),
                "boom" if status == "failed" else None,
                started_at,
                started_at + timedelta(seconds=1),
            ),
        )


def key(info: WorkflowInstanceInfo) -> tuple[datetime, str, str]:
    assert info.started_at is not None
    return (info.started_at, info.workflow_name, info.instance_name)


def pairs(rows: list[WorkflowInstanceInfo]) -> list[tuple[str, str]]:
    return [(r.workflow_name, r.instance_name) for r in rows]


def page_through(m: Manager, limit: int, **filters: Any) -> list[WorkflowInstanceInfo]:
    rows: list[WorkflowInstanceInfo] = []
    after = None
    while True:
        page = m.list_workflow_instances(limit=limit, after=after, **filters)
        assert len(page) <= limit
        rows += page
        if len(page) < limit:
            return rows
        after = page[-1].cursor


def test_pages_return_every_pair_once_newest_first_while_runs_are_added(
    make_manager: MakeManager,
) -> None:
    m = make_manager()
    for i in range(20):
        record_run(m, f"w{i % 3}", f"i{i}", BASE + timedelta(minutes=i), result=i)
    for i in range(5):  # same started_at: the names break the tie
        record_run(m, "w0", f"tie{i}", BASE + timedelta(hours=1))
    for i in range(5):
        m.enqueue_workflow("w0", f"live{i}")
    before = m.list_workflow_instances()
    expected = sorted(before, key=key, reverse=True)
    assert len(expected) == 30

    seen: list[WorkflowInstanceInfo] = []
    page = m.list_workflow_instances(limit=7)
    n = 0
    while page:
        seen += page
        # Meanwhile: new instances, new runs, and a live instance finishing (killed).
        m.enqueue_workflow("w1", f"new{n}")
        record_run(m, "w2", f"newer{n}", datetime.now(UTC))
        if n == 1:
            m.kill_workflow("w0", "live0")
        n += 1
        page = m.list_workflow_instances(limit=7, after=page[-1].cursor)

    assert n == 5
    assert pairs(seen) == pairs(expected)
    assert [key(r) for r in seen] == sorted((key(r) for r in seen), reverse=True)
    assert all(r.cursor for r in seen)
    assert all(r.cursor is None for r in m.list_workflow_instances())


def test_a_live_instance_that_finishes_keeps_its_place(make_manager: MakeManager) -> None:
    m = make_manager()
    for i in range(4):
        m.enqueue_workflow("w", f"i{i}")
    first = m.list_workflow_instances(limit=2)
    for i in range(4):
        m.kill_workflow("w", f"i{i}")
    rest = page_through_after(m, first[-1].cursor, 2)
    assert sorted(pairs(first + rest)) == [("w", f"i{i}") for i in range(4)]
    assert {r.status for r in rest} == {WorkflowStatus.FAILED}


def page_through_after(m: Manager, after: str | None, limit: int) -> list[WorkflowInstanceInfo]:
    rows: list[WorkflowInstanceInfo] = []
    while True:
        page = m.list_workflow_instances(limit=limit, after=after)
        rows += page
        if len(page) < limit:
            return rows
        after = page[-1].cursor


def test_each_pair_shows_its_latest_run_only(make_manager: MakeManager) -> None:
    m = make_manager()
    m.register_workflow_executor(
        "w", Flow(on_start=lambda inst, ev: inst.complete(inst.parameters))
    )
    m.start()
    for run in range(3):
        m.enqueue_workflow("w", "again", run)
        wait_for(lambda: not m.get_workflow_instance("w", "again").is_running)
    m.enqueue_workflow("w", "once", "only")
    m.await_workflow("w", "once", timeout=10)
    for listing in (m.list_workflow_instances(), m.list_workflow_instances(limit=10)):
        results = {r.instance_name: r.result for r in listing}
        assert results == {"again": 2, "once": "only"}
    assert m.get_workflow_instance("w", "again").result == 2


def test_a_workflow_pages_its_own_instances(make_manager: MakeManager) -> None:
    m = make_manager()
    for i in range(9):
        record_run(m, "mine" if i % 2 else "other", f"i{i}", BASE + timedelta(seconds=i))
    m.enqueue_workflow("mine", "live")
    rows = page_through(m, 2, workflow_name="mine")
    assert pairs(rows) == [("mine", n) for n in ("live", "i7", "i5", "i3", "i1")]
    one = page_through(m, 2, workflow_name="mine", instance_name="i5")
    assert pairs(one) == [("mine", "i5")]
    by_instance = page_through(m, 1, instance_name="i4")
    assert pairs(by_instance) == [("other", "i4")]


@pytest.mark.parametrize("limit", [None, 2])
def test_status_filter_keeps_rows_with_that_status(
    make_manager: MakeManager, limit: int | None
) -> None:
    m = make_manager()
    for i in range(6):
        status = "failed" if i % 3 == 0 else "completed"
        record_run(m, "w", f"i{i}", BASE + timedelta(seconds=i), status=status)
    m.enqueue_workflow("w", "live")

    def names(**filters: Any) -> list[str]:
        if limit is None:
            rows = m.list_workflow_instances(**filters)
        else:
            rows = page_through(m, limit, **filters)
        return sorted(r.instance_name for r in rows)

    assert names(status=WorkflowStatus.FAILED) == ["i0", "i3"]
    assert names(status="completed") == ["i1", "i2", "i4", "i5"]
    assert names(status=WorkflowStatus.STARTING) == ["live"]
    assert names(status=WorkflowStatus.RUNNING) == []
    assert names(status=WorkflowStatus.FAILED, is_running=True) == []
    assert names(status=WorkflowStatus.STARTING, is_running=False) == []
    assert names(is_running=True) == ["live"]
    assert names(is_running=False) == ["i0", "i1", "i2", "i3", "i4", "i5"]


def test_cursor_of_another_listing_is_rejected(make_manager: MakeManager) -> None:
    m = make_manager()
    for i in range(3):
        record_run(m, "w", f"i{i}", BASE + timedelta(seconds=i), status="failed")
    cursor = m.list_workflow_instances(limit=1)[0].cursor
    assert cursor is not None
    assert m.list_workflow_instances(limit=1, after=cursor)  # its own listing accepts it
    for filters in (
        {"workflow_name": "w"},
        {"instance_name": "i1"},
        {"is_running": False},
        {"status": WorkflowStatus.FAILED},
    ):
        with pytest.raises(CerealError, match="other filters"):
            m.list_workflow_instances(limit=1, after=cursor, **filters)


@pytest.mark.parametrize(
    "garbage",
    ["", "garbage", "c1.", "c1.!!!!", "c1.bm90IGpzb24=", "c1.WzEsMiwzXQ==", "c2.abc"],
)
def test_malformed_cursor_is_rejected_naming_it(make_manager: MakeManager, garbage: str) -> None:
    m = make_manager()
    with pytest.raises(CerealError, match="not a listing cursor") as info:
        m.list_workflow_instances(limit=5, after=garbage)
    assert repr(garbage) in str(info.value)


def test_cursor_that_is_not_a_string_is_rejected(make_manager: MakeManager) -> None:
    m = make_manager()
    with pytest.raises(CerealError, match="after must be a cursor string"):
        m.list_workflow_instances(limit=5, after=123)  # type: ignore[arg-type]


def test_cursor_without_limit_is_rejected(make_manager: MakeManager) -> None:
    m = make_manager()
    record_run(m, "w", "i", BASE)
    cursor = m.list_workflow_instances(limit=1)[0].cursor
    with pytest.raises(CerealError, match="after needs a limit"):
        m.list_workflow_instances(after=cursor)


@pytest.mark.parametrize("limit", [0, -1, 10_001, True, 1.5, "10"])
def test_limit_must_be_a_page_size(make_manager: MakeManager, limit: Any) -> None:
    m = make_manager()
    with pytest.raises(CerealError, match="limit must be an int from 1 to 10000") as info:
        m.list_workflow_instances(limit=limit)
    assert repr(limit) in str(info.value)


@pytest.mark.parametrize("status", ["bogus", "Completed", 3, True])
def test_unknown_status_is_rejected_naming_it(make_manager: MakeManager, status: Any) -> None:
    m = make_manager()
    with pytest.raises(CerealError, match="status must be a WorkflowStatus") as info:
        m.list_workflow_instances(status=status)
    assert repr(status) in str(info.value)


def test_limit_one_pages_one_row_at_a_time(make_manager: MakeManager) -> None:
    m = make_manager()
    for i in range(3):
        record_run(m, "w", f"i{i}", BASE + timedelta(seconds=i))
    assert pairs(page_through(m, 1)) == [("w", "i2"), ("w", "i1"), ("w", "i0")]
    assert m.list_workflow_instances(limit=10_000) != []


def test_a_page_of_failed_runs_reads_one_page_of_history(make_manager: MakeManager) -> None:
    m = make_manager()
    with m.driver.connection() as conn:
        conn.execute(
            "INSERT INTO workflow_results (workflow_name, instance_name, status, error,"
            " started_at) SELECT 'w', 'f' || g, CASE WHEN g %% 20 = 0 THEN 'failed'"
            " ELSE 'completed' END, NULL, %s::timestamptz + g * interval '1 second'"
            " FROM generate_series(1, 60000) g",
            (BASE,),
        )
        conn.execute("ANALYZE workflow_results")
        listing = Listing.of(None, None, None, WorkflowStatus.FAILED, 20, None)
        assert listing.statement is not None
        with conn.transaction():
            rows = conn.execute(
                load_queries()[listing.statement], listing.params, prepare=False
            ).fetchall()
            # Index entries and rows this transaction read from history.
            read = conn.execute(
                "SELECT (SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index"
                "        WHERE indrelid = 'workflow_results'::regclass)"
                "     + pg_stat_get_xact_tuples_returned('workflow_results'::regclass)"
            ).fetchone()
    assert [r[1] for r in rows] == [f"f{g}" for g in range(60000, 59600, -20)]
    assert read is not None and read[0] < 200, f"one page read {read[0]} rows of history"
