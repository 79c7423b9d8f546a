"""Work that a manager produces for its own workflow handlers goes to them directly.

- A finished task's result: a handler records it and holds its instance in one round trip
  (``Driver.complete_tasks_held``), then runs ``on_task_complete`` at once.
- An instance enqueued through the manager while one of its handlers, or one of the spare
  threads that take only such instances, is idle: the enqueue commits it and holds it in one
  round trip (``Driver.enqueue_and_hold``), and that thread runs ``on_start`` at once.

Neither waits for a notification or a claim. Whatever goes wrong on the way, the work is
recorded the usual way and handled once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cereal import Manager, Task, WorkflowInstance, WorkflowStatus
from cereal.dispatch import HANDOVER_SPARES
from cereal.errors import TransientDatabaseError, WorkflowInstanceExistsError
from cereal.testing import MemoryDriver
from tests.helpers.claims import lose_the_commit_answer
from tests.helpers.recorders import Flow
from tests.helpers.timings import FAST_MANAGER_OPTIONS
from tests.helpers.waiting import wait_for

WF = "wf"
AWAIT = 15.0


class Counting:
    """A driver forwarding to another one, counting the calls that record task results;
    ``fail_held`` makes the next ``complete_tasks_held`` calls raise a transient error, before
    or after the inner driver recorded the results."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.fail_held: list[str] = []  # "before" or "after", one per call to fail
        self.held_sizes: list[int] = []  # outcomes passed to each complete_tasks_held call
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def enqueue_workflow(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls["enqueue_workflow"] += 1
        return self._inner.enqueue_workflow(*args, **kwargs)

    def enqueue_and_hold(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls["enqueue_and_hold"] += 1
        return self._inner.enqueue_and_hold(*args, **kwargs)

    def complete_tasks(self, *args: Any) -> Any:
        with self._lock:
            self.calls["complete_tasks"] += 1
        return self._inner.complete_tasks(*args)

    @contextmanager
    def complete_tasks_held(self, *args: Any) -> Iterator[Any]:
        with self._lock:
            self.calls["complete_tasks_held"] += 1
            self.held_sizes.append(len(args[0]))
            failing = self.fail_held.pop(0) if self.fail_held else None
        if failing == "before":
            raise TransientDatabaseError("connection lost before the results were sent")
        with self._inner.complete_tasks_held(*args) as batch:
            if failing == "after":
                raise TransientDatabaseError("connection lost after the results were committed")
            yield batch


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def make_counted(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., tuple[Manager, Counting]]]:
    """Factory of started-later managers, each on a ``Counting`` driver over this test's
    storage (one memory store, or one PostgreSQL schema)."""
    built: list[Manager] = []
    if request.param == "memory":
        store = request.getfixturevalue("memory_store")
    else:  # set up before this fixture, so torn down after its managers stop
        dsn, schema = request.getfixturevalue("pg_dsn"), request.getfixturevalue("schema")

    def make(**options: Any) -> tuple[Manager, Counting]:
        if request.param == "memory":
            inner: Any = MemoryDriver(store=store)
        else:
            from cereal.backends.postgres import PostgresDriver

            inner = PostgresDriver(dsn, schema=schema)
        driver = Counting(inner)
        manager = Manager(driver=driver, **(FAST_MANAGER_OPTIONS | options))  # type: ignore[arg-type]
        built.append(manager)
        return manager, driver

    yield make
    for manager in built:
        manager.stop(timeout=10)
        manager.driver.close()


def settled(m: Manager) -> None:
    """Run one workflow through ``m`` (started, with ``Flow`` registered as WF), so that its
    handlers are up and idle afterwards."""
    m.enqueue_workflow(WF, "warm-up", None)
    m.await_workflow(WF, "warm-up", timeout=AWAIT)


def doubling_flow(seen: list[Any]) -> Flow:
    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        inst.enqueue_task("double", inst.parameters)
        return inst.continue_with(None)

    def on_task(inst: WorkflowInstance, event: Any) -> Any:
        seen.append(event.result.value)
        return inst.complete(event.result.value)

    return Flow(on_start=on_start, on_task=on_task)


def double(task: Task) -> int:
    return 2 * int(task.parameters)


def test_a_result_is_recorded_by_the_handlers_and_handled_without_a_wakeup(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    # Polling every minute: only the hand-over can bring the result to on_task_complete.
    m, driver = make_counted(workflow_poll_interval=60.0)
    seen: list[Any] = []
    m.register_workflow_executor(WF, doubling_flow(seen))
    m.register_task_executor("double", double)
    m.start()
    for n in range(5):
        m.enqueue_workflow(WF, f"i{n}", n)
    for n in range(5):
        info = m.await_workflow(WF, f"i{n}", timeout=AWAIT)
        assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 2 * n)
    assert sorted(seen) == [0, 2, 4, 6, 8]
    assert driver.calls["complete_tasks_held"] >= 1
    assert driver.calls["complete_tasks"] == 0


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failed_hand_over_records_the_result_again_and_it_is_handled_once(
    make_counted: Callable[..., tuple[Manager, Counting]], when: str
) -> None:
    m, driver = make_counted()
    driver.fail_held = [when]
    seen: list[Any] = []
    m.register_workflow_executor(WF, doubling_flow(seen))
    m.register_task_executor("double", double)
    m.start()
    m.enqueue_workflow(WF, "a", 21)
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 42)
    assert seen == [42]  # on_task_complete ran once: the second recording was discarded
    # The pools' writer takes the result back; with "after" the stored result may be handled
    # before the writer gets to it.
    wait_for(lambda: driver.calls["complete_tasks"], what="the writer recording the result")
    assert driver.calls["complete_tasks"] == 1


