#!/usr/bin/env python3
"""Start-up time of planctl against the bare interpreter, on this machine.

    python benchmarks/startup.py [--runs N]

Times, as wall-clock time of a whole subprocess:

    python -c pass                 the baseline (the interpreter alone)
    planctl --help                 target: within 150 ms of the baseline (SPEC §11)
    planctl --version
    planctl plans list --json      the read-only admin commands (target: each within 300 ms,
    planctl accounts list --json   median), on a temporary database seeded once first: the
    planctl subscriptions list     sample catalog, 3 accounts with one subscription each, and
    planctl keys list --json       1,050 keys (listed all, with --limit 2000)
    planctl limits show SUB --json

using the `planctl` executable next to this interpreter. After 2 warm-up
rounds, the commands run round-robin (one of each per round) so that machine
noise hits all of them alike. Prints the machine, then the median and p90 of
each, and the difference and ratio to the baseline. Bounded: stops early when
the timed rounds pass --budget seconds (default 90).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model, find_planctl, run_once, usable_cores  # benchmarks/common.py

WARMUPS = 2
HELP_TARGET_MS = 150.0
READ_TARGET_MS = 300.0
ACCOUNTS = ("acme", "globex", "initech")
KEYS = (1_000, 50)  # batches of `keys create` (at most 1,000 a batch): 1,050 keys


def seed(planctl: str, db: str, env: dict[str, str]) -> str:
    """The sample catalog, a subscription for each account and the keys; returns a subscription id."""
    import json

    def run(*args: str) -> str:
        proc = subprocess.run([planctl, "--db", db, *args], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: seeding: planctl {' '.join(args)}: {proc.stderr.strip()[:400]}")
        return proc.stdout

    run("db", "init")
    subscription = ""
    for name in ACCOUNTS:
        run("accounts", "create", name)
        subscription = json.loads(run("buy", "codex-team-monthly", "--account", name, "--json"))["order"]["subscription_id"]
    for i, quantity in enumerate(KEYS):
        run("keys", "create", "--from-plan", subscription, "--account", ACCOUNTS[-1], "--name", f"ci-{i}",
            "--quantity", str(quantity), "--json")
    return subscription


def READS(subscription: str) -> list[tuple[str, ...]]:  # noqa: N802 - a table, like the constants above
    return [("plans", "list", "--json"), ("accounts", "list", "--json"), ("subscriptions", "list", "--json"),
            ("keys", "list", "--json", "--limit", "2000"), ("limits", "show", subscription, "--json")]


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (default 15)")
    parser.add_argument("--budget", type=float, default=90.0,
                        help="stop timing after this many seconds (default 90)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    planctl = str(find_planctl())
    with tempfile.TemporaryDirectory(prefix="planctl-bench-") as tmp:
        db = str(Path(tmp) / "bench.db")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PLANCTL_", "_PLANCTL_", "_TYPER_", "COMP_"))}
        env.update({"PLANCTL_HOME": str(Path(tmp) / "home"), "NO_COLOR": "1", "COLUMNS": "120"})

        subscription = seed(planctl, db, env)  # untimed
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("planctl --help", [planctl, "--help"]),
            ("planctl --version", [planctl, "--version"]),
            *((" ".join(("planctl", *args)).replace(subscription, "SUB"), [planctl, "--db", db, *args])
              for args in READS(subscription)),
        ]

        for _ in range(WARMUPS):
            for _, argv in cases:
                run_once(argv, env)

        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        started = time.monotonic()
        rounds = 0
        for rounds in range(1, args.runs + 1):
            for name, argv in cases:
                times[name].append(run_once(argv, env))
            if time.monotonic() - started > args.budget and rounds < args.runs:
                break

    try:
        from planctl import __version__ as version
    except ImportError:
        version = "?"
    print(f"planctl {version} start-up benchmark")
    print(f"machine : {platform.system()} {platform.release()} {platform.machine()}")
    print(f"cpu     : {cpu_model()} ({usable_cores()} cores)")
    print(f"python  : {platform.python_implementation()} {platform.python_version()}")
    if sys.flags.dont_write_bytecode:
        print("bytecode: not cached (PYTHONDONTWRITEBYTECODE is set): modules without a .pyc, such as an "
              "editable install's, are compiled on every run")
    stopped = "" if rounds == args.runs else f", stopped early by the {args.budget:.0f} s budget"
    print(f"runs    : {rounds} timed each, round-robin, after {WARMUPS} warm-ups{stopped}")
    print()
    base = statistics.median(times[cases[0][0]])
    print(f"{'command':<36}{'median ms':>10}{'p90 ms':>9}{'+base ms':>10}{'ratio':>7}")
    for name, _ in cases:
        med = statistics.median(times[name])
        print(f"{name:<36}{med:>10.1f}{p90(times[name]):>9.1f}{med - base:>10.1f}{med / base:>7.2f}")
    help_over = statistics.median(times["planctl --help"]) - base
    verdict = "met" if help_over <= HELP_TARGET_MS else "MISSED"
    print()
    print(f"target  : planctl --help within {HELP_TARGET_MS:.0f} ms of the bare interpreter: "
          f"{verdict} (+{help_over:.1f} ms)")
    reads = [name for name, _ in cases[3:]]
    slowest = max(reads, key=lambda name: statistics.median(times[name]))
    worst = statistics.median(times[slowest])
    verdict = "met" if worst <= READ_TARGET_MS else "MISSED"
    print(f"target  : read-only commands within {READ_TARGET_MS:.0f} ms each: {verdict} "
          f"(slowest: {slowest}, {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
