"""Anthropic Messages ↔ Responses translation, without a server: table-driven from recorded-style samples.

Streams in tests/fixtures/anthropic/stream_*.json are Responses SSE events as an
upstream sends them (parsed). Each translated stream is also replayed through
the official anthropic SDK's own accumulator, and must give the same message as
the non-stream translation of the upstream's final response.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from planctl.gateway import anthropic as a
from planctl.gateway import errors
from planctl.gateway.sse import Tokens, responses_usage

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
ENC = "gAAAAABpX3Jz_encrypted_reasoning_sample_0123456789-_abcdef=="
SIG = a.SIGNATURE_PREFIX + ENC
EVENT = TypeAdapter(RawMessageStreamEvent)


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def req(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                            "messages": [{"role": "user", "content": "hi"}]}
    body.update(over)
    return body


def body_of(**over: Any) -> dict[str, Any]:
    return a.to_responses(req(**over), model="gpt-5.4").body


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts)}


def text(t: str) -> dict[str, Any]:
    return {"type": "input_text", "text": t}


# ---------------------------------------------------------------- request: field by field

PNG = "iVBORw0KGgo="
REQUEST_CASES = [
    # (name, request overrides, key of the Responses body, expected value)
    ("system string → instructions", {"system": "Be brief."}, "instructions", "Be brief."),
    ("system blocks joined, cache_control dropped",
     {"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}}]},
     "instructions", "A\n\nB"),
    ("user string → input_text", {}, "input", [user(text("hi"))]),
    ("mid-conversation system → developer message",
     {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": [{"type": "text", "text": "mode"}]},
                   {"role": "user", "content": "b"}]},
     "input", [user(text("a")), {"type": "message", "role": "developer", "content": [text("mode")]}, user(text("b"))]),
    ("assistant text → output_text",
     {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "input", [user(text("a")), {"type": "message", "role": "assistant",
                                 "content": [{"type": "output_text", "text": "b"}]}]),
    ("base64 image → input_image data URL",
     {"messages": [{"role": "user", "content": [
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
         {"type": "text", "text": "what is it?"}]}]},
     "input", [user({"type": "input_image", "detail": "auto", "image_url": f"data:image/png;base64,{PNG}"},
                    text("what is it?"))]),
    ("URL image → input_image URL",
     {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}]}]},
     "input", [user({"type": "input_image", "detail": "auto", "image_url": "https://x/i.png"})]),
    ("base64 PDF → input_file",
     {"messages": [{"role": "user", "content": [{"type": "document", "title": "spec.pdf", "source": {
         "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]},
     "input", [user({"type": "input_file", "filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0="})]),
    ("URL PDF → input_file URL",
     {"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/d.pdf"}}]}]},
     "input", [user({"type": "input_file", "file_url": "https://x/d.pdf"})]),
    ("plain-text document → input_text",
     {"messages": [{"role": "user", "content": [{"type": "document", "source": {
         "type": "text", "media_type": "text/plain", "data": "the notes"}}]}]},
     "input", [user(text("the notes"))]),
    ("tool_use → function_call with call_id and JSON text; tool_result → function_call_output, text joined",
     {"messages": [
         {"role": "user", "content": "weather?"},
         {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                           {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                            "input": {"city": "Paris", "days": [1, 2]}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
                                       "content": [{"type": "text", "text": "sunny"}, {"type": "text", "text": "21°C"}]},
                                      {"type": "text", "text": "and tomorrow?"}]}]},
     "input", [user(text("weather?")),
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
               {"type": "function_call", "call_id": "toolu_1", "name": "get_weather",
                "arguments": '{"city":"Paris","days":[1,2]}'},
               {"type": "function_call_output", "call_id": "toolu_1", "output": "sunny\n21°C"},
               user(text("and tomorrow?"))]),
    ("tool_result images → a user message right after the output",
     {"messages": [
         {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "Screenshot", "input": {}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": [
             {"type": "text", "text": "captured"},
             {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}}]}]}]},
     "input", [{"type": "function_call", "call_id": "c1", "name": "Screenshot", "arguments": "{}"},
               {"type": "function_call_output", "call_id": "c1", "output": "captured"},
               user(text("(attached to the result of tool call c1)"),
                    {"type": "input_image", "detail": "auto", "image_url": "data:image/jpeg;base64,/9j/"})]),
    ("tool_result string content and empty content",
     {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "ok"},
                                                {"type": "tool_result", "tool_use_id": "c2"}]}]},
     "input", [{"type": "function_call_output", "call_id": "c1", "output": "ok"},
               {"type": "function_call_output", "call_id": "c2", "output": ""}]),
    ("thinking with our signature → reasoning item with the encrypted content, before the message",
     {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
         {"type": "thinking", "thinking": "step one", "signature": SIG}, {"type": "text", "text": "A."}]}]},
     "input", [user(text("q")),
               {"type": "reasoning", "summary": [{"type": "summary_text", "text": "step one"}], "encrypted_content": ENC},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A."}]}]),
    ("thinking with a foreign signature and redacted_thinking are dropped",
     {"messages": [{"role": "assistant", "content": [
         {"type": "thinking", "thinking": "x", "signature": "EqQBCkgIBxAB"},
         {"type": "redacted_thinking", "data": "EmwKAhgB"}, {"type": "text", "text": "A."}]}]},
     "input", [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A."}]}]),
    ("max_tokens → max_output_tokens", {"max_tokens": 64000}, "max_output_tokens", 64000),
    ("max_tokens 1 → 16, the upstream's minimum", {"max_tokens": 1}, "max_output_tokens", 16),
    ("always store:false", {}, "store", False),
    ("always asks for the encrypted reasoning", {}, "include", ["reasoning.encrypted_content"]),
    ("stream flag carried", {"stream": True}, "stream", True),
    ("custom tool → function with strict:false explicit",
     {"tools": [{"name": "Read", "description": "Reads", "input_schema": {"type": "object", "required": ["p"]}}]},
     "tools", [{"type": "function", "name": "Read", "description": "Reads", "strict": False,
                "parameters": {"type": "object", "required": ["p"]}}]),
    ("defer_loading tool kept, the flag dropped",
     {"tools": [{"name": "T", "input_schema": {"type": "object"}, "defer_loading": True}]},
     "tools", [{"type": "function", "name": "T", "parameters": {"type": "object"}, "strict": False}]),
    ("web search → the upstream's web_search with domains and location",
     {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5, "allowed_domains": ["python.org"],
                 "user_location": {"type": "approximate", "city": "Paris", "country": "FR"}}]},
     "tools", [{"type": "web_search", "filters": {"allowed_domains": ["python.org"]},
                "user_location": {"type": "approximate", "city": "Paris", "country": "FR"}}]),
    ("tool_choice auto", {"tool_choice": {"type": "auto"}}, "tool_choice", "auto"),
    ("tool_choice any → required", {"tool_choice": {"type": "any"}}, "tool_choice", "required"),
    ("tool_choice none", {"tool_choice": {"type": "none"}}, "tool_choice", "none"),
    ("tool_choice tool → function", {"tool_choice": {"type": "tool", "name": "Read"}},
     "tool_choice", {"type": "function", "name": "Read"}),
    ("disable_parallel_tool_use → parallel_tool_calls false",
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}, "parallel_tool_calls", False),
    ("thinking enabled, small budget → low", {"thinking": {"type": "enabled", "budget_tokens": 1024}},
     "reasoning", {"effort": "low", "summary": "auto"}),
    ("thinking enabled, 10k budget → medium", {"thinking": {"type": "enabled", "budget_tokens": 10_000}},
     "reasoning", {"effort": "medium", "summary": "auto"}),
    ("thinking enabled, Claude Code's 31,999 → high", {"thinking": {"type": "enabled", "budget_tokens": 31_999}},
     "reasoning", {"effort": "high", "summary": "auto"}),
    ("adaptive with effort", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}},
     "reasoning", {"effort": "high", "summary": "auto"}),
    ("adaptive without effort → medium", {"thinking": {"type": "adaptive"}}, "reasoning",
     {"effort": "medium", "summary": "auto"}),
    ("effort max → xhigh; display omitted asks no summary",
     {"thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "max"}},
     "reasoning", {"effort": "xhigh"}),
    ("structured output → text.format json_schema",
     {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     "text", {"format": {"type": "json_schema", "name": "output", "schema": {"type": "object"}, "strict": False}}),
    ("short user_id → user as is", {"metadata": {"user_id": "alice"}}, "user", "alice"),
]


@pytest.mark.parametrize(("overrides", "key", "expected"), [c[1:] for c in REQUEST_CASES],
                         ids=[c[0] for c in REQUEST_CASES])
def test_request_field(overrides: dict[str, Any], key: str, expected: Any) -> None:
    assert body_of(**overrides)[key] == expected


@pytest.mark.parametrize(("overrides", "absent"), [
    ({}, ["tools", "tool_choice", "reasoning", "instructions", "user", "prompt_cache_key", "text"]),
    ({"temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["END"]},
     ["temperature", "top_p", "top_k", "stop_sequences", "stop"]),
    ({"thinking": {"type": "disabled"}}, ["reasoning"]),
    ({"context_management": {"edits": [{"type": "clear_thinking_20251015"}]}}, ["context_management"]),
])
def test_request_leaves_out(overrides: dict[str, Any], absent: list[str]) -> None:
    body = body_of(**overrides)
    assert [k for k in absent if k in body] == []


def test_server_tools_dropped_with_a_note() -> None:
    t = a.to_responses(req(tools=[{"type": "web_fetch_20250910", "name": "web_fetch"},
                                  {"type": "bash_20250124", "name": "bash"},
                                  {"name": "Read", "input_schema": {"type": "object"}}]), model="m")
    assert [x["name"] for x in t.body["tools"]] == ["Read"]
    assert any("web_fetch" in n and "dropped" in n for n in t.notes)
    assert any("bash" in n and "dropped" in n for n in t.notes)


def test_sampling_params_dropped_with_a_note() -> None:
    notes = a.to_responses(req(temperature=0.3, stop_sequences=["x"]), model="m").notes
    assert notes == ("temperature dropped: reasoning models refuse sampling parameters",
                     "stop_sequences dropped: the Responses API has no stop sequences")


def test_claude_code_request_sample() -> None:
    """A request shaped as Claude Code 2.1.332 sends it (gateway-wire.md §2)."""
    sample = load("claude_code_request.json")
    before = copy.deepcopy(sample)
    t = a.to_responses(sample, model="gpt-5.4")
    assert sample == before  # pure: the request is not changed
    body = t.body
    assert body["model"] == "gpt-5.4" and body["stream"] is True and body["max_output_tokens"] == 128_000
    assert body["instructions"].startswith("x-anthropic-billing-header") and "You are Claude Code" in body["instructions"]
    assert [(i["type"], i.get("role")) for i in body["input"]] == [
        ("message", "user"), ("reasoning", None), ("message", "assistant"), ("function_call", None),
        ("function_call_output", None), ("message", "developer"), ("message", "assistant"), ("message", "user")]
    assert body["input"][1] == {"type": "reasoning", "summary": [], "encrypted_content": ENC}
    assert body["input"][3] == {"type": "function_call", "call_id": "call_b1", "name": "Bash",
                                "arguments": '{"command":"ls","description":"List files"}'}
    assert [t["name"] for t in body["tools"]] == ["Bash", "Read", "ToolSearch"]
    assert all(t["strict"] is False and "defer_loading" not in t and "cache_control" not in t for t in body["tools"])
    assert body["reasoning"] == {"effort": "medium"} and t.show_thinking is False
    assert len(body["user"]) == 64 and "device_id" not in body["user"]
    assert "temperature" not in body and "context_management" not in body
    assert "dropped" in " ".join(t.notes)


def test_prompt_cache_key_is_stable_per_session() -> None:
    def key(user_id: str, session: str | None = None) -> str:
        return a.to_responses(req(metadata={"user_id": user_id}), model="m", session_id=session).body["prompt_cache_key"]

    json_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s-1"})
    legacy = "user_" + "a" * 64 + "_account__session_5d0c4b41-9a57-2f7c"
    assert key(json_id) == key(json.dumps({"device_id": "other", "session_id": "s-1"}))  # same session, same key
    assert key(json_id) != key(json.dumps({"device_id": "d" * 64, "session_id": "s-2"}))
    assert key(legacy) == key("user_zz_account__session_5d0c4b41-9a57-2f7c")
    assert key(json_id) == key("anything", session="s-1")  # X-Claude-Code-Session-Id wins, same session key
    assert all(len(key(x)) <= 64 for x in (json_id, legacy, "u"))
    assert a.session_of(json_id) == "s-1" and a.session_of(legacy) == "5d0c4b41-9a57-2f7c"


@pytest.mark.parametrize(("body", "message"), [
    ([], "the body must be a JSON object"),
    (req(messages=[]), "messages: a non-empty list of messages is required"),
    (req(max_tokens=None), "max_tokens: a whole number ≥ 1 is required"),
    (req(max_tokens=0), "max_tokens: a whole number ≥ 1 is required"),
    (req(messages=[{"role": "tool", "content": "x"}]), "messages.0: a message with role user, assistant or system"),
    (req(messages=[{"role": "user", "content": 5}]), "messages.0.content: a string or a list of content blocks"),
    (req(messages=[{"role": "assistant", "content": [{"type": "tool_use", "input": {}}]}]),
     "messages.0.content.0: tool_use needs an id and a name"),
    (req(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
     "messages.0.content.0: tool_result needs a tool_use_id"),
    (req(system=5), "system: a string or a list of text blocks is required"),
    (req(tools=[{"description": "no name"}]), "tools: every tool needs a name"),
    (req(tools=[{"name": "x", "type": 3}]), "tools: every tool needs a name"),
])
def test_bad_requests_say_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(a.BadRequest, match=f"^{message}"):
        a.to_responses(body, model="m")


# ---------------------------------------------------------------- answer: whole responses


def final_response(stream: str) -> dict[str, Any]:
    return next(e["response"] for e in load(stream) if e["type"] in ("response.completed", "response.incomplete"))


MESSAGE_CASES = [
    # (stream sample whose final response is used, expected content, stop_reason, usage)
    ("stream_text.json", [{"type": "text", "text": "Hello from GPT! 日本語も。"}], "end_turn",
     {"input_tokens": 176, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024, "output_tokens": 20}),
    ("stream_reasoning_tool.json",
     [{"type": "thinking", "thinking": "Need the weather.\n\nCall the tool.", "signature": SIG},
      {"type": "tool_use", "id": "call_w1", "name": "get_weather", "input": {"city": "Paris"}}], "tool_use",
     {"input_tokens": 952, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2048, "output_tokens": 180}),
    ("stream_parallel_tools.json",
     [{"type": "text", "text": "Checking both."},
      {"type": "tool_use", "id": "call_pa", "name": "Read", "input": {"file_path": "/etc/hosts"}},
      {"type": "tool_use", "id": "call_pb", "name": "Read", "input": {"file_path": "/etc/passwd"}}], "tool_use",
     {"input_tokens": 904, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4096, "output_tokens": 60}),
    ("stream_incomplete.json", [{"type": "text", "text": "This answer is cut"}], "max_tokens",
     {"input_tokens": 50, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 16}),
    ("stream_refusal.json", [{"type": "text", "text": "I can't help with that."}], "refusal",
     {"input_tokens": 70, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 9}),
]


@pytest.mark.parametrize(("stream", "content", "stop", "usage"), MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES])
def test_whole_answer(stream: str, content: list[dict[str, Any]], stop: str, usage: dict[str, int]) -> None:
    response = final_response(stream)
    msg = a.to_message(response, model="claude-sonnet-4-5")
    assert msg["content"] == content and msg["stop_reason"] == stop and msg["usage"] == usage
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["model"] == "claude-sonnet-4-5"
    assert msg["id"] == "msg_" + response["id"].removeprefix("resp_") and msg["stop_sequence"] is None


def test_whole_answer_hides_thinking_text_when_display_omitted() -> None:
    msg = a.to_message(final_response("stream_reasoning_tool.json"), model="m", show_thinking=False)
    assert msg["content"][0] == {"type": "thinking", "thinking": "", "signature": SIG}


def test_signature_round_trip_gives_the_upstream_its_reasoning_back() -> None:
    """Turn 1's answer, replayed as the client replays it, carries the same encrypted reasoning into turn 2."""
    answer = a.to_message(final_response("stream_reasoning_tool.json"), model="m")
    turn2 = req(messages=[{"role": "user", "content": "weather in Paris?"},
                          {"role": "assistant", "content": answer["content"]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w1",
                                                        "content": "sunny"}]}])
    items = a.to_responses(turn2, model="gpt-5.4").body["input"]
    upstream_item = final_response("stream_reasoning_tool.json")["output"][0]
    assert items[1] == {"type": "reasoning", "encrypted_content": upstream_item["encrypted_content"],
                        "summary": [{"type": "summary_text", "text": "Need the weather.\n\nCall the tool."}]}
    assert items[2]["call_id"] == "call_w1" and items[3] == {"type": "function_call_output", "call_id": "call_w1",
                                                             "output": "sunny"}


