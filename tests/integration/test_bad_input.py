"""Hostile input through the public API, on a real database.

Property-based: every call either raises a typed ``CerealError`` naming the problem, or stores
the value and gives it back as JSON would. Never another exception, a stuck instance or a
partial write. Then rows damaged outside cereal (events of odd shapes, JSON this process
cannot decode, corrupt schedule rules) and failed migrations: each must end in a clear error
or a failed instance, task or schedule, never a retry loop.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cereal import Decision, Manager, Task, TaskStatus, WorkflowInstance, WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.codec import MAX_DEPTH, MAX_NAME_LENGTH
from cereal.errors import (
    CerealError,
    DatabaseError,
    InvalidExecutorError,
    InvalidNameError,
    InvalidScheduleError,
    MigrationError,
    SerializationError,
    WorkflowInstanceExistsError,
    WorkflowInstanceNotFoundError,
    WorkflowScheduleNotFoundError,
)

MakeManager = Callable[..., Manager]
WF = "wf"
AWAIT = 20.0
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,  # leave no example database in the source tree
    derandomize=bool(os.environ.get("CI")),  # CI repeats the same examples; local runs explore
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# -- strategies ---------------------------------------------------------------------------------

# Every code point, lone surrogates and NUL included.
ANY_CHAR = st.characters(codec=None, categories=None)
ODD_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "\ud83d\ude00",  # a surrogate pair written as two code points: still invalid
    "\\u0000",
    "\\\\u0000",
    "\u202eevil",
    "\ufeff",
    "\ufffe\uffff",
    "\U0010ffff",
    "e\u0301",
    "\U0001f600" * 3,
    "'; DROP TABLE workflow_instances; --",
    "%(workflow_name)s",
    "%s",
    "{}",
    "$1",
    "\\",
    '"',
]
texts = st.one_of(st.text(ANY_CHAR, max_size=12), st.sampled_from(ODD_TEXT))
NOT_STR = [None, 0, 1.5, True, b"name", bytearray(b"x"), ["a"], ("a",), {"a": 1}, object()]
names = st.one_of(
    texts,
    st.text(ANY_CHAR, min_size=MAX_NAME_LENGTH - 3, max_size=MAX_NAME_LENGTH + 3),
    st.sampled_from(
        [
            "w" * MAX_NAME_LENGTH,
            "w" * (MAX_NAME_LENGTH + 1),
            "\U0001f600" * MAX_NAME_LENGTH,
            "\U0001f600" * (MAX_NAME_LENGTH + 1),
        ]
    ),
    st.sampled_from(NOT_STR),
)


def nest(depth: int, leaf: Any = 0) -> Any:
    """``depth`` levels of alternating lists and objects around ``leaf``."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def circular() -> list[Any]:
    loop: list[Any] = [1]
    loop.append({"again": loop})
    return loop


NON_JSON = [
    {1, 2},
    frozenset(),
    b"bytes",
    bytearray(b"x"),
    memoryview(b"x"),
    object(),
    Decimal("1.5"),
    Fraction(1, 3),
    1 + 2j,
    date(2030, 1, 1),
    datetime(2030, 1, 1, tzinfo=UTC),
    timedelta(1),
    uuid.UUID(int=1),
    range(3),
    iter([1]),
    print,
    type,
    Ellipsis,
    NotImplemented,
    Exception("x"),
]
keys = st.one_of(
    texts,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from([("t",), frozenset(), b"k"]),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    # Past 4300 digits, int -> str is refused (built lazily: a huge repr would fail too).
    st.builds(pow, st.sampled_from([10, -10]), st.integers(300, 4298)),
    st.builds(pow, st.just(10), st.sampled_from([4299, 4300, 5000])),
    st.floats(),  # NaN and the infinities included
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e300, 1.7976931348623157e308]),
    texts,
    st.sampled_from(NON_JSON),
)
structured = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=4),
    ),
    max_leaves=20,
)
values = st.one_of(
    structured,
    st.builds(nest, st.integers(1, 1100), st.one_of(st.just(0), st.sampled_from(NON_JSON))),
    # Built when drawn: hypothesis shows the strategy, and a huge repr would be costly.
    st.builds(lambda: "x" * 3_000_000),
    st.builds(lambda: list(range(50_000))),
    st.builds(lambda: {str(i): i for i in range(20_000)}),
    st.sampled_from(
        [
            [[[[[[[[[[["deep enough"]]]]]]]]]]],
            {"a": {"b": {"c": None}}, "\U0001f600": ["\u202e", "\ufeff", ""]},
        ]
    ),
    st.builds(circular),
)


# -- what should happen to a value ------------------------------------------------------------


