#!/usr/bin/env python3
"""Metering throughput of planctl against raw sqlite3, on this machine.

    python benchmarks/metering.py [--records N] [--quick] [--budget S] [--rounds R] [--import-budget S]
                                  [--only admit|threads|import|cli|pg|statements] [--dir DIR] [--pg URL]

Every planctl figure is printed beside a baseline measured in the same run with
the standard `sqlite3` module doing the equivalent raw statements on a copy of
the same database (same schema, indexes and PRAGMAs: WAL, synchronous=NORMAL,
foreign_keys=ON, BEGIN IMMEDIATE for writes):

1. admit + record, in process (`Meter.admit(..., reserve=)` then
   `Meter.settle(...)`), requests/s on one SQLite file, as the
   median of --rounds rounds of --budget seconds each; one process, then four
   processes (multiprocessing spawn, each with its own database open, each with
   its own key of one subscription with ample credit). Baselines:
     raw 1 txn  one transaction per request: key lookup, conditional debit of
                the subscription, key update, day and key-day counter upserts,
                usage-record insert, ledger insert (the brief's minimum);
     raw 2 txn  statement for statement what planctl does: a hold transaction
                (stale holds, key, catalog stamp, packs, conditional hold,
                reservation and ledger rows), then a settle-and-record
                transaction (stamp, duplicate check, key, reservation settled,
                key and subscription updates, counters, ledger rows, usage
                record, daily rollup): the SQL without planctl's Python.
   Target: >= 2,000 requests/s in one process.
2. `planctl usage import FILE --json` of --records JSON Lines records (default
   1,000,000; --quick 100,000), timed as a subprocess (the `planctl` next to
   this interpreter), with the child's peak RSS (wait4 ru_maxrss), and the
   peak RSS of a 10x smaller file to show memory stays flat. Baseline: a raw
   sqlite3 importer subprocess reading the same file (json.loads per line,
   idempotency check, executemany inserts and aggregated balance/counter
   updates, 2,000 records per transaction). Target: >= 50,000 records/s.
   An import still running after --import-budget seconds is stopped and its
   rate is computed from the records it had committed.
1b. the gateway's shape: THREADS threads of one process, each calling `Meter.admit` (with a
   reservation) then `Meter.settle`, on one SQLite file, for --budget seconds; then the
   database is checked: every settled request has its usage record (0 lost), the
   subscription's consumption equals the sum of its records (0 double-charged), no hold is
   left open, and `db check` is clean. Baseline: raw 2 txn from as many threads, each with
   its own sqlite3 connection. Target: >= 2,000 requests/s.
4. PostgreSQL (with --pg URL: a database of your own; each run makes a schema in it and drops
   it): `Meter.admit` + `settle` from one thread (median latency, target <= 1.5 ms), then
   PG_PROCS processes x PG_THREADS threads spread over PG_SUBS subscriptions (target >= 1,500/s)
   and on one subscription; baseline: raw psycopg issuing the same statements one at a time
   (two transactions per request, as section 1's raw 2 txn).
5. Statements per admit and per settle (SQLite: the sqlite3 trace callback) and round trips
   (PostgreSQL, with --pg: the libpq trace, one per Sync or simple Query the client sends).
3. `planctl authorize --model M --key-file F --json` as a CLI subprocess:
   median wall time over --runs runs, interleaved with `planctl --version`,
   `python -c pass` and a raw sqlite3 key look-up in `python -c`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from common import cpu_model, find_planctl, run_once, usable_cores  # benchmarks/common.py

ADMIT_TARGET = 2_000.0
IMPORT_TARGET = 50_000.0
RESERVE = 50_000  # µcr held per admitted request (0.05 credit)
WORKERS = 4
THREADS = 16  # section 1b: the gateway's metering threads
PG_PROCS, PG_THREADS, PG_SUBS = 4, 8, 8  # section 4
IMPORT_KEYS = 4
MODELS = (("gpt-5.4", "responses"), ("gpt-5.4-mini", "chat"), ("claude-sonnet-4-5", "claude"))
BILLED = {"gpt-5.4": "gpt-5.4", "gpt-5.4-mini": "gpt-5.4-mini", "claude-sonnet-4-5": "gpt-5.4"}
STATUSES = (200,) * 17 + (400, 429, 500)  # mixed, mostly successful
PLAN = {"slug": "bench-ample", "name": "Benchmark Ample", "family": "bench", "tier": 1, "price": "1.00",
        "validity": "1y", "total_credit": "1000000000", "models": ["gpt-5.4", "gpt-5.4-mini"],
        "groups": ["default"], "renewal_window": "1d"}  # no period, no RPD/TPD: nothing is refused


# ---------------------------------------------------------------- machine


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fixture


def setup_template(path: Path | str, since: datetime, subscriptions: int = 1) -> dict[str, Any]:
    """A planctl database with an ample plan, one account, one subscription and its keys."""
    from planctl.services import accounts, catalog, keys, sales, settings
    from planctl.services.audit import Caller
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    caller = Caller("benchmark", "benchmarks/metering.py")
    db = open_database(resolve_target(str(path)), now=since)
    try:
        catalog.create_plan(db, PLAN, caller=caller, now=since)
        account = accounts.create(db, {"name": "bench-co"}, caller=caller, now=since)
        sale = sales.sell(db, sales.SaleRequest(kind="buy", account=account.id, item=PLAN["slug"]),
                          caller=caller, now=since)
        assert sale.subscription is not None and sale.key is not None and sale.secret is not None
        made = keys.create(db, keys.KeySpec(name="bench", from_plan=sale.subscription.id, account=account.id,
                                            quantity=WORKERS + IMPORT_KEYS - 1), caller=caller, now=since)
        with db.read() as session:
            zone = settings.reset_zone(session).key
    finally:
        db.dispose()
    pairs = [(sale.key.id, sale.secret.secret)] + [(c.key.id, c.secret) for c in made]
    db = open_database(resolve_target(str(path)), now=since)
    try:
        with db.tx(write=False) as tx:
            prices = {m: (i, c, o) for m, i, c, o in tx.rows(
                "SELECT id, input_price, cached_price, output_price FROM models")}
            ratio = dict(tx.rows("SELECT name, ratio_ppm FROM groups"))["default"]
        subs = [(sale.subscription.id, sale.key.id, sale.secret.secret)]
        for n in range(1, subscriptions):  # more subscriptions, a key each (section 4 spreads over them)
            other = accounts.create(db, {"name": f"bench-co-{n}"}, caller=caller, now=since)
            more = sales.sell(db, sales.SaleRequest(kind="buy", account=other.id, item=PLAN["slug"]),
                              caller=caller, now=since)
            subs.append((more.subscription.id, more.key.id, more.secret.secret))
    finally:
        db.dispose()
    if not str(path).startswith("postgresql"):
        con = sqlite3.connect(path)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    return {"subscription": sale.subscription.id, "account": account.id, "keys": pairs, "prices": prices,
            "ratio": ratio, "zone": zone, "subscriptions": subs}


def copy_db(template: Path, dest: Path) -> Path:
    src, dst = sqlite3.connect(template), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return dest


# ---------------------------------------------------------------- raw sqlite3 helpers (the baselines)


def raw_connect(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 10000")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    con.execute("PRAGMA foreign_keys = ON")
    return con


def ts(at: datetime) -> str:
    """A UTC instant as planctl stores it on SQLite (naive UTC, microseconds)."""
    return at.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class DayWindows:
    """UTC start of the natural day in the reset zone, memoised per local date."""

    def __init__(self, zone: str) -> None:
        from zoneinfo import ZoneInfo

        self.tz, self.cache = ZoneInfo(zone), {}

    def __call__(self, at: datetime) -> tuple[str, str]:
        local = at.astimezone(self.tz).date()
        hit = self.cache.get(local)
        if hit is None:
            start = datetime(local.year, local.month, local.day, tzinfo=self.tz).astimezone(timezone.utc)
            hit = self.cache[local] = (local.isoformat(), ts(start))
        return hit


def cost_of(prices: tuple[int, int, int], ratio: int, inp: int, cached: int, out: int) -> int:
    per_million = (inp - cached) * prices[0] + cached * prices[1] + out * prices[2]
    return -(-(per_million * ratio) // 1_000_000_000_000)


COUNTER_UPSERT = ("INSERT INTO usage_counters (owner, scope, window_start, requests, tokens, credit, reserved) "
                  "VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (owner, scope, window_start) DO UPDATE SET "
                  "requests = requests + excluded.requests, tokens = tokens + excluded.tokens, "
                  "credit = credit + excluded.credit")
USAGE_INSERT = ("INSERT INTO usage_records (request_id, at, local_day, account_id, key_id, subscription_id, "
                "group_name, requested_model, billed_model, api, input_tokens, cached_tokens, output_tokens, cost, "
                "charged_plan, charged_extra, charged_payg, pool, status_code, latency_ms, stream, error, "
                "reservation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?)")
LEDGER_INSERT = ("INSERT INTO ledger (at, account_id, pool, subscription_id, pack_id, key_id, kind, amount, "
                 "order_id, request_id, reason) VALUES (?, ?, 'plan', ?, NULL, ?, ?, ?, NULL, ?, ?)")


# ---------------------------------------------------------------- 1. admit + record


def request_shape(i: int) -> tuple[str, str, int, int, int, int]:
    model, api = MODELS[i % len(MODELS)]
    status = STATUSES[i % len(STATUSES)]
    inp = 800 + (i * 37) % 3000
    cached = inp // 2 if i % 3 == 0 else 0
    out = 0 if status != 200 else 100 + (i * 53) % 900
    return model, api, inp, cached, out, status


def admit_loop(mode: str, db_path: str, fx: dict[str, Any], slot: int, tag: str, budget: float,
               barrier: Any = None) -> tuple[int, float]:
    """Admit and record requests until `budget` seconds pass; returns (requests, seconds)."""
    key_id, secret = fx["keys"][slot]
    tag = f"{tag}k{slot}"  # request ids are unique across rounds and processes
    if mode == "planctl":
        from planctl.metering import Meter

        meter = Meter.open(db_path)
        one = meter_one(meter, secret, tag)
        close = meter.close
    else:
        con = raw_connect(db_path)
        one = (_raw_one_txn if mode == "raw1" else _raw_two_txn)(con, fx, secret, tag)
        close = con.close
    try:
        for i in range(20):  # warm-up: imports, caches, prepared statements
            one(-1 - i)
        if barrier is not None:
            barrier.wait()
        done, start = 0, time.perf_counter()
        deadline = start + budget
        while True:
            one(done)
            done += 1
            if done % 8 == 0 and time.perf_counter() >= deadline:
                break
        return done, time.perf_counter() - start
    finally:
        close()


def meter_one(meter: Any, secret: str, tag: str) -> Any:
    """One request as the gateway meters it: `Meter.admit` with a reservation, then `settle`."""
    from planctl.metering import Usage

    def one(i: int) -> None:
        model, api, inp, cached, out, status = request_shape(i)
        adm = meter.admit(secret, model, api, reserve=RESERVE)
        if not adm.allowed or not adm.reservation_id:
            raise RuntimeError(f"request refused: {adm.reason} {adm.message}")
        done = meter.settle(adm, Usage(request_id=f"{tag}-{i}", input_tokens=inp, cached_tokens=cached,
                                       output_tokens=out, status_code=status, latency_ms=900))
        if done.duplicate or done.note:
            raise RuntimeError(f"request {tag}-{i} not charged as expected: {done.note}")
    return one


def _raw_one_txn(con: sqlite3.Connection, fx: dict[str, Any], secret: str, tag: str) -> Any:
    """One transaction per request: look-up, conditional debit, counters, usage record, ledger."""
    day = DayWindows(fx["zone"])
    digest = hashlib.sha256(secret.encode()).hexdigest()
    prices, ratio = fx["prices"], fx["ratio"]

    def one(i: int) -> None:
        model, api, inp, cached, out, status = request_shape(i)
        now = datetime.now(timezone.utc)
        at, (local_day, day_start) = ts(now), day(now)
        cost = cost_of(prices[BILLED[model]], ratio, inp, cached, out)
        rid = f"{tag}-{i}"
        con.execute("BEGIN IMMEDIATE")
        try:
            key_id, account_id, sub_id, group, status_k = con.execute(
                "SELECT id, account_id, subscription_id, group_name, status FROM api_keys "
                "WHERE secret_sha256 = ?", (digest,)).fetchone()
            if con.execute("UPDATE subscriptions SET credit_used = credit_used + ? WHERE id = ? AND "
                           "(credit_granted IS NULL OR credit_granted - credit_used - credit_reserved >= ?)",
                           (cost, sub_id, cost)).rowcount != 1:
                raise RuntimeError("credit exhausted")
            con.execute("UPDATE api_keys SET credit_used = credit_used + ?, last_used_at = ? WHERE id = ?",
                        (cost, at, key_id))
            con.execute(COUNTER_UPSERT, (sub_id, "sub-day", day_start, 1, inp + out, cost))
            con.execute(COUNTER_UPSERT, (key_id, "key-day", day_start, 1, 0, cost))
            con.execute(USAGE_INSERT, (rid, at, local_day, account_id, key_id, sub_id, group, model, BILLED[model],
                                       api, inp, cached, out, cost, cost, "plan" if cost else "none", status, 900,
                                       False, None, None))
            if cost:
                con.execute(LEDGER_INSERT, (at, account_id, sub_id, key_id, "debit", -cost, rid, f"usage {model}"))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return one


KEY_JOIN = ("SELECT k.id, k.account_id, k.subscription_id, k.group_name, k.status, k.credit_cap, k.credit_used, "
            "a.payg_balance, s.credit_granted, s.credit_used, s.credit_reserved FROM api_keys k "
            "JOIN accounts a ON a.id = k.account_id LEFT JOIN subscriptions s ON s.id = k.subscription_id WHERE k.")
ROLLUP_UPSERT = ("INSERT INTO usage_daily (local_day, key_id, group_name, billed_model, api, status_class, account_id, "
                 "subscription_id, requests, input_tokens, cached_tokens, output_tokens, cost, charged_plan, "
                 "charged_extra, charged_payg, latency_sum, latency_count, lat_0, lat_1, lat_2, lat_3, lat_4, lat_5, "
                 "lat_6, lat_7, lat_8, lat_9, lat_10, lat_11, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, "
                 "?, 0, 0, ?, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, ?) ON CONFLICT (local_day, key_id, group_name, "
                 "billed_model, api, status_class) DO UPDATE SET requests = usage_daily.requests + 1, "
                 "input_tokens = usage_daily.input_tokens + excluded.input_tokens, "
                 "cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, "
                 "output_tokens = usage_daily.output_tokens + excluded.output_tokens, "
                 "cost = usage_daily.cost + excluded.cost, charged_plan = usage_daily.charged_plan + "
                 "excluded.charged_plan, latency_sum = usage_daily.latency_sum + excluded.latency_sum, "
                 "latency_count = usage_daily.latency_count + 1, lat_3 = usage_daily.lat_3 + 1, "
                 "last_at = max(usage_daily.last_at, excluded.last_at)")


def _raw_two_txn(con: sqlite3.Connection, fx: dict[str, Any], secret: str, tag: str) -> Any:
    """planctl's statements, raw: the same SQL in the same two transactions (a hold, then a
    settle-and-record), with none of planctl's logic around it."""
    day = DayWindows(fx["zone"])
    digest = hashlib.sha256(secret.encode()).hexdigest()
    prices, ratio = fx["prices"], fx["ratio"]
    counter = [0]

    def one(i: int) -> None:
        model, api, inp, cached, out, status = request_shape(i)
        now = datetime.now(timezone.utc)
        at, (local_day, day_start) = ts(now), day(now)
        counter[0] += 1
        res_id = f"res{tag}{os.getpid()}x{counter[0]}"
        # hold
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("SELECT * FROM reservations WHERE status = 'held' AND expires_at <= ? ORDER BY expires_at",
                        (at,)).fetchall()
            key_id, account_id, sub_id, group, *_ = con.execute(KEY_JOIN + "secret_sha256 = ?", (digest,)).fetchone()
            con.execute("SELECT value FROM counters WHERE name = 'catalog-stamp'").fetchone()
            con.execute("SELECT id, credit, used, reserved, expires_at FROM extra_packs WHERE account_id = ? AND "
                        "credit > used ORDER BY CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END, expires_at, id",
                        (account_id,)).fetchall()
            if con.execute("UPDATE subscriptions SET credit_reserved = credit_reserved + ? WHERE id = ? AND "
                           "(credit_granted IS NULL OR credit_granted - credit_used - credit_reserved >= ?)",
                           (RESERVE, sub_id, RESERVE)).rowcount != 1:
                raise RuntimeError("credit exhausted")
            con.execute("INSERT INTO reservations (id, key_id, account_id, subscription_id, pool, amount, holds, "
                        "status, request_id, created_at, expires_at, closed_at) VALUES "
                        "(?, ?, ?, ?, 'plan', ?, ?, 'held', NULL, ?, ?, NULL)",
                        (res_id, key_id, account_id, sub_id, RESERVE, json.dumps({"plan": RESERVE}), at,
                         ts(now + timedelta(minutes=10))))
            con.execute(LEDGER_INSERT, (at, account_id, sub_id, key_id, "reserve", -RESERVE, None,
                                        f"reserve {res_id}"))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        # settle and record
        cost = cost_of(prices[BILLED[model]], ratio, inp, cached, out)
        rid = f"{tag}-{i}"
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("SELECT value FROM counters WHERE name = 'catalog-stamp'").fetchone()
            if con.execute("SELECT request_id FROM usage_records WHERE request_id IN (?)", (rid,)).fetchone():
                raise RuntimeError("duplicate")
            con.execute(KEY_JOIN + "id = ?", (key_id,)).fetchone()
            holds = con.execute("SELECT * FROM reservations WHERE id = ?", (res_id,)).fetchone()[6]
            holds = json.loads(holds) if isinstance(holds, str) else holds  # PostgreSQL: already decoded
            con.execute("UPDATE reservations SET status = 'settled', closed_at = ?, request_id = ? WHERE id = ? "
                        "AND status = 'held'", (at, rid, res_id))
            charged = cost  # ample credit: the whole cost fits
            con.execute("UPDATE api_keys SET credit_used = credit_used + ?, last_used_at = ? WHERE id = ?",
                        (charged, at, key_id))
            con.execute("UPDATE subscriptions SET credit_used = credit_used + ?, credit_reserved = credit_reserved - ? "
                        "WHERE id = ?", (charged, holds["plan"], sub_id))
            con.executemany(COUNTER_UPSERT, [(sub_id, "sub-day", day_start, 1, inp + out, 0),
                                             (key_id, "key-day", day_start, 1, 0, charged)])
            con.executemany(LEDGER_INSERT, [(at, account_id, sub_id, key_id, "release", RESERVE, None,
                                             f"release {res_id}"),
                                            (at, account_id, sub_id, key_id, "debit", -charged, rid,
                                             f"usage {model}")])
            con.execute(USAGE_INSERT, (rid, at, local_day, account_id, key_id, sub_id, group, model, BILLED[model],
                                       api, inp, cached, out, cost, charged, "plan" if charged else "none", status,
                                       900, False, None, res_id))
            con.execute(ROLLUP_UPSERT, (local_day, key_id, group, BILLED[model], api, f"{status // 100}xx",
                                        account_id, sub_id, inp, cached, out, cost, charged, 900, at))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return one


