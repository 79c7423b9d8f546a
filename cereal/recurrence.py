"""Recurrence rules of workflow schedules: RFC 5545 text, evaluated with ``dateutil.rrule``.

Accepted text: a ``DTSTART`` line in UTC (``DTSTART:20300101T090000Z``), in a zone
(``DTSTART;TZID=Europe/London:20300101T090000``) or floating (``DTSTART:20300101T090000``, read
as UTC); ``RRULE:`` lines; optional ``RDATE``/``EXDATE`` lines (``TZID``, ``VALUE=DATE-TIME``,
comma-separated values). Floating ``RDATE``/``EXDATE``/``UNTIL`` values are read in the zone of
``DTSTART``; a date-only ``UNTIL`` includes its whole local day. Also accepted: a bare rule
(``FREQ=DAILY;INTERVAL=2``) and the legacy form with an inline ``DTSTART=`` part. Without
``DTSTART``, a rule is anchored at "now" truncated to the second. As in dateutil, ``DTSTART`` is
an occurrence only if the rule matches it.

Time zones: occurrences are wall-clock times in the zone of ``DTSTART`` (a daily 09:00
Europe/London rule stays at 09:00 local), converted to UTC. A wall time in a spring-forward gap
is shifted forward by the gap (02:30 America/New_York becomes 03:30 EDT, as in RFC 5545). In an
autumn fold, ``DAILY`` and longer rules take the first instant (``fold=0``), while ``HOURLY``,
``MINUTELY`` and ``SECONDLY`` rules fire whenever the clock shows one of their wall times, so
they keep stepping over real elapsed time (an hourly rule fires at 01:00 EDT *and* 01:00 EST);
their phase follows the wall clock (``INTERVAL=2`` from 00:00 fires at even local hours). An
instant reached twice is reported once: occurrences strictly increase in UTC.

Performance: dateutil iterates from ``DTSTART``, so before each query a ``SECONDLY`` to
``WEEKLY`` rule has its ``DTSTART`` moved forward, in wall-clock time, by the largest whole
number of periods (``INTERVAL`` units) that keeps every skipped occurrence before the query.
dateutil expands a rule period by period and filters candidates on their own date and time, so
the occurrences are unchanged. Not re-anchored (iterated from ``DTSTART``): ``MONTHLY`` and
``YEARLY`` rules, ``WEEKLY`` rules with ``BYSETPOS`` (the first week is cut at ``DTSTART``) and
``COUNT`` rules, except in UTC without ``BY`` parts (skipped periods are deducted from the count).
"""

from __future__ import annotations

import heapq
import math
import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from dateutil import rrule as _rr
from dateutil import tz as _dtz

from cereal.config import count
from cereal.errors import InvalidScheduleError

__all__ = ["Recurrence", "load_recurrence", "parse_recurrence"]

