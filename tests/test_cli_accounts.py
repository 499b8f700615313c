"""CLI tests of accounts, configuration and the audit log.

Driven through Typer's CliRunner (`cli` fixture) against a fresh, seeded
database per test; also run against PostgreSQL when PLANCTL_TEST_DATABASE_URL
is set. Refusals are checked for their exit code, exactly one `error:` line on
stderr, nothing on stdout, and a database left exactly as it was.
"""

from __future__ import annotations

import getpass
import json
import re
from datetime import datetime, timezone
from typing import Any

import pytest

from helpers import ISO, assert_refused, csv_rows


ACCOUNT_ID = re.compile(r"^acc_[a-z0-9]{8}$")
ACCOUNT_KEYS = {
    "id", "name", "default_group", "parent_id", "subuser_quota", "payg_balance", "billing_name", "billing_email",
    "billing_address", "billing_tax_id", "created_at", "updated_at",
}
LIST_HEADER = ["id", "name", "default_group", "parent_id", "payg_balance", "created_at"]
DEFAULT_SETTINGS = {
    "reset_timezone": "Asia/Shanghai",
    "currency": "CNY",
    "usd_per_credit_divisor": "7",
    "seller_name": "",
    "seller_address": "",
    "seller_tax_id": "",
    "seller_email": "",
    "health_min_success_rate": "95",
    "health_max_p95_latency_ms": "10000",
}
SECRET = re.compile(r"sk-[A-Za-z0-9_-]{16,}|-----BEGIN|password|secret=", re.IGNORECASE)


# ---------------------------------------------------------------- helpers


refusals = assert_refused


def create(cli: Any, name: str, *options: str) -> dict[str, Any]:
    return cli.json("accounts", "create", name, *options)


# ---------------------------------------------------------------- accounts


def test_accounts_list_empty(cli: Any) -> None:
    assert json.loads(cli.ok("accounts", "list", "--json").stdout) == []
    assert csv_rows(cli.ok("accounts", "list", "--csv").stdout) == [LIST_HEADER]
    assert cli.ok("accounts", "list", "--jsonl").stdout == ""
    assert cli.ok("accounts", "list").stdout == ""


def test_accounts_create_json_shape(cli: Any) -> None:
    acme = create(cli, "Acme Ltd", "--group", "priority", "--billing-name", "Acme Limited",
                  "--billing-email", "ap@acme.test", "--billing-address", "1 Road, Shanghai", "--tax-id", "91310000X")
    assert set(acme) == ACCOUNT_KEYS
    assert ACCOUNT_ID.match(acme["id"])
    assert {k: acme[k] for k in ACCOUNT_KEYS - {"id", "created_at", "updated_at"}} == {
        "name": "Acme Ltd", "default_group": "priority", "parent_id": None, "subuser_quota": None,
        "payg_balance": "0.000000", "billing_name": "Acme Limited", "billing_email": "ap@acme.test",
        "billing_address": "1 Road, Shanghai", "billing_tax_id": "91310000X",
    }
    assert ISO.match(acme["created_at"]) and acme["created_at"] == acme["updated_at"]

    plain = create(cli, "bob")
    assert plain["default_group"] == "default"  # every account has a default group
    assert (plain["billing_name"], plain["billing_email"]) == ("", "")

    entries = cli.json("audit", "--target", f"account:{acme['id']}")
    assert len(entries) == 1
    assert entries[0]["actor"] == "tester" and entries[0]["command"] == "accounts create"
    assert "Acme Ltd" in entries[0]["summary"]


def test_accounts_list_json_and_csv(cli: Any) -> None:
    zed = create(cli, "zed")
    acme = create(cli, "acme", "--group", "economy")
    listed = cli.json("accounts", "list")
    assert [a["id"] for a in listed] == [acme["id"], zed["id"]]  # by name
    assert listed[0] == acme
    rows = csv_rows(cli.ok("accounts", "list", "--csv").stdout)
    assert rows[0] == LIST_HEADER
    assert rows[1] == [acme["id"], "acme", "economy", "", "0.000000", acme["created_at"]]
    assert [a["name"] for a in cli.json("accounts", "list", "--group", "economy")] == ["acme"]
    assert cli.json("accounts", "list", "--group", "priority") == []
    out = cli.ok("accounts", "list").stdout
    assert "acme" in out and "zed" in out and "0.00" in out


