"""`planctl serve` as a real subprocess (one worker and several), on SQLite and PostgreSQL: the
graceful stop, and 200 concurrent requests against a subscription whose credit runs out."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import openai

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import ServeProcess, add_upstream, buy, cost, install, ledger_of, records


def test_sigterm_lets_the_stream_in_flight_finish_settles_it_and_exits_0(db: Any, db_url: str, caller: Any,
                                                                        up: FakeUpstream) -> None:
    install(db, caller)
    sub, _key, secret = buy(db, caller)
    add_upstream(db, caller, "fake", up)
    up.event_delay, up.deltas = 0.1, 12  # a stream of about 2 s
    serve = ServeProcess(db_url, "--grace", "20", "--log-format", "json")
    client = openai.OpenAI(base_url=serve.url + "/v1", api_key=secret, max_retries=0)
    seen: list[str] = []
    started = threading.Event()

    def consume() -> None:
        with client.responses.create(model="unit", input="hi", stream=True) as stream:
            for event in stream:
                seen.append(event.type)
                started.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert started.wait(10)
    code, err = serve.stop()
    reader.join(10)
    assert code == 0, err
    assert seen[-1] == "response.completed"
    [rec] = records(db)
    assert rec["status_code"] == 200 and rec["output_tokens"] == 300
    assert ledger_of(db, sub) == (cost(2_000, 1_500, 300), 0)
    import json

    lines = [json.loads(line) for line in err.splitlines()]  # --log-format json: one object a line
    [logged] = [line for line in lines if line.get("request_id")]
    assert (logged["request_id"], logged["status"], logged["upstream"]) == (rec["request_id"], 200, "fake")
    assert logged["cost"] == cost(2_000, 1_500, 300) and secret not in err


def test_200_concurrent_requests_never_overdraw_a_subscription(db: Any, db_url: str, caller: Any,
                                                               up: FakeUpstream) -> None:
    """Credit for about ten requests, 200 at once over two workers: the balance never goes below
    zero, every admitted request is recorded once, every other one is refused cleanly."""
    from planctl.services.database import check

    install(db, caller)
    sub, _key, secret = buy(db, caller, "tiny")  # 20,000 µcr; a request costs 1,850
    add_upstream(db, caller, "fake", up)
    up.record = False
    serve = ServeProcess(db_url, "--workers", "2")
    try:
        async def one(client: openai.AsyncOpenAI, n: int) -> tuple[int, Any]:
            stream = n % 2 == 0
            try:
                if stream:
                    async with await client.responses.create(model="unit", input=f"req {n}", stream=True,
                                                             max_output_tokens=100) as events:
                        last = [e async for e in events][-1]
                    return 200, last.type
                await client.responses.create(model="unit", input=f"req {n}", max_output_tokens=100)
                return 200, None
            except openai.APIStatusError as exc:
                return exc.status_code, exc.body

        async def run() -> list[tuple[int, Any]]:
            async with openai.AsyncOpenAI(base_url=serve.url + "/v1", api_key=secret, max_retries=0, timeout=60,
                                          http_client=openai.DefaultAsyncHttpxClient(
                                              limits=httpx.Limits(max_connections=200))) as client:
                return await asyncio.gather(*(one(client, n) for n in range(200)))

        answers = asyncio.run(run())
    finally:
        code, err = serve.stop()
    assert code == 0, err
    admitted = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert all(a[1] in (None, "response.completed") for a in admitted)
    assert refused and all(status == 429 and body["code"] == "insufficient_quota" and body["reason"]
                           == "credit_exhausted" for status, body in refused), refused[:3]
    rows = records(db)
    assert len(rows) == len(admitted) == len({r["request_id"] for r in rows})
    assert all(r["status_code"] == 200 for r in rows)
    used, reserved = ledger_of(db, sub)
    assert reserved == 0 and used == sum(r["charged_plan"] for r in rows) <= 20_000
    assert used > 20_000 - cost(2_000, 1_500, 300)  # it did run out
    assert all(r.ok for r in check(db)), [r for r in check(db) if not r.ok]
    from sqlalchemy import text

    with db.read() as session:
        held = session.execute(text("SELECT count(*) FROM reservations WHERE status = 'held'")).scalar()
    assert held == 0
