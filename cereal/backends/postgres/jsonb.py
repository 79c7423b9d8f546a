"""Decoding ``jsonb`` values without letting one bad stored value wedge a loop.

Everything cereal writes is decodable (see :mod:`cereal.codec`), but a row written by another
program, or by a process with a higher recursion or integer-digit limit, may hold JSON that
this process cannot decode (an integer of more than 4300 digits, nesting deeper than the
recursion limit). psycopg's default loader would raise a bare ``ValueError`` or
``RecursionError`` from ``fetchall()``.

Connections of the driver use :class:`StrictJsonbLoader`, which raises
:class:`~cereal.errors.DatabaseError` instead. The cursors of the work loops (event claims,
task claims, due schedules) use :class:`LenientJsonbLoader`, which returns an
:class:`Undecodable` marker so that the loop can fail just that instance, task or schedule
with a clear message instead of retrying the same rows forever.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format

from cereal.errors import DatabaseError

__all__ = ["Undecodable", "use_lenient_jsonb", "use_strict_jsonb"]


class Undecodable:
    """Stands in for a stored JSON value that cannot be decoded; ``error`` says why."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({self.error!r})"


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply to decode"
    return str(exc)


def _text(data: Buffer, binary: bool) -> bytes:
    if binary:
        if data and data[0] != 1:
            raise psycopg.DataError(f"unknown jsonb binary format: {data[0]}")
        data = data[1:]
    return data if isinstance(data, bytes) else bytes(data)


class StrictJsonbLoader(Loader):
    """Decodes ``jsonb``; raises :class:`DatabaseError` for a value it cannot decode."""

    def load(self, data: Buffer) -> Any:
        try:
            return json.loads(_text(data, self.format == Format.BINARY))
        except (ValueError, RecursionError) as exc:
            raise DatabaseError(f"a stored JSON value cannot be decoded: {_why(exc)}") from exc


class StrictJsonbBinaryLoader(StrictJsonbLoader):
    format = Format.BINARY


class LenientJsonbLoader(Loader):
    """Decodes ``jsonb``; returns :class:`Undecodable` for a value it cannot decode."""

    def load(self, data: Buffer) -> Any:
        try:
            return json.loads(_text(data, self.format == Format.BINARY))
        except (ValueError, RecursionError) as exc:
            return Undecodable(_why(exc))


class LenientJsonbBinaryLoader(LenientJsonbLoader):
    format = Format.BINARY


def use_strict_jsonb(adapters: AdaptersMap) -> None:
    """Decode ``jsonb`` with :class:`StrictJsonbLoader` in this connection or cursor."""
    adapters.register_loader("jsonb", StrictJsonbLoader)
    adapters.register_loader("jsonb", StrictJsonbBinaryLoader)


def use_lenient_jsonb(adapters: AdaptersMap) -> None:
    """Decode ``jsonb`` with :class:`LenientJsonbLoader` in this connection or cursor."""
    adapters.register_loader("jsonb", LenientJsonbLoader)
    adapters.register_loader("jsonb", LenientJsonbBinaryLoader)