def test_accounts_show_by_id_name_and_prefix(cli: Any) -> None:
    acme = create(cli, "acme")
    globex = create(cli, "globex")
    for ref in (acme["id"], "acme", acme["id"][:-1], "acm"):
        assert cli.json("accounts", "show", ref)["id"] == acme["id"], ref
    for ref in (globex["id"], "globex", "glob"):
        assert cli.json("accounts", "show", ref)["id"] == globex["id"], ref
    assert cli.json("accounts", "show", "acme") == {**acme, "extra_packs": [], "extra_remaining": "0.000000"}
    out = cli.ok("accounts", "show", "acme").stdout
    assert acme["id"] in out and "default" in out


def test_accounts_exact_name_wins_over_prefix(cli: Any) -> None:
    acme = create(cli, "acme")
    create(cli, "acme-two")
    assert cli.json("accounts", "show", "acme")["id"] == acme["id"]


def test_accounts_lookup_refusals(cli: Any, db_url: str) -> None:
    acme = create(cli, "acme")
    two = create(cli, "acme-two")
    refusals(cli, db_url, [
        (("accounts", "show", "acm"), 2, "matches several accounts"),
        (("accounts", "show", "acc_"), 2, "use the id"),
        (("accounts", "update", "acm", "--group", "priority"), 2, "matches several accounts"),
        (("accounts", "show", "globex"), 3, "unknown account 'globex'"),
        (("accounts", "update", "globex", "--group", "priority"), 3, "unknown account 'globex'"),
        (("accounts", "list", "--parent", "globex"), 3, "unknown account 'globex'"),
    ])
    line = cli("accounts", "show", "acm").stderr
    assert acme["id"] in line and two["id"] in line  # names both candidates


def test_accounts_prefix_is_not_a_sql_pattern(cli: Any, db_url: str) -> None:
    """'%' and '_' in a prefix are characters, not LIKE wildcards: no account starts with '%two'."""
    create(cli, "acme-two")
    refusals(cli, db_url, [
        (("accounts", "show", "%two"), 3, "unknown account '%two'"),
        (("accounts", "show", "acme_t"), 3, "unknown account 'acme_t'"),
    ])


def test_accounts_prefix_is_case_sensitive_on_every_backend(cli: Any, db_url: str) -> None:
    """Names are matched exactly (case-sensitive) everywhere, so prefixes must be too.

    SQLite's LIKE ignores ASCII case while PostgreSQL's does not: the same
    command must not find an account on one backend and miss it on the other.
    """
    create(cli, "acme")
    refusals(cli, db_url, [(("accounts", "show", "ACM"), 3, "unknown account 'ACM'")])


def test_accounts_create_refusals(cli: Any, db_url: str) -> None:
    create(cli, "acme")
    refusals(cli, db_url, [
        (("accounts", "create", "acme"), 6, "an account named 'acme' already exists"),
        (("accounts", "create", "globex", "--group", "vip"), 3, "unknown group 'vip'"),
        (("accounts", "create", "globex", "--billing-email", "not-an-address"), 2, "invalid e-mail address"),
        (("accounts", "create", ""), 2, "invalid account name"),
        (("accounts", "create", "   "), 2, "invalid account name"),
        (("accounts", "create", "x" * 101), 2, "invalid account name"),
        (("accounts", "create", "bad\tname"), 2, "invalid account name"),
    ])


def test_accounts_update(cli: Any) -> None:
    acme = create(cli, "acme")
    updated = cli.json("accounts", "update", acme["id"], "--name", "acme-corp", "--group", "priority",
                       "--billing-email", "billing@acme.test", "--tax-id", "T-1")
    assert updated["id"] == acme["id"]
    assert (updated["name"], updated["default_group"], updated["billing_email"], updated["billing_tax_id"]) == (
        "acme-corp", "priority", "billing@acme.test", "T-1")
    assert updated["billing_name"] == "" and updated["created_at"] == acme["created_at"]
    assert ISO.match(updated["updated_at"]) and updated["updated_at"] >= acme["updated_at"]
    assert cli.json("accounts", "show", "acme-corp") == {**updated, "extra_packs": [], "extra_remaining": "0.000000"}

    entry = cli.json("audit", "--target", f"account:{acme['id']}")[0]
    assert entry["command"] == "accounts update" and entry["actor"] == "tester"
    assert "default_group: 'default' -> 'priority'" in entry["summary"]
    assert "name: 'acme' -> 'acme-corp'" in entry["summary"]

    # the same values again: nothing changes, nothing is audited
    again = cli.json("accounts", "update", "acme-corp", "--group", "priority")
    assert again == updated
    assert len(cli.json("audit", "--target", f"account:{acme['id']}")) == 2


