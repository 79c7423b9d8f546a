"""The wheel holds the library only: cereal's modules and its data files, no tooling."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What may ship: modules of the cereal package, its type marker, its SQL, and package data
# of the web interface (templates, static files).
LIBRARY_FILE = re.compile(
    r"cereal/(.+\.py|py\.typed|.+\.sql|web/(templates|static)/.+)"
    r"|cereal-[^/]+\.dist-info/[^/]+"
)


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The file list of a wheel built from a clean copy of the source tree (so that nothing
    built earlier in ``build/`` can slip in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    out = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out.glob("cereal-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_wheel_holds_only_the_library(wheel_files: list[str]) -> None:
    strays = [name for name in wheel_files if not LIBRARY_FILE.fullmatch(name)]
    assert strays == []


@pytest.mark.slow
def test_wheel_ships_no_chaos_or_benchmark_tooling(wheel_files: list[str]) -> None:
    tooling = [n for n in wheel_files if re.search(r"chaos|bench|tests/|scripts/", n)]
    assert tooling == []


@pytest.mark.slow
def test_wheel_ships_the_package_its_marker_and_its_sql(wheel_files: list[str]) -> None:
    assert "cereal/__init__.py" in wheel_files
    assert "cereal/manager.py" in wheel_files
    assert "cereal/py.typed" in wheel_files
    assert "cereal/backends/postgres/queries.sql" in wheel_files
    assert any(n.startswith("cereal/backends/postgres/migrations/0001_") for n in wheel_files)


def test_the_package_reports_the_version_it_was_installed_as() -> None:
    import importlib.metadata

    import cereal

    assert cereal.__version__ == importlib.metadata.version("cereal")
