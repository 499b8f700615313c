"""`planctl serve` over real HTTP on loopback: the official `openai` SDK as the client, the fake
upstream (tests/helpers/fake_upstream.py) behind it, a real database (SQLite, and PostgreSQL when
PLANCTL_TEST_DATABASE_URL is set). The gateway runs in a thread of the test process here;
tests/test_e2e_serve.py runs `planctl serve` as a subprocess."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import (Served, UP_SECRET, add_upstream, buy, cost, free_port, install, ledger_of, now, records,
                             serve, wait_for)


@pytest.fixture
def gw(db: Any, caller: Any, up: FakeUpstream) -> Iterator[Served]:
    install(db, caller)
    sub, key, secret = buy(db, caller)
    add_upstream(db, caller, "fake", up)
    server, thread, port = serve(db, up)
    yield Served(db, up, port, secret, sub, key, server)
    server.should_exit = True
    thread.join(30)


# ---------------------------------------------------------------- Responses API


def test_responses_non_stream_passes_through_and_settles_the_upstream_usage(gw: Served) -> None:
    gw.up.usage = (2_000, 1_500, 300, 100)
    raw = gw.client().responses.with_raw_response.create(model="unit", input="hi", max_output_tokens=500,
                                                         extra_headers={"x-client-request-id": "cli-1",
                                                                        "session-id": "sess-1"})
    answer = raw.parse()
    assert answer.output_text == "Hello from the fake upstream."
    assert answer.usage.input_tokens_details.cached_tokens == 1_500
    request_id = raw.headers["x-request-id"]
    sent = gw.up.requests[-1]
    assert sent.body == {"model": "unit", "input": "hi", "max_output_tokens": 500}  # passed through
    assert sent.headers["authorization"] == f"Bearer {UP_SECRET}"  # the upstream's secret, not the key
    [rec] = gw.records(1)
    assert rec["request_id"] == request_id
    assert (rec["input_tokens"], rec["cached_tokens"], rec["output_tokens"]) == (2_000, 1_500, 300)
    assert rec["cost"] == cost(2_000, 1_500, 300) == rec["charged_plan"]
    assert (rec["status_code"], bool(rec["stream"]), rec["upstream"], rec["api"]) == (200, False, "fake", "responses")
    assert (rec["client_request_id"], rec["session_id"]) == ("cli-1", "sess-1")
    assert rec["latency_ms"] is not None and rec["ttfb_ms"] is not None and not rec["usage_estimated"]
    assert ledger_of(gw.db, gw.sub) == (cost(2_000, 1_500, 300), 0)  # to the µcr, hold given back


def test_responses_stream_arrives_event_by_event_and_settles(gw: Served) -> None:
    gw.up.deltas = 5
    with gw.client().responses.create(model="unit", input="hi", stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 5
    [rec] = gw.records(1)
    assert bool(rec["stream"]) and rec["status_code"] == 200 and rec["output_tokens"] == 300
    assert ledger_of(gw.db, gw.sub) == (cost(2_000, 1_500, 300), 0)


def test_alias_is_resolved_and_the_upstream_gets_the_billed_model(gw: Served, caller: Any) -> None:
    from planctl.services import catalog

    catalog.set_alias(gw.db, "my-model*", "unit", caller=caller, now=now())
    gw.client().responses.create(model="my-model-large", input="x")
    assert gw.up.requests[-1].body["model"] == "unit"
    [rec] = gw.records(1)
    assert (rec["requested_model"], rec["billed_model"]) == ("my-model-large", "unit")


def test_function_call_round_trip(gw: Served) -> None:
    tools = [{"type": "function", "name": "weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    client = gw.client()
    first = client.responses.create(model="unit", input="weather in Paris?", tools=tools)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, call.arguments) == ("weather", '{"city": "Paris"}')
    second = client.responses.create(model="unit", tools=tools, input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text
    assert gw.up.requests[-1].body["input"][2] == {"type": "function_call_output", "call_id": "call_1",
                                                   "output": "sunny"}
    assert len(gw.records(2)) == 2


# ---------------------------------------------------------------- Chat Completions


def test_chat_stream_asks_for_usage_and_hides_it_from_a_client_that_did_not(gw: Served) -> None:
    chunks = list(gw.client().chat.completions.create(model="unit", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}]))
    assert all(c.choices for c in chunks)  # no usage-only chunk shown
    assert gw.up.requests[-1].body["stream_options"] == {"include_usage": True}
    [rec] = gw.records(1)
    assert (rec["api"], rec["input_tokens"], rec["cached_tokens"], rec["output_tokens"]) == ("chat", 2_000, 1_500, 300)

    asked = list(gw.client().chat.completions.create(model="unit", stream=True, stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": "hi"}]))
    assert asked[-1].usage.prompt_tokens_details.cached_tokens == 1_500 and not asked[-1].choices


def test_chat_non_stream_and_tool_calls(gw: Served) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    answer = gw.client().chat.completions.create(model="unit", messages=[{"role": "user", "content": "hi"}],
                                                 tools=tools)
    assert answer.choices[0].message.tool_calls[0].function.name == "weather"
    assert "stream_options" not in gw.up.requests[-1].body
    [rec] = gw.records(1)
    assert rec["cost"] == cost(2_000, 1_500, 300) and not rec["stream"]


# ---------------------------------------------------------------- refusals


def test_refusals_as_the_sdk_raises_them_and_nothing_is_recorded(gw: Served, caller: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from planctl.services import keys

    caplog.set_level(logging.INFO, "planctl.gateway")

    with pytest.raises(openai.AuthenticationError) as unknown:
        gw.client("sk-nobody-has-this").responses.create(model="unit", input="x")
    assert unknown.value.status_code == 401 and unknown.value.body["reason"] == "key_unknown"
    assert unknown.value.response.headers["x-request-id"].startswith("req_")

    with pytest.raises(openai.PermissionDeniedError) as outside:
        gw.client().responses.create(model="gpt-5.5", input="x")
    assert outside.value.body["reason"] == "model_not_in_plan" and "model_not_in_plan" in outside.value.message

    payg = keys.create(gw.db, keys.KeySpec(name="payg", account="acme", payg=True), caller=caller, now=now())
    with pytest.raises(openai.RateLimitError) as empty:
        gw.client(payg[0].secret).responses.create(model="unit", input="x")
    assert empty.value.body["code"] == "insufficient_quota" and empty.value.body["reason"] == "payg_balance_empty"
    assert "retry-after" not in empty.value.response.headers

    assert gw.records() == [] and gw.up.requests == []
    assert ledger_of(gw.db, gw.sub) == (0, 0)
    refused = [r.getMessage() for r in caplog.records if "refused: model_not_in_plan" in r.getMessage()]
    assert len(refused) == 1 and " gpt-5.5 via - in " in refused[0]  # no upstream was asked: none named


def test_a_resetting_limit_is_usage_limit_reached_with_resets_at(gw: Served, caller: Any) -> None:
    from zoneinfo import ZoneInfo

    from planctl.services import keys

    made = keys.create(gw.db, keys.KeySpec(name="one-a-day", from_plan=gw.sub, rpd=1), caller=caller, now=now())
    client = gw.client(made[0].secret)
    client.responses.create(model="unit", input="x")
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model="unit", input="x")
    body = limited.value.body
    assert (body["type"], body["reason"]) == ("usage_limit_reached", "key_rpd_reached")
    beijing = datetime.now(ZoneInfo("Asia/Shanghai"))
    midnight = (beijing + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert body["resets_at"] == int(midnight.timestamp())
    wait = int(limited.value.response.headers["retry-after"])
    assert abs(wait - (midnight - beijing).total_seconds()) < 5
    assert len(gw.records(1)) == 1


def test_an_answer_does_not_wait_for_its_settlement_and_its_open_hold_still_counts(
        gw: Served, caller: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database takes settlements slowly: the answer comes at once, and the key's one request
    of the day is used up by the open hold before its record lands."""
    from planctl.gateway.writer import Writer
    from planctl.services import keys

    slow = Writer._write

    def later(self: Writer, usages: list[Any]) -> Any:
        time.sleep(1.5)
        return slow(self, usages)

    monkeypatch.setattr(Writer, "_write", later)
    made = keys.create(gw.db, keys.KeySpec(name="one-a-day", from_plan=gw.sub, rpd=1), caller=caller, now=now())
    client = gw.client(made[0].secret)
    started = time.monotonic()
    client.responses.create(model="unit", input="x")
    assert time.monotonic() - started < 1.0  # not waiting for the database
    assert gw.records() == []  # not in yet
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model="unit", input="x")
    assert limited.value.body["reason"] == "key_rpd_reached"
    assert len(gw.records(1)) == 1


