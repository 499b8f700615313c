"""The catalog's rules: what a valid plan, product, group, model and alias is.

Every way into the catalog (the sample file, `plans import`, `plans create`,
`plans update`) goes through the same field parsers, so a bad value gets the
same message wherever it comes from. Values arrive raw (TOML types or CLI
strings) and leave as typed, validated dataclasses; `*_to_dict` gives the
JSON/TOML form (SPEC §9: money and credit as exact decimal strings).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime, timezone
from typing import Any

from planctl.domain.clock import Duration, Period, iso, parse_duration, parse_period
from planctl.domain.errors import InvalidInput
from planctl.domain.money import (
    MICRO,
    credit_json,
    format_money,
    format_ratio,
    parse_credit,
    parse_money,
    parse_ratio,
)

API_TYPES = ("responses", "chat", "claude")
REFUND_KINDS = ("none", "unused", "prorated")
PRODUCT_KINDS = ("extra", "payg")
PRICINGS = ("pack", "rate")
DEFAULT_ALIASES = {"claude*": "gpt-5.4", "claude-haiku*": "gpt-5.4-mini"}

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_PATTERN = re.compile(r"^[A-Za-z0-9._:/*?\[\]-]{1,128}$")


class FieldError(InvalidInput):
    """A bad value in one field of one catalog entry."""


@dataclass(frozen=True)
class Context:
    """What a catalog entry is checked against."""

    currency: str
    currency_decimals: int
    models: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    zone_has_dst: bool = True  # the reset zone's days can last 23 hours


# ---------------------------------------------------------------- refund policy


@dataclass(frozen=True)
class RefundPolicy:
    kind: str  # none | unused | prorated
    within: Duration | None = None  # for "unused": refundable this long after the sale

    def __str__(self) -> str:
        return f"unused:{self.within}" if self.kind == "unused" else self.kind


def parse_refund_policy(text: str) -> RefundPolicy:
    kind, _, within = str(text).strip().partition(":")
    if kind == "unused":
        return RefundPolicy("unused", parse_duration(within or "7d"))
    if kind in ("none", "prorated") and not within:
        return RefundPolicy(kind)
    raise InvalidInput(f"invalid refund policy {text!r}: use none, unused:7d or prorated")


# ---------------------------------------------------------------- field parsers


def _text(value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"expected text, got {value!r}")
    value = value.strip()
    if not value and not allow_empty:
        raise InvalidInput("must not be empty")
    return value


def _slug(value: Any) -> str:
    text = _text(value)
    if not _SLUG.match(text):
        raise InvalidInput(f"{text!r} is not a slug: use lowercase letters, digits and '-'")
    return text


def _int(value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"expected a whole number, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise InvalidInput(f"expected a whole number, got {value!r}")
    if value < minimum:
        raise InvalidInput(f"must be at least {minimum}, got {value}")
    return value


def _optional(value: Any) -> bool:
    """True when an optional field is absent or explicitly cleared ("none")."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))


def _optional_int(value: Any) -> int | None:
    return None if _optional(value) else _int(value, minimum=1)


def _decimal_text(value: Any) -> str:
    if isinstance(value, float):
        raise InvalidInput(f"write {value!r} as a quoted string (\"{value}\") so it stays exact")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInput(f"expected an amount, got {value!r}")
    return str(value)


def _credit(value: Any) -> int:
    return parse_credit(_decimal_text(value))


def _optional_credit(value: Any) -> int | None:
    return None if _optional(value) else parse_credit(_decimal_text(value), allow_zero=False)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise InvalidInput(f"expected true or false, got {value!r}")


def _instant(value: Any) -> datetime | None:
    if _optional(value):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = datetime.fromisoformat(_text(value).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"expected an ISO date-time with offset, got {value!r}") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"give {value!s} with a UTC offset, e.g. 2026-12-01T00:00:00+08:00")
    return parsed.astimezone(timezone.utc)


def _names(value: Any, *, known: frozenset[str] | None, what: str, allowed: Iterable[str] = ()) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidInput(f"expected a non-empty list of {what}s")
    names = tuple(dict.fromkeys(_text(v) for v in value))
    choices = set(allowed) or known
    unknown = [n for n in names if choices is not None and n not in choices]
    if unknown:
        raise InvalidInput(f"unknown {what} {unknown[0]!r} (known: {', '.join(sorted(choices or ()))})")
    return names


