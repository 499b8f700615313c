#!/usr/bin/env python3
"""Batch key creation: 1,000 keys in one planctl command, against bare sqlite3, on this machine.

    python benchmarks/keys.py [--runs N]

Each run (default 5) uses fresh temporary SQLite databases. Untimed, it creates
an account and buys a plan; then it times, as the wall-clock time of a whole
subprocess:

    planctl keys create --from-plan codex-pro-monthly --account bench --name ci
        --quantity 1000 --secrets-file F          (target: under 2 s, issue 4)

(and, for information, the same with --json, which prints no table) and, in
the same run, the baseline: `python -c …` with the standard `sqlite3`
module inserting 1,000 equivalent rows (every column, a fresh secret and its
SHA-256 per row) into a table of the same shape (the very DDL and indexes of
planctl's `api_keys`, copied from the prepared database) in one `BEGIN
IMMEDIATE` transaction, with planctl's pragmas (WAL, synchronous=NORMAL).
The baseline is reported with interpreter start-up (the subprocess wall time,
comparable to the planctl figure) and without it (timed inside the child).

Uses the `planctl` executable next to this interpreter. Prints the machine, the
median (with min and max) of each, keys per second, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model, find_planctl, usable_cores  # benchmarks/common.py

QUANTITY = 1_000
TARGET_S = 2.0
PLAN = "codex-pro-monthly"

# The child of the baseline: argv = database path, DDL file; prints the insert time in ms.
BASELINE = r"""
import hashlib, json, secrets, sqlite3, sys, time
from datetime import datetime, timezone
db, ddl = sys.argv[1], json.load(open(sys.argv[2]))
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("PRAGMA synchronous = NORMAL")
for statement in ddl:
    conn.execute(statement)
info = list(conn.execute("PRAGMA table_info(api_keys)"))
columns = [row[1] for row in info]
required = {row[1]: 0 for row in info if row[3]}  # other NOT NULL columns (counters): 0
insert = f"INSERT INTO api_keys ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
start = time.perf_counter()
now = datetime.now(timezone.utc).isoformat()
alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
rows, names = [], set()
while len(rows) < 1000:
    name = "ci-" + "".join(secrets.choice(alphabet) for _ in range(4))
    if name in names:
        continue
    names.add(name)
    secret = "sk-" + secrets.token_urlsafe(32)
    values = {
        "id": "key_" + secrets.token_hex(4), "account_id": "acc_bench000", "subscription_id": "sub_bench000",
        "kind": "team", "name": name, "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(),
        "prefix": secret[:7], "last4": secret[-4:], "group_name": "default", "status": "active",
        "credit_used": 0, "created_at": now, "updated_at": now,
    }
    rows.append(tuple(values.get(c, required.get(c)) for c in columns))
conn.execute("BEGIN IMMEDIATE")
conn.executemany(insert, rows)
conn.execute("COMMIT")
elapsed = time.perf_counter() - start
assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 1000
conn.close()
print(f"{elapsed * 1000:.3f}")
"""


def run(argv: list[str], env: dict[str, str], label: str = "") -> tuple[float, str]:
    """Wall time of one subprocess in seconds, and its stdout; a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {label or ' '.join(argv[:6])} exited {proc.returncode}: "
                 f"{proc.stderr.decode(errors='replace').strip()[:300]}")
    return elapsed, proc.stdout.decode()


def api_keys_ddl(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [sql for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'api_keys' AND sql IS NOT NULL "
            "ORDER BY type = 'index', name")]
    finally:
        conn.close()


def prepared(planctl: str, env: dict[str, str], db: Path) -> list[str]:
    """A fresh database with an account and a bought plan (untimed); the planctl argv prefix for it."""
    base = [planctl, "--db", str(db)]
    run([*base, "accounts", "create", "bench"], env)  # creates, migrates and seeds the database
    run([*base, "buy", PLAN, "--account", "bench"], env)
    return base