def test_accounts_update_refusals(cli: Any, db_url: str) -> None:
    create(cli, "acme")
    create(cli, "globex")
    refusals(cli, db_url, [
        (("accounts", "update", "acme", "--name", "globex"), 6, "an account named 'globex' already exists"),
        (("accounts", "update", "acme", "--group", "vip"), 3, "unknown group 'vip'"),
        (("accounts", "update", "acme", "--billing-email", "nope"), 2, "invalid e-mail address"),
        (("accounts", "update", "acme", "--name", ""), 2, "invalid account name"),
        (("accounts", "update", "initech", "--name", "x"), 3, "unknown account 'initech'"),
    ])


def test_accounts_create_sub_user_with_parent(cli: Any, db_url: str) -> None:
    """Sub-users need a parent whose active plan grants sub-user access, up to its maximum."""
    acme = create(cli, "acme")
    refusals(cli, db_url, [
        (("accounts", "create", "acme-dev", "--parent", "acme"), 4, "no active plan with sub-user access"),
        (("accounts", "create", "orphan", "--parent", "initech"), 3, "unknown account 'initech'"),
        (("accounts", "create", "loner", "--quota", "5"), 2, "--quota applies to sub-users"),
    ])
    cli.ok("plans", "create", "team-duo", "--name", "Team Duo", "--family", "duo", "--tier", "1", "--price", "10",
           "--validity", "1mo", "--total-credit", "100", "--model", "gpt-5.4", "--group", "default",
           "--max-subusers", "1")
    cli.ok("buy", "codex-pro-monthly", "--account", "acme")  # no sub-user access: still refused
    assert cli("accounts", "create", "acme-dev", "--parent", "acme").exit_code == 4
    cli.ok("buy", "team-duo", "--account", "acme")
    sub = cli.json("accounts", "create", "acme-dev", "--parent", "acme", "--quota", "12.5")
    assert sub["parent_id"] == acme["id"] and sub["subuser_quota"] == "12.500000"
    assert [a["name"] for a in cli.json("accounts", "list", "--parent", "acme")] == ["acme-dev"]
    refusals(cli, db_url, [
        (("accounts", "create", "acme-qa", "--parent", "acme"), 4, "already has 1 sub-users"),
        (("accounts", "create", "acme-dev-2", "--parent", "acme-dev"), 4, "is itself a sub-user"),
        (("accounts", "update", "acme", "--quota", "5"), 2, "not a sub-user"),
    ])
    assert cli.json("accounts", "update", "acme-dev", "--quota", "none")["subuser_quota"] is None


# ---------------------------------------------------------------- config


def test_config_list(cli: Any) -> None:
    assert cli.json("config", "list") == DEFAULT_SETTINGS
    rows = csv_rows(cli.ok("config", "list", "--csv").stdout)
    assert rows[0] == ["key", "value", "description"]
    assert [r[0] for r in rows[1:]] == list(DEFAULT_SETTINGS)
    assert rows[1][:2] == ["reset_timezone", "Asia/Shanghai"]
    out = cli.ok("config", "list").stdout
    assert "reset_timezone" in out and "Asia/Shanghai" in out


def test_config_get(cli: Any) -> None:
    result = cli.ok("config", "get", "reset_timezone")
    assert result.stdout == "Asia/Shanghai\n"
    assert cli.json("config", "get", "usd_per_credit_divisor") == {"key": "usd_per_credit_divisor", "value": "7"}