class _Fields:
    """Reads an entry's fields, naming the entry and field in every error."""

    def __init__(self, entry: Mapping[str, Any], where: str, known: Iterable[str]) -> None:
        if not isinstance(entry, Mapping):
            raise FieldError(f"{where}: expected a table of fields")
        unknown = sorted(set(entry) - set(known))
        if unknown:
            raise FieldError(f"{where}: unknown field {unknown[0]!r}")
        self.entry, self.where = entry, where

    def get(self, name: str, parse: Any, default: Any = ...) -> Any:
        if name not in self.entry or self.entry[name] is None:
            if default is ...:
                raise FieldError(f"{self.where}: field {name!r} is required")
            return default
        return self.check(name, parse, self.entry[name])

    def check(self, name: str, parse: Any, value: Any) -> Any:
        try:
            return parse(value)
        except InvalidInput as exc:
            raise FieldError(f"{self.where}: field {name!r}: {exc.message}") from None

    def fail(self, name: str, problem: str) -> FieldError:
        return FieldError(f"{self.where}: field {name!r}: {problem}")


# ---------------------------------------------------------------- plans


@dataclass(frozen=True)
class PlanTerms:
    """Everything a plan promises; a sold subscription keeps a copy of these."""

    slug: str
    name: str
    family: str
    tier: int
    price: int  # minor units
    currency: str
    validity: Duration
    models: tuple[str, ...]
    groups: tuple[str, ...]
    description: str = ""
    total_credit: int | None = None  # µcr per term; None = purely periodic
    period: Period | None = None
    period_credit: int | None = None  # µcr per period
    period_limit_can_disable: bool = False
    rpd: int | None = None
    tpd: int | None = None
    api_types: tuple[str, ...] = API_TYPES
    renewal_enabled: bool = True
    renewal_window: Duration = Duration(days=3)
    on_sale: bool = True
    purchase_start: datetime | None = None
    purchase_end: datetime | None = None
    max_subusers: int = 0
    refund_policy: RefundPolicy = RefundPolicy("none")
    invoice_supported: bool = True


PLAN_FIELDS = tuple(f.name for f in fields(PlanTerms))


def parse_plan(entry: Mapping[str, Any], ctx: Context, *, where: str | None = None) -> PlanTerms:
    """Validate one plan entry (TOML table, CLI options or a stored snapshot)."""
    where = where or f"plan {entry.get('slug', '?')!r}"
    f = _Fields(entry, where, PLAN_FIELDS)
    currency = f.get("currency", _text, ctx.currency)
    if currency != ctx.currency:
        raise f.fail("currency", f"{currency!r} differs from the installation currency {ctx.currency}")
    terms = PlanTerms(
        slug=f.get("slug", _slug),
        name=f.get("name", _text),
        description=f.get("description", lambda v: _text(v, allow_empty=True), ""),
        family=f.get("family", _slug),
        tier=f.get("tier", _int),
        price=f.get("price", lambda v: parse_money(_decimal_text(v), ctx.currency_decimals)),
        currency=currency,
        validity=f.get("validity", parse_duration),
        total_credit=f.get("total_credit", _optional_credit, None),
        period=f.get("period", lambda v: None if _optional(v) else parse_period(v), None),
        period_credit=f.get("period_credit", _optional_credit, None),
        period_limit_can_disable=f.get("period_limit_can_disable", _bool, False),
        rpd=f.get("rpd", _optional_int, None),
        tpd=f.get("tpd", _optional_int, None),
        models=f.get("models", lambda v: _names(v, known=ctx.models, what="model")),
        groups=f.get("groups", lambda v: _names(v, known=ctx.groups, what="group")),
        api_types=f.get("api_types", lambda v: _names(v, known=None, what="API type", allowed=API_TYPES), API_TYPES),
        renewal_enabled=f.get("renewal_enabled", _bool, True),
        renewal_window=f.get("renewal_window", parse_duration, Duration(days=3)),
        on_sale=f.get("on_sale", _bool, True),
        purchase_start=f.get("purchase_start", _instant, None),
        purchase_end=f.get("purchase_end", _instant, None),
        max_subusers=f.get("max_subusers", _int, 0),
        refund_policy=f.get("refund_policy", parse_refund_policy, RefundPolicy("none")),
        invoice_supported=f.get("invoice_supported", _bool, True),
    )
    _check_plan(terms, f, ctx.zone_has_dst)
    return terms


