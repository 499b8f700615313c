"""The Claude API of `planctl serve` over real HTTP on loopback: the official `anthropic` SDK as the
client, the fake upstream (tests/helpers/fake_upstream.py, replaying the recorded-style samples of
tests/fixtures/anthropic/ where a test needs them) behind the gateway, a real database."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import Served, add_upstream, buy, cost, install, ledger_of, now, plan, records, serve

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
MODEL = "claude-unit-1"  # billed as `unit` (1 µcr an input token, 0.5 a cached one, 2 an output one)
ENC = "gAAAAABpX3Jz_encrypted_reasoning_sample_0123456789-_abcdef=="


def sample(name: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / name).read_text())


class Claude(Served):
    def sdk(self, secret: str | None = None, *, bearer: bool = False) -> anthropic.Anthropic:
        """The SDK as Claude Code configures it: ANTHROPIC_BASE_URL without /v1; the key as
        ANTHROPIC_API_KEY (x-api-key) or ANTHROPIC_AUTH_TOKEN (Bearer)."""
        key = secret or self.secret
        auth = {"auth_token": key, "api_key": None} if bearer else {"api_key": key}
        return anthropic.Anthropic(base_url=f"http://127.0.0.1:{self.port}", max_retries=0, timeout=20, **auth)

    def sent(self) -> dict[str, Any]:
        """The body of the upstream's last request."""
        return self.up.requests[-1].body


@pytest.fixture
def gw(db: Any, caller: Any, up: FakeUpstream) -> Iterator[Claude]:
    from planctl.services import catalog

    install(db, caller)
    catalog.import_catalog(db, {"plans": [plan("cc", models=["unit", "gpt-5.4", "gpt-5.4-mini"])]}, caller=caller,
                           now=now())
    catalog.set_alias(db, "claude-unit*", "unit", caller=caller, now=now())
    sub, key, secret = buy(db, caller, "cc")
    add_upstream(db, caller, "fake", up)
    server, thread, port = serve(db, up)
    yield Claude(db, up, port, secret, sub, key, server)
    server.should_exit = True
    thread.join(30)


USER = [{"role": "user", "content": "hi"}]
SHOWN = {"input_tokens": 500, "cache_read_input_tokens": 1_500, "cache_creation_input_tokens": 0, "output_tokens": 300}


def usage_of(message: Any) -> dict[str, int]:
    return {k: getattr(message.usage, k) for k in SHOWN}


# ---------------------------------------------------------------- answers


def test_text_with_exact_usage_and_charge(gw: Claude) -> None:
    """Fixed upstream usage with cached tokens: the Anthropic usage shown and the µcr charged are both exact."""
    gw.up.usage = (2_000, 1_500, 300, 100)
    raw = gw.sdk().messages.with_raw_response.create(model=MODEL, max_tokens=500, messages=USER, system="Be brief.")
    message = raw.parse()
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello from the fake upstream.")]
    assert (message.model, message.stop_reason, message.role) == (MODEL, "end_turn", "assistant")
    assert usage_of(message) == SHOWN  # input excludes the cache reads, counted once
    sent = gw.sent()
    assert (sent["model"], sent["instructions"], sent["max_output_tokens"], sent["store"]) == \
        ("unit", "Be brief.", 500, False)
    assert sent["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    [rec] = gw.records(1)
    assert rec["request_id"] == raw.headers["x-request-id"]
    assert (rec["api"], rec["requested_model"], rec["billed_model"]) == ("claude", MODEL, "unit")
    assert (rec["input_tokens"], rec["cached_tokens"], rec["output_tokens"]) == (2_000, 1_500, 300)
    assert rec["cost"] == cost(2_000, 1_500, 300) == 500 + 750 + 600 == rec["charged_plan"]
    assert ledger_of(gw.db, gw.sub) == (cost(2_000, 1_500, 300), 0)


def test_streaming_text_with_exact_usage_and_charge(gw: Claude) -> None:
    gw.up.deltas = 6
    with gw.sdk(bearer=True).messages.stream(model=MODEL, max_tokens=500, messages=USER) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert len(pieces) == 6 and "".join(pieces) == "Hello from the fake upstream."
    assert usage_of(message) == SHOWN and message.stop_reason == "end_turn"
    [rec] = gw.records(1)
    assert bool(rec["stream"]) and rec["status_code"] == 200 and not rec["usage_estimated"]
    assert ledger_of(gw.db, gw.sub) == (cost(2_000, 1_500, 300), 0)


def test_beta_route_with_query_and_headers_and_the_default_aliases(gw: Claude) -> None:
    """Claude Code posts /v1/messages?beta=true with anthropic-beta; claude* bills as gpt-5.4, claude-haiku* as
    gpt-5.4-mini (the sample catalog's aliases)."""
    client = gw.sdk()
    client.beta.messages.create(model="claude-opus-5-5", max_tokens=64, messages=USER,
                                betas=["claude-code-20250219", "interleaved-thinking-2025-05-14"])
    assert gw.up.requests[-1].path == "/v1/responses" and gw.sent()["model"] == "gpt-5.4"
    client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=USER)
    assert gw.sent()["model"] == "gpt-5.4-mini"
    rows = gw.records(2)
    assert [(r["requested_model"], r["billed_model"], r["api"]) for r in rows] == [
        ("claude-opus-5-5", "gpt-5.4", "claude"), ("claude-haiku-4-5", "gpt-5.4-mini", "claude")]


