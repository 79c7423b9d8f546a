"""Load the named statements of ``queries.sql``."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

__all__ = ["load_migrations", "load_queries"]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load_queries() -> dict[str, LiteralString]:
    """Return ``{name: sql}`` for every ``-- name:`` block of ``queries.sql``."""
    text = resources.files(__package__).joinpath("queries.sql").read_text("utf-8")
    parts = _HEADER.split(text)
    return {
        name: cast(LiteralString, body.strip().rstrip(";"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


@cache
def load_migrations() -> list[tuple[int, str, LiteralString]]:
    """Return ``(version, name, sql)`` for every ``migrations/NNNN_name.sql``, in order."""
    folder = resources.files(__package__).joinpath("migrations")
    found: list[tuple[int, str, LiteralString]] = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            sql = entry.read_text("utf-8")
            found.append((int(match.group(1)), match.group(2), sql))
    found.sort()
    return found
