"""The OpenAI routes of `planctl serve` (Starlette): /v1/responses, /v1/chat/completions,
/v1/models and /healthz; the app also serves the Claude API routes of claude.py. Every answer
carries `x-request-id` (the usage record's request id).

A route parses its body, then hands it to core.py: admit, forward (only `model` is rewritten, to
the billed model; Chat streams also ask for usage), relay or read the answer, settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from planctl.gateway import anthropic, errors
from planctl.gateway.core import Call, Gateway, Settings, new_call, secret_of
from planctl.gateway.errors import ErrorAnswer
from planctl.gateway.sse import ChatStream, ResponsesStream, Tokens, chat_usage, responses_usage
from planctl.metering import Meter

log = logging.getLogger("planctl.gateway")


def json_response(body: Any, status: int = 200, request_id: str | None = None,
                  headers: dict[str, str] | None = None) -> Response:
    out = dict(headers or {})
    if request_id:
        out["x-request-id"] = request_id
    return Response(orjson.dumps(body), status, out, media_type="application/json")


def openai_error(answer: ErrorAnswer, call: Call) -> Response:
    return json_response(answer.body, answer.status, call.request_id, answer.headers)


async def read_body(request: Request) -> bytes:
    """The request's body, refused with 413 past the size limit (by its Content-Length before a
    byte is read) and 408 when the client is too slow sending it; `_http_error` words both in the
    route's error format."""
    s: Settings = request.app.state.gateway.settings
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > s.max_body:
        raise HTTPException(413, f"the body is over the gateway's limit of {s.max_body} bytes")
    chunks: list[bytes] = []

    async def read() -> None:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > s.max_body:
                raise HTTPException(413, f"the body is over the gateway's limit of {s.max_body} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), s.body_timeout)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the body did not arrive within {s.body_timeout:g} s") from None
    return b"".join(chunks)


async def forward(request: Request, call: Call, body: dict[str, Any], path: str, *,
                  reader: Callable[[Call], Any], read_usage: Callable[[Any], Tokens | None],
                  render: Callable[[ErrorAnswer, Call], Response] = openai_error,
                  upstream_body: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                  upstream_api: str | None = None,
                  answer_body: Callable[[bytes], bytes] | None = None) -> Any:
    """Admit, forward and settle one request whose body is already parsed.

    `reader` makes the stream reader (it may translate events), `read_usage` reads the usage of a
    whole answer, `render` words the API's error answers, `upstream_body` makes what is sent
    upstream from the body (default: the body itself; `model` is then set to the billed model),
    `upstream_api` is the API type the upstream must serve (default: the request's),
    `answer_body` turns a successful whole answer into the client's (default: unchanged)."""
    gw: Gateway = request.app.state.gateway
    refusal = await gw.admit(call, secret_of(request.headers), body.get("model"), body)
    if refusal is not None:
        return render(refusal, call)
    try:
        return await _forward(gw, call, body, path, reader=reader, read_usage=read_usage, render=render,
                              upstream_body=upstream_body, upstream_api=upstream_api, answer_body=answer_body)
    except BaseException:  # nothing reached the upstream's settlement: give the hold back now
        await asyncio.shield(gw.release(call, "the gateway failed"))
        raise


async def _forward(gw: Gateway, call: Call, body: dict[str, Any], path: str, *, reader: Callable[[Call], Any],
                   read_usage: Callable[[Any], Tokens | None], render: Callable[[ErrorAnswer, Call], Response],
                   upstream_body: Callable[[dict[str, Any]], dict[str, Any]] | None, upstream_api: str | None,
                   answer_body: Callable[[bytes], bytes] | None) -> Any:
    adm = call.admission
    assert adm is not None
    out = upstream_body(body) if upstream_body else body
    out["model"] = adm.billed_model
    key = out.get("prompt_cache_key")
    call.affinity = key if isinstance(key, str) and key else call.session_id
    opened = await gw.open(call, path, orjson.dumps(out), upstream_api=upstream_api)
    if isinstance(opened, ErrorAnswer):
        return render(opened, call)
    _route, response = opened
    if call.stream and response.status < 400:
        return gw.relay(call, response, reader(call))
    content = await gw.settle_answer(call, response, read_usage)
    if response.status >= 400:  # the upstream's own error (after failover), worded by the route
        return render(errors.from_upstream(response.status, content, response.headers.get("retry-after")), call)
    if answer_body is not None:
        content = answer_body(content)
    return Response(content, response.status, {"x-request-id": call.request_id},
                    media_type=response.headers.get("content-type", "application/json"))


