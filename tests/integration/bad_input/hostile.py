"""Hostile values, the strategies that draw them, and what should become of each.

Shared by the bad-input tests: every call either raises a typed ``CerealError`` naming the
problem, or stores the value and gives it back as JSON would.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from psycopg import sql

from cereal import Decision, Manager, WorkflowInstance
from cereal.codec import MAX_DEPTH, MAX_NAME_LENGTH

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


class Nested(list[Any]):
    """The outermost list of a deeply nested value, with a short repr: printing the value
    itself, as Hypothesis does for a failing example, would exceed the recursion limit."""

    def __init__(self, inner: Any, depth: int, leaf: Any) -> None:
        super().__init__([inner])
        self.depth, self.leaf = depth, leaf

    def __repr__(self) -> str:
        return f"nest({self.depth}, {self.leaf!r})"


def nest(depth: int, leaf: Any = 0) -> Any:
    """``depth`` levels of alternating lists and objects around ``leaf``."""
    value = leaf
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return Nested(value, depth, leaf)


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


class Noop:
    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with()

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with()

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")
