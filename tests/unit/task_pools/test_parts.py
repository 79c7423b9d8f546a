"""The task pools' reusable parts: the batcher and the task state."""

from __future__ import annotations

import threading

from cereal.task_pools import Batcher, TaskState


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
