"""The Claude API over a Responses upstream: Anthropic Messages ↔ OpenAI Responses, as pure functions.

Requests go out with `to_responses`, answers come back with `to_message` (whole
answers) or `StreamTranslator` (SSE events, one at a time), errors with
`error_answer` / `from_openai` / `upstream_answer`. Billing never uses the
translated figures: it reads the upstream's own usage with `sse.responses_usage`.
No I/O, no clock: the routes do that. `../shared/research/gateway-wire.md` §2-3
lists what clients send and which translation bugs other gateways shipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from planctl.gateway.errors import ErrorAnswer
from planctl.gateway.sse import Tokens, responses_usage

# A thinking block's signature carries the reasoning item's encrypted content, so
# the next turn can give the upstream its own reasoning back. The prefix tells our
# signatures from Anthropic's (which no Responses upstream could use).
SIGNATURE_PREFIX = "planctl-rs1:"
MIN_OUTPUT_TOKENS = 16  # the Responses API refuses max_output_tokens below 16
IMAGE_TOKENS = 1_600  # what Anthropic charges for an image of about 1.15 megapixels, its largest size
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
DROPPED = {  # request fields with no Responses equivalent, and why
    "temperature": "reasoning models refuse sampling parameters",
    "top_p": "reasoning models refuse sampling parameters",
    "top_k": "the Responses API has no top_k",
    "stop_sequences": "the Responses API has no stop sequences",
}
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    529: "overloaded_error",
}


class BadRequest(ValueError):
    """The request is not a Messages request the gateway can translate (answered 400 invalid_request_error)."""


# ---------------------------------------------------------------- request: Anthropic → Responses


@dataclass(frozen=True)
class Translated:
    body: dict[str, Any]  # the Responses request
    notes: tuple[str, ...] = ()  # what was dropped or changed, for the log
    show_thinking: bool = True  # False when the client asked thinking.display = "omitted"


def to_responses(req: Any, *, model: str, session_id: str | None = None) -> Translated:
    """The Responses request for a Messages request; `model` is the upstream model it is billed as."""
    if not isinstance(req, dict):
        raise BadRequest("the body must be a JSON object")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: a non-empty list of messages is required")
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: a whole number ≥ 1 is required")
    notes: list[str] = []
    body: dict[str, Any] = {"model": model}
    instructions = _system_text(req.get("system"))
    if instructions:
        body["instructions"] = instructions
    body["input"] = [item for i, m in enumerate(messages) for item in _message_items(m, i, notes)]
    body["max_output_tokens"] = max(MIN_OUTPUT_TOKENS, max_tokens)
    body["stream"] = bool(req.get("stream"))
    body["store"] = False
    body["include"] = ["reasoning.encrypted_content"]
    if not isinstance(req.get("tools") or [], list):
        raise BadRequest("tools: a list of tools is required")
    tools = [t for t in (_tool(t, notes) for t in req.get("tools") or ()) if t is not None]
    if tools:
        body["tools"] = tools
    _tool_choice(req.get("tool_choice"), body)
    show_thinking = _reasoning(req, body)
    _text_format(req, body)
    _identity(req.get("metadata"), session_id, body)
    notes.extend(f"{name} dropped: {why}" for name, why in DROPPED.items() if req.get(name) is not None)
    return Translated(body, tuple(notes), show_thinking)


def _system_text(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n\n".join(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
    raise BadRequest("system: a string or a list of text blocks is required")


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise BadRequest(f"{where}.content: a string or a list of content blocks is required")


def _message_items(m: Any, i: int, notes: list[str]) -> list[dict[str, Any]]:
    """The input items for one message, in the order of its blocks."""
    where = f"messages.{i}"
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
        raise BadRequest(f"{where}: a message with role user, assistant or system is required")
    role, blocks = m["role"], _blocks(m.get("content"), where)
    items: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []  # the message being built; flushed before any other item

    def flush() -> None:
        if parts:
            items.append({"type": "message", "role": "developer" if role == "system" else role,
                          "content": parts.copy()})
            parts.clear()

    for j, b in enumerate(blocks):
        kind = b.get("type")
        if kind == "text":
            if isinstance(b.get("text"), str):
                parts.append({"type": "output_text" if role == "assistant" else "input_text", "text": b["text"]})
        elif kind in ("image", "document") and role != "assistant":
            part = _media(b, f"{where}.content.{j}", notes)
            if part:
                parts.append(part)
        elif kind == "tool_use" and role == "assistant":
            flush()
            items.append(_function_call(b, f"{where}.content.{j}"))
        elif kind == "tool_result" and role == "user":
            flush()
            items.extend(_function_output(b, f"{where}.content.{j}", notes))
        elif kind == "thinking" and role == "assistant":
            flush()
            reasoning = _reasoning_item(b)
            if reasoning:
                items.append(reasoning)
            else:
                notes.append(f"{where}.content.{j}: thinking block without a planctl signature dropped")
        else:
            notes.append(f"{where}.content.{j}: {kind} block dropped: no Responses equivalent")
    flush()
    return items


def _media(b: dict[str, Any], where: str, notes: list[str]) -> dict[str, Any] | None:
    src = b.get("source")
    if not isinstance(src, dict):
        raise BadRequest(f"{where}.source: required")
    kind = src.get("type")
    if b["type"] == "image":
        if kind == "base64":
            return {"type": "input_image", "detail": "auto",
                    "image_url": f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"}
        if kind == "url":
            return {"type": "input_image", "detail": "auto", "image_url": src.get("url", "")}
    else:
        name = b.get("title") or "document.pdf"
        if kind == "base64":
            return {"type": "input_file", "filename": name,
                    "file_data": f"data:{src.get('media_type', 'application/pdf')};base64,{src.get('data', '')}"}
        if kind == "url":
            return {"type": "input_file", "file_url": src.get("url", "")}
        if kind == "text":
            return {"type": "input_text", "text": str(src.get("data", ""))}
        if kind == "content":
            return {"type": "input_text", "text": _joined_text(src.get("content"))}
    notes.append(f"{where}: {b['type']} with a {kind} source dropped: the upstream cannot read it")
    return None


def _function_call(b: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
        raise BadRequest(f"{where}: tool_use needs an id and a name")
    arguments = orjson.dumps(b.get("input") if b.get("input") is not None else {}).decode()
    return {"type": "function_call", "call_id": b["id"], "name": b["name"], "arguments": arguments}


def _function_output(b: dict[str, Any], where: str, notes: list[str]) -> list[dict[str, Any]]:
    """A tool result: its text as the call's output; its images in a user message right after."""
    if not isinstance(b.get("tool_use_id"), str):
        raise BadRequest(f"{where}: tool_result needs a tool_use_id")
    content = b.get("content")
    blocks = _blocks(content, where) if content is not None else []
    items: list[dict[str, Any]] = [{"type": "function_call_output", "call_id": b["tool_use_id"],
                                    "output": _joined_text(blocks)}]
    media = [p for p in (_media(x, where, notes) for x in blocks if x.get("type") in ("image", "document")) if p]
    if media:
        label = {"type": "input_text", "text": f"(attached to the result of tool call {b['tool_use_id']})"}
        items.append({"type": "message", "role": "user", "content": [label, *media]})
    return items


