"""How patterns route task results (upstream's common_test.go, which tested merging routing
keys into task parameters: here parameters are never merged, so any JSON value works)."""

from __future__ import annotations

from typing import Any

import pytest

from cereal.patterns import ChainWorkflowExecutor, ParallelWorkflowExecutor
from cereal.patterns.state import parameters_digest, read_state, take_route
from cereal.testing import run_callback, start_event, task_complete_event
from tests.helpers.scripted import Sub

ANY_JSON = [
    {"AField": "afield"},
    None,
    ["foo"],
    1,
    1.5,
    "text",
    True,
    {"nested": {"b": [1, {"c": None}], "a": 2}},
]


def echo_sub(task_parameters: Any) -> Sub:
    def start(inst: Any, ev: Any) -> Any:
        inst.enqueue_task("echo", task_parameters)
        return inst.continue_with(None)

    return Sub(
        on_start=start,
        on_task=lambda inst, ev: inst.complete(ev.result.parameters),
    )


@pytest.mark.parametrize("task_parameters", ANY_JSON)
def test_chain_task_parameters_of_any_json_shape_pass_unaltered(task_parameters: Any) -> None:
    chain = ChainWorkflowExecutor(echo_sub(task_parameters))
    started = run_callback(chain, start_event(), parameters=[None])
    assert started.tasks == [("echo", task_parameters, None)]
    done = run_callback(
        chain,
        task_complete_event("echo", parameters=task_parameters),
        parameters=[None],
        payload=started.payload,
        enqueued_tasks=1,
    )
    assert done.decision == "complete"
    assert done.result["workflows"][0]["result"] == task_parameters


@pytest.mark.parametrize("task_parameters", ANY_JSON)
def test_parallel_task_parameters_of_any_json_shape_pass_unaltered(task_parameters: Any) -> None:
    parallel = ParallelWorkflowExecutor({"a": echo_sub(task_parameters), "b": echo_sub("b")})
    params = {"a": None, "b": None}
    started = run_callback(parallel, start_event(), parameters=params)
    assert started.tasks == [("echo", task_parameters, None), ("echo", "b", None)]
    done = run_callback(
        parallel,
        task_complete_event("echo", parameters=task_parameters),
        parameters=params,
        payload=started.payload,
        enqueued_tasks=2,
    )
    assert done.payload["workflows"]["a"]["result"] == task_parameters
    assert done.payload["workflows"]["b"]["finished"] is False


def test_parameters_digest_ignores_object_key_order() -> None:
    # PostgreSQL's jsonb hands objects back with their keys reordered.
    assert parameters_digest({"b": 1, "a": [1, {"y": 2, "x": 3}]}) == parameters_digest(
        {"a": [1, {"x": 3, "y": 2}], "b": 1}
    )
    assert parameters_digest({"a": 1}) != parameters_digest({"a": 2})


def test_routes_match_the_oldest_record_with_the_same_name_and_parameters() -> None:
    routes = [
        [0, "t", parameters_digest(1)],
        [1, "t", parameters_digest(2)],
        [2, "t", parameters_digest(1)],
    ]
    assert take_route(routes, "t", 1) == 0
    assert take_route(routes, "t", 1) == 2
    assert routes == [[1, "t", parameters_digest(2)]]


def test_routes_fall_back_to_the_oldest_record_of_the_task_name() -> None:
    routes = [[0, "u", parameters_digest(1)], [1, "t", parameters_digest(2)], [2, "t", "x"]]
    assert take_route(routes, "t", "parameters changed in storage") == 1
    assert take_route(routes, "v", None) is None


def test_a_partial_state_reads_with_defaults() -> None:
    assert read_state({"finished": True, "enqueued_tasks": 1}) == {
        "payload": None,
        "result": None,
        "error": None,
        "enqueued_tasks": 1,
        "completed_tasks": 0,
        "finished": True,
    }
    with pytest.raises(ValueError, match="must be an object"):
        read_state([1])
    with pytest.raises(ValueError, match="enqueued_tasks"):
        read_state({"enqueued_tasks": "2"})


def test_state_readers_follow_the_instance_status() -> None:
    from datetime import UTC, datetime

    from cereal import WorkflowInstanceInfo, WorkflowStatus
    from cereal.patterns import ChainState, ParallelState

    now = datetime.now(UTC)
    starting = WorkflowInstanceInfo("w", "i", WorkflowStatus.STARTING, [1], started_at=now)
    assert ChainState.from_info(starting) == ChainState(True, False, [])
    running = WorkflowInstanceInfo(
        "w", "i", WorkflowStatus.RUNNING, {"a": 1}, payload={"workflows": {"a": {}}, "routes": []}
    )
    live = ParallelState.from_info(running)
    assert live.is_running and live.sub_workflow("a").parameters == 1
    assert not live.sub_workflow("a").finished
    failed = WorkflowInstanceInfo("w", "i", WorkflowStatus.FAILED, [1], error="killed")
    assert ChainState.from_info(failed).error == "killed"
    assert ParallelState.from_info(failed).workflows == {}
