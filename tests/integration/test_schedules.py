"""Recurring schedules against a real PostgreSQL: timing, updates, errors, skips, coalescing,
exactly-once with several managers, and wakeups by NOTIFY.

Times are short (whole seconds) and every wait polls against a deadline. Timing checks allow one
second either way and assume that the database's clock and this machine's agree to well under
that, as they do with the embedded server or any server on the same host. The in-memory runs of
the tests that take ``make_any_manager`` run on a clock that the test moves (``clock``), so they
check the same timings without waiting for them.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import DAILY, MINUTELY, SECONDLY, rrule, rruleset

from cereal import Manager, Schedule, WorkflowInstance
from cereal.backends.postgres import PostgresDriver
from cereal.driver import Driver, SchedulesChanged
from cereal.errors import (
    CerealError,
    InvalidScheduleError,
    SerializationError,
    WorkflowScheduleExistsError,
    WorkflowScheduleNotFoundError,
)
from cereal.testing import MemoryStore
from tests.helpers.logs import capture_logs
from tests.helpers.memory import Clock
from tests.helpers.recorders import Flow, Start, complete
from tests.helpers.rows import run_starts
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

WF = "scheduled"
MakeManager = Callable[..., Manager]
T = TypeVar("T")
TOLERANCE = timedelta(seconds=1)


# -- clocks ----------------------------------------------------------------------------------


class TimeSource:
    """The time a test runs on: :class:`WallClock` on PostgreSQL, whose schedules follow the
    database's clock, or :class:`SteppedClock` on the in-memory driver."""

    def now(self) -> datetime:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        raise NotImplementedError

    def scheduling(self, manager: Manager) -> Manager:
        """Note that ``manager`` runs a scheduler; return it."""
        return manager

    def jump_to(self, moment: datetime) -> None:
        """Be at ``moment`` without waking any scheduler (a sleeping one must wake by itself
        or by another manager's notification)."""
        raise NotImplementedError

    def second_after(self, seconds: float) -> datetime:
        """The first whole second at least ``seconds`` from now (UTC)."""
        moment = self.now() + timedelta(seconds=seconds)
        if moment.microsecond:
            moment = moment.replace(microsecond=0) + timedelta(seconds=1)
        return moment

    def sleep_until(self, moment: datetime) -> None:
        self.sleep((moment - self.now()).total_seconds())

    def wait_for_starts(
        self, recorder: Flow, count: int, timeout: float, instance_name: str
    ) -> list[Start]:
        """Wait until at least ``count`` runs of ``instance_name`` have started; return them."""

        def enough() -> list[Start]:
            starts = recorder.starts(instance_name)
            return starts if len(starts) >= count else []

        return self.wait_for(enough, timeout, f"{count} run(s) of {instance_name}")


