"""CLI tests of the catalog: plans, products, models, aliases, groups, import/export.

Driven through Typer's CliRunner (`cli` fixture) against a fresh, seeded
database per test; also run against PostgreSQL when PLANCTL_TEST_DATABASE_URL
is set. Every refusal is checked for its exit code, exactly one `error:` line
on stderr, nothing on stdout, and a database left exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import ISO, assert_refused, csv_rows, db_dump as dump


SAMPLE_PLANS = [  # (family, tier, slug) order
    "codex-lite-monthly", "codex-pro-monthly", "codex-max-monthly",
    "codex-day-pass", "codex-team-monthly", "codex-weekly",
]
ALL_MODELS = ["gpt-5.3-codex", "gpt-5.3-codex-spark", "gpt-5.4", "gpt-5.4-mini", "gpt-5.5"]
PLAN_KEYS = {
    "slug", "name", "description", "family", "tier", "price", "currency", "validity", "total_credit", "period",
    "period_credit", "period_limit_can_disable", "rpd", "tpd", "models", "groups", "api_types",
    "renewal_enabled", "renewal_window", "on_sale", "purchase_start", "purchase_end", "max_subusers",
    "refund_policy", "invoice_supported", "version", "created_at", "updated_at",
}


# ---------------------------------------------------------------- helpers


def refused(cli: Any, db_url: str, *args: str, code: int, message: str = "", input: str | None = None) -> str:
    """Run a command that must fail: exit code, one 'error:' line, empty stdout, database unchanged."""
    cli.ok("plans", "list", "--json")  # the database exists (created and seeded) before the snapshot
    before = dump(db_url)
    result = cli(*args, input=input)
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert dump(db_url) == before, "a refused command changed the database"
    return lines[0]


refusals = assert_refused


def plan_versions(db: Any, slug: str) -> list[Any]:
    from sqlmodel import select

    from planctl.store.tables import Plan, PlanVersion

    with db.read() as session:
        plan = session.exec(select(Plan).where(Plan.slug == slug)).one()
        return list(session.exec(
            select(PlanVersion).where(PlanVersion.plan_id == plan.id).order_by(PlanVersion.version)))


def audit_entries(cli: Any, *args: str) -> list[dict[str, Any]]:
    return cli.json("audit", *args)


FULL_PLAN = (
    "plans", "create", "codex-full",
    "--name", "Codex Full", "--description", "Every field given", "--family", "codex-full", "--tier", "3",
    "--price", "123.4", "--validity", "14d", "--total-credit", "1000.5", "--period", "5h",
    "--period-credit", "12.25", "--limit-can-disable", "--rpd", "800", "--tpd", "5000000",
    "--model", "gpt-5.4", "--model", "gpt-5.5,gpt-5.4-mini", "--group", "default", "--group", "priority",
    "--api-type", "responses", "--api-type", "claude", "--no-renewal", "--renewal-window", "2d",
    "--purchase-start", "2026-01-01T00:00:00+08:00", "--purchase-end", "2030-01-01T00:00:00+00:00",
    "--max-subusers", "5", "--refund-policy", "unused:3d", "--no-invoice", "--off-sale",
)


# ---------------------------------------------------------------- plans list / show


def test_plans_list_json_shape(cli: Any) -> None:
    plans = cli.json("plans", "list")
    assert [p["slug"] for p in plans] == SAMPLE_PLANS
    pro = next(p for p in plans if p["slug"] == "codex-pro-monthly")
    assert set(pro) == PLAN_KEYS
    assert pro["price"] == "299.00"
    assert pro["currency"] == "CNY"
    assert pro["total_credit"] == "4500.000000"
    assert pro["period"] == "day"
    assert pro["period_credit"] == "250.000000"
    assert pro["validity"] == "1mo"
    assert pro["tier"] == 2 and pro["rpd"] == 5000 and pro["tpd"] == 100_000_000
    assert pro["models"] == ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.3-codex-spark"]
    assert pro["groups"] == ["default", "priority", "economy"]
    assert pro["api_types"] == ["responses", "chat", "claude"]
    assert pro["refund_policy"] == "unused:7d"
    assert pro["renewal_window"] == "3d"
    assert pro["version"] == 1
    assert pro["purchase_start"] is None and pro["purchase_end"] is None
    assert ISO.match(pro["created_at"]) and ISO.match(pro["updated_at"])
    day = next(p for p in plans if p["slug"] == "codex-day-pass")
    assert day["total_credit"] is None and day["price"] == "9.90" and day["invoice_supported"] is False
    team = next(p for p in plans if p["slug"] == "codex-team-monthly")
    assert team["max_subusers"] == 10 and team["period"] == "week" and team["rpd"] is None


def test_plans_list_csv(cli: Any) -> None:
    rows = csv_rows(cli.ok("plans", "list", "--csv").stdout)
    assert rows[0] == ["slug", "name", "family", "tier", "price", "validity", "total_credit", "period",
                       "period_credit", "rpd", "tpd", "on_sale"]
    assert [r[0] for r in rows[1:]] == SAMPLE_PLANS
    by_slug = {r[0]: r for r in rows[1:]}
    assert by_slug["codex-pro-monthly"] == ["codex-pro-monthly", "Codex Pro", "codex", "2", "299.00", "1mo",
                                            "4500.000000", "day", "250.000000", "5000", "100000000", "true"]
    assert by_slug["codex-day-pass"][6] == ""  # no total credit
    assert by_slug["codex-team-monthly"][9:11] == ["", ""]  # no RPD/TPD


def test_plans_list_jsonl(cli: Any) -> None:
    lines = cli.ok("plans", "list", "--jsonl").stdout.splitlines()
    assert [json.loads(line)["slug"] for line in lines] == SAMPLE_PLANS


def test_plans_list_family_filter_and_empty_listings(cli: Any) -> None:
    assert [p["slug"] for p in cli.json("plans", "list", "--family", "codex")] == [
        "codex-lite-monthly", "codex-pro-monthly", "codex-max-monthly"]
    result = cli.ok("plans", "list", "--family", "nope", "--json")
    assert json.loads(result.stdout) == []
    result = cli.ok("plans", "list", "--family", "nope", "--csv")
    assert csv_rows(result.stdout) == [["slug", "name", "family", "tier", "price", "validity", "total_credit",
                                        "period", "period_credit", "rpd", "tpd", "on_sale"]]
    result = cli.ok("plans", "list", "--family", "nope")
    assert result.stdout == ""  # the note for people goes to stderr
    assert result.stderr.strip() != ""


def test_plans_list_table_for_people(cli: Any) -> None:
    out = cli.ok("plans", "list").stdout
    assert "codex-pro-monthly" in out and "299.00" in out and "4500.00" in out
    assert "4500.000000" not in out  # two decimals for people, exact only in JSON


def test_plans_show(cli: Any) -> None:
    shown = cli.json("plans", "show", "codex-pro-monthly")
    listed = next(p for p in cli.json("plans", "list") if p["slug"] == "codex-pro-monthly")
    assert shown == listed
    out = cli.ok("plans", "show", "codex-pro-monthly").stdout
    assert "Codex Pro" in out and "299.00" in out and "unused:7d" in out


def test_plans_show_unknown(cli: Any, db_url: str) -> None:
    refused(cli, db_url, "plans", "show", "codex-ultra", code=3, message="unknown plan 'codex-ultra'")


def test_error_with_json_flag_is_one_json_line(cli: Any) -> None:
    result = cli("plans", "show", "codex-ultra", "--json")
    assert result.exit_code == 3 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"error": "not_found", "message": "unknown plan 'codex-ultra'; see 'planctl plans list'"}


# ---------------------------------------------------------------- plans create


def test_plans_create_every_field(cli: Any) -> None:
    created = cli.json(*FULL_PLAN)
    assert set(created) == PLAN_KEYS
    expected = {
        "slug": "codex-full", "name": "Codex Full", "description": "Every field given", "family": "codex-full",
        "tier": 3, "price": "123.40", "currency": "CNY", "validity": "14d", "total_credit": "1000.500000",
        "period": "5h", "period_credit": "12.250000", "period_limit_can_disable": True, "rpd": 800,
        "tpd": 5_000_000, "models": ["gpt-5.4", "gpt-5.5", "gpt-5.4-mini"], "groups": ["default", "priority"],
        "api_types": ["responses", "claude"], "renewal_enabled": False, "renewal_window": "2d", "on_sale": False,
        "purchase_start": "2025-12-31T16:00:00+00:00", "purchase_end": "2030-01-01T00:00:00+00:00",
        "max_subusers": 5, "refund_policy": "unused:3d", "invoice_supported": False, "version": 1,
    }
    assert {k: created[k] for k in expected} == expected
    assert ISO.match(created["created_at"]) and created["created_at"] == created["updated_at"]
    assert cli.json("plans", "show", "codex-full") == created
    entry = audit_entries(cli, "--target", "plan:codex-full")
    assert len(entry) == 1
    assert entry[0]["actor"] == "tester" and entry[0]["command"] == "plans create"
    assert "123.40" in entry[0]["summary"]


def test_plans_create_minimum_gets_defaults(cli: Any) -> None:
    created = cli.json("plans", "create", "codex-mini", "--name", "Codex Mini", "--family", "codex", "--tier", "0",
                       "--price", "49", "--validity", "1mo", "--total-credit", "600", "--model", "gpt-5.4-mini",
                       "--group", "default")
    assert created["price"] == "49.00" and created["total_credit"] == "600.000000"
    assert created["period"] is None and created["period_credit"] is None
    assert created["api_types"] == ["responses", "chat", "claude"]
    assert created["renewal_enabled"] is True and created["renewal_window"] == "3d"
    assert created["on_sale"] is True and created["invoice_supported"] is True
    assert created["refund_policy"] == "none" and created["max_subusers"] == 0
    assert "codex-mini" in [p["slug"] for p in cli.json("plans", "list", "--family", "codex")]


BASE = ("--name", "X", "--family", "codex", "--tier", "9", "--price", "10", "--validity", "1mo",
        "--total-credit", "100", "--model", "gpt-5.4", "--group", "default")


def _with(args: tuple[str, ...], **replace: str | None) -> tuple[str, ...]:
    """BASE options with some replaced (value) or removed (None)."""
    out: list[str] = []
    pairs = dict(zip(args[::2], args[1::2]))
    for option, value in {**pairs, **{f"--{k.replace('_', '-')}": v for k, v in replace.items()}}.items():
        if value is not None:
            out += [option, value]
    return tuple(out)


CREATE_REFUSALS = [
        (_with(BASE, name=None), 2, "field 'name' is required"),
        (_with(BASE, group=None), 2, "field 'groups' is required"),
        (_with(BASE, price="9.999"), 2, "field 'price': invalid amount of money '9.999': at most 2 decimal places"),
        (_with(BASE, price="-5"), 2, "field 'price'"),
        (_with(BASE, price="ten"), 2, "field 'price'"),
        (_with(BASE, validity="1 month"), 2, "field 'validity': invalid duration"),
        (_with(BASE, total_credit="0"), 2, "field 'total_credit'"),
        (_with(BASE, model="gpt-9"), 2, "field 'models': unknown model 'gpt-9'"),
        (_with(BASE, group="vip"), 2, "field 'groups': unknown group 'vip'"),
        (_with(BASE, api_type="grpc"), 2, "field 'api_types': unknown API type 'grpc'"),
        (_with(BASE, period="day"), 2, "field 'period_credit'"),
        (_with(BASE, total_credit="none"), 2, "needs a total credit, a periodic limit, or both"),
        (_with(BASE, refund_policy="always"), 2, "field 'refund_policy'"),
        (_with(BASE, rpd="0"), 2, "field 'rpd'"),
        (_with(BASE, purchase_start="someday"), 2, "--purchase-start"),
        (_with(BASE, purchase_start="2027-01-01T00:00:00+00:00", purchase_end="2026-01-01T00:00:00+00:00"), 2,
         "field 'purchase_end': must be after purchase_start"),
        (_with(BASE, tier="-1"), 2, "field 'tier'"),
        (("--limit-can-disable", *BASE), 2, "field 'period_limit_can_disable'"),
]


def test_plans_create_refusals(cli: Any, db_url: str) -> None:
    refusals(cli, db_url, [(("plans", "create", "codex-new", *options), code, message)
                           for options, code, message in CREATE_REFUSALS])


def test_plans_create_bad_slug(cli: Any, db_url: str) -> None:
    refused(cli, db_url, "plans", "create", "Codex New", *BASE, code=2, message="is not a slug")


def test_plans_create_duplicate_is_a_conflict(cli: Any, db_url: str) -> None:
    refused(cli, db_url, "plans", "create", "codex-pro-monthly", *BASE, code=6,
            message="plan 'codex-pro-monthly' already exists")


# ---------------------------------------------------------------- plans update (versions)


def test_plans_update_creates_a_new_version_and_keeps_the_old_terms(cli: Any, db: Any) -> None:
    updated = cli.json("plans", "update", "codex-pro-monthly", "--price", "279", "--rpd", "6000",
                       "--total-credit", "5000.25")
    assert updated["version"] == 2
    assert (updated["price"], updated["rpd"], updated["total_credit"]) == ("279.00", 6000, "5000.250000")
    assert updated["name"] == "Codex Pro" and updated["period_credit"] == "250.000000"  # the rest is kept
    assert updated["updated_at"] != updated["created_at"]

    versions = plan_versions(db, "codex-pro-monthly")
    assert [v.version for v in versions] == [1, 2]
    old, new = versions[0].terms, versions[1].terms
    assert (old["price"], old["rpd"], old["total_credit"]) == ("299.00", 5000, "4500.000000")
    assert (new["price"], new["rpd"], new["total_credit"]) == ("279.00", 6000, "5000.250000")

    # the sales layer reads a sold version back exactly as it was
    from planctl.services.catalog import plan_version_terms

    with db.read() as session:
        assert plan_version_terms(session, versions[0].id).price == 29900
        assert plan_version_terms(session, versions[1].id).price == 27900

    entry = audit_entries(cli, "--target", "plan:codex-pro-monthly")[0]
    assert entry["command"] == "plans update" and entry["actor"] == "tester"
    assert "price: '299.00' -> '279.00'" in entry["summary"]


def test_plans_update_without_change_writes_nothing(cli: Any, db_url: str, db: Any) -> None:
    cli.ok("plans", "list", "--json")
    before = dump(db_url)
    same = cli.json("plans", "update", "codex-pro-monthly", "--price", "299.00")
    assert same["version"] == 1
    assert dump(db_url) == before
    assert len(plan_versions(db, "codex-pro-monthly")) == 1


def test_plans_update_clears_optional_terms_with_none(cli: Any) -> None:
    cli.ok(*FULL_PLAN)
    updated = cli.json("plans", "update", "codex-full", "--rpd", "none", "--purchase-end", "none",
                       "--limit-fixed", "--period", "none", "--period-credit", "none")
    assert updated["rpd"] is None and updated["purchase_end"] is None
    assert updated["period"] is None and updated["period_credit"] is None
    assert updated["purchase_start"] == "2025-12-31T16:00:00+00:00"  # untouched


def test_plans_update_refusals(cli: Any, db_url: str) -> None:
    cases = [
        (("codex-ultra", "--price", "1"), 3, "unknown plan 'codex-ultra'"),
        (("codex-pro-monthly", "--price", "1.234"), 2, "plan 'codex-pro-monthly': field 'price'"),
        (("codex-pro-monthly", "--period", "none"), 2, "field 'period_credit'"),
        (("codex-pro-monthly", "--model", "gpt-9"), 2, "unknown model 'gpt-9'"),
        (("codex-pro-monthly", "--validity", "forever"), 2, "field 'validity'"),
        (("codex-day-pass", "--limit-can-disable"), 2, "field 'period_limit_can_disable'"),
    ]
    refusals(cli, db_url, [(("plans", "update", *args), code, message) for args, code, message in cases])


# ---------------------------------------------------------------- retire / unretire


def test_plans_retire_and_unretire(cli: Any, db: Any) -> None:
    retired = cli.json("plans", "retire", "codex-weekly")
    assert retired["on_sale"] is False and retired["version"] == 2
    assert "codex-weekly" not in [p["slug"] for p in cli.json("plans", "list", "--on-sale")]
    assert "codex-weekly" in [p["slug"] for p in cli.json("plans", "list")]  # still listed, marked
    assert cli.json("plans", "show", "codex-weekly")["on_sale"] is False

    again = cli.json("plans", "retire", "codex-weekly")  # idempotent: no new version
    assert again["version"] == 2

    back = cli.json("plans", "unretire", "codex-weekly")
    assert back["on_sale"] is True and back["version"] == 3
    assert "codex-weekly" in [p["slug"] for p in cli.json("plans", "list", "--on-sale")]
    assert [v.terms["on_sale"] for v in plan_versions(db, "codex-weekly")] == [True, False, True]
    targets = [e["command"] for e in audit_entries(cli, "--target", "plan:codex-weekly")]
    assert targets == ["plans unretire", "plans retire"]


def test_plans_retire_unknown(cli: Any, db_url: str) -> None:
    refusals(cli, db_url, [(("plans", verb, "codex-ultra"), 3, "unknown plan 'codex-ultra'")
                           for verb in ("retire", "unretire")])


# ---------------------------------------------------------------- import / export

IMPORT_OK = """
[[groups]]
name = "batch"
ratio = "0.5"
description = "Nightly"

