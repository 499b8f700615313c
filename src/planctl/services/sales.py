"""Sales: buy, renew, upgrade, direct renewal, extra usage and top-ups.

Every sale is one write transaction that takes its order number, redeems its
discount code, changes the subscription or balance, appends ledger entries and
the audit entry, and commits; or changes nothing. `dry_run` runs the very same
work under the same lock and discards it, so a quote is what the sale would be.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select
from zoneinfo import ZoneInfo

from planctl.domain import discounts as discount_rules
from planctl.domain import lifecycle
from planctl.domain.catalog import PlanTerms, ProductTerms, currency_decimals, parse_plan
from planctl.domain.clock import add_duration, iso, local_date
from planctl.domain.errors import Conflict, InvalidInput, Note, NotFound, Refused
from planctl.domain.ids import short_id
from planctl.domain.money import Rounding, div_round, format_credit, format_money, format_units
from planctl.domain.secrets import NewSecret, new_secret
from planctl.services import accounts, audit, discounts, settings
from planctl.services.audit import Caller
from planctl.services.listing import state_name, subscription_state
from planctl.store.engine import Database
from planctl.store import refs
from planctl.store.sql import Tx
from planctl.store.tables import (
    Account, ApiKey, Counter, ExtraPack, LedgerEntry, Order, Plan, PlanVersion, Product, Subscription,
    SubscriptionTerm,
)

SUBSCRIPTION_KEY_PREFIX = "Subscription Access - "
SHOWN_KEYS = 10  # `subscriptions show` lists this many keys; `keys list --subscription` gives them all


@dataclass(frozen=True)
class SaleRequest:
    """What the buyer asked for; its digest makes idempotency keys safe."""

    kind: str  # buy | renew | upgrade | direct-renewal | extra | topup
    account: str | None = None  # buy, extra, topup
    item: str | None = None  # plan slug (buy, upgrade) or product slug (extra, topup)
    subscription: str | None = None  # renew, upgrade, direct-renewal
    payment_method: str = "manual"
    payment_ref: str | None = None
    code: str | None = None
    ignore_invalid_code: bool = False
    start: datetime | None = None
    prorate: bool = False
    amount: int | None = None  # topup: credit (µcr) for a rate product
    reason: str | None = None  # direct renewal
    price: int | None = None  # direct renewal: minor units charged instead of the plan's price (0: goodwill)
    idempotency_key: str | None = None

    def digest(self) -> str:
        fields = {k: (iso(v) if isinstance(v, datetime) else v) for k, v in self.__dict__.items()
                  if k != "idempotency_key"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass
class SaleResult:
    order: Order
    subscription: Subscription | None = None
    terms: PlanTerms | None = None
    key: ApiKey | None = None
    secret: NewSecret | None = None  # only when a key was created now: shown once
    pack: ExtraPack | None = None
    replayed: bool = False
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    plan_version: int | None = None  # the subscription's plan version number (not its row id)


# ---------------------------------------------------------------- entry points


def sell(db: Database, req: SaleRequest, *, caller: Caller, now: datetime, dry_run: bool = False) -> SaleResult:
    """Run one sale of any kind; see the module docstring."""
    _check_request(req)
    with db.write(rollback=dry_run) as session:
        if req.idempotency_key:
            if db.dialect == "postgresql":  # serialize same-key sales so the second one sees the first
                session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                                {"k": req.idempotency_key})
            replay = _replay(session, req)
            if replay is not None:
                return replay
        tz = settings.reset_zone(session)
        notes: list[str] = []
        result = _HANDLERS[req.kind](session, req, now, tz, notes)
        result.dry_run, result.notes = dry_run, notes + result.notes
        if result.subscription is not None:
            result.plan_version = version_number(session, version_at(session, result.subscription, now))
        order = result.order
        audit.record(session, caller, now, f"order:{order.id}",
                     f"{order.kind} {order.item} for {order.account_id}: paid {_money(session, order.payable)}"
                     + (f" with code {order.discount_code}" if order.discount_code else "")
                     + (f"; reason: {req.reason}" if req.reason else "")
                     + ("; priced by the operator" if req.price is not None else ""))
        return result


def _check_request(req: SaleRequest) -> None:
    if req.kind == "direct-renewal" and not (req.reason and req.reason.strip()):
        raise InvalidInput("a direct renewal needs a reason (it is recorded in the audit log)",
                           code="direct_renewal_needs_reason")
    if req.price is not None and (req.kind != "direct-renewal" or req.price < 0):
        raise InvalidInput("an amount sets the price of a direct renewal only, zero or more", code="amount_not_direct")
    if not req.payment_method or not req.payment_method.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"invalid payment method {req.payment_method!r}: use a word such as alipay or card")
    if req.idempotency_key is not None and not (1 <= len(req.idempotency_key) <= 200):
        raise InvalidInput("an idempotency key has 1 to 200 characters")


def _replay(session: Session, req: SaleRequest) -> SaleResult | None:
    order = session.exec(select(Order).where(Order.idempotency_key == req.idempotency_key)).first()
    if order is None:
        return None
    if order.request_digest != req.digest():
        raise Conflict(f"idempotency key {req.idempotency_key!r} was already used for a different request "
                       f"(order {order.id}); use a new key", reason="idempotency_mismatch")
    sub = session.get(Subscription, order.subscription_id) if order.subscription_id else None
    terms = subscription_terms(session, sub) if sub else None
    return SaleResult(order=order, subscription=sub, terms=terms, replayed=True,
                      plan_version=sub and version_number(session, sub.plan_version_id), notes=[f"idempotency key seen before: this is order {order.id}, nothing was charged again"])


# ---------------------------------------------------------------- plan sales


def _buy(session: Session, req: SaleRequest, now: datetime, tz: ZoneInfo, notes: list[str]) -> SaleResult:
    account = _account(session, req.account)
    plan, version, terms = _current_plan(session, req.item)
    lifecycle.check_on_sale(terms, now, tz)
    term = lifecycle.first_term(terms, now, req.start, tz)
    order = _order(session, req, now, tz, notes, account.id, terms.slug, terms.price, version_id=version.id)
    sub = Subscription(
        id=short_id("sub"), account_id=account.id, plan_id=plan.id, plan_version_id=version.id, status="active",
        starts_at=term.starts_at, ends_at=term.ends_at, anchor_day=term.anchor_day,
        credit_granted=terms.total_credit, credit_used=0, period_limit_enabled=True, created_at=now, updated_at=now,
    )
    session.add(sub)
    session.flush()
    order.subscription_id, order.validity_granted = sub.id, str(terms.validity)
    _grant(session, order, sub, terms.total_credit, now)
    key, secret = _subscription_key(session, account, sub, terms, now)
    return SaleResult(order=order, subscription=sub, terms=terms, key=key, secret=secret)


def _renew(session: Session, req: SaleRequest, now: datetime, tz: ZoneInfo, notes: list[str]) -> SaleResult:
    sub = _subscription(session, req.subscription)
    _plan_row, version, current = _current_plan(session, _plan_slug(session, sub))
    lifecycle.check_renewal(subscription_state(sub), current, now, tz)
    order = _order(session, req, now, tz, notes, sub.account_id, current.slug, current.price, version_id=version.id)
    order.subscription_id, order.validity_granted = sub.id, str(current.validity)
    # the current term keeps the terms it was sold under; the renewed one, today's, from its start
    session.add(SubscriptionTerm(subscription_id=sub.id, starts_at=sub.ends_at, plan_version_id=version.id,
                                 order_id=order.id))
    sub.ends_at = lifecycle.extend(sub.ends_at, current, sub.anchor_day, tz)
    if current.total_credit is not None:
        sub.credit_granted = (sub.credit_granted or 0) + current.total_credit
    sub.updated_at = now
    session.add(sub)
    _grant(session, order, sub, current.total_credit, now)
    return SaleResult(order=order, subscription=sub, terms=current)


def _upgrade(session: Session, req: SaleRequest, now: datetime, tz: ZoneInfo, notes: list[str]) -> SaleResult:
    sub = _subscription(session, req.subscription)
    old = subscription_terms(session, sub, now)
    plan, version, new = _current_plan(session, req.item)
    lifecycle.check_upgrade(subscription_state(sub), old, new, now, tz)
    quote = lifecycle.quote_upgrade(subscription_state(sub), old, new, now, tz, prorate=req.prorate)
    order = _order(session, req, now, tz, notes, sub.account_id, new.slug, quote.payable, version_id=version.id)
    order.subscription_id = sub.id
    sub.plan_id, sub.plan_version_id, sub.updated_at = plan.id, version.id, now
    # the upgrade pays for every remaining term: all of them now run under the new plan
    session.execute(delete(SubscriptionTerm).where(SubscriptionTerm.subscription_id == sub.id))
    if quote.credit is None:
        if sub.credit_granted:  # the new plan has no total pool: close the old one in the ledger
            session.add(LedgerEntry(at=now, account_id=sub.account_id, pool="plan", subscription_id=sub.id,
                                    kind="adjustment", amount=-sub.credit_granted, order_id=order.id,
                                    reason=f"upgrade to {new.slug}: no total credit pool"))
        sub.credit_granted = None
    elif quote.credit:
        sub.credit_granted = (sub.credit_granted or 0) + quote.credit
    session.add(sub)
    _rename_subscription_keys(session, sub, old.slug, new.slug, now)
    _grant(session, order, sub, quote.credit, now)
    share = quote.share
    result = SaleResult(order=order, subscription=sub, terms=new)
    result.notes += _dropped_groups(session, sub, new)
    terms_left = format_units(div_round(share.numerator * 10_000, share.denominator, Rounding.DOWN), 4)
    result.notes.append(f"charged the price difference for {terms_left} term(s) of the current subscription"
                        if req.prorate else
                        f"charged the full price difference for each of the {terms_left} remaining term(s)")
    return result


def _dropped_groups(session: Session, sub: Subscription, new: PlanTerms) -> list[Note]:
    """A warning per group the new terms drop while keys of the subscription still use it."""
    stranded: dict[str, list[str]] = {}
    for key in session.exec(select(ApiKey).where(ApiKey.subscription_id == sub.id, ApiKey.status != "revoked")
                            .order_by(col(ApiKey.created_at))):
        if key.group_name not in new.groups:
            stranded.setdefault(key.group_name, []).append(key.name)
    return [Note(f"warning: {new.slug} has no group {group!r}; keys {', '.join(names)} will be refused "
                 f"(group_not_in_plan) until moved to one of {', '.join(new.groups)}",
                 code="move_keys_to_group", group=new.groups[0]) for group, names in stranded.items()]


def _direct_renewal(session: Session, req: SaleRequest, now: datetime, tz: ZoneInfo, notes: list[str]) -> SaleResult:
    sub = _subscription(session, req.subscription)
    from planctl.services.catalog import plan_version_terms

    last = version_at(session, sub, max(now, sub.ends_at - timedelta(microseconds=1)))  # the last term's
    terms = plan_version_terms(session, last)
    term = lifecycle.direct_renewal_term(subscription_state(sub), terms, now, tz)
    price = terms.price if req.price is None else req.price
    order = _order(session, req, now, tz, notes, sub.account_id, terms.slug, price,
                   version_id=last, discounts_allowed=False)
    order.subscription_id, order.validity_granted, order.reason = sub.id, str(terms.validity), req.reason
    if req.price is not None:
        notes.append(f"priced by the operator at {_money(session, price)} "
                     f"(plan price {_money(session, terms.price)})")
    was_expired = now >= sub.ends_at
    sub.ends_at, sub.anchor_day, sub.updated_at = term.ends_at, term.anchor_day, now
    if terms.total_credit is not None:
        sub.credit_granted = (sub.credit_granted or 0) + terms.total_credit
    session.add(sub)
    _grant(session, order, sub, terms.total_credit, now)
    result = SaleResult(order=order, subscription=sub, terms=terms)
    if was_expired:
        result.notes.append("the subscription had expired: it and its keys are available again")
    return result


# ---------------------------------------------------------------- extra usage and top-ups


def _extra(session: Session, req: SaleRequest, now: datetime, tz: ZoneInfo, notes: list[str]) -> SaleResult:
    account = _account(session, req.account)
    product = _product(session, req.item, "extra")
    order = _order(session, req, now, tz, notes, account.id, product.slug, product.price)
    pack = ExtraPack(account_id=account.id, order_id=order.id, credit=product.credit, created_at=now,
                     expires_at=None if product.validity is None else
                     add_duration(now, product.validity, tz))
    session.add(pack)
    session.flush()
    order.credit_granted = product.credit
    order.validity_granted = None if product.validity is None else str(product.validity)
    _ledger(session, order, now, pool="extra", amount=product.credit, pack_id=pack.id)
    return SaleResult(order=order, pack=pack)


def _topup(session: Session, req: SaleRequest, now: datetime, tz: ZoneInfo, notes: list[str]) -> SaleResult:
    account = _account(session, req.account)
    product = _product(session, req.item, "payg")
    if product.pricing == "rate":
        if req.amount is None:
            raise InvalidInput(f"{product.slug} is sold by the credit: give the amount of credit to buy")
        credit = req.amount
        price = div_round(product.price * credit, product.credit, Rounding.UP)
    else:
        if req.amount is not None and req.amount != product.credit:
            raise InvalidInput(f"{product.slug} is a fixed pack of {format_credit(product.credit)} credit; "
                               "leave the amount out or choose a rate product")
        credit, price = product.credit, product.price
    order = _order(session, req, now, tz, notes, account.id, product.slug, price)
    order.credit_granted = credit
    session.execute(update(Account).where(Account.id == account.id)
                    .values(payg_balance=Account.payg_balance + credit))
    _ledger(session, order, now, pool="payg", amount=credit)
    session.refresh(account)
    return SaleResult(order=order)


_HANDLERS = {
    "buy": _buy, "renew": _renew, "upgrade": _upgrade, "direct-renewal": _direct_renewal,
    "extra": _extra, "topup": _topup,
}


# ---------------------------------------------------------------- building blocks


def _order(session: Session, req: SaleRequest, now: datetime, tz: ZoneInfo, notes: list[str], account_id: str,
           item: str, list_price: int, *, version_id: int | None = None, discounts_allowed: bool = True) -> Order:
    """Number the order, apply and redeem the discount code, and add the paid order."""
    day = local_date(now, tz).strftime("%Y%m%d")
    order = Order(
        id=f"ORD-{day}-{next_number(session, f'order:{day}'):04d}", kind=req.kind, account_id=account_id,
        plan_version_id=version_id, item=item, currency=settings.load(session)["currency"],
        list_price=list_price, payable=list_price, payment_method=req.payment_method,
        payment_ref=req.payment_ref, status="paid", idempotency_key=req.idempotency_key,
        request_digest=req.digest() if req.idempotency_key else None, created_at=now, paid_at=now,
    )
    if req.code:
        if not discounts_allowed:
            raise InvalidInput("discount codes do not apply to direct renewals")
        _apply_code(session, req, order, notes, now)
    session.add(order)
    session.flush()
    return order


def _apply_code(session: Session, req: SaleRequest, order: Order, notes: list[str], now: datetime) -> None:
    assert req.code
    sale = discount_rules.Sale(now=now, tz=settings.reset_zone(session), item=order.item, order_kind=order.kind,
                               payment_method=req.payment_method,
                               list_price=order.list_price, redemptions=0, account_redemptions=0)
    try:
        terms, amount = discounts.evaluate(session, req.code, sale, order.account_id)
        discounts.redeem(session, terms, order.account_id)
    except (Refused, NotFound) as exc:  # an unknown code is the most common invalid one
        if not req.ignore_invalid_code:
            raise type(exc)(exc.message, reason=exc.reason, code="code_not_applicable", cause=exc) from None
        notes.append(Note(f"code not applied, sold at list price: {exc.message}", code="code_not_applied", cause=exc))
        return
    order.discount_code, order.discount_amount = terms.code, amount
    order.payable = order.list_price - amount
    decimals = currency_decimals(terms.currency)
    order.discount_terms = {"code": terms.code, "kind": terms.kind,
                            "value": discount_rules.format_value(terms, decimals),
                            "min_amount": format_money(terms.min_amount, decimals)}


def next_number(session: Session, name: str) -> int:
    """The next value of a gapless counter, taken under the transaction's lock."""
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Counter)
    session.execute(insert.values(name=name, value=0).on_conflict_do_nothing(index_elements=["name"]))
    session.execute(update(Counter).where(Counter.name == name).values(value=Counter.value + 1))
    return int(session.exec(select(Counter.value).where(Counter.name == name)).one())


