"""`planctl plans …` and `planctl products …`: the catalog of things for sale."""


import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import state
from planctl.cli.output import Column, CsvOpt, JsonlOpt, JsonOpt, emit_record, emit_rows, output_format, say

app = typer.Typer(help="The plan catalog: list, show, create, update, retire, import and export plans.",
                  epilog="Example: planctl plans show codex-pro-monthly --json",
                  no_args_is_help=True)
products_app = typer.Typer(help="Extra-usage packs and pay-as-you-go products.",
                           epilog="Example: planctl products list --kind extra", no_args_is_help=True)

# left out when a terminal is too narrow, highest `drop` first (README "Tables"); --wide shows all
LIST_COLUMNS = (
    Column("slug", kind="id"), Column("name", drop=7), Column("family", drop=8), Column("tier", kind="int", drop=9),
    Column("price", kind="money"), Column("validity", drop=6), Column("total_credit", "Total", "credit", drop=5),
    Column("period", drop=4), Column("period_credit", "Per period", "credit", drop=3),
    Column("rpd", "RPD", "int", drop=10), Column("tpd", "TPD", "int", drop=11), Column("on_sale", "On sale", "bool"),
)
SHOW_COLUMNS = (
    Column("slug"), Column("name"), Column("description"), Column("family"), Column("tier", kind="int"),
    Column("price", kind="money"), Column("currency"), Column("validity"),
    Column("total_credit", "Total credit", "credit"), Column("period"),
    Column("period_credit", "Period credit", "credit"),
    Column("period_limit_can_disable", "Limit can be disabled", "bool"), Column("rpd", "RPD", "int"),
    Column("tpd", "TPD", "int"), Column("models", kind="list"), Column("groups", kind="list"),
    Column("api_types", "API types", "list"), Column("renewal_enabled", "Renewal", "bool"),
    Column("renewal_window", "Renewal window"), Column("on_sale", "On sale", "bool"),
    Column("purchase_start", "Purchase from", "time"), Column("purchase_end", "Purchase until", "time"),
    Column("max_subusers", "Max sub-users", "int"), Column("refund_policy", "Refund policy"),
    Column("invoice_supported", "Invoices", "bool"), Column("version", kind="int"),
    Column("created_at", "Created", "time"), Column("updated_at", "Updated", "time"),
)
PRODUCT_COLUMNS = (
    Column("slug", kind="id"), Column("kind"), Column("name", drop=3), Column("pricing", drop=4),
    Column("price", kind="money"), Column("credit", kind="credit"), Column("validity", drop=2),
    Column("on_sale", "On sale", "bool", drop=1),
)


def plan_json(record: Any) -> dict[str, Any]:
    from planctl.domain.catalog import plan_to_dict
    from planctl.domain.clock import iso

    return {**plan_to_dict(record.terms), "version": record.version,
            "created_at": iso(record.created_at), "updated_at": iso(record.updated_at)}


