"""ParallelWorkflowExecutor, one callback at a time (upstream's parallel_test.go, every
scenario)."""

from __future__ import annotations

from typing import Any

import pytest

from cereal.errors import CerealError, InvalidExecutorError, WorkflowInstanceNotFoundError
from cereal.patterns import ParallelState, ParallelWorkflowExecutor
from cereal.testing import (
    CallbackOutcome,
    cancel_event,
    run_callback,
    signal_event,
    start_event,
    task_complete_event,
)
from tests.helpers.scripted import SignalSub, Sub, state


def workflows(outcome: CallbackOutcome) -> dict[str, dict[str, Any]]:
    value = outcome.payload if outcome.decision == "continue" else outcome.result
    return value["workflows"]  # type: ignore[no-any-return]


def starts_task(task: str) -> Any:
    def handler(inst: Any, ev: Any) -> Any:
        inst.enqueue_task(task, {"TaskValue": task})
        assert (inst.total_completed_tasks, inst.total_enqueued_tasks) == (0, 1)
        return inst.continue_with({"PayloadValue": inst.parameters["Value"]})

    return handler


def parallel_payload(**states: dict[str, Any]) -> dict[str, Any]:
    return {"workflows": states}


# -- construction ---------------------------------------------------------------------------------


def test_parallel_takes_a_mapping_of_executors() -> None:
    with pytest.raises(CerealError, match="mapping"):
        ParallelWorkflowExecutor([Sub()])  # type: ignore[arg-type]


def test_parallel_rejects_an_object_that_is_not_a_workflow_executor() -> None:
    with pytest.raises(InvalidExecutorError, match="'b'"):
        ParallelWorkflowExecutor({"a": Sub(), "b": 3})  # type: ignore[dict-item]


# -- on_start -------------------------------------------------------------------------------------


def test_parallel_fails_on_a_key_without_executor_naming_it() -> None:
    out = run_callback(
        ParallelWorkflowExecutor({}), start_event(), parameters={"foo": None, "bar": None}
    )
    assert out.decision == "fail"
    assert "'bar'" in (out.error or "")


def test_parallel_fails_when_parameters_are_not_an_object() -> None:
    out = run_callback(ParallelWorkflowExecutor({"a": Sub()}), start_event(), parameters=["a"])
    assert out.decision == "fail"
    assert "must be an object" in (out.error or "")


def test_parallel_starts_every_sub_workflow_and_continues() -> None:
    w1, w2 = Sub(on_start=starts_task("testTask1")), Sub(on_start=starts_task("testTask2"))
    out = run_callback(
        ParallelWorkflowExecutor({"workflow2": w2, "workflow1": w1}),
        start_event(),
        parameters={"workflow2": {"Value": "p2"}, "workflow1": {"Value": "p1"}},
    )
    assert out.decision == "continue"
    # Sorted key order, and parameters exactly as the sub-workflows gave them.
    assert [(n, p) for n, p, _ in out.tasks] == [
        ("testTask1", {"TaskValue": "testTask1"}),
        ("testTask2", {"TaskValue": "testTask2"}),
    ]
    assert workflows(out) == {
        "workflow1": state(payload={"PayloadValue": "p1"}, enqueued_tasks=1),
        "workflow2": state(payload={"PayloadValue": "p2"}, enqueued_tasks=1),
    }


def test_parallel_continues_when_one_continues_and_one_completes() -> None:
    out = run_callback(
        ParallelWorkflowExecutor(
            {
                "workflow1": Sub(on_start=lambda inst, ev: inst.complete(inst.parameters)),
                "workflow2": Sub(on_start=starts_task("testTask2")),
            }
        ),
        start_event(),
        parameters={"workflow1": {"Value": "p1"}, "workflow2": {"Value": "p2"}},
    )
    assert out.decision == "continue"
    assert out.task_names == ["testTask2"]
    assert workflows(out) == {
        "workflow1": state(result={"Value": "p1"}, finished=True),
        "workflow2": state(payload={"PayloadValue": "p2"}, enqueued_tasks=1),
    }


def test_parallel_continues_when_one_continues_and_one_fails() -> None:
    out = run_callback(
        ParallelWorkflowExecutor(
            {
                "workflow1": Sub(on_start=lambda inst, ev: inst.fail("fail")),
                "workflow2": Sub(on_start=starts_task("testTask2")),
            }
        ),
        start_event(),
        parameters={"workflow1": {"Value": "p1"}, "workflow2": {"Value": "p2"}},
    )
    assert out.decision == "continue"
    assert workflows(out)["workflow1"] == state(error="fail", finished=True)
    assert workflows(out)["workflow2"]["finished"] is False


def test_parallel_completes_when_both_complete_at_once() -> None:
    done = Sub(on_start=lambda inst, ev: inst.complete(inst.parameters))
    out = run_callback(
        ParallelWorkflowExecutor({"workflow1": done, "workflow2": done}),
        start_event(),
        parameters={"workflow1": "p1", "workflow2": "p2"},
    )
    assert out.decision == "complete"
    assert out.result == {
        "workflows": {
            "workflow1": state(result="p1", finished=True),
            "workflow2": state(result="p2", finished=True),
        }
    }