def _joined_text(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        return ""
    return "\n".join(b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str))


def _reasoning_item(b: dict[str, Any]) -> dict[str, Any] | None:
    """The reasoning item a thinking block came from, or None when its signature is not ours."""
    signature = b.get("signature")
    if not isinstance(signature, str) or not signature.startswith(SIGNATURE_PREFIX):
        return None
    text = b.get("thinking")
    summary = [{"type": "summary_text", "text": text}] if isinstance(text, str) and text else []
    return {"type": "reasoning", "summary": summary, "encrypted_content": signature[len(SIGNATURE_PREFIX):]}


def _tool(t: Any, notes: list[str]) -> dict[str, Any] | None:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("type", ""), str):
        raise BadRequest("tools: every tool needs a name (and a type, if any, is text)")
    kind = t.get("type") or "custom"
    if kind == "custom":
        if t.get("defer_loading"):
            notes.append(f"tool {t['name']}: defer_loading dropped, the tool is always loaded")
        tool = {"type": "function", "name": t["name"], "parameters": t.get("input_schema") or {"type": "object"},
                "strict": False}  # omitted means strict upstream, which rewrites `required`
        if isinstance(t.get("description"), str):
            tool["description"] = t["description"]
        return tool
    if kind.startswith("web_search_"):
        tool = {"type": "web_search"}
        if t.get("allowed_domains"):
            tool["filters"] = {"allowed_domains": list(t["allowed_domains"])}
        loc = t.get("user_location")
        if isinstance(loc, dict):
            tool["user_location"] = {"type": "approximate", **{k: loc[k] for k in
                                     ("city", "region", "country", "timezone") if loc.get(k)}}
        if t.get("blocked_domains"):
            notes.append("web search: blocked_domains dropped, the upstream has no such filter")
        notes.append("web search: results come back as the answer's text, without search result blocks")
        return tool
    notes.append(f"tool {t['name']} ({kind}) dropped: a server tool the upstream does not have")
    return None


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "tool" and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "name": choice["name"]}
    elif kind in ("auto", "any", "none"):
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


