"""ChainWorkflowExecutor, one callback at a time (upstream's chain_test.go, every scenario)."""

from __future__ import annotations

from typing import Any

import pytest

from cereal.errors import CerealError, InvalidExecutorError, WorkflowInstanceNotFoundError
from cereal.patterns import ChainState, ChainWorkflowExecutor
from cereal.testing import (
    CallbackOutcome,
    cancel_event,
    run_callback,
    signal_event,
    start_event,
    task_complete_event,
)
from tests.helpers.scripted import SignalSub, Sub, state


def continuing(payload: Any = None, *tasks: tuple[str, Any]) -> Any:
    """A handler that enqueues ``tasks`` and continues with ``payload``."""

    def handler(inst: Any, ev: Any) -> Any:
        for name, params in tasks:
            inst.enqueue_task(name, params)
        return inst.continue_with(payload)

    return handler


def completing(result: Any = None, enqueue: str | None = None) -> Any:
    def handler(inst: Any, ev: Any) -> Any:
        if enqueue:
            inst.enqueue_task(enqueue)  # dropped: the sub-workflow completes
        return inst.complete(result)

    return handler


def failing(error: str = "fail", enqueue: str | None = None) -> Any:
    def handler(inst: Any, ev: Any) -> Any:
        if enqueue:
            inst.enqueue_task(enqueue)
        return inst.fail(error)

    return handler


def chain_payload(*states: dict[str, Any], cancelled: bool = False) -> dict[str, Any]:
    return {"cancelled": cancelled, "workflows": list(states)}


def workflows(outcome: CallbackOutcome) -> list[dict[str, Any]]:
    value = outcome.payload if outcome.decision == "continue" else outcome.result
    return value["workflows"]  # type: ignore[no-any-return]


# -- construction ---------------------------------------------------------------------------------


def test_chain_needs_at_least_one_executor() -> None:
    with pytest.raises(CerealError, match="at least one"):
        ChainWorkflowExecutor()


def test_chain_rejects_an_object_that_is_not_a_workflow_executor() -> None:
    with pytest.raises(InvalidExecutorError, match="chain sub-workflow 1"):
        ChainWorkflowExecutor(Sub(), "not an executor")  # type: ignore[arg-type]


# -- on_start, one executor -----------------------------------------------------------------------


def test_single_chain_fails_when_parameters_count_differs_from_executors() -> None:
    chain = ChainWorkflowExecutor(Sub())
    out = run_callback(chain, start_event(), parameters=[None, None])
    assert out.decision == "fail"
    assert "1 sub-workflow" in (out.error or "") and "give 2" in (out.error or "")


def test_chain_fails_when_parameters_are_not_a_list() -> None:
    out = run_callback(ChainWorkflowExecutor(Sub()), start_event(), parameters={"a": 1})
    assert out.decision == "fail"
    assert "must be a list" in (out.error or "")


def test_single_chain_gives_the_sub_workflow_its_parameters_and_continues() -> None:
    sub = Sub(
        on_start=lambda inst, ev: continuing(
            {"value": inst.parameters["value"]}, ("task1", None), ("task2", {"x": 1})
        )(inst, ev)
    )
    out = run_callback(ChainWorkflowExecutor(sub), start_event(), parameters=[{"value": "w1"}])
    assert out.decision == "continue"
    assert sub.calls == [("on_start", {"value": "w1"}, None, 0, 0)]
    assert [(name, params) for name, params, _ in out.tasks] == [
        ("task1", None),
        ("task2", {"x": 1}),
    ]
    assert out.payload["cancelled"] is False
    assert workflows(out) == [state(payload={"value": "w1"}, enqueued_tasks=2)]


def test_single_chain_completes_when_its_sub_workflow_completes_dropping_its_tasks() -> None:
    sub = Sub(on_start=completing({"value": "w1"}, enqueue="task1"))
    out = run_callback(ChainWorkflowExecutor(sub), start_event(), parameters=[None])
    assert out.decision == "complete"
    assert out.tasks == []
    assert out.result == {
        "cancelled": False,
        "workflows": [state(result={"value": "w1"}, finished=True)],
    }


def test_single_chain_completes_with_the_error_when_its_sub_workflow_fails() -> None:
    sub = Sub(on_start=failing("fail", enqueue="task1"))
    out = run_callback(ChainWorkflowExecutor(sub), start_event(), parameters=[None])
    assert out.decision == "complete"
    assert out.result == {"cancelled": False, "workflows": [state(error="fail", finished=True)]}


