"""Driving the in-memory driver by hand: a clock that moves only when told, tasks queued
without a dispatcher, and the task outcomes a store holds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cereal.driver import StepOutcome
from cereal.testing import MemoryDriver
from cereal.types import WorkflowStatus
from cereal.workflow import PendingTask

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    """A clock for ``MemoryStore(clock=...)`` that only moves when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def queue_tasks(
    driver: MemoryDriver,
    task_name: str,
    parameters: list[Any],
    *,
    workflow_name: str = "w",
    instance_name: str = "i",
    delay: float = 0.0,
) -> int:
    """Start an instance and queue one ``task_name`` task per parameter for it, as a
    workflow's ``continue`` decision would; return the instance id."""
    assert driver.enqueue_workflow(workflow_name, instance_name, None)
    with driver.claim_events([workflow_name], 1, 10) as batch:
        (inst,) = batch.instances
        batch.commit(
            [
                StepOutcome(
                    instance=inst,
                    consumed=[e.id for e in batch.events[inst.id]],
                    status=WorkflowStatus.RUNNING,
                    tasks=[PendingTask(task_name, json.dumps(p), delay=delay) for p in parameters],
                )
            ]
        )
    return inst.id


@dataclass(frozen=True)
class Reported:
    """One task outcome as recorded in the store (a ``task_complete`` event)."""

    parameters: Any
    status: str
    result: Any
    error: str | None


def reported(driver: MemoryDriver, instance_id: int) -> list[Reported]:
    """The task outcomes recorded for a live instance so far, in the order written."""
    with driver.store.lock:
        events = list(driver.store.events.get(instance_id, []))
    return [
        Reported(
            json.loads(e.task_parameters) if e.task_parameters is not None else None,
            e.task_status or "",
            json.loads(e.task_result) if e.task_result is not None else None,
            e.task_error,
        )
        for e in events
        if e.kind == "task_complete"
    ]


def queued_and_claimed(driver: MemoryDriver, task_name: str) -> tuple[int, int]:
    """How many ``task_name`` tasks wait in the queue, and how many are claimed."""
    with driver.store.lock:
        states = [
            t.claimed_by is None for t in driver.store.tasks.values() if t.task_name == task_name
        ]
    return sum(states), len(states) - sum(states)
