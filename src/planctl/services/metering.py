"""Metering: admit requests (optionally holding credit), record usage, and explain limits.

This is the in-process API the CLI and the gateway call for every request:

    auth = authorize(db, secret, model="claude-sonnet-4-5", api="claude", reserve=50_000, now=now)
    ...  # forward the request if auth.allowed
    record(db, UsageInput(request_id=..., key=auth.key_id, model=..., input_tokens=...,
                          reservation=auth.reservation_id), now=now)

Every write is one short transaction (`BEGIN IMMEDIATE` on SQLite; rows locked
with `FOR UPDATE` on PostgreSQL). Holds are taken with conditional UPDATEs
whose affected-row count decides, so concurrent admissions can never all pass
on the last credit, and a balance net of holds never goes below zero. Usage is
recorded in full, idempotently by request id, with its counters, consumption
and ledger entries in the same transaction. `record` and `import` share one
batch writer (`_Batch`), so a single record and a million imported ones follow
the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm.attributes import set_attribute
from sqlmodel import Session, col, or_
from zoneinfo import ZoneInfo

from planctl.domain import keys as key_rules
from planctl.domain import lifecycle, quota
from planctl.domain.catalog import ModelPrices, PlanTerms, resolve_model
from planctl.domain.clock import iso, local_date, period_bounds, start_of_local_day
from planctl.domain.errors import InvalidInput, NotFound, Refused
from planctl.domain.ids import short_id
from planctl.services import audit, keys, settings
from planctl.services.audit import Caller
from planctl.store.engine import Database
from planctl.store.tables import (
    Account, ApiKey, ExtraPack, Group, LedgerEntry, Model, ModelAlias, PlanVersion, Reservation, Subscription,
    UsageCounter, UsageDaily, UsageRecord,
)
from planctl.domain.latency import LATENCY_BUCKETS_MS, bucket_of  # noqa: E402

HOLD_FOR = timedelta(minutes=10)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # window of a sub-user's running total


# ---------------------------------------------------------------- loading what a decision needs


class _Catalog:
    """Models, aliases, groups and plan terms, read once per transaction (terms are immutable)."""

    _terms_cache: dict[tuple[str, int], PlanTerms] = {}

    def __init__(self, session: Session, db: Database) -> None:
        self.session, self.db_key = session, db.target.url
        self.models = {m.id: ModelPrices(m.id, m.input_price, m.cached_price, m.output_price)
                       for m in session.execute(select(Model)).scalars()}
        self.aliases = {a.pattern: a.model_id for a in session.execute(select(ModelAlias)).scalars()}
        self.ratios = {g.name: g.ratio_ppm for g in session.execute(select(Group)).scalars()}
        self.tz = settings.reset_zone(session)
        self._billed: dict[str, str | None] = {}

    def terms(self, version_id: int) -> PlanTerms:
        cache_key = (self.db_key, version_id)
        if cache_key not in self._terms_cache:
            from planctl.domain.catalog import parse_plan

            row = self.session.get(PlanVersion, version_id)
            assert row is not None
            self._terms_cache[cache_key] = parse_plan(row.terms, settings.catalog_context(self.session))
        return self._terms_cache[cache_key]

    def billed(self, requested: str) -> str | None:
        if requested not in self._billed:
            self._billed[requested] = resolve_model(requested, self.models, self.aliases).billed
        return self._billed[requested]


@dataclass
class _Windows:
    period: tuple[datetime, datetime] | None
    day: tuple[datetime, datetime]


def _windows(terms: PlanTerms | None, sub: Subscription | None, at: datetime, tz: ZoneInfo) -> _Windows:
    day = start_of_local_day(local_date(at, tz), tz)
    next_day = start_of_local_day(local_date(at, tz) + timedelta(days=1), tz)
    period = None
    if terms is not None and terms.period is not None and sub is not None:
        period = period_bounds(max(at, sub.starts_at), terms.period, tz, anchor=sub.starts_at)
    return _Windows(period, (day, next_day))


def _lock(query: Any, session: Session) -> Any:
    return query.with_for_update() if session.get_bind().dialect.name == "postgresql" else query


Window = tuple[str, str, datetime]  # (owner, scope, window start)


def _counters(session: Session, windows: list[Window], *, write: bool) -> dict[Window, UsageCounter]:
    """The counters of several windows in two statements; in a write transaction missing rows
    are created first and all of them are locked."""
    if write:
        session.execute(_statements(session).ensure_counter,
                        [{"owner": o, "scope": sc, "window_start": st} for o, sc, st in windows])
    match = or_(*((UsageCounter.owner == o) & (UsageCounter.scope == sc) & (UsageCounter.window_start == st)
                  for o, sc, st in windows))
    found = {(r.owner, r.scope, r.window_start): r
             for r in session.execute(_lock(select(UsageCounter).where(match), session)).scalars()}
    return {w: found.get(w) or UsageCounter(owner=w[0], scope=w[1], window_start=w[2]) for w in windows}


@dataclass(frozen=True)
class _Statements:
    """Statements built once per dialect (building them per request costs more than running them)."""

    ensure_counter: Any
    roll_up: Any


_STATEMENTS: dict[str, _Statements] = {}


def _add(row: Any, name: str, amount: int) -> None:
    """row.name += amount, through SQLAlchemy's change tracking only (SQLModel's __setattr__
    runs pydantic on every assignment, which dominated imports)."""
    if amount:
        set_attribute(row, name, getattr(row, name) + amount)


def _statements(session: Session) -> _Statements:
    dialect = session.get_bind().dialect.name
    if dialect not in _STATEMENTS:
        make = postgresql.insert if dialect == "postgresql" else sqlite.insert
        counter = make(UsageCounter).values(
            owner=bindparam("owner"), scope=bindparam("scope"), window_start=bindparam("window_start"),
            requests=0, tokens=0, credit=0, reserved=0,
        ).on_conflict_do_nothing(index_elements=["owner", "scope", "window_start"])
        daily = make(UsageDaily)
        table = UsageDaily.__table__  # type: ignore[attr-defined]
        latest = (func.max if dialect == "sqlite" else func.greatest)(table.c.last_at, daily.excluded.last_at)
        roll_up = daily.on_conflict_do_update(
            index_elements=["local_day", "key_id", "group_name", "billed_model", "api", "status_class"],
            set_={**{name: table.c[name] + daily.excluded[name] for name in _ROLLUP_SUMS}, "last_at": latest})
        _STATEMENTS[dialect] = _Statements(counter, roll_up)
    return _STATEMENTS[dialect]


def _packs(session: Session, account_id: str, at: datetime) -> list[ExtraPack]:
    """Live extra-usage packs, those expiring first first."""
    rows = session.execute(_lock(select(ExtraPack).where(
        ExtraPack.account_id == account_id,
        (col(ExtraPack.expires_at).is_(None)) | (ExtraPack.expires_at > at),
        ExtraPack.credit > ExtraPack.used + ExtraPack.reserved), session)).scalars().all()
    return sorted(rows, key=lambda p: quota.pack_order(p.expires_at, p.id or 0))


@dataclass
class _State:
    """Everything about one key at one instant that admission and charging read."""

    key: ApiKey
    account: Account
    sub: Subscription | None
    terms: PlanTerms | None
    windows: _Windows
    period: UsageCounter | None
    day: UsageCounter | None
    key_day: UsageCounter
    subuser: UsageCounter | None
    packs: list[ExtraPack]
    extra_owner: Account

    def limits(self, sub_period_enabled: bool | None = None) -> quota.Limits:
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
        s, p, d, kd, su = self.sub, self.period, self.day, self.key_day, self.subuser
        return quota.Counters(
            plan_granted=s.credit_granted if s else None, plan_used=s.credit_used if s else 0,
            plan_reserved=s.credit_reserved if s else 0,
            period_used=p.credit if p else 0, period_reserved=p.reserved if p else 0,
            day_requests=d.requests if d else 0, day_tokens=d.tokens if d else 0,
            key_used=self.key.credit_used, key_reserved=self.key.credit_reserved,
            key_day_requests=kd.requests, key_day_credit=kd.credit,
            subuser_used=su.credit if su else 0, subuser_reserved=su.reserved if su else 0,
            extra_available=sum(x.credit - x.used - x.reserved for x in self.packs),
            payg_available=self.account.payg_balance - self.account.payg_reserved,
        )


def _state(session: Session, cat: _Catalog, key: ApiKey, at: datetime, *, write: bool) -> _State:
    """Load (and, in a write transaction, lock) every row the key's admission and charging touch."""
    if write:
        key = session.execute(_lock(select(ApiKey).where(ApiKey.id == key.id), session)).scalars().one()
    account = session.execute(_lock(select(Account).where(Account.id == key.account_id), session)).scalars().one()
    sub = terms = None
    if key.subscription_id:
        sub = session.execute(_lock(select(Subscription).where(Subscription.id == key.subscription_id),
                                 session)).scalars().one()
        terms = cat.terms(sub.plan_version_id)
    win = _windows(terms, sub, at, cat.tz)
    extra_owner = account if sub is None else (session.get(Account, sub.account_id) or account)
    wanted: dict[str, Window] = {"key_day": (key.id, "key-day", win.day[0])}
    if sub is not None:
        wanted["day"] = (sub.id, "sub-day", win.day[0])
        if win.period:
            wanted["period"] = (sub.id, "sub-period", win.period[0])
    if account.parent_id:
        wanted["subuser"] = (account.id, "subuser", EPOCH)
    rows = _counters(session, list(wanted.values()), write=write)
    found = {name: rows[window] for name, window in wanted.items()}
    return _State(
        key=key, account=account, sub=sub, terms=terms, windows=win,
        period=found.get("period"), day=found.get("day"), key_day=found["key_day"], subuser=found.get("subuser"),
        packs=_packs(session, extra_owner.id, at) if sub else [], extra_owner=extra_owner,
    )


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


