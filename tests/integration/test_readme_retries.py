"""The README's task-retries example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_retries_example_runs_and_succeeds_on_the_third_attempt(
    pg_dsn: str, schema: str
) -> None:
    text = README.read_text()
    section = text[text.index("## Task retries") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    source = code.group(1).replace("Manager()", f"Manager(PostgresDriver(schema={schema!r}))")
    source = "from cereal.backends.postgres import PostgresDriver\n" + source
    env = {"CEREAL_DATABASE_URL": pg_dsn, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "completed {'page': '<html>https://example.org/</html>', 'attempts': 3}" in done.stdout
