#!/usr/bin/env python3
"""Usage queries and group health of planctl at millions of records, against raw sqlite3, on this machine.

    python benchmarks/reporting.py [--sizes 1000000,10000000] [--quick] [--runs N] [--csv-runs N]
                                   [--budget-minutes M] [--keep DIR]

For each size N (default 1,000,000 and 10,000,000; --quick: 100,000 and
1,000,000), a fresh SQLite database is made with

    planctl --db DB demo --fast --records N --days 30

(the `planctl` next to this interpreter), timed: wall time, records/s and the
child's peak RSS. Its progress lines go to stderr. Before each size the time
is estimated from the previous generation (or a 50,000-record calibration
run); a size that would take longer than --budget-minutes (default 15) is
not run, and the largest round size that fits is run instead.

Then, on that database, in --runs rounds (default 5; one warm-up round first),
round-robin so that machine noise hits all of them alike, each planctl command
as a subprocess and beside it the equivalent hand-written SQL through the
standard `sqlite3` module in this process (a new connection each time):

  planctl --version                                     start-up, the baseline
  planctl usage --request-id R --json                   target: within 100 ms of --version
      sql: SELECT … WHERE request_id = ? (connect + query, query alone: target ≤ 5 ms)
      planctl in process: reporting.open_reader + get_record (the lookup itself)
  planctl health --by key --since 30d                   target: ≤ 1 s (at 10 M)
      sql: GROUP BY key over the raw records; GROUP BY key over the daily rollups
  planctl health --by group --since 24h                 target: ≤ 1 s (at 10 M)
      sql: GROUP BY group over the raw records of the last 24 h
  planctl usage --since 1h --json --limit 100           target: ≤ 200 ms above start-up
      sql: the newest 100 records of the last hour

and, --csv-runs times (default 3), a CSV export of about 1,000,000 rows
(`planctl usage --since 30d --all --csv > file` on the 1 M database; on a
bigger one `--since` the time of the millionth newest record), rows/s and peak
RSS of the child, beside a hand-written sqlite3 + csv exporter subprocess.

Prints the machine (platform, CPU, cores, Python, SQLite), then per size the
median and p90 of each, the difference to `planctl --version`, and each
target as met or MISSED. R is a request id from the middle of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from common import cpu_model, find_planctl, run_once, usable_cores  # benchmarks/common.py

LOOKUP_OVER_START_MS = 100.0
LOOKUP_SQL_MS = 5.0
HEALTH_MS = 1_000.0
RECENT_OVER_START_MS = 200.0
CSV_ROWS = 1_000_000
CALIBRATION = 50_000
WARMUPS = 1

RECORD_COLUMNS = (
    "request_id", "at", "local_day", "account_id", "key_id", "subscription_id", "group_name", "requested_model",
    "billed_model", "api", "input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan",
    "charged_extra", "charged_payg", "pool", "status_code", "latency_ms", "stream", "error", "reservation_id",
)
COLS = ", ".join(RECORD_COLUMNS)
HEALTH_SELECT = ("COUNT(*), SUM(CASE WHEN status_code < 400 THEN 1 ELSE 0 END), SUM(cost), "
                 "SUM(cached_tokens) * 1.0 / SUM(input_tokens), AVG(latency_ms), MAX(at)")
ROLLUP_SELECT = ("SUM(requests), SUM(CASE WHEN status_class IN ('1xx', '2xx', '3xx') THEN requests ELSE 0 END), "
                 "SUM(cost), SUM(cached_tokens) * 1.0 / SUM(input_tokens), SUM(latency_sum) * 1.0 / "
                 "SUM(latency_count), MAX(last_at)")
CSV_EXPORTER = r"""
import csv, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = conn.execute("SELECT " + sys.argv[3] + " FROM usage_records WHERE at >= ? ORDER BY at DESC, id DESC",
                    (sys.argv[2],))
with open(sys.argv[4], "w", newline="") as out:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(sys.argv[3].split(", "))
    writer.writerows(rows)
"""


# ---------------------------------------------------------------- machine


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- running


@dataclass
class Child:
    ms: float
    rss_kb: int
    stdout: bytes = b""


def run_child(argv: list[str], env: dict[str, str]) -> Child:
    """Wall time of one quick subprocess (output discarded); a failure stops the benchmark."""
    return Child(run_once(argv, env), 0)


def run_measured(argv: list[str], env: dict[str, str], *, stdout: Any = subprocess.DEVNULL,
                 capture: bool = False, stderr_through: bool = False) -> Child:
    """Wall time and the child's own peak RSS (os.wait4); a failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if capture else stdout,
                            stderr=None if stderr_through else subprocess.PIPE)
    out = b""
    if capture and proc.stdout is not None:
        out = proc.stdout.read()
    err = b""
    if not stderr_through and proc.stderr is not None:
        err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace').strip()[:400]}")
    return Child(elapsed, int(usage.ru_maxrss), out)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def sql_stamp(instant: datetime) -> str:
    """A UTC instant as planctl stores it in SQLite."""
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


