"""Security posture: cereal runs as a role that owns its schema and holds nothing else, never
unpickles anything, and never builds SQL text from values."""

from __future__ import annotations

import ast
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cereal import Decision, Manager, Task, WorkflowInstance, WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from cereal.backends.postgres.queries import load_migrations, load_queries
from cereal.errors import InvalidNameError, MigrationError
from tests.helpers.schedules import schedule_soon
from tests.helpers.timings import FAST_MANAGER_OPTIONS

PACKAGE = Path(__file__).resolve().parents[2] / "cereal"
WF = "wf"
AWAIT = 20.0


# -- a role with the least privileges -----------------------------------------------------------


@dataclass(frozen=True)
class AppRole:
    name: str
    dsn: str
    """Connects as the role."""


def as_superuser(pg_dsn: str, query: sql.Composable, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def app_role(pg_dsn: str, schema: str) -> Iterator[AppRole]:
    """A LOGIN role with a password and no other attribute; the test's schema is not created.
    The role, its sessions and everything it owns are removed afterwards."""
    name = f"cereal_app_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)  # works with trust and with password authentication
    role = sql.Identifier(name)
    as_superuser(
        pg_dsn,
        sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}"
        ).format(role, sql.Literal(password)),
    )
    try:
        yield AppRole(name, make_conninfo(pg_dsn, user=name, password=password))
    finally:
        as_superuser(
            pg_dsn,
            sql.SQL(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}"
            ).format(sql.Literal(name)),
        )
        as_superuser(
            pg_dsn, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        as_superuser(pg_dsn, sql.SQL("DROP OWNED BY {}").format(role))
        as_superuser(pg_dsn, sql.SQL("DROP ROLE {}").format(role))


def create_owned_schema(pg_dsn: str, schema: str, role: AppRole) -> None:
    as_superuser(
        pg_dsn,
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            sql.Identifier(schema), sql.Identifier(role.name)
        ),
    )


def assert_least_privileged(pg_dsn: str, role: AppRole) -> None:
    (attrs,) = as_superuser(
        pg_dsn,
        sql.SQL(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls,"
            " has_database_privilege(rolname, current_database(), 'CREATE')"
            " FROM pg_roles WHERE rolname = {}"
        ).format(sql.Literal(role.name)),
    )
    assert attrs == (False, False, False, False, False, False)
    memberships = as_superuser(
        pg_dsn,
        sql.SQL(
            "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
            " WHERE r.rolname = {}"
        ).format(sql.Literal(role.name)),
    )
    assert memberships == []


class Fanout:
    """Enqueues ``parameters["n"]`` tasks and completes with the sum of their results."""

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        for i in range(inst.parameters["n"]):
            inst.enqueue_task("square", i)
        return inst.continue_with(0)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        if not event.result.ok:
            return inst.fail(f"task failed: {event.result.error}")
        total = inst.payload + event.result.value
        if inst.total_completed_tasks == inst.total_enqueued_tasks:
            return inst.complete(total)
        return inst.continue_with(total)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")


def square(task: Task) -> int:
    value: int = task.parameters
    return value * value


