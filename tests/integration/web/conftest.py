"""Fixtures of the dashboard tests: an app on this test's schema and a populated database."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed: pip install cereal[web]")

from starlette.testclient import TestClient

from cereal import Manager
from cereal.web import create_app
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for
from tests.integration.web.web_helpers import DAILY_PARIS, EVIL, Seeded


@pytest.fixture
def client(driver: Any) -> Callable[..., TestClient]:
    """``client(**create_app_options)``: a test client of a dashboard on this test's schema."""
    made: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        c = TestClient(create_app(driver, **options))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def seeded(make_manager: Callable[..., Manager]) -> Iterator[Seeded]:
    """A running manager and a database holding one instance in each state:

    - ``billing/inv-1`` completed (its task returned ``{"paid": 42}``),
    - ``sync/nightly`` failed with ``ValueError: upstream said no``,
    - ``reports/q3`` running, its ``render`` task blocked until ``release`` is set,
    - ``<script>...`` workflow, instance ``<b>x</b>``, waiting on a task nobody runs,
    - a daily schedule ``reports/daily`` in Europe/Paris.
    """
    release = threading.Event()
    manager = make_manager()

    def start_with_task(inst: Any, event: Any) -> Any:
        inst.enqueue_task(inst.parameters["task"], inst.parameters)
        return inst.continue_with({"step": "waiting for " + inst.parameters["task"]})

    def done(inst: Any, event: Any) -> Any:
        return inst.complete(event.result.value)

    def fail(inst: Any, event: Any) -> Any:
        return inst.fail(ValueError("upstream said no"))

    manager.register_workflow_executor("billing", Flow(start_with_task, done))
    manager.register_workflow_executor("reports", Flow(start_with_task, done))
    manager.register_workflow_executor("sync", Flow(fail))
    manager.register_workflow_executor(EVIL, Flow(start_with_task, done))
    manager.register_task_executor("charge", lambda task: {"paid": 42})
    manager.register_task_executor("render", lambda task: release.wait(30) and "rendered")
    manager.start()
    manager.enqueue_workflow("billing", "inv-1", {"task": "charge"})
    manager.enqueue_workflow("sync", "nightly", {"since": "2025-01-01"})
    manager.enqueue_workflow("reports", "q3", {"task": "render"})
    manager.enqueue_workflow(EVIL, "<b>x</b>", {"task": "never-run", "note": EVIL})
    manager.create_workflow_schedule("reports", "daily", {"n": 1}, recurrence=DAILY_PARIS)
    manager.await_workflow("billing", "inv-1", timeout=15)
    manager.await_workflow("sync", "nightly", timeout=15)
    wait_for(
        lambda: (
            manager.get_workflow_instance("reports", "q3").payload is not None
            and manager.get_workflow_instance(EVIL, "<b>x</b>").payload is not None
        ),
        what="the live instances to start",
    )
    yield Seeded(manager, release)
    release.set()
