"""The database in trouble: SQLite locked past the admission deadline, or PostgreSQL dropping the
gateway's connections (as a restart does). Admission answers 503 with Retry-After in bounded time,
in each API's format; the gateway recovers by itself; no hold or settlement is lost."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import add_upstream, buy, install, ledger_of, records, serve, wait_for


@pytest.fixture
def gw(db: Any, caller: Any, up: FakeUpstream) -> Iterator[tuple[str, str, str, Any, Any]]:
    install(db, caller)
    sub, _key, secret = buy(db, caller)
    add_upstream(db, caller, "fake", up)
    server, thread, port = serve(db, up, admit_timeout=0.5)
    gateway = server.config.app.state.gateway
    yield f"http://127.0.0.1:{port}", secret, sub, db, gateway
    server.should_exit = True
    thread.join(30)


def ask(base: str, secret: str, path: str = "/v1/responses") -> httpx.Response:
    body = {"model": "unit", "input": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20}
    return httpx.post(base + path, json=body, headers={"authorization": f"Bearer {secret}"}, timeout=30)


def test_a_locked_sqlite_gets_bounded_503s_then_service_resumes(gw: Any, db_url: str) -> None:
    base, secret, sub, db, _gateway = gw
    if "://" in db_url:
        pytest.skip("SQLite's lock")
    assert ask(base, secret).status_code == 200
    lock = sqlite3.connect(db_url, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        for path in ("/v1/responses", "/v1/messages"):
            started = time.monotonic()
            answer = ask(base, secret, path)
            assert time.monotonic() - started < 3  # the admission deadline, not SQLite's 10 s busy wait
            assert answer.status_code in (503, 529) and answer.headers.get("retry-after", "2") == "2"
            error = answer.json()["error"]
            assert "did not answer within 0.5 s" in error["message"]
            assert (answer.json().get("type") == "error") == (path == "/v1/messages")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert ask(base, secret).status_code == 200  # by itself
    rows = wait_for(lambda: len(r := records(db)) == 2 and r)
    assert wait_for(lambda: ledger_of(db, sub)[1] == 0)  # the late admissions' holds were given back
    assert ledger_of(db, sub)[0] == sum(r["charged_plan"] for r in rows)


@pytest.mark.postgres
def test_postgres_dropping_the_gateways_connections_is_survived(gw: Any, db_url: str) -> None:
    base, secret, sub, db, gateway = gw
    if "://" not in db_url:
        pytest.skip("PostgreSQL")
    from sqlalchemy import create_engine, text

    from planctl.store.location import resolve_target

    for _ in range(3):
        assert ask(base, secret).status_code == 200
    pids = [held.dbapi_connection.info.backend_pid for held in gateway.meter.db._held]
    admin = create_engine(resolve_target(db_url).url)
    try:
        with admin.connect() as conn:  # what a PostgreSQL restart does to them
            for pid in pids:
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        admin.dispose()
    statuses = []
    started = time.monotonic()
    for _ in range(12):
        statuses.append(ask(base, secret).status_code)
    assert time.monotonic() - started < 20
    assert set(statuses) <= {200, 503} and statuses[-4:] == [200] * 4  # bounded errors, then service
    served = 3 + statuses.count(200)
    rows = wait_for(lambda: len(r := records(db)) >= served and r, 15)
    assert len(rows) == served
    assert wait_for(lambda: ledger_of(db, sub)[1] == 0)
    assert ledger_of(db, sub)[0] == sum(r["charged_plan"] for r in rows)
