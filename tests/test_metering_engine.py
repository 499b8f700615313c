"""Metering on real databases (SPEC §5, issue 5): authorize with holds, usage record and
import, natural-period counters, extra usage, the periodic-limit switch, reservations,
`limits show`, and several processes admitting against one subscription.

The engine's functions (planctl/metering/) are called with an explicit `now` (and
`at` for records) on the `db` fixture, with the database's catalog cache
(`helpers.metering.catalogs`, as a Meter owns one); the CLI runs under freezegun on
the same database (`cli`). Both run on SQLite and, when PLANCTL_TEST_DATABASE_URL is
set, on PostgreSQL. Most plans here
bill a test model `unit` priced at 1 credit per million input tokens, so one input
token costs exactly 1 µcr and the arithmetic of each scenario is easy to follow.
Every scenario ends with `db check` (ledger, holds) clean.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from helpers import CR, ENDS, NOW, US, assert_refused, cr, db_dump as dump, error_reason, js, rows, run, utc, z

from helpers.metering import Bought, auth, buy, catalogs, checks_ok, install, plan, sold_meter, sub_row, team, use
from helpers.sales import account, sell

MIDNIGHT = datetime(2026, 11, 21, 16, 0, tzinfo=timezone.utc)  # 2026-11-22 00:00 in Beijing (after NOW)
TODAY = datetime(2026, 11, 20, 16, 0, tzinfo=timezone.utc)  # 2026-11-21 00:00 in Beijing (NOW's day)


# ---------------------------------------------------------------- catalog and sales helpers


EXTRA_LONG = {"slug": "extra-long", "name": "Extra 50 µcr, 30 days", "price": "1.00", "credit": "0.00005",
              "validity": "30d"}
EXTRA_SHORT = {"slug": "extra-short", "name": "Extra 30 µcr, 7 days", "price": "1.00", "credit": "0.00003",
               "validity": "7d"}


def extra(db: Any, caller: Any, acc: str, slug: str, now: datetime = NOW) -> int:
    return sell(db, caller, now, kind="extra", account=acc, item=slug).pack.id


def payg_key(db: Any, caller: Any, acc: str, name: str = "payg", **spec: Any) -> tuple[str, str]:
    from planctl.services import keys

    made = keys.create(db, keys.KeySpec(name=name, account=acc, payg=True, **spec), caller=caller, now=NOW)
    return made[0].key.id, made[0].secret


def key_row(db: Any, key: str) -> Any:
    from planctl.store.tables import ApiKey

    (row,) = rows(db, ApiKey, ApiKey.id == key)
    return row


def reservation(db: Any, res_id: str) -> Any:
    from planctl.store.tables import Reservation

    (row,) = rows(db, Reservation, Reservation.id == res_id)
    return row


def pack_rows(db: Any) -> dict[int, tuple[int, int, int]]:
    from planctl.store.tables import ExtraPack

    return {p.id: (p.credit, p.used, p.reserved) for p in rows(db, ExtraPack)}


def ledger(db: Any, *where: Any) -> list[tuple[str, str, int, Any, Any]]:
    from planctl.store.tables import LedgerEntry

    return [(e.kind, e.pool, e.amount, e.pack_id, e.request_id)
            for e in sorted(rows(db, LedgerEntry, *where), key=lambda e: e.id)]


# ---------------------------------------------------------------- every reason code from a real scenario


def _allowed(db: Any, secret: str, **kw: Any) -> None:
    a = auth(db, secret, **kw)
    assert a.allowed, (a.reason, a.message)


def sc_key_unknown(db: Any, caller: Any) -> dict[str, Any]:
    from planctl.services import keys

    _, b = sold_meter(db, caller)
    _allowed(db, b.secret)
    keys.rotate(db, b.key, grace=None, caller=caller, now=NOW)  # the old secret stops working at once
    return {"secret": b.secret}


def sc_key_disabled(db: Any, caller: Any) -> dict[str, Any]:
    from planctl.services import keys

    _, b = sold_meter(db, caller)
    _allowed(db, b.secret)
    keys.set_status(db, [b.key], "disable", caller=caller, now=NOW)
    return {"secret": b.secret}


def sc_key_revoked(db: Any, caller: Any) -> dict[str, Any]:
    from planctl.services import keys

    _, b = sold_meter(db, caller)
    key, secret = team(db, caller, b.sub)
    _allowed(db, secret)
    keys.set_status(db, [key], "revoke", caller=caller, now=NOW)
    return {"secret": secret}


def sc_key_expired(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller)
    _, secret = team(db, caller, b.sub, expires_at=NOW + timedelta(hours=1))
    _allowed(db, secret, now=NOW + timedelta(hours=1) - US)
    return {"secret": secret, "now": NOW + timedelta(hours=1)}


def sc_subscription_expired(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller)
    assert sub_row(db, b.sub).ends_at == ENDS
    _allowed(db, b.secret, now=ENDS - US)
    return {"secret": b.secret, "now": ENDS}


def sc_subscription_cancelled(db: Any, caller: Any) -> dict[str, Any]:
    from planctl.services import refunds

    acc, b = sold_meter(db, caller)
    extra(db, caller, acc, "extra-50")  # extra usage does not revive a cancelled subscription
    _allowed(db, b.secret)
    result = refunds.refund(db, b.order, amount=None, reason=None, details=None, caller=caller, now=NOW)
    assert result.cancelled_subscription == b.sub
    return {"secret": b.secret}


def sc_subscription_not_started(db: Any, caller: Any) -> dict[str, Any]:
    install(db, caller, plan("meter"))
    acc = account(db, caller)
    b = buy(db, caller, acc, "meter", start=NOW + timedelta(days=1))
    _allowed(db, b.secret, now=NOW + timedelta(days=1))
    return {"secret": b.secret}


def sc_model_not_in_plan(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller, models=["unit", "gpt-5.4"])
    _allowed(db, b.secret, model="gpt-5.4")
    return {"secret": b.secret, "model": "gpt-5.5"}


def sc_group_not_in_plan(db: Any, caller: Any) -> dict[str, Any]:
    """The key's group was in the plan when it was made; an upgrade moved the subscription to
    terms without it (renewing onto a newer plan version that dropped the group does the same)."""
    install(db, caller, plan("grp-1", family="grp", groups=["default", "priority"]),
            plan("grp-2", family="grp", tier=2, price="20.00", groups=["default"]))
    acc = account(db, caller)
    b = buy(db, caller, acc, "grp-1")
    _, secret = team(db, caller, b.sub, group="priority")
    _allowed(db, secret)
    sell(db, caller, NOW, kind="upgrade", subscription=b.sub, item="grp-2")
    _allowed(db, b.secret)  # the subscription key is in "default", still in the plan
    return {"secret": secret}


def sc_api_type_not_in_plan(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller, api_types=["responses"])
    _allowed(db, b.secret, model="claude-sonnet-4-5", api="responses")
    return {"secret": b.secret, "model": "claude-sonnet-4-5", "api": "claude"}


def sc_credit_exhausted(db: Any, caller: Any) -> dict[str, Any]:
    acc, b = sold_meter(db, caller, total_credit="0.001")
    extra(db, caller, acc, "extra-50")  # extra usage does not revive an exhausted subscription
    use(db, b.key, "r1", 999)
    _allowed(db, b.secret)  # 1 µcr is left
    use(db, b.key, "r2", 1)
    return {"secret": b.secret}


def sc_key_credit_cap_reached(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller)
    key, secret = team(db, caller, b.sub, credit_cap=300)
    use(db, key, "r1", 299)
    _allowed(db, secret)
    use(db, key, "r2", 1)
    _allowed(db, b.secret)  # the cap is the key's own: the subscription key goes on
    return {"secret": secret}


def sc_subuser_quota_reached(db: Any, caller: Any) -> dict[str, Any]:
    acc, b = sold_meter(db, caller, max_subusers=2)
    dev = account(db, caller, "dev", parent=acc, subuser_quota=300)
    key, secret = team(db, caller, b.sub, name="dev-key", account=dev)
    use(db, key, "r1", 299)
    _allowed(db, secret)
    use(db, key, "r2", 1)
    _allowed(db, b.secret)  # the parent is not limited by its sub-user's quota
    return {"secret": secret}


def sc_period_limit_reached(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller, period="day", period_credit="0.0003")
    use(db, b.key, "r1", 299)
    _allowed(db, b.secret)
    use(db, b.key, "r2", 1)
    return {"secret": b.secret}


def sc_rpd_reached(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller, rpd=2)
    use(db, b.key, "r1", 1)
    _allowed(db, b.secret)
    use(db, b.key, "r2", 1)
    return {"secret": b.secret}


def sc_tpd_reached(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller, tpd=500)
    use(db, b.key, "r1", 300, output_tokens=199)  # tokens: input (cached included) + output
    _allowed(db, b.secret)
    use(db, b.key, "r2", 1)
    return {"secret": b.secret}


def sc_key_daily_limit_reached(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller)
    key, secret = team(db, caller, b.sub, daily_limit=300)
    use(db, key, "r1", 299)
    _allowed(db, secret)
    use(db, key, "r2", 1)
    _allowed(db, b.secret)
    return {"secret": secret}


def sc_key_rpd_reached(db: Any, caller: Any) -> dict[str, Any]:
    _, b = sold_meter(db, caller)
    key, secret = team(db, caller, b.sub, rpd=1)
    _allowed(db, secret)
    use(db, key, "r1", 1)
    _allowed(db, b.secret)
    return {"secret": secret}


def sc_payg_balance_empty(db: Any, caller: Any) -> dict[str, Any]:
    install(db, caller)
    acc = account(db, caller)
    key, secret = payg_key(db, caller, acc)
    assert auth(db, secret).reason == "payg_balance_empty"  # a new account has no balance
    sell(db, caller, NOW, kind="topup", account=acc, item="payg-standard", amount=500)
    _allowed(db, secret, model="gpt-5.5")  # PAYG keys are not bound to a plan's models
    use(db, key, "r1", 500)
    return {"secret": secret}


SCENARIOS = {name[3:]: fn for name, fn in globals().items() if name.startswith("sc_")}


def test_the_scenarios_cover_every_reason_code() -> None:
    from planctl.domain.quota import REASONS

    assert set(SCENARIOS) == set(REASONS)


@pytest.mark.parametrize("reason", sorted(SCENARIOS))
def test_every_reason_code_from_a_real_scenario(db: Any, caller: Any, reason: str) -> None:
    from planctl.store.tables import Reservation

    final = SCENARIOS[reason](db, caller)
    secret, model = final.pop("secret"), final.pop("model", "unit")
    plain = auth(db, secret, model=model, **final)
    held = auth(db, secret, model=model, reserve=1, **final)  # the write path decides the same
    for a in (plain, held):
        assert (a.allowed, a.reason) == (False, reason), a.message
        assert a.reservation_id is None and a.pool is None
        assert a.message
    assert rows(db, Reservation, Reservation.status == "held") == []
    checks_ok(db)


# ---------------------------------------------------------------- the admission order, on a real key

S = NOW - timedelta(days=40)  # the ladder's subscription starts here and has expired by NOW


def test_admission_order_every_failure_on_then_removed_one_at_a_time(db: Any, caller: Any) -> None:
    """Every failure is switched on for one team key of a sub-user; each is then removed by
    the command a user would run, and the next reason in the documented order appears."""
    from planctl.metering.limits import set_period_limit
    from planctl.services import accounts, keys

    ladder = dict(family="ladder", models=["unit"], groups=["default", "priority"], api_types=["responses", "chat"],
                  total_credit="0.001", period="day", period_credit="0.0001", period_limit_can_disable=True,
                  rpd=1, tpd=10, max_subusers=2, refund_policy="none")
    install(db, caller, plan("ladder-1", **ladder),
            plan("ladder-2", **{**ladder, "tier": 2, "groups": ["default"]}),
            plan("ladder-3", **{**ladder, "tier": 3, "groups": ["default"], "rpd": None}),
            plan("ladder-4", **{**ladder, "tier": 4, "groups": ["default"], "rpd": None, "tpd": None}))
    acc = account(db, caller, now=S)
    b = buy(db, caller, acc, "ladder-1", now=S)
    dev = account(db, caller, "dev", now=S, parent=acc, subuser_quota=40)
    key, secret = team(db, caller, b.sub, "dev-key", now=S, account=dev, group="priority", credit_cap=40,
                       daily_limit=30, rpd=1, expires_at=S + timedelta(days=1))
    revoked, revoked_secret = team(db, caller, b.sub, "gone", now=S, account=dev, expires_at=S + timedelta(days=1))
    sell(db, caller, S + timedelta(hours=1), kind="upgrade", subscription=b.sub, item="ladder-2")  # drops priority
    keys.set_status(db, [key], "disable", caller=caller, now=S + timedelta(hours=2))
    keys.set_status(db, [revoked], "revoke", caller=caller, now=S + timedelta(hours=2))
    use(db, key, "dev-1", 50, at=NOW - timedelta(hours=1))  # cap, quota, key day limit, key RPD, RPD, TPD
    use(db, b.key, "own-1", 1000, at=NOW - timedelta(hours=1))  # total credit and the day's period limit
    request = {"model": "gpt-5.5", "api": "claude"}

    def reason() -> str | None:
        a = auth(db, secret, **request)
        return a.reason

    def direct_renewal() -> None:
        sell(db, caller, NOW, kind="direct-renewal", subscription=b.sub, reason="support ticket 42")

    assert auth(db, "sk-" + "x" * 43, **request).reason == "key_unknown"
    assert auth(db, revoked_secret, **request).reason == "key_revoked"  # status first, though also expired
    steps = [
        ("key_disabled", lambda: keys.set_status(db, [key], "enable", caller=caller, now=NOW)),
        ("key_expired", lambda: keys.edit(db, key, {"expires_at": None}, caller=caller, now=NOW)),
        ("subscription_expired", direct_renewal),
    ]
    for expected, fix in steps:
        assert reason() == expected
        fix()
    use(db, b.key, "own-2", 1000, at=NOW - timedelta(minutes=30))  # the renewal's credit is used up again
    steps = [
        ("model_not_in_plan", lambda: request.update(model="unit")),
        ("group_not_in_plan", lambda: keys.edit(db, key, {"group_name": "default"}, caller=caller, now=NOW)),
        ("api_type_not_in_plan", lambda: request.update(api="responses")),
        ("credit_exhausted", direct_renewal),
        ("key_credit_cap_reached", lambda: keys.edit(db, key, {"credit_cap": None}, caller=caller, now=NOW)),
        ("subuser_quota_reached", lambda: accounts.update(db, dev, {"subuser_quota": None}, caller=caller, now=NOW)),
        ("period_limit_reached", lambda: set_period_limit(db, b.sub, False, caller=caller, now=NOW)),
        ("rpd_reached", lambda: sell(db, caller, NOW, kind="upgrade", subscription=b.sub, item="ladder-3")),
        ("tpd_reached", lambda: sell(db, caller, NOW, kind="upgrade", subscription=b.sub, item="ladder-4")),
        ("key_daily_limit_reached", lambda: keys.edit(db, key, {"daily_limit": None}, caller=caller, now=NOW)),
        ("key_rpd_reached", lambda: keys.edit(db, key, {"rpd": None}, caller=caller, now=NOW)),
    ]
    for expected, fix in steps:
        assert reason() == expected
        fix()
    a = auth(db, secret, reserve=100, **request)
    assert (a.allowed, a.pool, a.reason) == (True, "plan", None)
    assert a.reservation_id
    checks_ok(db)


# ---------------------------------------------------------------- models, aliases and cost


def test_claude_aliases_bill_as_gpt_models_and_an_unknown_model_is_refused(db: Any, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput

    install(db, caller, plan("gpt54-only", models=["gpt-5.4"]))
    acc = account(db, caller)
    full = buy(db, caller, acc, "codex-pro-monthly")
    narrow = buy(db, caller, acc, "gpt54-only")
    sonnet = auth(db, full.secret, model="claude-sonnet-4-5", api="claude")
    haiku = auth(db, full.secret, model="claude-haiku-4-5", api="claude")
    assert (sonnet.allowed, sonnet.billed_model, sonnet.requested_model) == (True, "gpt-5.4", "claude-sonnet-4-5")
    assert (haiku.allowed, haiku.billed_model) == (True, "gpt-5.4-mini")
    # the plan is checked after aliasing: haiku bills as gpt-5.4-mini, which this plan lacks
    assert auth(db, narrow.secret, model="claude-sonnet-4-5").allowed
    denied = auth(db, narrow.secret, model="claude-haiku-4-5")
    assert (denied.allowed, denied.reason, denied.billed_model) == (False, "model_not_in_plan", "gpt-5.4-mini")
    unknown = auth(db, full.secret, model="llama-3-70b")
    assert (unknown.allowed, unknown.reason, unknown.billed_model) == (False, "model_not_in_plan", None)
    # recording prices the billed model
    r = use(db, full.key, "s1", 1000, model="claude-sonnet-4-5", cached_tokens=200, output_tokens=100)
    assert (r.record.requested_model, r.record.billed_model, r.record.cost) == ("claude-sonnet-4-5", "gpt-5.4", 14_175)
    r = use(db, full.key, "h1", 1000, model="claude-haiku-4-5")
    assert (r.record.billed_model, r.record.cost) == ("gpt-5.4-mini", 1_750)
    with pytest.raises(InvalidInput, match="llama"):
        use(db, full.key, "l1", 10, model="llama-3-70b")
    assert sub_row(db, full.sub).credit_used == 14_175 + 1_750
    checks_ok(db)


def test_cost_is_exact_with_cached_tokens_and_the_group_ratio_rounded_up_once(db: Any, caller: Any) -> None:
    from planctl.store.tables import LedgerEntry

    install(db, caller, plan("groups"))
    acc = account(db, caller)
    b = buy(db, caller, acc, "groups")
    prio, _ = team(db, caller, b.sub, "prio", group="priority")  # ratio 1.5
    eco, _ = team(db, caller, b.sub, "eco", group="economy")  # ratio 0.8
    # 800 uncached × 8.75 + 200 cached × 0.875 + 100 output × 70 = 14,175 µcr
    assert use(db, b.key, "d1", 1000, model="gpt-5.4", cached_tokens=200, output_tokens=100).record.cost == 14_175
    assert use(db, b.key, "d2", 1000, model="gpt-5.4", output_tokens=100).record.cost == 15_750  # none cached
    assert use(db, prio, "p1", 1000, model="gpt-5.4", cached_tokens=200, output_tokens=100).record.cost == 21_263
    # 50 cached mini tokens = 8.75 µcr × 0.8 = exactly 7 (rounding before the ratio would give 8)
    assert use(db, eco, "e1", 50, model="gpt-5.4-mini", cached_tokens=50).record.cost == 7
    # 1 uncached + 1 cached + 1 output mini token = 15.925 µcr -> 16 (per component it would be 17)
    assert use(db, b.key, "d3", 2, model="gpt-5.4-mini", cached_tokens=1, output_tokens=1).record.cost == 16
    total = 14_175 + 15_750 + 21_263 + 7 + 16
    assert sub_row(db, b.sub).credit_used == total
    assert key_row(db, prio).credit_used == 21_263 and key_row(db, eco).credit_used == 7
    debits = {e.request_id: -e.amount for e in rows(db, LedgerEntry, LedgerEntry.kind == "debit")}
    assert debits == {"d1": 14_175, "d2": 15_750, "p1": 21_263, "e1": 7, "d3": 16}
    checks_ok(db)


def test_failed_requests_are_recorded_and_cost_what_the_upstream_reported(db: Any, caller: Any) -> None:
    from planctl.store.tables import UsageRecord

    _, b = sold_meter(db, caller, rpd=5)
    r = use(db, b.key, "f1", 0, status_code=502, error="upstream timeout", latency_ms=30_000, stream=True)
    assert (r.record.cost, r.record.pool, r.record.status_code) == (0, "none", 502)
    (row,) = rows(db, UsageRecord, UsageRecord.request_id == "f1")
    assert (row.error, row.latency_ms, row.stream, row.local_day) == ("upstream timeout", 30_000, True, "2026-11-21")
    assert auth(db, b.secret).remaining["rpd"] == 4  # a failed request still counts as a request
    checks_ok(db)


# ---------------------------------------------------------------- natural periods in the reset zone

BEFORE_MIDNIGHT = utc(2026, 11, 20, 15, 59, 59)  # 2026-11-20 23:59:59 in Beijing
AT_MIDNIGHT = utc(2026, 11, 20, 16, 0, 0)  # 2026-11-21 00:00:00 in Beijing


@pytest.mark.parametrize("limit,reason", [
    ({"rpd": 1}, "rpd_reached"),
    ({"tpd": 300}, "tpd_reached"),
    ({"period": "day", "period_credit": "0.0003"}, "period_limit_reached"),
    ({"key": {"daily_limit": 300}}, "key_daily_limit_reached"),
    ({"key": {"rpd": 1}}, "key_rpd_reached"),
])
def test_daily_counters_reset_at_beijing_midnight(db: Any, caller: Any, limit: dict[str, Any], reason: str) -> None:
    from planctl.store.tables import UsageRecord

    limit = dict(limit)  # the parameters are shared by both backends
    key_spec = limit.pop("key", None)
    install(db, caller, plan("daily", **limit))
    acc = account(db, caller, now=NOW - timedelta(days=2))
    b = buy(db, caller, acc, "daily", now=NOW - timedelta(days=2))
    key, secret = (team(db, caller, b.sub, now=NOW - timedelta(days=2), **key_spec) if key_spec
                   else (b.key, b.secret))
    use(db, key, "late", 300, at=BEFORE_MIDNIGHT)
    before = auth(db, secret, now=AT_MIDNIGHT - US)
    assert (before.allowed, before.reason, before.next_reset) == (False, reason, AT_MIDNIGHT)
    after = auth(db, secret, now=AT_MIDNIGHT)
    assert after.allowed, after.reason
    use(db, key, "early", 300, at=AT_MIDNIGHT)  # the first request of the new day counts in the new day
    again = auth(db, secret, now=AT_MIDNIGHT + timedelta(seconds=1))
    assert (again.allowed, again.reason, again.next_reset) == (False, reason, AT_MIDNIGHT + timedelta(days=1))
    days = {r.request_id: r.local_day for r in rows(db, UsageRecord)}
    assert days == {"late": "2026-11-20", "early": "2026-11-21"}
    checks_ok(db)


def test_cli_authorize_and_record_across_beijing_midnight_under_freezegun(
        db: Any, cli: Any, caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    install(db, caller, plan("daily", rpd=1))
    acc = account(db, caller, now=NOW - timedelta(days=2))
    b = buy(db, caller, acc, "daily", now=NOW - timedelta(days=2))
    monkeypatch.setenv("PLANCTL_API_KEY", b.secret)
    record = ("usage", "record", "--key", b.key, "--model", "unit", "--input", "1", "--output", "0", "--status", "200")
    assert js(cli, *record, "--request-id", "late", when=BEFORE_MIDNIGHT)["at"] == z(BEFORE_MIDNIGHT)
    denied = run(cli, "authorize", "--model", "unit", "--json", when=AT_MIDNIGHT - US)
    assert denied.exit_code == 5
    assert (json.loads(denied.stdout)["reason"], json.loads(denied.stdout)["next_reset"]) == (
        "rpd_reached", z(AT_MIDNIGHT))
    assert js(cli, "authorize", "--model", "unit", when=AT_MIDNIGHT)["remaining"]["rpd"] == 1
    js(cli, *record, "--request-id", "early", when=AT_MIDNIGHT)
    assert run(cli, "authorize", "--model", "unit", when=AT_MIDNIGHT + US).exit_code == 5
    checks_ok(db)


def test_a_weekly_period_starts_on_monday_0000_beijing(db: Any, caller: Any) -> None:
    from planctl.metering.limits import limits_view

    install(db, caller, plan("weekly", period="week", period_credit="0.0001"))
    acc = account(db, caller, now=utc(2026, 11, 10))
    b = buy(db, caller, acc, "weekly", now=utc(2026, 11, 10))
    monday = utc(2026, 11, 15, 16)  # Monday 2026-11-16 00:00 in Beijing (NOW is Saturday the 21st)
    next_monday = monday + timedelta(days=7)
    use(db, b.key, "sunday-night", 60, at=monday - timedelta(seconds=1))  # counts in the week before
    use(db, b.key, "monday-0000", 60, at=monday)
    a = auth(db, b.secret)
    assert (a.allowed, a.remaining["period"]) == (True, 40)
    assert limits_view(db, catalogs(db), b.sub, now=NOW).period == (monday, next_monday)
    use(db, b.key, "saturday", 40)
    blocked = auth(db, b.secret, now=next_monday - US)  # Sunday 23:59:59.999999 in Beijing
    assert (blocked.reason, blocked.next_reset) == ("period_limit_reached", next_monday)
    fresh = auth(db, b.secret, now=next_monday)
    assert (fresh.allowed, fresh.remaining["period"]) == (True, 100)
    checks_ok(db)


def test_a_monthly_period_starts_on_the_first_at_0000_beijing(db: Any, caller: Any) -> None:
    from planctl.metering.limits import limits_view

    install(db, caller, plan("monthly", period="month", period_credit="0.0001"))
    acc = account(db, caller)
    b = buy(db, caller, acc, "monthly")
    first_nov, first_dec = utc(2026, 10, 31, 16), utc(2026, 11, 30, 16)
    assert limits_view(db, catalogs(db), b.sub, now=NOW).period == (first_nov, first_dec)
    use(db, b.key, "last-second", 100, at=first_dec - timedelta(seconds=1))
    blocked = auth(db, b.secret, now=first_dec - US)
    assert (blocked.reason, blocked.next_reset) == ("period_limit_reached", first_dec)
    fresh = auth(db, b.secret, now=first_dec)
    assert (fresh.allowed, fresh.remaining["period"]) == (True, 100)
    checks_ok(db)


def test_a_custom_period_is_anchored_at_the_subscription_start(db: Any, caller: Any) -> None:
    from planctl.metering.limits import limits_view

    install(db, caller, plan("five-hours", period="5h", period_credit="0.0001"))
    start = utc(2026, 11, 21, 14, 7, 30)  # 22:07:30 in Beijing: the window spans midnight
    acc = account(db, caller, now=start)
    b = buy(db, caller, acc, "five-hours", now=start)
    edge = start + timedelta(hours=5)
    use(db, b.key, "r1", 100, at=start + timedelta(hours=1))
    after_midnight = auth(db, b.secret, now=MIDNIGHT + timedelta(minutes=30))  # a natural day would have reset
    assert (after_midnight.reason, after_midnight.next_reset) == ("period_limit_reached", edge)
    assert auth(db, b.secret, now=edge - US).reason == "period_limit_reached"
    fresh = auth(db, b.secret, now=edge)
    assert (fresh.allowed, fresh.remaining["period"]) == (True, 100)
    assert limits_view(db, catalogs(db), b.sub, now=edge).period == (edge, edge + timedelta(hours=5))
    use(db, b.key, "r2", 100, at=edge + timedelta(hours=4, minutes=59))
    assert auth(db, b.secret, now=edge + timedelta(hours=5) - US).reason == "period_limit_reached"
    assert auth(db, b.secret, now=edge + timedelta(hours=5)).allowed
    checks_ok(db)


def test_the_next_reset_of_a_daily_boundary_is_the_natural_day_even_with_a_shorter_custom_period(
        db: Any, caller: Any) -> None:
    """RPD resets at Beijing midnight; a 5-hour periodic limit does not move that instant."""
    install(db, caller, plan("five-hours", period="5h", period_credit="0.01", rpd=1))
    acc = account(db, caller)
    b = buy(db, caller, acc, "five-hours")  # windows [04:00, 09:00), [09:00, 14:00) UTC …
    use(db, b.key, "r1", 1)
    a = auth(db, b.secret, now=NOW + timedelta(hours=1))
    assert a.reason == "rpd_reached"
    assert a.next_reset == MIDNIGHT, "RPD resets at the natural day's end, not at the 5h window's end"
    assert "it resets at 2026-11-22 00:00 CST" in a.message
    checks_ok(db)


def test_the_expiry_instant(db: Any, caller: Any) -> None:
    _, b = sold_meter(db, caller)
    _, secret = team(db, caller, b.sub)
    for s in (b.secret, secret):
        last = auth(db, s, now=ENDS - US, reserve=10)
        assert last.allowed and last.reservation_id
        assert auth(db, s, now=ENDS).reason == "subscription_expired"
        assert auth(db, s, now=ENDS, reserve=10).reason == "subscription_expired"
    checks_ok(db)


# ---------------------------------------------------------------- extra usage


def test_extra_usage_absorbs_after_the_cap_expiring_packs_first_then_stops(db: Any, caller: Any) -> None:
    install(db, caller, plan("capped", period="day", period_credit="0.0001"), extra=(EXTRA_LONG, EXTRA_SHORT))
    acc = account(db, caller)
    b = buy(db, caller, acc, "capped")
    long = extra(db, caller, acc, "extra-long")  # 50 µcr, expires in 30 days (bought first)
    short = extra(db, caller, acc, "extra-short")  # 30 µcr, expires in 7 days: drawn first
    assert auth(db, b.secret).pool == "plan"  # below the cap, plan credit is used
    use(db, b.key, "r1", 100)
    a = auth(db, b.secret)
    assert (a.allowed, a.pool, a.lifted, a.remaining["extra"]) == (True, "extra", "period_limit_reached", 80)
    assert "extra usage" in a.message
    r = use(db, b.key, "r2", 40)
    assert (r.record.pool, r.record.charged_extra, r.record.charged_plan) == ("extra", 40, 0)
    assert ledger(db, *_rid("r2")) == [("debit", "extra", -30, short, "r2"), ("debit", "extra", -10, long, "r2")]
    assert pack_rows(db) == {long: (50, 10, 0), short: (30, 30, 0)}
    assert auth(db, b.secret).remaining["extra"] == 40
    r = use(db, b.key, "r3", 50)  # more than the extra usage left: the rest goes to the plan, nothing is lost
    assert (r.record.pool, r.record.charged_extra, r.record.charged_plan) == ("mixed", 40, 10)
    assert pack_rows(db) == {long: (50, 50, 0), short: (30, 30, 0)}
    spent = auth(db, b.secret)
    assert (spent.allowed, spent.reason, spent.remaining["extra"]) == (False, "period_limit_reached", 0)
    assert sub_row(db, b.sub).credit_used == 110
    tomorrow = auth(db, b.secret, now=NOW + timedelta(days=1))
    assert (tomorrow.allowed, tomorrow.pool) == (True, "plan")
    checks_ok(db)


def _rid(request_id: str) -> tuple[Any, ...]:
    from planctl.store.tables import LedgerEntry

    return (LedgerEntry.request_id == request_id,)


def test_an_expired_extra_pack_is_not_drawn(db: Any, caller: Any) -> None:
    install(db, caller, plan("capped", period="day", period_credit="0.0001"), extra=(EXTRA_LONG, EXTRA_SHORT))
    acc = account(db, caller)
    b = buy(db, caller, acc, "capped")
    long, short = extra(db, caller, acc, "extra-long"), extra(db, caller, acc, "extra-short")
    later = NOW + timedelta(days=7)  # the short pack expires at this instant
    use(db, b.key, "r1", 100, at=later)
    a = auth(db, b.secret, now=later)
    assert (a.pool, a.remaining["extra"]) == ("extra", 50)
    use(db, b.key, "r2", 20, at=later)
    assert pack_rows(db) == {long: (50, 20, 0), short: (30, 0, 0)}
    checks_ok(db)


def test_extra_usage_lifts_rpd_and_tpd_too(db: Any, caller: Any) -> None:
    install(db, caller, plan("rpd", rpd=1), plan("tpd", tpd=100))
    acc = account(db, caller)
    extra(db, caller, acc, "extra-50")
    for slug, reason in (("rpd", "rpd_reached"), ("tpd", "tpd_reached")):
        b = buy(db, caller, acc, slug)
        use(db, b.key, f"{slug}-1", 100)
        a = auth(db, b.secret)
        assert (a.allowed, a.pool, a.lifted) == (True, "extra", reason)
        r = use(db, b.key, f"{slug}-2", 10)
        assert (r.record.pool, r.record.charged_extra, r.record.charged_plan) == ("extra", 10, 0)
    checks_ok(db)


def test_extra_usage_never_revives_an_expired_cancelled_or_exhausted_subscription(db: Any, caller: Any) -> None:
    from planctl.services import refunds

    install(db, caller, plan("capped", period="day", period_credit="0.0001"),
            plan("tiny", total_credit="0.0001", period="day", period_credit="0.0001"))
    acc = account(db, caller)
    extra(db, caller, acc, "extra-50")
    expired, cancelled, exhausted = (buy(db, caller, acc, s) for s in ("capped", "capped", "tiny"))
    day_pass = buy(db, caller, acc, "codex-day-pass")  # purely periodic: extra usage does lift its cap
    use(db, expired.key, "cap-expired", 100, at=ENDS - timedelta(hours=1))  # its last (Beijing) day
    for b in (cancelled, exhausted):
        use(db, b.key, f"cap-{b.sub}", 100)
    use(db, day_pass.key, "pass", 0, model="gpt-5.5", output_tokens=600_000)  # 42 credit > its 40 per day
    assert auth(db, expired.secret, now=ENDS - US).pool == "extra"
    assert auth(db, expired.secret, now=ENDS).reason == "subscription_expired"
    refunds.refund(db, cancelled.order, amount=1000, reason="goodwill", details=None, caller=caller, now=NOW)
    assert auth(db, cancelled.secret).reason == "subscription_cancelled"
    assert auth(db, exhausted.secret).reason == "credit_exhausted"
    a = auth(db, day_pass.secret, model="gpt-5.5")
    assert (a.allowed, a.pool, a.lifted) == (True, "extra", "period_limit_reached")
    checks_ok(db)


# ---------------------------------------------------------------- the periodic-limit switch


def test_limit_toggle_off_uses_total_credit_and_on_restores_the_cap_with_usage_counted(
        db: Any, cli: Any, caller: Any) -> None:
    install(db, caller, plan("toggle", total_credit="0.001", period="day", period_credit="0.0001",
                             period_limit_can_disable=True))
    acc = account(db, caller)
    b = buy(db, caller, acc, "toggle")
    use(db, b.key, "r1", 100)
    assert auth(db, b.secret).reason == "period_limit_reached"
    assert js(cli, "limits", "disable", b.sub) == {"subscription_id": b.sub, "period_limit_enabled": False}
    assert js(cli, "limits", "disable", b.sub)["period_limit_enabled"] is False  # idempotent
    a = auth(db, b.secret)
    assert (a.allowed, a.pool, a.remaining["total"], a.remaining["period_limit_enabled"]) == (True, "plan", 900, False)
    use(db, b.key, "r2", 200)
    shown = js(cli, "limits", "show", b.sub)
    assert shown["period"]["used"] == cr(300) and shown["period"]["enabled"] is False
    assert shown["blocking"] is None and shown["total"]["remaining"] == cr(700)
    assert js(cli, "limits", "enable", b.sub) == {"subscription_id": b.sub, "period_limit_enabled": True}
    blocked = auth(db, b.secret)
    assert (blocked.reason, blocked.remaining["period"]) == ("period_limit_reached", -200)
    shown = js(cli, "limits", "show", b.sub)
    assert (shown["blocking"], shown["period"]["used"], shown["period"]["enabled"]) == (
        "period_limit_reached", cr(300), True)
    assert auth(db, b.secret, now=NOW + timedelta(days=1)).allowed  # a new day, a new period
    # with the limit off, the total credit still bounds
    js(cli, "limits", "disable", b.sub)
    use(db, b.key, "r3", 700)
    assert auth(db, b.secret).reason == "credit_exhausted"
    audit = js(cli, "audit", "--limit", "100")
    assert sum("periodic limit" in e["summary"] for e in audit) == 3  # no entry for the repeated disable
    checks_ok(db)


@pytest.mark.parametrize("slug,terms,reason", [
    ("codex-day-pass", None, "limit_toggle_not_allowed"),  # purely periodic
    ("fixed", {"period": "day", "period_credit": "0.0001"}, "limit_toggle_not_allowed"),  # not allowed by the plan
    ("pool-only", {}, "no_periodic_limit"),
])
def test_limit_toggle_is_refused_where_the_plan_does_not_allow_it(
        db: Any, db_url: str, cli: Any, caller: Any, slug: str, terms: Any, reason: str) -> None:
    install(db, caller, *([plan(slug, **terms)] if terms is not None else []))
    acc = account(db, caller)
    b = buy(db, caller, acc, slug)
    before = dump(db_url)
    for action in ("disable", "enable"):
        result = run(cli, "--json", "limits", action, b.sub)
        assert result.exit_code == 4 and result.stdout == ""
        assert error_reason(result) == reason
    assert dump(db_url) == before
    assert run(cli, "limits", "disable", "sub_nosuchthing").exit_code == 3


# ---------------------------------------------------------------- recording is idempotent


def test_a_duplicate_request_id_changes_nothing_and_says_so(db: Any, db_url: str, cli: Any, caller: Any) -> None:
    from planctl.store.tables import LedgerEntry, UsageCounter, UsageRecord

    _, b = sold_meter(db, caller)
    first = js(cli, "usage", "record", "--request-id", "req-1", "--key", b.key, "--model", "unit", "--input", "120",
               "--output", "10", "--status", "200")
    assert (first["duplicate"], first["cost"], first["pool"]) == (False, cr(140), "plan")
    before = dump(db_url)
    counts = (len(rows(db, UsageRecord)), len(rows(db, LedgerEntry)), len(rows(db, UsageCounter)))
    result = run(cli, "usage", "record", "--request-id", "req-1", "--key", b.key, "--model", "unit", "--input", "120",
                 "--output", "10", "--status", "200", "--json", when=NOW + timedelta(minutes=5))
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {"request_id": "req-1", "duplicate": True, "note": out["note"]} and out["note"]
    assert dump(db_url) == before
    assert (len(rows(db, UsageRecord)), len(rows(db, LedgerEntry)), len(rows(db, UsageCounter))) == counts
    assert sub_row(db, b.sub).credit_used == 140 and key_row(db, b.key).credit_used == 140
    dup = use(db, b.key, "req-1", 120, output_tokens=10)
    assert (dup.duplicate, dup.record) == (True, None)
    checks_ok(db)


def test_the_same_request_id_with_other_content_is_a_conflict_naming_the_fields(db: Any, db_url: str, cli: Any,
                                                                                  caller: Any) -> None:
    """Issue #11.5: a second record of a request id that says something else is not a silent
    duplicate: exit 6, the differing fields named, nothing changed."""
    _, b = sold_meter(db, caller)
    other, _ = team(db, caller, b.sub)
    base = ("usage", "record", "--request-id", "req-1", "--model", "unit", "--status", "200")
    first = (*base, "--key", b.key, "--input", "120", "--output", "10", "--latency-ms", "900")
    run(cli, *first, "--time", "2026-11-21T04:30:00+00:00")
    assert_refused(cli, db_url, [
        ((*base, "--key", b.key, "--input", "999999", "--output", "5"), 6, "request_id_conflict",
         "another input_tokens, output_tokens, latency_ms;"),
        ((*base, "--key", other, "--input", "120", "--output", "10", "--latency-ms", "900"), 6,
         "request_id_conflict", "another key;"),
        ((*first, "--time", "2026-11-21T04:30:01+00:00"), 6, "request_id_conflict", "another time;"),
    ], when=NOW)
    same = js(cli, *first, "--time", "2026-11-21T12:30:00+08:00")
    assert same["duplicate"] is True


# ---------------------------------------------------------------- reservations


def test_a_hold_reduces_what_the_next_authorize_sees_and_recording_settles_it(db: Any, caller: Any) -> None:
    from planctl.metering.holds import list_reservations, release_by_hand
    from planctl.services.database import check
    from planctl.domain.errors import Refused

    _, b = sold_meter(db, caller, total_credit="0.001")
    first = auth(db, b.secret, reserve=600)
    assert first.allowed and first.reservation_id and first.reservation_expires_at == NOW + timedelta(minutes=10)
    assert auth(db, b.secret).remaining["total"] == 400
    assert auth(db, b.secret, reserve=401).reason == "credit_exhausted"
    second = auth(db, b.secret, reserve=400)  # exactly what is left
    assert second.allowed
    assert auth(db, b.secret, reserve=1).reason == "credit_exhausted"
    assert auth(db, b.secret).reason == "credit_exhausted"
    assert (sub_row(db, b.sub).credit_reserved, key_row(db, b.key).credit_reserved) == (1000, 0)  # no key cap
    assert {r.name: r.detail for r in check(db)}["holds"].startswith("1000 µcr held")
    r = use(db, b.key, "r1", 250, reservation=first.reservation_id)
    assert (r.record.cost, r.record.charged_plan, r.record.reservation_id) == (250, 250, first.reservation_id)
    settled = reservation(db, first.reservation_id)
    assert (settled.status, settled.request_id, settled.closed_at) == ("settled", "r1", NOW)
    s = sub_row(db, b.sub)
    assert (s.credit_used, s.credit_reserved) == (250, 400)
    assert ledger(db, *_rid("r1")) == [("debit", "plan", -250, None, "r1")]
    assert auth(db, b.secret).remaining["total"] == 350
    assert [h.id for h in list_reservations(db, now=NOW)] == [second.reservation_id]
    released = release_by_hand(db, second.reservation_id, caller=caller, now=NOW)
    assert released.status == "released"
    assert auth(db, b.secret).remaining["total"] == 750
    with pytest.raises(Refused) as exc:
        release_by_hand(db, second.reservation_id, caller=caller, now=NOW)
    assert exc.value.reason == "reservation_closed"
    plan_entries = [(k, a) for k, pool, a, _, _ in ledger(db) if pool == "plan"]
    assert plan_entries == [("grant", 1000), ("reserve", -600), ("reserve", -400), ("release", 600),
                            ("debit", -250), ("release", 400)]
    checks_ok(db)


def test_an_unsettled_hold_expires_after_its_timeout(db: Any, caller: Any) -> None:
    from planctl.metering.holds import list_reservations

    _, b = sold_meter(db, caller, total_credit="0.001")
    hold = auth(db, b.secret, reserve=1000)
    assert auth(db, b.secret, reserve=1, now=NOW + timedelta(minutes=9, seconds=59)).reason == "credit_exhausted"
    later = NOW + timedelta(minutes=11)
    fresh = auth(db, b.secret, reserve=1, now=later)  # releases the stale hold first
    assert fresh.allowed
    stale = reservation(db, hold.reservation_id)
    assert (stale.status, stale.closed_at) == ("expired", later)
    assert sub_row(db, b.sub).credit_reserved == 1  # only the new hold
    assert [r.id for r in list_reservations(db, now=later, status="expired")] == [hold.reservation_id]
    # recording against the expired hold charges without it, and releases nothing twice
    r = use(db, b.key, "late", 200, reservation=hold.reservation_id, now=later)
    assert r.record.charged_plan == 200 and "expired" in r.note
    s = sub_row(db, b.sub)
    assert (s.credit_used, s.credit_reserved) == (200, 1)
    checks_ok(db)


def test_a_capped_key_holds_against_its_cap_and_settling_gives_the_hold_back(db: Any, caller: Any) -> None:
    from planctl.services import keys

    _, b = sold_meter(db, caller, total_credit="0.01")
    keys.edit(db, b.key, {"credit_cap": 1000}, caller=caller, now=NOW)
    first = auth(db, b.secret, reserve=600)
    assert first.allowed and key_row(db, b.key).credit_reserved == 600
    assert auth(db, b.secret, reserve=401).reason == "key_credit_cap_reached"
    assert auth(db, b.secret, reserve=400).allowed
    use(db, b.key, "r1", 250, reservation=first.reservation_id)
    k = key_row(db, b.key)
    assert (k.credit_used, k.credit_reserved) == (250, 400)
    checks_ok(db)


def test_a_stale_hold_does_not_block_an_authorize_without_reserve(db: Any, caller: Any) -> None:
    """Holds expire after their timeout: every admission (with --reserve or not) and `limits show`
    must stop counting them, not only the ones that write."""
    from planctl.metering.limits import limits_view

    _, b = sold_meter(db, caller, total_credit="0.001")
    assert auth(db, b.secret, reserve=1000).allowed
    later = NOW + timedelta(minutes=11)
    a = auth(db, b.secret, now=later)
    assert (a.allowed, a.remaining["total"]) == (True, 1000), a.reason
    assert limits_view(db, catalogs(db), b.sub, now=later).counters.plan_reserved == 0
    checks_ok(db)


def test_a_balance_net_of_holds_never_goes_below_zero(db: Any, caller: Any) -> None:
    _, b = sold_meter(db, caller, total_credit="0.001")
    use(db, b.key, "r0", 300)
    hold = auth(db, b.secret, reserve=700)  # exactly the remaining credit
    assert hold.allowed
    assert auth(db, b.secret, reserve=1).reason == "credit_exhausted"
    r = use(db, b.key, "r1", 900, reservation=hold.reservation_id)  # costs more than the hold and the balance
    assert (r.record.cost, r.record.charged_plan) == (900, 700)  # recorded in full, charged what was there
    assert r.note and "exceeded" in r.note
    s = sub_row(db, b.sub)
    assert (s.credit_used, s.credit_reserved, s.credit_granted) == (1000, 0, 1000)
    assert auth(db, b.secret).reason == "credit_exhausted"
    checks_ok(db)


def test_a_hold_on_extra_usage_spans_packs_and_settles_on_them_expiring_first_first(db: Any, caller: Any) -> None:
    install(db, caller, plan("capped", period="day", period_credit="0.0001"), extra=(EXTRA_LONG, EXTRA_SHORT))
    acc = account(db, caller)
    b = buy(db, caller, acc, "capped")
    long, short = extra(db, caller, acc, "extra-long"), extra(db, caller, acc, "extra-short")
    use(db, b.key, "r0", 100)
    hold = auth(db, b.secret, reserve=60)  # spans both packs, the one expiring first first
    assert (hold.allowed, hold.pool) == (True, "extra")
    assert pack_rows(db) == {long: (50, 0, 30), short: (30, 0, 30)}
    assert sub_row(db, b.sub).credit_reserved == 0
    assert auth(db, b.secret, reserve=21).reason == "period_limit_reached"  # 20 left net of the hold
    r = use(db, b.key, "r1", 45, reservation=hold.reservation_id)
    assert (r.record.pool, r.record.charged_extra, r.record.charged_plan) == ("extra", 45, 0)
    assert pack_rows(db) == {long: (50, 15, 0), short: (30, 30, 0)}
    assert sub_row(db, b.sub).credit_used == 100
    checks_ok(db)


def test_settling_a_hold_that_took_all_the_extra_usage_charges_extra_usage_not_the_plan(
        db: Any, caller: Any) -> None:
    install(db, caller, plan("capped", period="day", period_credit="0.0001"), extra=(EXTRA_LONG,))
    acc = account(db, caller)
    b = buy(db, caller, acc, "capped")
    long = extra(db, caller, acc, "extra-long")
    use(db, b.key, "r0", 100)
    hold = auth(db, b.secret, reserve=50)  # the whole extra balance
    assert (hold.allowed, hold.pool) == (True, "extra")
    r = use(db, b.key, "r1", 50, reservation=hold.reservation_id)
    assert (r.record.pool, r.record.charged_extra, r.record.charged_plan) == ("extra", 50, 0)
    assert pack_rows(db) == {long: (50, 50, 0)}
    assert sub_row(db, b.sub).credit_used == 100  # the periodic limit was not overshot on plan credit
    assert auth(db, b.secret).reason == "period_limit_reached"
    checks_ok(db)


def test_holds_on_a_payg_balance(db: Any, caller: Any) -> None:
    install(db, caller)
    acc = account(db, caller)
    key, secret = payg_key(db, caller, acc)
    sell(db, caller, NOW, kind="topup", account=acc, item="payg-standard", amount=100)
    hold = auth(db, secret, reserve=100)
    assert (hold.allowed, hold.pool) == (True, "payg")
    assert auth(db, secret, reserve=1).reason == "payg_balance_empty"
    assert auth(db, secret).reason == "payg_balance_empty"
    r = use(db, key, "p1", 30, reservation=hold.reservation_id)
    assert (r.record.pool, r.record.charged_payg) == ("payg", 30)
    assert auth(db, secret).remaining["payg"] == 70
    checks_ok(db)


def test_a_reservation_settles_only_for_its_own_key(db: Any, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput

    _, b = sold_meter(db, caller)
    key, secret = team(db, caller, b.sub)
    hold = auth(db, secret, reserve=100)
    with pytest.raises(InvalidInput, match="does not belong"):
        use(db, b.key, "r1", 10, reservation=hold.reservation_id)
    assert reservation(db, hold.reservation_id).status == "held"
    assert sub_row(db, b.sub).credit_used == 0
    checks_ok(db)


@pytest.mark.parametrize("limit,reason", [({"rpd": 1}, "rpd_reached"), ({"key_rpd": 1}, "key_rpd_reached")])
def test_an_open_hold_counts_against_the_request_limits_until_it_is_recorded_or_released(
        db: Any, caller: Any, limit: dict[str, Any], reason: str) -> None:
    """A gateway answers before its settlement is recorded: an admitted request whose hold is still
    open counts as a request of the day (RPD, a key's RPD) at admission; once it is recorded the
    count is the recorded one (not both), and a released hold counts for nothing."""
    from planctl.metering.holds import release_hold

    _, b = sold_meter(db, caller, rpd=limit.get("rpd"))
    key, secret = team(db, caller, b.sub, rpd=limit["key_rpd"]) if "key_rpd" in limit else (b.key, b.secret)
    first = auth(db, secret, reserve=10)
    assert first.allowed and first.remaining.get("rpd") in (None, 1)
    for kw in ({}, {"reserve": 10}):  # a plain authorize sees the open hold too
        second = auth(db, secret, **kw)
        assert (second.allowed, second.reason) == (False, reason), second.message
    assert release_hold(db, first.reservation_id, now=NOW)
    again = auth(db, secret, reserve=10)
    assert again.allowed, again.message
    use(db, key, "r1", 5, reservation=again.reservation_id)  # settled: counted once, as recorded
    assert (auth(db, secret).reason, auth(db, secret, reserve=10).reason) == (reason, reason)
    if "rpd" in limit:
        assert auth(db, secret).remaining["rpd"] == 0
    checks_ok(db)


def test_payg_overshoot_without_a_reservation_keeps_db_check_clean(db: Any, caller: Any) -> None:
    """Without a hold an admitted request is charged in full and may overshoot (SPEC §5); the
    ledger still matches, so `db check` must not report it, and the next admission is refused."""
    install(db, caller)
    acc = account(db, caller)
    key, secret = payg_key(db, caller, acc)
    sell(db, caller, NOW, kind="topup", account=acc, item="payg-standard", amount=100)
    assert auth(db, secret).allowed
    r = use(db, key, "p1", 150)
    assert (r.record.cost, r.record.charged_payg) == (150, 150)
    assert auth(db, secret).reason == "payg_balance_empty"
    checks_ok(db)
    from planctl.services.database import check

    overdrawn = {r.name: r.detail for r in check(db)}["overdrawn"]
    assert overdrawn == f"1 balances below zero: account {acc} (pay-as-you-go) by 0.000050"


def test_overdraw_is_bounded_and_shown_by_how_much_everywhere(db: Any, db_url: str, cli: Any, caller: Any) -> None:
    """Issue #12.7: an absurd record is rejected by the bounds; a real overshoot (no hold) shows as
    overdrawn in limits show, subscriptions list and db check."""
    from planctl.services.database import check

    _, b = sold_meter(db, caller, total_credit="0.0001")  # 100 µcr
    assert_refused(cli, db_url, [(("usage", "record", "--request-id", "huge", "--key", b.key, "--model", "unit",
                                   "--input", "999999999999", "--output", "0", "--status", "200"), 2,
                                  "invalid_input", "input tokens must be a whole number from 0 to 100,000,000")],
                   when=NOW)
    use(db, b.key, "r1", 70)
    use(db, b.key, "r2", 80)  # admitted before r1 was recorded: charged in full
    limits = js(cli, "limits", "show", b.sub)
    assert limits["total"]["overdrawn"] == cr(50) and limits["total"]["remaining"] == "-" + cr(50)
    assert "overdrawn: the plan credit is" in run(cli, "limits", "show", b.sub).stdout
    (listed,) = js(cli, "subscriptions", "list")
    assert listed["overdrawn"] == cr(50)
    assert "Overdrawn by" in run(cli, "subscriptions", "list").stdout
    checks_ok(db)
    assert {r.name: r.detail for r in check(db)}["overdrawn"] == f"1 balances below zero: subscription {b.sub} by " \
        + cr(50)


# ---------------------------------------------------------------- usage import


def _lines(key: str, prefix: str) -> list[dict[str, Any]]:
    return [
        {"request_id": f"{prefix}1", "key": key, "model": "unit", "input": 100, "output": 10, "status": 200},
        {"request_id": f"{prefix}2", "key": key, "model": "unit", "input_tokens": 100, "cached_tokens": 40,
         "output_tokens": 0, "status_code": 200, "time": "2026-11-21T04:00:00Z", "stream": True},
        {"request_id": f"{prefix}3", "key": key, "model": "claude-haiku-4-5", "input": 100, "output": 0,
         "status": 500, "error": "boom", "latency_ms": 12, "api": "claude"},
    ]


GOOD_COSTS = 120 + 80 + 175  # unit 100+2×10; unit 60+0.5×40; gpt-5.4-mini 100 × 1.75


def test_usage_import_jsonl_counts_rejected_lines_and_never_half_applies(
        db: Any, cli: Any, caller: Any, tmp_path: Path) -> None:
    """Account A imports a file with good, duplicate and bad lines; account B imports only the good
    lines. A's balances, counters and ledger equal B's: no bad line left a trace."""
    from planctl.store.tables import LedgerEntry, UsageCounter, UsageRecord

    install(db, caller, plan("meter", period="day", period_credit="0.01", rpd=100, tpd=100000))
    a, b = buy(db, caller, account(db, caller), "meter"), buy(db, caller, account(db, caller, "beta"), "meter")
    use(db, a.key, "a0", 5)
    use(db, b.key, "b0", 5)
    foreign = auth(db, b.secret, reserve=10).reservation_id
    good = [json.dumps(x) for x in _lines(a.key, "a")]
    bad_line = '{"request_id": "a9", "key": "%s", "model": "unit", "input": 5, "output": 0, "status": 200, ' % a.key
    lines = [
        good[0],                                                                              # 1 new
        "{not json",                                                                           # 2 rejected
        good[1],                                                                               # 3 new
        json.dumps({"request_id": "x1", "key": "no-such-key", "model": "unit", "input": 1, "output": 0,
                    "status": 200}),                                                           # 4 rejected
        bad_line + '"cached": 9}',                                                             # 5 cached > input
        json.dumps({"request_id": "a9", "key": a.key, "model": "llama", "input": 5, "output": 0,
                    "status": 200}),                                                           # 6 unknown model
        "",                                                                                    # 7 blank
        json.dumps({"request_id": "a0", "key": a.key, "model": "unit", "input": 5, "output": 0,
                    "status": 200}),                                                           # 8 duplicate
        bad_line + f'"reservation": "{foreign}"' + "}",                                        # 9 other key's hold
        good[0],                                                                               # 10 duplicate
        good[2],                                                                               # 11 new
        bad_line + '"colour": "red"}',                                                         # 12 unknown field
        json.dumps({"request_id": "a9", "key": a.key, "model": "unit", "output": 0, "status": 200}),  # 13 missing
        bad_line.replace('"input": 5', '"input": -5') + '"cached": 0}',                        # 14 negative
        bad_line + '"time": "2026-11-21T03:00:00"}',                                           # 15 no offset
        bad_line.replace('"status": 200', '"status": 99') + '"cached": 0}',                   # 16 bad status
        "[1, 2]",                                                                              # 17 not an object
        json.dumps({"request_id": "a0", "key": a.key, "model": "unit", "input": 1, "output": 0,
                    "status": 200}),                                                           # 18 conflicting
    ]
    path = tmp_path / "usage.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run(cli, "usage", "import", str(path), "--batch-size", "3", "--json")
    assert result.exit_code == 2, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"new", "duplicate", "rejected", "rejected_lines", "conflicting", "conflicting_lines",
                           "retried"}
    assert (report["new"], report["duplicate"], report["rejected"], report["conflicting"]) == (3, 2, 11, 1)
    assert sorted(r["line"] for r in report["rejected_lines"]) == [2, 4, 5, 6, 9, 12, 13, 14, 15, 16, 17]
    assert all(r["error"] for r in report["rejected_lines"])
    assert report["conflicting_lines"] == [
        {"line": 18, "error": "request id 'a0' was already recorded with another input_tokens"}]
    (path_b := tmp_path / "good.jsonl").write_text("\n".join(json.dumps(x) for x in _lines(b.key, "b")) + "\n")
    ok = js(cli, "usage", "import", str(path_b))
    assert ok == {"new": 3, "duplicate": 0, "rejected": 0, "rejected_lines": [], "conflicting": 0,
                  "conflicting_lines": [], "retried": 0}
    from planctl.metering.holds import release_by_hand

    release_by_hand(db, foreign, caller=caller, now=NOW)

    def state(bought: Bought) -> tuple[Any, ...]:
        s, k = sub_row(db, bought.sub), key_row(db, bought.key)
        counters = sorted((c.scope, c.requests, c.tokens, c.credit, c.reserved) for c in rows(
            db, UsageCounter, UsageCounter.owner.in_([bought.sub, bought.key])))  # type: ignore[attr-defined]
        debits = sorted(-e.amount for e in rows(db, LedgerEntry, LedgerEntry.subscription_id == bought.sub,
                                                 LedgerEntry.kind == "debit"))
        records = len(rows(db, UsageRecord, UsageRecord.key_id == bought.key))
        return s.credit_used, s.credit_reserved, k.credit_used, counters, debits, records

    assert state(a) == state(b)
    assert state(a)[0] == 5 + GOOD_COSTS and state(a)[5] == 4
    assert rows(db, UsageRecord, UsageRecord.request_id.in_(["a9", "x1"])) == []  # type: ignore[attr-defined]
    (row,) = rows(db, UsageRecord, UsageRecord.request_id == "a3")
    assert (row.billed_model, row.status_code, row.error, row.api, row.latency_ms) == (
        "gpt-5.4-mini", 500, "boom", "claude", 12)
    # re-importing changes nothing: every good line is a duplicate now
    again = run(cli, "usage", "import", str(path), "--json")
    assert again.exit_code == 2
    assert {k: v for k, v in json.loads(again.stdout).items() if not k.endswith("_lines")} == {
        "new": 0, "duplicate": 5, "rejected": 11, "conflicting": 1, "retried": 0}
    assert state(a)[0] == 5 + GOOD_COSTS
    checks_ok(db)


def test_usage_import_reports_rejected_lines_in_file_order(db: Any, caller: Any) -> None:
    """Lines refused by their shape and lines refused by the database are listed in one order."""
    from planctl.metering.importing import import_usage
    from planctl.metering.recording import UsageInput

    _, b = sold_meter(db, caller)

    def line(rid: str, key: str, cached: int = 0) -> Any:
        return UsageInput(request_id=rid, key=key, model="unit", input_tokens=5, cached_tokens=cached,
                          output_tokens=0, status_code=200)

    items = [(1, line("u1", "no-such-key")), (2, line("u2", b.key, cached=9)), (3, "not JSON"),
             (4, line("u4", b.key))]
    report = import_usage(db, catalogs(db), iter(items), now=NOW)
    assert (report.new, report.duplicate) == (1, 0)
    assert report.rejected == 3 and [n for n, _ in report.rejected_lines] == [1, 2, 3]
    checks_ok(db)


def test_usage_import_counts_every_rejected_line_and_keeps_the_first_thousand(
        db: Any, cli: Any, caller: Any, tmp_path: Path) -> None:
    """A file of bad lines must not fill the memory: all are counted, the first 1,000 listed in order."""
    _, b = sold_meter(db, caller)
    good = json.dumps({"request_id": "ok-1", "key": b.key, "model": "unit", "input": 5, "output": 0, "status": 200})
    lines = [good] + [json.dumps({"request_id": f"bad-{i}", "key": b.key, "model": "unit", "input": -1, "output": 0,
                                  "status": 200}) for i in range(2_500)] + ["{oops"]
    (path := tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    result = run(cli, "usage", "import", str(path), "--batch-size", "700", "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert (report["new"], report["duplicate"], report["rejected"]) == (1, 0, 2_501)
    assert [r["line"] for r in report["rejected_lines"]] == list(range(2, 1_002))
    text = run(cli, "usage", "import", str(path), "--batch-size", "700")
    assert text.stdout.strip() == "new 0, duplicate 1, rejected 2501"
    assert "… and 2481 more rejected lines (--json lists the first 1,000)" in text.stderr
    checks_ok(db)


_ROW = {"request_id": "r1", "key": "key_a", "model": "unit", "api": "claude", "input_tokens": 10, "cached_tokens": 4,
        "output_tokens": 2, "status": 200, "latency_ms": 31, "stream": True, "time": "2026-11-21T15:59:59.999999Z"}


@pytest.mark.parametrize("row", [
    _ROW,
    {**_ROW, "time": "2026-11-22T00:00:00+08:00"},            # an offset: the same instant as 16:00 UTC
    {k: v for k, v in _ROW.items() if k != "time"},           # no time: recorded at `now`
    {**_ROW, "error": "upstream 500", "reservation": "res_1"},
    {"input": 7, **_ROW, "output": 3},                        # a field given twice: the last one counts
    {**_ROW, "error": ""},                                    # empty: as if absent
    {**_ROW, "reservation": None},                            # null: as if absent
    {**_ROW, "request_id": ""},                               # then missing
    {**_ROW, "input_tokens": True},                           # a bool is not a whole number
    {**_ROW, "input_tokens": "12"},                           # digits as text (CSV) are
    {**_ROW, "stream": "yes"},
    {**_ROW, "time": "2026-11-21T15:59:59"},                  # no offset
    {**_ROW, "time": "yesterday"},
    {**_ROW, "colour": "red"},
    {k: v for k, v in _ROW.items() if k != "model"},
])
def test_import_rows_of_a_known_shape_parse_as_field_by_field(row: dict[str, Any]) -> None:
    """The shape shortcut of `usage import` (cli/metering.RowParser) takes a row whole only when
    that gives exactly what reading it field by field gives: the same UsageInput or the same error."""
    from planctl.cli.metering import RowParser

    parser = RowParser()
    slow = parser._field_by_field(dict(row))
    assert parser(dict(row)) == slow and parser(dict(row)) == slow  # the second time from the known shape
    if not isinstance(slow, str) and "time" in row:
        assert slow.at == datetime(2026, 11, 21, 15, 59, 59, 999_999, tzinfo=timezone.utc) or \
            slow.at == datetime(2026, 11, 21, 16, tzinfo=timezone.utc)


def test_import_row_shapes_are_remembered_up_to_a_bound() -> None:
    from planctl.cli.metering import RowParser

    parser = RowParser()
    for i in range(RowParser.MAX_SHAPES + 10):  # a file whose every line has other fields: still parsed
        row = {**_ROW, f"x{i}": 1}
        assert parser(row) == parser._field_by_field(row) == f"unknown field 'x{i}'"
    assert len(parser.shapes) == RowParser.MAX_SHAPES
    good = dict(reversed(list(_ROW.items())))  # a new shape after the bound: read field by field, still right
    assert parser(good) == parser._field_by_field(good) and not isinstance(parser(good), str)
    assert len(parser.shapes) == RowParser.MAX_SHAPES


def test_usage_import_csv_from_stdin_with_line_numbers_and_idempotent_reimport(
        db: Any, cli: Any, caller: Any, tmp_path: Path) -> None:
    _, b = sold_meter(db, caller)
    text = "\n".join([
        "request_id,key,model,input,cached,output,status,time",
        f"c1,{b.key},unit,100,0,10,200,2026-11-21T04:00:00+00:00",
        f"c2,{b.key},unit,x,0,10,200,",
        f"c3,{b.key},unit,100,50,0,429,",
        f"c1,{b.key},unit,100,0,10,200,",
        "c4,no-such-key,unit,1,0,0,200,",
    ]) + "\n"
    first = run(cli, "usage", "import", "-", "--format", "csv", "--json", input=text)
    assert first.exit_code == 2
    report = json.loads(first.stdout)
    assert (report["new"], report["duplicate"], report["rejected"]) == (2, 1, 2)
    assert [r["line"] for r in report["rejected_lines"]] == [3, 6]
    assert sub_row(db, b.sub).credit_used == 120 + 75
    (tmp_path / "u.csv").write_text(text)
    again = run(cli, "usage", "import", str(tmp_path / "u.csv"))
    assert again.exit_code == 2
    assert again.stdout.strip() == "new 0, duplicate 3, rejected 2"
    assert "line 3:" in again.stderr and "line 6:" in again.stderr
    assert sub_row(db, b.sub).credit_used == 120 + 75
    clean = "\n".join(text.splitlines()[:2]) + "\n"
    result = run(cli, "usage", "import", "-", "--format", "csv", "--json", input=clean)
    assert result.exit_code == 0 and json.loads(result.stdout)["duplicate"] == 1
    checks_ok(db)


# ---------------------------------------------------------------- CLI: authorize, record, reservations


AUTH_FIELDS = {"allowed", "reason", "message", "requested_model", "billed_model", "key_id", "account_id",
               "subscription_id", "pool", "lifted", "remaining", "next_reset", "reservation_id",
               "reservation_expires_at"}
REMAINING_FIELDS = {"total", "period", "period_limit_enabled", "rpd", "tpd", "extra", "payg"}


def test_cli_authorize_exit_codes_json_and_secret_sources(
        db: Any, cli: Any, caller: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(db, caller, plan("meter", period="day", period_credit="0.0002", rpd=10, tpd=1000))
    acc = account(db, caller)
    b = buy(db, caller, acc, "meter")
    monkeypatch.setenv("PLANCTL_API_KEY", b.secret)
    out = js(cli, "authorize", "--model", "claude-sonnet-4-5", "--api", "claude")
    assert set(out) == AUTH_FIELDS and set(out["remaining"]) == REMAINING_FIELDS
    assert (out["allowed"], out["reason"], out["billed_model"], out["pool"]) == (True, None, "gpt-5.4", "plan")
    assert (out["key_id"], out["account_id"], out["subscription_id"]) == (b.key, acc, b.sub)
    assert out["remaining"] == {"total": cr(10_000), "period": cr(200), "period_limit_enabled": True, "rpd": 10,
                                "tpd": 1000, "extra": cr(0), "payg": None}
    assert out["next_reset"] == z(MIDNIGHT) and out["reservation_id"] is None
    held = js(cli, "authorize", "--model", "unit", "--reserve", "0.0001")
    assert held["reservation_id"] and held["reservation_expires_at"] == z(NOW + timedelta(minutes=10))
    # from a file, and from stdin
    (tmp_path / "key").write_text(b.secret + "\n")
    monkeypatch.delenv("PLANCTL_API_KEY")
    from_file = js(cli, "authorize", "--model", "unit", "--key-file", str(tmp_path / "key"))
    assert from_file["remaining"]["period"] == cr(100)
    with freeze_time(NOW):
        r = cli("authorize", "--model", "unit", "--key-file", "-", "--json", input=b.secret)
    assert r.exit_code == 0 and json.loads(r.stdout)["allowed"]
    monkeypatch.setenv("MY_KEY", b.secret)
    # denied: exit 5, the answer still on stdout
    denied = run(cli, "authorize", "--model", "unit", "--key-env", "MY_KEY", "--reserve", "0.000101", "--json")
    assert denied.exit_code == 5
    body = json.loads(denied.stdout)
    assert (body["allowed"], body["reason"], body["reservation_id"]) == (False, "period_limit_reached", None)
    assert run(cli, "authorize", "--model", "gpt-5.5", "--key-env", "MY_KEY").exit_code == 5  # not in the plan
    unknown = run(cli, "authorize", "--model", "unit", "--key-env", "NOPE_UNSET")
    assert unknown.exit_code == 2 and "NOPE_UNSET" in unknown.stderr
    monkeypatch.setenv("BAD", "sk-" + "z" * 43)
    assert json.loads(run(cli, "authorize", "--model", "unit", "--key-env", "BAD", "--json").stdout)["reason"] == \
        "key_unknown"
    assert run(cli, "authorize", "--model", "unit", "--key-env", "MY_KEY", "--api", "grpc").exit_code == 2
    assert run(cli, "authorize", "--model", "unit", "--key-env", "MY_KEY", "--reserve", "0").exit_code == 2
    table = run(cli, "authorize", "--model", "claude-haiku-4-5", "--key-env", "MY_KEY")
    assert table.exit_code == 0 and "gpt-5.4-mini" in table.stdout
    assert b.secret not in table.stdout + table.stderr
    assert run(cli, "authorize", "--model", "unit", "--key", b.secret).exit_code == 2  # never a plain flag
    checks_ok(db)


RECORD_FIELDS = {"request_id", "duplicate", "note", "at", "key_id", "account_id", "subscription_id", "billed_model",
                 "cost", "pool", "charged"}


def test_cli_usage_record_and_reservations(db: Any, cli: Any, caller: Any, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    _, b = sold_meter(db, caller, total_credit="0.001")
    monkeypatch.setenv("PLANCTL_API_KEY", b.secret)
    hold = js(cli, "authorize", "--model", "gpt-5.4", "--reserve", "0.0006")
    listed = js(cli, "reservations", "list")
    assert [(r["id"], r["status"], r["amount"], r["pool"]) for r in listed] == [
        (hold["reservation_id"], "held", cr(600), "plan")]
    assert set(listed[0]) == {"id", "key_id", "account_id", "subscription_id", "pool", "amount", "status",
                              "request_id", "created_at", "expires_at", "closed_at"}
    (tmp_path / "key").write_text(b.secret)
    out = js(cli, "usage", "record", "--request-id", "r1", "--key-file", str(tmp_path / "key"), "--model",
             "claude-sonnet-4-5", "--input", "10", "--cached", "8", "--output", "1", "--status", "200",
             "--latency-ms", "950", "--api", "claude", "--stream", "--reservation", hold["reservation_id"])
    assert set(out) == RECORD_FIELDS
    # 2 × 8.75 + 8 × 0.875 + 1 × 70 = 94.5 -> 95 µcr
    assert (out["cost"], out["pool"], out["billed_model"], out["duplicate"]) == (cr(95), "plan", "gpt-5.4", False)
    assert out["charged"] == {"plan": cr(95), "extra": cr(0), "payg": cr(0)} and out["at"] == z(NOW)
    settled = js(cli, "reservations", "list", "--status", "settled")
    assert [(r["id"], r["request_id"]) for r in settled] == [(hold["reservation_id"], "r1")]
    early = run(cli, "--json", "usage", "record", "--request-id", "r2", "--key", b.key, "--model", "unit", "--input",
                "1", "--output", "0", "--status", "200", "--time", "2026-11-20T15:59:59Z")
    assert early.exit_code == 4 and error_reason(early) == "before_subscription_start"
    at = js(cli, "usage", "record", "--request-id", "r2", "--key", b.key, "--model", "unit", "--input", "1",
            "--output", "0", "--status", "200", "--time", "2026-11-21T12:30:00+08:00")
    assert at["at"] == z(NOW + timedelta(minutes=30))
    second = js(cli, "authorize", "--model", "unit", "--reserve", "0.0001")
    released = js(cli, "reservations", "release", second["reservation_id"])
    assert (released["status"], released["closed_at"]) == ("released", z(NOW))
    again = run(cli, "--json", "reservations", "release", second["reservation_id"])
    assert again.exit_code == 4 and error_reason(again) == "reservation_closed"
    assert run(cli, "reservations", "release", "res_nosuchthing").exit_code == 3
    assert js(cli, "reservations", "list") == []
    assert len(js(cli, "reservations", "list", "--status", "all")) == 2
    bad = [
        (("--key", b.key, "--model", "llama"), 2),
        (("--key", "no-such-key", "--model", "unit"), 3),
        (("--key", b.key, "--key-file", str(tmp_path / "key"), "--model", "unit"), 2),
        (("--model", "unit"), 2),
        (("--key", b.key, "--model", "unit", "--cached", "5"), 2),  # cached > input
    ]
    for args, code in bad:
        r = run(cli, "usage", "record", "--request-id", "bad", *args, "--input", "1", "--output", "0",
                "--status", "200")
        assert r.exit_code == code, (args, r.stderr)
    assert sub_row(db, b.sub).credit_used == 96
    check = js(cli, "db", "check")
    assert all(r["ok"] for r in check)


# ---------------------------------------------------------------- limits show


LIMITS_FIELDS = {"subscription_id", "key_id", "plan", "blocking", "lifted_by_extra_usage", "total", "period",
                 "today", "key", "extra_usage", "reset_zone", "suggestions", "next_reset", "next_reset_local",
                 "payg_balance", "payg_overdrawn"}


def test_limits_show_json_answers_why_cant_i_continue_today(db: Any, cli: Any, caller: Any) -> None:
    install(db, caller, plan("meter", period="day", period_credit="0.0001", period_limit_can_disable=True, rpd=10,
                             tpd=10000))
    acc = account(db, caller)
    b = buy(db, caller, acc, "meter")
    key, _ = team(db, caller, b.sub, "ci", credit_cap=5000, daily_limit=3000, rpd=7)
    use(db, b.key, "r1", 60)
    use(db, key, "r2", 40)
    out = js(cli, "--tz", "Asia/Shanghai", "limits", "show", b.sub)
    assert set(out) == LIMITS_FIELDS
    assert (out["subscription_id"], out["key_id"], out["plan"]) == (b.sub, b.key, "meter")
    assert (out["blocking"], out["lifted_by_extra_usage"]) == ("period_limit_reached", False)
    assert out["total"] == {"granted": cr(10_000), "used": cr(100), "held": cr(0), "remaining": cr(9_900),
                            "overdrawn": None}
    assert (out["next_reset"], out["next_reset_local"]) == (z(MIDNIGHT), "2026-11-22T00:00:00+08:00")
    assert out["period"] == {"limit": cr(100), "used": cr(100), "held": cr(0), "remaining": cr(0), "enabled": True,
                             "can_disable": True,
                             "starts_at": z(TODAY), "resets_at": z(MIDNIGHT),
                             "resets_at_local": "2026-11-22T00:00:00+08:00"}
    assert out["today"] == {"requests": 2, "rpd": 10, "rpd_remaining": 8, "tokens": 100, "tpd": 10000,
                            "tpd_remaining": 9900, "resets_at": z(MIDNIGHT),
                            "resets_at_local": "2026-11-22T00:00:00+08:00"}
    assert out["key"] == {"cap": None, "used": cr(60), "cap_remaining": None, "daily_limit": None,
                          "used_today": cr(60), "daily_remaining": None, "rpd": None, "requests_today": 1,
                          "rpd_remaining": None}
    assert (out["extra_usage"], out["reset_zone"]) == (cr(0), "Asia/Shanghai")
    assert len(out["suggestions"]) == 2
    assert "planctl extra buy" in out["suggestions"][0]
    assert f"planctl limits disable {b.sub}" in out["suggestions"][1]
    by_key = js(cli, "limits", "show", "ci")
    assert by_key["key_id"] == key and by_key["key"] == {
        "cap": cr(5000), "used": cr(40), "cap_remaining": cr(4960), "daily_limit": cr(3000), "used_today": cr(40),
        "daily_remaining": cr(2960), "rpd": 7, "requests_today": 1, "rpd_remaining": 6}
    table = run(cli, "limits", "show", b.sub)
    assert table.exit_code == 0 and "blocking now: period_limit_reached" in table.stdout
    assert "to lift it:" in table.stdout
    extra(db, caller, acc, "extra-50")
    lifted = js(cli, "limits", "show", b.sub)
    assert (lifted["blocking"], lifted["lifted_by_extra_usage"], lifted["extra_usage"]) == (
        "period_limit_reached", True, cr(50 * CR))
    assert not any("extra buy" in s for s in lifted["suggestions"])
    tomorrow = js(cli, "limits", "show", b.sub, when=NOW + timedelta(days=1))
    assert (tomorrow["blocking"], tomorrow["suggestions"], tomorrow["period"]["used"]) == (None, [], cr(0))
    assert run(cli, "limits", "show", "nothing-like-this").exit_code == 3
    checks_ok(db)


def test_limits_show_for_exhausted_credit_and_an_empty_payg_balance(db: Any, cli: Any, caller: Any) -> None:
    _, b = sold_meter(db, caller, total_credit="0.0001")
    use(db, b.key, "r1", 100)
    out = js(cli, "limits", "show", b.sub)
    assert out["blocking"] == "credit_exhausted" and out["period"] is None
    assert any(f"planctl renew {b.sub}" in s for s in out["suggestions"])
    acc = account(db, caller, "payer")
    key, _ = payg_key(db, caller, acc)
    payg = js(cli, "limits", "show", key)
    assert (payg["blocking"], payg["subscription_id"], payg["plan"]) == ("payg_balance_empty", None, None)
    assert any("planctl topup" in s for s in payg["suggestions"])
    checks_ok(db)


def test_limits_show_prints_every_limit_that_applies_with_what_is_left(db: Any, cli: Any, caller: Any) -> None:
    install(db, caller, plan("meter", period="day", period_credit="0.0001", rpd=10, tpd=10000))
    acc = account(db, caller)
    b = buy(db, caller, acc, "meter")
    key, _ = team(db, caller, b.sub, "ci", credit_cap=50, daily_limit=3000, rpd=7)
    use(db, key, "r1", 50)
    table = run(cli, "--tz", "Asia/Shanghai", "limits", "show", "ci")
    assert table.exit_code == 0, table.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in table.stdout.splitlines() if line.count("│") >= 5}
    assert set(rows) >= {"total credit", "this period (limit on)", "requests today (RPD)", "tokens today (TPD)",
                         "this key (credit cap)", "this key today (daily limit)", "this key's requests today (RPD)",
                         "extra usage"}, rows
    assert all(cells[2] not in ("", "-") for cells in rows.values()), rows  # every Left cell is filled
    assert rows["this key's requests today (RPD)"][:3] == ["1", "7", "6"]
    assert rows["this key (credit cap)"][2] == "0.00"
    out = js(cli, "limits", "show", "ci")
    assert out["blocking"] == "key_credit_cap_reached" and out["next_reset"] is None
    assert any(f"planctl keys edit {key} --credit" in s for s in out["suggestions"])
    assert "to lift it: raise or clear the key's credit cap" in table.stdout


@pytest.mark.parametrize("reason,spec,tokens", [
    ("key_daily_limit_reached", {"daily_limit": 50}, 50),
    ("key_rpd_reached", {"rpd": 1}, 1),
])
def test_limits_show_suggests_a_way_out_of_each_key_limit(db: Any, cli: Any, caller: Any, reason: str,
                                                         spec: dict[str, Any], tokens: int) -> None:
    _, b = sold_meter(db, caller)
    key, _ = team(db, caller, b.sub, "ci", **spec)
    use(db, key, "r1", tokens)
    out = js(cli, "limits", "show", "ci")
    assert out["blocking"] == reason and out["next_reset"] == z(MIDNIGHT)
    assert any(f"planctl keys edit {key}" in s for s in out["suggestions"]), out["suggestions"]


def test_next_reset_of_a_weekly_limit_is_the_weeks(db: Any, cli: Any, caller: Any) -> None:
    _, b = sold_meter(db, caller, period="week", period_credit="0.0001", rpd=100)
    use(db, b.key, "r1", 100)
    out = js(cli, "limits", "show", b.sub)
    assert out["blocking"] == "period_limit_reached"
    assert out["next_reset"] == out["period"]["resets_at"] != out["today"]["resets_at"]
    from planctl.domain.clock import iso
    from planctl.metering.admission import authorize

    denied = authorize(db, catalogs(db), b.secret, model="unit", now=NOW)
    assert (denied.reason, iso(denied.next_reset)) == ("period_limit_reached", out["period"]["resets_at"])
    assert out["period"]["resets_at"] == "2026-11-22T16:00:00+00:00"  # Monday 00:00 in Beijing
    assert denied.message.endswith("it resets at 2026-11-23 00:00 CST")


# ---------------------------------------------------------------- several processes, one subscription

WORKERS = 4
EST = 1000  # µcr held per request; real costs are 500..1000


def _meter_worker(db_url: str, secret: str, key_id: str, wid: int, barrier: Any, out: Any) -> None:
    """A spawned process: authorize with a hold, record against it, until denied."""
    import time

    from planctl.domain.errors import PlanctlError
    from planctl.metering.admission import authorize
    from planctl.metering.recording import UsageInput, record
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    log: list[tuple[Any, ...]] = []
    try:
        database = open_database(resolve_target(db_url), now=NOW)
        try:
            barrier.wait(timeout=60)
            n = 0
            while True:
                try:
                    a = authorize(database, catalogs(database), secret, model="unit", reserve=EST, now=NOW)
                except PlanctlError as exc:  # a hold refused by a concurrent request
                    log.append(("refused", exc.reason))
                    break
                if not a.allowed:
                    log.append(("denied", a.reason))
                    break
                rid, cost = f"w{wid}-{n}", 500 + (n * 37 + wid * 101) % 501
                time.sleep(0.005 + 0.002 * ((n + wid) % 4))  # the request is in flight upstream, its hold held
                r = record(database, catalogs(database), UsageInput(
                    request_id=rid, key=key_id, model="unit", input_tokens=cost, output_tokens=0, status_code=200,
                    reservation=a.reservation_id), now=NOW)
                log.append(("ok", rid, a.reservation_id, cost, r.record.charged_plan, r.duplicate))
                n += 1
        finally:
            database.dispose()
        out.put(("done", wid, log))
    except BaseException as exc:  # report instead of dying silently
        out.put(("crash", wid, f"{type(exc).__name__}: {exc}", log))


@pytest.fixture(scope="module")
def pool() -> Any:
    from helpers.procs import Processes

    workers = Processes(__name__, WORKERS)
    yield workers
    workers.close()


def test_processes_admit_and_record_against_one_subscription_until_credit_runs_out(
        db: Any, db_url: str, caller: Any, pool: Any) -> None:
    from sqlalchemy import func
    from sqlmodel import select

    from planctl.store.tables import LedgerEntry, Reservation, UsageRecord

    install(db, caller, plan("shared", total_credit="0.04"))  # 40 requests at the estimate
    acc = account(db, caller)
    b = buy(db, caller, acc, "shared")
    team_key, team_secret = team(db, caller, b.sub)
    creds = [(b.secret, b.key), (b.secret, b.key), (team_secret, team_key), (team_secret, team_key)]
    outcomes = pool.run("_meter_worker", [(db_url, secret, key, i) for i, (secret, key) in enumerate(creds)])
    logs = [entry for _, _, log in outcomes for entry in log]
    admitted = [e for e in logs if e[0] == "ok"]
    endings = [log[-1] for _, _, log in outcomes]
    assert all(e[0] in ("denied", "refused") and e[1] == "credit_exhausted" for e in endings), endings
    assert 40 <= len(admitted) <= 80
    assert sum(1 for _, _, log in outcomes if len(log) > 1) >= 2, "the processes did not interleave"
    assert all(e[4] == e[3] and e[5] is False for e in admitted)  # each charged its full cost, none a duplicate
    ids = {e[1] for e in admitted}
    assert len(ids) == len(admitted)
    # no record lost: every admitted request has exactly one usage record
    records = rows(db, UsageRecord)
    assert sorted(r.request_id for r in records) == sorted(ids)
    # no request id charged twice
    with db.read() as session:
        per_request = dict(session.execute(
            select(LedgerEntry.request_id, func.count()).where(LedgerEntry.kind == "debit", LedgerEntry.pool == "plan")
            .group_by(LedgerEntry.request_id)).all())
    assert set(per_request) == ids and set(per_request.values()) == {1}
    s = sub_row(db, b.sub)
    assert s.credit_used == sum(e[3] for e in admitted) == sum(r.cost for r in records)
    assert 0 <= s.credit_used <= s.credit_granted == 40 * EST
    assert s.credit_granted - s.credit_used < EST + 1000 * WORKERS  # it ran until the credit was gone
    assert s.credit_reserved == 0
    assert key_row(db, b.key).credit_used + key_row(db, team_key).credit_used == s.credit_used
    assert key_row(db, b.key).credit_reserved == key_row(db, team_key).credit_reserved == 0
    # every reservation is closed, and settled by its own request
    holds = rows(db, Reservation)
    assert {h.status for h in holds} == {"settled"}
    assert {h.id: h.request_id for h in holds} == {e[2]: e[1] for e in admitted}
    checks_ok(db)


ROUNDS = 8


def _expiring_worker(db_url: str, secret: str, key_id: str, wid: int, barrier: Any, out: Any) -> None:
    """Holds that expire while their request is in flight: the other processes' admissions release
    them (each process's clock runs at its own speed), while this one records against them."""
    import time

    from planctl.metering.admission import authorize
    from planctl.metering.recording import UsageInput, record
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    log: list[tuple[Any, ...]] = []
    try:
        database = open_database(resolve_target(db_url), now=NOW)
        try:
            barrier.wait(timeout=60)
            for n in range(ROUNDS):
                now = NOW + timedelta(seconds=n * (wid + 1))
                a = authorize(database, catalogs(database), secret, model="unit", reserve=EST, now=now,
                              hold_for=timedelta(seconds=2))
                if not a.allowed:
                    log.append(("denied", a.reason))
                    continue
                rid, cost = f"x{wid}-{n}", 300 + 50 * ((n + wid) % 5)
                time.sleep(0.003)
                u = UsageInput(request_id=rid, key=key_id, model="unit", input_tokens=cost,
                               output_tokens=0, status_code=200, reservation=a.reservation_id)
                r = record(database, catalogs(database), u, now=now + timedelta(seconds=1))
                log.append(("ok", rid, a.reservation_id, cost, r.record.charged_plan, r.duplicate))
        finally:
            database.dispose()
        out.put(("done", wid, log))
    except BaseException as exc:
        out.put(("crash", wid, f"{type(exc).__name__}: {exc}", log))


def test_holds_expiring_while_requests_are_in_flight_are_released_once(db: Any, db_url: str, caller: Any,
                                                                       pool: Any) -> None:
    """A stale hold is released by whichever process sees it first, or settled by its record:
    never both, so no balance of holds goes below zero (SPEC §11 "Concurrency")."""
    from sqlalchemy import func
    from sqlmodel import select

    from planctl.store.tables import LedgerEntry, Reservation, UsageRecord

    install(db, caller, plan("shared", total_credit="1"))
    acc = account(db, caller)
    b = buy(db, caller, acc, "shared")
    team_key, team_secret = team(db, caller, b.sub)
    creds = [(b.secret, b.key), (b.secret, b.key), (team_secret, team_key), (team_secret, team_key)]
    outcomes = pool.run("_expiring_worker", [(db_url, secret, key, i) for i, (secret, key) in enumerate(creds)])
    admitted = [e for _, _, log in outcomes for e in log if e[0] == "ok"]
    assert len(admitted) == WORKERS * ROUNDS, [e for _, _, log in outcomes for e in log if e[0] != "ok"]
    assert sorted(r.request_id for r in rows(db, UsageRecord)) == sorted(e[1] for e in admitted)
    assert all(e[4] == e[3] and e[5] is False for e in admitted)
    holds = rows(db, Reservation)
    assert {h.status for h in holds} <= {"settled", "expired", "held"}
    with db.read() as session:
        releases = dict(session.execute(
            select(LedgerEntry.reason, func.count()).where(LedgerEntry.kind == "release")
            .group_by(LedgerEntry.reason)).all())
    assert set(releases.values()) == {1}, {k: v for k, v in releases.items() if v != 1}
    s = sub_row(db, b.sub)
    assert s.credit_used == sum(e[3] for e in admitted)
    assert s.credit_reserved == sum(h.amount for h in holds if h.status == "held") >= 0
    assert key_row(db, b.key).credit_reserved >= 0 and key_row(db, team_key).credit_reserved >= 0
    checks_ok(db)


# ---------------------------------------------------------------- the period and the day agree (issue #11.3)


def _three_views(cli: Any, sub: str, key: str, when: datetime) -> tuple[str, str, str]:
    limits_sub, limits_key = js(cli, "limits", "show", sub, when=when), js(cli, "limits", "show", key, when=when)
    total = js(cli, "usage", "--since", "today", "--sum", "--key", key, when=when)["consumption"]
    return limits_sub["period"]["used"], limits_key["key"]["used_today"], total


def test_a_record_before_its_subscription_started_is_refused_so_every_counter_agrees(
        db: Any, cli: Any, caller: Any, tmp_path: Path) -> None:
    """Such a record counted in the first period but on an earlier natural day: refused instead
    (with its line number on import), and limits show's period, the key's day and the usage log's
    today agree, for a subscription started today and one started days ago."""
    install(db, caller, plan("daily", period="day", period_credit="1", total_credit="10"))
    fresh = buy(db, caller, account(db, caller), "daily")  # starts at NOW, 12:00 in Beijing
    old = buy(db, caller, account(db, caller, "older", now=NOW - timedelta(days=3)), "daily",
              now=NOW - timedelta(days=3))

    def line(rid: str, key: str, at: datetime | None, tokens: int) -> str:
        return json.dumps({"request_id": rid, "key": key, "model": "unit", "input": tokens, "output": 0,
                           "status": 200, **({"time": z(at)} if at else {})})

    lines = [line("f1", fresh.key, NOW - timedelta(hours=13), 100),  # the previous day in Beijing, before start
             line("f2", fresh.key, NOW - timedelta(minutes=30), 200),  # today in Beijing, before start
             line("f3", fresh.key, NOW + timedelta(minutes=5), 300), line("f4", fresh.key, None, 400),
             line("o1", old.key, NOW - timedelta(hours=13), 500),  # yesterday, within the subscription
             line("o2", old.key, NOW - timedelta(minutes=30), 600), line("o3", old.key, None, 700)]
    (path := tmp_path / "u.jsonl").write_text("\n".join(lines) + "\n")
    result = run(cli, "usage", "import", str(path), "--json", when=NOW + timedelta(minutes=10))
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert (report["new"], [r["line"] for r in report["rejected_lines"]]) == (5, [1, 2])
    assert all("before subscription" in r["error"] for r in report["rejected_lines"])
    later = NOW + timedelta(minutes=20)
    assert _three_views(cli, fresh.sub, fresh.key, later) == (cr(700),) * 3
    assert _three_views(cli, old.sub, old.key, later) == (cr(1300),) * 3
    checks_ok(db)
