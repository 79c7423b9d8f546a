"""The ``cereal`` command: run workers and inspect or act on workflows from a shell.

Global options come before the command: ``--dsn URL`` (else ``CEREAL_DATABASE_URL``, else
the embedded PostgreSQL), ``--schema NAME`` (else ``CEREAL_SCHEMA``, else ``cereal``),
``--log-format console|json`` (log lines on stderr) and ``-v`` (more log lines). Every option
``--some-name`` may also be set as ``CEREAL_SOME_NAME``. Exit codes: 0 success, 1 error,
2 usage, 3 not found; an error is one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from cereal import __version__
from cereal.cli import instances, schedules, tasks, worker
from cereal.cli.options import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    CommandError,
    Context,
    Parser,
    UsageError,
    add_option,
    add_output_options,
)
from cereal.cli.output import emit_json, print_table

__all__ = ["main"]


def _parser() -> Parser:
    parser = Parser(
        prog="cereal",
        description="Durable PostgreSQL-backed workflows: run workers, inspect and act on "
        "workflow instances, schedules and tasks.",
        epilog="Every --option can also be set as a CEREAL_OPTION variable (--dsn: "
        "CEREAL_DATABASE_URL). Exit codes: 0 ok, 1 error, 2 usage, 3 not found.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_option(
        parser,
        "--dsn",
        env="CEREAL_DATABASE_URL",
        metavar="URL",
        help="PostgreSQL URL (default: the embedded PostgreSQL)",
    )
    add_option(
        parser, "--schema", metavar="NAME", help="schema of cereal's tables (default cereal)"
    )
    add_option(
        parser,
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="log lines on stderr: readable text or one JSON object per line",
    )
    add_option(
        parser,
        "-v",
        "--verbose",
        env="CEREAL_VERBOSE",
        action="count",
        default=0,
        help="more log lines on stderr (repeat for debug)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    worker.add_parser(commands)
    instances.add_parser(commands)
    schedules.add_parser(commands)
    tasks.add_parser(commands)

    migrate = commands.add_parser("migrate", help="create or upgrade the schema")
    mode = migrate.add_mutually_exclusive_group()
    add_option(mode, "--status", action="store_true", help="show applied and pending migrations")
    add_option(mode, "--print-sql", action="store_true", help="print the SQL; touch no database")
    add_output_options(migrate, wide=False)
    migrate.set_defaults(run=_migrate)

    check = commands.add_parser(
        "check", help="exit 0 when the database answers and the schema is current"
    )
    add_output_options(check, wide=False)
    check.set_defaults(run=_check)

    demo = commands.add_parser("demo", help="run a small demo service and print what happens")
    demo.add_argument(
        "--schema", dest="demo_schema", metavar="NAME", help="schema (default cereal_demo)"
    )
    demo.set_defaults(run=_demo)

    web = commands.add_parser("web", help="serve the web dashboard (cereal[web])")
    add_option(web, "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add_option(web, "--port", type=int, default=8080, help="port to listen on (default 8080)")
    add_option(web, "--read-only", action="store_true", help="no actions, only views")
    web.set_defaults(run=_web)
    return parser


def _migrate(ctx: Context, args: argparse.Namespace) -> int:
    driver = ctx.driver()
    if args.print_sql:
        sys.stdout.write(driver.migration_sql())
        return EXIT_OK
    if args.status:
        status = driver.schema_status()
        applied = set(status.applied)
        if args.json:
            emit_json(
                {
                    "schema": status.schema,
                    "current": status.is_current,
                    "applied": status.applied,
                    "pending": [v for v, _ in status.pending],
                }
            )
        else:
            print_table(
                ("VERSION", "NAME", "STATE"),
                [
                    (f"{v:04d}", name, "applied" if v in applied else "pending")
                    for v, name in status.available
                ],
            )
        return EXIT_OK
    before = set(driver.schema_status().applied)
    driver.open()
    after = driver.schema_status()
    done = [v for v in after.applied if v not in before]
    if args.json:
        emit_json({"schema": after.schema, "current": after.is_current, "applied": done})
    elif done:
        names = dict(after.available)
        listed = ", ".join(f"{v:04d}_{names.get(v, '?')}" for v in done)
        print(f"schema {after.schema!r}: applied {listed}")
    else:
        print(f"schema {after.schema!r} is up to date")
    return EXIT_OK


def _check(ctx: Context, args: argparse.Namespace) -> int:
    driver = ctx.driver()
    problem: str | None = None
    document: dict[str, Any] = {"schema": driver.schema}
    try:
        driver.ping()
        status = driver.schema_status()
    except Exception as exc:  # reported, not raised: this is the probe's answer
        problem = " ".join(str(exc).split())
    else:
        document["applied"] = status.applied
        document["pending"] = [v for v, _ in status.pending]
        if not status.applied:
            problem = f"schema {driver.schema!r} does not exist or has no migrations"
        elif status.pending:
            pending = ", ".join(f"{v:04d}_{n}" for v, n in status.pending)
            problem = f"schema {driver.schema!r} needs migrations: {pending}"
    document["ok"] = problem is None
    document["error"] = problem
    if args.json:
        emit_json(document)
    elif problem is None:
        print(f"ok: database answers, schema {driver.schema!r} is current")
    if problem is not None:
        sys.stderr.write(f"cereal: error: {problem}\n")
        return EXIT_ERROR
    return EXIT_OK


def _demo(ctx: Context, args: argparse.Namespace) -> int:
    from cereal.demo import run_demo

    return run_demo(ctx.dsn, args.demo_schema or ctx.args.schema or "cereal_demo")


def _web(ctx: Context, args: argparse.Namespace) -> int:
    try:
        import cereal.web as web_module  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise CommandError(
            f"the web dashboard needs the cereal[web] extra (pip install 'cereal[web]'): {exc}"
        ) from None
    serve = getattr(web_module, "serve", None)
    if serve is None:
        raise CommandError("this version of cereal.web has no serve(): cannot run the dashboard")
    serve(ctx.driver(), host=args.host, port=args.port, read_only=args.read_only)
    return EXIT_OK


def _exit_code(exc: BaseException) -> int:
    from cereal.errors import WorkflowInstanceNotFoundError, WorkflowScheduleNotFoundError

    if isinstance(exc, CommandError):
        return exc.code
    if isinstance(exc, WorkflowInstanceNotFoundError | WorkflowScheduleNotFoundError):
        return EXIT_NOT_FOUND
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the ``cereal`` command with ``argv`` (default: ``sys.argv[1:]``); return its
    exit code."""
    from cereal.errors import CerealError
    from cereal.logging import configure_logging

    ctx: Context | None = None
    try:
        args = _parser().parse_args(argv)
        # Operator commands log warnings only (stderr stays for errors); the long-running
        # worker and demo log what they do. Each -v shows one level more.
        quiet = args.command not in ("worker", "demo", "web")
        base = logging.WARNING if quiet else logging.INFO
        level = max(logging.DEBUG, base - 10 * args.verbose)
        configure_logging(level, args.log_format)
        ctx = Context(args)
        code: int = args.run(ctx, args)
        return code
    except (CommandError, CerealError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        prog = exc.prog if isinstance(exc, UsageError) else "cereal"
        sys.stderr.write(f"{prog}: error: {message}\n")
        return _exit_code(exc)
    except KeyboardInterrupt:
        sys.stderr.write("cereal: interrupted\n")
        return EXIT_ERROR
    except Exception as exc:  # not expected: still one line (the traceback with -v)
        if ctx is not None and ctx.args.verbose:
            raise
        message = " ".join(str(exc).split())
        sys.stderr.write(f"cereal: error: {type(exc).__name__}: {message}\n")
        return EXIT_ERROR
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
