"""The read-only admin lists: plans, accounts, keys and subscriptions.

They read with plain SQL (store/reads.py) in one read transaction, on a
`store.sql.SqliteFile` or a `store.engine.Database` alike, and import neither
SQLAlchemy nor the table models: these are the commands people and scripts run
most, and each must start within 300 ms (issue 14). Commands that write keep
the ORM (services/catalog.py, accounts.py, keys.py, sales.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from planctl.domain import config, lifecycle
from planctl.domain import keys as key_rules
from planctl.domain.catalog import Context, PlanTerms, currency_decimals, parse_plan
from planctl.domain.clock import has_dst, zone
from planctl.domain.errors import InvalidInput
from planctl.store import reads, refs
from planctl.store.reads import ACCOUNTS, KEYS, PLANS, SUBSCRIPTIONS
from planctl.store.sql import Tx


class ReadDb(Protocol):
    def tx(self, *, write: bool) -> Any: ...


# ---------------------------------------------------------------- plans


@dataclass(frozen=True)
class PlanRecord:
    terms: PlanTerms
    version: int
    created_at: datetime
    updated_at: datetime


def catalog_context(tx: Tx) -> Context:
    """What catalog entries are validated against: currency, known models and groups."""
    loaded = config.effective(reads.settings(tx))
    currency = loaded["currency"]
    return Context(
        currency=currency,
        currency_decimals=currency_decimals(currency),
        models=frozenset(reads.names(tx, "models", "id")),
        groups=frozenset(reads.names(tx, "groups", "name")),
        zone_has_dst=has_dst(zone(loaded["reset_timezone"])),
    )


def plan_record(row: Any, ctx: Context) -> PlanRecord:
    """A stored plan (an ORM `Plan` or a `reads.PLANS` row), its terms checked again."""
    terms = parse_plan(row.terms, ctx, where=f"stored plan {row.slug!r}")
    return PlanRecord(terms, row.version, row.created_at, row.updated_at)


def plans(db: ReadDb, *, family: str | None = None, include_retired: bool = True) -> list[PlanRecord]:
    where, params = _where({"p.family = :family": family, "p.on_sale = :on_sale": None if include_retired else True})
    with db.tx(write=False) as tx:
        ctx = catalog_context(tx)
        return [plan_record(p, ctx) for p in PLANS.rows(tx, "p", f"{where} ORDER BY p.family, p.tier, p.slug", params)]


# ---------------------------------------------------------------- accounts


def accounts(db: ReadDb, *, parent: str | None = None, group: str | None = None) -> list[Any]:
    with db.tx(write=False) as tx:
        where, params = _where({"a.parent_id = :parent": _resolved(tx, "account", parent),
                                "a.default_group = :group": group or None})
        return ACCOUNTS.rows(tx, "a", f"{where} ORDER BY a.name", params)


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyFilter:
    account: str | None = None
    subscription: str | None = None
    plan: str | None = None
    group: str | None = None
    status: str | None = None
    kind: str | None = None
    name: str | None = None  # a prefix, or a glob with * and ?
    expiring_before: datetime | None = None
    limit: int = 1_000


@dataclass(frozen=True)
class KeyView:
    """A key with the names people recognise and whether it can be used now."""

    key: Any  # an ORM `ApiKey` or a `reads.KEYS` row
    account_name: str
    plan: str | None  # the plan of its subscription
    unusable: str | None  # None: usable now; else a reason code (key_disabled, subscription_expired, …)


def keys(db: ReadDb, flt: KeyFilter, *, now: datetime) -> list[KeyView]:
    for value, choices, what in ((flt.status, key_rules.STATUSES, "status"), (flt.kind, key_rules.KINDS, "kind")):
        if value is not None and value not in choices:
            raise InvalidInput(f"unknown key {what} {value!r}: use {', '.join(choices)}")
    with db.tx(write=False) as tx:
        join = ""
        conditions: dict[str, Any] = {
            "k.account_id = :account": _resolved(tx, "account", flt.account),
            "k.subscription_id = :subscription": _resolved(tx, "subscription", flt.subscription),
            "k.group_name = :group": flt.group or None, "k.status = :status": flt.status or None,
            "k.kind = :kind": flt.kind or None,
            "k.expires_at IS NOT NULL AND k.expires_at < :before": tx.at(flt.expiring_before),
        }
        if flt.plan:
            join = "JOIN subscriptions s ON s.id = k.subscription_id JOIN plans p ON p.id = s.plan_id "
            conditions["p.slug = :plan"] = _resolved(tx, "plan", flt.plan)
        if flt.name and not any(c in flt.name for c in "*?"):
            conditions["substr(k.name, 1, :name_length) = :name"] = flt.name
        elif flt.name:
            escaped = flt.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions["k.name LIKE :name ESCAPE '\\'"] = escaped.replace("*", "%").replace("?", "_")
        where, params = _where(conditions)
        params["name_length"] = len(flt.name or "")
        found = KEYS.rows(tx, "k", f"{join}{where} ORDER BY k.account_id, k.name LIMIT {int(flt.limit)}", params)
        return key_views(tx, found, now)


def key_views(tx: Tx, found: Sequence[Any], now: datetime) -> list[KeyView]:
    """KeyViews for keys of any number of accounts and subscriptions, in a few queries."""
    names = dict(reads.in_chunks(tx, "SELECT id, name FROM accounts WHERE id IN (:ids)",
                                 sorted({k.account_id for k in found})))
    read = SUBSCRIPTIONS.reader(tx)
    width = len(SUBSCRIPTIONS.columns)
    subs = {row[0]: (read(row[:width]), row[width]) for row in reads.in_chunks(
        tx, f"SELECT {SUBSCRIPTIONS.select('s')}, p.slug FROM subscriptions s JOIN plans p ON p.id = s.plan_id "
            "WHERE s.id IN (:ids)", sorted({k.subscription_id for k in found if k.subscription_id}))}
    refunded = {r[0] for r in tx.rows("SELECT subscription_id FROM orders WHERE subscription_id IS NOT NULL "
                                      "AND refunded > 0")}
    out = []
    for key in found:
        sub, slug = subs.get(key.subscription_id or "", (None, None))
        reason = key_rules.key_refusal(key_rules.KeyState(key.status, key.expires_at), now)
        if reason is None and sub is not None:
            reason = lifecycle.standing(subscription_state(sub), now, refunded=sub.id in refunded)
        if reason is None and key.credit_cap is not None and key.credit_used >= key.credit_cap:
            reason = "key_credit_cap_reached"
        out.append(KeyView(key, names.get(key.account_id, key.account_id), slug, reason))
    return out


# ---------------------------------------------------------------- subscriptions


SUBSCRIPTION_STATES = ("active", "expired", "cancelled", "not-started")


@dataclass(frozen=True)
class SubscriptionRow:
    subscription: Any  # a `reads.SUBSCRIPTIONS` row
    plan_slug: str
    state: str  # one of SUBSCRIPTION_STATES
    plan_version: int  # the plan's own version number of the terms in force
    account_name: str


def subscription_state(sub: Any) -> lifecycle.SubscriptionState:
    return lifecycle.SubscriptionState(status=sub.status, starts_at=sub.starts_at, ends_at=sub.ends_at,
                                       anchor_day=sub.anchor_day, credit_granted=sub.credit_granted,
                                       credit_used=sub.credit_used)


def state_name(sub: Any, now: datetime) -> str:
    reason = lifecycle.availability(subscription_state(sub), now)
    return {None: "active", "subscription_cancelled": "cancelled", "subscription_expired": "expired",
            "subscription_not_started": "not-started"}[reason]


def subscriptions(db: ReadDb, *, now: datetime, account: str | None = None, plan: str | None = None,
                  state: str | None = None) -> list[SubscriptionRow]:
    """Newest first; `plan_version` is that of the term in force at `now` (tables.SubscriptionTerm)."""
    if state is not None and state not in SUBSCRIPTION_STATES:
        raise InvalidInput(f"unknown status {state!r}: use {', '.join(SUBSCRIPTION_STATES)}")
    with db.tx(write=False) as tx:
        where, params = _where({"s.account_id = :account": _resolved(tx, "account", account),
                                "p.slug = :plan": _resolved(tx, "plan", plan)})
        params["now"] = tx.at(now)
        read = SUBSCRIPTIONS.reader(tx)
        width = len(SUBSCRIPTIONS.columns)
        rows = tx.rows(
            f"SELECT {SUBSCRIPTIONS.select('s')}, p.slug, a.name, (SELECT v.version FROM plan_versions v WHERE v.id = "
            "COALESCE((SELECT t.plan_version_id FROM subscription_terms t WHERE t.subscription_id = s.id "
            "AND t.starts_at <= :now ORDER BY t.starts_at DESC LIMIT 1), s.plan_version_id)) "
            "FROM subscriptions s JOIN plans p ON p.id = s.plan_id JOIN accounts a ON a.id = s.account_id "
            f"{where} ORDER BY s.created_at DESC, s.id", params)
    views = []
    for row in rows:
        sub = read(row[:width])
        slug, account_name, version = row[width:]
        views.append(SubscriptionRow(sub, slug, state_name(sub, now), version, account_name))
    return [v for v in views if state is None or v.state == state]


# ----------------------------------------------------------------


def _resolved(tx: Tx, noun: str, ref: str | None) -> str | None:
    """The id a filter option names (store/refs.py), or None when the option was not given."""
    return refs.resolve(tx, noun, ref) if ref else None


def _where(conditions: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`WHERE a AND b` of the conditions whose value is not None; each condition's value is
    its last `:parameter`."""
    chosen = {sql: value for sql, value in conditions.items() if value is not None}
    params: dict[str, Any] = {}
    for sql, value in chosen.items():
        params[sql.rsplit(":", 1)[1].split()[0]] = value
    return ("WHERE " + " AND ".join(chosen) if chosen else ""), params
