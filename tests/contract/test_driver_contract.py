"""The storage contract: every rule of every ``Driver`` operation, checked on every driver.

Tests speak only the protocol (no SQL, no store internals), so a new driver passes by
behaving like the others. Operations a driver does not implement yet are skipped for it
(see ``require``); the memory driver implements them all.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cereal.driver import (
    Driver,
    EventBatch,
    EventsPending,
    InstanceFinished,
    ScheduleChange,
    SchedulesChanged,
    StepOutcome,
    StoredSchedule,
    TaskOutcome,
    TasksQueued,
    Wakeup,
)
from cereal.errors import CerealError, DatabaseError
from cereal.testing import MemoryDriver
from cereal.types import TaskStatus, WorkflowStatus
from cereal.workflow import PendingTask
from tests.helpers.waiting import wait_for

W = "orders"
OWNER = "worker-1"
HOUR = timedelta(hours=1)
MANY = 230
"""More rows than one statement takes on PostgreSQL (``arrays.ROWS_PER_STATEMENT``)."""


# -- helpers ----------------------------------------------------------------------------------


def require(driver: object, method: str, *params: str) -> None:
    """Skip the test when ``driver`` lacks ``method`` (or its ``params``): a protocol
    operation this driver does not implement yet. The memory driver must have them all."""
    fn = getattr(driver, method, None)
    missing = fn is None or any(p not in inspect.signature(fn).parameters for p in params)
    if not missing:
        return
    what = f"{method}({', '.join(params)})" if params else method
    if isinstance(driver, MemoryDriver):
        pytest.fail(f"MemoryDriver must implement {what}")
    pytest.skip(f"{what} not implemented by this driver yet")


def js(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def start(d: Driver, name: str, params: Any = None, workflow: str = W) -> bool:
    return d.enqueue_workflow(workflow, name, js(params))


@contextmanager
def claim(d: Driver, workflow: str = W, limit: int = 100, per: int = 100) -> Iterator[EventBatch]:
    with d.claim_events([workflow], limit, per) as batch:
        yield batch


def instance_of(batch: EventBatch, name: str) -> Any:
    return next(i for i in batch.instances if i.instance_name == name)


def step(
    d: Driver,
    name: str,
    *,
    payload: Any = None,
    tasks: Sequence[PendingTask] = (),
    workflow: str = W,
) -> None:
    """Commit all of the instance's pending events as a ``continue_with``."""
    with claim(d, workflow) as batch:
        inst = instance_of(batch, name)
        batch.commit(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    payload_json=js(payload),
                    status=WorkflowStatus.RUNNING,
                    enqueued_tasks=inst.enqueued_tasks + len(tasks),
                    completed_tasks=inst.completed_tasks,
                    tasks=list(tasks),
                )
            ]
        )


def finish(
    d: Driver,
    name: str,
    *,
    result: Any = None,
    error: str | None = None,
    workflow: str = W,
) -> list[Any]:
    """Commit the instance as completed with ``result`` (or failed with ``error``), in
    answer to a cancel event (so that there is an event to claim it by)."""
    d.cancel_workflow(workflow, name)
    status = WorkflowStatus.FAILED if error else WorkflowStatus.COMPLETED
    with claim(d, workflow) as batch:
        inst = instance_of(batch, name)
        outcome = StepOutcome(instance=inst, status=status, result_json=js(result), error=error)
        return batch.commit([outcome])


def with_tasks(d: Driver, name: str, *task_names: str, delay: float = 0.0) -> None:
    """A running instance with queued tasks (``task_names``)."""
    start(d, name)
    step(d, name, tasks=[PendingTask(t, js({"n": t}), delay=delay) for t in task_names])


def many_running_tasks(d: Driver) -> list[Any]:
    """MANY instances of W, each running one task "t" claimed by OWNER: the claimed tasks."""
    for n in range(MANY):
        with_tasks(d, f"i{n}", "t")
    claimed, _ = d.claim_tasks({"t": MANY}, OWNER)
    assert len(claimed) == MANY
    return claimed


def events_of(d: Driver, name: str, workflow: str = W) -> list[Any]:
    with claim(d, workflow) as batch:
        inst = [i for i in batch.instances if i.instance_name == name]
        return batch.events[inst[0].id] if inst else []


@contextmanager
def listening(d: Driver, connects: list[int] | None = None) -> Iterator[list[Wakeup]]:
    """The wakeups a listener of ``d`` receives from the moment it listens until the block
    ends; ``connects`` gets a 1 each time the listener (re)connects."""
    got: list[Wakeup] = []
    ready: list[int] = [] if connects is None else connects
    listener = d.listener(got.append, lambda: ready.append(1))
    listener.start()
    try:
        wait_for(lambda: ready == [1], what="the listener is listening")
        yield got
    finally:
        listener.stop()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


# -- workflow instances -----------------------------------------------------------------------


def test_enqueue_creates_a_starting_instance_with_one_start_event(contract_driver: Driver) -> None:
    d = contract_driver
    assert start(d, "a", {"x": [1, 2]})
    info = d.get_workflow_instance(W, "a")
    assert info is not None
    assert (info.status, info.parameters, info.is_running) == (
        WorkflowStatus.STARTING,
        {"x": [1, 2]},
        True,
    )
    assert info.started_at is not None and info.ended_at is None
    assert [e.kind for e in events_of(d, "a")] == ["start"]


def test_enqueue_refuses_a_pair_that_is_live(contract_driver: Driver) -> None:
    d = contract_driver
    assert start(d, "a", 1)
    assert not start(d, "a", 2)
    info = d.get_workflow_instance(W, "a")
    assert info is not None and info.parameters == 1
    assert start(d, "a", workflow="other")  # another workflow, another pair


