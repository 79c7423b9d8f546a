"""Recording task outcomes as ``task_complete`` events, in batches."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cereal.codec import storable_text
from cereal.driver import Driver, TaskOutcome
from cereal.errors import DatabaseError, SerializationError
from cereal.logging import get_logger
from cereal.task_pools.batcher import Batcher
from cereal.types import TaskStatus

__all__ = ["ResultWriter"]

log = get_logger("cereal.tasks")

PERMANENT_FAILURES = 3
"""Attempts before a batch the database keeps rejecting for a reason that is not one of its
values (a missing table, a revoked privilege) is given up: its tasks are then reported lost
by the lost-task reaper, since nobody heartbeats them any more."""
MAX_RETRY_DELAY = 2.0
"""The longest pause between two attempts at a batch the database cannot take now."""
REFUSAL_MESSAGE_CHARS = 2000
"""How much of the server's message a refused result's ``FAILED`` outcome keeps."""


class ResultWriter:
    """Writes outcomes through :meth:`Driver.complete_tasks` from one thread, as many per
    call as were queued meanwhile. After each batch, ``on_written`` gets its outcomes
    (written, discarded, replaced or given up), and first ``on_given_up`` the ids of the
    tasks whose outcome was given up.

    - A failure the database says is transient (lost connection, read-only server, shutdown,
      deadlock...) is retried with backoff for as long as it lasts: the outcomes stay queued
      and their tasks stay heartbeated, so a finished task's result survives any outage
      shorter than the lost-task timeout.
    - A batch refused for one of its values (:class:`~cereal.errors.SerializationError`, e.g.
      a result over PostgreSQL's ``jsonb`` size limit) is written again one outcome at a
      time; the refused outcome becomes a ``FAILED`` result naming the server's reason, and
      every other outcome of the batch is recorded.
    - Any other permanent failure is retried a few times, then given up and logged.
    """

    def __init__(
        self,
        driver: Driver,
        owner: str,
        on_written: Callable[[list[TaskOutcome]], None],
        *,
        on_given_up: Callable[[list[int]], None] | None = None,
        max_batch: int = 500,
    ) -> None:
        self._driver = driver
        self._owner = owner
        self._on_written = on_written
        self._on_given_up = on_given_up
        self._abandoned = threading.Event()
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

    def abandon(self) -> None:
        """Stop retrying: what is not written yet is given up (its tasks are reported lost
        after the lost-task timeout). For a stop that ran out of time."""
        self._abandoned.set()

    def _write(self, batch: list[TaskOutcome]) -> None:
        given_up: list[int] = []
        try:
            self._record(batch)
        except SerializationError as exc:
            if len(batch) == 1:
                if not self._replace_refused(batch[0], exc):
                    given_up.append(batch[0].id)
            else:
                log.warning(
                    "task results refused by the database; recording them one by one",
                    error=_short(exc),
                    count=len(batch),
                )
                for outcome in batch:
                    try:
                        self._record([outcome])
                    except SerializationError as refused:
                        if not self._replace_refused(outcome, refused):
                            given_up.append(outcome.id)
                    except _GiveUp:
                        given_up.append(outcome.id)
        except _GiveUp:
            given_up = [o.id for o in batch]
        if given_up and self._on_given_up is not None:
            self._on_given_up(given_up)
        self._on_written(batch)

    def _replace_refused(self, outcome: TaskOutcome, exc: SerializationError) -> bool:
        """Record a ``FAILED`` outcome in place of one the database refused to store;
        False if that could not be recorded either."""
        log.error(
            "task result refused by the database",
            task_id=outcome.id,
            workflow=outcome.workflow_name,
            error=_short(exc),
        )
        failed = TaskOutcome(
            outcome.id,
            outcome.workflow_name,
            TaskStatus.FAILED.value,
            error=storable_text(f"the database refused the task's result: {_short(exc)}"),
        )
        try:
            self._record([failed])
        except (SerializationError, _GiveUp):
            log.error("cannot record task results", task_ids=[outcome.id], error=_short(exc))
            return False
        return True

    def _record(self, batch: list[TaskOutcome]) -> None:
        """Write ``batch``, retrying transient failures until they pass. Raises
        :class:`SerializationError` when the database refuses a value of the batch, and
        :class:`_GiveUp` (after logging) when it keeps failing otherwise or the writer is
        abandoned."""
        delay, permanent_failures = 0.1, 0
        while True:
            if self._abandoned.is_set():
                log.error(
                    "cannot record task results: stopped before the database took them",
                    task_ids=[o.id for o in batch],
                )
                raise _GiveUp
            try:
                self._driver.complete_tasks(batch, self._owner)
                return
            except SerializationError:
                raise
            except Exception as exc:
                if not (isinstance(exc, DatabaseError) and exc.transient):
                    permanent_failures += 1
                    if permanent_failures >= PERMANENT_FAILURES:
                        log.error(
                            "cannot record task results",
                            error=repr(exc),
                            task_ids=[o.id for o in batch],
                        )
                        raise _GiveUp from exc
                log.warning(
                    "recording task results failed; retrying", error=repr(exc), retry_in=delay
                )
                self._abandoned.wait(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)


class _GiveUp(Exception):
    """A batch was given up (already logged)."""


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if len(text) > REFUSAL_MESSAGE_CHARS:
        text = text[:REFUSAL_MESSAGE_CHARS] + "..."
    return text