# -- on_start, several executors ------------------------------------------------------------------


def test_chain_fails_when_fewer_parameters_than_executors() -> None:
    out = run_callback(ChainWorkflowExecutor(Sub(), Sub()), start_event(), parameters=[None])
    assert out.decision == "fail"
    assert "2 sub-workflow" in (out.error or "") and "give 1" in (out.error or "")


def test_chain_starts_only_the_first_sub_workflow() -> None:
    first = Sub(on_start=continuing({"p": 1}, ("task1", None), ("task2", None)))
    second = Sub()
    out = run_callback(ChainWorkflowExecutor(first, second), start_event(), parameters=[1, 2])
    assert out.decision == "continue"
    assert out.task_names == ["task1", "task2"]
    assert workflows(out) == [state(payload={"p": 1}, enqueued_tasks=2)]
    assert second.calls == []


def test_chain_starts_the_next_sub_workflow_when_the_first_completes_at_once() -> None:
    first = Sub(on_start=completing({"r": 1}, enqueue="ignored"))
    second = Sub(on_start=continuing({"p": 2}, ("task1", {"TaskValue": "w2"})))
    out = run_callback(ChainWorkflowExecutor(first, second), start_event(), parameters=["w1", "w2"])
    assert out.decision == "continue"
    assert [(n, p) for n, p, _ in out.tasks] == [("task1", {"TaskValue": "w2"})]
    assert second.calls == [("on_start", "w2", None, 0, 0)]
    assert workflows(out) == [
        state(result={"r": 1}, finished=True),
        state(payload={"p": 2}, enqueued_tasks=1),
    ]


def test_chain_completes_when_every_sub_workflow_completes_at_once() -> None:
    chain = ChainWorkflowExecutor(Sub(on_start=completing("r1")), Sub(on_start=completing("r2")))
    out = run_callback(chain, start_event(), parameters=[None, None])
    assert out.decision == "complete"
    assert out.result == {
        "cancelled": False,
        "workflows": [state(result="r1", finished=True), state(result="r2", finished=True)],
    }


def test_chain_completes_with_the_error_when_the_second_sub_workflow_fails() -> None:
    chain = ChainWorkflowExecutor(Sub(on_start=completing("r1")), Sub(on_start=failing("fail")))
    out = run_callback(chain, start_event(), parameters=[None, None])
    assert out.decision == "complete"
    assert workflows(out) == [
        state(result="r1", finished=True),
        state(error="fail", finished=True),
    ]


def test_chain_stops_when_the_first_sub_workflow_fails() -> None:
    second = Sub()
    chain = ChainWorkflowExecutor(Sub(on_start=failing("fail")), second)
    out = run_callback(chain, start_event(), parameters=[None, None])
    assert out.decision == "complete"
    assert workflows(out) == [state(error="fail", finished=True)]
    assert second.calls == []


# -- on_task_complete -----------------------------------------------------------------------------


def test_chain_task_result_fails_when_parameters_count_differs() -> None:
    chain = ChainWorkflowExecutor(Sub(), Sub())
    out = run_callback(
        chain,
        task_complete_event("task1"),
        parameters=[None],
        payload=chain_payload(state(enqueued_tasks=1)),
    )
    assert out.decision == "fail"
    assert "give 1" in (out.error or "")


def test_chain_task_result_fails_when_no_sub_workflow_has_started() -> None:
    out = run_callback(
        ChainWorkflowExecutor(Sub(), Sub()), task_complete_event("task1"), parameters=[None, None]
    )
    assert out.decision == "fail"
    assert "task1" in (out.error or "") and "before any sub-workflow started" in (out.error or "")


def test_chain_absorbs_a_late_result_for_a_finished_sub_workflow() -> None:
    first = Sub(
        on_start=continuing(None, ("work", {"n": 1}), ("work", {"n": 2})),
        on_task=completing("first done"),
    )
    second = Sub(on_start=continuing("second running", ("work", {"n": 1})))
    chain = ChainWorkflowExecutor(first, second)
    params = [None, None]
    started = run_callback(chain, start_event(), parameters=params)
    # The first sub-workflow completes on its second task; its first is still out.
    first_task, second_task = started.task_routes
    step = run_callback(
        chain,
        task_complete_event("work", "b", parameters={"n": 2}, route=second_task),
        parameters=params,
        payload=started.payload,
        enqueued_tasks=2,
    )
    assert step.decision == "continue"
    assert [c[0] for c in second.calls] == ["on_start"]
    # The late result of the first sub-workflow's task carries the same parameters as the
    # second sub-workflow's task: its route takes it to the first one.
    late = run_callback(
        chain,
        task_complete_event("work", "a", parameters={"n": 1}, route=first_task),
        parameters=params,
        payload=step.payload,
        enqueued_tasks=3,
        completed_tasks=1,
    )
    assert late.decision == "continue"
    assert [c[0] for c in first.calls] == ["on_start", "on_task_complete"]
    assert [c[0] for c in second.calls] == ["on_start"]
    assert workflows(late) == [
        state(result="first done", enqueued_tasks=2, completed_tasks=2, finished=True),
        state(payload="second running", enqueued_tasks=1),
    ]