def walk(value: Any) -> Iterator[tuple[Any, int]]:
    """Every item and object key of a JSON-serialisable value, with its depth (without
    recursion: values may be nested close to the interpreter's recursion limit)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        if isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            stack.extend((key, depth + 1) for key in item)
            stack.extend((child, depth + 1) for child in item.values())


def json_depth(value: Any) -> int:
    """Levels of arrays and objects, counted as cereal counts them."""
    return max(depth + 1 for item, depth in walk(value) if isinstance(item, list | dict))


def storable(value: Any) -> tuple[bool, Any]:
    """``(True, what it should come back as)`` if PostgreSQL ``jsonb`` can hold ``value`` as
    ``json.dumps`` writes it, else ``(False, None)``. Written without cereal's codec."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False, None
    decoded = json.loads(text)
    if isinstance(decoded, list | dict) and json_depth(decoded) > MAX_DEPTH:
        return False, None
    # Checked on the original strings: json.loads would join two surrogates escaped by
    # json.dumps into one character, which is not the value given.
    if not all(clean(item) for item, _ in walk(value) if isinstance(item, str)):
        return False, None
    return True, decoded


def same(expected: Any, actual: Any) -> bool:
    """JSON equality, allowing what ``jsonb`` documents: a float printed without exponent
    (``1e300``) comes back as the int of the same value. Object key order is ignored."""
    stack = [(expected, actual)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, bool) or isinstance(b, bool):
            if type(a) is not type(b) or a != b:
                return False
        elif isinstance(a, int | float) and isinstance(b, int | float):
            if a != b and float(a) != float(b):
                return False
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif type(a) is not type(b) or a != b:
            return False
    return True


def printable(value: object) -> str | None:
    """``str(value)``, or None when that raises."""
    try:
        return str(value)
    except Exception:
        return None


