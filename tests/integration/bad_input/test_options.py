"""Wrong types and values for manager, driver and call options: a ``CerealError`` naming the
option, never another exception.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cereal import Manager
from cereal.backends.postgres import PostgresDriver
from cereal.errors import (
    CerealError,
    InvalidExecutorError,
    InvalidScheduleError,
)
from tests.integration.bad_input.hostile import (
    SETTINGS,
    WF,
    MakeManager,
    row_counts,
)

option_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**10, max_value=10**400),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -0.0, 0.5]),
    st.text(max_size=4),
    st.sampled_from(["1", "", "\x00", b"1", [1], (1,), {"a": 1}, Decimal("1"), object(), print]),
)


def positive_seconds(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and 0 < value <= 100 * 365 * 86400
    )


def positive_int(value: object, least: int = 1) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= least


MANAGER_OPTIONS: dict[str, Callable[[object], bool]] = {
    "workflow_poll_interval": positive_seconds,
    "task_poll_interval": positive_seconds,
    "heartbeat_interval": lambda v: positive_seconds(v) and v < 30,  # type: ignore[operator]
    "lost_task_timeout": lambda v: positive_seconds(v) and v > 5,  # type: ignore[operator]
    "history_prune_interval": positive_seconds,
    "history_max_age": lambda v: v is None or positive_seconds(v),
    "workflow_workers": positive_int,
    "event_batch_size": positive_int,
    "history_max_runs": lambda v: v is None or positive_int(v, 0),
    "on_workflow_complete": lambda v: v is None or callable(v),
    "scheduler": lambda v: True,
    "eager_start": lambda v: isinstance(v, bool),
    "close_driver": lambda v: True,
}


def test_wrong_manager_option_values_raise_cereal_error_naming_the_option(
    pg_dsn: str, schema: str
) -> None:
    drv = PostgresDriver(pg_dsn, schema=schema)  # never opened

    @SETTINGS
    @given(option=st.sampled_from(sorted(MANAGER_OPTIONS)), value=option_values)
    def check(option: str, value: Any) -> None:
        try:
            Manager(drv, **{option: value})
        except CerealError as exc:
            assert not MANAGER_OPTIONS[option](value), (option, value)
            assert option in str(exc)
        else:
            assert MANAGER_OPTIONS[option](value), (option, value)

    check()
    with pytest.raises(CerealError, match="bogus"):
        Manager(drv, bogus=1)
    with pytest.raises(CerealError, match="driver"):
        Manager("postgresql://localhost/db")  # type: ignore[arg-type]


DRIVER_OPTIONS: dict[str, Callable[[object], bool]] = {
    "dsn": lambda v: v is None or isinstance(v, str),
    "schema": lambda v: (
        isinstance(v, str)
        and re.fullmatch(r"[A-Za-z_]\w{0,47}", v, re.ASCII) is not None
        and not v.lower().startswith("pg_")
    ),
    "pool_size": lambda v: positive_int(v, 2),
    "pool_min_size": lambda v: positive_int(v, 0),
    "connect_timeout": lambda v: positive_seconds(v) and v <= 86400,  # type: ignore[operator]
    "application_name": lambda v: isinstance(v, str) and "\x00" not in v,
}


@SETTINGS
@given(option=st.sampled_from(sorted(DRIVER_OPTIONS)), value=option_values)
def test_wrong_driver_option_values_raise_cereal_error_naming_the_option(
    option: str, value: Any
) -> None:
    try:
        PostgresDriver(**({"dsn": "postgresql://nowhere.invalid/db"} | {option: value}))
    except CerealError as exc:
        assert not DRIVER_OPTIONS[option](value), (option, value)
        assert option in str(exc) or (option == "schema" and "schema" in str(exc))
    else:
        assert DRIVER_OPTIONS[option](value), (option, value)


def test_an_unknown_driver_option_raises_cereal_error_naming_it() -> None:
    with pytest.raises(CerealError, match=r"unknown PostgresDriver option\(s\): pool, tls"):
        PostgresDriver("postgresql://nowhere.invalid/db", tls=True, pool=3)  # type: ignore[call-arg]


def number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value == value


def short(value: Any) -> Any:
    """A valid timeout capped at 10 ms (None, which waits for ever, too); anything else
    unchanged."""
    return 0.01 if value is None else min(value, 0.01) if number(value) else value


def test_wrong_values_for_call_options_raise_cereal_errors(make_manager: MakeManager) -> None:
    m = make_manager(scheduler=False)
    m.create_workflow_schedule(WF, "s", recurrence="FREQ=DAILY")
    m.enqueue_workflow(WF, "i")
    schedule = m.get_workflow_schedule(WF, "s")
    before = row_counts(m)

    @SETTINGS
    @given(value=option_values)
    def check(value: Any) -> None:
        fresh = Manager(m.driver, close_driver=False)  # never started
        flag = value is None or isinstance(value, bool)
        cases: list[tuple[type[Exception], Callable[[], Any], bool]] = [
            (
                CerealError,
                lambda: fresh.register_task_executor("t", print, workers=value),
                positive_int(value),
            ),
            (
                CerealError,
                lambda: fresh.register_task_executor("t", print, timeout=value),
                value is None or positive_seconds(value),
            ),
            (
                InvalidExecutorError,
                lambda: fresh.register_task_executor("t", value),
                callable(value),
            ),
            (InvalidExecutorError, lambda: fresh.register_workflow_executor(WF, value), False),
            (CerealError, lambda: m.list_workflow_instances(is_running=value), flag),
            (CerealError, lambda: m.update_workflow_schedule(WF, "s", enabled=value), flag),
            (
                InvalidScheduleError,
                lambda: m.create_workflow_schedule(WF, "new", recurrence=value),
                False,
            ),
            (
                InvalidScheduleError,
                lambda: m.update_workflow_schedule(WF, "s", recurrence=value),
                value is None,
            ),
            (
                CerealError,
                lambda: schedule.next_occurrences(value),
                positive_int(value, 0) and value <= sys.maxsize,
            ),
            (
                TimeoutError if value is None or (number(value) and value >= 0) else CerealError,
                lambda: m.await_workflow(WF, "i", timeout=short(value)),
                False,
            ),
            (CerealError, lambda: fresh.stop(timeout=value), value is None or number(value)),
        ]
        if not isinstance(value, bool):
            cases.append(
                (
                    CerealError,
                    lambda: m.create_workflow_schedule(
                        WF, "new", recurrence="FREQ=DAILY", enabled=value
                    ),
                    False,
                )
            )
        if positive_int(value, 1001) and value <= sys.maxsize:
            cases.pop(8)  # a valid count, but too many occurrences to compute here
        for error, call, valid in cases:
            if valid:
                call()
            else:
                with pytest.raises(error):
                    call()
        m.update_workflow_schedule(WF, "s", enabled=True)
        assert row_counts(m) == before

    check()
