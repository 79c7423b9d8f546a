"""Signals through the manager on the in-memory driver: the same rules as on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from cereal import Manager, SignalEvent, WorkflowInstance
from cereal.errors import InvalidNameError, SerializationError, WorkflowInstanceNotFoundError
from cereal.testing import MemoryDriver
from tests.helpers.timings import FAST_MANAGER_OPTIONS


class Collect:
    """Keeps the names of the signals it gets; completes on ``finish``."""

    def on_start(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.continue_with(["start"])

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.continue_with(inst.payload)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Any:
        return inst.fail("cancelled")

    def on_signal(self, inst: WorkflowInstance, event: SignalEvent) -> Any:
        names = [*inst.payload, [event.name, event.payload]]
        return inst.complete(names) if event.name == "finish" else inst.continue_with(names)


def test_signals_sent_before_start_arrive_after_on_start_in_order() -> None:
    manager = Manager(MemoryDriver(), **FAST_MANAGER_OPTIONS)
    manager.register_workflow_executor("w", Collect())
    manager.enqueue_workflow("w", "i")
    manager.signal_workflow("w", "i", "a", {"n": 1})
    manager.signal_workflow("w", "i", "b")
    manager.signal_workflow("w", "i", "finish", [1])
    with manager:
        info = manager.await_workflow("w", "i", timeout=10)
    assert info.result == ["start", ["a", {"n": 1}], ["b", None], ["finish", [1]]]


def test_a_signal_from_another_manager_on_the_store_wakes_a_long_polling_one() -> None:
    worker_driver = MemoryDriver()
    worker = Manager(worker_driver, **(FAST_MANAGER_OPTIONS | {"workflow_poll_interval": 600}))
    worker.register_workflow_executor("w", Collect())
    client = Manager(MemoryDriver(store=worker_driver.store))
    with worker:
        client.enqueue_workflow("w", "i")
        client.signal_workflow("w", "i", "finish")
        assert client.await_workflow("w", "i", timeout=10).result == ["start", ["finish", None]]
    with pytest.raises(WorkflowInstanceNotFoundError):
        client.signal_workflow("w", "i", "late")


def test_bad_signal_arguments_raise_before_anything_is_stored() -> None:
    manager = Manager(MemoryDriver())
    manager.enqueue_workflow("w", "i")
    with pytest.raises(InvalidNameError, match="signal_name"):
        manager.signal_workflow("w", "i", "")
    with pytest.raises(SerializationError, match="payload of signal 'a'"):
        manager.signal_workflow("w", "i", "a", {1, 2})
    assert manager.driver.has_events(["w"])
    with manager.driver.claim_events(["w"], 10, 10) as batch:
        assert [e.kind for e in batch.events[batch.instances[0].id]] == ["start"]  # only