def test_chain_delivers_a_result_to_its_sub_workflow_which_can_complete() -> None:
    def on_task(inst: Any, ev: Any) -> Any:
        assert (inst.total_completed_tasks, inst.total_enqueued_tasks) == (1, 1)
        inst.enqueue_task("ignored")
        return inst.complete()

    chain = ChainWorkflowExecutor(Sub(), Sub(on_task=on_task))
    out = run_callback(
        chain,
        task_complete_event("task1"),
        parameters=[None, None],
        payload=chain_payload(state(finished=True), state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert workflows(out) == [
        state(finished=True),
        state(enqueued_tasks=1, completed_tasks=1, finished=True),
    ]


def test_chain_delivers_a_result_to_its_sub_workflow_which_can_fail() -> None:
    chain = ChainWorkflowExecutor(Sub(), Sub(on_task=failing("fail")))
    out = run_callback(
        chain,
        task_complete_event("task1"),
        parameters=[None, None],
        payload=chain_payload(state(finished=True), state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert workflows(out)[1] == state(
        error="fail", enqueued_tasks=1, completed_tasks=1, finished=True
    )


def test_chain_delivers_a_result_to_its_sub_workflow_which_can_continue() -> None:
    def on_task(inst: Any, ev: Any) -> Any:
        inst.enqueue_task("task1", {"TaskValue": "w2"})
        assert (inst.total_completed_tasks, inst.total_enqueued_tasks) == (1, 2)
        return inst.continue_with(None)

    chain = ChainWorkflowExecutor(Sub(), Sub(on_task=on_task))
    out = run_callback(
        chain,
        task_complete_event("task1"),
        parameters=[None, None],
        payload=chain_payload(state(finished=True), state(enqueued_tasks=1)),
        enqueued_tasks=1,
    )
    assert out.decision == "continue"
    assert [(n, p) for n, p, _ in out.tasks] == [("task1", {"TaskValue": "w2"})]
    assert workflows(out) == [state(finished=True), state(enqueued_tasks=2, completed_tasks=1)]


def test_chain_starts_the_next_sub_workflow_when_one_completes_on_a_result() -> None:
    first = Sub(on_task=completing({"PayloadValue": "w1"}))
    second = Sub(on_start=continuing({"PayloadValue": "w2"}, ("task2", {"TaskValue": "t"})))
    out = run_callback(
        ChainWorkflowExecutor(first, second),
        task_complete_event("task1"),
        parameters=[None, "second"],
        payload=chain_payload(state(enqueued_tasks=1)),
        enqueued_tasks=1,
    )
    assert out.decision == "continue"
    assert [(n, p) for n, p, _ in out.tasks] == [("task2", {"TaskValue": "t"})]
    assert second.calls == [("on_start", "second", None, 0, 0)]
    assert workflows(out) == [
        state(result={"PayloadValue": "w1"}, enqueued_tasks=1, completed_tasks=1, finished=True),
        state(payload={"PayloadValue": "w2"}, enqueued_tasks=1),
    ]


def test_chain_stops_when_a_sub_workflow_fails_on_a_result() -> None:
    second = Sub()
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_task=failing("fail")), second),
        task_complete_event("task1"),
        parameters=[None, None],
        payload=chain_payload(state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert workflows(out) == [
        state(error="fail", enqueued_tasks=1, completed_tasks=1, finished=True)
    ]
    assert second.calls == []


def test_chain_completes_when_the_next_sub_workflow_completes_in_on_start() -> None:
    chain = ChainWorkflowExecutor(
        Sub(on_task=completing("w1")), Sub(on_start=completing({"PayloadValue": "w2"}))
    )
    out = run_callback(
        chain,
        task_complete_event("task1"),
        parameters=[None, None],
        payload=chain_payload(state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert workflows(out) == [
        state(result="w1", enqueued_tasks=1, completed_tasks=1, finished=True),
        state(result={"PayloadValue": "w2"}, finished=True),
    ]


def test_chain_completes_when_the_next_sub_workflow_fails_in_on_start() -> None:
    second = Sub(on_start=failing("fail"))
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_task=completing("w1")), second),
        task_complete_event("task1"),
        parameters=[None, {"Value": "w2"}],
        payload=chain_payload(state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert second.calls[0][1] == {"Value": "w2"}
    assert workflows(out)[1] == state(error="fail", finished=True)


def test_chain_task_parameters_reach_task_and_sub_workflow_unaltered() -> None:
    seen: list[Any] = []

    def on_task(inst: Any, ev: Any) -> Any:
        seen.append(ev.result.parameters)
        return inst.complete(ev.result.value)

    chain = ChainWorkflowExecutor(Sub(on_start=continuing(None, ("t", [1, 2])), on_task=on_task))
    started = run_callback(chain, start_event(), parameters=[None])
    assert started.tasks[0][1] == [1, 2]  # a list: upstream could only route objects
    done = run_callback(
        chain,
        task_complete_event("t", "ok", parameters=[1, 2]),
        parameters=[None],
        payload=started.payload,
        enqueued_tasks=1,
    )
    assert seen == [[1, 2]]
    assert done.result == {
        "cancelled": False,
        "workflows": [state(result="ok", enqueued_tasks=1, completed_tasks=1, finished=True)],
    }


def test_chain_result_carries_no_routing_records() -> None:
    chain = ChainWorkflowExecutor(
        Sub(on_start=continuing(None, ("t", 1), ("t", 2)), on_task=completing("x"))
    )
    started = run_callback(chain, start_event(), parameters=[None])
    done = run_callback(
        chain,
        task_complete_event("t", parameters=2),
        parameters=[None],
        payload=started.payload,
        enqueued_tasks=2,
    )
    assert done.decision == "complete"
    assert set(done.result) == {"cancelled", "workflows"}


# -- on_cancel ------------------------------------------------------------------------------------


def test_chain_cancel_fails_when_parameters_count_differs() -> None:
    out = run_callback(ChainWorkflowExecutor(Sub(), Sub()), cancel_event(), parameters=[None])
    assert out.decision == "fail"
    assert "give 1" in (out.error or "")


def test_chain_cancel_fails_when_no_sub_workflow_has_started() -> None:
    out = run_callback(ChainWorkflowExecutor(Sub(), Sub()), cancel_event(), parameters=[1, 2])
    assert out.decision == "fail"
    assert "before any sub-workflow started" in (out.error or "")


def test_chain_stops_when_the_current_sub_workflow_fails_on_cancel() -> None:
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_cancel=failing("fail")), Sub()),
        cancel_event(),
        parameters=[None, None],
        payload=chain_payload(state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert out.result == {
        "cancelled": True,
        "workflows": [state(error="fail", enqueued_tasks=1, finished=True)],
    }


def test_chain_stops_when_the_current_sub_workflow_completes_on_cancel() -> None:
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_cancel=completing({"PayloadValue": "w1"})), Sub()),
        cancel_event(),
        parameters=[None, None],
        payload=chain_payload(state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert out.result == {
        "cancelled": True,
        "workflows": [state(result={"PayloadValue": "w1"}, enqueued_tasks=1, finished=True)],
    }


def test_chain_goes_on_when_the_current_sub_workflow_continues_on_cancel() -> None:
    first = Sub(on_cancel=continuing({"PayloadValue": "w1"}, ("task1", {"TaskValue": "t"})))
    out = run_callback(
        ChainWorkflowExecutor(first, Sub()),
        cancel_event(),
        parameters=[{"Value": "w1"}, None],
        payload=chain_payload(state(enqueued_tasks=1)),
    )
    assert out.decision == "continue"
    assert first.calls[0][1] == {"Value": "w1"}
    assert [(n, p) for n, p, _ in out.tasks] == [("task1", {"TaskValue": "t"})]
    assert out.payload["cancelled"] is True
    assert workflows(out) == [state(payload={"PayloadValue": "w1"}, enqueued_tasks=2)]


def test_cancelled_chain_stops_when_the_current_sub_workflow_completes() -> None:
    second = Sub()
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_task=completing({"PayloadValue": "w1"})), second),
        task_complete_event("task1"),
        parameters=[None, None],
        payload=chain_payload(state(enqueued_tasks=1), cancelled=True),
    )
    assert out.decision == "complete"
    assert out.result == {
        "cancelled": True,
        "workflows": [
            state(result={"PayloadValue": "w1"}, enqueued_tasks=1, completed_tasks=1, finished=True)
        ],
    }
    assert second.calls == []