def _grant(session: Session, order: Order, sub: Subscription, credit: int | None, now: datetime) -> None:
    order.credit_granted = credit or 0
    if credit:
        _ledger(session, order, now, pool="plan", amount=credit, subscription_id=sub.id)


def _ledger(session: Session, order: Order, now: datetime, *, pool: str, amount: int, kind: str = "grant",
            subscription_id: str | None = None, pack_id: int | None = None) -> None:
    session.add(LedgerEntry(at=now, account_id=order.account_id, pool=pool, subscription_id=subscription_id,
                            pack_id=pack_id, kind=kind, amount=amount, order_id=order.id,
                            reason=f"{order.kind} {order.item}"))


def _subscription_key(session: Session, account: Account, sub: Subscription, terms: PlanTerms,
                      now: datetime) -> tuple[ApiKey, NewSecret]:
    """The key created with every purchase, bound to the subscription."""
    name = _subscription_key_name(session, account.id, sub, terms.slug)
    group = account.default_group if account.default_group in terms.groups else terms.groups[0]
    secret = new_secret()
    key = ApiKey(id=short_id("key"), account_id=account.id, subscription_id=sub.id, kind="subscription",
                 name=name, secret_sha256=secret.sha256, prefix=secret.prefix, last4=secret.last4,
                 group_name=group, status="active", created_at=now, updated_at=now)
    session.add(key)
    return key, secret


