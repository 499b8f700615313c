"""Abuse and bad input, answered fast in the route's own error format: bodies over the limit (413),
bodies sent too slowly (408), too many requests of one key at once (429), and a bounded fuzz run
of malformed requests against both APIs, after which the worker still serves."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import add_upstream, buy, install, ledger_of, records, scrape, serve, wait_for

ROUTES = {"/v1/responses": "openai", "/v1/chat/completions": "openai", "/v1/messages": "anthropic",
          "/v1/messages/count_tokens": "anthropic"}


def well_formed(path: str, answer: httpx.Response) -> bool:
    """An error in the route's own format, with the request id."""
    try:
        body = answer.json()
    except ValueError:
        return False
    if ROUTES[path] == "anthropic":
        error = body.get("error") if body.get("type") == "error" else None
    else:
        error = body.get("error")
    return (isinstance(error, dict) and isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
            and bool(answer.headers.get("x-request-id")))


@pytest.fixture
def gw(db: Any, caller: Any, up: FakeUpstream) -> Iterator[tuple[str, str, str, Any]]:
    install(db, caller)
    sub, _key, secret = buy(db, caller)
    add_upstream(db, caller, "fake", up)
    server, thread, port = serve(db, up, max_body=4096, body_timeout=0.5, max_concurrent_per_key=2)
    yield f"http://127.0.0.1:{port}", secret, sub, db
    server.should_exit = True
    thread.join(30)


def test_a_body_over_the_limit_is_413_in_each_apis_format(gw: tuple[str, str, str, Any]) -> None:
    base, secret, _sub, db = gw
    big = json.dumps({"model": "unit", "input": "x" * 5_000, "messages": [], "max_tokens": 10}).encode()
    for path in ROUTES:
        started = time.monotonic()
        answer = httpx.post(base + path, content=big, headers={"authorization": f"Bearer {secret}"})
        assert answer.status_code == 413 and well_formed(path, answer), (path, answer.text)
        assert "4096 bytes" in answer.text and time.monotonic() - started < 2

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield from (big[i:i + 1000] for i in range(0, len(big), 1000))

        answer = httpx.post(base + path, content=chunks(), headers={"authorization": f"Bearer {secret}"})
        assert answer.status_code == 413 and well_formed(path, answer)
    assert records(db) == []


def test_a_client_stalling_its_body_gets_408_in_bounded_time(gw: tuple[str, str, str, Any]) -> None:
    base, secret, _sub, _db = gw
    port = int(base.rsplit(":", 1)[1])
    for path in ("/v1/responses", "/v1/messages"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {secret}\r\n"
                         "content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":".encode())
            started = time.monotonic()
            head = ""
            while "\r\n\r\n" not in head or len(head.split("\r\n\r\n", 1)[1]) < int(
                    head.lower().split("content-length:", 1)[1].split("\r\n", 1)[0]):
                head += sock.recv(65536).decode()
            assert time.monotonic() - started < 3
        status = int(head.split(" ", 2)[1])
        body = json.loads(head.split("\r\n\r\n", 1)[1])
        assert status == 408 and ("did not arrive" in json.dumps(body)), head
        assert (body.get("type") == "error") == (path == "/v1/messages")


def test_a_keys_third_concurrent_request_gets_429_and_its_hold_back(gw: tuple[str, str, str, Any],
                                                                     up: FakeUpstream) -> None:
    base, secret, sub, db = gw
    up.deltas, up.event_delay = 10, 0.05
    headers = {"authorization": f"Bearer {secret}"}
    body = {"model": "unit", "input": "x", "stream": True}
    results: list[int] = []

    def stream() -> None:
        with httpx.stream("POST", base + "/v1/responses", json=body, headers=headers, timeout=20) as answer:
            answer.read()
            results.append(answer.status_code)

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(up.requests) == 2)
    for path, kind in (("/v1/responses", "rate_limit_error"), ("/v1/messages", "rate_limit_error")):
        third = httpx.post(base + path, json={**body, "messages": [{"role": "user", "content": "x"}],
                                               "max_tokens": 20}, headers=headers)
        assert third.status_code == 429 and well_formed(path, third) and third.headers["retry-after"] == "1"
        assert kind in third.text and "2 requests in progress" in third.text
    for t in threads:
        t.join(20)
    assert results == [200, 200]
    assert httpx.post(base + "/v1/responses", json={**body, "stream": False}, headers=headers).status_code == 200
    assert len(wait_for(lambda: len(r := records(db)) == 3 and r)) == 3  # the refused ones left no record
    assert wait_for(lambda: ledger_of(db, sub)[1] == 0)  # and no hold


