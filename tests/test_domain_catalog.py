"""Pure unit tests of the catalog and configuration rules (no database).

`domain.catalog` decides what a valid plan, product, group, model, alias and
catalog file is; `domain.config` decides what a valid setting is. Every error
is an `InvalidInput` (exit 2) whose message names the entry and the field.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from planctl.domain import catalog as rules
from planctl.domain import config
from planctl.domain.catalog import (
    API_TYPES,
    DEFAULT_ALIASES,
    Context,
    FieldError,
    RefundPolicy,
    parse_catalog,
    parse_group,
    parse_model,
    parse_plan,
    parse_product,
    parse_refund_policy,
    plan_to_dict,
    product_to_dict,
    resolve_model,
    update_plan,
)
from planctl.domain.clock import Duration, Period
from planctl.domain.errors import InvalidInput, NotFound
from planctl.domain.money import MICRO

MODELS = frozenset({"gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.3-codex-spark"})
GROUPS = frozenset({"default", "priority", "economy"})
CTX = Context(currency="CNY", currency_decimals=2, models=MODELS, groups=GROUPS)


def plan_entry(**overrides: Any) -> dict[str, Any]:
    """A minimal valid plan entry (TOML types), with overrides; None removes a field."""
    entry: dict[str, Any] = {
        "slug": "codex-pro-monthly",
        "name": "Codex Pro",
        "family": "codex",
        "tier": 2,
        "price": "299.00",
        "validity": "1mo",
        "total_credit": "4500",
        "period": "day",
        "period_credit": "250",
        "models": ["gpt-5.5", "gpt-5.4"],
        "groups": ["default", "priority"],
    }
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


def error_of(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    return info.value.message


# ---------------------------------------------------------------- parse_plan: values


def test_parse_plan_minimal_entry_gets_documented_defaults() -> None:
    t = parse_plan(plan_entry(), CTX)
    assert t.slug == "codex-pro-monthly"
    assert t.price == 29900
    assert t.currency == "CNY"
    assert t.validity == Duration(months=1)
    assert t.total_credit == 4500 * MICRO
    assert t.period == Period("day")
    assert t.period_credit == 250 * MICRO
    assert t.models == ("gpt-5.5", "gpt-5.4")
    assert t.groups == ("default", "priority")
    # defaults from SPEC §2
    assert t.api_types == API_TYPES == ("responses", "chat", "claude")
    assert t.renewal_enabled is True
    assert t.renewal_window == Duration(days=3)
    assert t.on_sale is True
    assert t.purchase_start is None and t.purchase_end is None
    assert t.max_subusers == 0
    assert t.refund_policy == RefundPolicy("none")
    assert t.invoice_supported is True
    assert t.period_limit_can_disable is False
    assert t.rpd is None and t.tpd is None
    assert t.description == ""


def test_parse_plan_every_field() -> None:
    t = parse_plan(
        plan_entry(
            description="  For heavy users  ",
            currency="CNY",
            period="5h",
            period_limit_can_disable=True,
            rpd=5000,
            tpd="100000000",
            api_types=["responses", "claude"],
            renewal_enabled="no",
            renewal_window="1d",
            on_sale=False,
            purchase_start="2026-12-01T00:00:00+08:00",
            purchase_end=datetime(2027, 1, 1, tzinfo=timezone.utc),
            max_subusers=10,
            refund_policy="unused:2d",
            invoice_supported=False,
        ),
        CTX,
    )
    assert t.description == "For heavy users"
    assert t.period == Period("custom", Duration(seconds=5 * 3600))
    assert t.period_limit_can_disable is True
    assert (t.rpd, t.tpd) == (5000, 100_000_000)
    assert t.api_types == ("responses", "claude")
    assert t.renewal_enabled is False
    assert t.renewal_window == Duration(days=1)
    assert t.on_sale is False
    assert t.purchase_start == datetime(2026, 11, 30, 16, 0, tzinfo=timezone.utc)
    assert t.purchase_start.tzinfo == timezone.utc
    assert t.purchase_end == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert t.max_subusers == 10
    assert t.refund_policy == RefundPolicy("unused", Duration(days=2))
    assert t.invoice_supported is False


def test_parse_plan_accepts_integer_price_and_credit() -> None:
    t = parse_plan(plan_entry(price=299, total_credit=4500, period_credit=250), CTX)
    assert (t.price, t.total_credit, t.period_credit) == (29900, 4500 * MICRO, 250 * MICRO)


def test_parse_plan_lists_from_comma_text_and_deduplicated() -> None:
    t = parse_plan(plan_entry(models="gpt-5.4, gpt-5.5,gpt-5.4", groups="default"), CTX)
    assert t.models == ("gpt-5.4", "gpt-5.5")
    assert t.groups == ("default",)


def test_parse_plan_none_clears_optional_fields() -> None:
    t = parse_plan(plan_entry(rpd="none", tpd=None, period="none", period_credit="none"), CTX)
    assert t.rpd is None and t.tpd is None and t.period is None and t.period_credit is None


def test_parse_plan_purely_periodic_plan() -> None:
    t = parse_plan(plan_entry(total_credit=None), CTX)
    assert t.total_credit is None and t.period == Period("day")


def test_plan_to_dict_is_exact_json_and_reads_back() -> None:
    t = parse_plan(
        plan_entry(purchase_start="2026-12-01T00:00:00+08:00", refund_policy="unused", period="5h"), CTX
    )
    d = plan_to_dict(t)
    assert d["price"] == "299.00"
    assert d["total_credit"] == "4500.000000"
    assert d["period_credit"] == "250.000000"
    assert d["validity"] == "1mo"
    assert d["period"] == "5h"
    assert d["renewal_window"] == "3d"
    assert d["refund_policy"] == "unused:7d"
    assert d["purchase_start"] == "2026-11-30T16:00:00+00:00"
    assert d["purchase_end"] is None
    assert d["rpd"] is None
    assert d["currency"] == "CNY"
    assert parse_plan(d, CTX) == t


# ---------------------------------------------------------------- parse_plan: field errors


@pytest.mark.parametrize(
    "missing", ["slug", "name", "family", "tier", "price", "validity", "models", "groups"]
)
def test_parse_plan_required_fields(missing: str) -> None:
    message = error_of(parse_plan, plan_entry(**{missing: None}), CTX, where="plans[1]")
    assert message == f"plans[1]: field {missing!r} is required"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("slug", "Codex Pro", "is not a slug"),
        ("slug", "-codex", "is not a slug"),
        ("name", "   ", "must not be empty"),
        ("name", 5, "expected text"),
        ("family", "Codex", "is not a slug"),
        ("tier", -1, "must be at least 0"),
        ("tier", 1.5, "expected a whole number"),
        ("tier", True, "expected a whole number"),
        ("tier", "two", "expected a whole number"),
        ("price", 299.0, "as a quoted string"),
        ("price", "2.999", "at most 2 decimal places"),
        ("price", "-1", "must not be negative"),
        ("price", "abc", "expected a decimal number"),
        ("price", True, "expected an amount"),
        ("validity", "1 month", "invalid duration"),
        ("validity", "0d", "invalid duration"),
        ("total_credit", "0", "must be greater than zero"),
        ("total_credit", 4500.5, "as a quoted string"),
        ("total_credit", "1.0000001", "at most 6 decimal places"),
        ("period", "fortnight", "invalid period"),
        ("period_credit", "-5", "must not be negative"),
        ("rpd", 0, "must be at least 1"),
        ("rpd", "lots", "expected a whole number"),
        ("tpd", -10, "must be at least 1"),
        ("models", ["gpt-9"], "unknown model 'gpt-9'"),
        ("models", [], "non-empty list of models"),
        ("groups", ["vip"], "unknown group 'vip'"),
        ("api_types", ["grpc"], "unknown API type 'grpc'"),
        ("renewal_enabled", "maybe", "expected true or false"),
        ("renewal_window", "soon", "invalid duration"),
        ("on_sale", 1, "expected true or false"),
        ("purchase_start", "2026-12-01T00:00:00", "with a UTC offset"),
        ("purchase_start", "next week", "ISO date-time"),
        ("max_subusers", -1, "must be at least 0"),
        ("refund_policy", "always", "invalid refund policy"),
        ("invoice_supported", "sometimes", "expected true or false"),
        ("currency", "USD", "differs from the installation currency CNY"),
    ],
)
def test_parse_plan_field_errors_name_entry_and_field(field: str, value: Any, problem: str) -> None:
    message = error_of(parse_plan, plan_entry(**{field: value}), CTX, where="plans[3] (x)")
    assert message.startswith(f"plans[3] (x): field {field!r}: "), message
    assert problem in message


def test_parse_plan_unknown_field() -> None:
    message = error_of(parse_plan, plan_entry(colour="blue"), CTX, where="plans[1]")
    assert message == "plans[1]: unknown field 'colour'"


def test_parse_plan_default_where_names_the_slug() -> None:
    message = error_of(parse_plan, plan_entry(tier=-1), CTX)
    assert message.startswith("plan 'codex-pro-monthly': field 'tier'")


def test_parse_plan_errors_are_field_errors_with_exit_code_2() -> None:
    with pytest.raises(FieldError) as info:
        parse_plan(plan_entry(price=1.5), CTX)
    assert info.value.exit_code == 2


# ---------------------------------------------------------------- parse_plan: cross-field rules


def test_plan_needs_total_credit_or_periodic_limit() -> None:
    message = error_of(parse_plan, plan_entry(total_credit=None, period=None, period_credit=None), CTX)
    assert "field 'total_credit'" in message
    assert "needs a total credit, a periodic limit, or both" in message


@pytest.mark.parametrize("given", [{"period_credit": None}, {"period": None}])
def test_period_and_period_credit_go_together(given: dict[str, Any]) -> None:
    message = error_of(parse_plan, plan_entry(**given), CTX)
    assert "field 'period_credit'" in message and "together" in message


@pytest.mark.parametrize(
    "given",
    [
        {"total_credit": None},  # purely periodic: nothing to fall back on
        {"period": None, "period_credit": None},  # no limit to disable
    ],
)
def test_limit_can_be_disabled_only_with_total_and_period(given: dict[str, Any]) -> None:
    message = error_of(parse_plan, plan_entry(period_limit_can_disable=True, **given), CTX)
    assert "field 'period_limit_can_disable'" in message


@pytest.mark.parametrize("end", ["2026-12-01T00:00:00+00:00", "2026-11-30T00:00:00+00:00"])
def test_purchase_end_must_be_after_start(end: str) -> None:
    message = error_of(parse_plan, plan_entry(purchase_start="2026-12-01T00:00:00+00:00", purchase_end=end), CTX)
    assert "field 'purchase_end'" in message and "after purchase_start" in message


def test_purchase_window_offsets_are_compared_as_instants() -> None:
    # 08:00 in Beijing is 00:00 UTC: end is one second after start.
    t = parse_plan(
        plan_entry(purchase_start="2026-12-01T00:00:00+00:00", purchase_end="2026-12-01T08:00:01+08:00"), CTX
    )
    assert t.purchase_end is not None and t.purchase_start is not None
    assert (t.purchase_end - t.purchase_start).total_seconds() == 1
    assert rules.purchase_window_open(t, datetime(2026, 12, 1, 0, 0, 0, tzinfo=timezone.utc))
    assert not rules.purchase_window_open(t, datetime(2026, 12, 1, 0, 0, 1, tzinfo=timezone.utc))
    assert not rules.purchase_window_open(t, datetime(2026, 11, 30, 23, 59, 59, tzinfo=timezone.utc))


def test_jpy_installation_has_no_minor_decimals() -> None:
    ctx = Context(currency="JPY", currency_decimals=0, models=MODELS, groups=GROUPS)
    t = parse_plan(plan_entry(price="3000"), ctx)
    assert t.price == 3000 and plan_to_dict(t)["price"] == "3000"
    assert "at most 0 decimal places" in error_of(parse_plan, plan_entry(price="3000.5"), ctx)


# ---------------------------------------------------------------- update_plan


def test_update_plan_changes_only_what_is_given() -> None:
    old = parse_plan(plan_entry(rpd=5000), CTX)
    new = update_plan(old, {"price": "279", "rpd": "6000"}, CTX)
    assert new.price == 27900 and new.rpd == 6000
    assert new.total_credit == old.total_credit and new.models == old.models
    assert old.price == 29900 and old.rpd == 5000  # terms are immutable values


def test_update_plan_cannot_change_slug() -> None:
    old = parse_plan(plan_entry(), CTX)
    message = error_of(update_plan, old, {"slug": "other"}, CTX)
    assert message == "plan 'codex-pro-monthly': field 'slug' cannot be changed"
    assert update_plan(old, {"slug": "codex-pro-monthly"}, CTX) == old


def test_update_plan_validates_the_result_as_a_whole() -> None:
    old = parse_plan(plan_entry(period_limit_can_disable=True), CTX)
    # removing the periodic limit of a plan whose limit may be disabled: the pair rule fires
    message = error_of(update_plan, old, {"period": "none", "period_credit": "none"}, CTX)
    assert "field 'period_limit_can_disable'" in message
    message = error_of(update_plan, old, {"period": "none"}, CTX)
    assert "field 'period_credit'" in message
    assert update_plan(old, {"period": "none", "period_credit": "none", "period_limit_can_disable": False}, CTX).period is None


def test_update_plan_field_error_names_plan_and_field() -> None:
    old = parse_plan(plan_entry(), CTX)
    message = error_of(update_plan, old, {"price": "1.234"}, CTX)
    assert message.startswith("plan 'codex-pro-monthly': field 'price': ")


def test_update_plan_can_clear_purchase_window() -> None:
    old = parse_plan(plan_entry(purchase_end="2027-01-01T00:00:00+00:00"), CTX)
    assert update_plan(old, {"purchase_end": "none"}, CTX).purchase_end is None


# ---------------------------------------------------------------- refund policy


@pytest.mark.parametrize(
    ("text", "policy", "shown"),
    [
        ("none", RefundPolicy("none"), "none"),
        (" prorated ", RefundPolicy("prorated"), "prorated"),
        ("unused", RefundPolicy("unused", Duration(days=7)), "unused:7d"),
        ("unused:2d", RefundPolicy("unused", Duration(days=2)), "unused:2d"),
        ("unused:12h", RefundPolicy("unused", Duration(seconds=12 * 3600)), "unused:12h"),
        ("unused:1mo", RefundPolicy("unused", Duration(months=1)), "unused:1mo"),
    ],
)
def test_refund_policy_parsing(text: str, policy: RefundPolicy, shown: str) -> None:
    assert parse_refund_policy(text) == policy
    assert str(policy) == shown
    assert parse_refund_policy(shown) == policy


@pytest.mark.parametrize("text", ["", "full", "prorated:7d", "none:1d", "unused:forever", "unused:0d", "Unused:7d"])
def test_refund_policy_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_refund_policy(text)


# ---------------------------------------------------------------- products


def test_extra_pack() -> None:
    p = parse_product({"slug": "extra-50", "name": "Extra 50", "price": "15", "credit": "50", "validity": "30d"},
                      CTX, kind="extra")
    assert (p.kind, p.pricing, p.price, p.credit, p.validity, p.on_sale) == (
        "extra", "pack", 1500, 50 * MICRO, Duration(days=30), True)
    assert product_to_dict(p) == {
        "slug": "extra-50", "kind": "extra", "name": "Extra 50", "pricing": "pack", "price": "15.00",
        "currency": "CNY", "credit": "50.000000", "validity": "30d", "on_sale": True,
    }


def test_payg_rate_product_without_validity() -> None:
    p = parse_product({"slug": "payg-standard", "name": "PAYG", "pricing": "rate", "price": "1.00", "credit": "1"},
                      CTX, kind="payg")
    assert (p.kind, p.pricing, p.price, p.credit, p.validity) == ("payg", "rate", 100, MICRO, None)
    assert product_to_dict(p)["validity"] is None


@pytest.mark.parametrize(
    ("kind", "entry", "field", "problem"),
    [
        ("extra", {"pricing": "rate"}, "pricing", "sold as packs"),
        ("extra", {"pricing": "auction"}, "pricing", "unknown pricing"),
        ("extra", {"price": "0"}, "price", "greater than zero"),
        ("extra", {"price": 15.0}, "price", "quoted string"),
        ("extra", {"credit": "0"}, "credit", "greater than zero"),
        ("extra", {"credit": "-5"}, "credit", "must not be negative"),
        ("extra", {"validity": "month"}, "validity", "invalid duration"),
        ("payg", {"kind": "extra"}, "kind", "must be 'payg'"),
        ("payg", {"currency": "EUR"}, "currency", "differs"),
        ("payg", {"on_sale": "perhaps"}, "on_sale", "true or false"),
    ],
)
def test_product_rules(kind: str, entry: dict[str, Any], field: str, problem: str) -> None:
    base = {"slug": "p-1", "name": "P", "price": "15", "credit": "50"}
    message = error_of(parse_product, {**base, **entry}, CTX, kind=kind, where=f"{kind}[1] (p-1)")
    assert message.startswith(f"{kind}[1] (p-1): field {field!r}: "), message
    assert problem in message


def test_product_required_and_unknown_fields() -> None:
    assert error_of(parse_product, {"slug": "p", "name": "P", "price": "1"}, CTX, kind="extra") == (
        "extra product 'p': field 'credit' is required")
    assert "unknown field 'credits'" in error_of(
        parse_product, {"slug": "p", "name": "P", "price": "1", "credit": "1", "credits": "2"}, CTX, kind="extra")


# ---------------------------------------------------------------- groups and models


def test_group_ratio() -> None:
    assert parse_group({"name": "default"}).ratio_ppm == MICRO
    g = parse_group({"name": "batch", "ratio": "0.6", "description": "Nightly"})
    assert (g.ratio_ppm, g.description) == (600_000, "Nightly")
    assert rules.group_to_dict(g) == {"name": "batch", "ratio": "0.6", "description": "Nightly"}


@pytest.mark.parametrize(
    ("ratio", "problem"),
    [("0", "greater than zero"), ("-1", "must not be negative"), ("abc", "decimal number"),
     (1.5, "quoted string"), ("0.0000001", "at most 6 decimal places")],
)
def test_group_ratio_rejects(ratio: Any, problem: str) -> None:
    message = error_of(parse_group, {"name": "batch", "ratio": ratio})
    assert message.startswith("group 'batch': field 'ratio': ") and problem in message


def test_group_name_is_a_slug() -> None:
    assert "is not a slug" in error_of(parse_group, {"name": "Batch Jobs"})


def test_model_prices_are_micro_credit_per_million_tokens() -> None:
    m = parse_model({"id": "gpt-5.4", "input_price": "8.75", "cached_price": "0.875", "output_price": 70})
    assert (m.input_price, m.cached_price, m.output_price) == (8_750_000, 875_000, 70_000_000)
    assert rules.model_to_dict(m) == {"id": "gpt-5.4", "input_price": "8.750000", "cached_price": "0.875000",
                                      "output_price": "70.000000"}


def test_model_errors() -> None:
    base = {"id": "m", "input_price": "1", "cached_price": "0.1", "output_price": "2"}
    assert "field 'output_price' is required" in error_of(parse_model, {**base, "output_price": None})
    assert "must not be negative" in error_of(parse_model, {**base, "input_price": "-1"})
    assert "is not a model id" in error_of(parse_model, {**base, "id": "bad model"})


# ---------------------------------------------------------------- aliases and model resolution


def test_default_aliases() -> None:
    assert DEFAULT_ALIASES == {"claude*": "gpt-5.4", "claude-haiku*": "gpt-5.4-mini"}


@pytest.mark.parametrize(
    ("requested", "billed", "rule"),
    [
        ("claude-sonnet-4-5", "gpt-5.4", "claude*"),
        ("claude-opus-4-1", "gpt-5.4", "claude*"),
        ("claude", "gpt-5.4", "claude*"),
        ("claude-haiku-4-5", "gpt-5.4-mini", "claude-haiku*"),
        ("claude-haiku", "gpt-5.4-mini", "claude-haiku*"),
        ("gpt-5.4", "gpt-5.4", None),
        ("gpt-5.3-codex-spark", "gpt-5.3-codex-spark", None),
    ],
)
def test_resolve_with_default_aliases(requested: str, billed: str, rule: str | None) -> None:
    res = resolve_model(requested, MODELS, DEFAULT_ALIASES)
    assert (res.requested, res.billed, res.rule) == (requested, billed, rule)


def test_resolve_lists_every_match_most_specific_first() -> None:
    res = resolve_model("claude-haiku-4-5", MODELS, DEFAULT_ALIASES)
    assert res.matches == (("claude-haiku*", "gpt-5.4-mini"), ("claude*", "gpt-5.4"))


@pytest.mark.parametrize("requested", ["llama-3-70b", "gpt-6", "Claude-3", "xclaude"])
def test_resolve_unknown_model(requested: str) -> None:
    res = resolve_model(requested, MODELS, DEFAULT_ALIASES)
    assert res.billed is None and res.rule is None and res.matches == ()


def test_catalog_model_bills_as_itself_even_when_an_alias_matches() -> None:
    res = resolve_model("gpt-5.4-mini", MODELS, {"gpt-5.4*": "gpt-5.5"})
    assert (res.billed, res.rule) == ("gpt-5.4-mini", None)
    assert res.matches == (("gpt-5.4*", "gpt-5.5"),)


@pytest.mark.parametrize(
    ("aliases", "requested", "rule"),
    [
        # more literal characters win, wherever the wildcard is
        ({"claude*": "gpt-5.4", "claude-opus*": "gpt-5.5"}, "claude-opus-4", "claude-opus*"),
        ({"*": "gpt-5.4-mini", "claude*": "gpt-5.4"}, "claude-x", "claude*"),
        ({"claude*": "gpt-5.4", "*-haiku-*": "gpt-5.4-mini"}, "claude-haiku-4", "*-haiku-*"),
        # an exact name beats any glob
        ({"claude-haiku*": "gpt-5.4-mini", "claude-haiku-4-5": "gpt-5.5"}, "claude-haiku-4-5", "claude-haiku-4-5"),
        # bracket sets count as wildcards, not literals
        ({"claude-[hs]*": "gpt-5.5", "claude-h*": "gpt-5.4-mini"}, "claude-haiku", "claude-h*"),
        # equal literal length: fewer wildcards win
        ({"claude-?-x*": "gpt-5.5", "claude-1-x": "gpt-5.4"}, "claude-1-x", "claude-1-x"),
    ],
)
def test_most_specific_alias_wins(aliases: dict[str, str], requested: str, rule: str) -> None:
    res = resolve_model(requested, MODELS, aliases)
    assert res.rule == rule and res.billed == aliases[rule]


def test_resolution_does_not_depend_on_alias_order() -> None:
    forward = {"claude*": "gpt-5.4", "claude-haiku*": "gpt-5.4-mini", "claude-h*": "gpt-5.5"}
    backward = dict(reversed(list(forward.items())))
    assert resolve_model("claude-haiku-3", MODELS, forward) == resolve_model("claude-haiku-3", MODELS, backward)
    assert resolve_model("claude-haiku-3", MODELS, forward).rule == "claude-haiku*"


@pytest.mark.parametrize("pattern", ["claude *", "", "claude;drop", "a" * 129])
def test_alias_pattern_rejects(pattern: str) -> None:
    with pytest.raises(InvalidInput):
        rules.alias_pattern(pattern)


# ---------------------------------------------------------------- parse_catalog


def catalog_doc(**sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "plans": [plan_entry(slug="a"), plan_entry(slug="b", tier=3), plan_entry(slug="c", tier=4)],
        "extra": [{"slug": "extra-50", "name": "E", "price": "15", "credit": "50"}],
        "payg": [{"slug": "payg-1", "name": "P", "price": "1", "credit": "1", "pricing": "rate"}],
    }
    doc.update(sections)
    return {k: v for k, v in doc.items() if v is not None}


def test_parse_catalog_valid_document() -> None:
    c = parse_catalog(catalog_doc(), CTX)
    assert [p.slug for p in c.plans] == ["a", "b", "c"]
    assert [(p.kind, p.slug) for p in c.products] == [("extra", "extra-50"), ("payg", "payg-1")]


def test_parse_catalog_models_and_groups_defined_in_the_file_are_known() -> None:
    doc = catalog_doc(
        groups=[{"name": "batch", "ratio": "0.5"}],
        models=[{"id": "m-new", "input_price": "1", "cached_price": "0", "output_price": "2"}],
        aliases=[{"pattern": "new*", "model": "m-new"}],
        plans=[plan_entry(slug="a", models=["m-new"], groups=["batch"])],
    )
    c = parse_catalog(doc, Context(currency="CNY", currency_decimals=2))
    assert c.plans[0].models == ("m-new",) and c.aliases == (("new*", "m-new"),)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"plan": []}, "unknown section 'plan'"),
        ({"plans": {"slug": "a"}}, "section 'plans': expected a list of tables"),
        ({"plans": [plan_entry(slug="a"), "oops"]}, "plans[2]: expected a table of fields"),
        ({"plans": [plan_entry(slug="a"), plan_entry(slug="b", price=2.5), plan_entry(slug="c")]},
         "plans[2] (b): field 'price': "),
        ({"plans": [plan_entry(slug="a"), plan_entry(slug="b", models=["gpt-9"])]},
         "plans[2] (b): field 'models': unknown model 'gpt-9'"),
        ({"plans": [plan_entry(slug="a"), plan_entry(slug=None)]}, "plans[2]: field 'slug' is required"),
        ({"plans": [plan_entry(slug="a"), plan_entry(slug="a")]}, "plans: 'a' appears twice"),
        ({"models": [{"id": "m", "input_price": "1", "cached_price": "x", "output_price": "1"}]},
         "models[1] (m): field 'cached_price': "),
        ({"groups": [{"name": "g", "ratio": "0"}]}, "groups[1] (g): field 'ratio': "),
        ({"aliases": [{"pattern": "x*", "model": "gpt-9"}]}, "aliases[1] (x*): field 'model': unknown model 'gpt-9'"),
        ({"aliases": [{"pattern": "x*", "model": "gpt-5.4"}, {"pattern": "x*", "model": "gpt-5.5"}]},
         "aliases: 'x*' appears twice"),
        ({"extra": [{"slug": "e", "name": "E", "price": "1", "credit": "1", "pricing": "rate"}]},
         "extra[1] (e): field 'pricing': "),
        ({"payg": [{"slug": "e", "name": "E", "price": "1", "credit": "1"}],
          "extra": [{"slug": "e", "name": "E", "price": "1", "credit": "1"}]},
         "extra/payg: 'e' appears twice"),
    ],
)
def test_parse_catalog_errors_name_section_entry_and_field(doc: dict[str, Any], expected: str) -> None:
    message = error_of(parse_catalog, doc, CTX)
    assert message.startswith(expected), message


def test_catalog_to_dict_reads_back_identically() -> None:
    c = parse_catalog(catalog_doc(
        groups=[{"name": "default", "ratio": "1.0"}],
        models=[{"id": "gpt-5.4", "input_price": "8.75", "cached_price": "0.875", "output_price": "70"}],
        aliases=[{"pattern": "claude*", "model": "gpt-5.4"}],
    ), CTX)
    doc = rules.catalog_to_dict(c)
    assert all(v is not None for p in doc["plans"] for v in p.values())  # TOML has no null
    assert parse_catalog(doc, CTX) == c


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("key", "value", "stored"),
    [
        ("reset_timezone", " Europe/Berlin ", "Europe/Berlin"),
        ("reset_timezone", "America/New_York", "America/New_York"),
        ("currency", "usd", "USD"),
        ("currency", "JPY", "JPY"),
        ("usd_per_credit_divisor", "7.50", "7.5"),
        ("seller_name", "  Example Cloud Ltd ", "Example Cloud Ltd"),
        ("seller_email", "billing@example.test", "billing@example.test"),
        ("seller_email", "", ""),
        ("health_min_success_rate", "99.5", "99.5"),
        ("health_min_success_rate", "100", "100"),
        ("health_max_p95_latency_ms", " 2500 ", "2500"),
    ],
)
def test_config_normalize(key: str, value: str, stored: str) -> None:
    assert config.normalize(key, value) == stored


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reset_timezone", "Mars/Olympus"),
        ("reset_timezone", ""),
        ("reset_timezone", "../../etc/passwd"),
        ("currency", "XYZ"),
        ("usd_per_credit_divisor", "0"),
        ("usd_per_credit_divisor", "-7"),
        ("usd_per_credit_divisor", "seven"),
        ("seller_email", "not-an-address"),
        ("health_min_success_rate", "100.01"),
        ("health_min_success_rate", "-1"),
        ("health_max_p95_latency_ms", "1.5"),
        ("health_max_p95_latency_ms", "-5"),
    ],
)
def test_config_normalize_rejects_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        config.normalize(key, value)
    assert info.value.message.startswith(f"{key}: ")
    assert info.value.exit_code == 2


def test_config_unknown_key_is_not_found() -> None:
    with pytest.raises(NotFound) as info:
        config.normalize("timezone", "UTC")
    assert info.value.exit_code == 3 and "unknown setting 'timezone'" in info.value.message


def test_config_defaults() -> None:
    values = config.effective({})
    assert values["reset_timezone"] == "Asia/Shanghai"
    assert values["currency"] == "CNY"
    assert values["usd_per_credit_divisor"] == "7"
    assert config.effective({"currency": "USD"})["currency"] == "USD"
    # every default is itself a valid stored value
    for key, value in values.items():
        if value:
            config.normalize(key, value)
