"""``cereal worker APP``: run an application's Manager until SIGTERM or SIGINT.

``APP`` is ``module:attribute`` (the module is imported with the current directory on
``sys.path``; the attribute may be dotted): a :class:`~cereal.Manager`, or a callable taking
no arguments that returns one. The command-line options are applied with
:meth:`Manager.configure` before :meth:`Manager.start`. ``--dsn`` and ``--schema``, when
given, are exported as ``CEREAL_DATABASE_URL`` and ``CEREAL_SCHEMA`` before the module is
imported, so an application that builds its driver from them follows the command line.

The first SIGTERM or SIGINT stops the manager gracefully (``stop(--stop-timeout)``: no new
work is taken, running handlers and tasks get that long to finish and record their
results) and the command exits 0. A second signal exits at once with code 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from cereal.cli.options import (
    EXIT_ERROR,
    EXIT_OK,
    CommandError,
    Context,
    UsageError,
    add_option,
    positive_int,
    seconds,
)
from cereal.logging import get_logger

if TYPE_CHECKING:
    from cereal import Manager

__all__ = ["DEFAULT_STOP_TIMEOUT", "add_parser", "load_app"]

DEFAULT_STOP_TIMEOUT = 25.0
"""Seconds a graceful stop may take: under Kubernetes' default 30-second grace period."""

log = get_logger("cereal.worker")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("worker", help="run an application's workflows and tasks")
    add_option(
        parser,
        "app",
        env="CEREAL_APP",
        nargs="?",
        metavar="APP",
        help="module:attribute naming a Manager or a function returning one",
    )
    add_option(
        parser,
        "--no-scheduler",
        action="store_true",
        help="do not run the schedule loop in this worker",
    )
    add_option(
        parser,
        "--stop-timeout",
        metavar="S",
        type=seconds,
        default=DEFAULT_STOP_TIMEOUT,
        help=f"seconds a graceful stop may take (default {DEFAULT_STOP_TIMEOUT:g})",
    )
    add_option(
        parser,
        "--workflow-workers",
        metavar="N",
        type=positive_int,
        help="concurrent workflow-event handlers (default: the app's setting)",
    )
    # Options of optional parts are added here and act in _before_start().
    add_option(
        parser,
        "--metrics-port",
        metavar="N",
        type=tcp_port,
        help="serve Prometheus metrics on http://0.0.0.0:N/metrics (needs cereal[web])",
    )
    parser.set_defaults(run=run)


def load_app(spec: str) -> Manager:
    """Import ``module:attribute`` and return the Manager it names (or builds)."""
    from cereal import Manager

    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"APP must be module:attribute, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise CommandError(
            f"cannot import APP module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, Manager):
        return target
    if callable(target):
        try:
            built = target()
        except (Exception, SystemExit) as exc:
            raise CommandError(f"APP {spec!r} raised {type(exc).__name__}: {exc}") from None
        if isinstance(built, Manager):
            return built
        raise CommandError(f"APP {spec!r} returned {type(built).__name__}, not a cereal Manager")
    raise CommandError(
        f"APP {spec!r} is {type(target).__name__}, not a cereal Manager or a function returning one"
    )


def tcp_port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(f"must be a TCP port (1-65535), got {text!r}")
    return value


def _before_start(manager: Manager, args: argparse.Namespace) -> None:
    """Start the optional parts of the worker: the metrics endpoint."""
    if args.metrics_port is None:
        return
    try:
        from cereal.web.metrics import start_metrics_server
    except ImportError as exc:
        raise CommandError(
            f"--metrics-port needs the web extra: pip install 'cereal[web]' ({exc})"
        ) from None
    try:
        start_metrics_server(args.metrics_port, manager.driver)
    except OSError as exc:
        raise CommandError(f"cannot serve metrics on port {args.metrics_port}: {exc}") from None


def run(ctx: Context, args: argparse.Namespace) -> int:
    if not args.app:
        raise UsageError("worker: APP is required (module:attribute, or set CEREAL_APP)")
    if ctx.args.dsn:
        os.environ["CEREAL_DATABASE_URL"] = ctx.args.dsn
    if ctx.args.schema:
        os.environ["CEREAL_SCHEMA"] = ctx.args.schema
    manager = load_app(args.app)
    used = getattr(getattr(manager, "driver", None), "schema", None)
    if ctx.args.schema and used is not None and used != ctx.args.schema:
        log.warning(
            "the app's manager uses another schema than --schema/CEREAL_SCHEMA",
            app=args.app,
            schema=used,
            asked=ctx.args.schema,
        )
    manager.configure(
        scheduler=False if args.no_scheduler else None,
        workflow_workers=args.workflow_workers,
    )
    _before_start(manager, args)

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            sys.stderr.write(f"cereal worker: second {name}: exiting at once\n")
            sys.stderr.flush()
            os._exit(EXIT_ERROR)
        log.info("stopping on signal", signal=name, timeout=args.stop_timeout)
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        manager.start()
        log.info("worker started", app=args.app, pid=os.getpid())
        while not stopping.wait(0.5):
            pass
        manager.stop(args.stop_timeout)
        log.info("worker stopped", app=args.app)
    finally:
        if not stopping.is_set():
            manager.stop(args.stop_timeout)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK
