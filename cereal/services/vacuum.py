"""Queue upkeep: vacuums the queue tables once finished work has left enough dead rows."""

from __future__ import annotations

from cereal.driver import Driver
from cereal.services.base import PeriodicService

__all__ = ["QUEUE_VACUUM_DEAD_ROWS", "QUEUE_VACUUM_INTERVAL", "QueueVacuum"]

QUEUE_VACUUM_INTERVAL = 10.0
"""Seconds between looks at the queue tables' dead rows."""
QUEUE_VACUUM_DEAD_ROWS = 20_000
"""Dead rows in one queue table that make it worth a VACUUM (autovacuum, where it runs,
usually gets there first: the queue tables ask it to come after 5,000)."""


class QueueVacuum(PeriodicService):
    """Every manager runs one; the driver lets one process per schema work at a time.

    Each finished workflow leaves a few dead rows in the queue tables until they are
    vacuumed, and claims step over them. Autovacuum normally clears them; this keeps the
    queues lean where it is off, or too slow for a burst."""

    name = "queue-vacuum"

    def __init__(
        self,
        driver: Driver,
        *,
        interval: float = QUEUE_VACUUM_INTERVAL,
        min_dead_rows: int = QUEUE_VACUUM_DEAD_ROWS,
    ) -> None:
        super().__init__(interval, jitter=interval / 10)
        self._driver = driver
        self._min_dead_rows = min_dead_rows

    def run_once(self) -> float | None:
        vacuumed = self._driver.vacuum_queues(self._min_dead_rows)
        if vacuumed:
            self.log.info("vacuumed queue tables", tables=vacuumed)
        return None
