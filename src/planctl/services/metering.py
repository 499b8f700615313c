"""Metering: admit requests (optionally holding credit), record usage, and explain limits.

This is the in-process API the CLI and the gateway call for every request:

    auth = authorize(db, secret, model="claude-sonnet-4-5", api="claude", reserve=50_000, now=now)
    ...  # forward the request if auth.allowed
    record(db, UsageInput(request_id=..., key=auth.key_id, model=..., input_tokens=...,
                          reservation=auth.reservation_id), now=now)

`db` is a `store.engine.Database` or a `store.sql.SqliteFile`: metering runs
on plain driver transactions (`db.tx()`, see store/sql.py and store/meter.py),
not the ORM, because it runs for every request. Every write is one short
transaction (`BEGIN IMMEDIATE` on SQLite; rows locked with `FOR UPDATE` on
PostgreSQL). Holds are taken with conditional UPDATEs whose affected-row count
decides, so concurrent admissions can never all pass on the last credit, and a
balance net of holds never goes below zero. Usage is recorded in full,
idempotently by request id, with its counters, consumption and ledger entries
in the same transaction. `record` and `import` share one batch writer
(`_Batch`), so a single record and a million imported ones follow the same rules.

The catalog (models, aliases, groups, settings, plan terms) is cached per
database and reloaded when its stamp changes (every ORM write to those tables
sets a new one: see store/engine.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, Protocol

from planctl.domain import config, lifecycle, quota
from planctl.domain import keys as key_rules
from planctl.domain.catalog import Context, ModelPrices, PlanTerms, currency_decimals, parse_plan, resolve_model
from planctl.domain.clock import iso, period_bounds, start_of_local_day, zone
from planctl.domain.errors import InvalidInput, NotFound, Refused
from planctl.domain.ids import short_id
from planctl.domain.latency import bucket_of
from planctl.domain.secrets import digest
from planctl.store import meter
from planctl.store.meter import AccountRow, CounterRow, HoldRow, KeyRow, PackRow, SubRow, Window
from planctl.store.sql import Tx

HOLD_FOR = timedelta(minutes=10)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # window of a sub-user's running total


class MeterDb(Protocol):
    """What metering needs of a database: its identity and plain transactions."""

    url: str

    def tx(self, *, write: bool) -> Any: ...


# ---------------------------------------------------------------- the catalog, cached per stamp


class _Catalog:
    """Models, aliases, groups, settings and plan terms as of one catalog stamp."""

    def __init__(self, rows: meter.CatalogRows) -> None:
        self.models = {m[0]: ModelPrices(*m) for m in rows.models}
        self.aliases = dict(rows.aliases)
        self.ratios = dict(rows.groups)
        settings = config.effective(rows.settings)
        self.tz = zone(settings["reset_timezone"])
        currency = settings["currency"]
        self.context = Context(currency=currency, currency_decimals=currency_decimals(currency),
                               models=frozenset(self.models), groups=frozenset(self.ratios))
        self._terms: dict[int, PlanTerms] = {}
        self._billed: dict[str, str | None] = {}
        self._days: dict[date, tuple[tuple[datetime, datetime], str]] = {}

    def terms(self, tx: Tx, version_id: int) -> PlanTerms:
        terms = self._terms.get(version_id)
        if terms is None:  # plan versions are immutable
            terms = self._terms[version_id] = parse_plan(meter.plan_version_terms(tx, version_id), self.context)
        return terms

    def billed(self, requested: str) -> str | None:
        if requested not in self._billed:
            self._billed[requested] = resolve_model(requested, self.models, self.aliases).billed
        return self._billed[requested]

    def day(self, at: datetime) -> tuple[datetime, datetime]:
        """[start, end) in UTC of the natural day in the reset zone that contains `at`."""
        return self.local_day(at)[0]

    def local_day(self, at: datetime) -> tuple[tuple[datetime, datetime], str]:
        """That day's bounds and its date (YYYY-MM-DD), which usage records are filed under."""
        local = at.astimezone(self.tz).date()  # `at` is aware (validated on the way in)
        hit = self._days.get(local)
        if hit is None:
            hit = self._days[local] = ((start_of_local_day(local, self.tz),
                                        start_of_local_day(local + timedelta(days=1), self.tz)), local.isoformat())
        return hit


_CATALOGS: dict[str, tuple[int, _Catalog]] = {}


def _catalog(tx: Tx, db: MeterDb, *, write: bool) -> _Catalog:
    """The cached catalog when its stamp is current (one indexed read), else loaded afresh."""
    stamp = meter.catalog_stamp(tx)
    if stamp is None and write:  # a database from before stamps: give it one
        stamp = meter.new_catalog_stamp(tx)
    cached = _CATALOGS.get(db.url)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    cat = _Catalog(meter.catalog_rows(tx))
    if stamp is not None:
        _CATALOGS[db.url] = (stamp, cat)
    return cat