@app.command("list")
def list_plans(
    ctx: typer.Context,
    family: Annotated[Optional[str], typer.Option(help="Only this family.")] = None,
    on_sale: Annotated[bool, typer.Option("--on-sale", help="Only plans on sale.")] = False,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List plans, by family and tier.

    Example: planctl plans list --family codex --json
    """
    from planctl.services import listing

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    records = listing.plans(st.meter_db(), family=family, include_retired=not on_sale)
    emit_rows(st, (plan_json(r) for r in records), LIST_COLUMNS, fmt)


@app.command("show")
def show(ctx: typer.Context, slug: Annotated[str, typer.Argument(help="Plan slug.")], json_: JsonOpt = False) -> None:
    """Show every term of one plan.

    Example: planctl plans show codex-pro-monthly
    """
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    emit_record(st, plan_json(catalog.get_plan(st.db(), slug)), SHOW_COLUMNS, fmt)


# Options shared by `create` and `update`: None means "not given".
Name = Annotated[Optional[str], typer.Option(help="Display name.")]
Description = Annotated[Optional[str], typer.Option(help="One-line description.")]
Family = Annotated[Optional[str], typer.Option(help="Family for upgrades, e.g. codex.")]
Tier = Annotated[Optional[int], typer.Option(help="Rank within the family (higher = bigger).")]
Price = Annotated[Optional[str], typer.Option(help="Price in the installation currency, e.g. 299.00.")]
Validity = Annotated[Optional[str], typer.Option(help="Term length: 1d, 7d, 1mo or any duration.")]
TotalCredit = Annotated[Optional[str], typer.Option(help="Credit per term, or 'none' for purely periodic.")]
Period = Annotated[Optional[str], typer.Option(help="Periodic limit period: day, week, month, a duration, or 'none'.")]
PeriodCredit = Annotated[Optional[str], typer.Option(help="Credit per period.")]
CanDisable = Annotated[Optional[bool], typer.Option(
    "--limit-can-disable/--limit-fixed", help="Whether buyers may disable the periodic limit.")]
Rpd = Annotated[Optional[str], typer.Option(help="Requests per natural day, or 'none'.")]
Tpd = Annotated[Optional[str], typer.Option(help="Tokens per natural day, or 'none'.")]
Models = Annotated[Optional[list[str]], typer.Option("--model", help="Included model (repeat, or comma-separate).")]
Groups = Annotated[Optional[list[str]], typer.Option("--group", help="Included group (repeat, or comma-separate).")]
ApiTypes = Annotated[Optional[list[str]], typer.Option(
    "--api-type", help="Included API type: responses, chat, claude (repeat).")]
Renewal = Annotated[Optional[bool], typer.Option("--renewal/--no-renewal", help="Whether renewal is enabled.")]
RenewalWindow = Annotated[Optional[str], typer.Option(help="How long before expiry renewal opens (default 3d).")]
PurchaseStart = Annotated[Optional[str], typer.Option(help="First instant it can be bought ('none' clears).")]
PurchaseEnd = Annotated[Optional[str], typer.Option(help="Instant it stops being sold ('none' clears).")]
MaxSubusers = Annotated[Optional[int], typer.Option(help="Sub-users allowed (0 = no sub-user access).")]
RefundPolicy = Annotated[Optional[str], typer.Option(help="none, unused:7d (full refund if unused within 7d) or prorated.")]
Invoice = Annotated[Optional[bool], typer.Option("--invoice/--no-invoice", help="Whether invoices can be issued.")]
OnSale = Annotated[Optional[bool], typer.Option("--on-sale/--off-sale", help="Whether it is on sale.")]


def _plan_fields(st: Any, given: dict[str, Any]) -> dict[str, Any]:
    """CLI option values -> raw catalog fields (the domain validates them)."""
    renames = {"limit_can_disable": "period_limit_can_disable", "model": "models", "group": "groups",
               "api_type": "api_types", "renewal": "renewal_enabled", "invoice": "invoice_supported"}
    fields = {renames.get(k, k): v for k, v in given.items() if v is not None}
    for key in ("models", "groups", "api_types"):
        if key in fields:
            fields[key] = [part.strip() for value in fields[key] for part in value.split(",") if part.strip()]
    for key in ("purchase_start", "purchase_end"):
        if key in fields and fields[key].strip().lower() != "none":
            fields[key] = _instant_text(st, key, fields[key])
    return fields


def _instant_text(st: Any, key: str, text: str) -> str:
    from planctl.domain.clock import iso, parse_instant
    from planctl.domain.errors import InvalidInput

    try:
        return iso(parse_instant(text, now=st.now(), tz=st.display_zone))
    except InvalidInput as exc:
        raise InvalidInput(f"--{key.replace('_', '-')}: {exc.message}") from None


@app.command("create")
def create(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Unique slug, e.g. codex-pro-monthly.")],
    name: Name = None, description: Description = None, family: Family = None, tier: Tier = None,
    price: Price = None, validity: Validity = None, total_credit: TotalCredit = None, period: Period = None,
    period_credit: PeriodCredit = None, limit_can_disable: CanDisable = None, rpd: Rpd = None, tpd: Tpd = None,
    model: Models = None, group: Groups = None, api_type: ApiTypes = None, renewal: Renewal = None,
    renewal_window: RenewalWindow = None, purchase_start: PurchaseStart = None, purchase_end: PurchaseEnd = None,
    max_subusers: MaxSubusers = None, refund_policy: RefundPolicy = None, invoice: Invoice = None,
    on_sale: OnSale = None, json_: JsonOpt = False,
) -> None:
    """Create a plan. Required: --name, --family, --tier, --price, --validity, --model, --group,
    and --total-credit and/or --period with --period-credit.

    Example: planctl plans create codex-mini-monthly --name "Codex Mini" --family codex --tier 1
    --price 49 --validity 1mo --total-credit 600 --period day --period-credit 30
    --model gpt-5.4-mini --group default
    """
    given = {k: v for k, v in dict(locals()).items() if k not in ("ctx", "json_")}
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    record = catalog.create_plan(st.db(), _plan_fields(st, given), caller=st.caller(), now=st.now())
    emit_record(st, plan_json(record), SHOW_COLUMNS, fmt)


@app.command("update")
def update(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Plan slug.")],
    name: Name = None, description: Description = None, family: Family = None, tier: Tier = None,
    price: Price = None, validity: Validity = None, total_credit: TotalCredit = None, period: Period = None,
    period_credit: PeriodCredit = None, limit_can_disable: CanDisable = None, rpd: Rpd = None, tpd: Tpd = None,
    model: Models = None, group: Groups = None, api_type: ApiTypes = None, renewal: Renewal = None,
    renewal_window: RenewalWindow = None, purchase_start: PurchaseStart = None, purchase_end: PurchaseEnd = None,
    max_subusers: MaxSubusers = None, refund_policy: RefundPolicy = None, invoice: Invoice = None,
    on_sale: OnSale = None, json_: JsonOpt = False,
) -> None:
    """Change a plan's terms. Subscriptions already sold keep the terms they were sold under.

    Example: planctl plans update codex-pro-monthly --price 279 --rpd 6000
    """
    given = {k: v for k, v in dict(locals()).items() if k not in ("ctx", "json_", "slug")}
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    record = catalog.update_plan(st.db(), slug, _plan_fields(st, given), caller=st.caller(), now=st.now())
    emit_record(st, plan_json(record), SHOW_COLUMNS, fmt)


def _set_on_sale(ctx: typer.Context, slug: str, on_sale: bool, json_: bool) -> None:
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    record = catalog.set_on_sale(st.db(), slug, on_sale, caller=st.caller(), now=st.now())
    emit_record(st, plan_json(record), SHOW_COLUMNS[:2] + (Column("on_sale", "On sale", "bool"),), fmt)


@app.command("retire")
def retire(ctx: typer.Context, slug: Annotated[str, typer.Argument(help="Plan slug.")], json_: JsonOpt = False) -> None:
    """Remove a plan from sale (existing subscriptions continue; renewal stops).

    Example: planctl plans retire codex-weekly
    """
    _set_on_sale(ctx, slug, False, json_)


@app.command("unretire")
def unretire(ctx: typer.Context, slug: Annotated[str, typer.Argument(help="Plan slug.")], json_: JsonOpt = False) -> None:
    """Put a retired plan back on sale.

    Example: planctl plans unretire codex-weekly
    """
    _set_on_sale(ctx, slug, True, json_)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Catalog TOML file, or - for stdin.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show changes; write nothing.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create or update catalog entries from a TOML file, all or nothing.

    The whole file is checked first; a bad entry names its section, entry and
    field, and nothing is written. Entries not in the file are left as they are.

    Example: planctl plans import catalog.toml --dry-run
    """
    from planctl.domain.errors import InvalidInput
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    doc = catalog.parse_catalog_text(text, source=file)
    changes = catalog.import_catalog(st.db(), doc, caller=st.caller(), now=st.now(), dry_run=dry_run)
    rows = [{"section": c.section, "name": c.name, "status": c.status} for c in changes]
    emit_rows(st, rows, (Column("section"), Column("name"), Column("status")), fmt)
    counts = {s: sum(1 for c in changes if c.status == s) for s in ("created", "updated", "unchanged")}
    say(st, ("dry run, nothing written: " if dry_run else "imported: ")
        + ", ".join(f"{n} {s}" for s, n in counts.items()))


@app.command("export")
def export(
    ctx: typer.Context,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Export the whole catalog as TOML that 'plans import' accepts.

    Example: planctl plans export -o catalog.toml
    """
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    doc = catalog.export_catalog(st.db())
    if fmt == "json":
        import json

        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    else:
        import tomli_w

        text = tomli_w.dumps(doc)
    if output is None:
        sys.stdout.write(text)
        return
    from planctl.domain.errors import Conflict

    if output.exists():
        raise Conflict(f"{output} already exists; choose a new file name")
    output.write_text(text, "utf-8")
    say(st, f"wrote {output}")


@products_app.command("list")
def list_products(
    ctx: typer.Context,
    kind: Annotated[Optional[str], typer.Option(help="extra or payg.")] = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List extra-usage packs and pay-as-you-go products.

    Example: planctl products list --kind extra
    """
    from planctl.domain.catalog import PRODUCT_KINDS, product_to_dict
    from planctl.domain.errors import InvalidInput
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    if kind is not None and kind not in PRODUCT_KINDS:
        raise InvalidInput(f"unknown product kind {kind!r}: use extra or payg")
    emit_rows(st, (product_to_dict(p) for p in catalog.list_products(st.db(), kind=kind)), PRODUCT_COLUMNS, fmt)


@products_app.command("show")
def show_product(ctx: typer.Context, slug: Annotated[str, typer.Argument(help="Product slug.")],
                 json_: JsonOpt = False) -> None:
    """Show one product.

    Example: planctl products show extra-50
    """
    from planctl.domain.catalog import product_to_dict
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    emit_record(st, product_to_dict(catalog.get_product(st.db(), slug)), PRODUCT_COLUMNS, fmt)
