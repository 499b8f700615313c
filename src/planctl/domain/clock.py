"""Durations, instants and natural periods.

Instants are timezone-aware datetimes; every instant returned is in UTC.
Natural days, weeks and months are computed in a given ``ZoneInfo`` (the reset
zone) and stay correct across DST changes. Calendar arithmetic works on the
local wall clock; a wall time that does not exist (DST gap) or exists twice
(DST overlap) is resolved with ``fold=0``: the offset in force before the
change. In a gap that lands as much later as the gap is long (New York
02:30 on a spring-forward day is 03:30 EDT); in an overlap it is the first
occurrence.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from planctl.domain.errors import InvalidInput

UTC = timezone.utc

_DURATION_TERM = re.compile(r"([0-9]{1,9})(mo|y|w|d|h|m|s)")
_DURATION = re.compile(rf"(?:{_DURATION_TERM.pattern})+")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ISO_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?"
)
_UNIT_PARTS = {  # (months, days, seconds) per unit
    "y": (12, 0, 0), "mo": (1, 0, 0), "w": (0, 7, 0), "d": (0, 1, 0),
    "h": (0, 0, 3600), "m": (0, 0, 60), "s": (0, 0, 1),
}  # fmt: skip
_AVERAGE_MONTH_SECONDS = 2_629_746  # 365.2425 days / 12: only to estimate a window index
_PERIOD_ALIASES = {
    "day": "day", "daily": "day",
    "week": "week", "weekly": "week",
    "month": "month", "monthly": "month",
}  # fmt: skip


def zone(name: str) -> ZoneInfo:
    """Return the IANA time zone called ``name``."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(
            f"unknown time zone '{name}': use an IANA name such as Asia/Shanghai"
        ) from None


def has_dst(tz: tzinfo, years: range = range(2000, 2040)) -> bool:
    """Whether clocks in `tz` change within `years` (Asia/Shanghai: no; Europe/Berlin: yes)."""
    offsets = {datetime(y, m, 1, 12, tzinfo=UTC).astimezone(tz).utcoffset() for y in years for m in (1, 4, 7, 10)}
    return len(offsets) > 1


