"""What `planctl serve` adds on top of an upstream, beside the upstream alone, in one run.

    .venv/bin/python benchmarks/gateway.py [--requests 400] [--concurrent 32] [--seconds 8] [--peer litellm]

The fake upstream (tests/helpers/fake_upstream.py, its own process, TCP_NODELAY) answers a 4 KB
Responses request with 22 SSE events (or the JSON body); the gateway (`planctl serve`, one
worker, metering on a SQLite file) forwards to it. The load generator is an aiohttp client in
this process; every request reads its whole answer. Printed:

- added latency = gateway − direct, p50 and p99, one client, streaming and not;
- throughput at 32 concurrent streams: requests/s and p50/p99 latency, and the ratio to direct;
- both for the two upstream clients the gateway can use: aiohttp's (the default) and plain
  `httpx.AsyncClient` (PLANCTL_UPSTREAM_CLIENT);
- the Claude route's added latency over the Responses pass-through (first client only): the same
  question as `POST /v1/messages` (`claude-sonnet-4-5`, billed as gpt-5.4 through the sample
  catalog's alias) and as `POST /v1/responses`, interleaved, one client, the same upstream answer;
  target p50 ≤ 0.5 ms more (translating the request, every event and the usage).
- with `--peer litellm` (latency section): LiteLLM's proxy (benchmarks/litellm_peer.py: a pinned
  version from PyPI in its own virtual environment under ~/.cache/planctl-bench, made on first
  use; one worker, no database, a master key, loopback only) forwarding the same
  `POST /v1/responses` to the same upstream, measured the same way in the same run: its added
  latency and throughput, and the ratios planctl/peer (added latency: below 1 is planctl adding
  less; throughput: above 1 is planctl faster).

- production (`--section production`): 1, 2 and 4 workers on one SQLite file at 64 concurrent
  streams, group commit on and off: requests/s and p99 latency added over the upstream alone at
  the same concurrency (target ≥ 1,000 requests/s with 4 workers); with `--postgres URL` (or
  PLANCTL_BENCH_DATABASE_URL) also 4 workers on that PostgreSQL server, in a schema of their own
  that is dropped afterwards; and the settlement journal's cost per request: one client,
  streaming, with the journal and with --no-journal, interleaved.

Everything shares this machine's cores, so the figures are relative to the baseline beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp

import litellm_peer  # benchmarks/litellm_peer.py
from common import cpu_model, find_planctl, usable_cores  # benchmarks/common.py

ROOT = Path(__file__).resolve().parent.parent
UP_KEY = "sk-bench-upstream"
BODY = {"model": "gpt-5.4", "input": [{"role": "user", "content": "x" * 4000}], "max_output_tokens": 1000}
CLAUDE_BODY = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: a server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"error: nothing listens on port {port}")


def setup(db: Path | str, up_port: int) -> str:
    """A plan with room for every request of the run, a key for it, the upstream: the key's secret."""
    sys.path.insert(0, str(ROOT / "src"))
    from planctl.services import accounts, catalog, upstreams
    from planctl.services.audit import Caller
    from planctl.services.database import open_database
    from planctl.services.sales import SaleRequest, sell
    from planctl.store.location import resolve_target

    now = datetime.now(timezone.utc)
    caller = Caller(actor="bench", command="benchmark")
    database = open_database(resolve_target(str(db)), now=now)
    catalog.import_catalog(database, {"plans": [{
        "slug": "bench", "name": "Bench", "family": "bench", "tier": 1, "price": "1.00", "validity": "1mo",
        "total_credit": "10000000", "models": ["gpt-5.4"], "groups": ["default"], "refund_policy": "none"}]},
        caller=caller, now=now - timedelta(days=1))
    accounts.create(database, {"name": "bench"}, caller=caller, now=now)
    secret = sell(database, SaleRequest(kind="buy", account="bench", item="bench"), caller=caller, now=now).secret.secret
    upstreams.add(database, "fake", upstreams.UpstreamSpec(base_url=f"http://127.0.0.1:{up_port}/v1",
                                                           key_env="BENCH_UPSTREAM_KEY"), caller=caller, now=now)
    database.dispose()
    return secret


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], stream: bool,
              body: dict[str, object] = BODY) -> float:
    start = time.perf_counter()
    async with session.post(url, json={**body, "stream": stream}, headers=headers) as answer:
        data = await answer.read()
        if answer.status != 200 or b"event: error" in data:
            raise SystemExit(f"error: {url} answered {answer.status}: {data[-300:]!r}")
    return (time.perf_counter() - start) * 1000


