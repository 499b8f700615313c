"""CLI tests of sales: buy, renew, upgrade, extra buy, topup, refund, subscriptions, orders.

Driven through Typer's CliRunner (`cli` fixture) against a fresh, seeded database
per test; also run against PostgreSQL when PLANCTL_TEST_DATABASE_URL is set. The
CLI reads the clock, so every boundary is pinned with freezegun (times in UTC:
Beijing midnight is 16:00 UTC the day before). Refusals are checked for their exit
code, exactly one error line on stderr (its reason code with the global --json),
nothing on stdout, and a database left exactly as it was.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from helpers import ENDS, ISO, NOW, OPENS, SECRET_RE, US, db_dump as dump, refusals, utc, z


PRO, LITE, MAX, DAY = "codex-pro-monthly", "codex-lite-monthly", "codex-max-monthly", "codex-day-pass"
ORDER_KEYS = {
    "id", "kind", "account_id", "subscription_id", "item", "currency", "list_price", "discount_code",
    "discount_amount", "payable", "refunded", "payment_method", "payment_ref", "status", "credit_granted",
    "validity_granted", "reason", "idempotency_key", "created_at", "paid_at",
}
SUB_KEYS = {
    "id", "account_id", "plan", "plan_version", "status", "starts_at", "ends_at", "credit_granted",
    "credit_used", "credit_remaining", "overdrawn", "period_limit_enabled", "cancelled_at",
}
KEY_KEYS = {"id", "name", "kind", "subscription_id", "group", "status", "prefix", "last4", "created_at"}
SALE_KEYS = {"order", "subscription", "key", "replayed", "dry_run", "notes"}
REFUND_KEYS = {"order", "amount", "currency", "credit_reversed", "policy", "reason", "details",
               "cancelled_subscription", "credit_note", "keys_stopped", "dry_run"}


# ---------------------------------------------------------------- helpers


def at(cli: Any, when: datetime, *args: str) -> Any:
    with freeze_time(when):
        return cli(*args)


def ok(cli: Any, when: datetime, *args: str) -> Any:
    with freeze_time(when):
        return cli.ok(*args)


def js(cli: Any, when: datetime, *args: str) -> Any:
    with freeze_time(when):
        return cli.json(*args)


def acme(cli: Any, name: str = "acme") -> str:
    return js(cli, NOW, "accounts", "create", name)["id"]


def buy(cli: Any, *args: str, plan: str = PRO, when: datetime = NOW, account: str = "acme") -> dict[str, Any]:
    return js(cli, when, "buy", plan, "--account", account, *args)


def sub_show(cli: Any, sub: str, when: datetime = NOW) -> dict[str, Any]:
    return js(cli, when, "subscriptions", "show", sub)


def order_show(cli: Any, order: str) -> dict[str, Any]:
    return js(cli, NOW, "orders", "show", order)


def db_check_ok(cli: Any) -> None:
    checks = js(cli, NOW, "db", "check")
    assert [c for c in checks if not c["ok"]] == [], checks
    assert {c["check"] for c in checks} >= {"ledger_plan_credit", "ledger_extra_usage", "ledger_payg"}


# ---------------------------------------------------------------- buy and the secret


def test_buy_json_shape_and_values(cli: Any) -> None:
    acc = acme(cli)
    sale = buy(cli, "--payment-method", "alipay", "--payment-ref", "2026112122001")
    assert set(sale) == SALE_KEYS
    assert (sale["replayed"], sale["dry_run"], sale["notes"]) == (False, False, [])
    order, sub, key = sale["order"], sale["subscription"], sale["key"]
    assert set(order) == ORDER_KEYS and set(sub) == SUB_KEYS and set(key) == KEY_KEYS | {"secret"}
    assert order == {
        "id": "ORD-20261121-0001", "kind": "buy", "account_id": acc, "subscription_id": sub["id"], "item": PRO,
        "currency": "CNY", "list_price": "299.00", "discount_code": None, "discount_amount": "0.00",
        "payable": "299.00", "refunded": "0.00", "payment_method": "alipay", "payment_ref": "2026112122001",
        "status": "paid", "credit_granted": "4500.000000", "validity_granted": "1mo", "reason": None,
        "idempotency_key": None, "created_at": z(NOW), "paid_at": z(NOW),
    }
    assert {k: v for k, v in sub.items() if k not in ("id", "plan_version")} == {
        "account_id": acc, "plan": PRO, "status": "active", "starts_at": z(NOW), "ends_at": z(ENDS),
        "credit_granted": "4500.000000", "credit_used": "0.000000", "credit_remaining": "4500.000000", "overdrawn": None,
        "period_limit_enabled": True, "cancelled_at": None,
    }
    assert sub["id"].startswith("sub_")
    assert (key["name"], key["kind"], key["subscription_id"], key["status"], key["group"]) == (
        f"Subscription Access - {PRO}", "subscription", sub["id"], "active", "default")
    assert SECRET_RE.match(key["secret"]), key["secret"]
    assert (key["prefix"], key["last4"]) == (key["secret"][:7], key["secret"][-4:])


def _leaks(text: str, secret: str) -> bool:
    return secret in text or secret[7:-4] in text  # the whole secret, or its hidden middle


def test_the_secret_is_shown_once_and_stored_nowhere(cli: Any, db_url: str) -> None:
    acme(cli)
    sale = buy(cli)
    secret, sub, order = sale["key"]["secret"], sale["subscription"]["id"], sale["order"]["id"]
    text_sale = ok(cli, NOW, "buy", PRO, "--account", "acme")
    printed = re.findall(r"sk-[A-Za-z0-9_-]{40,}", text_sale.stdout)
    assert len(printed) == 1 and "shown once" in text_sale.stdout
    secrets = [secret, printed[0]]

    later = [ok(cli, NOW, *args).stdout for args in (
        ("subscriptions", "show", sub, "--json"), ("subscriptions", "show", sub), ("subscriptions", "list", "--json"),
        ("orders", "show", order, "--json"), ("orders", "list", "--json"), ("audit", "--json"),
        ("keys", "list", "--json"), ("keys", "show", sale["key"]["id"], "--json"), ("keys", "list"),
        ("buy", PRO, "--account", "acme", "--dry-run", "--json"))]
    for s in secrets:
        assert not any(_leaks(out, s) for out in later)
    shown = sub_show(cli, sub)["keys"]
    assert shown == [{k: v for k, v in sale["key"].items() if k != "secret"}]  # masked: prefix and last four only

    rows = "\n".join(dump(db_url))
    for s in secrets:
        assert not _leaks(rows, s)
        assert hashlib.sha256(s.encode()).hexdigest() in rows  # stored as its digest
    if "://" not in db_url:  # the raw SQLite files, write-ahead log and shared memory included
        files = [Path(db_url + suffix) for suffix in ("", "-wal", "-shm")]
        raw = b"".join(f.read_bytes() for f in files if f.exists())
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
        for s in secrets:
            assert s.encode() not in raw and s[7:-4].encode() not in raw


def test_second_buy_gets_a_distinct_key_name(cli: Any) -> None:
    acme(cli)
    first, second = buy(cli), buy(cli)
    assert first["key"]["name"] == f"Subscription Access - {PRO}"
    assert second["key"]["name"] != first["key"]["name"]
    assert second["key"]["name"].startswith(f"Subscription Access - {PRO}")
    assert [k["name"] for k in sub_show(cli, second["subscription"]["id"])["keys"]] == [second["key"]["name"]]
    assert [k["name"] for k in sub_show(cli, first["subscription"]["id"])["keys"]] == [first["key"]["name"]]


@pytest.mark.parametrize(("bought", "ends"), [
    (utc(2026, 1, 30, 17), utc(2026, 2, 27, 17)),  # Jan 31 01:00 Beijing -> Feb 28 01:00 Beijing
    (utc(2028, 1, 30, 17), utc(2028, 2, 28, 17)),  # leap year: Feb 29 01:00 Beijing
    (utc(2026, 1, 30, 16), utc(2026, 2, 27, 16)),  # Jan 31 00:00 Beijing (still Jan 30 in UTC) -> Feb 28 00:00
    (utc(2026, 1, 30, 15, 59, 59), utc(2026, 2, 28, 15, 59, 59)),  # Jan 30 23:59:59 Beijing -> Feb 28 23:59:59
], ids=["jan31", "jan31-leap", "beijing-midnight", "jan30"])
def test_monthly_term_keeps_the_beijing_wall_time(cli: Any, bought: datetime, ends: datetime) -> None:
    with freeze_time(bought):
        cli.ok("accounts", "create", "acme")
        sub = cli.json("buy", PRO, "--account", "acme")["subscription"]
    assert (sub["starts_at"], sub["ends_at"]) == (z(bought), z(ends))


def test_three_stacked_renewals(cli: Any) -> None:
    bought = utc(2026, 1, 30, 17)  # Jan 31 Beijing: Feb 28, Mar 31, Apr 30, May 31
    ends = [utc(2026, 2, 27, 17), utc(2026, 3, 30, 17), utc(2026, 4, 29, 17), utc(2026, 5, 30, 17)]
    with freeze_time(bought):
        cli.ok("accounts", "create", "acme")
        sale = cli.json("buy", PRO, "--account", "acme")
    sub = sale["subscription"]["id"]
    for n in (1, 2, 3):
        renewed = js(cli, ends[n - 1] - timedelta(days=1), "renew", sub, "--payment-method", "card")
        assert renewed["order"]["kind"] == "renew" and renewed["key"] is None
        assert renewed["subscription"]["ends_at"] == z(ends[n])
        assert renewed["subscription"]["credit_granted"] == f"{4500 * (n + 1)}.000000"
    shown = sub_show(cli, sub, ends[3] - timedelta(days=1))
    assert (shown["starts_at"], shown["ends_at"], shown["credit_granted"]) == (z(bought), z(ends[3]), "18000.000000")
    assert [k["id"] for k in shown["keys"]] == [sale["key"]["id"]]
    assert [o["kind"] for o in shown["orders"]] == ["buy", "renew", "renew", "renew"]
    db_check_ok(cli)


def test_buy_with_a_later_start(cli: Any, db_url: str) -> None:
    acme(cli)
    sub = buy(cli, "--start", "2026-12-01T16:00:00Z")["subscription"]  # Dec 2 00:00 Beijing
    assert (sub["starts_at"], sub["ends_at"], sub["status"]) == (
        "2026-12-01T16:00:00+00:00", "2027-01-01T16:00:00+00:00", "not-started")
    assert sub_show(cli, sub["id"], utc(2026, 12, 1, 16))["status"] == "active"
    sub = buy(cli, "--start", "2026-12-02", when=NOW, plan=LITE)["subscription"]
    assert ISO.match(sub["starts_at"]) and sub["starts_at"] > z(NOW)
    refusals(cli, db_url, [
        (("buy", PRO, "--account", "acme", "--start", "2026-11-20T00:00:00Z"), 2, "invalid_input", "in the past"),
        (("buy", PRO, "--account", "acme", "--start", "2028-01-01T00:00:00Z"), 2, "invalid_input", "a year ahead"),
        (("buy", PRO, "--account", "acme", "--start", "next tuesday"), 2, "invalid_input", "--start"),
    ])


def test_dry_run_prints_the_quote_and_changes_nothing(cli: Any, db_url: str) -> None:
    acme(cli)
    ok(cli, NOW, "discounts", "create", "TENOFF", "--value", "10%")
    before = dump(db_url)
    text = ok(cli, NOW, "--tz", "UTC", "buy", PRO, "--account", "acme", "--code", "TENOFF", "--dry-run")
    for label, value in (("List price", "299.00"), ("Discount", "29.90"), ("Payable", "269.10"),
                         ("Credit granted", "4500.00"), ("Validity granted", "1mo"), ("Ends", "2026-12-21 04:00")):
        assert re.search(rf"^{label}\s+{re.escape(value)}\s*$", text.stdout, re.M), (label, text.stdout)
    assert "dry run" in text.stderr and "sk-" not in text.stdout + text.stderr
    for label in ("Order", "Subscription"):  # numbers only a real sale assigns are not invented
        assert re.search(rf"^{label}\s+assigned on purchase\s*$", text.stdout, re.M), (label, text.stdout)
    assert "ORD-" not in text.stdout and "sub_" not in text.stdout
    quote = js(cli, NOW, "buy", PRO, "--account", "acme", "--code", "TENOFF", "--dry-run")
    assert quote["dry_run"] is True and "secret" not in quote["key"]
    assert (quote["order"]["list_price"], quote["order"]["discount_amount"], quote["order"]["payable"]) == (
        "299.00", "29.90", "269.10")
    assert (quote["order"]["credit_granted"], quote["order"]["validity_granted"]) == ("4500.000000", "1mo")
    assert quote["subscription"]["ends_at"] == z(ENDS)
    assert dump(db_url) == before
    assert js(cli, NOW, "discounts", "show", "TENOFF")["redemptions"] == 0
    assert (quote["order"]["id"], quote["order"]["subscription_id"], quote["subscription"]["id"]) == (None,) * 3
    assert {k: quote["key"][k] for k in ("id", "subscription_id", "prefix", "last4")} == dict.fromkeys(
        ("id", "subscription_id", "prefix", "last4"))
    assert quote["subscription"]["plan_version"] == 1 and "plan_version_id" not in quote["subscription"]
    real = buy(cli, "--code", "TENOFF")
    assert (real["order"]["id"], real["order"]["payable"]) == ("ORD-20261121-0001", "269.10")


# ---------------------------------------------------------------- renew


@pytest.mark.parametrize("when", [OPENS, ENDS - US], ids=["first-instant", "last-instant"])
def test_renewal_inside_the_window(cli: Any, when: datetime) -> None:
    acme(cli)
    sale = buy(cli)
    renewed = js(cli, when, "renew", sale["subscription"]["id"])
    assert renewed["subscription"]["ends_at"] == z(utc(2027, 1, 21, 4))
    assert renewed["subscription"]["credit_granted"] == "9000.000000"
    assert renewed["order"]["created_at"] == z(when)


def test_renewal_refusals(cli: Any, db_url: str) -> None:
    acme(cli)
    sub = buy(cli)["subscription"]["id"]
    refusals(cli, db_url, [(("renew", sub), 4, "renewal_window_not_open", "renewal opens at 2026-12-18 12:00 CST")],
             when=OPENS - US)
    refusals(cli, db_url, [(("renew", sub), 4, "subscription_expired", "expired at 2026-12-21 12:00 CST")], when=ENDS)
    ok(cli, NOW, "plans", "update", PRO, "--no-renewal")
    refusals(cli, db_url, [(("renew", sub), 4, "renewal_disabled", "renewal is not enabled")], when=OPENS)
    ok(cli, NOW, "plans", "retire", PRO)
    refusals(cli, db_url, [(("renew", sub), 4, "plan_not_on_sale", "removed from sale")], when=OPENS)
    refusals(cli, db_url, [
        (("renew", "sub_nothere"), 3, "not_found", "unknown subscription"),
        (("renew", sub, "--direct"), 2, "invalid_input", "--reason"),
        (("renew", sub, "--direct", "--reason", " "), 2, "invalid_input", "--reason"),
    ], when=OPENS)


def test_direct_renewal_of_an_expired_subscription(cli: Any) -> None:
    acme(cli)
    sale = buy(cli)
    sub = sale["subscription"]["id"]
    later = utc(2027, 1, 10, 2)  # Jan 10 10:00 Beijing
    assert sub_show(cli, sub, later)["status"] == "expired"
    result = js(cli, later, "renew", sub, "--direct", "--reason", "ticket 4411")
    assert result["order"]["kind"] == "direct-renewal" and result["order"]["reason"] == "ticket 4411"
    assert any("available again" in n for n in result["notes"])
    shown = sub_show(cli, sub, later)
    assert (shown["status"], shown["starts_at"], shown["ends_at"]) == ("active", z(NOW), z(utc(2027, 2, 10, 2)))
    assert shown["credit_granted"] == "9000.000000"
    assert [k["id"] for k in shown["keys"]] == [sale["key"]["id"]] and shown["keys"][0]["status"] == "active"
    listed = js(cli, later, "orders", "list", "--kind", "direct-renewal")
    assert [o["id"] for o in listed] == [result["order"]["id"]]


def test_direct_renewal_of_a_valid_subscription_extends_from_its_end(cli: Any) -> None:
    acme(cli)
    sub = buy(cli)["subscription"]["id"]
    result = js(cli, NOW + timedelta(days=1), "renew", sub, "--direct", "--reason", "goodwill")
    assert result["subscription"]["ends_at"] == z(utc(2027, 1, 21, 4)) and result["notes"] == []


# ---------------------------------------------------------------- upgrade


@pytest.mark.parametrize(("when", "payable", "credit"), [
    (NOW, "200.00", "3000.000000"),
    (NOW + timedelta(days=15), "100.00", "1500.000000"),
    (ENDS - timedelta(seconds=1), "0.01", "0.001158"),
], ids=["start", "middle", "last-second"])
def test_upgrade_with_prorate(cli: Any, when: datetime, payable: str, credit: str) -> None:
    acme(cli)
    sale = buy(cli, plan=LITE)
    sub = sale["subscription"]["id"]
    result = js(cli, when, "upgrade", sub, "--to", PRO, "--prorate")
    assert (result["order"]["kind"], result["order"]["item"], result["order"]["payable"]) == ("upgrade", PRO, payable)
    assert result["order"]["credit_granted"] == credit
    shown = sub_show(cli, sub, when)
    assert (shown["plan"], shown["starts_at"], shown["ends_at"]) == (PRO, z(NOW), z(ENDS))
    # the subscription key is named after the plan it now has
    renamed = {k: v for k, v in sale["key"].items() if k != "secret"} | {"name": f"Subscription Access - {PRO}"}
    assert shown["keys"] == [renamed] and shown["key_counts"] == {"active": 1} and shown["keys_total"] == 1
    db_check_ok(cli)


def test_upgrade_without_prorate_and_its_refusals(cli: Any, db_url: str) -> None:
    acme(cli)
    sub = buy(cli, plan=LITE)["subscription"]["id"]
    assert js(cli, NOW + timedelta(days=15), "upgrade", sub, "--to", PRO)["order"]["payable"] == "200.00"
    refusals(cli, db_url, [
        (("upgrade", sub, "--to", LITE), 4, "downgrade_refused", "renew the current plan"),
        (("upgrade", sub, "--to", PRO), 4, "downgrade_refused", "not above"),
        (("upgrade", sub, "--to", "codex-team-monthly"), 4, "upgrade_other_family", "one family"),
        (("upgrade", sub, "--to", "codex-nope"), 3, "not_found", "unknown plan"),
        (("upgrade", "sub_nothere", "--to", MAX), 3, "not_found", "unknown subscription"),
        (("upgrade", sub), 2, None, "--to"),
    ], when=NOW + timedelta(days=16))
    refusals(cli, db_url, [(("upgrade", sub, "--to", MAX), 4, "subscription_expired", "expired")], when=ENDS)


# ---------------------------------------------------------------- plan versions


def test_editing_the_plan_does_not_change_a_sold_subscription(cli: Any) -> None:
    acme(cli)
    sale = buy(cli)
    sub = sale["subscription"]
    ok(cli, NOW, "plans", "update", PRO, "--rpd", "9000", "--price", "279", "--total-credit", "9000")
    shown = sub_show(cli, sub["id"])
    assert (shown["plan_version"], shown["credit_granted"]) == (sub["plan_version"], "4500.000000") == (1, "4500.000000")
    assert order_show(cli, sale["order"]["id"])["list_price"] == "299.00"
    again = buy(cli)
    assert (again["order"]["payable"], again["subscription"]["credit_granted"]) == ("279.00", "9000.000000")
    assert again["subscription"]["plan_version"] == 2


# ---------------------------------------------------------------- discount codes


@pytest.mark.parametrize(("value", "discount", "payable"), [("10%", "29.90", "269.10"), ("20", "20.00", "279.00")])
def test_buy_with_a_code(cli: Any, value: str, discount: str, payable: str) -> None:
    acme(cli)
    ok(cli, NOW, "discounts", "create", "SPRING", "--value", value, "--plan", PRO)
    order = buy(cli, "--code", "spring", "--payment-method", "alipay")["order"]
    assert (order["discount_code"], order["discount_amount"], order["payable"], order["list_price"]) == (
        "SPRING", discount, payable, "299.00")
    assert js(cli, NOW, "discounts", "show", "SPRING")["redemptions"] == 1
    assert order_show(cli, order["id"])["discount_code"] == "SPRING"


def test_invalid_codes_are_refused_with_their_reason(cli: Any, db_url: str) -> None:
    acme(cli)
    for args in (("OLD10", "--until", "2026-11-21T03:59:59Z"), ("ONCE", "--max-redemptions", "1"),
                 ("MAXONLY", "--plan", MAX), ("ALIPAY", "--payment-method", "alipay"), ("BIG", "--min-amount", "300")):
        ok(cli, NOW - timedelta(days=1), "discounts", "create", args[0], "--value", "10%", *args[1:])
    buy(cli, "--code", "ONCE")
    base = ("buy", PRO, "--account", "acme", "--payment-method", "card", "--code")
    refusals(cli, db_url, [
        ((*base, "OLD10"), 4, "code_expired", "expired at 2026-11-21 11:59 CST"),
        ((*base, "ONCE"), 4, "code_used_up", "used up"),
        ((*base, "MAXONLY"), 4, "code_not_for_plan", f"not for {PRO}"),
        ((*base, "ALIPAY"), 4, "code_payment_method", "not supported with payment method card"),
        ((*base, "BIG"), 4, "code_below_minimum", "at least 300.00 CNY"),
        ((*base, "NOSUCH"), 3, "not_found", "unknown discount code 'NOSUCH'"),
        ((*base, "x"), 2, "invalid_input", "invalid discount code"),
    ])
    for name, text in (("OLD10", "expired"), ("BIG", "at least 300.00")):
        sale = js(cli, NOW, *base, name, "--ignore-invalid-code")
        order = sale["order"]
        assert (order["payable"], order["discount_code"], order["discount_amount"]) == ("299.00", None, "0.00")
        assert [n for n in sale["notes"] if n.startswith("code not applied, sold at list price: ") and text in n]
        result = ok(cli, NOW, *base, name, "--ignore-invalid-code")
        assert re.search(rf"^note: code not applied, sold at list price: .*{text}", result.stderr, re.M)
        assert re.search(r"^Payable\s+299\.00\s*$", result.stdout, re.M)
    assert js(cli, NOW, "discounts", "show", "ONCE")["redemptions"] == 1
    assert js(cli, NOW, "discounts", "show", "BIG")["redemptions"] == 0


# ---------------------------------------------------------------- idempotency


def test_idempotency_key_replays_the_order(cli: Any, db_url: str) -> None:
    acme(cli)
    first = buy(cli, "--idempotency-key", "shop-7781", "--payment-method", "alipay")
    before = dump(db_url)
    again = buy(cli, "--idempotency-key", "shop-7781", "--payment-method", "alipay", when=NOW + timedelta(minutes=3))
    assert dump(db_url) == before
    assert (again["replayed"], again["order"]["id"], again["key"]) == (True, first["order"]["id"], None)
    assert again["order"] == first["order"] and again["order"]["idempotency_key"] == "shop-7781"
    text = ok(cli, NOW, "buy", PRO, "--account", "acme", "--idempotency-key", "shop-7781", "--payment-method", "alipay")
    assert "sk-" not in text.stdout and "nothing was charged again" in text.stderr
    assert [o["id"] for o in js(cli, NOW, "orders", "list")] == [first["order"]["id"]]
    refusals(cli, db_url, [
        (("buy", MAX, "--account", "acme", "--idempotency-key", "shop-7781", "--payment-method", "alipay"), 6,
         "idempotency_mismatch", "already used for a different request"),
        (("buy", PRO, "--account", "acme", "--idempotency-key", "shop-7781"), 6, "idempotency_mismatch",
         first["order"]["id"]),
    ])


# ---------------------------------------------------------------- extra usage and top-ups


def test_extra_buy_and_topups(cli: Any, db_url: str) -> None:
    acme(cli)
    extra = js(cli, NOW, "extra", "buy", "extra-50", "--account", "acme")
    assert (extra["order"]["kind"], extra["order"]["payable"], extra["order"]["credit_granted"],
            extra["order"]["validity_granted"], extra["subscription"], extra["key"]) == (
        "extra", "15.00", "50.000000", "30d", None, None)
    rate = js(cli, NOW, "topup", "acme", "12.345678")
    assert (rate["order"]["kind"], rate["order"]["item"], rate["order"]["payable"], rate["order"]["credit_granted"]) == (
        "topup", "payg-standard", "12.35", "12.345678")  # 12.345678 × 1.00, rounded up
    assert js(cli, NOW, "topup", "acme", "0.001")["order"]["payable"] == "0.01"
    pack = js(cli, NOW, "topup", "acme", "--product", "payg-100")
    assert (pack["order"]["payable"], pack["order"]["credit_granted"]) == ("95.00", "100.000000")
    assert js(cli, NOW, "accounts", "show", "acme")["payg_balance"] == "112.346678"
    refusals(cli, db_url, [
        (("topup", "acme", "abc"), 2, "invalid_input", "AMOUNT"),
        (("topup", "acme", "0"), 2, "invalid_input", "AMOUNT"),
        (("topup", "acme", "1.0000001"), 2, "invalid_input", "AMOUNT"),
        (("topup", "acme", "--", "-5"), 2, "invalid_input", "AMOUNT"),
        (("topup", "acme"), 2, "invalid_input", "amount of credit"),
        (("topup", "acme", "5", "--product", "payg-100"), 2, "invalid_input", "fixed pack"),
        (("topup", "acme", "5", "--product", "payg-nope"), 3, "not_found", "pay-as-you-go"),
        (("topup", "nobody", "5"), 3, "not_found", "unknown account"),
        (("extra", "buy", "extra-999", "--account", "acme"), 3, "not_found", "extra-usage pack"),
    ])
    db_check_ok(cli)


# ---------------------------------------------------------------- refunds


def test_full_refund_cancels_the_subscription(cli: Any) -> None:
    acme(cli)
    sale = buy(cli)
    order, sub = sale["order"]["id"], sale["subscription"]["id"]
    when = NOW + timedelta(days=7) - US
    result = js(cli, when, "refund", order, "--yes", "--plan", "Codex Pro", "--key-name", sale["key"]["name"],
                "--request-time", "2026-11-21T11:58:00+08:00", "--request-id", "req_8f2a")
    assert set(result) == REFUND_KEYS
    assert {k: v for k, v in result.items() if k != "order"} == {
        "amount": "299.00", "currency": "CNY", "credit_reversed": "4500.000000", "policy": "unused:7d",
        "reason": "policy unused:7d", "cancelled_subscription": sub, "credit_note": None, "dry_run": False,
        "keys_stopped": 1,
        "details": {"plan": "Codex Pro", "key_name": f"Subscription Access - {PRO}",
                    "request_time": "2026-11-21T11:58:00+08:00", "request_id": "req_8f2a"},
    }
    assert (result["order"]["status"], result["order"]["refunded"]) == ("refunded", "299.00")
    shown = sub_show(cli, sub, when)
    assert (shown["status"], shown["cancelled_at"], shown["credit_granted"]) == ("cancelled", z(when), "0.000000")
    assert order_show(cli, order)["status"] == "refunded"
    assert [o["id"] for o in js(cli, when, "orders", "list", "--status", "refunded")] == [order]
    db_check_ok(cli)


def test_refund_refusals(cli: Any, db_url: str) -> None:
    acme(cli)
    pro = buy(cli)["order"]["id"]
    day = buy(cli, plan=DAY)["order"]["id"]  # refund policy "none"
    refusals(cli, db_url, [(("refund", pro, "--yes"), 4, "refund_window_closed", "closed at 2026-11-28 12:00 CST")],
             when=NOW + timedelta(days=7))
    refusals(cli, db_url, [
        (("refund", day, "--yes"), 4, "refund_not_allowed", "--amount and --reason"),
        (("refund", day, "--yes", "--amount", "5"), 2, "invalid_input", "--reason"),
        (("refund", day, "--yes", "--amount", "9.91", "--reason", "x"), 4, "refund_exceeds_paid", "exceeds"),
        (("refund", day, "--yes", "--amount", "abc", "--reason", "x"), 2, "invalid_input", "abc"),
        (("refund", day, "--yes", "--amount", "-1", "--reason", "x"), 2, "invalid_input", "-1"),
        (("refund", day, "--yes", "--amount", "1.234", "--reason", "x"), 2, "invalid_input", "1.234"),
        (("refund", day, "--yes", "--amount", "0", "--reason", "x"), 2, "invalid_input", "0"),
        (("refund", pro), 2, "invalid_input", "pass --yes"),
        (("refund", "ORD-20990101-0001", "--yes"), 3, "not_found", "unknown order"),
        (("orders", "show", "ORD-20990101-0001"), 3, "not_found", "unknown order"),
        (("subscriptions", "show", "sub_nothere"), 3, "not_found", "unknown subscription"),
    ])
    partial = js(cli, NOW, "refund", day, "--yes", "--amount", "5", "--reason", "outage")
    assert (partial["order"]["status"], partial["amount"], partial["policy"], partial["cancelled_subscription"]) == (
        "partially-refunded", "5.00", "override", None)
    refusals(cli, db_url, [(("refund", day, "--yes", "--amount", "4.91", "--reason", "x"), 4, "refund_exceeds_paid",
                            "exceeds")])
    rest = js(cli, NOW, "refund", day, "--yes", "--amount", "4.90", "--reason", "rest")
    assert (rest["order"]["status"], rest["order"]["refunded"]) == ("refunded", "9.90")
    refusals(cli, db_url, [
        (("refund", day, "--yes", "--amount", "1", "--reason", "x"), 4, "nothing_to_refund", "fully refunded"),
        (("refund", day, "--yes"), 4, "nothing_to_refund", "fully refunded"),
    ])


def test_refund_dry_run_changes_nothing(cli: Any, db_url: str) -> None:
    acme(cli)
    sale = buy(cli)
    before = dump(db_url)
    quote = js(cli, NOW, "refund", sale["order"]["id"], "--dry-run", "--request-id", "req_1")
    assert (quote["dry_run"], quote["amount"], quote["cancelled_subscription"]) == (
        True, "299.00", sale["subscription"]["id"])
    text = ok(cli, NOW, "refund", sale["order"]["id"], "--dry-run")
    assert "299.00" in text.stdout and "dry run" in text.stderr
    assert dump(db_url) == before


# ---------------------------------------------------------------- bad input and not found


def test_sale_refusals_change_nothing(cli: Any, db_url: str) -> None:
    acme(cli)
    sub = buy(cli)["subscription"]["id"]
    refusals(cli, db_url, [
        (("buy", "codex-nope", "--account", "acme"), 3, "not_found", "unknown plan 'codex-nope'"),
        (("buy", PRO, "--account", "nobody"), 3, "not_found", "unknown account 'nobody'"),
        (("buy", PRO), 2, None, "--account"),
        (("buy", PRO, "--account", "acme", "--payment-method", "ali pay"), 2, "invalid_input", "payment method"),
        (("buy", PRO, "--account", "acme", "--idempotency-key", "k" * 201), 2, "invalid_input", "idempotency key"),
        (("renew", sub, "--direct", "--reason", "x", "--code", "TENOFF"), 2, "invalid_input", "discount codes"),
        (("subscriptions", "show", "sub_nothere"), 3, "not_found", "unknown subscription"),
    ])
    ok(cli, NOW, "plans", "retire", "codex-weekly")
    refusals(cli, db_url, [
        (("buy", "codex-weekly", "--account", "acme"), 4, "plan_not_on_sale", "removed from sale"),
    ])


# ---------------------------------------------------------------- listings and JSON shapes


def test_subscription_and_order_listings(cli: Any) -> None:
    acc = acme(cli)
    acme(cli, "bob")
    a = buy(cli)
    b = buy(cli, plan=LITE, account="bob", when=NOW + timedelta(hours=1))
    when = NOW + timedelta(days=15, hours=1)  # half of b's term
    up = js(cli, when, "upgrade", b["subscription"]["id"], "--to", PRO, "--prorate")

    subs = js(cli, when, "subscriptions", "list")
    assert [s["id"] for s in subs] == [b["subscription"]["id"], a["subscription"]["id"]]  # newest first
    assert all(set(s) == SUB_KEYS | {"account_name"} for s in subs)
    assert [(s["plan"], s["account_name"]) for s in subs] == [(PRO, "bob"), (PRO, "acme")]
    assert subs[0]["credit_granted"] == "3000.000000" and subs[0]["credit_remaining"] == "3000.000000"
    assert [s["id"] for s in js(cli, when, "subscriptions", "list", "--account", "acme")] == [a["subscription"]["id"]]
    assert js(cli, ENDS + timedelta(hours=1), "subscriptions", "list", "--status", "active") == []
    assert len(js(cli, ENDS + timedelta(hours=1), "subscriptions", "list", "--status", "expired")) == 2

    shown = sub_show(cli, a["subscription"]["id"], when)
    assert set(shown) == SUB_KEYS | {"account_name", "keys", "keys_total", "key_counts", "orders"}
    assert {k: shown[k] for k in SUB_KEYS} == {**a["subscription"]}
    assert all(set(k) == KEY_KEYS for k in shown["keys"]) and all(set(o) == ORDER_KEYS for o in shown["orders"])
    assert shown["orders"] == [a["order"]]

    orders = js(cli, when, "orders", "list")
    assert [o["id"] for o in orders] == [up["order"]["id"], b["order"]["id"], a["order"]["id"]]
    assert all(set(o) == ORDER_KEYS | {"account_name"} for o in orders)
    assert [o["account_name"] for o in orders] == ["bob", "bob", "acme"]
    assert orders[0] == {"account_name": "bob",
        "id": "ORD-20261206-0001", "kind": "upgrade", "account_id": b["order"]["account_id"],
        "subscription_id": b["subscription"]["id"], "item": PRO, "currency": "CNY", "list_price": "100.00",
        "discount_code": None, "discount_amount": "0.00", "payable": "100.00", "refunded": "0.00",
        "payment_method": "manual", "payment_ref": None, "status": "paid", "credit_granted": "1500.000000",
        "validity_granted": None, "reason": None, "idempotency_key": None,
        "created_at": z(when), "paid_at": z(when),
    }
    assert order_show(cli, a["order"]["id"]) == a["order"]
    assert order_show(cli, a["order"]["id"].lower())["id"] == a["order"]["id"]
    assert [o["id"] for o in js(cli, when, "orders", "list", "--account", "acme")] == [a["order"]["id"]]
    assert [o["id"] for o in js(cli, when, "orders", "list", "--kind", "upgrade")] == [up["order"]["id"]]
    assert [o["id"] for o in js(cli, when, "orders", "list", "--subscription", b["subscription"]["id"])] == [
        up["order"]["id"], b["order"]["id"]]
    csv = ok(cli, when, "orders", "list", "--csv").stdout.splitlines()
    assert len(csv) == 4 and csv[0].startswith("id,")
    assert acc == a["order"]["account_id"]


def test_listing_filters_reject_unknown_values(cli: Any, db_url: str) -> None:
    """A typo in a closed set of values is bad input (exit 2), not an empty listing."""
    acme(cli)
    buy(cli)
    refusals(cli, db_url, [
        (("subscriptions", "list", "--status", "actve"), 2, None, "actve"),
        (("orders", "list", "--kind", "bye"), 2, None, "bye"),
        (("orders", "list", "--status", "payed"), 2, None, "payed"),
    ])


def test_db_check_is_clean_after_a_mixed_sequence(cli: Any) -> None:
    acme(cli)
    acme(cli, "bob")
    ok(cli, NOW, "discounts", "create", "TENOFF", "--value", "10%")
    a = buy(cli, "--code", "TENOFF", plan=LITE)
    b = buy(cli, "--idempotency-key", "k1", account="bob")
    buy(cli, "--idempotency-key", "k1", account="bob")
    ok(cli, NOW + timedelta(days=2), "upgrade", a["subscription"]["id"], "--to", PRO, "--prorate")
    ok(cli, OPENS, "renew", b["subscription"]["id"])
    ok(cli, ENDS + timedelta(days=1), "renew", a["subscription"]["id"], "--direct", "--reason", "ops")
    ok(cli, NOW, "extra", "buy", "extra-200", "--account", "acme")
    topup = js(cli, NOW, "topup", "bob", "7.5")["order"]["id"]
    ok(cli, NOW + timedelta(days=1), "refund", b["order"]["id"], "--amount", "50", "--reason", "partial", "--yes")
    ok(cli, NOW, "refund", topup, "--yes")
    day = buy(cli, plan=DAY, account="bob")["order"]["id"]
    ok(cli, NOW, "refund", day, "--amount", "9.90", "--reason", "full override", "--yes")
    assert len(js(cli, NOW, "orders", "list")) == 8  # the replayed buy made no order
    db_check_ok(cli)