def _check_plan(t: PlanTerms, f: _Fields, dst: bool) -> None:
    """Rules that relate several fields."""
    if t.total_credit is None and t.period is None:
        raise f.fail("total_credit", "a plan needs a total credit, a periodic limit, or both")
    if (t.period is None) != (t.period_credit is None):
        raise f.fail("period_credit", "give period and period_credit together")
    if t.period_limit_can_disable and (t.period is None or t.total_credit is None):
        raise f.fail(
            "period_limit_can_disable",
            "only a plan with both a total credit and a periodic limit can let buyers disable the limit",
        )
    if _shortest_seconds(t.renewal_window, dst) >= _shortest_seconds(t.validity, dst):
        raise f.fail("renewal_window", f"must be shorter than the validity ({t.validity})")
    if t.purchase_start and t.purchase_end and t.purchase_end <= t.purchase_start:
        raise f.fail("purchase_end", "must be after purchase_start")


def _shortest_seconds(d: Duration, dst: bool) -> int:
    """The least a duration can last: a month is at least 28 days, a day 24 hours (23 where DST applies)."""
    return d.months * 28 * 86_400 + d.days * (23 if dst else 24) * 3_600 + d.seconds


def update_plan(terms: PlanTerms, changes: Mapping[str, Any], ctx: Context) -> PlanTerms:
    """Apply raw changes to existing terms and validate the result as a whole."""
    if "slug" in changes and changes["slug"] != terms.slug:
        raise FieldError(f"plan {terms.slug!r}: field 'slug' cannot be changed")
    return parse_plan({**plan_to_dict(terms), **changes}, ctx, where=f"plan {terms.slug!r}")


def plan_to_dict(t: PlanTerms) -> dict[str, Any]:
    """The JSON/TOML form (also the stored snapshot); parse_plan reads it back."""
    credit = lambda v: None if v is None else credit_json(v)  # noqa: E731
    instant = lambda v: None if v is None else iso(v)  # noqa: E731
    return {
        "slug": t.slug,
        "name": t.name,
        "description": t.description,
        "family": t.family,
        "tier": t.tier,
        "price": format_money(t.price, _DECIMALS.get(t.currency, 2)),
        "currency": t.currency,
        "validity": str(t.validity),
        "total_credit": credit(t.total_credit),
        "period": None if t.period is None else str(t.period),
        "period_credit": credit(t.period_credit),
        "period_limit_can_disable": t.period_limit_can_disable,
        "rpd": t.rpd,
        "tpd": t.tpd,
        "models": list(t.models),
        "groups": list(t.groups),
        "api_types": list(t.api_types),
        "renewal_enabled": t.renewal_enabled,
        "renewal_window": str(t.renewal_window),
        "on_sale": t.on_sale,
        "purchase_start": instant(t.purchase_start),
        "purchase_end": instant(t.purchase_end),
        "max_subusers": t.max_subusers,
        "refund_policy": str(t.refund_policy),
        "invoice_supported": t.invoice_supported,
    }


def purchase_window_open(t: PlanTerms, now: datetime) -> bool:
    return (t.purchase_start is None or t.purchase_start <= now) and (
        t.purchase_end is None or now < t.purchase_end
    )


# ---------------------------------------------------------------- currencies

