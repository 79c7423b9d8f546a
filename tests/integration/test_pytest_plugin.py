"""The pytest plugin cereal.testing.pytest_plugin, run in a pytest of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg

CONFTEST = 'pytest_plugins = ["cereal.testing.pytest_plugin"]\n'

USER_TESTS = """
from cereal import WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.patterns import register_single_task_workflow

SCHEMAS = []


def test_driver_is_a_postgres_driver_on_a_fresh_schema(cereal_driver):
    assert isinstance(cereal_driver, PostgresDriver)
    assert cereal_driver.schema.startswith("cereal_test_")
    assert cereal_driver.list_workflow_instances() == []
    SCHEMAS.append(cereal_driver.schema)
    print("SCHEMA", cereal_driver.schema)


def test_each_test_gets_its_own_schema(cereal_driver):
    assert cereal_driver.schema not in SCHEMAS
    print("SCHEMA", cereal_driver.schema)


def test_manager_factory_runs_a_workflow(cereal_manager, cereal_driver):
    manager = cereal_manager()
    assert manager.driver is cereal_driver
    register_single_task_workflow(manager, "double", lambda task: task.parameters * 2)
    manager.start()
    manager.enqueue_workflow("double", "x", 21)
    done = manager.await_workflow("double", "x", timeout=20)
    assert (done.status, done.result) == (WorkflowStatus.COMPLETED, 42)
    print("SCHEMA", cereal_driver.schema)


def test_options_reach_the_manager(cereal_manager):
    manager = cereal_manager(workflow_workers=3, scheduler=False)
    assert manager.config.workflow_workers == 3
    manager.start()
    STARTED.append(manager)


def test_managers_are_stopped_after_their_test():
    assert [m._state for m in STARTED] == ["stopped"]


STARTED = []
"""


def run_user_suite(tmp_path: Path, pg_dsn: str, tests: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_service.py").write_text(textwrap.dedent(tests))
    env = dict(os.environ, CEREAL_TEST_DSN=pg_dsn)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )


def test_plugin_fixtures_give_a_driver_and_managers_and_clean_up(
    tmp_path: Path, pg_dsn: str
) -> None:
    done = run_user_suite(tmp_path, pg_dsn, USER_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed" in done.stdout
    schemas = re.findall(r"SCHEMA (\w+)", done.stdout)
    assert len(schemas) == 3 and len(set(schemas)) == 3
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)
        ).fetchall()
    assert left == []  # every schema was dropped after its test


def test_a_failing_user_test_still_drops_its_schema(tmp_path: Path, pg_dsn: str) -> None:
    tests = """
    def test_fails(cereal_manager, cereal_driver):
        cereal_manager().start()
        print("SCHEMA", cereal_driver.schema)
        assert False, "on purpose"
    """
    done = run_user_suite(tmp_path, pg_dsn, tests)
    assert done.returncode == 1 and "on purpose" in done.stdout
    (schema,) = re.findall(r"SCHEMA (\w+)", done.stdout)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    assert row is None
