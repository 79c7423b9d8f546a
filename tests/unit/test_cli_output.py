"""The ``cereal`` command's tables and option parsing, without a database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from cereal.cli import main
from cereal.cli.options import Parser, UsageError, add_option, env_name
from cereal.cli.output import format_value, print_table


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main()`` configures the ``cereal`` and root loggers; put them back afterwards."""
    cereal, root = logging.getLogger("cereal"), logging.getLogger()
    saved = (cereal.level, cereal.propagate, list(cereal.handlers), list(root.handlers))
    yield
    cereal.setLevel(saved[0])
    cereal.propagate = saved[1]
    cereal.handlers[:] = saved[2]
    root.handlers[:] = saved[3]


def test_tables_fit_80_columns_by_cutting_json_first(capsys: pytest.CaptureFixture[str]) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    print_table(
        ("NAME", "WHEN", "PARAMETERS"),
        [("first", when, {"items": list(range(50))}), ("second", when, None)],
        cut_first=(2,),
    )
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].startswith('first   2026-01-02 03:04:05  {"items":[0,1,')
    assert lines[1].endswith("…")
    assert lines[2].split() == ["second", "2026-01-02", "03:04:05", "-"]


def test_wide_tables_keep_every_value_whole(capsys: pytest.CaptureFixture[str]) -> None:
    value = {"items": list(range(50))}
    print_table(("NAME", "PARAMETERS"), [("first", value)], wide=True)
    assert format_value(value) in capsys.readouterr().out


def test_option_names_map_to_cereal_variables() -> None:
    assert env_name("--stop-timeout") == "CEREAL_STOP_TIMEOUT"
    assert env_name("--json") == "CEREAL_JSON"


def test_variables_give_defaults_and_bad_ones_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CEREAL_LIMIT", "7")
    monkeypatch.setenv("CEREAL_WIDE", "yes")
    parser = Parser(prog="t")
    add_option(parser, "--limit", type=int)
    add_option(parser, "--wide", action="store_true")
    assert vars(parser.parse_args([])) == {"limit": 7, "wide": True}
    assert parser.parse_args(["--limit", "3"]).limit == 3
    monkeypatch.setenv("CEREAL_LIMIT", "many")
    with pytest.raises(UsageError, match="CEREAL_LIMIT"):
        add_option(Parser(prog="t"), "--limit", type=int)


def test_usage_errors_are_one_line_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["instances", "show", "only-workflow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cereal instances show: error: ")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    import cereal

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"cereal {cereal.__version__}\n"


def test_print_sql_needs_no_database(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "--dsn",
            "postgresql://nobody@127.0.0.1:1/none",
            "--schema",
            "s1",
            "migrate",
            "--print-sql",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert 'CREATE SCHEMA IF NOT EXISTS "s1";' in out
    assert "INSERT INTO schema_migrations (version, name) VALUES (1, 'core');" in out
