"""The gateway's pure pieces (error answers, hold estimate, SSE reading, upstream order) and the
`Meter` it calls, without a server."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from planctl.gateway import errors, estimate
from planctl.gateway.sse import ChatStream, Events, ResponsesStream
from planctl.gateway.upstream import Route, candidates

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
RESET = datetime(2026, 12, 1, 16, 0, tzinfo=timezone.utc)  # next Beijing midnight


@pytest.mark.parametrize("reason,status,type_,code", [
    ("key_unknown", 401, "invalid_request_error", "invalid_api_key"),
    ("key_revoked", 401, "invalid_request_error", "invalid_api_key"),
    ("key_expired", 401, "invalid_request_error", "invalid_api_key"),
    ("key_disabled", 401, "invalid_request_error", "invalid_api_key"),
    ("model_not_in_plan", 403, "permission_error", "model_not_in_plan"),
    ("api_type_not_in_plan", 403, "permission_error", "api_type_not_in_plan"),
    ("group_not_in_plan", 403, "permission_error", "group_not_in_plan"),
    ("period_limit_reached", 429, "usage_limit_reached", "period_limit_reached"),
    ("rpd_reached", 429, "usage_limit_reached", "rpd_reached"),
    ("tpd_reached", 429, "usage_limit_reached", "tpd_reached"),
    ("key_daily_limit_reached", 429, "usage_limit_reached", "key_daily_limit_reached"),
    ("key_rpd_reached", 429, "usage_limit_reached", "key_rpd_reached"),
    ("credit_exhausted", 429, "insufficient_quota", "insufficient_quota"),
    ("subscription_expired", 429, "insufficient_quota", "insufficient_quota"),
    ("subscription_cancelled", 429, "insufficient_quota", "insufficient_quota"),
    ("payg_balance_empty", 429, "insufficient_quota", "insufficient_quota"),
    ("key_credit_cap_reached", 429, "insufficient_quota", "insufficient_quota"),
])
def test_every_refusal_has_its_status_type_and_code(reason: str, status: int, type_: str, code: str) -> None:
    answer = errors.refusal(reason, "why", RESET, NOW)
    error = answer.body["error"]
    assert (answer.status, error["type"], error["code"], error["reason"]) == (status, type_, code, reason)
    assert reason in error["message"] and set(error) >= {"message", "type", "code", "param"}
    if type_ == "usage_limit_reached":
        assert error["resets_at"] == int(RESET.timestamp())
        assert answer.headers == {"Retry-After": str(4 * 3600)}
    else:
        assert "resets_at" not in error and "Retry-After" not in answer.headers


def test_hold_estimate_uses_the_requests_cap_and_the_configured_maximum() -> None:
    assert estimate.input_tokens(4_001) == 1_001
    assert estimate.output_cap({"max_output_tokens": 300}) == 300
    assert estimate.output_cap({"max_completion_tokens": 200, "max_tokens": 100}) == 200
    assert estimate.output_cap({"max_tokens": True}, default=77) == 77
    assert estimate.hold(10_000, cap=5_000) == 5_000 and estimate.hold(10, cap=5_000) == 10
    assert estimate.hold(0) == 1


def test_events_are_cut_whole_across_chunks_and_crlf() -> None:
    events = Events()
    assert events.feed(b"event: a\ndata: {\"x\"") == []
    assert events.feed(b": 1}\n\nevent: b\r\ndata: 2\r\n\r\nda") == [b"event: a\ndata: {\"x\": 1}\n\n",
                                                                    b"event: b\ndata: 2\n\n"]
    assert events.tail == b"da" and events.count == 2


def test_responses_stream_reads_usage_from_the_terminal_event() -> None:
    reader = ResponsesStream("req_1")
    event = (b'event: response.incomplete\ndata: {"type":"response.incomplete","response":{"usage":'
             b'{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":7}}}\n\n')
    assert reader.relay(b'event: response.output_text.delta\ndata: {"delta":"response.completed"}\n\n')
    assert reader.ended is None  # a delta that only mentions the name is not the end
    assert reader.relay(event) == event
    assert reader.ended == "incomplete" and (reader.usage.input, reader.usage.cached, reader.usage.output) == (10, 4, 7)
    assert b"response.failed" in reader.fail("broke")


def test_chat_stream_hides_only_the_usage_chunk_it_asked_for() -> None:
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
    delta = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    hidden, shown = ChatStream(client_wants_usage=False), ChatStream(client_wants_usage=True)
    assert hidden.relay(delta) == delta and hidden.relay(usage) == b"" and hidden.usage.input == 5
    assert shown.relay(usage) == usage
    assert hidden.relay(b"data: [DONE]\n\n") and hidden.ended == "done"


def test_upstreams_by_priority_then_weight_for_the_model_and_api() -> None:
    routes = [Route("a", "u", "s", priority=1), Route("b", "u", "s", priority=0, weight=3),
              Route("c", "u", "s", priority=0, weight=1), Route("d", "u", "s", models=("gpt-*",)),
              Route("e", "u", "s", apis=("chat",)), Route("f", "u", "s", healthy=False)]
    rng = random.Random(7)
    firsts = [candidates(routes, "unit", "responses", rng)[0].name for _ in range(4_000)]
    assert {n for n in firsts} == {"b", "c"}
    assert 0.70 < firsts.count("b") / len(firsts) < 0.80  # weight 3 of 4
    assert [r.name for r in candidates(routes, "unit", "responses", rng)][-1] == "a"
    assert "d" in [r.name for r in candidates(routes, "gpt-5.4", "responses", rng)]
    assert "e" not in [r.name for r in candidates(routes, "unit", "responses", rng)]


# ---------------------------------------------------------------- the Meter


def _sold(db: Any, caller: Any, credit: str) -> tuple[str, str]:
    from planctl.services import accounts, catalog
    from planctl.services.sales import SaleRequest, sell

    now = datetime.now(timezone.utc)
    catalog.import_catalog(db, {"models": [{"id": "unit", "input_price": "1", "cached_price": "0.5",
                                            "output_price": "2"}],
                                "plans": [{"slug": "m", "name": "M", "family": "m", "tier": 1, "price": "1.00",
                                           "validity": "1mo", "total_credit": credit, "models": ["unit"],
                                           "groups": ["default"], "refund_policy": "none"}]},
                           caller=caller, now=now - timedelta(days=1))
    accounts.create(db, {"name": "acme"}, caller=caller, now=now)
    r = sell(db, SaleRequest(kind="buy", account="acme", item="m"), caller=caller, now=now)
    return r.subscription.id, r.secret.secret


def test_meter_denials_are_values_and_release_gives_the_hold_back(db: Any, caller: Any) -> None:
    from sqlalchemy import text

    from planctl.metering import Meter, Usage

    sub, secret = _sold(db, caller, "0.001")  # 1,000 µcr
    meter = Meter(db)
    assert meter.admit("sk-nobody", "unit", "responses").reason == "key_unknown"
    big = meter.admit(secret, "unit", "responses", reserve=2_000)
    assert not big.allowed and big.reason == "credit_exhausted"
    held = meter.admit(secret, "unit", "responses", reserve=600)
    assert held.allowed and held.reservation_id and held.reserved == 600
    second = meter.admit(secret, "unit", "responses", reserve=600)
    assert not second.allowed and second.reason == "credit_exhausted"  # a denial, not an exception
    assert meter.release(held, "no upstream") is True and meter.release(held, "again") is False
    again = meter.admit(secret, "unit", "responses", reserve=600)
    recorded = meter.settle(again, Usage("r-1", input_tokens=100, cached_tokens=50, output_tokens=10))
    assert recorded.record.cost == 50 + 25 + 20 and recorded.record.reservation_id == again.reservation_id
    with db.read() as session:
        assert session.execute(text("SELECT credit_used, credit_reserved FROM subscriptions WHERE id = :s"),
                               {"s": sub}).one() == (95, 0)


def test_meter_from_many_threads_never_overdraws(db: Any, caller: Any) -> None:
    from planctl.metering import Meter, Usage
    from planctl.services.database import check

    sub, secret = _sold(db, caller, "0.01")  # 10,000 µcr; each request holds 300 and costs 250
    meter = Meter(db)
    outcomes: list[Any] = []

    def work(n: int) -> None:
        for i in range(10):
            adm = meter.admit(secret, "unit", "responses", reserve=300)
            if adm.allowed:
                meter.settle(adm, Usage(f"t{n}-{i}", input_tokens=50, output_tokens=100))
            outcomes.append(adm.allowed)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from sqlalchemy import text

    with db.read() as session:
        used, reserved = session.execute(text("SELECT credit_used, credit_reserved FROM subscriptions WHERE id = :s"),
                                         {"s": sub}).one()
        count = session.execute(text("SELECT count(*) FROM usage_records")).scalar()
    assert count == outcomes.count(True) and used == 250 * count <= 10_000 and reserved == 0
    assert outcomes.count(False) > 0 and all(r.ok for r in check(db))


def test_settle_bills_the_model_admission_resolved(db: Any, caller: Any) -> None:
    from planctl.metering import Meter, Usage
    from planctl.services import catalog

    _sub, secret = _sold(db, caller, "1")
    catalog.set_model_price(db, {"id": "dear", "input_price": "100", "cached_price": "100", "output_price": "100"},
                            create=True, caller=caller, now=datetime.now(timezone.utc))
    catalog.set_alias(db, "fast*", "unit", caller=caller, now=datetime.now(timezone.utc))
    meter = Meter(db)
    adm = meter.admit(secret, "fast-1", "responses", reserve=100)
    assert adm.allowed and adm.billed_model == "unit"
    catalog.set_alias(db, "fast*", "dear", caller=caller, now=datetime.now(timezone.utc))  # changed in flight
    rec = meter.settle(adm, Usage("r-alias", input_tokens=10)).record
    assert (rec.requested_model, rec.billed_model, rec.cost) == ("fast-1", "unit", 10)