def _subscription_key_name(session: Session, account_id: str, sub: Subscription, slug: str) -> str:
    """`Subscription Access - <plan>`, with the subscription id when the account already has that name."""
    name = SUBSCRIPTION_KEY_PREFIX + slug
    taken = session.exec(select(ApiKey.id).where(ApiKey.account_id == account_id, ApiKey.name == name)).first()
    return f"{name} ({sub.id})" if taken else name


def _rename_subscription_keys(session: Session, sub: Subscription, old: str, new: str, now: datetime) -> None:
    """After an upgrade a subscription key still named after the old plan is named after the new one
    (a name an operator chose is kept)."""
    defaults = (SUBSCRIPTION_KEY_PREFIX + old, f"{SUBSCRIPTION_KEY_PREFIX}{old} ({sub.id})")
    for key in session.exec(select(ApiKey).where(ApiKey.subscription_id == sub.id, ApiKey.kind == "subscription",
                                                 col(ApiKey.name).in_(defaults))):
        key.name, key.updated_at = _subscription_key_name(session, key.account_id, sub, new), now
        session.add(key)
        session.flush()


def _account(session: Session, ref: str | None) -> Account:
    if not ref:
        raise InvalidInput("give the buyer's account", code="buyer_missing")
    return accounts.resolve(session, ref)


