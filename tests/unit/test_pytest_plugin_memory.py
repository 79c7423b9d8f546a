"""The pytest plugin's ``cereal_memory_manager`` fixture, run in a pytest of its own, and the
testing kit's promise that it needs no PostgreSQL driver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = 'pytest_plugins = ["cereal.testing.pytest_plugin"]\n'

USER_TESTS = """
import sys

from cereal import WorkflowStatus
from cereal.patterns import register_single_task_workflow
from cereal.testing import MemoryDriver

STARTED = []
STORES = []


def test_the_factory_builds_managers_on_a_memory_driver(cereal_memory_manager):
    manager = cereal_memory_manager()
    assert isinstance(manager.driver, MemoryDriver)
    assert manager.list_workflow_instances() == []
    register_single_task_workflow(manager, "double", lambda task: task.parameters * 2)
    manager.start()
    STARTED.append(manager)
    STORES.append(manager.driver.store)
    manager.enqueue_workflow("double", "x", 21)
    done = manager.await_workflow("double", "x", timeout=20)
    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, 42)


def test_managers_of_one_test_share_a_store_and_options_override_the_defaults(
    cereal_memory_manager,
):
    first = cereal_memory_manager(workflow_workers=3)
    second = cereal_memory_manager(scheduler=False)
    assert first.driver.store is second.driver.store
    assert first.config.workflow_workers == 3 and not second.config.scheduler
    assert first.config.task_poll_interval == 0.2
    first.enqueue_workflow("w", "i")
    assert second.get_workflow_instance("w", "i").is_running
    STORES.append(first.driver.store)


def test_each_test_gets_a_fresh_store_and_earlier_managers_were_stopped(cereal_memory_manager):
    manager = cereal_memory_manager()
    assert manager.driver.store not in STORES
    assert manager.list_workflow_instances() == []
    assert [m._state for m in STARTED] == ["stopped"]


def test_no_postgres_module_was_loaded():
    assert not [m for m in sys.modules if m.startswith(("psycopg", "cereal.backends"))]
"""


def test_memory_manager_fixture_builds_fresh_managers_and_stops_them(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_service.py").write_text(textwrap.dedent(USER_TESTS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEREAL_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


def test_the_testing_kit_and_a_memory_manager_load_no_postgres_backend() -> None:
    code = textwrap.dedent(
        """
        import sys
        import cereal.testing
        import cereal.testing.pytest_plugin
        from cereal import Manager
        from cereal.testing import MemoryDriver

        with Manager(MemoryDriver(), scheduler=False) as manager:
            manager.enqueue_workflow("w", "i")
        print(sorted(m for m in sys.modules if m.startswith(("psycopg", "cereal.backends"))))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
