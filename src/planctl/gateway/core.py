"""What every route does to a request: authenticate, admit with a hold, forward with failover,
relay the stream, meter the upstream's usage and settle. Routes (app.py) parse their API's body
and choose how events and errors look; everything else is here, API-neutral.

Metering is synchronous (the `Meter` of planctl/metering/). On SQLite the event loop admits a
request itself when that cannot wait (`Meter.admit_now`: no write of this process under way, no
other process holding the write lock), saving two thread switches, and the settlement writer
(writer.py) writes its groups the same way; everything else runs on a thread pool, so the event
loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from planctl.domain.ids import short_id
from planctl.gateway import errors, estimate
from planctl.gateway.errors import ErrorAnswer
from planctl.gateway.health import quota_gone
from planctl.gateway.journal import Journal
from planctl.gateway.metrics import ADDED_SECONDS, HOLDS, UPSTREAM_ERRORS, UPSTREAM_SECONDS
from planctl.gateway.sse import Events, Tokens
from planctl.gateway.upstream import Answer, Client, Route, UpstreamError, candidates, make_client
from planctl.gateway.writer import Pending, Writer
from planctl.metering import Admission, Meter, Usage
from planctl.store.columns import U_COST

log = logging.getLogger("planctl.gateway")

WORKER = f"{socket.gethostname()}:{os.getpid()}"
FAILOVER_STATUSES = frozenset({429, 500, 502, 503, 504})
ROUTES_REFRESH = 10.0  # seconds between reloads of the upstream list (edits by other processes)


@dataclass
class Settings:
    max_reserve: int = estimate.MAX_RESERVE
    default_output_tokens: int = estimate.DEFAULT_OUTPUT_TOKENS
    drain_timeout: float = 60.0  # how long a stream whose client left is still read, for its usage
    max_drains: int = 64  # streams read at once for a client that left; beyond, an estimate is charged
    threads: int = 8  # metering threads
    grace: float = 30.0  # shutdown: how long in-flight requests may still finish
    journal: str | None = None  # the settlement journal's directory (None: no journal)
    max_body: int = 32 * 1024 * 1024  # bytes of a request body (Anthropic's documented limit)
    body_timeout: float = 30.0  # seconds a client may take to send its body
    max_concurrent_per_key: int = 0  # requests of one key in progress in this worker (0: no limit)
    admit_timeout: float = 5.0  # seconds admission may wait for the database before answering 503
    group_commit: bool = True  # settlements queued together share one transaction


@dataclass
class Call:
    """One request on its way through the gateway."""

    request_id: str
    api: str
    stream: bool
    body_size: int
    started: float = field(default_factory=time.perf_counter)
    admission: Admission | None = None
    client_request_id: str | None = None
    session_id: str | None = None
    upstream: str | None = None
    ttfb_ms: int | None = None
    affinity: str | None = None  # keeps a conversation on one upstream (prompt_cache_key or session id)
    counted: str | None = None  # the key id counted in flight, until the call ends

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)


class StreamReader(Protocol):
    """Reads a route's stream event by event (sse.ResponsesStream, sse.ChatStream or a
    translator): `relay` returns what goes to the client, `usage`/`ended`/`error` what was seen."""

    usage: Tokens | None
    ended: str | None
    error: str | None

    def relay(self, event: bytes) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


def secret_of(headers: Any) -> str | None:
    """The key from `Authorization: Bearer …` or `x-api-key`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = headers.get("x-api-key")
    return value.strip() if value and value.strip() else None


def new_call(headers: Any, api: str, stream: bool, body_size: int) -> Call:
    return Call(short_id("req", 16), api, stream, body_size,
                client_request_id=headers.get("x-client-request-id") or headers.get("x-request-id"),
                session_id=headers.get("session-id") or headers.get("x-claude-code-session-id")
                or headers.get("x-session-id"))