def resolve_plan(session: Session, ref: str | None) -> Plan:
    """A plan by slug or unambiguous slug prefix (store/refs.py)."""
    slug = refs.resolve(Tx.within(session), "plan", ref)
    return session.exec(select(Plan).where(Plan.slug == slug)).one()


def _current_plan(session: Session, slug: str | None) -> tuple[Plan, PlanVersion, PlanTerms]:
    plan = resolve_plan(session, slug)
    version = session.exec(select(PlanVersion).where(PlanVersion.plan_id == plan.id,
                                                     PlanVersion.version == plan.version)).one()
    return plan, version, parse_plan(version.terms, settings.catalog_context(session))


def _product(session: Session, slug: str | None, kind: str) -> ProductTerms:
    from planctl.services.catalog import product_from_row

    row = session.exec(select(Product).where(Product.slug == (slug or ""))).first()
    if row is None or row.kind != kind:
        raise NotFound(f"unknown {'extra-usage pack' if kind == 'extra' else 'pay-as-you-go product'} {slug!r}",
                       code="unknown_product_of_kind", kind=kind)
    if not row.on_sale:
        raise Refused(f"{slug} has been removed from sale", reason="product_not_on_sale")
    return product_from_row(row)


def _plan_slug(session: Session, sub: Subscription) -> str:
    return session.get(Plan, sub.plan_id).slug  # type: ignore[union-attr]


