"""The ``cereal`` command: ``cereal demo``, ``cereal bench`` and ``cereal migrate``."""

from __future__ import annotations

import argparse
import logging
import sys

from cereal.logging import configure_console_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cereal", description=__doc__)
    parser.add_argument(
        "--dsn", help="PostgreSQL URL (default: $CEREAL_DATABASE_URL, else the embedded PostgreSQL)"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a small demo service and print what happens")
    demo.add_argument("--schema", default="cereal_demo")
    migrate = sub.add_parser("migrate", help="create or upgrade the schema, then exit")
    migrate.add_argument("--schema", default="cereal")
    bench = sub.add_parser("bench", help="run the benchmarks (see scripts/bench)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    configure_console_logging(logging.DEBUG if args.verbose else logging.INFO)
    if args.command == "demo":
        from cereal.demo import run_demo

        return run_demo(args.dsn, args.schema)
    if args.command == "migrate":
        from cereal.backends.postgres import PostgresDriver

        with PostgresDriver(args.dsn, schema=args.schema) as driver:
            print(f"schema {driver.schema!r} is up to date")
        return 0
    from cereal.bench import main as bench_main

    return bench_main(([f"--dsn={args.dsn}"] if args.dsn else []) + args.args)


if __name__ == "__main__":
    sys.exit(main())
