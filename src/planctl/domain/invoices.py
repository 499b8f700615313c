"""Invoice and credit-note documents: build them, and render them for people.

Pure: no I/O, no clock, no database. A document is a JSON-ready dict (SPEC §9:
money as exact decimal strings with the currency's decimals, timestamps as
ISO 8601 with offset) that is stored once, when it is issued, and never
changed; every rendering (terminal text, printable HTML) is made from it.

Both kinds have the same keys. A credit note carries the refunded amount as
positive numbers (its `kind` says it is a credit), the number of the invoice it
`references`, and the refund's `reason`; an invoice has null for those two.
"""

from __future__ import annotations

import html
import re
import textwrap
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from planctl.domain.catalog import currency_decimals
from planctl.domain.clock import iso
from planctl.domain.money import format_credit, format_money, parse_money

INVOICE = "invoice"
CREDIT_NOTE = "credit-note"
PREFIXES = {INVOICE: "INV", CREDIT_NOTE: "CN"}
DOCUMENT_KEYS = (
    "number", "kind", "issued_at", "seller", "buyer", "order", "lines", "subtotal", "discount", "total",
    "currency", "references", "reason",
)
_NUMBER = re.compile(r"(INV|CN)-(\d{4})-(\d{6})")
_KIND_LABELS = {
    "buy": "new subscription",
    "renew": "renewal",
    "upgrade": "upgrade (price difference)",
    "direct-renewal": "direct renewal",
    "extra": "extra usage",
    "topup": "pay-as-you-go top-up",
}


@dataclass(frozen=True)
class Seller:
    """The seller as configured (`planctl config set seller_name …`)."""

    name: str = ""
    address: str = ""
    tax_id: str = ""
    email: str = ""


@dataclass(frozen=True)
class Buyer:
    """The buying account and its billing details at issue time."""

    account_id: str
    name: str
    billing_name: str = ""
    billing_email: str = ""
    billing_address: str = ""
    billing_tax_id: str = ""


@dataclass(frozen=True)
class Sale:
    """The facts of a paid order that an invoice states (money in minor units)."""

    id: str
    kind: str
    description: str
    currency: str
    list_price: int
    payable: int
    created_at: datetime
    paid_at: datetime | None
    payment_method: str
    payment_ref: str | None = None
    discount_code: str | None = None
    discount_amount: int = 0


def document_number(kind: str, year: int, sequence: int) -> str:
    """`INV-2026-000001` / `CN-2026-000001`."""
    if kind not in PREFIXES:
        raise ValueError(f"unknown document kind {kind!r}")
    if not (1 <= sequence <= 999_999 and 1000 <= year <= 9999):
        raise ValueError(f"document number out of range: year {year}, sequence {sequence}")
    return f"{PREFIXES[kind]}-{year:04d}-{sequence:06d}"


def is_document_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def line_description(kind: str, name: str, item: str, *, validity: str | None = None,
                     credit: int = 0) -> str:
    """One line saying what was sold: `Codex Pro (codex-pro-monthly): new subscription, 1mo, 4500.00 credit`."""
    title = name if not item or name == item else f"{name} ({item})"
    parts = [_KIND_LABELS.get(kind, kind)]
    if validity:
        parts.append(validity if kind != "extra" else f"valid {validity}")
    if credit:
        parts.append(f"{format_credit(credit)} credit")
    return f"{title}: {', '.join(parts)}"


def build_invoice(*, number: str, issued_at: datetime, seller: Seller, buyer: Buyer, sale: Sale) -> dict[str, Any]:
    """The immutable invoice document for a paid order."""
    if not number.startswith("INV-"):
        raise ValueError(f"an invoice number starts with INV-, got {number!r}")
    if not (0 <= sale.discount_amount <= sale.list_price and sale.payable == sale.list_price - sale.discount_amount):
        raise ValueError(f"order {sale.id}: payable {sale.payable} is not list price minus discount")
    places = currency_decimals(sale.currency)
    money = lambda minor: format_money(minor, places)  # noqa: E731
    return {
        "number": number,
        "kind": INVOICE,
        "issued_at": iso(issued_at),
        "seller": _seller(seller),
        "buyer": _buyer(buyer),
        "order": {
            "id": sale.id, "kind": sale.kind, "created_at": iso(sale.created_at),
            "paid_at": None if sale.paid_at is None else iso(sale.paid_at),
            "payment_method": sale.payment_method, "payment_ref": sale.payment_ref,
        },
        "lines": [{"description": sale.description, "quantity": 1, "unit_price": money(sale.list_price),
                   "amount": money(sale.list_price)}],
        "subtotal": money(sale.list_price),
        "discount": None if not sale.discount_code else {"code": sale.discount_code,
                                                          "amount": money(sale.discount_amount)},
        "total": money(sale.payable),
        "currency": sale.currency,
        "references": None,
        "reason": None,
    }