def valid_name(value: object) -> bool:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean(text: str) -> bool:
    """True for text PostgreSQL can store as it is."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def row_counts(m: Manager) -> tuple[int, ...]:
    """Rows in every table cereal writes."""
    tables = ["workflow_instances", "workflow_events", "tasks", "workflow_results"]
    tables.append("workflow_schedules")
    with m.driver.connection() as conn:
        return tuple(
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
            for t in tables
        )


# -- hostile names --------------------------------------------------------------------------------


class Noop:
    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with()

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with()

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")


def test_hostile_names_are_rejected_with_invalid_name_error_or_round_trip(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    registrar = make_manager(scheduler=False)  # never started: registration only
    counter = itertools.count()

    @SETTINGS
    @given(workflow_name=names, instance_name=names)
    def check(workflow_name: Any, instance_name: Any) -> None:
        before = row_counts(m)
        ok = valid_name(workflow_name) and valid_name(instance_name)
        pair = (workflow_name, instance_name)
        both = ("workflow_name", "instance_name")
        calls: list[tuple[tuple[str, ...], Callable[[], Any]]] = [
            (both, lambda: m.enqueue_workflow(*pair, {"n": 1})),
            (both, lambda: m.get_workflow_instance(*pair)),
            (both[:1], lambda: m.list_workflow_instances(workflow_name=workflow_name)),
            (both[1:], lambda: m.list_workflow_instances(instance_name=instance_name)),
            (both, lambda: m.cancel_workflow(*pair)),
            (both, lambda: m.kill_workflow(*pair)),
            (both, lambda: m.await_workflow(*pair, timeout=0)),
            (both, lambda: m.create_workflow_schedule(*pair, recurrence="FREQ=DAILY")),
            (both, lambda: m.update_workflow_schedule(*pair, enabled=False)),
            (both, lambda: m.get_workflow_schedule(*pair)),
            (both, lambda: m.delete_workflow_schedule(*pair)),
        ]
        if not ok:
            given_names = {"workflow_name": workflow_name, "instance_name": instance_name}
            for takes, call in calls:
                invalid = [kind for kind in takes if not valid_name(given_names[kind])]
                if len(takes) == 1 and given_names[takes[0]] is None:
                    invalid = []  # a list filter of None matches everything
                if not invalid:
                    continue
                with pytest.raises(InvalidNameError) as caught:
                    call()
                assert str(caught.value).startswith(invalid[0])  # names the argument
            assert row_counts(m) == before
        else:
            m.enqueue_workflow(*pair, {"n": 1})
            with pytest.raises(WorkflowInstanceExistsError) as exists:
                m.enqueue_workflow(*pair)
            assert repr(workflow_name) in str(exists.value)
            info = m.get_workflow_instance(*pair)
            assert (info.workflow_name, info.instance_name) == pair
            assert info.parameters == {"n": 1}
            listed = m.list_workflow_instances(workflow_name=workflow_name)
            assert pair in [(i.workflow_name, i.instance_name) for i in listed]
            m.cancel_workflow(*pair)
            m.kill_workflow(*pair)
            killed = m.await_workflow(*pair, timeout=5)
            assert (killed.status, killed.error) == (WorkflowStatus.FAILED, "killed")
            with pytest.raises(WorkflowInstanceNotFoundError):
                m.kill_workflow(*pair)
            m.create_workflow_schedule(*pair, recurrence="FREQ=DAILY", enabled=False)
            assert m.get_workflow_schedule(*pair).instance_name == instance_name
            m.delete_workflow_schedule(*pair)
            with pytest.raises(WorkflowScheduleNotFoundError):
                m.get_workflow_schedule(*pair)

        # Executors registered under the same names.
        for kind, register in (
            ("workflow_name", lambda n: registrar.register_workflow_executor(n, Noop())),
            ("task_name", lambda n: registrar.register_task_executor(n, lambda task: None)),
        ):
            for name in pair:
                if valid_name(name):
                    register(name)
                else:
                    with pytest.raises(InvalidNameError, match=kind):
                        register(name)
        next(counter)

    check()


# -- hostile parameters ---------------------------------------------------------------------------


def test_hostile_parameters_raise_serialization_error_or_round_trip(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    counter = itertools.count()

    @SETTINGS
    @given(value=values)
    def check(value: Any) -> None:
        name = f"p{next(counter)}"
        ok, expected = storable(value)
        before = row_counts(m)
        if not ok:
            with pytest.raises(SerializationError) as caught:
                m.enqueue_workflow(WF, name, value)
            assert f"parameters of workflow {WF!r}" in str(caught.value)
            with pytest.raises(SerializationError):
                m.create_workflow_schedule(WF, name, value, recurrence="FREQ=DAILY")
            assert row_counts(m) == before
            with pytest.raises(WorkflowInstanceNotFoundError):
                m.get_workflow_instance(WF, name)
            return
        m.enqueue_workflow(WF, name, value)
        assert same(expected, m.get_workflow_instance(WF, name).parameters)
        (listed,) = m.list_workflow_instances(workflow_name=WF, instance_name=name)
        assert same(expected, listed.parameters)
        m.create_workflow_schedule(WF, name, value, recurrence="FREQ=DAILY", enabled=False)
        assert same(expected, m.get_workflow_schedule(WF, name).parameters)
        m.kill_workflow(WF, name)
        assert same(expected, m.get_workflow_instance(WF, name).parameters)

    check()


def test_update_with_hostile_parameters_leaves_the_schedule_unchanged(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    m.create_workflow_schedule(WF, "s", {"keep": 1}, recurrence="FREQ=DAILY")
    original = m.get_workflow_schedule(WF, "s")

    @SETTINGS
    @given(value=values)
    def check(value: Any) -> None:
        ok, expected = storable(value)
        if ok:
            m.update_workflow_schedule(WF, "s", parameters=value)
            assert same(expected, m.get_workflow_schedule(WF, "s").parameters)
            m.update_workflow_schedule(WF, "s", parameters={"keep": 1})
        else:
            with pytest.raises(SerializationError):
                m.update_workflow_schedule(WF, "s", parameters=value, enabled=False)
        assert m.get_workflow_schedule(WF, "s") == original

    check()


# -- hostile values returned by callbacks and tasks -------------------------------------------


class Hostile:
    """Applies ``VALUES[instance_name]`` the way ``parameters["mode"]`` says."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        mode, value = inst.parameters["mode"], self.values[inst.instance_name]
        if mode == "payload":
            inst.enqueue_task("echo", "go")
            return inst.continue_with(value)
        if mode == "result":
            return inst.complete(value)
        if mode == "task_parameters":
            inst.enqueue_task("echo", value)
            return inst.continue_with()
        if mode in ("task_result", "task_raise"):
            inst.enqueue_task(mode, inst.instance_name)
            return inst.continue_with()
        if mode == "start_after":
            inst.enqueue_task("echo", "late", start_after=value)
            return inst.continue_with()
        if mode == "fail":
            return inst.fail(value)
        assert mode == "raise"
        raise RuntimeError(value)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        r = event.result
        return inst.complete(
            {"payload": inst.payload, "status": r.status.value, "value": r.value, "error": r.error}
        )

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")