def authorize(db: Database, secret: str, *, model: str, api: str = "responses", reserve: int | None = None,
              now: datetime, hold_for: timedelta = HOLD_FOR) -> Authorization:
    """Decide whether a request may run; with `reserve`, hold that much credit until it is recorded."""
    if api not in quota.API_TYPES:
        raise InvalidInput(f"unknown API type {api!r}: use {', '.join(quota.API_TYPES)}")
    if reserve is not None and reserve <= 0:
        raise InvalidInput("--reserve must be greater than zero")
    if not reserve:
        _release_stale(db, now)
    with (db.write() if reserve else db.read()) as session:
        if reserve:
            release_expired(session, now)
        key = keys.by_secret(session, secret, now)
        if key is None:
            return Authorization(False, "key_unknown", "no key has this secret", model)
        cat = _Catalog(session, db)
        state = _state(session, cat, key, now, write=bool(reserve))
        billed = cat.billed(model)
        request = quota.Request(
            key_kind=key.kind,
            key_refusal=key_rules.key_refusal(key_rules.KeyState(key.status, key.expires_at), now),
            subscription_refusal=None if state.sub is None else lifecycle.availability(_sub_state(state.sub), now),
            billed_model=billed, group=key.group_name, api=api, need=reserve or 0)
        decision = quota.decide(request, state.limits(), state.counters())
        auth = _answer(state, decision, model, billed, now, cat.tz)
        if decision.allowed and reserve:
            res = _hold(session, state, decision, reserve, now, hold_for)
            auth.reservation_id, auth.reservation_expires_at = res.id, res.expires_at
        return auth


