"""The ``cereal`` command, run for real in child processes against PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

_BIN = Path(sys.executable).parent / "cereal"
COMMAND = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "cereal.cli"]
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2"

APP = """
import os
import pathlib
import time

from cereal import Manager
from cereal.backends.postgres import PostgresDriver

MARKS = pathlib.Path(os.environ["SLEEPY_MARKS"])


def _mark(text):
    with MARKS.open("a") as f:
        f.write(text + "\\n")


class Sleepy:
    def on_start(self, instance, event):
        instance.enqueue_task("slow", instance.parameters)
        return instance.continue_with()

    def on_task_complete(self, instance, event):
        if event.result.ok:
            return instance.complete(event.result.value)
        return instance.fail(event.result.error)

    def on_cancel(self, instance, event):
        return instance.fail("cancelled")


def slow(task):
    _mark("started " + task.instance_name)
    time.sleep(task.parameters["seconds"])
    _mark("finished " + task.instance_name)
    return {"slept": task.parameters["seconds"]}


def build():
    driver = PostgresDriver(os.environ["CEREAL_DATABASE_URL"], schema=os.environ["CEREAL_SCHEMA"])
    manager = Manager(
        driver,
        workflow_poll_interval=0.5,
        task_poll_interval=0.5,
        heartbeat_interval=0.5,
        lost_task_timeout=5,
    )
    manager.register_workflow_executor("sleepy", Sleepy())
    manager.register_task_executor("slow", slow)
    return manager


not_a_manager = 42


def broken():
    raise RuntimeError("no database configured")
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "sleepyapp.py").write_text(APP)
    (tmp_path / "brokenapp.py").write_text("raise ImportError('missing dependency xyz')\n")
    return tmp_path