# ---------------------------------------------------------------- a key's state


@dataclass
class _Windows:
    period: tuple[datetime, datetime] | None
    day: tuple[datetime, datetime]


def _windows(cat: _Catalog, terms: PlanTerms | None, sub: SubRow | None, at: datetime) -> _Windows:
    period = None
    if terms is not None and terms.period is not None and sub is not None:
        period = period_bounds(max(at, sub.starts_at), terms.period, cat.tz, anchor=sub.starts_at)
    return _Windows(period, cat.day(at))


@dataclass
class _State:
    """Everything about one key at one instant that admission and charging read."""

    key: KeyRow
    account: AccountRow
    sub: SubRow | None
    terms: PlanTerms | None
    windows: _Windows
    window: dict[str, Window]  # period | day | key_day | subuser -> its counter's window
    at: datetime
    count: dict[str, CounterRow] = field(default_factory=dict)  # loaded by `_load` (or a batch, when needed)
    packs: list[PackRow] = field(default_factory=list)  # the extra-usage packs of the subscription's account
    loaded: bool = False  # counters and packs read
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
            extra_available=sum(p.available for p in self.live_packs()),
            payg_available=self.account.payg_balance - self.account.payg_reserved,
        )


Found = tuple[KeyRow, AccountRow, SubRow | None]


def _frame(tx: Tx, cat: _Catalog, found: Found, at: datetime) -> _State:
    """A key's state without its counters and packs: the windows it counts in at `at`."""
    key, account, sub = found
    terms = cat.terms(tx, sub.plan_version_id) if sub is not None else None
    win = _windows(cat, terms, sub, at)
    window: dict[str, Window] = {"key_day": (key.id, "key-day", win.day[0])}
    if sub is not None:
        window["day"] = (sub.id, "sub-day", win.day[0])
        if win.period:
            window["period"] = (sub.id, "sub-period", win.period[0])
    if account.parent_id:
        window["subuser"] = (account.id, "subuser", EPOCH)
    return _State(key, account, sub, terms, win, window, at)


def _counted(limits: quota.Limits) -> bool:
    """Does any counter matter to a decision or an answer under these limits?"""
    return any(v is not None for v in (limits.period_credit, limits.rpd, limits.tpd, limits.key_daily_limit,
                                       limits.key_rpd, limits.subuser_quota))


def _load(tx: Tx, cat: _Catalog, found: Found, at: datetime, *, write: bool, always: bool = False) -> _State:
    """A key's whole state: its counters (when they matter, or `always`) and packs, locked in a
    write on PostgreSQL."""
    state = _frame(tx, cat, found, at)
    _fill(tx, state, lock=write, counters=always or _counted(state.limits()))
    return state


def _as_read(_kind: str, _ident: Any, row: Any) -> Any:
    return row


def _fill(tx: Tx, state: _State, *, lock: bool, counters: bool = True, adopt: Any = _as_read) -> None:
    """Read a state's counters (zero when nothing limits or shows them) and its packs; `adopt`
    lets a batch keep one object per row (`_Changes.adopt`)."""
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


def _request(state: _State, billed: str | None, api: str, need: int, now: datetime) -> quota.Request:
    key, sub = state.key, state.sub
    return quota.Request(
        key_kind=key.kind, key_refusal=key_rules.key_refusal(key_rules.KeyState(key.status, key.expires_at), now),
        subscription_refusal=None if sub is None else lifecycle.availability(_sub_state(sub), now),
        billed_model=billed, group=key.group_name, api=api, need=need)


# ---------------------------------------------------------------- authorize


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


def authorize(db: MeterDb, secret: str, *, model: str, api: str = "responses", reserve: int | None = None,
              now: datetime, hold_for: timedelta = HOLD_FOR) -> Authorization:
    """Decide whether a request may run; with `reserve`, hold that much credit until it is recorded."""
    if api not in quota.API_TYPES:
        raise InvalidInput(f"unknown API type {api!r}: use {', '.join(quota.API_TYPES)}")
    if reserve is not None and reserve <= 0:
        raise InvalidInput("--reserve must be greater than zero")
    write = bool(reserve)
    if not write:
        _release_stale(db, now)
    with db.tx(write=write) as tx:
        if write:
            _expire(tx, now)
        found = key_by_secret(tx, secret, now, write=write)
        if found is None:
            return Authorization(False, "key_unknown", "no key has this secret", model)
        cat = _catalog(tx, db, write=write)
        state = _load(tx, cat, found, now, write=write)
        billed = cat.billed(model)
        limits, counters = state.limits(), state.counters()
        decision = quota.decide(_request(state, billed, api, reserve or 0, now), limits, counters)
        auth = _answer(state, decision, model, billed, limits, counters)
        if decision.allowed and reserve:
            res = _hold(tx, state, decision, limits, reserve, now, hold_for)
            auth.reservation_id, auth.reservation_expires_at = res.id, res.expires_at
        return auth


