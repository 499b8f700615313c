"""Discount codes: what a code is, and whether (and how much) it applies to a sale."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

from planctl.domain.clock import when
from planctl.domain.errors import InvalidInput, Refused
from planctl.domain.money import Rounding, div_round, format_units, parse_decimal_units

ORDER_KINDS = ("buy", "renew", "upgrade", "extra", "topup")
_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{2,39}$")


@dataclass(frozen=True)
class DiscountTerms:
    code: str
    kind: str  # percent | fixed
    value: int  # percent: basis points (1250 = 12.5 %); fixed: minor units
    currency: str
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    max_redemptions: int | None = None
    max_per_account: int | None = None
    plans: tuple[str, ...] = ()  # () = every plan and product
    order_kinds: tuple[str, ...] = ()  # () = every kind
    payment_methods: tuple[str, ...] = ()  # () = any method
    min_amount: int = 0  # minor units of list price
    active: bool = True


def normalize_code(text: str) -> str:
    code = text.strip().upper()
    if not _CODE.match(code):
        raise InvalidInput(f"invalid discount code {text!r}: 3 to 40 letters, digits, '-' or '_'")
    return code


def parse_value(text: str, currency_decimals: int) -> tuple[str, int]:
    """`15%` → ("percent", 1500 bp); `20` or `20.00` → ("fixed", 2000 minor units)."""
    text = text.strip()
    if text.endswith("%"):
        bp = parse_decimal_units(text[:-1], 2, what="percentage", allow_zero=False)
        if bp > 10_000:
            raise InvalidInput(f"invalid percentage {text!r}: at most 100%")
        return "percent", bp
    return "fixed", parse_decimal_units(text, currency_decimals, what="discount amount", allow_zero=False)


def format_value(terms: DiscountTerms, currency_decimals: int) -> str:
    if terms.kind == "percent":
        return format_units(terms.value, 2).rstrip("0").rstrip(".") + "%"
    return format_units(terms.value, currency_decimals)


def discount_for(terms: DiscountTerms, list_price: int) -> int:
    """The discount in minor units: a percentage rounds down, a fixed amount never exceeds the price."""
    if terms.kind == "percent":
        return div_round(list_price * terms.value, 10_000, Rounding.DOWN)
    return min(terms.value, list_price)


@dataclass(frozen=True)
class Sale:
    """The facts about a sale that a code is checked against."""

    now: datetime
    item: str  # plan or product slug
    order_kind: str
    payment_method: str
    list_price: int
    redemptions: int  # of this code so far, by everyone
    account_redemptions: int  # by this account
    tz: tzinfo = timezone.utc  # the zone times in messages are shown in


def check(terms: DiscountTerms, sale: Sale) -> int:
    """The discount when every condition holds; otherwise `Refused` naming the first that fails."""
    code = terms.code
    if not terms.active:
        raise Refused(f"discount code {code} has been disabled", reason="code_inactive")
    if terms.valid_from and sale.now < terms.valid_from:
        raise Refused(f"discount code {code} is valid from {when(terms.valid_from, sale.tz)}", reason="code_not_yet_valid")
    if terms.valid_until and sale.now >= terms.valid_until:
        raise Refused(f"discount code {code} expired at {when(terms.valid_until, sale.tz)}", reason="code_expired")
    if terms.max_redemptions is not None and sale.redemptions >= terms.max_redemptions:
        raise Refused(f"discount code {code} has been used up ({terms.max_redemptions} redemptions)",
                      reason="code_used_up")
    if terms.max_per_account is not None and sale.account_redemptions >= terms.max_per_account:
        raise Refused(f"discount code {code} was already used {sale.account_redemptions} time(s) by this "
                      f"account (limit {terms.max_per_account})", reason="code_account_limit")
    if terms.plans and sale.item not in terms.plans:
        raise Refused(f"discount code {code} is not for {sale.item} (only {', '.join(terms.plans)})",
                      reason="code_not_for_plan")
    if terms.order_kinds and sale.order_kind not in terms.order_kinds:
        raise Refused(f"discount code {code} does not apply to {sale.order_kind} orders "
                      f"(only {', '.join(terms.order_kinds)})", reason="code_not_for_order_kind")
    if terms.payment_methods and sale.payment_method not in terms.payment_methods:
        raise Refused(f"discount code {code} is not supported with payment method {sale.payment_method} "
                      f"(only {', '.join(terms.payment_methods)})", reason="code_payment_method")
    if sale.list_price < terms.min_amount:
        from planctl.domain.catalog import currency_decimals

        minimum = format_units(terms.min_amount, currency_decimals(terms.currency))
        raise Refused(f"discount code {code} needs a price of at least {minimum} {terms.currency}",
                      reason="code_below_minimum")
    return discount_for(terms, sale.list_price)