@pytest.mark.parametrize(("status", "reason", "called", "refused", "expected"), [
    ("completed", None, False, False, "end_turn"),
    ("completed", None, True, False, "tool_use"),
    ("completed", None, False, True, "refusal"),
    ("incomplete", "max_output_tokens", False, False, "max_tokens"),
    ("incomplete", "max_output_tokens", True, False, "max_tokens"),  # a call cut short is not a call to run
    ("incomplete", "content_filter", False, False, "refusal"),
])
def test_stop_reason(status: str, reason: str | None, called: bool, refused: bool, expected: str) -> None:
    assert a.stop_reason(status, reason, called=called, refused=refused) == expected


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"a": 1}', {"a": 1}), ("", {}), (None, {}), ("  ", {}),
    ("[1, 2]", {"value": [1, 2]}), ("{broken", {"arguments": "{broken"}),
])
def test_tool_input_is_always_an_object(arguments: Any, expected: Any) -> None:
    assert a.tool_input(arguments) == expected


# ---------------------------------------------------------------- usage: shown vs billed


@pytest.mark.parametrize(("usage", "shown", "billed"), [
    ({"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 20,
      "output_tokens_details": {"reasoning_tokens": 8}},
     (176, 1024, 0, 20), Tokens(1200, 1024, 20)),
    ({"input_tokens": 10, "output_tokens": 3}, (10, 0, 0, 3), Tokens(10, 0, 3)),
    ({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 9}, "output_tokens": 1},  # clamped when shown
     (0, 5, 0, 1), Tokens(5, 9, 1)),
    (None, (0, 0, 0, 0), None),
    ({"input_tokens": -3, "input_tokens_details": None, "output_tokens": "x"}, (0, 0, 0, 0), Tokens(0, 0, 0)),
])
def test_usage_shown_and_billed(usage: Any, shown: tuple[int, ...], billed: Tokens | None) -> None:
    """Shown: Anthropic's split. Billed: the upstream's own figures (sse.responses_usage; Meter.settle
    clamps cached to input), never the translated ones."""
    u = a.anthropic_usage(usage)
    assert (u["input_tokens"], u["cache_read_input_tokens"], u["cache_creation_input_tokens"],
            u["output_tokens"]) == shown
    assert responses_usage(usage) == billed
    # the cached part is counted once: shown input + cache reads = the upstream's input
    assert u["input_tokens"] + u["cache_read_input_tokens"] == (billed.input if billed else 0)


