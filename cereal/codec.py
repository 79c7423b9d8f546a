"""JSON encoding of parameters, payloads and results, with the checks PostgreSQL needs.

Everything cereal stores is JSON (``jsonb``). ``None`` is stored as SQL NULL. Values that
``jsonb`` cannot hold (NaN, Infinity, NUL characters, lone surrogates) are refused here with a
:class:`~cereal.errors.SerializationError` rather than failing later inside the database. So
are values nested more than ``MAX_DEPTH`` levels deep: ``json.dumps`` accepts depths up to the
caller's remaining recursion budget, and a value stored from a shallow stack could otherwise
be impossible to decode in a thread with a deeper one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cereal.errors import InvalidNameError, SerializationError

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME_LENGTH",
    "check_name",
    "describe_error",
    "encode",
    "storable_text",
    "try_encode",
]

MAX_NAME_LENGTH = 200
MAX_DEPTH = 512
"""Deepest nesting of arrays and objects accepted in a stored value."""
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
"""Shared by every thread (it keeps no state between calls): ``json.dumps`` with these options
builds a new encoder on each call, which costs as much as encoding a small value."""


def encode(value: Any, what: str = "value") -> str | None:
    """Return ``value`` as JSON text (None for None), or raise :class:`SerializationError`."""
    if value is None:
        return None
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"{what} is not JSON-serialisable: {_describe(exc)}") from exc
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value):
        raise SerializationError(
            f"{what} is nested too deeply: more than {MAX_DEPTH} levels of arrays and objects"
        )
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise SerializationError(f"{what} contains a NUL character, which PostgreSQL cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SerializationError(f"{what} contains text that is not valid Unicode: {exc}") from exc
    return text


def try_encode(value: Any, what: str) -> tuple[str | None, str | None]:
    """Encode ``value``; return ``(json_text, None)`` or ``(None, error_message)``."""
    try:
        return encode(value, what), None
    except SerializationError as exc:
        return None, str(exc)


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL characters and lone surrogates, which a
    ``text`` column refuses, are replaced by their backslash escapes (``\\x00``,
    ``\\ud800``)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def describe_error(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, storable, even when ``str(exc)`` itself fails."""
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception raised>"
    return storable_text(f"{type(exc).__name__}: {message}")


def _too_deep(value: Any) -> bool:
    """True if ``value`` (already known to be JSON-serialisable) nests deeper than MAX_DEPTH."""
    containers = (dict, list, tuple)
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, containers) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, containers))
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, ValueError) and "Out of range float" in str(exc):
        return "NaN and Infinity are not valid JSON"
    return str(exc)


def check_name(kind: str, value: object) -> str:
    """Validate a workflow, instance or task name and return it.

    A name is a non-empty string of at most ``MAX_NAME_LENGTH`` characters without NUL
    characters or lone surrogates.
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"{kind} must be a str, got {type(value).__name__}: {value!r}")
    if not value:
        raise InvalidNameError(f"{kind} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{kind} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}: "
            f"{value[:40]!r}..."
        )
    if "\x00" in value:
        raise InvalidNameError(f"{kind} must not contain NUL characters: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNameError(f"{kind} is not valid Unicode: {value!r}") from None
    return value
