"""Keys: team keys from a subscription, pay-as-you-go keys, and their life.

A secret is generated here, returned once, and only its SHA-256 digest, visible
prefix and last four characters are stored. A batch is one transaction: every
key is created, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from planctl.domain import keys as rules
from planctl.domain import lifecycle
from planctl.domain.clock import when
from planctl.domain.errors import Conflict, InvalidInput, NotFound, Refused
from planctl.domain.ids import short_id
from planctl.domain.secrets import new_secret
from planctl.services import accounts, audit, sales, settings
from planctl.services.audit import Caller
from planctl.services.listing import KeyView, key_views
from planctl.store.engine import Database
from planctl.store import meter, refs
from planctl.store.sql import Tx
from planctl.store.tables import Account, ApiKey, Subscription

Progress = Callable[[int], None]  # called with how many keys were made so far


@dataclass(frozen=True)
class KeySpec:
    name: str
    from_plan: str | None = None  # plan slug or subscription id; None with payg
    account: str | None = None
    payg: bool = False
    quantity: int = 1
    credit_cap: int | None = None
    expires_at: datetime | None = None
    group: str | None = None
    daily_limit: int | None = None
    rpd: int | None = None


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once


def create(db: Database, spec: KeySpec, *, caller: Caller, now: datetime,
           progress: Progress | None = None,
           before_commit: Callable[[list[CreatedKey]], None] | None = None) -> list[CreatedKey]:
    """Create the keys in one transaction; `before_commit` gets them (secrets included) while it
    is still open, so a secrets file can be made durable before any key exists."""
    rules.check_quantity(spec.quantity)
    rules.check_expiry(spec.expires_at, now)
    if spec.rpd is not None and spec.rpd < 1:
        raise InvalidInput("rpd must be at least 1", code="at_least_one", option="rpd")
    with db.write() as session:
        if spec.payg:
            account, sub, group = _payg_target(session, spec)
        else:
            account, sub, group = _team_target(session, spec, now)
        taken = session.exec(select(ApiKey.name).where(ApiKey.account_id == account.id)).all()
        if spec.quantity == 1 and rules.check_name(spec.name) in taken:
            raise Conflict(f"{account.name} already has a key named {spec.name!r}; choose another name")
        created: list[CreatedKey] = []
        for name in rules.batch_names(spec.name, spec.quantity, taken):
            secret = new_secret()
            key = ApiKey(id=short_id("key"), account_id=account.id, subscription_id=sub and sub.id,
                         kind="payg" if spec.payg else "team", name=name, secret_sha256=secret.sha256,
                         prefix=secret.prefix, last4=secret.last4, group_name=group, status="active",
                         expires_at=spec.expires_at, credit_cap=spec.credit_cap, daily_limit=spec.daily_limit,
                         rpd=spec.rpd, created_at=now, updated_at=now)
            session.add(key)
            created.append(CreatedKey(key, secret.secret))
            if progress and len(created) % 50 == 0:
                progress(len(created))
        session.flush()
        if progress:
            progress(len(created))
        source = "pay-as-you-go balance" if sub is None else f"subscription {sub.id}"
        names = created[0].key.name if len(created) == 1 else f"{spec.name}-* ({len(created)} keys)"
        audit.record(session, caller, now, f"account:{account.id}", f"created key {names} from {source}, group {group}")
        if before_commit is not None:
            before_commit(created)
        return created


def existing(db: Database, key_ids: Sequence[str]) -> set[str]:
    """Which of these key ids exist."""
    if not key_ids:
        return set()
    with db.read() as session:
        return set(session.exec(select(ApiKey.id).where(col(ApiKey.id).in_(list(key_ids)))).all())


def _team_target(session: Session, spec: KeySpec, now: datetime) -> tuple[Account, Subscription, str]:
    if not spec.from_plan:
        raise InvalidInput("give the plan or subscription the key draws on, or make it a pay-as-you-go key",
                           code="key_needs_source")
    account = accounts.resolve(session, spec.account) if spec.account else None
    sub = _subscription_for(session, spec.from_plan, account, now)
    owner = session.get(Account, sub.account_id)
    assert owner is not None
    account = account or owner
    if account.id != owner.id and account.parent_id != owner.id:
        raise Refused(f"subscription {sub.id} belongs to {owner.name}; keys from it go to {owner.name} or its "
                      "sub-users", reason="not_your_subscription")
    reason = lifecycle.availability(sales.subscription_state(sub), now)
    if reason in ("subscription_cancelled", "subscription_expired"):
        raise Refused(f"subscription {sub.id} is {reason.split('_')[1]}: its keys cannot be used; renew it first",
                      reason=reason)
    terms = sales.subscription_terms(session, sub)
    group = rules.check_group(spec.group or account.default_group, terms.groups, plan=terms.slug)
    return account, sub, group


def _subscription_for(session: Session, ref: str, account: Account | None, now: datetime) -> Subscription:
    """A subscription id, or a plan slug the account (or its parent) holds exactly one live subscription of."""
    if ref.strip().startswith("sub_"):
        return sales.resolve_subscription(session, ref)
    plan = sales.resolve_plan(session, ref)
    if account is None:
        raise InvalidInput(f"give the account to pick {ref} subscriptions (or pass a subscription id)",
                           code="key_needs_account_to_pick", plan=ref)
    owner_id = account.parent_id or account.id
    candidates = [s for s in session.exec(select(Subscription).where(
        Subscription.account_id == owner_id, Subscription.plan_id == plan.id, Subscription.status == "active",
        Subscription.ends_at > now).order_by(Subscription.ends_at)).all()]
    if not candidates:
        raise NotFound(f"{account.name} has no active subscription of {plan.slug}; buy it first")
    if len(candidates) > 1:
        listed = ", ".join(f"{s.id} (ends {s.ends_at:%Y-%m-%d})" for s in candidates)
        raise InvalidInput(f"{account.name} has {len(candidates)} active {plan.slug} subscriptions: {listed}",
                           code="key_several_subscriptions")
    return candidates[0]


def _payg_target(session: Session, spec: KeySpec) -> tuple[Account, None, str]:
    if spec.from_plan:
        raise InvalidInput("pay-as-you-go keys draw on the account's balance, not on a plan", code="payg_key_with_plan")
    if not spec.account:
        raise InvalidInput("give the account of a pay-as-you-go key", code="payg_key_needs_account")
    if spec.credit_cap is not None:
        raise InvalidInput("a credit cap caps plan credit; a pay-as-you-go key draws on the account balance",
                           code="payg_key_with_cap")
    account = accounts.resolve(session, spec.account)
    return account, None, refs.resolve(Tx.within(session), "group", spec.group or account.default_group)


# ---------------------------------------------------------------- finding keys


def resolve(session: Session, ref: str, *, account: str | None = None) -> ApiKey:
    """A key by id, unique name, or visible prefix (`sk-AbCd`), or an unambiguous id prefix."""
    account_id = accounts.resolve(session, account).id if account else None
    key = session.get(ApiKey, meter.resolve_key(Tx.within(session), ref, account_id))
    assert key is not None
    return key


def by_secret(session: Session, secret: str, now: datetime) -> ApiKey | None:
    """The key a secret belongs to: its current secret, or its previous one within the rotation grace."""
    from planctl.metering.state import key_by_secret

    found = key_by_secret(Tx.within(session), secret, now, write=False)
    return None if found is None else session.get(ApiKey, found[0].id)


def views(session: Session, found: Sequence[ApiKey], now: datetime) -> list[KeyView]:
    return key_views(Tx.within(session), found, now)


def get(db: Database, ref: str, *, account: str | None = None) -> ApiKey:
    with db.read() as session:
        return resolve(session, ref, account=account)


def view(db: Database, ref: str, *, now: datetime, account: str | None = None) -> KeyView:
    with db.read() as session:
        return views(session, [resolve(session, ref, account=account)], now)[0]


# ---------------------------------------------------------------- changing keys


def set_status(db: Database, refs: Sequence[str], action: str, *, caller: Caller, now: datetime,
               account: str | None = None) -> list[ApiKey]:
    """disable / enable / revoke several keys, all or none."""
    with db.write() as session:
        changed = []
        for ref in refs:
            key = resolve(session, ref, account=account)
            target = rules.check_status_change(key.status, action, key.id)
            if key.status != target:
                audit.record(session, caller, now, f"key:{key.id}", f"{key.name}: {key.status} -> {target}")
                key.status, key.updated_at = target, now
                if target == "revoked":
                    key.previous_sha256, key.previous_valid_until = None, None
                session.add(key)
            changed.append(key)
        return changed


def rotate(db: Database, ref: str, *, grace: timedelta | None, caller: Caller, now: datetime,
           account: str | None = None) -> CreatedKey:
    """A new secret for the same key (identity, history and limits kept).

    With a grace period the old secret keeps working until it ends. A key keeps
    one previous secret: while one is still in its grace, a second rotation is
    refused (it would cut that grace short) and says when it can be made.
    """
    with db.write() as session:
        key = resolve(session, ref, account=account)
        if key.status == "revoked":
            raise Refused(f"key {key.id} was revoked; create a new key", reason="key_revoked")
        tz = settings.reset_zone(session)
        if key.previous_valid_until is not None and now < key.previous_valid_until:
            raise Refused(f"key {key.name}: the secret replaced by the last rotation stays valid until "
                          f"{when(key.previous_valid_until, tz)}; rotate again from then on (or disable the key "
                          "now if a secret leaked)", reason="rotation_grace_running")
        old = f"{key.prefix}…{key.last4}"
        secret = new_secret()
        key.previous_sha256 = key.secret_sha256 if grace else None
        key.previous_valid_until = now + grace if grace else None
        key.secret_sha256, key.prefix, key.last4, key.updated_at = secret.sha256, secret.prefix, secret.last4, now
        session.add(key)
        audit.record(session, caller, now, f"key:{key.id}",
                     f"{key.name}: secret rotated; valid now: new {key.prefix}…{key.last4}"
                     + (f", old {old} until {when(key.previous_valid_until, tz)}" if key.previous_valid_until
                        else f"; old {old} stopped working"))
        return CreatedKey(key, secret.secret)


def edit(db: Database, ref: str, changes: dict[str, object], *, caller: Caller, now: datetime,
         account: str | None = None) -> ApiKey:
    """Change a key's name, credit cap, expiry, group, daily limit or RPD (None clears a limit)."""
    with db.write() as session:
        key = resolve(session, ref, account=account)
        if key.status == "revoked":
            raise Refused(f"key {key.id} was revoked; it cannot be changed", reason="key_revoked")
        if "name" in changes:
            changes["name"] = rules.check_name(str(changes["name"]))
            clash = session.exec(select(ApiKey.id).where(ApiKey.account_id == key.account_id,
                                                         ApiKey.name == changes["name"], ApiKey.id != key.id))
            if clash.first():
                raise Conflict(f"the account already has a key named {changes['name']!r}")
        if changes.get("expires_at") is not None:
            rules.check_expiry(changes["expires_at"], now)  # type: ignore[arg-type]
        if "group_name" in changes:
            changes["group_name"] = _allowed_group(session, key, str(changes["group_name"]))
        if key.kind == "payg" and changes.get("credit_cap") is not None:
            raise InvalidInput("a credit cap caps plan credit; a pay-as-you-go key has none", code="payg_key_cap_edit")
        diff = {k: v for k, v in changes.items() if getattr(key, k) != v}
        if diff:
            audit.record(session, caller, now, f"key:{key.id}",
                         f"{key.name}: " + "; ".join(f"{k}: {getattr(key, k)!r} -> {v!r}" for k, v in diff.items()))
            for k, v in diff.items():
                setattr(key, k, v)
            key.updated_at = now
            session.add(key)
        return key


def _allowed_group(session: Session, key: ApiKey, group: str) -> str:
    group = refs.resolve(Tx.within(session), "group", group)
    if key.subscription_id is None:
        return group
    sub = session.get(Subscription, key.subscription_id)
    assert sub is not None
    terms = sales.subscription_terms(session, sub)
    return rules.check_group(group, terms.groups, plan=terms.slug)

