"""Pure unit tests of discount codes (SPEC §3 "Discount codes", issue 3; no database).

`domain.discounts` decides what a valid code and value is, how much a code takes
off a price, and whether a code applies to a sale: `check` names the first
failing condition with its own reason code, in a documented order.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta, timezone
from typing import Any

import pytest

from planctl.domain.clock import when
from planctl.domain.discounts import (
    ORDER_KINDS,
    DiscountTerms,
    Sale,
    check,
    discount_for,
    format_value,
    normalize_code,
    parse_value,
)
from planctl.domain.errors import ExitCode, InvalidInput, Refused

from helpers import NOW, US

UTC = timezone.utc

PERCENT = DiscountTerms(code="WELCOME15", kind="percent", value=1_500, currency="CNY")
FIXED = DiscountTerms(code="MINUS20", kind="fixed", value=2_000, currency="CNY")


def sale(**changes: Any) -> Sale:
    values: dict[str, Any] = {
        "now": NOW,
        "item": "codex-pro-monthly",
        "order_kind": "buy",
        "payment_method": "alipay",
        "list_price": 29_900,
        "redemptions": 0,
        "account_redemptions": 0,
    }
    values.update(changes)
    return Sale(**values)


def refused(reason: str, terms: DiscountTerms, facts: Sale) -> Refused:
    with pytest.raises(Refused) as caught:
        check(terms, facts)
    assert caught.value.reason == reason, caught.value.message
    assert caught.value.exit_code == ExitCode.REFUSED
    assert terms.code in caught.value.message
    return caught.value


# =============================================================== codes


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("welcome15", "WELCOME15"),
        ("  Spring-Sale_2026 ", "SPRING-SALE_2026"),
        ("abc", "ABC"),
        ("9" * 40, "9" * 40),
        ("A--", "A--"),
    ],
)
def test_normalize_code_upper_cases_and_strips(text: str, code: str) -> None:
    assert normalize_code(text) == code


@pytest.mark.parametrize("text", ["", "ab", "A" * 41, "-ABC", "_ABC", "BAD CODE", "CODE!", "CÓDIGO", "a.b.c"])
def test_normalize_code_rejects_bad_codes(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalize_code(text)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "invalid discount code" in caught.value.message


# =============================================================== values


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("15%", ("percent", 1_500)),
        ("12.5%", ("percent", 1_250)),
        ("0.01%", ("percent", 1)),
        ("100%", ("percent", 10_000)),
        ("7%", ("percent", 700)),
        ("20", ("fixed", 2_000)),
        ("20.00", ("fixed", 2_000)),
        ("0.01", ("fixed", 1)),
        ("19.9", ("fixed", 1_990)),
    ],
)
def test_parse_value(text: str, parsed: tuple[str, int]) -> None:
    assert parse_value(text, 2) == parsed


def test_parse_value_fixed_follows_the_currency_decimals() -> None:
    assert parse_value("500", 0) == ("fixed", 500)
    with pytest.raises(InvalidInput):
        parse_value("500.5", 0)


@pytest.mark.parametrize(
    "text", ["101%", "100.01%", "0%", "0.00%", "-5%", "12.555%", "%", "abc%", "20.001", "0", "0.00", "-20", "1e3", ""]
)
def test_parse_value_rejects(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_value(text, 2)
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("terms", "text"),
    [
        (PERCENT, "15%"),
        (replace(PERCENT, value=1_250), "12.5%"),
        (replace(PERCENT, value=1), "0.01%"),
        (replace(PERCENT, value=1_000), "10%"),
        (replace(PERCENT, value=10_000), "100%"),
        (FIXED, "20.00"),
        (replace(FIXED, value=1), "0.01"),
    ],
)
def test_format_value(terms: DiscountTerms, text: str) -> None:
    assert format_value(terms, 2) == text


def test_format_value_reads_back() -> None:
    for text in ("15%", "12.5%", "0.01%", "100%", "20.00", "0.01"):
        kind, value = parse_value(text, 2)
        assert format_value(replace(PERCENT, kind=kind, value=value), 2) == text


# =============================================================== amount


@pytest.mark.parametrize(
    ("value", "price", "discount"),
    [
        (1_500, 29_900, 4_485),  # 15 % of 299.00
        (1_250, 999, 124),  # 124.875 → 124 (rounds down)
        (3_333, 1, 0),  # 0.3333 → 0
        (10_000, 29_900, 29_900),  # 100 %
        (1_500, 0, 0),
    ],
)
def test_percent_discount_rounds_down(value: int, price: int, discount: int) -> None:
    assert discount_for(replace(PERCENT, value=value), price) == discount


@pytest.mark.parametrize(("price", "discount"), [(29_900, 2_000), (2_001, 2_000), (2_000, 2_000), (1_999, 1_999), (0, 0)])
def test_fixed_discount_never_exceeds_the_price(price: int, discount: int) -> None:
    assert discount_for(FIXED, price) == discount


# =============================================================== check


def test_a_plain_code_applies_to_any_sale() -> None:
    assert check(PERCENT, sale()) == 4_485
    assert check(FIXED, sale()) == 2_000
    for kind in ORDER_KINDS:
        assert check(PERCENT, sale(order_kind=kind, item="anything", payment_method="cash")) == 4_485


def test_inactive_code_is_refused() -> None:
    error = refused("code_inactive", replace(PERCENT, active=False), sale())
    assert "disabled" in error.message


def test_code_not_yet_valid() -> None:
    terms = replace(PERCENT, valid_from=NOW)
    error = refused("code_not_yet_valid", terms, sale(now=NOW - US))
    assert when(NOW, timezone.utc) in error.message
    assert check(terms, sale(now=NOW)) == 4_485


def test_code_expires_at_valid_until() -> None:
    terms = replace(PERCENT, valid_until=NOW)
    assert check(terms, sale(now=NOW - US)) == 4_485
    error = refused("code_expired", terms, sale(now=NOW))
    assert when(NOW, timezone.utc) in error.message
    refused("code_expired", terms, sale(now=NOW + timedelta(days=1)))


def test_code_used_up_at_max_redemptions() -> None:
    terms = replace(PERCENT, max_redemptions=10)
    assert check(terms, sale(redemptions=9)) == 4_485
    error = refused("code_used_up", terms, sale(redemptions=10))
    assert "used up" in error.message
    refused("code_used_up", terms, sale(redemptions=11))


def test_code_account_limit() -> None:
    terms = replace(PERCENT, max_per_account=1)
    assert check(terms, sale(account_redemptions=0)) == 4_485
    error = refused("code_account_limit", terms, sale(account_redemptions=1))
    assert "limit 1" in error.message


def test_code_not_for_plan() -> None:
    terms = replace(PERCENT, plans=("codex-plus-monthly", "codex-pro-monthly"))
    assert check(terms, sale(item="codex-pro-monthly")) == 4_485
    error = refused("code_not_for_plan", terms, sale(item="codex-max-monthly"))
    assert "codex-max-monthly" in error.message and "codex-plus-monthly" in error.message


def test_code_not_for_order_kind() -> None:
    terms = replace(PERCENT, order_kinds=("buy",))
    assert check(terms, sale(order_kind="buy")) == 4_485
    error = refused("code_not_for_order_kind", terms, sale(order_kind="renew"))
    assert "renew" in error.message


def test_code_payment_method() -> None:
    terms = replace(PERCENT, payment_methods=("alipay", "wechat"))
    assert check(terms, sale(payment_method="wechat")) == 4_485
    error = refused("code_payment_method", terms, sale(payment_method="card"))
    assert "card" in error.message and "alipay" in error.message


def test_code_below_minimum() -> None:
    terms = replace(FIXED, min_amount=10_000)
    error = refused("code_below_minimum", terms, sale(list_price=9_999))
    assert "10000" in error.message or "100.00" in error.message
    assert check(terms, sale(list_price=10_000)) == 2_000  # exactly the minimum
    assert check(terms, sale(list_price=10_001)) == 2_000


def test_zero_minimum_accepts_a_free_sale() -> None:
    assert check(FIXED, sale(list_price=0)) == 0


def test_empty_restriction_lists_mean_any() -> None:
    terms = replace(PERCENT, plans=(), order_kinds=(), payment_methods=())
    assert check(terms, sale(item="x", order_kind="topup", payment_method="bank-transfer")) == 4_485


def test_unlimited_redemptions_when_no_maximum() -> None:
    assert check(PERCENT, sale(redemptions=10**9, account_redemptions=10**6)) == 4_485


def test_check_refusals_are_reported_in_the_documented_order() -> None:
    worst = replace(
        PERCENT,
        active=False,
        valid_from=NOW + timedelta(days=1),
        valid_until=NOW,
        max_redemptions=1,
        max_per_account=1,
        plans=("other-plan",),
        order_kinds=("renew",),
        payment_methods=("wechat",),
        min_amount=10**9,
    )
    facts = sale(redemptions=1, account_redemptions=1)
    order = [
        ("code_inactive", {"active": True}),
        ("code_not_yet_valid", {"valid_from": None}),
        ("code_expired", {"valid_until": None}),
        ("code_used_up", {"max_redemptions": None}),
        ("code_account_limit", {"max_per_account": None}),
        ("code_not_for_plan", {"plans": ()}),
        ("code_not_for_order_kind", {"order_kinds": ()}),
        ("code_payment_method", {"payment_methods": ()}),
        ("code_below_minimum", {"min_amount": 0}),
    ]
    terms = worst
    for reason, fix in order:
        refused(reason, terms, facts)
        terms = replace(terms, **fix)
    assert check(terms, facts) == 4_485


def test_each_refusal_has_its_own_message() -> None:
    cases = [
        ("code_inactive", replace(PERCENT, active=False), sale()),
        ("code_not_yet_valid", replace(PERCENT, valid_from=NOW + US), sale()),
        ("code_expired", replace(PERCENT, valid_until=NOW), sale()),
        ("code_used_up", replace(PERCENT, max_redemptions=1), sale(redemptions=1)),
        ("code_account_limit", replace(PERCENT, max_per_account=1), sale(account_redemptions=1)),
        ("code_not_for_plan", replace(PERCENT, plans=("p",)), sale()),
        ("code_not_for_order_kind", replace(PERCENT, order_kinds=("renew",)), sale()),
        ("code_payment_method", replace(PERCENT, payment_methods=("wechat",)), sale()),
        ("code_below_minimum", replace(PERCENT, min_amount=29_901), sale()),
    ]
    messages = {refused(reason, terms, facts).message for reason, terms, facts in cases}
    assert len(messages) == len(cases)