def build_credit_note(*, number: str, issued_at: datetime, seller: Seller, invoice: Mapping[str, Any],
                      amount: int, reason: str) -> dict[str, Any]:
    """The credit note for a refund of `amount` minor units against `invoice` (a document).

    Buyer and order are copied from the invoice, so the credit note names the
    same parties as the document it corrects; the seller is as configured now.
    """
    if invoice.get("kind") != INVOICE:
        raise ValueError("a credit note references an invoice")
    if not number.startswith("CN-"):
        raise ValueError(f"a credit note number starts with CN-, got {number!r}")
    currency = str(invoice["currency"])
    places = currency_decimals(currency)
    if not 0 < amount <= parse_money(str(invoice["total"]), places):
        raise ValueError(f"credit note amount {amount} must be positive and at most the invoice total")
    money = format_money(amount, places)
    first = invoice["lines"][0]["description"] if invoice.get("lines") else str(invoice["order"]["id"])
    return {
        "number": number,
        "kind": CREDIT_NOTE,
        "issued_at": iso(issued_at),
        "seller": _seller(seller),
        "buyer": dict(invoice["buyer"]),
        "order": dict(invoice["order"]),
        "lines": [{"description": f"Refund for invoice {invoice['number']}: {first}", "quantity": 1,
                   "unit_price": money, "amount": money}],
        "subtotal": money,
        "discount": None,
        "total": money,
        "currency": currency,
        "references": str(invoice["number"]),
        "reason": reason,
    }


def _seller(s: Seller) -> dict[str, str]:
    return {"name": s.name, "address": s.address, "tax_id": s.tax_id, "email": s.email}


def _buyer(b: Buyer) -> dict[str, str]:
    return {"account_id": b.account_id, "name": b.name, "billing_name": b.billing_name,
            "billing_email": b.billing_email, "billing_address": b.billing_address,
            "billing_tax_id": b.billing_tax_id}


# ---------------------------------------------------------------- rendering


def title(doc: Mapping[str, Any]) -> str:
    return "Credit note" if doc.get("kind") == CREDIT_NOTE else "Invoice"


def _when(value: Any, tz: tzinfo | None) -> str:
    """`2026-11-21 12:00 +0800`: in `tz`, or in the timestamp's own offset."""
    if not value:
        return "-"
    instant = datetime.fromisoformat(str(value))
    if tz is not None:
        instant = instant.astimezone(tz)
    return instant.strftime("%Y-%m-%d %H:%M %z").strip()


def _party_lines(party: Mapping[str, Any], *, buyer: bool) -> list[str]:
    """Name, address lines, tax id and e-mail, skipping what is empty."""
    if buyer:
        name = party.get("billing_name") or party.get("name") or ""
        address, tax_id, email = (party.get(k) or "" for k in ("billing_address", "billing_tax_id", "billing_email"))
    else:
        name, address, tax_id, email = (party.get(k) or "" for k in ("name", "address", "tax_id", "email"))
    lines = [str(name)] if name else []
    lines += [line for line in str(address).splitlines() if line.strip()]
    if tax_id:
        lines.append(f"Tax id: {tax_id}")
    if email:
        lines.append(str(email))
    if buyer:
        lines.append(f"Account: {party.get('account_id', '')}")
    return lines or ["-"]


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _plain(value: Any) -> str:
    """Text safe for a terminal: control characters (escape sequences) and bidi overrides become U+FFFD."""
    text = "" if value is None else str(value)
    return "".join("\ufffd" if (unicodedata.category(c) == "Cc" and c != "\n") or c in _BIDI_CONTROLS else c
                   for c in text)


