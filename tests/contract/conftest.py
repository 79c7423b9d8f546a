"""Fixtures of the driver contract suite: every test runs once per driver that ships.

``contract_driver`` is an open driver on empty storage: a fresh :class:`MemoryDriver`, or a
:class:`PostgresDriver` on a schema of its own. ``twin_driver`` is a second driver on the same
storage (another "process" sharing the database).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cereal.driver import Driver
from cereal.testing import MemoryDriver

DRIVERS = ["memory", pytest.param("postgres", marks=pytest.mark.integration)]


@pytest.fixture(params=DRIVERS)
def driver_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_driver(driver_kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """Factory of open drivers that all share this test's storage; each is closed after."""
    made: list[Any] = []
    memory: list[MemoryDriver] = []

    def make() -> Any:
        drv: Any
        if driver_kind == "memory":
            drv = MemoryDriver(store=memory[0].store) if memory else MemoryDriver()
            memory.append(drv)
        else:
            from cereal.backends.postgres import PostgresDriver

            pg_dsn = request.getfixturevalue("pg_dsn")
            drv = PostgresDriver(pg_dsn, schema=request.getfixturevalue("schema"))
        drv.open()
        made.append(drv)
        return drv

    yield make
    for drv in reversed(made):
        drv.close()


@pytest.fixture
def contract_driver(make_driver: Callable[[], Driver]) -> Driver:
    return make_driver()


@pytest.fixture
def twin_driver(contract_driver: Driver, make_driver: Callable[[], Driver]) -> Driver:
    return make_driver()
