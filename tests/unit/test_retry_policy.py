"""RetryPolicy: checked on creation, delays as the contract's formula gives them."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cereal import RetryPolicy
from cereal.errors import CerealError
from cereal.testing import task_complete_event


def test_defaults_are_three_attempts_one_second_doubling_up_to_five_minutes() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.backoff, policy.max_delay) == (
        3,
        1.0,
        2.0,
        300.0,
    )


def test_the_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_attempts = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", -1),
        ("max_attempts", 2.0),
        ("max_attempts", True),
        ("max_attempts", "3"),
        ("initial_delay", -1.0),
        ("initial_delay", math.nan),
        ("initial_delay", math.inf),
        ("initial_delay", "1"),
        ("backoff", 0.5),
        ("backoff", 0),
        ("backoff", math.nan),
        ("backoff", math.inf),
        ("backoff", None),
        ("max_delay", -5),
        ("max_delay", 1e12),
        ("max_delay", False),
    ],
)
def test_bad_values_raise_cereal_error_naming_them(field: str, value: object) -> None:
    with pytest.raises(CerealError, match=field) as caught:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
    assert repr(value) in str(caught.value)


def test_ints_are_accepted_as_seconds_and_backoff() -> None:
    policy = RetryPolicy(max_attempts=1, initial_delay=2, backoff=1, max_delay=10)
    assert (policy.initial_delay, policy.backoff, policy.max_delay) == (2.0, 1.0, 10.0)
    assert all(isinstance(v, float) for v in (policy.initial_delay, policy.backoff))


def test_delay_grows_by_backoff_and_stops_at_max_delay() -> None:
    policy = RetryPolicy(initial_delay=0.5, backoff=3.0, max_delay=10.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_delay_of_a_huge_attempt_number_is_max_delay_not_an_overflow() -> None:
    policy = RetryPolicy(initial_delay=1.0, backoff=1e9, max_delay=60.0)
    assert policy.delay(10_000) == 60.0


def test_constant_delays_with_backoff_one() -> None:
    policy = RetryPolicy(initial_delay=2.0, backoff=1.0)
    assert {policy.delay(n) for n in range(1, 50)} == {2.0}


def test_delay_rejects_attempt_numbers_below_one() -> None:
    with pytest.raises(CerealError, match="attempt"):
        RetryPolicy().delay(0)


def test_a_test_task_result_can_carry_the_attempts_made() -> None:
    event = task_complete_event("fetch", "page", attempts=3)
    assert (event.result.value, event.result.attempts) == ("page", 3)
    assert task_complete_event("fetch").result.attempts == 1
    with pytest.raises(CerealError, match="attempts"):
        task_complete_event("fetch", attempts=0)


def test_zero_delays_retry_at_once() -> None:
    assert [RetryPolicy(initial_delay=0).delay(n) for n in (1, 2, 10)] == [0.0, 0.0, 0.0]
    assert RetryPolicy(initial_delay=5, max_delay=0).delay(3) == 0.0
