"""``Task.cancelled`` is a :class:`threading.Event` in every respect, though it builds its
lock only once something sets, clears or waits on it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from cereal.types import Task


def task() -> Task:
    return Task("t", None, datetime.now(UTC), "w", "i")


def test_it_is_a_threading_event_that_starts_unset() -> None:
    flag = task().cancelled
    assert isinstance(flag, threading.Event)
    assert not flag.is_set()
    assert flag.wait(0.01) is False


def test_set_wakes_a_waiter_in_another_thread_and_clear_resets_it() -> None:
    flag = task().cancelled
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(flag.wait(5)))
    waiter.start()
    flag.set()
    waiter.join(5)
    assert woke == [True] and flag.is_set()
    flag.clear()
    assert not flag.is_set() and flag.wait(0.01) is False


def test_threads_using_it_first_at_once_share_one_condition() -> None:
    flag = task().cancelled
    start = threading.Barrier(8)
    woke: list[bool] = []

    def wait() -> None:
        start.wait()
        woke.append(flag.wait(5))

    waiters = [threading.Thread(target=wait) for _ in range(7)]
    for w in waiters:
        w.start()
    start.wait()
    flag.set()
    for w in waiters:
        w.join(5)
    assert woke == [True] * 7


def test_each_task_has_its_own_flag() -> None:
    one, two = task(), task()
    one.cancelled.set()
    assert not two.cancelled.is_set()