[[models]]
id = "gpt-5.4"
input_price = "9"
cached_price = "0.9"
output_price = "72"

[[models]]
id = "gpt-6-preview"
input_price = "20"
cached_price = "2"
output_price = "160"

[[aliases]]
pattern = "claude-opus*"
model = "gpt-6-preview"

[[plans]]
slug = "codex-pro-monthly"
name = "Codex Pro"
family = "codex"
tier = 2
price = "299.00"
validity = "1mo"
total_credit = "4500"
period = "day"
period_credit = "250"
period_limit_can_disable = true
rpd = 5000
tpd = 100000000
models = ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.3-codex-spark"]
groups = ["default", "priority", "economy"]
refund_policy = "unused:7d"

[[plans]]
slug = "codex-weekly"
name = "Codex Weekly"
family = "codex-weekly"
tier = 1
price = "35.00"
validity = "7d"
total_credit = "300"
period = "day"
period_credit = "60"
period_limit_can_disable = true
rpd = 1000
tpd = 20000000
models = ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.3-codex-spark"]
groups = ["default", "economy"]
renewal_window = "1d"
refund_policy = "unused:2d"

[[plans]]
slug = "codex-next"
name = "Codex Next"
family = "codex-next"
tier = 1
price = "499.00"
validity = "1mo"
total_credit = "8000"
models = ["gpt-6-preview"]
groups = ["batch"]
purchase_start = 2026-12-01T00:00:00+08:00

