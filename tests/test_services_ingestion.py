"""Usage ingestion under concurrency (issue #12): several real processes import and record at
once, on SQLite and PostgreSQL. Every process exits 0 with one clean answer, every request id is
charged exactly once, `db check` is clean, and nothing is retried by the tests: a deadlock or a
lost race for a request id would show as a failed process here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import NOW, rows
from helpers.metering import buy, catalogs, checks_ok, install, plan, sub_row, team
from helpers.sales import account

PLANCTL = [sys.executable, "-m", "planctl"]
WORKERS = 4


@pytest.fixture(scope="module")
def pool() -> Any:
    from helpers.procs import Processes

    workers = Processes(__name__, WORKERS)
    yield workers
    workers.close()


def _import_worker(db_url: str, path: str, wid: int, barrier: Any, out: Any) -> None:
    """A spawned process: wait for the others, then run `planctl usage import` as a user would."""
    barrier.wait(timeout=60)
    done = subprocess.run([*PLANCTL, "--db", db_url, "usage", "import", path, "--batch-size", "50", "--json"],
                          capture_output=True, text=True, timeout=170)
    out.put(("done", wid, done.returncode, done.stdout, done.stderr))


def _record_worker(db_url: str, keys: list[str], ids: list[str], wid: int, barrier: Any, out: Any) -> None:
    """A spawned process recording the same request ids as the others, through the public API."""
    from datetime import datetime, timezone

    from planctl.domain.errors import PlanctlError
    from planctl.metering.recording import UsageInput, record
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    database = open_database(resolve_target(db_url), now=NOW)
    answers: list[Any] = []
    try:
        barrier.wait(timeout=60)
        now = datetime.now(timezone.utc)
        for n, rid in enumerate(ids):
            u = UsageInput(request_id=rid, key=keys[n % len(keys)], model="unit", input_tokens=100 + n,
                           output_tokens=1, status_code=200)
            try:
                answers.append(record(database, catalogs(database), u, now=now).duplicate)
            except PlanctlError as exc:
                answers.append(f"exit {int(exc.exit_code)}: {exc.message}")
    finally:
        database.dispose()
    out.put(("done", wid, answers))


def _world(db: Any, caller: Any) -> tuple[str, list[str]]:
    """One subscription of one account with four keys (its own and three team keys)."""
    install(db, caller, plan("bulk", total_credit="1000", validity="1y"))
    b = buy(db, caller, account(db, caller), "bulk")
    return b.sub, [b.key] + [team(db, caller, b.sub, name=f"t{i}")[0] for i in range(3)]


def _line(rid: str, key: str, n: int) -> str:
    return json.dumps({"request_id": rid, "key": key, "model": "unit", "input": 100 + n % 50, "output": 1,
                       "status": 200})


def _charged_once(db: Any, sub: str, ids: set[str]) -> None:
    from sqlalchemy import func
    from sqlmodel import select

    from planctl.store.tables import LedgerEntry, UsageRecord

    records = rows(db, UsageRecord)
    assert sorted(r.request_id for r in records) == sorted(ids)
    with db.read() as session:
        debits = dict(session.execute(
            select(LedgerEntry.request_id, func.count()).where(LedgerEntry.kind == "debit")
            .group_by(LedgerEntry.request_id)).all())
    assert set(debits) == ids and set(debits.values()) == {1}
    assert sub_row(db, sub).credit_used == sum(r.cost for r in records)
    checks_ok(db)


def _all_clean(outcomes: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every import exited 0 with its JSON report on stdout and nothing on stderr."""
    bad = [(code, err) for _, _, code, _, err in outcomes if code != 0 or err]
    assert not bad, bad
    return [json.loads(stdout) for _, _, _, stdout, _ in outcomes]


def test_four_imports_of_overlapping_files_charge_each_request_once(db: Any, db_url: str, caller: Any,
                                                                     tmp_path: Path, pool: Any) -> None:
    sub, keys = _world(db, caller)
    ids = [f"o{n}" for n in range(400)]
    paths = []
    for w in range(WORKERS):  # each file starts at another quarter and wraps: every id is in every file
        order = ids[w * 100:] + ids[:w * 100]
        (path := tmp_path / f"o{w}.jsonl").write_text(
            "".join(_line(rid, keys[int(rid[1:]) % 4], int(rid[1:])) + "\n" for rid in order))
        paths.append(str(path))
    reports = _all_clean(pool.run("_import_worker", [(db_url, p, w) for w, p in enumerate(paths)]))
    assert sum(r["new"] for r in reports) == len(ids)
    assert all(r["new"] + r["duplicate"] == len(ids) and r["rejected"] == r["conflicting"] == 0 for r in reports)
    _charged_once(db, sub, set(ids))


