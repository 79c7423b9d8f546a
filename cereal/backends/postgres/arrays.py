"""Array parameters written as PostgreSQL array literals.

psycopg adapts a Python list element by element in Python, looking for each list's element
type first: about 0.5 µs per integer and 3 µs per string, or most of the parameter work of a
batch of a hundred instances. The hot statements take their arrays as one string instead,
built here in the syntax of PostgreSQL's array input, and cast it (``%(ids)s::bigint[]``).

Every element is written double-quoted, with backslashes and double quotes escaped, so any
text reads back as it was; None becomes an unquoted NULL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TypeVar

__all__ = [
    "ROWS_PER_STATEMENT",
    "bool_array",
    "float_array",
    "in_statements",
    "int_array",
    "text_array",
    "timestamp_array",
]

T = TypeVar("T")

ROWS_PER_STATEMENT = 128
"""The most rows given to one statement that finds each row's values by its position in the
arrays (``queries.sql``, at its top): every lookup walks the arrays, so such a statement costs
the square of its rows. A larger batch goes as several statements in the same transaction
and round trip. 128 is the default ``event_batch_size``: a full batch of events stays one
statement."""


def in_statements(items: Sequence[T]) -> list[Sequence[T]]:
    """``items`` in consecutive parts of at most :data:`ROWS_PER_STATEMENT`."""
    step = ROWS_PER_STATEMENT
    return [items[i : i + step] for i in range(0, len(items), step)]


def int_array(values: Iterable[int | None]) -> str:
    """``{1,2,NULL}`` for integer (or bigint) array parameters."""
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def bool_array(values: Iterable[bool | None]) -> str:
    """``{t,f,NULL}`` for boolean array parameters."""
    return "{" + ",".join("NULL" if v is None else "t" if v else "f" for v in values) + "}"


def _quoted(value: str | None) -> str:
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(values: Iterable[str | None]) -> str:
    """``{"a","b \\"c\\"",NULL}`` for text array parameters."""
    return "{" + ",".join(map(_quoted, values)) + "}"


def _float(value: float | None) -> str:
    if value is None:
        return "NULL"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def float_array(values: Iterable[float | None]) -> str:
    """``{0.5,Infinity,NULL}`` for float8 array parameters."""
    return "{" + ",".join(map(_float, values)) + "}"


def timestamp_array(values: Iterable[datetime | None]) -> str:
    """ISO 8601 elements for timestamptz array parameters (a naive value is read in the
    session's time zone, as psycopg sends it)."""
    return text_array(None if v is None else v.isoformat() for v in values)