# indexes are dateutil's frequency constants
_FREQS = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY")
_UNIT = {_rr.SECONDLY: 1, _rr.MINUTELY: 60, _rr.HOURLY: 3600, _rr.DAILY: 86400, _rr.WEEKLY: 604800}
_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# integer list parts: smallest and largest magnitude
_RANGES = {"BYSECOND": (0, 59), "BYMINUTE": (0, 59), "BYHOUR": (0, 23), "BYMONTH": (1, 12)}
_RANGES |= {"BYMONTHDAY": (1, 31), "BYYEARDAY": (1, 366), "BYWEEKNO": (1, 53), "BYSETPOS": (1, 366)}
_SIGNED = frozenset({"BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYSETPOS"})
_PARTS = frozenset({"FREQ", "INTERVAL", "COUNT", "UNTIL", "WKST", "BYDAY", *_RANGES})
_DAY_PARTS = frozenset({"BYDAY", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO"})
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_STAMP = re.compile(r"([0-9]{8})T([0-9]{6})(Z?)")
_WEEKDAY = re.compile(r"([+-]?[0-9]{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_END = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Rule:
    kwargs: dict[str, Any]  # dateutil keywords, without dtstart, count and until
    count: int | None
    until: datetime | None  # UTC
    period: timedelta | None  # re-anchoring step in wall-clock time; None: iterate from DTSTART
    subdaily: bool


@dataclass(frozen=True)
class _Plan:
    text: str
    zone: ZoneInfo | None  # None: UTC
    start: datetime  # naive wall-clock DTSTART in ``zone``
    rules: tuple[_Rule, ...]
    rdates: tuple[datetime, ...]  # sorted, UTC
    exdates: frozenset[datetime]  # UTC


def _fail(message: str) -> InvalidScheduleError:
    return InvalidScheduleError(message)


def _fmt(local: datetime) -> str:
    return local.isoformat(timespec="seconds")[:19].replace("-", "").replace(":", "")


def _utc(local: datetime, zone: ZoneInfo | None, fold: int = 0) -> datetime:
    """Instant of a naive wall time; ``fold=0`` shifts gap times forward (PEP 495, RFC 5545)."""
    if zone is None:
        return local.replace(tzinfo=UTC)
    return local.replace(tzinfo=zone, fold=fold).astimezone(UTC)


def _aware_utc(value: object, name: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise _fail(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


@lru_cache(maxsize=1)
def _zone_keys() -> dict[str, str]:
    return {key.upper(): key for key in sorted(available_timezones())}


def _zone(name: str, source: str) -> ZoneInfo:
    key = name.strip('"')
    try:
        return ZoneInfo(key)
    except (KeyError, ValueError, OSError):
        if key.upper() in _zone_keys():
            return ZoneInfo(_zone_keys()[key.upper()])
    raise _fail(f"unknown time zone {key!r} in {source!r}")


def _stamp(value: str, source: str) -> tuple[datetime, bool]:
    """Parse ``YYYYMMDDTHHMMSS[Z]`` into a naive datetime and whether it is UTC."""
    match = _STAMP.fullmatch(value)
    try:
        if match:
            return datetime.strptime(match[1] + match[2], "%Y%m%d%H%M%S"), bool(match[3])
    except ValueError:
        pass
    raise _fail(f"invalid date-time {value!r} in {source!r} (want YYYYMMDDTHHMMSS[Z])")


def _instant(value: str, zone: ZoneInfo | None, zoned: bool, source: str) -> datetime:
    """UTC instant of a date-time value; a floating one is read in ``zone``."""
    local, is_utc = _stamp(value, source)
    if is_utc and zoned:
        raise _fail(f"date-time has both a TZID and a UTC 'Z' suffix in {source!r}")
    return local.replace(tzinfo=UTC) if is_utc else _utc(local, zone)


def _int(value: str, part: str, source: str, low: int = 1, high: int = 10**9) -> int:
    signed = part in _SIGNED or part == "BYDAY"
    valid = re.fullmatch(r"[+-]?[0-9]{1,10}" if signed else r"[0-9]{1,10}", value)
    number = int(value) if valid else -1
    if not valid or not low <= abs(number) <= high or (signed and not number):
        raise _fail(f"invalid {part} value {value!r} (allowed: {low}..{high}) in {source!r}")
    return number


def _params(raw: list[str], source: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        key = key.upper()
        if not sep or key not in ("TZID", "VALUE") or key in params:
            raise _fail(f"unsupported or repeated parameter {item!r} in {source!r}")
        if key == "VALUE" and value.upper() != "DATE-TIME":
            raise _fail(f"unsupported {item!r} in {source!r}: only DATE-TIME values are supported")
        params[key] = value.upper() if key == "VALUE" else value
    return params


def _split_rule(value: str, source: str) -> tuple[list[tuple[str, str]], str | None]:
    """Split rule parts, validating their names; the legacy inline DTSTART is returned apart."""
    parts: dict[str, str] = {}
    inline: str | None = None
    for chunk in filter(None, value.upper().split(";")):
        key, sep, val = chunk.partition("=")
        if not sep or not val:
            raise _fail(f"malformed RRULE part {chunk!r} in {source!r}")
        if key not in _PARTS and key != "DTSTART":
            raise _fail(f"unknown RRULE part {key!r} in {source!r}")
        if key in parts or (key == "DTSTART" and inline is not None):
            raise _fail(f"RRULE part {key!r} is given twice in {source!r}")
        if key == "DTSTART":
            inline = val
        else:
            parts[key] = val
    if "FREQ" not in parts:
        raise _fail(f"RRULE has no FREQ part in {source!r}")
    return list(parts.items()), inline


def _build_rule(
    parts: list[tuple[str, str]], source: str, zone: ZoneInfo | None, start: datetime
) -> _Rule:
    kwargs: dict[str, Any] = {"wkst": _rr.MO, "interval": 1}
    count = until = None
    for key, val in parts:
        if key == "FREQ":
            if val not in _FREQS:
                raise _fail(f"unknown FREQ {val!r} in {source!r}")
            kwargs["freq"] = _FREQS.index(val)
        elif key == "INTERVAL":
            kwargs["interval"] = _int(val, key, source)
        elif key == "COUNT":
            count = _int(val, key, source)
        elif key == "UNTIL":  # a date-only UNTIL includes its whole day
            until = _instant(val + "T235959" if len(val) == 8 else val, zone, False, source)
        elif key in ("WKST", "BYDAY"):
            found = [_WEEKDAY.fullmatch(day) for day in val.split(",")]
            weekdays = [
                _rr.weekday(_DAYS.index(d[2]), _int(d[1], key, source, 1, 53) if d[1] else None)
                for d in found
                if d
            ]
            if len(weekdays) < len(found) or (key == "WKST" and (len(found) > 1 or weekdays[0].n)):
                raise _fail(f"invalid {key} value {val!r} in {source!r}")
            if key == "WKST":
                kwargs["wkst"] = weekdays[0]
            else:
                kwargs["byweekday"] = weekdays
        else:
            kwargs[key.lower()] = [_int(v, key, source, *_RANGES[key]) for v in val.split(",")]
    if count is not None and until is not None:
        raise _fail(f"COUNT and UNTIL must not be used together in {source!r}")
    if until is not None and until < _utc(start, zone):
        raise _fail(f"UNTIL is earlier than DTSTART {_fmt(start)} in {source!r}")
    try:
        _rr.rrule(dtstart=start, **kwargs)
    except ValueError as exc:
        raise _fail(f"invalid RRULE {source!r}: {exc}") from None
    freq, by_parts = kwargs["freq"], {key for key, _ in parts if key.startswith("BY")}
    # how many candidates a period can have: days (one unless a BY part picks days) x times
    sizes = [len(set(kwargs.get(name, [0]))) for name in ("byhour", "byminute", "bysecond")]
    days = 1
    if freq == _rr.YEARLY and not by_parts & _DAY_PARTS:  # DTSTART's day in each BYMONTH
        days = len(set(kwargs.get("bymonth", [0])))
    elif freq <= _rr.WEEKLY and by_parts & _DAY_PARTS:
        days = (366, 31, len({d.weekday for d in kwargs.get("byweekday", _rr.weekdays)}))[freq]
    bucket = math.prod(sizes[max(0, freq - _rr.DAILY) :]) * days
    if min(map(abs, kwargs.get("bysetpos", [0]))) > bucket:
        raise _fail(
            f"BYSETPOS never matches ({bucket} candidates per period at most) in {source!r}"
        )
    months = kwargs.get("bymonth", range(1, 13))
    if not any(abs(d) <= _MONTH_DAYS[m - 1] for m in months for d in kwargs.get("bymonthday", [1])):
        raise _fail(f"BYMONTHDAY never falls in BYMONTH in {source!r}")
    # re-anchoring step (see the module docstring); COUNT needs one occurrence per period
    period = None
    weekly_pos = freq == _rr.WEEKLY and "BYSETPOS" in by_parts
    seconds = kwargs["interval"] * _UNIT.get(freq, 0)
    if 0 < seconds < 2**40 and not weekly_pos and (count is None or not (by_parts or zone)):
        period = timedelta(seconds=seconds)
    return _Rule(kwargs, count, until, period, freq >= _rr.HOURLY)


def _compile(text: str, now: datetime | None) -> _Plan:
    """Parse RFC 5545 text; ``now`` anchors a rule without DTSTART (``None``: DTSTART required)."""
    try:
        return _parse(text, now)
    except OverflowError:
        raise _fail(f"a date-time is out of range in {text!r}") from None


def _parse(text: str, now: datetime | None) -> _Plan:
    lines = [line for line in (re.sub(r"\s+", "", raw) for raw in text.splitlines()) if line]
    if not lines:
        raise _fail(f"recurrence rule is empty: {text!r}")
    starts: list[tuple[dict[str, str], str, str]] = []
    rules: list[tuple[list[tuple[str, str]], str]] = []
    dates: list[tuple[str, dict[str, str], str, str]] = []
    for line in lines:
        head, sep, value = line.partition(":")
        if not sep and "=" not in head:
            raise _fail(f"cannot parse recurrence line {line!r}")
        name, *raw = head.split(";") if sep else ("RRULE",)
        name, value = name.upper(), value.upper() if sep else line
        if name == "RRULE":
            if raw:
                raise _fail(f"RRULE takes no parameters: {line!r}")
            parts, inline = _split_rule(value, line)
            rules.append((parts, line))
            starts += [] if inline is None else [({}, inline, line)]
        elif name == "DTSTART":
            starts.append((_params(raw, line), value, line))
        elif name in ("RDATE", "EXDATE"):
            dates.append((name, _params(raw, line), value, line))
        else:
            raise _fail(f"unknown or unsupported property {name!r} in {line!r}")
    if len(starts) > 1:
        raise _fail(f"DTSTART is given more than once in {text!r}")
    if not rules and not any(name == "RDATE" for name, *_ in dates):
        raise _fail(f"recurrence has neither an RRULE nor an RDATE: {text!r}")
    zone: ZoneInfo | None = None
    if starts:
        params, value, line = starts[0]
        zone = _zone(params["TZID"], line) if "TZID" in params else None
        start = _instant(value, None, zone is not None, line).replace(tzinfo=None)
    elif now is None:
        raise _fail(f"stored recurrence has no DTSTART: {text!r}")
    else:
        start = now.astimezone(UTC).replace(microsecond=0, tzinfo=None)
    out = [f"DTSTART;TZID={zone.key}:{_fmt(start)}" if zone else f"DTSTART:{_fmt(start)}Z"]
    out += ["RRULE:" + ";".join(f"{key}={val}" for key, val in parts) for parts, _ in rules]
    rdates: list[datetime] = []
    exdates: list[datetime] = []
    for name, params, value, line in dates:
        if "TZID" in params:
            params = {**params, "TZID": _zone(params["TZID"], line).key}
        line_zone = ZoneInfo(params["TZID"]) if "TZID" in params else zone
        found = [_instant(item, line_zone, "TZID" in params, line) for item in value.split(",")]
        (rdates if name == "RDATE" else exdates).extend(found)
        out.append(";".join([name, *(f"{k}={v}" for k, v in params.items())]) + ":" + value)
    built = tuple(_build_rule(parts, line, zone, start) for parts, line in rules)
    return _Plan("\n".join(out), zone, start, built, tuple(sorted(set(rdates))), frozenset(exdates))


@lru_cache(maxsize=512)
def _load(text: str) -> _Plan:
    return _compile(text, None)


def _min_offset(zone: ZoneInfo | None, after: datetime) -> timedelta | None:
    """Smallest UTC offset of ``zone`` within 36 hours of ``after`` (None if out of range)."""
    if zone is None:
        return timedelta(0)
    try:
        stamps = [(after + timedelta(hours=h)).astimezone(zone) for h in range(-36, 37)]
    except OverflowError:
        return None
    return min(stamp.utcoffset() or timedelta(0) for stamp in stamps)


def _candidates(
    zone: ZoneInfo | None, rule: _Rule, start: datetime, stop: datetime | None
) -> Iterator[tuple[tuple[datetime, ...], datetime]]:
    """The instants of each generated wall time, and a lower bound of all later instants."""
    try:
        for local in _rr.rrule(dtstart=start, until=stop, **rule.kwargs):
            try:
                first = _utc(local, zone)
                second = first if zone is None else _utc(local, zone, fold=1)
            except OverflowError:  # before year 1 or after year 9999 in UTC
                continue
            if second > first:  # the wall time exists twice
                yield ((first, second) if rule.subdaily else (first,)), first
            else:  # ``second`` is before ``first`` when the wall time is in a gap
                yield (first,), second
    except ValueError as exc:
        raise _fail(f"cannot evaluate recurrence rule: {exc}") from None
    yield (), _END


def _rule_instants(plan: _Plan, rule: _Rule, after: datetime | None) -> Iterator[datetime]:
    """Strictly increasing UTC instants of one RRULE, re-anchored close to ``after`` if given."""
    start, count = plan.start, rule.count
    offset = None if after is None or rule.period is None else _min_offset(plan.zone, after)
    if after is not None and rule.period is not None and offset is not None:
        # a wall time before after + offset is an instant before ``after`` (gap or not)
        skip = (after.replace(tzinfo=None) + offset - start) // rule.period
        if skip > 0:
            start += skip * rule.period
            count = None if count is None else count - skip
    if count is not None and count <= 0:
        return
    slack = timedelta(days=2)  # a wall time later than UNTIL + slack is an instant after UNTIL
    until = rule.until
    stop = None if until is None or until > _END - slack else until.replace(tzinfo=None) + slack
    pending: list[datetime] = []
    last, emitted = _END, 0
    for batch, bound in _candidates(plan.zone, rule, start, stop):
        for instant in batch:
            heapq.heappush(pending, instant)
        while pending and pending[0] <= bound:
            instant = heapq.heappop(pending)
            if instant == last:
                continue
            if until is not None and instant > until:
                return
            yield instant
            last, emitted = instant, emitted + 1
            if emitted == count:
                return


def _iterate(plan: _Plan, after: datetime, *, reanchor: bool = True) -> Iterator[datetime]:
    """Occurrences at or after ``after`` (UTC), strictly increasing."""
    streams = [_rule_instants(plan, rule, after if reanchor else None) for rule in plan.rules]
    streams.append(iter(plan.rdates[bisect_left(plan.rdates, after) :]))
    last = _END
    for instant in heapq.merge(*streams):
        if instant != last and instant >= after and instant not in plan.exdates:
            yield instant
        last = instant


@dataclass(frozen=True)
class Recurrence:
    """A validated recurrence rule.

    ``text`` is the canonical RFC 5545 text (the ``DTSTART`` line, ``RRULE`` lines, then
    ``RDATE``/``EXDATE`` lines, joined by ``\\n``) that is stored; it round-trips exactly through
    :func:`load_recurrence`. Build instances with :func:`parse_recurrence` or
    :func:`load_recurrence`: the constructor only accepts canonical text.
    """

    text: str
    _plan: _Plan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise _fail(f"recurrence text must be a str, not {type(self.text).__name__}")
        plan = _load(self.text)
        if plan.text != self.text:
            raise _fail(f"recurrence text is not canonical (use load_recurrence): {self.text!r}")
        object.__setattr__(self, "_plan", plan)

    def occurrences_after(
        self, after: datetime, n: int = 1, *, inclusive: bool = True
    ) -> list[datetime]:
        """The next ``n`` occurrences at (if ``inclusive``) or after ``after``, in UTC.

        Fewer are returned when the rule runs out. ``after`` must be timezone-aware.
        """
        return self._occurrences(after, n, inclusive=inclusive, reanchor=True)

    def next_after(self, after: datetime, *, inclusive: bool = True) -> datetime | None:
        """The first occurrence at (if ``inclusive``) or after ``after``, or None if exhausted."""
        found = self.occurrences_after(after, 1, inclusive=inclusive)
        return found[0] if found else None

    def _occurrences(
        self, after: datetime, n: int, *, inclusive: bool, reanchor: bool
    ) -> list[datetime]:
        start = _aware_utc(after, "after")
        count("n", n, minimum=0, error=ValueError)
        found = _iterate(self._plan, start, reanchor=reanchor)
        return list(islice((t for t in found if inclusive or t > start), n))


def _zone_name(zone: tzinfo) -> str | None:
    """IANA name of a tzinfo (None for UTC)."""
    if isinstance(zone, timezone | _dtz.tzutc | _dtz.tzoffset):
        offset = zone.utcoffset(None) or timedelta(0)
        hours, rest = divmod(int(offset.total_seconds()), 3600)
        if offset and (rest or not -12 <= hours <= 14):
            raise _fail(f"fixed offset {zone!r} has no IANA time zone name")
        return f"Etc/GMT{-hours:+d}" if offset else None
    attrs = getattr(zone, "__dict__", {})
    for key in (getattr(zone, "key", None), attrs.get("_key"), attrs.get("_filename")):
        if isinstance(key, str) and key:
            return key.rpartition("zoneinfo/")[2]
    raise _fail(f"time zone {zone!r} has no IANA name")


def _value(moment: datetime) -> str:
    return _fmt(moment.astimezone(UTC)) + "Z" if moment.tzinfo else _fmt(moment)


def _object_text(value: _rr.rrule | _rr.rruleset) -> str:
    """RFC 5545 text of a dateutil rule or rule set (private attributes are read)."""
    attrs = vars(value)
    if isinstance(value, _rr.rruleset) and attrs["_exrule"]:
        raise _fail("EXRULE is not supported (deprecated by RFC 5545)")
    rules = attrs["_rrule"] if isinstance(value, _rr.rruleset) else [value]
    lines: list[str] = []
    for rule in rules:
        start: datetime = vars(rule)["_dtstart"]
        name = None if start.tzinfo is None else _zone_name(start.tzinfo)
        first = f"DTSTART;TZID={name}:{_fmt(start)}" if name else f"DTSTART:{_value(start)}"
        if lines and lines[0] != first:
            raise _fail(f"the rules of an rruleset must share one DTSTART: {value!r}")
        lines[:1] = [first]
        until = vars(rule)["_until"]
        parts = str(rule).splitlines()[-1].removeprefix("RRULE:").split(";")
        parts = [f"UNTIL={_value(until)}" if p.startswith("UNTIL=") else p for p in parts]
        lines.append("RRULE:" + ";".join(parts))
    for name, values in (("RDATE", attrs.get("_rdate")), ("EXDATE", attrs.get("_exdate"))):
        if values:
            lines.append(f"{name}:" + ",".join(map(_value, values)))
    return "\n".join(lines)


def parse_recurrence(value: str | _rr.rrule | _rr.rruleset, *, now: datetime) -> Recurrence:
    """Validate a recurrence given as RFC 5545 text or a dateutil ``rrule``/``rruleset``.

    See the module docstring for the accepted forms. A rule without ``DTSTART`` is anchored at
    ``now`` (timezone-aware) truncated to the second. Raises :class:`InvalidScheduleError` when
    the rule does not parse or has no occurrence at or after ``now`` (to the second).
    """
    moment = _aware_utc(now, "now").replace(microsecond=0)
    if isinstance(value, _rr.rrule | _rr.rruleset):
        text = _object_text(value)
    elif isinstance(value, str):
        text = value
    else:
        kind = f"not {type(value).__name__}: {value!r}"
        raise _fail(f"a recurrence must be RFC 5545 text or a dateutil rrule/rruleset, {kind}")
    recurrence = Recurrence(_compile(text, moment).text)
    if recurrence.next_after(moment) is None:
        raise _fail(f"recurrence {text!r} has no occurrence at or after {moment.isoformat()}")
    return recurrence


def load_recurrence(text: str) -> Recurrence:
    """Rebuild a recurrence from stored text, which must have a ``DTSTART``.

    An exhausted rule loads fine. Raises :class:`InvalidScheduleError` if the text is invalid.
    """
    if not isinstance(text, str):
        raise _fail(f"recurrence text must be a str, not {type(text).__name__}: {text!r}")
    return Recurrence(_load(text).text)