def test_four_imports_of_disjoint_files_sharing_one_accounts_keys_never_deadlock(
        db: Any, db_url: str, caller: Any, tmp_path: Path, pool: Any) -> None:
    sub, keys = _world(db, caller)
    paths, ids = [], set()
    for w in range(WORKERS):  # every batch of every file uses all four keys, each file in another order
        lines = [(f"d{w}-{n}", keys[(n + w) % 4 if w % 2 else (3 - n - w) % 4], n) for n in range(400)]
        ids |= {rid for rid, _, _ in lines}
        (path := tmp_path / f"d{w}.jsonl").write_text("".join(_line(*line) + "\n" for line in lines))
        paths.append(str(path))
    reports = _all_clean(pool.run("_import_worker", [(db_url, p, w) for w, p in enumerate(paths)]))
    assert [(r["new"], r["duplicate"], r["retried"]) for r in reports] == [(400, 0, 0)] * WORKERS
    _charged_once(db, sub, ids)


def test_four_processes_recording_the_same_ids_all_get_the_sequential_answer(db: Any, db_url: str, caller: Any,
                                                                              pool: Any) -> None:
    """The loser of a race for a request id is told `duplicate`, exit 0, as a re-run would be."""
    sub, keys = _world(db, caller)
    ids = [f"s{n}" for n in range(150)]
    outcomes = pool.run("_record_worker", [(db_url, keys, ids, w) for w in range(WORKERS)])
    answers = [a for _, _, got in outcomes for a in got]
    assert [a for a in answers if not isinstance(a, bool)] == []
    assert answers.count(False) == len(ids) and answers.count(True) == len(ids) * (WORKERS - 1)
    _charged_once(db, sub, set(ids))


# ---------------------------------------------------------------- one bad line never stops an import (#12.1)