def fuzz_cases(rng: random.Random, secret: str) -> Iterator[tuple[str, dict[str, str], bytes]]:
    """(path, headers, body): broken bytes, JSON of the wrong shape, odd headers, SSE-breaking text."""
    paths = list(ROUTES)
    values: list[Any] = [None, True, -1, 10**30, 1.5, "", "x" * 300, [], {}, [1, "a"], {"a": {"b": []}},
                         "data: [DONE]\n\n", "event: error\ndata: {}\n\n", "\u0000\ud800".encode("utf-8", "surrogatepass")
                         .decode("utf-8", "replace")]
    fields = ["model", "input", "messages", "stream", "max_tokens", "max_output_tokens", "tools", "system",
              "tool_choice", "thinking", "metadata", "stream_options", "prompt_cache_key", "instructions"]
    for n in range(160):
        path = paths[n % len(paths)]
        headers = {"authorization": rng.choice([f"Bearer {secret}", "Bearer sk-nope", "Basic abc", "Bearer", ""]),
                   "content-type": rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"])}
        if rng.random() < 0.2:
            headers["x-api-key"] = rng.choice([secret, "sk-\t-tab", "sk-" + "z" * 500])
        kind = n % 5
        if kind == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        elif kind == 1:
            body = rng.choice([b"", b"null", b"[]", b"42", b'"text"', b"{", b'{"model": }', b"[" * 5_000 + b"]" * 5_000,
                               b'{"model": "unit"' + b", " * 10, b"\xff\xfe{}"])
        else:
            doc = {f: rng.choice(values) for f in rng.sample(fields, rng.randrange(0, 6))}
            if kind == 2:
                doc["model"] = rng.choice(["unit", "gpt-5.4", "claude-x", "no-such-model"])
            if kind == 3:
                doc["messages"] = [{"role": rng.choice(["user", "assistant", "system", "tool", 7]),
                                    "content": rng.choice(values)} for _ in range(rng.randrange(0, 4))]
                doc["model"] = "unit"
            body = json.dumps(doc).encode()
        yield path, headers, body


def test_a_fuzz_run_of_malformed_requests_gets_well_formed_errors_and_the_worker_stays_up(
        gw: tuple[str, str, str, Any], up: FakeUpstream) -> None:
    base, secret, sub, db = gw
    up.record = False
    rng = random.Random(17)
    bad: list[Any] = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for path, headers, body in fuzz_cases(rng, secret):
            answer = client.post(path, content=body, headers={k: v for k, v in headers.items() if v})
            if answer.status_code == 200:  # a case that happened to be valid
                continue
            if not (400 <= answer.status_code < 600 and well_formed(path, answer)):
                bad.append((path, body[:80], answer.status_code, answer.text[:200]))
        assert bad == []
        assert client.get("/healthz").status_code == 200
        ok = client.post("/v1/responses", json={"model": "unit", "input": "still here"},
                         headers={"authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
    rows = records(db)
    assert len({r["request_id"] for r in rows}) == len(rows)
    assert wait_for(lambda: ledger_of(db, sub)[1] == 0)  # no hold left behind
    assert ledger_of(db, sub)[0] == sum(r["charged_plan"] for r in records(db))


def test_metrics_count_answers_by_route_status_and_reason_and_time_the_upstream(
        gw: tuple[str, str, str, Any]) -> None:
    base, secret, _sub, _db = gw
    before = scrape(base)
    good = {"authorization": f"Bearer {secret}"}
    assert httpx.post(base + "/v1/responses", json={"model": "unit", "input": "x"}, headers=good).status_code == 200
    assert httpx.post(base + "/v1/responses", json={"model": "unit", "input": "x"},
                      headers={"authorization": "Bearer sk-nope"}).status_code == 401
    assert httpx.post(base + "/v1/messages", content=b"{", headers=good).status_code == 400
    after = wait_for(lambda: (m := scrape(base)) and m.get(("planctl_gateway_journal_backlog", ())) == 0 and m)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("planctl_gateway_requests_total", route="/v1/responses", status="200", reason="") == 1
    assert grew("planctl_gateway_requests_total", route="/v1/responses", status="401", reason="key_unknown") == 1
    assert grew("planctl_gateway_requests_total", route="/v1/messages", status="400",
                reason="invalid_request_error") == 1
    assert grew("planctl_gateway_upstream_seconds_count", upstream="fake") == 1
    assert grew("planctl_gateway_added_seconds_count") == 1
    assert after[("planctl_gateway_holds_in_flight", ())] == 0
