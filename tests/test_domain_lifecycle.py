"""Pure unit tests of the subscription lifecycle rules (SPEC §3, issue 3; no database).

`domain.lifecycle` decides buy (first term, on sale), renew (four conditions,
stacking with month-end anchoring), direct renewal, upgrade (family, tier,
proration) and refunds (policy, override). Every instant is passed in
explicitly; the reset zone is Beijing (midnight = 16:00 UTC) unless a DST case
says otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from planctl.domain import lifecycle
from planctl.domain.catalog import Context, RefundPolicy, parse_plan
from planctl.domain.clock import Duration, when
from planctl.domain.errors import ExitCode, InvalidInput, Refused
from planctl.domain.lifecycle import (
    RefundFacts,
    SubscriptionState,
    Term,
    check_on_sale,
    check_renewal,
    check_upgrade,
    direct_renewal_term,
    extend,
    first_term,
    quote_refund,
    quote_upgrade,
    remaining_share,
    renewal_opens,
)
from planctl.domain.money import MICRO

from helpers import US, local, utc

UTC = timezone.utc
BEIJING = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
CTX = Context(currency="CNY", currency_decimals=2, models=frozenset({"gpt-5.4"}), groups=frozenset({"default"}))

BASE = parse_plan(
    {
        "slug": "codex-plus-monthly",
        "name": "Codex Plus",
        "family": "codex",
        "tier": 1,
        "price": "100.00",
        "validity": "1mo",
        "total_credit": "1000",
        "models": ["gpt-5.4"],
        "groups": ["default"],
    },
    CTX,
)
PRO = replace(BASE, slug="codex-pro-monthly", name="Codex Pro", tier=2, price=25_000, total_credit=3_000 * MICRO)
THIRTY_DAYS = replace(BASE, validity=Duration(days=30))
PRO_THIRTY_DAYS = replace(PRO, validity=Duration(days=30))


def sub(starts_at: datetime, ends_at: datetime, anchor_day: int | None = None, **changes: Any) -> SubscriptionState:
    values: dict[str, Any] = {
        "status": "active",
        "starts_at": starts_at,
        "ends_at": ends_at,
        "anchor_day": anchor_day if anchor_day is not None else starts_at.astimezone(BEIJING).day,
        "credit_granted": 1_000 * MICRO,
        "credit_used": 0,
    }
    values.update(changes)
    return SubscriptionState(**values)


def refused(reason: str, call: Any, *args: Any, **kwargs: Any) -> Refused:
    """Assert that `call` is refused with `reason` (exit 4) and return the error."""
    with pytest.raises(Refused) as caught:
        call(*args, **kwargs)
    assert caught.value.reason == reason, caught.value.message
    assert caught.value.exit_code == ExitCode.REFUSED
    return caught.value


# =============================================================== buy: first term


NOW = utc("2026-11-21T04:00:00")  # 12:00 in Beijing


def test_first_term_starts_now_without_start() -> None:
    term = first_term(BASE, NOW, None, BEIJING)
    assert term == Term(NOW, utc("2026-12-21T04:00:00"), 21)


def test_first_term_starts_at_a_future_start() -> None:
    start = utc("2026-12-01T00:00:00")  # 08:00 Beijing on Dec 1
    term = first_term(BASE, NOW, start, BEIJING)
    assert term == Term(start, utc("2027-01-01T00:00:00"), 1)


def test_first_term_start_one_hour_in_the_past_is_allowed() -> None:
    start = NOW - timedelta(hours=1)
    term = first_term(BASE, NOW, start, BEIJING)
    assert term.starts_at == start
    assert term.ends_at == utc("2026-12-21T03:00:00")


def test_first_term_start_more_than_one_hour_in_the_past_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        first_term(BASE, NOW, NOW - timedelta(hours=1) - US, BEIJING)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "in the past" in caught.value.message
    with pytest.raises(InvalidInput):
        first_term(BASE, NOW, NOW - timedelta(days=30), BEIJING)


def test_first_term_start_up_to_the_future_limit_is_allowed() -> None:
    assert first_term(BASE, NOW, NOW + timedelta(days=365), BEIJING).starts_at == NOW + timedelta(days=365)
    limit = NOW + lifecycle.START_FUTURE_LIMIT
    assert first_term(BASE, NOW, limit, BEIJING).starts_at == limit


def test_first_term_start_more_than_a_year_ahead_is_refused() -> None:
    assert timedelta(days=365) <= lifecycle.START_FUTURE_LIMIT <= timedelta(days=366)
    with pytest.raises(InvalidInput) as caught:
        first_term(BASE, NOW, NOW + lifecycle.START_FUTURE_LIMIT + US, BEIJING)
    assert "more than a year ahead" in caught.value.message
    with pytest.raises(InvalidInput):
        first_term(BASE, NOW, NOW + timedelta(days=400), BEIJING)


@pytest.mark.parametrize(
    ("bought", "ends"),
    [
        ("2027-01-31T04:00:00", "2027-02-28T04:00:00"),  # common year
        ("2028-01-31T04:00:00", "2028-02-29T04:00:00"),  # leap year
        ("2027-01-30T04:00:00", "2027-02-28T04:00:00"),
        ("2027-01-28T04:00:00", "2027-02-28T04:00:00"),
        ("2027-03-31T04:00:00", "2027-04-30T04:00:00"),
        ("2027-12-31T04:00:00", "2028-01-31T04:00:00"),  # across the year
    ],
)
def test_monthly_validity_clamps_to_the_month_end(bought: str, ends: str) -> None:
    term = first_term(BASE, utc(bought), None, BEIJING)
    assert term.ends_at == utc(ends)
    assert term.anchor_day == utc(bought).day


def test_anchor_day_is_the_beijing_local_day() -> None:
    # 2026-01-30T17:00Z is Jan 31 01:00 in Beijing: the anchor is 31, not 30.
    bought = utc("2026-01-30T17:00:00")
    term = first_term(BASE, bought, None, BEIJING)
    assert term.anchor_day == 31
    assert term.ends_at == local("2026-02-28T01:00:00", BEIJING) == utc("2026-02-27T17:00:00")
    # One microsecond before Beijing midnight it is still Jan 30.
    earlier = utc("2026-01-30T16:00:00") - US
    assert first_term(BASE, earlier, None, BEIJING).anchor_day == 30
    assert first_term(BASE, utc("2026-01-30T16:00:00"), None, BEIJING).anchor_day == 31


def test_anchor_day_follows_the_zone_passed() -> None:
    # The same instant is Jan 30 22:00 in New York.
    assert first_term(BASE, utc("2026-01-31T03:00:00"), None, NEW_YORK).anchor_day == 30


def test_monthly_validity_across_a_dst_change_keeps_the_wall_time() -> None:
    bought = local("2026-03-01T00:30:00", NEW_YORK)  # EST, 05:30Z
    term = first_term(BASE, bought, None, NEW_YORK)
    assert term.ends_at == local("2026-04-01T00:30:00", NEW_YORK) == utc("2026-04-01T04:30:00")  # EDT
    assert term.ends_at - term.starts_at == timedelta(days=31, hours=-1)


def test_daily_validity_in_beijing_is_24_hours() -> None:
    daily = replace(BASE, validity=Duration(days=1))
    term = first_term(daily, utc("2026-11-20T16:00:00"), None, BEIJING)
    assert term.ends_at == utc("2026-11-21T16:00:00")


# =============================================================== buy: on sale


def test_on_sale_without_window_is_allowed() -> None:
    check_on_sale(BASE, NOW)


def test_off_sale_is_refused() -> None:
    error = refused("plan_not_on_sale", check_on_sale, replace(BASE, on_sale=False), NOW)
    assert "codex-plus-monthly" in error.message and "removed from sale" in error.message


def test_before_purchase_start_is_refused_and_at_start_allowed() -> None:
    plan = replace(BASE, purchase_start=NOW)
    error = refused("purchase_window_closed", check_on_sale, plan, NOW - US)
    assert when(NOW, UTC) in error.message and "goes on sale" in error.message
    check_on_sale(plan, NOW)


def test_at_purchase_end_is_refused_and_one_microsecond_before_allowed() -> None:
    plan = replace(BASE, purchase_start=NOW - timedelta(days=10), purchase_end=NOW)
    check_on_sale(plan, NOW - US)
    error = refused("purchase_window_closed", check_on_sale, plan, NOW)
    assert "stopped selling" in error.message and when(NOW, UTC) in error.message
    refused("purchase_window_closed", check_on_sale, plan, NOW + timedelta(days=1))


def test_off_sale_is_reported_before_the_purchase_window() -> None:
    plan = replace(BASE, on_sale=False, purchase_end=NOW - timedelta(days=1))
    refused("plan_not_on_sale", check_on_sale, plan, NOW)


# =============================================================== renew

ENDS = utc("2027-02-28T04:00:00")  # 12:00 Beijing
STARTS = utc("2027-01-31T04:00:00")
OPENS = utc("2027-02-25T04:00:00")  # ENDS − 3 days


def renewable(**changes: Any) -> SubscriptionState:
    return sub(STARTS, ENDS, 31, **changes)


def test_renewal_opens_three_days_before_the_end_by_default() -> None:
    assert BASE.renewal_window == Duration(days=3)
    assert renewal_opens(renewable(), BASE, BEIJING) == OPENS


def test_renewal_window_edges() -> None:
    error = refused("renewal_window_not_open", check_renewal, renewable(), BASE, OPENS - US, BEIJING)
    assert when(OPENS, BEIJING) in error.message  # says when it opens
    assert "renewal opens at" in error.message and when(ENDS, BEIJING) in error.message
    check_renewal(renewable(), BASE, OPENS, BEIJING)  # first instant of the window
    check_renewal(renewable(), BASE, ENDS - US, BEIJING)  # last instant of validity


def test_renewal_far_before_the_window_names_the_opening() -> None:
    error = refused("renewal_window_not_open", check_renewal, renewable(), BASE, STARTS, BEIJING)
    assert when(OPENS, BEIJING) in error.message


def test_renewal_window_follows_the_plan_setting() -> None:
    plan = replace(BASE, renewal_window=Duration(days=7))
    opens = utc("2027-02-21T04:00:00")
    refused("renewal_window_not_open", check_renewal, renewable(), plan, opens - US, BEIJING)
    check_renewal(renewable(), plan, opens, BEIJING)


def test_renewal_window_across_a_dst_change_counts_local_days() -> None:
    ends = local("2026-03-10T12:00:00", NEW_YORK)  # EDT: 16:00Z
    state = sub(local("2026-02-10T12:00:00", NEW_YORK), ends, 10)
    opens = local("2026-03-07T12:00:00", NEW_YORK)  # EST: 17:00Z, 71 hours before
    assert opens == utc("2026-03-07T17:00:00") and ends - opens == timedelta(hours=71)
    assert renewal_opens(state, BASE, NEW_YORK) == opens
    refused("renewal_window_not_open", check_renewal, state, BASE, opens - US, NEW_YORK)
    check_renewal(state, BASE, opens, NEW_YORK)


def test_renewal_of_a_cancelled_subscription_is_refused() -> None:
    error = refused("subscription_cancelled", check_renewal, renewable(status="cancelled"), BASE, OPENS, BEIJING)
    assert "cancelled" in error.message


def test_renewal_at_the_expiry_instant_is_refused() -> None:
    error = refused("subscription_expired", check_renewal, renewable(), BASE, ENDS, BEIJING)
    assert when(ENDS, BEIJING) in error.message and "direct renewal" in error.message
    refused("subscription_expired", check_renewal, renewable(), BASE, ENDS + timedelta(days=3), BEIJING)


def test_renewal_of_a_plan_removed_from_sale_is_refused() -> None:
    error = refused("plan_not_on_sale", check_renewal, renewable(), replace(BASE, on_sale=False), OPENS, BEIJING)
    assert "removed from sale" in error.message


def test_renewal_disabled_is_refused() -> None:
    error = refused("renewal_disabled", check_renewal, renewable(), replace(BASE, renewal_enabled=False), OPENS,
                    BEIJING)
    assert "not enabled" in error.message


def test_renewal_refusals_are_reported_in_order() -> None:
    worst = replace(BASE, on_sale=False, renewal_enabled=False)
    early = STARTS  # outside the window too
    refused("subscription_cancelled", check_renewal, renewable(status="cancelled"), worst, ENDS, BEIJING)
    refused("subscription_expired", check_renewal, renewable(), worst, ENDS, BEIJING)
    refused("plan_not_on_sale", check_renewal, renewable(), worst, early, BEIJING)
    refused("renewal_disabled", check_renewal, renewable(), replace(BASE, renewal_enabled=False), early,
            BEIJING)
    refused("renewal_window_not_open", check_renewal, renewable(), BASE, early, BEIJING)


def test_renewal_refusal_messages_are_distinct() -> None:
    messages = {
        refused("subscription_cancelled", check_renewal, renewable(status="cancelled"), BASE, OPENS,
                BEIJING).message,
        refused("subscription_expired", check_renewal, renewable(), BASE, ENDS, BEIJING).message,
        refused("plan_not_on_sale", check_renewal, renewable(), replace(BASE, on_sale=False), OPENS,
                BEIJING).message,
        refused("renewal_disabled", check_renewal, renewable(), replace(BASE, renewal_enabled=False), OPENS,
                BEIJING).message,
        refused("renewal_window_not_open", check_renewal, renewable(), BASE, OPENS - US, BEIJING).message,
    }
    assert len(messages) == 5


def test_three_stacked_renewals_keep_the_month_end_anchor() -> None:
    term = first_term(BASE, STARTS, None, BEIJING)
    assert term == Term(STARTS, ENDS, 31)  # Jan 31 → Feb 28
    ends = [term.ends_at]
    for _ in range(3):
        ends.append(extend(ends[-1], BASE, term.anchor_day, BEIJING))
    assert ends == [
        utc("2027-02-28T04:00:00"),
        utc("2027-03-31T04:00:00"),
        utc("2027-04-30T04:00:00"),
        utc("2027-05-31T04:00:00"),
    ]


def test_stacked_renewals_in_a_leap_year() -> None:
    term = first_term(BASE, utc("2028-01-31T04:00:00"), None, BEIJING)
    assert term.ends_at == utc("2028-02-29T04:00:00")
    assert extend(term.ends_at, BASE, term.anchor_day, BEIJING) == utc("2028-03-31T04:00:00")


def test_stacked_renewals_each_inside_the_window() -> None:
    """Renew at the first instant of each window: every renewal stacks on the current end."""
    state = renewable()
    for expected in ("2027-03-31T04:00:00", "2027-04-30T04:00:00", "2027-05-31T04:00:00"):
        opens = renewal_opens(state, BASE, BEIJING)
        refused("renewal_window_not_open", check_renewal, state, BASE, opens - US, BEIJING)
        check_renewal(state, BASE, opens, BEIJING)
        state = replace(state, ends_at=extend(state.ends_at, BASE, state.anchor_day, BEIJING))
        assert state.ends_at == utc(expected)


def test_extend_with_a_day_validity_adds_local_days() -> None:
    weekly = replace(BASE, validity=Duration(days=7))
    assert extend(ENDS, weekly, 31, BEIJING) == utc("2027-03-07T04:00:00")


# =============================================================== direct renewal


def test_direct_renewal_of_a_valid_subscription_extends_from_the_end_keeping_the_anchor() -> None:
    term = direct_renewal_term(renewable(), BASE, utc("2027-02-10T00:00:00"), BEIJING)
    assert term == Term(STARTS, utc("2027-03-31T04:00:00"), 31)
    # also one microsecond before the end
    assert direct_renewal_term(renewable(), BASE, ENDS - US, BEIJING) == term


def test_direct_renewal_of_an_exhausted_subscription_extends_from_the_end() -> None:
    exhausted = renewable(credit_used=1_000 * MICRO)
    assert lifecycle.exhausted(exhausted)
    term = direct_renewal_term(exhausted, BASE, utc("2027-02-10T00:00:00"), BEIJING)
    assert term.ends_at == utc("2027-03-31T04:00:00")


def test_direct_renewal_of_an_expired_subscription_starts_from_now_with_a_new_anchor() -> None:
    now = utc("2027-03-05T02:00:00")  # Mar 5 10:00 in Beijing
    term = direct_renewal_term(renewable(), BASE, now, BEIJING)
    assert term == Term(STARTS, utc("2027-04-05T02:00:00"), 5)


def test_direct_renewal_at_the_expiry_instant_counts_as_expired() -> None:
    term = direct_renewal_term(renewable(), BASE, ENDS, BEIJING)
    assert term.anchor_day == 28  # re-anchored on the Beijing day of now
    assert term.ends_at == utc("2027-03-28T04:00:00")


def test_direct_renewal_anchor_is_the_beijing_day_of_now() -> None:
    now = utc("2027-03-04T16:30:00")  # Mar 5 00:30 in Beijing
    term = direct_renewal_term(renewable(), BASE, now, BEIJING)
    assert term.anchor_day == 5
    assert term.ends_at == utc("2027-04-04T16:30:00")


def test_direct_renewal_of_a_cancelled_subscription_is_refused() -> None:
    refused("subscription_cancelled", direct_renewal_term, renewable(status="cancelled"), BASE, OPENS, BEIJING)
    refused("subscription_cancelled", direct_renewal_term, renewable(status="cancelled"), BASE,
            ENDS + timedelta(days=5), BEIJING)


# =============================================================== availability


def test_availability_edges() -> None:
    state = renewable()
    assert lifecycle.availability(state, STARTS - US) == "subscription_not_started"
    assert lifecycle.availability(state, STARTS) is None
    assert lifecycle.availability(state, ENDS - US) is None
    assert lifecycle.availability(state, ENDS) == "subscription_expired"
    assert lifecycle.availability(renewable(status="cancelled"), OPENS) == "subscription_cancelled"


def test_exhausted_edges() -> None:
    assert not lifecycle.exhausted(renewable(credit_used=1_000 * MICRO - 1))
    assert lifecycle.exhausted(renewable(credit_used=1_000 * MICRO))
    assert not lifecycle.exhausted(renewable(credit_granted=None, credit_used=10**12))


# =============================================================== upgrade: checks

T0 = utc("2026-11-01T04:00:00")
T30 = T0 + timedelta(days=30)


def upgradable(**changes: Any) -> SubscriptionState:
    return sub(T0, T30, 1, **changes)


def test_upgrade_to_a_higher_tier_of_the_same_family_is_allowed() -> None:
    check_upgrade(upgradable(), BASE, PRO, T0)
    check_upgrade(upgradable(), BASE, PRO, T30 - US)


def test_upgrade_to_another_family_is_refused() -> None:
    other = replace(PRO, slug="claude-max", family="claude", tier=5)
    error = refused("upgrade_other_family", check_upgrade, upgradable(), BASE, other, T0)
    assert "codex" in error.message and "claude" in error.message


@pytest.mark.parametrize("tier", [1, 0])
def test_upgrade_to_the_same_or_a_lower_tier_is_refused_pointing_to_renew(tier: int) -> None:
    lower = replace(PRO, slug="codex-lite", tier=tier)
    error = refused("downgrade_refused", check_upgrade, upgradable(), BASE, lower, T0)
    assert "renew" in error.message


def test_downgrade_from_pro_is_refused() -> None:
    error = refused("downgrade_refused", check_upgrade, upgradable(), PRO, BASE, T0)
    assert "renew" in error.message and "buy" in error.message


def test_upgrade_of_an_expired_subscription_is_refused() -> None:
    refused("subscription_expired", check_upgrade, upgradable(), BASE, PRO, T30)


def test_upgrade_of_a_cancelled_subscription_is_refused() -> None:
    refused("subscription_cancelled", check_upgrade, upgradable(status="cancelled"), BASE, PRO, T0)


def test_upgrade_to_a_plan_off_sale_is_refused() -> None:
    refused("plan_not_on_sale", check_upgrade, upgradable(), BASE, replace(PRO, on_sale=False), T0)
    refused("purchase_window_closed", check_upgrade, upgradable(), BASE, replace(PRO, purchase_end=T0), T0)


def test_upgrade_refusals_are_reported_in_order() -> None:
    worst = replace(PRO, family="claude", tier=0, on_sale=False)
    refused("subscription_cancelled", check_upgrade, upgradable(status="cancelled"), BASE, worst, T30)
    refused("subscription_expired", check_upgrade, upgradable(), BASE, worst, T30)
    refused("upgrade_other_family", check_upgrade, upgradable(), BASE, worst, T0)
    refused("downgrade_refused", check_upgrade, upgradable(), BASE, replace(worst, family="codex"), T0)
    refused("plan_not_on_sale", check_upgrade, upgradable(), BASE, replace(PRO, on_sale=False), T0)


# =============================================================== upgrade: share and quote

DIFF = 25_000 - 10_000  # ¥150.00 in minor units
CREDIT_DIFF = 2_000 * MICRO


def test_share_is_one_at_the_term_start() -> None:
    assert remaining_share(upgradable(), THIRTY_DAYS, T0, BEIJING) == 1


def test_share_is_exactly_one_half_in_the_middle() -> None:
    share = remaining_share(upgradable(), THIRTY_DAYS, T0 + timedelta(days=15), BEIJING)
    assert share == Fraction(1, 2) and isinstance(share, Fraction)


def test_share_at_the_last_second_and_microsecond() -> None:
    assert remaining_share(upgradable(), THIRTY_DAYS, T30 - timedelta(seconds=1), BEIJING) == Fraction(1, 30 * 86_400)
    assert remaining_share(upgradable(), THIRTY_DAYS, T30 - US, BEIJING) == Fraction(1, 30 * 86_400 * 10**6)


def test_share_of_a_monthly_term_is_measured_on_its_own_length() -> None:
    # Jan 31 → Feb 28 2027: 28 days; 7 days used leaves 3/4.
    state = sub(STARTS, ENDS, 31)
    assert remaining_share(state, BASE, STARTS + timedelta(days=7), BEIJING) == Fraction(3, 4)


def test_share_with_two_stacked_terms_is_one_plus_the_fraction() -> None:
    state = sub(T0, T0 + timedelta(days=60), 1)
    assert remaining_share(state, THIRTY_DAYS, T0 + timedelta(days=15), BEIJING) == Fraction(3, 2)
    assert remaining_share(state, THIRTY_DAYS, T0, BEIJING) == 2
    assert remaining_share(state, THIRTY_DAYS, T30, BEIJING) == 1  # second term untouched
    assert remaining_share(state, THIRTY_DAYS, T30 + timedelta(days=10), BEIJING) == Fraction(2, 3)


def test_share_with_stacked_monthly_terms_keeps_the_anchor() -> None:
    # Jan 31 → Feb 28 → Mar 31 (anchor 31): 7 days into Feb 28 … Mar 31 (31 days).
    state = sub(STARTS, utc("2027-03-31T04:00:00"), 31)
    assert remaining_share(state, BASE, STARTS + timedelta(days=7), BEIJING) == 1 + Fraction(3, 4)
    assert remaining_share(state, BASE, ENDS + timedelta(days=7), BEIJING) == Fraction(24, 31)


def test_share_of_a_term_bought_with_a_future_start_is_one_before_it_starts() -> None:
    state = sub(T0, T30, 1)
    assert remaining_share(state, THIRTY_DAYS, T0 - timedelta(minutes=30), BEIJING) == 1


def test_prorated_upgrade_at_the_term_start_pays_the_full_difference() -> None:
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, PRO_THIRTY_DAYS, T0, BEIJING, prorate=True)
    assert (quote.payable, quote.credit, quote.share) == (DIFF, CREDIT_DIFF, 1)


def test_prorated_upgrade_in_the_middle_pays_half() -> None:
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, PRO_THIRTY_DAYS, T0 + timedelta(days=15), BEIJING,
                          prorate=True)
    assert (quote.payable, quote.credit, quote.share) == (DIFF // 2, CREDIT_DIFF // 2, Fraction(1, 2))


def test_prorated_upgrade_at_the_last_second_rounds_up_to_one_minor_unit() -> None:
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, PRO_THIRTY_DAYS, T30 - timedelta(seconds=1), BEIJING,
                          prorate=True)
    assert quote.share == Fraction(1, 2_592_000)
    assert quote.payable == 1  # 15000 / 2 592 000 = 0.0058 → 1
    assert quote.credit == 772  # 2e9 / 2 592 000 = 771.6 → 772 µcr


def test_prorated_upgrade_with_no_price_difference_costs_nothing() -> None:
    same_price = replace(PRO_THIRTY_DAYS, price=THIRTY_DAYS.price)
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, same_price, T30 - timedelta(seconds=1), BEIJING,
                          prorate=True)
    assert quote.payable == 0


def test_upgrade_to_a_cheaper_higher_tier_never_pays_back() -> None:
    cheaper = replace(PRO_THIRTY_DAYS, price=5_000, total_credit=500 * MICRO)
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, cheaper, T0, BEIJING, prorate=False)
    assert (quote.payable, quote.credit) == (0, 0)


def test_prorated_upgrade_rounds_up_once() -> None:
    odd = replace(PRO_THIRTY_DAYS, price=THIRTY_DAYS.price + 10_001, total_credit=THIRTY_DAYS.total_credit + 1)
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, odd, T0 + timedelta(days=20), BEIJING, prorate=True)
    assert quote.share == Fraction(1, 3)
    assert quote.payable == 3_334  # 10001 / 3 = 3333.67 → 3334
    assert quote.credit == 1  # 1 / 3 µcr → 1


@pytest.mark.parametrize("elapsed", [timedelta(0), timedelta(days=15), timedelta(days=30) - US])
def test_upgrade_without_prorate_pays_the_whole_difference(elapsed: timedelta) -> None:
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, PRO_THIRTY_DAYS, T0 + elapsed, BEIJING, prorate=False)
    assert (quote.payable, quote.credit, quote.share) == (DIFF, CREDIT_DIFF, 1)


def test_upgrade_with_two_stacked_terms() -> None:
    state = sub(T0, T0 + timedelta(days=60), 1)
    prorated = quote_upgrade(state, THIRTY_DAYS, PRO_THIRTY_DAYS, T0 + timedelta(days=15), BEIJING, prorate=True)
    assert (prorated.payable, prorated.credit, prorated.share) == (
        DIFF * 3 // 2, CREDIT_DIFF * 3 // 2, Fraction(3, 2))
    # Without --prorate every remaining term (the current one in full) pays the difference.
    whole = quote_upgrade(state, THIRTY_DAYS, PRO_THIRTY_DAYS, T0 + timedelta(days=15), BEIJING, prorate=False)
    assert (whole.payable, whole.credit, whole.share) == (DIFF * 2, CREDIT_DIFF * 2, 2)


def test_upgrade_to_a_plan_without_total_credit_grants_no_credit() -> None:
    periodic = replace(PRO_THIRTY_DAYS, total_credit=None, period=BASE.period, period_credit=100 * MICRO)
    quote = quote_upgrade(upgradable(), THIRTY_DAYS, periodic, T0 + timedelta(days=15), BEIJING, prorate=True)
    assert quote.credit is None
    assert quote.payable == DIFF // 2


def test_upgrade_from_a_plan_without_total_credit_grants_the_new_credit() -> None:
    periodic = replace(THIRTY_DAYS, total_credit=None)
    quote = quote_upgrade(upgradable(credit_granted=None), periodic, PRO_THIRTY_DAYS, T0 + timedelta(days=15),
                          BEIJING, prorate=True)
    assert quote.credit == 1_500 * MICRO


# =============================================================== refunds

PAID = utc("2026-11-21T04:00:00")
GRANTED = 100 * MICRO


def facts(**changes: Any) -> RefundFacts:
    values: dict[str, Any] = {
        "kind": "buy",
        "payable": 10_000,
        "refunded": 0,
        "credit_granted": GRANTED,
        "credit_left": GRANTED,
        "paid_at": PAID,
        "policy": "unused:7d",
    }
    values.update(changes)
    return RefundFacts(**values)


def test_refund_policy_none_is_refused() -> None:
    error = refused("refund_not_allowed", quote_refund, facts(policy="none"), PAID, BEIJING)
    assert error.code == "refund_policy_none"  # the CLI adds how an operator refunds anyway (cli/hints.py)


def test_refund_policy_from_plan_terms_round_trips() -> None:
    plan = replace(BASE, refund_policy=RefundPolicy("unused", Duration(days=7)))
    quote = quote_refund(facts(policy=str(plan.refund_policy)), PAID, BEIJING)
    assert quote.policy == "unused:7d"


def test_unused_refund_within_the_window_is_full_and_reverses_the_credit() -> None:
    for now in (PAID, PAID + timedelta(days=7) - US):
        quote = quote_refund(facts(), now, BEIJING)
        assert (quote.amount, quote.credit_reversed, quote.policy, quote.cancels) == (
            10_000, GRANTED, "unused:7d", True)


def test_unused_refund_window_closes_exactly_after_n_days() -> None:
    error = refused("refund_window_closed", quote_refund, facts(), PAID + timedelta(days=7), BEIJING)
    assert when(PAID + timedelta(days=7), BEIJING) in error.message
    refused("refund_window_closed", quote_refund, facts(), PAID + timedelta(days=30), BEIJING)


def test_unused_refund_window_follows_the_policy() -> None:
    policy = "unused:14d"
    quote_refund(facts(policy=policy), PAID + timedelta(days=14) - US, BEIJING)
    refused("refund_window_closed", quote_refund, facts(policy=policy), PAID + timedelta(days=14), BEIJING)


def test_unused_refund_after_usage_is_refused() -> None:
    error = refused("refund_credit_used", quote_refund, facts(credit_left=GRANTED - 1), PAID, BEIJING)
    assert error.code == "refund_by_amount"  # the CLI adds how an operator refunds anyway (cli/hints.py)
    quote_refund(facts(credit_left=GRANTED), PAID, BEIJING)


def test_unused_refund_of_a_renewal_does_not_cancel() -> None:
    assert quote_refund(facts(kind="renew"), PAID, BEIJING).cancels is False
    assert quote_refund(facts(kind="extra", policy="unused"), PAID, BEIJING).cancels is False


def test_prorated_refund_is_the_unused_share_rounded_down() -> None:
    quote = quote_refund(facts(policy="prorated", credit_left=GRANTED // 3), PAID + timedelta(days=40), BEIJING)
    # floor(10000 × 33 333 333 / 100 000 000) = floor(3333.3333) = 3333
    assert (quote.amount, quote.credit_reversed, quote.policy, quote.cancels) == (3_333, GRANTED // 3, "prorated", True)


def test_prorated_refund_rounds_down_to_the_minor_unit() -> None:
    quote = quote_refund(facts(policy="prorated", payable=10_000, credit_granted=3, credit_left=2), PAID, BEIJING)
    assert quote.amount == 6_666  # 20000 / 3 = 6666.67


def test_prorated_refund_of_an_unused_order_is_full() -> None:
    quote = quote_refund(facts(policy="prorated"), PAID, BEIJING)
    assert (quote.amount, quote.credit_reversed, quote.cancels) == (10_000, GRANTED, True)


def test_prorated_refund_of_a_renewal_does_not_cancel() -> None:
    quote = quote_refund(facts(kind="renew", policy="prorated", credit_left=GRANTED // 2), PAID, BEIJING)
    assert (quote.amount, quote.cancels) == (5_000, False)


def test_prorated_refund_with_nothing_unused_is_refused() -> None:
    refused("nothing_to_refund", quote_refund, facts(policy="prorated", credit_left=0), PAID, BEIJING)


def test_prorated_refund_of_an_order_without_credit_is_refused() -> None:
    refused("refund_not_allowed", quote_refund, facts(policy="prorated", credit_granted=0, credit_left=0), PAID,
            BEIJING)


def test_prorated_refund_credit_left_is_clamped_to_the_grant() -> None:
    quote = quote_refund(facts(policy="prorated", credit_left=GRANTED * 2), PAID, BEIJING)
    assert (quote.amount, quote.credit_reversed) == (10_000, GRANTED)


def test_prorated_refund_after_a_partial_override_pays_the_rest_of_the_unused_share() -> None:
    """¥100 for 100 credit; 20 credit used; the operator refunded ¥30 (reversing 30 credit).

    50 credit is still unused in the pool: the prorated refund pays ¥50 more, so
    that in total the buyer gets back the unused 80 % (¥80). Subtracting the
    earlier ¥30 again (as when `credit_left` already reflects its reversal) would
    pay only ¥20.
    """
    used = 20 * MICRO
    first = quote_refund(facts(policy="prorated", credit_left=GRANTED - used), PAID, BEIJING, override=3_000)
    assert (first.amount, first.credit_reversed, first.cancels) == (3_000, 30 * MICRO, False)
    after = facts(policy="prorated", refunded=3_000, credit_left=GRANTED - used - first.credit_reversed)
    quote = quote_refund(after, PAID, BEIJING)
    assert quote.amount == 5_000
    assert quote.credit_reversed == 50 * MICRO
    assert first.amount + quote.amount == 8_000  # the unused share of what was paid, in total


def test_prorated_refund_never_exceeds_what_is_left_to_refund() -> None:
    # credit_left above the proportional share (e.g. reversals rounded down): capped at payable − refunded.
    quote = quote_refund(facts(policy="prorated", refunded=9_000, credit_left=GRANTED), PAID, BEIJING)
    assert quote.amount <= 1_000


def test_fully_refunded_order_has_nothing_to_refund() -> None:
    error = refused("nothing_to_refund", quote_refund, facts(refunded=10_000), PAID, BEIJING)
    assert "already been fully refunded" in error.message
    refused("nothing_to_refund", quote_refund, facts(refunded=10_000), PAID, BEIJING, override=1)
    refused("nothing_to_refund", quote_refund, facts(refunded=10_000, policy="prorated"), PAID, BEIJING)


def test_free_order_has_nothing_to_refund() -> None:
    error = refused("nothing_to_refund", quote_refund, facts(payable=0), PAID, BEIJING)
    assert "free" in error.message


def test_override_above_the_remaining_amount_is_refused() -> None:
    refused("refund_exceeds_paid", quote_refund, facts(), PAID, BEIJING, override=10_001)
    refused("refund_exceeds_paid", quote_refund, facts(refunded=4_000), PAID, BEIJING, override=6_001)
    quote = quote_refund(facts(refunded=4_000), PAID, BEIJING, override=6_000)
    assert (quote.amount, quote.policy, quote.cancels) == (6_000, "override", True)


@pytest.mark.parametrize("amount", [0, -1, -10_000])
def test_override_of_zero_or_negative_is_invalid_input(amount: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        quote_refund(facts(), PAID, BEIJING, override=amount)
    assert caught.value.exit_code == ExitCode.USAGE


def test_override_ignores_the_policy_and_its_window() -> None:
    quote = quote_refund(facts(policy="none"), PAID + timedelta(days=365), BEIJING, override=2_500)
    assert (quote.amount, quote.credit_reversed, quote.policy, quote.cancels) == (2_500, 25 * MICRO, "override",
                                                                                   False)


def test_partial_override_reverses_proportional_credit_rounded_down() -> None:
    quote = quote_refund(facts(credit_granted=1_000_001, credit_left=1_000_001), PAID, BEIJING, override=3_333)
    assert quote.credit_reversed == 333_300  # floor(1 000 001 × 3333 / 10000) = floor(333 300.33)
    assert quote.cancels is False


def test_override_never_reverses_more_than_is_left() -> None:
    quote = quote_refund(facts(credit_left=5 * MICRO), PAID, BEIJING, override=5_000)
    assert quote.credit_reversed == 5 * MICRO


def test_override_cancels_only_a_buy_when_it_refunds_all_that_is_left() -> None:
    assert quote_refund(facts(), PAID, BEIJING, override=10_000).cancels is True
    assert quote_refund(facts(), PAID, BEIJING, override=9_999).cancels is False
    assert quote_refund(facts(refunded=9_999), PAID, BEIJING, override=1).cancels is True
    assert quote_refund(facts(kind="renew"), PAID, BEIJING, override=10_000).cancels is False
    assert quote_refund(facts(kind="extra"), PAID, BEIJING, override=10_000).cancels is False


def test_refund_quote_of_an_extra_pack_follows_unused() -> None:
    quote = quote_refund(facts(kind="extra", policy="unused"), PAID, BEIJING)
    assert (quote.amount, quote.credit_reversed, quote.cancels) == (10_000, GRANTED, False)
