"""The metering tables, read and written with plain SQL (see store/sql.py for why).

Query functions return plain rows; writers take plain values. Every debit or
hold is one conditional UPDATE whose affected-row count decides; balances are
moved by increments, so two transactions can never overwrite each other's
change. The decisions themselves live in domain/quota.py and the
metering package (planctl/metering/).

On PostgreSQL a write transaction locks the rows it reads in one global
order: keys, then accounts, then subscriptions (each kind by id; see
`lock_owners`), then reservations, packs and counters, whose rows every
writer also moves sorted by id. Two transactions therefore never wait on each
other in a cycle (no deadlock). Locks are `FOR NO KEY UPDATE`: metering never
changes a row's id, and this strength does not block the foreign-key checks of
the ledger and usage rows another transaction inserts. SQLite's `BEGIN
IMMEDIATE` already excludes other writers.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from planctl.store.columns import (CONTENT_COLUMNS, LEDGER_COLUMNS, RESERVATION_COLUMNS, ROLLUP_COLUMNS,
                                    ROLLUP_DIMENSIONS, ROLLUP_SUMS, USAGE_COLUMNS)
from planctl.store.sql import Tx

# ---------------------------------------------------------------- rows


@dataclass(slots=True)
class KeyRow:
    id: str
    account_id: str
    subscription_id: str | None
    kind: str
    name: str
    group_name: str
    status: str
    expires_at: datetime | None
    credit_cap: int | None
    credit_used: int
    credit_reserved: int
    daily_limit: int | None
    rpd: int | None
    last_used_at: datetime | None
    previous_valid_until: datetime | None


@dataclass(slots=True)
class AccountRow:
    id: str
    parent_id: str | None
    subuser_quota: int | None
    payg_balance: int
    payg_reserved: int


@dataclass(slots=True)
class SubRow:
    id: str
    account_id: str
    plan_version_id: int
    status: str
    starts_at: datetime
    ends_at: datetime
    anchor_day: int
    credit_granted: int | None
    credit_used: int
    credit_reserved: int
    period_limit_enabled: bool


@dataclass(slots=True)
class CounterRow:
    requests: int = 0
    tokens: int = 0
    credit: int = 0
    reserved: int = 0


@dataclass(slots=True)
class PackRow:
    id: int
    credit: int
    used: int
    reserved: int
    expires_at: datetime | None

    @property
    def available(self) -> int:
        return self.credit - self.used - self.reserved


@dataclass(slots=True)
class HoldRow:
    """A reservation."""

    id: str
    key_id: str
    account_id: str
    subscription_id: str | None
    pool: str
    amount: int
    holds: dict[str, Any] = field(default_factory=dict)
    status: str = "held"
    request_id: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    closed_at: datetime | None = None


Window = tuple[str, str, datetime]  # (owner, scope, window start)

# ---------------------------------------------------------------- keys

_KEY = ("k.id, k.account_id, k.subscription_id, k.kind, k.name, k.group_name, k.status, k.expires_at, k.credit_cap, "
        "k.credit_used, k.credit_reserved, k.daily_limit, k.rpd, k.last_used_at, k.previous_valid_until, "
        "a.parent_id, a.subuser_quota, a.payg_balance, a.payg_reserved")
_SUB = ("s.id, s.account_id, s.plan_version_id, s.status, s.starts_at, s.ends_at, s.anchor_day, s.credit_granted, "
        "s.credit_used, s.credit_reserved, s.period_limit_enabled")
_KEY_SQL = {column: (f"SELECT {_KEY}, {_SUB} FROM api_keys k JOIN accounts a ON a.id = k.account_id "
                     f"LEFT JOIN subscriptions s ON s.id = k.subscription_id WHERE k.{column} = :value")
            for column in ("id", "secret_sha256", "previous_sha256")}
_KEY_LOCK_SQL = {column: (f"SELECT {_KEY} FROM api_keys k JOIN accounts a ON a.id = k.account_id "
                          f"WHERE k.{column} = :value FOR NO KEY UPDATE OF k, a") for column in _KEY_SQL}
_SUB_LOCK_SQL = f"SELECT {_SUB} FROM subscriptions s WHERE s.id = :value FOR NO KEY UPDATE"


def key_by(tx: Tx, column: str, value: str, *, write: bool) -> tuple[KeyRow, AccountRow, SubRow | None] | None:
    """A key with its account and subscription, by `id`, `secret_sha256` or `previous_sha256`;
    locked (PostgreSQL) in a write transaction."""
    if write and not tx.sqlite:
        row = tx.one(_KEY_LOCK_SQL[column], {"value": value})
        if row is None:
            return None
        sub = tx.one(_SUB_LOCK_SQL, {"value": row[2]}) if row[2] else None
    else:
        row = tx.one(_KEY_SQL[column], {"value": value})
        if row is None:
            return None
        sub = row[19:] if row[19] is not None else None
    return _found(tx, row, sub)


@dataclass(slots=True)
class KeyAt:
    """A key with its account and subscription, and what admitting or charging it at one instant
    also needs, read together: the plan version in force, the catalog stamp, whether any hold
    anywhere is past its expiry, and the extra usage the subscription's account has left."""

    found: tuple[KeyRow, AccountRow, SubRow | None]
    version_id: int | None
    stamp: int | None
    stale: bool
    extra: int
    then: list[Any]  # the results of the statements sent with it (`key_at`'s `then`)