def test_unrepresentable_lines_are_rejected_alone_and_the_import_goes_to_the_end(
        db: Any, cli: Any, caller: Any, tmp_path: Path) -> None:
    """Today's killers of a whole import (64-bit overflow, times Python cannot represent, bytes that
    are not UTF-8, NUL): each is one rejected line with its number; its batch's good lines commit."""
    from helpers import run as at_now

    sub, keys = _world(db, caller)
    good = [_line(f"g{n}", keys[0], n).encode() for n in range(6)]
    base = {"key": keys[0], "model": "unit", "input": 1, "output": 1, "status": 200}
    bad = [json.dumps({**base, "request_id": "b1", "input": 2**63 + 5}).encode(),  # overflows SQLite's integers
           json.dumps({**base, "request_id": "b2", "time": "9999-12-31T23:59:59+00:00"}).encode(),
           json.dumps({**base, "request_id": "b3", "time": "0001-01-01T00:00:00+05:00"}).encode(),
           b'{"request_id": "b4", "model": "\xff\xfe", "key": "k"}',
           json.dumps({**base, "request_id": "b5", "latency_ms": 10**12}).encode(),
           json.dumps({**base, "request_id": "b6\u0000"}).encode()]
    lines = [good[0], good[1], bad[0], bad[1], good[2], bad[2], bad[3], good[3], bad[4], bad[5], good[4], good[5]]
    (path := tmp_path / "u.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    for expected_new, expected_duplicate in ((6, 0), (0, 6)):
        result = at_now(cli, "usage", "import", str(path), "--batch-size", "4", "--json")
        assert result.exit_code == 2, result.stderr
        report = json.loads(result.stdout)
        assert (report["new"], report["duplicate"]) == (expected_new, expected_duplicate)
        assert [r["line"] for r in report["rejected_lines"]] == [3, 4, 6, 7, 9, 10]
    errors = [r["error"] for r in report["rejected_lines"]]
    assert "from 0 to 100,000,000" in errors[0]
    assert "outside the accepted window" in errors[1] and "outside the accepted window" in errors[2]
    assert "not JSON" in errors[3] and "latency" in errors[4] and "NUL" in errors[5]
    _charged_once(db, sub, {f"g{n}" for n in range(6)})


def test_usage_record_flags_out_of_bounds_exit_2(db: Any, db_url: str, cli: Any, caller: Any) -> None:
    from helpers import assert_refused

    _, keys = _world(db, caller)
    base = ("usage", "record", "--request-id", "r1", "--key", keys[0], "--model", "unit", "--status", "200")
    assert_refused(cli, db_url, [
        ((*base, "--input", str(2**64), "--output", "0"), 2, "invalid_input", "input tokens must be"),
        ((*base, "--input", "1", "--output", "100000001"), 2, "invalid_input", "output tokens must be"),
        ((*base, "--input", "1", "--output", "1", "--latency-ms", str(10**12)), 2, "invalid_input", "latency"),
        ((*base, "--input", "1", "--output", "1", "--time", "9999-12-31T23:59:59+00:00"), 2, "invalid_input",
         "outside the accepted window"),
        ((*base, "--input", "1", "--output", "1", "--time", "0001-01-01T00:00:00+05:00"), 2, "invalid_input",
         "--time"),
        ((*base, "--input", "1", "--output", "1", "--time", "2024-01-01T00:00:00Z"), 2, "invalid_input",
         "outside the accepted window"),
    ], when=NOW)


# ---------------------------------------------------------------- a crash mid-import (#12 tests)

_KILLED_IN_BATCH = """
import os, signal, sys
from planctl.store import meter

calls = []
insert = meter.insert_usage


def dying(tx, records):
    calls.append(1)
    if len(calls) == 2:  # the second batch: its rows are written, its commit never comes
        insert(tx, records)
        os.kill(os.getpid(), signal.SIGKILL)
    return insert(tx, records)
meter.insert_usage = dying
sys.argv = ["planctl", *sys.argv[1:]]
from planctl.cli import main
main()
"""


def test_a_kill_in_the_middle_of_an_import_leaves_whole_batches_and_a_rerun_converges(
        db: Any, db_url: str, caller: Any, tmp_path: Path) -> None:
    sub, keys = _world(db, caller)
    ids = [f"k{n}" for n in range(30)]
    (path := tmp_path / "u.jsonl").write_text("".join(_line(rid, keys[n % 4], n) + "\n" for n, rid in enumerate(ids)))
    args = ["--db", db_url, "usage", "import", str(path), "--batch-size", "10", "--json"]
    killed = subprocess.run([sys.executable, "-c", _KILLED_IN_BATCH, *args], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    _charged_once(db, sub, set(ids[:10]))  # the first batch, whole; nothing of the second
    rerun = subprocess.run([*PLANCTL, *args], capture_output=True, text=True)
    assert rerun.returncode == 0 and rerun.stderr == ""
    assert {k: v for k, v in json.loads(rerun.stdout).items() if not k.endswith("_lines")} == {
        "new": 20, "duplicate": 10, "rejected": 0, "conflicting": 0, "retried": 0}
    _charged_once(db, sub, set(ids))


# ---------------------------------------------------------------- unusable databases exit 2 (#12.6)


def _corrupt(kind: str, tmp_path: Path, good: Path) -> str:
    import os

    target = tmp_path / f"{kind}.db"
    data = good.read_bytes()
    if kind == "truncated":
        target.write_bytes(data[:3000])
    elif kind == "zeroed-page":
        target.write_bytes(data[:4096] + bytes(8192) + data[4096 + 8192:])
    elif kind == "random-bytes":
        target.write_bytes(os.urandom(40_000))
    elif kind == "directory":
        target.mkdir()
    else:
        return {"dev-null": "/dev/null", "empty-option": ""}[kind]
    return str(target)


@pytest.mark.parametrize("kind", ["truncated", "zeroed-page", "random-bytes", "directory", "dev-null", "empty-option"])
def test_an_unusable_database_is_one_line_and_exit_2_for_every_command(tmp_path: Path, kind: str) -> None:
    from helpers import Cli

    good = tmp_path / "good.db"
    Cli(str(good)).ok("plans", "list")
    location = _corrupt(kind, tmp_path, good)
    before = Path(location).read_bytes() if Path(location).is_file() else None
    (tmp_path / "u.jsonl").write_text(_line("r1", "k", 1) + "\n")
    expected = {"directory": "is a directory", "empty-option": "--db is empty"}.get(kind, "not a planctl database: ")
    for args in (("plans", "list"), ("db", "check"), ("usage", "import", str(tmp_path / "u.jsonl")),
                 ("usage", "record", "--request-id", "r", "--key", "k", "--model", "unit", "--input", "1",
                  "--output", "1", "--status", "200")):
        result = Cli(location, init=False)(*args)
        assert result.exit_code == 2, (args, result.exit_code, result.stderr)
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1 and expected in result.stderr, \
            result.stderr
    if before is not None:
        assert Path(location).read_bytes() == before