JSON_COMPLAINT = re.compile(r"JSON|NUL|Unicode|nested too deeply")
start_afters = st.one_of(
    st.none(),
    st.sampled_from(
        [
            timedelta(0),
            timedelta(days=-5),
            timedelta.min,
            timedelta.max,
            datetime.min,
            datetime.min.replace(tzinfo=UTC),
            datetime(2000, 1, 1),
        ]
    ),
    st.datetimes(max_value=datetime(2020, 1, 1)),
    st.sampled_from(["tomorrow", 5, 1.5, date(2020, 1, 1), [1], object(), True]),
)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str() for this one")

    def __repr__(self) -> str:
        raise RuntimeError("no repr() either")


fail_errors = st.one_of(
    texts,
    st.sampled_from([None, 5, ValueError(""), ValueError("boom\x00"), KeyError("\ud800")]),
    st.builds(Unprintable),
)


def test_hostile_values_from_callbacks_and_tasks_fail_cleanly_or_round_trip(
    make_manager: MakeManager,
) -> None:
    stash: dict[str, Any] = {}

    def give(task: Task) -> Any:
        return stash[task.parameters]

    def throw(task: Task) -> Any:
        raise RuntimeError(stash[task.parameters])

    m = make_manager(workflow_workers=2)
    m.register_workflow_executor(WF, Hostile(stash))
    m.register_task_executor("echo", lambda task: task.parameters, workers=2)
    m.register_task_executor("task_result", give, workers=2)
    m.register_task_executor("task_raise", throw, workers=2)
    m.start()
    counter = itertools.count()

    @SETTINGS
    @example(case=("raise", "\ud800"))
    @example(case=("fail", "a\x00b"))
    @example(case=("task_raise", "\x00"))
    @example(case=("task_raise", "\udfff"))
    @example(case=("raise", Unprintable()))
    @example(case=("payload", math.nan))
    @example(case=("start_after", timedelta.max))
    @given(
        case=st.one_of(
            st.tuples(
                st.sampled_from(["payload", "result", "task_parameters", "task_result"]),
                values,
            ),
            st.tuples(st.sampled_from(["fail", "raise", "task_raise"]), fail_errors),
            st.tuples(st.just("start_after"), start_afters),
        )
    )
    def check(case: tuple[str, Any]) -> None:
        mode, value = case
        name = f"h{next(counter)}"
        stash[name] = value
        m.enqueue_workflow(WF, name, {"mode": mode})
        info = m.await_workflow(WF, name, timeout=AWAIT)  # never stuck
        assert not info.is_running
        result, error = info.result, info.error
        if error is not None:
            assert clean(error) and error  # stored as given, or made storable
        ok, expected = storable(value)

        if mode in ("payload", "result"):
            if ok:
                assert info.status is WorkflowStatus.COMPLETED, error
                got = result["payload"] if mode == "payload" else result
                assert same(expected, got)
            else:
                assert info.status is WorkflowStatus.FAILED
                assert error.startswith(mode) and JSON_COMPLAINT.search(error), error
        elif mode == "task_parameters":
            if ok:
                assert info.status is WorkflowStatus.COMPLETED, error
                assert result["status"] == "success"
                assert same(expected, result["value"])
            else:
                assert info.status is WorkflowStatus.FAILED
                assert error.startswith("SerializationError: parameters of task 'echo'"), error
        elif mode == "task_result":
            assert info.status is WorkflowStatus.COMPLETED, error
            if ok:
                assert (result["status"], result["error"]) == ("success", None)
                assert same(expected, result["value"])
            else:
                assert result["status"] == "failed" and result["value"] is None
                assert result["error"].startswith("result of task 'task_result'")
                assert JSON_COMPLAINT.search(result["error"])
        elif mode == "fail":
            assert info.status is WorkflowStatus.FAILED
            text = printable(value)
            if not isinstance(value, str | BaseException) or text == "":
                assert error.startswith("InvalidDecisionError: fail()"), error
            elif text is None:  # fail() could not turn it into text: the callback raised
                assert error == "RuntimeError: no str() for this one"
            elif clean(text):
                assert error == text
        elif mode in ("raise", "task_raise"):
            if mode == "task_raise":
                assert info.status is WorkflowStatus.COMPLETED, error
                assert result["status"] == TaskStatus.FAILED.value  # not lost
                error = result["error"]
                assert clean(error)
            else:
                assert info.status is WorkflowStatus.FAILED
            text = printable(RuntimeError(value))
            if text is not None and clean(text):
                assert error == f"RuntimeError: {text}"
            else:
                assert error.startswith("RuntimeError: ")
        else:
            assert mode == "start_after"
            if value is None or isinstance(value, datetime | timedelta):
                if value is timedelta.max:  # beyond PostgreSQL's timestamps
                    assert info.status is WorkflowStatus.FAILED
                    assert error.startswith("cannot store the decision"), error
                else:
                    assert info.status is WorkflowStatus.COMPLETED, error
                    assert result["value"] == "late"
            else:
                assert info.status is WorkflowStatus.FAILED
                assert error.startswith("InvalidDecisionError: start_after"), error
        del stash[name]

    check()