_AT_ANY = ("(SELECT value FROM counters WHERE name = 'catalog-stamp'), "
           "EXISTS (SELECT 1 FROM reservations WHERE status = 'held' AND expires_at <= :at)")
_AT_SUB = ("COALESCE((SELECT t.plan_version_id FROM subscription_terms t WHERE t.subscription_id = s.id "
           "AND t.starts_at <= :at ORDER BY t.starts_at DESC LIMIT 1), s.plan_version_id), "
           "(SELECT COALESCE(SUM(p.credit - p.used - p.reserved), 0) FROM extra_packs p WHERE p.account_id = s.account_id "
           "AND p.credit > p.used AND (p.expires_at IS NULL OR p.expires_at > :at))")
_KEY_AT_SQL = {column: (f"SELECT {_KEY}, {_SUB}, {_AT_SUB}, {_AT_ANY} FROM api_keys k JOIN accounts a "
                        f"ON a.id = k.account_id LEFT JOIN subscriptions s ON s.id = k.subscription_id "
                        f"WHERE k.{column} = :value") for column in _KEY_SQL}
_KEY_AT_LOCK_SQL = {column: (f"SELECT {_KEY}, {_AT_ANY} FROM api_keys k JOIN accounts a ON a.id = k.account_id "
                             f"WHERE k.{column} = :value FOR NO KEY UPDATE OF k, a",
                             f"SELECT {_SUB}, {_AT_SUB} FROM subscriptions s WHERE s.id = (SELECT subscription_id "
                             f"FROM api_keys WHERE {column} = :value) FOR NO KEY UPDATE OF s")
                    for column in _KEY_SQL}


def key_at(tx: Tx, column: str, value: str, at: datetime, *, write: bool,
           then: tuple[tuple[str, dict[str, Any] | None], ...] = ()) -> KeyAt | None:
    """`key_by` and what goes with it at `at` (KeyAt), in one statement (two on PostgreSQL in a
    write, which lock the key and account, then the subscription); on PostgreSQL `then`'s
    statements travel in the same round trip, after the locks."""
    params = {"value": value, "at": tx.at(at)}
    if write and not tx.sqlite:
        results = tx.batch([(sql, params) for sql in _KEY_AT_LOCK_SQL[column]] + list(then))
        if not results[0][1]:
            return None
        row, subs = results[0][1][0], results[1][1]
        sub = subs[0] if subs else None
        stamp, stale = row[19], row[20]
        version, extra = (sub[11], sub[12]) if sub else (None, 0)
        later = [r[1] for r in results[2:]]
    else:
        results = tx.batch([(_KEY_AT_SQL[column], params)] + list(then))
        if not results[0][1]:
            return None
        row = results[0][1][0]
        sub = row[19:30] if row[19] is not None else None
        version, extra, stamp, stale = row[30:34]
        later = [r[1] for r in results[1:]]
    return KeyAt(_found(tx, row, sub), version, stamp, bool(stale), extra or 0, later)


def _found(tx: Tx, row: Any, sub: Any) -> tuple[KeyRow, AccountRow, SubRow | None]:
    at = tx.instant
    key = KeyRow(*row[:7], at(row[7]), *row[8:13], at(row[13]), at(row[14]))
    account = AccountRow(row[1], *row[15:19])
    if sub is None:
        return key, account, None
    return key, account, SubRow(*sub[:4], at(sub[4]), at(sub[5]), *sub[6:10], bool(sub[10]))


_OPEN_HOLDS_SQL = ("SELECT COALESCE(SUM(CASE WHEN key_id = :key THEN 1 ELSE 0 END), 0), COUNT(*) FROM reservations "
                   "WHERE status = 'held' AND (key_id = :key OR subscription_id = :sub)")


