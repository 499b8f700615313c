"""No usage lost to a crash: `kill -9` of one of four `planctl serve` workers while its settlements
are journaled but not yet in the database (the database is held locked by this test meanwhile),
then a restart. Every request whose stream reached the client is recorded exactly once, no
balance goes below zero, and `db check` (journal included) is clean. SQLite, and PostgreSQL when
PLANCTL_TEST_DATABASE_URL is set. Also the journal's own pieces, in process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import PLANCTL, ServeProcess, add_upstream, buy, install, records, scrape, wait_for

STREAMS = 40


@contextlib.contextmanager
def database_locked(db_url: str) -> Iterator[None]:
    """Hold the database so that no settlement can be written (reads still work)."""
    if "://" not in db_url:
        conn = sqlite3.connect(db_url, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    from sqlalchemy import create_engine, text

    from planctl.store.location import resolve_target

    engine = create_engine(resolve_target(db_url).url)
    try:
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE usage_records IN EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


async def stream(client: httpx.AsyncClient, secret: str, n: int, started: asyncio.Event | None = None
                 ) -> tuple[str | None, bool]:
    """(request id, whether the client saw response.completed)."""
    body = {"model": "unit", "input": f"request {n}", "stream": True, "max_output_tokens": 100}
    try:
        async with client.stream("POST", "/v1/responses", json=body,
                                 headers={"authorization": f"Bearer {secret}"}) as answer:
            request_id = answer.headers.get("x-request-id")
            completed = False
            async for line in answer.aiter_lines():
                if started is not None:
                    started.set()
                completed = completed or line.startswith("data:") and '"response.completed"' in line
            return request_id, completed and answer.status_code == 200
    except httpx.HTTPError:
        return None, False


def journal_lines(directory: Path) -> dict[int, int]:
    """Lines in the journal by the pid of the worker that wrote them."""
    out: dict[int, int] = {}
    for path in directory.glob("*.jsonl"):
        pid = int(path.name.split("-", 1)[0])
        out[pid] = out.get(pid, 0) + path.read_bytes().count(b"\n")
    return out


def test_kill_9_of_a_worker_loses_no_usage_that_reached_a_client(db: Any, db_url: str, caller: Any,
                                                                   up: FakeUpstream, tmp_path: Path) -> None:
    from sqlalchemy import text

    install(db, caller)
    sub, _key, secret = buy(db, caller)
    add_upstream(db, caller, "fake", up)
    up.record, up.deltas, up.event_delay = False, 6, 0.08  # streams of about half a second
    journal = tmp_path / "journal"
    serve = ServeProcess(db_url, "--workers", "4", "--journal", str(journal), "--grace", "5")
    try:
        async def load() -> tuple[list[tuple[str | None, bool]], int]:
            async with httpx.AsyncClient(base_url=serve.url, timeout=30,
                                         limits=httpx.Limits(max_connections=STREAMS)) as client:
                firsts = [asyncio.Event() for _ in range(STREAMS)]
                tasks = [asyncio.ensure_future(stream(client, secret, n, firsts[n])) for n in range(STREAMS)]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in firsts)), 20)  # all admitted
                with database_locked(db_url):  # from here on no settlement reaches the database
                    done = await asyncio.wait_for(asyncio.gather(*tasks), 20)
                    lines = await asyncio.to_thread(wait_for, lambda: journal_lines(journal), 5)
                    victim = max(lines, key=lambda pid: lines[pid])
                    os.kill(victim, signal.SIGKILL)
                    await asyncio.sleep(0.3)
                # more load while the supervisor replaces the worker
                after = await asyncio.gather(*(stream(client, secret, n) for n in range(STREAMS, STREAMS + 20)))
                return done + after, lines[victim]

        answers, victim_lines = asyncio.run(load())
        key = ("planctl_gateway_requests_total", (("reason", ""), ("route", "/v1/responses"), ("status", "200")))
        completed = sum(1 for _, done in answers if done)  # the workers' metrics, summed (multi-process mode):
        wait_for(lambda: scrape(serve.url).get(key, 0) >= completed, 10)
    finally:
        serve.stop()
    assert victim_lines > 0  # the killed worker had journaled settlements the database did not have
    # a restart replays whatever no worker has replayed yet
    ServeProcess(db_url, "--journal", str(journal)).stop()
    seen = [rid for rid, completed in answers if completed]
    assert len(seen) >= STREAMS  # the first wave all completed (journaled, not yet committed)
    rows = records(db)
    recorded = [r["request_id"] for r in rows]
    assert sorted(set(seen) - set(recorded)) == []  # every stream that reached a client: recorded
    assert len(recorded) == len(set(recorded))  # once
    with db.read() as session:
        negative = session.execute(text(
            "SELECT count(*) FROM subscriptions WHERE credit_granted - credit_used - credit_reserved < 0"
        )).scalar()
        used = session.execute(text("SELECT credit_used FROM subscriptions WHERE id = :s"), {"s": sub}).scalar()
    assert negative == 0 and used == sum(r["charged_plan"] for r in rows)
    check = subprocess.run([PLANCTL, "--db", db_url, "db", "check", "--journal", str(journal), "--json"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert '"journal"' in check.stdout and list(journal.glob("*.jsonl")) == []


# ---------------------------------------------------------------- the journal's pieces


def usage(request_id: str) -> Any:
    from datetime import datetime, timezone

    from planctl.metering.recording import UsageInput

    return UsageInput(request_id=request_id, model="unit", input_tokens=10, output_tokens=5, status_code=200,
                      key="key_x", at=datetime(2026, 12, 1, 12, tzinfo=timezone.utc), error="x\ny")


def test_journal_lines_round_trip_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    from planctl.gateway import journal

    path = tmp_path / "1-2-3.jsonl"
    path.write_bytes(journal.encode(usage("r1")) + journal.encode(usage("r2"))[:-9])  # killed mid-write
    assert journal.read(path) == [usage("r1")]


def test_a_live_workers_files_are_not_replayed_a_dead_ones_are_once(tmp_path: Path) -> None:
    from planctl.gateway import journal

    async def main() -> tuple[Any, Any]:
        live = journal.Journal(tmp_path)
        segment = live.append(usage("live-1"))
        dead = tmp_path / "99999-1-1.jsonl"  # a file nobody holds: its worker is gone
        dead.write_bytes(journal.encode(usage("dead-1")) + journal.encode(usage("dead-2")))
        replayed: list[list[str]] = []
        count = journal.replay(tmp_path, lambda us: replayed.append([u.request_id for u in us]))
        assert (count, replayed) == (2, [["dead-1", "dead-2"]]) and not dead.exists()
        assert journal.unreplayed(tmp_path, lambda ids: set()) == (1, 1)  # in a live worker's file
        assert journal.unreplayed(tmp_path, set) == (0, 0)  # all of it known
        live.done(segment)
        live.close()  # all of it in the database: the file goes
        return journal.files(tmp_path), journal.unreplayed(tmp_path, set)

    assert asyncio.run(main()) == ([], (0, 0))


def test_a_journaled_line_is_in_its_file_before_any_flush_and_flushes_go_in_groups(tmp_path: Path) -> None:
    from planctl.gateway import journal

    async def main() -> tuple[int, int]:
        j = journal.Journal(tmp_path)
        flushes = 0
        sync = j._sync

        def counting(fds: set[int]) -> None:
            nonlocal flushes
            flushes += 1
            time.sleep(0.01)  # a slow disk
            sync(fds)

        j._sync = counting  # type: ignore[method-assign]
        j.append(usage("r0"))  # no await: a worker killed right now has already written it
        assert journal.read(journal.files(tmp_path)[0]) == [usage("r0")]
        for n in range(1, 200):
            j.append(usage(f"r{n}"))
            if n % 20 == 0:
                await asyncio.sleep(0.002)  # requests arrive while a flush is in progress
        while j._unsynced or (j._flusher and not j._flusher.done()):
            await asyncio.sleep(0.01)
        lines = len(journal.read(journal.files(tmp_path)[0]))
        j.close()
        return lines, flushes

    lines, flushes = asyncio.run(main())
    assert lines == 200
    assert 1 <= flushes <= 20  # 200 settlements, not 200 flushes


def test_a_trickle_of_settlements_is_flushed_in_groups_each_within_flush_after(tmp_path: Path) -> None:
    """One request every 2 ms (a client in a loop) must not cost a flush each (an fdatasync held
    up the database's own writes: +0.3 ms a request), and no line waits much past FLUSH_AFTER."""
    from planctl.gateway import journal

    async def main() -> tuple[int, float]:
        j = journal.Journal(tmp_path)
        flushes: list[float] = []
        sync = j._sync

        def timed(fds: set[int]) -> None:
            sync(fds)
            flushes.append(time.monotonic())

        j._sync = timed  # type: ignore[method-assign]
        written = []
        for n in range(50):
            j.append(usage(f"r{n}"))
            written.append(time.monotonic())
            await asyncio.sleep(0.002)
        while j._unsynced or (j._flusher and not j._flusher.done()):
            await asyncio.sleep(0.005)
        j.close()
        waits = [min(f for f in flushes if f >= w) - w for w in written]
        return len(flushes), max(waits)

    count, longest = asyncio.run(main())
    assert count <= 50 * 0.002 / journal.FLUSH_AFTER * 3 + 2  # groups of about FLUSH_AFTER, not 50 flushes
    assert longest < journal.FLUSH_AFTER + 0.25  # each line on the disk soon after FLUSH_AFTER (a loaded machine)
