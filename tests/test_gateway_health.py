"""Upstream health: cooldown on 429, a circuit that opens on repeated failures and half-opens,
disabled on quota gone, ramp back, conversations that stick to one upstream; and an upstream
killed mid-load: traffic fails over, nothing is lost or charged twice, it shows as failing and
recovers once it is back."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import UP_SECRET, add_upstream, buy, install, ledger_of, now, records, serve, wait_for


def test_429_cools_down_for_retry_after_capped_then_ramps_back() -> None:
    from planctl.gateway.health import COOLDOWN_CAP, RAMP, Health

    h = Health()
    h.limited(100.0, "3")
    assert (h.state, h.available(102.9), h.available(103.0)) == ("cooldown", False, True)
    assert h.share(103.0) == 0.1 and h.share(103.0 + RAMP / 2) == 0.5 and h.share(103.0 + RAMP) == 1.0
    h.limited(200.0, "86400")  # a day: capped
    assert not h.available(200.0 + COOLDOWN_CAP - 1) and h.available(200.0 + COOLDOWN_CAP)
    h.limited(300.0, "soon")  # unreadable: the default
    assert h.state == "cooldown" and h.until == 305.0


def test_repeated_failures_open_the_circuit_which_half_opens_for_one_probe() -> None:
    from planctl.gateway.health import FAILURES, OPEN_FOR, Health

    h = Health()
    for _ in range(FAILURES - 1):
        h.failed(10.0, "ConnectError")
    h.succeeded(10.0, 0.01)  # a success in between resets the count
    for _ in range(FAILURES):
        assert h.available(10.0)
        h.failed(10.0, "HTTP 502")
    assert (h.state, h.available(10.0 + OPEN_FOR - 0.1)) == ("open", False)
    assert h.available(10.0 + OPEN_FOR) and h.state == "half_open"
    h.sent()
    assert not h.available(10.0 + OPEN_FOR)  # one probe at a time
    h.failed(20.5, "HTTP 502")  # the probe failed: open again
    assert h.state == "open" and not h.available(21.0)
    assert h.available(20.5 + OPEN_FOR)
    h.sent()
    h.succeeded(31.0, 0.02)
    assert h.state == "healthy" and h.share(31.0) == 0.1  # ramps back
    assert h.view(31.0)["error_rate"] == round(6 / 8, 3) and h.latency_ms() == 15  # median of 10 and 20 ms


def test_quota_gone_and_bad_credentials_disable_until_an_operator_enables() -> None:
    from planctl.gateway.health import Health, quota_gone

    assert quota_gone(429, b'{"error":{"type":"insufficient_quota"}}')
    assert not quota_gone(429, b'{"error":{"type":"rate_limit_exceeded"}}') and not quota_gone(500, b"insufficient_quota")
    h = Health()
    h.disable("HTTP 401")
    h.limited(0.0, "1")
    assert h.state == "disabled" and not h.available(1e9)


def test_a_conversation_sticks_to_one_upstream_while_it_is_available() -> None:
    from planctl.gateway.upstream import Route, candidates

    routes = [Route(name, "http://x", "s") for name in ("a", "b", "c")]
    firsts = {candidates(routes, "m", "responses", affinity=f"conv-{n}")[0].name for n in range(60)}
    assert firsts == {"a", "b", "c"}  # conversations spread
    order = [r.name for r in candidates(routes, "m", "responses", affinity="conv-7")]
    assert all([r.name for r in candidates(routes, "m", "responses", affinity="conv-7")] == order for _ in range(20))
    gone = next(r for r in routes if r.name == order[0])
    gone.health.failed(0.0, "x"), gone.health.failed(0.0, "x"), gone.health.failed(0.0, "x")
    assert [r.name for r in candidates(routes, "m", "responses", affinity="conv-7", now=1.0)] == order[1:]
    others = [n for n in range(60) if candidates(routes, "m", "responses", affinity=f"conv-{n}")[0] is not gone]
    assert all(candidates(routes, "m", "responses", affinity=f"conv-{n}", now=1.0)[0].name
               == candidates(routes, "m", "responses", affinity=f"conv-{n}", now=1e9)[0].name for n in others)


def test_weights_still_share_without_affinity() -> None:
    from planctl.gateway.upstream import Route, candidates

    routes = [Route("a", "http://x", "s", weight=3), Route("b", "http://x", "s", weight=1)]
    rng = random.Random(7)
    firsts = [candidates(routes, "m", "responses", rng)[0].name for _ in range(2_000)]
    assert 0.7 < firsts.count("a") / 2_000 < 0.8


def test_an_upstream_killed_mid_load_fails_over_shows_open_and_recovers(
        db: Any, caller: Any, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    from planctl.gateway import core, health
    from planctl.services import upstreams

    monkeypatch.setattr(health, "OPEN_FOR", 0.5)
    monkeypatch.setattr(core, "ROUTES_REFRESH", 0.2)  # workers report to the database this often
    install(db, caller)
    sub, _key, secret = buy(db, caller)
    other = FakeUpstream(key=UP_SECRET).start()
    up.event_delay = other.event_delay = 0.02
    up.record = other.record = False
    add_upstream(db, caller, "a", up)
    add_upstream(db, caller, "b", other)
    server, thread, port = serve(db, up)
    base = f"http://127.0.0.1:{port}"
    revived: FakeUpstream | None = None
    try:
        async def one(client: httpx.AsyncClient, n: int) -> tuple[int, str | None, bool]:
            body = {"model": "unit", "input": f"r{n}", "stream": n % 2 == 0, "prompt_cache_key": f"conv-{n}"}
            try:
                answer = await client.post("/v1/responses", json=body, headers={"authorization": f"Bearer {secret}"})
            except httpx.HTTPError:
                return 0, None, False
            done = (b"response.completed" in answer.content if body["stream"] else
                    answer.status_code == 200 and answer.json().get("status") == "completed")
            return answer.status_code, answer.headers.get("x-request-id"), done

        async def load() -> list[tuple[int, str | None, bool]]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                first = asyncio.gather(*(one(client, n) for n in range(40)))
                await asyncio.sleep(0.15)
                await asyncio.to_thread(up.kill)  # streams in flight on "a" break
                rest = await asyncio.gather(*(one(client, n) for n in range(40, 100)))
                return [*await first, *rest]

        answers = asyncio.run(load())
        after_kill = answers[40:]
        assert all(status == 200 and ok for status, _, ok in after_kill), after_kill  # failed over
        view = {u["name"]: u for u in httpx.get(base + "/healthz").json()["upstreams"]}
        assert view["a"]["state"] in ("open", "half_open") and view["a"]["error_rate"] > 0
        assert view["b"]["state"] == "healthy" and view["b"]["latency_ms"] is not None
        listed = wait_for(lambda: (r := upstreams.health_summary(upstreams.get(db, "a"), now()))["error_rate"] and r)
        assert listed["state"] in ("open", "half_open") and listed["workers"] == 1  # what upstreams list shows
        revived = FakeUpstream(key=UP_SECRET, port=up.port).start()  # back on its port

        def recovered() -> bool:
            httpx.post(base + "/v1/responses", json={"model": "unit", "input": "x"},
                       headers={"authorization": f"Bearer {secret}"}, timeout=10)
            return httpx.get(base + "/healthz").json()["upstreams"][0]["state"] == "healthy"

        wait_for(recovered, 10)
        ids = [rid for _, rid, _ in answers if rid]
        try:  # every settlement in, the probes' too (answers do not wait)
            wait_for(lambda: ledger_of(db, sub)[1] == 0, 30)
        except AssertionError:
            with db.read() as session:
                from sqlalchemy import text

                held = session.execute(text("SELECT id, amount, created_at FROM reservations WHERE status = 'held'")).all()
            raise AssertionError(f"holds still open: {held}; answers: {answers}") from None
        rows = wait_for(lambda: len(r := records(db)) >= len(ids) and r)
        recorded = [r["request_id"] for r in rows]
        assert len(recorded) == len(set(recorded)) and set(ids) <= set(recorded)  # once each, none lost
        assert all(r["status_code"] == 200 for r in rows if r["request_id"] in {a[1] for a in after_kill})
        assert ledger_of(db, sub) == (sum(r["charged_plan"] for r in rows), 0)
    finally:
        server.should_exit = True
        thread.join(30)
        other.stop()
        if revived is not None:
            revived.stop()


def test_upstreams_list_merges_the_fresh_reports_of_every_worker() -> None:
    from datetime import timedelta
    from types import SimpleNamespace

    from planctl.services.upstreams import REPORT_FRESH, health_summary

    at = now()

    def report(state: str, rate: float | None, latency: int | None, age: float = 0) -> dict[str, Any]:
        return {"state": state, "error_rate": rate, "latency_ms": latency,
                "at": (at - timedelta(seconds=age)).isoformat()}

    row = SimpleNamespace(enabled=True, healthy=True, reports={
        "h:1": report("healthy", 0.0, 100), "h:2": report("cooldown", 0.2, 300), "h:3": report("healthy", 0.1, 200),
        "h:4": report("open", 1.0, 900, age=REPORT_FRESH + 1)})  # gone quiet: not counted
    assert health_summary(row, at) == {"state": "cooldown", "error_rate": 0.2, "latency_ms": 200, "workers": 3}
    row.healthy = False
    assert health_summary(row, at)["state"] == "disabled"
    row.enabled = False
    assert health_summary(row, at)["state"] == "off"
