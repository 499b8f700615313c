"""Sales commands: buy, renew, upgrade, extra buy, topup, refund; subscriptions and orders."""


from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import State, credit_option, instant_option, state
from planctl.cli.output import (
    Column, CsvOpt, JsonlOpt, JsonOpt, YesOpt, emit_json, emit_record, emit_rows, output_format, say,
)

extra_app = typer.Typer(help="Extra usage: credit for days when a daily boundary blocks.", no_args_is_help=True,
                        epilog="Example: planctl extra buy extra-50 --account acme")
subscriptions_app = typer.Typer(help="Sold plans: status, term, credit, keys and orders.", no_args_is_help=True,
                                epilog="Example: planctl subscriptions list --account acme")
orders_app = typer.Typer(help="Orders: every sale, renewal, upgrade, top-up and refund state.",
                         no_args_is_help=True, epilog="Example: planctl orders show ORD-20261121-0001")

PaymentMethod = Annotated[str, typer.Option(help="How it was paid (alipay, wechat, card, transfer, …).")]
PaymentRef = Annotated[Optional[str], typer.Option(help="The payment provider's reference.")]
Code = Annotated[Optional[str], typer.Option(help="Discount code.")]
IgnoreInvalid = Annotated[bool, typer.Option(
    "--ignore-invalid-code", help="Sell at list price when the code does not apply (and say why).")]
IdempotencyKey = Annotated[Optional[str], typer.Option(
    help="Same key + same request returns the original order; never charges twice.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the quote; change nothing.")]
Account = Annotated[str, typer.Option("--account", "-a", help="Buyer: account id, name or prefix.")]

_when, _credit = instant_option, credit_option  # what cli/metering.py imports from here

SALE_COLUMNS = (
    Column("order_id", "Order"), Column("kind"), Column("item", "Plan/product"), Column("list_price", "List price", "money"),
    Column("discount", "Discount", "money"), Column("payable", kind="money"), Column("currency"),
    Column("credit_granted", "Credit granted", "credit"), Column("validity_granted", "Validity granted"),
    Column("subscription_id", "Subscription"), Column("ends_at", "Ends", "time"), Column("key_name", "Key"),
)


# ---------------------------------------------------------------- JSON shapes


def money_json(minor: int, currency: str) -> str:
    from planctl.domain.catalog import currency_decimals
    from planctl.domain.money import format_money

    return format_money(minor, currency_decimals(currency))


def order_json(o: Any) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    return {
        "id": o.id, "kind": o.kind, "account_id": o.account_id, "subscription_id": o.subscription_id,
        "item": o.item, "currency": o.currency, "list_price": money_json(o.list_price, o.currency),
        "discount_code": o.discount_code, "discount_amount": money_json(o.discount_amount, o.currency),
        "payable": money_json(o.payable, o.currency), "refunded": money_json(o.refunded, o.currency),
        "payment_method": o.payment_method, "payment_ref": o.payment_ref, "status": o.status,
        "credit_granted": credit_json(o.credit_granted), "validity_granted": o.validity_granted,
        "reason": o.reason, "idempotency_key": o.idempotency_key,
        "created_at": iso(o.created_at), "paid_at": o.paid_at and iso(o.paid_at),
    }


def _credit_or_none(value: Optional[int]) -> Optional[str]:
    from planctl.domain.money import credit_json

    return None if value is None else credit_json(value)


def subscription_json(sub: Any, plan_slug: str, state_name: str, plan_version: int) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json
    from planctl.domain.usage import overdrawn

    granted = sub.credit_granted
    return {
        "id": sub.id, "account_id": sub.account_id, "plan": plan_slug, "plan_version": plan_version,
        "status": state_name, "starts_at": iso(sub.starts_at), "ends_at": iso(sub.ends_at),
        "credit_granted": None if granted is None else credit_json(granted),
        "credit_used": credit_json(sub.credit_used),
        "credit_remaining": None if granted is None else credit_json(granted - sub.credit_used),
        "overdrawn": _credit_or_none(overdrawn(None if granted is None else granted - sub.credit_used)),
        "period_limit_enabled": sub.period_limit_enabled,
        "cancelled_at": sub.cancelled_at and iso(sub.cancelled_at),
    }


def key_json(key: Any, secret: str | None = None) -> dict[str, Any]:
    from planctl.domain.clock import iso

    out = {"id": key.id, "name": key.name, "kind": key.kind, "subscription_id": key.subscription_id,
           "group": key.group_name, "status": key.status, "prefix": key.prefix, "last4": key.last4,
           "created_at": iso(key.created_at)}
    if secret is not None:
        out["secret"] = secret
    return out


