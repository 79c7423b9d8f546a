"""The core depends on the storage seam only: no backend or database client is imported
outside ``cereal/backends/``, and ``import cereal`` loads none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cereal

PACKAGE = Path(cereal.__file__).resolve().parent
FORBIDDEN = ("psycopg", "psycopg_pool", "cereal.backends")
DEFAULT_DRIVER = ("config.py", "default_driver")
"""The one place allowed to import a backend: the lazy import of the default driver."""
TOOLING = {"testing/pytest_plugin.py"}
"""Tooling whose fixtures are PostgreSQL drivers (the pytest plugin): it may import the
backend lazily, inside its fixtures, but never psycopg."""


def _forbidden_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, enclosing function) of each forbidden import in ``path``."""
    tree = ast.parse(path.read_text("utf-8"))
    found: list[tuple[int, str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = child.name
            modules: list[str] = []
            if isinstance(child, ast.Import):
                modules = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                modules = [child.module]
            for module in modules:
                if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
                    found.append((child.lineno, module, function))
            visit(child, name)

    visit(tree, None)
    return found


def test_no_module_outside_the_backends_imports_a_backend_or_psycopg() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "backends" or relative.as_posix() in TOOLING:
            continue
        for line, module, function in _forbidden_imports(path):
            if (str(relative), function) == DEFAULT_DRIVER and module == "cereal.backends.postgres":
                continue
            offenders.append(f"cereal/{relative}:{line} imports {module}")
    assert offenders == []


def test_the_pytest_plugin_imports_the_backend_lazily_and_never_psycopg() -> None:
    for path in TOOLING:
        for line, module, function in _forbidden_imports(PACKAGE / path):
            assert module.startswith("cereal.backends."), f"cereal/{path}:{line} imports {module}"
            if function is None:  # at module level: only for type checking
                text = (PACKAGE / path).read_text("utf-8").splitlines()
                assert text[line - 1].startswith("    "), f"cereal/{path}:{line} imports {module}"


def test_the_default_driver_import_is_there_and_lazy() -> None:
    imports = _forbidden_imports(PACKAGE / DEFAULT_DRIVER[0])
    assert [(module, function) for _, module, function in imports] == [
        ("cereal.backends.postgres", DEFAULT_DRIVER[1])
    ]


def test_importing_cereal_loads_no_backend() -> None:
    code = (
        "import sys, cereal, cereal.manager, cereal.driver, cereal.dispatch, cereal.task_pools\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN[:2]!r}"
        " or m.startswith('cereal.backends')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