def test_parallel_completes_when_both_fail_at_once() -> None:
    out = run_callback(
        ParallelWorkflowExecutor(
            {
                "workflow1": Sub(on_start=lambda inst, ev: inst.fail("fail1")),
                "workflow2": Sub(on_start=lambda inst, ev: inst.fail("fail2")),
            }
        ),
        start_event(),
        parameters={"workflow1": None, "workflow2": None},
    )
    assert out.decision == "complete"
    assert out.result == {
        "workflows": {
            "workflow1": state(error="fail1", finished=True),
            "workflow2": state(error="fail2", finished=True),
        }
    }


def test_parallel_with_no_sub_workflows_completes_at_once() -> None:
    out = run_callback(ParallelWorkflowExecutor({"a": Sub()}), start_event(), parameters={})
    assert out.decision == "complete" and out.result == {"workflows": {}}


# -- on_task_complete -----------------------------------------------------------------------------


def test_parallel_task_result_fails_without_a_parallel_state() -> None:
    out = run_callback(
        ParallelWorkflowExecutor({"workflow1": Sub()}),
        task_complete_event("testTask1"),
        parameters={"workflow1": None},
    )
    assert out.decision == "fail"
    assert "not a parallel state" in (out.error or "")


def test_parallel_task_result_fails_when_its_sub_workflow_has_no_executor() -> None:
    parallel = ParallelWorkflowExecutor({"workflow1": Sub(on_start=starts_task("t"))})
    started = run_callback(parallel, start_event(), parameters={"workflow1": {"Value": 1}})
    # The instance was started by a version of the service that had "workflow2" too (and
    # kept its routes in the payload).
    payload = started.payload
    payload["workflows"]["workflow2"] = state(enqueued_tasks=1)
    payload["routes"] = [["workflow2", "other", "0"]]
    out = run_callback(
        parallel, task_complete_event("other"), parameters={"workflow1": 1}, payload=payload
    )
    assert out.decision == "fail"
    assert "'workflow2'" in (out.error or "")


def test_parallel_task_result_fails_when_it_cannot_be_routed() -> None:
    out = run_callback(
        ParallelWorkflowExecutor({"workflow1": Sub(), "workflow2": Sub()}),
        task_complete_event("testTask1"),
        parameters={},
        payload=parallel_payload(workflow1=state(), workflow2=state()),
    )
    assert out.decision == "fail"
    assert "testTask1" in (out.error or "")


def test_parallel_does_not_deliver_to_a_finished_sub_workflow() -> None:
    def enqueues(*names: str) -> Any:
        def handler(inst: Any, ev: Any) -> Any:
            for name in names:
                inst.enqueue_task(name)
            return inst.continue_with(None)

        return handler

    quick = Sub(
        on_start=enqueues("slow", "fast"),
        on_task=lambda inst, ev: inst.complete(ev.result.value),
    )
    other = Sub(on_start=enqueues("x"))
    parallel = ParallelWorkflowExecutor({"workflow1": quick, "workflow2": other})
    started = run_callback(parallel, start_event(), parameters={"workflow1": 1, "workflow2": 2})
    slow, fast, _ = started.task_routes
    step = run_callback(
        parallel,
        task_complete_event("fast", "f", route=fast),
        parameters={"workflow1": 1, "workflow2": 2},
        payload=started.payload,
        enqueued_tasks=3,
    )
    assert step.decision == "continue"
    late = run_callback(
        parallel,
        task_complete_event("slow", "s", route=slow),
        parameters={"workflow1": 1, "workflow2": 2},
        payload=step.payload,
        enqueued_tasks=3,
        completed_tasks=1,
    )
    assert late.decision == "continue"
    assert [c[0] for c in quick.calls] == ["on_start", "on_task_complete"]
    assert workflows(late)["workflow1"] == state(
        result="f", enqueued_tasks=2, completed_tasks=2, finished=True
    )


