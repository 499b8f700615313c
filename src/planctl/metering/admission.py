"""Admission: may a key run a request now, and (with `reserve`) hold the credit it may cost.

`authorize` reads the key, its plan terms and (only when they matter) its counters in as
few statements as the rules allow, asks `domain.quota.decide`, words the answer
(`domain.denials`) and takes the hold (holds.py) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from planctl.domain import denials, quota
from planctl.domain.errors import InvalidInput
from planctl.domain.secrets import digest
from planctl.metering.catalog import Catalogs
from planctl.metering.holds import HOLD_FOR, expire, hold, release_stale
from planctl.metering.state import MeterDb, State, counted, frame, key_by_secret, request_for
from planctl.store import meter
from planctl.store.meter import CounterRow
from planctl.store.sql import Tx


@dataclass
class Authorization:
    allowed: bool
    reason: str | None
    message: str
    requested_model: str
    billed_model: str | None = None
    key_id: str | None = None
    account_id: str | None = None
    subscription_id: str | None = None
    pool: str | None = None
    lifted: str | None = None
    remaining: dict[str, Any] = field(default_factory=dict)
    next_reset: datetime | None = None
    reservation_id: str | None = None
    reservation_expires_at: datetime | None = None


def authorize(db: MeterDb, catalogs: Catalogs, secret: str, *, model: str, api: str = "responses",
              reserve: int | None = None, now: datetime, hold_for: timedelta = HOLD_FOR) -> Authorization:
    """Decide whether a request may run; with `reserve`, hold that much credit until it is recorded."""
    if api not in quota.API_TYPES:
        raise InvalidInput(f"unknown API type {api!r}: use {', '.join(quota.API_TYPES)}")
    if reserve is not None and reserve <= 0:
        raise InvalidInput("the amount to reserve must be greater than zero", code="reserve_not_positive")
    write = bool(reserve)
    for attempt in range(2):  # a hold past its expiry is released first (the read says whether any is)
        with db.tx(write=write) as tx:
            read = _key_at_secret(tx, secret, now, write=write)
            if read is not None and read.stale and write and tx.sqlite:  # BEGIN IMMEDIATE excludes every
                expire(tx, now)  # other writer: no lock order to keep
                read = _key_at_secret(tx, secret, now, write=write)
            if read is None:
                return Authorization(False, "key_unknown", "no key has this secret", model)
            if not read.stale or attempt or (write and tx.sqlite):
                return _admit(tx, catalogs, read, model, api, reserve, now, hold_for)
        release_stale(db, now)  # in its own transaction: it locks other keys' rows (store/meter.py)
    raise AssertionError("unreachable")


def _key_at_secret(tx: Tx, secret: str, now: datetime, *, write: bool) -> meter.KeyAt | None:
    """The key a secret belongs to (its current secret, or its previous one within the rotation
    grace), with what admission needs besides (meter.key_at)."""
    hashed = digest(secret)
    read = meter.key_at(tx, "secret_sha256", hashed, now, write=write)
    if read is None:
        read = meter.key_at(tx, "previous_sha256", hashed, now, write=write)
        until = read.found[0].previous_valid_until if read is not None else None
        if until is None or now >= until:
            return None
    return read


def _admit(tx: Tx, catalogs: Catalogs, read: meter.KeyAt, model: str, api: str, reserve: int | None, now: datetime,
           hold_for: timedelta) -> Authorization:
    write = bool(reserve)
    cat = catalogs.get(tx, write=write, stamp=read.stamp)
    state = frame(tx, cat, read.found, now, read.version_id)
    state.extra = read.extra
    limits = state.limits()
    state.loaded = True  # the packs are summed in `read`: listed only when extra usage is held
    state.count = {name: CounterRow() for name in state.window}
    held = (0, 0)  # open holds of the key, and of the key and its subscription
    if counted(limits):
        statements = [meter.counters_statement(tx, list(state.window.values()))]
        if limits.rpd is not None or limits.key_rpd is not None:
            statements.append(meter.open_holds_statement(state.key.id, state.sub.id if state.sub else None))
        results = tx.batch(statements)
        rows = meter.counters_from(tx, list(state.window.values()), results[0][1])
        state.count = {name: rows[w] for name, w in state.window.items()}
        if len(results) > 1:
            held = results[1][1][0]
    billed = cat.billed(model)
    counters = state.counters()
    if held[1]:  # requests admitted and not recorded yet count against the request limits
        counters = replace(counters, day_requests=counters.day_requests + held[1],
                           key_day_requests=counters.key_day_requests + held[0])
    decision = quota.decide(request_for(state, billed, api, reserve or 0, now), limits, counters)
    auth = _answer(state, decision, model, billed, limits, counters, cat.tz)
    if decision.allowed and reserve:
        res = hold(tx, state, decision, limits, reserve, now, hold_for)
        auth.reservation_id, auth.reservation_expires_at = res.id, res.expires_at
    return auth


def _answer(state: State, decision: quota.Decision, requested: str, billed: str | None, limits: quota.Limits,
            c: quota.Counters, tz: Any) -> Authorization:
    win = state.windows
    remaining: dict[str, Any] = {
        "total": c.plan_remaining,
        "period": None if limits.period_credit is None else limits.period_credit - c.period_used - c.period_reserved,
        "period_limit_enabled": limits.period_limit_enabled,
        "rpd": None if limits.rpd is None else limits.rpd - c.day_requests,
        "tpd": None if limits.tpd is None else limits.tpd - c.day_tokens,
        "extra": c.extra_available,
        "payg": c.payg_available if state.key.kind == "payg" else None,
    }
    next_reset = denials.reset_of(decision.reason or decision.lifted, win.day, win.period)
    if next_reset is None:  # what blocks does not reset by itself: say when the next counter does anyway
        next_reset = denials.reset_of(None, win.day, win.period)
    return Authorization(
        allowed=decision.allowed, reason=decision.reason, message=denials.explain(decision, next_reset, tz),
        requested_model=requested, billed_model=billed, key_id=state.key.id, account_id=state.key.account_id,
        subscription_id=state.sub.id if state.sub else None, pool=decision.pool, lifted=decision.lifted,
        remaining=remaining, next_reset=next_reset,
    )


def plan_models(db: MeterDb, catalogs: Catalogs, secret: str, *, now: datetime) -> list[tuple[str, str]] | None:
    """The (name, billed model) pairs a key's plan allows, aliases included; None for an unknown key."""
    with db.tx(write=False) as tx:
        found = key_by_secret(tx, secret, now, write=False)
        if found is None:
            return None
        cat = catalogs.get(tx, write=False)
        state = frame(tx, cat, found, now)
    allowed = set(state.limits().models) or set(cat.models)
    names = [(m, m) for m in sorted(cat.models) if m in allowed]
    return names + sorted((pattern, target) for pattern, target in cat.aliases.items() if target in allowed)