async def parse(request: Request, api: str) -> tuple[Call, dict[str, Any]] | Response:
    raw = await read_body(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    call = new_call(request.headers, api, False, len(raw))
    if not isinstance(body, dict):
        return openai_error(errors.bad_request("the body must be a JSON object"), call)
    call.stream = body.get("stream") is True
    return call, body


async def responses(request: Request) -> Any:
    parsed = await parse(request, "responses")
    if isinstance(parsed, Response):
        return parsed
    call, body = parsed
    return await forward(request, call, body, "/responses", reader=lambda c: ResponsesStream(c.request_id),
                         read_usage=responses_usage)


async def chat_completions(request: Request) -> Any:
    parsed = await parse(request, "chat")
    if isinstance(parsed, Response):
        return parsed
    call, body = parsed
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True

    def with_usage(b: dict[str, Any]) -> dict[str, Any]:
        if call.stream and not wants_usage:
            b = {**b, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}
        return b

    return await forward(request, call, body, "/chat/completions", reader=lambda c: ChatStream(wants_usage),
                         read_usage=chat_usage, upstream_body=with_usage)


async def models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = new_call(request.headers, "responses", False, 0)
    secret = secret_of(request.headers)
    found = await gw.call(gw.meter.models, secret) if secret else None
    if found is None:
        reason = "key_unknown" if secret else "no_key"
        return openai_error(errors.refusal(reason, "no key has this secret" if secret else "no API key was sent",
                                           None, _now()), call)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "planctl",
             **({"billed_as": billed} if billed != name else {})} for name, billed in found]
    return json_response({"object": "list", "data": data}, request_id=call.request_id)


async def healthz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    call = new_call(request.headers, "responses", False, 0)
    try:
        await gw.call(_ping, gw.meter.db)
        database = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        database = f"error: {type(exc).__name__}"
    now = time.monotonic()
    ups = [{"name": r.name, "healthy": r.healthy and r.health.state != "disabled", **r.health.view(now)}
           for r in gw.routes]
    ok = database == "ok" and any(u["healthy"] for u in ups)
    return json_response({"status": "ok" if ok else "degraded", "database": database, "upstreams": ups},
                         200 if ok else 503, call.request_id)


def _ping(db: Any) -> None:
    with db.tx(write=False) as tx:
        tx.one("SELECT 1")


async def _http_error(request: Request, exc: Exception) -> Response:
    call = new_call(request.headers, "responses", False, 0)
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    kind = "invalid_request_error" if status < 500 else "server_error"
    text = f"{request.method} {request.url.path}: " + ("not found" if status == 404 else
                                                     "method not allowed" if status == 405 else
                                                     exc.detail if isinstance(exc, HTTPException) and status < 500
                                                     else "internal error")
    if status >= 500:
        log.error("%s failed: %s", request.url.path, type(exc).__name__)
    if request.url.path.startswith("/v1/messages"):  # the Claude API's own error format
        claude = anthropic.error_answer(status, text)
        return json_response(claude.body, status, call.request_id, claude.headers)
    return openai_error(errors.error(status, text, kind, None), call)


def _now() -> Any:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


ROUTES = [
    Route("/v1/responses", responses, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]


class Direct:
    """The requests that carry traffic (POST to an API route) go straight to their endpoint; the
    rest (GET routes, 404s, 405s, the lifespan) to the Starlette app. Starlette's error
    middleware, router and request wrapper cost about 0.1 ms a request, and they wrap every
    message of a stream; here an endpoint's error is answered by the same handler."""

    def __init__(self, app: Starlette, endpoints: dict[str, Callable[[Request], Any]]) -> None:
        self.app, self.endpoints = app, endpoints

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - answered in the route's error format, as Starlette would
            response = await _http_error(request, exc)
        await response(scope, receive, send)


def create_app(gateway: Gateway | None = None, routes: list[Route] | None = None) -> Any:
    """The ASGI app (uvicorn calls it as a factory in each worker: the database and settings come
    from the environment `planctl serve` sets)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = gateway or Gateway(Meter.open(os.environ.get("PLANCTL_GATEWAY_DB")), settings_from_env())
        app.state.gateway = gw
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    from planctl.gateway import claude  # imported here: its routes build on this module's

    from planctl.gateway import metrics

    every = [*ROUTES, *claude.ROUTES, Route("/metrics", metrics.metrics, methods=["GET"]), *(routes or [])]
    app = Starlette(routes=every, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _http_error})
    posts = {r.path: r.endpoint for r in every if r.methods and "POST" in r.methods}
    return metrics.Counting(Direct(app, posts))


def settings_from_env() -> Settings:
    s = Settings()
    for name, attr, kind in (("MAX_RESERVE", "max_reserve", int), ("DEFAULT_OUTPUT_TOKENS", "default_output_tokens", int),
                             ("DRAIN_TIMEOUT", "drain_timeout", float), ("GRACE", "grace", float),
                             ("THREADS", "threads", int), ("JOURNAL", "journal", str),
                             ("MAX_BODY", "max_body", int), ("BODY_TIMEOUT", "body_timeout", float),
                             ("MAX_CONCURRENT_PER_KEY", "max_concurrent_per_key", int),
                             ("ADMIT_TIMEOUT", "admit_timeout", float),
                             ("GROUP_COMMIT", "group_commit", lambda v: v == "1")):
        value = os.environ.get(f"PLANCTL_GATEWAY_{name}")
        if value:
            setattr(s, attr, kind(value))
    return s