def open_holds_statement(key_id: str, sub_id: str | None) -> tuple[str, dict[str, Any]]:
    """The statement counting the open holds of a key and of its subscription (requests admitted
    and not yet recorded): its one row is (the key's, the key's and the subscription's)."""
    return _OPEN_HOLDS_SQL, {"key": key_id, "sub": sub_id}


def lock_owners(tx: Tx, key_ids: Any) -> None:
    """Lock keys, then their accounts and their subscriptions' accounts, then those
    subscriptions, each kind sorted by id (PostgreSQL; SQLite's write transaction already
    excludes other writers). A transaction that will touch several keys calls this first."""
    ids = sorted(set(key_ids))
    if tx.sqlite or not ids:
        return
    owners = tx.rows("SELECT k.account_id, s.id, s.account_id FROM api_keys k LEFT JOIN subscriptions s "
                     "ON s.id = k.subscription_id WHERE k.id = ANY(:ids)", {"ids": ids})
    accounts = sorted({r[0] for r in owners} | {r[2] for r in owners if r[2]})
    subs = sorted({r[1] for r in owners if r[1]})
    for table, group in (("api_keys", ids), ("accounts", accounts), ("subscriptions", subs)):
        if group:
            tx.rows(f"SELECT id FROM {table} WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE", {"ids": group})


def resolve_key(tx: Tx, ref: str, account_id: str | None = None) -> str:
    """A key id from its id, name, visible prefix (`sk-AbCd`) or an unambiguous prefix (store/refs.py)."""
    from planctl.store import refs

    return refs.resolve(tx, "key", ref, account_id=account_id)


