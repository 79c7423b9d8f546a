"""Capturing what cereal logs, for tests that assert on log events."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cereal.logging import CONTEXT_ATTRIBUTE


class _Collector(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(getattr(record, CONTEXT_ATTRIBUTE, None) or {"event": record.getMessage()})
        fields["log_level"] = record.levelname.lower()
        self.entries.append(fields)


@contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect the records of the ``cereal`` loggers while the block runs.

    Each entry is a dict: ``event``, ``log_level`` (``"info"``, ``"warning"``, ...) and the
    event's context (``instance=...``, ``due_at=...``). The list fills while the block runs.
    """
    logger = logging.getLogger("cereal")
    collector = _Collector(level)
    saved = logger.level
    logger.addHandler(collector)
    logger.setLevel(level)
    try:
        yield collector.entries
    finally:
        logger.removeHandler(collector)
        logger.setLevel(saved)
