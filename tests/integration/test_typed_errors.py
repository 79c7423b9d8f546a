"""Database failures reach callers as ``cereal.errors`` types, never as psycopg's."""

from __future__ import annotations

import socket
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cereal import Manager
from cereal.backends.postgres import PostgresDriver
from cereal.errors import DatabaseError, SerializationError, TransientDatabaseError


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_server_nobody_runs_gives_a_transient_database_error_from_enqueue(
    schema: str,
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{_unused_port()}/postgres"
    manager = Manager(PostgresDriver(dsn, schema=schema, connect_timeout=2), close_driver=True)
    with pytest.raises(DatabaseError) as caught:
        manager.enqueue_workflow("w", "i")
    assert isinstance(caught.value, TransientDatabaseError)
    assert caught.value.transient
    assert not isinstance(caught.value, psycopg.Error)
    assert "cannot connect" in str(caught.value)
    manager.stop()


def test_a_read_only_server_gives_a_transient_database_error(
    pg_dsn: str, schema: str, make_manager: Callable[..., Manager]
) -> None:
    make_manager().list_workflow_instances()  # creates the schema
    params = conninfo_to_dict(pg_dsn)
    params["options"] = "-c default_transaction_read_only=on"
    read_only = Manager(PostgresDriver(make_conninfo(**params), schema=schema), close_driver=True)
    try:
        for call in (
            lambda: read_only.enqueue_workflow("w", "i"),
            lambda: read_only.create_workflow_schedule("w", "s", recurrence="FREQ=DAILY"),
        ):
            with pytest.raises(DatabaseError) as caught:
                call()
            assert caught.value.transient, caught.value
            assert "read-only" in str(caught.value)
            assert isinstance(caught.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
        assert read_only.list_workflow_instances() == []  # reading still works
    finally:
        read_only.stop()


def test_a_value_the_database_refuses_is_a_serialization_error_with_its_message(
    driver: PostgresDriver,
) -> None:
    driver.open()
    with pytest.raises(SerializationError) as caught:
        driver.enqueue_workflow("w", "i", "{not json")
    assert isinstance(caught.value, DatabaseError)
    assert not caught.value.transient
    assert "invalid input syntax for type json" in str(caught.value)
    assert driver.get_workflow_instance("w", "i") is None


def test_other_failures_are_permanent_database_errors_with_the_server_message(
    driver: PostgresDriver,
) -> None:
    driver.open()
    with driver.connection() as conn:
        conn.execute("DROP TABLE workflow_schedules")
    with pytest.raises(DatabaseError) as caught:
        driver.list_schedules()
    assert type(caught.value) is DatabaseError
    assert not caught.value.transient
    assert 'relation "workflow_schedules" does not exist' in str(caught.value)
