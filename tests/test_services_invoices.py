"""Invoices and credit notes: documents, gapless numbering, refusals, rendering, the CLI.

Service tests run on the `db` fixture (SQLite, and PostgreSQL when
PLANCTL_TEST_DATABASE_URL is set); CLI tests drive `planctl invoices …` through
Typer's CliRunner against the same database. Refusals are checked for their
exit code, one error line on stderr, nothing on stdout, and an unchanged
database. Concurrency: two spawned processes issue invoices at once.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from helpers import ISO, NOW, db_dump as dump
from typer.testing import CliRunner


DOC_KEYS = {"number", "kind", "issued_at", "seller", "buyer", "order", "lines", "subtotal", "discount", "total",
            "currency", "references", "reason"}
SELLER_KEYS = {"name", "address", "tax_id", "email"}
BUYER_KEYS = {"account_id", "name", "billing_name", "billing_email", "billing_address", "billing_tax_id"}
ORDER_KEYS = {"id", "kind", "created_at", "paid_at", "payment_method", "payment_ref"}
LINE_KEYS = {"description", "quantity", "unit_price", "amount"}
LIST_KEYS_ORDER = ["number", "kind", "order_id", "account_name", "account_id", "buyer", "total", "currency",
                   "references", "issued_at"]
LIST_KEYS = set(LIST_KEYS_ORDER)
BEIJING_NEW_YEAR = datetime(2026, 12, 31, 16, 0, tzinfo=timezone.utc)  # 2027-01-01 00:00 in Asia/Shanghai


# ---------------------------------------------------------------- helpers


class InvoiceCli:
    def __init__(self, db_location: str) -> None:
        self.db_location = db_location
        self.runner = CliRunner()
        from planctl.cli import app

        self.app = app

    def __call__(self, *args: str) -> Any:
        return self.runner.invoke(self.app, ["--db", self.db_location, "invoices", *args], catch_exceptions=False)

    def ok(self, *args: str) -> Any:
        result = self(*args)
        assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)


@pytest.fixture
def inv(db_url: str) -> InvoiceCli:
    return InvoiceCli(db_url)


def account(db: Any, caller: Any, name: str = "acme", **fields: str) -> str:
    from planctl.services import accounts

    return accounts.create(db, {"name": name, **fields}, caller=caller, now=NOW).id


def paid_order(db: Any, caller: Any, account_id: str, item: str = "codex-pro-monthly", kind: str = "buy",
               **request: Any) -> str:
    from planctl.services.sales import SaleRequest, sell

    return sell(db, SaleRequest(kind=kind, account=account_id, item=item, **request), caller=caller, now=NOW).order.id


def raw_order(db: Any, account_id: str, order_id: str, status: str) -> str:
    """An order in a state the sales service does not produce directly (pending, refunded)."""
    from planctl.store.tables import Order

    with db.write() as session:
        session.add(Order(id=order_id, kind="extra", account_id=account_id, item="extra-50", currency="CNY",
                          list_price=1500, payable=1500, payment_method="manual", status=status, created_at=NOW,
                          paid_at=None if status == "pending" else NOW))
    return order_id


def counter(db: Any, name: str) -> int | None:
    from planctl.store.tables import Counter

    with db.read() as session:
        row = session.get(Counter, name)
        return None if row is None else row.value


def refund(db: Any, order_id: str, amount: int, reason: str = "customer request", *, now: datetime = NOW,
           fail: bool = False) -> Any:
    """Insert a refund and issue its credit note in one write transaction, as the refund service does."""
    from planctl.services import invoices
    from planctl.store.tables import Order, Refund

    with db.write() as session:
        order = session.get(Order, order_id)
        row = Refund(order_id=order_id, amount=amount, reason=reason, policy="override", created_at=now)
        session.add(row)
        session.flush()
        note = invoices.issue_credit_note(session, order, row, now)
        if fail:
            raise RuntimeError("the refund failed after its credit note was drawn")
        return note


# ---------------------------------------------------------------- numbering


def test_numbers_are_gapless_and_sequential(db: Any, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    orders = [paid_order(db, caller, acc) for _ in range(4)]
    numbers = [invoices.issue(db, o, caller=caller, now=NOW).id for o in orders]
    assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 5)]
    assert [r.id for r in invoices.list_invoices(db)] == numbers
    assert [r.order_id for r in invoices.list_invoices(db)] == orders
    assert counter(db, "invoice:2026") == 4


def test_refused_issues_leave_no_gap(db: Any, caller: Any) -> None:
    from planctl.domain.errors import Conflict, Refused
    from planctl.services import invoices

    acc = account(db, caller)
    first, second = paid_order(db, caller, acc), paid_order(db, caller, acc)
    day_pass = paid_order(db, caller, acc, item="codex-day-pass")
    assert invoices.issue(db, first, caller=caller, now=NOW).id == "INV-2026-000001"
    with pytest.raises(Refused):
        invoices.issue(db, day_pass, caller=caller, now=NOW)
    with pytest.raises(Conflict):
        invoices.issue(db, first, caller=caller, now=NOW)
    assert invoices.issue(db, second, caller=caller, now=NOW).id == "INV-2026-000002"


def test_numbering_restarts_each_year_of_the_reset_zone(db: Any, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    orders = [paid_order(db, caller, acc) for _ in range(4)]
    before = BEIJING_NEW_YEAR - timedelta(seconds=1)  # 2026-12-31 23:59:59 in Beijing
    assert invoices.issue(db, orders[0], caller=caller, now=NOW).id == "INV-2026-000001"
    assert invoices.issue(db, orders[1], caller=caller, now=before).id == "INV-2026-000002"
    assert invoices.issue(db, orders[2], caller=caller, now=BEIJING_NEW_YEAR).id == "INV-2027-000001"
    assert invoices.issue(db, orders[3], caller=caller, now=BEIJING_NEW_YEAR).id == "INV-2027-000002"
    assert [r.id for r in invoices.list_invoices(db, year=2027)] == ["INV-2027-000001", "INV-2027-000002"]
    assert (counter(db, "invoice:2026"), counter(db, "invoice:2027")) == (2, 2)


def test_year_follows_the_configured_reset_zone(db: Any, caller: Any) -> None:
    from planctl.services import invoices, settings

    settings.set_value(db, "reset_timezone", "UTC", caller=caller, now=NOW)
    acc = account(db, caller)
    order = paid_order(db, caller, acc)
    assert invoices.issue(db, order, caller=caller, now=BEIJING_NEW_YEAR).id == "INV-2026-000001"


def test_cli_issue_uses_the_clock(db: Any, caller: Any, inv: InvoiceCli) -> None:
    acc = account(db, caller)
    order = paid_order(db, caller, acc)
    with freeze_time("2027-03-01T02:00:00Z"):
        doc = inv.json("issue", order)
    assert doc["number"] == "INV-2027-000001"
    assert doc["issued_at"] == "2027-03-01T02:00:00+00:00"


# ---------------------------------------------------------------- refusals


def test_service_refusals_carry_reason_codes(db: Any, caller: Any) -> None:
    from planctl.domain.errors import Conflict, NotFound, Refused
    from planctl.services import invoices

    acc = account(db, caller)
    order = paid_order(db, caller, acc)
    with pytest.raises(NotFound, match="unknown order 'ORD-20991231-0001'"):
        invoices.issue(db, "ORD-20991231-0001", caller=caller, now=NOW)
    with pytest.raises(Refused) as refused:
        invoices.issue(db, paid_order(db, caller, acc, item="codex-day-pass"), caller=caller, now=NOW)
    assert refused.value.reason == "invoice_not_supported" and "codex-day-pass" in refused.value.message
    for status in ("pending", "refunded", "cancelled"):
        oid = raw_order(db, acc, f"ORD-20261121-9{len(status):03d}", status)
        with pytest.raises(Refused) as not_paid:
            invoices.issue(db, oid, caller=caller, now=NOW)
        assert not_paid.value.reason == "order_not_paid"
    first = invoices.issue(db, order, caller=caller, now=NOW)
    with pytest.raises(Conflict) as again:
        invoices.issue(db, order, caller=caller, now=NOW)
    assert again.value.reason == "already_invoiced" and first.id in again.value.message


def test_partially_refunded_orders_and_products_are_invoiceable(db: Any, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    partly = raw_order(db, acc, "ORD-20261121-9001", "partially-refunded")
    pack = paid_order(db, caller, acc, item="extra-50", kind="extra")
    assert invoices.issue(db, partly, caller=caller, now=NOW).id == "INV-2026-000001"
    doc = invoices.issue(db, pack, caller=caller, now=NOW).document
    assert doc["lines"] == [{"description": "Extra usage 50 (extra-50): extra usage, valid 30d, 50.00 credit",
                             "quantity": 1, "unit_price": "15.00", "amount": "15.00"}]
    assert doc["order"]["kind"] == "extra" and doc["total"] == "15.00"


@pytest.mark.parametrize("case", ["unknown", "not_supported", "not_paid", "already"])
def test_cli_refusals_change_nothing(db: Any, db_url: str, caller: Any, inv: InvoiceCli, case: str) -> None:
    acc = account(db, caller)
    order = paid_order(db, caller, acc)
    inv.ok("issue", order)
    target, code, reason = {
        "unknown": ("ORD-20991231-0001", 3, "not_found"),
        "not_supported": (paid_order(db, caller, acc, item="codex-day-pass"), 4, "invoice_not_supported"),
        "not_paid": (raw_order(db, acc, "ORD-20261121-9001", "pending"), 4, "order_not_paid"),
        "already": (order, 6, "already_invoiced"),
    }[case]
    before = dump(db_url)
    result = inv("issue", target)
    assert result.exit_code == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and target in lines[0]
    if case == "already":
        assert "INV-2026-000001" in lines[0]
    as_json = inv("issue", target, "--json")
    assert as_json.exit_code == code
    assert json.loads(as_json.stderr)["error"] == reason
    assert dump(db_url) == before


def test_cli_unknown_invoice_is_not_found(db: Any, inv: InvoiceCli) -> None:
    result = inv("show", "INV-2026-000042")
    assert result.exit_code == 3 and "unknown invoice 'INV-2026-000042'" in result.stderr
    assert inv("show", "INV-2026-000042", "--format", "pdf").exit_code == 2
    assert inv("show", "INV-2026-000042", "--json", "--format", "html").exit_code == 2


# ---------------------------------------------------------------- the document


def test_json_document_shape_and_exact_money(db: Any, caller: Any, inv: InvoiceCli) -> None:
    from planctl.services import discounts

    discounts.create(db, {"code": "WELCOME10", "value": "10%"}, caller=caller, now=NOW)
    acc = account(db, caller, billing_name="Acme Ltd", billing_email="ap@acme.test",
                  billing_address="1 Main St\nSpringfield", billing_tax_id="91310000MA1K")
    order = paid_order(db, caller, acc, code="WELCOME10", payment_method="alipay", payment_ref="2026112122001")
    doc = inv.json("issue", order)
    assert set(doc) == DOC_KEYS
    assert set(doc["seller"]) == SELLER_KEYS and set(doc["buyer"]) == BUYER_KEYS
    assert set(doc["order"]) == ORDER_KEYS and all(set(line) == LINE_KEYS for line in doc["lines"])
    assert doc["number"] == "INV-2026-000001" and doc["kind"] == "invoice"
    assert ISO.match(doc["issued_at"]) and ISO.match(doc["order"]["created_at"]) and ISO.match(doc["order"]["paid_at"])
    assert doc["buyer"] == {"account_id": acc, "name": "acme", "billing_name": "Acme Ltd",
                            "billing_email": "ap@acme.test", "billing_address": "1 Main St\nSpringfield",
                            "billing_tax_id": "91310000MA1K"}
    assert doc["order"] == {"id": order, "kind": "buy", "created_at": "2026-11-21T04:00:00+00:00",
                            "paid_at": "2026-11-21T04:00:00+00:00", "payment_method": "alipay",
                            "payment_ref": "2026112122001"}
    assert doc["lines"] == [{"description": "Codex Pro (codex-pro-monthly): new subscription, 1mo, 4500.00 credit",
                             "quantity": 1, "unit_price": "299.00", "amount": "299.00"}]
    assert (doc["subtotal"], doc["discount"], doc["total"], doc["currency"]) == (
        "299.00", {"code": "WELCOME10", "amount": "29.90"}, "269.10", "CNY")
    assert doc["references"] is None and doc["reason"] is None
    assert inv.json("show", "INV-2026-000001") == doc
    assert json.loads(inv.ok("show", "INV-2026-000001", "--format", "json").stdout) == doc
    assert inv.json("show", "inv-2026-000001") == doc  # case-insensitive


def test_seller_details_come_from_configuration(db: Any, caller: Any) -> None:
    from planctl.services import invoices, settings

    for key, value in (("seller_name", "Example Cloud Co."), ("seller_address", "88 Century Ave\nShanghai"),
                       ("seller_tax_id", "91310115XXXX"), ("seller_email", "billing@example.test")):
        settings.set_value(db, key, value, caller=caller, now=NOW)
    acc = account(db, caller)
    first = invoices.issue(db, paid_order(db, caller, acc), caller=caller, now=NOW)
    assert first.document["seller"] == {"name": "Example Cloud Co.", "address": "88 Century Ave\nShanghai",
                                        "tax_id": "91310115XXXX", "email": "billing@example.test"}
    settings.set_value(db, "seller_name", "Renamed Co.", caller=caller, now=NOW)
    second = invoices.issue(db, paid_order(db, caller, acc), caller=caller, now=NOW)
    assert second.document["seller"]["name"] == "Renamed Co."
    assert invoices.get(db, first.id).document["seller"]["name"] == "Example Cloud Co."


def test_invoices_are_immutable_snapshots(db: Any, caller: Any, inv: InvoiceCli) -> None:
    from planctl.domain.errors import Conflict
    from planctl.services import accounts, invoices

    acc = account(db, caller, billing_name="Old Name Ltd")
    order = paid_order(db, caller, acc)
    first = invoices.issue(db, order, caller=caller, now=NOW)
    accounts.update(db, acc, {"billing_name": "New Name Ltd"}, caller=caller, now=NOW)
    later = datetime(2027, 2, 1, tzinfo=timezone.utc)
    with pytest.raises(Conflict, match=first.id):
        invoices.issue(db, order, caller=caller, now=later)
    again = invoices.get(db, first.id)
    assert again.document == first.document and again.issued_at == first.issued_at == NOW
    assert again.document["buyer"]["billing_name"] == "Old Name Ltd"
    assert "Old Name Ltd" in inv.ok("show", first.id).stdout
    assert [r.id for r in invoices.list_invoices(db)] == [first.id]


def test_issue_writes_an_audit_entry(db: Any, caller: Any) -> None:
    from planctl.services import audit, invoices

    acc = account(db, caller)
    order = paid_order(db, caller, acc)
    invoices.issue(db, order, caller=caller, now=NOW)
    [entry] = audit.entries(db, audit.AuditFilter(target="invoice:"))
    assert entry.target == "invoice:INV-2026-000001" and entry.actor == "tester"
    assert order in entry.summary and "299.00 CNY" in entry.summary


# ---------------------------------------------------------------- credit notes


def test_credit_notes_reference_the_invoice_and_are_numbered(db: Any, caller: Any, inv: InvoiceCli) -> None:
    from planctl.services import invoices

    acc = account(db, caller, billing_name="Acme Ltd")
    order = paid_order(db, caller, acc)
    invoice = invoices.issue(db, order, caller=caller, now=NOW)
    note = refund(db, order, 5000, "unused share")
    assert note is not None
    assert (note.id, note.kind, note.order_id, note.references_id) == ("CN-2026-000001", "credit-note", order,
                                                                        invoice.id)
    assert note.refund_id is not None
    doc = note.document
    assert set(doc) == DOC_KEYS
    assert (doc["kind"], doc["references"], doc["reason"]) == ("credit-note", "INV-2026-000001", "unused share")
    assert (doc["subtotal"], doc["discount"], doc["total"], doc["currency"]) == ("50.00", None, "50.00", "CNY")
    assert doc["lines"] == [{"description": "Refund for invoice INV-2026-000001: Codex Pro (codex-pro-monthly): "
                             "new subscription, 1mo, 4500.00 credit", "quantity": 1, "unit_price": "50.00",
                             "amount": "50.00"}]
    assert doc["buyer"] == invoice.document["buyer"] and doc["order"] == invoice.document["order"]
    assert refund(db, order, 1990).id == "CN-2026-000002"
    assert refund(db, order, 100, now=BEIJING_NEW_YEAR).id == "CN-2027-000001"
    assert invoices.get(db, invoice.id).document == invoice.document  # the invoice is untouched
    listed = inv.json("list", "--order", order)
    assert [(r["number"], r["kind"], r["references"]) for r in listed] == [
        ("INV-2026-000001", "invoice", None), ("CN-2026-000001", "credit-note", "INV-2026-000001"),
        ("CN-2026-000002", "credit-note", "INV-2026-000001"), ("CN-2027-000001", "credit-note", "INV-2026-000001")]
    text = inv.ok("show", "CN-2026-000001").stdout
    assert "CREDIT NOTE CN-2026-000001" in text and "Credits invoice: INV-2026-000001" in text
    assert "Reason: unused share" in text


def test_no_credit_note_without_an_invoice(db: Any, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    order = paid_order(db, caller, acc)
    assert refund(db, order, 5000) is None
    assert invoices.list_invoices(db) == [] and counter(db, "credit-note:2026") is None


def test_a_rolled_back_refund_leaves_no_credit_note_gap(db: Any, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    order = paid_order(db, caller, acc)
    invoices.issue(db, order, caller=caller, now=NOW)
    with pytest.raises(RuntimeError):
        refund(db, order, 5000, fail=True)
    assert [r.id for r in invoices.list_invoices(db)] == ["INV-2026-000001"]
    assert refund(db, order, 5000).id == "CN-2026-000001"


# ---------------------------------------------------------------- rendering and files


def test_html_escapes_hostile_values(db: Any, caller: Any, inv: InvoiceCli) -> None:
    from planctl.services import settings

    settings.set_value(db, "seller_name", "O'Brien & <Sons>", caller=caller, now=NOW)
    acc = account(db, caller, billing_name='<script>alert("x")</script>',
                  billing_address="1 <b>Main</b> St\nSpringfield")
    order = paid_order(db, caller, acc, payment_ref='"><img src=x onerror=alert(1)>')
    inv.ok("issue", order)
    page = inv.ok("show", "INV-2026-000001", "--format", "html").stdout
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "O&#x27;Brien &amp; &lt;Sons&gt;" in page
    assert "1 &lt;b&gt;Main&lt;/b&gt; St" in page and "Springfield" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "@media print" in page and "size: A4" in page
    assert "src=" not in page.replace("src=x", "") and "href=" not in page and "<link" not in page
    assert "INV-2026-000001" in page and "299.00" in page


def test_text_rendering(db: Any, caller: Any, inv: InvoiceCli) -> None:
    acc = account(db, caller, billing_name="Acme Ltd", billing_tax_id="TAX-1")
    order = paid_order(db, caller, acc)
    with freeze_time(NOW):
        issued = inv.ok("issue", order)
    assert "issued invoice INV-2026-000001" in issued.stderr
    text = inv.ok("show", "INV-2026-000001").stdout
    assert issued.stdout == text
    assert text.startswith("INVOICE INV-2026-000001\n")
    assert "Acme Ltd" in text and "Tax id: TAX-1" in text and order in text
    assert re.search(r"Total \(CNY\)\s+299\.00", text)
    shanghai = InvoiceCli(inv.db_location)
    shown = shanghai.runner.invoke(shanghai.app, ["--db", inv.db_location, "--tz", "Asia/Shanghai", "invoices",
                                                  "show", "INV-2026-000001"])
    assert "Issued: 2026-11-21 12:00 +0800" in shown.stdout


def test_output_writes_a_new_file_and_never_overwrites(db: Any, caller: Any, inv: InvoiceCli,
                                                        tmp_path: Path) -> None:
    acc = account(db, caller)
    inv.ok("issue", paid_order(db, caller, acc))
    target = tmp_path / "INV-2026-000001.html"
    written = inv.ok("show", "INV-2026-000001", "--format", "html", "--output", str(target))
    assert written.stdout == "" and str(target) in written.stderr
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    again = inv("show", "INV-2026-000001", "--format", "json", "--output", str(target))
    assert again.exit_code == 6 and "already exists" in again.stderr and again.stdout == ""
    assert target.read_text(encoding="utf-8") == page
    as_json = tmp_path / "inv.json"
    inv.ok("show", "INV-2026-000001", "--json", "--output", str(as_json))
    assert json.loads(as_json.read_text(encoding="utf-8"))["number"] == "INV-2026-000001"
    missing = inv("show", "INV-2026-000001", "--output", str(tmp_path / "no" / "such" / "dir.txt"))
    assert missing.exit_code == 2 and "cannot write" in missing.stderr


def test_list_filters_and_formats(db: Any, caller: Any, inv: InvoiceCli) -> None:
    first, second = account(db, caller, "acme", billing_name="Acme Ltd"), account(db, caller, "globex")
    inv.ok("issue", paid_order(db, caller, first))
    inv.ok("issue", paid_order(db, caller, second))
    rows = inv.json("list")
    assert [r["number"] for r in rows] == ["INV-2026-000001", "INV-2026-000002"]
    assert all(set(r) == LIST_KEYS for r in rows)
    assert rows[0]["buyer"] == "Acme Ltd" and rows[1]["buyer"] == "globex" and rows[0]["total"] == "299.00"
    assert [r["account_name"] for r in rows] == ["acme", "globex"]
    assert [r["number"] for r in inv.json("list", "--account", "globex")] == ["INV-2026-000002"]
    assert inv.json("list", "--year", "2027") == []
    csv_lines = inv.ok("list", "--csv").stdout.splitlines()
    assert csv_lines[0] == ",".join(LIST_KEYS_ORDER) and len(csv_lines) == 3
    jsonl = [json.loads(line) for line in inv.ok("list", "--jsonl").stdout.splitlines()]
    assert jsonl == rows
    assert "INV-2026-000002" in inv.ok("list").stdout
    assert inv("list", "--account", "nobody").exit_code == 3


def test_every_command_has_an_example(inv: InvoiceCli) -> None:
    for command in ("issue", "list", "show"):
        result = inv.runner.invoke(inv.app, ["invoices", command, "--help"])
        assert result.exit_code == 0 and "Example: planctl invoices" in result.stdout, command


def test_cli_module_does_not_import_the_database_stack() -> None:
    code = "import sys, planctl.cli.invoices; print(any(m in sys.modules for m in ('sqlalchemy', 'sqlmodel')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- the pure domain


def test_domain_money_uses_the_currency_decimals() -> None:
    from planctl.domain import invoices as docs

    sale = docs.Sale(id="ORD-20261121-0001", kind="buy", description="Plan", currency="JPY", list_price=1500,
                     payable=1350, discount_code="TEN", discount_amount=150, created_at=NOW, paid_at=NOW,
                     payment_method="card")
    doc = docs.build_invoice(number="INV-2026-000001", issued_at=NOW, seller=docs.Seller(name="S"),
                             buyer=docs.Buyer(account_id="acc_1", name="a"), sale=sale)
    assert (doc["subtotal"], doc["discount"], doc["total"]) == ("1500", {"code": "TEN", "amount": "150"}, "1350")
    note = docs.build_credit_note(number="CN-2026-000001", issued_at=NOW, seller=docs.Seller(), invoice=doc,
                                  amount=1350, reason="r")
    assert note["total"] == "1350" and note["references"] == "INV-2026-000001"
    with pytest.raises(ValueError):
        docs.build_credit_note(number="CN-2026-000002", issued_at=NOW, seller=docs.Seller(), invoice=doc,
                               amount=1351, reason="more than was paid")
    with pytest.raises(ValueError):
        docs.build_credit_note(number="CN-2026-000002", issued_at=NOW, seller=docs.Seller(), invoice=note,
                               amount=1, reason="a credit note does not reference a credit note")
    assert docs.document_number("invoice", 2026, 1) == "INV-2026-000001"
    assert docs.document_number("credit-note", 2027, 123456) == "CN-2027-123456"


def test_text_rendering_neutralises_terminal_escapes() -> None:
    from planctl.domain import invoices as docs

    sale = docs.Sale(id="ORD-1", kind="topup", description="PAYG", currency="CNY", list_price=100, payable=100,
                     created_at=NOW, paid_at=NOW, payment_method="manual")
    hostile = docs.Buyer(account_id="acc_1", name="a", billing_name="\x1b[2J\x1b]0;pwn\x07Bob\u202e")
    doc = docs.build_invoice(number="INV-2026-000001", issued_at=NOW, seller=docs.Seller(), buyer=hostile, sale=sale)
    text = docs.render_text(doc)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\ufffd[2J" in text and "Bob" in text


# ---------------------------------------------------------------- concurrency


def _issue_worker(db_url: str, order_ids: list[str], barrier: Any, results: Any, pause: float) -> None:
    """Runs in a spawned process: open the database and issue invoices as fast as possible."""
    from planctl.domain.errors import Conflict
    from planctl.services import invoices
    from planctl.services.audit import Caller
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    database = open_database(resolve_target(db_url), now=NOW)
    try:
        caller = Caller(actor="worker", command="invoices issue")
        barrier.wait(timeout=120)
        numbers: list[str | None] = []
        for oid in order_ids:
            try:
                numbers.append(invoices.issue(database, oid, caller=caller, now=NOW).id)
            except Conflict as exc:
                if exc.reason != "already_invoiced":
                    raise
                numbers.append(None)
            time.sleep(pause)  # lets the other process at the lock (SQLite's busy handler backs off)
        results.put(numbers)
    except BaseException as exc:  # report instead of dying silently
        results.put(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        database.dispose()


def _race(db_url: str, first: list[str], second: list[str], pause: float = 0.03) -> list[list[str | None]]:
    """Two spawned processes issue invoices for their orders at the same moment."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_issue_worker, args=(db_url, ids, barrier, results, pause))
               for ids in (first, second)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert all(isinstance(o, list) for o in outcomes), outcomes
    assert all(w.exitcode == 0 for w in workers)
    return outcomes


