#!/usr/bin/env python3
"""What the Claude API route adds over the Responses pass-through, on this machine.

    python benchmarks/gateway_claude.py [--requests N] [--dir DIR]

One `planctl serve` (a subprocess, on a fresh SQLite file, metering on) in front of the fake
upstream (tests/fake_upstream.py, a subprocess with TCP_NODELAY). One client (stdlib
http.client, keep-alive) sends, interleaved, the same small question as
  responses  POST /v1/responses  {"model": "gpt-5.4", "input": "hi", ...}
  claude     POST /v1/messages   {"model": "claude-sonnet-4-5", "messages": [...], ...}
             (billed as gpt-5.4 through the sample catalog's `claude*` alias),
streaming and not; the upstream gives both the same answer (22 Responses events). Latency is
the whole answer read by the client; the figure of interest is claude − responses at p50,
target ≤ 0.5 ms: the Claude route's translation of the request, of every event and of the
usage, beside everything the two routes share (admission, forwarding, settlement).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, find_planctl, usable_cores  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-upstream-bench"
BODIES = {
    "responses": ("/v1/responses", {"model": "gpt-5.4", "input": "hi", "max_output_tokens": 500}),
    "claude": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 500,
                                "messages": [{"role": "user", "content": "hi"}]}),
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"error: nothing answered on port {port} within {timeout:.0f} s")


def setup(planctl: Path, env: dict[str, str], upstream_port: int) -> str:
    """A subscription with ample credit, its key's secret, and the fake upstream registered."""
    def run(*args: str) -> str:
        proc = subprocess.run([str(planctl), *args], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: planctl {' '.join(args[:3])}: {proc.stderr.strip()[:400]}")
        return proc.stdout

    run("accounts", "create", "bench")
    sold = json.loads(run("buy", "codex-pro-monthly", "--account", "bench", "--payment-method", "alipay", "--json"))
    run("upstreams", "add", "fake", "--base-url", f"http://127.0.0.1:{upstream_port}/v1", "--key-env", "BENCH_UP_KEY")
    return sold["key"]["secret"]


def one(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    conn.request("POST", path, body, headers)
    answer = conn.getresponse()
    data = answer.read()
    elapsed = (time.perf_counter() - start) * 1000
    if answer.status != 200 or b"error" in data[:200]:
        sys.exit(f"error: {path} answered {answer.status}: {data[:300]!r}")
    return elapsed


def measure(port: int, secret: str, requests: int) -> dict[tuple[str, bool], list[float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json", "authorization": f"Bearer {secret}",
               "anthropic-version": "2023-06-01"}
    payloads = {(name, stream): (path, json.dumps({**body, "stream": stream}).encode())
                for name, (path, body) in BODIES.items() for stream in (False, True)}
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in payloads}
    for key, (path, body) in payloads.items():  # warm-up
        for _ in range(20):
            one(conn, path, body, headers)
    for _ in range(requests):
        for key, (path, body) in payloads.items():  # interleaved: drift hits every variant alike
            times[key].append(one(conn, path, body, headers))
    return times


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per variant (default 400)")
    parser.add_argument("--dir", help="working directory (default: a temporary one)")
    args = parser.parse_args()
    planctl = find_planctl()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="planctl-bench-"))
    env = {**os.environ, "PLANCTL_DB": str(workdir / "bench.db"), "PLANCTL_ACTOR": "bench",
           "BENCH_UP_KEY": UPSTREAM_KEY, "NO_COLOR": "1"}
    up_port, gw_port = free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(up_port),
                               "--key", UPSTREAM_KEY], env=env, stdout=subprocess.DEVNULL)]
    try:
        secret = setup(planctl, env, up_port)
        procs.append(subprocess.Popen([str(planctl), "serve", "--port", str(gw_port)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(gw_port, "/api/hello")
        times = measure(gw_port, secret, args.requests)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
    print(f"machine: {cpu_model()} ({usable_cores()} cores), Python {sys.version.split()[0]}")
    print(f"one client, {args.requests} requests per variant, interleaved; whole answer read; ms")
    print(f"{'route':<10} {'stream':<7} {'p50':>7} {'p99':>7}")
    for (name, stream), values in times.items():
        print(f"{name:<10} {str(stream).lower():<7} {pct(values, 50):>7.3f} {pct(values, 99):>7.3f}")
    for stream in (False, True):
        added = pct(times[("claude", stream)], 50) - pct(times[("responses", stream)], 50)
        verdict = "met" if added <= 0.5 else "NOT met"
        print(f"claude route adds {added:+.3f} ms at p50 ({'stream' if stream else 'non-stream'}); "
              f"target ≤ 0.5 ms: {verdict}")


if __name__ == "__main__":
    main()
