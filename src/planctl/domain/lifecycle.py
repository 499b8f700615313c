"""Subscription lifecycle rules: buy, renew, upgrade, direct renewal, refund.

Pure functions over plain values: the caller passes `now` and the reset zone,
and gets back what to write, or a `Refused` with its reason code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from fractions import Fraction
from zoneinfo import ZoneInfo

from planctl.domain.catalog import PlanTerms, money_text, purchase_window_open
from planctl.domain.clock import add_duration, local_date, when
from planctl.domain.errors import InvalidInput, Refused
from planctl.domain.money import Rounding, div_round

START_PAST_TOLERANCE = timedelta(hours=1)  # backdating a start beyond this is refused
START_FUTURE_LIMIT = timedelta(days=366)


@dataclass(frozen=True)
class SubscriptionState:
    status: str  # active | cancelled
    starts_at: datetime
    ends_at: datetime
    anchor_day: int
    credit_granted: int | None
    credit_used: int


def availability(sub: SubscriptionState, now: datetime) -> str | None:
    """None when usable now, else the reason code (cancelled, expired, not yet started)."""
    if sub.status == "cancelled":
        return "subscription_cancelled"
    if now >= sub.ends_at:
        return "subscription_expired"
    if now < sub.starts_at:
        return "subscription_not_started"
    return None


def standing(sub: SubscriptionState, now: datetime, *, refunded: bool) -> str | None:
    """Why a subscription's keys cannot be used now (None: they can, as far as it goes):
    `availability`, with a cancellation by refund told apart, then its credit running out."""
    reason = availability(sub, now)
    if reason == "subscription_cancelled" and refunded:
        return "subscription_refunded"
    if reason is None and exhausted(sub):
        return "credit_exhausted"
    return reason


def exhausted(sub: SubscriptionState) -> bool:
    return sub.credit_granted is not None and sub.credit_used >= sub.credit_granted


# ---------------------------------------------------------------- buy


@dataclass(frozen=True)
class Term:
    starts_at: datetime
    ends_at: datetime
    anchor_day: int


def check_on_sale(terms: PlanTerms, now: datetime, tz: tzinfo = timezone.utc) -> None:
    if not terms.on_sale:
        raise Refused(f"plan {terms.slug} has been removed from sale", reason="plan_not_on_sale")
    if not purchase_window_open(terms, now):
        if terms.purchase_start and now < terms.purchase_start:
            raise Refused(f"plan {terms.slug} goes on sale at {when(terms.purchase_start, tz)}",
                          reason="purchase_window_closed")
        raise Refused(f"plan {terms.slug} stopped selling at {when(terms.purchase_end, tz)}",  # type: ignore[arg-type]
                      reason="purchase_window_closed")


def first_term(terms: PlanTerms, now: datetime, start: datetime | None, tz: ZoneInfo) -> Term:
    """A new subscription's first term: from now (or --start) for one validity."""
    starts_at = now if start is None else start
    if starts_at < now - START_PAST_TOLERANCE:
        raise InvalidInput(f"start {when(starts_at, tz)} is in the past; give now or a later time")
    if starts_at > now + START_FUTURE_LIMIT:
        raise InvalidInput(f"start {when(starts_at, tz)} is more than a year ahead")
    anchor = local_date(starts_at, tz).day
    return Term(starts_at, add_duration(starts_at, terms.validity, tz, anchor_day=anchor), anchor)


# ---------------------------------------------------------------- renew


