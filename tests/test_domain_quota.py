"""Admission and pricing rules (domain/quota.py): pure functions, no database, no clock.

`decide` is fed the same inputs the service builds: the key's own refusal from
`domain.keys.key_refusal`, the subscription's from `domain.lifecycle.availability`,
the billed model after aliasing, and the limits and counters read in one
transaction. Everything here is exact integer arithmetic in micro-credits.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest

from planctl.domain import quota
from planctl.domain.catalog import ModelPrices
from planctl.domain.keys import KeyState, key_refusal
from planctl.domain.lifecycle import SubscriptionState, availability
from planctl.domain.quota import Counters, Decision, Limits, Request, decide, plan_boundary, request_cost

from helpers import NOW

GPT54 = ModelPrices("gpt-5.4", 8_750_000, 875_000, 70_000_000)  # sample catalog, µcr per million tokens
MINI = ModelPrices("gpt-5.4-mini", 1_750_000, 175_000, 14_000_000)
ONE, PRIORITY, ECONOMY = 1_000_000, 1_500_000, 800_000  # group ratios in ppm

SPEC_REASONS = (  # SPEC §5, in the order it lists them
    "key_unknown", "key_disabled", "key_revoked", "key_expired", "subscription_expired",
    "subscription_cancelled", "credit_exhausted", "key_credit_cap_reached", "subuser_quota_reached",
    "period_limit_reached", "rpd_reached", "tpd_reached", "model_not_in_plan", "group_not_in_plan",
    "api_type_not_in_plan", "payg_balance_empty",
)


# ---------------------------------------------------------------- cost


def exact(prices: ModelPrices, inp: int, cached: int, out: int, ratio: int) -> Fraction:
    """The SPEC formula with exact fractions (input counts the cached tokens)."""
    return (Fraction((inp - cached) * prices.input_price + cached * prices.cached_price + out * prices.output_price,
                     1_000_000) * Fraction(ratio, 1_000_000))


def ceil(f: Fraction) -> int:
    return -(-f.numerator // f.denominator)


def cost(prices: ModelPrices, inp: int, cached: int, out: int, ratio: int = ONE) -> int:
    return request_cost(prices, input_tokens=inp, cached_tokens=cached, output_tokens=out, ratio_ppm=ratio)


def test_cost_prices_cached_input_separately_from_uncached_input() -> None:
    # 800 uncached × 8.75 + 200 cached × 0.875 + 100 output × 70 = 14,175 µcr (no rounding needed)
    assert cost(GPT54, 1000, 200, 100) == 14_175
    assert cost(GPT54, 1000, 0, 100) == 15_750  # the same tokens, none cached, cost more
    assert cost(GPT54, 1000, 1000, 0) == 875  # all cached: a tenth of the input price
    assert cost(GPT54, 0, 0, 0) == 0


def test_cost_applies_the_group_ratio() -> None:
    assert cost(GPT54, 1000, 200, 100, PRIORITY) == 21_263  # 21,262.5 rounded up
    assert cost(GPT54, 1000, 200, 100, ECONOMY) == 11_340  # exact
    assert cost(GPT54, 1_000_000, 0, 0, ONE) == 8_750_000  # a million input tokens cost the list price


def test_cost_is_rounded_up_once_not_per_component_or_per_step() -> None:
    # 1 uncached (1.75) + 1 cached (0.175) + 1 output (14) = 15.925 µcr -> 16; per component it would be 17
    assert cost(MINI, 2, 1, 1) == 16
    assert ceil(Fraction(1_750_000, 10**6)) + ceil(Fraction(175_000, 10**6)) + 14 == 17
    # 50 cached mini tokens = 8.75 µcr, × 0.8 = exactly 7; rounding before the ratio would give ceil(9 × 0.8) = 8
    assert cost(MINI, 50, 50, 0, ECONOMY) == 7
    # the smallest possible charge still costs one µcr
    assert cost(MINI, 1, 1, 0) == 1


@pytest.mark.parametrize("prices", [GPT54, MINI])
@pytest.mark.parametrize("ratio", [ONE, PRIORITY, ECONOMY, 550_000, 1_234_567])
@pytest.mark.parametrize("tokens", [(1, 0, 0), (1, 1, 0), (0, 0, 1), (7, 3, 11), (123_457, 99_999, 31_337),
                                    (10**9, 10**8, 10**7)])
def test_cost_matches_the_exact_formula(prices: ModelPrices, ratio: int, tokens: tuple[int, int, int]) -> None:
    inp, cached, out = tokens
    assert cost(prices, inp, cached, out, ratio) == ceil(exact(prices, inp, cached, out, ratio))


# ---------------------------------------------------------------- the admission order

ALL_MODELS = ("gpt-5.4", "gpt-5.4-mini")


def healthy() -> tuple[Request, Limits, Counters]:
    """A subscription key with every limit set and none reached."""
    req = Request(key_kind="team", key_refusal=None, subscription_refusal=None, billed_model="gpt-5.4",
                  group="default", api="responses")
    limits = Limits(models=ALL_MODELS, groups=("default",), api_types=("responses",), period_credit=100,
                    rpd=10, tpd=1000, key_cap=100, key_daily_limit=100, key_rpd=10, subuser_quota=100)
    counters = Counters(plan_granted=1000, plan_used=0)
    return req, limits, counters


def key_state(*broken: str) -> str | None:
    status = "revoked" if "key_revoked" in broken else "disabled" if "key_disabled" in broken else "active"
    expires = NOW - timedelta(seconds=1) if "key_expired" in broken else None
    return key_refusal(KeyState(status, expires), NOW)


def sub_state(*broken: str) -> str | None:
    ends = NOW if "subscription_expired" in broken else NOW + timedelta(days=30)
    status = "cancelled" if "subscription_cancelled" in broken else "active"
    return availability(SubscriptionState(status, NOW - timedelta(days=3), ends, 18, 1000, 0), NOW)


BREAK: dict[str, Any] = {  # reason -> how to switch that failure on (request, limits, counters)
    "model_not_in_plan": lambda r, l, c: (replace(r, billed_model="gpt-5.5"), l, c),
    "group_not_in_plan": lambda r, l, c: (replace(r, group="priority"), l, c),
    "api_type_not_in_plan": lambda r, l, c: (replace(r, api="claude"), l, c),
    "credit_exhausted": lambda r, l, c: (r, l, replace(c, plan_used=1000)),
    "key_credit_cap_reached": lambda r, l, c: (r, l, replace(c, key_used=100)),
    "subuser_quota_reached": lambda r, l, c: (r, l, replace(c, subuser_used=100)),
    "period_limit_reached": lambda r, l, c: (r, l, replace(c, period_used=100)),
    "rpd_reached": lambda r, l, c: (r, l, replace(c, day_requests=10)),
    "tpd_reached": lambda r, l, c: (r, l, replace(c, day_tokens=1000)),
    "key_daily_limit_reached": lambda r, l, c: (r, l, replace(c, key_day_credit=100)),
    "key_rpd_reached": lambda r, l, c: (r, l, replace(c, key_day_requests=10)),
}
KEY_REASONS = ("key_revoked", "key_disabled", "key_expired")
SUB_REASONS = ("subscription_cancelled", "subscription_expired")
ORDER = KEY_REASONS + SUB_REASONS + tuple(BREAK)  # the documented order (issue 5 "Rules")


def with_failures(broken: tuple[str, ...], extra: int = 0) -> Decision:
    req, limits, counters = healthy()
    req = replace(req, key_refusal=key_state(*broken), subscription_refusal=sub_state(*broken))
    for reason in broken:
        if reason in BREAK:
            req, limits, counters = BREAK[reason](req, limits, counters)
    return decide(req, limits, replace(counters, extra_available=extra))


def test_every_failure_on_then_removed_one_at_a_time_gives_each_reason_in_order() -> None:
    seen = []
    for i in range(len(ORDER)):
        decision = with_failures(ORDER[i:])
        assert not decision.allowed and decision.pool is None
        seen.append(decision.reason)
    assert seen == list(ORDER)
    assert with_failures(()) == Decision(True, pool="plan")


@pytest.mark.parametrize("reason", ORDER)
def test_each_failure_alone_gives_its_own_reason(reason: str) -> None:
    assert with_failures((reason,)) == Decision(False, reason)


def test_with_extra_usage_the_ladder_skips_the_plan_boundaries_only() -> None:
    """Extra usage lifts the periodic limit, RPD and TPD, and nothing else."""
    seen = []
    for i in range(len(ORDER)):
        decision = with_failures(ORDER[i:], extra=10**9)
        seen.append(decision.reason if not decision.allowed else ("allowed", decision.pool, decision.lifted))
    lifted = [r for r in ORDER if r not in quota.BOUNDARIES]
    expected = lifted[:lifted.index("key_daily_limit_reached")]
    # while a boundary is still on and only key limits follow, extra usage admits past it
    expected += ["key_daily_limit_reached"] * 4 + ["key_rpd_reached"]
    assert seen == expected
    assert with_failures(("rpd_reached", "tpd_reached"), extra=1) == Decision(True, pool="extra", lifted="rpd_reached")
    assert with_failures(("tpd_reached",), extra=1) == Decision(True, pool="extra", lifted="tpd_reached")


def test_payg_keys_check_the_balance_instead_of_the_plan() -> None:
    req = Request(key_kind="payg", key_refusal=None, subscription_refusal=None, billed_model="gpt-5.5",
                  group="priority", api="claude")
    # plan terms, plan counters and subscriptions do not apply to a PAYG key
    limits = Limits(models=(), groups=(), api_types=(), period_credit=0, rpd=0, tpd=0, key_daily_limit=100,
                    key_rpd=10)
    counters = Counters(plan_granted=0, plan_used=10, period_used=10, day_requests=5, day_tokens=5,
                        payg_available=50, key_day_credit=100, key_day_requests=10)
    empty = replace(counters, payg_available=0)
    steps = [
        (replace(req, key_refusal="key_revoked", billed_model=None), empty, "key_revoked"),
        (replace(req, key_refusal="key_expired", billed_model=None), empty, "key_expired"),
        (replace(req, billed_model=None), empty, "model_not_in_plan"),
        (req, empty, "payg_balance_empty"),
        (req, counters, "key_daily_limit_reached"),
        (req, replace(counters, key_day_credit=0), "key_rpd_reached"),
    ]
    for r, c, reason in steps:
        assert decide(r, limits, c) == Decision(False, reason), reason
    assert decide(req, limits, replace(counters, key_day_credit=0, key_day_requests=0)) == Decision(True, pool="payg")
    # a subscription refusal never reaches a PAYG key (it has no subscription)
    assert decide(replace(req, subscription_refusal="subscription_expired"), limits,
                  Counters(payg_available=1)).allowed


def test_payg_balance_is_net_of_holds_and_must_cover_the_reservation() -> None:
    req = Request(key_kind="payg", key_refusal=None, subscription_refusal=None, billed_model="gpt-5.4",
                  group="default", api="responses")
    assert decide(req, Limits(), Counters(payg_available=1)).allowed  # without --reserve: anything left
    assert decide(req, Limits(), Counters(payg_available=0)).reason == "payg_balance_empty"
    assert decide(replace(req, need=50), Limits(), Counters(payg_available=50)).allowed
    assert decide(replace(req, need=51), Limits(), Counters(payg_available=50)).reason == "payg_balance_empty"


def test_key_refusal_order_status_before_expiry() -> None:
    expired = NOW - timedelta(microseconds=1)
    assert key_refusal(KeyState("revoked", expired), NOW) == "key_revoked"
    assert key_refusal(KeyState("disabled", expired), NOW) == "key_disabled"
    assert key_refusal(KeyState("active", expired), NOW) == "key_expired"
    assert key_refusal(KeyState("active", NOW), NOW) == "key_expired"  # at the instant
    assert key_refusal(KeyState("active", NOW + timedelta(microseconds=1)), NOW) is None


def test_subscription_refusal_cancelled_before_expired_and_the_expiry_instant() -> None:
    def state(status: str, ends: datetime) -> SubscriptionState:
        return SubscriptionState(status, NOW - timedelta(days=1), ends, 20, None, 0)

    assert availability(state("cancelled", NOW), NOW) == "subscription_cancelled"
    assert availability(state("active", NOW), NOW) == "subscription_expired"
    assert availability(state("active", NOW + timedelta(microseconds=1)), NOW) is None


def test_an_unknown_model_is_model_not_in_plan() -> None:
    req, limits, counters = healthy()
    assert decide(replace(req, billed_model=None), limits, counters) == Decision(False, "model_not_in_plan")


# ---------------------------------------------------------------- thresholds, holds and `need`


def test_total_credit_admits_while_anything_is_left_or_the_reservation_fits() -> None:
    req, _, _ = healthy()
    limits = Limits(models=ALL_MODELS, groups=("default",))
    assert decide(req, limits, Counters(plan_granted=1000, plan_used=999)).allowed
    assert decide(req, limits, Counters(plan_granted=1000, plan_used=1000)).reason == "credit_exhausted"
    assert decide(req, limits, Counters(plan_granted=1000, plan_used=1200)).reason == "credit_exhausted"  # overshot
    held = Counters(plan_granted=1000, plan_used=400, plan_reserved=600)
    assert decide(req, limits, held).reason == "credit_exhausted"  # holds count
    assert decide(replace(req, need=600), limits, Counters(plan_granted=1000, plan_used=400)).allowed  # exactly
    assert decide(replace(req, need=601), limits,
                  Counters(plan_granted=1000, plan_used=400)).reason == "credit_exhausted"


def test_a_purely_periodic_plan_has_no_total_pool() -> None:
    req, limits, _ = healthy()
    counters = Counters(plan_granted=None, plan_used=10**12)
    assert counters.plan_remaining is None
    assert decide(req, limits, counters).allowed
    assert decide(req, limits, replace(counters, period_used=100)).reason == "period_limit_reached"


def test_plan_remaining_is_net_of_holds() -> None:
    assert Counters(plan_granted=1000, plan_used=300, plan_reserved=200).plan_remaining == 500
    assert Counters(plan_granted=1000, plan_used=1100).plan_remaining == -100


@pytest.mark.parametrize("field,cap_field,reason", [
    ("key_used", "key_reserved", "key_credit_cap_reached"),
    ("subuser_used", "subuser_reserved", "subuser_quota_reached"),
    ("period_used", "period_reserved", "period_limit_reached"),
])
def test_credit_limits_count_use_plus_holds_plus_the_need(field: str, cap_field: str, reason: str) -> None:
    req, limits, base = healthy()  # each limit is 100
    assert decide(req, limits, replace(base, **{field: 99})).allowed
    assert decide(req, limits, replace(base, **{field: 100})).reason == reason
    assert decide(req, limits, replace(base, **{field: 50, cap_field: 50})).reason == reason
    assert decide(replace(req, need=40), limits, replace(base, **{field: 30, cap_field: 30})).allowed  # 100 exactly
    assert decide(replace(req, need=41), limits, replace(base, **{field: 30, cap_field: 30})).reason == reason


def test_request_and_token_limits_block_once_reached() -> None:
    req, limits, base = healthy()  # rpd 10, tpd 1000, key rpd 10
    assert decide(req, limits, replace(base, day_requests=9)).allowed
    assert decide(req, limits, replace(base, day_requests=10)).reason == "rpd_reached"
    assert decide(req, limits, replace(base, day_tokens=999)).allowed
    assert decide(req, limits, replace(base, day_tokens=1000)).reason == "tpd_reached"
    assert decide(req, limits, replace(base, key_day_requests=9)).allowed
    assert decide(req, limits, replace(base, key_day_requests=10)).reason == "key_rpd_reached"
    assert decide(req, limits, replace(base, key_day_credit=99)).allowed
    assert decide(req, limits, replace(base, key_day_credit=100)).reason == "key_daily_limit_reached"


def test_limits_that_are_not_set_never_block() -> None:
    req, _, _ = healthy()
    limits = Limits(models=ALL_MODELS, groups=("default",))
    busy = Counters(plan_granted=None, period_used=10**12, day_requests=10**9, day_tokens=10**12, key_used=10**12,
                    key_day_credit=10**12, key_day_requests=10**9, subuser_used=10**12)
    assert decide(req, limits, busy) == Decision(True, pool="plan")


def test_a_disabled_periodic_limit_does_not_block_but_rpd_and_tpd_still_do() -> None:
    req, limits, base = healthy()
    off = replace(limits, period_limit_enabled=False)
    assert decide(req, off, replace(base, period_used=10**6)).allowed
    assert decide(req, off, replace(base, period_used=10**6, day_requests=10)).reason == "rpd_reached"
    assert decide(req, off, replace(base, period_used=10**6, plan_used=1000)).reason == "credit_exhausted"
    assert plan_boundary(off, replace(base, period_used=10**6)) is None
    assert plan_boundary(limits, replace(base, period_used=10**6)) == "period_limit_reached"


def test_plan_boundary_reports_the_first_boundary() -> None:
    _, limits, base = healthy()
    full = replace(base, period_used=100, day_requests=10, day_tokens=1000)
    assert plan_boundary(limits, full) == "period_limit_reached"
    assert plan_boundary(limits, replace(full, period_used=0)) == "rpd_reached"
    assert plan_boundary(limits, replace(full, period_used=0, day_requests=0)) == "tpd_reached"
    assert plan_boundary(limits, base) is None
    assert plan_boundary(limits, replace(base, period_used=60), need=40) is None
    assert plan_boundary(limits, replace(base, period_used=60), need=41) == "period_limit_reached"


# ---------------------------------------------------------------- extra usage


def test_extra_usage_admits_past_a_boundary_only_when_it_covers_the_need() -> None:
    req, limits, base = healthy()
    capped = replace(base, period_used=100)
    assert decide(req, limits, replace(capped, extra_available=0)) == Decision(False, "period_limit_reached")
    assert decide(req, limits, replace(capped, extra_available=1)) == Decision(
        True, pool="extra", lifted="period_limit_reached")
    assert decide(replace(req, need=50), limits, replace(capped, extra_available=50)).pool == "extra"
    assert decide(replace(req, need=51), limits, replace(capped, extra_available=50)).reason == "period_limit_reached"
    # below the boundary, plan credit is used even when extra usage is available
    assert decide(req, limits, replace(base, extra_available=500)) == Decision(True, pool="plan")


@pytest.mark.parametrize("failure", KEY_REASONS + SUB_REASONS + (
    "model_not_in_plan", "group_not_in_plan", "api_type_not_in_plan", "credit_exhausted", "key_credit_cap_reached",
    "subuser_quota_reached", "key_daily_limit_reached", "key_rpd_reached"))
def test_extra_usage_never_lifts_anything_but_a_plan_boundary(failure: str) -> None:
    decision = with_failures((failure, "period_limit_reached"), extra=10**9)
    assert decision == Decision(False, failure)


# ---------------------------------------------------------------- drawing from extra-usage packs


def test_split_extra_draws_packs_in_the_order_given() -> None:
    assert quota.split_extra(40, [(7, 30), (3, 50)]) == (((7, 30), (3, 10)), 0)
    assert quota.split_extra(30, [(7, 30), (3, 50)]) == (((7, 30),), 0)
    assert quota.split_extra(100, [(7, 30), (3, 50)]) == (((7, 30), (3, 50)), 20)  # 20 left for the plan
    assert quota.split_extra(10, [(7, 0), (3, 50)]) == (((3, 10),), 0)  # an empty pack is skipped
    assert quota.split_extra(0, [(7, 30)]) == ((), 0)
    assert quota.split_extra(10, []) == ((), 10)


def test_a_recorded_cost_is_charged_in_full_without_a_hold_and_never_beyond_the_balance_with_one() -> None:
    split = quota.split_charge
    # plan pool: in full without a hold (it may overshoot), capped at what is left with one
    assert split(50, "plan", capped=False, packs=[], plan_available=30, payg_available=0) == (50, (), 0)
    assert split(50, "plan", capped=True, packs=[], plan_available=30, payg_available=0) == (30, (), 0)
    assert split(50, "plan", capped=True, packs=[], plan_available=-5, payg_available=0) == (0, (), 0)
    assert split(50, "plan", capped=True, packs=[], plan_available=None, payg_available=0) == (50, (), 0)
    # extra pool: the packs in the order given, the plan pays what they cannot
    assert split(40, "extra", capped=False, packs=[(7, 30), (3, 50)], plan_available=0,
                 payg_available=0) == (0, ((7, 30), (3, 10)), 0)
    assert split(100, "extra", capped=False, packs=[(7, 30)], plan_available=0, payg_available=0) == (70, ((7, 30),), 0)
    assert split(100, "extra", capped=True, packs=[(7, 30)], plan_available=20, payg_available=0) == (20, ((7, 30),), 0)
    # payg pool: the balance net of holds, never below zero
    assert split(50, "payg", capped=False, packs=[], plan_available=None, payg_available=10) == (0, (), 50)
    assert split(50, "payg", capped=True, packs=[], plan_available=None, payg_available=10) == (0, (), 10)
    assert split(50, "payg", capped=True, packs=[], plan_available=None, payg_available=-3) == (0, (), 0)


@pytest.mark.parametrize(("plan", "extra", "payg", "label"), [
    (0, 0, 0, "none"), (5, 0, 0, "plan"), (0, 5, 0, "extra"), (0, 0, 5, "payg"), (5, 5, 0, "mixed"), (5, 0, 5, "mixed"),
])
def test_a_records_pool_label_names_the_one_pool_that_paid(plan: int, extra: int, payg: int, label: str) -> None:
    assert quota.paid_by(plan, extra, payg) == label


# ---------------------------------------------------------------- reason codes


def test_every_spec_reason_code_is_known_and_the_boundaries_are_the_plan_ones() -> None:
    assert set(SPEC_REASONS) <= set(quota.REASONS)
    assert len(set(quota.REASONS)) == len(quota.REASONS)
    # beyond SPEC §5: per-key limits (SPEC §4) and a subscription bought with a later start
    assert set(quota.REASONS) - set(SPEC_REASONS) == {
        "key_daily_limit_reached", "key_rpd_reached", "subscription_not_started"}
    assert quota.BOUNDARIES == ("period_limit_reached", "rpd_reached", "tpd_reached")
    assert quota.API_TYPES == ("responses", "chat", "claude")


def test_denials_carry_exactly_one_reason_and_no_pool() -> None:
    for i in range(len(ORDER)):
        d = with_failures(ORDER[i:])
        assert d.reason in quota.REASONS and d.pool is None and d.lifted is None


def test_a_plan_without_boundaries_is_never_blocked_by_one() -> None:
    """`has_boundary` lets recording skip the counters; it must never hide a boundary."""
    from planctl.domain.quota import has_boundary, plan_boundary

    full = Counters(period_used=10**12, day_requests=10**9, day_tokens=10**12)
    for limits in (Limits(), Limits(period_credit=5, period_limit_enabled=False)):
        assert not has_boundary(limits) and plan_boundary(limits, full) is None
    for limits in (Limits(period_credit=5), Limits(rpd=1), Limits(tpd=1)):
        assert has_boundary(limits) and plan_boundary(limits, full) is not None
