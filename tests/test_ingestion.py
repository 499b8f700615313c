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

from conftest import NOW
from test_metering import account, buy, checks_ok, install, plan, rows, sub_row, team

PLANCTL = [sys.executable, "-m", "planctl"]
WORKERS = 4


@pytest.fixture(scope="module")
def pool() -> Any:
    from procs import Processes

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
    from planctl.services import metering
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    database = open_database(resolve_target(db_url), now=NOW)
    answers: list[Any] = []
    try:
        barrier.wait(timeout=60)
        now = datetime.now(timezone.utc)
        for n, rid in enumerate(ids):
            u = metering.UsageInput(request_id=rid, key=keys[n % len(keys)], model="unit", input_tokens=100 + n,
                                    output_tokens=1, status_code=200)
            try:
                answers.append(metering.record(database, u, now=now).duplicate)
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
