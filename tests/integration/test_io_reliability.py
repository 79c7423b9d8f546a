"""What the database can refuse or interrupt is confined and typed: oversized values fail
their own item, a read-only window loses no result, forged notifications change nothing, and
every public call raises only ``cereal.errors`` types."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cereal import Manager, Task, TaskStatus, WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.driver import StepOutcome, TaskOutcome
from cereal.errors import CerealError, DatabaseError, SerializationError
from cereal.task_pools.writer import ResultWriter
from cereal.workflow import PendingTask
from tests.helpers.logs import capture_logs
from tests.helpers.recorders import Flow
from tests.helpers.timings import FAST_MANAGER_OPTIONS

JSONB_LIMIT = 268435455
"""The most bytes PostgreSQL stores in one jsonb string (and in one jsonb container)."""


@pytest.fixture(scope="module")
def huge_text() -> str:
    """A string over the jsonb limit (~270 MiB): built once, shared by the module's tests."""
    return "x" * (JSONB_LIMIT + 15 * 2**20)


@pytest.fixture
def scratch_dsn(pg_dsn: str) -> Iterator[str]:
    """The DSN of a database created for this test alone (dropped after it), so that the
    test may make it read-only and terminate its sessions."""
    name = "cereal_scratch_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(pg_dsn)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _admin(dsn: str) -> psycopg.Connection[Any]:
    """A connection to the server's ``postgres`` database (outside the scratch database)."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = "postgres"
    return psycopg.connect(make_conninfo(**params), autocommit=True)


def _set_read_only(dsn: str, on: bool, *, terminate: bool) -> int:
    """Make new sessions of ``dsn``'s database read-only (or not) and, with ``terminate``,
    end its current sessions so that they reconnect (what a failover looks like)."""
    name = conninfo_to_dict(dsn)["dbname"]
    with _admin(dsn) as admin:
        value = sql.SQL("on" if on else "off")
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(name), value
            )
        )
        if not terminate:
            return 0
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        ).fetchall()
        return len(rows)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- item: values over the jsonb limit -----------------------------------------------------------


def test_a_refused_task_result_fails_that_task_and_the_rest_of_its_batch_is_recorded(
    driver: PostgresDriver,
) -> None:
    # PostgreSQL refuses "\u0000" in jsonb: a cheap stand-in for any value it will not store.
    for n in range(3):
        assert driver.enqueue_workflow("w", f"i{n}", None)
    with driver.claim_events(["w"], 10, 10) as batch:
        batch.commit(
            [
                StepOutcome(inst, tasks=[PendingTask("t", None)], enqueued_tasks=1)
                for inst in batch.instances
            ]
        )
    claimed, _ = driver.claim_tasks({"t": 10}, "me")
    assert len(claimed) == 3
    by_name = {c.instance_name: c for c in claimed}
    results = {"i0": '"fine"', "i1": '"\\u0000"', "i2": '"also fine"'}
    written: list[list[TaskOutcome]] = []
    done = threading.Event()

    def on_written(outcomes: list[TaskOutcome]) -> None:
        written.append(outcomes)
        done.set()

    writer = ResultWriter(driver, "me", on_written)
    for name, text in results.items():  # queued before the thread starts: one batch
        writer.put(TaskOutcome(by_name[name].id, "w", "success", result_json=text))
    with capture_logs() as logs:
        writer.start()
        assert done.wait(20), "the writer never finished the batch"
        writer.close()
        writer.join(5)
    assert [len(b) for b in written] == [3]
    with driver.connection() as conn:
        rows = conn.execute(
            "SELECT i.instance_name, e.task_status, e.task_result, e.task_error"
            " FROM workflow_events e JOIN workflow_instances i ON i.id = e.instance_id"
            " WHERE e.event_type = 'task_complete' ORDER BY i.instance_name"
        ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("i0", "success", "fine"),
        ("i1", "failed", None),
        ("i2", "success", "also fine"),
    ]
    error = rows[1][3]
    assert "the database refused the task's result" in error and "\\u0000" in error, error
    refused = [e for e in logs if e["event"] == "task result refused by the database"]
    assert refused and refused[0]["task_id"] == by_name["i1"].id, logs


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_values_over_the_jsonb_limit_are_serialization_errors_from_public_calls(
    make_manager: Callable[..., Manager], huge_text: str
) -> None:
    manager = make_manager()
    calls: dict[str, Callable[[], Any]] = {
        "enqueue_workflow": lambda: manager.enqueue_workflow("w", "big", huge_text),
        "create_workflow_schedule": lambda: manager.create_workflow_schedule(
            "w", "big", huge_text, recurrence="FREQ=DAILY"
        ),
        "enqueue_workflows": lambda: manager.enqueue_workflows(
            [("w", "small", None), ("w", "big-bulk", huge_text)]
        ),
        "aio.enqueue_workflow": lambda: asyncio.run(
            manager.aio.enqueue_workflow("w", "big-aio", huge_text)
        ),
    }
    for name, call in calls.items():
        with pytest.raises(SerializationError) as caught:
            call()
        assert isinstance(caught.value, DatabaseError), name
        assert not caught.value.transient, name
        assert "jsonb" in str(caught.value), (name, str(caught.value)[:300])
    assert manager.list_workflow_instances() == []
    assert manager.list_workflow_schedules() == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_oversized_results_and_payloads_fail_their_own_item_and_everything_else_goes_through(
    make_manager: Callable[..., Manager], huge_text: str
) -> None:
    def task(t: Task) -> Any:
        return huge_text if t.parameters == "big" else t.parameters

    def on_start(inst: Any, ev: Any) -> Any:
        kind = inst.parameters
        if kind == "big payload":
            return inst.continue_with(huge_text)
        if kind == "big result":
            return inst.complete(huge_text)
        inst.enqueue_task("t", "big" if kind == "big task" else kind)
        return inst.continue_with()

    def on_task(inst: Any, ev: Any) -> Any:
        r = ev.result
        if r.status is TaskStatus.SUCCESS:
            return inst.complete(r.value)
        return inst.fail(f"{r.status.value}: {r.error}")

    manager = make_manager(workflow_workers=1, lost_task_timeout=60)
    manager.register_workflow_executor("w", Flow(on_start=on_start, on_task=on_task))
    manager.register_task_executor("t", task, workers=4)
    # Small instances around the big ones: the dispatcher claims 1, 2, then 4 instances at a
    # time, so the big decisions share a commit with healthy ones.
    kinds = ["s0", "s1", "s2", "big payload", "s3", "big result", "s4", "big task", "s5", "s6"]
    for n, kind in enumerate(kinds):
        manager.enqueue_workflow("w", f"i{n}", kind)
    with capture_logs() as logs:
        manager.start()
        infos = {
            kind: manager.await_workflow("w", f"i{n}", timeout=600) for n, kind in enumerate(kinds)
        }
    for kind, info in infos.items():
        if kind.startswith("s"):
            assert info.status is WorkflowStatus.COMPLETED, (kind, info.error)
            assert info.result == kind
    for kind in ("big payload", "big result", "big task"):
        info = infos[kind]
        assert info.status is WorkflowStatus.FAILED, kind
        assert info.error is not None and "jsonb" in info.error, (kind, info.error[:300])
    assert "the database refused the task's result" in (infos["big task"].error or "")
    assert "cannot store the decision" in (infos["big payload"].error or "")
    assert "cannot store the decision" in (infos["big result"].error or "")
    assert not [e for e in logs if e["event"] == "cannot record task results"]


# -- item: a read-only window ------------------------------------------------------------------


def test_a_task_finishing_during_a_read_only_window_is_recorded_once_writes_come_back(
    scratch_dsn: str,
) -> None:
    schema = "ro_" + uuid.uuid4().hex[:8]
    started, release = threading.Event(), threading.Event()

    def task(t: Task) -> str:
        started.set()
        release.wait(30)
        return "value"

    def on_task(inst: Any, ev: Any) -> Any:
        r = ev.result
        return inst.complete(r.value) if r.ok else inst.fail(f"{r.status.value}: {r.error}")

    driver = PostgresDriver(scratch_dsn, schema=schema, connect_timeout=2)
    options = FAST_MANAGER_OPTIONS | {"lost_task_timeout": 7.0}
    manager = Manager(driver, close_driver=True, **options)
    manager.register_workflow_executor(
        "w", Flow(on_start=lambda i, e: i.enqueue_task("t") or i.continue_with(), on_task=on_task)
    )
    manager.register_task_executor("t", task)
    manager.start()
    try:
        manager.enqueue_workflow("w", "i")
        assert started.wait(20), "the task never started"
        with capture_logs() as logs:
            assert _set_read_only(scratch_dsn, True, terminate=True) >= 1
            try:
                release.set()  # the task finishes while nothing can be written
                time.sleep(3.5)
            finally:
                # Writable again; the sessions opened meanwhile stay read-only until cereal
                # drops them.
                _set_read_only(scratch_dsn, False, terminate=False)
            info = manager.await_workflow("w", "i", timeout=30)
        assert info.status is WorkflowStatus.COMPLETED, info.error
        assert info.result == "value"
        assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    finally:
        manager.stop(timeout=10)
        with _admin(scratch_dsn) as admin:  # let the scratch database go
            admin.execute(
                sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(
                    sql.Identifier(conninfo_to_dict(scratch_dsn)["dbname"])
                )
            )


# -- item: forged notifications ------------------------------------------------------------------


@pytest.fixture
def connect_only_role(pg_dsn: str) -> Iterator[str]:
    """The DSN of a login role with no privilege beyond connecting (dropped after the test)."""
    role = "cereal_forger_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    params = conninfo_to_dict(pg_dsn)
    params["user"] = role
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_forged_notifications_stop_nothing_and_crash_nothing(
    make_manager: Callable[..., Manager], connect_only_role: str, schema: str
) -> None:
    started, release = threading.Event(), threading.Event()
    cancelled: list[bool] = []

    def task(t: Task) -> str:
        started.set()
        release.wait(30)
        cancelled.append(t.cancelled.is_set())
        return "kept"

    def on_task(inst: Any, ev: Any) -> Any:
        r = ev.result
        return inst.complete(r.value) if r.ok else inst.fail(f"{r.status.value}: {r.error}")

    manager = make_manager()
    manager.register_workflow_executor(
        "w", Flow(on_start=lambda i, e: i.enqueue_task("t") or i.continue_with(), on_task=on_task)
    )
    manager.register_task_executor("t", task)
    manager.start()
    manager.enqueue_workflow("w", "victim")
    assert started.wait(20), "the task never started"
    driver = manager.driver
    assert isinstance(driver, PostgresDriver)
    with driver.connection() as conn:
        row = conn.execute("SELECT id FROM workflow_instances WHERE instance_name = 'victim'")
        instance_id = row.fetchone()[0]  # type: ignore[index]
    forged = [
        f"f{instance_id}",
        f"f{instance_id + 1}",
        "f\u00b2",  # a digit to str.isdigit(), not to int()
        "f-1",
        "f",
        "f" + "9" * 400,
        "ew",
        "tt",
        "e" + "x" * 7000,
        "s",
        "",
        "\u2603 garbage",
    ]
    with capture_logs() as logs:
        with psycopg.connect(connect_only_role, autocommit=True) as forger:
            for payload in forged:
                forger.execute("SELECT pg_notify(%s, %s)", (f"cereal_{schema}", payload))
        time.sleep(1.5)  # the listener has handled them (at once, on an idle machine)
        assert not [e for e in logs if e["event"] == "task stopped"], logs
        release.set()
        info = manager.await_workflow("w", "victim", timeout=20)
    assert info.status is WorkflowStatus.COMPLETED, info.error
    assert info.result == "kept"
    assert cancelled == [False]
    assert not [e for e in logs if e["event"] == "listen connection lost; reconnecting"], logs


# -- item: only cereal.errors types from public calls ---------------------------------------------


def _public_calls(manager: Manager) -> dict[str, Callable[[], Any]]:
    """Every instance and schedule operation of ``manager`` and ``manager.aio``, with
    arguments that are valid (so that only the database can make them fail)."""
    aio = manager.aio
    sync: dict[str, Callable[[], Any]] = {
        "enqueue_workflow": lambda: manager.enqueue_workflow("w", "new", {"a": 1}),
        "cancel_workflow": lambda: manager.cancel_workflow("w", "i"),
        "kill_workflow": lambda: manager.kill_workflow("w", "i"),
        "get_workflow_instance": lambda: manager.get_workflow_instance("w", "i"),
        "list_workflow_instances": lambda: manager.list_workflow_instances(),
        "await_workflow": lambda: manager.await_workflow("w", "i", timeout=0.5),
        "create_workflow_schedule": lambda: manager.create_workflow_schedule(
            "w", "new", None, recurrence="FREQ=DAILY"
        ),
        "update_workflow_schedule": lambda: manager.update_workflow_schedule(
            "w", "s", enabled=False
        ),
        "get_workflow_schedule": lambda: manager.get_workflow_schedule("w", "s"),
        "list_workflow_schedules": lambda: manager.list_workflow_schedules(),
        "delete_workflow_schedule": lambda: manager.delete_workflow_schedule("w", "s"),
    }
    if hasattr(manager, "enqueue_workflows"):
        sync["enqueue_workflows"] = lambda: manager.enqueue_workflows([("w", "bulk", None)])
    if hasattr(manager, "signal_workflow"):
        sync["signal_workflow"] = lambda: manager.signal_workflow("w", "i", "go", None)
    coroutines: dict[str, Callable[[], Any]] = {
        "enqueue_workflow": lambda: aio.enqueue_workflow("w", "new-aio", {"a": 1}),
        "enqueue_workflows": lambda: aio.enqueue_workflows([("w", "bulk-aio", None)]),
        "cancel_workflow": lambda: aio.cancel_workflow("w", "i"),
        "kill_workflow": lambda: aio.kill_workflow("w", "i"),
        "get_workflow_instance": lambda: aio.get_workflow_instance("w", "i"),
        "list_workflow_instances": lambda: aio.list_workflow_instances(),
        "await_workflow": lambda: aio.await_workflow("w", "i", timeout=0.5),
        "create_workflow_schedule": lambda: aio.create_workflow_schedule(
            "w", "new-aio", None, recurrence="FREQ=DAILY"
        ),
        "update_workflow_schedule": lambda: aio.update_workflow_schedule("w", "s", enabled=False),
        "get_workflow_schedule": lambda: aio.get_workflow_schedule("w", "s"),
        "list_workflow_schedules": lambda: aio.list_workflow_schedules(),
        "delete_workflow_schedule": lambda: aio.delete_workflow_schedule("w", "s"),
    }

    if hasattr(manager, "signal_workflow"):
        coroutines["signal_workflow"] = lambda: aio.signal_workflow("w", "i", "go", None)

    async def run_all() -> dict[str, BaseException | None]:
        found: dict[str, BaseException | None] = {}
        for name, make in coroutines.items():
            try:
                await make()
                found[name] = None
            except Exception as exc:
                found[name] = exc
        return found

    calls = dict(sync)
    calls["aio"] = lambda: asyncio.run(run_all())
    return calls


def _outcomes(manager: Manager) -> dict[str, BaseException | None]:
    found: dict[str, BaseException | None] = {}
    for name, call in _public_calls(manager).items():
        try:
            value = call()
        except Exception as exc:
            found[name] = exc
            continue
        if name == "aio":
            found |= {f"aio.{k}": v for k, v in value.items()}
        else:
            found[name] = None
    return found


def test_every_public_call_on_a_read_only_database_raises_only_cereal_errors(
    pg_dsn: str, schema: str, make_manager: Callable[..., Manager]
) -> None:
    writable = make_manager()
    writable.enqueue_workflow("w", "i")
    writable.create_workflow_schedule("w", "s", None, recurrence="FREQ=DAILY")
    params = conninfo_to_dict(pg_dsn)
    params["options"] = "-c default_transaction_read_only=on"
    manager = Manager(PostgresDriver(make_conninfo(**params), schema=schema), close_driver=True)
    try:
        found = _outcomes(manager)
    finally:
        manager.stop()
    writes = {
        "enqueue_workflow",
        "enqueue_workflows",
        "cancel_workflow",
        "kill_workflow",
        "signal_workflow",
        "create_workflow_schedule",
        "update_workflow_schedule",
        "delete_workflow_schedule",
    }
    leaked = {n: repr(e) for n, e in found.items() if e is not None and not _typed(e)}
    assert not leaked, leaked
    for name, exc in found.items():
        base = name.removeprefix("aio.")
        if base in writes:
            assert isinstance(exc, DatabaseError), (name, exc)
            assert exc.transient and "read-only" in str(exc), (name, exc)
        elif base == "await_workflow":
            assert isinstance(exc, TimeoutError), (name, exc)
        else:
            assert exc is None, (name, exc)


def test_every_public_call_on_a_dead_server_raises_a_transient_database_error(
    schema: str,
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{_unused_port()}/postgres"
    manager = Manager(PostgresDriver(dsn, schema=schema, connect_timeout=1), close_driver=True)
    try:
        found = _outcomes(manager)
    finally:
        manager.stop()
    wrong = {
        n: repr(e)
        for n, e in found.items()
        if not (isinstance(e, DatabaseError) and e.transient and not isinstance(e, psycopg.Error))
    }
    assert not wrong, wrong


def _typed(exc: BaseException) -> bool:
    """A cereal error, or the documented TimeoutError of a wait, and never psycopg's."""
    return isinstance(exc, CerealError | TimeoutError) and not isinstance(exc, psycopg.Error)
