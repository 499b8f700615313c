"""`planctl invoices …`: issue invoices for paid orders, list them, show or save them.

Credit notes are issued by `planctl refund` when the refunded order has an
invoice; they are listed and shown here like invoices.
"""


import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import State, state
from planctl.cli.output import Column, CsvOpt, JsonlOpt, JsonOpt, emit_rows, output_format, say

app = typer.Typer(help="Invoices and credit notes: issue, list, and show as text, JSON or a printable HTML page.",
                  epilog="Example: planctl invoices show INV-2026-000001 --format html --output invoice.html",
                  no_args_is_help=True)

# left out when a terminal is too narrow, highest `drop` first (README "Tables"); --wide shows all
LIST_COLUMNS = (
    Column("number", kind="id"), Column("kind", drop=3), Column("order_id", "Order", "id"),
    Column("account_name", "Account"), Column("account_id", "Account id", "id", drop=6),
    Column("buyer", drop=4), Column("total", kind="money"), Column("currency"),
    Column("references", kind="list", drop=5), Column("issued_at", "Issued", "time", drop=2),
)


class DocFormat(str, Enum):
    text = "text"
    json = "json"
    html = "html"


def invoice_row(row: Any) -> dict[str, Any]:
    """One line of `invoices list` (the full document is in `invoices show --json`)."""
    doc = row.document
    buyer = doc.get("buyer") or {}
    return {
        "number": row.id, "kind": row.kind, "order_id": row.order_id, "account_id": buyer.get("account_id"),
        "account_name": buyer.get("name"),
        "buyer": buyer.get("billing_name") or buyer.get("name"), "total": doc.get("total"),
        "currency": doc.get("currency"), "references": doc.get("references"), "issued_at": doc.get("issued_at"),
    }


def render(st: State, doc: dict[str, Any], fmt: str) -> str:
    """A document as text, JSON or HTML; times in the display zone (--tz)."""
    import json

    from planctl.domain.invoices import render_html, render_text

    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt == "html":
        return render_html(doc, tz=st.display_zone)
    return render_text(doc, tz=st.display_zone)


def write_new_file(path: Path, text: str) -> Path:
    """Write `text` to a file that must not exist yet (never overwrites)."""
    from planctl.domain.errors import Conflict, InvalidInput

    target = path.expanduser()
    try:
        with open(target, "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise Conflict(f"{target} already exists; choose a new file name or remove it first") from None
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise InvalidInput(f"cannot write {target}: {(exc.strerror or str(exc)).lower()}") from None
    return target


@app.command("issue")
def issue(
    ctx: typer.Context, order: Annotated[str, typer.Argument(help="Order number (or unambiguous prefix).")],
    json_: JsonOpt = False,
) -> None:
    """Issue the invoice of a paid order.

    An order gets one invoice, numbered gaplessly per year (INV-2026-000001); it never changes afterwards.

    Example: planctl invoices issue ORD-20261121-0001 --json
    """
    from planctl.services import invoices

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    row = invoices.issue(st.db(), order, caller=st.caller(), now=st.now())
    sys.stdout.write(render(st, row.document, "json" if fmt == "json" else "text"))
    say(st, f"issued invoice {row.id} for order {row.order_id}")


@app.command("list")
def list_invoices(
    ctx: typer.Context,
    account: Annotated[Optional[str], typer.Option(help="Only this account's (id, name or prefix).")] = None,
    order: Annotated[Optional[str], typer.Option(help="Only this order's invoice and credit notes.")] = None,
    year: Annotated[Optional[int], typer.Option(min=1000, max=9999, help="Only numbers of this year.")] = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List invoices and credit notes in the order they were issued.

    Example: planctl invoices list --account acme --csv
    """
    from planctl.services import invoices

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    rows = (invoice_row(r) for r in invoices.list_invoices(st.db(), account=account, order=order, year=year))
    emit_rows(st, rows, LIST_COLUMNS, fmt)


@app.command("show")
def show(
    ctx: typer.Context,
    invoice: Annotated[str, typer.Argument(help="Invoice or credit-note number (or unambiguous prefix).")],
    format_: Annotated[Optional[DocFormat], typer.Option(
        "--format", "-f", help="text (default), json, or html (a printable A4 page).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="FILE", help="Write to this new file instead of stdout (never overwrites).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Show an invoice or credit note, or save it as a file.

    Example: planctl invoices show INV-2026-000001 --format html --output INV-2026-000001.html
    """
    from planctl.domain.errors import Conflict, InvalidInput
    from planctl.services import invoices

    st = state(ctx, read_only=True)
    if json_ and format_ not in (None, DocFormat.json):
        raise InvalidInput(f"choose one format: --json or --format {format_.value}")
    fmt = format_.value if format_ is not None else ("json" if json_ or st.json else "text")
    st.json = st.json or fmt == "json"
    if output is not None and output.expanduser().exists():
        raise Conflict(f"{output} already exists; choose a new file name or remove it first")
    row = invoices.get(st.db(), invoice)
    text = render(st, row.document, fmt)
    if output is None:
        sys.stdout.write(text)
        return
    target = write_new_file(output, text)
    say(st, f"wrote {row.kind} {row.id} ({fmt}) to {target}")
