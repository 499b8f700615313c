"""Sales services on real databases: buy, renew, upgrade, direct renewal, discount codes,
idempotency, extra usage, top-ups and refunds.

Every test calls the services with an explicit `now` on the `db` fixture (SQLite,
and PostgreSQL when PLANCTL_TEST_DATABASE_URL is set). The pure rules (month
arithmetic, proration, code checks) are unit-tested in tests/test_domain_*.py;
here they are checked end to end: what is written, and that a refusal writes
nothing. Concurrency runs spawned processes against the same database.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import pytest

from helpers import CR, ENDS, NOW, OPENS, US, db_dump as dump, rows, utc

from helpers.sales import account, checks_ok, order_row, sell
from planctl.cli.hints import word

PRO, LITE, MAX = "codex-pro-monthly", "codex-lite-monthly", "codex-max-monthly"
# ---------------------------------------------------------------- helpers


def buy(db: Any, caller: Any, acc: str, plan: str = PRO, now: datetime = NOW, **request: Any) -> Any:
    return sell(db, caller, now, kind="buy", account=acc, item=plan, **request)


def renew(db: Any, caller: Any, sub: str, now: datetime, **request: Any) -> Any:
    return sell(db, caller, now, kind="renew", subscription=sub, **request)


def upgrade(db: Any, caller: Any, sub: str, to: str, now: datetime = NOW, **request: Any) -> Any:
    return sell(db, caller, now, kind="upgrade", subscription=sub, item=to, **request)


def sub_row(db: Any, sub_id: str) -> Any:
    from planctl.store.tables import Subscription

    with db.read() as session:
        return session.get(Subscription, sub_id)


def ledger(db: Any, **match: Any) -> list[tuple[str, str, int, str | None]]:
    """(kind, pool, amount, order_id) of matching ledger entries, in order."""
    from planctl.store.tables import LedgerEntry

    entries = rows(db, LedgerEntry, *(getattr(LedgerEntry, k) == v for k, v in match.items()))
    return [(e.kind, e.pool, e.amount, e.order_id) for e in sorted(entries, key=lambda e: e.id)]


def keys_of(db: Any, sub_id: str) -> list[Any]:
    from planctl.store.tables import ApiKey

    return rows(db, ApiKey, ApiKey.subscription_id == sub_id)


def code(db: Any, caller: Any, name: str, value: str, **spec: Any) -> Any:
    from planctl.services import discounts

    return discounts.create(db, {"code": name, "value": value, **spec}, caller=caller, now=NOW - timedelta(days=1))


def redemptions(db: Any, name: str) -> int:
    from planctl.services import discounts

    return discounts.get(db, name).redemptions


def refund(db: Any, caller: Any, order_id: str, now: datetime = NOW, *, amount: int | None = None,
           reason: str | None = None, details: dict[str, str] | None = None, dry_run: bool = False) -> Any:
    from planctl.services import refunds

    return refunds.refund(db, order_id, amount=amount, reason=reason, details=details, caller=caller, now=now,
                          dry_run=dry_run)


def refused(db_url: str, action: Any, reason: str, text: str = "", error: Any = None) -> Any:
    """`action()` must raise (Refused unless told) with `reason` and `text`, and write nothing."""
    from planctl.domain.errors import Refused

    before = dump(db_url)
    with pytest.raises(error or Refused) as info:
        action()
    assert info.value.reason == reason, info.value.message
    assert text in word(info.value)  # as the operator reads it (cli/hints.py)
    assert dump(db_url) == before, f"{reason}: the database changed"
    return info.value


# ---------------------------------------------------------------- buy


def test_buy_creates_subscription_credit_ledger_and_one_key(db: Any, caller: Any) -> None:
    from planctl.services.audit import AuditFilter, entries
    from planctl.store.tables import ApiKey, Order, Subscription

    acc = account(db, caller)
    result = buy(db, caller, acc, payment_method="alipay", payment_ref="2026112122001")
    order, sub = result.order, result.subscription
    assert (order.kind, order.account_id, order.item, order.status) == ("buy", acc, PRO, "paid")
    assert (order.list_price, order.discount_amount, order.payable, order.refunded) == (29900, 0, 29900, 0)
    assert (order.payment_method, order.payment_ref, order.currency) == ("alipay", "2026112122001", "CNY")
    assert (order.credit_granted, order.validity_granted, order.subscription_id) == (4500 * CR, "1mo", sub.id)
    assert order.id == "ORD-20261121-0001" and order.created_at == order.paid_at == NOW

    stored = sub_row(db, sub.id)
    assert (stored.account_id, stored.status, stored.starts_at, stored.ends_at) == (acc, "active", NOW, ENDS)
    assert (stored.credit_granted, stored.credit_used, stored.anchor_day) == (4500 * CR, 0, 21)
    assert stored.plan_version_id == order.plan_version_id
    assert ledger(db, subscription_id=sub.id) == [("grant", "plan", 4500 * CR, order.id)]

    keys = keys_of(db, sub.id)
    assert len(keys) == 1 and len(rows(db, ApiKey)) == 1
    key = keys[0]
    assert (key.name, key.kind, key.status, key.account_id) == (f"Subscription Access - {PRO}", "subscription",
                                                                "active", acc)
    secret = result.secret.secret
    assert secret.startswith("sk-") and len(secret) >= 43
    assert key.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert (key.prefix, key.last4) == (secret[:7], secret[-4:]) and key.id == result.key.id
    assert len(rows(db, Order)) == 1 and len(rows(db, Subscription)) == 1

    audit = entries(db, AuditFilter(target=f"order:{order.id}"))
    assert len(audit) == 1 and "299.00 CNY" in audit[0].summary and secret not in audit[0].summary


def test_second_buy_of_the_same_plan_gets_a_distinct_key(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    first, second = buy(db, caller, acc), buy(db, caller, acc)
    assert first.subscription.id != second.subscription.id
    assert first.key.name == f"Subscription Access - {PRO}"
    assert second.key.name != first.key.name and second.key.name.startswith(f"Subscription Access - {PRO}")
    assert first.secret.secret != second.secret.secret
    assert [k.name for k in keys_of(db, second.subscription.id)] == [second.key.name]
    assert second.order.id == "ORD-20261121-0002"


@pytest.mark.parametrize(("bought", "ends"), [
    # bought Jan 31 01:00 Beijing: Feb 28, then Mar 31, Apr 30, May 31 (01:00 Beijing = 17:00 UTC the day before)
    (utc(2026, 1, 30, 17), [utc(2026, 2, 27, 17), utc(2026, 3, 30, 17), utc(2026, 4, 29, 17), utc(2026, 5, 30, 17)]),
    (utc(2028, 1, 30, 17), [utc(2028, 2, 28, 17), utc(2028, 3, 30, 17), utc(2028, 4, 29, 17), utc(2028, 5, 30, 17)]),
], ids=["2026", "leap-2028"])
def test_month_end_anchoring_across_february_and_three_stacked_renewals(
        db: Any, caller: Any, bought: datetime, ends: list[datetime]) -> None:
    acc = account(db, caller)
    result = buy(db, caller, acc, now=bought)
    sub = result.subscription.id
    assert (sub_row(db, sub).starts_at, sub_row(db, sub).ends_at, sub_row(db, sub).anchor_day) == (bought, ends[0], 31)
    for n, end in enumerate(ends[1:], start=1):
        renewed = renew(db, caller, sub, now=ends[n - 1] - timedelta(days=1))
        assert renewed.order.kind == "renew" and renewed.order.subscription_id == sub
        assert renewed.order.payable == 29900 and renewed.order.credit_granted == 4500 * CR
        assert renewed.key is None and renewed.secret is None
        stored = sub_row(db, sub)
        assert stored.ends_at == end and stored.starts_at == bought
        assert stored.credit_granted == (n + 1) * 4500 * CR
    assert [k.id for k in keys_of(db, sub)] == [result.key.id]  # keys stay the same
    assert [e[:3] for e in ledger(db, subscription_id=sub)] == [("grant", "plan", 4500 * CR)] * 4
    checks_ok(db)


def test_start_later_than_now(db: Any, caller: Any) -> None:
    from planctl.services.sales import get_subscription

    acc = account(db, caller)
    start = utc(2026, 12, 1, 16)  # Dec 2 00:00 Beijing
    sub = buy(db, caller, acc, start=start).subscription
    assert (sub.starts_at, sub.ends_at, sub.anchor_day) == (start, utc(2027, 1, 1, 16), 2)
    assert get_subscription(db, sub.id, now=NOW).state == "not-started"
    assert get_subscription(db, sub.id, now=start).state == "active"
    assert get_subscription(db, sub.id, now=utc(2027, 1, 1, 16)).state == "expired"
    # a little backdating is tolerated (clock skew), more is refused
    assert buy(db, caller, acc, start=NOW - timedelta(minutes=30)).subscription.starts_at == NOW - timedelta(minutes=30)


def test_buy_refusals_write_nothing(db: Any, db_url: str, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput, NotFound
    from planctl.services import catalog

    acc = account(db, caller)
    catalog.set_on_sale(db, "codex-weekly", False, caller=caller, now=NOW)
    catalog.update_plan(db, LITE, {"purchase_start": "2027-01-01T00:00:00+08:00"}, caller=caller, now=NOW)
    refused(db_url, lambda: buy(db, caller, acc, "codex-weekly"), "plan_not_on_sale", "removed from sale")
    refused(db_url, lambda: buy(db, caller, acc, LITE), "purchase_window_closed", "goes on sale")
    refused(db_url, lambda: buy(db, caller, acc, "no-such-plan"), "not_found", "unknown plan", NotFound)
    refused(db_url, lambda: buy(db, caller, "nobody"), "not_found", "unknown account", NotFound)
    refused(db_url, lambda: buy(db, caller, acc, start=NOW - timedelta(hours=2)), "invalid_input", "in the past",
            InvalidInput)
    refused(db_url, lambda: buy(db, caller, acc, start=NOW + timedelta(days=400)), "invalid_input", "a year",
            InvalidInput)
    refused(db_url, lambda: buy(db, caller, acc, payment_method="ali pay"), "invalid_input", "payment method",
            InvalidInput)
    refused(db_url, lambda: buy(db, caller, acc, idempotency_key=""), "invalid_input", "idempotency key",
            InvalidInput)


def test_dry_run_quotes_and_writes_nothing(db: Any, db_url: str, caller: Any) -> None:
    acc = account(db, caller)
    code(db, caller, "TENOFF", "10%")
    before = dump(db_url)
    quote = buy(db, caller, acc, code="TENOFF", dry_run=True)
    assert dump(db_url) == before
    assert quote.dry_run and not quote.replayed
    o = quote.order
    assert (o.list_price, o.discount_amount, o.payable, o.credit_granted, o.validity_granted) == (
        29900, 2990, 26910, 4500 * CR, "1mo")
    assert quote.subscription.ends_at == ENDS
    assert redemptions(db, "TENOFF") == 0
    # the real sale is what the quote said
    real = buy(db, caller, acc, code="TENOFF")
    assert (real.order.id, real.order.payable, real.subscription.ends_at) == (o.id, 26910, ENDS)
    assert redemptions(db, "TENOFF") == 1


# ---------------------------------------------------------------- renew


@pytest.mark.parametrize("offset", [timedelta(0), US, timedelta(days=3) - US], ids=["first-instant", "+1us", "last-us"])
def test_renewal_window_is_open_from_its_first_instant_until_expiry(db: Any, caller: Any, offset: timedelta) -> None:
    acc = account(db, caller)
    sub = buy(db, caller, acc).subscription.id
    result = renew(db, caller, sub, now=OPENS + offset)
    assert result.order.kind == "renew"
    assert sub_row(db, sub).ends_at == utc(2027, 1, 21, 4)  # from the current end, not from now
    assert sub_row(db, sub).credit_granted == 2 * 4500 * CR


def test_renewal_refusals_each_have_their_reason(db: Any, db_url: str, caller: Any) -> None:
    from planctl.services import catalog

    acc = account(db, caller)
    sub = buy(db, caller, acc).subscription.id
    refused(db_url, lambda: renew(db, caller, sub, OPENS - US), "renewal_window_not_open", "renewal opens at")
    refused(db_url, lambda: renew(db, caller, sub, NOW), "renewal_window_not_open")
    refused(db_url, lambda: renew(db, caller, sub, ENDS), "subscription_expired", "expired")
    refused(db_url, lambda: renew(db, caller, sub, ENDS + timedelta(days=9)), "subscription_expired", "direct renewal")
    catalog.update_plan(db, PRO, {"renewal_enabled": False}, caller=caller, now=NOW)
    refused(db_url, lambda: renew(db, caller, sub, OPENS), "renewal_disabled", "renewal is not enabled")
    catalog.set_on_sale(db, PRO, False, caller=caller, now=NOW)
    refused(db_url, lambda: renew(db, caller, sub, OPENS), "plan_not_on_sale", "removed from sale")
    # an expired subscription of a retired plan: expiry is what the buyer needs to hear
    refused(db_url, lambda: renew(db, caller, sub, ENDS), "subscription_expired")


def test_renewal_of_a_cancelled_subscription_is_refused(db: Any, db_url: str, caller: Any) -> None:
    acc = account(db, caller)
    bought = buy(db, caller, acc)
    refund(db, caller, bought.order.id)
    refused(db_url, lambda: renew(db, caller, bought.subscription.id, OPENS), "subscription_cancelled")


def test_renewal_uses_todays_price_but_keeps_the_anchor(db: Any, caller: Any) -> None:
    from planctl.services import catalog

    acc = account(db, caller)
    sub = buy(db, caller, acc).subscription.id
    catalog.update_plan(db, PRO, {"price": "279.00"}, caller=caller, now=NOW + timedelta(days=1))
    result = renew(db, caller, sub, OPENS)
    assert (result.order.list_price, result.order.payable) == (27900, 27900)


# ---------------------------------------------------------------- direct renewal


def test_direct_renewal_of_an_expired_subscription_restarts_from_now(db: Any, caller: Any) -> None:
    from planctl.services.sales import get_subscription

    acc = account(db, caller)
    bought = buy(db, caller, acc)
    sub = bought.subscription.id
    later = utc(2027, 1, 10, 2)  # Jan 10 10:00 Beijing, 20 days after expiry
    assert get_subscription(db, sub, now=later).state == "expired"
    result = sell(db, caller, later, kind="direct-renewal", subscription=sub, reason="ticket 4411: outage credit")
    assert result.order.kind == "direct-renewal" and result.order.reason == "ticket 4411: outage credit"
    assert any("available again" in n for n in result.notes)
    stored = sub_row(db, sub)
    assert (stored.starts_at, stored.ends_at, stored.anchor_day) == (NOW, utc(2027, 2, 10, 2), 10)
    assert stored.credit_granted == 2 * 4500 * CR
    view = get_subscription(db, sub, now=later)
    assert view.state == "active"
    assert [k.id for k in view.keys] == [bought.key.id]  # the same key, usable again
    checks_ok(db)


def test_direct_renewal_of_a_valid_subscription_extends_from_its_end(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    sub = buy(db, caller, acc).subscription.id
    result = sell(db, caller, NOW + timedelta(days=1), kind="direct-renewal", subscription=sub, reason="goodwill")
    assert not result.notes
    assert sub_row(db, sub).ends_at == utc(2027, 1, 21, 4)


def test_direct_renewal_of_an_exhausted_subscription(db: Any, caller: Any) -> None:
    from sqlalchemy import update

    from planctl.store.tables import Subscription

    acc = account(db, caller)
    sub = buy(db, caller, acc).subscription.id
    with db.write() as session:
        session.execute(update(Subscription).where(Subscription.id == sub).values(credit_used=4500 * CR))
    sell(db, caller, NOW + timedelta(days=2), kind="direct-renewal", subscription=sub, reason="exhausted early")
    stored = sub_row(db, sub)
    assert (stored.credit_granted - stored.credit_used, stored.ends_at) == (4500 * CR, utc(2027, 1, 21, 4))


def test_direct_renewal_refusals(db: Any, db_url: str, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput, NotFound

    acc = account(db, caller)
    bought = buy(db, caller, acc)
    sub = bought.subscription.id
    code(db, caller, "TENOFF", "10%")
    for reason in (None, "", "   "):
        refused(db_url, lambda: sell(db, caller, kind="direct-renewal", subscription=sub, reason=reason),
                "invalid_input", "--reason", InvalidInput)
    refused(db_url, lambda: sell(db, caller, kind="direct-renewal", subscription=sub, reason="x", code="TENOFF"),
            "invalid_input", "discount codes", InvalidInput)
    refused(db_url, lambda: sell(db, caller, kind="direct-renewal", subscription="sub_nothere", reason="x"),
            "not_found", "unknown subscription", NotFound)
    refund(db, caller, bought.order.id)
    refused(db_url, lambda: sell(db, caller, kind="direct-renewal", subscription=sub, reason="x"),
            "subscription_cancelled")


# ---------------------------------------------------------------- upgrade


@pytest.mark.parametrize(("at", "payable", "credit"), [
    (NOW, 20000, 3000 * CR),  # at the start: the whole difference
    (NOW + timedelta(days=15), 10000, 1500 * CR),  # half of the 30-day term
    (ENDS - timedelta(seconds=1), 1, 1158),  # last second: 1/2,592,000 of it, rounded up once
], ids=["start", "middle", "last-second"])
def test_upgrade_with_prorate(db: Any, caller: Any, at: datetime, payable: int, credit: int) -> None:
    from planctl.services.sales import get_subscription

    acc = account(db, caller)
    bought = buy(db, caller, acc, LITE)
    sub = bought.subscription.id
    result = upgrade(db, caller, sub, PRO, at, prorate=True)
    assert (result.order.kind, result.order.item, result.order.payable) == ("upgrade", PRO, payable)
    assert result.order.credit_granted == credit
    stored = sub_row(db, sub)
    assert (stored.starts_at, stored.ends_at) == (NOW, ENDS)  # end date kept
    assert stored.credit_granted == 1500 * CR + credit
    view = get_subscription(db, sub, now=at)
    assert (view.plan_slug, view.terms.slug, view.terms.tier) == (PRO, PRO, 2)  # the new terms apply now
    assert [k.id for k in view.keys] == [bought.key.id]
    assert bought.key.name == f"Subscription Access - {LITE}"  # the key keeps its name and identity
    assert ledger(db, subscription_id=sub)[-1] == ("grant", "plan", credit, result.order.id)
    checks_ok(db)


def test_upgrade_without_prorate_charges_the_whole_difference(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    sub = buy(db, caller, acc, LITE).subscription.id
    result = upgrade(db, caller, sub, PRO, NOW + timedelta(days=15))
    assert (result.order.payable, result.order.credit_granted) == (20000, 3000 * CR)
    again = upgrade(db, caller, sub, MAX, NOW + timedelta(days=16))
    assert (again.order.payable, again.order.credit_granted) == (40000, 7500 * CR)
    assert sub_row(db, sub).credit_granted == 12000 * CR


def test_upgrade_after_a_renewal_pays_for_every_remaining_term(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    sub = buy(db, caller, acc, LITE).subscription.id
    at = utc(2026, 12, 19, 4)
    renew(db, caller, sub, at)  # ends 2027-01-21; 1 whole term + 2 of 30 days left
    assert upgrade(db, caller, sub, PRO, at, dry_run=True).order.payable == 40000
    result = upgrade(db, caller, sub, PRO, at, prorate=True)
    assert (result.order.payable, result.order.credit_granted) == (21334, 3200 * CR)  # 20000 × 16/15, rounded up


def test_upgrade_prices_the_old_plan_as_sold(db: Any, caller: Any) -> None:
    from planctl.services import catalog

    acc = account(db, caller)
    sub = buy(db, caller, acc, LITE).subscription.id
    catalog.update_plan(db, LITE, {"price": "150.00", "total_credit": "2000"}, caller=caller, now=NOW)
    result = upgrade(db, caller, sub, PRO, NOW)
    assert (result.order.payable, result.order.credit_granted) == (20000, 3000 * CR)


def test_upgrade_refusals(db: Any, db_url: str, caller: Any) -> None:
    from planctl.domain.errors import NotFound
    from planctl.services import catalog

    acc = account(db, caller)
    pro = buy(db, caller, acc).subscription.id
    err = refused(db_url, lambda: upgrade(db, caller, pro, LITE), "downgrade_refused", "renew")
    assert "buy" in err.message
    refused(db_url, lambda: upgrade(db, caller, pro, PRO), "downgrade_refused")
    refused(db_url, lambda: upgrade(db, caller, pro, "codex-team-monthly"), "upgrade_other_family", "family")
    refused(db_url, lambda: upgrade(db, caller, pro, "nope-monthly"), "not_found", "unknown plan", NotFound)
    refused(db_url, lambda: upgrade(db, caller, "sub_nothere", MAX), "not_found", "unknown subscription", NotFound)
    refused(db_url, lambda: upgrade(db, caller, pro, MAX, ENDS), "subscription_expired")
    catalog.set_on_sale(db, MAX, False, caller=caller, now=NOW)
    refused(db_url, lambda: upgrade(db, caller, pro, MAX), "plan_not_on_sale")


# ---------------------------------------------------------------- plan versions


def test_a_sold_subscription_keeps_the_terms_it_was_sold_under(db: Any, caller: Any) -> None:
    from planctl.services import catalog
    from planctl.services.sales import get_subscription

    acc = account(db, caller)
    old = buy(db, caller, acc)
    catalog.update_plan(db, PRO, {"rpd": "9000", "price": "279.00", "total_credit": "9000"}, caller=caller, now=NOW)
    view = get_subscription(db, old.subscription.id, now=NOW)
    assert (view.terms.rpd, view.terms.price, view.terms.total_credit) == (5000, 29900, 4500 * CR)
    assert view.subscription.plan_version_id == old.order.plan_version_id
    assert sub_row(db, old.subscription.id).credit_granted == 4500 * CR
    assert order_row(db, old.order.id).list_price == 29900
    new = buy(db, caller, acc)
    assert new.order.plan_version_id != old.order.plan_version_id
    assert (new.order.payable, get_subscription(db, new.subscription.id, now=NOW).terms.rpd) == (27900, 9000)


# ---------------------------------------------------------------- discount codes


@pytest.mark.parametrize(("value", "discount"), [("10%", 2990), ("12.5%", 3737), ("20.00", 2000), ("500", 29900)])
def test_codes_take_percent_or_fixed_amounts(db: Any, caller: Any, value: str, discount: int) -> None:
    acc = account(db, caller)
    code(db, caller, "SPRING", value)
    order = buy(db, caller, acc, code="spring").order
    assert (order.discount_code, order.discount_amount, order.payable) == ("SPRING", discount, 29900 - discount)
    assert order.discount_terms["code"] == "SPRING" and order.discount_terms["value"] == value.replace("500", "500.00")
    assert redemptions(db, "SPRING") == 1


CODE_CASES = {
    "expired": (dict(valid_until=NOW - US), "code_expired", "expired at"),
    "not-yet-valid": (dict(valid_from=NOW + timedelta(hours=1)), "code_not_yet_valid", "valid from"),
    "used-up": (dict(max_redemptions=1), "code_used_up", "used up"),
    "per-account": (dict(max_per_account=1), "code_account_limit", "already used"),
    "other-plan": (dict(plans=[MAX]), "code_not_for_plan", f"not for {PRO}"),
    "order-kind": (dict(order_kinds=["renew"]), "code_not_for_order_kind", "buy orders"),
    "payment-method": (dict(payment_methods=["alipay"]), "code_payment_method", "payment method card"),
    "below-minimum": (dict(min_amount=30000), "code_below_minimum", "at least 300.00 CNY"),
}


@pytest.mark.parametrize("case", CODE_CASES)
def test_invalid_codes_are_refused_or_ignored_on_request(db: Any, db_url: str, caller: Any, case: str) -> None:
    spec, reason, text = CODE_CASES[case]
    acc = account(db, caller)
    code(db, caller, "SPRING", "10%", **spec)
    if case in ("used-up", "per-account"):
        assert buy(db, caller, acc, code="SPRING").order.discount_amount == 2990
    if case == "payment-method":
        assert buy(db, caller, acc, code="SPRING", payment_method="alipay").order.discount_amount == 2990
    used = redemptions(db, "SPRING")
    err = refused(db_url, lambda: buy(db, caller, acc, code="SPRING", payment_method="card"), reason, text)
    assert "--ignore-invalid-code" not in err.message  # the service names no flag: the CLI words the hint
    assert "--ignore-invalid-code" in word(err)
    result = buy(db, caller, acc, code="SPRING", payment_method="card", ignore_invalid_code=True)
    o = result.order
    assert (o.discount_code, o.discount_amount, o.payable, o.status) == (None, 0, 29900, "paid")
    assert any(n.startswith("code not applied, sold at list price") and text in n for n in result.notes)
    assert redemptions(db, "SPRING") == used


def test_disabled_and_unknown_codes(db: Any, db_url: str, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput, NotFound
    from planctl.services import discounts

    acc = account(db, caller)
    code(db, caller, "SPRING", "10%")
    discounts.disable(db, "SPRING", caller=caller, now=NOW)
    refused(db_url, lambda: buy(db, caller, acc, code="SPRING"), "code_inactive", "disabled")
    refused(db_url, lambda: buy(db, caller, acc, code="NOSUCH"), "not_found", "unknown discount code", NotFound)
    refused(db_url, lambda: buy(db, caller, acc, code="x"), "invalid_input", "invalid discount code", InvalidInput)


def test_codes_apply_to_renewals_upgrades_and_products(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    code(db, caller, "LOYAL", "10.00", order_kinds=["renew", "upgrade", "extra", "topup"])
    sub = buy(db, caller, acc, LITE).subscription.id
    assert upgrade(db, caller, sub, PRO, NOW, code="LOYAL").order.payable == 19000
    assert renew(db, caller, sub, OPENS, code="LOYAL").order.payable == 28900
    assert sell(db, caller, kind="extra", account=acc, item="extra-50", code="LOYAL").order.payable == 500
    assert redemptions(db, "LOYAL") == 3


# ---------------------------------------------------------------- idempotency


def test_same_idempotency_key_and_request_returns_the_same_order(db: Any, db_url: str, caller: Any) -> None:
    from planctl.store.tables import ApiKey, Order

    acc = account(db, caller)
    first = buy(db, caller, acc, idempotency_key="shop-7781", payment_method="alipay")
    before = dump(db_url)
    again = buy(db, caller, acc, idempotency_key="shop-7781", payment_method="alipay", now=NOW + timedelta(minutes=5))
    assert dump(db_url) == before  # no second charge, no second credit, no audit entry
    assert again.replayed and not first.replayed
    assert again.order.id == first.order.id and again.subscription.id == first.subscription.id
    assert again.secret is None and again.key is None  # the secret was shown once
    assert any(first.order.id in n for n in again.notes)
    assert len(rows(db, Order)) == 1 and len(rows(db, ApiKey)) == 1
    assert ledger(db) == [("grant", "plan", 4500 * CR, first.order.id)]


@pytest.mark.parametrize("change", [dict(item=MAX), dict(payment_method="card"), dict(code="SPRING"),
                                    dict(account="other")], ids=["plan", "method", "code", "account"])
def test_same_idempotency_key_with_another_request_is_a_conflict(db: Any, db_url: str, caller: Any,
                                                                  change: dict[str, Any]) -> None:
    from planctl.domain.errors import Conflict

    acc = account(db, caller)
    account(db, caller, "other")
    code(db, caller, "SPRING", "10%")
    first = buy(db, caller, acc, idempotency_key="shop-7781", payment_method="alipay")
    request = {"kind": "buy", "account": acc, "item": PRO, "payment_method": "alipay", **change}
    err = refused(db_url, lambda: sell(db, caller, idempotency_key="shop-7781", **request),
                  "idempotency_mismatch", first.order.id, Conflict)
    assert "new key" in err.message


# ---------------------------------------------------------------- extra usage and top-ups


def test_extra_pack_is_an_order_with_an_expiring_pack(db: Any, caller: Any) -> None:
    from planctl.store.tables import ExtraPack

    acc = account(db, caller)
    result = sell(db, caller, kind="extra", account=acc, item="extra-50")
    o = result.order
    assert (o.kind, o.item, o.payable, o.credit_granted, o.validity_granted, o.subscription_id) == (
        "extra", "extra-50", 1500, 50 * CR, "30d", None)
    (pack,) = rows(db, ExtraPack)
    assert (pack.account_id, pack.order_id, pack.credit, pack.used) == (acc, o.id, 50 * CR, 0)
    assert pack.expires_at == NOW + timedelta(days=30)
    assert ledger(db, pool="extra") == [("grant", "extra", 50 * CR, o.id)]
    checks_ok(db)


@pytest.mark.parametrize(("credit", "price"), [(12_345_678, 1235), (5000, 1), (100 * CR, 10000)])
def test_topup_by_the_credit_rounds_the_price_up(db: Any, caller: Any, credit: int, price: int) -> None:
    from planctl.services import accounts

    acc = account(db, caller)
    o = sell(db, caller, kind="topup", account=acc, item="payg-standard", amount=credit).order
    assert (o.kind, o.list_price, o.payable, o.credit_granted) == ("topup", price, price, credit)
    assert accounts.get(db, acc).payg_balance == credit
    assert ledger(db, pool="payg") == [("grant", "payg", credit, o.id)]


def test_topup_with_a_fixed_pack(db: Any, db_url: str, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput, NotFound
    from planctl.services import accounts

    acc = account(db, caller)
    o = sell(db, caller, kind="topup", account=acc, item="payg-100").order
    assert (o.payable, o.credit_granted) == (9500, 100 * CR)
    sell(db, caller, kind="topup", account=acc, item="payg-100", amount=100 * CR)
    assert accounts.get(db, acc).payg_balance == 200 * CR
    refused(db_url, lambda: sell(db, caller, kind="topup", account=acc, item="payg-100", amount=5 * CR),
            "invalid_input", "fixed pack", InvalidInput)
    refused(db_url, lambda: sell(db, caller, kind="topup", account=acc, item="payg-standard"),
            "invalid_input", "amount", InvalidInput)
    refused(db_url, lambda: sell(db, caller, kind="topup", account=acc, item="extra-50", amount=CR),
            "not_found", "pay-as-you-go", NotFound)
    refused(db_url, lambda: sell(db, caller, kind="extra", account=acc, item="payg-100"),
            "not_found", "extra-usage", NotFound)
    checks_ok(db)


# ---------------------------------------------------------------- refunds


def test_full_refund_within_the_unused_window_cancels_the_subscription(db: Any, caller: Any) -> None:
    from planctl.services.sales import get_subscription

    acc = account(db, caller)
    bought = buy(db, caller, acc)
    at = NOW + timedelta(days=7) - US  # the last instant of "unused:7d"
    result = refund(db, caller, bought.order.id, at)
    assert (result.refund.amount, result.refund.credit_reversed, result.refund.policy) == (29900, 4500 * CR,
                                                                                          "unused:7d")
    assert result.cancelled_subscription == bought.subscription.id and result.credit_note is None
    o = order_row(db, bought.order.id)
    assert (o.status, o.refunded) == ("refunded", 29900)
    stored = sub_row(db, bought.subscription.id)
    assert (stored.status, stored.cancelled_at, stored.credit_granted) == ("cancelled", at, 0)
    assert get_subscription(db, stored.id, now=at).state == "cancelled"
    assert ledger(db, subscription_id=stored.id) == [("grant", "plan", 4500 * CR, o.id),
                                                     ("refund-reversal", "plan", -4500 * CR, o.id)]
    checks_ok(db)


def test_refund_refusals(db: Any, db_url: str, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput, NotFound
    from planctl.store.tables import Order

    acc = account(db, caller)
    pro = buy(db, caller, acc).order.id
    day = buy(db, caller, acc, "codex-day-pass").order.id  # refund policy "none"
    with db.write() as session:
        session.add(Order(id="ORD-20261121-0099", kind="extra", account_id=acc, item="extra-50", currency="CNY",
                          list_price=1500, payable=1500, payment_method="manual", status="pending", created_at=NOW))
    refused(db_url, lambda: refund(db, caller, pro, NOW + timedelta(days=7)), "refund_window_closed", "closed")
    refused(db_url, lambda: refund(db, caller, day), "refund_not_allowed", "--amount")
    refused(db_url, lambda: refund(db, caller, day, amount=100), "invalid_input", "--reason", InvalidInput)
    refused(db_url, lambda: refund(db, caller, day, amount=991, reason="x"), "refund_exceeds_paid", "exceeds")
    refused(db_url, lambda: refund(db, caller, day, amount=0, reason="x"), "invalid_input", "greater than zero",
            InvalidInput)
    refused(db_url, lambda: refund(db, caller, "ORD-20261121-0099"), "order_not_paid", "pending")
    refused(db_url, lambda: refund(db, caller, "ORD-20990101-0001"), "not_found", "unknown order", NotFound)
    refund(db, caller, pro)
    refused(db_url, lambda: refund(db, caller, pro), "nothing_to_refund", "already been fully refunded")
    refused(db_url, lambda: refund(db, caller, pro, amount=1, reason="again"), "nothing_to_refund")


def test_override_refunds_are_partial_and_never_exceed_what_was_paid(db: Any, db_url: str, caller: Any) -> None:
    acc = account(db, caller)
    bought = buy(db, caller, acc, "codex-day-pass")
    first = refund(db, caller, bought.order.id, amount=400, reason="outage on the 21st")
    assert (first.refund.amount, first.refund.policy, first.refund.reason) == (400, "override", "outage on the 21st")
    assert first.cancelled_subscription is None
    assert order_row(db, bought.order.id).status == "partially-refunded"
    refused(db_url, lambda: refund(db, caller, bought.order.id, amount=591, reason="x"), "refund_exceeds_paid",
            "(5.90 CNY)")
    last = refund(db, caller, bought.order.id, amount=590, reason="rest")
    assert last.cancelled_subscription == bought.subscription.id  # the whole purchase is refunded now
    o = order_row(db, bought.order.id)
    assert (o.status, o.refunded) == ("refunded", 990)
    checks_ok(db)


def test_partial_override_reverses_a_proportional_share_of_the_credit(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    bought = buy(db, caller, acc)
    result = refund(db, caller, bought.order.id, amount=2990, reason="slow week")  # a tenth of 299.00
    assert result.refund.credit_reversed == 450 * CR
    assert sub_row(db, bought.subscription.id).credit_granted == 4050 * CR
    assert sub_row(db, bought.subscription.id).status == "active"
    checks_ok(db)


def test_policy_refund_after_a_partial_override_refunds_the_rest(db: Any, caller: Any) -> None:
    """Nothing was used: 'unused:7d' still applies to what is left after an operator's partial refund."""
    acc = account(db, caller)
    bought = buy(db, caller, acc)
    refund(db, caller, bought.order.id, amount=10000, reason="goodwill")
    rest = refund(db, caller, bought.order.id, NOW + timedelta(days=1))
    assert rest.refund.amount == 19900
    assert order_row(db, bought.order.id).status == "refunded"
    assert sub_row(db, bought.subscription.id).credit_granted == 0
    checks_ok(db)


