"""cereal's logs go through stdlib loggers named ``cereal.*`` and keep their bound context."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cereal.logging import CONTEXT_ATTRIBUTE, JsonFormatter, configure_logging, get_logger


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    """A handler on the ``cereal`` logger; the logger's settings are restored after."""
    logger = logging.getLogger("cereal")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    handler = _Records()
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def test_an_app_that_configures_nothing_sees_nothing_on_stdout() -> None:
    program = (
        "from cereal.logging import get_logger\n"
        "log = get_logger('cereal.manager')\n"
        "log.info('workflow finished', workflow='w', instance='i')\n"
        "log.warning('signal discarded', workflow='w', instance='i')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    # Python's last-resort handler shows warnings (not info) on stderr.
    assert "signal discarded" in result.stderr
    assert "workflow finished" not in result.stderr


def test_the_cereal_logger_level_controls_what_is_emitted(records: _Records) -> None:
    log = get_logger("cereal.test_level")
    logging.getLogger("cereal").setLevel(logging.WARNING)
    log.info("hidden")
    log.warning("shown")
    logging.getLogger("cereal").setLevel(logging.DEBUG)
    log.debug("now shown")
    assert [r.getMessage() for r in records.records] == ["shown", "now shown"]
    assert {r.name for r in records.records} == {"cereal.test_level"}


def test_bound_context_reaches_the_record(records: _Records) -> None:
    logging.getLogger("cereal").setLevel(logging.INFO)
    log = get_logger("cereal.tasks").bind(workflow="order", instance="o-1")
    log.info("task finished", task="ship", task_id=42)
    (record,) = records.records
    context = getattr(record, CONTEXT_ATTRIBUTE)
    assert context == {
        "event": "task finished",
        "workflow": "order",
        "instance": "o-1",
        "task": "ship",
        "task_id": 42,
    }
    assert record.getMessage().startswith("task finished ")
    assert "task_id=42" in record.getMessage()


def test_json_formatter_writes_time_level_logger_event_and_context(records: _Records) -> None:
    logging.getLogger("cereal").setLevel(logging.INFO)
    get_logger("cereal.manager").warning("lost task", workflow="w", task_id=7)
    line = JsonFormatter().format(records.records[0])
    document = json.loads(line)
    assert document["level"] == "warning"
    assert document["logger"] == "cereal.manager"
    assert document["event"] == "lost task"
    assert (document["workflow"], document["task_id"]) == ("w", 7)
    assert document["time"].endswith("+00:00")


def test_json_formatter_handles_records_of_other_libraries_and_exceptions() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("app", logging.ERROR, __file__, 1, "x=%s", (1,), sys.exc_info())
    document = json.loads(JsonFormatter().format(record))
    assert (document["logger"], document["event"]) == ("app", "x=1")
    assert "ValueError: bad" in document["exception"]


def test_configure_logging_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="'xml'"):
        configure_logging(logging.INFO, "xml")