def check_renewal(sub: SubscriptionState, current: PlanTerms, now: datetime, tz: ZoneInfo) -> None:
    """The four conditions of SPEC §3, each with its own reason."""
    if sub.status == "cancelled":
        raise Refused("cannot renew: the subscription was cancelled; buy the plan again",
                      reason="subscription_cancelled")
    if now >= sub.ends_at:
        raise Refused(f"cannot renew: the subscription expired at {when(sub.ends_at, tz)}; buy again, "
                      "or ask an operator for a direct renewal to keep its keys", reason="subscription_expired")
    if not current.on_sale:
        raise Refused(f"cannot renew: plan {current.slug} has been removed from sale; buy another plan",
                      reason="plan_not_on_sale")
    if not current.renewal_enabled:
        raise Refused(f"cannot renew: renewal is not enabled for plan {current.slug}",
                      reason="renewal_disabled")
    opens = renewal_opens(sub, current, tz)
    if now < opens:
        raise Refused(f"cannot renew yet: renewal opens at {when(opens, tz)} ({current.renewal_window} before "
                      f"expiry at {when(sub.ends_at, tz)})", reason="renewal_window_not_open")


def renewal_opens(sub: SubscriptionState, terms: PlanTerms, tz: ZoneInfo) -> datetime:
    return add_duration(sub.ends_at, terms.renewal_window, tz, times=-1)


def extend(ends_at: datetime, terms: PlanTerms, anchor_day: int, tz: ZoneInfo) -> datetime:
    """The end after stacking one more validity on `ends_at`, keeping the anchor day."""
    return add_duration(ends_at, terms.validity, tz, anchor_day=anchor_day)


def direct_renewal_term(sub: SubscriptionState, terms: PlanTerms, now: datetime, tz: ZoneInfo) -> Term:
    """Operator renewal: from max(now, end); an expired subscription is re-anchored on today."""
    if sub.status == "cancelled":
        raise Refused("cannot renew a cancelled (refunded) subscription; sell a new one",
                      reason="subscription_cancelled")
    if now >= sub.ends_at:
        anchor = local_date(now, tz).day
        return Term(sub.starts_at, add_duration(now, terms.validity, tz, anchor_day=anchor), anchor)
    return Term(sub.starts_at, extend(sub.ends_at, terms, sub.anchor_day, tz), sub.anchor_day)


# ---------------------------------------------------------------- upgrade


@dataclass(frozen=True)
class UpgradeQuote:
    payable: int  # minor units
    credit: int | None  # µcr to add (None: the new plan has no total pool)
    share: Fraction  # terms paid for: whole remaining terms, plus the current one's share


def check_upgrade(sub: SubscriptionState, old: PlanTerms, new: PlanTerms, now: datetime,
                  tz: tzinfo = timezone.utc) -> None:
    reason = availability(sub, now)
    if reason == "subscription_cancelled":
        raise Refused("cannot upgrade a cancelled subscription", reason=reason)
    if reason == "subscription_expired":
        raise Refused(f"cannot upgrade: the subscription expired at {when(sub.ends_at, tz)}; buy the new plan",
                      reason=reason)
    if new.family != old.family:
        raise Refused(f"cannot upgrade from {old.slug} ({old.family}) to {new.slug} ({new.family}): "
                      "upgrades stay within one family", reason="upgrade_other_family")
    if new.tier <= old.tier:
        raise Refused(f"{new.slug} (tier {new.tier}) is not above {old.slug} (tier {old.tier}): downgrades "
                      "are not sold; renew the current plan, then buy the smaller one when it ends",
                      reason="downgrade_refused")
    check_on_sale(new, now, tz)


def remaining_share(sub: SubscriptionState, terms: PlanTerms, now: datetime, tz: ZoneInfo) -> Fraction:
    """How many terms are left: whole stacked terms plus the unused share of the current one.

    Exact: measured in microseconds, never in floats.
    """
    later_end = sub.ends_at
    whole = 0
    while True:
        earlier = add_duration(later_end, terms.validity, tz, times=-1, anchor_day=sub.anchor_day)
        if earlier <= now or earlier <= sub.starts_at:
            start = max(earlier, sub.starts_at)
            span, left = _micros(later_end - start), _micros(later_end - max(now, start))
            return whole + Fraction(left, span)
        whole += 1
        later_end = earlier