_DECIMALS = {"CNY": 2, "USD": 2, "EUR": 2, "GBP": 2, "HKD": 2, "SGD": 2, "JPY": 0, "KRW": 0}
CURRENCY_SYMBOLS = {"CNY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "HKD": "HK$", "SGD": "S$", "JPY": "¥", "KRW": "₩"}


def currency_decimals(code: str) -> int:
    try:
        return _DECIMALS[code]
    except KeyError:
        raise InvalidInput(f"unsupported currency {code!r}: use one of {', '.join(_DECIMALS)}") from None


def money_text(minor: int, currency: str) -> str:
    """Money for people: display units and the currency (`5.00 CNY`)."""
    return f"{format_money(minor, currency_decimals(currency))} {currency}"


# ---------------------------------------------------------------- products


@dataclass(frozen=True)
class ProductTerms:
    """An extra-usage pack or a pay-as-you-go top-up product."""

    slug: str
    kind: str  # extra | payg
    name: str
    price: int  # minor units, for `credit` µcr
    currency: str
    credit: int  # µcr the price buys (for a "rate" product: per this much credit)
    pricing: str = "pack"
    validity: Duration | None = None
    on_sale: bool = True


PRODUCT_FIELDS = tuple(f.name for f in fields(ProductTerms))


def parse_product(entry: Mapping[str, Any], ctx: Context, *, kind: str, where: str | None = None) -> ProductTerms:
    where = where or f"{kind} product {entry.get('slug', '?')!r}"
    f = _Fields(entry, where, PRODUCT_FIELDS)
    if f.get("kind", _text, kind) != kind:
        raise f.fail("kind", f"must be {kind!r} in this section")
    currency = f.get("currency", _text, ctx.currency)
    if currency != ctx.currency:
        raise f.fail("currency", f"{currency!r} differs from the installation currency {ctx.currency}")
    product = ProductTerms(
        slug=f.get("slug", _slug),
        kind=kind,
        name=f.get("name", _text),
        price=f.get("price", lambda v: parse_money(_decimal_text(v), ctx.currency_decimals, allow_zero=False)),
        currency=currency,
        credit=f.get("credit", lambda v: parse_credit(_decimal_text(v), allow_zero=False)),
        pricing=f.get("pricing", lambda v: _names(v, known=None, what="pricing", allowed=PRICINGS)[0], "pack"),
        validity=f.get("validity", lambda v: None if _optional(v) else parse_duration(v), None),
        on_sale=f.get("on_sale", _bool, True),
    )
    if kind == "extra" and product.pricing != "pack":
        raise f.fail("pricing", "extra-usage products are sold as packs")
    return product


def product_to_dict(p: ProductTerms) -> dict[str, Any]:
    return {
        "slug": p.slug,
        "kind": p.kind,
        "name": p.name,
        "pricing": p.pricing,
        "price": format_money(p.price, _DECIMALS.get(p.currency, 2)),
        "currency": p.currency,
        "credit": credit_json(p.credit),
        "validity": None if p.validity is None else str(p.validity),
        "on_sale": p.on_sale,
    }


# ---------------------------------------------------------------- groups and models


@dataclass(frozen=True)
class GroupSpec:
    name: str
    ratio_ppm: int = MICRO
    description: str = ""


def parse_group(entry: Mapping[str, Any], *, where: str | None = None) -> GroupSpec:
    f = _Fields(entry, where or f"group {entry.get('name', '?')!r}", ("name", "ratio", "description"))
    return GroupSpec(
        name=f.get("name", _slug),
        ratio_ppm=f.get("ratio", lambda v: parse_ratio(_decimal_text(v)), MICRO),
        description=f.get("description", lambda v: _text(v, allow_empty=True), ""),
    )


def group_to_dict(g: GroupSpec) -> dict[str, Any]:
    return {"name": g.name, "ratio": format_ratio(g.ratio_ppm), "description": g.description}


@dataclass(frozen=True)
class ModelPrices:
    """Prices in µcr per million tokens."""

    id: str
    input_price: int
    cached_price: int
    output_price: int


def model_id(value: Any) -> str:
    text = _text(value)
    if not _MODEL_ID.match(text):
        raise InvalidInput(f"{text!r} is not a model id: use letters, digits and . _ : / -")
    return text


def parse_model(entry: Mapping[str, Any], *, where: str | None = None) -> ModelPrices:
    f = _Fields(entry, where or f"model {entry.get('id', '?')!r}", ("id", "input_price", "cached_price", "output_price"))
    return ModelPrices(
        id=f.get("id", model_id),
        input_price=f.get("input_price", _credit),
        cached_price=f.get("cached_price", _credit),
        output_price=f.get("output_price", _credit),
    )


def model_to_dict(m: ModelPrices) -> dict[str, Any]:
    return {
        "id": m.id,
        "input_price": credit_json(m.input_price),
        "cached_price": credit_json(m.cached_price),
        "output_price": credit_json(m.output_price),
    }


# ---------------------------------------------------------------- aliases


def alias_pattern(value: Any) -> str:
    text = _text(value)
    if not _PATTERN.match(text):
        raise InvalidInput(f"{text!r} is not a model pattern: use a model name with * ? [] wildcards")
    return text


def specificity(pattern: str) -> tuple[int, int, str]:
    """Sort key, most specific first: more literal characters, then fewer wildcards."""
    wildcards = sum(pattern.count(c) for c in "*?[")
    literal = len(re.sub(r"\[[^\]]*\]|[*?]", "", pattern))
    return (-literal, wildcards, pattern)


@dataclass(frozen=True)
class Resolution:
    """How a requested model name is billed."""

    requested: str
    billed: str | None  # None: no model and no alias matches
    rule: str | None  # the alias pattern that decided; None for a catalog model
    matches: tuple[tuple[str, str], ...] = field(default=())  # every matching (pattern, model), best first


def resolve_model(requested: str, models: Iterable[str], aliases: Mapping[str, str]) -> Resolution:
    """A catalog model bills as itself; otherwise the most specific alias wins."""
    matches = tuple(
        (p, aliases[p]) for p in sorted(aliases, key=specificity) if fnmatch.fnmatchcase(requested, p)
    )
    if requested in set(models):
        return Resolution(requested, requested, None, matches)
    if matches:
        return Resolution(requested, matches[0][1], matches[0][0], matches)
    return Resolution(requested, None, None, ())


# ---------------------------------------------------------------- whole catalog file


@dataclass(frozen=True)
class Catalog:
    groups: tuple[GroupSpec, ...] = ()
    models: tuple[ModelPrices, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    plans: tuple[PlanTerms, ...] = ()
    products: tuple[ProductTerms, ...] = ()


SECTIONS = ("groups", "models", "aliases", "plans", "extra", "payg")


def parse_catalog(doc: Mapping[str, Any], ctx: Context) -> Catalog:
    """Validate a whole catalog document; the first bad entry raises, naming it.

    Models and groups defined in the document count as known when its plans
    and aliases are checked, together with those already in `ctx`.
    """
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise FieldError(f"unknown section {unknown[0]!r} (sections: {', '.join(SECTIONS)})")
    groups = tuple(parse_group(e, where=_where("groups", i, e, "name")) for i, e in enumerate(_list(doc, "groups")))
    models = tuple(parse_model(e, where=_where("models", i, e, "id")) for i, e in enumerate(_list(doc, "models")))
    _unique("groups", [g.name for g in groups])
    _unique("models", [m.id for m in models])
    ctx = replace(
        ctx,
        models=ctx.models | {m.id for m in models},
        groups=ctx.groups | {g.name for g in groups},
    )
    aliases = []
    for i, e in enumerate(_list(doc, "aliases")):
        f = _Fields(e, _where("aliases", i, e, "pattern"), ("pattern", "model"))
        target = f.get("model", lambda v: _names([v], known=ctx.models, what="model")[0])
        aliases.append((f.get("pattern", alias_pattern), target))
    _unique("aliases", [p for p, _ in aliases])
    plans = tuple(parse_plan(e, ctx, where=_where("plans", i, e, "slug")) for i, e in enumerate(_list(doc, "plans")))
    products = tuple(
        parse_product(e, ctx, kind=kind, where=_where(kind, i, e, "slug"))
        for kind in PRODUCT_KINDS
        for i, e in enumerate(_list(doc, kind))
    )
    _unique("plans", [p.slug for p in plans])
    _unique("extra/payg", [p.slug for p in products])
    return Catalog(groups, models, tuple(aliases), plans, products)


def catalog_to_dict(c: Catalog) -> dict[str, Any]:
    def without_none(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if v is not None}  # TOML has no null

    return {
        "groups": [group_to_dict(g) for g in c.groups],
        "models": [model_to_dict(m) for m in c.models],
        "aliases": [{"pattern": p, "model": m} for p, m in c.aliases],
        "plans": [without_none(plan_to_dict(p)) for p in c.plans],
        "extra": [without_none(product_to_dict(p)) for p in c.products if p.kind == "extra"],
        "payg": [without_none(product_to_dict(p)) for p in c.products if p.kind == "payg"],
    }


def _list(doc: Mapping[str, Any], section: str) -> list[Any]:
    value = doc.get(section, [])
    if not isinstance(value, list):
        raise FieldError(f"section {section!r}: expected a list of tables ([[{section}]])")
    return value


def _where(section: str, index: int, entry: Any, key: str) -> str:
    name = entry.get(key) if isinstance(entry, Mapping) else None
    return f"{section}[{index + 1}]" + (f" ({name})" if name else "")


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FieldError(f"{section}: {name!r} appears twice")
        seen.add(name)
