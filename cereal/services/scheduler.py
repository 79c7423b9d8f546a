"""The scheduler: enqueues each due occurrence of every recurring schedule, once."""

from __future__ import annotations

from collections.abc import Callable

from cereal import instrumentation, tracing
from cereal.driver import Driver
from cereal.schedules import next_due_after
from cereal.services.base import PeriodicService

__all__ = ["Scheduler"]


class Scheduler(PeriodicService):
    """Sleeps until the earliest ``next_due_at`` (at most ``max_sleep`` seconds, woken at
    once when any process creates or changes a schedule), then handles every due schedule,
    each through :meth:`~cereal.driver.Driver.run_due_schedule`, which skips schedules
    another scheduler holds: with many managers on one database, each occurrence is enqueued
    exactly once."""

    name = "scheduler"

    def __init__(
        self,
        driver: Driver,
        *,
        max_sleep: float = 60.0,
        late_warning: float = 10.0,
        on_enqueued: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(max_sleep)
        self._driver = driver
        self._max_sleep = max_sleep
        self._late_warning = late_warning
        self._on_enqueued = on_enqueued

    def run_once(self) -> float | None:
        while not self.stopping:
            with tracing.schedule_span() as span:
                run = self._driver.run_due_schedule(next_due_after, span.context)
                if run is not None and run.enqueued:
                    span.name_run(run.workflow_name, run.instance_name)
            if run is None:
                break
            log = self.log.bind(workflow=run.workflow_name, instance=run.instance_name)
            if run.problem is not None:
                log.error("disabling schedule that cannot run", error=run.problem)
                continue
            late = (run.ran_at - run.due_at).total_seconds()
            if late > self._late_warning:
                log.warning("schedule ran late", due_at=run.due_at.isoformat(), late_s=late)
            if run.enqueued:
                instrumentation.scheduler_lag(late)
                log.info(
                    "scheduled workflow enqueued",
                    due_at=run.due_at.isoformat(),
                    next_due_at=run.next_due_at and run.next_due_at.isoformat(),
                )
                if self._on_enqueued is not None:
                    self._on_enqueued(run.workflow_name)
            else:
                log.warning(
                    "previous run still live; occurrence skipped", due_at=run.due_at.isoformat()
                )
            if run.next_due_at is None:
                log.info("schedule has no more occurrences; disabled")
        wait = self._driver.seconds_until_next_schedule()
        if wait is None:
            return self._max_sleep
        # Overdue but locked by another scheduler: look again shortly.
        return min(self._max_sleep, wait if wait > 0 else 0.2)
