"""Exact credit and money arithmetic on integers.

Credit is held as integer micro-credits (1 credit = ``MICRO`` µcr); money as
integer minor units of one currency (CNY: 2 decimals); price ratios as parts
per million. Text is parsed without rounding and formatted exactly; a float is
never involved.
"""

from __future__ import annotations

import re
from enum import Enum

from planctl.domain.errors import InvalidInput

MICRO = 1_000_000
"""Micro-credits per credit (and parts per million per unit ratio)."""

CREDIT_PLACES = 6
"""Decimal places of a credit amount (one micro-credit)."""

MAX_UNITS = 2**63 - 1
"""Largest storable amount in units (a signed 64-bit database integer)."""

_DECIMAL = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class Rounding(Enum):
    """How an exact quotient becomes an integer."""

    UP = "up"
    """Toward +infinity (ceiling)."""
    DOWN = "down"
    """Toward -infinity (floor)."""
    HALF_UP = "half_up"
    """To nearest; ties away from zero."""
    HALF_EVEN = "half_even"
    """To nearest; ties to the even neighbour."""


def div_round(numerator: int, denominator: int, mode: Rounding) -> int:
    """Return ``numerator / denominator`` rounded to an integer by ``mode``."""
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    if mode is Rounding.DOWN:
        return numerator // denominator
    if mode is Rounding.UP:
        return -(-numerator // denominator)
    if mode is Rounding.HALF_UP:
        quotient, remainder = divmod(abs(numerator), denominator)
        if 2 * remainder >= denominator:
            quotient += 1
        return quotient if numerator >= 0 else -quotient
    if mode is Rounding.HALF_EVEN:
        quotient, remainder = divmod(numerator, denominator)  # remainder >= 0
        if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2):
            quotient += 1
        return quotient
    raise ValueError(f"unknown rounding mode {mode!r}")


def parse_decimal_units(
    text: str,
    places: int,
    *,
    what: str,
    allow_negative: bool = False,
    allow_zero: bool = True,
) -> int:
    """Parse a plain decimal such as ``12.5`` into units of ``10**-places``.

    Surrounding whitespace and a leading ``+`` are accepted; exponents,
    separators, nan/inf and more significant decimals than ``places`` are not
    (trailing zeros beyond ``places`` are harmless and accepted). ``-0`` is 0.
    """
    if places < 0:
        raise ValueError(f"places must not be negative, got {places}")
    shown = text.strip()
    match = _DECIMAL.fullmatch(shown)
    if match is None:
        example = "12.5" if places else "12"
        raise InvalidInput(
            f"invalid {what} '{shown}': expected a decimal number such as {example}"
        )
    sign, number = match.groups()
    whole, _, fraction = number.partition(".")
    whole, fraction = whole.lstrip("0"), fraction.rstrip("0")
    if len(fraction) > places:
        raise InvalidInput(f"invalid {what} '{shown}': at most {places} decimal places")
    too_large = f"invalid {what} '{shown}': must be at most {format_units(MAX_UNITS, places)}"
    if len(whole) + places > len(str(MAX_UNITS)):
        raise InvalidInput(too_large)
    units = int(whole + fraction.ljust(places, "0") or "0")
    if sign == "-":
        units = -units
    if units < 0 and not allow_negative:
        raise InvalidInput(f"invalid {what} '{shown}': must not be negative")
    if units == 0 and not allow_zero:
        expected = "must not be zero" if allow_negative else "must be greater than zero"
        raise InvalidInput(f"invalid {what} '{shown}': {expected}")
    if abs(units) > MAX_UNITS:
        raise InvalidInput(too_large)
    return units


def parse_credit(text: str, *, allow_negative: bool = False, allow_zero: bool = True) -> int:
    """Parse a credit amount (up to 6 decimals) into micro-credits."""
    return parse_decimal_units(
        text,
        CREDIT_PLACES,
        what="credit amount",
        allow_negative=allow_negative,
        allow_zero=allow_zero,
    )


def parse_money(
    text: str, decimals: int = 2, *, allow_negative: bool = False, allow_zero: bool = True
) -> int:
    """Parse an amount of money into minor units of a currency with ``decimals`` decimals."""
    return parse_decimal_units(
        text, decimals, what="amount of money", allow_negative=allow_negative, allow_zero=allow_zero
    )


def format_units(
    units: int, places: int, *, shown: int | None = None, rounding: Rounding = Rounding.HALF_UP
) -> str:
    """Format ``units`` of ``10**-places`` as a decimal with ``shown`` decimals.

    With fewer decimals than ``places`` the value is rounded by ``rounding``;
    with more, it is padded with zeros. No thousands separators.
    """
    if places < 0:
        raise ValueError(f"places must not be negative, got {places}")
    shown = places if shown is None else shown
    if shown < 0:
        raise ValueError(f"shown must not be negative, got {shown}")
    if shown < places:
        value = div_round(units, 10 ** (places - shown), rounding)
    else:
        value = units * 10 ** (shown - places)
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), 10**shown)
    if shown == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{shown}d}"


def credit_json(micro: int) -> str:
    """Exact credit for JSON: six decimals, e.g. ``"12.500000"``."""
    return format_units(micro, CREDIT_PLACES)


def format_credit(micro: int, places: int = 2) -> str:
    """Credit for display, rounded half-up to ``places`` decimals, e.g. ``"12.35"``."""
    return format_units(micro, CREDIT_PLACES, shown=places)


def format_money(minor: int, decimals: int = 2) -> str:
    """Money in minor units as an exact decimal, e.g. ``"29.90"``."""
    return format_units(minor, decimals)


def parse_ratio(text: str) -> int:
    """Parse a positive price ratio (up to 6 decimals) into parts per million."""
    return parse_decimal_units(text, CREDIT_PLACES, what="price ratio", allow_zero=False)


def format_ratio(ppm: int) -> str:
    """Shortest exact decimal of a ratio in parts per million, e.g. ``"1.0"``, ``"0.85"``."""
    sign = "-" if ppm < 0 else ""
    whole, fraction = divmod(abs(ppm), MICRO)
    digits = f"{fraction:06d}".rstrip("0") or "0"
    return f"{sign}{whole}.{digits}"
