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

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from operator import itemgetter
from types import SimpleNamespace
from typing import Any, Protocol

from planctl.domain import config, denials, lifecycle, quota
from planctl.domain import usage as bounds
from planctl.domain import keys as key_rules
from planctl.domain.catalog import Context, ModelPrices, PlanTerms, currency_decimals, parse_plan, resolve_model
from planctl.domain.clock import iso, period_bounds, start_of_local_day, zone
from planctl.domain.errors import Conflict, InvalidInput, Note, NotFound, Refused
from planctl.domain.ids import short_id
from planctl.domain.latency import bucket_of
from planctl.domain.secrets import digest, redact
from planctl.store import meter, refs
from planctl.store.columns import (CONTENT_COLUMNS, ROLLUP_SUMS, U_ACCOUNT, U_API, U_BILLED, U_CACHED,
                                   U_CHARGED_EXTRA, U_CHARGED_PAYG, U_CHARGED_PLAN, U_COST, U_GROUP, U_INPUT, U_KEY,
                                   U_LATENCY, U_LOCAL_DAY, U_OUTPUT, U_STATUS, U_SUBSCRIPTION, USAGE_COLUMNS)
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
        self._last_day: tuple[tuple[datetime, datetime], str] | None = None

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
        last = self._last_day
        if last is not None and last[0][0] <= at < last[0][1]:  # most records fall in the day before them
            return last
        local = at.astimezone(self.tz).date()  # `at` is aware (validated on the way in)
        hit = self._days.get(local)
        if hit is None:
            hit = self._days[local] = ((start_of_local_day(local, self.tz),
                                        start_of_local_day(local + timedelta(days=1), self.tz)), local.isoformat())
        self._last_day = hit
        return hit


_CATALOGS: dict[str, tuple[int, _Catalog]] = {}


_UNREAD = -1  # a catalog stamp not read yet


def _catalog(tx: Tx, db: MeterDb, *, write: bool, stamp: int | None = _UNREAD) -> _Catalog:
    """The cached catalog when its stamp (read here, or given) is current, else loaded afresh."""
    if stamp == _UNREAD:
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


def _frame(tx: Tx, cat: _Catalog, found: Found, at: datetime, version: int | None = None) -> _State:
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
    return _State(key, account, sub, terms, win, window, at)


def _version_at(tx: Tx, sub: SubRow, at: datetime) -> int:
    """The plan version of the subscription's term in force at `at` (as sales.version_at)."""
    row = tx.one("SELECT plan_version_id FROM subscription_terms WHERE subscription_id = :s AND starts_at <= :at "
                 "ORDER BY starts_at DESC LIMIT 1", {"s": sub.id, "at": tx.at(at)})
    return sub.plan_version_id if row is None else int(row[0])


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
        raise InvalidInput("the amount to reserve must be greater than zero", code="reserve_not_positive")
    write = bool(reserve)
    for attempt in range(2):  # a hold past its expiry is released first (the read says whether any is)
        with db.tx(write=write) as tx:
            read = _key_at_secret(tx, secret, now, write=write)
            if read is not None and read.stale and write and tx.sqlite:  # BEGIN IMMEDIATE excludes every
                _expire(tx, now)  # other writer: no lock order to keep
                read = _key_at_secret(tx, secret, now, write=write)
            if read is None:
                return Authorization(False, "key_unknown", "no key has this secret", model)
            if not read.stale or attempt or (write and tx.sqlite):
                return _admit(tx, db, read, model, api, reserve, now, hold_for)
        _release_stale(db, now)  # in its own transaction: it locks other keys' rows (store/meter.py)
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


def _admit(tx: Tx, db: MeterDb, read: meter.KeyAt, model: str, api: str, reserve: int | None, now: datetime,
           hold_for: timedelta) -> Authorization:
    write = bool(reserve)
    cat = _catalog(tx, db, write=write, stamp=read.stamp)
    state = _frame(tx, cat, read.found, now, read.version_id)
    state.extra = read.extra
    limits = state.limits()
    state.loaded = True  # the packs are summed in `read`: listed only when extra usage is held
    state.count = {name: CounterRow() for name in state.window}
    held = (0, 0)  # open holds of the key, and of the key and its subscription
    if _counted(limits):
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
    decision = quota.decide(_request(state, billed, api, reserve or 0, now), limits, counters)
    auth = _answer(state, decision, model, billed, limits, counters, cat.tz)
    if decision.allowed and reserve:
        res = _hold(tx, state, decision, limits, reserve, now, hold_for)
        auth.reservation_id, auth.reservation_expires_at = res.id, res.expires_at
    return auth


