"""Hostile parameters for enqueues and schedules: ``SerializationError``, or a round trip as JSON
would make it; a refused update leaves the schedule as it was.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given

from cereal.errors import (
    SerializationError,
    WorkflowInstanceNotFoundError,
)
from tests.integration.bad_input.hostile import (
    SETTINGS,
    WF,
    MakeManager,
    row_counts,
    same,
    storable,
    values,
)


def test_hostile_parameters_raise_serialization_error_or_round_trip(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    counter = itertools.count()

    @SETTINGS
    @given(value=values)
    def check(value: Any) -> None:
        name = f"p{next(counter)}"
        ok, expected = storable(value)
        before = row_counts(m)
        if not ok:
            with pytest.raises(SerializationError) as caught:
                m.enqueue_workflow(WF, name, value)
            assert f"parameters of workflow {WF!r}" in str(caught.value)
            with pytest.raises(SerializationError):
                m.create_workflow_schedule(WF, name, value, recurrence="FREQ=DAILY")
            assert row_counts(m) == before
            with pytest.raises(WorkflowInstanceNotFoundError):
                m.get_workflow_instance(WF, name)
            return
        m.enqueue_workflow(WF, name, value)
        assert same(expected, m.get_workflow_instance(WF, name).parameters)
        (listed,) = m.list_workflow_instances(workflow_name=WF, instance_name=name)
        assert same(expected, listed.parameters)
        m.create_workflow_schedule(WF, name, value, recurrence="FREQ=DAILY", enabled=False)
        assert same(expected, m.get_workflow_schedule(WF, name).parameters)
        m.kill_workflow(WF, name)
        assert same(expected, m.get_workflow_instance(WF, name).parameters)

    check()


def test_update_with_hostile_parameters_leaves_the_schedule_unchanged(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    m.create_workflow_schedule(WF, "s", {"keep": 1}, recurrence="FREQ=DAILY")
    original = m.get_workflow_schedule(WF, "s")

    @SETTINGS
    @given(value=values)
    def check(value: Any) -> None:
        ok, expected = storable(value)
        if ok:
            m.update_workflow_schedule(WF, "s", parameters=value)
            assert same(expected, m.get_workflow_schedule(WF, "s").parameters)
            m.update_workflow_schedule(WF, "s", parameters={"keep": 1})
        else:
            with pytest.raises(SerializationError):
                m.update_workflow_schedule(WF, "s", parameters=value, enabled=False)
        assert m.get_workflow_schedule(WF, "s") == original

    check()