def test_concurrent_issues_never_collide_or_leave_gaps(db: Any, db_url: str, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    orders = [paid_order(db, caller, acc) for _ in range(16)]
    outcomes = _race(db_url, orders[0::2], orders[1::2])
    numbers = [n for o in outcomes for n in o]
    assert all(o == sorted(o) for o in outcomes)  # each process saw its numbers increase
    assert sorted(numbers) == [f"INV-2026-{n:06d}" for n in range(1, 17)]
    rows = invoices.list_invoices(db)
    assert sorted(r.id for r in rows) == sorted(numbers)
    assert sorted(r.order_id for r in rows) == sorted(orders)
    assert counter(db, "invoice:2026") == 16


def test_concurrent_issues_for_the_same_orders_invoice_each_once(db: Any, db_url: str, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    orders = [paid_order(db, caller, acc) for _ in range(8)]
    outcomes = _race(db_url, orders, orders, pause=0)  # both go for the same order at the same moment
    numbers = [n for o in outcomes for n in o if n is not None]
    assert sorted(numbers) == [f"INV-2026-{n:06d}" for n in range(1, 9)]
    rows = invoices.list_invoices(db)
    assert sorted(r.order_id for r in rows) == sorted(orders)  # one invoice per order, never two
    assert counter(db, "invoice:2026") == 8