class WallClock(TimeSource):
    """This machine's clock, which the database's is assumed to agree with."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        return wait_for(predicate, timeout, what)

    def jump_to(self, moment: datetime) -> None:
        self.sleep_until(moment)


STEP = timedelta(seconds=0.25)


class SteppedClock(TimeSource):
    """The controlled clock of a memory store, moved only by the test's sleeps and waits, in
    steps of ``STEP``. After each step every scheduler is woken (as when another process
    changes a schedule, since a scheduler sleeps in real time) and the test waits until the
    managers have caught up: no enabled schedule due (once a manager runs a scheduler), no
    event pending, nothing held. The workflows of these tests queue no tasks, so that is all
    there is to wait for."""

    def __init__(self, store: MemoryStore) -> None:
        assert isinstance(store.clock, Clock)
        self._store = store
        self._clock = store.clock
        self._schedulers = False

    def scheduling(self, manager: Manager) -> Manager:
        self._schedulers = True
        return manager

    def now(self) -> datetime:
        return self._clock.now

    def sleep(self, seconds: float) -> None:
        target = self.now() + timedelta(seconds=seconds)
        while self.now() < target:
            self._step(min(STEP, target - self.now()))

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        deadline = self.now() + timedelta(seconds=timeout)
        while True:
            value = predicate()
            if value:
                return value
            if self.now() >= deadline:
                raise AssertionError(f"timed out after {timeout:g}s (stepped) waiting for {what}")
            self._step(STEP)

    def jump_to(self, moment: datetime) -> None:
        self._clock.now = max(self.now(), moment)

    def _step(self, delta: timedelta) -> None:
        self._clock.advance(delta)
        with self._store.lock:
            self._store.emit([SchedulesChanged()])
        wait_for(self._caught_up, 10, f"the managers to catch up with the clock at {self.now()}")

    def _caught_up(self) -> bool:
        s, now = self._store, self.now()
        with s.lock:
            due = self._schedulers and any(
                sc.enabled and sc.next_due_at is not None and sc.next_due_at <= now
                for sc in s.schedules.values()
            )
            busy = any(s.events.values()) or s.held_instances or s.held_schedules
            return not (due or busy)


@pytest.fixture
def memory_store() -> MemoryStore:
    """The in-memory runs keep time on a clock of their own (see :class:`SteppedClock`),
    starting a tenth of a second past this machine's current whole second. The occurrences of
    these tests fall on whole seconds, which the quarter-second steps then never land on: each
    runs a little after it falls due, as with a real clock."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=0.1)
    return MemoryStore(clock=Clock(start))


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> TimeSource:
    """The clock of this test's managers: stepped on the in-memory driver, else the wall
    clock."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("make_any_manager") == "memory":
        return SteppedClock(request.getfixturevalue("memory_store"))
    return WallClock()


# -- helpers ---------------------------------------------------------------------------------


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def rule(dtstart: datetime, rrule_text: str) -> str:
    return f"DTSTART:{stamp(dtstart)}\nRRULE:{rrule_text}"


def recording_flow(clock: TimeSource, *, hold: bool = False) -> Flow:
    """A workflow executor that records each start (seen at ``clock``'s time). It completes at
    once, or with ``hold=True`` keeps the instance running until it is cancelled or killed."""

    def on_start(instance: WorkflowInstance, event: Any) -> Any:
        return instance.continue_with() if hold else instance.complete({"ok": True})

    return Flow(on_start=on_start, on_task=complete, on_cancel=complete, clock=clock.now)


def started(
    make_manager: MakeManager, recorder: Flow, clock: TimeSource, **options: Any
) -> Manager:
    """A started manager that runs ``recorder``, and a scheduler unless ``options`` say not."""
    manager = make_manager(**options)
    manager.register_workflow_executor(WF, recorder)
    manager.start()
    return clock.scheduling(manager) if options.get("scheduler", True) else manager


def history(driver: Driver, instance_name: str) -> list[datetime]:
    """Start times of every run of ``(WF, instance_name)``, finished or live, from storage."""
    return run_starts(driver, WF, instance_name)


def fields(schedule: Schedule) -> tuple[Any, ...]:
    return (
        schedule.workflow_name,
        schedule.instance_name,
        schedule.parameters,
        schedule.recurrence,
        schedule.enabled,
        schedule.next_due_at,
        schedule.last_enqueued_at,
        schedule.last_start,
        schedule.last_end,
    )


# -- running on time -------------------------------------------------------------------------


def test_schedule_runs_every_occurrence_on_time_with_its_parameters(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    recorder = recording_flow(clock)
    manager = started(make_any_manager, recorder, clock)
    first = clock.second_after(2)
    params = {"n": 1, "tags": ["a", None], "text": "grüße ☃", "big": 2**62, "f": 0.1}
    manager.create_workflow_schedule(
        WF, "every4", params, recurrence=rule(first, "FREQ=SECONDLY;INTERVAL=4")
    )
    # The same instants written in New York wall-clock time.
    local = first.astimezone(ZoneInfo("America/New_York")).strftime("%Y%m%dT%H%M%S")
    manager.create_workflow_schedule(
        WF,
        "zoned4",
        [1, 2],
        recurrence=f"DTSTART;TZID=America/New_York:{local}\nRRULE:FREQ=SECONDLY;INTERVAL=4",
    )
    assert manager.get_workflow_schedule(WF, "every4").next_due_at == first
    assert manager.get_workflow_schedule(WF, "zoned4").next_due_at == first

    due = [first + timedelta(seconds=4 * k) for k in range(3)]
    for name, expected_params in (("every4", params), ("zoned4", [1, 2])):
        runs = clock.wait_for_starts(recorder, 3, (due[-1] - clock.now()).total_seconds() + 3, name)
        assert len(runs) == 3
        for run, occurrence in zip(runs, due, strict=True):
            assert run.instance_name == name
            assert run.parameters == expected_params
            assert abs(run.seen_at - occurrence) <= TOLERANCE, (run, occurrence)
            assert occurrence <= run.enqueued_at <= occurrence + TOLERANCE
        schedule = manager.get_workflow_schedule(WF, name)
        assert schedule.enabled
        assert schedule.next_due_at == due[-1] + timedelta(seconds=4)


def test_rule_that_runs_out_runs_its_last_occurrences_then_schedule_is_disabled(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    recorder = recording_flow(clock)
    manager = started(make_any_manager, recorder, clock)
    at = clock.second_after(1)
    two = timedelta(seconds=2)
    expected = {  # name: (recurrence, occurrences still to come)
        "count1": (rule(at, "FREQ=DAILY;COUNT=1"), [at]),
        "rdate1": (f"DTSTART:{stamp(at)}\nRDATE:{stamp(at)}", [at]),
        # COUNT=3 from a DTSTART two periods ago: only the third occurrence is left.
        "count3": (rule(at - 2 * two, "FREQ=SECONDLY;INTERVAL=2;COUNT=3"), [at]),
        "until": (rule(at, f"FREQ=SECONDLY;INTERVAL=2;UNTIL={stamp(at + two)}"), [at, at + two]),
    }
    for name, (recurrence, _) in expected.items():
        manager.create_workflow_schedule(WF, name, {"k": name}, recurrence=recurrence)
        assert manager.get_workflow_schedule(WF, name).next_due_at == at
    for name, (_, occurrences) in expected.items():
        runs = clock.wait_for_starts(recorder, len(occurrences), 6, name)
        for run, occurrence in zip(runs, occurrences, strict=True):
            assert abs(run.seen_at - occurrence) <= TOLERANCE
            assert run.parameters == {"k": name}
        schedule = clock.wait_for(
            lambda name=name: (s := manager.get_workflow_schedule(WF, name)).enabled is False and s,
            3,
            f"{name} to be disabled",
        )
        assert schedule.next_due_at is None
        assert schedule.last_enqueued_at == runs[-1].enqueued_at
        assert schedule.next_occurrences(3, clock.now()) == []
    clock.sleep(1.5)
    for name, (_, occurrences) in expected.items():
        assert len(recorder.starts(name)) == len(occurrences), name
        assert len(history(manager.driver, name)) == len(occurrences), name
    assert not manager.list_workflow_instances(is_running=True)

    # A rule that ran out cannot be re-enabled, with or without other changes.
    before = manager.get_workflow_schedule(WF, "count1")
    with pytest.raises(InvalidScheduleError, match="count1"):
        manager.update_workflow_schedule(WF, "count1", enabled=True)
    with pytest.raises(InvalidScheduleError):
        manager.update_workflow_schedule(WF, "count1", enabled=True, parameters={"k": "new"})
    assert fields(manager.get_workflow_schedule(WF, "count1")) == fields(before)
    # Parameters alone can still be changed while it stays disabled.
    manager.update_workflow_schedule(WF, "count1", parameters={"k": "kept"})
    assert manager.get_workflow_schedule(WF, "count1").parameters == {"k": "kept"}
    # A new rule brings it back.
    later = clock.second_after(3600)
    manager.update_workflow_schedule(
        WF, "count1", enabled=True, recurrence=rule(later, "FREQ=DAILY;COUNT=1")
    )
    revived = manager.get_workflow_schedule(WF, "count1")
    assert revived.enabled
    assert revived.next_due_at == later


# -- updates ---------------------------------------------------------------------------------


def test_updated_parameters_reach_the_next_run_without_restart(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    recorder = recording_flow(clock)
    manager = started(make_any_manager, recorder, clock)
    first = clock.second_after(1)
    manager.create_workflow_schedule(
        WF, "params", {"v": 1}, recurrence=rule(first, "FREQ=SECONDLY;INTERVAL=2")
    )
    clock.wait_for_starts(recorder, 1, 4, "params")
    manager.update_workflow_schedule(WF, "params", parameters={"v": 2})
    runs = clock.wait_for_starts(recorder, 2, 4, "params")
    assert [r.parameters for r in runs[:2]] == [{"v": 1}, {"v": 2}]
    assert abs(runs[1].seen_at - (first + timedelta(seconds=2))) <= TOLERANCE
    manager.update_workflow_schedule(WF, "params", parameters=None)
    assert manager.get_workflow_schedule(WF, "params").parameters is None


def test_updated_recurrence_recomputes_next_due_and_runs_follow_the_new_rule(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    recorder = recording_flow(clock)
    manager = started(make_any_manager, recorder, clock)
    manager.create_workflow_schedule(
        WF, "rule", {"r": 1}, recurrence=rule(clock.second_after(3600), "FREQ=HOURLY")
    )
    first = clock.second_after(1)
    new_rule = rule(first, "FREQ=SECONDLY;INTERVAL=2")
    manager.update_workflow_schedule(WF, "rule", recurrence=new_rule)
    schedule = manager.get_workflow_schedule(WF, "rule")
    assert schedule.recurrence == new_rule
    assert schedule.next_due_at == first
    assert schedule.enabled
    assert schedule.parameters == {"r": 1}

    runs = clock.wait_for_starts(recorder, 2, (first - clock.now()).total_seconds() + 4, "rule")
    for run, occurrence in zip(runs, (first, first + timedelta(seconds=2)), strict=False):
        assert abs(run.seen_at - occurrence) <= TOLERANCE


def test_disabled_schedule_stops_running(make_any_manager: MakeManager, clock: TimeSource) -> None:
    recorder = recording_flow(clock)
    manager = started(make_any_manager, recorder, clock)
    first = clock.second_after(1)
    manager.create_workflow_schedule(WF, "off", recurrence=rule(first, "FREQ=SECONDLY;INTERVAL=2"))
    clock.wait_for_starts(recorder, 1, 4, "off")
    manager.update_workflow_schedule(WF, "off", enabled=False)
    count = len(recorder.starts("off"))
    assert manager.get_workflow_schedule(WF, "off").enabled is False
    clock.sleep_until(first + timedelta(seconds=2.8))  # the next occurrence has passed
    assert len(recorder.starts("off")) == count
    assert len(history(manager.driver, "off")) == count


def test_reenabling_recomputes_next_due_and_does_not_fire_the_stale_occurrence(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    recorder = recording_flow(clock)
    manager = started(make_any_manager, recorder, clock)
    first = clock.second_after(1)
    manager.create_workflow_schedule(
        WF, "stale", recurrence=rule(first, "FREQ=SECONDLY;INTERVAL=10")
    )
    manager.update_workflow_schedule(WF, "stale", enabled=False)
    clock.sleep_until(first + timedelta(seconds=1))  # its old next_due_at has passed
    manager.update_workflow_schedule(WF, "stale", enabled=True)
    schedule = manager.get_workflow_schedule(WF, "stale")
    assert schedule.enabled
    assert schedule.next_due_at == first + timedelta(seconds=10)
    clock.sleep(1.5)
    assert recorder.starts("stale") == []
    assert history(manager.driver, "stale") == []


def test_update_with_an_exhausted_rule_is_rejected_and_changes_nothing(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    manager = make_any_manager(scheduler=False)
    manager.create_workflow_schedule(
        WF, "atomic", {"a": 1}, recurrence=rule(clock.second_after(3600), "FREQ=DAILY")
    )
    before = manager.get_workflow_schedule(WF, "atomic")
    exhausted = [
        "DTSTART:20200101T000000Z\nRRULE:FREQ=DAILY;COUNT=3",
        "DTSTART:20200101T000000Z\nRRULE:FREQ=DAILY;UNTIL=20200201T000000Z",
        "DTSTART:20200101T000000Z\nRDATE:20200102T000000Z",
        rrule(DAILY, count=2, dtstart=datetime(2020, 1, 1, tzinfo=UTC)),
    ]
    for recurrence in exhausted:
        with pytest.raises(InvalidScheduleError):
            manager.update_workflow_schedule(
                WF, "atomic", enabled=False, parameters={"a": 2}, recurrence=recurrence
            )
        assert fields(manager.get_workflow_schedule(WF, "atomic")) == fields(before)
    for bad in ("FREQ=NEVER", "RRULE:FREQ=DAILY;BYHOUR=25"):
        with pytest.raises(InvalidScheduleError):
            manager.update_workflow_schedule(WF, "atomic", parameters={"a": 3}, recurrence=bad)
    with pytest.raises(SerializationError):
        manager.update_workflow_schedule(WF, "atomic", enabled=False, parameters={1j})
    with pytest.raises(CerealError):
        manager.update_workflow_schedule(WF, "atomic", enabled="no")  # type: ignore[arg-type]
    assert fields(manager.get_workflow_schedule(WF, "atomic")) == fields(before)
    with pytest.raises(WorkflowScheduleNotFoundError, match="nope"):
        manager.update_workflow_schedule(WF, "nope", enabled=False)


def test_reenabling_a_rule_that_ran_out_while_disabled_is_rejected(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    manager = make_any_manager(scheduler=False)
    at = clock.second_after(1)
    manager.create_workflow_schedule(
        WF, "gone", recurrence=rule(at, "FREQ=SECONDLY;COUNT=1"), enabled=False
    )
    before = manager.get_workflow_schedule(WF, "gone")
    assert not before.enabled
    clock.sleep_until(at + timedelta(seconds=0.5))
    with pytest.raises(InvalidScheduleError):
        manager.update_workflow_schedule(WF, "gone", enabled=True)
    assert fields(manager.get_workflow_schedule(WF, "gone")) == fields(before)


# -- create ----------------------------------------------------------------------------------


def test_create_rejects_duplicates_bad_rules_and_bad_input_storing_nothing(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    manager = make_any_manager(scheduler=False)
    good = rule(clock.second_after(3600), "FREQ=DAILY")
    manager.create_workflow_schedule(WF, "dup", {"x": 1}, recurrence=good)
    original = manager.get_workflow_schedule(WF, "dup")
    with pytest.raises(WorkflowScheduleExistsError, match="dup"):
        manager.create_workflow_schedule(WF, "dup", {"x": 2}, recurrence=good, enabled=False)
    assert fields(manager.get_workflow_schedule(WF, "dup")) == fields(original)

    unparsable = [
        "",
        "not a rule",
        "FREQ=SOMETIMES",
        "RRULE:FREQ=DAILY;BYHOUR=24",
        "DTSTART:2030-01-01\nRRULE:FREQ=DAILY",
        "DTSTART;TZID=Mars/Olympus:20300101T000000\nRRULE:FREQ=DAILY",
        "DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY;COUNT=2;UNTIL=20310101T000000Z",
    ]
    no_more_occurrences = [
        "DTSTART:20200101T000000Z\nRRULE:FREQ=DAILY;COUNT=5",
        "DTSTART:20200101T000000Z\nRRULE:FREQ=HOURLY;UNTIL=20200102T000000Z",
        "DTSTART:20200101T000000Z\nRDATE:20200101T000000Z,20210101T000000Z",
        rule(clock.now() - timedelta(seconds=5), "FREQ=SECONDLY;COUNT=1"),
        rrule(DAILY, count=1, dtstart=datetime(2021, 6, 1, tzinfo=UTC)),
    ]
    for recurrence in [*unparsable, *no_more_occurrences]:
        with pytest.raises(InvalidScheduleError):
            manager.create_workflow_schedule(WF, "bad", recurrence=recurrence)
    with pytest.raises(InvalidScheduleError):
        manager.create_workflow_schedule(WF, "bad", recurrence=42)  # type: ignore[arg-type]

    bad_calls: list[tuple[tuple[Any, ...], dict[str, Any], type[CerealError]]] = [
        (("", "bad"), {}, CerealError),
        ((WF, ""), {}, CerealError),
        ((None, "bad"), {}, CerealError),
        ((WF, 7), {}, CerealError),
        ((WF, "x" * 1000), {}, CerealError),
        ((WF, "nul\x00"), {}, CerealError),
        ((WF, "bad", {"f": float("nan")}), {}, SerializationError),
        ((WF, "bad", object()), {}, SerializationError),
        ((WF, "bad"), {"enabled": "yes"}, CerealError),
    ]
    for args, kwargs, error in bad_calls:
        with pytest.raises(error):
            manager.create_workflow_schedule(*args, recurrence=good, **kwargs)
    assert [s.instance_name for s in manager.list_workflow_schedules()] == ["dup"]


def test_create_accepts_dateutil_rrule_and_rruleset(
    make_any_manager: MakeManager, clock: TimeSource
) -> None:
    manager = make_any_manager(scheduler=False)
    now = clock.now()
    utc_rule = rrule(MINUTELY, interval=15, dtstart=datetime(2030, 1, 1, 9, tzinfo=UTC))
    london = ZoneInfo("Europe/London")
    zoned_rule = rrule(DAILY, dtstart=datetime(2030, 3, 29, 9, 0, tzinfo=london))
    rule_set = rruleset()
    rule_set.rrule(rrule(SECONDLY, interval=30, dtstart=datetime(2031, 5, 1, tzinfo=UTC)))
    rule_set.exdate(datetime(2031, 5, 1, 0, 0, 30, tzinfo=UTC))
    rule_set.rdate(datetime(2031, 4, 30, 12, tzinfo=UTC))
    objects: dict[str, rrule | rruleset] = {"utc": utc_rule, "zoned": zoned_rule, "set": rule_set}
    for name, obj in objects.items():
        manager.create_workflow_schedule(WF, name, recurrence=obj)
        schedule = manager.get_workflow_schedule(WF, name)
        expected = [d.astimezone(UTC) for d in islice(obj.xafter(now, inc=True), 6)]
        assert schedule.next_due_at == expected[0], name
        assert schedule.next_occurrences(6) == expected, name
        assert schedule.recurrence.startswith("DTSTART"), schedule.recurrence
    assert manager.get_workflow_schedule(WF, "utc").recurrence == (
        "DTSTART:20300101T090000Z\nRRULE:FREQ=MINUTELY;INTERVAL=15"
    )
    zoned = manager.get_workflow_schedule(WF, "zoned")
    assert zoned.recurrence.startswith("DTSTART;TZID=Europe/London:20300329T090000\n")
    # 09:00 London across the switch to summer time on 2030-03-31.
    assert zoned.next_occurrences(3) == [
        datetime(2030, 3, 29, 9, tzinfo=UTC),
        datetime(2030, 3, 30, 9, tzinfo=UTC),
        datetime(2030, 3, 31, 8, tzinfo=UTC),
    ]
    assert manager.get_workflow_schedule(WF, "set").next_occurrences(3) == [
        datetime(2031, 4, 30, 12, tzinfo=UTC),
        datetime(2031, 5, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2031, 5, 1, 0, 1, 0, tzinfo=UTC),
    ]


def test_stored_recurrence_text_round_trips_exactly(make_any_manager: MakeManager) -> None:
    manager = make_any_manager(scheduler=False)
    texts = {
        "utc": "DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY;INTERVAL=2",
        "london": "DTSTART;TZID=Europe/London:20300601T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,FR",
        "dates": (
            "DTSTART;TZID=America/New_York:20300105T083000\nRRULE:FREQ=MONTHLY;BYMONTHDAY=5\n"
            "RDATE;TZID=America/New_York:20300110T120000\nEXDATE:20300305T133000Z"
        ),
    }
    for name, text in texts.items():
        manager.create_workflow_schedule(WF, name, recurrence=text)
    listed = {s.instance_name: s.recurrence for s in manager.list_workflow_schedules()}
    assert listed == texts
    for name, text in texts.items():
        assert manager.get_workflow_schedule(WF, name).recurrence == text

    # Summer time: 09:00 in London is 08:00 UTC; the first Monday or Friday from 2030-06-01.
    assert manager.get_workflow_schedule(WF, "london").next_due_at == datetime(
        2030, 6, 3, 8, tzinfo=UTC
    )
    # 08:30 EST is 13:30 UTC; 10 January comes from RDATE; 5 March is excluded.
    assert manager.get_workflow_schedule(WF, "dates").next_occurrences(4) == [
        datetime(2030, 1, 5, 13, 30, tzinfo=UTC),
        datetime(2030, 1, 10, 17, 0, tzinfo=UTC),
        datetime(2030, 2, 5, 13, 30, tzinfo=UTC),
        datetime(2030, 4, 5, 12, 30, tzinfo=UTC),
    ]

    # Updating the rule stores the new text as given, too.
    new = "DTSTART;TZID=Europe/London:20301027T013000\nRRULE:FREQ=DAILY"
    manager.update_workflow_schedule(WF, "utc", recurrence=new)
    assert manager.get_workflow_schedule(WF, "utc").recurrence == new


def test_rule_without_dtstart_is_anchored_once_and_does_not_drift(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    manager = make_any_manager(scheduler=False)
    before = clock.now().replace(microsecond=0) - timedelta(seconds=1)
    manager.create_workflow_schedule(WF, "floating", recurrence="FREQ=HOURLY;INTERVAL=2")
    after = clock.now() + timedelta(seconds=1)
    first = manager.get_workflow_schedule(WF, "floating")
    head, _, rest = first.recurrence.partition("\n")
    assert head.startswith("DTSTART:") and head.endswith("Z"), first.recurrence
    assert rest == "RRULE:FREQ=HOURLY;INTERVAL=2"
    anchor = datetime.strptime(head[len("DTSTART:") :], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= anchor <= after
    assert first.next_due_at in (anchor, anchor + timedelta(hours=2))
    probe = clock.now()
    clock.sleep(1.1)
    again = manager.get_workflow_schedule(WF, "floating")
    assert again.recurrence == first.recurrence
    assert again.next_due_at == first.next_due_at
    assert again.next_occurrences(3, probe) == first.next_occurrences(3, probe)
    # Another manager object reads the same anchor.
    assert make_any_manager(scheduler=False).get_workflow_schedule(WF, "floating") == again


# -- get, list, delete -----------------------------------------------------------------------


def test_get_list_delete_and_not_found_errors(
    make_any_manager: MakeManager, clock: TimeSource
) -> None:
    manager = make_any_manager(scheduler=False)
    with pytest.raises(WorkflowScheduleNotFoundError, match="missing"):
        manager.get_workflow_schedule(WF, "missing")
    with pytest.raises(WorkflowScheduleNotFoundError, match="missing"):
        manager.delete_workflow_schedule(WF, "missing")
    assert manager.list_workflow_schedules() == []

    soon = rule(clock.second_after(3600), "FREQ=DAILY")
    manager.create_workflow_schedule("wf_b", "one", [1, 2], recurrence=soon)
    manager.create_workflow_schedule("wf_a", "two", recurrence=soon, enabled=False)
    manager.create_workflow_schedule("wf_a", "one", {"p": None}, recurrence=soon)
    listed = manager.list_workflow_schedules()
    assert [(s.workflow_name, s.instance_name, s.enabled) for s in listed] == [
        ("wf_a", "one", True),
        ("wf_a", "two", False),
        ("wf_b", "one", True),
    ]
    for schedule in listed:
        assert schedule == manager.get_workflow_schedule(
            schedule.workflow_name, schedule.instance_name
        )
        assert schedule.last_enqueued_at is schedule.last_start is schedule.last_end is None
    assert listed[0].parameters == {"p": None}
    assert listed[2].parameters == [1, 2]

    # Names are not swapped: (workflow_name, instance_name) everywhere.
    with pytest.raises(WorkflowScheduleNotFoundError):
        manager.get_workflow_schedule("one", "wf_b")
    manager.delete_workflow_schedule("wf_a", "two")
    with pytest.raises(WorkflowScheduleNotFoundError):
        manager.get_workflow_schedule("wf_a", "two")
    with pytest.raises(WorkflowScheduleNotFoundError):
        manager.delete_workflow_schedule("wf_a", "two")
    with pytest.raises(WorkflowScheduleNotFoundError):
        manager.update_workflow_schedule("wf_a", "two", enabled=True)
    assert [(s.workflow_name, s.instance_name) for s in manager.list_workflow_schedules()] == [
        ("wf_a", "one"),
        ("wf_b", "one"),
    ]
    # A deleted pair can be created again.
    manager.create_workflow_schedule("wf_a", "two", recurrence=soon)
    assert manager.get_workflow_schedule("wf_a", "two").enabled
    for call in (
        manager.get_workflow_schedule,
        manager.delete_workflow_schedule,
    ):
        with pytest.raises(CerealError):
            call("", "x")
        with pytest.raises(CerealError):
            call("x", None)  # type: ignore[arg-type]


def test_last_run_fields_reflect_the_latest_finished_run(
    make_any_manager: MakeManager, clock: TimeSource
) -> None:
    recorder = recording_flow(clock)
    manager = started(make_any_manager, recorder, clock)
    first = clock.second_after(1)
    manager.create_workflow_schedule(WF, "last", recurrence=rule(first, "FREQ=SECONDLY;INTERVAL=2"))
    fresh = manager.get_workflow_schedule(WF, "last")
    assert fresh.last_enqueued_at is fresh.last_start is fresh.last_end is None

    runs = clock.wait_for_starts(recorder, 2, 6, "last")
    manager.update_workflow_schedule(WF, "last", enabled=False)
    runs = recorder.starts("last")
    info = manager.await_workflow(WF, "last", timeout=5)
    schedule = clock.wait_for(
        lambda: (
            (s := manager.get_workflow_schedule(WF, "last")).last_end is not None
            and s.last_start == info.started_at
            and s
        ),
        3,
        "the last run to show",
    )
    assert schedule.last_start == info.started_at
    assert schedule.last_end == info.ended_at
    assert schedule.last_enqueued_at == runs[-1].enqueued_at
    assert schedule.last_start is not None and schedule.last_end is not None
    assert runs[0].enqueued_at < schedule.last_start <= schedule.last_end
    (listed,) = manager.list_workflow_schedules()
    assert listed == schedule


def test_next_occurrences_returns_n_increasing_utc_datetimes_from_the_rule(
    make_any_manager: MakeManager,
) -> None:
    manager = make_any_manager(scheduler=False)
    manager.create_workflow_schedule(
        WF, "quarter", recurrence="DTSTART:20300101T000000Z\nRRULE:FREQ=MINUTELY;INTERVAL=15"
    )
    manager.create_workflow_schedule(
        WF, "two", recurrence="DTSTART:20300101T000000Z\nRRULE:FREQ=DAILY;COUNT=2"
    )
    schedule = manager.get_workflow_schedule(WF, "quarter")
    got = schedule.next_occurrences(5)
    assert got == [datetime(2030, 1, 1, 0, 15 * k, tzinfo=UTC) for k in range(4)] + [
        datetime(2030, 1, 1, 1, 0, tzinfo=UTC)
    ]
    assert all(d.utcoffset() == timedelta(0) for d in got)
    assert all(a < b for a, b in pairwise(got))
    assert schedule.next_occurrences(1) == [schedule.next_due_at]
    assert schedule.next_occurrences(0) == []
    assert len(schedule.next_occurrences(100)) == 100
    assert manager.get_workflow_schedule(WF, "two").next_occurrences(5) == [
        datetime(2030, 1, 1, tzinfo=UTC),
        datetime(2030, 1, 2, tzinfo=UTC),
    ]
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(CerealError):
            schedule.next_occurrences(bad)  # type: ignore[arg-type]


# -- skipping and coalescing -----------------------------------------------------------------


def test_occurrence_is_skipped_while_the_previous_run_is_live(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    recorder = recording_flow(clock, hold=True)
    manager = started(make_any_manager, recorder, clock)
    first = clock.second_after(1)
    manager.create_workflow_schedule(
        WF, "busy", {"b": 1}, recurrence=rule(first, "FREQ=SECONDLY;INTERVAL=2")
    )
    (run,) = clock.wait_for_starts(recorder, 1, 4, "busy")
    # The run stays live across the next occurrence, which is skipped (and logged).
    skipped = first + timedelta(seconds=2)
    with capture_logs() as logs:
        clock.wait_for(
            lambda: (
                (s := manager.get_workflow_schedule(WF, "busy")).next_due_at is not None
                and s.next_due_at > skipped
            ),
            (skipped - clock.now()).total_seconds() + 2,
            "the skipped occurrence to pass",
        )
    assert any(
        entry["log_level"] == "warning"
        and entry.get("instance") == "busy"
        and "skip" in entry["event"]
        for entry in logs
    ), logs
    schedule = manager.get_workflow_schedule(WF, "busy")
    assert schedule.enabled
    assert schedule.next_due_at == skipped + timedelta(seconds=2)
    assert schedule.last_enqueued_at == run.enqueued_at
    assert recorder.starts("busy") == [run]
    assert manager.get_workflow_instance(WF, "busy").is_running
    assert len(history(manager.driver, "busy")) == 1

    # The scheduler carries on: once the run ends, the next occurrence runs again.
    manager.kill_workflow(WF, "busy")
    runs = clock.wait_for_starts(recorder, 2, 4, "busy")
    assert abs(runs[1].seen_at - (skipped + timedelta(seconds=2))) <= TOLERANCE


def test_missed_occurrences_are_coalesced_into_one_run(
    make_manager: MakeManager, driver: PostgresDriver, clock: TimeSource
) -> None:
    recorder = recording_flow(clock)
    # Managers without a scheduler run workflows but never fire schedules.
    started(make_manager, recorder, clock, scheduler=False)
    offline = make_manager(scheduler=False)
    # Every 30 s, with the next occurrence about 15 s away so that it stays out of the test.
    upcoming = clock.second_after(15)
    dtstart = upcoming - timedelta(seconds=300)
    offline.create_workflow_schedule(
        WF, "missed", {"m": 1}, recurrence=rule(dtstart, "FREQ=SECONDLY;INTERVAL=30")
    )
    assert offline.get_workflow_schedule(WF, "missed").next_due_at == upcoming
    # Pretend that no scheduler ran for two minutes: four occurrences were missed.
    with driver.connection() as conn:
        conn.execute(
            "UPDATE workflow_schedules SET next_due_at = next_due_at - interval '120 seconds'"
        )
    assert offline.get_workflow_schedule(WF, "missed").next_due_at < clock.now() - timedelta(
        seconds=90
    )
    clock.sleep(0.5)
    assert recorder.starts() == []

    started(make_manager, recorder, clock)
    (run,) = clock.wait_for_starts(recorder, 1, 5, "missed")
    assert run.parameters == {"m": 1}
    schedule = clock.wait_for(
        lambda: (s := offline.get_workflow_schedule(WF, "missed")).last_end is not None and s,
        3,
        "the coalesced run to finish",
    )
    clock.sleep(1.5)
    assert recorder.starts() == [run]
    assert len(history(driver, "missed")) == 1
    assert schedule.enabled
    assert schedule.last_enqueued_at == run.enqueued_at
    # The first occurrence after the run, not one of the missed ones.
    assert schedule.next_due_at == upcoming
    assert schedule.next_due_at > clock.now()


def test_unreadable_stored_rule_disables_its_schedule_and_others_still_run(
    make_manager: MakeManager, driver: PostgresDriver, clock: TimeSource
) -> None:
    setup = make_manager(scheduler=False)
    setup.create_workflow_schedule(
        WF, "broken", recurrence=rule(clock.second_after(60), "FREQ=HOURLY")
    )
    at = clock.second_after(1.5)
    setup.create_workflow_schedule(WF, "fine", recurrence=rule(at, "FREQ=HOURLY"))
    # A row damaged outside cereal, overdue, so that the scheduler meets it first.
    with driver.connection() as conn:
        conn.execute(
            "UPDATE workflow_schedules SET recurrence = 'FREQ=BOGUS',"
            " next_due_at = now() - interval '1 minute' WHERE instance_name = 'broken'"
        )
    recorder = recording_flow(clock)
    started(make_manager, recorder, clock)
    (run,) = clock.wait_for_starts(recorder, 1, 5, "fine")
    assert abs(run.seen_at - at) <= TOLERANCE
    broken = setup.get_workflow_schedule(WF, "broken")
    assert broken.enabled is False
    assert recorder.starts("broken") == []
    with pytest.raises(InvalidScheduleError):
        setup.update_workflow_schedule(WF, "broken", enabled=True)
    # A valid rule repairs it.
    setup.update_workflow_schedule(
        WF, "broken", enabled=True, recurrence=rule(clock.second_after(60), "FREQ=HOURLY")
    )
    assert setup.get_workflow_schedule(WF, "broken").enabled


# -- several managers ------------------------------------------------------------------------


def test_each_occurrence_is_enqueued_once_with_three_managers(
    make_any_manager: MakeManager,
    clock: TimeSource,
) -> None:
    recorder = recording_flow(clock)
    managers = [started(make_any_manager, recorder, clock) for _ in range(3)]
    first = clock.second_after(1)
    with capture_logs() as logs:
        managers[0].create_workflow_schedule(
            WF, "once", recurrence=rule(first, "FREQ=SECONDLY;INTERVAL=1")
        )
        clock.sleep_until(first + timedelta(seconds=6.5))
        managers[1].delete_workflow_schedule(WF, "once")
        stopped_at = clock.now()
        clock.sleep(0.5)  # the last run finishes

    occurrences = math.floor((stopped_at - first).total_seconds()) + 1  # 7
    starts = history(managers[0].driver, "once")
    windows = Counter(math.floor((s - first).total_seconds()) for s in starts)
    assert windows and max(windows.values()) == 1, windows
    assert all(0 <= k < occurrences for k in windows), windows
    assert occurrences - 1 <= len(starts) <= occurrences, (occurrences, starts)
    runs = recorder.starts("once")
    assert [r.enqueued_at for r in runs] == starts
    for run in runs:
        window = math.floor((run.enqueued_at - first).total_seconds())
        occurrence = first + timedelta(seconds=window)
        assert abs(run.seen_at - occurrence) <= TOLERANCE, (run, occurrence)
    # A second scheduler handling an occurrence would be hidden from the history if the first
    # run were still live (it would count as skipped): no occurrence was handled twice either.
    handled = Counter(e["due_at"] for e in logs if e.get("instance") == "once" and "due_at" in e)
    assert handled and max(handled.values()) == 1, handled
    assert len(handled) >= len(starts), (handled, starts)  # every run was logged


def test_sleeping_scheduler_wakes_on_notify_from_another_manager(
    make_any_manager: MakeManager, clock: TimeSource
) -> None:
    recorder = recording_flow(clock)
    started(make_any_manager, recorder, clock)
    time.sleep(1)  # its first pass found nothing and it now sleeps for up to a minute
    other = make_any_manager(scheduler=False)  # its own driver; never started

    # The waits below are in real time on either clock: only the notification of the change can
    # cut the scheduler's sleep short (a stepped clock jumps without waking anyone).
    at = clock.second_after(1)
    other.create_workflow_schedule(WF, "created", recurrence=rule(at, "FREQ=HOURLY"))
    clock.jump_to(at)
    (run,) = recorder.wait_for_starts(1, 3, "created")
    assert abs(run.seen_at - at) <= TOLERANCE

    other.create_workflow_schedule(
        WF, "updated", recurrence=rule(clock.second_after(3600), "FREQ=HOURLY")
    )
    time.sleep(0.5)
    at = clock.second_after(1)
    other.update_workflow_schedule(WF, "updated", recurrence=rule(at, "FREQ=HOURLY"))
    clock.jump_to(at)
    (run,) = recorder.wait_for_starts(1, 3, "updated")
    assert abs(run.seen_at - at) <= TOLERANCE
