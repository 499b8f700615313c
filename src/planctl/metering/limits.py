"""Limits, for people: every quota of a subscription or key side by side with what blocks it
and what would lift it (`limits show`), and the admin switch of a plan's periodic limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from planctl.domain import denials, quota
from planctl.domain.errors import NotFound, Refused
from planctl.metering.catalog import Catalogs
from planctl.metering.holds import release_stale
from planctl.metering.state import MeterDb, load, request_for
from planctl.store import meter, refs


@dataclass
class LimitsView:
    """'I still have balance, why can't I continue today?'"""

    subscription_id: str | None
    key_id: str | None
    plan: str | None
    counters: quota.Counters
    limits: quota.Limits
    blocking: str | None  # the reason code that blocks now, if any
    lifted_by_extra: bool
    period: tuple[datetime, datetime] | None
    day: tuple[datetime, datetime]
    reset_zone: str
    can_disable_limit: bool
    suggestions: list[str]  # what would lift it: codes the CLI words (domain/denials.py: remedies)
    about: dict[str, Any]  # the ids and names those words use
    next_reset: datetime | None = None  # when what blocks resets (None: it does not reset by itself)
    payg_balance: int | None = None  # the account's PAYG balance (a PAYG key's pool)


def limits_view(db: MeterDb, catalogs: Catalogs, ref: str, *, now: datetime) -> LimitsView:
    """The limits of a subscription (its subscription key) or of one key, side by side."""
    release_stale(db, now)
    with db.tx(write=False) as tx:
        try:
            sub_id = refs.resolve(tx, "subscription", ref)
        except NotFound:
            key_id = meter.resolve_key(tx, ref)
        else:
            row = tx.one("SELECT id FROM api_keys WHERE subscription_id = :sub "
                         "ORDER BY kind <> 'subscription', created_at LIMIT 1", {"sub": sub_id})
            if row is None:
                raise NotFound(f"subscription {ref!r} has no key")
            key_id = row[0]
        found = meter.key_by(tx, "id", key_id, write=False)
        assert found is not None
        cat = catalogs.get(tx, write=False)
        state = load(tx, cat, found, now, write=False, always=True)
        limits, counters, terms = state.limits(), state.counters(), state.terms
        request = request_for(state, terms.models[0] if terms else next(iter(cat.models), None),
                           terms.api_types[0] if terms else "responses", 0, now)
        decision = quota.decide(request, limits, counters)
        boundary = quota.plan_boundary(limits, counters) if state.sub else None
        return LimitsView(
            subscription_id=state.sub.id if state.sub else None, key_id=key_id,
            plan=terms.slug if terms else None, counters=counters, limits=limits,
            blocking=decision.reason or boundary, lifted_by_extra=bool(decision.allowed and decision.lifted),
            period=state.windows.period, day=state.windows.day, reset_zone=cat.tz.key,
            can_disable_limit=bool(terms and terms.period_limit_can_disable),
            suggestions=denials.remedies(
                decision.reason, boundary, subscription=state.sub is not None, extra_available=counters.extra_available,
                can_disable_limit=bool(terms and terms.period_limit_can_disable and state.sub
                                       and state.sub.period_limit_enabled)),
            about={"key": state.key.id, "account": state.account.id, "subuser": state.key.account_id,
                   "subscription": state.sub.id if state.sub else None,
                   "subscription_account": state.sub.account_id if state.sub else None,
                   "plan": terms.slug if terms else None, "owner": state.extra_owner_id},
            next_reset=denials.reset_of(decision.reason or boundary, state.windows.day, state.windows.period),
            payg_balance=state.account.payg_balance if state.key.kind == "payg" else None,
        )


def set_period_limit(db: Any, ref: str, enabled: bool, *, caller: Any, now: datetime) -> Any:
    """Turn a subscription's periodic limit off or on, where its plan allows it."""
    from planctl.services import audit
    from planctl.services.sales import resolve_subscription, subscription_terms

    with db.write() as session:
        sub = resolve_subscription(session, ref)
        terms = subscription_terms(session, sub)
        if terms.period is None:
            raise Refused(f"plan {terms.slug} has no periodic limit to turn {'on' if enabled else 'off'}",
                          reason="no_periodic_limit")
        if not terms.period_limit_can_disable:
            why = "a purely periodic plan" if terms.total_credit is None else "the plan does not allow it"
            raise Refused(f"the periodic limit of {terms.slug} cannot be disabled: {why}",
                          reason="limit_toggle_not_allowed")
        if sub.period_limit_enabled != enabled:
            sub.period_limit_enabled, sub.updated_at = enabled, now
            session.add(sub)
            audit.record(session, caller, now, f"subscription:{sub.id}",
                         f"periodic limit {'enabled' if enabled else 'disabled'}")
        return sub