# ---------------------------------------------------------------- streams


def translate(events: list[dict[str, Any]], *, finish: bool = True, **kw: Any) -> tuple[a.StreamTranslator, list]:
    t = a.StreamTranslator(model="claude-sonnet-4-5", **kw)
    out = [e for ev in events for e in t.feed(ev)]
    if finish:
        out += t.finish()
    return t, out


def accumulate(out: list[a.Event]) -> Any:
    """The message the anthropic SDK builds from these events (it raises on a malformed sequence)."""
    snapshot, bufs = None, {}
    for name, data in out:
        assert data["type"] == name
        snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


def shape(out: list[a.Event]) -> list[str]:
    """Event names, with the block type or delta type: a compact picture of the sequence."""
    names = []
    for name, data in out:
        if name == "content_block_start":
            names.append(f"start:{data['index']}:{data['content_block']['type']}")
        elif name == "content_block_delta":
            names.append(f"delta:{data['index']}:{data['delta']['type']}")
        elif name == "content_block_stop":
            names.append(f"stop:{data['index']}")
        else:
            names.append(name)
    return names


def squeeze(names: list[str]) -> list[str]:
    """Runs of the same delta as one entry, with a count."""
    out: list[str] = []
    for n in names:
        if out and out[-1].split(" ×")[0] == n:
            count = int(out[-1].split(" ×")[1]) if " ×" in out[-1] else 1
            out[-1] = f"{n} ×{count + 1}"
        else:
            out.append(n)
    return out