# -- wrong types for options ----------------------------------------------------------------------

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


# -- hostile recurrence rules ------------------------------------------------------------------

VALID_RULES = [
    "FREQ=DAILY",
    "FREQ=HOURLY;INTERVAL=2",
    "FREQ=MONTHLY;BYMONTHDAY=-1;COUNT=5",
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
    "FREQ=SECONDLY;DTSTART=20190101T000000Z;INTERVAL=10",
    "DTSTART:20300101T090000Z\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,-1FR",
    "DTSTART;TZID=Europe/London:20300101T090000\nRRULE:FREQ=DAILY;UNTIL=20301231",
    "DTSTART;TZID=America/New_York:20250309T023000\nRRULE:FREQ=DAILY\nEXDATE:20300105T023000",
    "DTSTART:20300101T000000Z\nRDATE;VALUE=DATE-TIME:20300102T000000Z,20300103T000000Z",
    "DTSTART:20300101T000000\nRRULE:FREQ=MONTHLY;BYDAY=1MO;BYSETPOS=1;WKST=SU",
]
TOKENS = [
    "FREQ",
    "DAILY",
    "WEEKLY",
    "YEARLY",
    "MONTHLY",
    "RRULE",
    "DTSTART",
    "TZID",
    "EXDATE",
    "RDATE",
    "UNTIL",
    "COUNT",
    "INTERVAL",
    "BYDAY",
    "BYSETPOS",
    "Z",
    "T",
    ":",
    ";",
    "=",
    ",",
    "\n",
    "-",
    "+",
    "0",
    "99",
    "MO",
    "Europe/London",
    "Etc/GMT+14",
]
rule_chars = st.sampled_from(sorted(set("".join(VALID_RULES)) | {"\x00", "\ud800", "\u0663"}))


@st.composite
def mutated_rules(draw: st.DrawFn) -> str:
    """A valid rule after one to three random edits."""
    text = draw(st.sampled_from(VALID_RULES))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "number", "token", "case", "repeat"]))
        if edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif edit == "insert":
            text = text[:at] + draw(st.text(rule_chars, min_size=1, max_size=6)) + text[at:]
        elif edit == "number":
            digits = draw(st.sampled_from(["0", "-1", "00000000", "9" * 10, "9" * 5000]))
            text = re.sub(r"\d+", digits, text, count=draw(st.integers(1, 3)))
        elif edit == "token":
            old, new = draw(st.sampled_from(TOKENS)), draw(st.sampled_from(TOKENS))
            text = text.replace(old, new, 1)
        elif edit == "case":
            text = text.lower() if draw(st.booleans()) else text.swapcase()
        else:
            line = draw(st.sampled_from(text.split("\n")))
            text = text + "\n" + line
    return text


recurrences = st.one_of(
    mutated_rules(),
    st.text(ANY_CHAR, max_size=40),
    st.text(rule_chars, max_size=60),
    st.sampled_from(ODD_TEXT),
)