def test_enqueue_again_after_the_run_finished_and_the_newest_run_wins(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    start(d, "a", "first")
    finish(d, "a", result="one")
    assert start(d, "a", "second")
    live = d.get_workflow_instance(W, "a")
    assert live is not None and (live.status, live.parameters) == (
        WorkflowStatus.STARTING,
        "second",
    )
    finish(d, "a", error="boom")
    latest = d.get_workflow_instance(W, "a")
    assert latest is not None
    assert (latest.status, latest.parameters, latest.error, latest.result) == (
        WorkflowStatus.FAILED,
        "second",
        "boom",
        None,
    )
    assert [(r.instance_name, r.parameters) for r in d.list_workflow_instances(W)] == [
        ("a", "second")
    ]


def test_get_of_an_unknown_pair_is_none(contract_driver: Driver) -> None:
    assert contract_driver.get_workflow_instance(W, "nobody") is None


def test_get_of_a_finished_run_has_its_result_and_times(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a", {"p": 1})
    step(d, "a", payload={"step": 1})
    running = d.get_workflow_instance(W, "a")
    assert running is not None
    assert (running.status, running.payload) == (WorkflowStatus.RUNNING, {"step": 1})
    finish(d, "a", result={"total": 3})
    info = d.get_workflow_instance(W, "a")
    assert info is not None
    assert (info.status, info.result, info.parameters, info.payload, info.error) == (
        WorkflowStatus.COMPLETED,
        {"total": 3},
        {"p": 1},
        None,
        None,
    )
    assert info.started_at == running.started_at
    assert info.ended_at is not None and info.ended_at >= info.started_at


def test_cancel_queues_a_cancel_event_after_the_pending_ones(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    assert d.cancel_workflow(W, "a")
    assert [e.kind for e in events_of(d, "a")] == ["start", "cancel"]


def test_cancel_and_kill_report_an_instance_that_is_not_live(contract_driver: Driver) -> None:
    d = contract_driver
    assert not d.cancel_workflow(W, "nobody")
    assert not d.kill_workflow(W, "nobody", "killed")
    start(d, "done")
    finish(d, "done", result=1)
    assert not d.cancel_workflow(W, "done")
    assert not d.kill_workflow(W, "done", "killed")


def test_kill_finishes_the_instance_as_failed_and_drops_its_tasks_and_events(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t1", "t2")
    d.cancel_workflow(W, "a")
    assert d.kill_workflow(W, "a", "killed by operator")
    info = d.get_workflow_instance(W, "a")
    assert info is not None
    assert (info.status, info.error) == (WorkflowStatus.FAILED, "killed by operator")
    assert not d.has_events([W])
    assert d.claim_tasks({"t1": 10, "t2": 10}, OWNER)[0] == []


def test_kill_waits_for_the_batch_holding_the_instance(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    with claim(d) as batch:
        killer, killed = in_thread(lambda: d.kill_workflow(W, "a", "killed"))
        killer.join(0.3)
        assert killer.is_alive(), "kill_workflow must wait for the holder"
        step_outcome = StepOutcome(
            instance=batch.instances[0],
            consumed=[e.id for e in batch.events[batch.instances[0].id]],
            payload_json=js("after start"),
            status=WorkflowStatus.RUNNING,
        )
        batch.commit([step_outcome])
    killer.join(10)
    assert killed == [True]
    info = d.get_workflow_instance(W, "a")
    assert info is not None and (info.status, info.error) == (WorkflowStatus.FAILED, "killed")


def test_list_gives_one_row_per_pair_ordered_by_names_and_filters(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "b")
    start(d, "a")
    finish(d, "a", result=1)
    start(d, "a")  # live again: the live run hides the finished one
    start(d, "c")
    finish(d, "c", error="no")
    start(d, "z", workflow="other")
    rows = d.list_workflow_instances()
    assert [(r.workflow_name, r.instance_name) for r in rows] == [
        ("orders", "a"),
        ("orders", "b"),
        ("orders", "c"),
        ("other", "z"),
    ]
    assert [r.status for r in rows[:3]] == [
        WorkflowStatus.STARTING,
        WorkflowStatus.STARTING,
        WorkflowStatus.FAILED,
    ]
    assert [r.instance_name for r in d.list_workflow_instances(workflow_name=W)] == ["a", "b", "c"]
    assert [r.instance_name for r in d.list_workflow_instances(instance_name="c")] == ["c"]
    running = d.list_workflow_instances(workflow_name=W, is_running=True)
    assert [r.instance_name for r in running] == ["a", "b"]
    done = d.list_workflow_instances(is_running=False)
    assert [(r.instance_name, r.error) for r in done] == [("c", "no")]
    assert d.list_workflow_instances(workflow_name="none") == []


def test_list_filters_by_status(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "list_workflow_instances", "status")
    start(d, "a")
    start(d, "b")
    step(d, "b")
    start(d, "c")
    finish(d, "c", result=None)
    start(d, "d")
    finish(d, "d", error="x")

    def names(status: WorkflowStatus) -> list[str]:
        return [r.instance_name for r in d.list_workflow_instances(status=status)]

    assert names(WorkflowStatus.STARTING) == ["a"]
    assert names(WorkflowStatus.RUNNING) == ["b"]
    assert names(WorkflowStatus.COMPLETED) == ["c"]
    assert names(WorkflowStatus.FAILED) == ["d"]


def _page_through(d: Driver, size: int, **filters: Any) -> list[Any]:
    rows: list[Any] = []
    after: str | None = None
    for _ in range(100):
        page = d.list_workflow_instances(limit=size, after=after, **filters)
        assert len(page) <= size
        if not page:
            return rows
        assert all(r.cursor is not None for r in page)
        rows += page
        after = page[-1].cursor
    raise AssertionError("paging did not end")


def test_paging_walks_every_row_once_newest_first(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "list_workflow_instances", "limit", "after", "status")
    for n in range(11):
        start(d, f"i{n:02d}", n)
        if n % 3 == 0:
            finish(d, f"i{n:02d}", result=n)
    start(d, "i00", "again")  # a new run of a finished pair: still one row
    every = d.list_workflow_instances()
    rows = _page_through(d, 4)
    assert len(rows) == len(every) == 11
    assert sorted(r.instance_name for r in rows) == sorted(r.instance_name for r in every)
    starts = [r.started_at for r in rows]
    assert starts == sorted(starts, reverse=True)
    assert rows[0].instance_name == "i00" and rows[0].parameters == "again"

    completed = _page_through(d, 2, status=WorkflowStatus.COMPLETED)
    assert sorted(r.instance_name for r in completed) == ["i03", "i06", "i09"]
    live = _page_through(d, 3, is_running=True, workflow_name=W)
    assert len(live) == 8
    assert d.list_workflow_instances(limit=1)[0].instance_name == "i00"


def test_a_cursor_is_accepted_only_by_the_listing_it_came_from(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "list_workflow_instances", "limit", "after", "status")
    for n in range(3):
        start(d, f"i{n}")
    cursor = d.list_workflow_instances(limit=1)[0].cursor
    assert cursor is not None
    assert len(d.list_workflow_instances(limit=5, after=cursor)) == 2
    for filters in ({"workflow_name": W}, {"is_running": True}, {"status": WorkflowStatus.RUNNING}):
        with pytest.raises(CerealError, match="other filters"):
            d.list_workflow_instances(limit=1, after=cursor, **filters)  # type: ignore[arg-type]
    with pytest.raises(CerealError, match="after needs a limit"):
        d.list_workflow_instances(after=cursor)
    with pytest.raises(CerealError, match="not a listing cursor"):
        d.list_workflow_instances(limit=1, after="c1.bm90IGpzb24=")


def test_enqueue_workflows_inserts_many_and_returns_the_pairs_not_enqueued(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "enqueue_workflows")
    start(d, "live")
    skipped = d.enqueue_workflows(
        [(W, "a", js(1)), (W, "live", js(2)), (W, "b", None), (W, "a", js(3)), ("x", "a", None)]
    )
    assert sorted(skipped) == [(W, "a"), (W, "live")]
    a = d.get_workflow_instance(W, "a")
    assert a is not None and a.parameters == 1
    assert d.get_workflow_instance("x", "a") is not None
    assert [e.kind for e in events_of(d, "b")] == ["start"]
    assert d.enqueue_workflows([]) == []


# -- workflow events --------------------------------------------------------------------------


def test_has_events_sees_pending_events_of_the_named_workflows_only(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    assert not d.has_events([W])
    start(d, "a", workflow="other")
    assert not d.has_events([W])
    assert d.has_events([W, "other"])
    step(d, "a", workflow="other")
    assert not d.has_events(["other"])


def test_claim_reads_events_in_order_up_to_per_instance_and_limit(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    for name in ("a", "b", "c"):
        start(d, name)
        d.cancel_workflow(W, name)
    with_tasks(d, "t", "work")
    ((task,), _) = d.claim_tasks({"work": 1}, OWNER)
    d.complete_tasks([TaskOutcome(task.id, W, TaskStatus.SUCCESS, result_json=js(5))], OWNER)
    d.cancel_workflow(W, "t")
    with d.claim_events([W], 2, 1) as batch:
        assert len(batch.instances) == 2
        for inst in batch.instances:
            assert [e.kind for e in batch.events[inst.id]] == ["start"]
    with claim(d) as batch:
        assert sorted(i.instance_name for i in batch.instances) == ["a", "b", "c", "t"]
        kinds = {i.instance_name: [e.kind for e in batch.events[i.id]] for i in batch.instances}
        assert kinds["a"] == ["start", "cancel"]
        assert kinds["t"] == ["task_complete", "cancel"]
        ids = [e.id for e in batch.events[instance_of(batch, "a").id]]
        assert ids == sorted(ids)
        done = batch.events[instance_of(batch, "t").id][0]
        assert (done.task_name, done.task_status, done.task_result, done.task_parameters) == (
            "work",
            "success",
            5,
            {"n": "work"},
        )


def test_two_concurrent_claimers_never_hold_the_same_instance(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    for n in range(6):
        start(d, f"i{n}")
    with d.claim_events([W], 4, 10) as first, twin_driver.claim_events([W], 10, 10) as second:
        a = {i.id for i in first.instances}
        b = {i.id for i in second.instances}
        assert len(a) == 4 and len(b) == 2
        assert not a & b
        with d.claim_events([W], 10, 10) as third:
            assert third.instances == []


def test_concurrent_claimers_handle_every_event_exactly_once(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    for n in range(40):
        start(contract_driver, f"i{n}")
    handled: list[int] = []
    holding: set[int] = set()
    overlaps: list[int] = []
    guard = threading.Lock()

    def work(d: Driver) -> None:
        while d.has_events([W]):
            with d.claim_events([W], 3, 10) as batch:
                ids = {i.id for i in batch.instances}
                with guard:
                    overlaps.extend(ids & holding)
                    holding.update(ids)
                time.sleep(0.001)
                outcomes = [
                    StepOutcome(
                        instance=i,
                        consumed=[e.id for e in batch.events[i.id]],
                        status=WorkflowStatus.RUNNING,
                    )
                    for i in batch.instances
                ]
                with guard:
                    holding.difference_update(ids)
                    handled.extend(e.id for i in batch.instances for e in batch.events[i.id])
                batch.commit(outcomes)

    threads = [threading.Thread(target=work, args=(d,)) for d in (contract_driver, twin_driver) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert overlaps == []
    assert len(handled) == len(set(handled)) == 40


def test_a_batch_left_without_commit_delivers_its_events_again(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    with claim(d) as batch:
        first = [e.id for e in batch.events[batch.instances[0].id]]
    with claim(d) as batch:
        assert [e.id for e in batch.events[batch.instances[0].id]] == first


def test_an_exception_in_a_batch_discards_it_and_lets_the_instance_go(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    start(d, "a")
    with pytest.raises(RuntimeError), claim(d) as batch:
        assert batch.instances
        raise RuntimeError("handler crashed")
    assert d.kill_workflow(W, "a", "gone")  # would wait forever if still held


def test_commit_deletes_consumed_events_and_stores_payload_counters_and_tasks(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    start(d, "a", {"p": 1})
    with claim(d) as batch:
        inst = batch.instances[0]
        (start_event,) = batch.events[inst.id]
        d.cancel_workflow(W, "a")  # arrives while the batch holds the instance
        finished = batch.commit(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[start_event.id],
                    payload_json=js({"step": 1}),
                    status=WorkflowStatus.RUNNING,
                    enqueued_tasks=2,
                    completed_tasks=0,
                    tasks=[PendingTask("t", js(1)), PendingTask("t", js(2))],
                )
            ]
        )
    assert finished == []
    with claim(d) as batch:
        inst = batch.instances[0]
        assert (inst.status, inst.payload, inst.parameters) == (
            WorkflowStatus.RUNNING,
            {"step": 1},
            {"p": 1},
        )
        assert (inst.enqueued_tasks, inst.completed_tasks) == (2, 0)
        assert [e.kind for e in batch.events[inst.id]] == ["cancel"]
    tasks, _ = d.claim_tasks({"t": 10}, OWNER)
    assert sorted(t.parameters for t in tasks) == [1, 2]
    assert {(t.workflow_name, t.instance_name) for t in tasks} == {(W, "a")}


def test_commit_refuses_a_task_start_time_out_of_range_and_writes_nothing(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    start(d, "a")
    with claim(d) as batch:
        inst = batch.instances[0]
        with pytest.raises(DatabaseError) as refused:
            batch.commit(
                [
                    StepOutcome(
                        instance=inst,
                        consumed=[e.id for e in batch.events[inst.id]],
                        status=WorkflowStatus.RUNNING,
                        enqueued_tasks=1,
                        tasks=[
                            PendingTask(
                                "t", None, delay=timedelta(days=999_999_999).total_seconds()
                            )
                        ],
                    )
                ]
            )
    assert not refused.value.transient
    with claim(d) as batch:  # nothing was written: the start event comes again
        (inst,) = batch.instances
        assert inst.status is WorkflowStatus.STARTING
        assert [e.kind for e in batch.events[inst.id]] == ["start"]
    assert d.claim_tasks({"t": 10}, OWNER)[0] == []


def test_commit_of_a_finished_instance_moves_it_to_history_and_drops_its_work(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")
    d.cancel_workflow(W, "a")
    finished = finish(d, "a", result={"ok": True})
    assert len(finished) == 1
    info = finished[0]
    assert (info.workflow_name, info.instance_name, info.status, info.result) == (
        W,
        "a",
        WorkflowStatus.COMPLETED,
        {"ok": True},
    )
    assert info.ended_at is not None
    assert not d.has_events([W])
    assert d.claim_tasks({"t": 10}, OWNER)[0] == []
    stored = d.get_workflow_instance(W, "a")
    assert stored is not None and stored.result == {"ok": True}


def test_fail_instance_finishes_a_live_instance_and_waits_for_its_holder(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "fail_instance")
    start(d, "a")
    with claim(d) as batch:
        inst_id = batch.instances[0].id
        failer, failed = in_thread(lambda: d.fail_instance(inst_id, "refused"))
        failer.join(0.3)
        assert failer.is_alive(), "fail_instance must wait for the holder"
    failer.join(10)
    (info,) = failed
    assert info is not None
    assert (info.instance_name, info.status, info.error) == ("a", WorkflowStatus.FAILED, "refused")
    assert d.fail_instance(inst_id, "again") is None


def test_signals_are_events_in_order_with_the_others(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    assert d.signal_workflow(W, "a", "approve", js({"by": "ann"}))
    d.cancel_workflow(W, "a")
    assert d.signal_workflow(W, "a", "nudge", None)
    events = events_of(d, "a")
    assert [e.kind for e in events] == ["start", "signal", "cancel", "signal"]
    assert (events[1].signal_name, events[1].signal_payload) == ("approve", {"by": "ann"})
    assert (events[3].signal_name, events[3].signal_payload) == ("nudge", None)
    assert events[0].signal_name is None and events[2].signal_name is None


def test_signals_follow_task_results_in_the_order_they_were_stored(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t1", "t2")
    claimed = {t.task_name: t for t in d.claim_tasks({"t1": 1, "t2": 1}, OWNER)[0]}
    t1, t2 = claimed["t1"], claimed["t2"]
    d.complete_tasks([TaskOutcome(t1.id, W, "success", result_json=js(1))], OWNER)
    d.signal_workflow(W, "a", "first", js([1, 2]))
    d.complete_tasks([TaskOutcome(t2.id, W, "success", result_json=js(2))], OWNER)
    d.signal_workflow(W, "a", "second", js("x"))
    events = events_of(d, "a")
    assert [(e.kind, e.task_name or e.signal_name) for e in events] == [
        ("task_complete", "t1"),
        ("signal", "first"),
        ("task_complete", "t2"),
        ("signal", "second"),
    ]
    assert [e.signal_payload for e in events if e.kind == "signal"] == [[1, 2], "x"]


def test_signal_reports_an_instance_that_is_not_live(contract_driver: Driver) -> None:
    d = contract_driver
    assert not d.signal_workflow(W, "nobody", "approve", None)
    start(d, "done")
    finish(d, "done", result=1)
    assert not d.signal_workflow(W, "done", "approve", js(1))
    assert not d.signal_workflow("other", "done", "approve", None)


def test_signal_is_stored_while_a_batch_holds_the_instance_and_waits_for_the_next(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    start(d, "a")
    with claim(d) as batch:
        inst = batch.instances[0]
        sender, sent = in_thread(lambda: d.signal_workflow(W, "a", "approve", js(True)))
        sender.join(10)
        assert sent == [True], "signal_workflow must not wait for the holder"
        assert [e.kind for e in batch.events[inst.id]] == ["start"]
        batch.commit(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    status=WorkflowStatus.RUNNING,
                )
            ]
        )
    events = events_of(d, "a")
    assert [(e.kind, e.signal_name, e.signal_payload) for e in events] == [
        ("signal", "approve", True)
    ]


def test_signals_of_an_instance_that_finishes_are_dropped_with_it(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    d.signal_workflow(W, "a", "late", None)
    finish(d, "a", result="done")
    assert not d.has_events([W])
    start(d, "a")
    assert [e.kind for e in events_of(d, "a")] == ["start"]


# -- tasks ------------------------------------------------------------------------------------


def test_claim_tasks_takes_up_to_each_limit_oldest_due_first(contract_driver: Driver) -> None:
    d = contract_driver
    start(d, "a")
    step(
        d,
        "a",
        tasks=[
            PendingTask("x", js(1), delay=0.0),
            PendingTask("x", js(2), start_at=datetime(2020, 1, 1, tzinfo=UTC)),
            PendingTask("x", js(3)),
            PendingTask("y", js(4)),
            PendingTask("z", js(5)),
        ],
    )
    tasks, _ = d.claim_tasks({"x": 1, "y": 5, "z": 0}, OWNER)
    assert sorted((t.task_name, t.parameters) for t in tasks) == [("x", 2), ("y", 4)]
    assert tasks[0].enqueued_at is not None and tasks[0].problem is None
    assert [t.parameters for t in d.claim_tasks({"x": 1}, "worker-2")[0]] == [1]
    assert [t.parameters for t in d.claim_tasks({"x": 5, "y": 5}, "worker-2")[0]] == [3]
    assert d.claim_tasks({"x": 5}, OWNER) == ([], None)
    assert d.claim_tasks({}, OWNER) == ([], None)


def test_claim_tasks_waits_for_start_after_and_reports_when_the_next_is_due(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    start(d, "a")
    step(
        d, "a", tasks=[PendingTask("later", js(1), delay=60), PendingTask("later", None, delay=600)]
    )
    tasks, next_due = d.claim_tasks({"later": 5}, OWNER)
    assert tasks == []
    assert next_due is not None and 50 < next_due <= 60
    assert d.claim_tasks({"other": 5}, OWNER) == ([], None)


def test_complete_tasks_records_results_only_for_the_owner_of_a_running_task(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t", "t")
    (one, two), _ = d.claim_tasks({"t": 2}, OWNER)
    outcome = TaskOutcome(one.id, W, TaskStatus.FAILED, error="ValueError: no")
    assert d.complete_tasks([outcome], "intruder") == set()
    assert d.complete_tasks([outcome, TaskOutcome(two.id, W, "success", None, js([1]))], OWNER) == {
        one.id,
        two.id,
    }
    assert d.complete_tasks([outcome], OWNER) == set()  # reported once only
    events = events_of(d, "a")
    assert [(e.kind, e.task_status, e.task_error, e.task_result) for e in events] == [
        ("task_complete", "failed", "ValueError: no", None),
        ("task_complete", "success", None, [1]),
    ]
    assert d.complete_tasks([], OWNER) == set()


def test_each_outcome_of_a_batch_reaches_its_own_task_in_any_order(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    claimed = many_running_tasks(d)
    outcomes = [
        TaskOutcome(task.id, W, "success", None, js({"from": task.instance_name}))
        if n % 3
        else TaskOutcome(task.id, W, TaskStatus.FAILED, error=f"no {task.instance_name}")
        for n, task in enumerate(claimed)
    ]
    shuffled = outcomes[1::2] + outcomes[::2]  # neither task nor instance order
    assert d.complete_tasks(shuffled, OWNER) == {t.id for t in claimed}
    with claim(d, limit=MANY) as batch:
        events = {i.instance_name: batch.events[i.id] for i in batch.instances}
    for n, task in enumerate(claimed):
        (event,) = events[task.instance_name]
        want = (
            ("success", None, {"from": task.instance_name})
            if n % 3
            else (
                "failed",
                f"no {task.instance_name}",
                None,
            )
        )
        assert (event.task_status, event.task_error, event.task_result) == want


def test_one_commit_stores_each_instances_own_state_and_outcome(contract_driver: Driver) -> None:
    d = contract_driver
    for n in range(2 * MANY):
        start(d, f"i{n}")
    with claim(d, limit=2 * MANY) as batch:
        instances = sorted(batch.instances, key=lambda i: i.instance_name, reverse=True)
        batch.commit(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    payload_json=js({"payload of": inst.instance_name}),
                    status=WorkflowStatus.RUNNING,
                    enqueued_tasks=n,
                    completed_tasks=n // 2,
                )
                if n % 2
                else StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    status=WorkflowStatus.FAILED if n % 4 else WorkflowStatus.COMPLETED,
                    result_json=None if n % 4 else js({"result of": inst.instance_name}),
                    error=f"{inst.instance_name} failed" if n % 4 else None,
                )
                for n, inst in enumerate(instances)
            ]
        )
    for n, inst in enumerate(instances):
        if n % 2:
            d.cancel_workflow(W, inst.instance_name)  # an event to claim the instance by
    with claim(d, limit=2 * MANY) as batch:
        live = {i.instance_name: i for i in batch.instances}
    for n, inst in enumerate(instances):
        name = inst.instance_name
        if n % 2:
            got = (live[name].payload, live[name].enqueued_tasks, live[name].completed_tasks)
            assert got == ({"payload of": name}, n, n // 2)
            continue
        assert name not in live
        info = d.get_workflow_instance(W, name)
        assert info is not None
        if n % 4:
            assert (info.status, info.result, info.error) == (
                WorkflowStatus.FAILED,
                None,
                f"{name} failed",
            )
        else:
            assert (info.status, info.result, info.error) == (
                WorkflowStatus.COMPLETED,
                {"result of": name},
                None,
            )


def test_complete_tasks_discards_results_of_a_queued_or_finished_instances_task(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")
    with_tasks(d, "b", "queued")
    ((task,), _) = d.claim_tasks({"t": 1}, OWNER)
    d.kill_workflow(W, "a", "killed")
    assert d.complete_tasks([TaskOutcome(task.id, W, "success")], OWNER) == set()
    queued = d.list_tasks(task_name="queued") if hasattr(d, "list_tasks") else []
    for info in queued:
        assert d.complete_tasks([TaskOutcome(info.id, W, "success")], OWNER) == set()


def test_heartbeats_return_the_ids_still_running_for_the_owner(contract_driver: Driver) -> None:
    d = contract_driver
    with_tasks(d, "a", "t", "t")
    (one, two), _ = d.claim_tasks({"t": 2}, OWNER)
    d.complete_tasks([TaskOutcome(one.id, W, "success")], OWNER)
    assert d.heartbeat_tasks([one.id, two.id, 999_999], OWNER) == {two.id}
    assert d.heartbeat_tasks([two.id], "intruder") == set()
    assert d.heartbeat_tasks([], OWNER) == set()


def test_release_puts_claimed_tasks_back_in_the_queue(contract_driver: Driver) -> None:
    d = contract_driver
    with_tasks(d, "a", "t")
    ((task,), _) = d.claim_tasks({"t": 1}, OWNER)
    d.release_tasks([task.id], "intruder")
    assert d.claim_tasks({"t": 1}, "worker-2") == ([], None)
    d.release_tasks([task.id], OWNER)
    assert d.heartbeat_tasks([task.id], OWNER) == set()
    ((again,), _) = d.claim_tasks({"t": 1}, "worker-2")
    assert again.id == task.id
    d.release_tasks([], OWNER)


def test_release_unknown_requeues_only_old_claims_the_owner_does_not_know(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "release_unknown_tasks")
    with_tasks(d, "a", "t", "t", "t")
    with_tasks(d, "b", "t")
    known, unknown, other_owners = sorted(d.claim_tasks({"t": 3}, OWNER)[0], key=lambda t: t.id)
    d.release_tasks([other_owners.id], OWNER)
    ((theirs,), _) = d.claim_tasks({"t": 1}, "worker-2")
    time.sleep(0.2)
    # Claimed just now: not old enough, whatever the owner knows.
    ((fresh,), _) = d.claim_tasks({"t": 1}, OWNER)
    assert d.heartbeat_tasks([known.id], OWNER) == {known.id}
    assert d.release_unknown_tasks([known.id], OWNER, 0.1) == 1
    assert d.release_unknown_tasks([known.id], OWNER, 0.1) == 0
    # The unknown claim is queued again as the same attempt; the others are untouched.
    assert d.heartbeat_tasks([known.id, unknown.id, fresh.id], OWNER) == {known.id, fresh.id}
    assert d.heartbeat_tasks([theirs.id], "worker-2") == {theirs.id}
    ((again,), _) = d.claim_tasks({"t": 5}, "worker-3")
    assert (again.id, again.attempt) == (unknown.id, 1)
    assert d.reap_lost_tasks(3600, "lost") == 0


def test_reap_reports_each_silent_task_as_lost_exactly_once(contract_driver: Driver) -> None:
    d = contract_driver
    with_tasks(d, "a", "t", "t")
    with_tasks(d, "b", "t")
    tasks, _ = d.claim_tasks({"t": 3}, OWNER)
    fresh = next(t for t in tasks if t.instance_name == "b")
    assert d.reap_lost_tasks(3600, "lost") == 0
    # The silent heartbeats are 1.5 s old, the fresh one new: a second apart, so that a slow
    # machine between the heartbeat and the reaps cannot make the fresh one look lost too.
    time.sleep(1.5)
    d.heartbeat_tasks([fresh.id], OWNER)
    assert d.reap_lost_tasks(1.0, "no heartbeat") == 2
    assert d.reap_lost_tasks(1.0, "no heartbeat") == 0
    assert [(e.kind, e.task_status, e.task_error) for e in events_of(d, "a")] == [
        ("task_complete", "lost", "no heartbeat")
    ] * 2
    assert events_of(d, "b") == []
    lost = [t.id for t in tasks if t.id != fresh.id]
    assert d.complete_tasks([TaskOutcome(i, W, "success") for i in lost], OWNER) == set()


# -- schedules --------------------------------------------------------------------------------


def _schedule(d: Driver, name: str, due_in: timedelta | None, enabled: bool = True) -> bool:
    due = None if due_in is None else d.now() + due_in
    return d.insert_schedule(W, name, js({"s": name}), "FREQ=HOURLY", enabled, due)


def test_insert_schedule_refuses_a_duplicate_pair(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "insert_schedule")
    assert _schedule(d, "a", HOUR)
    assert not _schedule(d, "a", 2 * HOUR)
    (sched,) = d.list_schedules()
    assert (sched.workflow_name, sched.instance_name, sched.parameters) == (W, "a", {"s": "a"})
    assert (sched.recurrence, sched.enabled) == ("FREQ=HOURLY", True)
    assert sched.last_enqueued_at is None and sched.last_start is None


def test_update_schedule_writes_the_change_computed_under_its_lock(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    require(d, "update_schedule")
    _schedule(d, "a", HOUR)
    seen: list[tuple[StoredSchedule, datetime]] = []
    inside = threading.Event()
    go_on = threading.Event()

    def slow(stored: StoredSchedule, now: datetime) -> ScheduleChange:
        seen.append((stored, now))
        inside.set()
        go_on.wait(10)
        return ScheduleChange(js([1]), "FREQ=DAILY", False, None)

    def second(stored: StoredSchedule, now: datetime) -> ScheduleChange:
        seen.append((stored, now))
        return ScheduleChange(stored.parameters_json, stored.recurrence, True, now + HOUR)

    first_thread, first = in_thread(lambda: d.update_schedule(W, "a", slow))
    assert inside.wait(10)
    second_thread, later = in_thread(lambda: twin_driver.update_schedule(W, "a", second))
    second_thread.join(0.3)
    assert second_thread.is_alive(), "a second update must wait for the first"
    go_on.set()
    first_thread.join(10)
    second_thread.join(10)
    assert first == later == [True]
    assert json.loads(seen[0][0].parameters_json or "null") == {"s": "a"}
    assert (seen[1][0].recurrence, seen[1][0].enabled) == ("FREQ=DAILY", False)
    (sched,) = d.list_schedules(W, "a")
    assert (sched.parameters, sched.recurrence, sched.enabled) == ([1], "FREQ=DAILY", True)
    assert sched.next_due_at == seen[1][1] + HOUR
    assert not d.update_schedule(W, "nobody", second)


def test_update_schedule_writes_nothing_when_the_change_raises(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "update_schedule")
    _schedule(d, "a", HOUR)
    before = d.list_schedules()

    def broken(stored: StoredSchedule, now: datetime) -> ScheduleChange:
        raise LookupError("rule is gone")

    with pytest.raises(LookupError, match="rule is gone"):
        d.update_schedule(W, "a", broken)
    assert d.list_schedules() == before
    assert d.delete_schedule(W, "a")  # not left locked


def test_delete_schedule_removes_it_once(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "delete_schedule")
    _schedule(d, "a", HOUR)
    _schedule(d, "b", HOUR)
    assert d.delete_schedule(W, "a")
    assert not d.delete_schedule(W, "a")
    assert [s.instance_name for s in d.list_schedules()] == ["b"]


def test_list_schedules_filters_and_shows_the_last_finished_run(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "list_schedules")
    _schedule(d, "b", HOUR)
    _schedule(d, "a", HOUR, enabled=False)
    start(d, "a")
    finish(d, "a", result=1)
    run = d.get_workflow_instance(W, "a")
    assert run is not None
    assert [s.instance_name for s in d.list_schedules()] == ["a", "b"]
    (a,) = d.list_schedules(instance_name="a")
    assert (a.last_start, a.last_end, a.enabled) == (run.started_at, run.ended_at, False)
    assert d.list_schedules(workflow_name="none") == []


def test_run_due_schedule_enqueues_the_most_overdue_and_moves_it_on(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "run_due_schedule")
    assert d.seconds_until_next_schedule() is None
    _schedule(d, "soon", HOUR)
    assert d.run_due_schedule(lambda rule, now: now + HOUR) is None
    _schedule(d, "late", -timedelta(minutes=5))
    _schedule(d, "later", -timedelta(minutes=10))
    wait = d.seconds_until_next_schedule()
    assert wait is not None and -610 < wait <= -600
    calls: list[str] = []

    def next_due(rule: str, now: datetime) -> datetime:
        calls.append(rule)
        return now + HOUR

    run = d.run_due_schedule(next_due)
    assert run is not None
    assert (run.instance_name, run.enqueued, run.problem) == ("later", True, None)
    assert run.next_due_at == run.ran_at + HOUR and run.due_at < run.ran_at
    assert calls == ["FREQ=HOURLY"]
    info = d.get_workflow_instance(W, "later")
    assert info is not None and info.parameters == {"s": "later"}
    (sched,) = d.list_schedules(W, "later")
    assert (sched.next_due_at, sched.enabled) == (run.next_due_at, True)
    assert sched.last_enqueued_at is not None
    second = d.run_due_schedule(next_due)
    assert second is not None and second.instance_name == "late"
    assert d.run_due_schedule(next_due) is None


def test_run_due_schedule_skips_the_occurrence_while_the_previous_run_is_live(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "run_due_schedule")
    _schedule(d, "a", -timedelta(seconds=1))
    start(d, "a", "manual")
    run = d.run_due_schedule(lambda rule, now: now + HOUR)
    assert run is not None and not run.enqueued and run.next_due_at is not None
    info = d.get_workflow_instance(W, "a")
    assert info is not None and info.parameters == "manual"
    (sched,) = d.list_schedules()
    assert sched.last_enqueued_at is None and sched.next_due_at == run.next_due_at


def test_run_due_schedule_disables_a_rule_that_ran_out_after_its_last_run(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "run_due_schedule")
    _schedule(d, "a", -timedelta(seconds=1))
    run = d.run_due_schedule(lambda rule, now: None)
    assert run is not None and run.enqueued and run.next_due_at is None
    (sched,) = d.list_schedules()
    assert (sched.enabled, sched.next_due_at) == (False, None)
    assert d.seconds_until_next_schedule() is None


@pytest.mark.parametrize("error", [ValueError("bad rule"), ZeroDivisionError("x"), TypeError("t")])
def test_run_due_schedule_disables_a_schedule_whose_rule_cannot_be_computed(
    contract_driver: Driver, error: Exception
) -> None:
    d = contract_driver
    require(d, "run_due_schedule")
    _schedule(d, "a", -timedelta(seconds=1))

    def broken(rule: str, now: datetime) -> datetime:
        raise error

    run = d.run_due_schedule(broken)
    assert run is not None
    assert (run.enqueued, run.next_due_at) == (False, None)
    assert run.problem is not None and str(error) in run.problem
    assert d.get_workflow_instance(W, "a") is None
    assert not d.list_schedules()[0].enabled
    assert d.run_due_schedule(broken) is None


def test_run_due_schedule_lets_other_errors_propagate_and_writes_nothing(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "run_due_schedule")
    _schedule(d, "a", -timedelta(seconds=1))
    before = d.list_schedules()

    def crash(rule: str, now: datetime) -> datetime:
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        d.run_due_schedule(crash)
    assert d.list_schedules() == before
    assert d.get_workflow_instance(W, "a") is None
    assert d.run_due_schedule(lambda rule, now: now + HOUR) is not None


# -- retention --------------------------------------------------------------------------------


def _runs(d: Driver, count: int) -> None:
    for n in range(count):
        start(d, f"r{n}")
        finish(d, f"r{n}", result=n)


def test_prune_history_keeps_the_newest_runs(contract_driver: Driver) -> None:
    d = contract_driver
    _runs(d, 5)
    start(d, "live")
    assert d.prune_history(None, None) == 0
    assert d.prune_history(None, 2) == 3
    assert sorted(r.instance_name for r in d.list_workflow_instances()) == ["live", "r3", "r4"]
    assert d.prune_history(None, 2) == 0


def test_prune_history_removes_runs_older_than_max_age(contract_driver: Driver) -> None:
    d = contract_driver
    _runs(d, 3)
    assert d.prune_history(3600, None) == 0
    time.sleep(0.05)
    assert d.prune_history(0.01, None) == 3
    assert d.list_workflow_instances() == []


# -- operator views ---------------------------------------------------------------------------


def test_list_tasks_shows_queued_and_running_tasks_oldest_first(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "list_tasks")
    with_tasks(d, "a", "x", "y")
    with_tasks(d, "b", "x")
    ((claimed,), _) = d.claim_tasks({"y": 1}, OWNER)
    every = d.list_tasks()
    assert [(t.instance_name, t.task_name) for t in every] == [("a", "x"), ("a", "y"), ("b", "x")]
    y = every[1]
    assert (y.id, y.state, y.claimed_by, y.parameters) == (claimed.id, "running", OWNER, {"n": "y"})
    assert y.heartbeat_age is not None and y.heartbeat_age >= 0
    assert (every[0].state, every[0].claimed_by, every[0].heartbeat_age) == ("queued", None, None)
    assert [t.instance_name for t in d.list_tasks(task_name="x")] == ["a", "b"]
    assert [t.task_name for t in d.list_tasks(instance_name="b", workflow_name=W)] == ["x"]
    assert len(d.list_tasks(limit=2)) == 2


def test_overview_counts_instances_runs_tasks_and_schedules(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "overview")
    require(d, "insert_schedule")
    with_tasks(d, "a", "x", "x")
    start(d, "b")
    start(d, "c")
    finish(d, "c", error="no")
    d.claim_tasks({"x": 1}, OWNER)
    d.insert_schedule(W, "s", None, "FREQ=DAILY", True, d.now() - HOUR)
    d.insert_schedule(W, "t", None, "FREQ=DAILY", True, d.now() + HOUR)
    view = d.overview(stale_after=3600)
    assert view.instances == {(W, "running"): 1, (W, "starting"): 1}
    assert view.finished == {(W, "failed"): 1}
    ((x,),) = [view.tasks]
    assert (x.task_name, x.queued, x.running, x.stale) == ("x", 1, 1, 0)
    assert x.oldest_queued_age is not None and x.oldest_queued_age >= 0
    assert (view.overdue_schedules, view.schedules) == (1, 2)
    assert abs((d.now() - view.now).total_seconds()) < 60
    time.sleep(0.05)
    assert d.overview(stale_after=0.01).tasks[0].stale == 1


def test_schema_status_ping_and_migration_sql(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "schema_status")
    status = d.schema_status()
    assert status.schema == d.schema
    assert status.is_current and status.applied
    assert status.applied == [v for v, _ in status.available]
    d.ping()
    require(d, "migration_sql")
    assert isinstance(d.migration_sql(), str) and d.migration_sql().strip()


# -- wakeups ----------------------------------------------------------------------------------


def test_a_listener_is_told_of_every_kind_of_change(
    contract_driver: Driver, twin_driver: Driver
) -> None:
    d = contract_driver
    reconnects: list[int] = []
    with listening(twin_driver, reconnects) as got:
        start(d, "a")
        wait_for(lambda: bool(got), what="bool(got)")
        if isinstance(got[0], str):
            pytest.skip("typed wakeups not implemented by this driver yet")
        wait_for(lambda: EventsPending(W) in got, what="EventsPending(W) in got")
        step(d, "a", tasks=[PendingTask("t", None)])
        wait_for(lambda: TasksQueued("t") in got, what='TasksQueued("t") in got')
        ((task,), _) = d.claim_tasks({"t": 1}, OWNER)
        got.clear()
        d.release_tasks([task.id], OWNER)
        wait_for(lambda: TasksQueued("t") in got, what='TasksQueued("t") in got')
        ((task,), _) = d.claim_tasks({"t": 1}, OWNER)
        got.clear()
        d.complete_tasks([TaskOutcome(task.id, W, "success")], OWNER)
        wait_for(lambda: EventsPending(W) in got, what="EventsPending(W) in got")
        got.clear()
        d.cancel_workflow(W, "a")
        wait_for(lambda: EventsPending(W) in got, what="EventsPending(W) in got")
        got.clear()
        d.signal_workflow(W, "a", "poke", None)
        wait_for(lambda: EventsPending(W) in got, what="EventsPending(W) in got")
        d.kill_workflow(W, "a", "killed")
        wait_for(
            lambda: any(isinstance(w, InstanceFinished) for w in got),
            what="any(isinstance(w, InstanceFinished) for w in got)",
        )
        if hasattr(d, "insert_schedule"):
            d.insert_schedule(W, "s", None, "FREQ=DAILY", False, None)
            wait_for(lambda: SchedulesChanged() in got, what="SchedulesChanged() in got")
        assert reconnects == [1]


def test_a_commit_finishing_many_instances_announces_every_one(contract_driver: Driver) -> None:
    d = contract_driver
    for n in range(60):
        start(d, f"i{n}")
    with listening(d) as got:
        with claim(d) as batch:
            finished = {inst.id for inst in batch.instances}
            batch.commit(
                [
                    StepOutcome(
                        instance=inst,
                        consumed=[e.id for e in batch.events[inst.id]],
                        status=WorkflowStatus.COMPLETED if n % 2 else WorkflowStatus.FAILED,
                        result_json=js(n) if n % 2 else None,
                        error=None if n % 2 else "no",
                    )
                    for n, inst in enumerate(batch.instances)
                ]
            )
        assert len(finished) == 60

        def announced() -> set[int]:
            return {w.instance_id for w in list(got) if isinstance(w, InstanceFinished)}

        wait_for(lambda: announced() == finished, what="every finished instance announced")


def test_recent_failures_lists_failed_runs_newest_first(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "recent_failures")
    for name, error in (("a", "first"), ("b", None), ("c", "second"), ("a", "third")):
        start(d, name)
        finish(d, name, result=1, error=error)
    assert [(r.instance_name, r.error) for r in d.recent_failures(10)] == [
        ("a", "third"),
        ("c", "second"),
        ("a", "first"),
    ]
    assert [r.error for r in d.recent_failures(1)] == ["third"]
    assert d.recent_failures(0) == []


def test_instance_timeline_shows_pending_events_tasks_and_past_runs(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "instance_timeline")
    start(d, "a")
    finish(d, "a", error="old run")
    with_tasks(d, "a", "x", "y")
    ((claimed,), _) = d.claim_tasks({"y": 1}, OWNER)
    d.cancel_workflow(W, "a")
    view = d.instance_timeline(W, "a", 50)
    assert view.live and view.enqueued_tasks == 2 and view.completed_tasks == 0
    assert [e.kind for e in view.events] == ["cancel"]
    assert [(t.task_name, t.state) for t in view.tasks] == [("x", "queued"), ("y", "running")]
    assert view.tasks[1].id == claimed.id and view.tasks[1].claimed_by == OWNER
    assert [(r.status.value, r.error) for r in view.runs] == [("failed", "old run")]
    assert abs((datetime.now(UTC) - view.now).total_seconds()) < 60
    assert len(d.instance_timeline(W, "a", 1).tasks) == 1
    gone = d.instance_timeline(W, "nobody", 50)
    assert (gone.live, gone.events, gone.tasks, gone.runs) == (False, [], [], [])


# -- trace context ------------------------------------------------------------------------------


def test_trace_context_travels_with_the_instance_and_with_each_task(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "enqueue_workflow", "trace_context")
    assert d.enqueue_workflow(W, "traced", None, trace_context='{"traceparent":"00-a"}')
    start(d, "plain")
    with claim(d) as batch:
        traced, plain = instance_of(batch, "traced"), instance_of(batch, "plain")
        assert (traced.trace_context, plain.trace_context) == ('{"traceparent":"00-a"}', None)
        batch.commit(
            [
                StepOutcome(
                    instance=traced,
                    consumed=[e.id for e in batch.events[traced.id]],
                    status=WorkflowStatus.RUNNING,
                    enqueued_tasks=2,
                    tasks=[PendingTask("t", js(1)), PendingTask("t", js(2))],
                    task_contexts=["ctx-1"],  # shorter than tasks: the rest have none
                )
            ]
        )
    tasks, _ = d.claim_tasks({"t": 10}, OWNER)
    assert sorted((t.parameters, t.trace_context) for t in tasks) == [(1, "ctx-1"), (2, None)]


def test_a_bulk_enqueue_stores_its_trace_context_with_every_instance(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "enqueue_workflows", "trace_context")
    assert d.enqueue_workflows([(W, "a", None), (W, "b", None)], trace_context="bulk") == []
    with claim(d) as batch:
        assert sorted((i.instance_name, i.trace_context) for i in batch.instances) == [
            ("a", "bulk"),
            ("b", "bulk"),
        ]


def test_a_scheduled_run_stores_the_trace_context_it_was_run_with(
    contract_driver: Driver,
) -> None:
    d = contract_driver
    require(d, "run_due_schedule", "trace_context")
    _schedule(d, "traced", -timedelta(minutes=1))
    run = d.run_due_schedule(lambda rule, now: now + HOUR, '{"traceparent":"00-s"}')
    assert run is not None and run.enqueued
    with claim(d) as batch:
        assert instance_of(batch, "traced").trace_context == '{"traceparent":"00-s"}'


def test_vacuum_queues_with_too_few_dead_rows_does_nothing(contract_driver: Driver) -> None:
    d = contract_driver
    require(d, "vacuum_queues")
    start(d, "a")
    finish(d, "a", result=1)
    assert d.vacuum_queues(10**9) == []