def _answer(state: _State, decision: quota.Decision, requested: str, billed: str | None, limits: quota.Limits,
            c: quota.Counters) -> Authorization:
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
    blocking = decision.reason or decision.lifted
    if blocking == "period_limit_reached" and win.period:
        next_reset = win.period[1]
    elif blocking in ("rpd_reached", "tpd_reached", "key_daily_limit_reached", "key_rpd_reached"):
        next_reset = win.day[1]
    else:
        next_reset = min([win.day[1]] + ([win.period[1]] if win.period else []))
    return Authorization(
        allowed=decision.allowed, reason=decision.reason, message=explain(decision, next_reset),
        requested_model=requested, billed_model=billed, key_id=state.key.id, account_id=state.key.account_id,
        subscription_id=state.sub.id if state.sub else None, pool=decision.pool, lifted=decision.lifted,
        remaining=remaining, next_reset=next_reset,
    )


MESSAGES = {
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


def explain(decision: quota.Decision, next_reset: datetime) -> str:
    if decision.allowed:
        if decision.lifted:
            return f"allowed on extra usage ({MESSAGES[decision.lifted]})"
        return f"allowed, charged to {decision.pool}"
    text = MESSAGES.get(decision.reason or "", decision.reason or "denied")
    if decision.reason in quota.BOUNDARIES or decision.reason in ("key_daily_limit_reached", "key_rpd_reached"):
        text += f"; it resets at {iso(next_reset)}"
    return text


# ---------------------------------------------------------------- balance changes


_FIELDS = {  # what an increment of each kind of row changes: (increment name, attribute of the row object)
    "key": (("used", "credit_used"), ("reserved", "credit_reserved")),
    "account": (("balance", "payg_balance"), ("reserved", "payg_reserved")),
    "sub": (("used", "credit_used"), ("reserved", "credit_reserved")),
    "pack": (("used", "used"), ("reserved", "reserved")),
    "counter": (("requests", "requests"), ("tokens", "tokens"), ("credit", "credit"), ("reserved", "reserved")),
}

_ATTRIBUTES = {kind: dict(fields) for kind, fields in _FIELDS.items()}


class _Changes:
    """Increments to balances and counters, and ledger entries, written together at the end of a
    transaction: one statement per table, however many requests a batch charges.

    It also holds the rows a batch has read, one object per row (`adopt`): an increment is
    applied to the object as well, and a row read later gets the increments already pending,
    so a batch always sees the database plus its own changes.
    """

    def __init__(self) -> None:
        self.pending: dict[str, dict[Any, dict[str, Any]]] = {kind: {} for kind in _FIELDS}
        self.rows: dict[tuple[str, Any], Any] = {}
        self.ledger: list[dict[str, Any]] = []

    def add(self, kind: str, ident: Any, **amounts: int) -> None:
        row = self.pending[kind].get(ident)
        if row is None:
            row = self.pending[kind][ident] = {"id": ident, "last": None, **{n: 0 for n, _ in _FIELDS[kind]}}
        obj = self.rows.get((kind, ident))
        for name, amount in amounts.items():
            if amount:
                row[name] += amount
                if obj is not None:
                    attribute = _ATTRIBUTES[kind][name]
                    setattr(obj, attribute, getattr(obj, attribute) + amount)

    def touch(self, key_id: str, at: datetime) -> None:
        """A key was used at `at` (its last use only moves forward)."""
        self.add("key", key_id)
        row, obj = self.pending["key"][key_id], self.rows.get(("key", key_id))
        if row["last"] is None or at > row["last"]:
            row["last"] = at
        if obj is not None and (obj.last_used_at is None or at > obj.last_used_at):
            obj.last_used_at = at

    def adopt(self, kind: str, ident: Any, obj: Any) -> Any:
        """The batch's object for a row just read: the one it already has, or this one with the
        increments pending for it."""
        known = self.rows.get((kind, ident))
        if known is not None:
            return known
        row = self.pending[kind].get(ident)
        if row is not None:
            for name, attribute in _FIELDS[kind]:
                setattr(obj, attribute, getattr(obj, attribute) + row[name])
            if kind == "key" and row["last"] is not None and (obj.last_used_at is None or row["last"] > obj.last_used_at):
                obj.last_used_at = row["last"]
        self.rows[(kind, ident)] = obj
        return obj

    def entry(self, *, at: datetime, account_id: str, pool: str, amount: int, kind: str, key_id: str | None,
              reason: str, subscription_id: str | None = None, pack_id: int | None = None,
              request_id: str | None = None) -> None:
        self.ledger.append({"at": at, "account_id": account_id, "pool": pool, "subscription_id": subscription_id,
                            "pack_id": pack_id, "key_id": key_id, "kind": kind, "amount": amount, "order_id": None,
                            "request_id": request_id, "reason": reason})

    def apply(self, tx: Tx) -> None:
        """Keys, accounts and subscriptions in the order they are locked everywhere else."""
        pending = self.pending
        meter.charge_keys(tx, list(pending["key"].values()))
        meter.charge_payg(tx, list(pending["account"].values()))
        meter.charge_subscriptions(tx, list(pending["sub"].values()))
        meter.charge_packs(tx, list(pending["pack"].values()))
        meter.add_to_counters(tx, list(pending["counter"].values()))
        meter.insert_ledger(tx, self.ledger)
        self.pending = {kind: {} for kind in _FIELDS}
        self.ledger = []


# ---------------------------------------------------------------- holds


def _hold(tx: Tx, state: _State, decision: quota.Decision, limits: quota.Limits, amount: int, now: datetime,
          hold_for: timedelta) -> HoldRow:
    """Hold `amount` against every pool and limit the request would draw from, or refuse."""
    holds: dict[str, Any] = {}

    def refuse(reason: str) -> Refused:
        return Refused(f"{MESSAGES[reason]} (taken by a concurrent request)", reason=reason)

    if decision.pool == "payg":
        if not meter.hold_payg(tx, state.account.id, amount):
            raise refuse("payg_balance_empty")
        holds["payg"] = amount
    elif decision.pool == "extra":
        draws, left = quota.split_extra(amount, [(p.id, p.available) for p in state.live_packs()])
        if left or not all(meter.hold_pack(tx, pack_id, take) for pack_id, take in draws):
            raise refuse(decision.lifted or "credit_exhausted")
        holds["packs"] = {str(pack_id): take for pack_id, take in draws}
    sub = state.sub
    if sub is not None and decision.pool == "plan":
        if not meter.hold_subscription(tx, sub.id, amount):
            raise refuse("credit_exhausted")
        holds["plan"] = amount
        if "period" in state.window:
            capped = limits.period_credit is not None and limits.period_limit_enabled
            if not meter.hold_counter(tx, state.window["period"], amount, limits.period_credit if capped else None):
                raise refuse("period_limit_reached")
            holds["period"] = [iso(state.window["period"][2]), amount]
        if state.key.credit_cap is not None:  # a key's holds only matter to its cap
            if not meter.hold_key(tx, state.key.id, amount):
                raise refuse("key_credit_cap_reached")
            holds["key"] = amount
        if "subuser" in state.window:
            if not meter.hold_counter(tx, state.window["subuser"], amount, limits.subuser_quota):
                raise refuse("subuser_quota_reached")
            holds["subuser"] = amount
    res = HoldRow(id=short_id("res", 10), key_id=state.key.id, account_id=state.key.account_id,
                  subscription_id=sub.id if sub else None, pool=decision.pool or "plan", amount=amount, holds=holds,
                  status="held", created_at=now, expires_at=now + hold_for)
    meter.insert_hold(tx, res)
    changes = _Changes()
    _hold_ledger(changes, res, now, sign=-1, kind="reserve")
    meter.insert_ledger(tx, changes.ledger)
    return res


def _hold_ledger(changes: _Changes, res: HoldRow, now: datetime, *, sign: int, kind: str) -> None:
    """Holds take from the available balance: a `reserve` entry, and a `release` when they end."""
    base = dict(at=now, account_id=res.account_id, key_id=res.key_id, kind=kind, request_id=res.request_id,
                reason=f"{kind} {res.id}")
    holds = res.holds
    if "plan" in holds:
        changes.entry(**base, pool="plan", subscription_id=res.subscription_id, amount=sign * holds["plan"])
    for pack_id, take in holds.get("packs", {}).items():
        changes.entry(**base, pool="extra", pack_id=int(pack_id), amount=sign * take)
    if "payg" in holds:
        changes.entry(**base, pool="payg", amount=sign * holds["payg"])


def _release(tx: Tx, res: HoldRow, now: datetime, status: str, changes: _Changes,
             request_id: str | None = None) -> bool:
    """Give a hold back (settled by its record, released by hand, or expired), exactly once:
    the status change is conditional, so of two transactions closing the same hold one wins."""
    if not meter.close_hold(tx, res.id, status, now, request_id):
        return False
    _hold_ledger(changes, res, now, sign=+1, kind="release")
    res.status, res.closed_at, res.request_id = status, now, request_id or res.request_id
    holds = res.holds
    if "key" in holds:
        changes.add("key", res.key_id, reserved=-holds["key"])
    if "plan" in holds:
        changes.add("sub", res.subscription_id, reserved=-holds["plan"])
    if "period" in holds:
        start = datetime.fromisoformat(holds["period"][0])
        changes.add("counter", (res.subscription_id, "sub-period", start), reserved=-holds["period"][1])
    if "subuser" in holds:
        changes.add("counter", (res.account_id, "subuser", EPOCH), reserved=-holds["subuser"])
    for pack_id, take in holds.get("packs", {}).items():
        changes.add("pack", int(pack_id), reserved=-take)
    if "payg" in holds:
        changes.add("account", res.account_id, reserved=-holds["payg"])
    return True


def _expire(tx: Tx, now: datetime) -> int:
    """Release every hold past its expiry."""
    stale = meter.stale_holds(tx, now)
    if not stale:
        return 0
    changes = _Changes()
    released = sum(_release(tx, res, now, "expired", changes) for res in stale)
    changes.apply(tx)
    return released


def _release_stale(db: MeterDb, now: datetime) -> None:
    """Release expired holds first when there are any (a cheap read when there are none)."""
    with db.tx(write=False) as tx:
        stale = meter.any_stale(tx, now)
    if stale:
        with db.tx(write=True) as tx:
            _expire(tx, now)


def list_reservations(db: MeterDb, *, now: datetime, status: str | None = "held", key: str | None = None,
                      limit: int = 1000) -> list[HoldRow]:
    if status is not None and status not in meter.HOLD_STATUSES:
        raise InvalidInput(f"unknown reservation status {status!r}: use {', '.join(meter.HOLD_STATUSES)} or all")
    with db.tx(write=True) as tx:
        _expire(tx, now)
        key_id = meter.resolve_key(tx, key) if key else None
        return meter.list_holds(tx, status=status, key_id=key_id, limit=limit)


def release(db: Any, reservation_id: str, *, caller: Any, now: datetime) -> HoldRow:
    """Release a hold by hand (audited)."""
    from planctl.services import audit

    with db.write() as session:
        tx = Tx.within(session)
        _expire(tx, now)
        res = meter.get_hold(tx, reservation_id)
        if res is None:
            raise NotFound(f"unknown reservation {reservation_id!r}; see 'planctl reservations list'")
        changes = _Changes()
        if res.status != "held" or not _release(tx, res, now, "released", changes):
            raise Refused(f"reservation {res.id} is already {res.status}", reason="reservation_closed")
        changes.apply(tx)
        audit.record(session, caller, now, f"reservation:{res.id}", f"released {res.amount} µcr by hand")
        return res


# ---------------------------------------------------------------- recording


@dataclass(slots=True)  # not frozen: a frozen dataclass costs microseconds to build, per imported line
class UsageInput:
    request_id: str
    model: str
    input_tokens: int
    output_tokens: int
    status_code: int
    key: str | None = None  # key id, name or visible prefix
    secret: str | None = None  # or the key's secret
    cached_tokens: int = 0
    latency_ms: int | None = None
    api: str = "responses"
    stream: bool = False
    at: datetime | None = None
    reservation: str | None = None
    error: str | None = None


@dataclass
class Recorded:
    request_id: str
    duplicate: bool
    note: str | None = None
    row: dict[str, Any] | None = None  # the usage record's values as written

    @property
    def record(self) -> SimpleNamespace | None:
        """The usage record's values by attribute (`r.record.cost`)."""
        return None if self.row is None else SimpleNamespace(**self.row)


def validate(u: UsageInput) -> None:
    """Shape checks that need no database (bad lines are rejected before anything is written)."""
    if not u.request_id or len(u.request_id) > 200:
        raise InvalidInput("request id must have 1 to 200 characters")
    for name, value in (("input", u.input_tokens), ("cached", u.cached_tokens), ("output", u.output_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"{name} tokens must be a whole number ≥ 0, got {value!r}")
    if u.cached_tokens > u.input_tokens:
        raise InvalidInput("cached tokens cannot exceed input tokens (input counts the cached ones)")
    if not isinstance(u.status_code, int) or not 100 <= u.status_code <= 599:
        raise InvalidInput(f"status must be an HTTP status code, got {u.status_code!r}")
    if u.latency_ms is not None and u.latency_ms < 0:
        raise InvalidInput("latency must be ≥ 0 ms")
    if u.api not in quota.API_TYPES:
        raise InvalidInput(f"unknown API type {u.api!r}: use {', '.join(quota.API_TYPES)}")
    if (u.key is None) == (u.secret is None):
        raise InvalidInput("give the key (id, name or prefix) or its secret, not both")
    if u.at is not None and u.at.tzinfo is None:
        raise InvalidInput("the request time needs a UTC offset")


def record(db: MeterDb, u: UsageInput, *, now: datetime) -> Recorded:
    """Record one request; a request id seen before changes nothing (`duplicate`)."""
    validate(u)
    with db.tx(write=True) as tx:
        batch = _Batch(tx, db, now)
        if batch.known_ids([u.request_id]):
            return Recorded(u.request_id, True, note="request id already recorded: nothing changed")
        result = batch.charge(u)
        batch.flush()
        return result


class _Batch:
    """Charges usage records in one write transaction.

    Rows are read when first needed and kept for the whole batch, one object per
    row (`_Changes.adopt`), so every request sees the ones before it; increments
    collect in `_Changes` and are written, with the usage records and rollups,
    by `flush`. On PostgreSQL every row read was locked, so what the batch sees
    stays true until the commit.
    """

    def __init__(self, tx: Tx, db: MeterDb, now: datetime) -> None:
        self.tx, self.now = tx, now
        self.cat = _catalog(tx, db, write=True)
        self.changes = _Changes()
        self.states: dict[tuple[str, datetime], _State] = {}
        self.key_ids: dict[str, str] = {}  # key reference -> key id
        self.found: dict[str, Found] = {}  # key id -> its rows
        self.seen: set[str] = set()
        self.records: list[dict[str, Any]] = []

    def known_ids(self, request_ids: list[str]) -> set[str]:
        return meter.known_request_ids(self.tx, request_ids) | (self.seen & set(request_ids))

    def key(self, u: UsageInput) -> Found:
        ref = u.key if u.key is not None else "secret:" + (u.secret or "")
        key_id = self.key_ids.get(ref)
        if key_id is None:
            if u.key is not None:
                hit = meter.key_by(self.tx, "id", u.key, write=True)  # usually the id: one statement
                if hit is None:
                    hit = meter.key_by(self.tx, "id", meter.resolve_key(self.tx, u.key), write=True)
            else:
                hit = key_by_secret(self.tx, u.secret or "", self.now, write=True)
                if hit is None:
                    raise NotFound("no key has this secret")
            assert hit is not None
            key_id = self.key_ids[ref] = hit[0].id
            if key_id not in self.found:
                key, account, sub = hit
                adopt = self.changes.adopt
                self.found[key_id] = (adopt("key", key.id, key), adopt("account", account.id, account),
                                      None if sub is None else adopt("sub", sub.id, sub))
        return self.found[key_id]

    def state(self, found: Found, at: datetime, day: datetime) -> _State:
        """The key's windows at `at`, in the natural day starting at `day` (its counters and packs
        are read only when a decision needs them)."""
        state = self.states.get((found[0].id, day))
        if state is None or (state.windows.period and not state.windows.period[0] <= at < state.windows.period[1]):
            state = self.states[(found[0].id, day)] = _frame(self.tx, self.cat, found, at)
        state.at = at
        return state

    def filled(self, state: _State) -> _State:
        if not state.loaded:
            _fill(self.tx, state, lock=True, adopt=self.changes.adopt)
        return state

    def charge(self, u: UsageInput) -> Recorded:
        at = u.at or self.now
        found = self.key(u)
        billed = self.cat.billed(u.model)
        if billed is None:
            raise InvalidInput(f"unknown model {u.model!r}: no model or alias matches it")
        (day, _), local_day = self.cat.local_day(at)
        state = self.state(found, at, day)
        key = state.key
        ratio = self.cat.ratios.get(key.group_name, 1_000_000)
        cost = quota.request_cost(self.cat.models[billed], input_tokens=u.input_tokens,
                                  cached_tokens=u.cached_tokens, output_tokens=u.output_tokens, ratio_ppm=ratio)
        note, res = None, None
        if u.reservation:
            res = meter.get_hold(self.tx, u.reservation)
            if res is None or res.key_id != key.id:
                raise InvalidInput(f"reservation {u.reservation!r} does not belong to this key")
            # settling: the hold is given back first, then the real cost is charged
            if res.status != "held" or not _release(self.tx, res, self.now, "settled", self.changes, u.request_id):
                note, res = f"reservation {u.reservation} was already {res.status}; charged without it", None
        pool = res.pool if res is not None else self._pool(state)
        plan, extra, payg = self._split(state, pool, cost, capped=res is not None)
        extra_total = sum(t for _, t in extra)
        self._apply(state, u, at, plan, extra, payg)
        parts = [name for name, amount in (("plan", plan), ("extra", extra_total), ("payg", payg)) if amount]
        row = dict(request_id=u.request_id, at=at, local_day=local_day,
                   account_id=key.account_id, key_id=key.id, subscription_id=key.subscription_id,
                   group_name=key.group_name, requested_model=u.model, billed_model=billed, api=u.api,
                   input_tokens=u.input_tokens, cached_tokens=u.cached_tokens, output_tokens=u.output_tokens,
                   cost=cost, charged_plan=plan, charged_extra=extra_total, charged_payg=payg,
                   pool=parts[0] if len(parts) == 1 else "mixed" if parts else "none",
                   status_code=u.status_code, latency_ms=u.latency_ms, stream=u.stream,
                   error=u.error[:2000] if u.error else None, reservation_id=u.reservation)
        self.records.append(row)
        self.seen.add(u.request_id)
        if cost > plan + extra_total + payg:
            note = (f"cost {cost} µcr exceeded what the hold and the balance allowed; "
                    f"{plan + extra_total + payg} µcr charged")
        return Recorded(u.request_id, False, note, row)

    def _pool(self, state: _State) -> str:
        if state.key.kind == "payg":
            return "payg"
        if not quota.has_boundary(state.limits()):
            return "plan"
        self.filled(state)
        counters = state.counters()
        boundary = quota.plan_boundary(state.limits(), counters)
        return "extra" if boundary and counters.extra_available > 0 else "plan"

    def _split(self, state: _State, pool: str, cost: int, *, capped: bool) -> tuple[int, list[tuple[int, int]], int]:
        """Plan / extra draws / PAYG. Without a hold an admitted request is charged in full (it may
        overshoot a limit); with one, never beyond what is available."""
        if pool == "payg":
            available = state.account.payg_balance - state.account.payg_reserved
            return 0, [], min(cost, max(available, 0)) if capped else cost
        plan_cost, draws = cost, []
        if pool == "extra":
            self.filled(state)
            found, plan_cost = quota.split_extra(cost, [(p.id, p.available) for p in state.live_packs()])
            draws = list(found)
        sub = state.sub
        if capped and sub is not None and sub.credit_granted is not None:
            available = sub.credit_granted - sub.credit_used - sub.credit_reserved
            plan_cost = min(plan_cost, max(available, 0))
        return plan_cost, draws, 0

    def _apply(self, state: _State, u: UsageInput, at: datetime, plan: int, extra: list[tuple[int, int]],
               payg: int) -> None:
        changes, key, sub, window = self.changes, state.key, state.sub, state.window
        base = dict(at=at, key_id=key.id, kind="debit", request_id=u.request_id, reason=f"usage {u.model}")
        if sub is not None:
            changes.add("sub", sub.id, used=plan)
            changes.add("counter", window["day"], requests=1, tokens=u.input_tokens + u.output_tokens)
            for name in ("period", "subuser"):
                if name in window and plan:
                    changes.add("counter", window[name], credit=plan)
            if plan:
                changes.entry(**base, account_id=sub.account_id, pool="plan", subscription_id=sub.id, amount=-plan)
        for pack_id, take in extra:
            changes.add("pack", pack_id, used=take)
            changes.entry(**base, account_id=state.extra_owner_id, pool="extra", pack_id=pack_id, amount=-take)
        if payg:
            changes.add("account", state.account.id, balance=-payg)
            changes.entry(**base, account_id=state.account.id, pool="payg", amount=-payg)
        changes.add("counter", window["key_day"], requests=1, credit=plan + sum(t for _, t in extra) + payg)
        changes.add("key", key.id, used=plan)
        changes.touch(key.id, at)

    def flush(self) -> None:
        self.changes.apply(self.tx)
        if self.records:
            meter.insert_usage(self.tx, self.records)
            meter.roll_up(self.tx, rollups(self.records))
        self.records = []


def status_class(code: int) -> str:
    return f"{code // 100}xx"


def rollups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Usage records summed into daily rollup rows (one per day, key, group, model, API, status class)."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in records:
        dims = (r["local_day"], r["key_id"], r["group_name"], r["billed_model"], r["api"], status_class(r["status_code"]))
        row = rows.get(dims)
        if row is None:
            row = rows[dims] = dict(zip(meter.ROLLUP_DIMENSIONS, dims), account_id=r["account_id"],
                                    subscription_id=r["subscription_id"], last_at=r["at"],
                                    **{name: 0 for name in meter.ROLLUP_SUMS})
        row["requests"] += 1
        for name in ("input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan", "charged_extra",
                     "charged_payg"):
            row[name] += r[name]
        if r["latency_ms"] is not None:
            row["latency_sum"] += r["latency_ms"]
            row["latency_count"] += 1
            row[f"lat_{bucket_of(r['latency_ms'])}"] += 1
        if r["at"] > row["last_at"]:
            row["last_at"] = r["at"]
    return list(rows.values())


# ---------------------------------------------------------------- import


@dataclass
class ImportReport:
    new: int = 0
    duplicate: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)


def import_usage(db: MeterDb, lines: Any, *, now: datetime, batch_size: int = 2_000,
                 progress: Any = None) -> ImportReport:
    """Record (line number, UsageInput | error text) pairs in batches, one transaction each.

    A line that cannot be charged is rejected whole and reported; the others go on.
    """
    report = ImportReport()
    chunk: list[tuple[int, Any]] = []
    for item in lines:
        chunk.append(item)
        if len(chunk) >= batch_size:
            _import_chunk(db, chunk, now, report)
            chunk = []
            if progress:
                progress(report)
    if chunk:
        _import_chunk(db, chunk, now, report)
        if progress:
            progress(report)
    return report


def _import_chunk(db: MeterDb, chunk: list[tuple[int, Any]], now: datetime, report: ImportReport) -> None:
    valid: list[tuple[int, UsageInput]] = []
    for number, item in chunk:
        if isinstance(item, str):
            report.rejected.append((number, item))
            continue
        try:
            validate(item)
            valid.append((number, item))
        except InvalidInput as exc:
            report.rejected.append((number, exc.message))
    with db.tx(write=True) as tx:
        batch = _Batch(tx, db, now)
        known = batch.known_ids([u.request_id for _, u in valid])
        for number, u in valid:
            if u.request_id in known or u.request_id in batch.seen:
                report.duplicate += 1
                continue
            try:
                _check_chargeable(batch, u)
            except (InvalidInput, NotFound) as exc:
                report.rejected.append((number, exc.message))
                continue
            batch.charge(u)
            report.new += 1
        batch.flush()
    report.rejected.sort(key=lambda r: r[0])


def _check_chargeable(batch: _Batch, u: UsageInput) -> None:
    """Everything that could make charging fail, checked before anything is changed."""
    key = batch.key(u)[0]
    if batch.cat.billed(u.model) is None:
        raise InvalidInput(f"unknown model {u.model!r}")
    if u.reservation:
        res = meter.get_hold(batch.tx, u.reservation)
        if res is None or res.key_id != key.id:
            raise InvalidInput(f"reservation {u.reservation!r} does not belong to this key")


# ---------------------------------------------------------------- limits


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
    suggestions: list[str]


def limits_view(db: Any, ref: str, *, now: datetime) -> LimitsView:
    """The limits of a subscription (its subscription key) or of one key, side by side."""
    from planctl.services.sales import resolve_subscription
    from planctl.store.tables import ApiKey
    from sqlmodel import col, select

    _release_stale(db, now)
    with db.read() as session:
        tx = Tx.within(session)
        try:
            sub = resolve_subscription(session, ref)
        except NotFound:
            key_id = meter.resolve_key(tx, ref)
        else:
            key_id = session.execute(select(ApiKey.id).where(ApiKey.subscription_id == sub.id).order_by(
                col(ApiKey.kind) != "subscription", ApiKey.created_at)).scalars().first()
            if key_id is None:
                raise NotFound(f"subscription {ref!r} has no key")
        found = meter.key_by(tx, "id", key_id, write=False)
        assert found is not None
        cat = _catalog(tx, db, write=False)
        state = _load(tx, cat, found, now, write=False, always=True)
        limits, counters, terms = state.limits(), state.counters(), state.terms
        request = _request(state, terms.models[0] if terms else next(iter(cat.models), None),
                           terms.api_types[0] if terms else "responses", 0, now)
        decision = quota.decide(request, limits, counters)
        boundary = quota.plan_boundary(limits, counters) if state.sub else None
        return LimitsView(
            subscription_id=state.sub.id if state.sub else None, key_id=key_id,
            plan=terms.slug if terms else None, counters=counters, limits=limits,
            blocking=decision.reason or boundary, lifted_by_extra=bool(decision.allowed and decision.lifted),
            period=state.windows.period, day=state.windows.day, reset_zone=cat.tz.key,
            can_disable_limit=bool(terms and terms.period_limit_can_disable),
            suggestions=_suggestions(decision, boundary, state, counters),
        )


def _suggestions(decision: quota.Decision, boundary: str | None, state: _State, c: quota.Counters) -> list[str]:
    out = []
    reason = decision.reason
    sub = state.sub
    if boundary and not c.extra_available and sub is not None:
        out.append(f"buy extra usage: planctl extra buy extra-50 --account {sub.account_id}")
    if boundary == "period_limit_reached" and state.terms and state.terms.period_limit_can_disable \
            and sub is not None and sub.period_limit_enabled:
        out.append(f"disable the periodic limit to use the total credit: planctl limits disable {sub.id}")
    if reason in ("credit_exhausted", "subscription_expired") and sub is not None:
        out.append(f"renew (inside the renewal window) or ask for a direct renewal: planctl renew {sub.id}")
    if reason == "payg_balance_empty":
        out.append(f"top up: planctl topup {state.account.id} 100")
    return out


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