def _answer(state: _State, decision: quota.Decision, requested: str, billed: str | None, now: datetime,
            tz: ZoneInfo) -> Authorization:
    c, limits = state.counters(), state.limits()
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
        allowed=decision.allowed, reason=decision.reason, message=explain(decision, state, next_reset),
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


def explain(decision: quota.Decision, state: _State, next_reset: datetime) -> str:
    if decision.allowed:
        if decision.lifted:
            return f"allowed on extra usage ({MESSAGES[decision.lifted]})"
        return f"allowed, charged to {decision.pool}"
    text = MESSAGES.get(decision.reason or "", decision.reason or "denied")
    if decision.reason in quota.BOUNDARIES or decision.reason in ("key_daily_limit_reached", "key_rpd_reached"):
        text += f"; it resets at {iso(next_reset)}"
    return text


def _sub_state(sub: Subscription) -> lifecycle.SubscriptionState:
    return lifecycle.SubscriptionState(sub.status, sub.starts_at, sub.ends_at, sub.anchor_day,
                                       sub.credit_granted, sub.credit_used)


# ---------------------------------------------------------------- holds


def _cond(session: Session, statement: Any) -> bool:
    return session.execute(statement).rowcount == 1


def _counter_where(row: UsageCounter) -> Any:
    return ((UsageCounter.owner == row.owner) & (UsageCounter.scope == row.scope)
            & (UsageCounter.window_start == row.window_start))


