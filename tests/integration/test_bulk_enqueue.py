"""Bulk enqueue on PostgreSQL: one statement, the pairs not enqueued, nothing written on bad
input, and managers woken for the new instances."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cereal import Manager, WorkflowStatus
from cereal.errors import CerealError, InvalidNameError, SerializationError
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for

MakeManager = Callable[..., Manager]


def stored(m: Manager) -> dict[str, Any]:
    """Live instances and start events as stored: ``{instance_name: (parameters, events)}``."""
    with m.driver.connection() as conn:
        rows = conn.execute(
            "SELECT i.workflow_name || '/' || i.instance_name, i.parameters,"
            " (SELECT count(*) FROM workflow_events e"
            "  WHERE e.instance_id = i.id AND e.event_type = 'start')"
            " FROM workflow_instances i"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_returns_the_pairs_live_already_and_repeated(make_manager: MakeManager) -> None:
    m = make_manager()
    m.enqueue_workflow("w", "a", "old")
    skipped = m.enqueue_workflows(
        [
            ("w", "a", "new"),
            ("w", "b", 1),
            ("v", "c", None),
            ("w", "b", 2),
            ("v", "d", {"k": [1, 2]}),
            ("w", "a", "again"),
        ]
    )
    assert skipped == [("w", "a"), ("w", "b"), ("w", "a")]
    assert stored(m) == {
        "w/a": ("old", 1),
        "w/b": (1, 1),
        "v/c": (None, 1),
        "v/d": ({"k": [1, 2]}, 1),
    }
    assert m.get_workflow_instance("v", "d").status is WorkflowStatus.STARTING


def test_every_new_pair_is_enqueued_from_any_iterable(make_manager: MakeManager) -> None:
    m = make_manager()
    assert m.enqueue_workflows(("w", f"i{i}", i) for i in range(500)) == []
    rows = stored(m)
    assert len(rows) == 500
    assert rows["w/i499"] == (499, 1)


def test_empty_input_writes_nothing(make_manager: MakeManager) -> None:
    m = make_manager()
    assert m.enqueue_workflows([]) == []
    assert m.enqueue_workflows(iter(())) == []
    assert stored(m) == {}


@pytest.mark.parametrize(
    ("bad", "error", "named"),
    [
        (("w", "", 1), InvalidNameError, "instance_name"),
        (("w" * 201, "x", 1), InvalidNameError, "workflow_name"),
        ((None, "x", 1), InvalidNameError, "workflow_name"),
        (("w", "x", float("nan")), SerializationError, "'w'/'x'"),
        (("w", "x", object()), SerializationError, "'w'/'x'"),
        (("w", "x"), CerealError, "('w', 'x')"),
        ("wx1", CerealError, "'wx1'"),
    ],
)
def test_bad_input_raises_before_anything_is_written(
    make_manager: MakeManager, bad: Any, error: type[Exception], named: str
) -> None:
    m = make_manager()
    items = [("w", "fine1", 1), ("w", "fine2", 2), bad]
    with pytest.raises(error) as info:
        m.enqueue_workflows(items)
    assert named in str(info.value)
    assert stored(m) == {}


def test_items_that_are_not_iterable_are_rejected(make_manager: MakeManager) -> None:
    m = make_manager()
    for items in (None, 3, "abc"):
        with pytest.raises(CerealError, match="items must be an iterable"):
            m.enqueue_workflows(items)  # type: ignore[arg-type]


def test_enqueued_instances_run_on_a_manager_woken_by_notification(
    make_manager: MakeManager,
) -> None:
    # The worker polls once a minute: only the notification can wake it in time.
    worker = make_manager(workflow_poll_interval=60)
    worker.register_workflow_executor(
        "w", Flow(on_start=lambda inst, ev: inst.complete(inst.parameters * 2))
    )
    worker.register_workflow_executor(
        "v", Flow(on_start=lambda inst, ev: inst.complete(-inst.parameters))
    )
    worker.start()
    client = make_manager()
    items = [("w" if i % 2 else "v", f"i{i}", i) for i in range(40)]
    assert client.enqueue_workflows(items) == []
    for wf, name, value in items:
        info = client.await_workflow(wf, name, timeout=15)
        assert info.status is WorkflowStatus.COMPLETED
        assert info.result == (value * 2 if wf == "w" else -value)
    wait_for(lambda: stored(client) == {})


def test_a_pair_can_be_enqueued_again_in_bulk_once_finished(make_manager: MakeManager) -> None:
    m = make_manager()
    m.register_workflow_executor("w", Flow(on_start=lambda inst, ev: inst.complete("done")))
    m.start()
    assert m.enqueue_workflows([("w", "a", 1)]) == []
    m.await_workflow("w", "a", timeout=15)
    assert m.enqueue_workflows([("w", "a", 2), ("w", "a", 3)]) == [("w", "a")]
    info = m.await_workflow("w", "a", timeout=15)
    assert info.parameters == 2