def version_number(session: Session, plan_version_id: int) -> int:
    """The plan's own version number (1, 2, …) of a plan-version row: what people and JSON see."""
    return session.get(PlanVersion, plan_version_id).version  # type: ignore[union-attr]


def version_at(session: Session, sub: Subscription, at: datetime) -> int:
    """The plan version of the subscription's term in force at `at` (see tables.SubscriptionTerm)."""
    later = session.exec(select(SubscriptionTerm.plan_version_id).where(
        SubscriptionTerm.subscription_id == sub.id, SubscriptionTerm.starts_at <= at)
        .order_by(col(SubscriptionTerm.starts_at).desc()).limit(1)).first()
    return sub.plan_version_id if later is None else later


def subscription_terms(session: Session, sub: Subscription, at: datetime | None = None) -> PlanTerms:
    """The terms in force at `at` (default: those the subscription was last sold or upgraded under)."""
    from planctl.services.catalog import plan_version_terms

    return plan_version_terms(session, sub.plan_version_id if at is None else version_at(session, sub, at))


def resolve_subscription(session: Session, ref: str | None) -> Subscription:
    """A subscription by id or unambiguous id prefix (store/refs.py)."""
    sub = session.get(Subscription, refs.resolve(Tx.within(session), "subscription", ref))
    assert sub is not None
    return sub


