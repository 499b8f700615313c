"""Usage queries, group health and retention (SPEC §6, issue 6).

One fixed data set per backend (built once per module and only read by most
tests): three accounts, two subscriptions, a PAYG account, six keys in three
groups, ~200 usage records recorded through `metering.recording.record` with
explicit times over seven Beijing days (among them one at 2026-11-20T15:59:59Z
and one at 16:00:00Z, either side of Beijing midnight), six requested models
(two Claude names billed through aliases), three API types, status codes 200,
201, 404, 429, 500 and 503, cached tokens, and latencies across every histogram
bucket (some missing). Every expected value is computed in this file from the
list of inputs (`Rec`), with the catalog's prices and ratios written out here
and SPEC §5's cost and draw-down rules; never from planctl's own functions.

Prune works on a copy (`fresh`); the threshold and reset-zone tests change
settings of the shared set and put them back (`settings_restored`). The CLI runs
under freezegun at NOW (2026-11-21 12:00 Beijing) unless a test says otherwise.
Runs on SQLite and, with PLANCTL_TEST_DATABASE_URL, on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import secrets
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from helpers import BACKENDS, CR, Cli, NOW, PG_URL, cr, pg_schema_url, utc
from helpers.metering import catalogs

BJ = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 14, 16, 0, tzinfo=timezone.utc)  # 2026-11-15 00:00 Beijing: first recorded day
EDGE_BEFORE = datetime(2026, 11, 20, 15, 59, 59, tzinfo=timezone.utc)  # 2026-11-20 23:59:59 Beijing
EDGE_AFTER = datetime(2026, 11, 20, 16, 0, 0, tzinfo=timezone.utc)  # 2026-11-21 00:00:00 Beijing
TIE = datetime(2026, 11, 17, 8, 0, 0, tzinfo=timezone.utc)  # three records share this instant

# The sample catalog, written out: credit per million tokens = µcr per token (input, cached, output).
PRICES = {
    "gpt-5.5": (Fraction("10.5"), Fraction("1.05"), Fraction(84)),
    "gpt-5.4": (Fraction("8.75"), Fraction("0.875"), Fraction(70)),
    "gpt-5.4-mini": (Fraction("1.75"), Fraction("0.175"), Fraction(14)),
    "gpt-5.3-codex": (Fraction("8.75"), Fraction("0.875"), Fraction(70)),
}
RATIO = {"default": Fraction(1), "priority": Fraction(3, 2), "economy": Fraction(4, 5)}
BILLED = {"claude-sonnet-4-5": "gpt-5.4", "claude-haiku-4-5": "gpt-5.4-mini"}  # claude* / claude-haiku*
PERIOD_CREDIT = {"pro": 250 * CR, "weekly": 60 * CR}  # codex-pro-monthly / codex-weekly: per Beijing day
EXTRA = {"globex": 200 * CR}  # extra-200 bought by globex
BOUNDS = (100, 250, 500, 1_000, 2_000, 4_000, 8_000, 15_000, 30_000, 60_000, 120_000)  # histogram, ms

# key label: (account, subscription label or None for PAYG, group)
KEYS = {
    "acme-sub": ("acme", "pro", "default"),
    "acme-prio": ("acme", "pro", "priority"),
    "acme-eco": ("acme", "pro", "economy"),
    "globex-sub": ("globex", "weekly", "default"),
    "globex-eco": ("globex", "weekly", "economy"),
    "initech-payg": ("initech", None, "priority"),
}
RECORD_FIELDS = [
    "request_id", "at", "local_day", "account_id", "key_id", "subscription_id", "group_name", "requested_model",
    "billed_model", "api", "input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan",
    "charged_extra", "charged_payg", "pool", "status_code", "latency_ms", "stream", "error", "reservation_id",
    "ttfb_ms", "upstream", "client_request_id", "session_id", "usage_estimated", "key_name", "account_name",
]
CSV_HEADER = ["at", "request_id", "key_name", "account_name", "key_id", "billed_model", "api", "status_code",
              "input_tokens", "cached_tokens", "output_tokens", "cost", "pool", "latency_ms"]
HEALTH_FIELDS = ["id", "name", "requests", "success_rate", "consumption", "cache_hit_rate", "avg_latency_ms",
                 "p95_latency_ms", "p95_exact", "last_request_at", "status"]
HEALTH_CSV = ["id", "name", "requests", "success_rate", "consumption", "cache_hit_rate", "avg_latency_ms",
              "p95_latency_ms", "last_request_at", "status", "p95_exact"]


def bj(day: str) -> datetime:
    """00:00 Beijing of an ISO date, in UTC."""
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), BJ).astimezone(timezone.utc)


def iso(instant: datetime) -> str:
    return instant.isoformat(timespec="microseconds" if instant.microsecond else "seconds")


# ---------------------------------------------------------------- the data set


@dataclass
class Rec:
    """One recorded request, and what planctl should have made of it."""

    request_id: str
    at: datetime
    key: str  # label in KEYS
    model: str  # requested
    api: str
    input: int
    cached: int
    output: int
    status: int
    latency: int | None
    stream: bool = False
    error: str | None = None
    seq: int = 0  # recording order (= row id order)
    cost: int = 0
    plan: int = 0
    extra: int = 0
    payg: int = 0
    pool: str = ""

    @property
    def account(self) -> str:
        return KEYS[self.key][0]

    @property
    def sub(self) -> str | None:
        return KEYS[self.key][1]

    @property
    def group(self) -> str:
        return KEYS[self.key][2]

    @property
    def billed(self) -> str:
        return BILLED.get(self.model, self.model)

    @property
    def day(self) -> str:
        return self.at.astimezone(BJ).date().isoformat()

    @property
    def ok(self) -> bool:
        return self.status < 400


def _generate() -> list[Rec]:
    """The inputs, deterministic, in the order they are recorded."""
    rng = random.Random(20261121)
    span = int((NOW - START).total_seconds())
    models = ["gpt-5.4"] * 4 + ["gpt-5.4-mini"] * 3 + ["gpt-5.5"] * 2 + ["gpt-5.3-codex"] * 2 + [
        "claude-sonnet-4-5", "claude-haiku-4-5"]
    statuses = [200] * 24 + [201] * 3 + [404] * 2 + [429] * 3 + [500] * 3 + [503] * 3
    keys = ["acme-sub"] * 5 + ["acme-prio"] * 3 + ["acme-eco"] * 3 + ["globex-sub"] * 3 + ["globex-eco"] * 2 + [
        "initech-payg"] * 3
    latencies = [None, 0, 42, 100, 101, 180, 250, 251, 400, 500, 700, 1_000, 1_500, 2_000, 3_000, 4_000, 6_500,
                 8_000, 12_000, 15_000, 22_000, 30_000, 45_000, 60_000, 90_000, 120_000, 120_001, 150_000]
    recs: list[Rec] = []

    def add(rid: str, at: datetime, key: str, model: str, status: int, latency: int | None,
            api: str | None = None, tokens: tuple[int, int, int] | None = None, **kw: Any) -> None:
        if tokens is None:
            if status >= 400 and rng.random() < 0.6:
                tokens = (0, 0, 0)
            else:
                inp = rng.randrange(0, 40_000)
                tokens = (inp, rng.randrange(0, inp + 1) if rng.random() < 0.7 else 0, rng.randrange(0, 6_000))
        if api is None:
            api = "claude" if model.startswith("claude") else rng.choice(["responses", "responses", "chat"])
        error = f"upstream said {status}" if status >= 400 else None
        recs.append(Rec(rid, at, key, model, api, *tokens, status, latency, error=error, **kw))

    # The big request first: 67.2+ credits on globex's 60-credit day, so the rest of that day goes to extra usage.
    add("req-big", utc(2026, 11, 18, 1, 0, 0), "globex-sub", "gpt-5.5", 200, 125_000, api="responses",
        tokens=(10_000, 2_000, 800_000), stream=True)
    for i in range(186):
        at = START + timedelta(seconds=rng.randrange(span))
        if rng.random() < 0.25:
            at += timedelta(microseconds=rng.randrange(1, 1_000_000))
        if at >= NOW:
            at = NOW - timedelta(seconds=1 + i)
        status = rng.choice(statuses)
        add(f"req-{i:04d}", at, rng.choice(keys), rng.choice(models), status, rng.choice(latencies),
            stream=rng.random() < 0.3)
    # Globex after the big request, same Beijing day (2026-11-18): extra usage.
    for i, hour in enumerate((2, 5, 9, 13)):
        add(f"req-gx-{i}", utc(2026, 11, 18, hour, 30), "globex-eco" if i % 2 else "globex-sub", "gpt-5.4-mini",
            200, 800 + i, api="chat", tokens=(5_000, 1_000, 500))
    add("req-edge-before", EDGE_BEFORE, "acme-sub", "gpt-5.4", 200, 1_234, api="responses", tokens=(1_000, 0, 100))
    add("req-edge-after", EDGE_AFTER, "acme-sub", "gpt-5.4", 201, 2_345, api="chat", tokens=(2_000, 500, 200))
    add("req-claude", utc(2026, 11, 19, 3, 0, 0), "acme-prio", "claude-sonnet-4-5", 200, 3_456, api="claude",
        tokens=(12_345, 6_000, 789), stream=True)
    for i, key in enumerate(("acme-eco", "initech-payg", "globex-sub")):
        add(f"req-tie-{i}", TIE, key, "gpt-5.4-mini", 200, 300 + i, api="responses", tokens=(900, 0, 90))
    add("req-zero-503", utc(2026, 11, 16, 6, 0, 0), "initech-payg", "gpt-5.5", 503, None, api="responses",
        tokens=(0, 0, 0))
    add("req-zero-500", utc(2026, 11, 19, 6, 0, 0), "acme-eco", "gpt-5.5", 500, 90, api="chat", tokens=(0, 0, 0))
    for seq, r in enumerate(recs):
        r.seq = seq
    return recs


def _charge(recs: list[Rec]) -> None:
    """SPEC §5 cost and draw-down, in recording order (counters per subscription and Beijing day)."""
    period_used: dict[tuple[str, str], int] = defaultdict(int)
    day_tokens: dict[tuple[str, str], int] = defaultdict(int)
    extra_left = dict(EXTRA)
    for r in recs:
        pin, pcached, pout = PRICES[r.billed]
        r.cost = math.ceil(((r.input - r.cached) * pin + r.cached * pcached + r.output * pout) * RATIO[r.group])
        if r.sub is None:
            r.payg = r.cost
        else:
            boundary = period_used[(r.sub, r.day)] >= PERIOD_CREDIT[r.sub]
            if boundary and extra_left.get(r.account, 0) > 0:
                r.extra = min(r.cost, extra_left[r.account])
                extra_left[r.account] -= r.extra
            r.plan = r.cost - r.extra
            period_used[(r.sub, r.day)] += r.plan
            day_tokens[(r.sub, r.day)] += r.input + r.output
        parts = [name for name, amount in (("plan", r.plan), ("extra", r.extra), ("payg", r.payg)) if amount]
        r.pool = parts[0] if len(parts) == 1 else "mixed" if parts else "none"
    assert max(day_tokens.values()) < 20_000_000  # no TPD boundary in play


RECS = _generate()
_charge(RECS)
BY_ID = {r.request_id: r for r in RECS}


@dataclass
class World:
    """A database holding RECS, and the ids planctl gave to what the labels name."""

    url: str
    accounts: dict[str, str] = field(default_factory=dict)  # label: id
    subs: dict[str, str] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)  # label: ApiKey row (id, name, prefix, …)

    @property
    def cli(self) -> Cli:
        return Cli(self.url, init=False)

    def key_id(self, label: str) -> str:
        return self.keys[label].id

    def sub_id(self, label: str | None) -> str | None:
        return None if label is None else self.subs[label]

    def label(self, dim: str, rec: Rec) -> str:
        """The health row id of a record for --by dim."""
        return {"group": rec.group, "user": self.accounts[rec.account], "key": self.key_id(rec.key),
                "model": rec.billed}[dim]

    def name(self, dim: str, row_id: str) -> str:
        if dim == "user":
            return {v: k for k, v in self.accounts.items()}[row_id]
        if dim == "key":
            return next(k.name for k in self.keys.values() if k.id == row_id)
        return row_id

    def record_json(self, r: Rec) -> dict[str, Any]:
        return {
            "request_id": r.request_id, "at": iso(r.at), "local_day": r.day,
            "account_id": self.accounts[r.account], "key_id": self.key_id(r.key), "subscription_id": self.sub_id(r.sub),
            "group_name": r.group, "requested_model": r.model, "billed_model": r.billed, "api": r.api,
            "input_tokens": r.input, "cached_tokens": r.cached, "output_tokens": r.output, "cost": cr(r.cost),
            "charged_plan": cr(r.plan), "charged_extra": cr(r.extra), "charged_payg": cr(r.payg), "pool": r.pool,
            "status_code": r.status, "latency_ms": r.latency, "stream": r.stream, "error": r.error,
            "reservation_id": None, "ttfb_ms": None, "upstream": None, "client_request_id": None,
            "session_id": None, "usage_estimated": False, "key_name": self.keys[r.key].name, "account_name": r.account,
        }


def build(url: str) -> World:
    from planctl.metering.recording import UsageInput, record
    from planctl.services import accounts, keys
    from planctl.services.audit import Caller
    from planctl.services.database import open_database
    from planctl.services.sales import SaleRequest, sell
    from planctl.store.location import resolve_target

    caller = Caller(actor="tester", command="test")
    db = open_database(resolve_target(url), now=NOW - timedelta(days=30))
    w = World(url)
    try:
        t0 = utc(2026, 11, 1)
        for name, group in (("acme", "default"), ("globex", "default"), ("initech", "priority")):
            w.accounts[name] = accounts.create(db, {"name": name, "default_group": group}, caller=caller, now=t0).id
        pro = sell(db, SaleRequest(kind="buy", account="acme", item="codex-pro-monthly"), caller=caller,
                   now=utc(2026, 11, 10, 4))
        weekly = sell(db, SaleRequest(kind="buy", account="globex", item="codex-weekly"), caller=caller, now=START)
        sell(db, SaleRequest(kind="extra", account="globex", item="extra-200"), caller=caller, now=START)
        sell(db, SaleRequest(kind="topup", account="initech", item="payg-standard", amount=1_000 * CR),
             caller=caller, now=START)
        w.subs = {"pro": pro.subscription.id, "weekly": weekly.subscription.id}
        w.keys = {"acme-sub": pro.key, "globex-sub": weekly.key}
        for label, (acc, sub, group) in KEYS.items():
            if label in w.keys:
                continue
            spec = (keys.KeySpec(name=label, account=acc, payg=True, group=group) if sub is None
                    else keys.KeySpec(name=label, from_plan=w.subs[sub], group=group))
            w.keys[label] = keys.create(db, spec, caller=caller, now=START)[0].key
        for r in RECS:
            got = record(db, catalogs(db), UsageInput(
                request_id=r.request_id, key=w.keys[r.key].id, model=r.model, input_tokens=r.input,
                cached_tokens=r.cached, output_tokens=r.output, status_code=r.status, latency_ms=r.latency,
                api=r.api, stream=r.stream, at=r.at, error=r.error), now=NOW)
            assert not got.duplicate and got.note is None, got
    finally:
        db.dispose()
    return w


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The shared data set: only read it (copy it with `fresh` to change it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANCTL_HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("PLANCTL_ACTOR", "tester")
        if request.param == "sqlite":
            yield build(str(tmp_path_factory.mktemp("reporting") / "planctl.db"))
            return
        with PgSchema() as url:
            yield build(url)


class PgSchema:
    """A PostgreSQL schema of its own, dropped afterwards; entering gives a URL that uses it."""

    def __enter__(self) -> str:
        import psycopg

        assert PG_URL
        self.schema, self.plain = "t_" + secrets.token_hex(6), PG_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(self.plain, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        return pg_schema_url(self.schema)

    def __exit__(self, *exc: Any) -> None:
        import psycopg

        with psycopg.connect(self.plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.schema} CASCADE")


@pytest.fixture
def fresh(world: World, tmp_path: Path) -> Iterator[World]:
    """A private copy of the data set, for tests that change it."""
    if "://" not in world.url:
        copy = tmp_path / "copy.db"
        src, dst = sqlite3.connect(world.url), sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        yield World(str(copy), world.accounts, world.subs, world.keys)
        return
    with PgSchema() as url:
        yield build(url)


# ---------------------------------------------------------------- helpers


def run(w: World, *args: str, when: datetime = NOW) -> Any:
    with freeze_time(when):
        return w.cli(*args)


def ok(w: World, *args: str, when: datetime = NOW) -> Any:
    result = run(w, *args, when=when)
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def js(w: World, *args: str, when: datetime = NOW) -> Any:
    return json.loads(ok(w, *args, "--json", when=when).stdout)


def newest_first(recs: list[Rec]) -> list[str]:
    return [r.request_id for r in sorted(recs, key=lambda r: (r.at, r.seq), reverse=True)]


def where(pred: Callable[[Rec], bool]) -> list[Rec]:
    return [r for r in RECS if pred(r)]


def between(since: datetime | None, until: datetime | None) -> Callable[[Rec], bool]:
    return lambda r: (since is None or r.at >= since) and (until is None or r.at < until)


def usage_ids(w: World, *args: str, when: datetime = NOW) -> list[str]:
    return [row["request_id"] for row in js(w, "usage", "--all", *args, when=when)]


# ---------------------------------------------------------------- the data set as recorded


def test_every_record_is_listed_in_full_newest_first(world: World) -> None:
    rows = js(world, "usage", "--all")
    assert [r["request_id"] for r in rows] == newest_first(RECS)
    assert all(list(r) == RECORD_FIELDS for r in rows)
    assert rows == [world.record_json(BY_ID[r["request_id"]]) for r in rows]
    pools = {r.pool for r in RECS}
    assert pools == {"plan", "extra", "payg", "none"}, pools  # the data set exercises every pool


# ---------------------------------------------------------------- filters

H = timedelta(hours=1)
D = timedelta(days=1)
FILTERS: list[tuple[str, Callable[[World], list[str]], Callable[[World, Rec], bool]]] = [
    ("none", lambda w: [], lambda w, r: True),
    # time: ISO dates are Beijing midnight; date-times with an offset or naive (Beijing); half-open
    ("since-date", lambda w: ["--since", "2026-11-18"], lambda w, r: r.at >= bj("2026-11-18")),
    ("until-date", lambda w: ["--until", "2026-11-18"], lambda w, r: r.at < bj("2026-11-18")),
    ("since-until-dates", lambda w: ["--since", "2026-11-17", "--until", "2026-11-19"],
     lambda w, r: bj("2026-11-17") <= r.at < bj("2026-11-19")),
    ("one-second-before-midnight", lambda w: ["--since", "2026-11-20T15:59:59Z", "--until", "2026-11-20T16:00:00Z"],
     lambda w, r: r.request_id == "req-edge-before"),
    ("from-midnight-utc-form", lambda w: ["--since", "2026-11-20T16:00:00+00:00", "--until", "2026-11-20T16:00:01Z"],
     lambda w, r: r.request_id == "req-edge-after"),
    ("naive-is-beijing", lambda w: ["--since", "2026-11-20 23:59:59", "--until", "2026-11-21 00:00:00"],
     lambda w, r: r.request_id == "req-edge-before"),
    ("offset-form", lambda w: ["--since", "2026-11-21T00:00:00+08:00", "--until", "2026-11-21T08:00:00+08:00"],
     lambda w, r: EDGE_AFTER <= r.at < EDGE_AFTER + 8 * H),
    ("tie-instant", lambda w: ["--since", "2026-11-17T08:00:00Z", "--until", "2026-11-17T08:00:00.000001Z"],
     lambda w, r: r.at == TIE),
    ("since-24h", lambda w: ["--since", "24h"], lambda w, r: r.at >= NOW - 24 * H),
    ("since-3d-until-1d", lambda w: ["--since", "3d", "--until", "1d"], lambda w, r: NOW - 3 * D <= r.at < NOW - D),
    ("since-90m", lambda w: ["--since", "90m"], lambda w, r: r.at >= NOW - 90 * timedelta(minutes=1)),
    ("since-5d", lambda w: ["--since", "5d"], lambda w, r: r.at >= NOW - 5 * D),
    ("since-2w-until-12h", lambda w: ["--since", "2w", "--until", "12h"], lambda w, r: r.at < NOW - 12 * H),
    ("today", lambda w: ["--since", "today"], lambda w, r: r.at >= EDGE_AFTER),
    ("yesterday", lambda w: ["--since", "yesterday", "--until", "today"],
     lambda w, r: EDGE_AFTER - D <= r.at < EDGE_AFTER),
    # model: a catalog model is the billed model (aliases included); an alias name is the requested one
    ("model-billed", lambda w: ["--model", "gpt-5.4"], lambda w, r: r.billed == "gpt-5.4"),
    ("model-billed-mini", lambda w: ["--model", "gpt-5.4-mini"], lambda w, r: r.billed == "gpt-5.4-mini"),
    ("model-requested", lambda w: ["--model", "claude-sonnet-4-5"], lambda w, r: r.model == "claude-sonnet-4-5"),
    ("model-requested-haiku", lambda w: ["--model", "claude-haiku-4-5"], lambda w, r: r.model == "claude-haiku-4-5"),
    # key by id, name, visible prefix of the secret, prefix of the id
    ("key-id", lambda w: ["--key", w.key_id("acme-eco")], lambda w, r: r.key == "acme-eco"),
    ("key-name", lambda w: ["--key", "globex-eco"], lambda w, r: r.key == "globex-eco"),
    ("key-name-subscription", lambda w: ["--key", "Subscription Access - codex-weekly"],
     lambda w, r: r.key == "globex-sub"),
    ("key-secret-prefix", lambda w: ["--key", w.keys["initech-payg"].prefix], lambda w, r: r.key == "initech-payg"),
    ("key-id-prefix", lambda w: ["--key", w.key_id("acme-prio")[:10]], lambda w, r: r.key == "acme-prio"),
    # account (user) by name or id
    ("account-name", lambda w: ["--account", "acme"], lambda w, r: r.account == "acme"),
    ("user-id", lambda w: ["--user", w.accounts["initech"]], lambda w, r: r.account == "initech"),
    ("group", lambda w: ["--group", "priority"], lambda w, r: r.group == "priority"),
    ("group-economy", lambda w: ["--group", "economy"], lambda w, r: r.group == "economy"),
    # status: a code, a class, ok (< 400) or error (>= 400)
    ("status-200", lambda w: ["--status", "200"], lambda w, r: r.status == 200),
    ("status-201", lambda w: ["--status", "201"], lambda w, r: r.status == 201),
    ("status-429", lambda w: ["--status", "429"], lambda w, r: r.status == 429),
    ("status-2xx", lambda w: ["--status", "2xx"], lambda w, r: 200 <= r.status < 300),
    ("status-4xx", lambda w: ["--status", "4xx"], lambda w, r: 400 <= r.status < 500),
    ("status-5xx", lambda w: ["--status", "5xx"], lambda w, r: 500 <= r.status < 600),
    ("status-ok", lambda w: ["--status", "ok"], lambda w, r: r.status < 400),
    ("status-error", lambda w: ["--status", "error"], lambda w, r: r.status >= 400),
    ("api-claude", lambda w: ["--api", "claude"], lambda w, r: r.api == "claude"),
    ("api-chat", lambda w: ["--api", "chat"], lambda w, r: r.api == "chat"),
    ("subscription", lambda w: ["--subscription", w.subs["weekly"]], lambda w, r: r.sub == "weekly"),
    # combinations (README and help examples among them)
    ("today-5xx", lambda w: ["--since", "today", "--status", "5xx"],
     lambda w, r: r.at >= EDGE_AFTER and r.status >= 500),
    ("group-error-since", lambda w: ["--group", "priority", "--status", "error", "--since", "2026-11-18"],
     lambda w, r: r.group == "priority" and r.status >= 400 and r.at >= bj("2026-11-18")),
    ("key-model-api", lambda w: ["--key", "acme-eco", "--model", "gpt-5.4-mini", "--api", "responses"],
     lambda w, r: r.key == "acme-eco" and r.billed == "gpt-5.4-mini" and r.api == "responses"),
    ("account-yesterday", lambda w: ["--account", "globex", "--since", "yesterday", "--until", "today"],
     lambda w, r: r.account == "globex" and EDGE_AFTER - D <= r.at < EDGE_AFTER),
    ("sub-model-requested-status", lambda w: ["--subscription", w.subs["pro"], "--model", "claude-haiku-4-5",
                                              "--status", "ok"],
     lambda w, r: r.sub == "pro" and r.model == "claude-haiku-4-5" and r.ok),
    ("user-group-since-until", lambda w: ["--user", "acme", "--group", "economy", "--since", "2026-11-16T12:00:00Z",
                                          "--until", "2026-11-19T12:00:00Z"],
     lambda w, r: r.account == "acme" and r.group == "economy"
     and utc(2026, 11, 16, 12) <= r.at < utc(2026, 11, 19, 12)),
    ("nothing", lambda w: ["--account", "initech", "--subscription", w.subs["pro"]], lambda w, r: False),
]


@pytest.mark.parametrize("name,args,pred", FILTERS, ids=[f[0] for f in FILTERS])
def test_filters_select_exactly_the_matching_records_newest_first(
        world: World, name: str, args: Callable[[World], list[str]], pred: Callable[[World, Rec], bool]) -> None:
    expected = newest_first(where(lambda r: pred(world, r)))
    if name not in ("nothing",):
        assert expected, "each filter case must select something"
    assert usage_ids(world, *args(world)) == expected


def test_filter_cases_do_not_select_everything() -> None:
    """Guard the cases above: each narrowing filter leaves records out."""
    for name, _, pred in FILTERS[1:]:
        assert len(where(lambda r: pred(None, r))) < len(RECS), name  # type: ignore[arg-type]


# ---------------------------------------------------------------- today and yesterday at Beijing midnight


@pytest.mark.parametrize("when,args,pred", [
    # at 00:00:00 Beijing exactly, "today" has just begun: the record one second earlier is yesterday's
    (EDGE_AFTER, ["--since", "today"], lambda r: r.at >= EDGE_AFTER),
    (EDGE_AFTER, ["--since", "yesterday", "--until", "today"], lambda r: EDGE_AFTER - D <= r.at < EDGE_AFTER),
    (EDGE_AFTER, ["--until", "today", "--since", "2026-11-20T15:00:00Z"],
     lambda r: utc(2026, 11, 20, 15) <= r.at < EDGE_AFTER),
    # one second earlier, 23:59:59 Beijing: today is still 2026-11-20
    (EDGE_BEFORE, ["--since", "today", "--until", "tomorrow"], lambda r: EDGE_AFTER - D <= r.at < EDGE_AFTER),
    (EDGE_BEFORE, ["--since", "today"], lambda r: r.at >= EDGE_AFTER - D),
    (EDGE_BEFORE, ["--since", "yesterday", "--until", "today"], lambda r: EDGE_AFTER - 2 * D <= r.at < EDGE_AFTER - D),
    (EDGE_BEFORE + timedelta(microseconds=999_999), ["--since", "today"], lambda r: r.at >= EDGE_AFTER - D),
    # --tz moves the natural day: at 16:00 UTC, "today" in UTC began 16 hours ago
    (EDGE_AFTER, ["--tz", "UTC", "--since", "today"], lambda r: r.at >= utc(2026, 11, 20)),
    (EDGE_AFTER, ["--tz", "UTC", "--since", "yesterday", "--until", "today"],
     lambda r: utc(2026, 11, 19) <= r.at < utc(2026, 11, 20)),
], ids=["today-at-midnight", "yesterday-at-midnight", "until-today-at-midnight", "today-until-tomorrow-before",
        "today-before-midnight", "yesterday-before-midnight", "today-last-microsecond", "tz-utc-today",
        "tz-utc-yesterday"])
def test_today_and_yesterday_turn_at_beijing_midnight(world: World, when: datetime, args: list[str],
                                                      pred: Callable[[Rec], bool]) -> None:
    tz_args, rest = (args[:2], args[2:]) if args[0] == "--tz" else ([], args)
    rows = [r["request_id"] for r in js(world, *tz_args, "usage", "--all", *rest, when=when)]
    assert rows == newest_first(where(pred))
    assert rows


def test_today_sum_and_health_agree_with_the_listing_at_midnight(world: World) -> None:
    """--since today means the same instant in every command (half-open ranges)."""
    for when in (EDGE_BEFORE, EDGE_AFTER, NOW):
        recs = where(lambda r: r.at >= bj(when.astimezone(BJ).date().isoformat()))
        assert js(world, "usage", "--since", "today", "--sum", when=when)["requests"] == len(recs)
        assert js(world, "health", "--since", "today", when=when)["totals"]["requests"] == len(recs)
        assert len(usage_ids(world, "--since", "today", when=when)) == len(recs)


# ---------------------------------------------------------------- one request


def test_request_id_prints_the_one_record_in_full(world: World) -> None:
    for rid in ("req-claude", "req-big", "req-zero-503", "req-edge-after"):
        assert js(world, "usage", "--request-id", rid) == world.record_json(BY_ID[rid])
    record = js(world, "usage", "--request-id", "req-claude")
    assert list(record) == RECORD_FIELDS
    assert record["requested_model"] == "claude-sonnet-4-5" and record["billed_model"] == "gpt-5.4"
    assert record["cost"] == cr(BY_ID["req-claude"].cost) == record["charged_plan"]
    line = ok(world, "usage", "--request-id", "req-big", "--jsonl").stdout
    assert line.count("\n") == 1 and json.loads(line) == world.record_json(BY_ID["req-big"])
    table = ok(world, "usage", "--request-id", "req-claude").stdout
    assert "req-claude" in table and "claude-sonnet-4-5" in table
    assert f"{BY_ID['req-claude'].cost / CR:.2f}" in table


@pytest.mark.parametrize("extra", [[], ["--json"], ["--csv"]])
def test_unknown_request_id_exits_3(world: World, extra: list[str]) -> None:
    result = run(world, "usage", "--request-id", "req-nope", *extra)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "req-nope" in result.stderr


@pytest.mark.parametrize("args, named", [
    (["usage", "--group", "priorty"], "unknown group 'priorty'"),
    (["health", "--group", "priorty", "--since", "30d"], "unknown group 'priorty'"),
    (["usage", "--model", "gpt-5.44", "--json"], "unknown model 'gpt-5.44'"),
    (["health", "--by", "key", "--model", "gpt-5.44"], "unknown model 'gpt-5.44'"),
])
def test_a_mistyped_group_or_model_is_refused_not_answered_with_nothing(
        world: World, args: list[str], named: str) -> None:
    result = run(world, *args)
    assert result.exit_code == 3 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and named in result.stderr


def test_a_model_that_left_the_catalog_still_filters_its_usage(fresh: World) -> None:
    """Records and rollups outlive a catalog entry: a model they know is not refused."""
    from sqlalchemy import text

    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    before = js(fresh, "usage", "--model", "gpt-5.4-mini", "--all")
    db = open_database(resolve_target(fresh.url), now=NOW)
    try:
        with db.write() as session:
            session.execute(text("DELETE FROM model_aliases WHERE model_id = 'gpt-5.4-mini'"))
            session.execute(text("DELETE FROM models WHERE id = 'gpt-5.4-mini'"))
    finally:
        db.dispose()
    assert before and js(fresh, "usage", "--model", "gpt-5.4-mini", "--all") == before
    assert run(fresh, "usage", "--model", "claude-haiku-4-5").exit_code == 0  # still billed through claude*


# ---------------------------------------------------------------- order and paging


def _pages(w: World, limit: int, *args: str) -> list[list[str]]:
    pages: list[list[str]] = []
    after: list[str] = []
    while True:
        page = [r["request_id"] for r in js(w, "usage", "--limit", str(limit), *after, *args)]
        assert len(page) <= limit
        if not page:
            return pages
        pages.append(page)
        after = ["--after", page[-1]]


def test_paging_with_after_covers_every_row_exactly_once(world: World) -> None:
    order = newest_first(RECS)
    first_tie = next(i for i, rid in enumerate(order) if rid.startswith("req-tie-"))
    for limit in (7, first_tie + 1, first_tie + 2, 1000):  # page ends inside the three records sharing one instant
        pages = _pages(world, limit)
        assert [rid for page in pages for rid in page] == order
        assert all(len(page) == limit for page in pages[:-1])
    assert [rid for rid in order if rid.startswith("req-tie-")] == ["req-tie-2", "req-tie-1", "req-tie-0"]


def test_paging_keeps_the_filter(world: World) -> None:
    pages = _pages(world, 5, "--group", "default", "--since", "2026-11-16", "--status", "ok")
    assert [rid for page in pages for rid in page] == newest_first(
        where(lambda r: r.group == "default" and r.at >= bj("2026-11-16") and r.ok))


def test_default_limit_is_50_newest(world: World) -> None:
    assert [r["request_id"] for r in js(world, "usage")] == newest_first(RECS)[:50]
    assert [r["request_id"] for r in js(world, "usage", "--limit", "3", "--model", "gpt-5.5")] == newest_first(
        where(lambda r: r.billed == "gpt-5.5"))[:3]


def test_after_an_unknown_request_id_exits_3(world: World) -> None:
    result = run(world, "usage", "--after", "req-nope", "--json")
    assert result.exit_code == 3 and result.stdout == ""


# ---------------------------------------------------------------- output shapes


def test_jsonl_is_one_record_per_line(world: World) -> None:
    out = ok(world, "usage", "--all", "--jsonl", "--group", "economy").stdout
    lines = out.splitlines()
    expected = newest_first(where(lambda r: r.group == "economy"))
    assert [json.loads(line)["request_id"] for line in lines] == expected
    assert all(json.loads(line) == world.record_json(BY_ID[json.loads(line)["request_id"]]) for line in lines)
    assert out.endswith("\n")


def test_csv_has_a_header_and_exact_credit(world: World) -> None:
    out = ok(world, "usage", "--all", "--csv").stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == CSV_HEADER
    assert [r[1] for r in rows[1:]] == newest_first(RECS)
    for row in rows[1:]:
        r = BY_ID[row[1]]
        assert row == [iso(r.at), r.request_id, world.keys[r.key].name, r.account, world.key_id(r.key), r.billed, r.api, str(r.status), str(r.input),
                       str(r.cached), str(r.output), cr(r.cost), r.pool, "" if r.latency is None else str(r.latency)]
    assert out.count("\n") == len(RECS) + 1


def test_empty_results(world: World) -> None:
    args = ("usage", "--since", "2026-12-01")
    assert js(world, *args) == []
    assert ok(world, *args, "--jsonl").stdout == ""
    assert list(csv.reader(io.StringIO(ok(world, *args, "--csv").stdout))) == [CSV_HEADER]
    table = ok(world, *args)
    assert table.stdout == "" and "no results" in table.stderr


def test_table_lists_rows_for_people(world: World) -> None:
    out = ok(world, "usage", "--limit", "3").stdout
    for rid in newest_first(RECS)[:3]:
        assert rid in out
    assert newest_first(RECS)[3] not in out


# ---------------------------------------------------------------- --sum


def sums(recs: list[Rec]) -> dict[str, Any]:
    return {
        "requests": len(recs), "ok": sum(r.ok for r in recs), "input_tokens": sum(r.input for r in recs),
        "cached_tokens": sum(r.cached for r in recs), "output_tokens": sum(r.output for r in recs),
        "consumption": cr(sum(r.cost for r in recs)),
        "by_pool": {"plan": cr(sum(r.plan for r in recs)), "extra": cr(sum(r.extra for r in recs)),
                    "payg": cr(sum(r.payg for r in recs))},
    }


SUM_CASES = [
    ("everything", [], lambda r: True),
    ("whole-days", ["--since", "2026-11-16", "--until", "2026-11-20"],
     lambda r: bj("2026-11-16") <= r.at < bj("2026-11-20")),
    ("head-days-tail", ["--since", "2026-11-15T07:30:00Z", "--until", "2026-11-20T15:59:59Z"],
     lambda r: utc(2026, 11, 15, 7, 30) <= r.at < EDGE_BEFORE),
    ("within-a-day", ["--since", "2026-11-18T00:00:00Z", "--until", "2026-11-18T12:00:00Z"],
     lambda r: utc(2026, 11, 18) <= r.at < utc(2026, 11, 18, 12)),
    ("exact-status", ["--since", "2026-11-16", "--until", "2026-11-20", "--status", "429"],
     lambda r: bj("2026-11-16") <= r.at < bj("2026-11-20") and r.status == 429),
    ("status-class", ["--since", "2026-11-16", "--until", "2026-11-20", "--status", "error"],
     lambda r: bj("2026-11-16") <= r.at < bj("2026-11-20") and not r.ok),
    ("requested-model", ["--model", "claude-haiku-4-5", "--since", "2026-11-15"],
     lambda r: r.model == "claude-haiku-4-5"),
    ("billed-model-days", ["--model", "gpt-5.4", "--since", "2026-11-15", "--until", "2026-11-21"],
     lambda r: r.billed == "gpt-5.4" and r.at < EDGE_AFTER),
    ("extra-day", ["--account", "globex", "--since", "2026-11-18", "--until", "2026-11-19"],
     lambda r: r.account == "globex" and r.day == "2026-11-18"),
    ("payg", ["--key", "initech-payg", "--since", "3d"], lambda r: r.key == "initech-payg" and r.at >= NOW - 3 * D),
    ("group-api", ["--group", "priority", "--api", "claude", "--since", "2026-11-15"],
     lambda r: r.group == "priority" and r.api == "claude"),
    ("today", ["--since", "today"], lambda r: r.at >= EDGE_AFTER),
    ("none", ["--since", "2026-12-01"], lambda r: False),
]


@pytest.mark.parametrize("name,args,pred", SUM_CASES, ids=[c[0] for c in SUM_CASES])
def test_sum_totals_the_filter(world: World, name: str, args: list[str], pred: Callable[[Rec], bool]) -> None:
    assert js(world, "usage", "--sum", *args) == sums(where(pred))


def test_sum_of_one_request_and_as_csv(world: World) -> None:
    assert js(world, "usage", "--sum", "--request-id", "req-big") == sums([BY_ID["req-big"]])
    expected = sums(where(lambda r: r.group == "economy"))
    rows = list(csv.reader(io.StringIO(ok(world, "usage", "--sum", "--group", "economy", "--csv").stdout)))
    assert rows == [
        ["requests", "ok", "input_tokens", "cached_tokens", "output_tokens", "consumption", "pool_plan", "pool_extra",
         "pool_payg"],
        [str(expected[k]) for k in ("requests", "ok", "input_tokens", "cached_tokens", "output_tokens")]
        + [expected["consumption"], *expected["by_pool"].values()],
    ]
    table = ok(world, "usage", "--sum", "--group", "economy").stdout
    assert str(expected["requests"]) in table and f"{Decimal(expected['consumption']):.2f}" in table


# ---------------------------------------------------------------- health


def bucket_bound(ms: int) -> int:
    """The upper bound of the histogram bucket holding `ms` (bounds inclusive; above the last: last + 1)."""
    return next((b for b in BOUNDS if ms <= b), BOUNDS[-1] + 1)


def p95(latencies: list[int]) -> int | None:
    """Nearest rank: the ceil(0.95·n)-th smallest."""
    if not latencies:
        return None
    rank = math.ceil(Fraction(95, 100) * len(latencies))
    return sorted(latencies)[rank - 1]


def expected_row(row_id: str | None, name: str, recs: list[Rec], *, exact: bool,
                 min_success: Fraction = Fraction(95), max_p95: int = 10_000) -> dict[str, Any]:
    n = len(recs)
    success = Fraction(sum(r.ok for r in recs) * 100, n) if n else None
    inp, cached = sum(r.input for r in recs), sum(r.cached for r in recs)
    lat = [r.latency for r in recs if r.latency is not None]
    q = p95(lat)
    if q is not None and not exact:
        q = bucket_bound(q)
    status = "ok"
    if success is not None and success < min_success:
        status = "failing"
    elif q is not None and q > max_p95:
        status = "slow"
    return {
        "id": row_id, "name": name, "requests": n, "success_rate": success,
        "consumption": cr(sum(r.cost for r in recs)),
        "cache_hit_rate": Fraction(cached * 100, inp) if inp else None,
        "avg_latency_ms": Fraction(sum(lat), len(lat)) if lat else None,
        "p95_latency_ms": q, "p95_exact": exact,
        "last_request_at": iso(max(r.at for r in recs)) if recs else None, "status": status,
    }


def expected_health(w: World, dim: str, recs: list[Rec], *, exact: bool, **thresholds: Any) -> dict[str, Any]:
    by: dict[str, list[Rec]] = defaultdict(list)
    for r in recs:
        by[w.label(dim, r)].append(r)
    return {"rows": {k: expected_row(k, w.name(dim, k), v, exact=exact, **thresholds) for k, v in by.items()},
            "totals": expected_row(None, "TOTAL", recs, exact=exact, **thresholds)}


def assert_row(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert list(actual) == HEALTH_FIELDS
    for name, places in (("success_rate", 2), ("cache_hit_rate", 2), ("avg_latency_ms", 1)):
        value, want = actual.pop(name), expected[name]
        if want is None:
            assert value is None, name
        else:  # a display ratio rounded to `places` decimals
            assert abs(Fraction(str(value)) - want) <= Fraction(1, 2 * 10 ** places) + Fraction(1, 10 ** 9), \
                (name, value, float(want), expected["id"])
    assert actual == {k: v for k, v in expected.items() if k in actual}


def assert_health(w: World, data: dict[str, Any], dim: str, recs: list[Rec], *, exact: bool, **thresholds: Any) -> None:
    expected = expected_health(w, dim, recs, exact=exact, **thresholds)
    assert list(data) == ["by", "rows", "totals"] and data["by"] == dim
    assert sorted(r["id"] for r in data["rows"]) == sorted(expected["rows"])
    for row in data["rows"]:
        assert_row(row, expected["rows"][row["id"]])
    assert_row(data["totals"], expected["totals"])
    requests = [r["requests"] for r in data["rows"]]
    assert requests == sorted(requests, reverse=True)  # --sort requests by default


HEALTH_RANGES = [
    # (id, args, records, p95 exact?)
    ("all-raw", [], lambda r: True, True),
    ("within-two-days-raw", ["--since", "2026-11-18T06:00:00Z", "--until", "2026-11-19T06:00:00Z"],
     lambda r: utc(2026, 11, 18, 6) <= r.at < utc(2026, 11, 19, 6), True),
    ("whole-days-rollups", ["--since", "2026-11-16", "--until", "2026-11-20"],
     lambda r: bj("2026-11-16") <= r.at < bj("2026-11-20"), False),
    ("head-days-tail", ["--since", "2026-11-15T07:30:00Z", "--until", "2026-11-20T15:59:59Z"],
     lambda r: utc(2026, 11, 15, 7, 30) <= r.at < EDGE_BEFORE, False),
    ("since-yesterday-open", ["--since", "yesterday"], lambda r: r.at >= EDGE_AFTER - D, False),
    # an open range that starts today has no whole day behind it: read raw, exact like "--until now"
    ("since-10h-open", ["--since", "10h"], lambda r: r.at >= NOW - timedelta(hours=10), True),
    ("since-10h-until-now", ["--since", "10h", "--until", "now"], lambda r: NOW - timedelta(hours=10) <= r.at < NOW,
     True),
    ("since-today-open", ["--since", "today"], lambda r: r.at >= EDGE_AFTER, True),
    ("exact-status-raw", ["--since", "2026-11-16", "--until", "2026-11-20", "--status", "200"],
     lambda r: bj("2026-11-16") <= r.at < bj("2026-11-20") and r.status == 200, True),
    ("status-class-rollups", ["--since", "2026-11-16", "--until", "2026-11-20", "--status", "error"],
     lambda r: bj("2026-11-16") <= r.at < bj("2026-11-20") and not r.ok, False),
    ("requested-model-raw", ["--since", "2026-11-15", "--model", "claude-haiku-4-5"],
     lambda r: r.model == "claude-haiku-4-5", True),
    ("account-api-rollups", ["--since", "2026-11-15", "--until", "2026-11-21", "--account", "acme", "--api", "chat"],
     lambda r: r.account == "acme" and r.api == "chat" and r.at < EDGE_AFTER, False),
]


@pytest.mark.parametrize("dim", ["group", "user", "key", "model"])
@pytest.mark.parametrize("name,args,pred,exact", HEALTH_RANGES, ids=[c[0] for c in HEALTH_RANGES])
def test_health_numbers(world: World, dim: str, name: str, args: list[str], pred: Callable[[Rec], bool],
                        exact: bool) -> None:
    data = js(world, "health", "--by", dim, *args)
    assert_health(world, data, dim, where(pred), exact=exact)


def test_health_filters_by_key_and_group(world: World) -> None:
    data = js(world, "health", "--by", "model", "--key", "acme-prio", "--since", "2026-11-15")
    assert_health(world, data, "model", where(lambda r: r.key == "acme-prio"), exact=False)
    data = js(world, "health", "--by", "key", "--group", "economy", "--subscription", world.subs["pro"])
    assert_health(world, data, "key", where(lambda r: r.group == "economy" and r.sub == "pro"), exact=True)


def test_health_with_tz_reads_other_days_and_still_adds_up(world: World) -> None:
    """--tz UTC: the range is UTC days; rollups (Beijing days) serve the whole ones inside it, raw the ends."""
    data = js(world, "--tz", "UTC", "health", "--by", "group", "--since", "2026-11-16", "--until", "2026-11-20")
    assert_health(world, data, "group", where(between(utc(2026, 11, 16), utc(2026, 11, 20))), exact=False)
    assert js(world, "--tz", "UTC", "usage", "--sum", "--since", "2026-11-16", "--until", "2026-11-20") == sums(
        where(between(utc(2026, 11, 16), utc(2026, 11, 20))))


@pytest.mark.parametrize("name,args,pred,exact", HEALTH_RANGES, ids=[c[0] for c in HEALTH_RANGES])
def test_health_totals_equal_usage_sum(world: World, name: str, args: list[str], pred: Any, exact: bool) -> None:
    total, summed = js(world, "health", "--by", "key", *args)["totals"], js(world, "usage", "--sum", *args)
    assert (total["requests"], total["consumption"]) == (summed["requests"], summed["consumption"])
    assert summed == sums(where(pred))


def test_health_p95_from_rollups_is_the_bucket_bound_of_the_exact_one(world: World) -> None:
    """The same records read raw (exact) and from whole days (bucket upper bound), side by side."""
    days = ["--since", "2026-11-15", "--until", "2026-11-21"]
    rollup = js(world, "health", "--by", "key", *days)
    raw = js(world, "health", "--by", "key", *days, "--status", "ok")  # ok is a class: still rollups
    assert all(not r["p95_exact"] for r in rollup["rows"] + raw["rows"])
    for code_rows in (js(world, "health", "--by", "key", *days, "--status", str(c)) for c in (200, 201)):
        assert all(r["p95_exact"] for r in code_rows["rows"])
    recs = where(lambda r: r.at < EDGE_AFTER)
    for row in rollup["rows"]:
        exact = p95([r.latency for r in recs if world.key_id(r.key) == row["id"] and r.latency is not None])
        assert row["p95_latency_ms"] == bucket_bound(exact)
        assert exact <= row["p95_latency_ms"] or row["p95_latency_ms"] == BOUNDS[-1] + 1 < exact  # "over 120 s"
    assert any(row["p95_latency_ms"] != p95([r.latency for r in recs if world.key_id(r.key) == row["id"]
                                              and r.latency is not None]) for row in rollup["rows"])


def test_health_of_nothing(world: World) -> None:
    data = js(world, "health", "--since", "2026-12-01")
    assert data["rows"] == []
    assert data["totals"] == {"id": None, "name": "TOTAL", "requests": 0, "success_rate": None,
                              "consumption": "0.000000", "cache_hit_rate": None, "avg_latency_ms": None,
                              "p95_latency_ms": None, "p95_exact": True, "last_request_at": None, "status": "ok"}
    result = ok(world, "health", "--since", "2026-12-01")
    assert "no requests" in result.stderr


def test_health_csv_and_table(world: World) -> None:
    args = ("health", "--by", "group", "--since", "2026-11-16", "--until", "2026-11-20")
    data = js(world, *args)
    rows = list(csv.DictReader(io.StringIO(ok(world, *args, "--csv").stdout)))
    assert list(rows[0]) == HEALTH_CSV
    assert [r["id"] for r in rows] == [r["id"] for r in data["rows"]] + [""]
    for got, want in zip(rows, data["rows"] + [data["totals"]]):
        assert got["name"] == want["name"] and got["requests"] == str(want["requests"])
        assert got["consumption"] == want["consumption"] and got["p95_exact"] == "false"
        assert got["p95_latency_ms"] == str(want["p95_latency_ms"]) and got["status"] == want["status"]
    table = ok(world, *args).stdout
    for row in data["rows"]:
        assert row["name"] in table
    assert all(row["p95_latency_ms"] == 120_001 for row in data["rows"])  # every group's p95 in the open bucket
    assert "TOTAL" in table and ">120000" in table and "120001" not in table  # approximate p95 is marked


@pytest.mark.parametrize("ms, exact, shown", [
    (2_000, False, "≤2000"),        # a bucket's upper bound
    (120_000, False, "≤120000"),    # the last bound
    (120_001, False, ">120000"),    # the open bucket: only a lower bound is known
    (130_517, True, "130517"),      # exact over raw records
    (None, False, ""),
])
def test_health_table_marks_an_approximate_p95_by_what_is_known(ms: int | None, exact: bool, shown: str) -> None:
    from planctl.cli.reporting import p95_cell

    assert p95_cell(ms, exact, "" if ms is None else str(ms)) == shown


SORTABLE = ["requests", "success_rate", "consumption", "cache_hit_rate", "avg_latency_ms", "p95_latency_ms",
            "last_request_at", "name"]


def _sort_value(column: str, value: Any) -> Any:
    if column == "consumption":
        return Decimal(value)
    if column == "last_request_at":
        return datetime.fromisoformat(value)
    return value


@pytest.mark.parametrize("column", SORTABLE)
def test_health_sort_is_descending_by_the_column(world: World, column: str) -> None:
    for dim in ("key", "user", "model"):
        rows = js(world, "health", "--by", dim, "--sort", column)["rows"]
        values = [_sort_value(column, r[column]) for r in rows if r[column] is not None]
        assert values == sorted(values, reverse=True), (dim, values)
        assert all(r[column] is None for r in rows[len(values):])  # missing values last


def test_health_sort_by_consumption_is_numeric(world: World) -> None:
    """Consumption strings of different lengths ("84.2…" vs "9.8…") sort as numbers."""
    rows = js(world, "health", "--by", "group", "--sort", "consumption")["rows"]
    spent = {g: sum(r.cost for r in RECS if r.group == g) for g in RATIO}
    assert [r["id"] for r in rows] == sorted(spent, key=spent.__getitem__, reverse=True)


# ---------------------------------------------------------------- rollups equal raw records

SUM_FIELDS = ("requests", "ok", "input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan",
              "charged_extra", "charged_payg", "latency_sum", "latency_count", "buckets", "last_at")
CODES = (200, 201, 404, 429, 500, 503)


def totals(recs: list[Rec]) -> dict[str, Any]:
    """The Aggregate fields, computed from the inputs."""
    lat = [r.latency for r in recs if r.latency is not None]
    buckets = [0] * (len(BOUNDS) + 1)
    for ms in lat:
        buckets[BOUNDS.index(bucket_bound(ms)) if ms <= BOUNDS[-1] else len(BOUNDS)] += 1
    return {"requests": len(recs), "ok": sum(r.ok for r in recs), "input_tokens": sum(r.input for r in recs),
            "cached_tokens": sum(r.cached for r in recs), "output_tokens": sum(r.output for r in recs),
            "cost": sum(r.cost for r in recs), "charged_plan": sum(r.plan for r in recs),
            "charged_extra": sum(r.extra for r in recs), "charged_payg": sum(r.payg for r in recs),
            "latency_sum": sum(lat), "latency_count": len(lat), "buckets": buckets,
            "last_at": max(r.at for r in recs)}


def fields(agg: Any) -> dict[str, Any]:
    return {name: getattr(agg, name) for name in SUM_FIELDS}


@pytest.fixture
def reader(world: World) -> Iterator[Any]:
    from planctl.services import reporting
    from planctl.store.location import resolve_target

    r = reporting.open_reader(resolve_target(world.url), now=NOW)
    yield r
    r.close()


WHOLE_DAYS = [("2026-11-15", "2026-11-21"), ("2026-11-16", "2026-11-18"), ("2026-11-18", "2026-11-19"),
              ("2026-11-20", "2026-11-21")]


@pytest.mark.parametrize("first,last", WHOLE_DAYS)
def test_rollups_equal_raw_records_over_whole_days(world: World, reader: Any, first: str, last: str) -> None:
    from planctl.services.reporting import UsageFilter, aggregate, split_range

    since, until = bj(first), bj(last)
    plan = split_range(since, until, BJ, rollups=True)
    assert plan.raw == [] and plan.days == (date.fromisoformat(first), date.fromisoformat(last))  # rollups only
    recs = where(between(since, until))
    for by in (None, "group", "user", "key", "model"):
        rolled = aggregate(reader, UsageFilter(since=since, until=until), by=by)
        raw: dict[Any, dict[str, Any]] = {}
        for code in CODES:  # an exact status code is never served by rollups
            for k, agg in aggregate(reader, UsageFilter(since=since, until=until, status=str(code)), by=by).items():
                assert agg.p95_exact
                into = raw.setdefault(k, {name: 0 for name in SUM_FIELDS[:-2]} | {
                    "buckets": [0] * (len(BOUNDS) + 1), "last_at": agg.last_at})
                for name in SUM_FIELDS[:-2]:
                    into[name] += getattr(agg, name)
                into["buckets"] = [a + b for a, b in zip(into["buckets"], agg.buckets)]
                into["last_at"] = max(into["last_at"], agg.last_at)
        assert {k: fields(v) for k, v in rolled.items()} == raw, by
        assert all(not agg.p95_exact for agg in rolled.values())
        expected: dict[Any, list[Rec]] = defaultdict(list)
        for r in recs:
            expected[None if by is None else world.label(by, r)].append(r)
        assert {k: fields(v) for k, v in rolled.items()} == {k: totals(v) for k, v in expected.items()}, by


def test_rollup_status_classes_equal_their_codes(world: World, reader: Any) -> None:
    from planctl.services.reporting import UsageFilter, aggregate

    since, until = bj("2026-11-15"), bj("2026-11-21")
    for cls, codes in (("2xx", (200, 201)), ("4xx", (404, 429)), ("5xx", (500, 503)), ("ok", (200, 201)),
                       ("error", (404, 429, 500, 503))):
        rolled = aggregate(reader, UsageFilter(since=since, until=until, status=cls), by="key")
        recs = where(lambda r: since <= r.at < until and r.status in codes)
        by_key: dict[str, list[Rec]] = defaultdict(list)
        for r in recs:
            by_key[world.key_id(r.key)].append(r)
        assert {k: fields(v) for k, v in rolled.items()} == {k: totals(v) for k, v in by_key.items()}, cls


def test_mixed_ranges_add_raw_ends_to_rollup_days(world: World, reader: Any) -> None:
    from planctl.services.reporting import UsageFilter, aggregate, split_range

    for since, until in ((utc(2026, 11, 15, 7, 30, 0, 250_000), EDGE_BEFORE), (utc(2026, 11, 14), EDGE_AFTER),
                         (bj("2026-11-16"), utc(2026, 11, 19, 3)), (utc(2026, 11, 16, 12), NOW),
                         (utc(2026, 11, 17, 1), None)):
        assert split_range(since, until, BJ, rollups=True).days is not None
        for by in (None, "group", "model"):
            got = {k: fields(v) for k, v in aggregate(reader, UsageFilter(since=since, until=until), by=by).items()}
            expected: dict[Any, list[Rec]] = defaultdict(list)
            for r in where(between(since, until)):
                expected[None if by is None else world.label(by, r)].append(r)
            assert got == {k: totals(v) for k, v in expected.items()}, (since, until, by)


def test_usage_daily_rows_are_the_records_grouped_by_day_key_model_api_and_status_class(
        world: World, reader: Any) -> None:
    lat_columns = ", ".join(f"lat_{i}" for i in range(len(BOUNDS) + 1))
    got = {}
    for row in reader.rows(
            "SELECT local_day, key_id, group_name, billed_model, api, status_class, account_id, subscription_id, "
            "requests, input_tokens, cached_tokens, output_tokens, cost, charged_plan, charged_extra, charged_payg, "
            f"latency_sum, latency_count, last_at, {lat_columns} FROM usage_daily"):
        got[tuple(row[:6])] = {
            "account_id": row[6], "subscription_id": row[7],
            **dict(zip(SUM_FIELDS[:11], [row[8], None, *row[9:18]])), "last_at": reader.instant(row[18]),
            "buckets": list(row[19:])}
    groups: dict[tuple[str, ...], list[Rec]] = defaultdict(list)
    for r in RECS:
        groups[(r.day, world.key_id(r.key), r.group, r.billed, r.api, f"{r.status // 100}xx")].append(r)
    expected = {}
    for dims, recs in groups.items():
        t = totals(recs)
        t["ok"] = None
        expected[dims] = {"account_id": world.accounts[recs[0].account], "subscription_id": world.sub_id(recs[0].sub),
                          **t}
    assert got == expected


# ---------------------------------------------------------------- split_range


def _split(since: datetime | None, until: datetime | None, tz: ZoneInfo = BJ, rollups: bool = True) -> Any:
    from planctl.services.reporting import split_range

    plan = split_range(since, until, tz, rollups=rollups)
    return plan.raw, plan.days


def d(text: str) -> date:
    return date.fromisoformat(text)


def test_split_range_aligned_bounds_are_all_rollups() -> None:
    assert _split(bj("2026-11-16"), bj("2026-11-20")) == ([], (d("2026-11-16"), d("2026-11-20")))
    assert _split(bj("2026-11-18"), bj("2026-11-19")) == ([], (d("2026-11-18"), d("2026-11-19")))  # one day


def test_split_range_unaligned_bounds_have_a_raw_head_and_tail() -> None:
    since, until = utc(2026, 11, 15, 7, 30), utc(2026, 11, 20, 1)  # 15:30 and 09:00 Beijing
    assert _split(since, until) == ([(since, bj("2026-11-16")), (bj("2026-11-20"), until)],
                                    (d("2026-11-16"), d("2026-11-20")))
    assert _split(bj("2026-11-16"), until) == ([(bj("2026-11-20"), until)], (d("2026-11-16"), d("2026-11-20")))
    assert _split(since, bj("2026-11-20")) == ([(since, bj("2026-11-16"))], (d("2026-11-16"), d("2026-11-20")))
    one_us = timedelta(microseconds=1)
    assert _split(bj("2026-11-16") - one_us, bj("2026-11-17") + one_us) == (
        [(bj("2026-11-16") - one_us, bj("2026-11-16")), (bj("2026-11-17"), bj("2026-11-17") + one_us)],
        (d("2026-11-16"), d("2026-11-17")))


def test_split_range_without_a_whole_day_is_raw() -> None:
    for since, until in ((utc(2026, 11, 18, 6), utc(2026, 11, 19, 6)),  # spans a midnight, no whole day
                         (bj("2026-11-18"), bj("2026-11-19") - timedelta(microseconds=1)),
                         (bj("2026-11-18") + timedelta(microseconds=1), bj("2026-11-19")),
                         (EDGE_BEFORE, EDGE_AFTER)):
        assert _split(since, until) == ([(since, until)], None)
    assert _split(None, bj("2026-11-19")) == ([(None, bj("2026-11-19"))], None)  # no start: raw
    assert _split(bj("2026-11-16"), bj("2026-11-20"), rollups=False) == ([(bj("2026-11-16"), bj("2026-11-20"))], None)


def test_split_range_open_end_reads_days_through_today_from_rollups() -> None:
    with freeze_time(NOW):
        # no raw tail: rollups are kept at record time, so they hold today's records too
        assert _split(utc(2026, 11, 17, 1), None) == (
            [(utc(2026, 11, 17, 1), bj("2026-11-18"))], (d("2026-11-18"), None))


def test_split_range_in_a_zone_with_dst() -> None:
    ny = ZoneInfo("America/New_York")  # 2026-03-08 has 23 hours; 2026-11-01 has 25
    since, until = utc(2026, 3, 7, 5), utc(2026, 3, 10, 16)  # 03-07 00:00 EST, 03-10 12:00 EDT
    assert _split(since, until, ny) == ([(utc(2026, 3, 10, 4), until)], (d("2026-03-07"), d("2026-03-10")))
    since, until = utc(2026, 10, 31, 10), utc(2026, 11, 2, 5)  # 10-31 06:00 EDT, 11-02 00:00 EST
    assert _split(since, until, ny) == ([(since, utc(2026, 11, 1, 4))], (d("2026-11-01"), d("2026-11-02")))


# ---------------------------------------------------------------- thresholds


@pytest.fixture
def settings_restored(world: World) -> Iterator[World]:
    """The shared data set, with the settings a test changes put back afterwards."""
    keys = ("health_min_success_rate", "health_max_p95_latency_ms", "reset_timezone")
    saved = {k: json.loads(ok(world, "config", "get", k, "--json").stdout) for k in keys}
    try:
        yield world
    finally:
        for k in keys:
            if json.loads(ok(world, "config", "get", k, "--json").stdout) != saved[k]:
                ok(world, "config", "set", k, str(saved[k]["value"]))


def test_health_status_follows_the_configured_thresholds(settings_restored: World) -> None:
    w = settings_restored
    by_key = expected_health(w, "key", RECS, exact=True)["rows"]
    p95s = sorted(row["p95_latency_ms"] for row in by_key.values())
    rates = sorted(row["success_rate"] for row in by_key.values())
    middle_p95, middle_rate = p95s[len(p95s) // 2], rates[len(rates) // 2]
    cases = [
        (None, None, Fraction(95), 10_000),  # defaults
        ("99", None, Fraction(99), 10_000),
        ("0", str(middle_p95), Fraction(0), middle_p95),  # a row exactly at the limit is not slow
        (f"{float(middle_rate):.2f}", str(p95s[0]), Fraction(f"{float(middle_rate):.2f}"), p95s[0]),
    ]
    audited = len(js(w, "audit", "--command", "config set"))
    statuses: set[str] = set()
    for min_rate, max_p95, want_rate, want_p95 in cases:
        if min_rate is not None:
            ok(w, "config", "set", "health_min_success_rate", min_rate)
        if max_p95 is not None:
            ok(w, "config", "set", "health_max_p95_latency_ms", max_p95)
        for dim in ("key", "group"):
            data = js(w, "health", "--by", dim)
            assert_health(w, data, dim, RECS, exact=True, min_success=want_rate, max_p95=want_p95)
            statuses |= {r["status"] for r in data["rows"]}
    assert statuses == {"ok", "failing", "slow"}
    entries = js(w, "audit", "--command", "config set")
    assert len(entries) == audited + 5 and {e["actor"] for e in entries} == {"tester"}


# ---------------------------------------------------------------- prune

CUTOFF = bj("2026-11-18")  # 2026-11-17T16:00Z


def _state(w: World) -> dict[str, Any]:
    """What prune must keep: rollups, and health/--sum over the pruned whole days."""
    from planctl.services import reporting
    from planctl.store.location import resolve_target

    r = reporting.open_reader(resolve_target(w.url), now=NOW)
    try:
        daily = sorted(tuple(row) for row in r.rows("SELECT * FROM usage_daily"))
    finally:
        r.close()
    days = ("--since", "2026-11-15", "--until", "2026-11-18")
    return {"daily": daily, "health": {dim: js(w, "health", "--by", dim, *days) for dim in ("group", "key")},
            "sum": js(w, "usage", "--sum", *days), "all-days": js(w, "usage", "--sum", "--since", "2026-11-15")}


def test_prune_summarises_asks_and_removes_raw_records_only(fresh: World) -> None:
    before = [r for r in RECS if r.at < CUTOFF]
    kept = [r for r in RECS if r.at >= CUTOFF]
    cutoff = "2026-11-17T16:00:00Z"
    summary = {"before": "2026-11-17T16:00:00+00:00", "records": len(before), "oldest": iso(min(r.at for r in before)),
               "newest": iso(max(r.at for r in before))}
    state = _state(fresh)
    assert state["sum"] == sums(before)

    summary.update(reservations=0, reservations_removed=0)  # (reservations: see test_store_meter)
    assert js(fresh, "usage", "prune", "--before", cutoff, "--dry-run") == {**summary, "removed": 0, "dry_run": True}
    result = run(fresh, "usage", "prune", "--before", cutoff)  # no terminal, no --yes: refused
    assert result.exit_code == 2 and result.stdout == ""
    assert f"{len(before)} usage records" in result.stderr and "--yes" in result.stderr
    assert len(usage_ids(fresh)) == len(RECS)
    assert not js(fresh, "audit", "--command", "usage prune")

    assert js(fresh, "usage", "prune", "--before", cutoff, "--yes") == {**summary, "removed": len(before),
                                                                        "dry_run": False}
    assert usage_ids(fresh) == newest_first(kept)
    assert run(fresh, "usage", "--request-id", before[0].request_id).exit_code == 3
    assert _state(fresh) == state  # rollups, health and --sum over the pruned days are unchanged
    assert_health(fresh, state["health"]["group"], "group", before, exact=False)
    assert js(fresh, "usage", "--sum", "--since", "2026-11-15", "--until", "2026-11-18", "--status", "200") == sums([])

    (entry,) = js(fresh, "audit", "--command", "usage prune")
    assert entry["actor"] == "tester" and entry["target"] == "usage"
    assert str(len(before)) in entry["summary"] and "2026-11-17T16:00:00" in entry["summary"]

    again = ok(fresh, "usage", "prune", "--before", cutoff)  # nothing left to remove: nothing to confirm
    assert "removed 0" in again.stderr
    assert len(js(fresh, "audit", "--command", "usage prune")) == 1


def test_prune_before_a_date_means_reset_zone_midnight(world: World) -> None:
    """--before 2026-11-18 is the same instant as `usage --until 2026-11-18`: 00:00 Beijing."""
    expected = len(usage_ids(world, "--until", "2026-11-18"))
    data = js(world, "usage", "prune", "--before", "2026-11-18", "--dry-run")
    assert data["before"] == "2026-11-17T16:00:00+00:00"
    assert data["records"] == expected == len([r for r in RECS if r.at < CUTOFF])


# ---------------------------------------------------------------- the reset zone


def test_rollups_follow_a_changed_reset_zone(settings_restored: World) -> None:
    """Rollup days are natural days of the reset zone: changing the zone must not leave them in the old one.
    Either the change is refused while usage exists, or whole-day totals still equal the raw records."""
    fresh = settings_restored
    result = run(fresh, "config", "set", "reset_timezone", "UTC")
    if result.exit_code != 0:
        assert result.exit_code == 4, result.stderr
        return
    whole_utc_days = ("--since", "2026-11-16", "--until", "2026-11-20")  # now UTC midnights
    assert js(fresh, "usage", "--sum", *whole_utc_days) == sums(where(between(utc(2026, 11, 16), utc(2026, 11, 20))))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,code", [
    (["usage", "--status", "3x"], 2),
    (["usage", "--status", "99"], 2),
    (["usage", "--status", "600"], 2),
    (["usage", "--since", "2026-11-19", "--until", "2026-11-18"], 2),
    (["usage", "--since", "2026-11-19", "--until", "2026-11-19"], 2),
    (["usage", "--since", "last tuesday"], 2),
    (["usage", "--limit", "0"], 2),
    (["usage", "--json", "--csv"], 2),
    (["usage", "--key", "no-such-key"], 3),
    (["usage", "--account", "no-such-account"], 3),
    (["usage", "--sum", "--user", "no-such-account"], 3),
    (["health", "--by", "plan"], 2),
    (["health", "--sort", "colour"], 2),
    (["health", "--key", "no-such-key"], 3),
    (["usage", "prune", "--before", "soon", "--yes"], 2),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_bad_input_is_one_line_and_an_exit_code(world: World, args: list[str], code: int) -> None:
    result = run(world, *args)
    assert result.exit_code == code, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_ambiguous_key_prefix_is_refused(world: World) -> None:
    result = run(world, "usage", "--key", "key_")  # every key id starts so
    assert result.exit_code == 2 and "several" in result.stderr


@pytest.mark.parametrize("ref", ["prefix", "unknown"])
def test_subscription_filter_takes_a_prefix_and_knows_unknown_ids(world: World, ref: str) -> None:
    """SPEC §1: every command that takes an id also takes an unambiguous prefix; an unknown one exits 3."""
    if ref == "prefix":
        assert usage_ids(world, "--subscription", world.subs["weekly"][:8]) == newest_first(
            where(lambda r: r.sub == "weekly"))
    else:
        result = run(world, "usage", "--subscription", "sub_nope")
        assert result.exit_code == 3, result.stdout
