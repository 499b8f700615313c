"""The settlement journal: every settlement of a worker is appended (one JSON line) to a local
file before the client's stream is closed, and flushed to disk in small groups within
`FLUSH_AFTER` seconds; the database gets it afterwards. A worker killed in between loses nothing (a written line is the
operating system's to keep): its files are replayed into the database by the next worker that
starts (or by a running one, within a few seconds), and the request id makes replaying twice
harmless. A machine that loses power can lose the lines written since the last flush (up to
`FLUSH_AFTER`), as SQLite in WAL mode with `synchronous = NORMAL` can lose its last
transactions: the request does not wait for the disk. Flushing after each request instead cost
about 0.3 ms of every request's latency (an fdatasync holds up the file system's other writes,
the database's among them).

Files: `<dir>/<pid>-<time>-<n>.jsonl`. A worker holds an exclusive `flock` on each of its own
files while it lives, so a file nobody can lock belongs to a live worker, and a file anyone can
lock is an orphan to replay. A file is deleted once every line in it is in the database; a worker
starts a new file every `SEGMENT_LINES` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from planctl.metering.recording import UsageInput

SEGMENT_LINES = 10_000
FLUSH_AFTER = 0.02  # seconds between a line's write and the flush that takes it to the disk, at most
log = logging.getLogger("planctl.gateway")


def encode(u: UsageInput) -> bytes:
    return orjson.dumps(u) + b"\n"  # orjson writes a dataclass itself, 20x faster than via asdict


def decode(line: bytes) -> UsageInput | None:
    """A journal line as a usage record; None for a line torn by a crash or not ours."""
    try:
        data = orjson.loads(line)
        if data.get("at"):
            data["at"] = datetime.fromisoformat(data["at"])
        return UsageInput(**data)
    except (ValueError, TypeError, AttributeError):
        return None


def read(path: Path) -> list[UsageInput]:
    """The settlements in one file, in order (a torn last line is skipped)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return [u for line in raw.split(b"\n") if line.strip() and (u := decode(line)) is not None]


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl")) if directory.is_dir() else []


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[int | None]:
    """The file's descriptor, locked, when no live worker holds it (None when one does)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


class Segment:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours until we exit or delete it
        self.lines = 0  # written
        self.open = 0  # written, not yet in the database

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


class Journal:
    """The journal of one worker process (use from its event loop)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._segment: Segment | None = None
        self._live: list[Segment] = []
        self._segments = 0
        self._unsynced: set[int] = set()  # descriptors written since their last flush
        self._flusher: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Lines written and not yet in the database (this worker's)."""
        return sum(s.open for s in self._live)

    def append(self, u: UsageInput) -> Segment:
        """Write one settlement to the journal file (in the operating system's hands at once, so a
        killed worker loses nothing) and have it flushed to disk soon, with the ones written
        meanwhile; the segment to mark `done` later."""
        segment = self._segment
        if segment is None or segment.lines >= SEGMENT_LINES:
            self._segments += 1
            name = f"{os.getpid()}-{time.time_ns()}-{self._segments}.jsonl"
            segment = self._segment = Segment(self.directory / name)
            self._live.append(segment)
        os.write(segment.fd, encode(u))
        segment.lines += 1
        segment.open += 1
        self._unsynced.add(segment.fd)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return segment

    async def _flush(self) -> None:
        """Flush to disk what was written, in groups: what is written within FLUSH_AFTER of the
        first line goes with it, and everything written during one flush goes with the next."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(FLUSH_AFTER)
        while self._unsynced:
            fds, self._unsynced = self._unsynced, set()
            try:
                await loop.run_in_executor(self._disk, self._sync, fds)
            except (OSError, RuntimeError) as exc:  # written; only their way to the disk failed (or we close)
                log.error("could not flush the journal to disk: %s", exc)
                return

    def _sync(self, fds: set[int]) -> None:
        for fd in fds:
            os.fdatasync(fd)

    def done(self, segment: Segment, count: int = 1) -> None:
        """`count` lines of `segment` are in the database: a full segment with none left is deleted."""
        segment.open -= count
        if segment.open == 0 and segment is not self._segment:
            self._live.remove(segment)
            segment.delete()

    def close(self) -> None:
        """At exit: delete the files whose lines are all in the database; the others stay, for the
        next worker to replay."""
        if self._flusher is not None:
            self._flusher.cancel()
        for segment in list(self._live):
            if segment.open == 0:
                segment.delete()
            else:
                os.fsync(segment.fd)
                os.close(segment.fd)
        self._live.clear()
        self._segment = None
        self._disk.shutdown(wait=True)

    def paths(self) -> set[Path]:
        """This worker's own files."""
        return {s.path for s in self._live}


def replay(directory: Path, record_many: Any, ours: set[Path] | None = None) -> int:
    """Put the settlements of dead workers' files into the database (`record_many`: a list of
    UsageInput → ImportReport) and delete the files; the number of lines replayed. A file is
    kept locked while it is replayed, so two workers never replay it at once (and if they did,
    the request ids would make the second one change nothing)."""
    replayed = 0
    for path in files(directory):
        if ours and path in ours:
            continue
        with claimed(path) as fd:
            if fd is None:
                continue
            entries = read(path)
            if entries:
                record_many(entries)
            path.unlink(missing_ok=True)
            replayed += len(entries)
    return replayed


def unreplayed(directory: Path, known: Any) -> tuple[int, int]:
    """(lines not in the database, of which in files a live worker holds): `known` maps a list of
    request ids to those already recorded."""
    missing = live = 0
    for path in files(directory):
        ids = [u.request_id for u in read(path)]
        if not ids:
            continue
        absent = len(ids) - len(known(ids))
        missing += absent
        with claimed(path) as fd:
            if fd is None:
                live += absent
    return missing, live
