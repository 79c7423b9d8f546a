"""Hostile values returned by workflow callbacks and tasks (payloads, results, task parameters,
``start_after``, failure messages, exceptions): the instance or task fails cleanly with a
message saying why, or the value round-trips.
"""

from __future__ import annotations

import itertools
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cereal import Decision, Task, TaskStatus, WorkflowInstance, WorkflowStatus
from tests.integration.bad_input.hostile import (
    AWAIT,
    SETTINGS,
    WF,
    MakeManager,
    clean,
    printable,
    same,
    storable,
    texts,
    values,
)


class Hostile:
    """Applies ``VALUES[instance_name]`` the way ``parameters["mode"]`` says."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        mode, value = inst.parameters["mode"], self.values[inst.instance_name]
        if mode == "payload":
            inst.enqueue_task("echo", "go")
            return inst.continue_with(value)
        if mode == "result":
            return inst.complete(value)
        if mode == "task_parameters":
            inst.enqueue_task("echo", value)
            return inst.continue_with()
        if mode in ("task_result", "task_raise"):
            inst.enqueue_task(mode, inst.instance_name)
            return inst.continue_with()
        if mode == "start_after":
            inst.enqueue_task("echo", "late", start_after=value)
            return inst.continue_with()
        if mode == "fail":
            return inst.fail(value)
        assert mode == "raise"
        raise RuntimeError(value)

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        r = event.result
        return inst.complete(
            {"payload": inst.payload, "status": r.status.value, "value": r.value, "error": r.error}
        )

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")


JSON_COMPLAINT = re.compile(r"JSON|NUL|Unicode|nested too deeply")
start_afters = st.one_of(
    st.none(),
    st.sampled_from(
        [
            timedelta(0),
            timedelta(days=-5),
            timedelta.min,
            timedelta.max,
            datetime.min,
            datetime.min.replace(tzinfo=UTC),
            datetime(2000, 1, 1),
        ]
    ),
    st.datetimes(max_value=datetime(2020, 1, 1)),
    st.sampled_from(["tomorrow", 5, 1.5, date(2020, 1, 1), [1], object(), True]),
)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str() for this one")

    def __repr__(self) -> str:
        raise RuntimeError("no repr() either")


fail_errors = st.one_of(
    texts,
    st.sampled_from([None, 5, ValueError(""), ValueError("boom\x00"), KeyError("\ud800")]),
    st.builds(Unprintable),
)


# The strategies use no randomness of their own; the manager running meanwhile does (the
# connection pool spreads connection lifetimes with the random module), which Hypothesis
# would otherwise take for a strategy's.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("eager", [False, True], ids=["handlers", "eager start"])
def test_hostile_values_from_callbacks_and_tasks_fail_cleanly_or_round_trip(
    make_manager: MakeManager, eager: bool
) -> None:
    stash: dict[str, Any] = {}

    def give(task: Task) -> Any:
        return stash[task.parameters]

    def throw(task: Task) -> Any:
        raise RuntimeError(stash[task.parameters])

    m = make_manager(workflow_workers=2, eager_start=eager)
    m.register_workflow_executor(WF, Hostile(stash))
    m.register_task_executor("echo", lambda task: task.parameters, workers=2)
    m.register_task_executor("task_result", give, workers=2)
    m.register_task_executor("task_raise", throw, workers=2)
    m.start()
    counter = itertools.count()

    @SETTINGS
    @example(case=("raise", "\ud800"))
    @example(case=("fail", "a\x00b"))
    @example(case=("task_raise", "\x00"))
    @example(case=("task_raise", "\udfff"))
    @example(case=("raise", Unprintable()))
    @example(case=("payload", math.nan))
    @example(case=("start_after", timedelta.max))
    @given(
        case=st.one_of(
            st.tuples(
                st.sampled_from(["payload", "result", "task_parameters", "task_result"]),
                values,
            ),
            st.tuples(st.sampled_from(["fail", "raise", "task_raise"]), fail_errors),
            st.tuples(st.just("start_after"), start_afters),
        )
    )
    def check(case: tuple[str, Any]) -> None:
        mode, value = case
        name = f"h{next(counter)}"
        stash[name] = value
        m.enqueue_workflow(WF, name, {"mode": mode})
        info = m.await_workflow(WF, name, timeout=AWAIT)  # never stuck
        assert not info.is_running
        result, error = info.result, info.error
        if error is not None:
            assert clean(error) and error  # stored as given, or made storable
        ok, expected = storable(value)

        if mode in ("payload", "result"):
            if ok:
                assert info.status is WorkflowStatus.COMPLETED, error
                got = result["payload"] if mode == "payload" else result
                assert same(expected, got)
            else:
                assert info.status is WorkflowStatus.FAILED
                assert error.startswith(mode) and JSON_COMPLAINT.search(error), error
        elif mode == "task_parameters":
            if ok:
                assert info.status is WorkflowStatus.COMPLETED, error
                assert result["status"] == "success"
                assert same(expected, result["value"])
            else:
                assert info.status is WorkflowStatus.FAILED
                assert error.startswith("SerializationError: parameters of task 'echo'"), error
        elif mode == "task_result":
            assert info.status is WorkflowStatus.COMPLETED, error
            if ok:
                assert (result["status"], result["error"]) == ("success", None)
                assert same(expected, result["value"])
            else:
                assert result["status"] == "failed" and result["value"] is None
                assert result["error"].startswith("result of task 'task_result'")
                assert JSON_COMPLAINT.search(result["error"])
        elif mode == "fail":
            assert info.status is WorkflowStatus.FAILED
            text = printable(value)
            if not isinstance(value, str | BaseException) or text == "":
                assert error.startswith("InvalidDecisionError: fail()"), error
            elif text is None:  # fail() could not turn it into text: the callback raised
                assert error == "RuntimeError: no str() for this one"
            elif clean(text):
                assert error == text
        elif mode in ("raise", "task_raise"):
            if mode == "task_raise":
                assert info.status is WorkflowStatus.COMPLETED, error
                assert result["status"] == TaskStatus.FAILED.value  # not lost
                error = result["error"]
                assert clean(error)
            else:
                assert info.status is WorkflowStatus.FAILED
            text = printable(RuntimeError(value))
            if text is not None and clean(text):
                assert error == f"RuntimeError: {text}"
            else:
                assert error.startswith("RuntimeError: ")
        else:
            assert mode == "start_after"
            if value is None or isinstance(value, datetime | timedelta):
                if value is timedelta.max:  # beyond PostgreSQL's timestamps
                    assert info.status is WorkflowStatus.FAILED
                    assert error.startswith("cannot store the decision"), error
                else:
                    assert info.status is WorkflowStatus.COMPLETED, error
                    assert result["value"] == "late"
            else:
                assert info.status is WorkflowStatus.FAILED
                assert error.startswith("InvalidDecisionError: start_after"), error
        del stash[name]

    check()
