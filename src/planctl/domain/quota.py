"""Admission and pricing: may this request run, which pool pays, and what it costs.

`decide` checks in the fixed order of SPEC §5 and returns exactly one reason
code on a denial:

    key exists → key status → key expiry → subscription status and expiry →
    model / group / API type in plan (after aliasing) → total credit → key cap →
    sub-user quota → periodic limit → RPD → TPD → per-key daily limit → per-key RPD

PAYG keys check the account's pay-as-you-go balance instead of the plan.
When a plan boundary (periodic limit, RPD, TPD) blocks and the account has
extra-usage balance, the request is admitted on extra usage. Extra usage never
helps an expired, cancelled or credit-exhausted subscription, and does not lift
the per-key limits a team lead set.
"""

from __future__ import annotations

from dataclasses import dataclass

from planctl.domain.catalog import ModelPrices
from planctl.domain.money import Rounding, div_round

REASONS = (
    "key_unknown", "key_disabled", "key_revoked", "key_expired", "subscription_expired",
    "subscription_cancelled", "subscription_not_started", "model_not_in_plan", "group_not_in_plan",
    "api_type_not_in_plan", "credit_exhausted", "key_credit_cap_reached", "subuser_quota_reached",
    "period_limit_reached", "rpd_reached", "tpd_reached", "key_daily_limit_reached", "key_rpd_reached",
    "payg_balance_empty",
)
BOUNDARIES = ("period_limit_reached", "rpd_reached", "tpd_reached")  # extra usage lifts these
API_TYPES = ("responses", "chat", "claude")


def request_cost(prices: ModelPrices, *, input_tokens: int, cached_tokens: int, output_tokens: int,
                 ratio_ppm: int) -> int:
    """(uncached × input + cached × cached + output × output price) ÷ 10^6 × group ratio, in µcr,
    rounded up once. `input_tokens` includes the cached ones."""
    uncached = input_tokens - cached_tokens
    per_million = uncached * prices.input_price + cached_tokens * prices.cached_price + output_tokens * prices.output_price
    return div_round(per_million * ratio_ppm, 1_000_000 * 1_000_000, Rounding.UP)


@dataclass(frozen=True)
class Limits:
    """The plan terms and key settings that admission enforces."""

    models: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    api_types: tuple[str, ...] = API_TYPES
    period_credit: int | None = None  # None: no periodic limit
    period_limit_enabled: bool = True
    rpd: int | None = None
    tpd: int | None = None
    key_cap: int | None = None
    key_daily_limit: int | None = None
    key_rpd: int | None = None
    subuser_quota: int | None = None


@dataclass(frozen=True)
class Counters:
    """Use so far (and holds), read in the same transaction as the decision."""

    plan_granted: int | None = None  # None: no total pool (purely periodic)
    plan_used: int = 0
    plan_reserved: int = 0
    period_used: int = 0
    period_reserved: int = 0
    day_requests: int = 0
    day_tokens: int = 0
    key_used: int = 0
    key_reserved: int = 0
    key_day_requests: int = 0
    key_day_credit: int = 0
    subuser_used: int = 0
    subuser_reserved: int = 0
    extra_available: int = 0
    payg_available: int = 0

    @property
    def plan_remaining(self) -> int | None:
        return None if self.plan_granted is None else self.plan_granted - self.plan_used - self.plan_reserved


@dataclass(frozen=True)
class Request:
    key_kind: str  # subscription | team | payg
    key_refusal: str | None  # from keys.key_refusal: status and key expiry
    subscription_refusal: str | None  # from lifecycle.availability (None for payg)
    billed_model: str | None  # after aliasing; None: nothing matches
    group: str
    api: str
    need: int = 0  # µcr to hold (--reserve); 0: admit while anything is left


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str | None = None  # the one reason code of a denial
    pool: str | None = None  # plan | extra | payg
    lifted: str | None = None  # the boundary extra usage absorbs

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(False, reason)