async def sequential(url: str, headers: dict[str, str], stream: bool, n: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm-up: connections, caches
            await one(session, url, headers, stream)
        return [await one(session, url, headers, stream) for _ in range(n)]


async def concurrent(url: str, headers: dict[str, str], c: int, seconds: float) -> tuple[float, list[float]]:
    times: list[float] = []
    connector = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, url, headers, True) for _ in range(c)))
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop:
                times.append(await one(session, url, headers, True))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        return len(times) / (time.perf_counter() - start), times


async def claude_vs_responses(port: int, secret: str, stream: bool, n: int) -> tuple[list[float], list[float]]:
    """The same question through one gateway as a Responses request and as a Claude one, interleaved
    (drift on a shared machine hits both alike)."""
    base, headers = f"http://127.0.0.1:{port}/v1", {"authorization": f"Bearer {secret}"}
    responses: list[float] = []
    claude: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            await one(session, base + "/responses", headers, stream)
            await one(session, base + "/messages", headers, stream, CLAUDE_BODY)
        for _ in range(n):
            responses.append(await one(session, base + "/responses", headers, stream))
            claude.append(await one(session, base + "/messages", headers, stream, CLAUDE_BODY))
    return responses, claude


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def measure(url: str, headers: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for stream in (False, True):
        out["stream" if stream else "plain"] = asyncio.run(sequential(url, headers, stream, args.requests))
    out["load"] = asyncio.run(concurrent(url, headers, args.concurrent, args.seconds))
    return out


def start_gateway(planctl: Path, db: Path | str, kind: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UP_KEY, "PLANCTL_UPSTREAM_CLIENT": kind}
    proc = subprocess.Popen([str(planctl), "--db", str(db), "serve", "--port", str(port), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
    time.sleep(1.0 + 2.0 * workers)  # application start-up of every worker (the port is bound first)
    return proc


def fresh_postgres_schema(url: str) -> str:
    """A new schema on the PostgreSQL server at `url`, and a URL whose connections use it."""
    import psycopg

    schema = f"bench_{os.getpid()}_{int(time.time())}"
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    full = plain.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{full}{'&' if '?' in full else '?'}options=-csearch_path%3D{schema}", schema


def drop_postgres_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def workers_rows(planctl: Path, db: Path | str, label: str, secret: str, worker_counts: list[int], c: int,
                 t0: list[float], args: argparse.Namespace) -> None:
    for workers in worker_counts:
        for group in (True, False):
            port = free_port()
            proc = start_gateway(planctl, db, "aiohttp", port, "--workers", str(workers),
                                 "--group-commit" if group else "--no-group-commit")
            try:
                rps, t = asyncio.run(concurrent(f"http://127.0.0.1:{port}/v1/responses",
                                                {"authorization": f"Bearer {secret}"}, c, args.seconds))
            finally:
                proc.terminate()
                proc.wait(60)
            name = f"{label}, {workers} worker{'s' if workers > 1 else ' '}, group commit {'on ' if group else 'off'}"
            print(f"  {name:<45} {rps:8.0f} {pct(t, 99):9.2f} {pct(t, 99) - pct(t0, 99):+12.2f}")


def production(planctl: Path, db: Path, up_port: int, secret: str, args: argparse.Namespace) -> None:
    """Workers × group commit at 64 concurrent streams (SQLite, and PostgreSQL with --postgres),
    then the journal's cost per request."""
    c = args.production_concurrent
    headers = {"authorization": f"Bearer {secret}"}
    rps0, t0 = asyncio.run(concurrent(f"http://127.0.0.1:{up_port}/v1/responses",
                                      {"authorization": f"Bearer {UP_KEY}"}, c, args.seconds))
    print(f"\n{c} concurrent streams for {args.seconds:g} s                  req/s    p99 ms  added p99 ms")
    print(f"  direct                                        {rps0:8.0f} {pct(t0, 99):9.2f}")
    workers_rows(planctl, db, "SQLite", secret, [int(w) for w in args.workers.split(",")], c, t0, args)
    if args.postgres:
        url, schema = fresh_postgres_schema(args.postgres)
        try:
            pg_secret = setup(url, up_port)
            workers_rows(planctl, url, "PostgreSQL", pg_secret, [4], c, t0, args)
        finally:
            drop_postgres_schema(args.postgres, schema)
    print(f"\njournal cost, one client, streaming, {args.requests} requests each, interleaved (ms)   p50      p99")
    runs: dict[str, list[float]] = {"journal": [], "no journal": []}
    ports = {}
    procs = []
    try:
        for name, flag in (("journal", []), ("no journal", ["--no-journal"])):
            ports[name] = free_port()
            procs.append(start_gateway(planctl, db, "aiohttp", ports[name], *flag))

        async def interleaved() -> None:
            async with aiohttp.ClientSession() as session:
                urls = {name: f"http://127.0.0.1:{port}/v1/responses" for name, port in ports.items()}
                for url in urls.values():
                    for _ in range(20):
                        await one(session, url, headers, True)
                for _ in range(args.requests):
                    for name, url in urls.items():
                        runs[name].append(await one(session, url, headers, True))

        asyncio.run(interleaved())
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
    for name, values in runs.items():
        print(f"  {name:<76} {pct(values, 50):8.2f} {pct(values, 99):8.2f}")
    print(f"  the journal's cost per request (p50)                                         "
          f"{pct(runs['journal'], 50) - pct(runs['no journal'], 50):+8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per case (one client)")
    parser.add_argument("--concurrent", type=int, default=32, help="concurrent streams for the throughput case")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--clients", default="aiohttp,httpx", help="upstream clients to compare")
    parser.add_argument("--section", choices=("all", "latency", "production"), default="all",
                        help="latency: added latency and upstream clients; production: workers, group commit, journal")
    parser.add_argument("--workers", default="1,2,4", help="worker counts of the production section")
    parser.add_argument("--production-concurrent", type=int, default=64, help="concurrent streams there")
    parser.add_argument("--postgres", metavar="URL", default=os.environ.get("PLANCTL_BENCH_DATABASE_URL"),
                        help="production: also 4 workers on this PostgreSQL server (a schema of its own, dropped after)")
    parser.add_argument("--peer", choices=("litellm",), help="also measure this proxy in the latency section")
    args = parser.parse_args()
    planctl = find_planctl()
    print(f"machine : {platform.system()} {platform.release()} {platform.machine()}, "
          f"{cpu_model()} ({usable_cores()} cores), Python {platform.python_version()}")
    print(f"load    : aiohttp {aiohttp.__version__} client in one process; the fake upstream and the gateway "
          "in their own processes\n")
    peer_command = None
    if args.peer == "litellm" and args.section != "production":
        peer_command = litellm_peer.ensure_installed()
    if peer_command:
        print(f"peer    : LiteLLM {litellm_peer.VERSION} proxy from {litellm_peer.VENV}\n")
    up_port = free_port()
    fake = ROOT / "tests" / "helpers" / "fake_upstream.py"
    upstream = subprocess.Popen([sys.executable, str(fake), "--port", str(up_port), "--deltas", "16", "--key", UP_KEY],
                                stdout=subprocess.DEVNULL)
    procs = [upstream]
    try:
        wait_port(up_port, upstream)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.db"
            secret = setup(db, up_port)
            if args.section in ("all", "production"):
                production(planctl, db, up_port, secret, args)
            if args.section == "production":
                return
            direct = measure(f"http://127.0.0.1:{up_port}/v1/responses", {"authorization": f"Bearer {UP_KEY}"}, args)
            results, claude = {}, {}
            for kind in args.clients.split(","):
                port = free_port()
                proc = start_gateway(planctl, db, kind, port)
                procs.append(proc)
                results[kind] = measure(f"http://127.0.0.1:{port}/v1/responses",
                                        {"authorization": f"Bearer {secret}"}, args)
                if not claude:
                    claude = {stream: asyncio.run(claude_vs_responses(port, secret, stream, args.requests))
                              for stream in (False, True)}
                proc.terminate()
                proc.wait(30)
            peer = None
            if peer_command:
                port = free_port()
                proc, log = litellm_peer.start(peer_command, port, up_port, UP_KEY, Path(tmp))
                procs.append(proc)
                litellm_peer.wait_ready(port, proc, log)
                peer = measure(f"http://127.0.0.1:{port}/v1/responses",
                               {"authorization": f"Bearer {litellm_peer.MASTER_KEY}"}, args)
                proc.terminate()
                proc.wait(30)
            report(direct, results, args)
            report_claude(claude, args.clients.split(",")[0], args)
            if peer:
                report_peer(direct, results, peer, args)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


def report(direct: dict[str, object], results: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    print(f"one client, {args.requests} requests each (ms)       p50      p99   added p50  added p99")
    for case, label in (("plain", "non-stream"), ("stream", "stream (22 events)")):
        base = direct[case]
        print(f"  direct           {label:<21} {pct(base, 50):8.2f} {pct(base, 99):8.2f}")
        for kind, res in results.items():
            values = res[case]
            print(f"  gateway/{kind:<8}{label:<21} {pct(values, 50):8.2f} {pct(values, 99):8.2f}"
                  f"   {pct(values, 50) - pct(base, 50):+8.2f}  {pct(values, 99) - pct(base, 99):+8.2f}")
    rps0, t0 = direct["load"]
    print(f"\n{args.concurrent} concurrent streams for {args.seconds:g} s     req/s    p50 ms   p99 ms   vs direct")
    print(f"  direct                         {rps0:8.0f} {statistics.median(t0):8.2f} {pct(t0, 99):8.2f}")
    for kind, res in results.items():
        rps, t = res["load"]
        print(f"  gateway/{kind:<22} {rps:8.0f} {statistics.median(t):8.2f} {pct(t, 99):8.2f}   {rps / rps0:6.1%}")
    print("\n(gateway = planctl serve, 1 worker, admit + settle on SQLite for every request; "
          "aiohttp = aiohttp's client, the default; httpx = plain httpx.AsyncClient)")



def report_claude(claude: dict[bool, tuple[list[float], list[float]]], kind: str, args: argparse.Namespace) -> None:
    print(f"\nClaude route over the Responses pass-through, gateway/{kind}, one client, interleaved, "
          f"{args.requests} each (ms)")
    print("                          responses p50  claude p50   added p50  added p99   target p50 ≤ +0.50")
    for stream, (responses, messages) in claude.items():
        added = pct(messages, 50) - pct(responses, 50)
        print(f"  {'stream (22 events)' if stream else 'non-stream':<22} {pct(responses, 50):13.2f} "
              f"{pct(messages, 50):11.2f} {added:+11.2f} {pct(messages, 99) - pct(responses, 99):+10.2f}   "
              f"{'met' if added <= 0.5 else 'NOT met'}")


def report_peer(direct: dict[str, object], results: dict[str, dict[str, object]], peer: dict[str, object],
                args: argparse.Namespace) -> None:
    print(f"\npeer: LiteLLM {litellm_peer.VERSION} proxy (1 worker, no database), the same POST /v1/responses, "
          "the same run")
    print(f"one client, {args.requests} requests each (ms)       p50      p99   added p50  added p99")
    for case, label in (("plain", "non-stream"), ("stream", "stream (22 events)")):
        base, values = direct[case], peer[case]
        added50, added99 = pct(values, 50) - pct(base, 50), pct(values, 99) - pct(base, 99)
        print(f"  litellm         {label:<21} {pct(values, 50):8.2f} {pct(values, 99):8.2f}"
              f"   {added50:+8.2f}  {added99:+8.2f}")
        for kind, res in results.items():
            mine = res[case]
            print(f"    planctl/litellm, gateway/{kind:<7} added p50 {ratio(pct(mine, 50) - pct(base, 50), added50)}"
                  f"   added p99 {ratio(pct(mine, 99) - pct(base, 99), added99)}")
    rps0, _ = direct["load"]
    rps_peer, t = peer["load"]
    print(f"\n{args.concurrent} concurrent streams for {args.seconds:g} s     req/s    p50 ms   p99 ms   vs direct")
    print(f"  litellm                        {rps_peer:8.0f} {statistics.median(t):8.2f} {pct(t, 99):8.2f}   "
          f"{rps_peer / rps0:6.1%}")
    for kind, res in results.items():
        rps, _ = res["load"]
        print(f"    planctl/litellm, gateway/{kind:<7} req/s {ratio(rps, rps_peer)}")


def ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:6.2f}×" if theirs > 0 else "     n/a"


if __name__ == "__main__":
    main()
