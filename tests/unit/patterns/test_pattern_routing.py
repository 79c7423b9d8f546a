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
        task_complete_event("echo", parameters=task_parameters, route=started.task_routes[0]),
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
        task_complete_event("echo", parameters=task_parameters, route=started.task_routes[0]),
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


def test_running_payloads_have_the_shape_of_the_result() -> None:
    chain = ChainWorkflowExecutor(echo_sub("x"), echo_sub("y"))
    started = run_callback(chain, start_event(), parameters=[None, None])
    assert set(started.payload) == {"cancelled", "workflows"}
    parallel = ParallelWorkflowExecutor({"a": echo_sub("x"), "b": echo_sub("y")})
    started = run_callback(parallel, start_event(), parameters={"a": None, "b": None})
    assert set(started.payload) == {"workflows"}
    assert all(route is not None for route in started.task_routes)


def test_a_pattern_nested_in_a_pattern_gets_its_own_results() -> None:
    # A chain whose sub-workflow is a parallel of two branches that enqueue the same task
    # with the same parameters: only the routes tell the results apart, at both levels.
    inner = ParallelWorkflowExecutor({"x": echo_sub("same"), "y": echo_sub("same")})
    chain = ChainWorkflowExecutor(inner)
    params = [{"x": None, "y": None}]
    started = run_callback(chain, start_event(), parameters=params)
    assert started.tasks == [("echo", "same", None)] * 2
    route_x, route_y = started.task_routes
    assert route_x != route_y
    out = run_callback(
        chain,
        task_complete_event("echo", parameters="same", route=route_y),
        parameters=params,
        payload=started.payload,
        enqueued_tasks=2,
    )
    assert out.decision == "continue"
    branches = out.payload["workflows"][0]["payload"]["workflows"]
    assert branches["y"]["finished"] and branches["y"]["result"] == "same"
    assert not branches["x"]["finished"]
    done = run_callback(
        chain,
        task_complete_event("echo", parameters="same", route=route_x),
        parameters=params,
        payload=out.payload,
        enqueued_tasks=2,
        completed_tasks=1,
    )
    assert done.decision == "complete"
    assert done.result["workflows"][0]["result"]["workflows"]["x"]["result"] == "same"


def test_an_instance_started_with_a_routing_table_in_its_payload_is_still_routed() -> None:
    # Earlier versions kept routes in the payload; results of their tasks carry no route.
    parallel = ParallelWorkflowExecutor({"a": echo_sub("x"), "b": echo_sub("y")})
    params = {"a": None, "b": None}
    started = run_callback(parallel, start_event(), parameters=params)
    legacy = dict(started.payload)
    legacy["routes"] = [
        ["a", "echo", parameters_digest("x")],
        ["b", "echo", parameters_digest("y")],
    ]
    first = run_callback(
        parallel,
        task_complete_event("echo", parameters="y"),
        parameters=params,
        payload=legacy,
        enqueued_tasks=2,
    )
    assert first.payload["workflows"]["b"]["result"] == "y"
    assert first.payload["routes"] == [["a", "echo", parameters_digest("x")]]
    second = run_callback(
        parallel,
        task_complete_event("echo", parameters="x"),
        parameters=params,
        payload=first.payload,
        enqueued_tasks=2,
        completed_tasks=1,
    )
    assert second.decision == "complete"
    assert "routes" not in second.result
