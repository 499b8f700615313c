"""Durations, instants and natural periods in the reset zone, DST included."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo

import pytest

from planctl.domain.clock import (
    Duration,
    Period,
    add_duration,
    iso,
    local_date,
    next_reset,
    parse_duration,
    parse_instant,
    parse_period,
    period_bounds,
    start_of_local_day,
    to_utc,
    zone,
)
from planctl.domain.errors import InvalidInput

from helpers import US, local, utc

UTC = timezone.utc
BEIJING = zone("Asia/Shanghai")
NEW_YORK = zone("America/New_York")
BERLIN = zone("Europe/Berlin")
SANTIAGO = zone("America/Santiago")  # its DST gap swallows local midnight
DAY, WEEK, MONTH = Period("day"), Period("week"), Period("month")


# --- zones, to_utc, iso -------------------------------------------------------


def test_zone_accepts_iana_names() -> None:
    assert zone("Asia/Shanghai").key == "Asia/Shanghai"
    assert zone(" UTC ").key == "UTC"


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "America", "../etc/passwd", "/etc/localtime", "utc+8"])
def test_zone_rejects_unknown_names(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        zone(name)
    assert caught.value.message == f"unknown time zone '{name}': use an IANA name such as Asia/Shanghai"


def test_to_utc_converts_aware_and_rejects_naive() -> None:
    converted = to_utc(datetime(2026, 11, 21, 0, 0, tzinfo=BEIJING))
    assert converted == utc("2026-11-20T16:00") and converted.tzinfo is UTC
    with pytest.raises(ValueError):
        to_utc(datetime(2026, 11, 21))


@pytest.mark.parametrize(
    ("instant", "text"),
    [
        (utc("2026-11-21T16:00:00"), "2026-11-21T16:00:00+00:00"),
        (utc("2026-11-21T16:00:00.000005"), "2026-11-21T16:00:00.000005+00:00"),
        (utc("2026-11-21T16:00:00").astimezone(BEIJING), "2026-11-22T00:00:00+08:00"),
        (datetime(2026, 3, 8, 12, tzinfo=NEW_YORK), "2026-03-08T12:00:00-04:00"),
    ],
)
def test_iso(instant: datetime, text: str) -> None:
    assert iso(instant) == text


def test_iso_rejects_naive() -> None:
    with pytest.raises(ValueError):
        iso(datetime(2026, 11, 21))


# --- durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "duration", "canonical"),
    [
        ("30m", Duration(seconds=1800), "30m"),
        ("12h", Duration(seconds=43_200), "12h"),
        ("7d", Duration(days=7), "7d"),
        ("2w", Duration(days=14), "14d"),
        ("8d", Duration(days=8), "8d"),
        ("1w1d", Duration(days=8), "8d"),
        ("1mo", Duration(months=1), "1mo"),
        ("12mo", Duration(months=12), "1y"),
        ("1y", Duration(months=12), "1y"),
        ("1y6mo", Duration(months=18), "18mo"),
        ("1d12h", Duration(days=1, seconds=43_200), "1d12h"),
        ("36h", Duration(seconds=129_600), "36h"),
        ("90s", Duration(seconds=90), "1m30s"),
        ("1H30M", Duration(seconds=5400), "1h30m"),
        ("  5h\t", Duration(seconds=18_000), "5h"),
        ("30m1h", Duration(seconds=5400), "1h30m"),
        ("1mo2w3d4h5m6s", Duration(1, 17, 14_706), "1mo17d4h5m6s"),
    ],
)
def test_parse_duration_and_canonical_text(text: str, duration: Duration, canonical: str) -> None:
    assert parse_duration(text) == duration
    assert str(duration) == canonical
    assert parse_duration(canonical) == duration


@pytest.mark.parametrize(
    "text",
    ["", "  ", "0s", "0d", "0h0m", "-1d", "+1d", "1", "d", "1x", "1 d", "1d 2h", "1h1h", "1y1y",
     "1.5h", "P1D", "1d-2h", "1m0s", "1mo1", "12345678901s", "1day", "7days"],
)  # fmt: skip
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(text)
    assert caught.value.message == (
        f"invalid duration '{text.strip()}': use forms like 30m, 12h, 7d, 2w, 1mo"
    )


def test_duration_rules() -> None:
    assert Duration().is_zero and str(Duration()) == "0s"
    assert not Duration(seconds=1).is_zero
    with pytest.raises(ValueError):
        Duration(days=-1)


# --- local days and their starts ----------------------------------------------


@pytest.mark.parametrize(
    ("instant", "day"),
    [
        (utc("2026-11-20T15:59:59"), date(2026, 11, 20)),
        (utc("2026-11-20T15:59:59.999999"), date(2026, 11, 20)),
        (utc("2026-11-20T16:00:00"), date(2026, 11, 21)),
        (utc("2026-11-21T00:00:00"), date(2026, 11, 21)),
    ],
)
def test_beijing_midnight_is_1600_utc(instant: datetime, day: date) -> None:
    assert local_date(instant, BEIJING) == day


def test_local_date_rejects_naive() -> None:
    with pytest.raises(ValueError):
        local_date(datetime(2026, 11, 21), BEIJING)


def test_start_of_local_day() -> None:
    assert start_of_local_day(date(2026, 11, 21), BEIJING) == utc("2026-11-20T16:00")
    assert start_of_local_day(date(2026, 3, 8), NEW_YORK) == utc("2026-03-08T05:00")  # EST
    assert start_of_local_day(date(2026, 3, 9), NEW_YORK) == utc("2026-03-09T04:00")  # EDT
    # Santiago skips from 00:00 to 01:00 on 2026-09-06: the day starts at the jump.
    start = start_of_local_day(date(2026, 9, 6), SANTIAGO)
    assert start == utc("2026-09-06T04:00")
    assert local_date(start, SANTIAGO) == date(2026, 9, 6)
    assert local_date(start - US, SANTIAGO) == date(2026, 9, 5)


class StraddlingGap(tzinfo):
    """A synthetic zone: UTC+0 until 2026-06-01T23:30Z, then UTC+1, so local 23:30 jumps
    to 00:30 and midnight of 2026-06-02 never happens (no real zone does this since 1970)."""

    JUMP = datetime(2026, 6, 1, 23, 30)

    def utcoffset(self, dt: datetime | None) -> timedelta:
        wall = dt.replace(tzinfo=None, fold=0) if dt else self.JUMP
        if wall < self.JUMP:
            return timedelta(0)
        if wall >= self.JUMP + timedelta(hours=1):
            return timedelta(hours=1)
        return timedelta(hours=1 if dt and dt.fold else 0)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def fromutc(self, dt: datetime) -> datetime:
        naive = dt.replace(tzinfo=None)
        shift = timedelta(0) if naive < self.JUMP else timedelta(hours=1)
        return (naive + shift).replace(tzinfo=self)


def test_start_of_local_day_when_a_gap_straddles_midnight() -> None:
    gap = StraddlingGap()
    start = start_of_local_day(date(2026, 6, 2), gap)  # type: ignore[arg-type]
    assert start == utc("2026-06-01T23:30")  # 00:30 local, the day's first instant
    assert local_date(start - US, gap) == date(2026, 6, 1)  # type: ignore[arg-type]
    day_before = period_bounds(utc("2026-06-01T12:00"), DAY, gap)  # type: ignore[arg-type]
    assert day_before == (utc("2026-06-01T00:00"), start)


# --- natural periods ----------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "start", "end"),
    [
        ("2026-11-20T15:59:59", "2026-11-19T16:00", "2026-11-20T16:00"),
        ("2026-11-20T16:00:00", "2026-11-20T16:00", "2026-11-21T16:00"),
        ("2026-11-21T15:59:59.999999", "2026-11-20T16:00", "2026-11-21T16:00"),
        ("2026-12-31T16:00:00", "2026-12-31T16:00", "2027-01-01T16:00"),  # New Year's Day
    ],
)
def test_day_bounds_beijing(instant: str, start: str, end: str) -> None:
    assert period_bounds(utc(instant), DAY, BEIJING) == (utc(start), utc(end))
    assert next_reset(utc(instant), DAY, BEIJING) == utc(end)


@pytest.mark.parametrize(
    ("instant", "start", "end"),
    [
        # Monday 2026-11-23 00:00 Beijing is 2026-11-22T16:00Z.
        ("2026-11-22T16:00:00", "2026-11-22T16:00", "2026-11-29T16:00"),
        ("2026-11-22T15:59:59.999999", "2026-11-15T16:00", "2026-11-22T16:00"),
        ("2026-11-29T15:59:59", "2026-11-22T16:00", "2026-11-29T16:00"),  # Sunday night
        ("2027-01-01T04:00:00", "2026-12-27T16:00", "2027-01-03T16:00"),  # week spans the year end
    ],
)
def test_week_bounds_start_monday_beijing(instant: str, start: str, end: str) -> None:
    assert period_bounds(utc(instant), WEEK, BEIJING) == (utc(start), utc(end))


@pytest.mark.parametrize(
    ("instant", "start", "end"),
    [
        ("2026-11-30T16:00:00", "2026-11-30T16:00", "2026-12-31T16:00"),  # Dec 1 00:00 Beijing
        ("2026-11-30T15:59:59.999999", "2026-10-31T16:00", "2026-11-30T16:00"),
        ("2026-12-31T15:59:59", "2026-11-30T16:00", "2026-12-31T16:00"),  # year end
        ("2026-12-31T16:00:00", "2026-12-31T16:00", "2027-01-31T16:00"),
        ("2028-02-15T00:00:00", "2028-01-31T16:00", "2028-02-29T16:00"),  # leap February
        ("2026-02-15T00:00:00", "2026-01-31T16:00", "2026-02-28T16:00"),
    ],
)
def test_month_bounds_beijing(instant: str, start: str, end: str) -> None:
    assert period_bounds(utc(instant), MONTH, BEIJING) == (utc(start), utc(end))


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (NEW_YORK, "2026-03-08", 23),
        (NEW_YORK, "2026-11-01", 25),
        (NEW_YORK, "2026-07-01", 24),
        (BERLIN, "2026-03-29", 23),
        (BERLIN, "2026-10-25", 25),
        (SANTIAGO, "2026-09-06", 23),
    ],
)
def test_day_bounds_on_dst_change_days(tz: object, day: str, hours: int) -> None:
    noon = local(f"{day}T12:00", tz)
    start, end = period_bounds(noon, DAY, tz)
    assert end - start == timedelta(hours=hours)
    assert local_date(start, tz) == local_date(end - US, tz) == date.fromisoformat(day)
    assert local_date(end, tz) == date.fromisoformat(day) + timedelta(days=1)


def test_week_and_month_bounds_across_dst_in_berlin() -> None:
    instant = local("2026-03-29T12:00", BERLIN)
    assert period_bounds(instant, WEEK, BERLIN) == (utc("2026-03-22T23:00"), utc("2026-03-29T22:00"))
    assert period_bounds(instant, MONTH, BERLIN) == (utc("2026-02-28T23:00"), utc("2026-03-31T22:00"))


# --- add_duration -------------------------------------------------------------

JAN_31 = local("2026-01-31T10:00", BEIJING)
ONE_MONTH = Duration(months=1)


@pytest.mark.parametrize(
    ("start", "duration", "times", "expected"),
    [
        (JAN_31, ONE_MONTH, 1, "2026-02-28T10:00"),
        (JAN_31, ONE_MONTH, 2, "2026-03-31T10:00"),
        (JAN_31, ONE_MONTH, 3, "2026-04-30T10:00"),
        (JAN_31, ONE_MONTH, 12, "2027-01-31T10:00"),
        (local("2028-01-31T10:00", BEIJING), ONE_MONTH, 1, "2028-02-29T10:00"),
        (local("2028-02-29T10:00", BEIJING), Duration(months=12), 1, "2029-02-28T10:00"),
        (local("2028-02-29T10:00", BEIJING), Duration(months=12), 4, "2032-02-29T10:00"),
        (local("2026-03-31T10:00", BEIJING), ONE_MONTH, -1, "2026-02-28T10:00"),
        (local("2026-03-31T10:00", BEIJING), ONE_MONTH, -13, "2025-02-28T10:00"),
        (local("2026-12-15T10:00", BEIJING), ONE_MONTH, 1, "2027-01-15T10:00"),
        (JAN_31, Duration(days=7), -1, "2026-01-24T10:00"),
        (JAN_31, Duration(months=1, days=1), 1, "2026-03-01T10:00"),  # months first, then days
    ],
)
def test_add_duration_month_anchoring(start: datetime, duration: Duration, times: int, expected: str) -> None:
    result = add_duration(start, duration, BEIJING, times=times)
    assert result == local(expected, BEIJING)
    assert result.tzinfo is UTC


def test_month_steps_one_at_a_time_would_lose_the_anchor() -> None:
    stepwise = add_duration(add_duration(JAN_31, ONE_MONTH, BEIJING), ONE_MONTH, BEIJING)
    assert stepwise == local("2026-03-28T10:00", BEIJING)
    assert add_duration(JAN_31, ONE_MONTH, BEIJING, times=2) == local("2026-03-31T10:00", BEIJING)


def test_anchor_day_overrides_the_start_day() -> None:
    feb_28 = local("2026-02-28T10:00", BEIJING)
    assert add_duration(feb_28, ONE_MONTH, BEIJING) == local("2026-03-28T10:00", BEIJING)
    assert add_duration(feb_28, ONE_MONTH, BEIJING, anchor_day=31) == local("2026-03-31T10:00", BEIJING)
    assert add_duration(feb_28, ONE_MONTH, BEIJING, anchor_day=30, times=2) == local("2026-04-30T10:00", BEIJING)
    with pytest.raises(ValueError):
        add_duration(feb_28, ONE_MONTH, BEIJING, anchor_day=32)


def test_month_arithmetic_uses_the_local_day() -> None:
    # 2026-01-31T16:30Z is already Feb 1 00:30 in Beijing.
    start = utc("2026-01-31T16:30")
    assert add_duration(start, ONE_MONTH, BEIJING) == local("2026-03-01T00:30", BEIJING)


def test_days_keep_local_wall_time_across_dst() -> None:
    start = local("2026-03-07T12:00", NEW_YORK)  # EST
    assert start == utc("2026-03-07T17:00")
    next_day = add_duration(start, Duration(days=1), NEW_YORK)
    assert next_day == local("2026-03-08T12:00", NEW_YORK) == utc("2026-03-08T16:00")
    assert next_day - start == timedelta(hours=23)
    # Seconds are exact elapsed time: 24 h later is 13:00 EDT.
    assert add_duration(start, Duration(seconds=86_400), NEW_YORK) == utc("2026-03-08T17:00")
    # Months too keep the wall time across the change.
    feb = local("2026-02-15T12:00", NEW_YORK)
    assert add_duration(feb, ONE_MONTH, NEW_YORK) == utc("2026-03-15T16:00")


def test_dst_gap_and_overlap_resolve_with_fold_zero() -> None:
    # 02:30 does not exist on 2026-03-08 in New York: fold=0 reads it with EST, i.e. 03:30 EDT.
    before_gap = local("2026-03-07T02:30", NEW_YORK)
    assert add_duration(before_gap, Duration(days=1), NEW_YORK) == utc("2026-03-08T07:30")
    # 01:30 happens twice on 2026-11-01: fold=0 is the first (EDT) occurrence.
    before_overlap = local("2026-10-31T01:30", NEW_YORK)
    assert add_duration(before_overlap, Duration(days=1), NEW_YORK) == utc("2026-11-01T05:30")


def test_seconds_only_durations_never_touch_the_wall_clock() -> None:
    second_half_past_one = utc("2026-11-01T06:30")  # 01:30 EST, the second occurrence
    assert add_duration(second_half_past_one, Duration(seconds=3600), NEW_YORK) == utc("2026-11-01T07:30")
    assert add_duration(second_half_past_one, Duration(days=1), NEW_YORK, times=0) == second_half_past_one
    assert add_duration(second_half_past_one, Duration(seconds=90), NEW_YORK, times=-2) == utc("2026-11-01T06:27")


def test_add_duration_rejects_naive_start() -> None:
    with pytest.raises(ValueError):
        add_duration(datetime(2026, 1, 1), ONE_MONTH, BEIJING)


# --- periods ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "period", "canonical"),
    [
        ("day", DAY, "day"),
        ("Daily", DAY, "day"),
        (" week ", WEEK, "week"),
        ("weekly", WEEK, "week"),
        ("month", MONTH, "month"),
        ("MONTHLY", MONTH, "month"),
        ("5h", Period("custom", Duration(seconds=18_000)), "5h"),
        ("1mo", Period("custom", ONE_MONTH), "1mo"),
        ("14d", Period("custom", Duration(days=14)), "14d"),
    ],
)
def test_parse_period(text: str, period: Period, canonical: str) -> None:
    assert parse_period(text) == period
    assert str(period) == canonical
    assert parse_period(canonical) == period


@pytest.mark.parametrize("text", ["", "hourly", "fortnight", "0h", "5 h", "days"])
def test_parse_period_rejects(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_period(text)
    assert caught.value.message == (
        f"invalid period '{text.strip()}': use day, week, month or a duration such as 5h"
    )


def test_period_invariants() -> None:
    with pytest.raises(ValueError):
        Period("year")
    with pytest.raises(ValueError):
        Period("custom")
    with pytest.raises(ValueError):
        Period("custom", Duration())
    with pytest.raises(ValueError):
        Period("day", Duration(days=1))


ANCHOR = utc("2026-11-21T03:17:00")
FIVE_HOURS = parse_period("5h")
H5 = timedelta(hours=5)


@pytest.mark.parametrize(
    ("instant", "start", "end"),
    [
        (ANCHOR, ANCHOR, ANCHOR + H5),
        (ANCHOR + H5 - US, ANCHOR, ANCHOR + H5),
        (ANCHOR + H5, ANCHOR + H5, ANCHOR + 2 * H5),
        (ANCHOR + 1000 * H5 + timedelta(seconds=1), ANCHOR + 1000 * H5, ANCHOR + 1001 * H5),
    ],
)
def test_custom_fixed_period_windows(instant: datetime, start: datetime, end: datetime) -> None:
    assert period_bounds(instant, FIVE_HOURS, BEIJING, anchor=ANCHOR) == (start, end)
    assert next_reset(instant, FIVE_HOURS, BEIJING, anchor=ANCHOR) == end


def test_custom_period_needs_an_anchor_not_after_the_instant() -> None:
    with pytest.raises(ValueError):
        period_bounds(ANCHOR, FIVE_HOURS, BEIJING)
    with pytest.raises(ValueError):
        period_bounds(ANCHOR - US, FIVE_HOURS, BEIJING, anchor=ANCHOR)
    with pytest.raises(ValueError):
        period_bounds(ANCHOR, FIVE_HOURS, BEIJING, anchor=datetime(2026, 11, 21))


MONTHLY = parse_period("1mo")
JAN_31_MIDNIGHT = local("2026-01-31T00:00", BEIJING)


@pytest.mark.parametrize(
    ("instant", "start", "end"),
    [
        ("2026-01-31T00:00", "2026-01-31T00:00", "2026-02-28T00:00"),
        ("2026-02-27T23:59:59.999999", "2026-01-31T00:00", "2026-02-28T00:00"),
        ("2026-02-28T00:00", "2026-02-28T00:00", "2026-03-31T00:00"),
        ("2026-03-15T12:00", "2026-02-28T00:00", "2026-03-31T00:00"),
        ("2026-03-31T00:00", "2026-03-31T00:00", "2026-04-30T00:00"),
        ("2026-05-30T23:59:59", "2026-04-30T00:00", "2026-05-31T00:00"),
        ("2028-02-29T08:00", "2028-02-29T00:00", "2028-03-31T00:00"),
        ("2036-07-04T00:00", "2036-06-30T00:00", "2036-07-31T00:00"),
    ],
)
def test_custom_monthly_period_keeps_its_anchor(instant: str, start: str, end: str) -> None:
    bounds = period_bounds(local(instant, BEIJING), MONTHLY, BEIJING, anchor=JAN_31_MIDNIGHT)
    assert bounds == (local(start, BEIJING), local(end, BEIJING))


@pytest.mark.parametrize(
    ("tz", "anchor", "length", "instant", "start", "end"),
    [
        # 30.5 days after Jan 1 is past the average month but still in January's window.
        (BEIJING, "2026-01-01T00:00", "1mo", "2026-01-31T12:00", "2026-01-01T00:00", "2026-02-01T00:00"),
        # A 25-hour day when DST ends: 8 days + 30 min of elapsed time is still window 7.
        (NEW_YORK, "2026-10-25T09:00", "1d", "2026-11-02T08:30", "2026-11-01T09:00", "2026-11-02T09:00"),
        (BEIJING, "2026-01-01T00:00", "1y", "2030-12-31T23:59", "2030-01-01T00:00", "2031-01-01T00:00"),
    ],
)
def test_custom_calendar_period_adjusts_its_estimate(
    tz: object, anchor: str, length: str, instant: str, start: str, end: str
) -> None:
    bounds = period_bounds(local(instant, tz), parse_period(length), tz, anchor=local(anchor, tz))
    assert bounds == (local(start, tz), local(end, tz))


def test_custom_day_period_follows_the_wall_clock_across_dst() -> None:
    anchor = local("2026-03-01T09:00", NEW_YORK)
    instant = local("2026-03-08T20:00", NEW_YORK)
    start, end = period_bounds(instant, parse_period("1d"), NEW_YORK, anchor=anchor)
    assert (start, end) == (utc("2026-03-08T13:00"), utc("2026-03-09T13:00"))  # both 09:00 EDT
    eight_am = instant - timedelta(hours=12)  # 08:00 EDT on the change day
    previous = period_bounds(eight_am, parse_period("1d"), NEW_YORK, anchor=anchor)
    assert previous == (utc("2026-03-07T14:00"), start)  # from 09:00 EST: a 23-hour window


# --- parse_instant ------------------------------------------------------------

NOW = utc("2026-11-21T03:00")  # 11:00 on 2026-11-21 in Beijing


@pytest.mark.parametrize(
    ("text", "direction", "expected"),
    [
        ("now", 1, "2026-11-21T03:00"),
        (" NOW ", -1, "2026-11-21T03:00"),
        ("today", 1, "2026-11-20T16:00"),
        ("yesterday", 1, "2026-11-19T16:00"),
        ("tomorrow", 1, "2026-11-21T16:00"),
        ("2026-11-21", 1, "2026-11-20T16:00"),
        ("2026-12-01", -1, "2026-11-30T16:00"),
        ("2026-11-21T10:00", 1, "2026-11-21T02:00"),  # naive: Beijing wall time
        ("2026-11-21 10:00:30", 1, "2026-11-21T02:00:30"),
        ("2026-11-21T10:00:00Z", 1, "2026-11-21T10:00"),
        ("2026-11-21t10:00:00z", 1, "2026-11-21T10:00"),
        ("2026-11-21T10:00:00+09:00", 1, "2026-11-21T01:00"),
        ("2026-11-21T10:00:00-0500", 1, "2026-11-21T15:00"),
        ("2026-11-21T10:00:00.250000Z", 1, "2026-11-21T10:00:00.25"),
        ("7d", -1, "2026-11-14T03:00"),
        ("7d", 1, "2026-11-28T03:00"),
        ("24h", 1, "2026-11-22T03:00"),
        ("90m", -1, "2026-11-21T01:30"),
        ("1mo", -1, "2026-10-21T03:00"),
    ],
)
def test_parse_instant_forms(text: str, direction: int, expected: str) -> None:
    result = parse_instant(text, now=NOW, tz=BEIJING, direction=direction)
    assert result == utc(expected)
    assert result.tzinfo is UTC


def test_parse_instant_today_flips_at_beijing_midnight() -> None:
    assert parse_instant("today", now=utc("2026-11-20T15:59:59"), tz=BEIJING) == utc("2026-11-19T16:00")
    assert parse_instant("today", now=utc("2026-11-20T16:00:00"), tz=BEIJING) == utc("2026-11-20T16:00")


def test_parse_instant_month_ago_keeps_month_end() -> None:
    mar_31 = local("2026-03-31T10:00", BEIJING)
    assert parse_instant("1mo", now=mar_31, tz=BEIJING, direction=-1) == local("2026-02-28T10:00", BEIJING)


def test_parse_instant_local_wall_times_with_dst() -> None:
    now = utc("2026-06-01T12:00")
    assert parse_instant("2026-07-01T12:00", now=now, tz=NEW_YORK) == utc("2026-07-01T16:00")  # EDT
    assert parse_instant("2026-12-01T12:00", now=now, tz=NEW_YORK) == utc("2026-12-01T17:00")  # EST
    assert parse_instant("2026-03-08T02:30", now=now, tz=NEW_YORK) == utc("2026-03-08T07:30")  # gap, fold=0
    assert parse_instant("2026-11-01T01:30", now=now, tz=NEW_YORK) == utc("2026-11-01T05:30")  # first 01:30
    assert parse_instant("2026-03-29", now=now, tz=BERLIN) == utc("2026-03-28T23:00")
    assert parse_instant("2026-09-06", now=now, tz=SANTIAGO) == utc("2026-09-06T04:00")  # midnight skipped


@pytest.mark.parametrize(
    "text",
    ["", "soon", "2026-13-01", "2026-02-30", "21/11/2026", "20261121", "2026-11-21T25:00",
     "2026-11-21T10", "7 d", "-7d", "0d", "2026-W47-1", "999999999y", "today+1d"],
)  # fmt: skip
def test_parse_instant_rejects(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_instant(text, now=NOW, tz=BEIJING)
    assert caught.value.message == (
        f"invalid time '{text.strip()}': use an ISO date (2026-11-21), a date-time, "
        "now/today/yesterday, or a duration such as 24h"
    )


def test_parse_instant_programming_errors() -> None:
    with pytest.raises(ValueError):
        parse_instant("now", now=datetime(2026, 11, 21), tz=BEIJING)
    with pytest.raises(ValueError):
        parse_instant("7d", now=NOW, tz=BEIJING, direction=2)
