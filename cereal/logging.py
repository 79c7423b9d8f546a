"""Console logging set-up for the command line (libraries using cereal configure their own)."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_console_logging"]


def configure_console_logging(level: int = logging.INFO) -> None:
    """Render cereal's structlog events as readable, timestamped lines on stderr."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f", utc=False),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
