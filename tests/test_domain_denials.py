"""What an admission says (domain/denials.py): phrases of reason codes and the next reset."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from planctl.domain import denials, quota
from planctl.domain.quota import Decision

DAY = (datetime(2026, 12, 1, 16, tzinfo=timezone.utc), datetime(2026, 12, 2, 16, tzinfo=timezone.utc))
WEEK = (datetime(2026, 11, 30, 16, tzinfo=timezone.utc), datetime(2026, 12, 7, 16, tzinfo=timezone.utc))
SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_every_denial_reason_but_an_unknown_key_has_a_phrase_that_names_no_command() -> None:
    assert set(denials.PHRASES) == set(quota.REASONS) - {"key_unknown"}
    assert not [p for p in denials.PHRASES.values() if "planctl" in p or "--" in p]


@pytest.mark.parametrize(("blocking", "period", "expected"), [
    ("period_limit_reached", WEEK, WEEK[1]),  # the period's end, not the day's
    ("rpd_reached", WEEK, DAY[1]),  # daily limits reset with the natural day
    ("key_rpd_reached", None, DAY[1]),
    ("key_daily_limit_reached", WEEK, DAY[1]),
    ("tpd_reached", None, DAY[1]),
    (None, WEEK, DAY[1]),  # nothing blocks: whichever counter resets first
    (None, (WEEK[0], DAY[1] - timedelta(hours=1)), DAY[1] - timedelta(hours=1)),
    ("credit_exhausted", WEEK, None),  # never resets by itself
    ("key_disabled", None, None),
    ("period_limit_reached", None, None),
])
def test_the_next_reset_is_the_one_of_the_boundary_that_blocks(blocking: str | None, period: Any,
                                                                expected: datetime | None) -> None:
    assert denials.reset_of(blocking, DAY, period) == expected


def test_a_denial_by_a_boundary_says_when_it_resets_in_the_reset_zone() -> None:
    said = denials.explain(Decision.deny("rpd_reached"), DAY[1], SHANGHAI)
    assert said == "today's request limit (RPD) is reached; it resets at 2026-12-03 00:00 CST"
    assert denials.explain(Decision.deny("key_disabled"), DAY[1], SHANGHAI) == "the key is disabled"
    assert denials.explain(Decision.deny("made_up"), DAY[1], SHANGHAI) == "made_up"


def test_an_admission_says_what_pays() -> None:
    assert denials.explain(Decision(True, pool="plan"), DAY[1], SHANGHAI) == "allowed, charged to plan"
    lifted = denials.explain(Decision(True, pool="extra", lifted="rpd_reached"), DAY[1], SHANGHAI)
    assert lifted == "allowed on extra usage (today's request limit (RPD) is reached)"


def remedies(reason: str | None, boundary: str | None = None, *, subscription: bool = True, extra: int = 0,
             can_disable: bool = False) -> list[str]:
    return denials.remedies(reason, boundary, subscription=subscription, extra_available=extra,
                            can_disable_limit=can_disable)


def test_a_plan_boundary_is_lifted_by_extra_usage_or_the_limit_switch_else_by_waiting() -> None:
    assert remedies("period_limit_reached", "period_limit_reached", can_disable=True) == [
        "buy_extra_usage", "disable_period_limit"]
    assert remedies("period_limit_reached", "period_limit_reached", extra=5) == ["wait_for_reset"]
    assert remedies("rpd_reached", "rpd_reached", can_disable=True) == ["buy_extra_usage"]  # only the period's
    assert remedies(None, "rpd_reached") == ["buy_extra_usage"]  # extra usage absorbs it now: buy more
    assert remedies(None, "rpd_reached", extra=5) == []
    assert remedies("rpd_reached", "rpd_reached", subscription=False) == ["wait_for_reset"]
    assert remedies(None, None) == []


def test_an_expired_or_used_up_subscription_is_renewed_and_a_key_or_account_fixed_by_its_reason() -> None:
    assert remedies("credit_exhausted") == ["renew"]
    assert remedies("subscription_expired") == ["renew"]
    assert remedies("subscription_expired", subscription=False) == []
    for reason in denials.FIXABLE:
        assert remedies(reason) == [reason]
    assert remedies("key_unknown") == []