def test_cancelled_chain_stops_when_the_current_sub_workflow_fails() -> None:
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_task=failing("fail")), Sub()),
        task_complete_event("task1"),
        parameters=[None, None],
        payload=chain_payload(state(enqueued_tasks=1), cancelled=True),
    )
    assert out.decision == "complete"
    assert out.result == {
        "cancelled": True,
        "workflows": [state(error="fail", enqueued_tasks=1, completed_tasks=1, finished=True)],
    }


# -- signals, errors, readers ---------------------------------------------------------------------


def test_chain_sends_a_signal_to_the_current_sub_workflow() -> None:
    first = SignalSub(on_signal=lambda inst, ev: inst.continue_with({"got": ev.payload}))
    second = SignalSub(on_signal=lambda inst, ev: inst.continue_with("wrong"))
    out = run_callback(
        ChainWorkflowExecutor(Sub(), first, second),
        signal_event("poke", {"n": 1}),
        parameters=[None, None, None],
        payload=chain_payload(state(finished=True), state(payload="before", enqueued_tasks=1)),
    )
    assert out.decision == "continue"
    assert [c[0] for c in first.calls] == ["on_signal"]
    assert second.calls == []
    assert workflows(out)[1] == state(payload={"got": {"n": 1}}, enqueued_tasks=1)


