"""The task pools' reusable parts: the batcher, the task state and the result writer."""

from __future__ import annotations

import threading

from cereal.driver import TaskOutcome
from cereal.errors import DatabaseError, SerializationError
from cereal.task_pools import Batcher, TaskState
from cereal.task_pools.writer import ResultWriter


def test_batcher_groups_what_was_put_while_it_was_busy() -> None:
    batches: list[list[int]] = []
    first_taken, go_on = threading.Event(), threading.Event()

    def handle(batch: list[int]) -> None:
        batches.append(batch)
        first_taken.set()
        go_on.wait(5)

    batcher: Batcher[int] = Batcher("test-batcher", handle, max_batch=3)
    batcher.start()
    batcher.put(0)
    assert first_taken.wait(5)
    for n in range(1, 6):
        batcher.put(n)
    go_on.set()
    batcher.close()
    batcher.join(5)
    assert batches == [[0], [1, 2, 3], [4, 5]]


def test_batcher_close_handles_everything_already_put() -> None:
    seen: list[int] = []
    batcher: Batcher[int] = Batcher("test-batcher", seen.extend)
    for n in range(10):
        batcher.put(n)
    batcher.close()
    batcher.start()
    batcher.join(5)
    assert seen == list(range(10))


def test_only_claimed_and_running_tasks_are_active() -> None:
    assert [s for s in TaskState if s.active] == [TaskState.CLAIMED, TaskState.RUNNING]


class RefusingDriver:
    """``complete_tasks`` refuses any batch holding an outcome named in ``refuse`` (with
    that outcome's exception) and records the others."""

    def __init__(self, refuse: dict[int, Exception]) -> None:
        self.refuse = refuse
        self.recorded: list[int] = []

    def complete_tasks(self, outcomes: list[TaskOutcome], owner: str) -> set[int]:
        for outcome in outcomes:
            if outcome.id in self.refuse:
                raise self.refuse[outcome.id]
        self.recorded += [o.id for o in outcomes]
        return {o.id for o in outcomes}


def write_one_batch(driver: RefusingDriver, ids: list[int]) -> tuple[list[int], list[int]]:
    """Write one batch of successes with these ids: (ids given up, ids reported written)."""
    given_up: list[int] = []
    written: list[int] = []
    done = threading.Event()

    def on_written(outcomes: list[TaskOutcome]) -> None:
        written.extend(o.id for o in outcomes)
        done.set()

    writer = ResultWriter(driver, "me", on_written, on_given_up=given_up.extend)  # type: ignore[arg-type]
    for task_id in ids:  # queued before the thread starts: one batch
        writer.put(TaskOutcome(task_id, "w", "success", result_json="1"))
    writer.start()
    assert done.wait(10), "the writer never finished the batch"
    writer.close()
    writer.join(5)
    return given_up, written


def test_a_batch_the_database_keeps_refusing_is_given_up_whole() -> None:
    driver = RefusingDriver({2: DatabaseError("permission denied (injected)")})
    given_up, written = write_one_batch(driver, [1, 2, 3])
    assert (given_up, written, driver.recorded) == ([1, 2, 3], [1, 2, 3], [])


def test_only_the_outcomes_that_cannot_be_recorded_one_by_one_are_given_up() -> None:
    refused = SerializationError("unsupported Unicode escape sequence (injected)")
    driver = RefusingDriver({2: refused, 3: DatabaseError("permission denied (injected)")})
    given_up, written = write_one_batch(driver, [1, 2, 3, 4])
    # 2's FAILED replacement has the same id, so it is refused too: given up like 3.
    assert (given_up, written, driver.recorded) == ([2, 3], [1, 2, 3, 4], [1, 4])
