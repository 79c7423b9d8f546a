"""Heartbeats for this process's running tasks, and detection of lost tasks anywhere."""

from __future__ import annotations

from cereal.driver import Driver
from cereal.services.base import PeriodicService
from cereal.task_pools import TaskPools

__all__ = ["Heartbeat", "LostTaskReaper"]


class Heartbeat(PeriodicService):
    """Every ``interval`` seconds, refresh the heartbeat of each task whose outcome is not
    recorded yet (claimed, running, or finished with its result waiting to be written) in
    one statement, on the driver's liveness path. A task whose row is gone (its workflow
    finished, or another manager already reported it lost) is told to stop and its result
    will be discarded. A failed heartbeat is retried every second at most, without a
    growing backoff.

    After a claim whose commit may have gone through unseen (its connection was lost), it
    also puts back in the queue the tasks running for this process that it does not know
    of, once they are ``lost_task_timeout / 2`` old: they never started, so they come back
    as the same attempt instead of being reported lost."""

    name = "heartbeat"

    def __init__(
        self,
        driver: Driver,
        pools: TaskPools,
        owner: str,
        interval: float,
        lost_task_timeout: float,
    ):
        super().__init__(interval)
        self._driver = driver
        self._pools = pools
        self._owner = owner
        # Claims this process never learned of are put back once they are this old: well
        # before the reaper would report them lost, long after any claim in flight is known.
        self._unknown_after = lost_task_timeout / 2
        # Long after the reaper (polling every quarter timeout) has reported them.
        self._given_up_kept = 4 * lost_task_timeout
        self._releases = callable(getattr(driver, "release_unknown_tasks", None))

    def retry_delay(self, failures: int) -> float:
        """No growing backoff: after an outage, every second of delay brings live tasks
        closer to being reported lost. A failed attempt costs one connection attempt."""
        return min(self.interval, 1.0)

    def run_once(self) -> float | None:
        ids = self._pools.unreported()
        if ids:
            alive = self._driver.heartbeat_tasks(ids, self._owner)
            gone = set(ids) - alive
            if gone:
                # A task reported between the snapshot and the update is gone too; that's fine.
                self._pools.forget(gone & set(self._pools.unreported()), "task row gone")
        window = self._unknown_after + 2 * self.interval
        if self._releases and self._pools.claims_uncertain_within(window):
            # A claim failed in a way that may have committed: rows may be running for this
            # process that it never heard of (and never runs or heartbeats).
            # A claim registered since ``ids`` was read is younger than _unknown_after.
            # Tasks whose results were given up are known too: the reaper reports them lost.
            known = ids + self._pools.given_up_within(self._given_up_kept)
            count = self._driver.release_unknown_tasks(known, self._owner, self._unknown_after)
            if count:
                self.log.warning(
                    "tasks claimed by a commit whose answer was lost were put back in the queue",
                    count=count,
                )
        return None


class LostTaskReaper(PeriodicService):
    """Reports running tasks whose heartbeat stopped for ``timeout`` seconds as ``LOST``, or
    queues their next attempt when their retry policy has attempts left.

    Every manager runs one; the delete-and-report statement makes each report exactly once.
    """

    name = "lost-task-reaper"

    def __init__(self, driver: Driver, timeout: float):
        super().__init__(max(timeout / 4, 0.25), jitter=max(timeout / 20, 0.05))
        self._driver = driver
        self._timeout = timeout

    def run_once(self) -> float | None:
        count = self._driver.reap_lost_tasks(
            self._timeout, f"task lost: no heartbeat for {self._timeout:g}s"
        )
        if count:
            self.log.warning("reported lost tasks (or queued their retries)", count=count)
        return None
