"""`planctl discounts …`: discount codes."""


from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import instant_option, state
from planctl.cli.output import Column, CsvOpt, JsonlOpt, JsonOpt, emit_record, emit_rows, output_format

app = typer.Typer(help="Discount codes: percent or fixed, with validity and redemption limits.",
                  no_args_is_help=True, epilog="Example: planctl discounts create WELCOME10 --value 10%")

# left out when a terminal is too narrow, highest `drop` first (README "Tables"); --wide shows all
COLUMNS = (
    Column("code", kind="id"), Column("value"), Column("active", kind="bool"), Column("redemptions", kind="int"),
    Column("max_redemptions", "Max", "int", drop=4), Column("max_per_account", "Per account", "int", drop=5),
    Column("valid_from", "From", "time", drop=3), Column("valid_until", "Until", "time"),
    Column("plans", kind="list", drop=6), Column("order_kinds", "Order kinds", "list", drop=7),
    Column("payment_methods", "Payment methods", "list", drop=8), Column("min_amount", "Minimum", "money", drop=2),
)


def code_json(record: Any) -> dict[str, Any]:
    from planctl.domain.catalog import currency_decimals
    from planctl.domain.clock import iso
    from planctl.domain.discounts import format_value
    from planctl.domain.money import format_money

    t = record.terms
    decimals = currency_decimals(t.currency)
    return {
        "code": t.code, "kind": t.kind, "value": format_value(t, decimals), "currency": t.currency,
        "active": t.active, "redemptions": record.redemptions, "max_redemptions": t.max_redemptions,
        "max_per_account": t.max_per_account, "valid_from": t.valid_from and iso(t.valid_from),
        "valid_until": t.valid_until and iso(t.valid_until), "plans": list(t.plans),
        "order_kinds": list(t.order_kinds), "payment_methods": list(t.payment_methods),
        "min_amount": format_money(t.min_amount, decimals), "created_at": iso(record.created_at),
    }


def _split(values: Optional[list[str]]) -> list[str]:
    return [p.strip() for v in values or () for p in v.split(",") if p.strip()]


@app.command("create")
def create(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="The code buyers type (letters, digits, - and _).")],
    value: Annotated[str, typer.Option(help="15% off, or a fixed amount such as 20.00.")],
    valid_from: Annotated[Optional[str], typer.Option("--from", help="Valid from (date or date-time).")] = None,
    valid_until: Annotated[Optional[str], typer.Option("--until", help="Valid until (exclusive).")] = None,
    max_redemptions: Annotated[Optional[int], typer.Option(help="Redemptions overall.")] = None,
    max_per_account: Annotated[Optional[int], typer.Option(help="Redemptions per account.")] = None,
    plan: Annotated[Optional[list[str]], typer.Option("--plan", help="Only for this plan or product (repeat).")] = None,
    kind: Annotated[Optional[list[str]], typer.Option("--kind", help="Only for buy, renew, upgrade, extra, topup (repeat).")] = None,
    payment_method: Annotated[Optional[list[str]], typer.Option("--payment-method", help="Only with this payment method (repeat).")] = None,
    min_amount: Annotated[Optional[str], typer.Option(help="Minimum list price.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Create it even when --until is already past.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create a discount code (one whose --until is already past is refused without --force).

    Example: planctl discounts create SPRING15 --value 15% --until 2027-04-01 --max-redemptions 100
    --max-per-account 1 --plan codex-pro-monthly --payment-method alipay
    """
    from planctl.domain.catalog import currency_decimals
    from planctl.domain.money import parse_money
    from planctl.services import discounts, settings

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    db = st.db()
    decimals = currency_decimals(settings.list_settings(db)["currency"])
    spec = {
        "code": code, "value": value, "valid_from": instant_option(st, valid_from, "--from"),
        "valid_until": instant_option(st, valid_until, "--until"), "max_redemptions": max_redemptions,
        "max_per_account": max_per_account, "plans": _split(plan), "order_kinds": _split(kind),
        "payment_methods": _split(payment_method),
        "min_amount": None if min_amount is None else parse_money(min_amount, decimals), "force": force,
    }
    emit_record(st, code_json(discounts.create(db, spec, caller=st.caller(), now=st.now())), COLUMNS, fmt)


@app.command("list")
def list_codes(
    ctx: typer.Context, active: Annotated[bool, typer.Option("--active", help="Only active codes.")] = False,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List discount codes.

    Example: planctl discounts list --active
    """
    from planctl.services import discounts

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    emit_rows(st, (code_json(r) for r in discounts.list_codes(st.db(), active_only=active)), COLUMNS, fmt)


@app.command("show")
def show(ctx: typer.Context, code: Annotated[str, typer.Argument(help="Discount code.")], json_: JsonOpt = False) -> None:
    """Show one discount code and how often it was redeemed.

    Example: planctl discounts show SPRING15
    """
    from planctl.services import discounts

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    emit_record(st, code_json(discounts.get(st.db(), code)), COLUMNS, fmt)


@app.command("disable")
def disable(ctx: typer.Context, code: Annotated[str, typer.Argument(help="Discount code.")],
            json_: JsonOpt = False) -> None:
    """Disable a code (orders that used it keep their discount).

    Example: planctl discounts disable SPRING15
    """
    from planctl.services import discounts

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    emit_record(st, code_json(discounts.disable(st.db(), code, caller=st.caller(), now=st.now())), COLUMNS, fmt)


@app.command("check")
def check(
    ctx: typer.Context, code: Annotated[str, typer.Argument(help="Discount code.")],
    plan: Annotated[str, typer.Option("--plan", help="Plan or product slug.")],
    payment_method: Annotated[str, typer.Option(help="Payment method.")] = "manual",
    kind: Annotated[str, typer.Option("--kind", help="Order kind.")] = "buy",
    account: Annotated[Optional[str], typer.Option("--account", "-a", help="Check the per-account limit too.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Quote a code for a plan without buying: exit 0 with the price, or exit 4 with the reason.

    Example: planctl discounts check SPRING15 --plan codex-pro-monthly --payment-method alipay
    """
    from planctl.services import discounts

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    q = discounts.quote(st.db(), code, item=plan, order_kind=kind, payment_method=payment_method,
                        account=account, now=st.now())
    emit_record(st, q, (Column("code"), Column("item", "Plan/product"), Column("list_price", "List price", "money"),
                        Column("discount", kind="money"), Column("payable", kind="money"), Column("currency")), fmt)