def test_a_role_that_only_owns_its_schema_runs_workflows_tasks_and_schedules(
    pg_dsn: str, schema: str, app_role: AppRole
) -> None:
    create_owned_schema(pg_dsn, schema, app_role)
    assert_least_privileged(pg_dsn, app_role)

    finished: list[str] = []
    lock = threading.Lock()

    def on_complete(info: Any) -> None:
        with lock:
            finished.append(info.instance_name)

    drivers = [PostgresDriver(app_role.dsn, schema=schema) for _ in range(2)]
    managers = [
        Manager(
            drv,
            **FAST_MANAGER_OPTIONS,
            history_prune_interval=0.5,  # the pruner's advisory lock runs as the role too
            history_max_runs=100,
            on_workflow_complete=on_complete,
        )
        for drv in drivers
    ]
    try:
        for m in managers:
            m.register_workflow_executor(WF, Fanout())
            m.register_task_executor("square", square, workers=2)
            m.start()
        first, second = managers
        for i in range(4):
            first.enqueue_workflow(WF, f"run{i}", {"n": 5})
        for i in range(4):
            info = second.await_workflow(WF, f"run{i}", timeout=AWAIT)
            assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 30), info.error

        first.enqueue_workflow(WF, "cancelled", {"n": 0})
        second.cancel_workflow(WF, "cancelled")
        assert first.await_workflow(WF, "cancelled", timeout=AWAIT).status is WorkflowStatus.FAILED
        second.enqueue_workflow(WF, "killed", {"n": 0})
        first.kill_workflow(WF, "killed")
        assert second.get_workflow_instance(WF, "killed").error == "killed"

        schedule_soon(first, WF, "scheduled", {"n": 2}, lead=1.0)
        deadline = time.monotonic() + AWAIT
        while not first.list_workflow_instances(instance_name="scheduled"):
            assert time.monotonic() < deadline, "the schedule never ran"
            time.sleep(0.05)
        info = first.await_workflow(WF, "scheduled", timeout=AWAIT)
        assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 1)
        schedule = second.get_workflow_schedule(WF, "scheduled")
        assert schedule.last_enqueued_at is not None
        second.update_workflow_schedule(WF, "scheduled", enabled=False)
        second.delete_workflow_schedule(WF, "scheduled")
        assert "scheduled" in finished
    finally:
        for m in managers:
            m.stop(timeout=10)
        for drv in drivers:
            drv.close()

    owners = as_superuser(
        pg_dsn,
        sql.SQL(
            "SELECT DISTINCT c.relowner::regrole::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {}"
        ).format(sql.Literal(schema)),
    )
    assert owners == [(app_role.name,)]  # every table, index and sequence belongs to the role


def test_driver_migrates_a_schema_the_role_owns_without_create_on_the_database(
    pg_dsn: str, schema: str, app_role: AppRole
) -> None:
    create_owned_schema(pg_dsn, schema, app_role)
    assert_least_privileged(pg_dsn, app_role)
    versions = [version for version, _, _ in load_migrations()]

    drivers = [PostgresDriver(app_role.dsn, schema=schema) for _ in range(3)]
    errors: list[BaseException] = []

    def first_open(drv: PostgresDriver) -> None:
        try:
            drv.open()
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=first_open, args=(d,)) for d in drivers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(AWAIT)
        assert errors == []
        with drivers[0].connection() as conn:
            applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert sorted(applied) == versions
        drivers[0].close()
        drivers[0].open()  # already migrated: nothing to create
        assert drivers[1].get_workflow_instance(WF, "none") is None
    finally:
        for drv in drivers:
            drv.close()


def test_a_role_that_may_not_create_the_schema_gets_a_migration_error_saying_what_to_do(
    pg_dsn: str, schema: str, app_role: AppRole
) -> None:
    assert_least_privileged(pg_dsn, app_role)
    drv = PostgresDriver(app_role.dsn, schema=schema)
    try:
        with pytest.raises(MigrationError) as caught:
            drv.open()
        message = str(caught.value)
        assert f"cannot create schema {schema!r}" in message
        assert "permission denied" in message
        assert "AUTHORIZATION" in message and "CREATE on the database" in message

        # A schema that exists but belongs to someone else is refused just as clearly.
        as_superuser(pg_dsn, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        with pytest.raises(MigrationError) as caught:
            drv.open()
        assert repr(schema) in str(caught.value)
        assert "no USAGE privilege" in str(caught.value)
    finally:
        drv.close()


# -- static checks -----------------------------------------------------------------------------

SOURCES = sorted(PACKAGE.rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|GRANT|REVOKE|TRUNCATE|LISTEN|"
    r"NOTIFY|SET|COPY|LOCK)\b",  # upper case: how this code base writes SQL
)
EXECUTORS = {"execute", "executemany", "copy", "stream"}


def parsed() -> Iterator[tuple[Path, ast.Module]]:
    for path in SOURCES:
        yield path, ast.parse(path.read_text("utf-8"), filename=str(path))


def test_sources_are_found() -> None:
    names = {p.name for p in SOURCES}
    assert {"manager.py", "driver.py", "migrations.py", "codec.py"} <= names


def test_no_module_uses_pickle_marshal_or_shelve() -> None:
    found = []
    for path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            elif isinstance(node, ast.Call) and any(
                isinstance(arg, ast.Constant) and arg.value in UNSAFE_MODULES for arg in node.args
            ):
                mods = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
            else:
                continue
            for mod in mods:
                if isinstance(mod, str) and mod.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {mod}")
    assert found == []


def literal_text(node: ast.AST) -> str | None:
    """The literal text of a string-building expression (f-string, ``"..." % x``,
    ``"...".format(x)``, ``"..." + x``), or None if ``node`` builds no string."""
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and isinstance(side.value, str):
                return side.value
            inner = literal_text(side)
            if inner is not None:
                return inner
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
    ):
        return node.func.value.value
    return None