_subscription = resolve_subscription


def _money(session: Session, minor: int) -> str:
    currency = settings.load(session)["currency"]
    return f"{format_money(minor, currency_decimals(currency))} {currency}"


# ---------------------------------------------------------------- queries


@dataclass
class SubscriptionView:
    subscription: Subscription
    plan_slug: str
    terms: PlanTerms
    state: str  # active | expired | cancelled | not-started
    plan_version: int  # the plan's version number
    keys: list[ApiKey] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    account_name: str = ""
    key_counts: dict[str, int] = field(default_factory=dict)  # by status, all keys


ORDER_KINDS = ("buy", "renew", "upgrade", "direct-renewal", "extra", "topup")
ORDER_STATUSES = ("pending", "paid", "partially-refunded", "refunded", "cancelled")


def _one_of(value: str | None, choices: tuple[str, ...], what: str) -> None:
    if value is not None and value not in choices:
        raise InvalidInput(f"unknown {what} {value!r}: use {', '.join(choices)}")


def get_subscription(db: Database, ref: str, *, now: datetime) -> SubscriptionView:
    with db.read() as session:
        sub = resolve_subscription(session, ref)
        view = SubscriptionView(sub, _plan_slug(session, sub), subscription_terms(session, sub, now),
                                state_name(sub, now), version_number(session, version_at(session, sub, now)))
        view.account_name = session.exec(select(Account.name).where(Account.id == sub.account_id)).one()
        view.keys = list(session.exec(select(ApiKey).where(ApiKey.subscription_id == sub.id)
                                      .order_by(ApiKey.created_at, ApiKey.id).limit(SHOWN_KEYS)))
        view.key_counts = dict(session.exec(select(ApiKey.status, func.count()).where(  # type: ignore[call-overload]
            ApiKey.subscription_id == sub.id).group_by(ApiKey.status).order_by(ApiKey.status)).all())
        view.orders = list(session.exec(select(Order).where(Order.subscription_id == sub.id).order_by(Order.created_at)))
        return view


def list_orders(db: Database, *, account: str | None = None, kind: str | None = None, status: str | None = None,
                subscription: str | None = None, since: datetime | None = None, until: datetime | None = None,
                limit: int = 100) -> list[Order]:
    _one_of(kind, ORDER_KINDS, "order kind")
    _one_of(status, ORDER_STATUSES, "order status")
    with db.read() as session:
        query = select(Order)
        if account:
            query = query.where(Order.account_id == accounts.resolve(session, account).id)
        if subscription:
            query = query.where(Order.subscription_id == resolve_subscription(session, subscription).id)
        if kind:
            query = query.where(Order.kind == kind)
        if status:
            query = query.where(Order.status == status)
        if since:
            query = query.where(Order.created_at >= since)
        if until:
            query = query.where(Order.created_at < until)
        return list(session.exec(query.order_by(col(Order.created_at).desc(), col(Order.id).desc()).limit(limit)))


def get_order(db: Database, order_id: str) -> Order:
    with db.read() as session:
        order = session.get(Order, refs.resolve(Tx.within(session), "order", order_id))
        assert order is not None
        return order
