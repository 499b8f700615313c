"""The settlement writer of one worker: settlements queue here (already in the journal, when there
is one) and go into the database in the background.

Group commit (the default): whatever queued while the last transaction ran, or within a few
milliseconds of a settlement that found the writer idle, is written in one transaction
(`Meter.record_many`), so concurrent requests share a commit instead of taking one each; the
wait also leaves the database to the admission of the client's next request, which on SQLite the
event loop makes itself when no write is under way. On SQLite the event loop writes a group
itself too (at most INLINE_MAX settlements, about 3 ms) when no other writer holds the database
(`Meter.record_many_now`), and hands it to a metering thread otherwise: a group written on a
thread competed with the event loop for the interpreter lock, and one worker served about half
as many requests. Off: one transaction per settlement (`Meter.record`), to compare.

When the database refuses (locked, unreachable), the writer waits and tries again: the
settlements stay queued, and in the journal, meanwhile. A settlement the database can never take
(its key was deleted, say) is logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from planctl.domain.errors import InvalidInput, NotFound
from planctl.gateway.metrics import BACKLOG
from planctl.metering import Meter
from planctl.metering.recording import UsageInput

log = logging.getLogger("planctl.gateway")

BATCH = 500  # settlements in one transaction at most
INLINE_MAX = 64  # settlements in one transaction the event loop writes itself (about 3 ms of its time)
WINDOW = 0.02  # seconds a settlement that found the writer idle waits for others to share its transaction
RETRY = (0.05, 2.0)  # the first wait after a failed write, and the longest


@dataclass
class Pending:
    usage: UsageInput
    done: Callable[[tuple[Any, ...] | None, str | None], None]  # (the record's values, or None; why not)


class Writer:
    def __init__(self, meter: Meter, run: Callable[..., Awaitable[Any]], *, group: bool = True,
                 inline: bool = True) -> None:
        self.meter, self.run, self.group = meter, run, group
        self.inline = inline and group and meter.sqlite  # the event loop writes a group itself when it can
        self.queue: list[Pending] = []
        self.failing = False  # the last write failed: the database is in trouble
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[Any] | None = None

    @property
    def backlog(self) -> int:
        return len(self.queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def put(self, pending: Pending) -> None:
        self.queue.append(pending)
        BACKLOG.inc()
        self._idle.clear()
        self._ready.set()

    async def stop(self, timeout: float) -> int:
        """Write what is queued (up to `timeout` seconds); what is left (it stays in the journal)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return len(self.queue)

    async def _loop(self) -> None:
        wait = RETRY[0]
        while True:
            if not self.queue:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                if self.group:  # company for the transaction, and the database left to admissions meanwhile
                    await asyncio.sleep(WINDOW)
            batch = self.queue[:INLINE_MAX if self.inline else BATCH if self.group else 1]
            try:
                results = self._write_now([p.usage for p in batch]) if self.inline else None
                if results is None:
                    results = await self.run(self._write, [p.usage for p in batch])
            except Exception as exc:  # the database is in trouble: keep them, try again
                if not self.failing:
                    log.error("settlements wait: the database refused them: %s: %s", type(exc).__name__, exc)
                self.failing = True
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY[1])
                continue
            if self.failing:
                log.warning("the database takes settlements again")
            self.failing, wait = False, RETRY[0]
            del self.queue[:len(batch)]
            BACKLOG.dec(len(batch))
            for pending, (values, why) in zip(batch, results):
                try:
                    pending.done(values, why)
                except Exception:  # noqa: BLE001 - a log line must not stop the writer
                    log.exception("after settling %s", pending.usage.request_id)

    def _write_now(self, usages: list[UsageInput]) -> list[tuple[tuple[Any, ...] | None, str | None]] | None:
        """On the event loop, when nothing has to wait and the batch is small (SQLite)."""
        if not self.group:
            return None
        report = self.meter.record_many_now(usages)
        return None if report is None else self._outcomes(report, len(usages))

    def _write(self, usages: list[UsageInput]) -> list[tuple[tuple[Any, ...] | None, str | None]]:
        if not self.group:
            out = []
            for u in usages:
                try:
                    r = self.meter.record(u)
                except (InvalidInput, NotFound) as exc:
                    out.append((None, exc.message))
                    continue
                out.append((r.values, r.note if r.values is not None else "already recorded"))
            return out
        return self._outcomes(self.meter.record_many(usages, keep=True), len(usages))

    @staticmethod
    def _outcomes(report: Any, count: int) -> list[tuple[tuple[Any, ...] | None, str | None]]:
        why = {**dict(report.rejected_lines), **dict(report.conflicting_lines)}
        return [(report.values.get(n), why.get(n, None if n in report.values else "already recorded"))
                for n in range(1, count + 1)]
