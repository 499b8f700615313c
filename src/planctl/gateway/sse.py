"""Server-sent events as they pass through: whole events out, usage read on the way (pure).

The gateway forwards whole events only, so that when an upstream breaks it can still end the
client's stream with a well-formed `response.failed` (a half event followed by ours would be
garbage). Only the events that carry usage are parsed as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

@dataclass
class Tokens:
    input: int = 0
    cached: int = 0
    output: int = 0


def responses_usage(usage: Any) -> Tokens | None:
    """Responses API usage (`input_tokens` includes `input_tokens_details.cached_tokens`;
    `output_tokens` includes the reasoning tokens)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    return Tokens(_int(usage.get("input_tokens")), _int(details.get("cached_tokens")), _int(usage.get("output_tokens")))


def chat_usage(usage: Any) -> Tokens | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    return Tokens(_int(usage.get("prompt_tokens")), _int(details.get("cached_tokens")),
                  _int(usage.get("completion_tokens")))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Events:
    """Cuts a byte stream into whole events (`feed` returns the bytes of the events completed)."""

    def __init__(self) -> None:
        self.tail = b""
        self.count = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self.tail + chunk if self.tail else chunk
        if b"\r\n" in data:
            data = data.replace(b"\r\n", b"\n")
        out = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            out.append(data[start:end + 2])
            start = end + 2
        self.tail = data[start:]
        self.count += len(out)
        return out


def data_of(event: bytes) -> bytes:
    """The `data:` payload of one event (lines joined)."""
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


class ResponsesStream:
    """Reads the terminal event of a Responses stream: its usage and whether one arrived."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.usage: Tokens | None = None
        self.ended: str | None = None  # completed | incomplete | failed
        self.error: str | None = None
        self.events = 0

    def relay(self, event: bytes) -> bytes:
        """Every event goes on to the client unchanged."""
        self.events += 1
        if b"response.completed" in event or b"response.incomplete" in event or b"response.failed" in event:
            self._terminal(event)
        return event

    def fail(self, message: str) -> bytes:
        return responses_failed(self.events, message, self.request_id)

    def _terminal(self, event: bytes) -> None:
        try:
            payload = orjson.loads(data_of(event))
        except orjson.JSONDecodeError:
            return
        kind = payload.get("type", "") if isinstance(payload, dict) else ""
        if kind not in ("response.completed", "response.incomplete", "response.failed"):
            return
        self.ended = kind.split(".", 1)[1]
        response = payload.get("response") or {}
        self.usage = responses_usage(response.get("usage"))
        if kind == "response.failed":
            err = response.get("error") or {}
            self.error = str(err.get("message") or err.get("code") or "the upstream reported a failure")[:2000]


class ChatStream:
    """Reads the usage chunk of a Chat Completions stream (asked for with
    `stream_options.include_usage`), and hides it when the client did not ask for it."""

    def __init__(self, client_wants_usage: bool) -> None:
        self.show_usage = client_wants_usage
        self.usage: Tokens | None = None
        self.ended: str | None = None
        self.error: str | None = None

    def relay(self, event: bytes) -> bytes:
        """The event, unless it is the usage chunk the client did not ask for."""
        return event if self._shown(event) else b""

    def fail(self, message: str) -> bytes:
        return chat_failed(message)

    def _shown(self, event: bytes) -> bool:
        if b"[DONE]" in event and data_of(event).strip() == b"[DONE]":
            self.ended = "done"
            return True
        if b'"usage"' in event and b'"usage":null' not in event.replace(b" ", b""):
            try:
                payload = orjson.loads(data_of(event))
            except orjson.JSONDecodeError:
                return True
            usage = chat_usage(payload.get("usage")) if isinstance(payload, dict) else None
            if usage is not None:
                self.usage = usage
                return self.show_usage or bool(payload.get("choices"))
        if b'"error"' in event:
            try:
                payload = orjson.loads(data_of(event))
            except orjson.JSONDecodeError:
                return True
            if isinstance(payload, dict) and payload.get("error"):
                self.error = str(payload["error"])[:2000]
        return True


def responses_failed(sequence: int, message: str, request_id: str) -> bytes:
    """The event that ends a Responses stream the upstream broke."""
    payload = {"type": "response.failed", "sequence_number": sequence, "response": {
        "id": f"resp_{request_id}", "object": "response", "status": "failed", "output": [], "usage": None,
        "error": {"code": "server_error", "message": message}}}
    return b"event: response.failed\ndata: " + orjson.dumps(payload) + b"\n\n"


def chat_failed(message: str) -> bytes:
    """The end of a Chat Completions stream the upstream broke: an error chunk (the OpenAI SDKs
    raise it) and `[DONE]`."""
    payload = {"error": {"message": message, "type": "server_error", "code": "upstream_stream_broken"}}
    return b"data: " + orjson.dumps(payload) + b"\n\ndata: [DONE]\n\n"
