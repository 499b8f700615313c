"""GET /metrics of `planctl serve`, in the Prometheus text format (prometheus-client).

With several workers, `planctl serve` sets PROMETHEUS_MULTIPROC_DIR (a fresh directory) before
they start, each worker writes its metrics there, and whichever worker answers a scrape sums
them all (the client's multi-process mode).

- planctl_gateway_requests_total{route, status, reason}: every answer; `reason` is the planctl
  reason code or error code of an error answer (empty for a success);
- planctl_gateway_upstream_seconds{upstream}: time to an upstream's response headers;
- planctl_gateway_upstream_errors_total{upstream, kind}: connect, 429, 5xx, auth, quota;
- planctl_gateway_added_seconds: time from a request's arrival to its forwarding (reading,
  authentication, admission with its hold): what the gateway adds before the upstream;
- planctl_gateway_holds_in_flight: admitted requests not yet settled;
- planctl_gateway_journal_backlog: settlements not yet in the database.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUESTS = Counter("planctl_gateway_requests", "Answers by route, HTTP status and reason code",
                   ["route", "status", "reason"])
UPSTREAM_SECONDS = Histogram("planctl_gateway_upstream_seconds", "Time to an upstream's response headers",
                             ["upstream"], buckets=(*_FAST, 10.0, 30.0, 60.0, 120.0))
UPSTREAM_ERRORS = Counter("planctl_gateway_upstream_errors", "Upstream failures by kind", ["upstream", "kind"])
ADDED_SECONDS = Histogram("planctl_gateway_added_seconds", "Time from a request's arrival to its forwarding",
                          buckets=_FAST)
HOLDS = Gauge("planctl_gateway_holds_in_flight", "Admitted requests not yet settled", multiprocess_mode="livesum")
BACKLOG = Gauge("planctl_gateway_journal_backlog", "Settlements not yet in the database",
                multiprocess_mode="livesum")
ROUTES = frozenset({"/v1/responses", "/v1/chat/completions", "/v1/models", "/v1/messages",
                    "/v1/messages/count_tokens", "/healthz", "/api/hello", "/metrics"})


async def metrics(request: Request) -> Response:
    registry: Any = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST})


def reason_of(body: bytes) -> str:
    """The reason code of an error answer (either API's format), else its error code or type."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    return str(error.get("reason") or error.get("code") or error.get("type") or "")[:64]


class Counting:
    """ASGI middleware: counts every answer by route, status and reason (read from an error's body)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = 0
        error = bytearray()

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status >= 400 and len(error) < 8192:
                error.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            REQUESTS.labels(route, str(status or 500), reason_of(bytes(error)) if status >= 400 else "").inc()