def _worker(mode: str, db_path: str, fx: dict[str, Any], slot: int, tag: str, budget: float, barrier: Any,
            results: Any) -> None:
    try:
        results.put((slot, *admit_loop(mode, db_path, fx, slot, tag, budget, barrier)))
    except BaseException as exc:  # report instead of hanging the parent
        try:
            barrier.abort()
        except Exception:
            pass
        results.put((slot, -1, f"{type(exc).__name__}: {exc}"))


def spawned(count: int, target: Any, args: Any, what: str, timeout: float) -> list[tuple[Any, ...]]:
    """Run `target(*args(slot), barrier, results)` in `count` spawned processes; their results
    (a result whose second item is negative is a failure, its third the reason)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args(slot), barrier, results)) for slot in range(count)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=timeout) for _ in procs]
    for proc in procs:
        proc.join()
    failed = [g for g in got if g[1] < 0]
    if failed:
        sys.exit(f"error: a {what} worker failed: {failed[0][2]}")
    return got


def admit_parallel(mode: str, db_path: str, fx: dict[str, Any], tag: str, budget: float) -> float:
    """Requests/s summed over WORKERS spawned processes, each with its own key and database handle."""
    got = spawned(WORKERS, _worker, lambda slot: (mode, db_path, fx, slot, tag, budget), mode, budget + 120)
    return sum(done / secs for _, done, secs in got)


def bench_admit(fx: dict[str, Any], tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    dbs = {m: str(copy_db(fx["template"], tmp / f"admit-{m}.db")) for m in ("planctl", "raw1", "raw2")}
    out: dict[str, Any] = {"single": {m: [] for m in dbs}, "multi": {m: [] for m in dbs}, "dbs": dbs}
    for r in range(args.rounds):  # round-robin, so machine noise hits planctl and the baselines alike
        for m in dbs:
            say(f"  admit+record, 1 process, {m}, round {r + 1}/{args.rounds} …")
            done, secs = admit_loop(m, dbs[m], fx, 0, f"s{r}", args.budget)
            out["single"][m].append(done / secs)
    for r in range(args.rounds):
        for m in dbs:
            say(f"  admit+record, {WORKERS} processes, {m}, round {r + 1}/{args.rounds} …")
            out["multi"][m].append(admit_parallel(m, dbs[m], fx, f"m{r}", args.budget))
    return out


# ---------------------------------------------------------------- 1b and 4. threads of one process


def run_threads(make_one: Any, n: int, budget: float) -> tuple[int, float, dict[int, int]]:
    """`n` threads, each running `make_one(t)` (which returns `one(i)`) after 3 warm-up calls,
    for `budget` seconds; returns (requests, seconds, requests by thread)."""
    barrier, stop, done, errors = threading.Barrier(n + 1), threading.Event(), {}, []

    def work(t: int) -> None:
        try:
            one = make_one(t)
            for i in range(3):
                one(-1 - i)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        i = 0
        try:
            while not stop.is_set():
                one(i)
                i += 1
        except BaseException as exc:
            errors.append(exc)
        done[t] = i

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    stop.wait(budget) if not errors else None
    stop.set()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        sys.exit(f"error: a thread failed: {type(errors[0]).__name__}: {errors[0]}")
    return sum(done.values()), seconds, done


def verify(location: str, tags: dict[str, int]) -> dict[str, Any]:
    """What section 1b and 4 promise of a run: every settled request recorded (lost), every
    subscription's consumption the sum of its records (double-charged), no hold left open, and
    `db check` clean. `tags`: request id prefix -> requests settled under it (warm-ups included)."""
    from planctl.services.database import check, open_database
    from planctl.store.location import resolve_target

    db = open_database(resolve_target(location), now=datetime.now(timezone.utc))
    try:
        with db.tx(write=False) as tx:
            lost = 0
            for tag, settled in tags.items():
                (found,) = tx.one("SELECT count(*) FROM usage_records WHERE request_id LIKE :p", {"p": tag + "-%"})
                lost += settled - found
            double = tx.one("SELECT count(*) FROM subscriptions s WHERE s.credit_used <> (SELECT COALESCE("
                            "SUM(u.charged_plan), 0) FROM usage_records u WHERE u.subscription_id = s.id)")[0]
            held = tx.one("SELECT count(*) FROM reservations WHERE status = 'held'")[0]
        failed = [r.name for r in check(db) if not r.ok]
    finally:
        db.dispose()
    return {"lost": lost, "double_charged": double, "open_holds": held, "db_check": failed or "clean"}


def bench_threads(fx: dict[str, Any], tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Section 1b: THREADS threads of one process admitting and settling on one SQLite file."""
    from planctl.metering import Meter

    dbs = {m: str(copy_db(fx["template"], tmp / f"threads-{m}.db")) for m in ("planctl", "raw2")}
    out: dict[str, Any] = {"planctl": [], "raw2": [], "tags": {}}
    keys = fx["keys"]
    for r in range(args.rounds):
        for m in dbs:
            say(f"  {THREADS} threads, {m}, round {r + 1}/{args.rounds} …")
            if m == "planctl":
                meter = Meter.open(dbs[m])
                make = lambda t, r=r: meter_one(meter, keys[t % len(keys)][1], f"t{r}x{t}")  # noqa: E731
                try:
                    total, secs, by = run_threads(make, THREADS, args.budget)
                finally:
                    meter.close()
                out["tags"].update({f"t{r}x{t}": n + 3 for t, n in by.items()})
            else:
                cons: list[sqlite3.Connection] = []

                def make(t: int, r: int = r) -> Any:
                    con = raw_connect(dbs[m])
                    cons.append(con)
                    return _raw_two_txn(con, fx, keys[t % len(keys)][1], f"t{r}x{t}")
                total, secs, _ = run_threads(make, THREADS, args.budget)
                for con in cons:
                    con.close()
            out[m].append(total / secs)
    say("  checking the database of the threads …")
    out["verify"] = verify(dbs["planctl"], out["tags"])
    return out


