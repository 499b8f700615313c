"""A key's state at one instant: its rows, plan terms, the windows it counts in, its counters.

`frame` gives the windows without reading the counters; `load` (or `fill`, which a batch
calls with its own objects for the rows) reads them. Admission, charging and the limits
view all read a key through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from planctl.domain import lifecycle, quota
from planctl.domain import keys as key_rules
from planctl.domain.catalog import PlanTerms
from planctl.domain.clock import period_bounds
from planctl.domain.secrets import digest
from planctl.metering.catalog import Catalog
from planctl.store import meter
from planctl.store.meter import AccountRow, CounterRow, KeyRow, PackRow, SubRow, Window
from planctl.store.sql import Tx

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # window of a sub-user's running total


class MeterDb(Protocol):
    """What metering needs of a database: plain transactions (`store.sql`)."""

    def tx(self, *, write: bool) -> Any: ...


@dataclass
class Windows:
    period: tuple[datetime, datetime] | None
    day: tuple[datetime, datetime]


def _windows(cat: Catalog, terms: PlanTerms | None, sub: SubRow | None, at: datetime) -> Windows:
    period = None
    if terms is not None and terms.period is not None and sub is not None:
        period = period_bounds(max(at, sub.starts_at), terms.period, cat.tz, anchor=sub.starts_at)
    return Windows(period, cat.day(at))


@dataclass
class State:
    """Everything about one key at one instant that admission and charging read."""

    key: KeyRow
    account: AccountRow
    sub: SubRow | None
    terms: PlanTerms | None
    windows: Windows
    window: dict[str, Window]  # period | day | key_day | subuser -> its counter's window
    at: datetime
    count: dict[str, CounterRow] = field(default_factory=dict)  # loaded by `load` (or a batch, when needed)
    packs: list[PackRow] = field(default_factory=list)  # the extra-usage packs of the subscription's account
    loaded: bool = False  # counters and packs read
    extra: int | None = None  # what the live packs have left, when read as a sum instead of `packs`
    _limits: quota.Limits | None = None

    @property
    def extra_owner_id(self) -> str:
        return self.sub.account_id if self.sub is not None else self.account.id

    def live_packs(self) -> list[PackRow]:
        return [p for p in self.packs if p.expires_at is None or p.expires_at > self.at]

    def limits(self) -> quota.Limits:
        """The terms and settings admission enforces (fixed for the life of a transaction)."""
        if self._limits is None:
            self._limits = self._make_limits()
        return self._limits

    def _make_limits(self) -> quota.Limits:
        t, k = self.terms, self.key
        return quota.Limits(
            models=t.models if t else (), groups=t.groups if t else (),
            api_types=t.api_types if t else quota.API_TYPES,
            period_credit=t.period_credit if t else None,
            period_limit_enabled=self.sub.period_limit_enabled if self.sub else True,
            rpd=t.rpd if t else None, tpd=t.tpd if t else None, key_cap=k.credit_cap,
            key_daily_limit=k.daily_limit, key_rpd=k.rpd,
            subuser_quota=self.account.subuser_quota if self.account.parent_id else None,
        )

    def counters(self) -> quota.Counters:
        s, c = self.sub, self.count
        p, d, kd, su = c.get("period"), c.get("day"), c["key_day"], c.get("subuser")
        return quota.Counters(
            plan_granted=s.credit_granted if s else None, plan_used=s.credit_used if s else 0,
            plan_reserved=s.credit_reserved if s else 0,
            period_used=p.credit if p else 0, period_reserved=p.reserved if p else 0,
            day_requests=d.requests if d else 0, day_tokens=d.tokens if d else 0,
            key_used=self.key.credit_used, key_reserved=self.key.credit_reserved,
            key_day_requests=kd.requests, key_day_credit=kd.credit,
            subuser_used=su.credit if su else 0, subuser_reserved=su.reserved if su else 0,
            extra_available=self.extra if self.extra is not None else sum(p.available for p in self.live_packs()),
            payg_available=self.account.payg_balance - self.account.payg_reserved,
        )


Found = tuple[KeyRow, AccountRow, SubRow | None]


def frame(tx: Tx, cat: Catalog, found: Found, at: datetime, version: int | None = None) -> State:
    """A key's state without its counters and packs: the windows it counts in at `at` (`version`:
    the plan version in force then, when already read)."""
    key, account, sub = found
    terms = cat.terms(tx, version or _version_at(tx, sub, at)) if sub is not None else None
    win = _windows(cat, terms, sub, at)
    window: dict[str, Window] = {"key_day": (key.id, "key-day", win.day[0])}
    if sub is not None:
        window["day"] = (sub.id, "sub-day", win.day[0])
        if win.period:
            window["period"] = (sub.id, "sub-period", win.period[0])
    if account.parent_id:
        window["subuser"] = (account.id, "subuser", EPOCH)
    return State(key, account, sub, terms, win, window, at)


def _version_at(tx: Tx, sub: SubRow, at: datetime) -> int:
    """The plan version of the subscription's term in force at `at` (as sales.version_at)."""
    row = tx.one("SELECT plan_version_id FROM subscription_terms WHERE subscription_id = :s AND starts_at <= :at "
                 "ORDER BY starts_at DESC LIMIT 1", {"s": sub.id, "at": tx.at(at)})
    return sub.plan_version_id if row is None else int(row[0])


