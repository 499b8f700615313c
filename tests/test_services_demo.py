"""`planctl demo` (services.demo): synthetic traffic that is deterministic, consistent and refused
on a database that already has usage.

Small runs (hundreds to a few thousand records) keep these fast. Exit code when the database
already has usage records and --yes is not given: 4 (refused, reason `database_not_empty`).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import NOW, sqlite_dump

SUMMARY_KEYS = {
    "mode", "charged", "seed", "days", "since", "until", "accounts", "subscriptions", "orders", "extra_packs",
    "keys", "records", "rejected", "refused", "consumption", "request_id_prefix", "elapsed_seconds", "setup_seconds",
    "usage_seconds", "records_per_second", "notes",
}


def run_demo(path: Path, caller: Any, **spec: Any) -> Any:
    from planctl.services import demo
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    db = open_database(resolve_target(str(path)), now=NOW)
    try:
        return demo.run(db, demo.DemoSpec(**spec), caller=caller, now=NOW)
    finally:
        db.dispose()


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def per_day(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    raw = query(path, "SELECT local_day, COUNT(*), SUM(cost), SUM(input_tokens), SUM(cached_tokens), "
                      "SUM(output_tokens) FROM usage_records GROUP BY local_day ORDER BY local_day")
    rolled = query(path, "SELECT local_day, SUM(requests), SUM(cost), SUM(input_tokens), SUM(cached_tokens), "
                         "SUM(output_tokens) FROM usage_daily GROUP BY local_day ORDER BY local_day")
    return raw, rolled


def fingerprint(path: Path) -> list[tuple[Any, ...]]:
    """Everything about the records except the random ids of keys and accounts."""
    return query(path, "SELECT u.request_id, u.at, k.name, u.requested_model, u.billed_model, u.api, u.input_tokens, "
                       "u.cached_tokens, u.output_tokens, u.cost, u.status_code, u.latency_ms, u.stream "
                       "FROM usage_records u JOIN api_keys k ON k.id = u.key_id ORDER BY u.id")


def test_the_same_seed_makes_the_same_data(tmp_path: Path, caller: Any) -> None:
    spec = dict(days=2, records=800, accounts=3, seed=7)
    first = run_demo(tmp_path / "a.db", caller, **spec)
    second = run_demo(tmp_path / "b.db", caller, **spec)
    other = run_demo(tmp_path / "c.db", caller, **{**spec, "seed": 8})
    for name in ("accounts", "subscriptions", "orders", "extra_packs", "keys", "records", "consumption"):
        assert getattr(first, name) == getattr(second, name), name
    assert first.records == 800 and first.rejected == 0
    assert fingerprint(tmp_path / "a.db") == fingerprint(tmp_path / "b.db")
    total = "SELECT COUNT(*), SUM(cost) FROM usage_records"
    assert query(tmp_path / "a.db", total) == query(tmp_path / "b.db", total) == [(800, first.consumption)]
    assert other.consumption != first.consumption


def test_default_mode_charges_through_metering_and_db_check_is_clean(tmp_path: Path, caller: Any) -> None:
    from planctl.services import database
    from planctl.store.location import resolve_target

    path = tmp_path / "demo.db"
    summary = run_demo(path, caller, days=8, records=1_500, accounts=5, seed=1)
    assert summary.mode == "charged" and summary.records == 1_500 and summary.rejected == 0
    # five accounts and the team's sub-user; five purchases, the weekly plan's renewal and the extra pack
    assert (summary.accounts, summary.subscriptions, summary.orders, summary.extra_packs) == (6, 5, 7, 1)
    db = database.open_database(resolve_target(str(path)), now=NOW)
    try:
        results = database.check(db)
    finally:
        db.dispose()
    assert all(r.ok for r in results), [(r.name, r.detail) for r in results if not r.ok]
    raw, rolled = per_day(path)
    assert raw == rolled
    # every cost was charged somewhere, and the subscriptions' used credit is what the records say
    assert query(path, "SELECT SUM(cost) = SUM(charged_plan + charged_extra + charged_payg) FROM usage_records") \
        == [(1,)]
    assert query(path, "SELECT s.id FROM subscriptions s WHERE s.credit_used != (SELECT COALESCE(SUM(charged_plan), "
                       "0) FROM usage_records u WHERE u.subscription_id = s.id)") == []
    # the traffic looks like traffic: several models (an alias among them), API types, groups and status classes
    (models, aliased, apis, groups), = query(
        path, "SELECT COUNT(DISTINCT billed_model), SUM(requested_model LIKE 'claude-%'), COUNT(DISTINCT api), "
              "COUNT(DISTINCT group_name) FROM usage_records")
    assert models >= 4 and aliased > 0 and apis == 3 and groups == 3
    classes = dict(query(path, "SELECT status_code / 100, COUNT(*) FROM usage_records GROUP BY 1"))
    assert 0.90 < classes[2] / 1_500 < 0.99 and classes.get(4, 0) > 0
    start, end = query(path, "SELECT MIN(at), MAX(at) FROM usage_records")[0]
    assert str(NOW - timedelta(days=8))[:16] <= start and end < str(NOW)[:19]
    # every subscription is live at the end of the range (the weekly one was renewed)
    assert query(path, f"SELECT COUNT(*) FROM subscriptions WHERE ends_at > '{str(NOW)[:19]}'") == [(5,)]


def test_fast_mode_rollups_agree_with_raw_records_and_nothing_is_charged(tmp_path: Path, caller: Any) -> None:
    from planctl.metering.rollups import rollups
    from planctl.services import database
    from planctl.store.location import resolve_target

    fast_path, charged_path = tmp_path / "fast.db", tmp_path / "charged.db"
    summary = run_demo(fast_path, caller, days=3, records=3_000, accounts=4, seed=5, fast=True)
    assert summary.mode == "fast" and summary.records == 3_000 and summary.notes
    raw, rolled = per_day(fast_path)
    assert raw == rolled and len(raw) >= 3
    assert query(fast_path, "SELECT DISTINCT pool, charged_plan + charged_extra + charged_payg FROM usage_records") \
        == [("none", 0)]
    assert query(fast_path, "SELECT SUM(credit_used) FROM subscriptions") == [(0,)]
    assert query(fast_path, "SELECT COUNT(*) FROM api_keys WHERE last_used_at IS NULL AND id IN "
                            "(SELECT key_id FROM usage_records)") == [(0,)]

    # the INSERT … SELECT rollups are the very rows metering's own roll-up makes from the same records
    columns = [c for c in query(fast_path, "PRAGMA table_info(usage_daily)")]
    names = [c[1] for c in columns if c[1] != "id"]
    ordered = f"SELECT {', '.join(names)} FROM usage_daily ORDER BY local_day, key_id, billed_model, api, status_class"
    bulk = query(fast_path, ordered)
    db = database.open_database(resolve_target(str(fast_path)), now=NOW)
    try:
        from sqlalchemy import select, text

        from planctl.store.tables import UsageRecord

        with db.write(rollback=True) as session:
            records = [{c: getattr(r, c) for c in UsageRecord.model_fields if c != "id"}
                       for r in session.execute(select(UsageRecord)).scalars()]
            session.execute(text("DELETE FROM usage_daily"))
            from planctl.store import meter
            from planctl.store.sql import Tx

            meter.roll_up(Tx.within(session), rollups(records))
            again = [tuple(row) for row in session.execute(text(ordered))]
    finally:
        db.dispose()
    assert bulk == again

    # the same seed through metering makes the same records, so the same total cost
    charged = run_demo(charged_path, caller, days=3, records=3_000, accounts=4, seed=5)
    assert charged.consumption == summary.consumption
    assert fingerprint(charged_path) == fingerprint(fast_path)


def test_a_database_with_usage_is_refused_without_yes(tmp_path: Path, cli_factory: Any) -> None:
    path = tmp_path / "demo.db"
    cli = cli_factory(str(path))
    cli.ok("demo", "--days", "1", "--records", "200", "--accounts", "2")
    before = sqlite_dump(path)
    result = cli("demo", "--days", "1", "--records", "200", "--accounts", "2")
    assert result.exit_code == 4, result.stderr
    assert "already has usage records" in result.stderr and "--yes" in result.stderr
    assert sqlite_dump(path) == before
    again = json.loads(cli.ok("demo", "--days", "1", "--records", "200", "--accounts", "2", "--yes", "--json").stdout)
    assert again["records"] == 200 and again["request_id_prefix"] == "req-demo42r2-"
    assert query(path, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_records") == [(400, 400)]
    assert query(path, "SELECT name FROM accounts WHERE name LIKE 'Acme Labs%' ORDER BY name") == [
        ("Acme Labs",), ("Acme Labs (2)",), ("Acme Labs Research",), ("Acme Labs Research (2)",)]
    assert query(path, "SELECT COUNT(*) FROM subscriptions") == [(4,)]
    assert all(c["ok"] for c in json.loads(cli.ok("db", "check", "--json").stdout))


def test_json_summary_shape(tmp_path: Path, cli_factory: Any) -> None:
    cli = cli_factory(str(tmp_path / "demo.db"))
    result = cli.ok("demo", "--days", "2", "--records", "300", "--accounts", "1", "--seed", "3", "--fast", "--json")
    data = json.loads(result.stdout)
    assert set(data) == SUMMARY_KEYS
    assert (data["mode"], data["charged"], data["seed"], data["days"]) == ("fast", False, 3, 2)
    assert (data["accounts"], data["subscriptions"], data["records"], data["rejected"]) == (2, 1, 300, 0)
    assert isinstance(data["keys"], int) and data["keys"] >= 5
    assert data["consumption"].count(".") == 1 and len(data["consumption"].split(".")[1]) == 6
    assert data["since"].endswith("+00:00") and data["until"] > data["since"]
    assert isinstance(data["elapsed_seconds"], float) and isinstance(data["notes"], list) and data["notes"]
    assert "not charged" in data["notes"][0]
    human = cli.ok("demo", "--records", "10", "--accounts", "1", "--yes")
    assert human.stdout == "" and "usage records over 7 days" in human.stderr and "charged through metering" \
        in human.stderr


def test_help_has_an_example_and_the_module_stays_light() -> None:
    from typer.testing import CliRunner

    from planctl.cli import app

    help_text = CliRunner().invoke(app, ["demo", "--help"]).stdout
    assert "Example:" in help_text and "--fast" in help_text and "NOT charged" in help_text
    code = ("import sys, planctl.cli.demo; "
            "print([m for m in ('sqlalchemy', 'sqlmodel') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def cli_factory() -> Any:
    from helpers import Cli

    return Cli


def test_the_demo_obeys_the_limits_it_demonstrates(tmp_path: Path, caller: Any) -> None:
    """Tight plans: traffic goes through admission; refused requests are recorded as refused, never charged,
    and no subscription ends up using more credit than it was granted."""
    from planctl.services import catalog, database, demo
    from planctl.store.location import resolve_target

    path = tmp_path / "tight.db"
    db = database.open_database(resolve_target(str(path)), now=NOW)
    try:
        for slug in ("codex-weekly", "codex-lite-monthly"):
            catalog.update_plan(db, slug, {"total_credit": "6", "period_credit": "2"}, caller=caller,
                                now=NOW - timedelta(days=30))
        summary = demo.run(db, demo.DemoSpec(days=3, records=2_000, accounts=5, seed=3), caller=caller, now=NOW)
        results = database.check(db)
    finally:
        db.dispose()
    assert all(r.ok for r in results), [(r.name, r.detail) for r in results if not r.ok]
    assert summary.refused > 0 and summary.records == 2_000 and summary.rejected == 0
    assert any("refused by admission" in n for n in summary.notes)
    assert query(path, "SELECT id, credit_used, credit_granted FROM subscriptions "
                       "WHERE credit_used > credit_granted") == []
    refused = query(path, "SELECT COUNT(*), SUM(cost), SUM(charged_plan + charged_extra + charged_payg), "
                          "MIN(status_code), MAX(status_code) FROM usage_records WHERE error LIKE 'refused by admission: %'")
    assert refused == [(summary.refused, 0, 0, 429, 429)]
    assert query(path, "SELECT SUM(cost) = SUM(charged_plan + charged_extra + charged_payg) FROM usage_records") \
        == [(1,)]
    assert query(path, "SELECT COUNT(*) FROM reservations WHERE status = 'held'") == [(0,)]


@pytest.mark.parametrize("fast", [False, True], ids=["charged", "fast"])
def test_db_check_is_clean_after_the_demo(tmp_path: Path, caller: Any, fast: bool) -> None:
    from planctl.services import database

    path = tmp_path / "demo.db"
    run_demo(path, caller, days=2, records=600, accounts=3, seed=11, fast=fast)
    db = database.open_database(resolve_target_of(path), now=NOW)
    try:
        assert all(r.ok for r in database.check(db))
    finally:
        db.dispose()
    assert query(path, "SELECT COUNT(*) FROM subscriptions WHERE credit_used > credit_granted") == [(0,)]


def resolve_target_of(path: Path) -> Any:
    from planctl.store.location import resolve_target

    return resolve_target(str(path))
