"""The metering write lock on a SQLite file (store/writelock.py): the writers of every process
queue on it, a waiting one is woken as soon as the holder lets go (no busy-handler sleeps), a
process that dies holding it frees it, and a caller that must not wait is told so at once."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from helpers.procs import holder

from planctl.store.writelock import WriteLock

def test_a_writer_of_another_process_waits_and_is_woken_at_once(tmp_path: Path) -> None:
    db = tmp_path / "planctl.db"
    proc = holder(db, 0.4)
    lock = WriteLock(db)
    try:
        assert not lock.acquire(blocking=False)  # held elsewhere: told at once
        assert lock.acquire()  # waits for the other process
        got = time.monotonic()
        lock.release()
        assert proc.stdout is not None
        released = float(proc.stdout.readline().split()[1])
        assert 0 <= got - released < 0.1  # woken when it let go, not at a busy handler's next try
    finally:
        lock.close()
        proc.wait(10)
    assert (tmp_path / "planctl.db-writers").exists()


def test_a_process_killed_holding_it_frees_it(tmp_path: Path) -> None:
    db = tmp_path / "planctl.db"
    proc = holder(db, 60)
    lock = WriteLock(db)
    try:
        assert not lock.acquire(blocking=False)
        proc.kill()
        proc.wait(10)
        assert lock.acquire(blocking=False)
        lock.release()
    finally:
        lock.close()


def test_threads_of_one_process_queue_on_it_too(tmp_path: Path) -> None:
    lock = WriteLock(tmp_path / "planctl.db")
    inside, most = 0, 0

    def write() -> None:
        nonlocal inside, most
        for _ in range(200):
            with lock:
                inside += 1
                most = max(most, inside)
                inside -= 1

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lock.close()
    assert most == 1


def test_a_directory_it_cannot_write_leaves_the_thread_lock_alone(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        ro = Path("/proc/planctl-nowhere")  # even root cannot create a file there
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
    lock = WriteLock(ro / "planctl.db")
    assert lock.acquire(blocking=False) and not lock.acquire(blocking=False)
    lock.release()
    lock.close()
