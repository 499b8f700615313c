"""`planctl accounts …`: buyers, their default group and billing details."""


from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import state
from planctl.cli.output import Column, CsvOpt, JsonlOpt, JsonOpt, emit_record, emit_rows, output_format

app = typer.Typer(help="Accounts: the people and teams who buy plans.",
                  epilog="Example: planctl accounts create acme --billing-email ap@acme.test", no_args_is_help=True)

# left out when a terminal is too narrow, highest `drop` first (README "Tables"); --wide shows all
LIST_COLUMNS = (
    Column("id", kind="id"), Column("name"), Column("default_group", "Group", drop=2),
    Column("parent_id", "Parent", "id", drop=3), Column("payg_balance", "PAYG balance", "credit"),
    Column("created_at", "Created", "time", drop=1),
)
SHOW_COLUMNS = (
    Column("id"), Column("name"), Column("default_group", "Default group"), Column("parent_id", "Parent"),
    Column("subuser_quota", "Sub-user quota", "credit"), Column("payg_balance", "PAYG balance", "credit"),
    Column("billing_name", "Billing name"), Column("billing_email", "Billing e-mail"),
    Column("billing_address", "Billing address"), Column("billing_tax_id", "Tax id"),
    Column("created_at", "Created", "time"), Column("updated_at", "Updated", "time"),
    Column("extra_remaining", "Extra usage left", "credit"), Column("extra_packs", "Extra-usage packs", "list"),
)
PACK_COLUMNS = (
    Column("draw_order", "Draw order", "int"), Column("id", "Pack", "int"), Column("product", kind="id"),
    Column("status"), Column("remaining", "Remaining", "credit"), Column("credit", "Bought", "credit", drop=2),
    Column("expires_at", "Expires", "time"), Column("order_id", "Order", "id", drop=1),
)


def pack_json(view: Any) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    p = view.pack
    return {"id": p.id, "product": view.product, "order_id": p.order_id, "status": view.status,
            "draw_order": view.draw_order, "credit": credit_json(p.credit), "used": credit_json(p.used),
            "remaining": credit_json(view.remaining), "expires_at": p.expires_at and iso(p.expires_at)}


def account_json(a: Any) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    return {
        "id": a.id, "name": a.name, "default_group": a.default_group, "parent_id": a.parent_id,
        "subuser_quota": None if a.subuser_quota is None else credit_json(a.subuser_quota),
        "payg_balance": credit_json(a.payg_balance),
        "billing_name": a.billing_name, "billing_email": a.billing_email,
        "billing_address": a.billing_address, "billing_tax_id": a.billing_tax_id,
        "created_at": iso(a.created_at), "updated_at": iso(a.updated_at),
    }


Group = Annotated[Optional[str], typer.Option("--group", help="Default group for new keys (default: default).")]
BillingName = Annotated[Optional[str], typer.Option(help="Name on invoices.")]
BillingEmail = Annotated[Optional[str], typer.Option(help="E-mail on invoices.")]
BillingAddress = Annotated[Optional[str], typer.Option(help="Address on invoices.")]
TaxId = Annotated[Optional[str], typer.Option("--tax-id", help="Tax id on invoices.")]


def _fields(name: Optional[str], group: Optional[str], billing_name: Optional[str], billing_email: Optional[str],
            billing_address: Optional[str], tax_id: Optional[str]) -> dict[str, Any]:
    return {"name": name, "default_group": group, "billing_name": billing_name, "billing_email": billing_email,
            "billing_address": billing_address, "billing_tax_id": tax_id}


Quota = Annotated[Optional[str], typer.Option(
    "--quota", help="Sub-users: most credit this account may use of the parent's plan ('none' clears).")]


def _quota(text: Optional[str]) -> dict[str, Any]:
    """--quota as a field: absent when not given, None when cleared."""
    if text is None:
        return {}
    if text.strip().lower() == "none":
        return {"subuser_quota": None}
    from planctl.domain.money import parse_credit

    return {"subuser_quota": parse_credit(text)}


@app.command("create")
def create(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Unique account name.")],
    group: Group = None, billing_name: BillingName = None, billing_email: BillingEmail = None,
    billing_address: BillingAddress = None, tax_id: TaxId = None,
    parent: Annotated[Optional[str], typer.Option(
        help="Create a sub-user of this account (its active plan must grant sub-user access).")] = None,
    quota: Quota = None, json_: JsonOpt = False,
) -> None:
    """Create an account, or a sub-user with --parent.

    Example: planctl accounts create acme --billing-name "Acme Ltd" --billing-email ap@acme.test
    Sub-user: planctl accounts create acme-dev --parent acme --quota 500
    """
    from planctl.services import accounts

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    fields = {**_fields(name, group, billing_name, billing_email, billing_address, tax_id), "parent": parent,
              **_quota(quota)}
    account = accounts.create(st.db(), fields, caller=st.caller(), now=st.now())
    emit_record(st, account_json(account), SHOW_COLUMNS, fmt)


@app.command("update")
def update(
    ctx: typer.Context, account: Annotated[str, typer.Argument(help="Account id, name or prefix.")],
    name: Annotated[Optional[str], typer.Option(help="New name.")] = None,
    group: Group = None, billing_name: BillingName = None, billing_email: BillingEmail = None,
    billing_address: BillingAddress = None, tax_id: TaxId = None, quota: Quota = None, json_: JsonOpt = False,
) -> None:
    """Change an account's name, default group, billing details or sub-user quota.

    Example: planctl accounts update acme --group priority
    """
    from planctl.services import accounts

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    fields = {**_fields(name, group, billing_name, billing_email, billing_address, tax_id), **_quota(quota)}
    updated = accounts.update(st.db(), account, fields, caller=st.caller(), now=st.now())
    emit_record(st, account_json(updated), SHOW_COLUMNS, fmt)


@app.command("list")
def list_accounts(
    ctx: typer.Context,
    parent: Annotated[Optional[str], typer.Option(help="Only sub-users of this account.")] = None,
    group: Annotated[Optional[str], typer.Option(help="Only accounts with this default group.")] = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List accounts by name.

    Example: planctl accounts list --csv
    """
    from planctl.services import listing

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    rows = (account_json(a) for a in listing.accounts(st.meter_db(), parent=parent, group=group))
    emit_rows(st, rows, LIST_COLUMNS, fmt)


@app.command("show")
def show(
    ctx: typer.Context, account: Annotated[str, typer.Argument(help="Account id, name or prefix.")],
    json_: JsonOpt = False,
) -> None:
    """Show one account.

    Example: planctl accounts show acme --json
    """
    from planctl.services import accounts

    from planctl.domain.money import credit_json

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    found, packs = accounts.packs(st.db(), account, now=st.now())
    data = {**account_json(found), "extra_remaining": credit_json(sum(p.remaining for p in packs
                                                                        if p.status == "active")),
            "extra_packs": [pack_json(p) for p in packs]}
    if fmt == "table":
        data["extra_packs"] = [_pack_line(p, st) for p in data["extra_packs"] if p["status"] == "active"] or "-"
    emit_record(st, data, SHOW_COLUMNS, fmt)


def _pack_line(pack: dict[str, Any], st: Any) -> str:
    from planctl.cli.output import display

    expires = display(pack["expires_at"], "time", st.display_zone) if pack["expires_at"] else "never"
    return (f"#{pack['draw_order']} {pack['product']}: {display(pack['remaining'], 'credit', st.display_zone)} "
            f"left, expires {expires}")
