"""The PostgreSQL backend's small parts: the wakeup format and error translation."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg_pool import PoolTimeout

from cereal.backends.postgres import notify
from cereal.backends.postgres.errors import RefusedValueError, is_transient, translate
from cereal.driver import EventsPending, InstanceFinished, SchedulesChanged, TasksQueued, Wakeup
from cereal.errors import DatabaseError, SerializationError, TransientDatabaseError


@pytest.mark.parametrize(
    "wakeup",
    [EventsPending("orders"), TasksQueued("send-mail"), InstanceFinished(42), SchedulesChanged()],
)
def test_wakeups_round_trip_through_their_payload(wakeup: Wakeup) -> None:
    assert notify.decode(notify.encode(wakeup)) == [wakeup]


def test_finished_instances_share_payloads_that_postgres_accepts() -> None:
    ids = list(range(10**9, 10**9 + 3000))
    payloads = notify.encode_finished(ids)
    assert 1 < len(payloads) < 10
    assert all(len(p.encode()) < 8000 for p in payloads)
    decoded = [w for p in payloads for w in notify.decode(p)]
    assert decoded == [InstanceFinished(i) for i in ids]
    assert notify.encode_finished([7]) == ["f7"]
    assert notify.encode_finished([]) == []


def test_payloads_use_one_letter_kinds() -> None:
    assert notify.encode(EventsPending("w")) == "ew"
    assert notify.encode(TasksQueued("t")) == "tt"
    assert notify.encode(InstanceFinished(7)) == "f7"
    assert notify.encode(SchedulesChanged()) == "s"


@pytest.mark.parametrize(
    "payload",
    ["", "x", "fabc", "f", "f-1", "f\u00b2", "f\u0663", "f1 ", "f1,", "f,1", "f1,,2", "f1,x"],
)
def test_unknown_payloads_are_ignored(payload: str) -> None:
    assert notify.decode(payload) == []


TRANSIENT = [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.InterfaceError("the connection is closed"),
    PoolTimeout("couldn't get a connection after 30.00 sec"),
    pgerrors.DeadlockDetected("deadlock detected"),
    pgerrors.SerializationFailure("could not serialize access"),
    pgerrors.InvalidSqlStatementName("prepared statement does not exist"),
    pgerrors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
    pgerrors.AdminShutdown("terminating connection due to administrator command"),
    pgerrors.CannotConnectNow("the database system is starting up"),
    pgerrors.TooManyConnections("sorry, too many clients already"),
    pgerrors.ConnectionFailure("connection failure"),
]
REFUSED = [
    pgerrors.ProgramLimitExceeded("total size of jsonb array elements exceeds the maximum"),
    pgerrors.InvalidTextRepresentation("invalid input syntax for type json"),
    pgerrors.UntranslatableCharacter("unsupported Unicode escape sequence"),
    psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
]
PERMANENT = [
    pgerrors.UndefinedTable('relation "tasks" does not exist'),
    pgerrors.InsufficientPrivilege("permission denied for table tasks"),
    pgerrors.UniqueViolation("duplicate key value violates unique constraint"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_failures_become_transient_database_errors(exc: psycopg.Error) -> None:
    assert is_transient(exc)
    error = translate(exc)
    assert type(error) is TransientDatabaseError and error.transient
    assert str(error) == str(exc)


@pytest.mark.parametrize("exc", REFUSED, ids=lambda e: type(e).__name__)
def test_refused_values_become_serialization_errors(exc: psycopg.Error) -> None:
    assert not is_transient(exc)
    error = translate(exc)
    assert isinstance(error, RefusedValueError)
    assert isinstance(error, SerializationError) and isinstance(error, DatabaseError)
    assert not error.transient
    assert str(error) == str(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_other_failures_become_permanent_database_errors(exc: psycopg.Error) -> None:
    assert not is_transient(exc)
    error = translate(exc)
    assert type(error) is DatabaseError and not error.transient
    assert str(error) == str(exc)
