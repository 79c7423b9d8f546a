"""Signals on PostgreSQL: ``Manager.signal_workflow`` and the executor's ``on_signal``.

Every rule of the contract's "Signals" section: a signal reaches ``on_signal`` with its name,
payload and time; one at a time, in order with the instance's other events (several in one
batch too), never before ``on_start``; at least once (a process that dies in ``on_signal``
before its commit leaves the signal to the next one); it wakes a manager in another process at
once; only live instances take signals; names and payloads are checked; an executor without
``on_signal`` keeps its state and logs a warning naming the signal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cereal import Manager, SignalEvent, Task, WorkflowInstance, WorkflowStatus
from cereal.errors import InvalidNameError, SerializationError, WorkflowInstanceNotFoundError
from cereal.workflow import Decision
from tests.helpers.logs import capture_logs
from tests.helpers.processes import program
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]

LONG_POLL = 60.0  # a manager that only polls this rarely can only be woken by a notification


class Inbox:
    """A workflow executor that appends every event it gets to its payload and to ``seen``.

    ``on_start`` enqueues one ``step`` task per entry of ``parameters["steps"]``; the signal
    ``finish`` completes the instance with the payload.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, Any]] = []
        self.signals: list[SignalEvent] = []

    def _note(self, inst: WorkflowInstance, entry: list[Any]) -> list[Any]:
        with self.lock:
            self.seen.append((inst.instance_name, entry[0], entry[1] if len(entry) > 1 else None))
        return [*(inst.payload or []), entry]

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        for step in (inst.parameters or {}).get("steps", []):
            inst.enqueue_task("step", step)
        return inst.continue_with(self._note(inst, ["start"]))

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with(self._note(inst, ["task", event.result.value]))

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")

    def on_signal(self, inst: WorkflowInstance, event: SignalEvent) -> Decision:
        with self.lock:
            self.signals.append(event)
        payload = self._note(inst, ["signal", event.name, event.payload])
        if event.name == "finish":
            return inst.complete(payload)
        return inst.continue_with(payload)

    def kinds(self, instance_name: str) -> list[tuple[str, Any]]:
        with self.lock:
            return [(kind, detail) for name, kind, detail in self.seen if name == instance_name]


def running(manager: Manager, workflow_name: str, instance_name: str) -> None:
    """Wait until the instance's ``on_start`` has been committed."""
    wait_for(
        lambda: (
            manager.get_workflow_instance(workflow_name, instance_name).status
            is WorkflowStatus.RUNNING
        ),
        what=f"{workflow_name}/{instance_name} running",
    )


def finished(
    manager: Manager, workflow_name: str, instance_name: str, timeout: float = 10.0
) -> Any:
    return wait_for(
        lambda: (
            None
            if (info := manager.get_workflow_instance(workflow_name, instance_name)).is_running
            else info
        ),
        timeout,
        what=f"{workflow_name}/{instance_name} finished",
    )


def pending_events(pg_dsn: str, schema: str) -> int:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".workflow_events').fetchone()
    assert row is not None
    return int(row[0])


# -- delivery ---------------------------------------------------------------------------------


def test_a_signal_reaches_on_signal_with_its_name_payload_and_time(
    make_manager: MakeManager,
) -> None:
    inbox = Inbox()
    manager = make_manager()
    manager.register_workflow_executor("order", inbox)
    manager.start()
    manager.enqueue_workflow("order", "o-1")
    running(manager, "order", "o-1")
    before = datetime.now(UTC)
    manager.signal_workflow("order", "o-1", "approve", {"by": "ann", "amount": 12.5})
    wait_for(lambda: inbox.signals, what="a signal")
    (event,) = inbox.signals
    assert (event.name, event.payload) == ("approve", {"by": "ann", "amount": 12.5})
    assert abs((event.enqueued_at - before).total_seconds()) < 5
    manager.signal_workflow("order", "o-1", "finish")
    info = finished(manager, "order", "o-1")
    assert info.status is WorkflowStatus.COMPLETED
    assert info.result == [
        ["start"],
        ["signal", "approve", {"by": "ann", "amount": 12.5}],
        ["signal", "finish", None],
    ]


def test_signals_sent_before_on_start_ran_arrive_after_it_in_one_batch_in_order(
    make_manager: MakeManager,
) -> None:
    inbox = Inbox()
    manager = make_manager()
    manager.register_workflow_executor("order", inbox)
    manager.enqueue_workflow("order", "o-1")
    for n in range(5):
        manager.signal_workflow("order", "o-1", f"s{n}", n)
    manager.signal_workflow("order", "o-1", "finish")
    manager.start()
    info = finished(manager, "order", "o-1")
    assert info.result == [
        ["start"],
        *(["signal", f"s{n}", n] for n in range(5)),
        ["signal", "finish", None],
    ]
    assert [k for k, _ in inbox.kinds("o-1")] == ["start"] + ["signal"] * 6