# ---------------------------------------------------------------- generation


@dataclass
class Generated:
    records: int
    ms: float
    rss_kb: int
    summary: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.records / (self.ms / 1000)


def generate(planctl: str, db: Path, records: int, env: dict[str, str]) -> Generated:
    argv = [planctl, "--db", str(db), "demo", "--fast", "--records", str(records), "--days", "30", "--json"]
    child = run_measured(argv, env, capture=True, stderr_through=True)
    summary = json.loads(child.stdout)
    return Generated(records, child.ms, child.rss_kb, summary)


def round_size(n: float) -> int:
    """The largest 1, 2 or 5 × 10^k not above n."""
    if n < 1:
        return 0
    power = 10 ** (len(str(int(n))) - 1)
    for step in (5, 2, 1):
        if step * power <= n:
            return step * power
    return power


# ---------------------------------------------------------------- measuring one database


@dataclass
class Row:
    name: str
    times: list[float] = field(default_factory=list)
    indent: bool = False
    target: str = ""
    verdict: Callable[[dict[str, Row]], str] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def measure(planctl: str, db: Path, env: dict[str, str], runs: int, csv_runs: int, work: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    max_id, total = conn.execute("SELECT MAX(id), COUNT(*) FROM usage_records").fetchone()
    request_id = conn.execute("SELECT request_id FROM usage_records WHERE id >= ? ORDER BY id LIMIT 1",
                              (max_id // 2,)).fetchone()[0]
    newest = conn.execute("SELECT MAX(at) FROM usage_records").fetchone()[0]
    conn.close()
    now = datetime.now(timezone.utc)
    since_30d, since_24h, since_1h = (sql_stamp(now - timedelta(days=30)), sql_stamp(now - timedelta(hours=24)),
                                      sql_stamp(now - timedelta(hours=1)))
    day_30d = (now - timedelta(days=30)).date().isoformat()
    base = [planctl, "--db", str(db)]

    def sql(query: str, params: tuple[Any, ...]) -> Callable[[], Any]:
        def run() -> Any:
            c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                return c.execute(query, params).fetchall()
            finally:
                c.close()
        return run

    warm = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    lookup_sql = f"SELECT {COLS} FROM usage_records WHERE request_id = ?"

    def lookup_only() -> Any:
        return warm.execute(lookup_sql, (request_id,)).fetchall()

    os.environ.setdefault("PLANCTL_HOME", env["PLANCTL_HOME"])
    from planctl.services import reporting  # noqa: E402  (in process: the lookup itself)
    from planctl.store.location import resolve_target

    target = resolve_target(str(db))

    def planctl_lookup() -> Any:
        reader = reporting.open_reader(target, now=datetime.now(timezone.utc))
        try:
            return reporting.get_record(reader, request_id)
        finally:
            reader.close()

    def cli(*args: str) -> Callable[[], Any]:
        return lambda: run_child(base + list(args), env)

    version = Row("planctl --version")
    rows: list[tuple[Row, Callable[[], Any]]] = [
        (version, lambda: run_child([planctl, "--version"], env)),
        (Row("planctl usage --request-id R --json", target=f"≤ +{LOOKUP_OVER_START_MS:.0f} ms",
             verdict=lambda r: _over(r, "planctl usage --request-id R --json", LOOKUP_OVER_START_MS)),
         cli("usage", "--request-id", request_id, "--json")),
        (Row("sql: lookup (connect + query)", indent=True), sql(lookup_sql, (request_id,))),
        (Row("sql: lookup (query alone)", indent=True, target=f"≤ {LOOKUP_SQL_MS:.0f} ms",
             verdict=lambda r: _under(r, "sql: lookup (query alone)", LOOKUP_SQL_MS)), lookup_only),
        (Row("planctl lookup in process", indent=True, target=f"≤ {LOOKUP_SQL_MS:.0f} ms",
             verdict=lambda r: _under(r, "planctl lookup in process", LOOKUP_SQL_MS)), planctl_lookup),
        (Row("planctl health --by key --since 30d", target=f"≤ {HEALTH_MS:.0f} ms",
             verdict=lambda r: _under(r, "planctl health --by key --since 30d", HEALTH_MS)),
         cli("health", "--by", "key", "--since", "30d")),
        (Row("sql: raw GROUP BY key, 30 d", indent=True),
         sql(f"SELECT key_id, {HEALTH_SELECT} FROM usage_records WHERE at >= ? GROUP BY key_id", (since_30d,))),
        (Row("sql: rollup GROUP BY key, 30 d", indent=True),
         sql(f"SELECT key_id, {ROLLUP_SELECT} FROM usage_daily WHERE local_day >= ? GROUP BY key_id", (day_30d,))),
        (Row("planctl health --by group --since 24h", target=f"≤ {HEALTH_MS:.0f} ms",
             verdict=lambda r: _under(r, "planctl health --by group --since 24h", HEALTH_MS)),
         cli("health", "--by", "group", "--since", "24h")),
        (Row("sql: raw GROUP BY group, 24 h", indent=True),
         sql(f"SELECT group_name, {HEALTH_SELECT} FROM usage_records WHERE at >= ? GROUP BY group_name",
             (since_24h,))),
        (Row("planctl usage --since 1h --json --limit 100", target=f"≤ +{RECENT_OVER_START_MS:.0f} ms",
             verdict=lambda r: _over(r, "planctl usage --since 1h --json --limit 100", RECENT_OVER_START_MS)),
         cli("usage", "--since", "1h", "--json", "--limit", "100")),
        (Row("sql: newest 100 of the last hour", indent=True),
         sql(f"SELECT {COLS} FROM usage_records WHERE at >= ? ORDER BY at DESC, id DESC LIMIT 100", (since_1h,))),
    ]
    for _ in range(WARMUPS):
        for _, fn in rows:
            fn()
    for round_number in range(1, runs + 1):
        for row, fn in rows:
            row.times.append(timed(fn))
        say(f"  round {round_number}/{runs} done")
    warm.close()
    by_name = {row.name: row for row, _ in rows}
    out = [f"records {total:,}; R = {request_id}; newest record {newest} UTC; {runs} rounds after {WARMUPS} warm-up",
           "", f"{'case':<48}{'median ms':>11}{'p90 ms':>10}{'+start-up':>11}  {'target':<12}verdict"]
    for row, _ in rows:
        name = ("  " + row.name) if row.indent else row.name
        over = "" if row.indent or row is version else f"{row.median - version.median:+.1f}"
        verdict = row.verdict(by_name) if row.verdict else ""
        digits = 3 if row.median < 10 else 1
        out.append(f"{name:<48}{row.median:>11.{digits}f}{p90(row.times):>10.{digits}f}{over:>11}  "
                   f"{row.target:<12}{verdict}")
    out += [""] + csv_export(planctl, db, env, csv_runs, work, total)
    return out


def _over(rows: dict[str, Row], name: str, limit: float) -> str:
    over = rows[name].median - rows["planctl --version"].median
    return f"{'met' if over <= limit else 'MISSED'} ({over:+.0f} ms)"


def _under(rows: dict[str, Row], name: str, limit: float) -> str:
    value = rows[name].median
    return f"{'met' if value <= limit else 'MISSED'} ({value:.{3 if value < 10 else 0}f} ms)"


def csv_export(planctl: str, db: Path, env: dict[str, str], runs: int, work: Path, total: int) -> list[str]:
    """About a million rows to CSV: planctl beside a hand-written sqlite3 + csv exporter."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    if total <= CSV_ROWS:
        since_arg, since_sql = "30d", sql_stamp(datetime.now(timezone.utc) - timedelta(days=30))
    else:
        at = conn.execute("SELECT at FROM usage_records ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?",
                          (CSV_ROWS - 1,)).fetchone()[0]
        since_sql = at
        since_arg = datetime.fromisoformat(at).replace(tzinfo=timezone.utc).isoformat()
    conn.close()
    out_file, raw_file = work / "export.csv", work / "raw.csv"
    argv = [planctl, "--db", str(db), "usage", "--since", since_arg, "--all", "--csv"]
    raw = [sys.executable, "-c", CSV_EXPORTER, str(db), since_sql, COLS, str(raw_file)]
    planctl_runs: list[Child] = []
    raw_runs: list[Child] = []
    for i in range(runs):
        with open(out_file, "wb") as handle:
            planctl_runs.append(run_measured(argv, env, stdout=handle))
        raw_runs.append(run_measured(raw, env))
        say(f"  CSV export {i + 1}/{runs} done")
    with open(out_file, "rb") as handle:
        rows = sum(1 for _ in handle) - 1
    with open(raw_file, "rb") as handle:
        raw_rows = sum(1 for _ in handle) - 1
    size = out_file.stat().st_size
    out_file.unlink()
    raw_file.unlink()

    def line(name: str, runs_: list[Child], n: int) -> str:
        ms = statistics.median(c.ms for c in runs_)
        rss = max(c.rss_kb for c in runs_) / 1024
        return f"{name:<48}{ms / 1000:>9.1f} s{n / (ms / 1000):>12,.0f} rows/s{rss:>9.0f} MiB peak RSS"

    return [f"CSV export (--since {since_arg}): {rows:,} rows, {size / 1e6:.0f} MB, median of {runs}",
            line("planctl usage --since … --all --csv > file", planctl_runs, rows),
            line("  sql: sqlite3 + csv.writer subprocess", raw_runs, raw_rows)]


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="records per database, comma-separated")
    parser.add_argument("--quick", action="store_true", help="sizes 100,000 and 1,000,000")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds of the queries (default 5)")
    parser.add_argument("--csv-runs", type=int, default=3, help="timed CSV exports per size (default 3)")
    parser.add_argument("--budget-minutes", type=float, default=15.0,
                        help="largest generation time allowed per size (default 15)")
    parser.add_argument("--keep", metavar="DIR", help="make the databases in DIR and keep them")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    if not sizes or min(sizes) < 1_000 or args.runs < 1 or args.csv_runs < 1:
        parser.error("sizes must be at least 1,000 records; --runs and --csv-runs at least 1")
    planctl = str(find_planctl())
    try:
        from planctl import __version__ as version
    except ImportError:
        version = "?"

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="planctl-reporting-"))
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANCTL_", "_PLANCTL_", "_TYPER_", "COMP_"))}
    env.update({"PLANCTL_HOME": str(tmp / "home"), "NO_COLOR": "1", "COLUMNS": "200"})
    report = [f"planctl {version} reporting benchmark",
              f"machine : {platform.system()} {platform.release()} {platform.machine()}",
              f"cpu     : {cpu_model()} ({usable_cores()} cores)",
              f"python  : {platform.python_implementation()} {platform.python_version()}, "
              f"SQLite {sqlite3.sqlite_version}",
              "data    : planctl demo --fast --days 30 (bulk insert + INSERT … SELECT rollups, not charged)"]
    try:
        say(f"calibrating: {CALIBRATION:,} records …")
        calibration = generate(planctl, tmp / "calibration.db", CALIBRATION, env)
        rate = calibration.rate
        for path in tmp.glob("calibration.db*"):
            path.unlink()
        done: list[int] = []
        for size in sizes:
            estimate = size / rate * 1.15 / 60  # minutes; index growth makes big runs a little slower
            if estimate > args.budget_minutes:
                fits = round_size(args.budget_minutes * 60 * rate / 1.15)
                note = (f"{size:,} records would take about {estimate:.0f} min to generate at {rate:,.0f} "
                        f"records/s, over the {args.budget_minutes:.0f} min budget")
                if fits <= (max(done) if done else 0) or fits < 1_000:
                    report.append(f"\nskipped: {note}; no larger size fits")
                    say(f"skipping {size:,}: {note}")
                    continue
                report.append(f"\nfallback: {note}; running {fits:,} instead")
                say(f"falling back from {size:,} to {fits:,}: {note}")
                size = fits
            db = tmp / f"usage-{size}.db"
            for path in tmp.glob(f"usage-{size}.db*"):
                path.unlink()
            say(f"generating {size:,} records (estimate {estimate:.1f} min) …")
            gen = generate(planctl, db, size, env)
            rate = gen.rate
            say(f"measuring {size:,} …")
            work = tmp / "work"
            work.mkdir(exist_ok=True)
            lines = measure(planctl, db, env, args.runs, args.csv_runs, work)
            db_mb = sum(p.stat().st_size for p in tmp.glob(f"usage-{size}.db*")) / 1e6
            report += ["", f"=== {size:,} records ===",
                       f"generation: {gen.ms / 1000:.1f} s wall, {gen.rate:,.0f} records/s "
                       f"(usage phase {gen.summary['records_per_second']:,} records/s), "
                       f"peak RSS {gen.rss_kb / 1024:.0f} MiB, database {db_mb:,.0f} MB", *lines]
            done.append(size)
            if not args.keep:
                for path in tmp.glob(f"usage-{size}.db*"):
                    path.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
