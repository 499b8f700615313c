"""`Meter.admit_now`: the admission an event loop makes itself. On SQLite it admits exactly as
`admit` does when nothing has to wait, and answers None at once (writing nothing) when it would
have to wait for this process's other writer or for another process's write lock; on PostgreSQL
it always answers None (every admission there waits on the network, so it goes to a thread)."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest
from helpers.gateway import buy, install, ledger_of
from helpers.procs import holder


def meter_with_a_key(db: Any, caller: Any) -> tuple[Any, str, str]:
    from planctl.metering import Meter

    install(db, caller)
    sub, _key, secret = buy(db, caller)
    return Meter(db), sub, secret


def test_it_admits_as_admit_does_when_nothing_waits(db: Any, db_url: str, caller: Any) -> None:
    meter, sub, secret = meter_with_a_key(db, caller)
    now = meter.admit_now(secret, "unit", "responses", reserve=5_000)
    if "://" in db_url:  # PostgreSQL: always handed to a thread
        assert now is None and ledger_of(db, sub) == (0, 0)
        return
    assert now is not None and now.allowed and now.reservation_id and now.reserved == 5_000
    queued = meter.admit(secret, "unit", "responses", reserve=5_000)
    assert (now.key_id, now.billed_model, now.subscription_id) == (queued.key_id, queued.billed_model,
                                                                   queued.subscription_id)
    assert ledger_of(db, sub) == (0, 10_000)
    denied = meter.admit_now("sk-nobody", "unit", "responses", reserve=5_000)
    assert denied is not None and not denied.allowed and denied.reason == "key_unknown"  # a denial is a value


def test_it_does_not_wait_for_another_process_holding_the_write_lock(db: Any, db_url: str, caller: Any) -> None:
    if "://" in db_url:
        pytest.skip("SQLite's write lock (PostgreSQL never admits on the loop: tested above)")
    meter, sub, secret = meter_with_a_key(db, caller)
    other = sqlite3.connect(db_url, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing, for longer than any busy timeout here
    try:
        started = time.monotonic()
        assert meter.admit_now(secret, "unit", "responses", reserve=5_000) is None
        assert time.monotonic() - started < 0.5  # the busy timeout is 10 s: it did not wait on it
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert ledger_of(db, sub) == (0, 0)  # nothing held
    adm = meter.admit_now(secret, "unit", "responses", reserve=5_000)
    assert adm is not None and adm.allowed and ledger_of(db, sub) == (0, 5_000)
    assert meter.admit(secret, "unit", "responses", reserve=5_000).allowed  # threads still wait as before


def test_it_does_not_wait_for_this_processs_other_writer(db: Any, db_url: str, caller: Any) -> None:
    if "://" in db_url:
        pytest.skip("SQLite only (PostgreSQL never admits on the loop: tested above)")
    meter, sub, secret = meter_with_a_key(db, caller)
    writing, done = threading.Event(), threading.Event()

    def settle_slowly() -> None:  # a settlement being written on a metering thread
        with meter._writing:
            writing.set()
            done.wait(5)

    thread = threading.Thread(target=settle_slowly)
    thread.start()
    try:
        writing.wait(5)
        assert meter.admit_now(secret, "unit", "responses", reserve=5_000) is None
    finally:
        done.set()
        thread.join(5)
    assert ledger_of(db, sub) == (0, 0)
    assert meter.admit_now(secret, "unit", "responses", reserve=5_000) is not None


def test_it_does_not_wait_for_another_gateway_worker_writing(db: Any, db_url: str, caller: Any) -> None:
    """Workers of one gateway queue their writes on the write lock beside the database
    (store/writelock.py): while another holds it, the loop hands its admission to a thread."""
    if "://" in db_url:
        pytest.skip("SQLite only (PostgreSQL never admits on the loop: tested above)")
    meter, sub, secret = meter_with_a_key(db, caller)
    proc = holder(db.target.path, 0.5)
    try:
        assert meter.admit_now(secret, "unit", "responses", reserve=5_000) is None
        assert meter.admit(secret, "unit", "responses", reserve=5_000).allowed  # a thread waits its turn
    finally:
        proc.wait(10)
    assert ledger_of(db, sub) == (0, 5_000)