# ---------------------------------------------------------------- upstreams


def test_failover_to_the_next_upstream_before_the_first_byte(db: Any, caller: Any, up: FakeUpstream) -> None:
    install(db, caller)
    sub, _key, secret = buy(db, caller)
    second = FakeUpstream(key=UP_SECRET).start()
    try:
        add_upstream(db, caller, "first", up, priority=0)
        add_upstream(db, caller, "second", second, priority=1)
        server, thread, port = serve(db, up)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=secret, max_retries=0)
        up.fail, up.retry_after = [503, 429], "1"
        client.responses.create(model="unit", input="a")  # 503 from first → second
        with client.responses.create(model="unit", input="b", stream=True) as stream:  # 429 → second
            assert [e.type for e in stream][-1] == "response.completed"
        client.responses.create(model="unit", input="c")  # first cools down for its Retry-After
        time.sleep(1.1)
        client.responses.create(model="unit", input="d")  # first is fine again
        rows = wait_for(lambda: len(r := records(db)) == 4 and r)
        assert [r["upstream"] for r in rows] == ["second", "second", "second", "first"]
        assert (len(up.requests), len(second.requests)) == (3, 3)
        assert ledger_of(db, sub) == (4 * cost(2_000, 1_500, 300), 0)
        server.should_exit = True
        thread.join(30)
    finally:
        second.stop()


