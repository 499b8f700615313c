"""The Claude API routes of `planctl serve`, for Claude Code and the Anthropic SDKs.

`POST /v1/messages` (stream and not; `?beta=true` and the `anthropic-*` headers are accepted) is
translated to the Responses API for the upstream and back (anthropic.py), and otherwise goes the
way of `/v1/responses` (app.forward): admitted with API type `claude` under the model's alias
(`claude*` → gpt-5.4 in the sample catalog), forwarded, relayed, settled from the upstream's own
usage. `POST /v1/messages/count_tokens` answers a local estimate: not metered, never sent to an
upstream (so it cannot mark one unhealthy). `HEAD`/`GET /api/hello` is Claude Code's warm-up.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from planctl.gateway import anthropic, errors
from planctl.gateway.app import forward, json_response, read_body
from planctl.gateway.core import Call, new_call, secret_of
from planctl.gateway.errors import ErrorAnswer
from planctl.gateway.sse import ResponsesStream, data_of, responses_usage

log = logging.getLogger("planctl.gateway")


class ClaudeStream(ResponsesStream):
    """Reads the upstream's Responses stream as /v1/responses does (usage, end, error) and writes
    Anthropic events to the client instead of the upstream's. Events the translator has no use
    for are dropped by their name, unparsed (most of a stream's cost is parsing)."""

    def __init__(self, request_id: str, translator: anthropic.StreamTranslator) -> None:
        super().__init__(request_id)
        self.translator = translator

    def relay(self, event: bytes) -> bytes:
        name = _name(event)
        if name is not None and name not in anthropic.StreamTranslator.HANDLED:
            return b""
        if name is None or name in TERMINAL:
            super().relay(event)
        try:
            payload = orjson.loads(_data(event))
        except orjson.JSONDecodeError:
            return b""
        return anthropic.sse(self.translator.feed(payload)) if isinstance(payload, dict) else b""

    def fail(self, message: str) -> bytes:
        return anthropic.sse(self.translator.fail("api_error", message))


TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _name(event: bytes) -> str | None:
    """The `event:` name of an event that starts with one (upstreams send it first), else None."""
    if not event.startswith(b"event:"):
        return None
    return event[6:event.find(b"\n")].strip().decode("utf-8", "replace")


def _data(event: bytes) -> bytes:
    """The `data:` payload: the one line that nearly every event has, else sse.data_of's join."""
    start = event.find(b"data:")
    end = event.find(b"\n", start)
    if start < 0 or end < 0 or event.find(b"data:", end) >= 0:
        return data_of(event)
    return event[start + 5:end].strip()


def anthropic_error(answer: ErrorAnswer, call: Call) -> Response:
    return json_response(answer.body, answer.status, call.request_id, answer.headers)


async def messages(request: Request) -> Any:
    raw = await read_body(request)
    call = new_call(request.headers, "claude", False, len(raw))
    try:
        req = orjson.loads(raw)
        translated = anthropic.to_responses(req, model="", session_id=call.session_id)
    except orjson.JSONDecodeError:
        return anthropic_error(anthropic.error_answer(400, "the body must be JSON"), call)
    except anthropic.BadRequest as exc:
        return anthropic_error(anthropic.error_answer(400, str(exc)), call)
    call.stream = translated.body["stream"]
    if translated.notes:
        log.debug("%s: %s", call.request_id, "; ".join(translated.notes))
    model, show = req.get("model"), translated.show_thinking

    def whole(content: bytes) -> bytes:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        return orjson.dumps(anthropic.to_message(body, model=model, show_thinking=show))

    return await forward(
        request, call, req, "/responses", upstream_api="responses", read_usage=responses_usage,
        upstream_body=lambda _body: translated.body, answer_body=whole,
        reader=lambda c: ClaudeStream(c.request_id, anthropic.StreamTranslator(model=model, show_thinking=show,
                                                                               request=req)),
        render=lambda answer, c: anthropic_error(anthropic.from_openai(answer, req), c))


async def count_tokens(request: Request) -> Response:
    gw = request.app.state.gateway
    raw = await read_body(request)
    call = new_call(request.headers, "claude", False, len(raw))
    secret = secret_of(request.headers)
    if secret is None or await gw.call(gw.meter.models, secret) is None:
        reason, why = ("key_unknown", "no key has this secret") if secret else ("no_key", "no API key was sent")
        refusal = errors.refusal(reason, why, None, datetime.now(timezone.utc))
        return anthropic_error(anthropic.from_openai(refusal), call)
    try:
        req = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return anthropic_error(anthropic.error_answer(400, "the body must be JSON"), call)
    return json_response({"input_tokens": anthropic.estimate_tokens(req)}, request_id=call.request_id)


async def hello(request: Request) -> Response:
    return Response(status_code=200)


ROUTES = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    Route("/api/hello", hello, methods=["GET", "HEAD"]),
]