def _hold(session: Session, state: _State, decision: quota.Decision, amount: int, now: datetime,
          hold_for: timedelta) -> Reservation:
    """Hold `amount` against every pool and limit the request would draw from, or refuse."""
    holds: dict[str, Any] = {}
    res_id = short_id("res", 10)

    def refuse(reason: str) -> Refused:
        return Refused(f"{MESSAGES[reason]} (taken by a concurrent request)", reason=reason)

    limits = state.limits()
    if decision.pool == "payg":
        if not _cond(session, update(Account).where(
                Account.id == state.account.id, Account.payg_balance - Account.payg_reserved >= amount)
                .values(payg_reserved=Account.payg_reserved + amount)):
            raise refuse("payg_balance_empty")
        holds["payg"] = amount
    elif decision.pool == "extra":
        draws, left = quota.split_extra(amount, [(p.id, p.credit - p.used - p.reserved) for p in state.packs])
        for pack_id, take in draws:
            if not _cond(session, update(ExtraPack).where(
                    ExtraPack.id == pack_id, ExtraPack.credit - ExtraPack.used - ExtraPack.reserved >= take)
                    .values(reserved=ExtraPack.reserved + take)):
                raise refuse(decision.lifted or "credit_exhausted")
        if left:
            raise refuse(decision.lifted or "credit_exhausted")
        holds["packs"] = {str(pack_id): take for pack_id, take in draws}
    if state.sub is not None:
        sub = state.sub
        if decision.pool == "plan":
            if not _cond(session, update(Subscription).where(
                    Subscription.id == sub.id,
                    col(Subscription.credit_granted).is_(None)
                    | (Subscription.credit_granted - Subscription.credit_used - Subscription.credit_reserved >= amount))
                    .values(credit_reserved=Subscription.credit_reserved + amount)):
                raise refuse("credit_exhausted")
            holds["plan"] = amount
            if state.period is not None:
                capped = limits.period_credit is not None and limits.period_limit_enabled
                stmt = update(UsageCounter).where(_counter_where(state.period))
                if capped:
                    stmt = stmt.where(UsageCounter.credit + UsageCounter.reserved + amount <= limits.period_credit)
                if not _cond(session, stmt.values(reserved=UsageCounter.reserved + amount)):
                    raise refuse("period_limit_reached")
                holds["period"] = [iso(state.period.window_start), amount]
            if not _cond(session, update(ApiKey).where(
                    ApiKey.id == state.key.id,
                    col(ApiKey.credit_cap).is_(None)
                    | (ApiKey.credit_used + ApiKey.credit_reserved + amount <= ApiKey.credit_cap))
                    .values(credit_reserved=ApiKey.credit_reserved + amount)):
                raise refuse("key_credit_cap_reached")
            holds["key"] = amount
            if state.subuser is not None:
                stmt = update(UsageCounter).where(_counter_where(state.subuser))
                if limits.subuser_quota is not None:
                    stmt = stmt.where(UsageCounter.credit + UsageCounter.reserved + amount <= limits.subuser_quota)
                if not _cond(session, stmt.values(reserved=UsageCounter.reserved + amount)):
                    raise refuse("subuser_quota_reached")
                holds["subuser"] = amount
    res = Reservation(id=res_id, key_id=state.key.id, account_id=state.key.account_id,
                      subscription_id=state.sub.id if state.sub else None, pool=decision.pool or "plan",
                      amount=amount, holds=holds, status="held", created_at=now, expires_at=now + hold_for)
    session.add(res)
    session.flush()
    _hold_ledger(session, res, holds, now, sign=-1, kind="reserve")
    return res