def test_upstream_refusing_its_key_is_the_operators_fault(gw: Served) -> None:
    from planctl.services import upstreams

    gw.up.key = "sk-something-else"
    with pytest.raises(openai.InternalServerError) as failed:
        gw.client().responses.create(model="unit", input="x")
    assert failed.value.status_code == 502 and "operator" in failed.value.message
    row = wait_for(lambda: (r := upstreams.get(gw.db, "fake")) and not r.healthy and r)
    assert "401" in row.last_error
    [rec] = gw.records(1)
    assert rec["status_code"] == 502 and rec["cost"] == 0 and "operator" in rec["error"]
    assert ledger_of(gw.db, gw.sub) == (0, 0)
    with pytest.raises(openai.InternalServerError):  # an unhealthy upstream is not tried again
        gw.client().responses.create(model="unit", input="x")
    assert len(gw.up.requests) == 1


def test_no_upstream_releases_the_hold_at_once(db: Any, caller: Any, up: FakeUpstream) -> None:
    install(db, caller)
    sub, _key, secret = buy(db, caller)
    add_upstream(db, caller, "chat-only", up, apis=["chat"])
    server, thread, port = serve(db, up)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=secret, max_retries=0)
        with pytest.raises(openai.InternalServerError) as none:
            client.responses.create(model="unit", input="x")
        assert none.value.status_code == 503 and none.value.body["code"] == "no_upstream"
        assert ledger_of(db, sub) == (0, 0) and records(db) == []
        with db.read() as session:
            from sqlalchemy import text

            assert session.execute(text("SELECT status FROM reservations")).scalars().all() == ["released"]
    finally:
        server.should_exit = True
        thread.join(30)


# ---------------------------------------------------------------- broken streams


