"""Rows damaged outside cereal (events of odd shapes, JSON this process cannot decode, corrupt
schedule rules): each ends in a failed instance, task or schedule with a clear message, never a
retry loop, and the other instances still run.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from psycopg import sql

from cereal import Decision, Manager, WorkflowInstance, WorkflowStatus
from cereal.errors import (
    DatabaseError,
    InvalidScheduleError,
)
from tests.helpers.logs import capture_logs
from tests.helpers.recorders import Flow
from tests.helpers.schedules import schedule_soon
from tests.integration.bad_input.hostile import (
    AWAIT,
    WF,
    MakeManager,
    Noop,
)

BIG_NUMBER = "1" + "0" * 5000  # valid jsonb; more digits than Python's int() accepts
DEEP_JSON = "[" * 3000 + "]" * 3000  # valid jsonb; deeper than json.loads can go


JSONB = {"task_parameters", "task_result"}


def execute(m: Manager, query: str | sql.Composable, *params: Any) -> list[tuple[Any, ...]]:
    with m.driver.connection() as conn:
        cur = conn.execute(query, params)  # type: ignore[call-overload]
        return cur.fetchall() if cur.description else []


def reporting_flow() -> Flow:
    """Enqueues the task ``echo`` of ``parameters["task"]``, if any, and completes on the first
    task result, reporting what it saw."""

    def on_start(inst: WorkflowInstance, event: Any) -> Decision:
        if isinstance(inst.parameters, dict) and "task" in inst.parameters:
            inst.enqueue_task("echo", inst.parameters["task"])
        return inst.continue_with({"started": True})

    def on_task(inst: WorkflowInstance, event: Any) -> Decision:
        r = event.result
        return inst.complete(
            {
                "task_name": event.task_name,
                "status": r.status.value,
                "error": r.error,
                "value": r.value,
                "parameters": r.parameters,
                "payload": inst.payload,
            }
        )

    return Flow(on_start=on_start, on_task=on_task)


def started_instances(flow: Flow) -> list[str]:
    """The instance of every ``on_start`` delivery, re-deliveries included."""
    return [instance for callback, instance, _ in flow.calls if callback == "on_start"]


def wait_running(m: Manager, instance_name: str) -> None:
    deadline = time.monotonic() + AWAIT
    while m.get_workflow_instance(WF, instance_name).status is not WorkflowStatus.RUNNING:
        assert time.monotonic() < deadline, f"{instance_name} never started"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("columns", "status", "error"),
    [
        ({"task_name": "ghost"}, "unusable_result", "unknown task status None"),
        ({}, "unusable_result", "unknown task status None"),
        ({"task_status": "success", "task_result": BIG_NUMBER}, "unusable_result", "decoded"),
        ({"task_status": "success", "task_result": DEEP_JSON}, "unusable_result", "decoded"),
        ({"task_status": "failed", "task_parameters": BIG_NUMBER}, "unusable_result", "decoded"),
        ({"task_status": "lost"}, "lost", None),
        ({"task_status": "failed", "task_result": '{"odd": true}'}, "failed", None),
    ],
    ids=["null-status", "all-null", "huge-number", "too-deep", "bad-parameters", "lost", "odd"],
)
def test_task_complete_event_of_an_odd_shape_reaches_the_workflow_as_a_result(
    make_manager: MakeManager, columns: dict[str, str], status: str, error: str | None
) -> None:
    flow = reporting_flow()
    m = make_manager()
    m.register_workflow_executor(WF, flow)
    m.start()
    m.enqueue_workflow(WF, "odd")
    wait_running(m, "odd")
    values = [
        sql.SQL("{}::jsonb").format(sql.Literal(v))
        if c.startswith("task_") and c in JSONB
        else sql.Literal(v)
        for c, v in columns.items()
    ]
    execute(
        m,
        sql.SQL(
            "INSERT INTO workflow_events ({}) SELECT {} FROM workflow_instances"
            " WHERE instance_name = 'odd'"
        ).format(
            sql.SQL(", ").join(map(sql.Identifier, ["instance_id", "event_type", *columns])),
            sql.SQL(", ").join([sql.SQL("id"), sql.Literal("task_complete"), *values]),
        ),
    )
    m.driver.notify(["e" + WF])
    info = m.await_workflow(WF, "odd", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED, info.error
    assert info.result["status"] == status
    assert info.result["payload"] == {"started": True}
    if error is None:
        assert info.result["error"] is None
    else:
        assert error in info.result["error"]
    if status == "unusable_result":
        assert info.result["value"] is None
    assert started_instances(flow) == ["odd"]


def test_duplicate_start_and_stray_cancel_fields_are_harmless(make_manager: MakeManager) -> None:
    flow = reporting_flow()
    m = make_manager()
    m.register_workflow_executor(WF, flow)
    m.start()
    m.enqueue_workflow(WF, "dup")
    wait_running(m, "dup")
    execute(
        m,
        "INSERT INTO workflow_events (instance_id, event_type, task_status, task_result)"
        " SELECT id, 'start', 'success', '1'::jsonb FROM workflow_instances"
        " WHERE instance_name = 'dup'",
    )
    execute(
        m,
        "INSERT INTO workflow_events (instance_id, event_type, task_name, task_status)"
        " SELECT id, 'task_complete', 'ghost', 'success' FROM workflow_instances"
        " WHERE instance_name = 'dup'",
    )
    m.driver.notify(["e" + WF])
    info = m.await_workflow(WF, "dup", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED
    assert (info.result["task_name"], info.result["status"]) == ("ghost", "success")
    assert started_instances(flow) == ["dup"]  # the second start was not acted on


@pytest.mark.parametrize("column", ["parameters", "payload"])
@pytest.mark.parametrize("value", [BIG_NUMBER, DEEP_JSON], ids=["huge-number", "too-deep"])
def test_instance_whose_stored_json_cannot_be_decoded_fails_and_others_still_run(
    make_manager: MakeManager, column: str, value: str
) -> None:
    m = make_manager()
    m.register_workflow_executor(WF, reporting_flow())
    m.register_task_executor("echo", lambda task: task.parameters)
    m.start()
    m.enqueue_workflow(WF, "bad", {"task": "hold"})
    m.await_workflow(WF, "bad", timeout=AWAIT)  # first run completes normally
    m.stop()

    other = make_manager()
    other.register_workflow_executor(WF, reporting_flow())
    other.register_task_executor("echo", lambda task: task.parameters)
    # The oldest instance with events, damaged: it used to block every instance behind it.
    other.enqueue_workflow(WF, "bad", {"task": "x"})
    execute(
        other,
        sql.SQL("UPDATE workflow_instances SET {} = %s::jsonb WHERE instance_name = 'bad'").format(
            sql.Identifier(column)
        ),
        value,
    )
    for n in range(3):
        other.enqueue_workflow(WF, f"good{n}", {"task": n})
    other.start()
    for n in range(3):
        assert other.await_workflow(WF, f"good{n}", timeout=AWAIT).result["value"] == n
    deadline = time.monotonic() + AWAIT
    while not (
        rows := execute(
            other,
            "SELECT status, error FROM workflow_results WHERE instance_name = 'bad' ORDER BY id",
        )
    )[1:]:
        assert time.monotonic() < deadline, "the damaged instance never finished"
        time.sleep(0.05)
    assert rows[1][0] == "failed"
    assert f"stored {column} cannot be decoded" in rows[1][1]
    if column == "parameters":  # kept in the history: reading it back is a typed error
        with pytest.raises(DatabaseError, match="cannot be decoded"):
            other.get_workflow_instance(WF, "bad")
        with pytest.raises(DatabaseError, match="cannot be decoded"):
            other.list_workflow_instances()
    else:  # the payload of a finished run is not kept
        assert other.get_workflow_instance(WF, "bad").status is WorkflowStatus.FAILED


def test_task_whose_stored_parameters_cannot_be_decoded_is_reported_failed(
    make_manager: MakeManager,
) -> None:
    flow = reporting_flow()
    workflows = make_manager()
    workflows.register_workflow_executor(WF, flow)
    workflows.start()
    workflows.enqueue_workflow(WF, "t", {"task": "fine"})
    wait_running(workflows, "t")
    execute(workflows, "UPDATE tasks SET parameters = %s::jsonb", BIG_NUMBER)
    runner = make_manager()
    ran: list[Any] = []
    runner.register_task_executor("echo", ran.append)
    runner.start()
    info = workflows.await_workflow(WF, "t", timeout=AWAIT)
    assert info.result["status"] == "unusable_result"
    assert "stored task parameters cannot be decoded" in info.result["error"]
    assert info.result["parameters"] is None
    assert ran == []


CORRUPT_RULES = [
    "",
    "FREQ=BOGUS",
    "FREQ=DAILY",  # stored rules must have a DTSTART
    "DTSTART:20300101T000000Z",
    "DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY;COUNT=" + "9" * 5000,
    "DTSTART;TZID=Mars/Olympus_Mons:20300101T000000\nRRULE:FREQ=DAILY",
    "DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY;BYHOUR=25",
    "DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY\nEXDATE;TZID=Nowhere/Else:20300102T000000",
]


def test_corrupt_stored_schedules_are_disabled_once_and_others_still_run(
    make_manager: MakeManager,
) -> None:
    setup = make_manager(scheduler=False)
    for n, _ in enumerate(CORRUPT_RULES):
        setup.create_workflow_schedule(WF, f"bad{n}", recurrence="FREQ=DAILY")
    setup.create_workflow_schedule(WF, "bad-params", recurrence="FREQ=DAILY")
    for n, text in enumerate(CORRUPT_RULES):
        execute(
            setup,
            "UPDATE workflow_schedules SET recurrence = %s,"
            " next_due_at = now() - interval '1 minute' WHERE instance_name = %s",
            text,
            f"bad{n}",
        )
    execute(
        setup,
        "UPDATE workflow_schedules SET parameters = %s::jsonb,"
        " next_due_at = now() - interval '1 minute' WHERE instance_name = 'bad-params'",
        BIG_NUMBER,
    )
    schedule_soon(setup, WF, "good", {"x": 1}, lead=1.0)
    bad = [f"bad{n}" for n, _ in enumerate(CORRUPT_RULES)] + ["bad-params"]

    with capture_logs() as logs:
        m = make_manager()
        m.register_workflow_executor(WF, Noop())
        m.start()
        deadline = time.monotonic() + AWAIT
        while not setup.list_workflow_instances(instance_name="good"):
            assert time.monotonic() < deadline, "the good schedule never ran"
            time.sleep(0.05)
        time.sleep(1.0)  # room for a looping scheduler to show itself
        m.stop()

    assert setup.list_workflow_instances()[0].instance_name == "good"
    assert len(setup.list_workflow_instances()) == 1  # no bad schedule enqueued anything
    rows = execute(
        setup,
        "SELECT instance_name, enabled FROM workflow_schedules WHERE instance_name <> 'good'",
    )
    assert sorted(rows) == sorted((name, False) for name in bad)
    disabled = [e for e in logs if e["event"] == "disabling schedule that cannot run"]
    assert sorted(e["instance"] for e in disabled) == sorted(bad)  # each exactly once
    assert "bad-params" in {e["instance"] for e in disabled if "decoded" in e["error"]}
    assert not [e for e in logs if e["log_level"] == "error" and e not in disabled]
    # The API reports the corrupt rules as InvalidScheduleError, never anything else.
    for name in bad[:-1]:
        schedule = setup.get_workflow_schedule(WF, name)
        with pytest.raises(InvalidScheduleError):
            setup.update_workflow_schedule(WF, name, enabled=True)
        with pytest.raises(InvalidScheduleError):
            schedule.next_occurrences(1)
