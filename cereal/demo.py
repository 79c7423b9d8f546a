"""``cereal demo``: a small service that shows the moving parts, live.

It registers an ``order`` workflow that fans out three ``check_stock`` tasks (one of which
fails), then runs a ``ship`` task, and a ``slow`` workflow that gets cancelled while its task
runs. It also creates a schedule that enqueues a ``heartbeat`` workflow every two seconds.
Everything lives in its own schema (``cereal_demo``), cleared at each run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cereal import (
    CancelEvent,
    Decision,
    Manager,
    StartEvent,
    Task,
    TaskCompleteEvent,
    WorkflowInstance,
    WorkflowInstanceInfo,
)
from cereal.config import default_driver
from cereal.driver import Driver

__all__ = ["run_demo"]


class OrderWorkflow:
    """Check stock for every item in parallel, then ship what is available."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        for item in instance.parameters["items"]:
            instance.enqueue_task("check_stock", {"item": item})
        return instance.continue_with({"in_stock": [], "missing": [], "shipped": False})

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        state = dict(instance.payload)
        if event.task_name == "ship":
            if not event.result.ok:
                return instance.fail(f"shipping failed: {event.result.error}")
            return instance.complete(
                {
                    "shipped": state["in_stock"],
                    "missing": state["missing"],
                    "tracking": event.result.value,
                }
            )
        item = event.result.parameters["item"]
        (state["in_stock"] if event.result.ok else state["missing"]).append(item)
        if instance.total_completed_tasks == len(instance.parameters["items"]):
            if not state["in_stock"]:
                return instance.fail("nothing in stock")
            instance.enqueue_task("ship", {"items": state["in_stock"]})
        return instance.continue_with(state)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled by the customer")


class SlowWorkflow:
    """Runs one long task; a cancel ends it (and tells the task to stop)."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        instance.enqueue_task("slow_job", {"seconds": 30})
        return instance.continue_with()

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete(event.result.value)

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled by an operator")


class HeartbeatWorkflow:
    """What the schedule runs: completes at once with the time it ran."""

    def on_start(self, instance: WorkflowInstance, event: StartEvent) -> Decision:
        return instance.complete({"ran_at": event.enqueued_at.isoformat()})

    def on_task_complete(self, instance: WorkflowInstance, event: TaskCompleteEvent) -> Decision:
        return instance.complete()

    def on_cancel(self, instance: WorkflowInstance, event: CancelEvent) -> Decision:
        return instance.fail("cancelled")


def check_stock(task: Task) -> dict[str, Any]:
    time.sleep(0.2)
    if task.parameters["item"] == "unobtainium":
        raise LookupError(f"no stock of {task.parameters['item']}")
    return {"item": task.parameters["item"], "available": True}


async def ship(task: Task) -> str:
    import asyncio

    await asyncio.sleep(0.3)
    return "TRACK-" + "-".join(sorted(task.parameters["items"]))[:24].upper()


def slow_job(task: Task) -> str:
    task.cancelled.wait(task.parameters["seconds"])
    return "stopped early" if task.cancelled.is_set() else "done"


def _clear(driver: Driver) -> None:
    """Start from nothing: end live runs, drop schedules and finished runs."""
    driver.open()
    for info in driver.list_workflow_instances(is_running=True):
        driver.kill_workflow(info.workflow_name, info.instance_name, "demo restarted")
    for sched in driver.list_schedules():
        driver.delete_schedule(sched.workflow_name, sched.instance_name)
    while driver.prune_history(None, 0):
        pass


def _table(runs: list[WorkflowInstanceInfo]) -> str:
    header = ("workflow", "instance", "status", "seconds", "result / error")
    rows = [header]
    for r in runs:
        took = ""
        if r.started_at and r.ended_at:
            took = f"{(r.ended_at - r.started_at).total_seconds():.2f}"
        outcome = r.error if r.error is not None else r.result
        rows.append((r.workflow_name, r.instance_name, r.status.value, took, str(outcome)[:60]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(dsn: str | None = None, schema: str = "cereal_demo") -> int:
    """Run the demo service; return a process exit code."""
    driver = default_driver(dsn, schema=schema)
    where = dsn or "CEREAL_DATABASE_URL or the embedded server"
    print(f"cereal demo: database {where} (schema {schema})\n", flush=True)
    _clear(driver)
    manager = Manager(driver, close_driver=True, workflow_poll_interval=2, task_poll_interval=2)
    manager.register_workflow_executor("order", OrderWorkflow())
    manager.register_workflow_executor("slow", SlowWorkflow())
    manager.register_workflow_executor("heartbeat", HeartbeatWorkflow())
    manager.register_task_executor("check_stock", check_stock, workers=4)
    manager.register_task_executor("ship", ship, workers=2, timeout=10)
    manager.register_task_executor("slow_job", slow_job)
    with manager:
        manager.enqueue_workflow("order", "order-1", {"items": ["apples", "pears", "plums"]})
        manager.enqueue_workflow("order", "order-2", {"items": ["figs", "unobtainium"]})
        manager.enqueue_workflow("order", "order-3", {"items": ["unobtainium"]})
        manager.enqueue_workflow("slow", "slow-1")
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        manager.create_workflow_schedule(
            "heartbeat",
            "every-2s",
            recurrence=f"DTSTART:{start:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=SECONDLY;INTERVAL=2;COUNT=3",
        )
        sched = manager.get_workflow_schedule("heartbeat", "every-2s")
        print(f"\nschedule heartbeat/every-2s: {sched.recurrence!r}", flush=True)
        for when in sched.next_occurrences(3):
            print(f"  next run at {when.isoformat()}", flush=True)
        print(flush=True)
        time.sleep(1.5)
        manager.cancel_workflow("slow", "slow-1")
        for name in ("order-1", "order-2", "order-3"):
            manager.await_workflow("order", name, timeout=30)
        manager.await_workflow("slow", "slow-1", timeout=30)
        deadline = time.monotonic() + 15
        while manager.get_workflow_schedule("heartbeat", "every-2s").enabled:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        manager.await_workflow("heartbeat", "every-2s", timeout=10)
    runs = manager.list_workflow_instances()
    sched = manager.get_workflow_schedule("heartbeat", "every-2s")
    print("\nSummary\n" + _table(runs))
    print(
        f"\nschedule heartbeat/every-2s: enabled={sched.enabled} "
        f"last_enqueued_at={sched.last_enqueued_at} last_end={sched.last_end}"
    )
    driver.close()
    return 0