def sale_json(result: Any, now: Any) -> dict[str, Any]:
    """A sale's result; a dry run leaves out what only a real sale assigns (order number, new ids, key prefix)."""
    from planctl.cli.hints import word
    from planctl.services.sales import state_name

    sub, order, key = result.subscription, order_json(result.order), result.key
    data = {
        "order": order,
        "subscription": None if sub is None else subscription_json(sub, result.terms.slug, state_name(sub, now),
                                                                   result.plan_version),
        "key": None if key is None else key_json(key, None if result.dry_run or result.secret is None
                                                 else result.secret.secret),
        "replayed": result.replayed, "dry_run": result.dry_run, "notes": [word(n) for n in result.notes],
    }
    if result.dry_run:
        order["id"] = None
        if result.order.kind == "buy":  # the subscription and its key would be new
            order["subscription_id"] = data["subscription"]["id"] = None
            data["key"].update(id=None, subscription_id=None, prefix=None, last4=None)
    return data


def _show_sale(st: State, result: Any, fmt: str) -> None:
    data = sale_json(result, st.now())
    if fmt == "json":
        emit_json(st, data)
        return
    order, sub, key = data["order"], data["subscription"], data["key"]
    assigned = "assigned on purchase"
    emit_record(st, {
        "order_id": order["id"] or assigned, "kind": order["kind"], "item": order["item"], "list_price": order["list_price"],
        "discount": order["discount_amount"], "payable": order["payable"], "currency": order["currency"],
        "credit_granted": order["credit_granted"], "validity_granted": order["validity_granted"],
        "subscription_id": order["subscription_id"] or (sub and assigned), "ends_at": sub and sub["ends_at"],
        "key_name": key and key["name"],
    }, SALE_COLUMNS, fmt)
    if key and key.get("secret"):
        print(f"\nKey secret (shown once, store it now): {key['secret']}")
    for note in data["notes"]:
        say(st, f"note: {note}")
    if result.dry_run:
        say(st, "dry run: nothing was sold or written")


def _sell(ctx: typer.Context, json_: bool, dry_run: bool, **fields: Any) -> None:
    from planctl.services.sales import SaleRequest, sell

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    result = sell(st.db(), SaleRequest(**fields), caller=st.caller(), now=st.now(), dry_run=dry_run)
    _show_sale(st, result, fmt)


# ---------------------------------------------------------------- sales


def buy(
    ctx: typer.Context,
    plan: Annotated[str, typer.Argument(help="Plan slug.")],
    account: Account,
    payment_method: PaymentMethod = "manual", payment_ref: PaymentRef = None, code: Code = None,
    ignore_invalid_code: IgnoreInvalid = False,
    start: Annotated[Optional[str], typer.Option(help="Start later than now (date or date-time).")] = None,
    idempotency_key: IdempotencyKey = None, dry_run: DryRun = False, json_: JsonOpt = False,
) -> None:
    """Buy a plan: creates the subscription, grants its credit and creates its subscription key.

    The key's secret is printed once. Example: planctl buy codex-pro-monthly --account acme
    --payment-method alipay --code WELCOME10 --idempotency-key "$ORDER_REF"
    """
    _sell(ctx, json_, dry_run, kind="buy", item=plan, account=account, payment_method=payment_method,
          payment_ref=payment_ref, code=code, ignore_invalid_code=ignore_invalid_code,
          start=instant_option(state(ctx), start, "--start"), idempotency_key=idempotency_key)


def renew(
    ctx: typer.Context,
    subscription: Annotated[str, typer.Argument(help="Subscription id (or unique prefix).")],
    payment_method: PaymentMethod = "manual", payment_ref: PaymentRef = None, code: Code = None,
    ignore_invalid_code: IgnoreInvalid = False,
    direct: Annotated[bool, typer.Option("--direct", help="Operator renewal, also when expired or exhausted.")] = False,
    reason: Annotated[Optional[str], typer.Option(help="Why (required with --direct).")] = None,
    amount: Annotated[Optional[str], typer.Option(
        help="With --direct: charge this instead of the plan's price (0 for goodwill).")] = None,
    idempotency_key: IdempotencyKey = None, dry_run: DryRun = False, json_: JsonOpt = False,
) -> None:
    """Renew a subscription for one more term: validity and credit stack, keys stay.

    Allowed while the subscription is valid, its plan on sale with renewal enabled, and
    inside the renewal window (default 3 days before expiry). --direct (operator, with
    --reason) also renews an expired or exhausted subscription, from max(now, end);
    --amount 0 makes it a free goodwill renewal (a paid order of 0.00, audited).
    Example: planctl renew sub_k3x9q2mz --payment-method card
    """
    _sell(ctx, json_, dry_run, kind="direct-renewal" if direct else "renew", subscription=subscription,
          payment_method=payment_method, payment_ref=payment_ref, code=code,
          ignore_invalid_code=ignore_invalid_code, reason=reason, idempotency_key=idempotency_key,
          price=_money_option(ctx, amount))


