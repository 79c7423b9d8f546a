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

import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import structlog

__all__ = [
    "CONTEXT_ATTRIBUTE",
    "JsonFormatter",
    "Logger",
    "configure_console_logging",
    "configure_logging",
    "get_logger",
]

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


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``event``, the bound context (``workflow``, ``instance``, ``task``, ``task_id``, ...)
    and ``exception`` when there is one. Records from other libraries carry their message
    as ``event``."""

    def format(self, record: logging.LogRecord) -> str:
        context = getattr(record, CONTEXT_ATTRIBUTE, None)
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(context, dict):
            document.update(context)
        else:
            document["event"] = record.getMessage()
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=repr, ensure_ascii=False)


def configure_logging(level: int = logging.INFO, log_format: str = "console") -> None:
    """Send cereal's records to stderr, as readable lines (``console``) or one JSON object
    per line (``json``). Used by the ``cereal`` command; applications configure logging
    themselves. The root logger gets the same handler when it has none, so an application
    run by ``cereal worker`` logs in the same format."""
    if log_format not in ("console", "json"):
        raise ValueError(f"log_format must be 'console' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    cereal = logging.getLogger("cereal")
    cereal.handlers[:] = [handler]
    cereal.setLevel(level)
    cereal.propagate = False
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)


def configure_console_logging(level: int = logging.INFO) -> None:
    """Show cereal's log records as timestamped lines on stderr."""
    configure_logging(level, "console")