STREAM_CASES = [
    ("stream_text.json", ["message_start", "start:0:text", "delta:0:text_delta ×5", "stop:0", "message_delta",
                          "message_stop"]),
    ("stream_reasoning_tool.json", [
        "message_start", "start:0:thinking", "delta:0:thinking_delta ×4", "delta:0:signature_delta", "stop:0",
        "start:1:tool_use", "delta:1:input_json_delta ×4", "stop:1", "message_delta", "message_stop"]),
    ("stream_tool_args_in_done.json", ["message_start", "start:0:tool_use", "delta:0:input_json_delta", "stop:0",
                                       "message_delta", "message_stop"]),
    ("stream_parallel_tools.json", [
        "message_start", "start:0:text", "delta:0:text_delta", "stop:0", "start:1:tool_use",
        "delta:1:input_json_delta ×2", "stop:1", "start:2:tool_use", "delta:2:input_json_delta ×2", "stop:2",
        "message_delta", "message_stop"]),
    ("stream_items_only.json", ["message_start", "start:0:text", "delta:0:text_delta", "stop:0", "start:1:tool_use",
                                "delta:1:input_json_delta", "stop:1", "message_delta", "message_stop"]),
    ("stream_incomplete.json", ["message_start", "start:0:text", "delta:0:text_delta", "stop:0", "message_delta",
                                "message_stop"]),
    ("stream_refusal.json", ["message_start", "start:0:text", "delta:0:text_delta ×2", "stop:0", "message_delta",
                             "message_stop"]),
]