def test_mid_stream_break_ends_the_clients_stream_with_response_failed(gw: Served) -> None:
    gw.up.break_after = 6
    with gw.client().responses.create(model="unit", input="hi", stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    assert "broke" in events[-1].response.error.message
    [rec] = gw.records(1)
    assert rec["status_code"] == 502 and rec["usage_estimated"] and "broke" in rec["error"]
    assert rec["output_tokens"] == 6  # one token per streamed event, as documented
    assert ledger_of(gw.db, gw.sub)[1] == 0


def test_an_unexpected_error_mid_stream_still_ends_the_stream_and_settles(
        gw: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever breaks a stream (here an error aiohttp does not wrap in its own) must not leave
    the client hanging or its hold open: it did, until the hold timeout, when the upstream
    client let an error through that the relay did not expect."""
    import aiohttp.streams

    real = aiohttp.streams.StreamReader.iter_any

    async def breaking(self: Any) -> Any:
        async for chunk in real(self):
            yield chunk
            raise ConnectionResetError("reset by peer")

    monkeypatch.setattr(aiohttp.streams.StreamReader, "iter_any", breaking)
    gw.up.event_delay = 0.01  # events in chunks of their own: the break comes after the first
    with gw.client().responses.create(model="unit", input="hi", stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.failed" and "ConnectionResetError" in events[-1].response.error.message
    [rec] = gw.records(1)
    assert rec["status_code"] == 502 and rec["usage_estimated"] and "ConnectionResetError" in rec["error"]
    assert ledger_of(gw.db, gw.sub)[1] == 0


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
def test_both_upstream_clients_pass_through_settle_and_end_a_broken_stream(
        db: Any, caller: Any, up: FakeUpstream, kind: str) -> None:
    """`PLANCTL_UPSTREAM_CLIENT` picks the upstream client (aiohttp, or plain httpx to compare):
    both answer whole and streamed requests, fail over from an upstream that is not there, and
    end a stream that breaks with response.failed."""
    install(db, caller)
    sub, key, secret = buy(db, caller)
    add_upstream(db, caller, "gone", FakeUpstream(key=UP_SECRET, port=free_port()), priority=0)  # nothing listens
    add_upstream(db, caller, "fake", up, priority=1)
    server, thread, port = serve(db, up, client_kind=kind)
    served = Served(db, up, port, secret, sub, key, server)
    try:
        assert served.client().responses.create(model="unit", input="x").output_text == "Hello from the fake upstream."
        with served.client().responses.create(model="unit", input="x", stream=True) as stream:
            assert [e.type for e in stream][-1] == "response.completed"
        up.break_after = 4
        with served.client().responses.create(model="unit", input="x", stream=True) as stream:
            assert [e.type for e in stream][-1] == "response.failed"
        rows = served.records(3)
        assert [r["upstream"] for r in rows] == ["fake"] * 3 and [r["status_code"] for r in rows] == [200, 200, 502]
        assert ledger_of(db, sub) == (sum(r["charged_plan"] for r in rows), 0)
    finally:
        server.should_exit = True
        thread.join(30)


def test_chat_mid_stream_break_ends_with_an_error_chunk(gw: Served) -> None:
    gw.up.break_after = 3
    with pytest.raises(openai.APIError, match="broke"):
        list(gw.client().chat.completions.create(model="unit", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert gw.records(1)[0]["usage_estimated"]


def test_client_disconnect_still_settles_the_upstreams_usage(gw: Served) -> None:
    gw.up.event_delay, gw.up.deltas = 0.05, 10
    with httpx.Client() as client, client.stream(
            "POST", gw.base_url + "/responses", headers={"authorization": f"Bearer {gw.secret}"},
            json={"model": "unit", "input": "hi", "stream": True}) as answer:
        for line in answer.iter_lines():
            if "output_text.delta" in line:
                break  # the client leaves mid-stream
    [rec] = gw.records(1)
    assert (rec["input_tokens"], rec["cached_tokens"], rec["output_tokens"]) == (2_000, 1_500, 300)
    assert not rec["usage_estimated"] and rec["status_code"] == 200
    assert ledger_of(gw.db, gw.sub) == (cost(2_000, 1_500, 300), 0)


# ---------------------------------------------------------------- routes


def test_models_lists_the_plans_models_and_healthz(gw: Served) -> None:
    names = [m.id for m in gw.client().models.list()]
    assert names == ["gpt-5.4", "unit", "claude*"] or set(names) >= {"gpt-5.4", "unit"}
    assert "gpt-5.5" not in names
    health = httpx.get(f"http://127.0.0.1:{gw.port}/healthz")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    assert health.headers["x-request-id"].startswith("req_")
    missing = httpx.get(f"http://127.0.0.1:{gw.port}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.headers["x-request-id"]


def test_a_drain_that_times_out_settles_an_estimate(db: Any, caller: Any, up: FakeUpstream) -> None:
    install(db, caller)
    sub, _key, secret = buy(db, caller)
    add_upstream(db, caller, "fake", up)
    server, thread, port = serve(db, up, drain_timeout=0.3)
    try:
        up.event_delay, up.deltas = 0.2, 30  # about 7 s of stream
        with httpx.Client() as client, client.stream(
                "POST", f"http://127.0.0.1:{port}/v1/responses", headers={"authorization": f"Bearer {secret}"},
                json={"model": "unit", "input": "hi", "stream": True}) as answer:
            for line in answer.iter_lines():
                if "output_text.delta" in line:
                    break
        [rec] = wait_for(lambda: records(db))
        assert rec["usage_estimated"] and rec["status_code"] == 499 and "did not arrive" in rec["error"]
        assert rec["output_tokens"] < 30 and rec["input_tokens"] > 0
        used, reserved = ledger_of(db, sub)
        assert reserved == 0 and used == rec["cost"] > 0
    finally:
        server.should_exit = True
        thread.join(30)


def test_when_every_upstream_fails_the_client_gets_its_error_and_when_to_retry(gw: Served) -> None:
    gw.up.fail, gw.up.retry_after = [429], "2"
    with pytest.raises(openai.RateLimitError) as limited:
        gw.client().responses.create(model="unit", input="x")
    assert limited.value.response.headers["retry-after"] == "2"
    assert limited.value.message.endswith("fake upstream failure 429")
    with pytest.raises(openai.RateLimitError) as resting:  # the only upstream cools down: not even tried
        gw.client().responses.create(model="unit", input="x")
    assert resting.value.code == "upstreams_resting" and 1 <= int(resting.value.response.headers["retry-after"]) <= 2
    assert len(gw.up.requests) == 1
    time.sleep(2.1)
    gw.up.fail, gw.up.retry_after = [400], None
    with pytest.raises(openai.BadRequestError):
        gw.client().responses.create(model="unit", input="x", stream=True)
    rows = gw.records(2)
    assert [(r["status_code"], r["cost"], r["upstream"]) for r in rows] == [(429, 0, "fake"), (400, 0, "fake")]
    assert ledger_of(gw.db, gw.sub) == (0, 0)


def test_the_hold_is_sized_from_the_request_and_capped(gw: Served) -> None:
    from sqlalchemy import text

    def holds() -> list[int]:
        with gw.db.read() as session:
            return session.execute(text("SELECT amount FROM reservations ORDER BY created_at")).scalars().all()

    gw.client().responses.create(model="unit", input="hi", max_output_tokens=1_000)
    # 1,000 output tokens at 2 µcr and a few input tokens at 1, at the dearest group ratio (1.5)
    assert 3_000 < holds()[0] < 3_100
    gw.client().chat.completions.create(model="unit", messages=[{"role": "user", "content": "hi"}])
    assert 4_096 * 3 < holds()[1] < 4_096 * 3 + 200  # no cap in the request: the default 4,096 tokens
    server, thread, port = serve(gw.db, gw.up, max_reserve=500)
    try:
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=gw.secret, max_retries=0).responses.create(
            model="unit", input="hi", max_output_tokens=1_000)
        assert holds()[2] == 500
    finally:
        server.should_exit = True
        thread.join(30)
