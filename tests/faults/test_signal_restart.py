"""Signals across a PostgreSQL restart, on a server this test owns: a signal stored before the
restart is delivered once the database is back, one sent while it is down fails with a typed
error, and none is lost once ``signal_workflow`` returned."""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from cereal import Manager, SignalEvent, WorkflowInstance, WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.embedded import embedded_dsn, stop_embedded
from cereal.errors import DatabaseError, ManagerStateError, TransientDatabaseError
from cereal.workflow import Decision
from tests.helpers.timings import FAST_MANAGER_OPTIONS
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.integration

SCHEMA = "signals_restart"


class Inbox:
    """Keeps the name of every signal in its payload; completes on ``finish``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        with self.lock:
            self.calls.append((inst.instance_name, "start"))
        return inst.continue_with([])

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with(inst.payload)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")

    def on_signal(self, inst: WorkflowInstance, event: SignalEvent) -> Decision:
        with self.lock:
            self.calls.append((inst.instance_name, event.name))
        names = [*inst.payload, event.name]
        return inst.complete(names) if event.name == "finish" else inst.continue_with(names)


def signal_until_stored(manager: Manager, *args: Any, timeout: float = 30.0) -> None:
    """Call ``signal_workflow`` until it returns (what an application's retry would do)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            manager.signal_workflow(*args)
            return
        except TransientDatabaseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_signals_survive_a_restart_and_fail_typed_while_the_database_is_down(
    own_server: tuple[str, Path],
) -> None:
    dsn, data_dir = own_server
    drivers = [PostgresDriver(dsn, schema=SCHEMA, connect_timeout=2) for _ in range(3)]
    client, worker, late = (Manager(d, scheduler=False, **FAST_MANAGER_OPTIONS) for d in drivers)
    inbox, late_inbox = Inbox(), Inbox()
    worker.register_workflow_executor("order", inbox)
    late.register_workflow_executor("held", late_inbox)
    try:
        client.driver.open()
        worker.start()
        client.enqueue_workflow("order", "o-1")
        wait_for(lambda: ("o-1", "start") in inbox.calls, what="o-1 started")
        # "held" has no running executor yet: its start and signal wait in the database.
        client.enqueue_workflow("held", "h-1")
        client.signal_workflow("held", "h-1", "stored-before")
        client.signal_workflow("order", "o-1", "sent-before")

        stop_embedded(data_dir)
        with pytest.raises(DatabaseError):
            client.signal_workflow("order", "o-1", "sent-while-down")
        assert embedded_dsn(data_dir) == dsn

        signal_until_stored(client, "order", "o-1", "sent-after")
        signal_until_stored(client, "order", "o-1", "finish")
        done = client.await_workflow("order", "o-1", timeout=30)
        assert done.status is WorkflowStatus.COMPLETED
        # Nothing lost, nothing invented; a step cut by the restart may have been repeated.
        got = list(dict.fromkeys(done.result))
        assert got == ["sent-before", "sent-after", "finish"]

        late.start()
        signal_until_stored(client, "held", "h-1", "finish")
        held = client.await_workflow("held", "h-1", timeout=30)
        assert held.result == ["stored-before", "finish"]
        assert late_inbox.calls == [("h-1", "start"), ("h-1", "stored-before"), ("h-1", "finish")]
    finally:
        for m in (late, worker):
            with suppress(ManagerStateError):  # never started
                m.stop(timeout=10)
        for d in drivers:
            d.close()
