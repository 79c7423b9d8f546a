"""pytest fixtures for testing a service built on cereal, on PostgreSQL or in memory.

Enable them in a ``conftest.py``::

    pytest_plugins = ["cereal.testing.pytest_plugin"]

- ``cereal_dsn`` (session): the server of ``CEREAL_TEST_DSN`` if set, else the embedded
  server (``pip install 'cereal[embedded]'``).
- ``cereal_driver``: a ``PostgresDriver`` on a fresh schema of that server, closed and its
  schema dropped after the test.
- ``cereal_manager``: a factory ``cereal_manager(**options) -> Manager`` of managers on
  ``cereal_driver``, with short poll and heartbeat intervals (``FAST_MANAGER_OPTIONS``,
  overridable), every one stopped after the test.
- ``cereal_memory_manager``: the same factory on a fresh :class:`~cereal.testing.MemoryDriver`
  (no database, nothing to install); the managers of one test share its store, as managers of
  one test share a schema with ``cereal_manager``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import pytest

from cereal.errors import CerealError

if TYPE_CHECKING:
    from cereal.backends.postgres import PostgresDriver
    from cereal.driver import Driver
    from cereal.manager import Manager

__all__ = [
    "FAST_MANAGER_OPTIONS",
    "cereal_driver",
    "cereal_dsn",
    "cereal_manager",
    "cereal_memory_manager",
]

FAST_MANAGER_OPTIONS: dict[str, Any] = {
    "workflow_poll_interval": 0.2,
    "task_poll_interval": 0.2,
    "heartbeat_interval": 0.5,
    "lost_task_timeout": 3.0,
}
"""Manager options the manager fixtures use unless told otherwise."""


@pytest.fixture(scope="session")
def cereal_dsn() -> str:
    """Connection string of the PostgreSQL server the cereal fixtures use."""
    dsn = os.environ.get("CEREAL_TEST_DSN")
    if dsn:
        return dsn
    from cereal.backends.postgres.embedded import embedded_dsn

    return embedded_dsn()


@pytest.fixture
def cereal_driver(cereal_dsn: str) -> Iterator[PostgresDriver]:
    """A ``PostgresDriver`` on a schema of its own, dropped after the test."""
    from cereal.backends.postgres import PostgresDriver

    schema = "cereal_test_" + uuid.uuid4().hex[:12]
    driver = PostgresDriver(cereal_dsn, schema=schema)
    try:
        yield driver
    finally:
        driver.close()
        with suppress(CerealError):  # the server is gone; the schema name is never reused
            driver.drop_schema()


@pytest.fixture
def cereal_manager(cereal_driver: PostgresDriver) -> Iterator[Callable[..., Manager]]:
    """Factory ``cereal_manager(**options)`` of managers on ``cereal_driver``; each one is
    stopped after the test (whether or not it was started)."""
    yield from _manager_factory(lambda: cereal_driver)


@pytest.fixture
def cereal_memory_manager() -> Iterator[Callable[..., Manager]]:
    """Factory ``cereal_memory_manager(**options)`` of managers on a fresh
    :class:`~cereal.testing.MemoryDriver`, with the fast intervals; each one is stopped after
    the test. The managers of one test share one store (``manager.driver.store``)."""
    from cereal.testing.memory import MemoryDriver, MemoryStore

    store = MemoryStore()
    yield from _manager_factory(lambda: MemoryDriver(store=store))


def _manager_factory(new_driver: Callable[[], Driver]) -> Iterator[Callable[..., Manager]]:
    from cereal.errors import ManagerStateError
    from cereal.manager import Manager

    built: list[Manager] = []

    def make(**options: Any) -> Manager:
        manager = Manager(new_driver(), **(FAST_MANAGER_OPTIONS | options))
        built.append(manager)
        return manager

    yield make

    errors: list[BaseException] = []
    for manager in reversed(built):
        try:
            manager.stop(timeout=10)
        except ManagerStateError:
            pass
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
