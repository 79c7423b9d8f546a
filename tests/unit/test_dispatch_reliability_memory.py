"""The dispatcher's reliability rules on the in-memory driver (see
``tests/integration/test_dispatch_reliability.py`` for the same scenarios on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cereal import Manager
from cereal.testing import MemoryDriver
from tests.helpers.claims import (
    check_a_given_up_result_is_reported_lost_not_put_back,
    check_a_task_claimed_unseen_runs_once_as_its_first_attempt,
)
from tests.helpers.dispatch import (
    BASE_EXCEPTIONS,
    MakeManager,
    check_an_event_written_while_its_instance_is_held_runs_after_the_commit,
    check_base_exception_fails_only_its_instance,
    check_slow_callback_does_not_hold_up_batch_mates,
    check_stop_abandons_a_hung_callback,
)
from tests.helpers.timings import FAST_MANAGER_OPTIONS


@pytest.fixture
def make() -> Iterator[MakeManager]:
    """Managers on one shared in-memory store, stopped after the test."""
    store = MemoryDriver().store
    built: list[Manager] = []

    def build(**options: Any) -> Manager:
        manager = Manager(MemoryDriver(store=store), **(FAST_MANAGER_OPTIONS | options))
        built.append(manager)
        return manager

    yield build
    for manager in reversed(built):
        manager.stop(timeout=10)


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda t: t.__name__)
def test_callback_raising_base_exception_fails_its_instance_and_handlers_survive(
    make: MakeManager, exc_type: type[BaseException]
) -> None:
    check_base_exception_fails_only_its_instance(make, exc_type)


@pytest.mark.parametrize("close_driver", [False, True])
def test_stop_with_timeout_releases_a_hung_callbacks_instance_and_commits_nothing(
    make: MakeManager, close_driver: bool
) -> None:
    check_stop_abandons_a_hung_callback(make, close_driver=close_driver)


def test_slow_callback_does_not_hold_up_instances_claimed_with_it(make: MakeManager) -> None:
    check_slow_callback_does_not_hold_up_batch_mates(make)


@pytest.mark.parametrize("where", ["workflow commit", "task claimer"])
def test_a_task_claimed_by_a_commit_whose_answer_was_lost_runs_once(
    make: MakeManager, where: str
) -> None:
    check_a_task_claimed_unseen_runs_once_as_its_first_attempt(make, where)


def test_a_task_whose_result_was_given_up_is_reported_lost_not_put_back(
    make: MakeManager,
) -> None:
    check_a_given_up_result_is_reported_lost_not_put_back(make)


@pytest.mark.parametrize("hold_in", ["start", "task"])
def test_an_event_written_while_its_instance_is_held_runs_right_after_the_commit(
    make: MakeManager, hold_in: str
) -> None:
    check_an_event_written_while_its_instance_is_held_runs_after_the_commit(make, hold_in)
