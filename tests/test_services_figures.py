"""Issue #11, "figures that agree": every view of the same money, credit and time tells the same story.

Each test pins one disagreement that used to exist: invoices that ignored refunds,
a cancelled subscription whose renewals stayed paid, quotes naming ids that would
never exist, messages in minor units or raw ISO time. Services run on the `db`
fixture (SQLite, and PostgreSQL when PLANCTL_TEST_DATABASE_URL is set); the CLI
through `cli` (Typer's CliRunner on the same database).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from helpers import ENDS, NOW, OPENS, US, assert_refused, db_dump as dump
from helpers.metering import catalogs
from helpers.sales import account, checks_ok, order_row, sell
from planctl.cli.hints import word

PRO, MAX, DAY = "codex-pro-monthly", "codex-max-monthly", "codex-day-pass"


# ---------------------------------------------------------------- helpers


def refund(db: Any, caller: Any, order_id: str, now: datetime = NOW, *, amount: int | None = None,
           reason: str | None = None) -> Any:
    from planctl.services import refunds

    return refunds.refund(db, order_id, amount=amount, reason=reason, details=None, caller=caller, now=now)


def invoice(db: Any, caller: Any, order_id: str, now: datetime = NOW) -> Any:
    from planctl.services import invoices

    return invoices.issue(db, order_id, caller=caller, now=now)


def documents_balance(db: Any) -> dict[str, tuple[int, int]]:
    """Per order: (invoice total − credit notes, paid − refunded), in minor units; orders without documents
    count 0 on the left, so a paid order that was never invoiced shows up too (and is filtered by callers)."""
    from sqlmodel import select

    from planctl.domain.catalog import currency_decimals
    from planctl.domain.money import parse_money
    from planctl.store.tables import Invoice, Order

    with db.read() as session:
        orders = {o.id: o for o in session.exec(select(Order))}
        docs = list(session.exec(select(Invoice)))
    out: dict[str, tuple[int, int]] = {}
    for order_id, o in orders.items():
        mine = [d for d in docs if d.order_id == order_id]
        if not mine:
            continue
        places = currency_decimals(o.currency)
        total = sum(parse_money(d.document["total"], places) * (1 if d.kind == "invoice" else -1) for d in mine)
        out[order_id] = (total, o.payable - o.refunded)
    return out


def last_audit(db: Any, target: str) -> str:
    from sqlmodel import col, select

    from planctl.store.tables import AuditEntry

    with db.read() as session:
        return session.exec(select(AuditEntry.summary).where(AuditEntry.target == target)
                            .order_by(col(AuditEntry.id).desc())).first() or ""


def refused(db_url: str, action: Any, reason: str, text: str = "") -> Any:
    from planctl.domain.errors import PlanctlError

    before = dump(db_url)
    with pytest.raises(PlanctlError) as info:
        action()
    assert info.value.reason == reason, info.value.message
    assert text in word(info.value), info.value.message  # as the operator reads it
    assert dump(db_url) == before, f"{reason}: the database changed"
    return info.value


# ---------------------------------------------------------------- 1. invoices know about refunds


def test_an_invoice_issued_after_refunds_carries_a_credit_note_for_each(db: Any, caller: Any) -> None:
    from planctl.services import invoices

    acc = account(db, caller)
    order = sell(db, caller, kind="buy", account=acc, item=PRO).order.id
    refund(db, caller, order, amount=1000, reason="slow start")
    refund(db, caller, order, NOW + timedelta(hours=1), amount=500, reason="outage")
    issued = invoice(db, caller, order, NOW + timedelta(hours=2))
    assert issued.document["total"] == "299.00"  # the sale as sold
    docs = invoices.list_invoices(db, order=order)
    assert [(d.kind, d.document["total"], d.references_id, d.document["reason"]) for d in docs] == [
        ("invoice", "299.00", None, None),
        ("credit-note", "10.00", issued.id, "slow start"),
        ("credit-note", "5.00", issued.id, "outage"),
    ]
    refund(db, caller, order, NOW + timedelta(hours=3), amount=2000, reason="after the invoice")
    assert documents_balance(db)[order] == (29900 - 3500, 29900 - 3500)
    assert len(invoices.list_invoices(db, order=order)) == 4


def test_invoice_audit_names_the_credit_notes_for_earlier_refunds(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    order = sell(db, caller, kind="extra", account=acc, item="extra-50").order.id
    refund(db, caller, order, amount=100, reason="goodwill")
    issued = invoice(db, caller, order)
    assert "credit notes CN-2026-000001 for earlier refunds" in last_audit(db, f"invoice:{issued.id}")


# ---------------------------------------------------------------- 2. a buy's refund and its later orders


def test_refunding_a_buy_waits_for_its_renewals_and_upgrades(db: Any, db_url: str, caller: Any) -> None:
    acc = account(db, caller)
    bought = sell(db, caller, kind="buy", account=acc, item=PRO)
    sub = bought.subscription.id
    renewed = sell(db, caller, OPENS, kind="renew", subscription=sub).order.id
    upgraded = sell(db, caller, OPENS + timedelta(hours=1), kind="upgrade", subscription=sub, item=MAX).order.id
    error = refused(db_url, lambda: refund(db, caller, bought.order.id, OPENS + timedelta(hours=2), amount=29900,
                                           reason="customer left"), "later_orders_not_refunded")
    assert f"{renewed}, {upgraded}" in error.message and "refund them first" in error.message
    refund(db, caller, upgraded, OPENS + timedelta(hours=2), amount=order_row(db, upgraded).payable, reason="left")
    refused(db_url, lambda: refund(db, caller, bought.order.id, OPENS + timedelta(hours=2), amount=29900,
                                   reason="customer left"), "later_orders_not_refunded", renewed)
    refund(db, caller, renewed, OPENS + timedelta(hours=2), amount=order_row(db, renewed).payable, reason="left")
    done = refund(db, caller, bought.order.id, OPENS + timedelta(hours=2), amount=29900, reason="customer left")
    assert done.cancelled_subscription == sub
    assert {order_row(db, o).status for o in (bought.order.id, renewed, upgraded)} == {"refunded"}
    checks_ok(db)


def test_a_partial_refund_of_a_buy_with_renewals_is_allowed(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    bought = sell(db, caller, kind="buy", account=acc, item=PRO)
    sell(db, caller, OPENS, kind="renew", subscription=bought.subscription.id)
    done = refund(db, caller, bought.order.id, OPENS, amount=100, reason="goodwill")
    assert done.cancelled_subscription is None


# ---------------------------------------------------------------- money and time in people's units


def test_messages_show_money_with_currency_and_times_in_the_zone(db: Any, db_url: str, caller: Any) -> None:
    acc = account(db, caller)
    bought = sell(db, caller, kind="buy", account=acc, item=DAY)
    error = refused(db_url, lambda: refund(db, caller, bought.order.id, amount=1000, reason="x"),
                    "refund_exceeds_paid")
    assert error.message == "a refund of 10.00 CNY exceeds what is left to refund (9.90 CNY)"
    pro = sell(db, caller, kind="buy", account=acc, item=PRO).subscription.id
    error = refused(db_url, lambda: sell(db, caller, OPENS - timedelta(minutes=1), kind="renew", subscription=pro),
                    "renewal_window_not_open")
    assert "renewal opens at 2026-12-18 12:00 CST (3d before expiry at 2026-12-21 12:00 CST)" in error.message


def test_refund_audit_entry_is_in_display_units(db: Any, caller: Any) -> None:
    acc = account(db, caller)
    order = sell(db, caller, kind="buy", account=acc, item=PRO).order.id
    refund(db, caller, order, amount=2990, reason="slow week")
    summary = last_audit(db, f"order:{order}")
    assert summary.startswith("refunded 29.90 CNY (override); credit taken back 450.00;"), summary


@pytest.mark.parametrize(("tz", "accepted"), [("Asia/Shanghai", True), ("UTC", True), ("Europe/Berlin", False)])
def test_a_23h_renewal_window_on_a_day_plan_needs_a_zone_without_dst(cli: Any, db_url: str, tz: str,
                                                                     accepted: bool) -> None:
    cli.ok("config", "set", "reset_timezone", tz)
    args = ("plans", "update", DAY, "--renewal-window", "23h")
    if accepted:
        cli.ok(*args)
        assert cli.json("plans", "show", DAY)["renewal_window"] == "23h"
    else:
        assert_refused(cli, db_url, [(args, 2, "must be shorter than the validity")])


# ---------------------------------------------------------------- 10. honest quotes and dry runs


def test_a_dry_run_refund_names_no_credit_note_number(cli: Any, db: Any, caller: Any) -> None:
    acc = account(db, caller)
    order = sell(db, caller, kind="buy", account=acc, item=PRO).order.id
    invoice(db, caller, order)
    quote = cli.json("refund", order, "--amount", "10", "--reason", "x", "--dry-run")
    assert quote["credit_note"] is None and quote["dry_run"] is True
    text = cli.ok("refund", order, "--amount", "10", "--reason", "x", "--dry-run").stdout
    assert "assigned on refund" in text and "CN-" not in text


def test_subscription_json_names_the_plan_version_not_a_row_id(cli: Any, db: Any, caller: Any) -> None:
    acc = account(db, caller)
    sub = sell(db, caller, kind="buy", account=acc, item=PRO).subscription.id
    cli.ok("plans", "update", PRO, "--rpd", "9000")
    listed = cli.json("subscriptions", "list")
    assert [(s["id"], s["plan_version"]) for s in listed] == [(sub, 1)]
    assert "plan_version_id" not in listed[0]


# ---------------------------------------------------------------- 11. free goodwill renewal


def test_direct_renewal_for_free_is_a_paid_order_of_zero_with_its_reason(cli: Any, db: Any, caller: Any) -> None:
    acc = account(db, caller)
    bought = sell(db, caller, kind="buy", account=acc, item=PRO)
    sub = bought.subscription.id
    result = cli.json("renew", sub, "--direct", "--amount", "0", "--reason", "outage goodwill")
    order = result["order"]
    assert (order["kind"], order["status"], order["payable"], order["list_price"], order["reason"]) == (
        "direct-renewal", "paid", "0.00", "0.00", "outage goodwill")
    assert order["credit_granted"] == "4500.000000"
    summary = last_audit(db, f"order:{order['id']}")
    assert "paid 0.00 CNY" in summary and "reason: outage goodwill" in summary and "priced by the operator" in summary
    checks_ok(db)
    # a free renewal has nothing to refund, so it does not hold up the buy's refund
    done = refund(db, caller, bought.order.id, amount=29900, reason="left")
    assert done.cancelled_subscription == sub


def test_an_amount_without_direct_is_bad_input(cli: Any, db: Any, db_url: str, caller: Any) -> None:
    acc = account(db, caller)
    sub = sell(db, caller, kind="buy", account=acc, item=PRO).subscription.id
    assert_refused(cli, db_url, [
        (("renew", sub, "--amount", "0"), 2, "invalid_input", "--direct"),
        (("renew", sub, "--direct", "--amount", "-1", "--reason", "x"), 2, "invalid_input", "--amount"),
    ], when=OPENS)


# ---------------------------------------------------------------- the identities, over random sequences

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PLANS = (PRO, "codex-lite-monthly", "codex-weekly", DAY)
BUY = st.tuples(st.just("buy"), st.sampled_from(PLANS))
OPS = st.tuples(BUY, st.lists(st.one_of(  # the simplest examples hypothesis tries first: refunds and invoices
    st.tuples(st.just("refund"), st.integers(-2, 0), st.sampled_from(["part", "policy", "rest"])),
    st.tuples(st.just("invoice"), st.integers(-2, 0)),
    st.tuples(st.just("record"), st.integers(0, 3), st.integers(0, 3_000_000)),
    BUY,
    st.tuples(st.just("renew"), st.integers(0, 3)),
    st.tuples(st.just("direct"), st.integers(0, 3), st.sampled_from([None, 0])),
    st.tuples(st.just("upgrade"), st.integers(0, 3)),
    st.tuples(st.just("wait"), st.sampled_from([timedelta(hours=5), timedelta(days=1), timedelta(days=6)])),
), min_size=4, max_size=12)).map(lambda first_rest: [first_rest[0], *first_rest[1]])


OUTCOMES: list[tuple[str, str]] = []


class _Run:
    """One random sequence against the shared database, with its own account and clock."""

    def __init__(self, db: Any, caller: Any, n: int) -> None:
        self.db, self.caller = db, caller
        self.now = NOW + timedelta(days=60 * n)
        self.acc = account(db, caller, f"prop-{n}")
        self.subs: list[tuple[str, str]] = []  # (subscription id, its key's secret)
        self.orders: list[str] = []
        self.requests = 0

    def apply(self, op: tuple[Any, ...]) -> None:
        from planctl.domain.errors import PlanctlError

        try:
            getattr(self, "do_" + op[0])(*op[1:])
        except PlanctlError as exc:
            OUTCOMES.append((op[0], exc.reason))  # a refusal is a legal outcome; the identities must hold
        else:
            OUTCOMES.append((op[0], "ok"))
        self.now += timedelta(minutes=7)

    def sub(self, i: int) -> tuple[str, str] | None:
        return self.subs[i % len(self.subs)] if self.subs else None

    def order(self, i: int) -> str | None:
        return self.orders[i % len(self.orders)] if self.orders else None

    def do_buy(self, plan: str) -> None:
        sale = sell(self.db, self.caller, self.now, kind="buy", account=self.acc, item=plan)
        self.subs.append((sale.subscription.id, sale.secret.secret))
        self.orders.append(sale.order.id)

    def _sale(self, **request: Any) -> None:
        self.orders.append(sell(self.db, self.caller, self.now, **request).order.id)

    def do_renew(self, i: int) -> None:
        if (s := self.sub(i)) is not None:
            self._sale(kind="renew", subscription=s[0])

    def do_direct(self, i: int, price: int | None) -> None:
        if (s := self.sub(i)) is not None:
            self._sale(kind="direct-renewal", subscription=s[0], reason="goodwill", price=price)

    def do_upgrade(self, i: int) -> None:
        if (s := self.sub(i)) is not None:
            self._sale(kind="upgrade", subscription=s[0], item=MAX)

    def do_refund(self, i: int, how: str) -> None:
        if (o := self.order(i)) is None:
            return
        row = order_row(self.db, o)
        amount = {"policy": None, "part": max(1, (row.payable - row.refunded) // 3),
                  "rest": row.payable - row.refunded}[how]
        refund(self.db, self.caller, o, self.now, amount=amount, reason=None if amount is None else "test")

    def do_invoice(self, i: int) -> None:
        if (o := self.order(i)) is not None:
            invoice(self.db, self.caller, o, self.now)

    def do_record(self, i: int, tokens: int) -> None:
        from planctl.metering.admission import authorize
        from planctl.metering.recording import UsageInput, record

        if (s := self.sub(i)) is None:
            return
        self.requests += 1
        auth = authorize(self.db, catalogs(self.db), s[1], model="gpt-5.4", reserve=max(1, tokens * 9),
                         now=self.now)
        if auth.allowed:
            record(self.db, catalogs(self.db), UsageInput(
                request_id=f"{self.acc}-{self.requests}", secret=s[1], model="gpt-5.4", input_tokens=tokens,
                output_tokens=tokens // 10, status_code=200, at=self.now, reservation=auth.reservation_id),
                now=self.now)

    def do_wait(self, delta: timedelta) -> None:
        self.now += delta


def assert_identities(db: Any) -> None:
    """db check clean; invoice − credit notes = paid − refunded; counters = their records; nothing below zero."""
    from sqlmodel import col, select

    from planctl.store.tables import Account, ExtraPack, Subscription, UsageCounter, UsageRecord

    checks_ok(db)
    for order_id, (documents, money) in documents_balance(db).items():
        assert documents == money, f"order {order_id}: documents say {documents}, money says {money}"
    with db.read() as session:
        records = list(session.exec(select(UsageRecord).order_by(col(UsageRecord.at))))
        counters = list(session.exec(select(UsageCounter).where(col(UsageCounter.scope).in_(("sub-period", "sub-day")))
                                     .order_by(col(UsageCounter.window_start))))
        subs = list(session.exec(select(Subscription)))
        packs = list(session.exec(select(ExtraPack)))
        accounts_ = list(session.exec(select(Account)))
    for owner, scope in {(c.owner, c.scope) for c in counters}:
        rows = [c for c in counters if (c.owner, c.scope) == (owner, scope)]
        mine = [r for r in records if r.subscription_id == owner]
        for row, following in zip(rows, rows[1:] + [None]):
            inside = [r for r in mine if _utc(row.window_start) <= _utc(r.at)
                      and (following is None or _utc(r.at) < _utc(following.window_start))]
            if scope == "sub-period":
                assert row.credit == sum(r.charged_plan for r in inside), (owner, scope, row.window_start)
            else:
                assert (row.requests, row.tokens) == (len(inside), sum(r.input_tokens + r.output_tokens
                                                                        for r in inside)), (owner, row.window_start)
    for s in subs:
        assert s.credit_granted is None or s.credit_granted - s.credit_used - s.credit_reserved >= 0, s.id
    for p in packs:
        assert p.credit - p.used - p.reserved >= 0, p.id
    for a in accounts_:
        assert a.payg_balance - a.payg_reserved >= 0, a.id


def _utc(instant: datetime) -> datetime:
    return instant if instant.tzinfo else instant.replace(tzinfo=timezone.utc)


def test_random_sales_refunds_invoices_and_usage_keep_every_figure_in_agreement(db: Any, caller: Any) -> None:
    runs = iter(range(1, 10_000))

    @settings(max_examples=10, deadline=None, database=None, derandomize=True, phases=(Phase.generate,),
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(OPS)
    def sequence(ops: list[tuple[Any, ...]]) -> None:
        run = _Run(db, caller, next(runs))
        for op in ops:
            run.apply(op)
        for i in range(len(run.orders)):  # every order asks for its invoice at the end, after its refunds
            run.apply(("invoice", i))
        assert_identities(db)

    sequence()


# ---------------------------------------------------------------- 9. an upgrade that drops a group in use


def test_an_upgrade_that_drops_a_group_its_keys_use_warns_and_lists_them(cli: Any, db: Any, caller: Any) -> None:
    from planctl.services import catalog, keys

    catalog.update_plan(db, MAX, {"groups": ["default", "economy"]}, caller=caller, now=NOW - timedelta(days=1))
    acc = account(db, caller)
    sub = sell(db, caller, kind="buy", account=acc, item=PRO).subscription.id
    for name, group in (("svc", "priority"), ("bot", "priority"), ("cron", "economy")):
        keys.create(db, keys.KeySpec(name=name, from_plan=sub, group=group), caller=caller, now=NOW)
    quote = cli("upgrade", sub, "--to", MAX, "--dry-run")
    assert quote.exit_code == 0, quote.stderr
    warning = [line for line in quote.stderr.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "no group 'priority'" in warning[0] and "keys svc, bot will be refused" in warning[0]
    assert "cron" not in warning[0]
    done = cli.json("upgrade", sub, "--to", MAX)
    assert any("keys svc, bot" in note for note in done["notes"])
    same_groups = sell(db, caller, kind="buy", account=acc, item="codex-lite-monthly").subscription.id
    assert not any("warning" in n for n in sell(db, caller, kind="upgrade", subscription=same_groups,
                                                 item=PRO).notes)


# ---------------------------------------------------------------- 9. plan versions per term

def test_a_renewal_keeps_the_sold_terms_until_the_current_term_ends(cli: Any, db: Any, caller: Any) -> None:
    from planctl.services import catalog

    acc = account(db, caller)
    sub = sell(db, caller, kind="buy", account=acc, item=PRO).subscription.id
    catalog.update_plan(db, PRO, {"rpd": 9000}, caller=caller, now=NOW + timedelta(days=1))  # version 2
    renewal = sell(db, caller, OPENS, kind="renew", subscription=sub)
    assert renewal.plan_version == 1  # sold today, the current term still runs under version 1
    stored = [(o["kind"], o["id"]) for o in cli.json("subscriptions", "show", sub)["orders"]]
    assert stored[-1] == ("renew", renewal.order.id)

    def seen(when: datetime) -> tuple[int, int]:
        from freezegun import freeze_time

        with freeze_time(when):
            shown, limits = cli.json("subscriptions", "show", sub), cli.json("limits", "show", sub)
        return shown["plan_version"], limits["today"]["rpd"]

    assert seen(OPENS) == (1, 5000)
    assert seen(ENDS - US) == (1, 5000)  # the last instant of the term sold under version 1
    assert seen(ENDS) == (2, 9000)  # the renewed term: the version current when it was sold, from its start


def test_an_upgrade_replaces_the_terms_of_every_remaining_term(cli: Any, db: Any, caller: Any) -> None:
    from freezegun import freeze_time

    from planctl.services import catalog

    acc = account(db, caller)
    sub = sell(db, caller, kind="buy", account=acc, item=PRO).subscription.id
    catalog.update_plan(db, PRO, {"rpd": 9000}, caller=caller, now=NOW + timedelta(days=1))
    sell(db, caller, OPENS, kind="renew", subscription=sub)
    sell(db, caller, OPENS + timedelta(hours=1), kind="upgrade", subscription=sub, item=MAX)
    with freeze_time(ENDS + timedelta(days=1)):
        shown = cli.json("subscriptions", "show", sub)
    assert (shown["plan"], shown["plan_version"]) == (MAX, 1)
    checks_ok(db)


def test_a_discount_code_names_its_validity_in_the_zone_to_the_minute(db: Any, db_url: str, caller: Any) -> None:
    from planctl.services import discounts

    discounts.create(db, {"code": "LATER", "value": "10%", "valid_from": NOW + timedelta(hours=1, seconds=30)},
                     caller=caller, now=NOW - timedelta(days=1))
    acc = account(db, caller)
    error = refused(db_url, lambda: sell(db, caller, kind="buy", account=acc, item=PRO, code="LATER"),
                    "code_not_yet_valid")
    assert "is valid from 2026-11-21 13:00 CST" in error.message, error.message