def timed_create(planctl: str, env: dict[str, str], tmp: Path, label: str, *extra: str) -> float:
    """One timed `keys create --quantity 1000 --secrets-file F`, checked afterwards."""
    db = tmp / f"{label}.db"
    base = prepared(planctl, env, db)
    out = tmp / f"{label}-secrets.json"
    elapsed, _ = run([*base, "keys", "create", "--from-plan", PLAN, "--account", "bench", "--name", "ci",
                      "--quantity", str(QUANTITY), "--secrets-file", str(out), *extra], env)
    written = json.loads(out.read_text())
    conn = sqlite3.connect(db)
    count = conn.execute("SELECT count(*) FROM api_keys WHERE kind = 'team'").fetchone()[0]
    conn.close()
    mode = out.stat().st_mode & 0o777
    if len(written) != QUANTITY or count != QUANTITY or mode != 0o600:
        sys.exit(f"error: {label}: expected {QUANTITY} keys and a 0600 secrets file, "
                 f"got {count} keys, {len(written)} secrets, mode {mode:o}")
    return elapsed


def one_run(planctl: str, env: dict[str, str], tmp: Path, n: int) -> tuple[float, float, float, float]:
    """(planctl s, planctl --json s, baseline with start-up s, baseline without start-up s), fresh databases."""
    planctl_s = timed_create(planctl, env, tmp, f"run{n}")
    json_s = timed_create(planctl, env, tmp, f"run{n}-json", "--json")
    ddl = tmp / f"ddl-{n}.json"
    ddl.write_text(json.dumps(api_keys_ddl(tmp / f"run{n}.db")))
    baseline_s, stdout = run([sys.executable, "-c", BASELINE, str(tmp / f"baseline-{n}.db"), str(ddl)], env,
                             "the sqlite3 baseline")
    return planctl_s, json_s, baseline_s, float(stdout.strip()) / 1000


def describe(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med * 1000:>9.1f}{min(values) * 1000:>9.1f}{max(values) * 1000:>9.1f}{QUANTITY / med:>11,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    planctl = str(find_planctl())
    results: list[tuple[float, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="planctl-bench-keys-") as name:
        tmp = Path(name)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PLANCTL_", "_PLANCTL_", "_TYPER_", "COMP_"))}
        env.update({"PLANCTL_HOME": str(tmp / "home"), "NO_COLOR": "1", "COLUMNS": "120"})
        for n in range(1, args.runs + 1):
            results.append(one_run(planctl, env, tmp, n))

    try:
        from planctl import __version__ as version
    except ImportError:
        version = "?"
    planctl_s = [r[0] for r in results]
    json_s = [r[1] for r in results]
    with_startup = [r[2] for r in results]
    without_startup = [r[3] for r in results]
    print(f"planctl {version} batch key creation benchmark ({QUANTITY:,} keys in one command)")
    print(f"machine : {platform.system()} {platform.release()} {platform.machine()}")
    print(f"cpu     : {cpu_model()} ({usable_cores()} cores)")
    print(f"python  : {platform.python_implementation()} {platform.python_version()} "
          f"(sqlite {sqlite3.sqlite_version})")
    print(f"runs    : {args.runs}, each on fresh temporary SQLite databases")
    print()
    print(f"{'':<56}{'median ms':>9}{'min ms':>9}{'max ms':>9}{'keys/s':>11}")
    print(f"{'planctl keys create --quantity 1000 --secrets-file':<56}{describe(planctl_s)}")
    print(f"{'  the same with --json (no table on stdout)':<56}{describe(json_s)}")
    print(f"{'baseline: python -c sqlite3, 1000 rows (with start-up)':<56}{describe(with_startup)}")
    print(f"{'baseline: the inserts alone (without start-up)':<56}{describe(without_startup)}")
    print()
    med, base = statistics.median(planctl_s), statistics.median(with_startup)
    print(f"planctl / baseline with start-up: {med / base:.1f}x  (+{(med - base) * 1000:.0f} ms)")
    verdict = "met" if med < TARGET_S else "MISSED"
    print(f"target  : {QUANTITY:,} keys in one command under {TARGET_S:.0f} s: {verdict} ({med:.2f} s median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
