"""Holds: credit set aside for a request in flight, and every way one ends.

`hold` takes one with conditional UPDATEs whose affected-row count decides (two
admissions can never both take the last credit); `give_back` closes one exactly once
(settled by its record, released, or expired); `release_hold` is the gateway's fast
path for a request that never reached an upstream, `release_by_hand` the audited admin
operation; expired holds are released before anything reads balances.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from planctl.domain import denials, quota
from planctl.domain.clock import iso
from planctl.domain.errors import InvalidInput, NotFound, Refused
from planctl.domain.ids import short_id
from planctl.metering.changes import Changes
from planctl.metering.state import EPOCH, MeterDb, State
from planctl.store import meter
from planctl.store.meter import HoldRow
from planctl.store.sql import Tx

HOLD_FOR = timedelta(minutes=10)


def hold(tx: Tx, state: State, decision: quota.Decision, limits: quota.Limits, amount: int, now: datetime,
          hold_for: timedelta) -> HoldRow:
    """Hold `amount` against every pool and limit the request would draw from, or refuse."""
    holds: dict[str, Any] = {}

    def refuse(reason: str) -> Refused:
        return Refused(f"{denials.PHRASES[reason]} (taken by a concurrent request)", reason=reason)

    if decision.pool == "payg":
        meter.hold_payg(tx, state.account.id, amount, refuse("payg_balance_empty"))
        holds["payg"] = amount
    elif decision.pool == "extra":
        state.packs = meter.packs_of(tx, state.extra_owner_id, lock=True)
        draws, left = quota.split_extra(amount, [(p.id, p.available) for p in state.live_packs()])
        lost = refuse(decision.lifted or "credit_exhausted")
        if left:
            raise lost
        for pack_id, take in draws:
            meter.hold_pack(tx, pack_id, take, lost)
        holds["packs"] = {str(pack_id): take for pack_id, take in draws}
    sub = state.sub
    if sub is not None and decision.pool == "plan":
        meter.hold_subscription(tx, sub.id, amount, refuse("credit_exhausted"))
        holds["plan"] = amount
        if "period" in state.window:
            capped = limits.period_credit is not None and limits.period_limit_enabled
            meter.hold_counter(tx, state.window["period"], amount, limits.period_credit if capped else None,
                               refuse("period_limit_reached"))
            holds["period"] = [iso(state.window["period"][2]), amount]
        if state.key.credit_cap is not None:  # a key's holds only matter to its cap
            meter.hold_key(tx, state.key.id, amount, refuse("key_credit_cap_reached"))
            holds["key"] = amount
        if "subuser" in state.window:
            meter.hold_counter(tx, state.window["subuser"], amount, limits.subuser_quota,
                               refuse("subuser_quota_reached"))
            holds["subuser"] = amount
    res = HoldRow(id=short_id("res", 10), key_id=state.key.id, account_id=state.key.account_id,
                  subscription_id=sub.id if sub else None, pool=decision.pool or "plan", amount=amount, holds=holds,
                  status="held", created_at=now, expires_at=now + hold_for)
    meter.insert_hold(tx, res)
    changes = Changes()
    _hold_ledger(changes, res, tx.at(now), sign=-1, kind="reserve")
    meter.insert_ledger(tx, changes.ledger)
    tx.send()  # every conditional update checked (a refusal raised) here, before the commit
    return res


def _hold_ledger(changes: Changes, res: HoldRow, stored_now: Any, *, sign: int, kind: str) -> None:
    """Holds take from the available balance: a `reserve` entry, and a `release` when they end."""
    entry, reason, holds = changes.entry, f"{kind} {res.id}", res.holds
    if "plan" in holds:
        entry(stored_now, res.account_id, "plan", res.subscription_id, None, res.key_id, kind, sign * holds["plan"],
              res.request_id, reason)
    for pack_id, take in holds.get("packs", {}).items():
        entry(stored_now, res.account_id, "extra", None, int(pack_id), res.key_id, kind, sign * take, res.request_id,
              reason)
    if "payg" in holds:
        entry(stored_now, res.account_id, "payg", None, None, res.key_id, kind, sign * holds["payg"], res.request_id,
              reason)


def give_back(tx: Tx, res: HoldRow, now: datetime, status: str, changes: Changes,
             request_id: str | None = None, lost: Exception | None = None) -> bool:
    """Give a hold back (settled by its record, released by hand, or expired), exactly once:
    the status change is conditional, so of two transactions closing the same hold one wins
    (`lost`: raised at the latest before the commit, when the caller read it after its key's lock)."""
    if not meter.close_hold(tx, res.id, status, now, request_id, lost=lost):
        return False
    _hold_ledger(changes, res, tx.at(now), sign=+1, kind="release")
    res.status, res.closed_at, res.request_id = status, now, request_id or res.request_id
    holds, row = res.holds, changes.row
    if "key" in holds:
        row("key", res.key_id).credit_reserved -= holds["key"]
    if "plan" in holds:
        row("sub", res.subscription_id).credit_reserved -= holds["plan"]
    if "period" in holds:
        start = datetime.fromisoformat(holds["period"][0])
        row("counter", (res.subscription_id, "sub-period", start)).reserved -= holds["period"][1]
    if "subuser" in holds:
        row("counter", (res.account_id, "subuser", EPOCH)).reserved -= holds["subuser"]
    for pack_id, take in holds.get("packs", {}).items():
        row("pack", int(pack_id)).reserved -= take
    if "payg" in holds:
        row("account", res.account_id).payg_reserved -= holds["payg"]
    return True


def expire(tx: Tx, now: datetime) -> int:
    """Release every hold past its expiry."""
    stale = meter.stale_holds(tx, now)
    if not stale:
        return 0
    meter.lock_owners(tx, [res.key_id for res in stale])
    changes = Changes()
    released = sum(give_back(tx, res, now, "expired", changes) for res in stale)
    changes.apply(tx)
    return released


def release_stale(db: MeterDb, now: datetime) -> None:
    """Release expired holds first when there are any (a cheap read when there are none)."""
    with db.tx(write=False) as tx:
        stale = meter.any_stale(tx, now)
    if stale:
        with db.tx(write=True) as tx:
            expire(tx, now)


def list_reservations(db: MeterDb, *, now: datetime, status: str | None = "held", key: str | None = None,
                      limit: int = 1000) -> list[HoldRow]:
    if status is not None and status not in meter.HOLD_STATUSES:
        raise InvalidInput(f"unknown reservation status {status!r}: use {', '.join(meter.HOLD_STATUSES)} or all")
    release_stale(db, now)
    with db.tx(write=False) as tx:
        key_id = meter.resolve_key(tx, key) if key else None
        return meter.list_holds(tx, status=status, key_id=key_id, limit=limit)


def release_by_hand(db: Any, reservation_id: str, *, caller: Any, now: datetime) -> HoldRow:
    """Release a hold by hand (audited)."""
    from planctl.services import audit

    with db.write() as session:
        tx = Tx.within(session)
        expire(tx, now)
        res = meter.get_hold(tx, reservation_id)
        if res is None:
            raise NotFound(f"unknown reservation {reservation_id!r}", code="unknown_reservation")
        meter.lock_owners(tx, [res.key_id])
        changes = Changes()
        if res.status != "held" or not give_back(tx, res, now, "released", changes):
            raise Refused(f"reservation {res.id} is already {res.status}", reason="reservation_closed")
        changes.apply(tx)
        audit.record(session, caller, now, f"reservation:{res.id}", f"released {res.amount} µcr by hand")
        return res


def release_hold(db: MeterDb, reservation_id: str, *, now: datetime) -> bool:
    """Give a hold back at once, on the metering fast path (a request that never reached an
    upstream): not audited, unlike `release`. False when it was already closed or is unknown."""
    with db.tx(write=True) as tx:
        res = meter.get_hold(tx, reservation_id)
        if res is None or res.status != "held":
            return False
        meter.lock_owners(tx, [res.key_id])
        changes = Changes()
        if not give_back(tx, res, now, "released", changes):
            return False
        changes.apply(tx)
        return True
