"""Installation settings: names, defaults and validation (`planctl config`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from planctl.domain.catalog import currency_decimals
from planctl.domain.clock import zone
from planctl.domain.errors import InvalidInput, NotFound
from planctl.domain.money import format_ratio, parse_decimal_units, parse_ratio


@dataclass(frozen=True)
class SettingSpec:
    key: str
    default: str
    description: str
    normalize: Callable[[str], str] = lambda v: v.strip()


def _zone(value: str) -> str:
    return zone(value.strip()).key


def _currency(value: str) -> str:
    code = value.strip().upper()
    currency_decimals(code)
    return code


def _positive_decimal(value: str) -> str:
    text = format_ratio(parse_ratio(value))
    return text[:-2] if text.endswith(".0") else text


def _percent(value: str) -> str:
    hundredths = parse_decimal_units(value, 2, what="percentage")
    if hundredths > 100_00:
        raise InvalidInput(f"invalid percentage {value!r}: use a number from 0 to 100")
    return value.strip()


def _milliseconds(value: str) -> str:
    if not re.fullmatch(r"\d+", value.strip()):
        raise InvalidInput(f"invalid milliseconds {value!r}: use a whole number such as 10000")
    return str(int(value))


def _email(value: str) -> str:
    value = value.strip()
    if value and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
        raise InvalidInput(f"invalid e-mail address {value!r}")
    return value


SETTINGS: dict[str, SettingSpec] = {
    s.key: s
    for s in (
        SettingSpec("reset_timezone", "Asia/Shanghai", "IANA zone of natural days, weeks and months", _zone),
        SettingSpec("currency", "CNY", "ISO code of prices and payments", _currency),
        SettingSpec("usd_per_credit_divisor", "7", "credit ÷ this ≈ USD (shown with --usd)", _positive_decimal),
        SettingSpec("seller_name", "", "seller name on invoices"),
        SettingSpec("seller_address", "", "seller address on invoices"),
        SettingSpec("seller_tax_id", "", "seller tax id on invoices"),
        SettingSpec("seller_email", "", "seller e-mail on invoices", _email),
        SettingSpec("health_min_success_rate", "95", "health rows below this success rate (%) are flagged", _percent),
        SettingSpec("health_max_p95_latency_ms", "10000", "health rows above this p95 latency are flagged", _milliseconds),
    )
}


def spec(key: str) -> SettingSpec:
    try:
        return SETTINGS[key]
    except KeyError:
        raise NotFound(f"unknown setting {key!r}", code="unknown_setting") from None


def normalize(key: str, value: str) -> str:
    """Validate a new value for `key` and return its stored form."""
    try:
        return spec(key).normalize(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{key}: {exc.message}") from None


def effective(stored: Mapping[str, str]) -> dict[str, str]:
    """Every setting with its stored value or default."""
    return {key: stored.get(key, s.default) for key, s in SETTINGS.items()}