def charge_keys(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """rows of {id, used, reserved, last}: consumption and holds moved by increments."""
    tx.later("UPDATE api_keys SET credit_used = credit_used + :used, credit_reserved = credit_reserved + :reserved, "
            "last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < :last THEN :last ELSE last_used_at END "
            "WHERE id = :id", [{**r, "last": tx.at(r["last"])} for r in rows])


def hold_key(tx: Tx, key_id: str, amount: int, refuse: Exception) -> None:
    """Hold on the key's credit cap; `refuse` is raised (at the latest before the commit) when the
    cap has no room. So are the other holds."""
    tx.later("UPDATE api_keys SET credit_reserved = credit_reserved + :amount WHERE id = :id AND "
             "(credit_cap IS NULL OR credit_used + credit_reserved + :amount <= credit_cap)",
             {"id": key_id, "amount": amount}, check=_one_or(refuse))


def _one_or(refuse: Exception) -> Callable[[int], None]:
    """A check that one row was changed, raising `refuse` otherwise."""
    def check(count: int) -> None:
        if count != 1:
            raise refuse
    return check


# ---------------------------------------------------------------- subscriptions, accounts, packs


def hold_subscription(tx: Tx, sub_id: str, amount: int, refuse: Exception) -> None:
    tx.later("UPDATE subscriptions SET credit_reserved = credit_reserved + :amount WHERE id = :id AND "
             "(credit_granted IS NULL OR credit_granted - credit_used - credit_reserved >= :amount)",
             {"id": sub_id, "amount": amount}, check=_one_or(refuse))


def charge_subscriptions(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """rows of {id, used, reserved}."""
    tx.later("UPDATE subscriptions SET credit_used = credit_used + :used, "
            "credit_reserved = credit_reserved + :reserved WHERE id = :id", rows)


def hold_payg(tx: Tx, account_id: str, amount: int, refuse: Exception) -> None:
    tx.later("UPDATE accounts SET payg_reserved = payg_reserved + :amount WHERE id = :id AND "
             "payg_balance - payg_reserved >= :amount", {"id": account_id, "amount": amount}, check=_one_or(refuse))


def charge_payg(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """rows of {id, balance, reserved}: increments of the PAYG balance and its holds."""
    tx.later("UPDATE accounts SET payg_balance = payg_balance + :balance, payg_reserved = payg_reserved + :reserved "
            "WHERE id = :id", rows)


def packs_of(tx: Tx, account_id: str, *, lock: bool) -> list[PackRow]:
    """An account's extra-usage packs not used up (held ones too: a settled hold gives back),
    those expiring first first, never-expiring last. Callers skip the expired ones."""
    return [PackRow(r[0], r[1], r[2], r[3], tx.instant(r[4])) for r in tx.rows(
        "SELECT id, credit, used, reserved, expires_at FROM extra_packs WHERE account_id = :account AND "
        "credit > used ORDER BY CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END, expires_at, id"
        + (tx.lock if lock else ""), {"account": account_id})]


def hold_pack(tx: Tx, pack_id: int, amount: int, refuse: Exception) -> None:
    tx.later("UPDATE extra_packs SET reserved = reserved + :amount WHERE id = :id AND "
             "credit - used - reserved >= :amount", {"id": pack_id, "amount": amount}, check=_one_or(refuse))


def charge_packs(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """rows of {id, used, reserved}."""
    tx.later("UPDATE extra_packs SET used = used + :used, reserved = reserved + :reserved WHERE id = :id", rows)


# ---------------------------------------------------------------- counters


_COUNTERS_SQL = ("SELECT owner, scope, window_start, requests, tokens, credit, reserved FROM usage_counters WHERE "
                 + " OR ".join(f"(owner = :o{i} AND scope = :s{i} AND window_start = :w{i})" for i in range(4)))


def counters(tx: Tx, windows: list[Window]) -> dict[Window, CounterRow]:
    """The counters of up to four windows in one statement (a missing row counts zero)."""
    return counters_from(tx, windows, tx.rows(*counters_statement(tx, windows)))


def counters_statement(tx: Tx, windows: list[Window]) -> tuple[str, dict[str, Any]]:
    """`counters` as a statement to send with others; `counters_from` reads its rows."""
    params: dict[str, Any] = {}
    for i in range(4):
        owner, scope, start = windows[i] if i < len(windows) else (None, None, None)
        params[f"o{i}"], params[f"s{i}"], params[f"w{i}"] = owner, scope, tx.at(start)
    return _COUNTERS_SQL, params


def counters_from(tx: Tx, windows: list[Window], rows: list[Any] | None) -> dict[Window, CounterRow]:
    found = {(r[0], r[1], r[2]): CounterRow(*r[3:]) for r in rows or ()}
    return {w: found.get((w[0], w[1], tx.at(w[2]))) or CounterRow() for w in windows}  # keys as the rows hold them


def ensure_counter(tx: Tx, window: Window) -> None:
    tx.later("INSERT INTO usage_counters (owner, scope, window_start, requests, tokens, credit, reserved) "
           "VALUES (:owner, :scope, :start, 0, 0, 0, 0) ON CONFLICT (owner, scope, window_start) DO NOTHING",
           {"owner": window[0], "scope": window[1], "start": tx.at(window[2])})


def hold_counter(tx: Tx, window: Window, amount: int, cap: int | None, refuse: Exception) -> None:
    """Hold credit on a counter (created if missing), within `cap` when there is one."""
    ensure_counter(tx, window)
    within = "" if cap is None else " AND credit + reserved + :amount <= :cap"
    tx.later("UPDATE usage_counters SET reserved = reserved + :amount WHERE owner = :owner AND scope = :scope "
             "AND window_start = :start" + within,
             {"owner": window[0], "scope": window[1], "start": tx.at(window[2]), "amount": amount, "cap": cap},
             check=_one_or(refuse))


def add_to_counters(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """rows of {id: window, requests, tokens, credit, reserved}: added to each window's counter,
    which is created when new."""
    tx.later("INSERT INTO usage_counters (owner, scope, window_start, requests, tokens, credit, reserved) "
            "VALUES (:owner, :scope, :start, :requests, :tokens, :credit, :reserved) "
            "ON CONFLICT (owner, scope, window_start) DO UPDATE SET requests = usage_counters.requests + "
            "excluded.requests, tokens = usage_counters.tokens + excluded.tokens, "
            "credit = usage_counters.credit + excluded.credit, reserved = usage_counters.reserved + excluded.reserved",
            [{"owner": r["id"][0], "scope": r["id"][1], "start": tx.at(r["id"][2]), "requests": r["requests"],
              "tokens": r["tokens"], "credit": r["credit"], "reserved": r["reserved"]} for r in rows])


# ---------------------------------------------------------------- reservations

_HOLD = ", ".join(RESERVATION_COLUMNS)


def _hold_row(tx: Tx, r: tuple[Any, ...]) -> HoldRow:
    return HoldRow(*r[:6], tx.json_out(r[6]), r[7], r[8], tx.instant(r[9]), tx.instant(r[10]), tx.instant(r[11]))


def insert_hold(tx: Tx, res: HoldRow) -> None:
    tx.later(f"INSERT INTO reservations ({_HOLD}) VALUES (:id, :key_id, :account_id, :subscription_id, :pool, :amount, "
           ":holds, :status, NULL, :created_at, :expires_at, NULL)",
           {"id": res.id, "key_id": res.key_id, "account_id": res.account_id, "subscription_id": res.subscription_id,
            "pool": res.pool, "amount": res.amount, "holds": tx.json_in(res.holds), "status": res.status,
            "created_at": tx.at(res.created_at), "expires_at": tx.at(res.expires_at)})


_GET_HOLD = f"SELECT {_HOLD} FROM reservations WHERE id = :id"


def get_hold(tx: Tx, res_id: str) -> HoldRow | None:
    return hold_from(tx, tx.rows(_GET_HOLD, {"id": res_id}))


def hold_statement(res_id: str) -> tuple[str, dict[str, Any]]:
    """`get_hold` as a statement to send with others (`key_at`'s `then`); `hold_from` reads its rows."""
    return _GET_HOLD, {"id": res_id}


def hold_from(tx: Tx, rows: list[Any] | None) -> HoldRow | None:
    return _hold_row(tx, rows[0]) if rows else None


_CLOSE_HOLD = ("UPDATE reservations SET status = :status, closed_at = :at, "
               "request_id = COALESCE(:request, request_id) WHERE id = :id AND status = 'held'")


def close_hold(tx: Tx, res_id: str, status: str, at: datetime, request_id: str | None = None, *,
               lost: Exception | None = None) -> bool:
    """held → settled | released | expired, once: of two transactions closing a hold, one wins.
    With `lost` (the caller read the hold as held after locking its key) the change waits for
    the next round trip, and `lost` is raised if the hold was closed meanwhile after all."""
    params = {"id": res_id, "status": status, "at": tx.at(at), "request": request_id}
    if lost is not None:
        tx.later(_CLOSE_HOLD, params, check=_one_or(lost))
        return True
    return tx.run(_CLOSE_HOLD, params) == 1


def any_stale(tx: Tx, now: datetime) -> bool:
    return tx.one("SELECT 1 FROM reservations WHERE status = 'held' AND expires_at <= :now LIMIT 1",
                  {"now": tx.at(now)}) is not None


def stale_holds(tx: Tx, now: datetime) -> list[HoldRow]:
    return [_hold_row(tx, r) for r in tx.rows(
        f"SELECT {_HOLD} FROM reservations WHERE status = 'held' AND expires_at <= :now ORDER BY expires_at",
        {"now": tx.at(now)})]


HOLD_STATUSES = ("held", "settled", "released", "expired")


def list_holds(tx: Tx, *, status: str | None, key_id: str | None, limit: int) -> list[HoldRow]:
    """Newest first. Open holds are read through their own (partial) index."""
    assert status is None or status in HOLD_STATUSES
    where = " AND ".join(w for w, v in ((f"status = '{status}'", status), ("key_id = :key", key_id)) if v) or "1 = 1"
    return [_hold_row(tx, r) for r in tx.rows(
        f"SELECT {_HOLD} FROM reservations WHERE {where} ORDER BY created_at DESC, id LIMIT {int(limit)}",
        {"status": status, "key": key_id})]


# ---------------------------------------------------------------- usage records, ledger, rollups

_INSERT_USAGE = (f"INSERT INTO usage_records ({', '.join(USAGE_COLUMNS)}) "
                 f"VALUES ({', '.join(':' + c for c in USAGE_COLUMNS)}) ON CONFLICT (request_id) DO NOTHING")
_INSERT_LEDGER = (f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) "
                  f"VALUES ({', '.join(':' + c for c in LEDGER_COLUMNS)})")
_ROLL_UP = (f"INSERT INTO usage_daily ({', '.join(ROLLUP_COLUMNS)}) VALUES ({', '.join(':' + c for c in ROLLUP_COLUMNS)}) "
            f"ON CONFLICT ({', '.join(ROLLUP_DIMENSIONS)}) DO UPDATE SET "
            + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in ROLLUP_SUMS)
            + ", last_at = {latest}(usage_daily.last_at, excluded.last_at)")
_ROLL_UP_SQL = {True: _ROLL_UP.format(latest="max"), False: _ROLL_UP.format(latest="greatest")}  # SQLite: max


def recorded_content(tx: Tx, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The content (CONTENT_COLUMNS, `at` as stored) of the usage records of these request ids
    that exist."""
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(request_ids), 500):
        found.update(content_from(tx.rows(*recorded_statement(request_ids[i:i + 500]))))
    return found


def recorded_statement(request_ids: list[str]) -> tuple[str, dict[str, Any]]:
    """`recorded_content` of up to 500 request ids as a statement to send with others;
    `content_from` reads its rows."""
    marks = ", ".join(f":r{j}" for j in range(len(request_ids)))
    return (f"SELECT {', '.join(CONTENT_COLUMNS)} FROM usage_records WHERE request_id IN ({marks})",
            {f"r{j}": rid for j, rid in enumerate(request_ids)})


def content_from(rows: list[Any] | None) -> dict[str, dict[str, Any]]:
    return {r[0]: dict(zip(CONTENT_COLUMNS, r)) for r in rows or ()}


def insert_usage(tx: Tx, records: list[tuple[Any, ...]]) -> int:
    """Usage records: values in the order of USAGE_COLUMNS, `at` as stored (`tx.at`), inserted in
    request id order; returns how many were new (a request id another transaction committed
    meanwhile is skipped, and the caller starts over)."""
    records.sort(key=itemgetter(0))
    return tx.many_in_order(_INSERT_USAGE, records)


def insert_ledger(tx: Tx, entries: list[tuple[Any, ...]]) -> None:
    """Ledger entries: values in the order of LEDGER_COLUMNS, `at` as stored (`tx.at`)."""
    tx.later(_INSERT_LEDGER, entries)


_INSERT_PLAN_DEBIT = (f"INSERT INTO ledger ({', '.join(LEDGER_COLUMNS)}) VALUES "
                      "(:at, :account_id, 'plan', :subscription_id, NULL, :key_id, 'debit', :amount, NULL, "
                      ":request_id, :reason)")


def insert_plan_debits(tx: Tx, entries: list[tuple[Any, ...]]) -> None:
    """Ledger entries of usage charged to plan credit, the most frequent kind: values of (at as
    stored, account_id, subscription_id, key_id, amount, request_id, reason); the constant
    columns are not bound per row."""
    tx.later(_INSERT_PLAN_DEBIT, entries)


def roll_up(tx: Tx, rows: list[dict[str, Any]]) -> None:
    """Add rollup rows (dicts of the dimensions, sums, account, subscription and last_at) to usage_daily."""
    if tx.sqlite:
        rows = [{**r, "last_at": tx.at(r["last_at"])} for r in rows]
    rows.sort(key=itemgetter(*ROLLUP_DIMENSIONS))  # rows locked in one order (see the module's docstring)
    tx.later(_ROLL_UP_SQL[tx.sqlite], rows)


# ---------------------------------------------------------------- catalog


CATALOG_STAMP = "catalog-stamp"  # a row of `counters`: a new random value whenever the catalog changes


def catalog_stamp(tx: Tx) -> int | None:
    row = tx.one("SELECT value FROM counters WHERE name = :name", {"name": CATALOG_STAMP})
    return None if row is None else row[0]


def new_catalog_stamp(tx: Tx) -> int:
    """Mark the catalog changed: readers holding another stamp load it again."""
    value = secrets.randbits(62)
    tx.run("INSERT INTO counters (name, value) VALUES (:name, :value) "
           "ON CONFLICT (name) DO UPDATE SET value = excluded.value", {"name": CATALOG_STAMP, "value": value})
    return value


@dataclass(frozen=True)
class CatalogRows:
    models: list[tuple[str, int, int, int]]  # id, input, cached, output price (µcr per 10^6 tokens)
    aliases: list[tuple[str, str]]  # pattern, model id
    groups: list[tuple[str, int]]  # name, ratio (ppm)
    settings: dict[str, str]


def catalog_rows(tx: Tx) -> CatalogRows:
    return CatalogRows(
        models=[tuple(r) for r in tx.rows("SELECT id, input_price, cached_price, output_price FROM models")],  # type: ignore[misc]
        aliases=[tuple(r) for r in tx.rows("SELECT pattern, model_id FROM model_aliases")],  # type: ignore[misc]
        groups=[tuple(r) for r in tx.rows("SELECT name, ratio_ppm FROM groups")],  # type: ignore[misc]
        settings=dict(tx.rows("SELECT key, value FROM settings")),  # type: ignore[arg-type]
    )


def plan_version_terms(tx: Tx, version_id: int) -> dict[str, Any]:
    row = tx.one("SELECT terms FROM plan_versions WHERE id = :id", {"id": version_id})
    assert row is not None, f"plan version {version_id} is missing"
    return tx.json_out(row[0])