def to_utc(dt: datetime) -> datetime:
    """Return the aware datetime ``dt`` in UTC; a naive datetime is a ValueError."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: a timezone-aware instant is expected")
    return dt.astimezone(UTC)


def iso(instant: datetime) -> str:
    """ISO 8601 with offset, in the instant's own offset (UTC for UTC instants).

    Seconds precision, with microseconds only when non-zero.
    """
    to_utc(instant)  # rejects naive datetimes
    return instant.isoformat(timespec="microseconds" if instant.microsecond else "seconds")


def when(instant: datetime, tz: tzinfo) -> str:
    """An instant for people: in `tz`, to the minute, with the zone (`2026-12-30 02:38 CST`)."""
    return to_utc(instant).astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


@dataclass(frozen=True)
class Duration:
    """A calendar duration: whole months, whole days and exact seconds (all >= 0)."""

    months: int = 0
    days: int = 0
    seconds: int = 0

    def __post_init__(self) -> None:
        if min(self.months, self.days, self.seconds) < 0:
            raise ValueError(f"duration parts must not be negative: {self!r}")

    @property
    def is_zero(self) -> bool:
        """True when the duration adds nothing."""
        return not (self.months or self.days or self.seconds)

    def __str__(self) -> str:
        """Canonical text that ``parse_duration`` reads back, e.g. ``1mo``, ``14d``, ``1d12h``.

        Days are always written in days (``7d``, not ``1w``): that is how plans state them.
        """
        parts = []
        if self.months:
            years, months = divmod(self.months, 12)
            parts.append(f"{years}y" if not months else f"{self.months}mo")
        if self.days:
            parts.append(f"{self.days}d")
        hours, rest = divmod(self.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        parts += [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
        return "".join(parts) or "0s"


def parse_duration(text: str) -> Duration:
    """Parse terms like ``30m``, ``12h``, ``7d``, ``2w``, ``1mo``, ``1y`` or ``1d12h``.

    Each unit may appear once, with a positive integer; the total must not be zero.
    """
    cleaned = text.strip().lower()
    if _DURATION.fullmatch(cleaned) is None:
        raise _invalid_duration(text)
    terms = _DURATION_TERM.findall(cleaned)
    units = [unit for _, unit in terms]
    if len(set(units)) != len(units) or any(int(number) == 0 for number, _ in terms):
        raise _invalid_duration(text)
    parts = [[int(number) * factor for factor in _UNIT_PARTS[unit]] for number, unit in terms]
    months, days, seconds = (sum(column) for column in zip(*parts))
    return Duration(months, days, seconds)


def _invalid_duration(text: str) -> InvalidInput:
    return InvalidInput(f"invalid duration '{text.strip()}': use forms like 30m, 12h, 7d, 2w, 1mo")


def _from_local(wall: datetime, tz: ZoneInfo) -> datetime:
    """UTC instant of the naive local wall time ``wall`` in ``tz`` (fold=0)."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def add_duration(
    start: datetime,
    duration: Duration,
    tz: ZoneInfo,
    *,
    times: int = 1,
    anchor_day: int | None = None,
) -> datetime:
    """Return ``start + times × duration`` in UTC (``times`` may be negative or zero).

    Months move the local date in one step, to day ``min(anchor_day or the local
    day of start, last day of the target month)``, so Jan 31 + 1, 2, 3 months is
    Feb 28 (29), Mar 31, Apr 30. Days then move the local date keeping the wall
    time (DST gaps and overlaps resolved with fold=0, see the module docstring).
    Seconds are exact elapsed time.
    """
    result = to_utc(start)
    if anchor_day is not None and not 1 <= anchor_day <= 31:
        raise ValueError(f"anchor_day must be between 1 and 31, got {anchor_day}")
    months, days = duration.months * times, duration.days * times
    if months or days:
        local = result.astimezone(tz)
        day = local.date()
        if months:
            year, month0 = divmod(day.year * 12 + day.month - 1 + months, 12)
            last = calendar.monthrange(year, month0 + 1)[1]
            day = date(year, month0 + 1, min(anchor_day or day.day, last))
        day += timedelta(days=days)
        result = _from_local(datetime.combine(day, local.time()), tz)
    return result + timedelta(seconds=duration.seconds * times)


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    """The natural day in ``tz`` that contains ``instant``."""
    return to_utc(instant).astimezone(tz).date()


def start_of_local_day(day: date, tz: ZoneInfo) -> datetime:
    """UTC instant of local 00:00 on ``day``, or of the day's first instant when a
    DST gap skips midnight."""
    midnight = datetime.combine(day, time())
    candidate = _from_local(midnight, tz)
    if candidate.astimezone(tz).replace(tzinfo=None) == midnight:
        return candidate
    # Midnight falls in a gap: bisect for the first second whose local date is ``day``
    # (transitions fall on whole seconds).
    low, high = -86_400, 0  # seconds from candidate: before ``day`` / within it
    while high - low > 1:
        middle = (low + high) // 2
        if local_date(candidate + timedelta(seconds=middle), tz) >= day:
            high = middle
        else:
            low = middle
    return candidate + timedelta(seconds=high)


@dataclass(frozen=True)
class Period:
    """A reset period: a natural ``day``, ``week`` or ``month``, or a ``custom`` length."""

    kind: str
    length: Duration | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("day", "week", "month", "custom"):
            raise ValueError(f"unknown period kind {self.kind!r}")
        if (self.kind == "custom") != (self.length is not None):
            raise ValueError("a length is required for a custom period and only for one")
        if self.length is not None and self.length.is_zero:
            raise ValueError("a custom period must not have a zero length")

    def __str__(self) -> str:
        """``day``, ``week``, ``month`` or the custom length, e.g. ``5h``."""
        return str(self.length) if self.length is not None else self.kind


