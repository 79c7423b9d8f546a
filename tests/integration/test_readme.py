"""The README's quickstart runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_quickstart_runs_and_prints_the_result(pg_dsn: str, schema: str) -> None:
    text = README.read_text()
    quickstart = text[text.index("## Quickstart") :]
    code = re.search(r"```python\n(.*?)```", quickstart, re.S)
    assert code is not None
    source = code.group(1).replace("Manager()", f"Manager(PostgresDriver(schema={schema!r}))")
    source = "from cereal.backends.postgres import PostgresDriver\n" + source
    env = {"CEREAL_DATABASE_URL": pg_dsn, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "completed {'reserved': 2}" in done.stdout
