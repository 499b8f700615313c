"""Accounts: the buyers (people or teams) and their sub-users."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from planctl.domain.errors import Conflict, InvalidInput, Refused
from planctl.domain.ids import short_id
from planctl.services import audit
from planctl.services.audit import Caller
from planctl.store.engine import Database
from planctl.store import refs
from planctl.store.sql import Tx
from planctl.store.tables import Account, ExtraPack, Order, Subscription

BILLING_FIELDS = ("billing_name", "billing_email", "billing_address", "billing_tax_id")


@dataclass(frozen=True)
class AccountSpec:
    """Validated fields of an account, as given by the user."""

    name: str
    default_group: str = "default"
    billing: Mapping[str, str] | None = None


def resolve(session: Session, ref: str) -> Account:
    """An account by id, name, or unambiguous prefix of either (store/refs.py)."""
    account = session.get(Account, refs.resolve(Tx.within(session), "account", ref))
    assert account is not None
    return account


def create(db: Database, fields: Mapping[str, Any], *, caller: Caller, now: datetime) -> Account:
    name = _name(fields.get("name"))
    with db.write() as session:
        if session.exec(select(Account).where(Account.name == name)).first():
            raise Conflict(f"an account named {name!r} already exists")
        parent = resolve(session, fields["parent"]) if fields.get("parent") else None
        group = _group(session, fields.get("default_group") or (parent.default_group if parent else "default"))
        if parent is not None:
            _check_subuser_slot(session, parent, now)
        account = Account(id=short_id("acc"), name=name, default_group=group, created_at=now, updated_at=now,
                          parent_id=parent and parent.id, subuser_quota=fields.get("subuser_quota"),
                          **_billing(fields))
        if account.subuser_quota is not None and parent is None:
            raise InvalidInput("a quota applies to sub-users: give the parent account too", code="quota_needs_parent")
        session.add(account)
        audit.record(session, caller, now, f"account:{account.id}", f"created {name!r}, group {group}"
                     + (f", sub-user of {parent.name}" if parent else ""))
        return account


def subuser_allowance(session: Session, parent: Account, now: datetime) -> int:
    """Sub-users the parent may have now: the largest allowance among its active plans."""
    from planctl.services.catalog import plan_version_terms

    subs = session.exec(select(Subscription).where(
        Subscription.account_id == parent.id, Subscription.status == "active",
        Subscription.starts_at <= now, Subscription.ends_at > now))
    return max((plan_version_terms(session, s.plan_version_id).max_subusers for s in subs), default=0)


def _check_subuser_slot(session: Session, parent: Account, now: datetime) -> None:
    if parent.parent_id is not None:
        raise Refused(f"{parent.name} is itself a sub-user; sub-users belong to a top-level account",
                      reason="subuser_nesting")
    allowance = subuser_allowance(session, parent, now)
    if allowance == 0:
        raise Refused(f"{parent.name} has no active plan with sub-user access; buy one (e.g. a team plan) first",
                      reason="subuser_access_required")
    count = session.exec(select(func.count()).select_from(Account).where(Account.parent_id == parent.id)).one()
    if count >= allowance:
        raise Refused(f"{parent.name} already has {count} sub-users, the most its plans allow ({allowance})",
                      reason="subuser_limit_reached")


def update(db: Database, ref: str, fields: Mapping[str, Any], *, caller: Caller, now: datetime) -> Account:
    with db.write() as session:
        account = resolve(session, ref)
        changes: dict[str, Any] = _billing(fields)
        if fields.get("name") is not None:
            changes["name"] = _name(fields["name"])
            clash = session.exec(select(Account).where(Account.name == changes["name"], Account.id != account.id))
            if clash.first():
                raise Conflict(f"an account named {changes['name']!r} already exists")
        if fields.get("default_group") is not None:
            changes["default_group"] = _group(session, fields["default_group"])
        if "subuser_quota" in fields:
            if account.parent_id is None and fields["subuser_quota"] is not None:
                raise InvalidInput(f"{account.name} is not a sub-user: only sub-users have a quota")
            changes["subuser_quota"] = fields["subuser_quota"]
        changed = {k: v for k, v in changes.items() if getattr(account, k) != v}
        if changed:
            summary = "; ".join(f"{k}: {getattr(account, k)!r} -> {v!r}" for k, v in changed.items())
            for key, value in changed.items():
                setattr(account, key, value)
            account.updated_at = now
            session.add(account)
            audit.record(session, caller, now, f"account:{account.id}", summary)
        return account


def get(db: Database, ref: str) -> Account:
    with db.read() as session:
        return resolve(session, ref)


def names(db: Database, ids: Iterable[str]) -> dict[str, str]:
    """Account names by id, for listings that show names beside ids."""
    wanted = sorted(set(ids))
    found: dict[str, str] = {}
    with db.read() as session:
        for i in range(0, len(wanted), 500):
            found.update(session.exec(select(Account.id, Account.name).where(
                col(Account.id).in_(wanted[i:i + 500]))).all())
    return found


@dataclass(frozen=True)
class PackView:
    """An extra-usage pack as the account sees it; `draw_order` 1 is drawn first (None: not drawable)."""

    pack: ExtraPack
    product: str
    status: str  # active | expired | used-up
    draw_order: int | None

    @property
    def remaining(self) -> int:
        return self.pack.credit - self.pack.used


def packs(db: Database, ref: str, *, now: datetime) -> tuple[Account, list[PackView]]:
    """An account's extra-usage packs in draw order (expiring first, never-expiring last, as metering
    draws them), then the expired and used-up ones, newest first."""
    with db.read() as session:
        account = resolve(session, ref)
        rows = session.exec(select(ExtraPack, Order.item).join(Order, col(Order.id) == col(ExtraPack.order_id))
                            .where(ExtraPack.account_id == account.id)).all()
    live = sorted(((p, item) for p, item in rows if p.credit > p.used and (p.expires_at is None or p.expires_at > now)),
                  key=lambda r: (r[0].expires_at is None, r[0].expires_at or now, r[0].id))
    out = [PackView(p, item, "active", n) for n, (p, item) in enumerate(live, 1)]
    drawable = {p.id for p, _ in live}
    done = sorted(((p, item) for p, item in rows if p.id not in drawable), key=lambda r: r[0].created_at,
                  reverse=True)
    out += [PackView(p, item, "used-up" if p.credit <= p.used else "expired", None) for p, item in done]
    return account, out


def _name(value: Any) -> str:
    name = (value or "").strip()
    if not name or len(name) > 100 or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"invalid account name {value!r}: use 1 to 100 printable characters")
    return name


def _group(session: Session, name: str) -> str:
    return refs.resolve(Tx.within(session), "group", name)


def _billing(fields: Mapping[str, Any]) -> dict[str, str]:
    out = {k: str(fields[k]).strip() for k in BILLING_FIELDS if fields.get(k) is not None}
    email = out.get("billing_email")
    if email and ("@" not in email or " " in email):
        raise InvalidInput(f"invalid e-mail address {email!r}")
    return out
