"""Hostile recurrence rules, as text and as ``dateutil`` objects: ``InvalidScheduleError``, or the
rule is stored and gives the occurrences ``dateutil`` gives.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cereal.errors import (
    InvalidScheduleError,
    WorkflowScheduleNotFoundError,
)
from tests.integration.bad_input.hostile import (
    ANY_CHAR,
    ODD_TEXT,
    SETTINGS,
    WF,
    MakeManager,
)

VALID_RULES = [
    "FREQ=DAILY",
    "FREQ=HOURLY;INTERVAL=2",
    "FREQ=MONTHLY;BYMONTHDAY=-1;COUNT=5",
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
    "FREQ=SECONDLY;DTSTART=20190101T000000Z;INTERVAL=10",
    "DTSTART:20300101T090000Z\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE,-1FR",
    "DTSTART;TZID=Europe/London:20300101T090000\nRRULE:FREQ=DAILY;UNTIL=20301231",
    "DTSTART;TZID=America/New_York:20250309T023000\nRRULE:FREQ=DAILY\nEXDATE:20300105T023000",
    "DTSTART:20300101T000000Z\nRDATE;VALUE=DATE-TIME:20300102T000000Z,20300103T000000Z",
    "DTSTART:20300101T000000\nRRULE:FREQ=MONTHLY;BYDAY=1MO;BYSETPOS=1;WKST=SU",
]
TOKENS = [
    "FREQ",
    "DAILY",
    "WEEKLY",
    "YEARLY",
    "MONTHLY",
    "RRULE",
    "DTSTART",
    "TZID",
    "EXDATE",
    "RDATE",
    "UNTIL",
    "COUNT",
    "INTERVAL",
    "BYDAY",
    "BYSETPOS",
    "Z",
    "T",
    ":",
    ";",
    "=",
    ",",
    "\n",
    "-",
    "+",
    "0",
    "99",
    "MO",
    "Europe/London",
    "Etc/GMT+14",
]
rule_chars = st.sampled_from(sorted(set("".join(VALID_RULES)) | {"\x00", "\ud800", "\u0663"}))


@st.composite
def mutated_rules(draw: st.DrawFn) -> str:
    """A valid rule after one to three random edits."""
    text = draw(st.sampled_from(VALID_RULES))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "number", "token", "case", "repeat"]))
        if edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif edit == "insert":
            text = text[:at] + draw(st.text(rule_chars, min_size=1, max_size=6)) + text[at:]
        elif edit == "number":
            digits = draw(st.sampled_from(["0", "-1", "00000000", "9" * 10, "9" * 5000]))
            text = re.sub(r"\d+", digits, text, count=draw(st.integers(1, 3)))
        elif edit == "token":
            old, new = draw(st.sampled_from(TOKENS)), draw(st.sampled_from(TOKENS))
            text = text.replace(old, new, 1)
        elif edit == "case":
            text = text.lower() if draw(st.booleans()) else text.swapcase()
        else:
            line = draw(st.sampled_from(text.split("\n")))
            text = text + "\n" + line
    return text


recurrences = st.one_of(
    mutated_rules(),
    st.text(ANY_CHAR, max_size=40),
    st.text(rule_chars, max_size=60),
    st.sampled_from(ODD_TEXT),
)


def test_hostile_recurrence_rules_raise_invalid_schedule_error_or_are_stored(
    make_manager: MakeManager,
) -> None:
    m = make_manager(scheduler=False)
    m.create_workflow_schedule(WF, "kept", recurrence="FREQ=DAILY")
    kept = [m.get_workflow_schedule(WF, "kept")]  # a DTSTART-less reset re-anchors it
    counter = itertools.count()

    @SETTINGS
    @given(rule=recurrences)
    def check(rule: str) -> None:
        name = f"r{next(counter)}"
        try:
            m.create_workflow_schedule(WF, name, recurrence=rule)
        except InvalidScheduleError as exc:
            assert str(exc)
            with pytest.raises(WorkflowScheduleNotFoundError):
                m.get_workflow_schedule(WF, name)
        else:
            stored = m.get_workflow_schedule(WF, name)
            assert stored.enabled and stored.next_due_at is not None
            assert stored.next_occurrences(1, stored.next_due_at) == [stored.next_due_at]
            m.delete_workflow_schedule(WF, name)
        try:
            m.update_workflow_schedule(WF, "kept", recurrence=rule, enabled=False)
        except InvalidScheduleError:
            assert m.get_workflow_schedule(WF, "kept") == kept[0]  # untouched
        else:
            m.update_workflow_schedule(WF, "kept", recurrence="FREQ=DAILY", enabled=True)
            kept[0] = m.get_workflow_schedule(WF, "kept")
            assert kept[0].enabled

    check()


def test_dateutil_rule_objects_that_cannot_be_stored_raise_invalid_schedule_error(
    make_manager: MakeManager,
) -> None:
    from dateutil.rrule import DAILY, rrule, rruleset

    m = make_manager(scheduler=False)
    past = rrule(DAILY, dtstart=datetime(2000, 1, 1, tzinfo=UTC), count=3)
    odd_zone = rrule(DAILY, dtstart=datetime(2030, 1, 1, tzinfo=timezone(timedelta(minutes=30))))
    with_exrule = rruleset()
    with_exrule.rrule(rrule(DAILY, dtstart=datetime(2030, 1, 1, tzinfo=UTC)))
    with_exrule.exrule(rrule(DAILY, dtstart=datetime(2030, 1, 1, tzinfo=UTC), count=2))
    for bad in (past, odd_zone, with_exrule, rruleset()):
        with pytest.raises(InvalidScheduleError):
            m.create_workflow_schedule(WF, "x", recurrence=bad)
    assert m.list_workflow_schedules() == []
