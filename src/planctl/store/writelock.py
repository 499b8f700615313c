"""The write lock of metering on one SQLite file: the writes of a process's threads queue on a
thread lock, and those of every process on the file (the workers of `planctl serve`) on an OS
lock of a file beside it (`<database>-writers`), so a writer waiting for another is woken the
moment that one is done, instead of sleeping in SQLite's busy handler (1, 2, 5, 10 … 100 ms
between tries), which stretched the tail of a busy gateway to hundreds of milliseconds.

SQLite's own locking still decides: this only orders the writers that take it, and a writer that
does not (a CLI command) is waited for by SQLite's busy handler as before.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the thread lock alone
    fcntl = None  # type: ignore[assignment]


class WriteLock:
    def __init__(self, database: Path | None) -> None:
        self._thread = threading.Lock()
        self._file = f"{database}-writers" if database is not None and fcntl is not None else None
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if not self._thread.acquire(blocking):
            return False
        if self._fd is None and self._file is not None:  # made on the first write, not by readers
            try:
                self._fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:  # a read-only directory: the thread lock alone
                self._file = None
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException:
                self._thread.release()
                if blocking:
                    raise
                return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread.release()

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