def test_config_set_is_validated_stored_and_audited(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cli.ok("config", "list", "--json")  # the database exists (its creation is audited too)
    monkeypatch.setenv("PLANCTL_ACTOR", "alice")
    assert cli.json("config", "set", "reset_timezone", " Europe/Berlin ") == {
        "key": "reset_timezone", "value": "Europe/Berlin"}
    result = cli.ok("config", "set", "seller_name", "Example Cloud Ltd")
    assert result.stdout == "" and "seller_name = Example Cloud Ltd" in result.stderr
    assert cli.ok("config", "get", "reset_timezone").stdout == "Europe/Berlin\n"
    assert cli.json("config", "list") == {**DEFAULT_SETTINGS, "reset_timezone": "Europe/Berlin",
                                          "seller_name": "Example Cloud Ltd"}

    entries = cli.json("audit", "--target", "config:")
    assert [(e["actor"], e["command"], e["target"], e["summary"]) for e in entries] == [
        ("alice", "config set", "config:seller_name", "'' -> 'Example Cloud Ltd'"),
        ("alice", "config set", "config:reset_timezone", "'Asia/Shanghai' -> 'Europe/Berlin'"),
    ]
    assert cli.json("audit", "--actor", "alice") == entries


def test_actor_defaults_to_the_os_user(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLANCTL_ACTOR")
    cli.ok("config", "set", "seller_tax_id", "T-42")
    assert cli.json("audit", "--target", "config:seller_tax_id")[0]["actor"] == getpass.getuser()


def test_config_refusals(cli: Any, db_url: str) -> None:
    refusals(cli, db_url, [
        (("config", "set", "reset_timezone", "Mars/Olympus"), 2, "reset_timezone: unknown time zone 'Mars/Olympus'"),
        (("config", "set", "reset_timezone", ""), 2, "reset_timezone:"),
        (("config", "set", "timezone", "UTC"), 3, "unknown setting 'timezone'"),
        (("config", "get", "timezone"), 3, "unknown setting 'timezone'"),
        (("config", "set", "currency", "XYZ"), 2, "unsupported currency 'XYZ'"),
        (("config", "set", "currency", "JPY"), 4, "CNY has 2 decimals and JPY has 0"),
        (("config", "set", "usd_per_credit_divisor", "0"), 2, "usd_per_credit_divisor:"),
        (("config", "set", "seller_email", "nobody"), 2, "invalid e-mail address"),
        (("config", "set", "health_min_success_rate", "101"), 2, "health_min_success_rate:"),
        (("config", "set", "health_max_p95_latency_ms", "1.5"), 2, "health_max_p95_latency_ms:"),
    ])


def test_config_set_currency_relabels_the_catalog(cli: Any) -> None:
    assert cli.json("config", "set", "currency", "usd") == {"key": "currency", "value": "USD"}
    pro = cli.json("plans", "show", "codex-pro-monthly")
    assert (pro["currency"], pro["price"]) == ("USD", "299.00")
    assert {p["currency"] for p in cli.json("products", "list")} == {"USD"}
    assert cli.json("config", "get", "currency")["value"] == "USD"


# ---------------------------------------------------------------- audit

AUDIT_KEYS = {"id", "at", "actor", "command", "target", "summary"}


def test_audit_json_and_csv_shape(cli: Any) -> None:
    entries = cli.json("audit")
    assert len(entries) == 1  # a new database records that it was created and seeded
    assert set(entries[0]) == AUDIT_KEYS
    assert entries[0]["target"] == "catalog" and entries[0]["command"] == "(new database)"
    assert isinstance(entries[0]["id"], int) and ISO.match(entries[0]["at"])

    create(cli, "acme")
    cli.ok("groups", "create", "batch")
    entries = cli.json("audit")
    assert [e["command"] for e in entries] == ["groups create", "accounts create", "(new database)"]  # newest first
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)
    rows = csv_rows(cli.ok("audit", "--csv").stdout)
    assert rows[0] == ["at", "actor", "command", "target", "summary"]
    assert rows[1][1:4] == ["tester", "groups create", "group:batch"]
    assert [json.loads(line)["command"] for line in cli.ok("audit", "--jsonl").stdout.splitlines()] == [
        e["command"] for e in entries]


def test_audit_filters(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    acme = create(cli, "acme")
    monkeypatch.setenv("PLANCTL_ACTOR", "alice")
    cli.ok("plans", "update", "codex-pro-monthly", "--price", "279")
    cli.ok("accounts", "update", "acme", "--group", "priority")
    monkeypatch.setenv("PLANCTL_ACTOR", "tester")

    by_target = cli.json("audit", "--target", "account:")
    assert [e["command"] for e in by_target] == ["accounts update", "accounts create"]
    assert {e["target"] for e in by_target} == {f"account:{acme['id']}"}
    assert [e["command"] for e in cli.json("audit", "--target", "plan:codex-pro-monthly")] == ["plans update"]
    assert [e["target"] for e in cli.json("audit", "--actor", "alice")] == [
        f"account:{acme['id']}", "plan:codex-pro-monthly"]
    assert [e["actor"] for e in cli.json("audit", "--actor", "tester", "--target", "account:")] == ["tester"]
    assert [e["target"] for e in cli.json("audit", "--command", "plans")] == ["plan:codex-pro-monthly"]
    assert len(cli.json("audit", "--limit", "1")) == 1
    assert json.loads(cli.ok("audit", "--actor", "mallory", "--json").stdout) == []
    assert json.loads(cli.ok("audit", "--since", "2099-01-01", "--json").stdout) == []


def test_audit_since_and_until(cli: Any, db: Any) -> None:
    from planctl.services import accounts
    from planctl.services.audit import Caller

    bob = Caller(actor="bob", command="accounts create")
    for name, when in (("jan", datetime(2020, 1, 15, 12, tzinfo=timezone.utc)),
                       ("jun", datetime(2020, 6, 15, 12, tzinfo=timezone.utc)),
                       ("dec", datetime(2020, 12, 15, 12, tzinfo=timezone.utc))):
        accounts.create(db, {"name": name}, caller=bob, now=when)
    create(cli, "today")  # wall-clock now

    def names(*args: str) -> list[str]:
        return [e["summary"].split("'")[1] for e in cli.json("audit", "--actor", "bob", *args)]

    assert names() == ["dec", "jun", "jan"]
    assert names("--since", "2020-06-01T00:00:00+00:00") == ["dec", "jun"]
    assert names("--until", "2020-06-15T12:00:00+00:00") == ["jan"]  # half-open [since, until)
    assert names("--since", "2020-06-15T12:00:00Z", "--until", "2020-12-01T00:00:00+00:00") == ["jun"]
    # a date is local midnight in the display zone (--tz): 2020-06-16 00:00 at UTC+14 is 06-15 10:00 UTC
    def names_in(tz: str, *args: str) -> list[str]:
        return [e["summary"].split("'")[1] for e in cli.json("--tz", tz, "audit", "--actor", "bob", *args)]

    assert names_in("UTC", "--since", "2020-06-16") == ["dec"]
    assert names_in("Pacific/Kiritimati", "--since", "2020-06-16") == ["dec", "jun"]
    assert [e["summary"].split("'")[1] for e in cli.json("audit", "--since", "1h", "--target", "account:")] == [
        "today"]  # relative: one hour ago
    assert names("--since", "1h") == []


def test_audit_refusals(cli: Any, db_url: str) -> None:
    refusals(cli, db_url, [
        (("audit", "--since", "last tuesday"), 2, "invalid time 'last tuesday'"),
        (("audit", "--until", "2020-13-45"), 2, "invalid time"),
    ])


def test_audit_target_is_a_prefix_not_a_sql_pattern(cli: Any) -> None:
    create(cli, "acme")
    assert json.loads(cli.ok("audit", "--target", "%", "--json").stdout) == []
    assert json.loads(cli.ok("audit", "--target", "account_", "--json").stdout) == []


def test_audit_never_contains_a_secret(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    acme = create(cli, "acme", "--billing-email", "ap@acme.test", "--tax-id", "T-9")
    cli.ok("accounts", "update", acme["id"], "--billing-address", "2 Road")
    cli.ok(*("plans", "update", "codex-weekly", "--price", "35", "--rpd", "none"))
    cli.ok("plans", "retire", "codex-weekly")
    cli.ok("models", "set-price", "gpt-5.4", "--input", "9")
    cli.ok("aliases", "set", "claude-opus*", "gpt-5.5")
    cli.ok("groups", "create", "batch", "--ratio", "0.5")
    cli.ok("config", "set", "seller_email", "billing@example.test")
    cli.ok("plans", "import", "-", input=cli.ok("plans", "export").stdout)
    secret = cli.json("buy", "codex-pro-monthly", "--account", "acme")["key"]["secret"]
    entries = cli.json("audit", "--limit", "1000")
    assert len(entries) >= 10  # the unchanged re-import writes no entry; the sale does
    for entry in entries:
        for key in ("actor", "command", "target", "summary"):
            assert not SECRET.search(entry[key]), entry
            assert secret not in entry[key] and secret[-12:] not in entry[key]


def test_changes_that_change_nothing_are_not_audited(cli: Any) -> None:
    before = len(cli.json("audit", "--limit", "1000"))
    cli.ok("config", "set", "seller_name", "Example Ltd")
    cli.ok("config", "set", "seller_name", "Example Ltd")
    cli.ok("models", "set-price", "gpt-5.4", "--input", "8.75")
    cli.ok("plans", "import", "-", input=cli.ok("plans", "export").stdout)
    assert len(cli.json("audit", "--limit", "1000")) == before + 1