def is_composed_sql(node: ast.AST) -> bool:
    """``sql.SQL("...")`` or ``sql.SQL("...").format(...)`` with identifier/literal parts."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "SQL":
            return len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
        if node.func.attr == "format" and is_composed_sql(node.func.value):
            return all(
                isinstance(arg, ast.Call)
                and isinstance(arg.func, ast.Attribute)
                and arg.func.attr in {"Identifier", "Literal", "Placeholder", "SQL"}
                for arg in [*node.args, *(k.value for k in node.keywords)]
            )
    return False


def test_sql_is_never_built_from_values_in_python() -> None:
    problems = []
    for path, tree in parsed():
        where = path.relative_to(PACKAGE)
        # Names assigned from string-building expressions, per module (a coarse but safe view).
        built = {
            target.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and literal_text(node.value) is not None
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            text = literal_text(node)
            if text is not None and SQL_START.match(text):
                problems.append(f"{where}:{node.lineno}: SQL built as a string: {text[:40]!r}")
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in EXECUTORS
                and node.args
            ):
                continue
            query = node.args[0]
            if isinstance(query, ast.Constant) and isinstance(query.value, str):
                continue  # a literal statement; values go in the parameters
            if is_composed_sql(query):
                continue  # psycopg.sql composition: identifiers are quoted
            if isinstance(query, ast.Name) and query.id in built:
                problems.append(f"{where}:{node.lineno}: executes a string-built {query.id}")
            elif literal_text(query) is not None:
                problems.append(f"{where}:{node.lineno}: executes a string-built statement")
    assert problems == []


def test_queries_use_named_placeholders_only() -> None:
    queries = load_queries()
    assert len(queries) > 20
    for name, text in queries.items():
        code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        assert "{" not in code and "}" not in code, name  # no str.format fields
        leftover = re.sub(r"%\(\w+\)s", "", code)
        assert "%" not in leftover, f"{name}: only %(name)s placeholders are allowed"
        assert re.search(r"\$\d", code) is None, name
    for version, migration, text in load_migrations():
        assert "%" not in text and "{" not in text, f"{version:04d}_{migration}"


@pytest.mark.parametrize(
    "schema",
    ['cereal"; DROP TABLE x; --', "a b", "a.b", "", "é", "x" * 49, "pg_temp", "1abc", "a-b"],
)
def test_schema_names_that_would_need_quoting_are_refused(schema: str) -> None:
    with pytest.raises(InvalidNameError):
        PostgresDriver("postgresql://nowhere.invalid/db", schema=schema)


def test_readme_security_section_names_the_advisory_lock_namespace() -> None:
    from cereal.backends.postgres.migrations import LOCK_NAMESPACE

    readme = (PACKAGE.parent / "README.md").read_text("utf-8")
    security = readme[readme.index("### Security") : readme.index("## Layout")]
    assert str(LOCK_NAMESPACE) in security
    assert f"0x{LOCK_NAMESPACE:08x}" in security