def _answer(state: _State, decision: quota.Decision, requested: str, billed: str | None, limits: quota.Limits,
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


# ---------------------------------------------------------------- balance changes


_MOVED = {  # the fields of each kind of row that charging and holds move, always by increments
    "key": ("credit_used", "credit_reserved"),
    "account": ("payg_balance", "payg_reserved"),
    "sub": ("credit_used", "credit_reserved"),
    "pack": ("used", "reserved"),
    "counter": ("requests", "tokens", "credit", "reserved"),
}


def _blank(kind: str, ident: Any) -> Any:
    """A row moved before it is read: zeros, so that its fields hold only the changes."""
    if kind == "counter":
        return CounterRow()
    if kind == "pack":
        return PackRow(ident, 0, 0, 0, None)
    if kind == "key":
        return KeyRow(ident, "", None, "", "", "", "", None, None, 0, 0, None, None, None, None)
    if kind == "account":
        return AccountRow(ident, None, None, 0, 0)
    return SubRow(ident, "", 0, "", EPOCH, EPOCH, 1, None, 0, 0, True)


class _Changes:
    """The rows one transaction reads or moves, one object per row, and its ledger entries.

    Charging changes the objects in place (`sub.credit_used += plan`), so each
    request of a batch sees the ones before it; `apply` writes what every row
    moved since it was read, as increments: one statement per table, however
    many requests the batch charges. A row moved before it is read starts blank
    (`row`); reading it later (`adopt`) puts the database's values under the
    changes.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, Any], Any] = {}
        self.read: dict[tuple[str, Any], tuple[int, ...]] = {}  # the moved fields as read (or last applied)
        self.blank: set[tuple[str, Any]] = set()  # rows not read from the database yet
        self.last_used: dict[str, datetime] = {}  # key id -> its latest use in this transaction
        self.ledger: list[tuple[Any, ...]] = []  # rows of LEDGER_COLUMNS, `at` as stored
        self.plan_debits: list[tuple[Any, ...]] = []  # usage charged to plan credit (meter.insert_plan_debits)

    def row(self, kind: str, ident: Any) -> Any:
        """The object of a row, blank when it has not been read."""
        obj = self.rows.get((kind, ident))
        if obj is None:
            obj = self.rows[(kind, ident)] = _blank(kind, ident)
            self.read[(kind, ident)] = (0,) * len(_MOVED[kind])
            self.blank.add((kind, ident))
        return obj

    def adopt(self, kind: str, ident: Any, obj: Any) -> Any:
        """The transaction's object for a row just read: the one it already has (the database's
        values under its changes, if it was blank), or this one."""
        key = (kind, ident)
        known = self.rows.get(key)
        names = _MOVED[kind]
        if known is None:
            self.rows[key] = obj
            self.read[key] = tuple([getattr(obj, name) for name in names])
            return obj
        if key in self.blank:
            self.blank.discard(key)
            moved = [getattr(known, name) - base for name, base in zip(names, self.read[key])]
            for slot in obj.__slots__:
                setattr(known, slot, getattr(obj, slot))
            self.read[key] = tuple([getattr(obj, name) for name in names])
            for name, amount in zip(names, moved):
                setattr(known, name, getattr(known, name) + amount)
        return known

    def used(self, key_id: str, at: datetime) -> None:
        """A key was used at `at` (its last use only moves forward)."""
        last = self.last_used.get(key_id)
        if last is None or at > last:
            self.last_used[key_id] = at

    def entry(self, stored_at: Any, account_id: str, pool: str, subscription_id: str | None, pack_id: int | None,
              key_id: str | None, kind: str, amount: int, request_id: str | None, reason: str) -> None:
        """A ledger entry, its values in the order of LEDGER_COLUMNS (no order: metering's own)."""
        self.ledger.append((stored_at, account_id, pool, subscription_id, pack_id, key_id, kind, amount, None,
                            request_id, reason))

    def apply(self, tx: Tx) -> None:
        """Keys, accounts and subscriptions in the order they are locked everywhere else."""
        moved: dict[str, list[tuple[Any, list[int]]]] = {kind: [] for kind in _MOVED}
        for key, obj in self.rows.items():
            kind, ident = key
            names = _MOVED[kind]
            now = [getattr(obj, name) for name in names]
            delta = [value - base for value, base in zip(now, self.read[key])]
            if any(delta) or (kind == "key" and ident in self.last_used):
                moved[kind].append((ident, delta))
                self.read[key] = tuple(now)
        for rows in moved.values():
            rows.sort(key=itemgetter(0))  # every writer moves rows in one order: no deadlock
        last = self.last_used
        meter.charge_keys(tx, [{"id": i, "used": d[0], "reserved": d[1], "last": last.get(i)} for i, d in moved["key"]])
        meter.charge_payg(tx, [{"id": i, "balance": d[0], "reserved": d[1]} for i, d in moved["account"]])
        meter.charge_subscriptions(tx, [{"id": i, "used": d[0], "reserved": d[1]} for i, d in moved["sub"]])
        meter.charge_packs(tx, [{"id": i, "used": d[0], "reserved": d[1]} for i, d in moved["pack"]])
        meter.add_to_counters(tx, [{"id": w, "requests": d[0], "tokens": d[1], "credit": d[2], "reserved": d[3]}
                                   for w, d in moved["counter"]])
        meter.insert_ledger(tx, self.ledger)
        meter.insert_plan_debits(tx, self.plan_debits)
        self.last_used, self.ledger, self.plan_debits = {}, [], []


# ---------------------------------------------------------------- holds


def _hold(tx: Tx, state: _State, decision: quota.Decision, limits: quota.Limits, amount: int, now: datetime,
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
    changes = _Changes()
    _hold_ledger(changes, res, tx.at(now), sign=-1, kind="reserve")
    meter.insert_ledger(tx, changes.ledger)
    tx.send()  # every conditional update checked (a refusal raised) here, before the commit
    return res


def _hold_ledger(changes: _Changes, res: HoldRow, stored_now: Any, *, sign: int, kind: str) -> None:
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


def _release(tx: Tx, res: HoldRow, now: datetime, status: str, changes: _Changes,
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


def _expire(tx: Tx, now: datetime) -> int:
    """Release every hold past its expiry."""
    stale = meter.stale_holds(tx, now)
    if not stale:
        return 0
    meter.lock_owners(tx, [res.key_id for res in stale])
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
    _release_stale(db, now)
    with db.tx(write=False) as tx:
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
            raise NotFound(f"unknown reservation {reservation_id!r}", code="unknown_reservation")
        meter.lock_owners(tx, [res.key_id])
        changes = _Changes()
        if res.status != "held" or not _release(tx, res, now, "released", changes):
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
        changes = _Changes()
        if not _release(tx, res, now, "released", changes):
            return False
        changes.apply(tx)
        return True


def quote(db: MeterDb, model: str, *, input_tokens: int, output_tokens: int) -> int | None:
    """What a request would cost at the dearest group ratio (None for a model nobody knows): what
    a gateway needs to size a hold before it knows the key."""
    with db.tx(write=False) as tx:
        cat = _catalog(tx, db, write=False)
    billed = cat.billed(model)
    if billed is None:
        return None
    ratio = max(cat.ratios.values(), default=1_000_000)
    return quota.request_cost(cat.models[billed], input_tokens=input_tokens, cached_tokens=0,
                              output_tokens=output_tokens, ratio_ppm=ratio)


def plan_models(db: MeterDb, secret: str, *, now: datetime) -> list[tuple[str, str]] | None:
    """The (name, billed model) pairs a key's plan allows, aliases included; None for an unknown key."""
    with db.tx(write=False) as tx:
        found = key_by_secret(tx, secret, now, write=False)
        if found is None:
            return None
        cat = _catalog(tx, db, write=False)
        state = _frame(tx, cat, found, now)
    allowed = set(state.limits().models) or set(cat.models)
    names = [(m, m) for m in sorted(cat.models) if m in allowed]
    return names + sorted((pattern, target) for pattern, target in cat.aliases.items() if target in allowed)


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
    ttfb_ms: int | None = None  # the gateway's own fields (None from `usage record` / `import`)
    upstream: str | None = None
    client_request_id: str | None = None
    session_id: str | None = None
    usage_estimated: bool = False
    billed: str | None = None  # the billed model admission resolved (the gateway): no second alias lookup


@dataclass
class Recorded:
    request_id: str
    duplicate: bool
    note: str | None = None
    values: tuple[Any, ...] | None = None  # the usage record as written (USAGE_COLUMNS, `at` as stored)
    at: datetime | None = None

    @property
    def row(self) -> dict[str, Any] | None:
        """The usage record's values by column (`at` timezone-aware)."""
        if self.values is None:
            return None
        row = dict(zip(USAGE_COLUMNS, self.values))
        row["at"], row["stream"] = self.at, bool(row["stream"])
        return row

    @property
    def record(self) -> SimpleNamespace | None:
        """The usage record's values by attribute (`r.record.cost`)."""
        row = self.row
        return None if row is None else SimpleNamespace(**row)


_TEXTS = (("request id", "request_id", bounds.MAX_ID), ("model", "model", bounds.MAX_FIELD),
          ("key", "key", bounds.MAX_FIELD), ("secret", "secret", bounds.MAX_FIELD), ("API", "api", bounds.MAX_FIELD),
          ("reservation", "reservation", bounds.MAX_FIELD), ("error", "error", 1_000_000))


def validate(u: UsageInput, *, now: datetime | None = None) -> None:
    """Checks that need no database, against the bounds of domain/usage.py (with `now`, the
    request time's window too): a bad request is refused before anything is written."""
    for label, name, limit in _TEXTS:
        value = getattr(u, name)
        if value is not None and (problem := bounds.text_error(label, value, limit)):
            raise InvalidInput(problem)
    if not u.request_id:
        raise InvalidInput("request id must have 1 to 200 characters")
    for name, value in (("input", u.input_tokens), ("cached", u.cached_tokens), ("output", u.output_tokens)):
        if problem := bounds.token_error(name, value):
            raise InvalidInput(problem)
    if u.cached_tokens > u.input_tokens:
        raise InvalidInput("cached tokens cannot exceed input tokens (input counts the cached ones)")
    if type(u.status_code) is not int or not 100 <= u.status_code <= 599:
        raise InvalidInput(f"status must be an HTTP status code (100 to 599), got {bounds.short(u.status_code)}")
    if problem := bounds.latency_error(u.latency_ms):
        raise InvalidInput(problem)
    if u.api not in quota.API_TYPES:
        raise InvalidInput(f"unknown API type {bounds.short(u.api)}: use {', '.join(quota.API_TYPES)}")
    if type(u.stream) is not bool:
        raise InvalidInput(f"stream must be true or false, got {bounds.short(u.stream)}")
    if (u.key is None) == (u.secret is None):
        raise InvalidInput("give the key (id, name or prefix) or its secret, not both")
    if u.at is not None:
        if not isinstance(u.at, datetime) or u.at.tzinfo is None:
            raise InvalidInput("the request time needs a UTC offset")
        if now is not None and (problem := bounds.time_error(u.at, now)):
            raise InvalidInput(problem)


RETRIES = 3  # a batch that lost a race for a request id to another transaction starts over (PostgreSQL)


class _RaceLost(Exception):
    """Another transaction committed one of the batch's request ids after the batch checked them
    (or closed a hold it was settling): the batch is rolled back and run again, when that id is an
    ordinary duplicate."""


def record(db: MeterDb, u: UsageInput, *, now: datetime) -> Recorded:
    """Record one request; a request id seen before with the same content changes nothing
    (`duplicate`), with other content it is a conflict (exit 6, naming the fields that differ)."""
    validate(u, now=now)
    for attempt in range(RETRIES + 1):
        try:
            with db.tx(write=True) as tx:
                batch = _Batch.seeded(tx, db, now, u)  # locks the key, its account and subscription first
                batch.key(u)  # (then no one else records it)
                stored = batch.recorded([u.request_id]).get(u.request_id)
                if stored is not None:
                    differ = batch.differences(u, stored)
                    if differ:
                        raise Conflict(f"request id {u.request_id!r} was already recorded with another "
                                       f"{', '.join(differ)}; nothing changed", reason="request_id_conflict")
                    return Recorded(u.request_id, True, note="request id already recorded: nothing changed")
                values, note = batch.charge(u)
                batch.flush()
                return Recorded(u.request_id, False, note, values, u.at or now)
        except _RaceLost:
            if attempt == RETRIES:
                raise Conflict(f"request id {u.request_id!r} is being recorded by another process; try again") \
                    from None
    raise AssertionError("unreachable")


class _Batch:
    """Charges usage records in one write transaction.

    Rows are read when first needed and kept for the whole batch, one object per
    row (`_Changes`), so every request sees the ones before it; the changes are
    written, with the usage records and their rollups, by `flush`. On PostgreSQL
    every row read was locked, so what the batch sees stays true until the commit.
    Everything that can refuse a request is checked before it changes anything.
    """

    def __init__(self, tx: Tx, db: MeterDb, now: datetime, stamp: int | None = _UNREAD) -> None:
        self.tx, self.now = tx, now
        self.cat = _catalog(tx, db, write=True, stamp=stamp)
        self.changes = _Changes()
        self.states: dict[tuple[str, datetime], _State] = {}
        self.key_ids: dict[str, str] = {}  # key reference -> key id
        self.found: dict[str, Found] = {}  # key id -> its rows
        self.index: dict[str, int] = {}  # request id -> its place in `records`
        self.records: list[tuple[Any, ...]] = []  # rows of USAGE_COLUMNS
        self.rollups = Rollups()
        self.holds: dict[str, HoldRow | None] = {}  # reservations read ahead (read after their key's lock)
        self.versions: dict[tuple[str, datetime], int] = {}  # (key id, instant) -> plan version then
        self.known: dict[str, dict[str, Any]] | None = None  # `recorded`, read ahead

    @classmethod
    def seeded(cls, tx: Tx, db: MeterDb, now: datetime, u: UsageInput) -> _Batch:
        """A batch for one record whose key is given by id (the gateway's): its key, subscription,
        plan version, catalog stamp, request id and hold read at once (meter.key_at)."""
        if u.key is None:
            return cls(tx, db, now)
        then = [meter.recorded_statement([u.request_id])]
        if u.reservation:
            then.append(meter.hold_statement(u.reservation))
        at = u.at or now
        read = meter.key_at(tx, "id", u.key, at, write=True, then=tuple(then))
        if read is None:
            return cls(tx, db, now)
        batch = cls(tx, db, now, read.stamp)
        key, account, sub = read.found
        adopt = batch.changes.adopt
        batch.key_ids[u.key] = key.id
        batch.found[key.id] = (adopt("key", key.id, key), adopt("account", account.id, account),
                               None if sub is None else adopt("sub", sub.id, sub))
        batch.known = meter.content_from(read.then[0])
        if u.reservation:
            batch.holds[u.reservation] = meter.hold_from(tx, read.then[1])
        if read.version_id is not None:
            batch.versions[(key.id, at)] = read.version_id
        return batch

    def key_id(self, u: UsageInput) -> str:
        """The id of the key a request names (by id, name, prefix or secret), without locking it."""
        ref = u.key if u.key is not None else "secret:" + (u.secret or "")
        key_id = self.key_ids.get(ref)
        if key_id is None:
            if u.key is not None:
                key_id = meter.resolve_key(self.tx, u.key)
            else:
                hit = key_by_secret(self.tx, u.secret or "", self.now, write=False)
                if hit is None:
                    raise NotFound("no key has this secret")
                key_id = hit[0].id
            self.key_ids[ref] = key_id
        return key_id

    def lock(self, inputs: list[UsageInput]) -> None:
        """Lock every key the requests name, with their owners, in the global order (store/meter.py)."""
        if self.tx.sqlite:
            return
        ids = set()
        for u in inputs:
            try:
                ids.add(self.key_id(u))
            except (InvalidInput, NotFound):
                pass  # the line is rejected when it is charged
        meter.lock_owners(self.tx, ids)

    def key(self, u: UsageInput) -> Found:
        hit = None
        if u.key is not None and u.key not in self.key_ids:  # usually the id: one statement
            hit = meter.key_by(self.tx, "id", u.key, write=True)
            if hit is not None:
                self.key_ids[u.key] = hit[0].id
        key_id = self.key_id(u)
        if key_id not in self.found:
            hit = hit or meter.key_by(self.tx, "id", key_id, write=True)
            if hit is None:
                raise NotFound(f"unknown key {redact(u.key or 'with this secret')!r}")
            key, account, sub = hit
            adopt = self.changes.adopt
            self.found[key_id] = (adopt("key", key.id, key), adopt("account", account.id, account),
                                  None if sub is None else adopt("sub", sub.id, sub))
        return self.found[key_id]

    def recorded(self, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The content of the request ids already recorded (call it after `lock`: on PostgreSQL a
        concurrent writer of the same keys has then committed)."""
        if self.known is not None:
            known, self.known = self.known, None
            return known
        return meter.recorded_content(self.tx, request_ids)

    def differences(self, u: UsageInput, stored: dict[str, Any]) -> list[str]:
        """The fields in which a request differs from its stored record (a time only when given)."""
        try:
            key_id: str | None = self.key_id(u)
        except (InvalidInput, NotFound):
            key_id = None
        error = u.error[:bounds.MAX_TEXT] if u.error else None
        mine = {"key": key_id, "model": u.model, "api": u.api, "input_tokens": u.input_tokens,
                "cached_tokens": u.cached_tokens, "output_tokens": u.output_tokens, "status": u.status_code,
                "latency_ms": u.latency_ms, "stream": u.stream, "error": error, "reservation": u.reservation}
        theirs = {"key": stored["key_id"], "model": stored["requested_model"], "api": stored["api"],
                  "input_tokens": stored["input_tokens"], "cached_tokens": stored["cached_tokens"],
                  "output_tokens": stored["output_tokens"], "status": stored["status_code"],
                  "latency_ms": stored["latency_ms"], "stream": bool(stored["stream"]), "error": stored["error"],
                  "reservation": stored["reservation_id"]}
        differ = [name for name in mine if mine[name] != theirs[name]]
        if u.at is not None and self.tx.instant(stored["at"]) != u.at:
            differ.append("time")
        return differ

    def content(self, request_id: str) -> dict[str, Any]:
        """The content of a request this batch recorded, as `recorded` gives it."""
        values = self.records[self.index[request_id]]
        return dict(zip(CONTENT_COLUMNS, (values[_USAGE_AT[c]] for c in CONTENT_COLUMNS)))

    def state(self, found: Found, at: datetime, day: datetime) -> _State:
        """The key's windows at `at`, in the natural day starting at `day`, with the batch's objects
        of their counters (read from the database only when a decision needs them: `filled`)."""
        state = self.states.get((found[0].id, day))
        if state is None or (state.windows.period and not state.windows.period[0] <= at < state.windows.period[1]):
            state = self.states[(found[0].id, day)] = _frame(self.tx, self.cat, found, at,
                                                             self.versions.get((found[0].id, at)))
            state.count = {name: self.changes.row("counter", window) for name, window in state.window.items()}
        state.at = at
        return state

    def filled(self, state: _State) -> _State:
        if not state.loaded:
            _fill(self.tx, state, lock=True, adopt=self.changes.adopt)
        return state

    def charge(self, u: UsageInput) -> tuple[tuple[Any, ...], str | None]:
        """Charge one request: the usage record's values (USAGE_COLUMNS) and a note, if any."""
        at = u.at or self.now
        found = self.key(u)
        billed = u.billed if u.billed in self.cat.models else self.cat.billed(u.model)
        if billed is None:
            raise InvalidInput(f"unknown model {u.model!r}: no model or alias matches it")
        sub = found[2]
        if sub is not None and at < sub.starts_at:  # it would count in the first period but on an earlier day
            raise Refused(f"request time {iso(at)} is before subscription {sub.id} started ({iso(sub.starts_at)})",
                          reason="before_subscription_start")
        (day, _), local_day = self.cat.local_day(at)
        state = self.state(found, at, day)
        key = state.key
        cost = quota.request_cost(self.cat.models[billed], input_tokens=u.input_tokens,
                                  cached_tokens=u.cached_tokens, output_tokens=u.output_tokens,
                                  ratio_ppm=self.cat.ratios.get(key.group_name, 1_000_000))
        note, res = None, None
        if u.reservation:
            res = self.holds[u.reservation] if u.reservation in self.holds else meter.get_hold(self.tx, u.reservation)
            if res is None or res.key_id != key.id:
                raise InvalidInput(f"reservation {u.reservation!r} does not belong to this key")
            # settling: the hold is given back first, then the real cost is charged; its key is locked, so
            # the hold is held as read (a change meanwhile would be a lost race: the batch starts over)
            if res.status != "held" or not _release(self.tx, res, self.now, "settled", self.changes, u.request_id,
                                                    lost=_RaceLost()):
                note, res = f"reservation {u.reservation} was already {res.status}; charged without it", None
        pool = res.pool if res is not None else self._pool(state)
        plan, extra, payg = self._split(state, pool, cost, capped=res is not None)
        stored = self.tx.at_once(at)
        extra_total = self._apply(state, u, at, stored, plan, extra, payg)
        charged = plan + extra_total + payg
        paid_by = quota.paid_by(plan, extra_total, payg)
        values = (u.request_id, stored, local_day, key.account_id, key.id, key.subscription_id, key.group_name,
                  u.model, billed, u.api, u.input_tokens, u.cached_tokens, u.output_tokens, cost, plan, extra_total,
                  payg, paid_by, u.status_code, u.latency_ms, u.stream, u.error[:2000] if u.error else None,
                  u.reservation, u.ttfb_ms, u.upstream, u.client_request_id and u.client_request_id[:200],
                  u.session_id and u.session_id[:200], u.usage_estimated)
        self.index[u.request_id] = len(self.records)
        self.records.append(values)
        self.rollups.add(values, at)
        if cost > charged:
            note = f"cost {cost} µcr exceeded what the hold and the balance allowed; {charged} µcr charged"
        return values, note

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
        """Plan / extra draws / PAYG (the rule: quota.split_charge)."""
        if pool == "extra":
            self.filled(state)
        sub = state.sub
        plan, draws, payg = quota.split_charge(
            cost, pool, capped=capped,
            packs=[(p.id, p.available) for p in state.live_packs()] if pool == "extra" else [],
            plan_available=None if sub is None or sub.credit_granted is None
            else sub.credit_granted - sub.credit_used - sub.credit_reserved,
            payg_available=state.account.payg_balance - state.account.payg_reserved)
        return plan, list(draws), payg

    def _apply(self, state: _State, u: UsageInput, at: datetime, stored: Any, plan: int,
               extra: list[tuple[int, int]], payg: int) -> int:
        """Move the balances and counters the request draws from, with its ledger entries; returns
        what extra usage paid."""
        changes, key, sub, count = self.changes, state.key, state.sub, state.count
        entry, reason, request_id = changes.entry, f"usage {u.model}", u.request_id
        if sub is not None:
            sub.credit_used += plan
            day = count["day"]
            day.requests += 1
            day.tokens += u.input_tokens + u.output_tokens
            if plan:
                for name in ("period", "subuser"):
                    if name in count:
                        count[name].credit += plan
                changes.plan_debits.append((stored, sub.account_id, sub.id, key.id, -plan, request_id, reason))
        extra_total = 0
        for pack_id, take in extra:
            changes.row("pack", pack_id).used += take
            extra_total += take
            entry(stored, state.extra_owner_id, "extra", None, pack_id, key.id, "debit", -take, request_id, reason)
        if payg:
            state.account.payg_balance -= payg
            entry(stored, state.account.id, "payg", None, None, key.id, "debit", -payg, request_id, reason)
        key_day = count["key_day"]
        key_day.requests += 1
        key_day.credit += plan + extra_total + payg
        key.credit_used += plan
        changes.used(key.id, at)
        return extra_total

    def flush(self) -> None:
        self.changes.apply(self.tx)
        if self.records:
            if meter.insert_usage(self.tx, self.records) != len(self.records):
                raise _RaceLost()
            meter.roll_up(self.tx, self.rollups.rows())
        self.records, self.index, self.rollups = [], {}, Rollups()


_USAGE_AT = {c: USAGE_COLUMNS.index(c) for c in CONTENT_COLUMNS}


class Rollups:
    """Usage records summed into daily rollup rows (one per day, key, group, model, API and status
    class), as `usage_daily` keeps them."""

    def __init__(self) -> None:
        self.sums: dict[tuple[Any, ...], list[Any]] = {}  # dimensions -> [owners, last at, *ROLLUP_SUMS]

    def add(self, v: tuple[Any, ...], at: datetime) -> None:
        """One usage record (values of USAGE_COLUMNS) made at `at`."""
        dims = (v[U_LOCAL_DAY], v[U_KEY], v[U_GROUP], v[U_BILLED], v[U_API], v[U_STATUS] // 100)
        row = self.sums.get(dims)
        if row is None:
            row = self.sums[dims] = [(v[U_ACCOUNT], v[U_SUBSCRIPTION]), at] + [0] * len(ROLLUP_SUMS)
        elif at > row[1]:
            row[1] = at
        row[2] += 1  # then from row[3] on, as ROLLUP_SUMS has them: the summed columns, the latency
        row[3] += v[U_INPUT]
        row[4] += v[U_CACHED]
        row[5] += v[U_OUTPUT]
        row[6] += v[U_COST]
        row[7] += v[U_CHARGED_PLAN]
        row[8] += v[U_CHARGED_EXTRA]
        row[9] += v[U_CHARGED_PAYG]
        latency = v[U_LATENCY]
        if latency is not None:
            row[10] += latency
            row[11] += 1
            row[12 + bucket_of(latency)] += 1

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (day, key_id, group, model, api, hundreds), row in self.sums.items():
            (account_id, subscription_id), last_at = row[0], row[1]
            out.append(dict(zip(ROLLUP_SUMS, row[2:]), local_day=day, key_id=key_id, group_name=group,
                            billed_model=model, api=api, status_class=f"{hundreds}xx", account_id=account_id,
                            subscription_id=subscription_id, last_at=last_at))
        return out


def rollups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Usage records (dicts of USAGE_COLUMNS, `at` aware) summed into daily rollup rows."""
    sums = Rollups()
    for r in records:
        sums.add(tuple(r[c] for c in USAGE_COLUMNS), r["at"])
    return sums.rows()


# ---------------------------------------------------------------- import


@dataclass
class ImportReport:
    new: int = 0
    duplicate: int = 0
    rejected: int = 0
    rejected_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, why): the first ones
    conflicting: int = 0  # request ids recorded before with other content
    conflicting_lines: list[tuple[int, str]] = field(default_factory=list)
    retried: int = 0  # batches started over after losing a race for a request id (PostgreSQL)
    values: dict[int, tuple[Any, ...]] | None = None  # line number -> the record's values, when asked for

    KEEP = 1_000  # rejected lines kept with their reasons: a file of bad lines must not fill the memory

    def reject(self, lines: list[tuple[int, str]]) -> None:
        """Count the rejected lines of one batch; keep the first ones, in file order, secrets masked."""
        self.rejected += self._keep(self.rejected_lines, lines)

    def conflict(self, lines: list[tuple[int, str]]) -> None:
        self.conflicting += self._keep(self.conflicting_lines, lines)

    def _keep(self, kept: list[tuple[int, str]], lines: list[tuple[int, str]]) -> int:
        room = self.KEEP - len(kept)
        if room > 0:
            kept.extend((n, _redacted(why)) for n, why in sorted(lines)[:room])
        return len(lines)


def _redacted(why: str) -> str:
    """`why` with any secret masked, still carrying the code the CLI words (a Note)."""
    return Note(redact(why), code=why.code, **why.fields) if isinstance(why, Note) else redact(why)


def import_usage(db: MeterDb, lines: Any, *, now: datetime, batch_size: int = 2_000,
                 progress: Any = None, keep: bool = False) -> ImportReport:
    """Record (line number, UsageInput | error text) pairs in batches, one transaction each.

    A line that cannot be charged is rejected whole and reported; the others go on. With `keep`
    the report has the values of each new record by line number (the gateway logs them).
    """
    report = ImportReport(values={} if keep else None)
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


@dataclass
class _ChunkOutcome:
    new: int = 0
    duplicate: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    conflicting: list[tuple[int, str]] = field(default_factory=list)
    values: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # line number -> the new record's values


def _import_chunk(db: MeterDb, chunk: list[tuple[int, Any]], now: datetime, report: ImportReport) -> None:
    invalid: list[tuple[int, str]] = []
    valid: list[tuple[int, UsageInput]] = []
    for number, item in chunk:
        if isinstance(item, str):
            invalid.append((number, item))
            continue
        try:
            validate(item, now=now)
            valid.append((number, item))
        except InvalidInput as exc:
            invalid.append((number, exc.message))
    for attempt in range(RETRIES + 1):
        try:
            with db.tx(write=True) as tx:
                out = _charge_chunk(_Batch(tx, db, now), valid)
            break
        except _RaceLost:
            if attempt == RETRIES:
                raise Conflict("request ids of this file are being recorded by another process; run the import "
                               "again (it is idempotent)") from None
            report.retried += 1
    report.new += out.new
    report.duplicate += out.duplicate
    if report.values is not None:
        report.values.update(out.values)
    report.reject(invalid + out.rejected)
    report.conflict(out.conflicting)


def _charge_chunk(batch: _Batch, valid: list[tuple[int, UsageInput]]) -> _ChunkOutcome:
    out = _ChunkOutcome()
    batch.lock([u for _, u in valid])
    known = batch.recorded([u.request_id for _, u in valid])
    for number, u in valid:
        rid = u.request_id
        stored = known.get(rid)
        if stored is None and rid in batch.index:
            stored = batch.content(rid)
        if stored is not None:
            differ = batch.differences(u, stored)
            if differ:
                out.conflicting.append((number, f"request id {rid!r} was already recorded with another "
                                                f"{', '.join(differ)}"))
            else:
                out.duplicate += 1
            continue
        try:
            out.values[number] = batch.charge(u)[0]  # refuses before it changes anything
        except (InvalidInput, NotFound, Refused) as exc:
            out.rejected.append((number, Note(exc.message, code=exc.code, **exc.fields)))  # the CLI words it
            continue
        out.new += 1
    batch.flush()
    return out


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
    suggestions: list[str]  # what would lift it: codes the CLI words (domain/denials.py: remedies)
    about: dict[str, Any]  # the ids and names those words use
    next_reset: datetime | None = None  # when what blocks resets (None: it does not reset by itself)
    payg_balance: int | None = None  # the account's PAYG balance (a PAYG key's pool)


def limits_view(db: MeterDb, ref: str, *, now: datetime) -> LimitsView:
    """The limits of a subscription (its subscription key) or of one key, side by side."""
    _release_stale(db, now)
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
