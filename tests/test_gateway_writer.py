"""The settlement writer on a real database: group commit puts concurrent settlements in shared
transactions (one per settlement when off), and settlements wait while the database is locked,
then land by themselves."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest
from helpers.gateway import buy, install, ledger_of, records
from helpers.procs import holder


def settlements(db: Any, caller: Any, count: int) -> tuple[Any, str, list[Any]]:
    from planctl.metering import Meter, Usage

    install(db, caller)
    sub, _key, secret = buy(db, caller)
    meter = Meter(db)
    out = []
    for n in range(count):
        adm = meter.admit(secret, "unit", "responses", reserve=5_000)
        assert adm.allowed
        out.append(meter.settlement(adm, Usage(f"req-{n}", 100, 0, 10)))
    return meter, sub, out


def write_all(meter: Any, usages: list[Any], *, group: bool, before: Any = None,
              inline: bool = False) -> tuple[int, list[Any]]:
    """Put every settlement on a writer at once; (calls to the metering threads, what each
    settled as). With `inline`, the event loop writes a group itself when it can."""
    from planctl.gateway.writer import Pending, Writer

    async def main() -> tuple[int, list[Any]]:
        calls = 0
        loop = asyncio.get_running_loop()

        async def run(fn: Any, *args: Any) -> Any:
            nonlocal calls
            calls += 1
            return await loop.run_in_executor(None, fn, *args)

        writer = Writer(meter, run, group=group, inline=inline)
        writer.start()
        done: list[Any] = []
        for u in usages:
            writer.put(Pending(u, lambda values, why: done.append((values, why))))
        if before is not None:
            await before(writer)
        assert await writer.stop(30) == 0
        return calls, done

    return asyncio.run(main())


@pytest.mark.parametrize("group", [True, False])
def test_concurrent_settlements_share_transactions_with_group_commit(db: Any, caller: Any, group: bool) -> None:
    meter, sub, usages = settlements(db, caller, 60)
    calls, done = write_all(meter, usages, group=group)
    assert calls == (1 if group else 60)
    assert len(done) == 60 and all(values is not None for values, _ in done)
    rows = records(db)
    assert sorted(r["request_id"] for r in rows) == sorted(u.request_id for u in usages)
    assert ledger_of(db, sub) == (sum(r["charged_plan"] for r in rows), 0)  # every hold settled


def test_on_sqlite_the_event_loop_writes_a_group_itself_unless_another_writer_holds_the_database(
        db: Any, db_url: str, caller: Any) -> None:
    """A group written on a metering thread competed with the event loop for the interpreter
    lock (one worker served about half as many requests): on SQLite the loop writes groups of
    at most INLINE_MAX itself, and hands them to a thread while another process writes."""
    from planctl.gateway.writer import INLINE_MAX

    meter, sub, usages = settlements(db, caller, INLINE_MAX + 6)
    calls, done = write_all(meter, usages[:INLINE_MAX + 1], group=True, inline=True)
    sqlite = "://" not in db_url
    assert calls == (0 if sqlite else 1)  # PostgreSQL: always a thread (the network)
    assert len(done) == INLINE_MAX + 1 and all(values is not None for values, _ in done)
    if sqlite:
        proc = holder(db.target.path, 0.3)  # another gateway worker is writing
        try:
            calls, done = write_all(meter, usages[INLINE_MAX + 1:], group=True, inline=True)
        finally:
            proc.wait(10)
        assert calls == 1 and all(values is not None for values, _ in done)  # waited on a thread
    else:
        write_all(meter, usages[INLINE_MAX + 1:], group=True, inline=True)
    rows = records(db)
    assert len(rows) == INLINE_MAX + 6 and ledger_of(db, sub) == (sum(r["charged_plan"] for r in rows), 0)


def test_a_settlement_written_twice_is_recorded_once(db: Any, caller: Any) -> None:
    meter, sub, usages = settlements(db, caller, 3)
    _calls, first = write_all(meter, usages, group=True)
    _calls, again = write_all(meter, usages, group=True)  # a replayed journal
    assert [why for _, why in again] == ["already recorded"] * 3
    assert len(records(db)) == 3 and ledger_of(db, sub)[0] == sum(r["charged_plan"] for r in records(db))


def test_settlements_wait_while_the_database_is_locked_then_land(db: Any, db_url: str, caller: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if "://" in db_url:
        pytest.skip("a SQLite lock; PostgreSQL is covered by the crash test's table lock")
    from planctl.store import engine, sql

    short = tuple("PRAGMA busy_timeout = 100" if p.startswith("PRAGMA busy_timeout") else p for p in sql.PRAGMAS)
    monkeypatch.setattr(sql, "PRAGMAS", short)
    monkeypatch.setattr(engine, "PRAGMAS", short)
    meter, _sub, usages = settlements(db, caller, 5)
    db.dispose()  # new connections take the short busy timeout
    conn = sqlite3.connect(db_url, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")

    async def locked_for_a_while(writer: Any) -> None:
        await asyncio.sleep(0.8)
        assert writer.failing and writer.backlog == 5  # refused, kept
        conn.execute("ROLLBACK")

    try:
        _calls, done = write_all(meter, usages, group=True, before=locked_for_a_while)
    finally:
        conn.close()
    assert len(done) == 5 and len(records(db)) == 5