class Gateway:
    """The state shared by every request of one worker: the meter, its threads, the upstreams
    and their client, and the tasks that must finish before the worker exits."""

    def __init__(self, meter: Meter, settings: Settings | None = None, *, client_kind: str | None = None,
                 load_routes: Callable[[], list[Route]] | None = None) -> None:
        self.meter, self.settings = meter, settings or Settings()
        self.client_kind = client_kind
        self.load_routes = load_routes or (lambda: routes_from_db(meter.db))
        self.routes: list[Route] = []
        self.client: Client | None = None
        self.pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="meter")
        self.pending: set[asyncio.Task[Any]] = set()
        self.draining = 0
        self.journal: Journal | None = None
        self.in_flight: dict[str, int] = {}  # requests in progress by key id
        self.writer: Writer | None = None
        self._refresher: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        self.client = make_client(self.client_kind)
        self.writer = Writer(self.meter, self.call, group=self.settings.group_commit)
        self.writer.start()
        if self.settings.journal:
            self.journal = Journal(self.settings.journal)
            await self.replay()  # what killed workers journaled and the database does not have
        self.routes = await self.call(self.load_routes)
        await self.report()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    async def stop(self) -> None:
        """Let streams still relaying or draining settle (up to the grace period), write their
        settlements, then close (what the database did not take stays in the journal)."""
        if self._refresher is not None:
            self._refresher.cancel()
        started = time.monotonic()
        if self.pending:
            done, late = await asyncio.wait(set(self.pending), timeout=self.settings.grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        if self.writer is not None:
            left = await self.writer.stop(max(1.0, self.settings.grace - (time.monotonic() - started)))
            if left:
                log.error("%d settlements not in the database at exit%s", left,
                          ": they stay in the journal" if self.journal else " (no journal: lost)")
        if self.journal is not None:
            self.journal.close()
        if self.client is not None:
            await self.client.close()
        self.pool.shutdown(wait=True)
        self.meter.close()

    async def replay(self) -> None:
        """Put the journal files of dead workers into the database (a failure is retried later)."""
        from planctl.gateway import journal

        assert self.journal is not None
        ours = self.journal.paths()
        try:
            count = await self.call(journal.replay, self.journal.directory, self.meter.record_many, ours)
        except Exception as exc:  # the database is in trouble: the files stay for the next try
            log.error("could not replay the journal: %s: %s", type(exc).__name__, exc)
            return
        if count:
            log.warning("replayed %d journaled settlements of stopped workers", count)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(ROUTES_REFRESH)
            if self.journal is not None:
                await self.replay()
            try:
                fresh = await self.call(self.load_routes)
            except Exception as exc:  # keep the last good list
                log.warning("could not reload upstreams: %s", exc)
                continue
            known = {r.name: r for r in self.routes}
            for route in fresh:
                if route.name in known:  # what this worker learnt of it stays
                    route.health = known[route.name].health
                    if route.healthy and route.health.state == "disabled":  # an operator enabled it again
                        route.health.state, route.health.reason = "healthy", None
            self.routes = fresh
            await self.report()

    async def report(self) -> None:
        """Tell the database how this worker sees each upstream (`planctl upstreams list`)."""
        from planctl.services.upstreams import report_health

        now = time.monotonic()
        views = {r.name: r.health.view(now) for r in self.routes}
        try:
            await self.call(lambda: report_health(self.meter.db, WORKER, views, now=_now()))
        except Exception as exc:  # noqa: BLE001 - a report is not worth failing for
            log.warning("could not report upstream health: %s", exc)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (metering, the database) on the metering threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def keep(self, task: asyncio.Task[Any]) -> None:
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    # ------------------------------------------------------------ admission

    async def admit(self, call: Call, secret: str | None, model: Any, body: dict[str, Any]) -> ErrorAnswer | None:
        """Admit the request with a hold sized from it; the refusal to send, if any."""
        if secret is None:
            return errors.refusal("no_key", "no API key was sent", None, _now())
        if not isinstance(model, str) or not model:
            return errors.bad_request("the request needs a 'model'")
        s = self.settings
        output = estimate.output_cap(body, s.default_output_tokens)

        def hold() -> int | None:
            cost = self.meter.quote(model, input_tokens=estimate.input_tokens(call.body_size),
                                    output_tokens=output)
            return estimate.hold(cost, s.max_reserve)

        def admit() -> Admission:  # one trip to the metering threads
            return self.meter.admit(secret, model, call.api, hold())

        try:  # here on the event loop when nothing has to wait (SQLite): no trip to a thread and back
            adm = self.meter.admit_now(secret, model, call.api, hold()) if self.meter.sqlite else None
        except Exception as exc:
            log.error("admission failed: %s: %s", type(exc).__name__, exc)
            return errors.overloaded(type(exc).__name__)
        if adm is None:
            pending = asyncio.get_running_loop().run_in_executor(self.pool, admit)
            try:
                adm = await asyncio.wait_for(asyncio.shield(pending), s.admit_timeout)
            except asyncio.TimeoutError:  # the database is locked or unreachable: answer now, tidy up later
                pending.add_done_callback(self._abandoned)
                log.error("admission waited %g s for the database: answered 503", s.admit_timeout)
                return errors.overloaded(f"the database did not answer within {s.admit_timeout:g} s")
            except Exception as exc:
                log.error("admission failed: %s: %s", type(exc).__name__, exc)
                return errors.overloaded(type(exc).__name__)
        call.admission = adm
        if not adm.allowed:
            answer = errors.refusal(adm.reason or "denied", adm.message, adm.next_reset, _now())
            _log_request(call, answer.status, f"refused: {adm.reason}", key_id=adm.key_id, reason=adm.reason)
            return answer
        assert adm.key_id is not None
        limit, busy = s.max_concurrent_per_key, self.in_flight.get(adm.key_id, 0)
        if limit and busy >= limit:
            await self.release(call, "too many concurrent requests")
            answer = errors.too_many_concurrent(limit)
            _log_request(call, 429, "refused: too many concurrent requests", key_id=adm.key_id)
            return answer
        self.in_flight[adm.key_id] = busy + 1
        call.counted = adm.key_id
        HOLDS.inc()
        return None

    def _abandoned(self, done: asyncio.Future[Admission]) -> None:
        """An admission that came too late for its client: give its hold back."""
        if done.cancelled() or done.exception() is not None:
            return
        adm = done.result()
        if adm.allowed and adm.reservation_id:
            self.keep(asyncio.get_running_loop().create_task(
                self.call(self.meter.release, adm, "the client was answered 503 before admission finished")))

    def ended(self, call: Call) -> None:
        """The call holds no more of its key's concurrency (once)."""
        key, call.counted = call.counted, None
        if key is not None:
            HOLDS.dec()
            left = self.in_flight.get(key, 1) - 1
            if left > 0:
                self.in_flight[key] = left
            else:
                self.in_flight.pop(key, None)

    # ------------------------------------------------------------ forwarding

    async def open(self, call: Call, path: str, payload: bytes, extra_headers: dict[str, str] | None = None,
                   upstream_api: str | None = None) -> tuple[Route, Answer] | ErrorAnswer:
        """Send the request to the first upstream that takes it (serving the billed model and
        `upstream_api`, by default the request's own API): connect errors, 5xx and 429 fail over
        to the next; an upstream refusing its own credentials is marked unhealthy. Answers an
        error (having settled or released the hold) when none took it."""
        adm = call.admission
        assert adm is not None and adm.billed_model is not None and self.client is not None
        tried: list[str] = []
        last: Answer | None = None
        last_route: Route | None = None
        auth_failure: tuple[Route, int] | None = None
        ADDED_SECONDS.observe(time.perf_counter() - call.started)
        for route in candidates(self.routes, adm.billed_model, upstream_api or call.api, affinity=call.affinity):
            health = route.health
            headers = {"authorization": f"Bearer {route.secret}", "content-type": "application/json",
                       "accept": "text/event-stream" if call.stream else "application/json",
                       "accept-encoding": "identity", "x-request-id": call.request_id, **(extra_headers or {})}
            health.sent()
            began = time.monotonic()
            try:
                response = await self.client.post(route.base_url + path, payload, headers)
            except UpstreamError as exc:
                UPSTREAM_ERRORS.labels(route.name, "connect").inc()
                health.failed(time.monotonic(), exc.cause)
                tried.append(f"{route.name}: {exc.cause}")
                continue
            status = response.status
            UPSTREAM_SECONDS.labels(route.name).observe(time.monotonic() - began)
            if status in (401, 403):
                UPSTREAM_ERRORS.labels(route.name, "auth").inc()
                await response.close()
                auth_failure = (route, status)
                self._unhealthy(route, f"HTTP {status}: the upstream refused its credentials")
                tried.append(f"{route.name}: HTTP {status}")
                continue
            if status == 429 or status >= 500:
                body = await _small_body(response)
                UPSTREAM_ERRORS.labels(route.name, "quota" if quota_gone(status, body) else
                                       "429" if status == 429 else "5xx").inc()
                if quota_gone(status, body):
                    self._unhealthy(route, f"HTTP {status}: the upstream's own quota is gone")
                elif status == 429:
                    health.limited(time.monotonic(), response.headers.get("retry-after"))
                else:
                    health.failed(time.monotonic(), f"HTTP {status}")
            else:
                health.succeeded(time.monotonic(), time.monotonic() - began)
            if status in FAILOVER_STATUSES:
                if last is not None:
                    await last.close()
                last, last_route = response, route
                tried.append(f"{route.name}: HTTP {status}")
                continue
            if last is not None:
                await last.close()
            call.upstream = route.name
            return route, response
        if last is not None and last_route is not None:  # every upstream was busy or failing: say so
            call.upstream = last_route.name
            return last_route, last
        if auth_failure is not None:
            answer = errors.upstream_auth(auth_failure[0].name, auth_failure[1])
            call.upstream = auth_failure[0].name
            await self.settle(call, None, 502, answer.body["error"]["message"], estimated=False)
            return answer
        await self.release(call, "no upstream reached")
        if not tried:
            api = upstream_api or call.api
            resting = [r.health.until for r in self.routes if r.healthy and r.serves(adm.billed_model, api)]
            if resting:  # they all cool down or have their circuit open: say when to come back
                return errors.upstreams_resting(max(1, math.ceil(min(resting) - time.monotonic())))
            return errors.no_upstream(adm.billed_model, api)
        return errors.upstream_unreachable("; ".join(tried))

    def _unhealthy(self, route: Route, why: str) -> None:
        route.healthy, route.error = False, why
        route.health.disable(why)
        log.error("upstream %s marked unhealthy: %s", route.name, why)
        from planctl.services.upstreams import mark_health

        task = asyncio.get_running_loop().create_task(
            self.call(lambda: mark_health(self.meter.db, route.name, False, why, now=_now())))
        self.keep(task)

    # ------------------------------------------------------------ settlement

    async def settle(self, call: Call, tokens: Tokens | None, status: int, error: str | None, *,
                     estimated: bool, output_estimate: int = 0) -> None:
        """Record the request and settle its hold (the upstream's usage, or an estimate): in the journal
        now, in the database soon after. The answer does not wait for the database: until its
        settlement lands, the request's open hold keeps its credit and its place in the request
        limits (metering counts open holds), so the client's next request is judged as if it had."""
        adm = call.admission
        if adm is None or not adm.allowed:
            return
        self.ended(call)
        if tokens is None and estimated:
            tokens = Tokens(estimate.input_tokens(call.body_size), 0, output_estimate)
        tokens = tokens or Tokens()
        usage = Usage(call.request_id, tokens.input, tokens.cached, tokens.output, status, call.elapsed_ms(),
                      call.ttfb_ms, call.stream, error, call.upstream, call.client_request_id, call.session_id,
                      estimated)
        u = self.meter.settlement(adm, usage)
        segment = None
        if self.journal is not None:
            try:  # on disk before the client's answer ends: a crash from here on loses nothing
                segment = self.journal.append(u)
            except OSError as exc:
                log.error("could not journal %s: %s", call.request_id, exc)
        journal = self.journal

        def done(values: tuple[Any, ...] | None, why: str | None) -> None:
            if segment is not None and journal is not None:
                journal.done(segment)
            if values is None and why != "already recorded":
                log.error("could not settle %s: %s", call.request_id, why)
            if log.isEnabledFor(logging.INFO):
                cost = values[U_COST] if values is not None else None
                _log_request(call, status, f"{usage.input_tokens}/{usage.cached_tokens}/{usage.output_tokens} "
                             f"tokens, {cost} µcr" + (" (estimated)" if estimated else ""), key_id=adm.key_id,
                             cost=cost, input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens,
                             output_tokens=usage.output_tokens, usage_estimated=estimated, error=error)

        assert self.writer is not None
        self.writer.put(Pending(u, done))

    async def release(self, call: Call, reason: str) -> None:
        self.ended(call)
        adm = call.admission
        if adm is not None and adm.reservation_id:
            try:
                await self.call(self.meter.release, adm, reason)
            except Exception as exc:
                log.error("could not release %s: %s", adm.reservation_id, exc)

    async def settle_answer(self, call: Call, response: Answer, read_usage: Callable[[Any], Tokens | None]
                            ) -> bytes:
        """A whole (non-stream) answer: read it, return its bytes; it is settled from its usage
        meanwhile (shutdown waits for it)."""
        try:
            body = await response.read()
        except Exception as exc:  # UpstreamError, or a bug of ours: the hold is settled either way
            await response.close()
            cause = exc.cause if isinstance(exc, UpstreamError) else type(exc).__name__
            await self.settle(call, None, 502, f"upstream answer broke: {cause}", estimated=True)
            raise
        call.ttfb_ms = call.elapsed_ms()
        tokens, error = None, None
        if response.status < 400:
            try:
                import orjson

                tokens = read_usage(orjson.loads(body).get("usage"))
            except (ValueError, AttributeError):
                tokens = None
        else:
            error = body[:2000].decode("utf-8", "replace")
        missing = tokens is None and response.status < 400
        await self.settle(call, tokens, response.status, error or ("no usage in the answer" if missing else None),
                          estimated=missing)  # journaled before the client has the answer
        return body

    # ------------------------------------------------------------ streams

    def relay(self, call: Call, response: Answer, reader: StreamReader) -> Relay:
        relay = Relay(self, call, response, reader)
        task = asyncio.get_running_loop().create_task(relay.pump())
        relay.task = task
        self.keep(task)
        return relay


class Relay:
    """One stream: a task reads the upstream into a queue (and on to its end, for its usage, even
    when the client has left), the ASGI response writes the queue to the client."""

    def __init__(self, gateway: Gateway, call: Call, response: Answer, reader: StreamReader) -> None:
        self.gw, self.call, self.response, self.reader = gateway, call, response, reader
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.gone = False
        self.finished = False  # the pump has queued its last item (the end, None, follows it)
        self.task: asyncio.Task[Any] | None = None
        self.events = Events()

    def client_left(self) -> None:
        """The client disconnected: keep reading for the usage (bounded), or stop now."""
        if self.gone:
            return
        self.gone = True
        gw = self.gw
        if self.task is None or self.task.done():
            return
        if gw.draining >= gw.settings.max_drains:
            self.task.cancel()
            return
        gw.draining += 1
        self.task.add_done_callback(lambda _t: setattr(gw, "draining", gw.draining - 1))
        handle = asyncio.get_running_loop().call_later(gw.settings.drain_timeout, self.task.cancel)
        self.task.add_done_callback(lambda _t: handle.cancel())

    async def pump(self) -> None:
        reader, call, put = self.reader, self.call, self.queue.put_nowait
        broke: str | None = None
        tail: list[bytes] = []  # from the terminal event on: sent once the settlement is journaled
        try:
            async for chunk in self.response.chunks():
                if call.ttfb_ms is None:
                    call.ttfb_ms = call.elapsed_ms()
                out = b"".join([reader.relay(event) for event in self.events.feed(chunk)])
                if out and not self.gone:
                    (tail.append if reader.ended else put)(out)
                if self.gone and reader.ended:
                    break
        except asyncio.CancelledError:
            broke = "the client left and the upstream's usage did not arrive in time"
        except Exception as exc:  # noqa: BLE001 - UpstreamError, or a bug of ours: settle either way
            broke = f"the upstream stream broke: {exc if isinstance(exc, UpstreamError) else type(exc).__name__}"
        finally:
            try:
                await asyncio.shield(self.response.close())
            except BaseException:  # noqa: BLE001 - the connection is gone either way; settle regardless
                pass
        if broke is None and reader.ended is None:
            broke = "the upstream ended the stream without its final event"
        status = 499 if self.gone and reader.ended is None else 502 if broke and reader.ended is None else 200
        estimated = reader.usage is None
        await asyncio.shield(self.gw.settle(call, reader.usage, status, broke or reader.error, estimated=estimated,
                                            output_estimate=self.events.count))
        self.finished = True
        if tail:
            put(b"".join(tail))
        if broke is not None and not self.gone and reader.ended is None:
            put(reader.fail(broke))
        put(None)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI response: headers, then the queue, while listening for a disconnect."""
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-request-id", self.call.request_id.encode())]
        listener = asyncio.get_running_loop().create_task(self._listen(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while (item := await self.queue.get()) is not None:
                if self.gone:
                    return
                last = self.finished and self.queue.qsize() == 1  # only the end is left: one write for both
                await send({"type": "http.response.body", "body": item, "more_body": not last})
                if last:
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (OSError, asyncio.CancelledError):
            self.client_left()
            raise
        finally:
            listener.cancel()

    async def _listen(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_left()
                self.queue.put_nowait(None)
                return


async def _small_body(response: Answer) -> bytes:
    """An error answer's body (kept on the response for whoever relays it); a broken one is empty."""
    try:
        return await response.read()
    except UpstreamError:
        return b""


def routes_from_db(db: Any) -> list[Route]:
    """The enabled upstreams with their secrets (read now from their variables or files)."""
    from planctl.services import upstreams

    routes = []
    for row in upstreams.list_all(db):
        if not row.enabled:
            continue
        try:
            secret = upstreams.read_secret(row)
        except Exception as exc:  # noqa: BLE001 - an upstream without its secret is skipped, loudly
            log.error("%s", getattr(exc, "message", exc))
            continue
        routes.append(Route(row.name, row.base_url, secret, tuple(row.models), tuple(upstreams.split_apis(row.apis)),
                            row.priority, row.weight, row.healthy, row.last_error))
    return routes


def _log_request(call: Call, status: int, text: str, **fields: Any) -> None:
    """One line per request: its id, status, model, upstream and what it used (never the key)."""
    adm = call.admission
    model = adm.requested_model if adm else None
    log.info("%s %s %s %s via %s in %d ms: %s", call.request_id, status, call.api, model, call.upstream or "-",
             call.elapsed_ms(), text, extra={"fields": {
                 "request_id": call.request_id, "status": status, "api": call.api, "model": model,
                 "upstream": call.upstream, "stream": call.stream, "latency_ms": call.elapsed_ms(),
                 "ttfb_ms": call.ttfb_ms, "client_request_id": call.client_request_id,
                 "session_id": call.session_id, **fields}})


def _now() -> datetime:
    return datetime.now(timezone.utc)
