"""Manager rules that the behavioural tests on both drivers do not cover: which drivers it
accepts and closes, late configuration, replacing executors, and losing tasks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cereal import Manager, Task, TaskStatus, WorkflowInstance, WorkflowStatus
from cereal.errors import CerealError, ManagerStateError
from cereal.services.vacuum import QUEUE_VACUUM_DEAD_ROWS
from cereal.testing import MemoryDriver
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]


def one_task(inst: WorkflowInstance, ev: Any) -> Any:
    inst.enqueue_task("t", None)
    return inst.continue_with()


class NotADriver:
    def open(self) -> None: ...

    def close(self) -> None: ...


def test_an_object_lacking_driver_operations_is_refused_naming_what_it_lacks() -> None:
    with pytest.raises(
        CerealError, match=r"NotADriver lacks listener, enqueue_workflow, enqueue_workflows, .*"
    ):
        Manager(NotADriver())  # type: ignore[arg-type]


def test_a_driver_passed_in_stays_open_after_stop_unless_close_driver_says_otherwise() -> None:
    kept, closed = MemoryDriver(), MemoryDriver()
    with Manager(kept, scheduler=False):
        assert kept.is_open
    with Manager(closed, scheduler=False, close_driver=True):
        assert closed.is_open
    assert kept.is_open and not closed.is_open


def test_configure_changes_run_options_until_start_then_is_refused(
    make_memory_manager: MakeManager,
) -> None:
    manager = make_memory_manager()
    manager.configure(scheduler=False, workflow_workers=7)
    manager.configure()  # nothing given: nothing changes
    assert (manager.config.scheduler, manager.config.workflow_workers) == (False, 7)
    with pytest.raises(CerealError, match="workflow_workers"):
        manager.configure(workflow_workers=0)
    manager.start()
    with pytest.raises(ManagerStateError, match="before start"):
        manager.configure(workflow_workers=2)


def test_a_stopped_manager_cannot_be_restarted(make_memory_manager: MakeManager) -> None:
    manager = make_memory_manager()
    manager.start()
    manager.stop()
    with pytest.raises(ManagerStateError, match="cannot be restarted"):
        manager.start()


def test_registering_a_name_again_replaces_its_executor(make_memory_manager: MakeManager) -> None:
    manager = make_memory_manager()
    manager.register_workflow_executor("w", Flow(on_start=lambda i, e: i.complete("old")))
    manager.register_workflow_executor("w", Flow(on_start=lambda i, e: i.complete("new")))
    manager.start()
    manager.enqueue_workflow("w", "i")
    assert manager.await_workflow("w", "i", timeout=10).result == "new"


def test_a_task_whose_manager_went_away_is_reported_lost_to_its_workflow(
    make_memory_manager: MakeManager,
) -> None:
    flow = Flow(
        on_start=one_task,
        on_task=lambda i, e: i.complete([e.result.status.value, e.result.error]),
    )
    client = make_memory_manager()
    client.enqueue_workflow("w", "i")

    # A first manager runs on_start, then "dies" holding the task: its claim is never
    # heartbeated again.
    first = make_memory_manager(heartbeat_interval=0.1, lost_task_timeout=0.5)
    first.register_workflow_executor("w", flow)
    first.start()
    wait_for(lambda: flow.names("i") == ["on_start"], what="on_start")
    first.stop()
    claimed, _ = first.driver.claim_tasks({"t": 1}, "a manager that died")
    assert len(claimed) == 1

    second = make_memory_manager(heartbeat_interval=0.1, lost_task_timeout=0.5)
    second.register_workflow_executor("w", flow)
    second.start()
    done = second.await_workflow("w", "i", timeout=10)
    assert done.result == [TaskStatus.LOST.value, "task lost: no heartbeat for 0.5s"]


def test_heartbeats_keep_a_long_task_from_being_reported_lost(
    make_memory_manager: MakeManager,
) -> None:
    def long_task(task: Task) -> str:
        time.sleep(1.5)  # three lost-task timeouts
        return "finished"

    def on_task(inst: WorkflowInstance, ev: Any) -> Any:
        return inst.complete([ev.result.status.value, ev.result.value])

    manager = make_memory_manager(heartbeat_interval=0.1, lost_task_timeout=0.5)
    manager.register_workflow_executor(
        "w",
        Flow(on_start=one_task, on_task=on_task),
    )
    manager.register_task_executor("t", long_task)
    manager.start()
    manager.enqueue_workflow("w", "i")
    done = manager.await_workflow("w", "i", timeout=15)
    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, ["success", "finished"])


def test_on_workflow_complete_sees_each_run_once_across_managers(
    make_memory_manager: MakeManager,
) -> None:
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(info: Any) -> None:
        with lock:
            seen.append((info.instance_name, info.status.value))

    names = [f"i{n}" for n in range(20)]
    managers = [make_memory_manager(on_workflow_complete=record) for _ in range(2)]
    for manager in managers:
        manager.register_workflow_executor("w", Flow(on_start=lambda i, e: i.complete()))
        manager.start()
    for name in names:
        managers[0].enqueue_workflow("w", name)
    for name in names:
        managers[1].await_workflow("w", name, timeout=10)
    wait_for(lambda: len(seen) >= len(names), what="every callback")
    assert sorted(seen) == sorted((n, "completed") for n in names)


def test_a_started_manager_looks_after_its_queue_tables() -> None:
    class Counting(MemoryDriver):
        asked: list[int]

        def vacuum_queues(self, min_dead_rows: int) -> list[str]:
            self.asked.append(min_dead_rows)
            return []

    driver = Counting()
    driver.asked = []
    with Manager(driver, scheduler=False):
        wait_for(lambda: driver.asked, timeout=10, what="a look at the queues")
    assert driver.asked[0] == QUEUE_VACUUM_DEAD_ROWS
