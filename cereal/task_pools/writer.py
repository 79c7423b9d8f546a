"""Recording task outcomes as ``task_complete`` events, in batches."""

from __future__ import annotations

import time
from collections.abc import Callable

from cereal.driver import Driver, TaskOutcome
from cereal.errors import DatabaseError
from cereal.logging import get_logger
from cereal.task_pools.batcher import Batcher

__all__ = ["ResultWriter"]

log = get_logger("cereal.tasks")

PERMANENT_FAILURES = 3
"""Attempts before a batch the database keeps refusing is given up (its tasks are then
reported lost by the lost-task reaper, since nobody heartbeats them any more)."""


class ResultWriter:
    """Writes outcomes through :meth:`Driver.complete_tasks` from one thread, as many per
    call as were queued meanwhile; transient failures are retried with backoff. After each
    batch, ``on_written`` gets the outcomes (written, discarded or given up)."""

    def __init__(
        self,
        driver: Driver,
        owner: str,
        on_written: Callable[[list[TaskOutcome]], None],
        *,
        max_batch: int = 500,
    ) -> None:
        self._driver = driver
        self._owner = owner
        self._on_written = on_written
        self._batcher: Batcher[TaskOutcome] = Batcher(
            "cereal-task-writer", self._write, max_batch=max_batch
        )

    def start(self) -> None:
        self._batcher.start()

    def put(self, outcome: TaskOutcome) -> None:
        self._batcher.put(outcome)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._batcher.close()

    def join(self, timeout: float | None) -> None:
        self._batcher.join(timeout)

    def _write(self, batch: list[TaskOutcome]) -> None:
        delay, permanent_failures = 0.1, 0
        while True:
            try:
                self._driver.complete_tasks(batch, self._owner)
                break
            except Exception as exc:
                if not (isinstance(exc, DatabaseError) and exc.transient):
                    permanent_failures += 1
                    if permanent_failures >= PERMANENT_FAILURES:
                        log.error(
                            "cannot record task results",
                            error=repr(exc),
                            task_ids=[o.id for o in batch],
                        )
                        break
                log.warning(
                    "recording task results failed; retrying", error=repr(exc), retry_in=delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._on_written(batch)
