"""Discount codes: manage them, quote them, and redeem them atomically in a sale."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from planctl.domain import discounts as rules
from planctl.domain.catalog import currency_decimals
from planctl.domain.errors import Conflict, InvalidInput, NotFound, Refused
from planctl.services import audit, settings
from planctl.services.audit import Caller
from planctl.store import refs
from planctl.store.engine import Database
from planctl.store.sql import Tx
from planctl.store.tables import DiscountCode, Order, Plan, Product


def terms_of(row: DiscountCode) -> rules.DiscountTerms:
    return rules.DiscountTerms(
        code=row.code, kind=row.kind, value=row.value, currency=row.currency, valid_from=row.valid_from,
        valid_until=row.valid_until, max_redemptions=row.max_redemptions, max_per_account=row.max_per_account,
        plans=tuple(row.plans), order_kinds=tuple(row.order_kinds), payment_methods=tuple(row.payment_methods),
        min_amount=row.min_amount, active=row.active,
    )


@dataclass(frozen=True)
class CodeRecord:
    terms: rules.DiscountTerms
    redemptions: int
    created_at: datetime


def _record(row: DiscountCode) -> CodeRecord:
    return CodeRecord(terms_of(row), row.redemptions, row.created_at)


def _row(session: Session, code: str) -> DiscountCode:
    row = session.get(DiscountCode, refs.resolve(Tx.within(session), "discount code", rules.normalize_code(code)))
    assert row is not None
    return row


def create(db: Database, spec: Mapping[str, Any], *, caller: Caller, now: datetime) -> CodeRecord:
    """`spec`: code, value ("15%" or "20.00"), and optional restrictions (already typed)."""
    code = rules.normalize_code(spec["code"])
    with db.write() as session:
        currency = settings.load(session)["currency"]
        kind, value = rules.parse_value(spec["value"], currency_decimals(currency))
        if session.get(DiscountCode, code) is not None:
            raise Conflict(f"discount code {code} already exists")
        _check_items(session, spec.get("plans") or ())
        kinds = tuple(spec.get("order_kinds") or ())
        unknown = [k for k in kinds if k not in rules.ORDER_KINDS]
        if unknown:
            raise InvalidInput(f"unknown order kind {unknown[0]!r}: use {', '.join(rules.ORDER_KINDS)}")
        valid_from, valid_until = spec.get("valid_from"), spec.get("valid_until")
        if valid_from and valid_until and valid_until <= valid_from:
            raise InvalidInput("the end of validity must be after its start", code="until_before_from")
        if valid_until is not None and valid_until <= now and not spec.get("force"):
            raise Refused(f"the end of validity {valid_until.isoformat()} is already past: the code could never "
                          "be used", reason="discount_already_expired", code="discount_already_expired",
                          until=valid_until)
        for key in ("max_redemptions", "max_per_account"):
            if spec.get(key) is not None and spec[key] < 1:
                raise InvalidInput(f"{key.replace('_', ' ')} must be at least 1", code="at_least_one", option=key)
        row = DiscountCode(
            code=code, kind=kind, value=value, currency=currency, valid_from=valid_from, valid_until=valid_until,
            max_redemptions=spec.get("max_redemptions"), max_per_account=spec.get("max_per_account"),
            plans=list(spec.get("plans") or ()), order_kinds=list(kinds),
            payment_methods=list(spec.get("payment_methods") or ()), min_amount=spec.get("min_amount") or 0,
            active=True, redemptions=0, created_at=now, updated_at=now,
        )
        session.add(row)
        audit.record(session, caller, now, f"discount:{code}",
                     f"created {rules.format_value(terms_of(row), currency_decimals(currency))}")
        return _record(row)


def _check_items(session: Session, items: Any) -> None:
    known = set(session.exec(select(Plan.slug))) | set(session.exec(select(Product.slug)))
    unknown = [i for i in items if i not in known]
    if unknown:
        raise NotFound(f"unknown plan or product {unknown[0]!r}", code="unknown_plan")


def list_codes(db: Database, *, active_only: bool = False) -> list[CodeRecord]:
    with db.read() as session:
        query = select(DiscountCode).order_by(DiscountCode.code)
        if active_only:
            query = query.where(col(DiscountCode.active).is_(True))
        return [_record(r) for r in session.exec(query)]


def get(db: Database, code: str) -> CodeRecord:
    with db.read() as session:
        return _record(_row(session, code))


def disable(db: Database, code: str, *, caller: Caller, now: datetime) -> CodeRecord:
    with db.write() as session:
        row = _row(session, code)
        if row.active:
            row.active, row.updated_at = False, now
            session.add(row)
            audit.record(session, caller, now, f"discount:{row.code}", "disabled")
        return _record(row)


def account_redemptions(session: Session, code: str, account_id: str) -> int:
    query = select(func.count()).select_from(Order).where(
        Order.discount_code == code, Order.account_id == account_id, Order.status != "cancelled")
    return int(session.exec(query).one())


def evaluate(session: Session, code: str, sale: rules.Sale, account_id: str) -> tuple[rules.DiscountTerms, int]:
    """Check a code against a sale (no redemption); returns its terms and the discount."""
    row = _row(session, code)
    terms = terms_of(row)
    facts = rules.Sale(**{**sale.__dict__, "redemptions": row.redemptions,
                          "account_redemptions": account_redemptions(session, row.code, account_id)})
    return terms, rules.check(terms, facts)


def redeem(session: Session, terms: rules.DiscountTerms, account_id: str) -> None:
    """Take one redemption with a conditional UPDATE: two sales can never both take the last one.

    Runs inside the sale's write transaction (the UPDATE locks the code's row
    on PostgreSQL; SQLite's write lock is already held), so the per-account
    count read after it is stable too.
    """
    limit = DiscountCode.max_redemptions
    result = session.execute(
        update(DiscountCode)
        .where(DiscountCode.code == terms.code, col(DiscountCode.active).is_(True))
        .where((col(limit).is_(None)) | (DiscountCode.redemptions < limit))
        .values(redemptions=DiscountCode.redemptions + 1)
    )
    if result.rowcount != 1:
        raise Refused(f"discount code {terms.code} has just been used up", reason="code_used_up")
    if terms.max_per_account is not None and account_redemptions(session, terms.code, account_id) >= terms.max_per_account:
        raise Refused(f"discount code {terms.code} was already used by this account", reason="code_account_limit")


def quote(db: Database, code: str, *, item: str, order_kind: str, payment_method: str, account: str | None,
          now: datetime) -> dict[str, Any]:
    """What a code would take off a plan or product's list price (nothing is redeemed)."""
    from planctl.domain.money import format_money
    from planctl.services.accounts import resolve

    with db.read() as session:
        plan = session.exec(select(Plan).where(Plan.slug == item)).first()
        product = session.exec(select(Product).where(Product.slug == item)).first()
        if plan is None and product is None:
            raise NotFound(f"unknown plan or product {item!r}", code="unknown_plan")
        price = product.price_minor if product is not None else _plan_price(session, plan)
        sale = rules.Sale(now=now, tz=settings.reset_zone(session), item=item, order_kind=order_kind,
                          payment_method=payment_method, list_price=price, redemptions=0, account_redemptions=0)
        account_id = resolve(session, account).id if account else ""
        terms, amount = evaluate(session, code, sale, account_id)
    decimals = currency_decimals(terms.currency)
    return {"code": terms.code, "item": item, "list_price": format_money(price, decimals),
            "discount": format_money(amount, decimals), "payable": format_money(price - amount, decimals),
            "currency": terms.currency}


def _plan_price(session: Session, plan: Plan | None) -> int:
    from planctl.domain.catalog import parse_plan

    assert plan is not None
    return parse_plan(plan.terms, settings.catalog_context(session)).price
