"""History retention: prunes finished runs by age and/or count."""

from __future__ import annotations

from cereal.driver import PRUNE_BATCH, Driver
from cereal.services.base import PeriodicService

__all__ = ["HistoryPruner"]


class HistoryPruner(PeriodicService):
    """Deletes finished runs older than ``max_age`` seconds and beyond the newest
    ``max_runs`` (either may be None). Every manager runs one; an advisory lock lets one at
    a time do the work."""

    name = "history-pruner"

    def __init__(
        self,
        driver: Driver,
        *,
        max_age: float | None,
        max_runs: int | None,
        interval: float,
    ) -> None:
        super().__init__(interval, jitter=interval / 10)
        self._driver = driver
        self._max_age = max_age
        self._max_runs = max_runs

    def run_once(self) -> float | None:
        total = 0
        while not self.stopping:
            pruned = self._driver.prune_history(self._max_age, self._max_runs)
            total += pruned
            if pruned < PRUNE_BATCH:
                break
        if total:
            self.log.info("pruned finished runs", count=total)
        return None