def decide(req: Request, limits: Limits, c: Counters) -> Decision:
    """Allow (with the pool to charge) or deny with exactly one reason code."""
    if req.key_refusal:
        return Decision.deny(req.key_refusal)
    need = max(req.need, 1)
    if req.key_kind == "payg":
        if req.billed_model is None:
            return Decision.deny("model_not_in_plan")
        if c.payg_available < need:
            return Decision.deny("payg_balance_empty")
        return _key_limits(limits, c, need) or Decision(True, pool="payg")
    if req.subscription_refusal:
        return Decision.deny(req.subscription_refusal)
    if req.billed_model is None or req.billed_model not in limits.models:
        return Decision.deny("model_not_in_plan")
    if req.group not in limits.groups:
        return Decision.deny("group_not_in_plan")
    if req.api not in limits.api_types:
        return Decision.deny("api_type_not_in_plan")
    if c.plan_remaining is not None and c.plan_remaining < need:
        return Decision.deny("credit_exhausted")
    if limits.key_cap is not None and c.key_used + c.key_reserved + need > limits.key_cap:
        return Decision.deny("key_credit_cap_reached")
    if limits.subuser_quota is not None and c.subuser_used + c.subuser_reserved + need > limits.subuser_quota:
        return Decision.deny("subuser_quota_reached")
    boundary = plan_boundary(limits, c, need)
    if boundary is not None and c.extra_available < need:
        return Decision.deny(boundary)
    return _key_limits(limits, c, need) or Decision(True, pool="extra" if boundary else "plan", lifted=boundary)


def has_boundary(limits: Limits) -> bool:
    """Can a natural-period boundary block at all (a periodic limit in force, RPD or TPD)?"""
    return ((limits.period_credit is not None and limits.period_limit_enabled)
            or limits.rpd is not None or limits.tpd is not None)


def plan_boundary(limits: Limits, c: Counters, need: int = 1) -> str | None:
    """The first natural-period boundary that blocks now, if any."""
    if (limits.period_credit is not None and limits.period_limit_enabled
            and c.period_used + c.period_reserved + need > limits.period_credit):
        return "period_limit_reached"
    if limits.rpd is not None and c.day_requests >= limits.rpd:
        return "rpd_reached"
    if limits.tpd is not None and c.day_tokens >= limits.tpd:
        return "tpd_reached"
    return None


def _key_limits(limits: Limits, c: Counters, need: int) -> Decision | None:
    if limits.key_daily_limit is not None and c.key_day_credit + need > limits.key_daily_limit:
        return Decision.deny("key_daily_limit_reached")
    if limits.key_rpd is not None and c.key_day_requests >= limits.key_rpd:
        return Decision.deny("key_rpd_reached")
    return None


def split_extra(cost: int, packs: list[tuple[int, int]]) -> tuple[tuple[tuple[int, int], ...], int]:
    """Draw `cost` from packs (id, available) in the order given (the store reads them expiring first
    first, never-expiring last: store/meter.py); returns the draws and what is left."""
    draws = []
    left = cost
    for pack_id, available in packs:
        if left <= 0:
            break
        take = min(left, available)
        if take > 0:
            draws.append((pack_id, take))
            left -= take
    return tuple(draws), left


def split_charge(cost: int, pool: str, *, capped: bool, packs: list[tuple[int, int]], plan_available: int | None,
                 payg_available: int) -> tuple[int, tuple[tuple[int, int], ...], int]:
    """How a recorded cost is charged: (plan µcr, extra-pack draws, PAYG µcr). The pool was chosen at
    admission; extra usage pays what its packs (id, available) hold and the plan the rest. Without a
    hold (`capped` False) an admitted request is charged in full, so it may overshoot a limit; with
    one, never beyond what is available (`plan_available` None: the plan has no total credit)."""
    if pool == "payg":
        return 0, (), min(cost, max(payg_available, 0)) if capped else cost
    draws: tuple[tuple[int, int], ...] = ()
    plan = cost
    if pool == "extra":
        draws, plan = split_extra(cost, packs)
    if capped and plan_available is not None:
        plan = min(plan, max(plan_available, 0))
    return plan, draws, 0


def paid_by(plan: int, extra: int, payg: int) -> str:
    """A usage record's pool label: the one pool that paid, `mixed` for several, `none` for nothing."""
    parts = (plan > 0) + (extra > 0) + (payg > 0)
    return "none" if not parts else "mixed" if parts > 1 else "plan" if plan else "extra" if extra else "payg"