def test_signals_interleaved_with_task_results_arrive_in_the_order_they_were_stored(
    make_manager: MakeManager, pg_dsn: str, schema: str
) -> None:
    # The workflow's manager stops after on_start; a second manager runs the tasks one at a
    # time while signals go in between, so results and signals queue up in a known order.
    gates = {name: threading.Event() for name in ("a", "b", "c")}

    def step(task: Task) -> str:
        gates[task.parameters].wait(30)
        return str(task.parameters)

    first = make_manager()
    first.register_workflow_executor("order", Inbox())
    first.start()
    first.enqueue_workflow("order", "o-1", {"steps": ["a", "b", "c"]})
    running(first, "order", "o-1")
    first.stop(timeout=10)

    tasks = make_manager()
    tasks.register_task_executor("step", step, workers=3)
    tasks.start()
    for n, name in enumerate(["a", "b", "c"]):
        gates[name].set()
        wait_for(lambda n=n: pending_events(pg_dsn, schema) == 2 * n + 1, what=f"result of {name}")
        tasks.signal_workflow("order", "o-1", f"after-{name}", n)
    tasks.signal_workflow("order", "o-1", "finish")

    inbox = Inbox()
    second = make_manager()
    second.register_workflow_executor("order", inbox)
    second.start()
    info = finished(second, "order", "o-1")
    assert info.result == [
        ["start"],
        ["task", "a"],
        ["signal", "after-a", 0],
        ["task", "b"],
        ["signal", "after-b", 1],
        ["task", "c"],
        ["signal", "after-c", 2],
        ["signal", "finish", None],
    ]


def test_signals_are_handled_one_at_a_time_per_instance(make_manager: MakeManager) -> None:
    inside = threading.Semaphore(1)
    overlaps: list[str] = []

    class Slow(Inbox):
        def on_signal(self, inst: WorkflowInstance, event: SignalEvent) -> Decision:
            if not inside.acquire(blocking=False):
                overlaps.append(event.name)
                return super().on_signal(inst, event)
            try:
                time.sleep(0.02)
                return super().on_signal(inst, event)
            finally:
                inside.release()

    inbox = Slow()
    managers = [make_manager(workflow_workers=4) for _ in range(2)]
    for m in managers:
        m.register_workflow_executor("order", inbox)
    managers[0].enqueue_workflow("order", "o-1")
    for m in managers:
        m.start()
    running(managers[0], "order", "o-1")
    senders = [
        threading.Thread(
            target=lambda k=k: [
                managers[k % 2].signal_workflow("order", "o-1", f"s{k}-{n}", n) for n in range(10)
            ]
        )
        for k in range(4)
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    managers[1].signal_workflow("order", "o-1", "finish")
    info = finished(managers[0], "order", "o-1", timeout=30)
    assert overlaps == []
    got = [entry[1] for entry in info.result if entry[0] == "signal"]
    assert sorted(got[:-1]) == sorted(f"s{k}-{n}" for k in range(4) for n in range(10))
    for k in range(4):  # each sender's signals in the order it sent them
        assert [g for g in got if g.startswith(f"s{k}-")] == [f"s{k}-{n}" for n in range(10)]


# -- across processes ------------------------------------------------------------------------


def test_a_signal_sent_from_another_process_wakes_the_manager_at_once(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    handled: list[float] = []

    class Timed(Inbox):
        def on_signal(self, inst: WorkflowInstance, event: SignalEvent) -> Decision:
            handled.append(time.time())
            return super().on_signal(inst, event)

    manager = make_manager(workflow_poll_interval=LONG_POLL)
    manager.register_workflow_executor("order", Timed())
    manager.start()
    manager.enqueue_workflow("order", "o-1")
    running(manager, "order", "o-1")
    with program("client", pg_dsn, schema, log_file=tmp_path / "client.log") as client:
        client.expect("ready")
        for n in range(3):
            client.send(f'signal order o-1 poke-{n} {{"n": {n}}}')
            _, sent = map(float, client.expect("done"))
            wait_for(lambda n=n: len(handled) == n + 1, timeout=15, what=f"signal {n} handled")
            # Far below the poll interval: only the notification can explain it.
            assert handled[n] - sent < 10
        client.send("signal order nobody poke")
        assert client.expect("error")[0] == "WorkflowInstanceNotFoundError:"


def test_a_signal_whose_handler_died_before_commit_is_delivered_again(
    make_manager: MakeManager, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    with program("signal-stall", pg_dsn, schema, "order", log_file=tmp_path / "w.log") as child:
        child.expect("ready")
        client = make_manager()
        client.enqueue_workflow("order", "o-1")
        assert child.expect("started") == ["o-1"]
        client.signal_workflow("order", "o-1", "approve", {"by": "ann"})
        assert child.expect("signalled") == ["o-1", "approve"]
        child.kill()  # SIGKILL inside on_signal: nothing of that step was committed

    inbox = Inbox()
    manager = make_manager()
    manager.register_workflow_executor("order", inbox)
    manager.start()
    wait_for(lambda: inbox.signals, timeout=15, what="the signal delivered again")
    assert [(e.name, e.payload) for e in inbox.signals] == [("approve", {"by": "ann"})]
    assert inbox.kinds("o-1") == [("signal", "approve")]  # on_start is not run again
    # The dead process's on_start was committed; its step for the signal was not. The new
    # step commits after on_signal returns, so the payload is read once that commit landed.
    expected = ["started", ["signal", "approve", {"by": "ann"}]]
    wait_for(
        lambda: manager.get_workflow_instance("order", "o-1").payload == expected,
        timeout=15,
        what="the signal's step committed",
    )


# -- what is refused ---------------------------------------------------------------------------


def test_signal_of_an_instance_that_is_not_live_raises_not_found(make_manager: MakeManager) -> None:
    manager = make_manager()
    manager.register_workflow_executor("order", Inbox())
    with pytest.raises(WorkflowInstanceNotFoundError, match=r"order.*nobody"):
        manager.signal_workflow("order", "nobody", "approve")
    manager.start()
    manager.enqueue_workflow("order", "o-1")
    manager.signal_workflow("order", "o-1", "finish")
    finished(manager, "order", "o-1")
    with pytest.raises(WorkflowInstanceNotFoundError, match="o-1"):
        manager.signal_workflow("order", "o-1", "approve", 1)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("order", "o-1", ""), InvalidNameError, "signal_name must not be empty"),
        (("order", "o-1", None), InvalidNameError, "signal_name must be a str"),
        (("order", "o-1", 7), InvalidNameError, "signal_name must be a str"),
        (("order", "o-1", "x" * 1000), InvalidNameError, "signal_name"),
        (("order", "o-1", "bad\x00name"), InvalidNameError, "signal_name"),
        (("", "o-1", "approve"), InvalidNameError, "workflow_name"),
        (("order", "", "approve"), InvalidNameError, "instance_name"),
        (
            ("order", "o-1", "approve", {"at": object()}),
            SerializationError,
            "payload of signal 'approve'",
        ),
        (
            ("order", "o-1", "approve", float("nan")),
            SerializationError,
            "payload of signal 'approve'",
        ),
    ],
)
def test_bad_signal_names_and_payloads_raise_typed_errors_and_store_nothing(
    make_manager: MakeManager,
    pg_dsn: str,
    schema: str,
    args: tuple[Any, ...],
    error: type[Exception],
    match: str,
) -> None:
    manager = make_manager()
    manager.enqueue_workflow("order", "o-1")
    with pytest.raises(error, match=match):
        manager.signal_workflow(*args)
    assert pending_events(pg_dsn, schema) == 1  # the start event only


