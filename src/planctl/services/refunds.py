"""Refunds: by order number, following the plan's policy or an operator's override.

A refund pays money back (recorded, not moved), takes back the credit it pays
for with a `refund-reversal` ledger entry, cancels the subscription when it
refunds a purchase, and issues a credit note when the order was invoiced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from planctl.domain import lifecycle
from planctl.domain.catalog import money_text
from planctl.domain.errors import Conflict, InvalidInput, Refused
from planctl.domain.money import format_credit
from planctl.services import audit, settings
from planctl.services.audit import Caller
from planctl.store.engine import Database
from planctl.store.tables import Account, ApiKey, ExtraPack, Invoice, LedgerEntry, Order, Refund, Subscription

PLAN_ORDER_KINDS = ("buy", "renew", "upgrade", "direct-renewal")
SUPPORT_FIELDS = ("plan", "key_name", "request_time", "request_id")


@dataclass
class RefundResult:
    refund: Refund
    order: Order
    cancelled_subscription: str | None = None
    credit_note: Invoice | None = None
    keys_stopped: int = 0  # keys of the cancelled subscription that were usable and now stop


def refund(db: Database, order_id: str, *, amount: int | None, reason: str | None,
           details: Mapping[str, str] | None, caller: Caller, now: datetime, dry_run: bool = False) -> RefundResult:
    """Refund an order. `amount` (minor units) overrides the policy and needs a reason."""
    if amount is not None and not (reason and reason.strip()):
        raise InvalidInput("an override amount needs a reason", code="refund_amount_needs_reason")
    with db.write(rollback=dry_run) as session:
        # the row lock queues a refund behind an invoice being issued for the same order (PostgreSQL)
        from planctl.services.invoices import resolve_order

        order = resolve_order(session, order_id, lock=True)
        if order.status not in ("paid", "partially-refunded", "refunded"):
            raise Refused(f"order {order.id} is {order.status}, not paid", reason="order_not_paid")
        tz = settings.reset_zone(session)
        facts = lifecycle.RefundFacts(
            kind=order.kind, payable=order.payable, refunded=order.refunded,
            credit_granted=order.credit_granted, credit_left=_credit_left(session, order),
            paid_at=order.paid_at or order.created_at, policy=_policy(session, order),
            credit_reversed=_reversed(session, order), currency=order.currency,
        )
        quote = lifecycle.quote_refund(facts, now, tz, override=amount)
        if quote.cancels and order.subscription_id:
            _refuse_while_later_orders_paid(session, order)
        row = Refund(order_id=order.id, amount=quote.amount, credit_reversed=quote.credit_reversed,
                     reason=(reason or f"policy {quote.policy}").strip(), policy=quote.policy,
                     details={k: v for k, v in (details or {}).items() if v}, created_at=now)
        session.add(row)
        session.flush()
        order.refunded += quote.amount
        order.status = "refunded" if order.refunded >= order.payable else "partially-refunded"
        session.add(order)
        _reverse_credit(session, order, quote.credit_reversed, now)
        result = RefundResult(refund=row, order=order)
        if quote.cancels and order.subscription_id:
            sub = session.get(Subscription, order.subscription_id)
            if sub is not None and sub.status != "cancelled":
                sub.status, sub.cancelled_at, sub.updated_at = "cancelled", now, now
                session.add(sub)
                result.cancelled_subscription = sub.id
                result.keys_stopped = session.exec(select(func.count()).select_from(ApiKey).where(
                    ApiKey.subscription_id == sub.id, ApiKey.status == "active")).one()
        from planctl.services.invoices import issue_credit_note

        result.credit_note = issue_credit_note(session, order, row, now)
        audit.record(session, caller, now, f"order:{order.id}",
                     f"refunded {money_text(quote.amount, order.currency)} ({quote.policy}); "
                     f"credit taken back {format_credit(quote.credit_reversed)}"
                     + (f"; subscription {result.cancelled_subscription} cancelled" if result.cancelled_subscription
                        else "")
                     + (f"; credit note {result.credit_note.id}" if result.credit_note else "")
                     + f"; reason: {row.reason}")
        return result


def _refuse_while_later_orders_paid(session: Session, order: Order) -> None:
    """A refund that cancels a subscription waits until its renewals and upgrades are refunded.

    Cancelling would otherwise leave those orders `paid` for a term nobody can
    use; refunding them first lets each follow its own policy (or an override).
    """
    later = session.exec(select(Order.id).where(
        Order.subscription_id == order.subscription_id, Order.id != order.id,
        col(Order.kind).in_(PLAN_ORDER_KINDS), Order.payable > Order.refunded,
        col(Order.status).in_(("paid", "partially-refunded"))).order_by(col(Order.created_at), col(Order.id))).all()
    if later:
        raise Refused(f"refunding {order.id} cancels subscription {order.subscription_id}, which later orders "
                      f"{', '.join(later)} still pay for; refund them first", reason="later_orders_not_refunded")


def _policy(session: Session, order: Order) -> str:
    if order.kind in PLAN_ORDER_KINDS and order.plan_version_id is not None:
        from planctl.services.catalog import plan_version_terms

        return str(plan_version_terms(session, order.plan_version_id).refund_policy)
    return "unused"  # extra packs and top-ups: refundable while their credit is untouched


def _reversed(session: Session, order: Order) -> int:
    query = select(func.coalesce(func.sum(Refund.credit_reversed), 0)).where(Refund.order_id == order.id)
    return int(session.exec(query).one())


def _credit_left(session: Session, order: Order) -> int:
    """How much of the credit this order granted is still unused in its pool.

    A subscription's grants are consumed oldest first, so a purchase's credit
    is the first to be used and a renewal's the last.
    """
    if order.kind in PLAN_ORDER_KINDS and order.subscription_id:
        sub = session.get(Subscription, order.subscription_id)
        if sub is None or sub.credit_granted is None:
            return 0
        grants = session.exec(
            select(Order.id, Order.credit_granted).where(Order.subscription_id == sub.id,
                                                         Order.status != "cancelled")
            .order_by(Order.created_at, Order.id)).all()
        consumed = sub.credit_used + sub.credit_reserved
        for oid, granted in grants:
            remaining = granted - _reversed(session, session.get(Order, oid))  # type: ignore[arg-type]
            if oid == order.id:
                return max(0, remaining - consumed)
            consumed = max(0, consumed - remaining)
        return 0
    if order.kind == "extra":
        pack = session.exec(select(ExtraPack).where(ExtraPack.order_id == order.id)).one()
        return pack.credit - pack.used - pack.reserved
    if order.kind == "topup":
        account = session.get(Account, order.account_id)
        return min(order.credit_granted - _reversed(session, order), account.payg_balance)  # type: ignore[union-attr]
    return 0


def _reverse_credit(session: Session, order: Order, credit: int, now: datetime) -> None:
    if credit <= 0:
        return
    entry = LedgerEntry(at=now, account_id=order.account_id, kind="refund-reversal", amount=-credit,
                        order_id=order.id, reason=f"refund of {order.id}", pool="plan")
    if order.kind in PLAN_ORDER_KINDS:
        entry.subscription_id = order.subscription_id
        _conditional(session, update(Subscription).where(
            Subscription.id == order.subscription_id,
            Subscription.credit_granted - credit >= Subscription.credit_used + Subscription.credit_reserved,
        ).values(credit_granted=Subscription.credit_granted - credit))
    elif order.kind == "extra":
        pack = session.exec(select(ExtraPack).where(ExtraPack.order_id == order.id)).one()
        entry.pool, entry.pack_id = "extra", pack.id
        _conditional(session, update(ExtraPack).where(
            ExtraPack.id == pack.id, ExtraPack.credit - credit >= ExtraPack.used + ExtraPack.reserved,
        ).values(credit=ExtraPack.credit - credit))
    else:
        entry.pool = "payg"
        _conditional(session, update(Account).where(
            Account.id == order.account_id, Account.payg_balance >= credit,
        ).values(payg_balance=Account.payg_balance - credit))
    session.add(entry)


def _conditional(session: Session, statement: object) -> None:
    if session.execute(statement).rowcount != 1:  # type: ignore[call-overload]
        raise Conflict("the credit to take back was used while the refund was being made; try again")


def list_refunds(db: Database, order_id: str) -> list[Refund]:
    with db.read() as session:
        return list(session.exec(select(Refund).where(Refund.order_id == order_id.upper()).order_by(Refund.id)))