def _reasoning(req: dict[str, Any], body: dict[str, Any]) -> bool:
    """Set `reasoning` from `thinking` / `output_config.effort`; whether thinking text is shown."""
    thinking = req.get("thinking") if isinstance(req.get("thinking"), dict) else {}
    config = req.get("output_config") if isinstance(req.get("output_config"), dict) else {}
    show = thinking.get("display") != "omitted"
    effort = EFFORTS.get(config["effort"]) if isinstance(config.get("effort"), str) else None
    if thinking.get("type") == "enabled" and effort is None:
        effort = effort_for_budget(thinking.get("budget_tokens"))
    elif thinking.get("type") == "adaptive" and effort is None:
        effort = "medium"
    if effort is not None:
        body["reasoning"] = {"effort": effort, "summary": "auto"} if show else {"effort": effort}
    return show


def effort_for_budget(budget: Any) -> str:
    """A thinking budget in tokens as a reasoning effort (Claude Code's default budget, 31,999, is high)."""
    if not isinstance(budget, int) or budget < 4_096:
        return "low"
    return "medium" if budget < 16_384 else "high"


def _text_format(req: dict[str, Any], body: dict[str, Any]) -> None:
    config = req.get("output_config") if isinstance(req.get("output_config"), dict) else {}
    fmt = config.get("format") or req.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        body["text"] = {"format": {"type": "json_schema", "name": "output", "schema": fmt["schema"], "strict": False}}


def _identity(metadata: Any, session_id: str | None, body: dict[str, Any]) -> None:
    """`user` (≤ 64 characters) and a prompt-cache key that stays the same for a whole session."""
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str) and user_id:
        body["user"] = user_id if len(user_id) <= 64 else hashlib.sha256(user_id.encode()).hexdigest()
        session_id = session_id or session_of(user_id)
    if session_id:
        body["prompt_cache_key"] = "claude-" + hashlib.sha256(session_id.encode()).hexdigest()[:32]


def session_of(user_id: str) -> str:
    """The session in Claude Code's `metadata.user_id`: a JSON object with `session_id`, or the older
    `user_…_account_…_session_<uuid>` text; else the whole id."""
    try:
        parsed = json.loads(user_id)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str) and parsed["session_id"]:
        return parsed["session_id"]
    found = re.search(r"_session_([0-9A-Za-z-]+)$", user_id)
    return found.group(1) if found else user_id


# ---------------------------------------------------------------- answer: Responses → Anthropic


def message_id(response_id: Any) -> str:
    text = response_id if isinstance(response_id, str) and response_id else "unknown"
    return "msg_" + text.removeprefix("resp_")


def anthropic_usage(usage: Any) -> dict[str, int]:
    """A Responses usage object as Anthropic reports usage: input excludes cache reads (counted once,
    as `cache_read_input_tokens`), and there are no cache writes. Billing does not read this."""
    t = responses_usage(usage) or Tokens()
    cached = min(t.cached, t.input)
    return {"input_tokens": t.input - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "output_tokens": t.output}


def stop_reason(status: Any, incomplete_reason: Any, *, called: bool, refused: bool) -> str:
    """Cut short → max_tokens (or refusal for a content filter); else a function call → tool_use; …"""
    if status == "incomplete":
        return "refusal" if incomplete_reason == "content_filter" else "max_tokens"
    if called:
        return "tool_use"
    return "refusal" if refused else "end_turn"


def _incomplete_reason(response: dict[str, Any]) -> Any:
    details = response.get("incomplete_details")
    return details.get("reason") if isinstance(details, dict) else None


def thinking_text(item: dict[str, Any]) -> str:
    summary = item.get("summary") if isinstance(item.get("summary"), list) else []
    return "\n\n".join(s["text"] for s in summary if isinstance(s, dict) and isinstance(s.get("text"), str))


