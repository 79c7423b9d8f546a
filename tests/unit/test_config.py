"""Manager options: one frozen config object, checked by one small set of helpers."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cereal.config import (
    MAX_SECONDS,
    ManagerConfig,
    count,
    default_driver,
    flag,
    optional_count,
    optional_seconds,
    seconds,
)
from cereal.errors import CerealError


def test_defaults_are_the_documented_ones() -> None:
    config = ManagerConfig()
    assert (config.workflow_poll_interval, config.task_poll_interval) == (5.0, 5.0)
    assert (config.workflow_workers, config.event_batch_size) == (4, 128)
    assert (config.heartbeat_interval, config.lost_task_timeout) == (5.0, 30.0)
    assert config.scheduler is True
    assert config.history_max_age == 30 * 86400.0
    assert config.history_max_runs is None
    assert config.history_prune_interval == 60.0
    assert config.on_workflow_complete is None
    assert config.close_driver is None


def test_every_field_is_documented() -> None:
    source = ManagerConfig.__module__
    assert source == "cereal.config"
    import inspect

    text = inspect.getsource(ManagerConfig)
    for field in dataclasses.fields(ManagerConfig):
        declaration = text.split(f"    {field.name}:", 1)[1]
        assert declaration.split("\n", 2)[1].strip().startswith('"""'), field.name


def test_the_config_is_frozen() -> None:
    config = ManagerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workflow_workers = 8  # type: ignore[misc]


def test_unknown_options_are_named() -> None:
    with pytest.raises(CerealError, match=r"unknown Manager option\(s\): bogus, worker"):
        ManagerConfig.from_options(worker=2, bogus=1, workflow_workers=2)


def test_lost_task_timeout_must_exceed_the_heartbeat_interval() -> None:
    with pytest.raises(CerealError, match=r"lost_task_timeout .* heartbeat_interval"):
        ManagerConfig(heartbeat_interval=5, lost_task_timeout=5)


def test_options_are_normalised() -> None:
    config = ManagerConfig.from_options(workflow_poll_interval=1, scheduler=0, close_driver=1)
    assert config.workflow_poll_interval == 1.0 and isinstance(config.workflow_poll_interval, float)
    assert config.scheduler is False and config.close_driver is True


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, MAX_SECONDS * 2, True, "1", None])
def test_seconds_rejects_what_is_not_a_positive_duration(value: object) -> None:
    with pytest.raises(CerealError, match=r"^interval must be a positive number of seconds"):
        seconds("interval", value)


def test_seconds_can_raise_another_type_and_cap_lower() -> None:
    assert seconds("t", 86400, maximum=86400) == 86400.0
    with pytest.raises(ValueError, match="at most 86400"):
        seconds("t", 86401, maximum=86400, error=ValueError)


def test_optional_variants_take_none() -> None:
    assert optional_seconds("t", None) is None
    assert optional_count("n", None) is None
    assert optional_count("n", 0) == 0
    with pytest.raises(CerealError, match=r"^n must be a non-negative int or None, got -1$"):
        optional_count("n", -1)


@pytest.mark.parametrize(("value", "minimum"), [(0, 1), (1, 2), (True, 0), (1.0, 0), ("3", 0)])
def test_count_rejects_ints_out_of_range_and_non_ints(value: object, minimum: int) -> None:
    with pytest.raises(CerealError, match=r"^workers must be"):
        count("workers", value, minimum=minimum)


def test_count_messages_say_the_range() -> None:
    with pytest.raises(CerealError, match="must be a positive int, got 0"):
        count("w", 0)
    with pytest.raises(CerealError, match="must be an int >= 2, got 1"):
        count("w", 1, minimum=2)
    with pytest.raises(CerealError, match=r"must be a non-negative int \(at most 3\), got 4"):
        count("w", 4, minimum=0, maximum=3)


def test_flag_takes_bools_only() -> None:
    assert flag("enabled", False) is False
    with pytest.raises(CerealError, match="enabled must be a bool, got 1"):
        flag("enabled", 1)


def test_the_default_driver_uses_cereal_schema_unless_a_schema_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = "postgresql://nowhere.invalid/db"  # nothing connects until the driver is used
    monkeypatch.delenv("CEREAL_SCHEMA", raising=False)
    assert default_driver(dsn).schema == "cereal"
    monkeypatch.setenv("CEREAL_SCHEMA", "billing")
    assert default_driver(dsn).schema == "billing"
    assert default_driver(dsn, schema="other").schema == "other"
    monkeypatch.setenv("CEREAL_SCHEMA", "no spaces allowed")
    with pytest.raises(CerealError, match="schema"):
        default_driver(dsn)
