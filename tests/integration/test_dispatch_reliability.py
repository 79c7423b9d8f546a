"""The workflow-event dispatcher under hostile callbacks, on PostgreSQL: a callback raising a
BaseException fails only its instance, ``stop(timeout)`` abandons a hung callback and releases
its instance at once, and a slow callback does not hold up the instances claimed with it."""

from __future__ import annotations

import pytest

from tests.helpers.dispatch import (
    BASE_EXCEPTIONS,
    MakeManager,
    check_base_exception_fails_only_its_instance,
    check_slow_callback_does_not_hold_up_batch_mates,
    check_stop_abandons_a_hung_callback,
)


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS, ids=lambda t: t.__name__)
def test_callback_raising_base_exception_fails_its_instance_and_handlers_survive(
    make_manager: MakeManager, exc_type: type[BaseException]
) -> None:
    check_base_exception_fails_only_its_instance(make_manager, exc_type)


@pytest.mark.parametrize("close_driver", [False, True])
def test_stop_with_timeout_releases_a_hung_callbacks_instance_and_commits_nothing(
    make_manager: MakeManager, close_driver: bool
) -> None:
    check_stop_abandons_a_hung_callback(make_manager, close_driver=close_driver)


def test_slow_callback_does_not_hold_up_instances_claimed_with_it(
    make_manager: MakeManager,
) -> None:
    check_slow_callback_does_not_hold_up_batch_mates(make_manager)
