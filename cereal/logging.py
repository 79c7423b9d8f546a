"""cereal's loggers: structlog's bound context, delivered through the standard ``logging`` module.

Every module logs through :func:`get_logger`, which returns a structlog logger bound to the
stdlib logger of the same name (``cereal``, ``cereal.<part>``), whatever the application did
with ``structlog.configure``. So an application that configures no logging sees nothing from
cereal on stdout (Python's last-resort handler prints warnings and errors on stderr), and
``logging.getLogger("cereal").setLevel(...)`` or any handler controls it as usual.

A record's message is the event followed by its context as ``key=value`` pairs; the context
itself is kept on the record as the ``cereal`` attribute (a dict) for structured handlers.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["CONTEXT_ATTRIBUTE", "Logger", "configure_console_logging", "get_logger"]

CONTEXT_ATTRIBUTE = "cereal"
"""Name of the :class:`logging.LogRecord` attribute holding an event's bound context."""

Logger = structlog.stdlib.BoundLogger


def _to_record(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    event = str(event_dict.pop("event", ""))
    exc_info = event_dict.pop("exc_info", None)
    context = dict(event_dict)
    text = " ".join([event, *(f"{k}={v!r}" for k, v in context.items())])
    extra = {CONTEXT_ATTRIBUTE: {"event": event, **context}}
    kwargs: dict[str, Any] = {"msg": text, "extra": extra}
    if exc_info:
        kwargs["exc_info"] = exc_info
    return kwargs


_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    _to_record,
]


def get_logger(name: str) -> Logger:
    """A structlog logger writing to the stdlib logger ``name`` (a ``cereal.`` name)."""
    logger: Logger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return logger


def configure_console_logging(level: int = logging.INFO) -> None:
    """Show cereal's log records as timestamped lines on stderr (used by the ``cereal``
    command; applications configure logging themselves)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("cereal")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
