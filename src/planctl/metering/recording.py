"""Recording: a request's usage, charged in full, idempotently by request id.

`UsageInput` is one request as the gateway, `usage record` or an import line gives it;
`validate` checks what needs no database; `record` charges one in its own transaction.
`Batch` is the one writer `record` and `usage import` (importing.py) share, so a single
record and a million imported ones follow the same rules: it reads each row once, charges
the objects in place (changes.py), settles holds (holds.py) and writes the usage records
with their rollups (rollups.py) at `flush`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from planctl.domain import quota
from planctl.domain import usage as bounds
from planctl.domain.clock import iso
from planctl.domain.errors import Conflict, InvalidInput, NotFound, Refused
from planctl.domain.secrets import redact
from planctl.metering.catalog import UNREAD, Catalogs
from planctl.metering.changes import Changes
from planctl.metering.holds import give_back
from planctl.metering.rollups import Rollups
from planctl.metering.state import Found, MeterDb, State, fill, frame, key_by_secret
from planctl.store import meter
from planctl.store.columns import CONTENT_COLUMNS, USAGE_COLUMNS
from planctl.store.meter import HoldRow
from planctl.store.sql import Tx


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


class RaceLost(Exception):
    """Another transaction committed one of the batch's request ids after the batch checked them
    (or closed a hold it was settling): the batch is rolled back and run again, when that id is an
    ordinary duplicate."""


def record(db: MeterDb, catalogs: Catalogs, u: UsageInput, *, now: datetime) -> Recorded:
    """Record one request; a request id seen before with the same content changes nothing
    (`duplicate`), with other content it is a conflict (exit 6, naming the fields that differ)."""
    validate(u, now=now)
    for attempt in range(RETRIES + 1):
        try:
            with db.tx(write=True) as tx:
                batch = Batch.seeded(tx, catalogs, now, u)  # locks the key, its account and subscription first
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
        except RaceLost:
            if attempt == RETRIES:
                raise Conflict(f"request id {u.request_id!r} is being recorded by another process; try again") \
                    from None
    raise AssertionError("unreachable")


class Batch:
    """Charges usage records in one write transaction.

    Rows are read when first needed and kept for the whole batch, one object per
    row (`Changes`), so every request sees the ones before it; the changes are
    written, with the usage records and their rollups, by `flush`. On PostgreSQL
    every row read was locked, so what the batch sees stays true until the commit.
    Everything that can refuse a request is checked before it changes anything.
    """

    def __init__(self, tx: Tx, catalogs: Catalogs, now: datetime, stamp: int | None = UNREAD) -> None:
        self.tx, self.now = tx, now
        self.cat = catalogs.get(tx, write=True, stamp=stamp)
        self.changes = Changes()
        self.states: dict[tuple[str, datetime], State] = {}
        self.key_ids: dict[str, str] = {}  # key reference -> key id
        self.found: dict[str, Found] = {}  # key id -> its rows
        self.index: dict[str, int] = {}  # request id -> its place in `records`
        self.records: list[tuple[Any, ...]] = []  # rows of USAGE_COLUMNS
        self.rollups = Rollups()
        self.holds: dict[str, HoldRow | None] = {}  # reservations read ahead (read after their key's lock)
        self.versions: dict[tuple[str, datetime], int] = {}  # (key id, instant) -> plan version then
        self.known: dict[str, dict[str, Any]] | None = None  # `recorded`, read ahead

    @classmethod
    def seeded(cls, tx: Tx, catalogs: Catalogs, now: datetime, u: UsageInput) -> Batch:
        """A batch for one record whose key is given by id (the gateway's): its key, subscription,
        plan version, catalog stamp, request id and hold read at once (meter.key_at)."""
        if u.key is None:
            return cls(tx, catalogs, now)
        then = [meter.recorded_statement([u.request_id])]
        if u.reservation:
            then.append(meter.hold_statement(u.reservation))
        at = u.at or now
        read = meter.key_at(tx, "id", u.key, at, write=True, then=tuple(then))
        if read is None:
            return cls(tx, catalogs, now)
        batch = cls(tx, catalogs, now, read.stamp)
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

    def state(self, found: Found, at: datetime, day: datetime) -> State:
        """The key's windows at `at`, in the natural day starting at `day`, with the batch's objects
        of their counters (read from the database only when a decision needs them: `filled`)."""
        state = self.states.get((found[0].id, day))
        if state is None or (state.windows.period and not state.windows.period[0] <= at < state.windows.period[1]):
            state = self.states[(found[0].id, day)] = frame(self.tx, self.cat, found, at,
                                                             self.versions.get((found[0].id, at)))
            state.count = {name: self.changes.row("counter", window) for name, window in state.window.items()}
        state.at = at
        return state

    def filled(self, state: State) -> State:
        if not state.loaded:
            fill(self.tx, state, lock=True, adopt=self.changes.adopt)
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
            if res.status != "held" or not give_back(self.tx, res, self.now, "settled", self.changes, u.request_id,
                                                    lost=RaceLost()):
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

    def _pool(self, state: State) -> str:
        if state.key.kind == "payg":
            return "payg"
        if not quota.has_boundary(state.limits()):
            return "plan"
        self.filled(state)
        counters = state.counters()
        boundary = quota.plan_boundary(state.limits(), counters)
        return "extra" if boundary and counters.extra_available > 0 else "plan"

    def _split(self, state: State, pool: str, cost: int, *, capped: bool) -> tuple[int, list[tuple[int, int]], int]:
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

    def _apply(self, state: State, u: UsageInput, at: datetime, stored: Any, plan: int,
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
                raise RaceLost()
            meter.roll_up(self.tx, self.rollups.rows())
        self.records, self.index, self.rollups = [], {}, Rollups()


_USAGE_AT = {c: USAGE_COLUMNS.index(c) for c in CONTENT_COLUMNS}