class PgRaw:
    """Section 1's raw 2-txn statements on psycopg, one statement per round trip (server-side binding,
    prepared after a few uses: psycopg's defaults)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    @staticmethod
    def dialect(sql: str) -> str:
        sql = "BEGIN" if sql == "BEGIN IMMEDIATE" else sql.replace("?", "%s")
        for column in ("requests", "tokens", "credit"):  # PostgreSQL wants the target's columns qualified
            sql = sql.replace(f"{column} = {column} +", f"{column} = usage_counters.{column} +")
        return sql.replace("max(usage_daily", "greatest(usage_daily")

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.con.execute(self.dialect(sql), params)

    def executemany(self, sql: str, rows: Any) -> None:
        with self.con.cursor() as cur:
            cur.executemany(self.dialect(sql), rows)

    def close(self) -> None:
        self.con.close()


def pg_schema(base: str, synchronous_commit: str | None = None) -> tuple[str, Any]:
    """A new schema in the database at `base`: its URL (its sessions' synchronous_commit set, when
    given), and a function dropping it."""
    import psycopg

    plain = base.replace("postgresql+psycopg://", "postgresql://")
    name = "bench_" + os.urandom(4).hex()
    with psycopg.connect(plain, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {name}")

    def drop() -> None:
        with psycopg.connect(plain, autocommit=True) as con:
            con.execute(f"DROP SCHEMA {name} CASCADE")
    sep = "&" if "?" in plain else "?"
    sync = f"%20-csynchronous_commit%3D{synchronous_commit}" if synchronous_commit else ""
    return f"{plain.replace('postgresql://', 'postgresql+psycopg://', 1)}{sep}options=-csearch_path%3D{name}{sync}", drop


def _pg_worker(mode: str, url: str, fx: dict[str, Any], slot: int, spread: bool, tag: str, budget: float,
               barrier: Any, results: Any) -> None:
    """One process of section 4: PG_THREADS threads, each on a key of its own subscription (spread)
    or on the keys of one subscription."""
    try:
        barrier.wait()
        if mode == "planctl":
            from planctl.metering import Meter

            meter = Meter.open(url)
            close = meter.close
        else:
            cons: list[PgRaw] = []
            close = lambda: [c.close() for c in cons]  # noqa: E731

        def make(t: int) -> Any:
            n = slot * PG_THREADS + t
            secret = fx["subscriptions"][n % PG_SUBS][2] if spread else fx["keys"][n % len(fx["keys"])][1]
            if mode == "planctl":
                return meter_one(meter, secret, f"{tag}p{slot}x{t}")
            con = PgRaw(url)
            cons.append(con)
            return _raw_two_txn(con, fx, secret, f"{tag}p{slot}x{t}")
        try:
            total, secs, by = run_threads(make, PG_THREADS, budget)
        finally:
            close()
        results.put((slot, total / secs, {f"{tag}p{slot}x{t}": n + 3 for t, n in by.items()}))
    except BaseException as exc:  # report instead of hanging the parent
        results.put((slot, -1, f"{type(exc).__name__}: {exc}"))


def pg_parallel(mode: str, url: str, fx: dict[str, Any], spread: bool, tag: str, budget: float) -> tuple[float, dict]:
    got = spawned(PG_PROCS, _pg_worker, lambda slot: (mode, url, fx, slot, spread, tag, budget),
                  f"{mode} PostgreSQL", budget + 300)
    tags: dict[str, int] = {}
    for g in got:
        tags.update(g[2])
    return sum(g[1] for g in got), tags


def bench_pg(args: argparse.Namespace) -> dict[str, Any]:
    """Section 4, on schemas of their own in the --pg database."""
    from planctl.metering import Meter

    since = datetime.now(timezone.utc) - timedelta(days=7)
    out: dict[str, Any] = {"latency": {"planctl": [], "raw2": []}, "spread": {"planctl": [], "raw2": []},
                           "one": {"planctl": [], "raw2": []}, "tags": {}}
    drops = []
    try:
        urls, fxs = {}, {}
        for m in ("planctl", "raw2"):
            say(f"  PostgreSQL: setting up a schema for {m} …")
            urls[m], drop = pg_schema(args.pg, args.pg_synchronous_commit)
            drops.append(drop)
            fxs[m] = setup_template(urls[m], since, subscriptions=PG_SUBS)
        say("  PostgreSQL: one thread, admit + settle latency …")
        for m in ("planctl", "raw2"):
            if m == "planctl":
                meter = Meter.open(urls[m])
                one, close = meter_one(meter, fxs[m]["keys"][0][1], "lat"), meter.close
            else:
                con = PgRaw(urls[m])
                one, close = _raw_two_txn(con, fxs[m], fxs[m]["keys"][0][1], "lat"), con.close
            try:
                for i in range(20):
                    one(-1 - i)
                deadline = time.perf_counter() + args.budget
                i = 0
                while time.perf_counter() < deadline:
                    t = time.perf_counter()
                    one(i)
                    out["latency"][m].append(time.perf_counter() - t)
                    i += 1
            finally:
                close()
            if m == "planctl":
                out["tags"]["lat"] = i + 20
        for r in range(args.rounds):
            for kind, spread in (("spread", True), ("one", False)):
                for m in ("planctl", "raw2"):
                    say(f"  PostgreSQL: {PG_PROCS} processes x {PG_THREADS} threads, "
                        f"{'spread' if spread else 'one subscription'}, {m}, round {r + 1}/{args.rounds} …")
                    rate, tags = pg_parallel(m, urls[m], fxs[m], spread, f"{kind[0]}{r}", args.budget)
                    out[kind][m].append(rate)
                    if m == "planctl":
                        out["tags"].update(tags)
        say("  PostgreSQL: checking the database …")
        out["verify"] = verify(urls["planctl"], out["tags"])
    finally:
        for drop in drops:
            drop()
    return out


# ---------------------------------------------------------------- 5. statements per call


def count_statements(location: str, key: tuple[str, str]) -> dict[str, Any]:
    """Statements (SQLite) or round trips (PostgreSQL) of one admit and one settle, after a warm-up."""
    from planctl.metering import Meter, Usage

    meter = Meter.open(location)
    try:
        one = meter_one(meter, key[1], "count")
        for i in range(3):
            one(-1 - i)
        connection = meter.db._local.connection.dbapi_connection  # this thread's metering connection
        out: dict[str, Any] = {}
        adm = None

        def admit() -> None:
            nonlocal adm
            adm = meter.admit(key[1], "gpt-5.4", "responses", reserve=RESERVE)

        def settle() -> None:
            meter.settle(adm, Usage(request_id="count-x", input_tokens=100, output_tokens=10))

        for name, call in (("admit", admit), ("settle", settle)):
            if meter.db.dialect == "sqlite":
                seen: list[str] = []
                connection.set_trace_callback(seen.append)
                call()
                connection.set_trace_callback(None)
                out[name] = (len(seen), [s.split()[0] + " " + " ".join(s.split()[1:4]) for s in seen])
            else:
                trace = Path(tempfile.mkstemp(prefix="planctl-trace-")[1])
                with open(trace, "w") as f:
                    connection.pgconn.trace(f.fileno())
                    call()
                    connection.pgconn.untrace()
                sent = [line.split("\t") for line in trace.read_text().splitlines() if "\tF\t" in line]
                trace.unlink()
                trips = [m for m in sent if m[3] in ("Sync", "Query")]
                statements = sum(max(1, m[4].count(";") + 1) if m[3] == "Query" else 0 for m in sent) + sum(
                    1 for m in sent if m[3] == "Bind")
                out[name] = (len(trips), statements)
        return out
    finally:
        meter.close()


# ---------------------------------------------------------------- 2. usage import


def write_jsonl(path: Path, count: int, key_ids: list[str], end: datetime, tag: str) -> int:
    """`count` records over the 48 hours before `end`: several keys, three models, mixed statuses."""
    rnd = random.Random(count)
    span = 48 * 3600 * 1_000_000
    base = end - timedelta(hours=48)
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        lines = []
        for i in range(count):
            model, api = MODELS[rnd.randrange(3)]
            status = STATUSES[rnd.randrange(len(STATUSES))]
            inp = rnd.randrange(50, 8000)
            cached = rnd.randrange(0, inp) if rnd.random() < 0.4 else 0
            out = rnd.randrange(10, 2000) if status == 200 else 0
            at = base + timedelta(microseconds=span * i // count)
            error = "" if status == 200 else f', "error": "upstream {status}"'
            lines.append(
                f'{{"request_id": "{tag}-{i:08d}", "key": "{key_ids[i % len(key_ids)]}", "model": "{model}", '
                f'"api": "{api}", "input_tokens": {inp}, "cached_tokens": {cached}, "output_tokens": {out}, '
                f'"status": {status}, "latency_ms": {rnd.randrange(80, 30000)}, '
                f'"stream": {"true" if i % 2 else "false"}, "time": "{at.isoformat().replace("+00:00", "Z")}"'
                f'{error}}}\n')
            if len(lines) >= 10_000:
                size += f.write("".join(lines))
                lines = []
        size += f.write("".join(lines))
    return size


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a running process, from /proc; 0 when unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_measured(argv: list[str], env: dict[str, str], stdout: Path, budget: float | None,
                 on_timeout: Any = None) -> tuple[float, int, int | None]:
    """(wall seconds, peak RSS of the child in KiB, exit code or None when stopped by the budget).

    The peak is the child's own VmHWM, polled every 20 ms (it only grows, so the last
    reading is the peak). wait4's ru_maxrss is only a fallback: on Linux it also
    counts the parent's image the child was forked from (signal->maxrss survives
    exec), which would hide the child's own figure behind this process's ~80 MB.
    """
    with open(stdout, "wb") as out, open(str(stdout) + ".err", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        stopped, peak = False, 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, peak_rss_kib(proc.pid))
            if budget and not stopped and time.perf_counter() - start > budget:
                if on_timeout:
                    on_timeout()
                proc.send_signal(signal.SIGINT)
                stopped = True
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, peak or usage.ru_maxrss, None if stopped else proc.returncode


def committed_records(db: Path) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM usage_records").fetchone()[0]
    finally:
        con.close()


def import_planctl(planctl: str, db: Path, file: Path, records: int, env: dict[str, str], budget: float | None,
                   tmp: Path) -> dict[str, Any]:
    argv = [planctl, "--db", str(db), "usage", "import", str(file), "--json"]
    result: dict[str, Any] = {"records": records}
    marks: dict[str, Any] = {}

    def before_stop() -> None:  # count what was committed when the budget ran out
        marks["committed"], marks["at"] = committed_records(db), time.perf_counter()

    t0 = time.perf_counter()
    secs, rss, code = run_measured(argv, env, tmp / "import.out", budget, before_stop)
    result.update(seconds=secs, rss_kib=rss, complete=code is not None)
    if code is None:
        result["seconds"] = marks["at"] - t0
        result["new"] = marks["committed"]
        result["rejected"] = 0
        return result
    text = (tmp / "import.out").read_text()
    try:
        data = json.loads(text)
    except ValueError:
        err = Path(str(tmp / "import.out") + ".err").read_text()[-500:]
        sys.exit(f"error: planctl usage import exited {code}: {err.strip()}")
    result.update(new=data["new"], rejected=data["rejected"], duplicate=data["duplicate"],
                  first_rejects=data.get("rejected_lines", [])[:3])
    return result


def import_raw(db: Path, file: Path, records: int, env: dict[str, str], fx_path: Path, tmp: Path,
               budget: float | None) -> dict[str, Any]:
    argv = [sys.executable, os.path.abspath(__file__), "--raw-import", str(db), str(file), str(fx_path)]
    secs, rss, code = run_measured(argv, env, tmp / "raw-import.out", budget)
    if code != 0:
        err = Path(str(tmp / "raw-import.out") + ".err").read_text()[-500:]
        sys.exit(f"error: the raw sqlite3 importer failed ({code}): {err.strip()}")
    data = json.loads((tmp / "raw-import.out").read_text())
    return {"records": records, "seconds": secs, "rss_kib": rss, "complete": True, **data}


def raw_import_main(db_path: str, file: str, fx_path: str, batch_size: int = 2_000) -> int:
    """The baseline importer (runs as its own process): raw sqlite3, 2,000 records per transaction."""
    fx = json.loads(Path(fx_path).read_text())
    prices, ratio, day = fx["prices"], fx["ratio"], DayWindows(fx["zone"])
    con = raw_connect(db_path)
    keys = {row[0]: row for row in con.execute("SELECT id, account_id, subscription_id, group_name FROM api_keys")}
    new = dup = 0
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        nonlocal new, dup
        con.execute("BEGIN IMMEDIATE")
        try:
            ids = [b[0] for b in batch]
            known: set[str] = set()
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                known.update(r[0] for r in con.execute(
                    f"SELECT request_id FROM usage_records WHERE request_id IN ({','.join('?' * len(chunk))})",
                    chunk))
            usage, ledger = [], []
            sub_used: dict[str, int] = {}
            key_used: dict[str, list[Any]] = {}
            counters: dict[tuple[str, str, str], list[int]] = {}
            seen: set[str] = set()
            for (rid, key_id, model, api, inp, cached, out, status, latency, stream, at, error) in batch:
                if rid in known or rid in seen:
                    dup += 1
                    continue
                seen.add(rid)
                _, account_id, sub_id, group = keys[key_id]
                billed = BILLED[model]
                cost = cost_of(prices[billed], ratio, inp, cached, out)
                local_day, day_start = day(at)
                when = ts(at)
                usage.append((rid, when, local_day, account_id, key_id, sub_id, group, model, billed, api, inp,
                              cached, out, cost, cost, "plan" if cost else "none", status, latency, stream,
                              error, None))
                if cost:
                    ledger.append((when, account_id, sub_id, key_id, "debit", -cost, rid, f"usage {model}"))
                sub_used[sub_id] = sub_used.get(sub_id, 0) + cost
                k = key_used.setdefault(key_id, [0, when])
                k[0] += cost
                k[1] = max(k[1], when)
                for owner, scope, tokens in ((sub_id, "sub-day", inp + out), (key_id, "key-day", 0)):
                    c = counters.setdefault((owner, scope, day_start), [0, 0, 0])
                    c[0] += 1
                    c[1] += tokens
                    c[2] += cost
                new += 1
            con.executemany(USAGE_INSERT, usage)
            con.executemany(LEDGER_INSERT, ledger)
            for sub_id, used in sub_used.items():
                con.execute("UPDATE subscriptions SET credit_used = credit_used + ? WHERE id = ?", (used, sub_id))
            for key_id, (used, last) in key_used.items():
                con.execute("UPDATE api_keys SET credit_used = credit_used + ?, last_used_at = max(coalesce("
                            "last_used_at, ''), ?) WHERE id = ?", (used, last, key_id))
            con.executemany(COUNTER_UPSERT, [(o, s, w, *v) for (o, s, w), v in counters.items()])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        batch.clear()

    with open(file, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            at = datetime.fromisoformat(d["time"].replace("Z", "+00:00"))
            batch.append((d["request_id"], d["key"], d["model"], d["api"], d["input_tokens"], d["cached_tokens"],
                          d["output_tokens"], d["status"], d.get("latency_ms"), bool(d.get("stream")), at,
                          d.get("error")))
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()
    con.close()
    print(json.dumps({"new": new, "duplicate": dup, "rejected": 0}))
    return 0


def bench_import(fx: dict[str, Any], tmp: Path, args: argparse.Namespace, planctl: str,
                 env: dict[str, str]) -> dict[str, Any]:
    key_ids = [k for k, _ in fx["keys"][:IMPORT_KEYS]]
    end = datetime.now(timezone.utc).replace(microsecond=0)
    fx_path = tmp / "fixture.json"
    fx_path.write_text(json.dumps({k: v for k, v in fx.items() if k != "template"}, default=str))
    small_n = max(args.records // 10, 1)
    files = {}
    for label, n in (("small", small_n), ("full", args.records)):
        say(f"  writing {n:,} JSON Lines records …")
        t = time.perf_counter()
        path = tmp / f"usage-{label}.jsonl"
        size = write_jsonl(path, n, key_ids, end, f"imp{label}")
        files[label] = (path, n, size)
        say(f"    {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s")
    out: dict[str, Any] = {"files": files}
    say(f"  planctl usage import, {small_n:,} records …")
    out["planctl_small"] = import_planctl(planctl, copy_db(fx["template"], tmp / "import-small.db"),
                                          files["small"][0], small_n, env, None, tmp)
    say(f"  raw sqlite3 import, {small_n:,} records …")
    out["raw_small"] = import_raw(copy_db(fx["template"], tmp / "raw-small.db"), files["small"][0], small_n, env,
                                  fx_path, tmp, None)
    say(f"  planctl usage import, {args.records:,} records (budget "
        f"{'none' if not args.import_budget else f'{args.import_budget:.0f} s'}) …")
    out["planctl_full"] = import_planctl(planctl, copy_db(fx["template"], tmp / "import-full.db"),
                                         files["full"][0], args.records, env, args.import_budget, tmp)
    say(f"  raw sqlite3 import, {args.records:,} records …")
    out["raw_full"] = import_raw(copy_db(fx["template"], tmp / "raw-full.db"), files["full"][0], args.records, env,
                                 fx_path, tmp, None)
    return out


# ---------------------------------------------------------------- 3. authorize as a CLI


def bench_cli(fx: dict[str, Any], tmp: Path, args: argparse.Namespace, planctl: str,
              env: dict[str, str], db: str) -> dict[str, list[float]]:
    key_file = tmp / "key.txt"
    key_file.write_text(fx["keys"][0][1] + "\n")
    key_file.chmod(0o600)
    lookup = ("import hashlib, sqlite3, sys\n"
              "c = sqlite3.connect(sys.argv[1]); d = hashlib.sha256(open(sys.argv[2]).read().strip().encode())"
              ".hexdigest()\n"
              "k = c.execute('SELECT * FROM api_keys WHERE secret_sha256 = ?', (d,)).fetchone()\n"
              "s = c.execute('SELECT * FROM subscriptions WHERE id = ?', (k[2],)).fetchone()\n"
              "c.execute('SELECT * FROM usage_counters WHERE owner IN (?, ?)', (k[0], k[2])).fetchall()\n"
              "print(s[9] - s[10])\n")
    cases = [
        ("planctl authorize", [planctl, "--db", db, "authorize", "--model", "claude-sonnet-4-5", "--api", "claude",
                               "--key-file", str(key_file), "--json"]),
        ("planctl --version", [planctl, "--version"]),
        ("planctl plans list --json (any db command)", [planctl, "--db", db, "plans", "list", "--json"]),
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("python + sqlite3 key look-up", [sys.executable, "-c", lookup, db, str(key_file)]),
    ]

    for _ in range(2):
        for _, argv in cases:
            run_once(argv, env)
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.runs):
        for name, argv in cases:
            times[name].append(run_once(argv, env))
    return times


# ---------------------------------------------------------------- report


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def _filesystem(path: Path) -> str:
    """The type of the file system holding `path` (tmpfs, ext4, …), from /proc/mounts."""
    best, kind = "", "unknown file system"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fs, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fs
    except OSError:
        pass
    return kind


def report(args: argparse.Namespace, fx: dict[str, Any], admit: dict[str, Any] | None, imp: dict[str, Any] | None,
           cli: dict[str, list[float]] | None, started: float, more: dict[str, Any] | None = None) -> None:
    try:
        from planctl import __version__ as version
    except ImportError:
        version = "?"
    import sqlalchemy

    print(f"planctl {version} metering benchmark")
    print(f"machine : {platform.system()} {platform.release()} {platform.machine()}")
    print(f"cpu     : {cpu_model()} ({usable_cores()} cores)")
    print(f"python  : {platform.python_implementation()} {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}")
    print(f"setup   : plan {PLAN['slug']} (total credit {PLAN['total_credit']}, no period, no RPD/TPD), "
          f"1 subscription, {len(fx['keys'])} keys; reset zone {fx['zone']}")
    print(f"files   : {fx['template'].parent} ({_filesystem(fx['template'].parent)})")
    print()
    if admit is not None:
        print(f"1. admit + record with a {RESERVE / 1e6:g}-credit reservation, in process, one SQLite file "
              f"(requests/s, median of {args.rounds} rounds of {args.budget:g} s; min–max)")
        print(f"   {WORKERS} processes = multiprocessing spawn, one database handle each, "
              f"{WORKERS} distinct keys of ONE subscription")
        print(f"   {'':<34}{'1 process':>22}{f'{WORKERS} processes':>22}")
        labels = {"planctl": "planctl Meter.admit + settle",
                  "raw1": "raw sqlite3, 1 txn/request",
                  "raw2": "raw sqlite3, 2 txn/request"}
        for m, label in labels.items():
            cells = []
            for kind in ("single", "multi"):
                v = admit[kind][m]
                cells.append(f"{fmt_rate(statistics.median(v))} ({fmt_rate(min(v))}–{fmt_rate(max(v))})")
            print(f"   {label:<34}{cells[0]:>22}{cells[1]:>22}")
        p1 = statistics.median(admit["single"]["planctl"])
        for kind, name in (("single", "1 process"), ("multi", f"{WORKERS} processes")):
            p = statistics.median(admit[kind]["planctl"])
            r1, r2 = (statistics.median(admit[kind][m]) for m in ("raw1", "raw2"))
            print(f"   {name}: planctl is {r1 / p:.1f}x slower than raw 1 txn, {r2 / p:.1f}x slower than raw 2 txn;"
                  f" {1e6 / p:,.0f} µs per admit+record")
        verdict = "met" if p1 >= ADMIT_TARGET else "MISSED"
        print(f"   target  : >= {ADMIT_TARGET:,.0f}/s in one process: {verdict} ({fmt_rate(p1)}/s); ratio to raw 2 txn "
              f"{p1 / statistics.median(admit['single']['raw2']):.2f}")
        print()
    more = more or {}
    if "threads" in more:
        t = more["threads"]
        print(f"1b. {THREADS} threads of one process, Meter.admit (reservation) then settle, one SQLite file "
              f"(requests/s, median of {args.rounds} rounds of {args.budget:g} s; min–max)")
        for m, label in (("planctl", "planctl Meter, 16 threads"), ("raw2", "raw sqlite3 2 txn, 16 threads")):
            v = t[m]
            print(f"   {label:<34}{fmt_rate(statistics.median(v)):>8} ({fmt_rate(min(v))}–{fmt_rate(max(v))})")
        p = statistics.median(t["planctl"])
        print(f"   ratio to raw 2 txn: {p / statistics.median(t['raw2']):.2f}; after the run: {t['verify']}")
        print(f"   target  : >= {ADMIT_TARGET:,.0f}/s, 0 lost, 0 double-charged, db check clean: "
              f"{'met' if p >= ADMIT_TARGET else 'MISSED'} ({fmt_rate(p)}/s)")
        print()
    if "pg" in more:
        g = more["pg"]
        print(f"4. PostgreSQL ({args.pg.split('@')[-1]}, synchronous_commit "
              f"{args.pg_synchronous_commit or 'as the server has it'}), Meter.admit (reservation) + settle; "
              "baseline raw psycopg, the same statements one per round trip")
        lat = {m: statistics.median(v) * 1000 for m, v in g["latency"].items()}
        print(f"   one thread, median ms per admit+settle: planctl {lat['planctl']:.2f} ({len(g['latency']['planctl'])} "
              f"requests), raw {lat['raw2']:.2f}; ratio raw/planctl time {lat['raw2'] / lat['planctl']:.2f}; "
              f"target <= 1.5 ms: {'met' if lat['planctl'] <= 1.5 else 'MISSED'}")
        for kind, label in (("spread", f"over {PG_SUBS} subscriptions"), ("one", "on one subscription")):
            p, r = (statistics.median(g[kind][m]) for m in ("planctl", "raw2"))
            print(f"   {PG_PROCS} processes x {PG_THREADS} threads {label:<22}: planctl {fmt_rate(p)}/s "
                  f"({'–'.join(fmt_rate(x) for x in (min(g[kind]['planctl']), max(g[kind]['planctl'])))}), "
                  f"raw {fmt_rate(r)}/s, ratio {p / r:.2f}")
        p = statistics.median(g["spread"]["planctl"])
        print(f"   target >= 1,500/s spread: {'met' if p >= 1500 else 'MISSED'} ({fmt_rate(p)}/s); "
              f"after the runs: {g['verify']}")
        print()
    if "statements" in more:
        print("5. statements per call (SQLite: sqlite3 trace, BEGIN and COMMIT included) and round trips "
              "(PostgreSQL: libpq trace)")
        for where, got in more["statements"].items():
            for name, value in got.items():
                if where == "sqlite":
                    print(f"   SQLite     {name:<7}: {value[0]} statements: {'; '.join(value[1])}")
                else:
                    print(f"   PostgreSQL {name:<7}: {value[0]} round trips carrying {value[1]} statements")
        print()
    if imp is not None:
        print("2. planctl usage import FILE --json (JSON Lines; subprocess wall time incl. start-up; "
              "peak RSS = the child's VmHWM)")
        for label in ("small", "full"):
            path, n, size = imp["files"][label]
            print(f"   file {label:<5}: {n:>9,} records, {size / 1e6:,.0f} MB, {IMPORT_KEYS} keys, "
                  "3 models, statuses 200/400/429/500 over 48 h")
        print(f"   {'':<30}{'records':>11}{'seconds':>9}{'records/s':>11}{'peak RSS':>11}  result")
        rows = (("planctl usage import", "planctl_small"), ("raw sqlite3 importer", "raw_small"),
                ("planctl usage import", "planctl_full"), ("raw sqlite3 importer", "raw_full"))
        for label, k in rows:
            r = imp[k]
            rate = r["new"] / r["seconds"] if r["seconds"] else 0
            what = (f"new {r['new']:,}, duplicate {r.get('duplicate', 0):,}, rejected {r['rejected']:,}"
                    if r["complete"] else f"STOPPED by the {args.import_budget:.0f} s budget after "
                                          f"{r['new']:,} committed (rate from those)")
            print(f"   {label:<30}{r['records']:>11,}{r['seconds']:>9.1f}{fmt_rate(rate):>11}"
                  f"{r['rss_kib'] / 1024:>9.0f} MB  {what}")
            if r["rejected"]:
                print(f"     first rejected lines: {r.get('first_rejects')}")
        pf, rf, ps = imp["planctl_full"], imp["raw_full"], imp["planctl_small"]
        prate = pf["new"] / pf["seconds"]
        print(f"   planctl is {(rf['new'] / rf['seconds']) / prate:.1f}x slower than the raw importer; "
              f"{1e6 / prate:,.1f} µs per record")
        growth = pf["rss_kib"] / ps["rss_kib"]
        print(f"   memory  : peak RSS {ps['rss_kib'] / 1024:.0f} MB for {ps['new']:,} records vs "
              f"{pf['rss_kib'] / 1024:.0f} MB for {pf['new']:,} ({growth:.2f}x for "
              f"{pf['new'] / max(ps['new'], 1):.1f}x the records): {'flat' if growth < 1.25 else 'NOT flat'}")
        complete = pf["complete"] and pf["rejected"] == 0 and pf["new"] == pf["records"]
        verdict = "met" if prate >= IMPORT_TARGET else "MISSED"
        print(f"   target  : >= {IMPORT_TARGET:,.0f} records/s: {verdict} ({fmt_rate(prate)}/s"
              f"{'' if complete else ', import incomplete'})")
        print()
    if cli is not None:
        print(f"3. planctl authorize as a CLI subprocess (wall ms, {args.runs} runs each, round-robin after 2 "
              "warm-ups)")
        print(f"   {'command':<44}{'median ms':>10}{'p90 ms':>9}")
        for name, v in cli.items():
            p90 = statistics.quantiles(v, n=10, method="inclusive")[8] if len(v) > 1 else v[0]
            print(f"   {name:<44}{statistics.median(v):>10.1f}{p90:>9.1f}")
        a, b = statistics.median(cli["planctl authorize"]), statistics.median(cli["planctl --version"])
        print(f"   authorize costs {a - b:.1f} ms over planctl --version")
        print()
    print(f"total   : {time.monotonic() - started:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=None,
                        help="records in the import file (default 1,000,000; --quick 100,000)")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 import records and 3 s rounds (unless given explicitly)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per admit+record round (default 5; --quick 3)")
    parser.add_argument("--rounds", type=int, default=3, help="admit+record rounds (default 3)")
    parser.add_argument("--runs", type=int, default=15, help="authorize CLI runs (default 15)")
    parser.add_argument("--import-budget", type=float, default=75.0,
                        help="stop the large planctl import after this many seconds, 0 = never (default 75, "
                             "to keep the default run near 5 minutes on a 2-core machine)")
    parser.add_argument("--only", choices=("admit", "threads", "import", "cli", "pg", "statements"), action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--dir", default=None,
                        help="where the databases go (default: the system temporary directory); "
                             "/dev/shm takes the disk out of the figures, leaving the CPU cost")
    parser.add_argument("--pg", default=os.environ.get("PLANCTL_BENCH_PG"),
                        help="a PostgreSQL database URL of your own for sections 4 and 5 (schemas are made in it "
                             "and dropped); default $PLANCTL_BENCH_PG, none: those parts are skipped")
    parser.add_argument("--pg-synchronous-commit", choices=("on", "off"), default=None,
                        help="synchronous_commit for section 4's sessions (default: the server's); off takes "
                             "the WAL flush per commit out of the figures, leaving the round trips and the CPU")
    parser.add_argument("--raw-import", nargs=3, metavar=("DB", "FILE", "FIXTURE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_import:
        return raw_import_main(*args.raw_import)
    if args.records is None:
        args.records = 100_000 if args.quick else 1_000_000
    if args.budget is None:
        args.budget = 3.0 if args.quick else 5.0
    if args.records < 10 or args.rounds < 1 or args.runs < 1 or args.budget <= 0:
        parser.error("--records must be at least 10, --rounds, --runs and --budget positive")
    parts = set(args.only or ("admit", "threads", "import", "cli", "pg", "statements"))

    planctl = str(find_planctl())
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="planctl-bench-", dir=args.dir))
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PLANCTL_", "_PLANCTL_", "_TYPER_", "COMP_"))}
        env.update({"PLANCTL_HOME": str(tmp / "home"), "NO_COLOR": "1", "COLUMNS": "120", "TERM": "dumb"})
        say("setting up …")
        since = datetime.now(timezone.utc) - timedelta(days=7)
        template = tmp / "template.db"
        fx = setup_template(template, since)
        fx["template"] = template
        admit = imp = cli = None
        more: dict[str, Any] = {}
        if "statements" in parts:
            say("  statements per admit and settle …")
            more["statements"] = {"sqlite": count_statements(str(copy_db(template, tmp / "count.db")), fx["keys"][0])}
            if args.pg:
                url, drop = pg_schema(args.pg)
                try:
                    pfx = setup_template(url, since)
                    more["statements"]["postgresql"] = count_statements(url, pfx["keys"][0])
                finally:
                    drop()
        if "admit" in parts:
            admit = bench_admit(fx, tmp, args)
        if "threads" in parts:
            more["threads"] = bench_threads(fx, tmp, args)
        if "pg" in parts and args.pg:
            more["pg"] = bench_pg(args)
        if "import" in parts:
            imp = bench_import(fx, tmp, args, planctl, env)
        if "cli" in parts:
            say("  planctl authorize CLI …")
            db = admit["dbs"]["planctl"] if admit else str(copy_db(template, tmp / "cli.db"))
            cli = bench_cli(fx, tmp, args, planctl, env, db)
        report(args, fx, admit, imp, cli, started, more)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
