"""Unit tests of cereal.recurrence: parsing, canonical text, validation, DST and re-anchoring."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest
from dateutil import rrule as rr
from dateutil import tz as dtz
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cereal.errors import InvalidScheduleError
from cereal.recurrence import Recurrence, load_recurrence, parse_recurrence

NOW = datetime(2024, 1, 1, tzinfo=UTC)
DT = "DTSTART:20300101T090000Z\n"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def occurrences(text: str, after: datetime, n: int, now: datetime = NOW) -> list[datetime]:
    return parse_recurrence(text, now=now).occurrences_after(after, n)


# --- accepted forms and canonical text ------------------------------------------------------


def test_utc_dtstart_text_round_trips_exactly() -> None:
    text = "DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY;INTERVAL=2"
    rec = parse_recurrence(text, now=NOW)
    assert rec.text == text
    assert load_recurrence(rec.text).text == text
    assert rec.occurrences_after(NOW, 3) == [
        utc(2030, 1, 1, 9),
        utc(2030, 1, 3, 9),
        utc(2030, 1, 5, 9),
    ]


def test_zoned_dtstart_text_round_trips_exactly() -> None:
    text = "DTSTART;TZID=Europe/London:20300701T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,FR"
    rec = parse_recurrence(text, now=NOW)
    assert rec.text == text
    assert load_recurrence(text) == rec
    # 2030-07-01 is a Monday; 09:00 BST is 08:00 UTC
    assert rec.occurrences_after(NOW, 3) == [
        utc(2030, 7, 1, 8),
        utc(2030, 7, 5, 8),
        utc(2030, 7, 8, 8),
    ]


def test_floating_dtstart_is_read_as_utc() -> None:
    rec = parse_recurrence("DTSTART:20300101T090000\nRRULE:FREQ=DAILY", now=NOW)
    assert rec.text == "DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY"
    assert rec.next_after(NOW) == utc(2030, 1, 1, 9)


def test_lower_case_whitespace_and_crlf_are_normalised() -> None:
    text = "  dtstart:20300101T090000z\r\n  rrule: freq = daily ; count = 3 \r\n\r\n"
    rec = parse_recurrence(text, now=NOW)
    assert rec.text == "DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY;COUNT=3"
    assert len(rec.occurrences_after(NOW, 10)) == 3


def test_rrule_parts_are_kept_in_the_given_order() -> None:
    text = "DTSTART:20300101T090000Z\nRRULE:BYHOUR=9,17;INTERVAL=1;FREQ=DAILY;WKST=SU"
    assert parse_recurrence(text, now=NOW).text == text


def test_bare_rule_is_anchored_at_now_truncated_to_the_second() -> None:
    now = utc(2024, 5, 1, 12, 30, 15).replace(microsecond=123456)
    rec = parse_recurrence("FREQ=DAILY;INTERVAL=2", now=now)
    assert rec.text == "DTSTART:20240501T123015Z\nRRULE:FREQ=DAILY;INTERVAL=2"
    # the anchor is stored, so evaluating later does not move it
    later = utc(2024, 5, 20)
    assert load_recurrence(rec.text).next_after(later) == utc(2024, 5, 21, 12, 30, 15)
    assert rec.next_after(now) == utc(2024, 5, 3, 12, 30, 15)


def test_rrule_line_without_dtstart_is_anchored_at_now() -> None:
    now = utc(2024, 5, 1, 12, 0, 0)
    rec = parse_recurrence("RRULE:FREQ=HOURLY", now=now)
    assert rec.text == "DTSTART:20240501T120000Z\nRRULE:FREQ=HOURLY"
    assert rec.occurrences_after(now, 2) == [now, now + timedelta(hours=1)]


def test_legacy_inline_dtstart_rule_is_rewritten() -> None:
    rec = parse_recurrence("FREQ=SECONDLY;DTSTART=20190101T000000Z;INTERVAL=10", now=NOW)
    assert rec.text == "DTSTART:20190101T000000Z\nRRULE:FREQ=SECONDLY;INTERVAL=10"
    assert rec.occurrences_after(utc(2024, 1, 1, 0, 0, 5), 2) == [
        utc(2024, 1, 1, 0, 0, 10),
        utc(2024, 1, 1, 0, 0, 20),
    ]


def test_multiple_rrules_rdates_and_exdates_are_combined() -> None:
    text = (
        "DTSTART;TZID=America/New_York:20300107T090000\n"
        "RRULE:FREQ=WEEKLY;BYDAY=MO\n"
        "RRULE:FREQ=WEEKLY;BYDAY=WE;BYHOUR=17\n"
        "RDATE;VALUE=DATE-TIME:20300112T150000Z,20300113T150000Z\n"
        "EXDATE;TZID=America/New_York:20300109T170000\n"
        "EXDATE:20300114T140000Z"
    )
    rec = parse_recurrence(text, now=NOW)
    assert rec.text == text
    assert rec.occurrences_after(NOW, 5) == [
        utc(2030, 1, 7, 14),  # Monday 09:00 EST
        utc(2030, 1, 12, 15),  # RDATE (Wednesday the 9th at 17:00 is an EXDATE)
        utc(2030, 1, 13, 15),
        utc(2030, 1, 16, 22),  # Wednesday 17:00 EST (Monday the 14th is an EXDATE)
        utc(2030, 1, 21, 14),
    ]


def test_rdate_and_exdate_without_zone_use_the_dtstart_zone() -> None:
    text = (
        "DTSTART;TZID=Europe/London:20300701T090000\nRRULE:FREQ=DAILY;COUNT=2\n"
        "RDATE:20300710T120000\nEXDATE:20300702T090000"
    )
    rec = parse_recurrence(text, now=NOW)
    assert rec.occurrences_after(NOW, 5) == [utc(2030, 7, 1, 8), utc(2030, 7, 10, 11)]


def test_rdate_only_recurrence_is_accepted() -> None:
    rec = parse_recurrence("DTSTART:20300101T000000Z\nRDATE:20300105T090000Z", now=NOW)
    assert rec.occurrences_after(NOW, 3) == [utc(2030, 1, 5, 9)]
    assert rec.next_after(utc(2030, 1, 5, 9), inclusive=False) is None


def test_time_zone_name_is_matched_case_insensitively() -> None:
    rec = parse_recurrence("DTSTART;TZID=europe/london:20300101T090000\nRRULE:FREQ=DAILY", now=NOW)
    assert rec.text == "DTSTART;TZID=Europe/London:20300101T090000\nRRULE:FREQ=DAILY"


def test_floating_until_with_zoned_dtstart_is_read_in_that_zone() -> None:
    text = "DTSTART;TZID=America/New_York:20300101T090000\nRRULE:FREQ=DAILY;UNTIL=20300103T090000"
    rec = parse_recurrence(text, now=NOW)
    assert rec.text == text
    assert rec.occurrences_after(NOW, 5) == [
        utc(2030, 1, 1, 14),
        utc(2030, 1, 2, 14),
        utc(2030, 1, 3, 14),
    ]


def test_utc_until_with_zoned_dtstart_is_inclusive() -> None:
    text = "DTSTART;TZID=America/New_York:20300101T090000\nRRULE:FREQ=DAILY;UNTIL=20300102T140000Z"
    assert occurrences(text, NOW, 5) == [utc(2030, 1, 1, 14), utc(2030, 1, 2, 14)]


def test_date_only_until_includes_the_whole_local_day() -> None:
    text = "DTSTART;TZID=Asia/Tokyo:20300101T230000\nRRULE:FREQ=DAILY;UNTIL=20300102"
    assert occurrences(text, NOW, 5) == [utc(2030, 1, 1, 14), utc(2030, 1, 2, 14)]


def test_single_occurrence_rule_anchored_at_now_with_microseconds_is_accepted() -> None:
    now = utc(2024, 5, 1, 12, 0, 0).replace(microsecond=999999)
    rec = parse_recurrence("FREQ=DAILY;COUNT=1", now=now)
    assert rec.occurrences_after(utc(2024, 5, 1), 5) == [utc(2024, 5, 1, 12)]


def test_occurrences_at_the_ends_of_the_calendar_do_not_overflow() -> None:
    late = load_recurrence("DTSTART;TZID=America/New_York:99991231T160000\nRRULE:FREQ=HOURLY")
    assert late.occurrences_after(utc(9999, 12, 31, 20), 9) == [
        utc(9999, 12, 31, 21),
        utc(9999, 12, 31, 22),
        utc(9999, 12, 31, 23),
    ]
    assert late.next_after(datetime.max.replace(tzinfo=UTC)) is None
    early = load_recurrence("DTSTART;TZID=Asia/Tokyo:00010101T050000\nRRULE:FREQ=DAILY")
    assert early.next_after(datetime.min.replace(tzinfo=UTC)) == utc(1, 1, 1, 19, 41, 1)  # LMT
    with pytest.raises(InvalidScheduleError, match="out of range"):
        load_recurrence("DTSTART:20300101T000000Z\nRDATE;TZID=Asia/Tokyo:00010101T010000")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("FREQ=WEEKLY;BYDAY=MO,WE,FR;BYSETPOS=-1", [utc(2030, 1, 4, 9), utc(2030, 1, 11, 9)]),
        ("FREQ=YEARLY;BYMONTH=1,3;BYSETPOS=2", [utc(2030, 3, 1, 9), utc(2031, 3, 1, 9)]),
        ("FREQ=DAILY;BYHOUR=9,18;BYSETPOS=2", [utc(2030, 1, 1, 18), utc(2030, 1, 2, 18)]),
    ],
)
def test_rule_with_bysetpos_inside_its_period(rule: str, expected: list[datetime]) -> None:
    assert occurrences(DT + "RRULE:" + rule, NOW, 2) == expected


def test_count_rule_queried_inclusively_and_exclusively() -> None:
    rec = parse_recurrence("DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY;COUNT=3", now=NOW)
    assert rec.occurrences_after(utc(2030, 1, 2, 9), 5) == [utc(2030, 1, 2, 9), utc(2030, 1, 3, 9)]
    assert rec.occurrences_after(utc(2030, 1, 2, 9), 5, inclusive=False) == [utc(2030, 1, 3, 9)]
    assert rec.next_after(utc(2030, 1, 3, 9)) == utc(2030, 1, 3, 9)
    assert rec.next_after(utc(2030, 1, 3, 9), inclusive=False) is None
    assert rec.occurrences_after(NOW, 0) == []


def test_results_are_utc_for_an_aware_non_utc_after() -> None:
    rec = parse_recurrence("DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY", now=NOW)
    after = datetime(2030, 1, 1, 10, tzinfo=ZoneInfo("Europe/Paris"))  # 09:00 UTC
    found = rec.next_after(after)
    assert found == utc(2030, 1, 1, 9)
    assert found is not None and found.tzinfo is UTC


def test_exhausted_rule_loads_but_does_not_parse() -> None:
    text = "DTSTART:20200101T000000Z\nRRULE:FREQ=DAILY;COUNT=2"
    assert load_recurrence(text).next_after(NOW) is None
    with pytest.raises(InvalidScheduleError, match="has no occurrence at or after 2024-01-01"):
        parse_recurrence(text, now=NOW)


# --- dateutil objects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (None, "DTSTART:20300101T090000Z"),
        (UTC, "DTSTART:20300101T090000Z"),
        (dtz.UTC, "DTSTART:20300101T090000Z"),
        (ZoneInfo("Europe/London"), "DTSTART;TZID=Europe/London:20300101T090000"),
        (dtz.gettz("America/New_York"), "DTSTART;TZID=America/New_York:20300101T090000"),
        (timezone(timedelta(hours=2)), "DTSTART;TZID=Etc/GMT-2:20300101T090000"),
    ],
)
def test_rrule_object_keeps_its_zone(zone: timezone | None, expected: str) -> None:
    rule = rr.rrule(rr.DAILY, dtstart=datetime(2030, 1, 1, 9, tzinfo=zone))
    assert parse_recurrence(rule, now=NOW).text == expected + "\nRRULE:FREQ=DAILY"


def test_rrule_object_parts_and_aware_until_are_serialised() -> None:
    rule = rr.rrule(
        rr.WEEKLY,
        dtstart=datetime(2030, 1, 7, 9, tzinfo=ZoneInfo("Europe/London")),
        interval=2,
        byweekday=(rr.MO, rr.WE),
        until=datetime(2030, 2, 1, tzinfo=UTC),
    )
    rec = parse_recurrence(rule, now=NOW)
    assert rec.text == (
        "DTSTART;TZID=Europe/London:20300107T090000\n"
        "RRULE:FREQ=WEEKLY;INTERVAL=2;UNTIL=20300201T000000Z;BYDAY=MO,WE"
    )
    assert rec.occurrences_after(NOW, 10) == list(rule)


def test_rruleset_object_with_rdate_and_exdate() -> None:
    rules = rr.rruleset()
    rules.rrule(rr.rrule(rr.DAILY, dtstart=datetime(2030, 1, 1, 9), count=3))
    rules.rdate(datetime(2030, 1, 1, 12))
    rules.exdate(datetime(2030, 1, 2, 9, tzinfo=UTC))
    rec = parse_recurrence(rules, now=NOW)
    assert rec.text == (
        "DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY;COUNT=3\n"
        "RDATE:20300101T120000\nEXDATE:20300102T090000Z"
    )
    assert rec.occurrences_after(NOW, 5) == [
        utc(2030, 1, 1, 9),
        utc(2030, 1, 1, 12),
        utc(2030, 1, 3, 9),
    ]


def test_rruleset_rules_with_different_dtstarts_are_rejected() -> None:
    rules = rr.rruleset()
    rules.rrule(rr.rrule(rr.DAILY, dtstart=datetime(2030, 1, 1, 9)))
    rules.rrule(rr.rrule(rr.DAILY, dtstart=datetime(2030, 1, 1, 10)))
    with pytest.raises(InvalidScheduleError, match="share one DTSTART"):
        parse_recurrence(rules, now=NOW)


def test_rruleset_with_exrule_is_rejected() -> None:
    rules = rr.rruleset()
    rules.rrule(rr.rrule(rr.DAILY, dtstart=datetime(2030, 1, 1, 9)))
    rules.exrule(rr.rrule(rr.WEEKLY, dtstart=datetime(2030, 1, 1, 9)))
    with pytest.raises(InvalidScheduleError, match="EXRULE"):
        parse_recurrence(rules, now=NOW)


def test_rrule_object_with_unnamed_offset_or_byeaster_is_rejected() -> None:
    odd = timezone(timedelta(hours=5, minutes=30))
    with pytest.raises(InvalidScheduleError, match="no IANA time zone name"):
        parse_recurrence(rr.rrule(rr.DAILY, dtstart=datetime(2030, 1, 1, tzinfo=odd)), now=NOW)
    with pytest.raises(InvalidScheduleError, match="unknown RRULE part 'BYEASTER'"):
        parse_recurrence(rr.rrule(rr.YEARLY, dtstart=datetime(2030, 1, 1), byeaster=0), now=NOW)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem", "quoted"),
    [
        ("", "empty", "''"),
        ("  \r\n ", "empty", "'  \\r\\n '"),
        ("hello", "cannot parse", "'hello'"),
        (DT + "RRULE:FREQ=DAILY;FOO=1", "unknown RRULE part 'FOO'", "FREQ=DAILY;FOO=1"),
        ("FREQ=DAILY;FOO=1", "unknown RRULE part 'FOO'", "FREQ=DAILY;FOO=1"),
        (DT + "RRULE:FREQ=DAILY\nX-FOO:1", "unknown or unsupported property 'X-FOO'", "X-FOO:1"),
        (DT + "RRULE:FREQ=DAILY\nEXRULE:FREQ=WEEKLY", "property 'EXRULE'", "EXRULE:FREQ=WEEKLY"),
        (
            "DTSTART;TZID=Mars/Olympus:20300101T090000\nRRULE:FREQ=DAILY",
            "unknown time zone",
            "Mars",
        ),
        (DT + "RRULE:FREQ=DAILY;UNTIL=20291231T000000Z", "UNTIL is earlier than DTSTART", "UNTIL"),
        (DT + "RRULE:FREQ=DAILY;COUNT=2;UNTIL=20300201T000000Z", "COUNT and UNTIL", "COUNT=2"),
        (DT + "RRULE:INTERVAL=2", "no FREQ", "RRULE:INTERVAL=2"),
        (DT + "RRULE:FREQ=FORTNIGHTLY", "unknown FREQ 'FORTNIGHTLY'", "RRULE:FREQ=FORTNIGHTLY"),
        (DT + "RRULE:FREQ=DAILY;INTERVAL=0", "invalid INTERVAL value '0'", "FREQ=DAILY;INTERVAL=0"),
        (DT + "RRULE:FREQ=DAILY;BYHOUR=24", "invalid BYHOUR value '24'", "BYHOUR=24"),
        (DT + "RRULE:FREQ=DAILY;BYHOUR=1,,2", "invalid BYHOUR value ''", "BYHOUR=1,,2"),
        (DT + "RRULE:FREQ=DAILY;INTERVAL=\u0663", "invalid INTERVAL value", "INTERVAL=\u0663"),
        (DT + "RRULE:FREQ=DAILY;COUNT=" + "9" * 5000, "invalid COUNT value", "COUNT=999"),
        (DT + "RRULE:FREQ=MONTHLY;BYMONTHDAY=0", "invalid BYMONTHDAY value '0'", "BYMONTHDAY=0"),
        (DT + "RRULE:FREQ=WEEKLY;BYDAY=XX", "invalid BYDAY value 'XX'", "BYDAY=XX"),
        (DT + "RRULE:FREQ=DAILY;FREQ=WEEKLY", "part 'FREQ' is given twice", "FREQ=WEEKLY"),
        (DT + "RRULE:FREQ=DAILY;COUNT", "malformed RRULE part 'COUNT'", "FREQ=DAILY;COUNT"),
        (DT + "RRULE;X-A=1:FREQ=DAILY", "RRULE takes no parameters", "X-A=1"),
        (DT + DT + "RRULE:FREQ=DAILY", "DTSTART is given more than once", "DTSTART"),
        (DT + "RRULE:FREQ=DAILY;DTSTART=20300101T000000Z", "given more than once", "DTSTART"),
        ("DTSTART:2030-01-01\nRRULE:FREQ=DAILY", "invalid date-time '2030-01-01'", "DTSTART"),
        ("DTSTART:20301301T090000Z\nRRULE:FREQ=DAILY", "invalid date-time", "20301301T090000Z"),
        (
            "DTSTART;TZID=Europe/London:20300101T090000Z\nRRULE:FREQ=DAILY",
            "both a TZID and a UTC 'Z' suffix",
            "Europe/London",
        ),
        (DT + "RDATE;VALUE=DATE:20300105", "only DATE-TIME values", "VALUE=DATE"),
        (DT + "RDATE;FOO=1:20300105T000000Z", "unsupported or repeated parameter", "FOO=1"),
        (DT + "RDATE:20300105T000000Z,", "invalid date-time ''", "RDATE:20300105T000000Z,"),
        ("DTSTART:20300101T090000Z", "neither an RRULE nor an RDATE", "DTSTART:20300101T090000Z"),
        (DT + "EXDATE:20300101T090000Z", "neither an RRULE nor an RDATE", "EXDATE"),
        (DT + "RRULE:FREQ=DAILY;UNTIL=20200101", "UNTIL is earlier than DTSTART", "UNTIL"),
        (DT + "RRULE:FREQ=SECONDLY;BYSETPOS=2", "BYSETPOS never matches", "BYSETPOS=2"),
        (DT + "RRULE:FREQ=DAILY;BYHOUR=1,2;BYSETPOS=3,-3", "never matches", "BYSETPOS=3,-3"),
        (DT + "RRULE:FREQ=WEEKLY;BYDAY=MO,TU;BYSETPOS=3", "never matches", "BYDAY=MO,TU"),
        (DT + "RRULE:FREQ=YEARLY;BYMONTH=2,4;BYMONTHDAY=31", "never falls in BYMONTH", "=31"),
        (
            "DTSTART:20200101T000000Z\nRRULE:FREQ=DAILY;UNTIL=20200301T000000Z",
            "has no occurrence at or after 2024-01-01T00:00:00+00:00",
            "UNTIL=20200301T000000Z",
        ),
        (42, "must be RFC 5545 text or a dateutil rrule/rruleset, not int", "42"),
        (None, "not NoneType", "None"),
    ],
)
def test_invalid_recurrence_is_rejected_with_a_precise_message(
    value: object, problem: str, quoted: str
) -> None:
    with pytest.raises(InvalidScheduleError) as caught:
        parse_recurrence(value, now=NOW)  # type: ignore[arg-type]
    assert problem in str(caught.value)
    assert quoted in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_naive_now_and_naive_after_are_rejected() -> None:
    with pytest.raises(InvalidScheduleError, match="now must be a timezone-aware datetime"):
        parse_recurrence("FREQ=DAILY", now=datetime(2030, 1, 1))
    rec = parse_recurrence("FREQ=DAILY", now=NOW)
    with pytest.raises(InvalidScheduleError, match="after must be a timezone-aware datetime"):
        rec.next_after(datetime(2030, 1, 1))
    with pytest.raises(InvalidScheduleError, match="after must be a timezone-aware"):
        rec.occurrences_after(datetime(2030, 1, 1), 3)


def test_negative_count_of_occurrences_is_rejected() -> None:
    rec = parse_recurrence("FREQ=DAILY", now=NOW)
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        rec.occurrences_after(NOW, -1)


def test_load_recurrence_requires_dtstart_and_a_string() -> None:
    with pytest.raises(InvalidScheduleError, match="stored recurrence has no DTSTART"):
        load_recurrence("RRULE:FREQ=DAILY")
    with pytest.raises(InvalidScheduleError, match="must be a str, not bytes"):
        load_recurrence(b"RRULE:FREQ=DAILY")  # type: ignore[arg-type]
    with pytest.raises(InvalidScheduleError, match="unknown RRULE part 'FOO'"):
        load_recurrence(DT + "RRULE:FREQ=DAILY;FOO=1")


def test_load_recurrence_canonicalises_but_constructor_requires_canonical_text() -> None:
    rec = load_recurrence("dtstart:20300101T090000Z\r\nrrule:freq=daily\r\n")
    assert rec.text == "DTSTART:20300101T090000Z\nRRULE:FREQ=DAILY"
    assert Recurrence(rec.text) == rec
    with pytest.raises(InvalidScheduleError, match="not canonical"):
        Recurrence("dtstart:20300101T090000Z\nrrule:freq=daily")


# --- time zones and daylight saving time ----------------------------------------------------
# 2024 transitions: America/New_York 03-10 02:00 EST->03:00 EDT, 11-03 02:00 EDT->01:00 EST;
# Europe/London 03-31 01:00 GMT->02:00 BST, 10-27 02:00 BST->01:00 GMT;
# Australia/Lord_Howe (30 minutes) 04-07 02:00 +11->01:30 +10:30, 10-06 02:00 +10:30->02:30 +11;
# America/Havana (midnight) 03-10 00:00 CST->01:00 CDT, 11-03 01:00 CDT->00:00 CST.

DST_CASES = [
    # America/New_York
    ("new_york-daily-spring", "America/New_York", "20240309T090000", "DAILY",
     [utc(2024, 3, 9, 14), utc(2024, 3, 10, 13), utc(2024, 3, 11, 13)]),
    ("new_york-daily-autumn", "America/New_York", "20241102T090000", "DAILY",
     [utc(2024, 11, 2, 13), utc(2024, 11, 3, 14), utc(2024, 11, 4, 14)]),
    ("new_york-weekly-spring-gap", "America/New_York", "20240303T023000", "WEEKLY",
     [utc(2024, 3, 3, 7, 30), utc(2024, 3, 10, 7, 30), utc(2024, 3, 17, 6, 30)]),
    ("new_york-weekly-autumn-fold", "America/New_York", "20241027T013000", "WEEKLY",
     [utc(2024, 10, 27, 5, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 10, 6, 30)]),
    ("new_york-hourly-spring", "America/New_York", "20240310T000000", "HOURLY",
     [utc(2024, 3, 10, 5), utc(2024, 3, 10, 6), utc(2024, 3, 10, 7), utc(2024, 3, 10, 8)]),
    ("new_york-hourly-autumn", "America/New_York", "20241103T000000", "HOURLY",
     [utc(2024, 11, 3, 4), utc(2024, 11, 3, 5), utc(2024, 11, 3, 6), utc(2024, 11, 3, 7)]),
    # Europe/London
    ("london-daily-spring", "Europe/London", "20240330T090000", "DAILY",
     [utc(2024, 3, 30, 9), utc(2024, 3, 31, 8), utc(2024, 4, 1, 8)]),
    ("london-daily-autumn", "Europe/London", "20241026T090000", "DAILY",
     [utc(2024, 10, 26, 8), utc(2024, 10, 27, 9), utc(2024, 10, 28, 9)]),
    ("london-weekly-spring-gap", "Europe/London", "20240324T013000", "WEEKLY",
     [utc(2024, 3, 24, 1, 30), utc(2024, 3, 31, 1, 30), utc(2024, 4, 7, 0, 30)]),
    ("london-weekly-autumn-fold", "Europe/London", "20241020T013000", "WEEKLY",
     [utc(2024, 10, 20, 0, 30), utc(2024, 10, 27, 0, 30), utc(2024, 11, 3, 1, 30)]),
    ("london-hourly-spring", "Europe/London", "20240331T000000", "HOURLY",
     [utc(2024, 3, 31, 0), utc(2024, 3, 31, 1), utc(2024, 3, 31, 2), utc(2024, 3, 31, 3)]),
    ("london-hourly-autumn", "Europe/London", "20241027T000000", "HOURLY",
     [utc(2024, 10, 26, 23), utc(2024, 10, 27, 0), utc(2024, 10, 27, 1), utc(2024, 10, 27, 2)]),
    # Australia/Lord_Howe: the clock moves by 30 minutes
    ("lord_howe-daily-spring-gap", "Australia/Lord_Howe", "20241005T021500", "DAILY",
     [utc(2024, 10, 4, 15, 45), utc(2024, 10, 5, 15, 45), utc(2024, 10, 6, 15, 15)]),
    ("lord_howe-daily-autumn-fold", "Australia/Lord_Howe", "20240406T014500", "DAILY",
     [utc(2024, 4, 5, 14, 45), utc(2024, 4, 6, 14, 45), utc(2024, 4, 7, 15, 15)]),
    ("lord_howe-weekly-spring-gap", "Australia/Lord_Howe", "20240929T021500", "WEEKLY",
     [utc(2024, 9, 28, 15, 45), utc(2024, 10, 5, 15, 45), utc(2024, 10, 12, 15, 15)]),
    ("lord_howe-weekly-autumn-fold", "Australia/Lord_Howe", "20240331T014500", "WEEKLY",
     [utc(2024, 3, 30, 14, 45), utc(2024, 4, 6, 14, 45), utc(2024, 4, 13, 15, 15)]),
    ("lord_howe-hourly-spring", "Australia/Lord_Howe", "20241006T000000", "HOURLY",
     [utc(2024, 10, 5, 13, 30), utc(2024, 10, 5, 14, 30), utc(2024, 10, 5, 15, 30),
      utc(2024, 10, 5, 16), utc(2024, 10, 5, 17)]),
    ("lord_howe-hourly-autumn", "Australia/Lord_Howe", "20240407T000000", "HOURLY",
     [utc(2024, 4, 6, 13), utc(2024, 4, 6, 14), utc(2024, 4, 6, 15, 30), utc(2024, 4, 6, 16, 30)]),
    # America/Havana: the gap starts at midnight and the fold ends at midnight+1h
    ("havana-daily-spring-gap", "America/Havana", "20240309T003000", "DAILY",
     [utc(2024, 3, 9, 5, 30), utc(2024, 3, 10, 5, 30), utc(2024, 3, 11, 4, 30)]),
    ("havana-daily-autumn-fold", "America/Havana", "20241102T003000", "DAILY",
     [utc(2024, 11, 2, 4, 30), utc(2024, 11, 3, 4, 30), utc(2024, 11, 4, 5, 30)]),
    ("havana-weekly-spring-midnight", "America/Havana", "20240303T000000", "WEEKLY",
     [utc(2024, 3, 3, 5), utc(2024, 3, 10, 5), utc(2024, 3, 17, 4)]),
    ("havana-weekly-autumn-midnight", "America/Havana", "20241027T000000", "WEEKLY",
     [utc(2024, 10, 27, 4), utc(2024, 11, 3, 4), utc(2024, 11, 10, 5)]),
    ("havana-hourly-spring", "America/Havana", "20240309T220000", "HOURLY",
     [utc(2024, 3, 10, 3), utc(2024, 3, 10, 4), utc(2024, 3, 10, 5), utc(2024, 3, 10, 6)]),
    ("havana-hourly-autumn", "America/Havana", "20241102T230000", "HOURLY",
     [utc(2024, 11, 3, 3), utc(2024, 11, 3, 4), utc(2024, 11, 3, 5), utc(2024, 11, 3, 6)]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "dtstart", "freq", "expected"),
    [case[1:] for case in DST_CASES],
    ids=[case[0] for case in DST_CASES],
)
def test_rule_across_dst_transition_yields_exact_utc_instants(
    zone: str, dtstart: str, freq: str, expected: list[datetime]
) -> None:
    text = f"DTSTART;TZID={zone}:{dtstart}\nRRULE:FREQ={freq}"
    rec = parse_recurrence(text, now=utc(2024, 1, 1))
    assert rec.occurrences_after(utc(2024, 1, 1), len(expected)) == expected
    # the same instants when asked from just before each one
    for instant in expected:
        assert rec.next_after(instant - timedelta(seconds=1)) == instant


def test_daily_rule_keeps_wall_clock_time_across_dst() -> None:
    london = ZoneInfo("Europe/London")
    found = occurrences(
        "DTSTART;TZID=Europe/London:20240101T090000\nRRULE:FREQ=DAILY", utc(2024, 1, 1), 366
    )
    assert all(instant.astimezone(london).hour == 9 for instant in found)
    assert {instant.hour for instant in found} == {8, 9}


def test_daily_rule_at_a_nonexistent_time_is_shifted_forward_by_the_gap() -> None:
    text = "DTSTART;TZID=America/New_York:20240310T023000\nRRULE:FREQ=DAILY"
    found = occurrences(text, utc(2024, 1, 1), 2)
    assert found == [utc(2024, 3, 10, 7, 30), utc(2024, 3, 11, 6, 30)]
    assert found[0].astimezone(ZoneInfo("America/New_York")).hour == 3  # 03:30 EDT


def test_daily_rule_at_an_ambiguous_time_takes_the_first_instant() -> None:
    text = "DTSTART;TZID=America/New_York:20241103T013000\nRRULE:FREQ=DAILY"
    assert occurrences(text, utc(2024, 1, 1), 2) == [
        utc(2024, 11, 3, 5, 30),  # 01:30 EDT, not 01:30 EST
        utc(2024, 11, 4, 6, 30),
    ]


def test_daily_rule_at_midnight_in_santiago_skips_the_missing_midnight() -> None:
    text = "DTSTART;TZID=America/Santiago:20240907T000000\nRRULE:FREQ=DAILY"
    assert occurrences(text, utc(2024, 1, 1), 3) == [
        utc(2024, 9, 7, 4),
        utc(2024, 9, 8, 4),  # 00:00 does not exist: 01:00 -03
        utc(2024, 9, 9, 3),
    ]


def test_minutely_rule_across_lord_howe_fold_fires_every_real_half_hour() -> None:
    text = "DTSTART;TZID=Australia/Lord_Howe:20240407T010000\nRRULE:FREQ=MINUTELY;INTERVAL=30"
    assert occurrences(text, utc(2024, 1, 1), 4) == [
        utc(2024, 4, 6, 14),  # 01:00 +11
        utc(2024, 4, 6, 14, 30),  # 01:30 +11
        utc(2024, 4, 6, 15),  # 01:30 +10:30
        utc(2024, 4, 6, 15, 30),  # 02:00 +10:30
    ]


def test_minutely_rule_whose_shifted_times_interleave_stays_sorted() -> None:
    # 02:15 does not exist and becomes 03:15 EDT, after the real 03:00 EDT occurrence
    text = "DTSTART;TZID=America/New_York:20240310T013000\nRRULE:FREQ=MINUTELY;INTERVAL=45"
    assert occurrences(text, utc(2024, 1, 1), 4) == [
        utc(2024, 3, 10, 6, 30),
        utc(2024, 3, 10, 7),
        utc(2024, 3, 10, 7, 15),
        utc(2024, 3, 10, 7, 45),
    ]


def test_hourly_rule_with_interval_keeps_wall_clock_phase_across_dst() -> None:
    spring = "DTSTART;TZID=America/New_York:20240310T000000\nRRULE:FREQ=HOURLY;INTERVAL=2"
    assert occurrences(spring, utc(2024, 1, 1), 4) == [
        utc(2024, 3, 10, 5),  # 00:00 EST
        utc(2024, 3, 10, 7),  # 02:00 does not exist: 03:00 EDT
        utc(2024, 3, 10, 8),  # 04:00 EDT
        utc(2024, 3, 10, 10),
    ]
    autumn = "DTSTART;TZID=America/New_York:20241103T000000\nRRULE:FREQ=HOURLY;INTERVAL=2"
    assert occurrences(autumn, utc(2024, 1, 1), 3) == [
        utc(2024, 11, 3, 4),  # 00:00 EDT
        utc(2024, 11, 3, 7),  # 02:00 EST
        utc(2024, 11, 3, 9),
    ]


def test_hourly_rule_with_byhour_fires_at_both_instants_of_an_ambiguous_hour() -> None:
    text = "DTSTART;TZID=America/New_York:20241102T010000\nRRULE:FREQ=HOURLY;BYHOUR=1"
    assert occurrences(text, utc(2024, 1, 1), 4) == [
        utc(2024, 11, 2, 5),
        utc(2024, 11, 3, 5),  # 01:00 EDT
        utc(2024, 11, 3, 6),  # 01:00 EST
        utc(2024, 11, 4, 6),
    ]


def test_secondly_rule_across_spring_gap_has_no_duplicates() -> None:
    text = "DTSTART;TZID=Europe/London:20240331T005958\nRRULE:FREQ=SECONDLY"
    assert occurrences(text, utc(2024, 1, 1), 4) == [
        utc(2024, 3, 31, 0, 59, 58),
        utc(2024, 3, 31, 0, 59, 59),
        utc(2024, 3, 31, 1, 0, 0),
        utc(2024, 3, 31, 1, 0, 1),
    ]


# --- re-anchoring ---------------------------------------------------------------------------


def test_secondly_rule_ten_years_old_is_evaluated_quickly() -> None:
    rec = parse_recurrence("DTSTART:20140101T000000Z\nRRULE:FREQ=SECONDLY", now=NOW)
    after = utc(2024, 1, 1, 12).replace(microsecond=500000)
    started = time.perf_counter()
    found = rec.next_after(after)
    elapsed = time.perf_counter() - started
    assert found == utc(2024, 1, 1, 12, 0, 1)
    assert elapsed < 2.0


def test_zoned_secondly_rule_ten_years_old_is_evaluated_quickly() -> None:
    text = "DTSTART;TZID=Europe/London:20140101T000000\nRRULE:FREQ=SECONDLY;INTERVAL=7"
    started = time.perf_counter()
    rec = parse_recurrence(text, now=NOW)
    found = rec.occurrences_after(utc(2024, 6, 1, 12), 2)
    elapsed = time.perf_counter() - started
    # steps of 7 wall-clock seconds from 2014-01-01 00:00 GMT; 2024-06-01 12:00Z is 13:00 BST
    wall = (datetime(2024, 6, 1, 13) - datetime(2014, 1, 1)).total_seconds()
    first = utc(2024, 6, 1, 12) + timedelta(seconds=-wall % 7)
    assert found == [first, first + timedelta(seconds=7)]
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("filters", "first_day"),
    [
        ("BYSETPOS=1", datetime(2024, 6, 1, 2)),  # 2024-06-01T00:00Z is 02:00 CEST
        ("BYMONTH=2", datetime(2025, 2, 1)),
        ("BYMONTHDAY=-1;BYHOUR=3", datetime(2024, 6, 30, 3)),
    ],
)
def test_old_secondly_rule_with_by_parts_is_evaluated_quickly(
    filters: str, first_day: datetime
) -> None:
    text = f"DTSTART;TZID=Europe/Paris:20140101T000000\nRRULE:FREQ=SECONDLY;INTERVAL=7;{filters}"
    started = time.perf_counter()
    found = parse_recurrence(text, now=utc(2024, 6, 1)).occurrences_after(utc(2024, 6, 1), 3)
    assert time.perf_counter() - started < 2.0
    # steps of 7 wall-clock seconds from 2014-01-01 00:00 local
    first = first_day + timedelta(seconds=-(first_day - datetime(2014, 1, 1)).total_seconds() % 7)
    paris = ZoneInfo("Europe/Paris")
    expected = [first + timedelta(seconds=7 * k) for k in range(3)]
    assert found == [local.replace(tzinfo=paris).astimezone(UTC) for local in expected]


def test_secondly_rule_with_huge_count_is_evaluated_quickly() -> None:
    text = "DTSTART:20140101T000000Z\nRRULE:FREQ=SECONDLY;COUNT=315532801"
    rec = parse_recurrence(text, now=NOW)
    started = time.perf_counter()
    assert rec.next_after(utc(2024, 1, 1)) == utc(2024, 1, 1)
    assert rec.next_after(utc(2024, 1, 1), inclusive=False) is None
    assert time.perf_counter() - started < 2.0


FREQ_SPANS = {
    "SECONDLY": timedelta(hours=2),
    "MINUTELY": timedelta(days=2),
    "HOURLY": timedelta(days=40),
    "DAILY": timedelta(days=800),
    "WEEKLY": timedelta(days=2000),
    "MONTHLY": timedelta(days=3000),
    "YEARLY": timedelta(days=6000),
}


@st.composite
def rule_parts(draw: st.DrawFn) -> tuple[str, timedelta]:
    """A random rule body and how far before the query its DTSTART may be."""
    freq = draw(st.sampled_from(list(FREQ_SPANS)))
    interval = draw(st.integers(1, 13))
    by: list[str] = []

    def maybe(name: str, values: st.SearchStrategy[int]) -> None:
        if draw(st.integers(0, 3)) == 0:
            chosen = draw(st.lists(values, min_size=1, max_size=3, unique=True))
            by.append(f"{name}=" + ",".join(map(str, chosen)))

    # dateutil walks sparse SECONDLY/MINUTELY rules one step at a time: keep them dense
    if freq != "SECONDLY":
        maybe("BYHOUR", st.integers(0, 23))
    maybe("BYMINUTE", st.integers(0, 59))
    maybe("BYSECOND", st.integers(0, 59))
    if freq not in ("SECONDLY", "MINUTELY") and draw(st.integers(0, 3)) == 0:
        days = draw(st.lists(st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"]),
                             min_size=1, max_size=3, unique=True))  # fmt: skip
        by.append("BYDAY=" + ",".join(days))
        interval += freq == "DAILY" and interval % 7 == 0  # a rule that never matches is slow
    maybe("BYMONTH", st.integers(1, 12))
    maybe("BYMONTHDAY", st.integers(-28, 28).filter(bool))
    if freq != "SECONDLY":
        maybe("BYSETPOS", st.sampled_from([-1, 1]))
    ending = draw(st.sampled_from(["", "", "COUNT", "UNTIL"]))
    if ending == "COUNT":
        by.append(f"COUNT={draw(st.integers(1, 2000))}")
    if ending == "UNTIL":
        by.append("UNTIL=" + draw(st.sampled_from(["20240105T000000Z", "20251231T235959Z"])))
    return ";".join([f"FREQ={freq}", f"INTERVAL={interval}", *by]), FREQ_SPANS[freq]


def _load_or_reject(text: str) -> Recurrence:
    try:
        return load_recurrence(text)
    except InvalidScheduleError:
        assume(False)
        raise


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    rule=rule_parts(),
    back=st.floats(0, 1),
    after=st.datetimes(datetime(2023, 12, 1), datetime(2024, 2, 1)),
)
def test_reanchored_utc_rule_matches_plain_dateutil(
    rule: tuple[str, timedelta], back: float, after: datetime
) -> None:
    body, span = rule
    start = (after - span * back).replace(microsecond=0)
    text = f"DTSTART:{start:%Y%m%dT%H%M%S}Z\nRRULE:{body}"
    rec = _load_or_reject(text)
    assert rec.text == text
    moment = after.replace(tzinfo=UTC)
    reference = rr.rrulestr(text)
    try:
        expected = [d.astimezone(UTC) for d in islice(reference.xafter(moment, inc=True), 6)]
        following = [d.astimezone(UTC) for d in islice(reference.xafter(moment, inc=False), 6)]
    except ValueError:  # dateutil finds out while iterating that the rule is empty
        assume(False)
    assert rec.occurrences_after(moment, 6) == expected
    assert rec.occurrences_after(moment, 6, inclusive=False) == following


TRANSITIONS = {
    "America/New_York": [utc(2024, 3, 10, 7), utc(2024, 11, 3, 6)],
    "Europe/London": [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1)],
    "Australia/Lord_Howe": [utc(2024, 4, 6, 15), utc(2024, 10, 5, 15, 30)],
    "America/Havana": [utc(2024, 3, 10, 5), utc(2024, 11, 3, 5)],
    "America/Santiago": [utc(2024, 4, 7, 3), utc(2024, 9, 8, 4)],
    "Asia/Kolkata": [utc(2024, 6, 1)],
}


@st.composite
def zoned_case(draw: st.DrawFn) -> tuple[str, datetime, ZoneInfo]:
    """A random zoned rule and a query instant close to a transition of its zone."""
    zone_name = draw(st.sampled_from(sorted(TRANSITIONS)))
    body, span = draw(rule_parts())
    transition = draw(st.sampled_from(TRANSITIONS[zone_name]))
    near = min(span, timedelta(days=2))
    after = transition + draw(st.timedeltas(-near, near))
    zone = ZoneInfo(zone_name)
    start = (after.astimezone(zone) - span * draw(st.floats(0, 1))).replace(microsecond=0)
    text = f"DTSTART;TZID={zone_name}:{start:%Y%m%dT%H%M%S}\nRRULE:{body}"
    return text, after, zone


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(case=zoned_case())
def test_reanchored_zoned_rule_matches_iteration_from_dtstart(
    case: tuple[str, datetime, ZoneInfo],
) -> None:
    text, after, _ = case
    rec = _load_or_reject(text)
    assert rec.text == text
    try:
        expected = rec._occurrences(after, 8, inclusive=True, reanchor=False)
    except InvalidScheduleError:  # dateutil finds out while iterating that the rule is empty
        assume(False)
    found = rec._occurrences(after, 8, inclusive=True, reanchor=True)
    assert found == expected
    assert all(a < b for a, b in pairwise(found))
    assert all(instant >= after and instant.tzinfo is UTC for instant in found)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(case=zoned_case())
def test_zoned_daily_and_longer_rules_match_dateutil_wall_times_at_first_instant(
    case: tuple[str, datetime, ZoneInfo],
) -> None:
    text, after, zone = case
    assume(not any(word in text for word in ("UNTIL", "COUNT", "SECONDLY", "MINUTELY", "HOURLY")))
    rec = _load_or_reject(text)
    naive = rr.rrulestr(text.split("\n")[1], dtstart=_naive_start(text))
    # dateutil's wall times at their first instant (fold=0 shifts gap times forward), sorted
    wall = (local.replace(tzinfo=zone).astimezone(UTC) for local in naive)
    try:
        reached = list(islice((instant for instant in wall if instant >= after), 40))
    except ValueError:  # dateutil finds out while iterating that the rule is empty
        assume(False)
    assert rec.occurrences_after(after, 5) == sorted(set(reached))[:5]


def _naive_start(text: str) -> datetime:
    return datetime.strptime(text.split("\n")[0].rpartition(":")[2], "%Y%m%dT%H%M%S")
