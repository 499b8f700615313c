"""Upstreams as the gateway uses them: which ones may serve a request, in what order, and the
HTTP client that reaches them.

The client is aiohttp's, used directly: measured on this kind of machine (benchmarks/gateway.py
and a one-client loop against the fake upstream: p50 0.30 ms aiohttp, 0.47 ms httpx on the
`httpx-aiohttp` transport, 0.75 ms plain httpx), plain `httpx.AsyncClient` adds the most and
collapses under concurrent streams (its connection pool's lock: encode/httpx#3215), and httpx's
API over aiohttp's transport still costs httpx's request and cookie handling on every request.
`PLANCTL_UPSTREAM_CLIENT=httpx` selects plain httpx (to compare). Both answer with an `Answer`
and raise `UpstreamError` for whatever breaks the exchange (connecting, reading, a timeout).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

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


class UpstreamError(Exception):
    """The upstream could not be reached, or its answer broke off: `cause` names the error that
    did it (`ClientConnectorError`, `ReadTimeout`, …), the message adds its text."""

    def __init__(self, cause: BaseException) -> None:
        text = str(cause)
        self.cause = type(cause).__name__
        super().__init__(f"{self.cause}: {text[:200]}" if text else self.cause)


class Answer(Protocol):
    """An upstream's answer: status and headers now, the body read whole or chunk by chunk."""

    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class Client(Protocol):
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer: ...

    async def close(self) -> None: ...


class AiohttpAnswer:
    __slots__ = ("response", "status", "headers")

    def __init__(self, response: Any) -> None:
        self.response, self.status, self.headers = response, response.status, response.headers

    async def read(self) -> bytes:
        try:
            return await self.response.read()
        except Exception as exc:  # noqa: BLE001 - aiohttp's errors, timeouts, sockets: the answer broke
            raise UpstreamError(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except Exception as exc:  # noqa: BLE001
            raise UpstreamError(exc) from exc

    async def close(self) -> None:
        self.response.release()  # back to the pool when read to its end; an answer left part-read is closed


class AiohttpClient:
    def __init__(self, connections: int) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
            cookie_jar=aiohttp.DummyCookieJar(),  # one client for every buyer: never keep an upstream's cookies
            auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            response = await self.session.request("POST", url, data=body, headers=headers, allow_redirects=False)
        except Exception as exc:  # noqa: BLE001 - connect errors, timeouts, a reset before the headers
            raise UpstreamError(exc) from exc
        return AiohttpAnswer(response)

    async def close(self) -> None:
        await self.session.close()


class HttpxAnswer:
    __slots__ = ("response", "status", "headers")

    def __init__(self, response: Any) -> None:
        self.response, self.status, self.headers = response, response.status_code, response.headers

    async def read(self) -> bytes:
        try:
            return await self.response.aread()
        except Exception as exc:  # noqa: BLE001
            raise UpstreamError(exc) from exc
        finally:
            await self.response.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        except Exception as exc:  # noqa: BLE001
            raise UpstreamError(exc) from exc

    async def close(self) -> None:
        await self.response.aclose()


class HttpxClient:
    def __init__(self, connections: int) -> None:
        import httpx

        self.client = httpx.AsyncClient(timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
                                        limits=httpx.Limits(max_connections=connections,
                                                            max_keepalive_connections=connections))

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        request = self.client.build_request("POST", url, content=body, headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except Exception as exc:  # noqa: BLE001
            raise UpstreamError(exc) from exc
        self.client.cookies.clear()  # one client for every buyer: never keep an upstream's cookies
        return HttpxAnswer(response)

    async def close(self) -> None:
        await self.client.aclose()


def make_client(kind: str | None = None, *, connections: int = 1_000) -> Client:
    """The upstream client (aiohttp unless `kind` or PLANCTL_UPSTREAM_CLIENT says `httpx`);
    made inside the event loop that will use it."""
    kind = kind or os.environ.get("PLANCTL_UPSTREAM_CLIENT", "aiohttp")
    if kind == "httpx":
        return HttpxClient(connections)
    if kind != "aiohttp":
        raise ValueError(f"unknown upstream client {kind!r}: use aiohttp or httpx")
    return AiohttpClient(connections)
