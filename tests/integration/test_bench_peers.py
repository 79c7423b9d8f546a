"""The side-by-side benchmark harness (``benchmarks/peers.py``) keeps working.

These run it at a toy size and check only that it runs and reports; the figures themselves
are measurements, read by people, never asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _peers(*args: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_peers_help_names_every_workload_and_option() -> None:
    out = _peers("--help")
    assert out.returncode == 0, out.stderr
    for word in ("P1", "P2", "P3", "F1", "F2", "--rounds", "--quick", "--dsn", "--cereal-only"):
        assert word in out.stdout


def test_peers_rejects_zero_rounds() -> None:
    out = _peers("--rounds", "0", "--cereal-only")
    assert out.returncode == 2
    assert "--rounds must be at least 1, got 0" in out.stderr


@pytest.mark.slow
def test_peers_tiny_run_reports_cereal_figures_for_every_workload(pg_dsn: str) -> None:
    out = _peers("--tiny", "--rounds", "1", "--cereal-only", "--dsn", pg_dsn)
    assert out.returncode == 0, out.stderr
    titles = ("P1 no-task", "workers=10", "workers=1", "task start p50", "task start p99")
    eager = ("eager_start, p50", "eager_start, p99", "eager_start, p99, warm")
    for title in (*titles, "task start p99, warm", *eager):
        block = out.stdout.split(title, 1)[1]
        median = re.search(r"median\s+([0-9.]+)\s+nan", block)
        assert median is not None, block[:300]
        assert float(median.group(1)) > 0
    assert "(peer skipped)" in out.stdout
    assert re.search(r"raw commit rate, 1 client\s+[1-9]", out.stdout)
    assert re.search(r"cereal statements, P1 workflow \(100/batch\)\s+[1-9]", out.stdout)
    assert re.search(r"cereal statements, P2 workflow \(100/batch\)\s+[1-9]", out.stdout)
    assert re.search(r"cereal P1\s+[0-9.]+\s+[0-9]+\s+[0-9.]+", out.stdout)
    for figure in ("p50", "p99", "max"):
        assert re.search(rf"\n  {figure}\s+[0-9.]*[1-9]", out.stdout), figure
    assert re.search(r"\n    cereal\s+[0-9.]+\s+median", out.stdout)
    assert re.search(r"\n    cereal eager_start\s+[0-9.]+\s+median", out.stdout)