[[extra]]
slug = "extra-50"
name = "Extra usage 50"
price = "15.00"
credit = "50"
validity = "30d"

[[payg]]
slug = "payg-500"
name = "Pay-as-you-go 500 credit"
price = "450.00"
credit = "500"
"""

EXPECTED_IMPORT = [
    {"section": "groups", "name": "batch", "status": "created"},
    {"section": "models", "name": "gpt-5.4", "status": "updated"},
    {"section": "models", "name": "gpt-6-preview", "status": "created"},
    {"section": "aliases", "name": "claude-opus*", "status": "created"},
    {"section": "plans", "name": "codex-pro-monthly", "status": "unchanged"},
    {"section": "plans", "name": "codex-weekly", "status": "updated"},
    {"section": "plans", "name": "codex-next", "status": "created"},
    {"section": "extra", "name": "extra-50", "status": "unchanged"},
    {"section": "payg", "name": "payg-500", "status": "created"},
]


def test_plans_import_valid_file(cli: Any, db: Any, tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(IMPORT_OK, "utf-8")
    result = cli.ok("plans", "import", str(path), "--json")
    assert json.loads(result.stdout) == EXPECTED_IMPORT
    assert "imported: 5 created, 2 updated, 2 unchanged" in result.stderr

    assert cli.json("plans", "show", "codex-weekly")["price"] == "35.00"
    assert [v.terms["price"] for v in plan_versions(db, "codex-weekly")] == ["39.00", "35.00"]
    assert len(plan_versions(db, "codex-pro-monthly")) == 1  # unchanged: no new version
    nxt = cli.json("plans", "show", "codex-next")
    assert nxt["groups"] == ["batch"] and nxt["purchase_start"] == "2026-11-30T16:00:00+00:00"
    gpt54 = next(m for m in cli.json("models", "list") if m["id"] == "gpt-5.4")
    assert gpt54 == {"id": "gpt-5.4", "input_price": "9.000000", "cached_price": "0.900000",
                     "output_price": "72.000000"}
    assert cli.json("aliases", "resolve", "claude-opus-5")["billed"] == "gpt-6-preview"
    assert {"name": "batch", "ratio": "0.5", "description": "Nightly"} in cli.json("groups", "list")
    # entries absent from the file are left alone
    assert len(cli.json("plans", "list")) == len(SAMPLE_PLANS) + 1

    entry = audit_entries(cli, "--target", "catalog")[0]
    assert entry["command"] == "plans import" and entry["actor"] == "tester"
    assert "plans:codex-weekly updated" in entry["summary"]

    again = cli.ok("plans", "import", str(path), "--json")
    assert {r["status"] for r in json.loads(again.stdout)} == {"unchanged"}
    assert "0 created, 0 updated, 9 unchanged" in again.stderr


def test_plans_import_from_stdin(cli: Any) -> None:
    result = cli.ok("plans", "import", "-", "--json", input=IMPORT_OK)
    assert json.loads(result.stdout) == EXPECTED_IMPORT


def test_plans_import_dry_run_writes_nothing(cli: Any, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(IMPORT_OK, "utf-8")
    cli.ok("plans", "list", "--json")
    before = dump(db_url)
    result = cli.ok("plans", "import", str(path), "--dry-run", "--json")
    assert json.loads(result.stdout) == EXPECTED_IMPORT  # the same report as a real import
    assert "dry run, nothing written: 5 created, 2 updated, 2 unchanged" in result.stderr
    assert dump(db_url) == before
    assert cli.json("plans", "show", "codex-weekly")["price"] == "39.00"


def _bad_plan_in_middle(field_line: str) -> str:
    """IMPORT_OK with plans[2] (codex-weekly) changed by one line."""
    return IMPORT_OK.replace('price = "35.00"', field_line, 1)


BAD_IMPORTS = [
        (_bad_plan_in_middle("price = 35.0"), "plans[2] (codex-weekly): field 'price': "),
        (_bad_plan_in_middle('price = "35.00"\ncolour = "blue"'), "plans[2] (codex-weekly): unknown field 'colour'"),
        (IMPORT_OK.replace('groups = ["default", "economy"]', 'groups = ["default", "vip"]', 1),
         "plans[2] (codex-weekly): field 'groups': unknown group 'vip'"),
        (IMPORT_OK.replace('models = ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.3-codex-spark"]\n'
                           'groups = ["default", "economy"]',
                           'models = ["gpt-5.5", "gpt-9"]\ngroups = ["default", "economy"]', 1),
         "plans[2] (codex-weekly): field 'models': unknown model 'gpt-9'"),
        (IMPORT_OK.replace('credit = "500"', 'credit = "0"'), "payg[1] (payg-500): field 'credit': "),
        (IMPORT_OK.replace('output_price = "160"', 'output_price = "-160"'),
         "models[2] (gpt-6-preview): field 'output_price': "),
        (IMPORT_OK.replace('model = "gpt-6-preview"', 'model = "gpt-7"'),
         "aliases[1] (claude-opus*): field 'model': unknown model 'gpt-7'"),
        (IMPORT_OK + '\n[[widgets]]\nname = "x"\n', "unknown section 'widgets'"),
        (IMPORT_OK + '\n[[plans]]\nslug = "codex-next"\n', "plans[4] (codex-next): field 'name' is required"),
        (IMPORT_OK.replace('slug = "codex-next"', 'slug = "codex-weekly"'), "plans: 'codex-weekly' appears twice"),
        ("[[plans]\nslug = 'x'", "is not valid TOML"),
]


def test_plans_import_bad_entry_in_the_middle_changes_nothing(cli: Any, db_url: str, tmp_path: Path) -> None:
    """plans[1] and everything before plans[2] is valid; one bad field anywhere leaves the database as it was."""
    path = tmp_path / "catalog.toml"
    path.write_text(_bad_plan_in_middle("price = 35.0"), "utf-8")
    line = refused(cli, db_url, "plans", "import", str(path), code=2, message="plans[2] (codex-weekly): field 'price': ")
    assert '"35.0"' in line  # says how to write it


def test_plans_import_bad_files_change_nothing(cli: Any, db_url: str, tmp_path: Path) -> None:
    cases = []
    for i, (text, message) in enumerate(BAD_IMPORTS):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(text, "utf-8")
        cases.append((("plans", "import", str(path)), 2, message))
        if i < 2:
            cases.append((("plans", "import", str(path), "--dry-run"), 2, message))
    refusals(cli, db_url, cases)


def test_plans_import_missing_file(cli: Any, db_url: str, tmp_path: Path) -> None:
    refused(cli, db_url, "plans", "import", str(tmp_path / "nope.toml"), code=2, message="cannot read")


def test_plans_export_import_round_trip_is_unchanged(cli: Any, db_url: str, tmp_path: Path) -> None:
    cli.ok(*FULL_PLAN)  # every field, custom period and purchase window included
    cli.ok("plans", "retire", "codex-weekly")
    cli.ok("groups", "create", "batch", "--ratio", "0.625")
    cli.ok("models", "set-price", "gpt-5.5", "--input", "10.123456")
    out = tmp_path / "catalog.toml"
    result = cli.ok("plans", "export", "-o", str(out))
    assert result.stdout == ""
    text = out.read_text("utf-8")
    assert 'price = "123.40"' in text and 'total_credit = "1000.500000"' in text
    assert "null" not in text

    before = dump(db_url)
    imported = cli.ok("plans", "import", str(out), "--json")
    rows = json.loads(imported.stdout)
    assert rows and {r["status"] for r in rows} == {"unchanged"}
    assert len([r for r in rows if r["section"] == "plans"]) == len(SAMPLE_PLANS) + 1
    assert {r["section"] for r in rows} == {"groups", "models", "aliases", "plans", "extra", "payg"}
    after = dump(db_url)
    # nothing but (at most) the audit entry of the import itself
    assert [r for r in after if not r.startswith("audit_log:")] == [r for r in before if not r.startswith("audit_log:")]

    # stdout export of the same database is the same document
    assert cli.ok("plans", "export").stdout == text


def test_plans_export_into_a_fresh_database_reproduces_the_catalog(cli: Any, tmp_path: Path) -> None:
    from helpers import Cli

    cli.ok(*FULL_PLAN)
    text = cli.ok("plans", "export").stdout
    other = Cli(str(tmp_path / "other.db"))
    (tmp_path / "c.toml").write_text(text, "utf-8")
    other.ok("plans", "import", str(tmp_path / "c.toml"))
    strip = lambda plans: [{k: v for k, v in p.items() if k not in ("created_at", "updated_at", "version")}
                           for p in plans]  # noqa: E731
    assert strip(other.json("plans", "list")) == strip(cli.json("plans", "list"))


def test_plans_export_json(cli: Any) -> None:
    doc = cli.json("plans", "export")
    assert set(doc) == {"groups", "models", "aliases", "plans", "extra", "payg"}
    assert [p["slug"] for p in doc["plans"]] == SAMPLE_PLANS
    assert doc["aliases"] == [{"pattern": "claude-haiku*", "model": "gpt-5.4-mini"},
                              {"pattern": "claude*", "model": "gpt-5.4"}]
    assert doc["extra"][0]["price"] in ("15.00", "50.00")


def test_plans_export_refuses_to_overwrite(cli: Any, db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "catalog.toml"
    out.write_text("keep me", "utf-8")
    refused(cli, db_url, "plans", "export", "-o", str(out), code=6, message="already exists")
    assert out.read_text("utf-8") == "keep me"


# ---------------------------------------------------------------- products


PRODUCT_HEADER = ["slug", "kind", "name", "pricing", "price", "credit", "validity", "on_sale"]


def test_products_list_json_and_csv(cli: Any) -> None:
    products = cli.json("products", "list")
    assert {p["slug"] for p in products} == {"extra-50", "extra-200", "payg-standard", "payg-100"}
    extra50 = next(p for p in products if p["slug"] == "extra-50")
    assert extra50 == {"slug": "extra-50", "kind": "extra", "name": "Extra usage 50", "pricing": "pack",
                       "price": "15.00", "currency": "CNY", "credit": "50.000000", "validity": "30d",
                       "on_sale": True}
    rate = next(p for p in products if p["slug"] == "payg-standard")
    assert (rate["pricing"], rate["price"], rate["credit"], rate["validity"]) == ("rate", "1.00", "1.000000", None)
    rows = csv_rows(cli.ok("products", "list", "--csv").stdout)
    assert rows[0] == PRODUCT_HEADER
    assert ["payg-standard", "payg", "Pay-as-you-go, any amount", "rate", "1.00", "1.000000", "", "true"] in rows


def test_products_kind_filter_and_show(cli: Any, db_url: str) -> None:
    assert {p["kind"] for p in cli.json("products", "list", "--kind", "extra")} == {"extra"}
    assert {p["slug"] for p in cli.json("products", "list", "--kind", "payg")} == {"payg-standard", "payg-100"}
    refused(cli, db_url, "products", "list", "--kind", "gift", code=2, message="unknown product kind 'gift'")
    assert cli.json("products", "show", "payg-100")["price"] == "95.00"
    refused(cli, db_url, "products", "show", "extra-999", code=3, message="unknown product 'extra-999'")


# ---------------------------------------------------------------- models


def test_models_list_json_and_csv(cli: Any) -> None:
    models = cli.json("models", "list")
    assert [m["id"] for m in models] == ALL_MODELS
    assert models[ALL_MODELS.index("gpt-5.4")] == {
        "id": "gpt-5.4", "input_price": "8.750000", "cached_price": "0.875000", "output_price": "70.000000"}
    rows = csv_rows(cli.ok("models", "list", "--csv").stdout)
    assert rows[0] == ["id", "input_price", "cached_price", "output_price"]
    assert ["gpt-5.4-mini", "1.750000", "0.175000", "14.000000"] in rows


def test_models_set_price_partial_update(cli: Any) -> None:
    result = cli.json("models", "set-price", "gpt-5.4", "--input", "9.5")
    assert result == {"id": "gpt-5.4", "input_price": "9.500000", "cached_price": "0.875000",
                      "output_price": "70.000000"}
    assert next(m for m in cli.json("models", "list") if m["id"] == "gpt-5.4") == result
    result = cli.json("models", "set-price", "gpt-5.4", "--cached", "0", "--output", "71.000001")
    assert result == {"id": "gpt-5.4", "input_price": "9.500000", "cached_price": "0.000000",
                      "output_price": "71.000001"}
    entry = audit_entries(cli, "--target", "model:gpt-5.4")[0]
    assert entry["command"] == "models set-price" and "71.000001" in entry["summary"]


def test_models_set_price_create(cli: Any, db_url: str) -> None:
    refused(cli, db_url, "models", "set-price", "gpt-6", "--input", "1", "--create", code=2,
            message="field 'cached_price' is required")
    created = cli.json("models", "set-price", "gpt-6", "--input", "20", "--cached", "2", "--output", "160",
                       "--create")
    assert created == {"id": "gpt-6", "input_price": "20.000000", "cached_price": "2.000000",
                       "output_price": "160.000000"}
    assert "gpt-6" in [m["id"] for m in cli.json("models", "list")]
    assert cli.json("aliases", "resolve", "gpt-6") == {"requested": "gpt-6", "billed": "gpt-6", "rule": None,
                                                      "matches": []}


def test_models_set_price_refusals(cli: Any, db_url: str) -> None:
    cases = [
        (("gpt-6", "--input", "1"), 3, "unknown model 'gpt-6'"),
        (("gpt-5.4", "--input", "-1"), 2, "must not be negative"),
        (("gpt-5.4", "--output", "abc"), 2, "field 'output_price'"),
        (("gpt-5.4", "--cached", "0.0000001"), 2, "at most 6 decimal places"),
        (("gpt-5.4", "--input", "1,5"), 2, "field 'input_price'"),
        (("gpt-5.4",), 2, "give at least one of --input, --cached, --output"),
        (("bad model", "--input", "1", "--create"), 2, "is not a model id"),
    ]
    refusals(cli, db_url, [(("models", "set-price", *args), code, message) for args, code, message in cases])


# ---------------------------------------------------------------- aliases


def test_aliases_list_most_specific_first(cli: Any) -> None:
    assert cli.json("aliases", "list") == [{"pattern": "claude-haiku*", "model": "gpt-5.4-mini"},
                                          {"pattern": "claude*", "model": "gpt-5.4"}]
    assert csv_rows(cli.ok("aliases", "list", "--csv").stdout) == [
        ["pattern", "model"], ["claude-haiku*", "gpt-5.4-mini"], ["claude*", "gpt-5.4"]]


@pytest.mark.parametrize(
    ("requested", "billed", "rule"),
    [("claude-sonnet-4-5", "gpt-5.4", "claude*"), ("claude-haiku-4-5", "gpt-5.4-mini", "claude-haiku*")],
)
def test_aliases_resolve_default_rules(cli: Any, requested: str, billed: str, rule: str) -> None:
    res = cli.json("aliases", "resolve", requested)
    assert (res["requested"], res["billed"], res["rule"]) == (requested, billed, rule)
    assert res["matches"][0] == {"pattern": rule, "model": billed}


def test_aliases_resolve_catalog_model_and_table(cli: Any) -> None:
    assert cli.json("aliases", "resolve", "gpt-5.5") == {"requested": "gpt-5.5", "billed": "gpt-5.5",
                                                        "rule": None, "matches": []}
    out = cli.ok("aliases", "resolve", "claude-haiku-4-5").stdout
    assert "gpt-5.4-mini" in out and "claude-haiku*" in out and "claude* -> gpt-5.4" in out


def test_aliases_resolve_unknown_model(cli: Any, db_url: str) -> None:
    refused(cli, db_url, "aliases", "resolve", "llama-3-70b", code=3, message="no model or alias matches")


def test_aliases_set_replace_and_remove(cli: Any) -> None:
    assert cli.json("aliases", "set", "claude-opus*", "gpt-5.5") == {"pattern": "claude-opus*", "model": "gpt-5.5"}
    res = cli.json("aliases", "resolve", "claude-opus-4-1")
    assert (res["billed"], res["rule"]) == ("gpt-5.5", "claude-opus*")
    assert [m["pattern"] for m in res["matches"]] == ["claude-opus*", "claude*"]
    assert [a["pattern"] for a in cli.json("aliases", "list")] == ["claude-haiku*", "claude-opus*", "claude*"]

    cli.ok("aliases", "set", "claude-opus*", "gpt-5.3-codex")  # replaces
    assert cli.json("aliases", "resolve", "claude-opus-4-1")["billed"] == "gpt-5.3-codex"

    result = cli.ok("aliases", "remove", "claude-opus*", "--yes")
    assert result.stdout == "" and "claude-opus*" in result.stderr
    res = cli.json("aliases", "resolve", "claude-opus-4-1")
    assert (res["billed"], res["rule"]) == ("gpt-5.4", "claude*")

    commands = [e["command"] for e in audit_entries(cli, "--target", "alias:claude-opus*")]
    assert commands == ["aliases remove", "aliases set", "aliases set"]


def test_aliases_refusals(cli: Any, db_url: str) -> None:
    cases = [
        (("set", "claude-opus*", "gpt-9"), 3, "unknown model 'gpt-9'"),
        (("set", "claude opus", "gpt-5.5"), 2, "is not a model pattern"),
        (("remove", "claude-opus*", "--yes"), 3, "no alias with pattern 'claude-opus*'"),
        # destructive: without a terminal, --yes is required (SPEC §8)
        (("remove", "claude*"), 2, "--yes"),
    ]
    refusals(cli, db_url, [(("aliases", *args), code, message) for args, code, message in cases])


# ---------------------------------------------------------------- groups


def test_groups_list(cli: Any) -> None:
    assert cli.json("groups", "list") == [
        {"name": "default", "ratio": "1.0", "description": "Standard routing"},
        {"name": "economy", "ratio": "0.8", "description": "Off-peak batch capacity, billed at 0.8x"},
        {"name": "priority", "ratio": "1.5", "description": "Priority capacity, billed at 1.5x"},
    ]
    rows = csv_rows(cli.ok("groups", "list", "--csv").stdout)
    assert rows[0] == ["name", "ratio", "description"] and ["default", "1.0", "Standard routing"] in rows


def test_groups_create_and_update(cli: Any) -> None:
    assert cli.json("groups", "create", "batch", "--ratio", "0.6", "--description", "Nightly batch") == {
        "name": "batch", "ratio": "0.6", "description": "Nightly batch"}
    assert cli.json("groups", "create", "plain") == {"name": "plain", "ratio": "1.0", "description": ""}
    assert cli.json("groups", "update", "batch", "--ratio", "1.25") == {
        "name": "batch", "ratio": "1.25", "description": "Nightly batch"}
    assert cli.json("groups", "update", "batch", "--description", "Bulk") == {
        "name": "batch", "ratio": "1.25", "description": "Bulk"}
    assert [g["name"] for g in cli.json("groups", "list")] == ["batch", "default", "economy", "plain", "priority"]
    # a new group can be used by plans and accounts at once
    cli.ok("plans", "update", "codex-pro-monthly", "--group", "default,batch")
    assert cli.json("accounts", "create", "acme", "--group", "batch")["default_group"] == "batch"
    commands = [e["command"] for e in audit_entries(cli, "--target", "group:batch")]
    assert commands == ["groups update", "groups update", "groups create"]


def test_groups_refusals(cli: Any, db_url: str) -> None:
    cases = [
        (("create", "default"), 6, "group 'default' already exists"),
        (("create", "batch", "--ratio", "0"), 2, "field 'ratio': invalid price ratio '0': must be greater than zero"),
        (("create", "batch", "--ratio", "-1"), 2, "must not be negative"),
        (("create", "batch", "--ratio", "fast"), 2, "field 'ratio'"),
        (("create", "batch", "--ratio", "0.0000001"), 2, "at most 6 decimal places"),
        (("create", "Batch Jobs"), 2, "is not a slug"),
        (("update", "vip", "--ratio", "2"), 3, "unknown group 'vip'"),
        (("update", "priority", "--ratio", "0"), 2, "field 'ratio'"),
    ]
    refusals(cli, db_url, [(("groups", *args), code, message) for args, code, message in cases])


# ---------------------------------------------------------------- CLI conventions


@pytest.mark.parametrize("args, message", [
    (["--bogus", "plans", "list"], "error: No such option: --bogus; see 'planctl --help'"),
    (["--db"], "error: Option '--db' requires an argument; see 'planctl --help'"),
    (["plans", "--bogus"], "error: No such option: --bogus; see 'planctl plans --help'"),
])
def test_a_bad_option_at_any_level_is_one_line_with_exit_2(cli: Any, args: list[str], message: str) -> None:
    result = cli(*args)
    assert (result.exit_code, result.stderr.splitlines()) == (2, [message])


def test_usage_error_is_one_error_line_with_exit_2(cli: Any, db_url: str) -> None:
    """SPEC §8 / issue 'Bad input': a malformed value gets one line naming the problem, exit 2.

    Typer's own parameter errors (here a non-integer --tier) must follow the same
    convention as domain errors instead of printing a multi-line usage block.
    """
    refused(cli, db_url, "plans", "create", "codex-new", *_with(BASE, tier="two"), code=2, message="--tier")
