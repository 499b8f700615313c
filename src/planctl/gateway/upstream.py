"""Upstreams as the gateway uses them: which ones may serve a request, in what order, and the
HTTP client that reaches them.

The client is httpx with the `httpx-aiohttp` transport: measured on this kind of machine
(benchmarks/gateway.py), plain `httpx.AsyncClient` adds more latency per request and collapses
under concurrent streams (its connection pool's lock: encode/httpx#3215), while the aiohttp
transport keeps the httpx API. `PLANCTL_UPSTREAM_CLIENT=httpx` selects plain httpx (to compare).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from planctl.gateway.health import Health

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0  # between two bytes of an answer (a reasoning model may think for minutes)


@dataclass
class Route:
    """One upstream, its secret read at start."""

    name: str
    base_url: str
    secret: str
    models: tuple[str, ...] = ()
    apis: tuple[str, ...] = ("responses", "chat")
    priority: int = 0
    weight: int = 1
    healthy: bool = True  # in the database: false once it refused its own credentials or quota
    error: str | None = field(default=None, repr=False)
    health: Health = field(default_factory=Health, repr=False)  # this worker's view (health.py)

    def serves(self, billed_model: str, api: str) -> bool:
        return api in self.apis and (not self.models
                                     or any(fnmatch.fnmatchcase(billed_model, g) for g in self.models))


def candidates(routes: list[Route], billed_model: str, api: str, rng: random.Random | Any = random,
               affinity: str | None = None, now: float | None = None) -> list[Route]:
    """The available upstreams serving the model and API: lowest priority number first; within a
    priority, a random order weighted by `weight` (each is first with probability weight ÷ sum,
    less while it ramps back after a recovery). With an `affinity` (a conversation's prompt cache
    key or session id) the draw is a hash of it and the upstream's name instead (weighted
    rendezvous hashing): the same conversation goes to the same upstream while it is available,
    and only the conversations of an upstream that goes away move."""
    now = time.monotonic() if now is None else now
    fit = [r for r in routes if r.healthy and r.serves(billed_model, api) and r.health.available(now)]

    def draw(r: Route) -> float:
        u = rng.random() if affinity is None else _uniform(f"{affinity}\0{r.name}")
        return -u ** (1.0 / (r.weight * r.health.share(now)))

    return sorted(fit, key=lambda r: (r.priority, draw(r)))


def _uniform(text: str) -> float:
    """A number in (0, 1) fixed by `text`."""
    return (int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") + 1) / (2 ** 64 + 2)


def make_client(kind: str | None = None, *, connections: int = 1_000) -> httpx.AsyncClient:
    """The upstream client (`aiohttp` transport unless `kind` or PLANCTL_UPSTREAM_CLIENT says
    `httpx`)."""
    kind = kind or os.environ.get("PLANCTL_UPSTREAM_CLIENT", "aiohttp")
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    if kind == "httpx":
        return httpx.AsyncClient(timeout=timeout, limits=limits)
    if kind != "aiohttp":
        raise ValueError(f"unknown upstream client {kind!r}: use aiohttp or httpx")
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(timeout=timeout, transport=AiohttpTransport(limits=limits))
