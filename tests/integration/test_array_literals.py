"""Array parameters written as literals (cereal.backends.postgres.arrays) read back exactly
as the lists psycopg would have sent, whatever the text holds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from cereal.backends.postgres.arrays import (
    bool_array,
    float_array,
    int_array,
    text_array,
    timestamp_array,
)

pytestmark = pytest.mark.integration

AWKWARD = [
    "",
    "plain",
    "NULL",
    "null",
    " padded ",
    'say "hi"',
    "back\\slash",
    '\\"',
    "{braces},commas",
    '{"a": [1, 2], "b": "\\u00e9"}',
    "line\nbreak\ttab",
    "unicode ✓ é 漢字",
    None,
]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        yield c


def test_text_reads_back_as_it_was(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT %s::text[]", (text_array(AWKWARD),)).fetchone()
    assert row is not None and row[0] == AWKWARD


def test_each_element_is_what_unnest_sees(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
        (text_array(AWKWARD),),
    ).fetchall()
    assert [r[0] for r in rows] == AWKWARD


def test_integers_floats_booleans_and_empty_arrays(conn: psycopg.Connection) -> None:
    ints = [0, -1, 2**62, None, 7]
    floats = [0.0, -1.5, 1e-300, 1e300, float("inf"), float("-inf"), None]
    bools = [True, False, None]
    row = conn.execute(
        "SELECT %s::bigint[], %s::float8[], %s::bool[], %s::bigint[], %s::text[],"
        " 3 = ANY(%s::bigint[])",
        (
            int_array(ints),
            float_array(floats),
            bool_array(bools),
            int_array([]),
            text_array([]),
            int_array([3]),
        ),
    ).fetchone()
    assert row == (ints, floats, bools, [], [], True)
    nan = conn.execute("SELECT (%s::float8[])[1] = 'NaN'", (float_array([float("nan")]),))
    assert nan.fetchone() == (True,)


def test_timestamps_keep_their_instant(conn: psycopg.Connection) -> None:
    aware = [
        datetime(2026, 11, 30, 22, 15, 1, 123456, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        None,
    ]
    row = conn.execute("SELECT %s::timestamptz[]", (timestamp_array(aware),)).fetchone()
    assert row is not None and row[0] == aware