def test_claude_code_request_goes_through(gw: Claude) -> None:
    """A request shaped as Claude Code sends it: role system mid-conversation, defer_loading, thinking."""
    body = json.loads((FIXTURES / "claude_code_request.json").read_text())
    body.update(model=MODEL, stream=False)
    answer = httpx.post(f"http://127.0.0.1:{gw.port}/v1/messages?beta=true", json=body, timeout=20,
                        headers={"x-api-key": gw.secret, "anthropic-version": "2023-06-01",
                                 "anthropic-beta": "claude-code-20250219", "x-claude-code-session-id": "sess-9"})
    assert answer.status_code == 200 and answer.json()["type"] == "message"
    sent = gw.sent()
    assert [i.get("role") for i in sent["input"] if i["type"] == "message"] == [
        "user", "assistant", "developer", "assistant", "user"]
    assert sent["reasoning"] == {"effort": "medium"} and "temperature" not in sent
    assert sent["prompt_cache_key"] == "claude-" + hashlib.sha256(b"sess-9").hexdigest()[:32]  # the session's
    [rec] = gw.records(1)
    assert rec["session_id"] == "sess-9"


def test_tool_use_round_trip_with_arguments_in_several_deltas(gw: Claude) -> None:
    tools = [{"name": "weather", "description": "Weather in a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    client = gw.sdk()
    with client.messages.stream(model=MODEL, max_tokens=500, messages=[{"role": "user", "content": "Paris?"}],
                                tools=tools) as stream:
        deltas = [e for e in stream if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        first = stream.get_final_message()
    assert len(deltas) == 2  # the upstream's two argument pieces, passed on as they came
    [use] = first.content
    assert (use.type, use.name, use.input, first.stop_reason) == ("tool_use", "weather", {"city": "Paris"}, "tool_use")
    assert gw.sent()["tools"] == [{"type": "function", "name": "weather", "description": "Weather in a city",
                                   "parameters": tools[0]["input_schema"], "strict": False}]
    second = client.messages.create(model=MODEL, max_tokens=500, tools=tools, messages=[
        {"role": "user", "content": "Paris?"}, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert second.content[0].text and second.stop_reason == "end_turn"
    assert gw.sent()["input"][1:] == [
        {"type": "function_call", "call_id": use.id, "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": use.id, "output": "sunny"}]
    assert len(gw.records(2)) == 2


@pytest.mark.parametrize("stream", [True, False])
def test_arguments_only_in_done_reach_the_client(gw: Claude, stream: bool) -> None:
    gw.up.scripts = [sample("stream_tool_args_in_done.json")]
    tools = [{"name": "Bash", "input_schema": {"type": "object"}}]
    if stream:
        with gw.sdk().messages.stream(model=MODEL, max_tokens=100, messages=USER, tools=tools) as s:
            message = s.get_final_message()
    else:
        message = gw.sdk().messages.create(model=MODEL, max_tokens=100, messages=USER, tools=tools)
    [use] = message.content
    assert (use.id, use.name, use.input) == ("call_b1", "Bash", {"command": "ls -la", "description": "List files"})


def test_two_parallel_tool_calls(gw: Claude) -> None:
    gw.up.scripts = [sample("stream_parallel_tools.json")]
    with gw.sdk().messages.stream(model=MODEL, max_tokens=100, messages=USER,
                                  tools=[{"name": "Read", "input_schema": {"type": "object"}}]) as stream:
        starts = [e.index for e in stream if e.type == "content_block_start"]
        message = stream.get_final_message()
    assert starts == [0, 1, 2]
    assert [(b.type, getattr(b, "id", None), getattr(b, "input", None)) for b in message.content] == [
        ("text", None, None), ("tool_use", "call_pa", {"file_path": "/etc/hosts"}),
        ("tool_use", "call_pb", {"file_path": "/etc/passwd"})]
    assert message.stop_reason == "tool_use"
    assert usage_of(message) == {"input_tokens": 904, "cache_read_input_tokens": 4_096,
                                 "cache_creation_input_tokens": 0, "output_tokens": 60}
    [rec] = gw.records(1)
    assert (rec["input_tokens"], rec["cached_tokens"], rec["output_tokens"]) == (5_000, 4_096, 60)
    assert rec["cost"] == cost(5_000, 4_096, 60)


def test_thinking_signature_carries_the_reasoning_into_the_next_turn(gw: Claude) -> None:
    gw.up.scripts = [sample("stream_reasoning_tool.json")]
    client = gw.sdk()
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    with client.messages.stream(model=MODEL, max_tokens=20_000, messages=USER, tools=tools,
                                thinking={"type": "enabled", "budget_tokens": 10_000}) as stream:
        first = stream.get_final_message()
    sent = gw.sent()
    assert sent["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert sent["include"] == ["reasoning.encrypted_content"] and sent["store"] is False
    thinking, use = first.content
    assert (thinking.type, thinking.thinking) == ("thinking", "Need the weather.\n\nCall the tool.")
    assert thinking.signature.endswith(ENC)
    client.messages.create(model=MODEL, max_tokens=20_000, tools=tools,
                           thinking={"type": "enabled", "budget_tokens": 10_000}, messages=[
                               *USER, {"role": "assistant", "content": first.content},
                               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                             "content": "sunny"}]}])
    replayed = [i for i in gw.sent()["input"] if i["type"] == "reasoning"]
    assert replayed == [{"type": "reasoning", "encrypted_content": ENC,
                         "summary": [{"type": "summary_text", "text": "Need the weather.\n\nCall the tool."}]}]


def test_image_block_and_mid_conversation_system(gw: Claude) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    gw.sdk().messages.create(model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": png}},
                                     {"type": "text", "text": "what is this?"}]},
        {"role": "assistant", "content": "A pixel."},
        {"role": "system", "content": "Answer in French from now on."},  # type: ignore[list-item]
        {"role": "user", "content": "and now?"}])
    assert gw.sent()["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_image", "detail": "auto", "image_url": f"data:image/png;base64,{png}"},
            {"type": "input_text", "text": "what is this?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A pixel."}]},
        {"type": "message", "role": "developer", "content": [{"type": "input_text",
                                                               "text": "Answer in French from now on."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and now?"}]}]


# ---------------------------------------------------------------- errors, as the SDK raises them


def test_refusals_never_invite_a_retry_and_touch_nothing(gw: Claude, caller: Any) -> None:
    from planctl.services import keys

    with pytest.raises(anthropic.AuthenticationError) as unknown:
        gw.sdk("sk-nobody-has-this").messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert unknown.value.body["error"]["type"] == "authentication_error"
    assert unknown.value.response.headers["x-should-retry"] == "false"
    assert "key_unknown" in unknown.value.message and "sk-nobody" not in unknown.value.message

    with pytest.raises(anthropic.PermissionDeniedError) as outside:
        gw.sdk().messages.create(model="gpt-5.5", max_tokens=10, messages=USER)
    assert "model_not_in_plan" in outside.value.message

    payg = keys.create(gw.db, keys.KeySpec(name="payg", account="acme", payg=True), caller=caller, now=now())
    with pytest.raises(anthropic.RateLimitError) as empty:
        gw.sdk(payg[0].secret).messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert "payg_balance_empty" in empty.value.message and "retry-after" not in empty.value.response.headers
    assert empty.value.response.headers["x-should-retry"] == "false"

    assert gw.records() == [] and gw.up.requests == [] and ledger_of(gw.db, gw.sub) == (0, 0)


def test_quota_refusal_names_the_reason_and_the_reset_time(gw: Claude, caller: Any) -> None:
    from planctl.services import keys

    made = keys.create(gw.db, keys.KeySpec(name="one-a-day", from_plan=gw.sub, rpd=1), caller=caller, now=now())
    client = gw.sdk(made[0].secret)
    client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    headers = limited.value.response.headers
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert headers["x-should-retry"] == "false" and int(headers["retry-after"]) > 0
    assert "key_rpd_reached" in limited.value.message and "resets at" in limited.value.message
    assert len(gw.records(1)) == 1


def test_bad_requests_are_invalid_request_errors(gw: Claude) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        gw.sdk().messages.create(model=MODEL, max_tokens=0, messages=USER)
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "max_tokens: a whole number ≥ 1 is required"}}
    wrong = httpx.get(f"http://127.0.0.1:{gw.port}/v1/messages")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    assert gw.up.requests == [] and gw.records() == []


@pytest.mark.parametrize(("status", "error", "raised", "error_type", "message"), [
    (400, {"code": "context_length_exceeded", "type": "invalid_request_error",
           "message": "Your input exceeds the context window of this model."},
     anthropic.BadRequestError, "invalid_request_error", r"^prompt is too long: \d+ tokens > \d+ maximum$"),
    (503, None, anthropic.InternalServerError, "overloaded_error", "^upstream overloaded"),
    (429, {"code": "rate_limit_exceeded", "message": "Rate limit reached"}, anthropic.RateLimitError,
     "rate_limit_error", "^upstream rate limit"),
])
def test_upstream_errors(gw: Claude, status: int, error: Any, raised: type, error_type: str, message: str) -> None:
    gw.up.fail, gw.up.fail_error, gw.up.retry_after = [status], error, "3"
    with pytest.raises(raised) as failed:
        gw.sdk().messages.create(model=MODEL, max_tokens=10, messages=USER)
    body = failed.value.body["error"]
    assert body["type"] == error_type and re.match(message, body["message"]), body
    assert failed.value.status_code == {400: 400, 503: 529, 429: 429}[status]
    assert "x-should-retry" not in failed.value.response.headers  # the upstream's trouble may pass
    [rec] = gw.records(1)
    assert rec["status_code"] == status and rec["cost"] == 0


def test_upstream_error_before_a_stream_is_an_http_error(gw: Claude) -> None:
    """A stream the upstream refuses at once is an HTTP error, not a 200 stream: the SDK raises it as such."""
    gw.up.fail, gw.up.fail_error = [400], {"code": "context_length_exceeded", "message": "too long"}
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        with gw.sdk().messages.stream(model=MODEL, max_tokens=10, messages=USER) as stream:
            list(stream)
    [rec] = gw.records(1)
    assert rec["status_code"] == 400 and bool(rec["stream"])


def test_upstream_refusing_its_key_is_the_operators_fault(gw: Claude) -> None:
    gw.up.key = "sk-something-else"
    with pytest.raises(anthropic.InternalServerError) as failed:
        gw.sdk().messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert failed.value.status_code == 502 and "operator" in failed.value.message
    assert failed.value.body["error"]["type"] == "api_error"


def test_cut_upstream_stream_ends_with_an_error_event(gw: Claude) -> None:
    gw.up.break_after = 6
    with pytest.raises(anthropic.APIStatusError, match="broke|ended") as cut:
        with gw.sdk().messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
            list(stream)
    assert cut.value.body["error"]["type"] == "api_error"
    [rec] = gw.records(1)
    assert rec["status_code"] == 502 and rec["usage_estimated"]
    assert ledger_of(gw.db, gw.sub)[1] == 0


def test_upstream_failure_inside_a_stream_is_an_error_event(gw: Claude) -> None:
    gw.up.scripts = [sample("stream_failed_context.json")]
    with pytest.raises(anthropic.APIStatusError) as failed:
        with gw.sdk().messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
            list(stream)
    assert failed.value.body["error"]["type"] == "invalid_request_error"
    assert re.match(r"^prompt is too long: \d+ tokens > \d+ maximum$", failed.value.body["error"]["message"])


# ---------------------------------------------------------------- count_tokens and the warm-up


def test_count_tokens_is_an_estimate_never_metered(gw: Claude) -> None:
    client = gw.sdk()
    small = client.messages.count_tokens(model=MODEL, messages=USER)
    large = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "word " * 4_000}],
                                         system="You are Claude Code.")
    assert 1 <= small.input_tokens < 20 and 4_800 <= large.input_tokens <= 5_300
    gw.up.fail = [500]  # an upstream in trouble changes nothing: it is never asked
    assert client.beta.messages.count_tokens(model=MODEL, messages=USER).input_tokens == small.input_tokens
    with pytest.raises(anthropic.AuthenticationError):
        gw.sdk("sk-nobody-has-this").messages.count_tokens(model=MODEL, messages=USER)
    assert gw.up.requests == [] and records(gw.db) == [] and ledger_of(gw.db, gw.sub) == (0, 0)


def test_hello_warm_up(gw: Claude) -> None:
    base = f"http://127.0.0.1:{gw.port}/api/hello"
    assert httpx.head(base).status_code == 200 and httpx.get(base).status_code == 200
