"""Exact credit and money arithmetic: parsing, rounding and formatting."""

from __future__ import annotations

import pytest

from planctl.domain.errors import InvalidInput
from planctl.domain.money import (
    MICRO,
    Rounding,
    credit_json,
    div_round,
    format_credit,
    format_money,
    format_ratio,
    format_units,
    parse_credit,
    parse_decimal_units,
    parse_money,
    parse_ratio,
)


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("12.5", 12_500_000),
        ("12", 12_000_000),
        ("0.000001", 1),
        ("0", 0),
        ("  7.25 ", 7_250_000),
        ("+3", 3_000_000),
        ("1.", 1_000_000),
        (".5", 500_000),
        ("007.10", 7_100_000),
        ("1.2500000", 1_250_000),  # trailing zeros beyond six places lose nothing
        ("123456789.123456", 123_456_789_123_456),
    ],
)
def test_parse_credit_is_exact(text: str, micro: int) -> None:
    assert parse_credit(text) == micro


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.1234567", "at most 6 decimal places"),
        ("0.0000001", "at most 6 decimal places"),
        ("1e3", "expected a decimal number"),
        ("1E-3", "expected a decimal number"),
        ("abc", "expected a decimal number"),
        ("", "expected a decimal number"),
        ("   ", "expected a decimal number"),
        ("nan", "expected a decimal number"),
        ("inf", "expected a decimal number"),
        ("-inf", "expected a decimal number"),
        ("1,000", "expected a decimal number"),
        ("1_000", "expected a decimal number"),
        ("1 000", "expected a decimal number"),
        ("0x10", "expected a decimal number"),
        ("--1", "expected a decimal number"),
        ("+-1", "expected a decimal number"),
        (".", "expected a decimal number"),
        ("١٢", "expected a decimal number"),  # non-ASCII digits
        ("-1", "must not be negative"),
        ("-0.000001", "must not be negative"),
        ("99999999999999", "must be at most"),  # beyond a 64-bit integer of µcr
        ("9" * 5000, "must be at most"),
    ],
)
def test_parse_credit_rejects(text: str, expected: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_credit(text)
    message = caught.value.message
    assert message.startswith(f"invalid credit amount '{text.strip()}': ")
    assert expected in message


def test_parse_credit_error_message_matches_the_convention() -> None:
    with pytest.raises(InvalidInput, match=r"^invalid credit amount '12\.1234567': at most 6 decimal places$"):
        parse_credit("12.1234567")


def test_negative_allowed_only_when_asked() -> None:
    assert parse_credit("-3.25", allow_negative=True) == -3_250_000
    assert parse_credit("-0") == 0  # negative zero is zero, not a negative value


@pytest.mark.parametrize("text", ["0", "0.000", "-0", "+0"])
def test_zero_rejected_when_not_allowed(text: str) -> None:
    with pytest.raises(InvalidInput, match="must be greater than zero"):
        parse_credit(text, allow_zero=False)
    with pytest.raises(InvalidInput, match="must not be zero"):
        parse_credit(text, allow_zero=False, allow_negative=True)


def test_parse_money_uses_the_currency_decimals() -> None:
    assert parse_money("29.9") == 2990
    assert parse_money("29.90") == 2990
    assert parse_money("30", decimals=0) == 30
    with pytest.raises(InvalidInput, match=r"^invalid amount of money '29\.999': at most 2 decimal places$"):
        parse_money("29.999")
    with pytest.raises(InvalidInput, match=r"^invalid amount of money '1\.5': at most 0 decimal places$"):
        parse_money("1.5", decimals=0)
    with pytest.raises(InvalidInput, match="must not be negative"):
        parse_money("-1")
    assert parse_money("-1", allow_negative=True) == -100


def test_parse_decimal_units_names_the_thing() -> None:
    assert parse_decimal_units("1.5", 1, what="price") == 15
    with pytest.raises(InvalidInput, match=r"^invalid price 'x': expected a decimal number such as 12\.5$"):
        parse_decimal_units("x", 1, what="price")


# Every mode against exact quotients, near-ties and exact ties, both signs.
@pytest.mark.parametrize(
    ("numerator", "denominator", "up", "down", "half_up", "half_even"),
    [
        (10, 5, 2, 2, 2, 2),  # exact
        (-10, 5, -2, -2, -2, -2),
        (0, 7, 0, 0, 0, 0),
        (7, 5, 2, 1, 1, 1),  # 1.4
        (-7, 5, -1, -2, -1, -1),  # -1.4
        (8, 5, 2, 1, 2, 2),  # 1.6
        (-8, 5, -1, -2, -2, -2),  # -1.6
        (5, 2, 3, 2, 3, 2),  # 2.5: tie, even neighbour is 2
        (7, 2, 4, 3, 4, 4),  # 3.5: tie, even neighbour is 4
        (-5, 2, -2, -3, -3, -2),  # -2.5
        (-7, 2, -3, -4, -4, -4),  # -3.5
        (1, 2, 1, 0, 1, 0),  # 0.5
        (-1, 2, 0, -1, -1, 0),  # -0.5
        (1, 1_000_000, 1, 0, 0, 0),
        (-1, 1_000_000, 0, -1, 0, 0),
        (999_999, 1_000_000, 1, 0, 1, 1),
    ],
)
def test_div_round_every_mode(
    numerator: int, denominator: int, up: int, down: int, half_up: int, half_even: int
) -> None:
    assert div_round(numerator, denominator, Rounding.UP) == up
    assert div_round(numerator, denominator, Rounding.DOWN) == down
    assert div_round(numerator, denominator, Rounding.HALF_UP) == half_up
    assert div_round(numerator, denominator, Rounding.HALF_EVEN) == half_even


def test_div_round_is_exact_for_huge_integers() -> None:
    big = 10**40 + 1
    assert div_round(big * 3, 3, Rounding.UP) == big
    assert div_round(big * 2 + 1, 2, Rounding.HALF_EVEN) == big + 1  # big is odd


@pytest.mark.parametrize("denominator", [0, -1])
def test_div_round_needs_a_positive_denominator(denominator: int) -> None:
    with pytest.raises(ValueError):
        div_round(1, denominator, Rounding.UP)


@pytest.mark.parametrize(
    ("units", "places", "shown", "rounding", "text"),
    [
        (12_500_000, 6, None, Rounding.HALF_UP, "12.500000"),
        (12_345_000, 6, 2, Rounding.HALF_UP, "12.35"),
        (12_345_000, 6, 2, Rounding.HALF_EVEN, "12.34"),
        (12_345_000, 6, 2, Rounding.DOWN, "12.34"),
        (12_340_001, 6, 2, Rounding.UP, "12.35"),
        (-12_345_000, 6, 2, Rounding.HALF_UP, "-12.35"),
        (-12_345_000, 6, 2, Rounding.UP, "-12.34"),
        (-1, 6, None, Rounding.HALF_UP, "-0.000001"),
        (-1, 6, 2, Rounding.HALF_UP, "0.00"),  # rounds to zero: no "-0.00"
        (999_999, 6, 0, Rounding.HALF_UP, "1"),
        (1_234_567_890_000_000, 6, 2, Rounding.HALF_UP, "1234567890.00"),  # no separators
        (15, 1, 3, Rounding.HALF_UP, "1.500"),  # more decimals pad with zeros
        (30, 0, None, Rounding.HALF_UP, "30"),
    ],
)
def test_format_units(units: int, places: int, shown: int | None, rounding: Rounding, text: str) -> None:
    assert format_units(units, places, shown=shown, rounding=rounding) == text


def test_credit_and_money_formats() -> None:
    assert credit_json(12_500_000) == "12.500000"
    assert credit_json(1) == "0.000001"
    assert credit_json(-2_000_000) == "-2.000000"
    assert format_credit(12_345_000) == "12.35"
    assert format_credit(12_344_999) == "12.34"
    assert format_credit(12_345_678, places=4) == "12.3457"
    assert format_money(2990) == "29.90"
    assert format_money(5) == "0.05"
    assert format_money(30, decimals=0) == "30"
    assert format_money(-2990) == "-29.90"


@pytest.mark.parametrize("micro", [0, 1, 999_999, MICRO, 12_500_000, 123_456_789_123_456, -1, -7_250_000])
def test_credit_json_round_trips(micro: int) -> None:
    assert parse_credit(credit_json(micro), allow_negative=True) == micro


@pytest.mark.parametrize("minor", [0, 1, 99, 2990, 10**12, -5])
def test_money_round_trips(minor: int) -> None:
    assert parse_money(format_money(minor), allow_negative=True) == minor
    assert parse_money(format_money(minor, decimals=0), decimals=0, allow_negative=True) == minor


@pytest.mark.parametrize(
    ("text", "ppm", "canonical"),
    [
        ("1", 1_000_000, "1.0"),
        ("1.0", 1_000_000, "1.0"),
        ("0.85", 850_000, "0.85"),
        ("1.234567", 1_234_567, "1.234567"),
        ("0.000001", 1, "0.000001"),
        ("2.5", 2_500_000, "2.5"),
        ("10", 10_000_000, "10.0"),
    ],
)
def test_ratio_parse_and_format(text: str, ppm: int, canonical: str) -> None:
    assert parse_ratio(text) == ppm
    assert format_ratio(ppm) == canonical
    assert parse_ratio(format_ratio(ppm)) == ppm


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "must be greater than zero"),
        ("-0.5", "must not be negative"),
        ("1.2345678", "at most 6 decimal places"),
        ("1e0", "expected a decimal number"),
    ],
)
def test_parse_ratio_rejects(text: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match=f"^invalid price ratio '{text}': {expected}"):
        parse_ratio(text)
