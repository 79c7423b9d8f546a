"""Hostile workflow, instance, task and schedule names: each is refused with ``InvalidNameError``
naming the argument, or stored and given back as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given

from cereal import WorkflowStatus
from cereal.errors import (
    InvalidNameError,
    WorkflowInstanceExistsError,
    WorkflowInstanceNotFoundError,
    WorkflowScheduleNotFoundError,
)
from tests.integration.bad_input.hostile import (
    SETTINGS,
    MakeManager,
    Noop,
    names,
    row_counts,
    valid_name,
)


def test_hostile_names_are_rejected_with_invalid_name_error_or_round_trip(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    registrar = make_manager(scheduler=False)  # never started: registration only
    counter = itertools.count()

    @SETTINGS
    @given(workflow_name=names, instance_name=names)
    def check(workflow_name: Any, instance_name: Any) -> None:
        before = row_counts(m)
        ok = valid_name(workflow_name) and valid_name(instance_name)
        pair = (workflow_name, instance_name)
        both = ("workflow_name", "instance_name")
        calls: list[tuple[tuple[str, ...], Callable[[], Any]]] = [
            (both, lambda: m.enqueue_workflow(*pair, {"n": 1})),
            (both, lambda: m.get_workflow_instance(*pair)),
            (both[:1], lambda: m.list_workflow_instances(workflow_name=workflow_name)),
            (both[1:], lambda: m.list_workflow_instances(instance_name=instance_name)),
            (both, lambda: m.cancel_workflow(*pair)),
            (both, lambda: m.kill_workflow(*pair)),
            (both, lambda: m.await_workflow(*pair, timeout=0)),
            (both, lambda: m.create_workflow_schedule(*pair, recurrence="FREQ=DAILY")),
            (both, lambda: m.update_workflow_schedule(*pair, enabled=False)),
            (both, lambda: m.get_workflow_schedule(*pair)),
            (both, lambda: m.delete_workflow_schedule(*pair)),
        ]
        if not ok:
            given_names = {"workflow_name": workflow_name, "instance_name": instance_name}
            for takes, call in calls:
                invalid = [kind for kind in takes if not valid_name(given_names[kind])]
                if len(takes) == 1 and given_names[takes[0]] is None:
                    invalid = []  # a list filter of None matches everything
                if not invalid:
                    continue
                with pytest.raises(InvalidNameError) as caught:
                    call()
                assert str(caught.value).startswith(invalid[0])  # names the argument
            assert row_counts(m) == before
        else:
            m.enqueue_workflow(*pair, {"n": 1})
            with pytest.raises(WorkflowInstanceExistsError) as exists:
                m.enqueue_workflow(*pair)
            assert repr(workflow_name) in str(exists.value)
            info = m.get_workflow_instance(*pair)
            assert (info.workflow_name, info.instance_name) == pair
            assert info.parameters == {"n": 1}
            listed = m.list_workflow_instances(workflow_name=workflow_name)
            assert pair in [(i.workflow_name, i.instance_name) for i in listed]
            m.cancel_workflow(*pair)
            m.kill_workflow(*pair)
            killed = m.await_workflow(*pair, timeout=5)
            assert (killed.status, killed.error) == (WorkflowStatus.FAILED, "killed")
            with pytest.raises(WorkflowInstanceNotFoundError):
                m.kill_workflow(*pair)
            m.create_workflow_schedule(*pair, recurrence="FREQ=DAILY", enabled=False)
            assert m.get_workflow_schedule(*pair).instance_name == instance_name
            m.delete_workflow_schedule(*pair)
            with pytest.raises(WorkflowScheduleNotFoundError):
                m.get_workflow_schedule(*pair)

        # Executors registered under the same names.
        for kind, register in (
            ("workflow_name", lambda n: registrar.register_workflow_executor(n, Noop())),
            ("task_name", lambda n: registrar.register_task_executor(n, lambda task: None)),
        ):
            for name in pair:
                if valid_name(name):
                    register(name)
                else:
                    with pytest.raises(InvalidNameError, match=kind):
                        register(name)
        next(counter)

    check()