def _money_option(ctx: typer.Context, text: Optional[str], *, allow_zero: bool = True) -> Optional[int]:
    """An `--amount` in the installation's currency, as minor units."""
    if text is None:
        return None
    from planctl.domain.catalog import currency_decimals
    from planctl.domain.errors import InvalidInput
    from planctl.domain.money import parse_money
    from planctl.services import settings

    currency = settings.list_settings(state(ctx).db())["currency"]
    try:
        return parse_money(text, currency_decimals(currency), allow_zero=allow_zero)
    except InvalidInput as exc:
        raise InvalidInput(f"--amount: {exc.message}") from None


def upgrade(
    ctx: typer.Context,
    subscription: Annotated[str, typer.Argument(help="Subscription id (or unique prefix).")],
    to: Annotated[str, typer.Option("--to", help="Higher-tier plan of the same family.")],
    prorate: Annotated[bool, typer.Option("--prorate", help="Charge only the unused share of the current term.")] = False,
    payment_method: PaymentMethod = "manual", payment_ref: PaymentRef = None, code: Code = None,
    ignore_invalid_code: IgnoreInvalid = False, idempotency_key: IdempotencyKey = None,
    dry_run: DryRun = False, json_: JsonOpt = False,
) -> None:
    """Upgrade to a higher tier of the same family by paying the price difference.

    New terms apply now; the end date and keys stay. Example: planctl upgrade sub_k3x9q2mz
    --to codex-max-monthly --prorate --dry-run
    """
    _sell(ctx, json_, dry_run, kind="upgrade", subscription=subscription, item=to, prorate=prorate,
          payment_method=payment_method, payment_ref=payment_ref, code=code,
          ignore_invalid_code=ignore_invalid_code, idempotency_key=idempotency_key)


@extra_app.command("buy")
def extra_buy(
    ctx: typer.Context, pack: Annotated[str, typer.Argument(help="Extra-usage pack slug.")], account: Account,
    payment_method: PaymentMethod = "manual", payment_ref: PaymentRef = None, code: Code = None,
    ignore_invalid_code: IgnoreInvalid = False, idempotency_key: IdempotencyKey = None,
    dry_run: DryRun = False, json_: JsonOpt = False,
) -> None:
    """Buy an extra-usage pack for an account.

    Example: planctl extra buy extra-50 --account acme
    """
    _sell(ctx, json_, dry_run, kind="extra", item=pack, account=account, payment_method=payment_method,
          payment_ref=payment_ref, code=code, ignore_invalid_code=ignore_invalid_code,
          idempotency_key=idempotency_key)