@pytest.fixture
def env(pg_dsn: str, schema: str, app_dir: Path) -> dict[str, str]:
    """The environment of every child: this test's database and schema, no other CEREAL_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CEREAL_")}
    return clean | {
        "CEREAL_DATABASE_URL": pg_dsn,
        "CEREAL_SCHEMA": schema,
        "SLEEPY_MARKS": str(app_dir / "marks"),
        "PYTHONUNBUFFERED": "1",
    }


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cereal(env: dict[str, str], app_dir: Path) -> Run:
    """``cereal(*args, env=None)``: run the command to completion and return the result."""

    def run(
        *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, *args],
            env=env | (extra_env or {}),
            cwd=app_dir,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


@pytest.fixture
def start_worker(
    env: dict[str, str], app_dir: Path
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*COMMAND, "worker", "sleepyapp:build", *args],
            env=env,
            cwd=app_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _marks(app_dir: Path) -> list[str]:
    path = app_dir / "marks"
    return path.read_text().splitlines() if path.exists() else []


# -- worker --------------------------------------------------------------------------------


def test_sigterm_during_a_running_task_loses_nothing_and_exits_0(
    cereal: Run, start_worker: Callable[..., subprocess.Popen[str]], app_dir: Path
) -> None:
    worker = start_worker("--stop-timeout", "30")
    assert cereal("instances", "enqueue", "sleepy", "a", '{"seconds": 8}').returncode == 0
    wait_for(lambda: "started a" in _marks(app_dir), timeout=30)

    running = _json(cereal("tasks", "list", "--json"))
    assert [(t["task_name"], t["instance_name"], t["state"]) for t in running] == [
        ("slow", "a", "running")
    ]
    assert isinstance(running[0]["heartbeat_age"], float)
    assert (running[0]["attempt"], running[0]["max_attempts"]) == (1, 1)

    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert _marks(app_dir) == ["started a", "finished a"]

    # The result was recorded: the workflow completes here or on the next start, without
    # running the task again.
    info = _json(cereal("instances", "show", "sleepy", "a", "--json"))
    if info["is_running"]:
        again = start_worker()
        wait_for(
            lambda: not _json(cereal("instances", "show", "sleepy", "a", "--json"))["is_running"],
            timeout=30,
        )
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=60)
        assert again.returncode == 0
        info = _json(cereal("instances", "show", "sleepy", "a", "--json"))
    assert info["status"] == "completed"
    assert info["result"] == {"slept": 8}
    assert _marks(app_dir) == ["started a", "finished a"]


def test_a_second_signal_exits_at_once(
    cereal: Run, start_worker: Callable[..., subprocess.Popen[str]], app_dir: Path
) -> None:
    worker = start_worker("--stop-timeout", "120")
    assert cereal("instances", "enqueue", "sleepy", "long", '{"seconds": 60}').returncode == 0
    wait_for(lambda: "started long" in _marks(app_dir), timeout=30)
    worker.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert worker.poll() is None  # still waiting for the task
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=20)
    assert time.monotonic() - started < 10
    assert worker.returncode == 1
    assert "second SIGTERM" in err


def test_enqueue_wait_returns_the_finished_instance(
    cereal: Run, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    worker = start_worker("--no-scheduler", "--workflow-workers", "2")
    done = cereal(
        "instances",
        "enqueue",
        "sleepy",
        "w",
        '{"seconds": 0}',
        "--wait",
        "--timeout",
        "60",
        "--json",
    )
    info = _json(done)
    assert (info["status"], info["result"]) == ("completed", {"slept": 0})
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)
    assert worker.returncode == 0


@pytest.mark.parametrize(
    ("app", "code", "needles"),
    [
        ("nocolon", 2, ["module:attribute", "'nocolon'"]),
        ("nosuchmodule_xyz:app", 1, ["cannot import", "nosuchmodule_xyz"]),
        ("brokenapp:app", 1, ["cannot import", "missing dependency xyz"]),
        ("sleepyapp:nothing", 1, ["has no attribute", "'nothing'"]),
        ("sleepyapp:not_a_manager", 1, ["not a cereal Manager", "int"]),
        ("sleepyapp:broken", 1, ["RuntimeError", "no database configured"]),
    ],
)
def test_a_bad_app_is_one_clear_error_line(
    cereal: Run, app: str, code: int, needles: list[str]
) -> None:
    result = cereal("worker", app)
    assert result.returncode == code
    _one_error_line(result, *needles)


def test_worker_without_app_is_a_usage_error_and_reads_cereal_app(cereal: Run) -> None:
    result = cereal("worker")
    assert result.returncode == 2
    _one_error_line(result, "APP", "CEREAL_APP")
    result = cereal("worker", extra_env={"CEREAL_APP": "sleepyapp:not_a_manager"})
    assert result.returncode == 1
    _one_error_line(result, "not a cereal Manager")


# -- instances ------------------------------------------------------------------------------


def test_instance_commands_with_and_without_json(cereal: Run) -> None:
    enqueued = cereal("instances", "enqueue", "sleepy", "one", '{"seconds": 1}')
    assert enqueued.returncode == 0, enqueued.stderr
    assert "starting" in enqueued.stdout
    assert _json(cereal("instances", "enqueue", "sleepy", "two", "--json"))["status"] == "starting"

    table = cereal("instances", "list")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["WORKFLOW", "INSTANCE", "STATUS", "STARTED", "ENDED", "DETAIL"]
    assert {line.split()[1] for line in lines[1:]} == {"one", "two"}
    assert all(len(line) <= 80 for line in lines)

    listed = _json(cereal("instances", "list", "--json"))
    assert {i["instance_name"] for i in listed} == {"one", "two"}
    assert len(_json(cereal("instances", "list", "--limit", "1", "--json"))) == 1
    assert _json(cereal("instances", "list", "--finished", "--json")) == []
    assert (
        len(_json(cereal("instances", "list", "--running", "--workflow", "sleepy", "--json"))) == 2
    )
    assert _json(cereal("instances", "list", "--workflow", "other", "--json")) == []

    shown = cereal("instances", "show", "sleepy", "one")
    assert shown.returncode == 0
    assert "parameters" in shown.stdout and '{"seconds":1}' in shown.stdout
    info = _json(cereal("instances", "show", "sleepy", "one", "--json"))
    assert info["parameters"] == {"seconds": 1}
    assert info["is_running"] is True

    cancelled = cereal("instances", "cancel", "sleepy", "one")
    assert cancelled.returncode == 0
    assert "cancel" in cancelled.stdout
    assert _json(cereal("instances", "kill", "sleepy", "two", "--json"))["action"] == "kill"
    killed = _json(cereal("instances", "show", "sleepy", "two", "--json"))
    assert (killed["status"], killed["error"]) == ("failed", "killed")
    assert cereal("instances", "kill", "sleepy", "one").returncode == 0
    assert _json(cereal("instances", "list", "--finished", "--json"))[0]["status"] == "failed"


def test_instance_exit_codes(cereal: Run) -> None:
    assert cereal("instances", "enqueue", "sleepy", "dup").returncode == 0
    duplicate = cereal("instances", "enqueue", "sleepy", "dup")
    assert duplicate.returncode == 1
    _one_error_line(duplicate, "'sleepy'/'dup'", "exists")

    for args in (
        ("show", "sleepy", "missing"),
        ("cancel", "sleepy", "missing"),
        ("kill", "sleepy", "missing"),
    ):
        result = cereal("instances", *args)
        assert result.returncode == 3, args
        _one_error_line(result, "'missing'", "not found")

    bad_json = cereal("instances", "enqueue", "sleepy", "x", "{not json")
    assert bad_json.returncode == 2
    _one_error_line(bad_json, "PARAMETERS_JSON", "{not json")
    missing_argument = cereal("instances", "show", "sleepy")
    assert missing_argument.returncode == 2
    _one_error_line(missing_argument, "required")
    assert cereal("instances", "list", "--running", "--finished").returncode == 2
    assert cereal("instances", "list", "--limit", "0").returncode == 2
    assert cereal("nonsense").returncode == 2
    assert cereal("instances", "enqueue", "sleepy", "x", "--timeout", "1").returncode == 2

    timed_out = cereal("instances", "enqueue", "sleepy", "nobody", "--wait", "--timeout", "0.5")
    assert timed_out.returncode == 1
    _one_error_line(timed_out, "did not finish")


def test_signal_stores_the_signal_for_a_live_instance_and_sets_exit_codes(
    cereal: Run, pg_dsn: str, schema: str
) -> None:
    assert cereal("instances", "enqueue", "sleepy", "sig").returncode == 0
    sent = cereal("instances", "signal", "sleepy", "sig", "go", '{"n": 1}')
    assert sent.returncode == 0, sent.stderr
    assert "signal 'go' sent to sleepy/sig" in sent.stdout
    as_json = cereal("instances", "signal", "sleepy", "sig", "again", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "workflow_name": "sleepy",
        "instance_name": "sig",
        "action": "signal",
        "signal": "again",
    }
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        stored = conn.execute(
            f'SELECT signal_name, signal_payload FROM "{schema}".workflow_events '
            "WHERE event_type = 'signal' ORDER BY id"
        ).fetchall()
    assert stored == [("go", {"n": 1}), ("again", None)]

    missing = cereal("instances", "signal", "sleepy", "missing", "go")
    assert missing.returncode == 3
    _one_error_line(missing, "missing")
    bad_json = cereal("instances", "signal", "sleepy", "sig", "go", "{bad")
    assert bad_json.returncode == 2
    _one_error_line(bad_json, "PAYLOAD_JSON")
    bad_name = cereal("instances", "signal", "sleepy", "sig", "")
    assert bad_name.returncode == 1
    _one_error_line(bad_name, "signal_name must not be empty")


# -- schedules ------------------------------------------------------------------------------

RULE = "DTSTART;TZID=Europe/Paris:20260101T090000\nRRULE:FREQ=DAILY"


def test_schedule_commands_with_and_without_json(cereal: Run) -> None:
    created = cereal(
        "schedules",
        "create",
        "sleepy",
        "daily",
        "--recurrence",
        RULE,
        "--parameters",
        '{"seconds": 1}',
        "--disabled",
    )
    assert created.returncode == 0, created.stderr
    assert "Europe/Paris" in created.stdout

    table = cereal("schedules", "list")
    assert table.returncode == 0
    assert table.stdout.splitlines()[1].split()[:3] == ["sleepy", "daily", "no"]
    listed = _json(cereal("schedules", "list", "--json"))
    assert [(s["instance_name"], s["enabled"], s["recurrence"]) for s in listed] == [
        ("daily", False, RULE)
    ]

    shown = _json(cereal("schedules", "show", "sleepy", "daily", "--next", "3", "--json"))
    assert shown["time_zone"] == "Europe/Paris"
    assert len(shown["next_occurrences"]) == 3
    first = shown["next_occurrences"][0]
    assert first["utc"].endswith("+00:00")
    assert first["local"][11:19] == "09:00:00"
    text = cereal("schedules", "show", "sleepy", "daily", "--next", "2")
    assert text.returncode == 0
    assert text.stdout.count(" UTC ") == 2 and "(Europe/Paris)" in text.stdout

    assert _json(cereal("schedules", "enable", "sleepy", "daily", "--json"))["action"] == "enable"
    assert _json(cereal("schedules", "show", "sleepy", "daily", "--json"))["enabled"] is True
    assert "disabled" in cereal("schedules", "disable", "sleepy", "daily").stdout
    updated = _json(
        cereal("schedules", "update", "sleepy", "daily", "--parameters", '{"seconds": 2}', "--json")
    )
    assert (updated["parameters"], updated["enabled"]) == ({"seconds": 2}, False)
    hourly = "DTSTART:20260101T000000Z\nRRULE:FREQ=HOURLY"
    assert cereal("schedules", "update", "sleepy", "daily", "--recurrence", hourly).returncode == 0
    assert _json(cereal("schedules", "show", "sleepy", "daily", "--json"))["recurrence"] == hourly

    assert cereal("schedules", "delete", "sleepy", "daily").returncode == 0
    assert _json(cereal("schedules", "list", "--json")) == []


def test_schedule_exit_codes(cereal: Run) -> None:
    for args in (
        ("show", "sleepy", "none"),
        ("enable", "sleepy", "none"),
        ("disable", "sleepy", "none"),
        ("delete", "sleepy", "none"),
        ("update", "sleepy", "none", "--parameters", "1"),
    ):
        result = cereal("schedules", *args)
        assert result.returncode == 3, args
        _one_error_line(result, "'none'", "not found")
    bad_rule = cereal("schedules", "create", "sleepy", "bad", "--recurrence", "RRULE:FREQ=NEVER")
    assert bad_rule.returncode == 1
    _one_error_line(bad_rule, "NEVER")
    assert cereal("schedules", "create", "sleepy", "bad").returncode == 2
    assert cereal("schedules", "create", "sleepy", "x", "--recurrence", RULE).returncode == 0
    duplicate = cereal("schedules", "create", "sleepy", "x", "--recurrence", RULE)
    assert duplicate.returncode == 1
    _one_error_line(duplicate, "'x'")


# -- tasks, migrate, check -------------------------------------------------------------------


def test_tasks_list_with_and_without_json_on_an_empty_queue(cereal: Run) -> None:
    empty = cereal("tasks", "list")
    assert empty.returncode == 0
    assert empty.stdout.split() == [
        "ID",
        "TASK",
        "WORKFLOW",
        "INSTANCE",
        "STATE",
        "TRY",
        "ENQUEUED",
        "HEARTBEAT",
        "PARAMETERS",
    ]
    assert _json(cereal("tasks", "list", "--task", "slow", "--json")) == []


def test_migrate_status_migrate_and_check(cereal: Run, pg_dsn: str, schema: str) -> None:
    before = cereal("check")
    assert before.returncode == 1
    _one_error_line(before, repr(schema), "does not exist")
    failed = cereal("check", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["ok"] is False

    status = _json(cereal("migrate", "--status", "--json"))
    assert status["current"] is False and status["applied"] == []
    assert "pending" in cereal("migrate", "--status").stdout

    migrated = _json(cereal("migrate", "--json"))
    assert migrated["current"] is True and migrated["applied"] == status["pending"]
    again = cereal("migrate")
    assert again.returncode == 0 and "up to date" in again.stdout

    check = cereal("check")
    assert check.returncode == 0 and "ok" in check.stdout
    document = _json(cereal("check", "--json"))
    assert document["ok"] is True and document["pending"] == []


def test_check_fails_with_the_reason_when_the_database_does_not_answer(cereal: Run) -> None:
    result = cereal("--dsn", UNREACHABLE, "check")
    assert result.returncode == 1
    _one_error_line(result, "connect")


def test_print_sql_touches_no_database_and_builds_a_current_schema(
    cereal: Run, pg_dsn: str, schema: str
) -> None:
    result = cereal("--dsn", UNREACHABLE, "--schema", schema, "migrate", "--print-sql")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(result.stdout.encode())  # type: ignore[call-overload]
    assert _json(cereal("migrate", "--status", "--json"))["current"] is True
    assert cereal("check").returncode == 0


def test_options_come_from_the_environment_and_the_command_line_wins(
    cereal: Run, schema: str
) -> None:
    assert cereal("migrate").returncode == 0
    assert cereal("instances", "enqueue", "sleepy", "env").returncode == 0
    as_json = cereal("instances", "list", extra_env={"CEREAL_JSON": "1"})
    assert json.loads(as_json.stdout)[0]["instance_name"] == "env"
    other = cereal("--schema", schema + "_other", "check")
    assert other.returncode == 1
    bad = cereal("instances", "list", extra_env={"CEREAL_JSON": "maybe"})
    assert bad.returncode == 2
    _one_error_line(bad, "CEREAL_JSON")


def test_log_format_json_writes_one_object_per_line_on_stderr(cereal: Run) -> None:
    result = cereal("--log-format", "json", "-v", "migrate")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    applied = [r for r in records if r["event"] == "applied migration"]
    assert applied and {"time", "level", "logger", "schema", "version"} <= applied[0].keys()
    assert applied[0]["logger"] == "cereal.migrations"
    assert "applied" in result.stdout  # the command's own output stays on stdout


def test_web_without_the_extra_is_a_clear_error(cereal: Run) -> None:
    try:
        import cereal.web  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        result = cereal("web", "--port", "0")
        assert result.returncode == 1
        _one_error_line(result, "cereal[web]")
    else:
        pytest.skip("the cereal[web] extra is installed")


def test_help_lists_every_command() -> None:
    result = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("worker", "instances", "schedules", "tasks", "migrate", "check", "demo", "web"):
        assert command in result.stdout