def test_hostile_recurrence_rules_raise_invalid_schedule_error_or_are_stored(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    m.create_workflow_schedule(WF, "kept", recurrence="FREQ=DAILY")
    kept = [m.get_workflow_schedule(WF, "kept")]  # a DTSTART-less reset re-anchors it
    counter = itertools.count()

    @SETTINGS
    @given(rule=recurrences)
    def check(rule: str) -> None:
        name = f"r{next(counter)}"
        try:
            m.create_workflow_schedule(WF, name, recurrence=rule)
        except InvalidScheduleError as exc:
            assert str(exc)
            with pytest.raises(WorkflowScheduleNotFoundError):
                m.get_workflow_schedule(WF, name)
        else:
            stored = m.get_workflow_schedule(WF, name)
            assert stored.enabled and stored.next_due_at is not None
            assert stored.next_occurrences(1, stored.next_due_at) == [stored.next_due_at]
            m.delete_workflow_schedule(WF, name)
        try:
            m.update_workflow_schedule(WF, "kept", recurrence=rule, enabled=False)
        except InvalidScheduleError:
            assert m.get_workflow_schedule(WF, "kept") == kept[0]  # untouched
        else:
            m.update_workflow_schedule(WF, "kept", recurrence="FREQ=DAILY", enabled=True)
            kept[0] = m.get_workflow_schedule(WF, "kept")
            assert kept[0].enabled

    check()


def test_dateutil_rule_objects_that_cannot_be_stored_raise_invalid_schedule_error(
    make_manager: MakeManager,
) -> None:
    from dateutil.rrule import DAILY, rrule, rruleset

    m = make_manager(scheduler=False)
    past = rrule(DAILY, dtstart=datetime(2000, 1, 1, tzinfo=UTC), count=3)
    odd_zone = rrule(DAILY, dtstart=datetime(2030, 1, 1, tzinfo=timezone(timedelta(minutes=30))))
    with_exrule = rruleset()
    with_exrule.rrule(rrule(DAILY, dtstart=datetime(2030, 1, 1, tzinfo=UTC)))
    with_exrule.exrule(rrule(DAILY, dtstart=datetime(2030, 1, 1, tzinfo=UTC), count=2))
    for bad in (past, odd_zone, with_exrule, rruleset()):
        with pytest.raises(InvalidScheduleError):
            m.create_workflow_schedule(WF, "x", recurrence=bad)
    assert m.list_workflow_schedules() == []


# -- rows damaged outside cereal ------------------------------------------------------------

BIG_NUMBER = "1" + "0" * 5000  # valid jsonb; more digits than Python's int() accepts
DEEP_JSON = "[" * 3000 + "]" * 3000  # valid jsonb; deeper than json.loads can go


JSONB = {"task_parameters", "task_result"}


def execute(m: Manager, query: str | sql.Composable, *params: Any) -> list[tuple[Any, ...]]:
    with m.driver.connection() as conn:
        cur = conn.execute(query, params)  # type: ignore[call-overload]
        return cur.fetchall() if cur.description else []


class Recorder:
    """Completes on the first task result, reporting what it saw."""

    def __init__(self) -> None:
        self.starts: list[str] = []
        self.lock = threading.Lock()

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        with self.lock:
            self.starts.append(inst.instance_name)
        if isinstance(inst.parameters, dict) and "task" in inst.parameters:
            inst.enqueue_task("echo", inst.parameters["task"])
        return inst.continue_with({"started": True})

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        r = event.result
        return inst.complete(
            {
                "task_name": event.task_name,
                "status": r.status.value,
                "error": r.error,
                "value": r.value,
                "parameters": r.parameters,
                "payload": inst.payload,
            }
        )

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")


def wait_running(m: Manager, instance_name: str) -> None:
    deadline = time.monotonic() + AWAIT
    while m.get_workflow_instance(WF, instance_name).status is not WorkflowStatus.RUNNING:
        assert time.monotonic() < deadline, f"{instance_name} never started"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("columns", "status", "error"),
    [
        ({"task_name": "ghost"}, "unusable_result", "unknown task status None"),
        ({}, "unusable_result", "unknown task status None"),
        ({"task_status": "success", "task_result": BIG_NUMBER}, "unusable_result", "decoded"),
        ({"task_status": "success", "task_result": DEEP_JSON}, "unusable_result", "decoded"),
        ({"task_status": "failed", "task_parameters": BIG_NUMBER}, "unusable_result", "decoded"),
        ({"task_status": "lost"}, "lost", None),
        ({"task_status": "failed", "task_result": '{"odd": true}'}, "failed", None),
    ],
    ids=["null-status", "all-null", "huge-number", "too-deep", "bad-parameters", "lost", "odd"],
)
def test_task_complete_event_of_an_odd_shape_reaches_the_workflow_as_a_result(
    make_manager: MakeManager, columns: dict[str, str], status: str, error: str | None
) -> None:
    flow = Recorder()
    m = make_manager()
    m.register_workflow_executor(WF, flow)
    m.start()
    m.enqueue_workflow(WF, "odd")
    wait_running(m, "odd")
    values = [
        sql.SQL("{}::jsonb").format(sql.Literal(v))
        if c.startswith("task_") and c in JSONB
        else sql.Literal(v)
        for c, v in columns.items()
    ]
    execute(
        m,
        sql.SQL(
            "INSERT INTO workflow_events ({}) SELECT {} FROM workflow_instances"
            " WHERE instance_name = 'odd'"
        ).format(
            sql.SQL(", ").join(map(sql.Identifier, ["instance_id", "event_type", *columns])),
            sql.SQL(", ").join([sql.SQL("id"), sql.Literal("task_complete"), *values]),
        ),
    )
    m.driver.notify(["e" + WF])
    info = m.await_workflow(WF, "odd", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED, info.error
    assert info.result["status"] == status
    assert info.result["payload"] == {"started": True}
    if error is None:
        assert info.result["error"] is None
    else:
        assert error in info.result["error"]
    if status == "unusable_result":
        assert info.result["value"] is None
    assert flow.starts == ["odd"]


def test_duplicate_start_and_stray_cancel_fields_are_harmless(make_manager: MakeManager) -> None:
    flow = Recorder()
    m = make_manager()
    m.register_workflow_executor(WF, flow)
    m.start()
    m.enqueue_workflow(WF, "dup")
    wait_running(m, "dup")
    execute(
        m,
        "INSERT INTO workflow_events (instance_id, event_type, task_status, task_result)"
        " SELECT id, 'start', 'success', '1'::jsonb FROM workflow_instances"
        " WHERE instance_name = 'dup'",
    )
    execute(
        m,
        "INSERT INTO workflow_events (instance_id, event_type, task_name, task_status)"
        " SELECT id, 'task_complete', 'ghost', 'success' FROM workflow_instances"
        " WHERE instance_name = 'dup'",
    )
    m.driver.notify(["e" + WF])
    info = m.await_workflow(WF, "dup", timeout=AWAIT)
    assert info.status is WorkflowStatus.COMPLETED
    assert (info.result["task_name"], info.result["status"]) == ("ghost", "success")
    assert flow.starts == ["dup"]  # the second start was not acted on


@pytest.mark.parametrize("column", ["parameters", "payload"])
@pytest.mark.parametrize("value", [BIG_NUMBER, DEEP_JSON], ids=["huge-number", "too-deep"])
def test_instance_whose_stored_json_cannot_be_decoded_fails_and_others_still_run(
    make_manager: MakeManager, column: str, value: str
) -> None:
    m = make_manager()
    m.register_workflow_executor(WF, Recorder())
    m.register_task_executor("echo", lambda task: task.parameters)
    m.start()
    m.enqueue_workflow(WF, "bad", {"task": "hold"})
    m.await_workflow(WF, "bad", timeout=AWAIT)  # first run completes normally
    m.stop()

    other = make_manager()
    other.register_workflow_executor(WF, Recorder())
    other.register_task_executor("echo", lambda task: task.parameters)
    # The oldest instance with events, damaged: it used to block every instance behind it.
    other.enqueue_workflow(WF, "bad", {"task": "x"})
    execute(
        other,
        sql.SQL("UPDATE workflow_instances SET {} = %s::jsonb WHERE instance_name = 'bad'").format(
            sql.Identifier(column)
        ),
        value,
    )
    for n in range(3):
        other.enqueue_workflow(WF, f"good{n}", {"task": n})
    other.start()
    for n in range(3):
        assert other.await_workflow(WF, f"good{n}", timeout=AWAIT).result["value"] == n
    deadline = time.monotonic() + AWAIT
    while not (
        rows := execute(
            other,
            "SELECT status, error FROM workflow_results WHERE instance_name = 'bad' ORDER BY id",
        )
    )[1:]:
        assert time.monotonic() < deadline, "the damaged instance never finished"
        time.sleep(0.05)
    assert rows[1][0] == "failed"
    assert f"stored {column} cannot be decoded" in rows[1][1]
    if column == "parameters":  # kept in the history: reading it back is a typed error
        with pytest.raises(DatabaseError, match="cannot be decoded"):
            other.get_workflow_instance(WF, "bad")
        with pytest.raises(DatabaseError, match="cannot be decoded"):
            other.list_workflow_instances()
    else:  # the payload of a finished run is not kept
        assert other.get_workflow_instance(WF, "bad").status is WorkflowStatus.FAILED


def test_task_whose_stored_parameters_cannot_be_decoded_is_reported_failed(
    make_manager: MakeManager,
) -> None:
    flow = Recorder()
    workflows = make_manager()
    workflows.register_workflow_executor(WF, flow)
    workflows.start()
    workflows.enqueue_workflow(WF, "t", {"task": "fine"})
    wait_running(workflows, "t")
    execute(workflows, "UPDATE tasks SET parameters = %s::jsonb", BIG_NUMBER)
    runner = make_manager()
    ran: list[Any] = []
    runner.register_task_executor("echo", ran.append)
    runner.start()
    info = workflows.await_workflow(WF, "t", timeout=AWAIT)
    assert info.result["status"] == "unusable_result"
    assert "stored task parameters cannot be decoded" in info.result["error"]
    assert info.result["parameters"] is None
    assert ran == []


CORRUPT_RULES = [
    "",
    "FREQ=BOGUS",
    "FREQ=DAILY",  # stored rules must have a DTSTART
    "DTSTART:20300101T000000Z",
    "DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY;COUNT=" + "9" * 5000,
    "DTSTART;TZID=Mars/Olympus_Mons:20300101T000000\nRRULE:FREQ=DAILY",
    "DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY;BYHOUR=25",
    "DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY\nEXDATE;TZID=Nowhere/Else:20300102T000000",
]


def test_corrupt_stored_schedules_are_disabled_once_and_others_still_run(
    make_manager: MakeManager,
) -> None:
    setup = make_manager(scheduler=False)
    for n, _ in enumerate(CORRUPT_RULES):
        setup.create_workflow_schedule(WF, f"bad{n}", recurrence="FREQ=DAILY")
    setup.create_workflow_schedule(WF, "bad-params", recurrence="FREQ=DAILY")
    for n, text in enumerate(CORRUPT_RULES):
        execute(
            setup,
            "UPDATE workflow_schedules SET recurrence = %s,"
            " next_due_at = now() - interval '1 minute' WHERE instance_name = %s",
            text,
            f"bad{n}",
        )
    execute(
        setup,
        "UPDATE workflow_schedules SET parameters = %s::jsonb,"
        " next_due_at = now() - interval '1 minute' WHERE instance_name = 'bad-params'",
        BIG_NUMBER,
    )
    soon = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y%m%dT%H%M%SZ")
    setup.create_workflow_schedule(
        WF, "good", {"x": 1}, recurrence=f"DTSTART:{soon}\nRRULE:FREQ=HOURLY"
    )
    bad = [f"bad{n}" for n, _ in enumerate(CORRUPT_RULES)] + ["bad-params"]

    with structlog.testing.capture_logs() as logs:
        m = make_manager()
        m.register_workflow_executor(WF, Noop())
        m.start()
        deadline = time.monotonic() + AWAIT
        while not setup.list_workflow_instances(instance_name="good"):
            assert time.monotonic() < deadline, "the good schedule never ran"
            time.sleep(0.05)
        time.sleep(1.0)  # room for a looping scheduler to show itself
        m.stop()

    assert setup.list_workflow_instances()[0].instance_name == "good"
    assert len(setup.list_workflow_instances()) == 1  # no bad schedule enqueued anything
    rows = execute(
        setup,
        "SELECT instance_name, enabled FROM workflow_schedules WHERE instance_name <> 'good'",
    )
    assert sorted(rows) == sorted((name, False) for name in bad)
    disabled = [e for e in logs if e["event"] == "disabling schedule that cannot run"]
    assert sorted(e["instance"] for e in disabled) == sorted(bad)  # each exactly once
    assert "bad-params" in {e["instance"] for e in disabled if "decoded" in e["error"]}
    assert not [e for e in logs if e["log_level"] == "error" and e not in disabled]
    # The API reports the corrupt rules as InvalidScheduleError, never anything else.
    for name in bad[:-1]:
        schedule = setup.get_workflow_schedule(WF, name)
        with pytest.raises(InvalidScheduleError):
            setup.update_workflow_schedule(WF, name, enabled=True)
        with pytest.raises(InvalidScheduleError):
            schedule.next_occurrences(1)


# -- failed migrations --------------------------------------------------------------------------


def superuser(pg_dsn: str, *statements: sql.Composable) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_migration_that_fails_midway_raises_migration_error_naming_it(
    pg_dsn: str, schema: str, make_manager: MakeManager
) -> None:
    ident = sql.Identifier(schema)
    superuser(
        pg_dsn,
        sql.SQL("CREATE SCHEMA {}").format(ident),
        sql.SQL("CREATE VIEW {}.workflow_schedules AS SELECT 1 AS x").format(ident),
    )
    m = make_manager()
    m.register_workflow_executor(WF, Noop())
    for _ in range(2):  # the same clear error each time, no partial state, no hang
        with pytest.raises(MigrationError) as caught:
            m.driver.open()
        assert "0002_schedules" in str(caught.value)
        assert repr(schema) in str(caught.value)
        assert "workflow_schedules" in str(caught.value)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        versions = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(ident)
        ).fetchall()
    assert versions == [(1,)]
    with pytest.raises(MigrationError):
        m.start()
    m.stop()  # a manager whose start failed still stops cleanly

    superuser(pg_dsn, sql.SQL("DROP VIEW {}.workflow_schedules").format(ident))
    fixed = make_manager()
    fixed.register_workflow_executor(WF, Noop())
    fixed.start()
    fixed.create_workflow_schedule(WF, "s", recurrence="FREQ=DAILY")


def test_unusable_migration_history_raises_migration_error(
    pg_dsn: str, schema: str, make_manager: MakeManager
) -> None:
    ident = sql.Identifier(schema)
    superuser(
        pg_dsn,
        sql.SQL("CREATE SCHEMA {}").format(ident),
        sql.SQL("CREATE TABLE {}.schema_migrations (something text)").format(ident),
    )
    m = make_manager()
    with pytest.raises(MigrationError) as caught:
        m.enqueue_workflow(WF, "i")
    assert "schema_migrations" in str(caught.value)
    assert repr(schema) in str(caught.value)
