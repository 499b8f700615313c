"""The gateway under test: in a thread of this process (`serve`, `Served`) or as `planctl serve`
in a subprocess (`ServeProcess`), with the fake upstream behind it (the `up` fixture, conftest.py)
and plans billing the test model `unit`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import openai

from helpers.fake_upstream import FakeUpstream
from helpers.metering import UNIT

UP_SECRET = "sk-upstream-test"
PLANCTL = str(Path(sys.executable).parent / "planctl")


def now() -> datetime:
    return datetime.now(timezone.utc)


def plan(slug: str, **terms: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "slug": slug, "name": slug.title(), "family": slug, "tier": 1, "price": "10.00", "validity": "1mo",
        "total_credit": "10", "models": ["unit", "gpt-5.4"], "groups": ["default", "priority", "economy"],
        "refund_policy": "unused:7d",
    }
    entry.update(terms)
    return entry


def install(db: Any, caller: Any) -> None:
    from planctl.services import catalog

    catalog.import_catalog(db, {"models": [UNIT], "plans": [
        plan("gw"), plan("tiny", total_credit="0.02"), plan("daily", total_credit=None, period="day",
                                                             period_credit="0.000001")]},
        caller=caller, now=now() - timedelta(days=1))


def buy(db: Any, caller: Any, slug: str = "gw", account: str = "acme") -> tuple[str, str, str]:
    """(subscription id, key id, secret) of a new subscription."""
    from planctl.services import accounts
    from planctl.services.sales import SaleRequest, sell

    try:
        accounts.create(db, {"name": account}, caller=caller, now=now())
    except Exception:  # noqa: BLE001 - it exists
        pass
    r = sell(db, SaleRequest(kind="buy", account=account, item=slug), caller=caller, now=now())
    return r.subscription.id, r.key.id, r.secret.secret


def add_upstream(db: Any, caller: Any, name: str, up: FakeUpstream, **spec: Any) -> None:
    from planctl.services import upstreams

    upstreams.add(db, name, upstreams.UpstreamSpec(base_url=up.base_url, key_env="FAKE_UPSTREAM_KEY", **spec),
                  caller=caller, now=now())


def records(db: Any) -> list[dict[str, Any]]:
    """The usage records in the order their requests were settled (their time: settlements that
    share a transaction, as the gateway's group commit makes them, get their ids in no set order
    on PostgreSQL)."""
    from sqlalchemy import text

    with db.read() as session:
        result = session.execute(text("SELECT * FROM usage_records ORDER BY at, id"))
        return [dict(r._mapping) for r in result]


def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A gateway in a thread of this process, over `db`, and the fake upstream behind it."""

    db: Any
    up: FakeUpstream
    port: int
    secret: str
    sub: str
    key: str
    server: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, secret: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=secret or self.secret, max_retries=0, timeout=20)

    def records(self, count: int | None = None) -> list[dict[str, Any]]:
        """The usage records, once `count` of them have landed (settlement follows the answer)."""
        if count is None:
            return records(self.db)
        return wait_for(lambda: (rows := records(self.db)) and len(rows) >= count and rows)


def serve(db: Any, up: FakeUpstream, *, client_kind: str | None = None, **settings: Any) -> Any:
    import uvicorn

    from planctl.gateway.app import create_app
    from planctl.gateway.core import Gateway, Settings
    from planctl.metering import Meter

    port = free_port()
    app = create_app(Gateway(Meter(db), Settings(**settings), client_kind=client_kind))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    return server, thread, port


def cost(input_tokens: int, cached: int, output: int) -> int:
    """The `unit` model: 1 µcr per uncached input token, 0.5 per cached (rounded up once), 2 per output."""
    return (input_tokens - cached) + -(-cached // 2) + 2 * output


def ledger_of(db: Any, sub: str) -> tuple[int, int]:
    """(credit used, credit reserved) of a subscription."""
    from sqlalchemy import text

    with db.read() as session:
        return tuple(session.execute(text("SELECT credit_used, credit_reserved FROM subscriptions WHERE id = :s"),
                                     {"s": sub}).one())


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics parsed: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class ServeProcess:
    def __init__(self, db_url: str, *args: str) -> None:
        self.port = free_port()
        env = {**os.environ, "FAKE_UPSTREAM_KEY": UP_SECRET}
        self.proc = subprocess.Popen([PLANCTL, "--db", db_url, "serve", "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        deadline = time.monotonic() + 60  # a loaded CI machine starts four workers slowly
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        _code, err = self.stop()
        raise AssertionError(f"serve did not start: {err[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        return self.proc.returncode, err