def signature(item: dict[str, Any]) -> str:
    encrypted = item.get("encrypted_content")
    return SIGNATURE_PREFIX + encrypted if isinstance(encrypted, str) and encrypted else ""


def tool_input(arguments: Any) -> Any:
    """A function call's JSON arguments as a tool_use input (an object; {} when there is none)."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}  # kept for the client to see, never silently emptied
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _part_text(part: dict[str, Any]) -> str | None:
    if part.get("type") == "output_text":
        return part.get("text") if isinstance(part.get("text"), str) else ""
    if part.get("type") == "refusal":
        return part.get("refusal") if isinstance(part.get("refusal"), str) else ""
    return None


def to_message(response: Any, *, model: str, show_thinking: bool = True) -> dict[str, Any]:
    """The Messages answer for a whole (non-stream) Responses answer; `model` is the name the client asked for."""
    response = response if isinstance(response, dict) else {}
    content: list[dict[str, Any]] = []
    called = refused = False
    for item in _list(response.get("output")):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "reasoning":
            content.append({"type": "thinking", "thinking": thinking_text(item) if show_thinking else "",
                            "signature": signature(item)})
        elif kind == "message":
            for part in _list(item.get("content")):
                text = _part_text(part) if isinstance(part, dict) else None
                if text is not None:
                    refused = refused or part["type"] == "refusal"
                    content.append({"type": "text", "text": text})
        elif kind == "function_call":
            called = True
            content.append({"type": "tool_use", "id": item.get("call_id"), "name": item.get("name"),
                            "input": tool_input(item.get("arguments"))})
    return {"id": message_id(response.get("id")), "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": stop_reason(response.get("status"), _incomplete_reason(response),
                                       called=called, refused=refused),
            "stop_sequence": None, "usage": anthropic_usage(response.get("usage"))}


# ---------------------------------------------------------------- stream: Responses events → Anthropic events

Event = tuple[str, dict[str, Any]]  # (event name, data)


def sse(events: list[Event]) -> bytes:
    """Anthropic server-sent events as bytes."""
    return b"".join([b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n" for name, data in events])


@dataclass(slots=True)
class _Block:
    key: tuple[int, int]  # (output index, content index or -1)
    index: int
    kind: str  # text, thinking, tool_use
    sent: int = 0  # characters of text, thinking or arguments sent so far (deltas are prefixes of the whole)
    summary_index: int | None = None
    closed: bool = False


# The deltas that make up most of a stream, sent straight on when their block is the open one.
_FAST = {"response.output_text.delta": ("text", "text_delta", "text"),
         "response.function_call_arguments.delta": ("tool_use", "input_json_delta", "partial_json")}


class StreamTranslator:
    """Fed parsed Responses SSE events in order, yields Anthropic SSE events.

    Every stream ends with `message_stop` or `error`: call `finish()` when the
    upstream stream ends, however it ended. Items are taken from
    `response.output_item.done` when no delta carried them (arguments only in
    `function_call_arguments.done`, or no deltas at all), and blocks never
    interleave: opening one closes the one before.
    """

    def __init__(self, *, model: str, show_thinking: bool = True, request: Any = None) -> None:
        self.model = model  # the name the client asked for
        self.show_thinking = show_thinking
        self.request = request  # the client's request: its size goes into a "prompt is too long" message
        self.response: dict[str, Any] | None = None  # the terminal response object, once seen
        self.done = False
        self._started = self._called = self._refused = False
        self._blocks: dict[tuple[int, int], _Block] = {}
        self._open: _Block | None = None

    def feed(self, event: dict[str, Any]) -> list[Event]:
        kind = event.get("type") if isinstance(event, dict) else None
        if self.done or not isinstance(kind, str):
            return []
        block, fast = self._open, _FAST.get(kind)
        if fast and block is not None and block.kind == fast[0] and \
                block.key == (event.get("output_index"), event.get("content_index", -1)):
            text = event.get("delta")
            if not isinstance(text, str) or not text:
                return []
            block.sent += len(text)
            return [_delta(block.index, {"type": fast[1], fast[2]: text})]
        out: list[Event] = []
        if not self._started and kind not in ("error", "response.failed"):
            self._start(event.get("response"), out)
        handler = self._HANDLERS.get(kind)
        if handler is not None:
            handler(self, event, out)
        return out

    def finish(self) -> list[Event]:
        """The upstream stream ended: if no terminal event came, the client gets an error, never silence."""
        return self.fail("api_error", "the upstream stream ended before the answer was complete")

    def fail(self, error_type: str, message: str) -> list[Event]:
        if self.done:
            return []
        self.done = True
        return [("error", error_body(error_type, message))]

    # -- handlers: each appends the Anthropic events for one Responses event

    def _start(self, response: Any, out: list[Event]) -> None:
        self._started = True
        rid = response.get("id") if isinstance(response, dict) else None
        out.append(("message_start", {"type": "message_start", "message": {
            "id": message_id(rid), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": anthropic_usage(None)}}))

    def _item_added(self, ev: dict[str, Any], out: list[Event]) -> None:
        item = ev.get("item") if isinstance(ev.get("item"), dict) else {}
        if item.get("type") in ("reasoning", "function_call"):
            self._block(ev.get("output_index"), -1, item, out)

    def _part_added(self, ev: dict[str, Any], out: list[Event]) -> None:
        part = ev.get("part") if isinstance(ev.get("part"), dict) else {}
        if _part_text(part) is not None:
            self._block(ev.get("output_index"), ev.get("content_index"), {"type": "text"}, out)

    def _text_delta(self, ev: dict[str, Any], out: list[Event]) -> None:
        if ev.get("type") == "response.refusal.delta":
            self._refused = True
        block = self._block(ev.get("output_index"), ev.get("content_index"), {"type": "text"}, out)
        self._send(block, str(ev.get("delta") or ""), out)

    def _thinking_delta(self, ev: dict[str, Any], out: list[Event]) -> None:
        block = self._blocks.get((_int(ev.get("output_index")), -1))
        if block is None or block.closed or not self.show_thinking:
            return
        part = ev.get("summary_index")
        text = str(ev.get("delta") or "")
        if block.summary_index is not None and part != block.summary_index:
            text = "\n\n" + text  # summary parts are joined as to_message joins them
        block.summary_index = part
        self._send(block, text, out)

    def _arguments_delta(self, ev: dict[str, Any], out: list[Event]) -> None:
        block = self._blocks.get((_int(ev.get("output_index")), -1))
        if block is not None and not block.closed:
            self._send(block, str(ev.get("delta") or ""), out)

    def _arguments_done(self, ev: dict[str, Any], out: list[Event]) -> None:
        block = self._blocks.get((_int(ev.get("output_index")), -1))
        if block is not None:
            self._catch_up(block, ev.get("arguments"), out)

    def _item_done(self, ev: dict[str, Any], out: list[Event]) -> None:
        """The authoritative item: send what no delta carried, then close its blocks."""
        item = ev.get("item") if isinstance(ev.get("item"), dict) else {}
        index, kind = ev.get("output_index"), item.get("type")
        if kind == "message":
            for c, part in enumerate(_list(item.get("content"))):
                text = _part_text(part) if isinstance(part, dict) else None
                if text is not None:
                    self._refused = self._refused or part["type"] == "refusal"
                    block = self._block(index, c, {"type": "text"}, out)
                    self._catch_up(block, text, out)
                    self._close(block, out)
        elif kind in ("reasoning", "function_call"):
            block = self._block(index, -1, item, out)
            if kind == "reasoning":
                self._catch_up(block, thinking_text(item) if self.show_thinking else "", out)
                if signature(item) and not block.closed:
                    out.append(_delta(block.index, {"type": "signature_delta", "signature": signature(item)}))
            else:
                self._catch_up(block, item.get("arguments"), out)
            self._close(block, out)

    def _completed(self, ev: dict[str, Any], out: list[Event]) -> None:
        response = ev.get("response") if isinstance(ev.get("response"), dict) else {}
        self.response, self.done = response, True
        if self._open is not None:
            self._close(self._open, out)
        status = response.get("status") or ("incomplete" if ev["type"] == "response.incomplete" else "completed")
        reason = stop_reason(status, _incomplete_reason(response), called=self._called, refused=self._refused)
        out.append(("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": reason, "stop_sequence": None},
                                      "usage": anthropic_usage(response.get("usage"))}))
        out.append(("message_stop", {"type": "message_stop"}))

    def _failed(self, ev: dict[str, Any], out: list[Event]) -> None:
        response = ev.get("response") if isinstance(ev.get("response"), dict) else None
        if response is not None:
            self.response = response
        error_type, message = stream_error(response.get("error") if response is not None else ev, self.request)
        out.extend(self.fail(error_type, message))

    _HANDLERS = {
        "response.output_item.added": _item_added,
        "response.content_part.added": _part_added,
        "response.output_text.delta": _text_delta,
        "response.refusal.delta": _text_delta,
        "response.reasoning_summary_text.delta": _thinking_delta,
        "response.function_call_arguments.delta": _arguments_delta,
        "response.function_call_arguments.done": _arguments_done,
        "response.output_item.done": _item_done,
        "response.completed": _completed,
        "response.incomplete": _completed,
        "response.failed": _failed,
        "error": _failed,
    }
    HANDLED = frozenset(_HANDLERS)  # the events worth parsing

    # -- blocks

    def _block(self, output_index: Any, content_index: Any, item: dict[str, Any], out: list[Event]) -> _Block:
        key = (_int(output_index), _int(content_index))
        block = self._blocks.get(key)
        if block is not None:
            return block
        if self._open is not None:
            self._close(self._open, out)
        kind = item.get("type")
        if kind == "reasoning":
            start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "function_call":
            self._called = True
            start = {"type": "tool_use", "id": item.get("call_id") or item.get("id"), "name": item.get("name"),
                     "input": {}}
        else:
            start = {"type": "text", "text": ""}
        block = self._blocks[key] = self._open = _Block(key, len(self._blocks), start["type"])
        out.append(("content_block_start", {"type": "content_block_start", "index": block.index,
                                            "content_block": start}))
        return block

    def _send(self, block: _Block, text: str, out: list[Event]) -> None:
        if not text or block.closed:
            return
        block.sent += len(text)
        delta = {"text": {"type": "text_delta", "text": text},
                 "thinking": {"type": "thinking_delta", "thinking": text},
                 "tool_use": {"type": "input_json_delta", "partial_json": text}}[block.kind]
        out.append(_delta(block.index, delta))

    def _catch_up(self, block: _Block, final: Any, out: list[Event]) -> None:
        """Send the part of the final text that no delta carried (all of it when none did)."""
        if isinstance(final, str) and len(final) > block.sent:
            self._send(block, final[block.sent:], out)

    def _close(self, block: _Block, out: list[Event]) -> None:
        if block.closed:
            return
        block.closed = True
        if self._open is block:
            self._open = None
        out.append(("content_block_stop", {"type": "content_block_stop", "index": block.index}))


def _delta(index: int, delta: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


# ---------------------------------------------------------------- errors in the Anthropic format


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_answer(status: int, message: str, *, error_type: str | None = None, retry_after: int | None = None,
                 retry: bool = True) -> ErrorAnswer:
    """An Anthropic error; `retry=False` adds `x-should-retry: false` (Claude Code then fails at once
    instead of retrying for about three minutes)."""
    headers = {} if retry else {"x-should-retry": "false"}
    if retry_after is not None:
        headers["retry-after"] = str(max(0, retry_after))
    kind = error_type or ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return ErrorAnswer(status, error_body(kind, message), headers)


def refusal_answer(status: int, message: str, *, retry_after: int | None = None) -> ErrorAnswer:
    """planctl refused the request (401 bad key, 403 not in plan, 429 quota): retrying cannot help."""
    return error_answer(status, message, retry_after=retry_after if status == 429 else None, retry=False)


# The codes of the gateway's own errors (errors.py); any other non-refusal is an upstream's own error.
GATEWAY_CODES = frozenset({"invalid_request", "no_upstream", "upstream_auth_failed", "upstream_unreachable",
                           "upstreams_resting", "too_many_concurrent_requests"})


def from_openai(answer: ErrorAnswer, request: Any = None) -> ErrorAnswer:
    """An answer in the OpenAI format (errors.py) in the Anthropic one: a refusal by its planctl reason
    code, the gateway's own errors by status, an upstream's own error (errors.from_upstream, after
    failover) as `upstream_answer` words it for `request`."""
    error = answer.body.get("error") if isinstance(answer.body.get("error"), dict) else {}
    message = str(error.get("message") or f"HTTP {answer.status}")
    wait = answer.headers.get("Retry-After")
    retry_after = int(wait) if wait and wait.isdigit() else None
    if error.get("reason"):
        return refusal_answer(answer.status, message, retry_after=retry_after)
    if error.get("code") in GATEWAY_CODES:
        return error_answer(answer.status, message, retry_after=retry_after)
    return upstream_answer(answer.status, answer.body, request, retry_after=retry_after)


def upstream_answer(status: int, body: Any, request: Any, *, retry_after: int | None = None) -> ErrorAnswer:
    """The client's answer for an upstream's error answer (`body` parsed JSON, or anything) to `request`."""
    error = body.get("error") if isinstance(body, dict) else None
    status, kind, message = _upstream_error(status, error if isinstance(error, dict) else {}, request)
    return error_answer(status, message, error_type=kind, retry_after=retry_after if status == 429 else None)


def stream_error(error: Any, request: Any) -> tuple[str, str]:
    """(type, message) of the `event: error` for an upstream failure inside a stream (`response.failed`'s
    error, or an `error` event, whose error may be nested)."""
    error = error if isinstance(error, dict) else {}
    nested = error.get("error")
    _status, kind, message = _upstream_error(None, nested if isinstance(nested, dict) else error, request)
    return kind, message


def _upstream_error(status: int | None, error: dict[str, Any], request: Any) -> tuple[int, str, str]:
    """(status, type, message) for the client, from an upstream's status (None inside a stream) and error."""
    code = error.get("code") or error.get("type")
    message = str(error.get("message") or (f"upstream status {status}" if status else "the upstream failed"))
    if code == "context_length_exceeded":
        return 400, "invalid_request_error", too_long(message, request)
    if status in (401, 403) or code == "insufficient_quota":
        return 502, "api_error", "the upstream refused the gateway's own credentials or quota: the operator must fix it"
    if status == 429 or code in ("rate_limit_exceeded", "rate_limit_error"):
        return 429, "rate_limit_error", f"upstream rate limit: {message}"
    if status in (502, 503, 504) or code in ("server_is_overloaded", "slow_down", "overloaded_error"):
        return 529, "overloaded_error", f"upstream overloaded: {message}"
    if status is None or status >= 500:
        return 500, "api_error", f"upstream error: {message}"
    status = status if status in ERROR_TYPES else 400
    return status, ERROR_TYPES[status], message


