"""The README's "Patterns" and "Testing your workflows" examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def python_blocks(title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(title), re.S)


def test_readme_patterns_example_prints_what_it_says(pg_dsn: str, schema: str) -> None:
    service, run = python_blocks("Patterns")[:2]
    assert "manager = Manager()" in run
    source = (
        "from cereal.backends.postgres import PostgresDriver\n"
        + service
        + run.replace("Manager()", f"Manager(PostgresDriver(schema={schema!r}))")
    )
    env = {"CEREAL_DATABASE_URL": pg_dsn, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    expected = re.findall(r"print\(.*\)\n\s*# (.*)", run)
    assert len(expected) == 3
    assert done.stdout.splitlines() == expected


def test_readme_testing_examples_pass_as_a_users_test_suite(tmp_path: Path, pg_dsn: str) -> None:
    service = python_blocks("Patterns")[0]
    unit, conftest, integration, memory = python_blocks("Testing your workflows")
    (tmp_path / "service.py").write_text(service)
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_unit.py").write_text(unit)
    (tmp_path / "test_service.py").write_text(integration)
    (tmp_path / "test_memory.py").write_text(memory)
    env = dict(os.environ, CEREAL_TEST_DSN=pg_dsn)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


def test_readme_memory_example_passes_with_no_database_configured(tmp_path: Path) -> None:
    service = python_blocks("Patterns")[0]
    conftest, memory = python_blocks("Testing your workflows")[1::2]
    (tmp_path / "service.py").write_text(service)
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_memory.py").write_text(memory)
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
    assert "1 passed" in done.stdout