def render_text(doc: Mapping[str, Any], *, tz: tzinfo | None = None, width: int = 78) -> str:
    """A plain terminal layout of a document (no colour, no markup)."""
    order = doc.get("order") or {}
    out = [f"{title(doc).upper()} {doc['number']}", f"Issued: {_when(doc.get('issued_at'), tz)}"]
    if doc.get("references"):
        out.append(f"Credits invoice: {doc['references']}")
    if doc.get("reason"):
        out.append(f"Reason: {doc['reason']}")
    out.append("")
    seller = _party_lines(doc.get("seller") or {}, buyer=False)
    buyer = _party_lines(doc.get("buyer") or {}, buyer=True)
    half = max(20, (width - 2) // 2)
    out.append(f"{'From':<{half}}  Bill to")
    for i in range(max(len(seller), len(buyer))):
        left = seller[i] if i < len(seller) else ""
        right = buyer[i] if i < len(buyer) else ""
        out.append(f"{left:<{half}}  {right}".rstrip())
    out.append("")
    out.append(f"Order: {order.get('id', '-')} ({order.get('kind', '-')}), placed {_when(order.get('created_at'), tz)}")
    paid = f"Paid: {_when(order.get('paid_at'), tz)} via {order.get('payment_method') or '-'}"
    if order.get("payment_ref"):
        paid += f", reference {order['payment_ref']}"
    out += [paid, ""]
    lines = doc.get("lines") or []
    discount = doc.get("discount")
    amounts = [str(doc.get("subtotal") or ""), str(doc.get("total") or "")]
    amounts += [str(line.get(k, "")) for line in lines for k in ("unit_price", "amount")]
    if discount:
        amounts.append(f"-{discount.get('amount')}")
    mw = max(len("Unit price"), *(len(a) for a in amounts))
    desc_width = max(20, width - 2 * mw - 9)
    out.append(f"{'Description':<{desc_width}} {'Qty':>3}  {'Unit price':>{mw}}  {'Amount':>{mw}}")
    out.append("-" * (desc_width + 2 * mw + 8))
    for line in lines:
        desc = str(line.get("description", ""))
        chunks = textwrap.wrap(desc, desc_width) or [""]
        out.append(f"{chunks[0]:<{desc_width}} {line.get('quantity', 1):>3}  "
                   f"{line.get('unit_price', ''):>{mw}}  {line.get('amount', ''):>{mw}}")
        out += chunks[1:]
    out.append("-" * (desc_width + 2 * mw + 8))
    label_width = desc_width + mw + 6
    currency = doc.get("currency") or ""
    out.append(f"{'Subtotal':>{label_width}}  {doc.get('subtotal', ''):>{mw}}")
    if discount:
        out.append(f"{'Discount (' + str(discount.get('code')) + ')':>{label_width}}  "
                   f"{'-' + str(discount.get('amount')):>{mw}}")
    total_label = "Total credited" if doc.get("kind") == CREDIT_NOTE else "Total"
    out.append(f"{total_label + ' (' + currency + ')':>{label_width}}  {doc.get('total', ''):>{mw}}")
    return "\n".join(_plain(line) for line in out) + "\n"


_CSS = """
  @page { size: A4; margin: 16mm 18mm; }
  * { box-sizing: border-box; }
  html { background: #eef0f3; }
  body { margin: 0; padding: 24px 0; color: #1d2330;
         font: 10.5pt/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "PingFang SC",
               "Microsoft YaHei", sans-serif; }
  .sheet { width: 210mm; min-height: 297mm; margin: 0 auto; padding: 18mm; background: #fff;
           box-shadow: 0 1px 6px rgba(0, 0, 0, .15); }
  header { display: flex; justify-content: space-between; align-items: flex-start;
           border-bottom: 2px solid #1d2330; padding-bottom: 10px; margin-bottom: 18px; }
  h1 { font-size: 20pt; margin: 0; letter-spacing: .02em; }
  .number { font-size: 12pt; font-weight: 600; margin-top: 2px; }
  .meta { text-align: right; }
  .meta div { white-space: nowrap; }
  .parties { display: flex; gap: 24px; margin-bottom: 18px; }
  .party { flex: 1; }
  .label { text-transform: uppercase; font-size: 8pt; letter-spacing: .08em; color: #667085; margin-bottom: 3px; }
  .party .name { font-weight: 600; }
  dl.order { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0 0 18px; }
  dl.order dt { color: #667085; }
  dl.order dd { margin: 0; }
  table { width: 100%; border-collapse: collapse; }
  th { text-align: left; font-size: 8.5pt; text-transform: uppercase; letter-spacing: .06em; color: #667085;
       border-bottom: 1px solid #c9ced6; padding: 6px 4px; }
  td { padding: 8px 4px; border-bottom: 1px solid #eceef1; vertical-align: top; }
  .num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
  table.totals { width: auto; margin: 14px 0 0 auto; min-width: 45%; }
  table.totals td { border: 0; padding: 3px 4px; }
  table.totals tr.total td { border-top: 2px solid #1d2330; font-weight: 700; font-size: 12pt; padding-top: 6px; }
  .note { margin-top: 22px; padding: 10px 12px; background: #f6f7f9; border-left: 3px solid #1d2330; }
  footer { margin-top: 28px; font-size: 8.5pt; color: #667085; }
  @media print {
    html, body { background: #fff; padding: 0; }
    .sheet { width: auto; min-height: 0; margin: 0; padding: 0; box-shadow: none; }
    tr, .parties, .note { page-break-inside: avoid; break-inside: avoid; }
  }
"""


def _e(value: Any) -> str:
    """HTML-escaped text (quotes too); line breaks kept as <br>."""
    return html.escape("" if value is None else str(value), quote=True).replace("\n", "<br>")


def _party_html(label: str, party: Mapping[str, Any], *, buyer: bool) -> str:
    lines = _party_lines(party, buyer=buyer)
    first, rest = lines[0], lines[1:]
    body = "".join(f"<div>{_e(line)}</div>" for line in rest)
    return (f'<div class="party"><div class="label">{_e(label)}</div>'
            f'<div class="name">{_e(first)}</div>{body}</div>')


def render_html(doc: Mapping[str, Any], *, tz: tzinfo | None = None) -> str:
    """A self-contained, printable A4 page (inline CSS, no scripts, no external resources)."""
    order = doc.get("order") or {}
    currency = str(doc.get("currency") or "")
    heading = title(doc)
    meta = [f"<div>Issued {_e(_when(doc.get('issued_at'), tz))}</div>"]
    if doc.get("references"):
        meta.append(f"<div>Credits invoice <strong>{_e(doc['references'])}</strong></div>")
    rows = "".join(
        f"<tr><td>{_e(line.get('description'))}</td><td class=\"num\">{_e(line.get('quantity'))}</td>"
        f"<td class=\"num\">{_e(line.get('unit_price'))}</td><td class=\"num\">{_e(line.get('amount'))}</td></tr>"
        for line in doc.get("lines") or []
    )
    totals = [f'<tr><td>Subtotal</td><td class="num">{_e(doc.get("subtotal"))} {_e(currency)}</td></tr>']
    discount = doc.get("discount")
    if discount:
        totals.append(f'<tr><td>Discount ({_e(discount.get("code"))})</td>'
                      f'<td class="num">-{_e(discount.get("amount"))} {_e(currency)}</td></tr>')
    total_label = "Total credited" if doc.get("kind") == CREDIT_NOTE else "Total"
    totals.append(f'<tr class="total"><td>{total_label}</td>'
                  f'<td class="num">{_e(doc.get("total"))} {_e(currency)}</td></tr>')
    details = [("Order", f"{order.get('id', '-')} ({order.get('kind', '-')})"),
               ("Placed", _when(order.get("created_at"), tz)),
               ("Paid", _when(order.get("paid_at"), tz)),
               ("Payment method", order.get("payment_method") or "-")]
    if order.get("payment_ref"):
        details.append(("Payment reference", order["payment_ref"]))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in details)
    note = ""
    if doc.get("kind") == CREDIT_NOTE:
        note = (f'<div class="note">This credit note credits {_e(doc.get("total"))} {_e(currency)} against invoice '
                f'{_e(doc.get("references"))}.' + (f"<br>Reason: {_e(doc.get('reason'))}" if doc.get("reason") else "")
                + "</div>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{_e(heading)} {_e(doc.get("number"))}</title>
<style>{_CSS}</style>
</head>
<body>
<main class="sheet">
<header>
<div><h1>{_e(heading)}</h1><div class="number">{_e(doc.get("number"))}</div></div>
<div class="meta">{"".join(meta)}</div>
</header>
<section class="parties">
{_party_html("From", doc.get("seller") or {}, buyer=False)}
{_party_html("Bill to", doc.get("buyer") or {}, buyer=True)}
</section>
<dl class="order">{dl}</dl>
<table class="lines">
<thead><tr><th>Description</th><th class="num">Qty</th><th class="num">Unit price ({_e(currency)})</th>\
<th class="num">Amount ({_e(currency)})</th></tr></thead>
<tbody>{rows}</tbody>
</table>
<table class="totals"><tbody>{"".join(totals)}</tbody></table>
{note}
<footer>{_e(heading)} {_e(doc.get("number"))} &middot; amounts in {_e(currency)}</footer>
</main>
</body>
</html>
"""
