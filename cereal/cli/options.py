"""Shared pieces of the ``cereal`` command: options that also come from ``CEREAL_*``
variables, the exit codes and the errors that choose them, and the database a command uses.

Every option ``--some-name`` may also be set as ``CEREAL_SOME_NAME`` (``--dsn`` is
``CEREAL_DATABASE_URL``; ``-v`` is ``CEREAL_VERBOSE``, a count); the command line wins.
Flags take ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from cereal import Manager
    from cereal.driver import Driver

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "Context",
    "Parser",
    "UsageError",
    "add_option",
    "env_name",
    "json_argument",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class CommandError(Exception):
    """A failure the command reports as one line on stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CommandError):
    """The command line (or a ``CEREAL_*`` variable) is wrong: exit code 2."""

    def __init__(self, message: str, prog: str = "cereal") -> None:
        super().__init__(message, EXIT_USAGE)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


def env_name(flag: str) -> str:
    """The variable that sets option ``flag``: ``--stop-timeout`` -> ``CEREAL_STOP_TIMEOUT``."""
    return "CEREAL_" + flag.lstrip("-").upper().replace("-", "_")


def add_option(
    parser: argparse._ActionsContainer,
    *flags: str,
    env: str | None = None,
    **kwargs: Any,
) -> None:
    """Add an option whose default comes from its ``CEREAL_*`` variable when that is set."""
    long_flags = [f for f in flags if f.startswith("--")]
    variable = env or env_name(long_flags[0] if long_flags else flags[0])
    raw = os.environ.get(variable)
    action = kwargs.get("action")
    if raw is not None:
        if action in ("store_true", "store_false"):
            value = raw.strip().lower()
            if value not in _TRUE | _FALSE:
                raise UsageError(f"{variable} must be a yes/no flag (1 or 0), got {raw!r}")
            kwargs["default"] = (value in _TRUE) == (action == "store_true")
        else:
            convert: Callable[[str], Any] = kwargs.get("type") or str
            if action == "count":
                convert = int
            try:
                default = convert(raw)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"{variable}: invalid value {raw!r}: {exc}") from None
            choices = kwargs.get("choices")
            if choices is not None and default not in choices:
                allowed = ", ".join(map(str, choices))
                raise UsageError(f"{variable} must be one of {allowed}, got {raw!r}")
            kwargs["default"] = default
    if kwargs.get("help") not in (None, argparse.SUPPRESS):
        kwargs["help"] = f"{kwargs['help']} [env: {variable}]"
    parser.add_argument(*flags, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def json_argument(text: str | None, what: str) -> Any:
    """Decode a JSON command-line argument; bad JSON is a usage error naming it."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc}): {text!r}") from None


def add_output_options(parser: argparse.ArgumentParser, *, wide: bool = True) -> None:
    """``--json`` (and ``--wide`` for tables)."""
    add_option(parser, "--json", action="store_true", help="print one JSON document on stdout")
    if wide:
        add_option(
            parser, "--wide", action="store_true", help="do not cut long values to 80 columns"
        )


class Context:
    """The database a command works on, built on first use from the global options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._driver: Driver | None = None
        self._manager: Manager | None = None

    @property
    def dsn(self) -> str | None:
        dsn: str | None = self.args.dsn
        return dsn or None

    @property
    def schema(self) -> str:
        schema: str | None = self.args.schema
        return schema or "cereal"

    def driver(self) -> Driver:
        """The driver of ``--dsn``/``--schema`` (not opened: nothing is migrated yet)."""
        if self._driver is None:
            from cereal.config import default_driver

            self._driver = default_driver(self.dsn, schema=self.schema, pool_size=2)
        return self._driver

    def manager(self) -> Manager:
        """A manager for instance and schedule operations (never started)."""
        if self._manager is None:
            from cereal import Manager

            self._manager = Manager(self.driver(), scheduler=False)
        return self._manager

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
