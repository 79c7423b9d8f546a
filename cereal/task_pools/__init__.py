"""Task worker pools: claim tasks, run them, report their results.

The parts, each with one job: the :class:`~cereal.task_pools.claimer.Claimer` claims due
tasks for every registered name with free capacity in a single round trip; sync executors
run in a thread pool per task name (``workers`` threads at most) and ``async def`` executors
on one event loop thread (:mod:`~cereal.task_pools.runners`); the
:class:`~cereal.task_pools.watchdog.TimeoutWatchdog` enforces timeouts; the
:class:`~cereal.task_pools.writer.ResultWriter` records outcomes in batches through a
reusable :class:`~cereal.task_pools.batcher.Batcher`. :class:`TaskPools` ties them together
and follows each claimed task through its :class:`TaskState`.

Short sync tasks are claimed ahead: while their recent runs take under ``PREFETCH_BELOW``
seconds, ``PREFETCH_FACTOR * workers`` more than the free workers are claimed, or as many as
fit in ``PREFETCH_FACTOR * PREFETCH_BELOW`` seconds of queued work per worker up to
``PREFETCH_MAX``, so the workers need not wait for a claim round trip between tasks and each
claim, result write and event batch carries more tasks. The next claim comes once half of
those claimed ahead have started (or a worker is idle), so that it, too, takes several. A
claimed task that has not
started yet is heartbeated like a running one, its timeout starts when it starts, and at stop
it is handed back to the queue instead of being run.
"""

from cereal.task_pools.batcher import Batcher
from cereal.task_pools.pools import TaskPools
from cereal.task_pools.state import TaskRegistration, TaskState

__all__ = ["Batcher", "TaskPools", "TaskRegistration", "TaskState"]
