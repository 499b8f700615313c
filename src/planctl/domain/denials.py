"""What an admission says (pure): the phrase of each reason code and when what blocks resets.

The gateway sends these sentences to API clients and `authorize` prints them, so
they name no command and no flag; what to do next is worded by the CLI
(cli/hints.py) from a reason code and its fields.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from planctl.domain.clock import when
from planctl.domain.quota import BOUNDARIES, Decision

PHRASES = {
    "key_disabled": "the key is disabled",
    "key_revoked": "the key was revoked",
    "key_expired": "the key has expired",
    "subscription_expired": "the subscription has expired: renew it or ask for a direct renewal",
    "subscription_cancelled": "the subscription was cancelled",
    "subscription_not_started": "the subscription has not started yet",
    "model_not_in_plan": "the model is not in the plan",
    "group_not_in_plan": "the key's group is not in the plan",
    "api_type_not_in_plan": "the API type is not in the plan",
    "credit_exhausted": "the plan's total credit is used up: renew, or ask for a direct renewal",
    "key_credit_cap_reached": "the key has used all the plan credit it may (its credit cap)",
    "subuser_quota_reached": "the sub-user has used its quota",
    "period_limit_reached": "this period's credit limit is reached",
    "rpd_reached": "today's request limit (RPD) is reached",
    "tpd_reached": "today's token limit (TPD) is reached",
    "key_daily_limit_reached": "the key's daily credit limit is reached",
    "key_rpd_reached": "the key's daily request limit is reached",
    "payg_balance_empty": "the pay-as-you-go balance is used up: top up",
}

DAILY_REASONS = ("rpd_reached", "tpd_reached", "key_daily_limit_reached", "key_rpd_reached")

Span = tuple[datetime, datetime]


def reset_of(blocking: str | None, day: Span, period: Span | None) -> datetime | None:
    """When the boundary named by `blocking` resets: the period's end for the periodic limit (a week
    for a weekly plan), the natural day's for daily limits; with nothing blocking, whichever of the
    two comes first; None when what blocks never resets by itself."""
    if blocking == "period_limit_reached" and period:
        return period[1]
    if blocking in DAILY_REASONS:
        return day[1]
    if blocking is None:
        return min([day[1]] + ([period[1]] if period else []))
    return None


def explain(decision: Decision, next_reset: datetime, tz: tzinfo) -> str:
    """The one sentence an admission says: what pays, or what blocks and, if it resets, when (in `tz`)."""
    if decision.allowed:
        if decision.lifted:
            return f"allowed on extra usage ({PHRASES[decision.lifted]})"
        return f"allowed, charged to {decision.pool}"
    text = PHRASES.get(decision.reason or "", decision.reason or "denied")
    if decision.reason in BOUNDARIES or decision.reason in DAILY_REASONS:
        text += f"; it resets at {when(next_reset, tz)}"
    return text


FIXABLE = (  # denials lifted by a change to the key, account or subscription itself
    "payg_balance_empty", "key_credit_cap_reached", "key_daily_limit_reached", "key_rpd_reached", "key_disabled",
    "key_expired", "key_revoked", "subscription_cancelled", "subscription_not_started", "subuser_quota_reached",
    "group_not_in_plan", "model_not_in_plan", "api_type_not_in_plan",
)


def remedies(reason: str | None, boundary: str | None, *, subscription: bool, extra_available: int,
             can_disable_limit: bool) -> list[str]:
    """What would lift each reason that blocks now (the decision's `reason`, and a plan `boundary`
    that extra usage absorbs), as codes: buying extra usage, disabling the periodic limit (where the
    plan allows it and it is on), waiting for the reset when nothing else helps, renewing, or the
    reason itself when a change to the key, account or subscription lifts it."""
    out = []
    if boundary and not extra_available and subscription:
        out.append("buy_extra_usage")
    if boundary == "period_limit_reached" and can_disable_limit and subscription:
        out.append("disable_period_limit")
    if reason in BOUNDARIES and not out:
        out.append("wait_for_reset")
    if reason in ("credit_exhausted", "subscription_expired") and subscription:
        out.append("renew")
    if reason in FIXABLE:
        out.append(reason)
    return out