def test_an_executor_without_on_signal_keeps_its_state_and_warns_naming_the_signal(
    make_manager: MakeManager,
) -> None:
    flow = Flow(on_start=lambda inst, ev: inst.continue_with({"kept": True}))
    manager = make_manager()
    manager.register_workflow_executor("plain", flow)
    manager.start()
    manager.enqueue_workflow("plain", "p-1")
    running(manager, "plain", "p-1")
    with capture_logs() as logs:
        manager.signal_workflow("plain", "p-1", "nudge", {"n": 1})
        warned = wait_for(lambda: [e for e in logs if e.get("signal") == "nudge"], what="a warning")
    assert warned[0]["log_level"] == "warning"
    assert "on_signal" in warned[0]["event"]
    info = manager.get_workflow_instance("plain", "p-1")
    assert (info.status, info.payload) == (WorkflowStatus.RUNNING, {"kept": True})
    assert flow.names("p-1") == ["on_start"]
    manager.cancel_workflow("plain", "p-1")  # the signal was consumed: the cancel is next
    assert finished(manager, "plain", "p-1").error == "cancelled"


def test_a_signal_sent_with_the_async_client_reaches_on_signal(make_manager: MakeManager) -> None:
    import asyncio

    inbox = Inbox()
    manager = make_manager()
    manager.register_workflow_executor("order", inbox)
    manager.start()

    async def scenario() -> Any:
        await manager.aio.enqueue_workflow("order", "o-1")
        await manager.aio.signal_workflow("order", "o-1", "approve", {"by": "ann"})
        await manager.aio.signal_workflow("order", "o-1", "finish")
        info = await manager.aio.await_workflow("order", "o-1", timeout=20)
        with pytest.raises(WorkflowInstanceNotFoundError):
            await manager.aio.signal_workflow("order", "o-1", "late")
        await manager.aio.close()
        return info

    info = asyncio.run(scenario())
    assert info.result == [
        ["start"],
        ["signal", "approve", {"by": "ann"}],
        ["signal", "finish", None],
    ]
