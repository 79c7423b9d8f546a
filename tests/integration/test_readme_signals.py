"""The README's "Signals" example runs as written, and the signal handler of its "Async client"
FastAPI example reaches the workflow."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cereal import Manager, SignalEvent, WorkflowInstance
from cereal.workflow import Decision

README = Path(__file__).resolve().parents[2] / "README.md"


def first_python_block(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    code = re.search(r"```python\n(.*?)```", text[start : text.index("\n## ", start + 1)], re.S)
    assert code is not None, f"no python example in {title!r}"
    return code.group(1)


def test_readme_signals_example_prints_what_it_says(pg_dsn: str, schema: str) -> None:
    example = first_python_block("Signals")
    assert "manager = Manager()" in example
    source = "from cereal.backends.postgres import PostgresDriver\n" + example.replace(
        "Manager()", f"Manager(PostgresDriver(schema={schema!r}))"
    )
    env = {"CEREAL_DATABASE_URL": pg_dsn, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    (expected,) = re.findall(r"print\(.*\)\s*# (.*)", example)
    assert done.stdout.splitlines() == [expected]


class AwaitsApproval:
    """Waits for an ``approve`` signal and completes with its payload."""

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with()

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with()

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")

    def on_signal(self, inst: WorkflowInstance, event: SignalEvent) -> Decision:
        return inst.complete({event.name: event.payload})


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_readme_fastapi_signal_handler_reaches_the_workflow(
    make_manager: Callable[..., Manager], pg_dsn: str, schema: str
) -> None:
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    source = first_python_block("Async client").replace(
        "Manager()", f"Manager(PostgresDriver({pg_dsn!r}, schema={schema!r}), close_driver=True)"
    )
    namespace: dict[str, Any] = {}
    exec("from cereal.backends.postgres import PostgresDriver\n" + source, namespace)
    worker = make_manager()
    worker.register_workflow_executor("checkout", AwaitsApproval())
    worker.start()

    with TestClient(namespace["app"]) as http:
        assert http.post("/orders/42", json=["apple"]).status_code == 202
        approved = http.post("/orders/42/approval", params={"approver": "ann"})
        assert approved.status_code == 202, approved.text
        assert approved.json() == {"order": "42", "status": "approval sent"}
        assert http.get("/orders/42", params={"wait": 20}).json() == {
            "order": "42",
            "status": "completed",
            "result": {"approve": {"by": "ann"}},
        }
        missing = http.post("/orders/7/approval", params={"approver": "ann"})
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no order 7 is waiting"}
        finished = http.post("/orders/42/approval", params={"approver": "bob"})
        assert finished.status_code == 404  # the run finished: no live instance to signal
    namespace["manager"].stop()
