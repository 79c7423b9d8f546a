"""Claims start at a floor instead of the lowest key (cereal.backends.postgres.floors); no
event or task may be left behind by it: instances written by a transaction that was open
while the floor moved, new events of old instances, tasks released or due in the past."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.events import MERGED_WALK_MAX, lock_statement
from cereal.backends.postgres.floors import TaskFloors
from cereal.backends.postgres.queries import load_queries
from cereal.driver import StepOutcome
from cereal.types import WorkflowStatus
from cereal.workflow import PendingTask
from tests.contract.test_driver_contract import OWNER, W, claim, js, start, step


@pytest.fixture
def raw(pg_dsn: str, schema: str, driver: PostgresDriver) -> Iterator[psycopg.Connection]:
    driver.open()  # migrate
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (schema,))
        conn.commit()
        yield conn


def run_through(d: PostgresDriver, *names: str) -> None:
    """Start each instance and complete it on its start event, one claim each."""
    for name in names:
        start(d, name)
        complete(d, name)


def complete(d: PostgresDriver, name: str) -> None:
    with claim(d) as batch:
        inst = next(i for i in batch.instances if i.instance_name == name)
        batch.commit([StepOutcome(instance=inst, status=WorkflowStatus.COMPLETED, handled=1)])


def floor_of(
    d: PostgresDriver, until: Callable[[int], bool] = lambda f: False, timeout: float = 1.0
) -> int:
    """The floor after claims (rolled back) made until ``until`` holds or ``timeout``: a
    write transaction anywhere on the server holds the floor back while it runs."""
    floor = d._event_floor([W])
    deadline = time.monotonic() + timeout
    while not until(floor.floor) and time.monotonic() < deadline:
        with claim(d, limit=1):
            pass
        time.sleep(0.02)
    return floor.floor


def test_the_event_floor_moves_up_as_events_are_consumed(driver: PostgresDriver) -> None:
    run_through(driver, *(f"i{n}" for n in range(6)))
    assert floor_of(driver, lambda f: f > 1, timeout=30) > 1
    with claim(driver) as batch:
        assert batch.instances == []
    assert not driver.has_events([W])


def test_an_event_committed_late_below_the_floor_is_still_claimed(
    driver: PostgresDriver, raw: psycopg.Connection
) -> None:
    run_through(driver, "a", "b")
    # A transaction takes an event id, then stays open while later events are consumed.
    raw.execute(
        "WITH i AS (INSERT INTO workflow_instances (workflow_name, instance_name)"
        " VALUES (%s, 'late') RETURNING id)"
        " INSERT INTO workflow_events (instance_id, event_type) SELECT id, 'start' FROM i",
        (W,),
    )
    (late_id,) = raw.execute("SELECT max(id) FROM workflow_instances").fetchone() or (0,)
    run_through(driver, *(f"x{n}" for n in range(6)))
    assert floor_of(driver) <= late_id  # held back while the writer is open
    raw.commit()
    assert driver.has_events([W])
    with claim(driver) as batch:
        assert [i.instance_name for i in batch.instances] == ["late"]
    complete(driver, "late")
    run_through(driver, "z1", "z2", "z3")
    assert floor_of(driver, lambda f: f > late_id, timeout=30) > late_id


def test_a_new_event_of_an_old_instance_is_claimed(driver: PostgresDriver) -> None:
    start(driver, "old")
    step(driver, "old")  # live, with no event pending
    run_through(driver, *(f"x{n}" for n in range(6)))
    driver.signal_workflow(W, "old", "ping", js(1))
    assert driver.has_events([W])
    with claim(driver) as batch:
        assert [i.instance_name for i in batch.instances] == ["old"]
        assert [e.kind for e in batch.events[batch.instances[0].id]] == ["signal"]


def test_a_live_instance_holds_the_floor_down(driver: PostgresDriver) -> None:
    start(driver, "waiting")
    step(driver, "waiting")
    run_through(driver, *(f"x{n}" for n in range(6)))
    with driver.connection() as conn:
        row = conn.execute(
            "SELECT id FROM workflow_instances WHERE instance_name = 'waiting'"
        ).fetchone()
    assert row is not None
    assert floor_of(driver) == row[0]  # the lowest live instance of the schema
    driver.cancel_workflow(W, "waiting")
    assert driver.has_events([W])


def test_floors_are_kept_per_set_of_workflow_names(driver: PostgresDriver) -> None:
    start(driver, "other", workflow="elsewhere")
    run_through(driver, *(f"x{n}" for n in range(6)))
    assert floor_of(driver, lambda f: f > 1, timeout=30) > 1
    with claim(driver, workflow="elsewhere") as batch:
        assert [i.instance_name for i in batch.instances] == ["other"]


def test_a_released_task_below_the_floor_is_claimed_by_the_next_full_scan(
    driver: PostgresDriver,
) -> None:
    driver._task_floors = TaskFloors(full_scan_every=0.5)
    start(driver, "a")
    step(driver, "a", tasks=[PendingTask("t", js(n)) for n in range(3)])
    (first,), _ = driver.claim_tasks({"t": 1}, OWNER)  # a full scan
    driver.release_tasks([first.id], OWNER)
    # Move the floor past the released task, as a claim of later tasks would.
    driver._task_floors.claimed([("t", datetime.now(UTC) + timedelta(hours=1))])
    claimed: list[object] = []
    deadline = time.monotonic() + 5
    while len(claimed) < 3 and time.monotonic() < deadline:
        claimed += [t.parameters for t in driver.claim_tasks({"t": 5}, OWNER)[0]]
        time.sleep(0.05)
    assert sorted(claimed) == [0, 1, 2]  # type: ignore[type-var]


def test_a_task_due_long_ago_is_claimed(driver: PostgresDriver) -> None:
    driver._task_floors = TaskFloors(full_scan_every=0.5)
    start(driver, "a")
    step(driver, "a", tasks=[PendingTask("t", js("now"))])
    assert [t.parameters for t in driver.claim_tasks({"t": 5}, OWNER)[0]] == ["now"]
    past = datetime.now(UTC) - timedelta(days=1)
    start(driver, "b")
    step(driver, "b", tasks=[PendingTask("t", js("past"), start_at=past)])
    claimed: list[object] = []
    deadline = time.monotonic() + 5
    while not claimed and time.monotonic() < deadline:
        claimed = [t.parameters for t in driver.claim_tasks({"t": 5}, OWNER)[0]]
        time.sleep(0.05)
    assert claimed == ["past"]


def test_task_floors_trail_the_oldest_claim_and_a_full_scan_comes_round() -> None:
    floors = TaskFloors(margin=timedelta(seconds=10), full_scan_every=3600)
    assert floors.for_claim(["a", "b"]) == [None, None]  # the first claim is a full scan
    at = datetime(2030, 1, 1, tzinfo=UTC)
    floors.claimed([("a", at + timedelta(seconds=5)), ("a", at)])
    assert floors.for_claim(["a", "b"]) == [at - timedelta(seconds=10), None]
    floors.claimed([("a", at - timedelta(days=1))])  # never moves down
    assert floors.for_claim(["a"]) == [at - timedelta(seconds=10)]


def test_a_task_due_at_the_earliest_date_is_claimed_and_leaves_the_floor_alone(
    driver: PostgresDriver,
) -> None:
    start(driver, "a")
    earliest = datetime.min.replace(tzinfo=UTC)
    step(driver, "a", tasks=[PendingTask("t", js("first"), start_at=earliest)])
    assert [t.parameters for t in driver.claim_tasks({"t": 5}, OWNER)[0]] == ["first"]
    assert driver._task_floors.current(["t"]) == [None]


READ_INSTANCES = (
    "SELECT pg_stat_get_xact_tuples_fetched('workflow_instances'::regclass)"
    " + (SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index"
    "    WHERE indrelid = 'workflow_instances'::regclass)"
)
"""Heap rows and index entries of workflow_instances the transaction read."""
READ_EVENTS = (
    "SELECT pg_stat_get_xact_tuples_returned('workflow_events'::regclass)"
    " + pg_stat_get_xact_tuples_fetched('workflow_events'::regclass)"
    " + (SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index"
    "    WHERE indrelid = 'workflow_events'::regclass)"
)
"""Rows (by sequential scan or index) and index entries of workflow_events the transaction
read."""


def claim_and_count(raw: psycopg.Connection, names: list[str], reads: str) -> tuple[list[str], int]:
    """Run one event claim for ``names`` (floor 0, limit 10) in a transaction rolled back
    after; return the instance names it locked and what ``reads`` counted."""
    claim = lock_statement(load_queries(), len(names))
    params = {"floor": 0, "names": names, "name": names[0], "limit": 10}
    rows = raw.execute(claim, params | {"mark_id": None, "mark_xid": None}).fetchall()
    read = raw.execute(reads).fetchone()
    raw.rollback()
    assert read is not None
    return sorted(r[2] for r in rows if r[0] is not None), int(read[0])


def test_a_claim_reads_the_pending_events_not_the_instances_waiting_for_tasks(
    driver: PostgresDriver, raw: psycopg.Connection
) -> None:
    # 3,000 live instances whose start events were handled (they wait for their tasks), and
    # above them a few with events pending: a claim must not read the 3,000.
    driver.enqueue_workflows([(W, f"waiting{n}", None) for n in range(3000)])
    raw.execute("DELETE FROM workflow_events")
    raw.commit()
    raw.autocommit = True
    raw.execute("VACUUM workflow_events")
    raw.autocommit = False
    driver.enqueue_workflows([(W, f"pending{n}", None) for n in range(5)])
    for names in ([W], [W, "other"]):
        locked, read = claim_and_count(raw, names, READ_INSTANCES)
        assert locked == [f"pending{n}" for n in range(5)]
        assert read < 100, f"the claim for {names} read {read} instance rows"


def behind_another_workflows_backlog(
    driver: PostgresDriver, raw: psycopg.Connection, pending: list[tuple[str, str, None]]
) -> None:
    """One instance of W holds the floor down (it waits for its task), then 3,000 instances
    of another workflow that nobody handles here, then ``pending``."""
    driver.enqueue_workflows([(W, "long-running", None)])
    raw.execute("DELETE FROM workflow_events")
    raw.commit()
    driver.enqueue_workflows([("other", f"o{n}", None) for n in range(3000)])
    driver.enqueue_workflows(pending)


def test_a_claim_for_one_workflow_does_not_read_the_events_of_others(
    driver: PostgresDriver, raw: psycopg.Connection
) -> None:
    behind_another_workflows_backlog(driver, raw, [(W, f"pending{n}", None) for n in range(5)])
    locked, read = claim_and_count(raw, [W], READ_EVENTS)
    assert locked == [f"pending{n}" for n in range(5)]
    assert read < 100, f"the claim read {read} event rows and index entries"
    assert driver.has_events([W]) and not driver.has_events(["nobody"])


def test_a_claim_for_several_workflows_does_not_read_the_events_of_others(
    driver: PostgresDriver, raw: psycopg.Connection
) -> None:
    # Each name's pending events are walked on their own and merged in instance order, up
    # to MERGED_WALK_MAX names.
    pending = [(W if n % 2 else "second", f"pending{n}", None) for n in range(6)]
    behind_another_workflows_backlog(driver, raw, pending)
    locked, read = claim_and_count(raw, [W, "second", "third"], READ_EVENTS)
    assert locked == [f"pending{n}" for n in range(6)]
    assert read < 100, f"the claim read {read} event rows and index entries"
    # Beyond MERGED_WALK_MAX names the claim walks every pending event, and still finds them.
    many = [W, "second", *(f"x{n}" for n in range(MERGED_WALK_MAX))]
    locked, read = claim_and_count(raw, many, READ_EVENTS)
    assert locked == [f"pending{n}" for n in range(6)]
    assert read > 3000


def test_events_written_without_their_workflow_name_get_it_from_their_instance(
    driver: PostgresDriver, raw: psycopg.Connection
) -> None:
    # As a process still running the previous version writes them during an upgrade.
    driver.enqueue_workflows([(W, "a", None)])
    raw.execute(
        "INSERT INTO workflow_events (instance_id, event_type)"
        " SELECT id, 'cancel' FROM workflow_instances WHERE instance_name = 'a'"
    )
    raw.commit()
    names = raw.execute("SELECT event_type, workflow_name FROM workflow_events ORDER BY id")
    assert names.fetchall() == [("start", W), ("cancel", W)]
    with driver.claim_events([W], 10, 10) as batch:
        assert [e.kind for e in batch.events[batch.instances[0].id]] == ["start", "cancel"]