def quote_upgrade(sub: SubscriptionState, old: PlanTerms, new: PlanTerms, now: datetime, tz: ZoneInfo,
                  *, prorate: bool) -> UpgradeQuote:
    """Price difference (× remaining share with `prorate`), rounded up once to the minor unit.

    Without `prorate` the current term counts in full. The credit difference
    is granted in the same proportion, rounded up once to the µcr.
    """
    share = remaining_share(sub, old, now, tz)
    if not prorate:
        share = Fraction(-(-share.numerator // share.denominator))  # whole terms: ceil
    payable = _ceil_times(max(new.price - old.price, 0), share)
    if new.total_credit is None:
        return UpgradeQuote(payable, None, share)
    credit = _ceil_times(max(new.total_credit - (old.total_credit or 0), 0), share)
    return UpgradeQuote(payable, credit, share)


def _ceil_times(amount: int, share: Fraction) -> int:
    return div_round(amount * share.numerator, share.denominator, Rounding.UP)


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# ---------------------------------------------------------------- refunds


@dataclass(frozen=True)
class RefundQuote:
    amount: int  # minor units paid back
    credit_reversed: int  # µcr taken back
    policy: str  # the rule that decided, or "override"
    cancels: bool  # a refund that ends the subscription


@dataclass(frozen=True)
class RefundFacts:
    """What a refund decision needs to know about one order."""

    kind: str  # the order kind
    payable: int
    refunded: int
    credit_granted: int  # by this order, as sold
    credit_left: int  # of that credit, still in its pool (neither used nor taken back by a refund)
    paid_at: datetime
    policy: str  # str(RefundPolicy), or "unused" for products
    credit_reversed: int = 0  # of this order's credit, taken back by earlier refunds
    currency: str = "CNY"  # of payable and refunded, for messages


def quote_refund(facts: RefundFacts, now: datetime, tz: ZoneInfo, *, override: int | None = None) -> RefundQuote:
    remaining = facts.payable - facts.refunded
    if remaining <= 0:
        raise Refused("the order has already been fully refunded" if facts.payable else
                      "the order was free: there is nothing to refund", reason="nothing_to_refund")
    credit_left = max(0, min(facts.credit_left, facts.credit_granted))
    if override is not None:
        if override <= 0:
            raise InvalidInput("refund amount must be greater than zero")
        if override > remaining:
            raise Refused(f"a refund of {money_text(override, facts.currency)} exceeds what is left to refund "
                          f"({money_text(remaining, facts.currency)})",
                          reason="refund_exceeds_paid")
        credit = min(credit_left, div_round(facts.credit_granted * override, facts.payable, Rounding.DOWN))
        return RefundQuote(override, credit, "override", override == remaining and facts.kind == "buy")
    from planctl.domain.catalog import parse_refund_policy

    policy = parse_refund_policy(facts.policy)
    if policy.kind == "none":
        raise Refused("the plan's refund policy is 'none'", reason="refund_not_allowed", code="refund_policy_none")
    if policy.kind == "unused":
        if credit_left < facts.credit_granted - facts.credit_reversed:
            raise Refused("credit from this order has been used, so the 'unused' refund policy no longer "
                          "applies", reason="refund_credit_used", code="refund_by_amount")
        if policy.within is not None:
            closes = add_duration(facts.paid_at, policy.within, tz)
            if now >= closes:
                raise Refused(f"the refund window ({policy.within}) closed at {when(closes, tz)}",
                              reason="refund_window_closed")
        return RefundQuote(remaining, credit_left, str(policy), facts.kind == "buy")
    # prorated: the unused share of the credit, times what was paid
    if facts.credit_granted == 0:
        raise Refused("this order granted no credit to prorate", reason="refund_not_allowed", code="refund_by_amount")
    # credit_left already excludes credit taken back by earlier refunds, so this is what is still owed
    amount = min(div_round(facts.payable * credit_left, facts.credit_granted, Rounding.DOWN), remaining)
    if amount <= 0:
        raise Refused("no unused credit is left to refund", reason="nothing_to_refund")
    return RefundQuote(amount, credit_left, "prorated", facts.kind == "buy")