@extra_app.command("list")
def extra_list(
    ctx: typer.Context,
    account: Annotated[Optional[str], typer.Option(
        "--account", "-a", help="This account's packs (remaining, expiry, draw order) instead of those for sale.")] = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List the extra-usage packs for sale, or with --account the packs an account holds.

    Packs are drawn in the order shown: those expiring first first, never-expiring last.
    Example: planctl extra list --account acme
    """
    if account is None:
        from planctl.cli.plans import list_products

        list_products(ctx, kind="extra", json_=json_, jsonl=jsonl, csv_=csv_)
        return
    from planctl.cli.accounts import PACK_COLUMNS, pack_json
    from planctl.services import accounts

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    _, packs = accounts.packs(st.db(), account, now=st.now())
    emit_rows(st, (pack_json(p) for p in packs), PACK_COLUMNS, fmt)


def topup(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account id, name or prefix.")],
    amount: Annotated[Optional[str], typer.Argument(help="Credit to add (for a per-credit product).")] = None,
    product: Annotated[str, typer.Option(help="Pay-as-you-go product (see products list --kind payg).")] = "payg-standard",
    payment_method: PaymentMethod = "manual", payment_ref: PaymentRef = None, code: Code = None,
    ignore_invalid_code: IgnoreInvalid = False, idempotency_key: IdempotencyKey = None,
    dry_run: DryRun = False, json_: JsonOpt = False,
) -> None:
    """Add pay-as-you-go balance to an account.

    Example: planctl topup acme 100   (or: planctl topup acme --product payg-100)
    """
    _sell(ctx, json_, dry_run, kind="topup", account=account, item=product,
          amount=credit_option(amount, "AMOUNT"), payment_method=payment_method, payment_ref=payment_ref,
          code=code, ignore_invalid_code=ignore_invalid_code, idempotency_key=idempotency_key)


def refund(
    ctx: typer.Context,
    order: Annotated[str, typer.Argument(help="Order number, e.g. ORD-20261121-0001.")],
    amount: Annotated[Optional[str], typer.Option(help="Override the policy: refund this much (needs --reason).")] = None,
    reason: Annotated[Optional[str], typer.Option(help="Why; recorded with the refund.")] = None,
    plan: Annotated[Optional[str], typer.Option("--plan", help="Support detail: plan name.")] = None,
    key_name: Annotated[Optional[str], typer.Option(help="Support detail: key name.")] = None,
    request_time: Annotated[Optional[str], typer.Option(help="Support detail: request time.")] = None,
    request_id: Annotated[Optional[str], typer.Option(help="Support detail: request id.")] = None,
    dry_run: DryRun = False, yes: YesOpt = False, json_: JsonOpt = False,
) -> None:
    """Refund an order by its plan's refund policy, or an operator-chosen --amount.

    Takes back the credit it pays for; a refund of a purchase cancels the subscription
    and its keys. An invoiced order gets a credit note. Example: planctl refund
    ORD-20261121-0001 --reason "delivery issue" --request-id req_123 --yes
    """
    from planctl.services import refunds

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    db = st.db()
    minor = _money_option(ctx, amount, allow_zero=False)
    details = {"plan": plan, "key_name": key_name, "request_time": request_time, "request_id": request_id}

    def run(dry: bool) -> Any:
        return refunds.refund(db, order, amount=minor, reason=reason, details=details, caller=st.caller(),
                              now=st.now(), dry_run=dry)

    if not dry_run and not yes:
        st.confirm(_refund_question(run(True)), yes=yes)  # the quote first: the prompt says what will happen
    result = run(dry_run)
    r, o = result.refund, result.order
    data = {
        "order": order_json(o), "amount": money_json(r.amount, o.currency), "currency": o.currency,
        "credit_reversed": _credit_json(r.credit_reversed), "policy": r.policy, "reason": r.reason,
        "details": r.details, "cancelled_subscription": result.cancelled_subscription,
        "credit_note": None if dry_run or result.credit_note is None else result.credit_note.id,
        "keys_stopped": result.keys_stopped, "dry_run": dry_run,
    }  # a dry run's credit note number would never exist
    if fmt == "json":
        emit_json(st, data)
    else:
        note = data["credit_note"] or (result.credit_note and "assigned on refund")
        emit_record(st, {**data, "order": o.id, "credit_note": note}, (
            Column("order"), Column("amount", "Refunded", "money"), Column("currency"),
            Column("credit_reversed", "Credit taken back", "credit"), Column("policy"), Column("reason"),
            Column("cancelled_subscription", "Cancelled subscription"), Column("credit_note", "Credit note")), fmt)
        if dry_run:
            say(st, "dry run: nothing was refunded or written")


def _refund_question(quote: Any) -> str:
    o = quote.order
    paid = f"{money_json(o.payable, o.currency)} {o.currency}"
    question = f"Refund {money_json(quote.refund.amount, o.currency)} {o.currency} of order {o.id} ({o.item}, paid {paid})?"
    if quote.cancelled_subscription:
        question += (f" Subscription {quote.cancelled_subscription} is cancelled and its {quote.keys_stopped} "
                     "active key(s) stop working.")
    return question


def _credit_json(micro: int) -> str:
    from planctl.domain.money import credit_json

    return credit_json(micro)


# ---------------------------------------------------------------- subscriptions and orders

# left out when a terminal is too narrow, highest `drop` first (README "Tables"); --wide shows all
SUB_COLUMNS = (
    Column("id", kind="id"), Column("account_name", "Account"), Column("account_id", "Account id", "id", drop=6),
    Column("plan", kind="id"), Column("status"), Column("starts_at", "Starts", "time", drop=4),
    Column("ends_at", "Ends", "time"), Column("credit_granted", "Granted", "credit", drop=3),
    Column("credit_used", "Used", "credit", drop=2), Column("overdrawn", "Overdrawn by", "credit", drop=1),
    Column("period_limit_enabled", "Period limit", "bool", drop=5),
)
ORDER_COLUMNS = (
    Column("id", kind="id"), Column("kind"), Column("account_name", "Account"),
    Column("account_id", "Account id", "id", drop=6), Column("item", "Plan/product", "id"),
    Column("payable", kind="money"), Column("refunded", kind="money", drop=3), Column("status", drop=2),
    Column("discount_code", "Code", drop=5), Column("created_at", "Created", "time", drop=4),
)


@subscriptions_app.command("list")
def subscriptions_list(
    ctx: typer.Context,
    account: Annotated[Optional[str], typer.Option("--account", "-a", help="Only this account.")] = None,
    plan: Annotated[Optional[str], typer.Option(help="Only this plan.")] = None,
    status: Annotated[Optional[str], typer.Option(help="active, expired, cancelled or not-started.")] = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List subscriptions, newest first.

    Example: planctl subscriptions list --account acme --status active
    """
    from planctl.services import listing

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    views = listing.subscriptions(st.meter_db(), now=st.now(), account=account, plan=plan, state=status)
    emit_rows(st, ({**subscription_json(v.subscription, v.plan_slug, v.state, v.plan_version),
                    "account_name": v.account_name} for v in views), SUB_COLUMNS, fmt)


@subscriptions_app.command("show")
def subscriptions_show(
    ctx: typer.Context, subscription: Annotated[str, typer.Argument(help="Subscription id or unique prefix.")],
    json_: JsonOpt = False,
) -> None:
    """Show a subscription with its keys and orders.

    Example: planctl subscriptions show sub_k3x9q2mz --json
    """
    from planctl.services import sales

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    view = sales.get_subscription(st.db(), subscription, now=st.now())
    total = sum(view.key_counts.values())
    data = {**subscription_json(view.subscription, view.plan_slug, view.state, view.plan_version),
            "account_name": view.account_name, "keys_total": total, "key_counts": view.key_counts,
            "keys": [key_json(k) for k in view.keys], "orders": [order_json(o) for o in view.orders]}
    if fmt != "table":
        emit_record(st, data, SUB_COLUMNS, fmt)
        return
    counts = ", ".join(f"{n} {status}" for status, n in view.key_counts.items())
    data["key_counts"] = f"{total} ({counts})" if total else "none"
    data["keys"] = [f"{k['name']} ({k['prefix']}…{k['last4']}, {k['status']})" for k in data["keys"]]
    if total > len(view.keys):
        data["keys"].append(f"… {total - len(view.keys)} more: planctl keys list --subscription {view.subscription.id}")
    data["orders"] = [f"{o['id']} {o['kind']} {o['payable']} {o['status']}" for o in data["orders"]]
    emit_record(st, data, SUB_COLUMNS + (Column("cancelled_at", "Cancelled", "time"), Column("key_counts", "Keys"),
                                         Column("keys", f"First {len(view.keys)} keys", kind="list"),
                                         Column("orders", kind="list")), fmt)


@orders_app.command("list")
def orders_list(
    ctx: typer.Context,
    account: Annotated[Optional[str], typer.Option("--account", "-a", help="Only this account.")] = None,
    subscription: Annotated[Optional[str], typer.Option(help="Only this subscription.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="buy, renew, upgrade, direct-renewal, extra or topup.")] = None,
    status: Annotated[Optional[str], typer.Option(help="paid, refunded or partially-refunded.")] = None,
    since: Annotated[Optional[str], typer.Option(help="From this time (7d, a date, today).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Before this time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many.")] = 100,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List orders, newest first.

    Example: planctl orders list --since 30d --kind buy --csv
    """
    from planctl.domain.clock import parse_instant
    from planctl.services import accounts, sales

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    now, zone = st.now(), st.display_zone
    orders = sales.list_orders(
        st.db(), account=account, subscription=subscription, kind=kind, status=status, limit=limit,
        since=since and parse_instant(since, now=now, tz=zone, direction=-1),
        until=until and parse_instant(until, now=now, tz=zone, direction=-1))
    names = accounts.names(st.db(), {o.account_id for o in orders})
    emit_rows(st, ({**order_json(o), "account_name": names.get(o.account_id)} for o in orders), ORDER_COLUMNS, fmt)


@orders_app.command("show")
def orders_show(ctx: typer.Context, order: Annotated[str, typer.Argument(help="Order number.")],
                json_: JsonOpt = False) -> None:
    """Show one order.

    Example: planctl orders show ORD-20261121-0001
    """
    from planctl.services import sales

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    data = order_json(sales.get_order(st.db(), order))
    emit_record(st, data, tuple(Column(k, kind="money" if k in ("list_price", "discount_amount", "payable",
                                                                   "refunded") else
                                        "credit" if k == "credit_granted" else
                                        "time" if k.endswith("_at") else "text") for k in data), fmt)