def parse_period(text: str) -> Period:
    """Parse ``day``, ``week``, ``month`` (or ``daily``, ``weekly``, ``monthly``) or a duration."""
    cleaned = text.strip().lower()
    if cleaned in _PERIOD_ALIASES:
        return Period(_PERIOD_ALIASES[cleaned])
    try:
        return Period("custom", parse_duration(cleaned))
    except InvalidInput:
        raise InvalidInput(
            f"invalid period '{text.strip()}': use day, week, month or a duration such as 5h"
        ) from None


def period_bounds(
    instant: datetime, period: Period, tz: ZoneInfo, *, anchor: datetime | None = None
) -> tuple[datetime, datetime]:
    """Half-open ``[start, end)`` in UTC of the period containing ``instant``.

    Natural periods start at local 00:00 (weeks on Monday, months on the 1st).
    A custom period is the k-th window ``[anchor + k×length, anchor + (k+1)×length)``
    with k >= 0; ``anchor`` is required and must not be after ``instant``.
    """
    if period.length is None:
        today = local_date(instant, tz)
        if period.kind == "day":
            first, following = today, today + timedelta(days=1)
        elif period.kind == "week":
            first = today - timedelta(days=today.weekday())
            following = first + timedelta(days=7)
        else:
            first = today.replace(day=1)
            following = (first + timedelta(days=31)).replace(day=1)
        return start_of_local_day(first, tz), start_of_local_day(following, tz)
    if anchor is None:
        raise ValueError("a custom period needs an anchor")
    instant, anchor = to_utc(instant), to_utc(anchor)
    if instant < anchor:
        raise ValueError(f"instant {iso(instant)} is before the period anchor {iso(anchor)}")
    length = period.length
    if not (length.months or length.days):
        step = timedelta(seconds=length.seconds)
        k = (instant - anchor) // step
        return anchor + k * step, anchor + (k + 1) * step
    estimate = length.months * _AVERAGE_MONTH_SECONDS + length.days * 86_400 + length.seconds
    k = (instant - anchor) // timedelta(seconds=estimate)
    while k > 0 and add_duration(anchor, length, tz, times=k) > instant:
        k -= 1
    while add_duration(anchor, length, tz, times=k + 1) <= instant:
        k += 1
    return add_duration(anchor, length, tz, times=k), add_duration(anchor, length, tz, times=k + 1)


def next_reset(
    instant: datetime, period: Period, tz: ZoneInfo, *, anchor: datetime | None = None
) -> datetime:
    """The end of the period containing ``instant``: when its counters reset."""
    return period_bounds(instant, period, tz, anchor=anchor)[1]


def parse_instant(text: str, *, now: datetime, tz: ZoneInfo, direction: int = +1) -> datetime:
    """Parse a point in time, returned in UTC.

    Accepts ``now``; ``today``/``yesterday``/``tomorrow`` and ISO dates (local
    00:00 in ``tz``); ISO date-times with an offset or ``Z``, or naive (local in
    ``tz``, fold=0); or a duration meaning ``now + direction × duration``.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    now = to_utc(now)
    cleaned = text.strip()
    relative_days = {"today": 0, "yesterday": -1, "tomorrow": 1}
    try:
        if cleaned.lower() == "now":
            return now
        if cleaned.lower() in relative_days:
            day = local_date(now, tz) + timedelta(days=relative_days[cleaned.lower()])
            return start_of_local_day(day, tz)
        if _ISO_DATE.fullmatch(cleaned):
            return start_of_local_day(date.fromisoformat(cleaned), tz)
        if _ISO_DATETIME.fullmatch(cleaned.upper()):
            parsed = datetime.fromisoformat(cleaned.upper())
            return to_utc(parsed) if parsed.tzinfo else _from_local(parsed, tz)
        return add_duration(now, parse_duration(cleaned), tz, times=direction)
    except (InvalidInput, ValueError, OverflowError):
        raise InvalidInput(
            f"invalid time '{cleaned}': use an ISO date (2026-11-21), a date-time, "
            "now/today/yesterday, or a duration such as 24h"
        ) from None