def _hold_ledger(session: Session, res: Reservation, holds: dict[str, Any], now: datetime, *, sign: int,
                 kind: str) -> None:
    """Holds take from the available balance: a `reserve` entry, and a `release` when they end."""
    rows = []
    base = dict(at=now, account_id=res.account_id, key_id=res.key_id, kind=kind, request_id=res.request_id,
                reason=f"{kind} {res.id}", order_id=None)
    if "plan" in holds:
        rows.append({**base, "pool": "plan", "subscription_id": res.subscription_id, "pack_id": None,
                     "amount": sign * holds["plan"]})
    for pack_id, take in holds.get("packs", {}).items():
        rows.append({**base, "pool": "extra", "subscription_id": None, "pack_id": int(pack_id), "amount": sign * take})
    if "payg" in holds:
        rows.append({**base, "pool": "payg", "subscription_id": None, "pack_id": None, "amount": sign * holds["payg"]})
    if rows:
        session.execute(insert(LedgerEntry), rows)


def _release(session: Session, res: Reservation, now: datetime, status: str) -> bool:
    """Give a hold back (settled by its record, released by hand, or expired), exactly once:
    the status change is conditional, so of two transactions closing the same hold one wins."""
    if not _cond(session, update(Reservation).where(Reservation.id == res.id, Reservation.status == "held")
                 .values(status=status, closed_at=now).execution_options(synchronize_session=False)):
        session.refresh(res)
        return False
    holds = res.holds
    if "key" in holds:  # the order rows are locked in everywhere else: key, account, subscription
        session.execute(update(ApiKey).where(ApiKey.id == res.key_id)
                        .values(credit_reserved=ApiKey.credit_reserved - holds["key"]))
    if "plan" in holds:
        session.execute(update(Subscription).where(Subscription.id == res.subscription_id)
                        .values(credit_reserved=Subscription.credit_reserved - holds["plan"]))
    if "period" in holds:
        start = datetime.fromisoformat(holds["period"][0])
        session.execute(update(UsageCounter).where(
            UsageCounter.owner == res.subscription_id, UsageCounter.scope == "sub-period",
            UsageCounter.window_start == start).values(reserved=UsageCounter.reserved - holds["period"][1]))
    if "subuser" in holds:
        session.execute(update(UsageCounter).where(
            UsageCounter.owner == res.account_id, UsageCounter.scope == "subuser",
            UsageCounter.window_start == EPOCH).values(reserved=UsageCounter.reserved - holds["subuser"]))
    for pack_id, take in holds.get("packs", {}).items():
        session.execute(update(ExtraPack).where(ExtraPack.id == int(pack_id))
                        .values(reserved=ExtraPack.reserved - take))
    if "payg" in holds:
        session.execute(update(Account).where(Account.id == res.account_id)
                        .values(payg_reserved=Account.payg_reserved - holds["payg"]))
    _hold_ledger(session, res, holds, now, sign=+1, kind="release")
    session.refresh(res)
    return True


def _release_stale(db: Database, now: datetime) -> None:
    """Release expired holds first when there are any (a cheap read when there are none)."""
    with db.read() as session:
        stale = session.execute(select(Reservation.id).where(
            Reservation.status == "held", Reservation.expires_at <= now).limit(1)).first()
    if stale is not None:
        with db.write() as session:
            release_expired(session, now)


def release_expired(session: Session, now: datetime) -> int:
    stale = session.execute(select(Reservation).where(Reservation.status == "held", Reservation.expires_at <= now)
                         ).scalars().all()
    return sum(_release(session, res, now, "expired") for res in stale)


def list_reservations(db: Database, *, now: datetime, status: str | None = "held", key: str | None = None,
                      limit: int = 1000) -> list[Reservation]:
    with db.write() as session:
        release_expired(session, now)
        query = select(Reservation)
        if status:
            query = query.where(Reservation.status == status)
        if key:
            query = query.where(Reservation.key_id == keys.resolve(session, key).id)
        return list(session.execute(query.order_by(col(Reservation.created_at).desc()).limit(limit)).scalars())