def test_parallel_completes_when_the_last_sub_workflow_completes() -> None:
    def on_task(inst: Any, ev: Any) -> Any:
        assert (inst.total_completed_tasks, inst.total_enqueued_tasks) == (1, 1)
        return inst.complete({"PayloadValue": inst.parameters["Value"]})

    out = run_callback(
        ParallelWorkflowExecutor({"workflow2": Sub(on_task=on_task)}),
        task_complete_event("testTask1"),
        parameters={"workflow2": {"Value": "p2"}},
        payload=parallel_payload(workflow1=state(finished=True), workflow2=state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert out.result == {
        "workflows": {
            "workflow1": state(finished=True),
            "workflow2": state(
                result={"PayloadValue": "p2"}, enqueued_tasks=1, completed_tasks=1, finished=True
            ),
        }
    }


def test_parallel_completes_when_the_last_sub_workflow_fails() -> None:
    out = run_callback(
        ParallelWorkflowExecutor({"workflow2": Sub(on_task=lambda inst, ev: inst.fail("fail"))}),
        task_complete_event("testTask1"),
        parameters={},
        payload=parallel_payload(workflow1=state(finished=True), workflow2=state(enqueued_tasks=1)),
    )
    assert out.decision == "complete"
    assert workflows(out)["workflow2"] == state(
        error="fail", enqueued_tasks=1, completed_tasks=1, finished=True
    )


def test_parallel_routes_a_result_to_the_sub_workflow_that_enqueued_the_task() -> None:
    def start(inst: Any, ev: Any) -> Any:
        inst.enqueue_task("work", {"same": "parameters"})
        return inst.continue_with(None)

    a = Sub(on_start=start, on_task=lambda inst, ev: inst.complete(ev.result.value))
    b = Sub(on_start=start, on_task=lambda inst, ev: inst.complete(ev.result.value))
    parallel = ParallelWorkflowExecutor({"a": a, "b": b})
    params = {"a": "a", "b": "b"}
    started = run_callback(parallel, start_event(), parameters=params)
    assert started.tasks == [("work", {"same": "parameters"}, None)] * 2
    # b's task finishes first: same name, same parameters; its route tells them apart.
    out = run_callback(
        parallel,
        task_complete_event(
            "work", "from b", parameters={"same": "parameters"}, route=started.task_routes[1]
        ),
        parameters=params,
        payload=started.payload,
        enqueued_tasks=2,
    )
    assert [c[0] for c in a.calls] == ["on_start"]
    assert workflows(out)["b"]["result"] == "from b"
    assert workflows(out)["a"]["finished"] is False


# -- on_cancel and signals ------------------------------------------------------------------------


def test_parallel_cancel_fails_when_an_unfinished_sub_workflow_has_no_executor() -> None:
    out = run_callback(
        ParallelWorkflowExecutor({"workflow1": Sub(on_cancel=lambda inst, ev: inst.complete())}),
        cancel_event(),
        parameters={},
        payload=parallel_payload(workflow1=state(), workflow2=state()),
    )
    assert out.decision == "fail"
    assert "'workflow2'" in (out.error or "")


def test_parallel_cancel_ignores_finished_sub_workflows() -> None:
    out = run_callback(
        ParallelWorkflowExecutor({"workflow2": Sub(on_cancel=lambda inst, ev: inst.complete())}),
        cancel_event(),
        parameters={},
        payload=parallel_payload(workflow1=state(finished=True, error="failed"), workflow2=state()),
    )
    assert out.decision == "complete"
    assert out.result == {
        "workflows": {
            "workflow1": state(finished=True, error="failed"),
            "workflow2": state(finished=True),
        }
    }


def test_parallel_cancel_lets_sub_workflows_continue() -> None:
    def on_cancel(inst: Any, ev: Any) -> Any:
        inst.enqueue_task("cleanup", {"for": inst.parameters})
        assert (inst.total_completed_tasks, inst.total_enqueued_tasks) == (0, 2)
        return inst.continue_with("cleaning")

    parallel = ParallelWorkflowExecutor(
        {"workflow1": Sub(on_cancel=on_cancel), "workflow2": Sub(on_cancel=on_cancel)}
    )
    out = run_callback(
        parallel,
        cancel_event(),
        parameters={"workflow1": 1, "workflow2": 2},
        payload=parallel_payload(
            workflow1=state(enqueued_tasks=1), workflow2=state(enqueued_tasks=1)
        ),
    )
    assert out.decision == "continue"
    assert [(n, p) for n, p, _ in out.tasks] == [("cleanup", {"for": 1}), ("cleanup", {"for": 2})]
    assert workflows(out) == {
        "workflow1": state(payload="cleaning", enqueued_tasks=2),
        "workflow2": state(payload="cleaning", enqueued_tasks=2),
    }


def test_parallel_sends_a_signal_to_every_unfinished_sub_workflow_that_handles_signals() -> None:
    handler = SignalSub(on_signal=lambda inst, ev: inst.continue_with(ev.name))
    finished = SignalSub(on_signal=lambda inst, ev: inst.continue_with("wrong"))
    out = run_callback(
        ParallelWorkflowExecutor({"a": handler, "b": Sub(), "c": finished}),
        signal_event("poke"),
        parameters={"a": None, "b": None, "c": None},
        payload=parallel_payload(
            a=state(payload=0), b=state(payload="kept"), c=state(finished=True)
        ),
    )
    assert out.decision == "continue"
    assert workflows(out) == {
        "a": state(payload="poke"),
        "b": state(payload="kept"),
        "c": state(finished=True),
    }
    assert finished.calls == []


def test_parallel_state_reads_sub_workflows() -> None:
    out = run_callback(
        ParallelWorkflowExecutor({"a": Sub(on_start=lambda inst, ev: inst.fail("no"))}),
        start_event(),
        parameters={"a": {"x": 1}},
    )
    done = ParallelState.from_value(out.result, {"a": {"x": 1}}, is_running=False)
    assert done.sub_workflow("a").failed and done.sub_workflow("a").error == "no"
    assert done.sub_workflow("a").parameters == {"x": 1}
    with pytest.raises(WorkflowInstanceNotFoundError, match="'z'"):
        done.sub_workflow("z")