def too_long(upstream_message: str, request: Any) -> str:
    """Claude Code compacts the conversation when it reads exactly `prompt is too long: N tokens > M maximum`.

    The figures come from the upstream's message when it has them (Chat-style "maximum context length is M
    tokens … resulted in N tokens"); the Responses API gives none, so N is the request's estimate
    (`estimate_tokens`) and M just below it."""
    limit = re.search(r"maximum context length is (\d+)", upstream_message)
    used = re.search(r"(?:resulted in|requested(?: about)?) (\d+) tokens", upstream_message)
    n = int(used.group(1)) if used else estimate_tokens(request)
    m = int(limit.group(1)) if limit else n - 1
    return f"prompt is too long: {max(n, m + 1)} tokens > {m} maximum"


# ---------------------------------------------------------------- count_tokens


_NOT_COUNTED = frozenset({"type", "id", "tool_use_id", "signature", "cache_control", "media_type", "model",
                          "metadata", "role", "stream", "max_tokens", "thinking", "output_config", "tool_choice",
                          "context_management", "temperature", "top_p", "top_k", "citations"})


def estimate_tokens(req: Any) -> int:
    """A local estimate of a request's input tokens, for count_tokens and the context-overflow message.

    About 4 UTF-8 bytes a token over the text, keys, tool schemas and tool inputs (CJK, 3 bytes a
    character, comes out near a token a character); 1,600 an image; a base64 document as its decoded
    size over 4.5. Never raises: any JSON value gives a number ≥ 1."""
    size, stack = 0, [req]  # size in bytes of text, about 4 a token
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            size += len(value.encode("utf-8", "replace"))
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            source = value.get("source") if isinstance(value.get("source"), dict) else {}
            if value.get("type") == "image":
                size += IMAGE_TOKENS * 4
            elif value.get("type") == "document" and source.get("type") == "base64":
                size += len(str(source.get("data", ""))) * 2 // 3  # decoded bytes (¾ of it) ÷ 4.5, ×4
            else:
                for key, item in value.items():
                    if key not in _NOT_COUNTED:
                        size += len(key)
                        stack.append(item)
    messages = req.get("messages") if isinstance(req, dict) else None
    return max(1, math.ceil(size / 4) + 3 * (len(messages) if isinstance(messages, list) else 0))