def test_results_of_a_workflow_this_manager_does_not_handle_are_recorded_as_usual(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    starter, _ = make_counted()
    seen: list[Any] = []
    starter.register_workflow_executor(WF, doubling_flow(seen))
    worker, counted = make_counted()
    worker.register_task_executor("double", double)
    starter.start()
    worker.start()
    starter.enqueue_workflow(WF, "a", 4)
    info = starter.await_workflow(WF, "a", timeout=AWAIT)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 8)
    assert counted.calls == Counter({"complete_tasks": 1})


def test_an_enqueue_hands_the_instance_to_an_idle_handler(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    m, driver = make_counted(workflow_poll_interval=60.0)
    threads: list[int] = []

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        threads.append(threading.get_ident())
        if inst.instance_name == "stays":
            return inst.continue_with("live")
        return inst.complete(inst.parameters)

    m.register_workflow_executor(WF, Flow(on_start=on_start))
    m.start()
    settled(m)
    before = Counter(driver.calls)
    m.enqueue_workflow(WF, "a", 1)
    info = m.await_workflow(WF, "a", timeout=AWAIT)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 1)
    assert threads and threading.get_ident() not in threads  # a handler ran it
    assert driver.calls - before == Counter({"enqueue_and_hold": 1})
    m.enqueue_workflow(WF, "stays")
    with pytest.raises(WorkflowInstanceExistsError):
        m.enqueue_workflow(WF, "stays")


def blocking_flow(entered: dict[str, threading.Event], release: threading.Event) -> Flow:
    """A flow whose instances named in ``entered`` set their event in ``on_start`` and wait
    for ``release`` there; every instance completes with its name."""

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        if inst.instance_name in entered:
            entered[inst.instance_name].set()
            release.wait(AWAIT)
        return inst.complete(inst.instance_name)

    return Flow(on_start=on_start)


def test_with_every_handler_busy_an_enqueue_is_handed_to_a_spare(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    m, driver = make_counted(workflow_workers=1, workflow_poll_interval=60.0)
    entered, release = {"blocker": threading.Event()}, threading.Event()
    m.register_workflow_executor(WF, blocking_flow(entered, release))
    m.start()
    settled(m)
    try:
        m.enqueue_workflow(WF, "blocker")
        assert entered["blocker"].wait(AWAIT)  # the only handler is busy
        before = Counter(driver.calls)
        m.enqueue_workflow(WF, "spared")
        assert driver.calls - before == Counter({"enqueue_and_hold": 1})
        info = m.await_workflow(WF, "spared", timeout=AWAIT)  # while the handler still waits
        assert (info.status, info.result) == (WorkflowStatus.COMPLETED, "spared")
        assert not release.is_set()
    finally:
        release.set()
    info = m.await_workflow(WF, "blocker", timeout=AWAIT)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, "blocker")


def test_a_spare_whose_commit_answer_is_lost_leaves_the_work_to_the_handlers(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    m, _ = make_counted(workflow_workers=1)
    entered, release = threading.Event(), threading.Event()
    runs: list[Any] = []

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        if inst.instance_name == "blocker":
            entered.set()
            release.wait(AWAIT)
            return inst.complete(None)
        inst.enqueue_task("double", inst.parameters)
        return inst.continue_with(None)

    def on_task(inst: WorkflowInstance, event: Any) -> Any:
        return inst.complete(event.result.value)

    def counted_double(task: Task) -> int:
        runs.append(task.parameters)
        return double(task)

    m.register_workflow_executor(WF, Flow(on_start=on_start, on_task=on_task))
    m.register_task_executor("double", counted_double)
    lost = lose_the_commit_answer(m)
    m.start()
    try:
        m.enqueue_workflow(WF, "blocker")
        assert entered.wait(AWAIT)
        m.enqueue_workflow(WF, "spared", 5)  # a spare commits, and hears nothing back
        wait_for(lambda: lost == [1], AWAIT, "the injected failure")
    finally:
        release.set()
    info = m.await_workflow(WF, "spared", timeout=AWAIT)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 10)
    assert runs == [5]