def release(db: Database, reservation_id: str, *, caller: Caller, now: datetime) -> Reservation:
    with db.write() as session:
        release_expired(session, now)
        res = session.get(Reservation, reservation_id)
        if res is None:
            raise NotFound(f"unknown reservation {reservation_id!r}; see 'planctl reservations list'")
        if res.status != "held" or not _release(session, res, now, "released"):
            raise Refused(f"reservation {res.id} is already {res.status}", reason="reservation_closed")
        audit.record(session, caller, now, f"reservation:{res.id}", f"released {res.amount} µcr by hand")
        return res


# ---------------------------------------------------------------- recording


@dataclass(frozen=True)
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
    record: UsageRecord | None = None
    note: str | None = None
    row: dict[str, Any] | None = None  # the values written (a model object is built only when asked)


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


def record(db: Database, u: UsageInput, *, now: datetime) -> Recorded:
    """Record one request; a request id seen before changes nothing (`duplicate`)."""
    validate(u)
    with db.write() as session:
        batch = _Batch(session, db, now)
        result = batch.add(u)
        batch.flush()
        if result.row is not None:
            result.record = UsageRecord(**result.row)
        return result


class _Batch:
    """Charges usage records in one transaction, keeping its rows in the session between them.

    Every row it changes was loaded locked (`FOR UPDATE` on PostgreSQL; the
    write lock covers SQLite), so the balances it reads stay true until the
    transaction commits. Usage records and ledger entries are inserted in bulk.
    """

    def __init__(self, session: Session, db: Database, now: datetime) -> None:
        self.session, self.now = session, now
        self.cat = _Catalog(session, db)
        self.states: dict[tuple[str, datetime], _State] = {}
        self.keys: dict[str, ApiKey] = {}
        self.seen: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self.ledger: list[dict[str, Any]] = []

    def known_ids(self, request_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(request_ids), 500):
            chunk = request_ids[i:i + 500]
            found |= set(self.session.execute(select(UsageRecord.request_id)
                                              .where(col(UsageRecord.request_id).in_(chunk))).scalars())
        return found | (self.seen & set(request_ids))

    def add(self, u: UsageInput) -> Recorded:
        """Charge one request (already validated); a known request id is reported, not charged."""
        if u.request_id in self.known_ids([u.request_id]):
            return Recorded(u.request_id, True, note="request id already recorded: nothing changed")
        return self.charge(u)

    def _key(self, u: UsageInput) -> ApiKey:
        ref = u.key if u.key is not None else "secret:" + (u.secret or "")
        if ref not in self.keys:
            key = (keys.resolve(self.session, u.key) if u.key is not None
                   else keys.by_secret(self.session, u.secret or "", self.now))
            if key is None:
                raise NotFound("no key has this secret")
            self.keys[ref] = key
        return self.keys[ref]

    def _state(self, key: ApiKey, at: datetime) -> _State:
        day = start_of_local_day(local_date(at, self.cat.tz), self.cat.tz)
        state = self.states.get((key.id, day))
        if state is None or (state.windows.period and not state.windows.period[0] <= at < state.windows.period[1]):
            state = self.states[(key.id, day)] = _state(self.session, self.cat, key, at, write=True)
        return state

    def charge(self, u: UsageInput) -> Recorded:
        at = u.at or self.now
        key = self._key(u)
        billed = self.cat.billed(u.model)
        if billed is None:
            raise InvalidInput(f"unknown model {u.model!r}: no model or alias matches it")
        state = self._state(key, at)
        ratio = self.cat.ratios.get(key.group_name, 1_000_000)
        cost = quota.request_cost(self.cat.models[billed], input_tokens=u.input_tokens,
                                  cached_tokens=u.cached_tokens, output_tokens=u.output_tokens, ratio_ppm=ratio)
        note, res = None, None
        if u.reservation:
            res = self.session.get(Reservation, u.reservation)
            if res is None or res.key_id != state.key.id:
                raise InvalidInput(f"reservation {u.reservation!r} does not belong to this key")
            if res.status != "held" or not self._unhold(state, res):
                note, res = f"reservation {u.reservation} was already {res.status}; charged without it", None
            elif state.sub is not None:  # packs this hold emptied were not loaded: load them again
                state.packs = _packs(self.session, state.extra_owner.id, at)
        pool = res.pool if res is not None else self._pool(state)
        plan, extra, payg = self._split(state, pool, cost, capped=res is not None)
        extra_total = sum(t for _, t in extra)
        self._apply(state, u, at, plan, extra, payg)
        parts = [name for name, amount in (("plan", plan), ("extra", extra_total), ("payg", payg)) if amount]
        row = dict(request_id=u.request_id, at=at, local_day=local_date(at, self.cat.tz).isoformat(),
                   account_id=state.key.account_id, key_id=state.key.id, subscription_id=state.key.subscription_id,
                   group_name=state.key.group_name, requested_model=u.model, billed_model=billed, api=u.api,
                   input_tokens=u.input_tokens, cached_tokens=u.cached_tokens, output_tokens=u.output_tokens,
                   cost=cost, charged_plan=plan, charged_extra=extra_total, charged_payg=payg,
                   pool=parts[0] if len(parts) == 1 else "mixed" if parts else "none",
                   status_code=u.status_code, latency_ms=u.latency_ms, stream=u.stream,
                   error=u.error[:2000] if u.error else None, reservation_id=u.reservation)
        self.records.append(row)
        self.seen.add(u.request_id)
        if res is not None:
            res.status, res.closed_at, res.request_id = "settled", self.now, u.request_id
        if cost > plan + extra_total + payg:
            note = (f"cost {cost} µcr exceeded what the hold and the balance allowed; "
                    f"{plan + extra_total + payg} µcr charged")
        return Recorded(u.request_id, False, None, note, row)

    def _unhold(self, state: _State, res: Reservation) -> bool:
        """Settling: the hold is given back first, then the real cost is charged."""
        self.session.flush()
        if not _release(self.session, res, self.now, "settled"):
            return False
        for obj in (state.key, state.account, state.sub, state.period, state.subuser, *state.packs):
            if obj is not None:
                self.session.refresh(obj)
        return True

    def _pool(self, state: _State) -> str:
        if state.key.kind == "payg":
            return "payg"
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
            found, plan_cost = quota.split_extra(
                cost, [(p.id or 0, p.credit - p.used - p.reserved) for p in state.packs])
            draws = list(found)
        if capped and state.sub is not None and state.sub.credit_granted is not None:
            available = state.sub.credit_granted - state.sub.credit_used - state.sub.credit_reserved
            plan_cost = min(plan_cost, max(available, 0))
        return plan_cost, draws, 0

    def _apply(self, state: _State, u: UsageInput, at: datetime, plan: int, extra: list[tuple[int, int]],
               payg: int) -> None:
        base = dict(at=at, key_id=state.key.id, kind="debit", request_id=u.request_id, order_id=None,
                    reason=f"usage {u.model}")
        if state.sub is not None:
            _add(state.sub, "credit_used", plan)
            if state.day is not None:
                _add(state.day, "requests", 1)
                _add(state.day, "tokens", u.input_tokens + u.output_tokens)
            for counter in (state.period, state.subuser):
                if counter is not None and plan:
                    _add(counter, "credit", plan)
            if plan:
                self.ledger.append({**base, "account_id": state.sub.account_id, "pool": "plan",
                                    "subscription_id": state.sub.id, "pack_id": None, "amount": -plan})
        packs = {p.id: p for p in state.packs}
        for pack_id, take in extra:
            _add(packs[pack_id], "used", take)
            self.ledger.append({**base, "account_id": state.extra_owner.id, "pool": "extra",
                                "subscription_id": None, "pack_id": pack_id, "amount": -take})
        if payg:
            _add(state.account, "payg_balance", -payg)
            self.ledger.append({**base, "account_id": state.account.id, "pool": "payg", "subscription_id": None,
                                "pack_id": None, "amount": -payg})
        _add(state.key_day, "requests", 1)
        _add(state.key_day, "credit", plan + sum(t for _, t in extra) + payg)
        _add(state.key, "credit_used", plan)
        if state.key.last_used_at is None or at > state.key.last_used_at:
            set_attribute(state.key, "last_used_at", at)

    def flush(self) -> None:
        self.session.flush()
        conn = self.session.connection()
        if self.records:
            conn.execute(UsageRecord.__table__.insert(), self.records)  # type: ignore[attr-defined]
            _roll_up(self.session, self.records)
        if self.ledger:
            conn.execute(LedgerEntry.__table__.insert(), self.ledger)  # type: ignore[attr-defined]
        self.records, self.ledger = [], []