def test_prorated_policy_without_usage_refunds_everything(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    bought = buy(db, caller, acc, MAX)
    result = refund(db, caller, bought.order.id, NOW + timedelta(days=20))
    assert (result.refund.amount, result.refund.credit_reversed, result.refund.policy) == (69900, 12000 * CR,
                                                                                          "prorated")


def test_refund_dry_run_and_support_details(db: Any, db_url: str, caller: Any) -> None:
    from planctl.services import refunds

    acc = account(db, caller)
    bought = buy(db, caller, acc)
    details = {"plan": "Codex Pro", "key_name": bought.key.name, "request_time": "2026-11-21T11:58:00+08:00",
               "request_id": "req_8f2a", "ignored": ""}
    before = dump(db_url)
    quote = refund(db, caller, bought.order.id, details=details, dry_run=True)
    assert dump(db_url) == before
    assert (quote.refund.amount, quote.cancelled_subscription) == (29900, bought.subscription.id)
    refund(db, caller, bought.order.id, details=details, reason="customer changed plans")
    (stored,) = refunds.list_refunds(db, bought.order.id)
    assert stored.details == {k: v for k, v in details.items() if v}
    assert (stored.reason, stored.amount) == ("customer changed plans", 29900)


def test_refunds_of_products_take_their_credit_back(db: Any, db_url: str, caller: Any) -> None:
    from planctl.services import accounts
    from planctl.store.tables import ExtraPack

    acc = account(db, caller)
    extra = sell(db, caller, kind="extra", account=acc, item="extra-50").order.id
    topup = sell(db, caller, kind="topup", account=acc, item="payg-100").order.id
    assert refund(db, caller, extra).refund.credit_reversed == 50 * CR
    assert rows(db, ExtraPack)[0].credit == 0
    assert refund(db, caller, topup).refund.amount == 9500
    assert accounts.get(db, acc).payg_balance == 0
    checks_ok(db)


# ---------------------------------------------------------------- ledger invariants


def test_db_check_is_clean_after_a_mixed_sequence(db: Any, caller: Any) -> None:
    acc, bob = account(db, caller), account(db, caller, "bob")
    code(db, caller, "TENOFF", "10%")
    a = buy(db, caller, acc, LITE, code="TENOFF")
    b = buy(db, caller, bob, idempotency_key="k1")
    buy(db, caller, bob, idempotency_key="k1")
    upgrade(db, caller, a.subscription.id, PRO, NOW + timedelta(days=3), prorate=True)
    renew(db, caller, b.subscription.id, OPENS)
    sell(db, caller, ENDS + timedelta(days=1), kind="direct-renewal", subscription=a.subscription.id, reason="ops")
    sell(db, caller, kind="extra", account=acc, item="extra-200")
    t = sell(db, caller, kind="topup", account=bob, item="payg-standard", amount=7_500_000)
    refund(db, caller, b.order.id, NOW + timedelta(days=1), amount=5000, reason="partial")
    refund(db, caller, t.order.id)
    d = buy(db, caller, bob, "codex-day-pass")
    refund(db, caller, d.order.id, amount=990, reason="full override")
    checks_ok(db)


def test_upgrade_to_a_plan_without_a_total_pool_keeps_the_ledger_consistent(db: Any, caller: Any) -> None:
    """A purely periodic plan has no total pool: `db check` must still balance the ledger."""
    from planctl.services import catalog

    catalog.create_plan(db, {"slug": "codex-unlimited", "name": "Codex Unlimited", "family": "codex", "tier": 9,
                             "price": "999.00", "validity": "1mo", "period": "day", "period_credit": "900",
                             "models": ["gpt-5.4"], "groups": ["default"]}, caller=caller, now=NOW)
    acc = account(db, caller)
    sub = buy(db, caller, acc, LITE).subscription.id
    result = upgrade(db, caller, sub, "codex-unlimited", NOW)
    assert result.order.payable == 90000 and sub_row(db, sub).credit_granted is None
    checks_ok(db)


# ---------------------------------------------------------------- concurrency


RACERS = 4


def _sell(db_url: str, request: dict[str, Any], barrier: Any, results: Any) -> None:
    """A spawned process: open the database, wait for the others at the barrier, sell."""
    from planctl.domain.errors import PlanctlError
    from planctl.services.audit import Caller
    from planctl.services.database import open_database
    from planctl.services.sales import SaleRequest, sell as sell_
    from planctl.store.location import resolve_target

    database = open_database(resolve_target(db_url), now=NOW)
    try:
        barrier.wait(timeout=60)
        try:
            r = sell_(database, SaleRequest(**request), caller=Caller("racer", "buy"), now=NOW)
            results.put(("ok", r.order.id, r.order.discount_code, r.replayed, request.get("code")))
        except PlanctlError as exc:
            results.put(("error", exc.reason, exc.message, None, request.get("code")))
    finally:
        database.dispose()


@pytest.fixture(scope="module")
def racers() -> Any:
    from helpers.procs import Processes

    pool = Processes(__name__, RACERS)
    yield pool
    pool.close()


def test_two_processes_race_for_the_last_redemption(db: Any, db_url: str, caller: Any, racers: Any) -> None:
    from planctl.store.tables import Order

    acc, bob = account(db, caller), account(db, caller, "bob")
    code(db, caller, "LASTONE", "10%", max_redemptions=1)
    code(db, caller, "LASTTWO", "10%", max_redemptions=1)
    strict = [{"kind": "buy", "account": a, "item": PRO, "code": "LASTONE"} for a in (acc, bob)]
    lenient = [{"kind": "buy", "account": a, "item": PRO, "code": "LASTTWO", "ignore_invalid_code": True}
               for a in (acc, bob)]
    outcomes = racers.run("_sell", [(db_url, request) for request in strict + lenient])
    one = [o for o in outcomes if o[4] == "LASTONE"]
    assert sorted(o[0] for o in one) == ["error", "ok"], one
    assert [o[2] for o in one if o[0] == "ok"] == ["LASTONE"]
    assert [o[1] for o in one if o[0] == "error"] == ["code_used_up"], one
    two = [o for o in outcomes if o[4] == "LASTTWO"]
    assert [o[0] for o in two] == ["ok", "ok"], two
    assert sorted(str(o[2]) for o in two) == ["LASTTWO", "None"]  # the other one sold at list price
    assert redemptions(db, "LASTONE") == redemptions(db, "LASTTWO") == 1
    for name in ("LASTONE", "LASTTWO"):
        assert len(rows(db, Order, Order.discount_code == name)) == 1
    assert len(rows(db, Order)) == 3
    checks_ok(db)


def test_processes_with_the_same_idempotency_key_make_one_order(db: Any, db_url: str, caller: Any,
                                                                 racers: Any) -> None:
    from planctl.store.tables import ApiKey, Order, Subscription

    acc = account(db, caller)
    request = {"kind": "buy", "account": acc, "item": PRO, "payment_method": "alipay", "idempotency_key": "cart-991"}
    outcomes = racers.run("_sell", [(db_url, request)] * RACERS)
    assert [o[0] for o in outcomes] == ["ok"] * 4, outcomes
    (order,) = rows(db, Order)
    assert {o[1] for o in outcomes} == {order.id}
    assert sorted(o[3] for o in outcomes) == [False, True, True, True]  # one sale, three replays
    assert len(rows(db, Subscription)) == 1 and len(rows(db, ApiKey)) == 1
    assert ledger(db) == [("grant", "plan", 4500 * CR, order.id)]