def test_with_every_handler_and_spare_busy_an_enqueue_goes_through_the_queue(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    m, driver = make_counted(workflow_workers=1)
    blockers = [f"blocker-{n}" for n in range(1 + HANDOVER_SPARES)]
    entered = {name: threading.Event() for name in blockers}
    release = threading.Event()
    m.register_workflow_executor(WF, blocking_flow(entered, release))
    m.start()
    settled(m)
    try:
        for name in blockers:  # the handler first, then each spare
            m.enqueue_workflow(WF, name)
            assert entered[name].wait(AWAIT)
        before = Counter(driver.calls)
        m.enqueue_workflow(WF, "queued")
        assert driver.calls - before == Counter({"enqueue_workflow": 1})
    finally:
        release.set()
    for name in [*blockers, "queued"]:
        info = m.await_workflow(WF, name, timeout=AWAIT)
        assert (info.status, info.result) == (WorkflowStatus.COMPLETED, name)


def test_enqueues_from_many_threads_through_one_handler_and_the_spares_each_run_once(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    # One handler, so hand-overs, spares and the queue all take part while four threads
    # enqueue at once and results come back; every instance starts once and completes.
    m, driver = make_counted(workflow_workers=1)
    starts: Counter[str] = Counter()
    lock = threading.Lock()

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        with lock:
            starts[inst.instance_name] += 1
        inst.enqueue_task("double", inst.parameters)
        return inst.continue_with(None)

    def on_task(inst: WorkflowInstance, event: Any) -> Any:
        return inst.complete(event.result.value)

    m.register_workflow_executor(WF, Flow(on_start=on_start, on_task=on_task))
    m.register_task_executor("double", double, workers=4)
    m.start()
    settled(m)
    starts.clear()
    before = Counter(driver.calls)
    names = [[f"t{t}-{n}" for n in range(40)] for t in range(4)]

    def enqueue(batch: list[str]) -> None:
        for n, name in enumerate(batch):
            m.enqueue_workflow(WF, name, n)

    threads = [threading.Thread(target=enqueue, args=(batch,)) for batch in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(AWAIT)
    for batch in names:
        for n, name in enumerate(batch):
            info = m.await_workflow(WF, name, timeout=AWAIT)
            assert (info.status, info.result) == (WorkflowStatus.COMPLETED, 2 * n)
    assert starts == dict.fromkeys([name for batch in names for name in batch], 1)
    calls = driver.calls - before
    assert calls["enqueue_and_hold"] + calls["enqueue_workflow"] == 160
    assert calls["enqueue_and_hold"] > 0


def test_a_hand_over_of_more_results_than_one_fetch_of_events_handles_them_all(
    make_counted: Callable[..., tuple[Manager, Counting]],
) -> None:
    # The only handler is busy while 100 results of one instance queue up; it then records
    # them in one hand-over, though one fetch takes 64 events per instance. (That nothing
    # waits for a poll even with no wakeup pending is checked on the dispatcher itself, in
    # tests/unit/dispatch.)
    m, driver = make_counted(workflow_workers=1, workflow_poll_interval=60.0)
    fanned, entered = threading.Event(), threading.Event()
    release, go = threading.Event(), threading.Event()
    tasks, ran, lock = 100, [0], threading.Lock()

    def on_start(inst: WorkflowInstance, event: Any) -> Any:
        if inst.instance_name == "blocker":
            entered.set()
            release.wait(AWAIT)
            return inst.complete(None)
        for n in range(tasks):
            inst.enqueue_task("gated", n)
        fanned.set()
        return inst.continue_with(None)

    def on_task(inst: WorkflowInstance, event: Any) -> Any:
        if inst.total_completed_tasks == tasks:
            return inst.complete(inst.total_completed_tasks)
        return inst.continue_with(None)

    def gated(task: Task) -> Any:
        go.wait(AWAIT)
        with lock:
            ran[0] += 1
        return task.parameters

    m.register_workflow_executor(WF, Flow(on_start=on_start, on_task=on_task))
    m.register_task_executor("gated", gated, workers=4)
    m.start()
    m.enqueue_workflow(WF, "fan")
    assert fanned.wait(AWAIT)
    m.enqueue_workflow(WF, "blocker")
    assert entered.wait(AWAIT)  # the only handler is busy from here on
    go.set()
    wait_for(lambda: ran[0] == tasks, what="every task run")
    release.set()
    info = m.await_workflow(WF, "fan", timeout=AWAIT)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, tasks)
    assert max(driver.held_sizes) > 64, driver.held_sizes  # one hand-over past one fetch