def counted(limits: quota.Limits) -> bool:
    """Does any counter matter to a decision or an answer under these limits?"""
    return any(v is not None for v in (limits.period_credit, limits.rpd, limits.tpd, limits.key_daily_limit,
                                       limits.key_rpd, limits.subuser_quota))


def load(tx: Tx, cat: Catalog, found: Found, at: datetime, *, write: bool, always: bool = False) -> State:
    """A key's whole state: its counters (when they matter, or `always`) and packs, locked in a
    write on PostgreSQL."""
    state = frame(tx, cat, found, at)
    fill(tx, state, lock=write, counters=always or counted(state.limits()))
    return state


def _as_read(_kind: str, _ident: Any, row: Any) -> Any:
    return row


def fill(tx: Tx, state: State, *, lock: bool, counters: bool = True, adopt: Any = _as_read) -> None:
    """Read a state's counters (zero when nothing limits or shows them) and its packs; `adopt`
    lets a batch keep one object per row (`Changes.adopt`)."""
    if counters:
        rows = meter.counters(tx, list(state.window.values()))
        state.count = {name: adopt("counter", w, rows[w]) for name, w in state.window.items()}
    else:
        state.count = {name: CounterRow() for name in state.window}
    state.packs = ([adopt("pack", p.id, p) for p in meter.packs_of(tx, state.extra_owner_id, lock=lock)]
                   if state.sub is not None else [])
    state.loaded = True


def key_by_secret(tx: Tx, secret: str, now: datetime, *, write: bool) -> Found | None:
    """The key a secret belongs to: its current secret, or its previous one within the rotation grace."""
    hashed = digest(secret)
    found = meter.key_by(tx, "secret_sha256", hashed, write=write)
    if found is None:
        found = meter.key_by(tx, "previous_sha256", hashed, write=write)
        if found is not None and not (found[0].previous_valid_until is not None
                                      and now < found[0].previous_valid_until):
            return None
    return found


def _sub_state(sub: SubRow) -> lifecycle.SubscriptionState:
    return lifecycle.SubscriptionState(sub.status, sub.starts_at, sub.ends_at, sub.anchor_day,
                                       sub.credit_granted, sub.credit_used)


def request_for(state: State, billed: str | None, api: str, need: int, now: datetime) -> quota.Request:
    key, sub = state.key, state.sub
    return quota.Request(
        key_kind=key.kind, key_refusal=key_rules.key_refusal(key_rules.KeyState(key.status, key.expires_at), now),
        subscription_refusal=None if sub is None else lifecycle.availability(_sub_state(sub), now),
        billed_model=billed, group=key.group_name, api=api, need=need)