@pytest.mark.parametrize(("stream", "expected"), STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_stream_sequence(stream: str, expected: list[str]) -> None:
    t, out = translate(load(stream))
    assert squeeze(shape(out)) == expected
    assert t.done


@pytest.mark.parametrize("stream", [c[0] for c in STREAM_CASES])
def test_stream_and_whole_answer_agree(stream: str) -> None:
    """What the SDK accumulates from the stream equals the non-stream translation of the same answer."""
    t, out = translate(load(stream))
    message = accumulate(out).to_dict()
    whole = a.to_message(final_response(stream), model="claude-sonnet-4-5")
    assert {k: message[k] for k in ("content", "stop_reason", "usage")} == \
        {k: whole[k] for k in ("content", "stop_reason", "usage")}
    assert message["id"] == whole["id"] or stream == "stream_items_only.json"  # that one has no response.created
    assert t.response == final_response(stream)


def test_stream_arguments_only_in_done_reach_the_client() -> None:
    _, out = translate(load("stream_tool_args_in_done.json"))
    tool = accumulate(out).content[0]
    assert tool.input == {"command": "ls -la", "description": "List files"}


def test_stream_parallel_calls_keep_their_own_index_and_input() -> None:
    _, out = translate(load("stream_parallel_tools.json"))
    starts = [d["index"] for n, d in out if n == "content_block_start"]
    assert starts == sorted(set(starts)) == [0, 1, 2]
    calls = [(b.id, b.input) for b in accumulate(out).content if b.type == "tool_use"]
    assert calls == [("call_pa", {"file_path": "/etc/hosts"}), ("call_pb", {"file_path": "/etc/passwd"})]


def test_stream_without_thinking_text_still_carries_the_signature() -> None:
    _, out = translate(load("stream_reasoning_tool.json"), show_thinking=False)
    block = accumulate(out).content[0]
    assert (block.type, block.thinking, block.signature) == ("thinking", "", SIG)
    assert not any(d.get("delta", {}).get("type") == "thinking_delta" for _, d in out)


def test_stream_usage_reaches_message_delta_with_cache_reads() -> None:
    _, out = translate(load("stream_text.json"))
    delta = next(d for n, d in out if n == "message_delta")
    assert delta["usage"] == {"input_tokens": 176, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024,
                              "output_tokens": 20}
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


@pytest.mark.parametrize(("stream", "error_type", "message"), [
    ("stream_failed_context.json", "invalid_request_error", r"^prompt is too long: 250007 tokens > 250006 maximum$"),
    ("stream_error_event.json", "overloaded_error", "^upstream overloaded: The server is overloaded.$"),
    ("stream_cut.json", "api_error", "^the upstream stream ended before the answer was complete$"),
])
def test_stream_failures_end_with_an_error_event(stream: str, error_type: str, message: str) -> None:
    big = req(messages=[{"role": "user", "content": "x" * 1_000_000}])  # about 250,000 tokens
    t, out = translate(load(stream), request=big)
    name, data = out[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == error_type
    assert __import__("re").match(message, data["error"]["message"])
    assert [n for n, _ in out].count("error") == 1 and "message_stop" not in [n for n, _ in out]
    assert t.done and t.finish() == [] and t.feed({"type": "response.completed", "response": {}}) == []


def test_stream_never_ends_silently() -> None:
    """Whatever prefix of any sample the upstream sends before it stops, the client's stream ends properly."""
    for stream in sorted(p.name for p in FIXTURES.glob("stream_*.json")):
        events = load(stream)
        for cut in range(len(events) + 1):
            _, out = translate(events[:cut])
            assert out and out[-1][0] in ("message_stop", "error"), (stream, cut)
            assert [n for n, _ in out].count("message_stop") + [n for n, _ in out].count("error") == 1
            starts = [d["index"] for n, d in out if n == "content_block_start"]
            stops = [d["index"] for n, d in out if n == "content_block_stop"]
            if out[-1][0] == "message_stop":
                assert starts == stops, (stream, cut)  # every block closed, in order


def test_sse_bytes() -> None:
    out = a.sse([("message_stop", {"type": "message_stop"}), ("ping", {"type": "ping", "t": "é"})])
    assert out == b'event: message_stop\ndata: {"type":"message_stop"}\n\n' \
                  b'event: ping\ndata: {"type":"ping","t":"\xc3\xa9"}\n\n'


# ---------------------------------------------------------------- errors


OVERFLOW = {"error": {"message": "Your input exceeds the context window of this model. Please adjust your input and "
                                 "try again.", "type": "invalid_request_error", "param": "input",
                      "code": "context_length_exceeded"}}
RESET = datetime(2026, 12, 1, 16, 0, tzinfo=timezone.utc)  # Beijing midnight
AT = RESET - timedelta(hours=1)


@pytest.mark.parametrize(("answer", "status", "error_type", "headers", "says"), [
    (errors.refusal("key_unknown", "no key has this secret", None, AT), 401, "authentication_error",
     {"x-should-retry": "false"}, "key_unknown"),
    (errors.refusal("model_not_in_plan", "the model is not in the plan", None, AT), 403, "permission_error",
     {"x-should-retry": "false"}, "model_not_in_plan"),
    (errors.refusal("rpd_reached", "today's request limit (RPD) is reached; it resets at 2026-12-01T16:00:00Z",
                    RESET, AT), 429, "rate_limit_error", {"x-should-retry": "false", "retry-after": "3600"},
     "rpd_reached"),
    (errors.refusal("credit_exhausted", "the plan's total credit is used up", None, AT), 429, "rate_limit_error",
     {"x-should-retry": "false"}, "credit_exhausted"),
    (errors.bad_request("the request needs a 'model'"), 400, "invalid_request_error", {}, "needs a 'model'"),
    (errors.upstream_auth("main", 401), 502, "api_error", {}, "operator"),
    (errors.no_upstream("gpt-5.4", "claude"), 503, "api_error", {}, "planctl upstreams add"),
    (errors.overloaded("OperationalError"), 529, "overloaded_error", {}, "cannot meter"),
    (errors.upstream_unreachable("main: ConnectError"), 502, "api_error", {}, "no upstream could be reached"),
    (errors.from_upstream(400, json.dumps(OVERFLOW).encode(), None), 400, "invalid_request_error", {},
     "prompt is too long: "),
    (errors.from_upstream(429, b'{"error": {"code": "rate_limit_exceeded", "message": "slow"}}', "7"), 429,
     "rate_limit_error", {"retry-after": "7"}, "upstream rate limit: slow"),
    (errors.from_upstream(503, b"<html>busy</html>", None), 529, "overloaded_error", {}, "upstream overloaded"),
])
def test_gateway_answers_in_the_anthropic_format(answer: errors.ErrorAnswer, status: int, error_type: str,
                                                  headers: dict[str, str], says: str) -> None:
    """Refusals (by planctl reason code), the gateway's own errors and the upstream's (as errors.py hands
    them to a route), as Claude Code must see them: a refusal never invites a retry (Claude Code retries a
    401 for three minutes otherwise); an upstream's trouble may pass, so it may."""
    out = a.from_openai(answer, req())
    assert (out.status, out.body["type"], out.body["error"]["type"], out.headers) == \
        (status, "error", error_type, headers)
    assert says in out.body["error"]["message"]
    if answer.body["error"].get("reason") == "rpd_reached":
        assert "resets at 2026-12-01T16:00:00Z" in out.body["error"]["message"]  # the reason and the reset time


@pytest.mark.parametrize(("status", "body", "retry_after", "expected_status", "error_type", "message", "headers"), [
    (400, OVERFLOW, None, 400, "invalid_request_error", "prompt is too long: 1232 tokens > 1231 maximum", {}),
    (400, {"error": {"code": "context_length_exceeded", "message": "This model's maximum context length is 128000 "
                     "tokens. However, your messages resulted in 130500 tokens."}}, None,
     400, "invalid_request_error", "prompt is too long: 130500 tokens > 128000 maximum", {}),
    (401, {"error": {"message": "Incorrect API key provided: sk-up***"}}, None, 502, "api_error",
     "the upstream refused the gateway's own credentials or quota: the operator must fix it", {}),
    (429, {"error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}}, None, 502,
     "api_error", "the upstream refused the gateway's own credentials or quota: the operator must fix it", {}),
    (429, {"error": {"code": "rate_limit_exceeded", "message": "Slow down"}}, 7, 429, "rate_limit_error",
     "upstream rate limit: Slow down", {"retry-after": "7"}),
    (503, {"error": {"message": "overloaded"}}, None, 529, "overloaded_error", "upstream overloaded: overloaded", {}),
    (500, {"error": {"code": "server_error", "message": "boom"}}, None, 500, "api_error", "upstream error: boom", {}),
    (500, b"<html>", None, 500, "api_error", "upstream error: upstream status 500", {}),
    (404, {"error": {"message": "no such model"}}, None, 404, "not_found_error", "no such model", {}),
    (422, {"error": {"message": "bad field"}}, None, 400, "invalid_request_error", "bad field", {}),
])
def test_upstream_errors(status: int, body: Any, retry_after: int | None, expected_status: int, error_type: str,
                         message: str, headers: dict[str, str]) -> None:
    answer = a.upstream_answer(status, body, req(messages=[{"role": "user", "content": "x" * 4_900}]),
                               retry_after=retry_after)
    assert (answer.status, answer.body["error"]["type"], answer.body["error"]["message"], answer.headers) == \
        (expected_status, error_type, message, headers)
    assert "sk-up" not in json.dumps(answer.body)


def test_overflow_message_is_what_claude_code_matches() -> None:
    import re

    pattern = re.compile(r"^prompt is too long: \d+ tokens > \d+ maximum$")  # from the Claude Code binary
    for request in (None, req(), load("claude_code_request.json")):
        assert pattern.match(a.too_long("Your input exceeds the context window", request))


# ---------------------------------------------------------------- count_tokens


def test_estimate_grows_with_the_request_and_never_fails() -> None:
    small = a.estimate_tokens(req())
    sample = a.estimate_tokens(load("claude_code_request.json"))
    assert 1 <= small < sample
    long_text = a.estimate_tokens(req(messages=[{"role": "user", "content": "word " * 4000}]))
    assert 4_800 <= long_text <= 5_200  # 20,000 ASCII characters ≈ 5,000 tokens
    cjk = a.estimate_tokens(req(messages=[{"role": "user", "content": "漢" * 1000}]))
    assert 700 <= cjk <= 800  # about a token a character
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 4_000_000}}
    assert a.estimate_tokens(req(messages=[{"role": "user", "content": [image]}])) < 1_700  # not 1,000,000
    for odd in (None, 5, "text", [], {}, {"messages": "x"}, {"messages": [None, 3, {"content": {"deep": [[[]]]}}]}):
        assert a.estimate_tokens(odd) >= 1
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert a.estimate_tokens({"messages": deep}) >= 1  # no recursion limit


# ---------------------------------------------------------------- robustness


def _mutations(value: Any, rng: Any, count: int) -> Iterator[Any]:
    """`count` copies of `value`, each with one node (anywhere in it) replaced by an odd value."""
    def paths(v: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        yield at
        children = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, child in children:
            yield from paths(child, (*at, k))

    every = list(paths(value))
    for _ in range(count):
        copy_ = copy.deepcopy(value)
        path = rng.choice(every[1:])
        node = copy_
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = rng.choice([None, 5, -1, True, "x", "", [], {}, [None], {"type": 5}])
        yield copy_


def test_odd_requests_are_bad_requests_never_crashes() -> None:
    import random

    rng = random.Random(16)
    for body in _mutations(load("claude_code_request.json"), rng, 1_500):
        try:
            a.to_responses(body, model="m")
        except a.BadRequest:
            pass
        assert a.estimate_tokens(body) >= 1


def test_odd_upstream_events_never_crash_and_the_stream_still_ends() -> None:
    import random

    rng = random.Random(16)
    for name in ("stream_reasoning_tool.json", "stream_parallel_tools.json", "stream_refusal.json"):
        for events in _mutations(load(name), rng, 400):
            t = a.StreamTranslator(model="m")
            out = [e for ev in events for e in t.feed(ev)] + t.finish()
            assert out[-1][0] in ("message_stop", "error")
            a.sse(out)
            last = events[-1]
            a.to_message(last.get("response") if isinstance(last, dict) else last, model="m")
