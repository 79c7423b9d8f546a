"""Turning psycopg's and psycopg_pool's exceptions into :mod:`cereal.errors` types.

Every public method of the PostgreSQL driver runs its statements inside :func:`translated`,
so no psycopg exception reaches the core or the caller:

- a failure worth retrying becomes :class:`~cereal.errors.TransientDatabaseError`: a lost
  or refused connection (SQLSTATE class 08, ``OperationalError``, ``InterfaceError``, a pool
  timeout), a server shutting down or not accepting connections yet (class 57), too many
  connections or too little memory (class 53), a deadlock or serialisation failure (class
  40), a read-only server (25006), or a prepared statement the server no longer has (26000);
- a value the database refuses to store (class 22, or class 54 such as an oversized
  ``jsonb``) becomes :class:`RefusedValueError`, both a
  :class:`~cereal.errors.SerializationError` and a permanent
  :class:`~cereal.errors.DatabaseError`;
- anything else becomes :class:`~cereal.errors.DatabaseError` with the server's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from cereal.errors import DatabaseError, SerializationError, TransientDatabaseError

__all__ = ["RefusedValueError", "is_transient", "translate", "translated"]

_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57"})
_TRANSIENT_STATES = frozenset({"25006", "26000"})
_REFUSED_CLASSES = frozenset({"22", "54"})


class RefusedValueError(SerializationError, DatabaseError):
    """The database refused a value (too large for its type, or text it cannot store)."""

    transient = False


def _refused(exc: psycopg.Error) -> bool:
    state = exc.sqlstate
    if state is not None:
        return state[:2] in _REFUSED_CLASSES
    return isinstance(exc, psycopg.DataError)  # e.g. a NUL character caught client-side


def is_transient(exc: BaseException) -> bool:
    """True when the same call may succeed later (see the module documentation)."""
    if isinstance(exc, DatabaseError):
        return exc.transient
    if not isinstance(exc, psycopg.Error) or _refused(exc):
        return False
    state = exc.sqlstate
    if state is not None and (state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES):
        return True
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def translate(exc: psycopg.Error) -> DatabaseError:
    """The :mod:`cereal.errors` exception standing for ``exc`` (its message is the server's)."""
    message = str(exc) or type(exc).__name__
    if _refused(exc):
        return RefusedValueError(message)
    if is_transient(exc):
        return TransientDatabaseError(message)
    return DatabaseError(message)


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise any psycopg exception of the block as its :func:`translate` counterpart."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc
