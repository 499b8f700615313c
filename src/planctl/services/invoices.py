"""Invoices and credit notes: issue them, list them, fetch them.

An invoice is issued on request for a paid order; a credit note is issued by
the refund service, inside the refund's own transaction, when the refunded
order has an invoice. Numbers are gapless per year of the reset zone
(`INV-2026-000001`, `CN-2026-000001`): they come from `sales.next_number` inside
the write transaction that inserts the document, so a refused or failed issue
rolls its number back with it and two processes can never take the same one.

The stored document (see `domain.invoices`) is a snapshot: seller details from
configuration and the buyer's billing details as they were at issue time.
Nothing updates an invoice row after it is inserted.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case
from sqlmodel import Session, col, or_, select

from planctl.domain import invoices as docs
from planctl.domain.clock import local_date
from planctl.domain.errors import Conflict, InvalidInput, NotFound, Refused
from planctl.services import accounts, audit, settings
from planctl.services.audit import Caller
from planctl.store import refs
from planctl.store.engine import Database
from planctl.store.sql import Tx
from planctl.store.tables import Account, Invoice, Order, Product, Refund

INVOICEABLE_STATUSES = ("paid", "partially-refunded")


def issue(db: Database, order_id: str, *, caller: Caller, now: datetime) -> Invoice:
    """Issue the invoice of a paid order; see the module docstring."""
    with db.write() as session:
        order = resolve_order(session, order_id, lock=True)
        existing = _invoice_of(session, order.id)
        if existing is not None:
            raise Conflict(f"order {order.id} already has invoice {existing.id}", reason="already_invoiced",
                           code="already_invoiced", invoice=existing.id)
        if order.status not in INVOICEABLE_STATUSES:
            state = "refunded in full" if order.status == "refunded" else order.status
            raise Refused(f"order {order.id} is {state}; only paid orders can be invoiced",
                          reason="order_not_paid")
        name = _item_name(session, order)
        number = _next(session, docs.INVOICE, now)
        doc = docs.build_invoice(number=number, issued_at=now, seller=_seller(session),
                                 buyer=_buyer(session, order.account_id), sale=_sale(order, name))
        row = Invoice(id=number, kind=docs.INVOICE, order_id=order.id, document=doc, issued_at=now)
        session.add(row)
        session.flush()
        # refunds made before the invoice: each gets its credit note now, so that
        # invoice − credit notes = paid − refunded holds from the moment of issue
        notes = [note for earlier in session.exec(select(Refund).where(Refund.order_id == order.id)
                                                  .order_by(col(Refund.id)))
                 if (note := issue_credit_note(session, order, earlier, now)) is not None]
        audit.record(session, caller, now, f"invoice:{number}",
                     f"issued for order {order.id}: total {doc['total']} {doc['currency']}"
                     + (f"; credit notes {', '.join(n.id for n in notes)} for earlier refunds" if notes else ""))
        return row


def issue_credit_note(session: Session, order: Order, refund: Refund, now: datetime, *,
                      caller: Caller | None = None) -> Invoice | None:
    """The credit note for `refund`, in the caller's (the refund's) transaction.

    Returns None when the order was never invoiced (or nothing was refunded).
    The refund service normally writes the audit entry for the refund and
    names the credit note there; pass `caller` to have one written here too.
    """
    invoice = _invoice_of(session, order.id)
    if invoice is None or refund.amount <= 0:
        return None
    if refund.id is None:
        session.add(refund)
        session.flush()
    number = _next(session, docs.CREDIT_NOTE, now)
    doc = docs.build_credit_note(number=number, issued_at=now, seller=_seller(session), invoice=invoice.document,
                                 amount=refund.amount, reason=refund.reason)
    row = Invoice(id=number, kind=docs.CREDIT_NOTE, order_id=order.id, refund_id=refund.id,
                  references_id=invoice.id, document=doc, issued_at=now)
    session.add(row)
    session.flush()
    if caller is not None:
        audit.record(session, caller, now, f"invoice:{number}",
                     f"credit note for invoice {invoice.id} (order {order.id}): {doc['total']} {doc['currency']}")
    return row


def list_invoices(db: Database, *, account: str | None = None, order: str | None = None,
                  year: int | None = None, kind: str | None = None) -> list[Invoice]:
    """Invoices and credit notes in issue order; `year` is the year in the number."""
    with db.read() as session:
        query = select(Invoice)
        if account:
            acc = accounts.resolve(session, account)
            query = query.join(Order, col(Order.id) == col(Invoice.order_id)).where(Order.account_id == acc.id)
        if order:
            query = query.where(Invoice.order_id == resolve_order(session, order).id)
        if year is not None:
            query = query.where(or_(*(col(Invoice.id).startswith(f"{prefix}-{year:04d}-")
                                      for prefix in docs.PREFIXES.values())))
        if kind:
            if kind not in docs.PREFIXES:
                raise InvalidInput(f"unknown document kind {kind!r}: use invoice or credit-note")
            query = query.where(Invoice.kind == kind)
        first = case((col(Invoice.kind) == docs.INVOICE, 0), else_=1)  # an invoice before its credit notes
        return list(session.exec(query.order_by(col(Invoice.issued_at), first, col(Invoice.id))))


def get(db: Database, number: str) -> Invoice:
    """An invoice or credit note by number, or an unambiguous prefix of one."""
    with db.read() as session:
        return resolve(session, number)


def resolve(session: Session, ref: str) -> Invoice:
    invoice = session.get(Invoice, refs.resolve(Tx.within(session), "invoice", ref))
    assert invoice is not None
    return invoice


def resolve_order(session: Session, ref: str, *, lock: bool = False) -> Order:
    """An order by number or unambiguous prefix (store/refs.py); `lock` holds its row until commit (PostgreSQL)."""
    query = select(Order).where(Order.id == refs.resolve(Tx.within(session), "order", ref))
    return session.exec(query.with_for_update() if lock else query).one()


# ---------------------------------------------------------------- building blocks


def _invoice_of(session: Session, order_id: str) -> Invoice | None:
    return session.exec(select(Invoice).where(Invoice.order_id == order_id, Invoice.kind == docs.INVOICE)).first()


def _next(session: Session, kind: str, now: datetime) -> str:
    """The next gapless number of `kind` for the reset zone's current year."""
    from planctl.services.sales import next_number

    year = local_date(now, settings.reset_zone(session)).year
    return docs.document_number(kind, year, next_number(session, f"{kind}:{year}"))


def _item_name(session: Session, order: Order) -> str:
    """What was sold, by name; refuses plans whose terms do not support invoices."""
    if order.plan_version_id is None:
        product = session.exec(select(Product).where(Product.slug == order.item)).first()
        return product.name if product is not None else order.item
    from planctl.services.catalog import plan_version_terms

    terms = plan_version_terms(session, order.plan_version_id)
    if not terms.invoice_supported:
        raise Refused(f"plan {terms.slug} does not support invoices (order {order.id})",
                      reason="invoice_not_supported", code="invoice_not_supported")
    return terms.name


def _sale(order: Order, name: str) -> docs.Sale:
    return docs.Sale(
        id=order.id, kind=order.kind, currency=order.currency, list_price=order.list_price, payable=order.payable,
        description=docs.line_description(order.kind, name, order.item, validity=order.validity_granted,
                                          credit=order.credit_granted),
        created_at=order.created_at, paid_at=order.paid_at, payment_method=order.payment_method,
        payment_ref=order.payment_ref, discount_code=order.discount_code, discount_amount=order.discount_amount,
    )


def _seller(session: Session) -> docs.Seller:
    s = settings.load(session)
    return docs.Seller(name=s["seller_name"], address=s["seller_address"], tax_id=s["seller_tax_id"],
                       email=s["seller_email"])


def _buyer(session: Session, account_id: str) -> docs.Buyer:
    a = session.get(Account, account_id)
    if a is None:  # an order's account is a foreign key: only a damaged database gets here
        raise NotFound(f"account {account_id} of the order does not exist", code="database_damaged")
    return docs.Buyer(account_id=a.id, name=a.name, billing_name=a.billing_name, billing_email=a.billing_email,
                      billing_address=a.billing_address, billing_tax_id=a.billing_tax_id)