_ROLLUP_SUMS = ("requests", "input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan",
                "charged_extra", "charged_payg", "latency_sum", "latency_count",
                *(f"lat_{i}" for i in range(len(LATENCY_BUCKETS_MS) + 1)))


def status_class(code: int) -> str:
    return f"{code // 100}xx"


def _roll_up(session: Session, records: list[dict[str, Any]]) -> None:
    """Add a batch of usage records to the daily rollups (one upsert per rollup row)."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in records:
        dims = (r["local_day"], r["key_id"], r["group_name"], r["billed_model"], r["api"], status_class(r["status_code"]))
        row = rows.get(dims)
        if row is None:
            row = rows[dims] = dict(zip(("local_day", "key_id", "group_name", "billed_model", "api", "status_class"), dims),
                                    account_id=r["account_id"], subscription_id=r["subscription_id"], last_at=r["at"],
                                    **{name: 0 for name in _ROLLUP_SUMS})
        row["requests"] += 1
        for name in ("input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan", "charged_extra",
                     "charged_payg"):
            row[name] += r[name]
        if r["latency_ms"] is not None:
            row["latency_sum"] += r["latency_ms"]
            row["latency_count"] += 1
            row[f"lat_{bucket_of(r['latency_ms'])}"] += 1
        row["last_at"] = max(row["last_at"], r["at"])
    session.connection().execute(_statements(session).roll_up, list(rows.values()))


# ---------------------------------------------------------------- import


@dataclass
class ImportReport:
    new: int = 0
    duplicate: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)


def import_usage(db: Database, lines: Any, *, now: datetime, batch_size: int = 2_000,
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


def _import_chunk(db: Database, chunk: list[tuple[int, Any]], now: datetime, report: ImportReport) -> None:
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
    with db.write() as session:
        batch = _Batch(session, db, now)
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
    key = batch._key(u)
    if batch.cat.billed(u.model) is None:
        raise InvalidInput(f"unknown model {u.model!r}")
    if u.reservation:
        res = batch.session.get(Reservation, u.reservation)
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


def limits_view(db: Database, ref: str, *, now: datetime) -> LimitsView:
    """The limits of a subscription (its subscription key) or of one key, side by side."""
    from planctl.services.sales import resolve_subscription

    _release_stale(db, now)
    with db.read() as session:
        key = None
        try:
            sub = resolve_subscription(session, ref)
            key = session.execute(select(ApiKey).where(ApiKey.subscription_id == sub.id)
                                  .order_by(col(ApiKey.kind) != "subscription", ApiKey.created_at)).scalars().first()
        except NotFound:
            key = keys.resolve(session, ref)
        if key is None:
            raise NotFound(f"subscription {ref!r} has no key")
        cat = _Catalog(session, db)
        state = _state(session, cat, key, now, write=False)
        limits, counters = state.limits(), state.counters()
        key_refusal = key_rules.key_refusal(key_rules.KeyState(key.status, key.expires_at), now)
        sub_refusal = lifecycle.availability(_sub_state(state.sub), now) if state.sub else None
        request = quota.Request(key_kind=key.kind, key_refusal=key_refusal, subscription_refusal=sub_refusal,
                                billed_model=(state.terms.models[0] if state.terms else next(iter(cat.models), None)),
                                group=key.group_name, api=(state.terms.api_types[0] if state.terms else "responses"))
        decision = quota.decide(request, limits, counters)
        boundary = quota.plan_boundary(limits, counters) if state.sub else None
        terms = state.terms
        return LimitsView(
            subscription_id=state.sub.id if state.sub else None, key_id=key.id,
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


def set_period_limit(db: Database, ref: str, enabled: bool, *, caller: Caller, now: datetime) -> Subscription:
    """Turn a subscription's periodic limit off or on, where its plan allows it."""
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