def test_chain_signal_to_a_sub_workflow_without_on_signal_changes_nothing() -> None:
    payload = chain_payload(state(payload="before", enqueued_tasks=1))
    out = run_callback(
        ChainWorkflowExecutor(Sub(), Sub()),
        signal_event("poke"),
        parameters=[None, None],
        payload=payload,
    )
    assert out.decision == "continue"
    assert out.payload == payload


def test_chain_starts_the_next_sub_workflow_when_one_completes_on_a_signal() -> None:
    first = SignalSub(on_signal=completing("done"))
    second = Sub(on_start=continuing("started"))
    out = run_callback(
        ChainWorkflowExecutor(first, second),
        signal_event("finish"),
        parameters=[None, None],
        payload=chain_payload(state(payload="running")),
    )
    assert out.decision == "continue"
    assert workflows(out) == [state(result="done", finished=True), state(payload="started")]


def test_a_sub_workflow_that_raises_fails_with_an_error_naming_it() -> None:
    def boom(inst: Any, ev: Any) -> Any:
        raise ValueError("boom")

    out = run_callback(
        ChainWorkflowExecutor(Sub(on_start=completing()), Sub(on_start=boom)),
        start_event(),
        parameters=[None, None],
    )
    assert out.decision == "complete"
    error = workflows(out)[1]["error"]
    assert "chain sub-workflow 1" in error and "ValueError: boom" in error


def test_a_sub_workflow_returning_a_non_decision_fails_with_an_error_naming_it() -> None:
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_start=lambda inst, ev: "yes")),  # type: ignore[arg-type,return-value]
        start_event(),
        parameters=[None],
    )
    assert workflows(out)[0]["error"] == (
        "on_start of chain sub-workflow 0 (Sub) returned str instead of a Decision"
    )


def test_a_sub_workflow_with_a_non_json_payload_fails() -> None:
    out = run_callback(
        ChainWorkflowExecutor(Sub(on_start=continuing({1, 2}))), start_event(), parameters=[None]
    )
    assert out.decision == "complete"
    assert "payload of chain sub-workflow 0" in workflows(out)[0]["error"]


def test_chain_state_reads_live_and_finished_values() -> None:
    chain = ChainWorkflowExecutor(Sub(on_start=completing("r")), Sub(on_start=continuing("p")))
    out = run_callback(chain, start_event(), parameters=["a", "b"])
    live = ChainState.from_value(out.payload, ["a", "b"], is_running=True)
    assert live.is_running and not live.cancelled
    assert live.sub_workflow(0).completed and live.sub_workflow(0).result == "r"
    assert live.sub_workflow(1).parameters == "b" and live.sub_workflow(1).payload == "p"
    with pytest.raises(WorkflowInstanceNotFoundError, match="sub-workflow 2"):
        live.sub_workflow(2)
    with pytest.raises(CerealError, match="not a chain"):
        ChainState.from_value({"workflows": {}}, is_running=False)
