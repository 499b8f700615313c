"""Import: many usage records, streamed, in batches of one transaction each (`usage import`,
and the gateway's grouped settlements through `Meter.record_many`).

Lines come as (line number, UsageInput | error text); a line that cannot be charged is
rejected whole and reported with its number, a request id recorded before with other
content is reported as conflicting, and the others go on through the same `Batch` as
`record`. A batch that lost a race for a request id starts over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from planctl.domain.errors import Conflict, InvalidInput, Note, NotFound, Refused
from planctl.domain.secrets import redact
from planctl.metering.catalog import Catalogs
from planctl.metering.recording import RETRIES, Batch, RaceLost, UsageInput, validate
from planctl.metering.state import MeterDb


@dataclass
class ImportReport:
    new: int = 0
    duplicate: int = 0
    rejected: int = 0
    rejected_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, why): the first ones
    conflicting: int = 0  # request ids recorded before with other content
    conflicting_lines: list[tuple[int, str]] = field(default_factory=list)
    retried: int = 0  # batches started over after losing a race for a request id (PostgreSQL)
    values: dict[int, tuple[Any, ...]] | None = None  # line number -> the record's values, when asked for

    KEEP = 1_000  # rejected lines kept with their reasons: a file of bad lines must not fill the memory

    def reject(self, lines: list[tuple[int, str]]) -> None:
        """Count the rejected lines of one batch; keep the first ones, in file order, secrets masked."""
        self.rejected += self._keep(self.rejected_lines, lines)

    def conflict(self, lines: list[tuple[int, str]]) -> None:
        self.conflicting += self._keep(self.conflicting_lines, lines)

    def _keep(self, kept: list[tuple[int, str]], lines: list[tuple[int, str]]) -> int:
        room = self.KEEP - len(kept)
        if room > 0:
            kept.extend((n, _redacted(why)) for n, why in sorted(lines)[:room])
        return len(lines)


def _redacted(why: str) -> str:
    """`why` with any secret masked, still carrying the code the CLI words (a Note)."""
    return Note(redact(why), code=why.code, **why.fields) if isinstance(why, Note) else redact(why)


def import_usage(db: MeterDb, catalogs: Catalogs, lines: Any, *, now: datetime, batch_size: int = 2_000,
                 progress: Any = None, keep: bool = False) -> ImportReport:
    """Record (line number, UsageInput | error text) pairs in batches, one transaction each.

    A line that cannot be charged is rejected whole and reported; the others go on. With `keep`
    the report has the values of each new record by line number (the gateway logs them).
    """
    report = ImportReport(values={} if keep else None)
    chunk: list[tuple[int, Any]] = []
    for item in lines:
        chunk.append(item)
        if len(chunk) >= batch_size:
            _import_chunk(db, catalogs, chunk, now, report)
            chunk = []
            if progress:
                progress(report)
    if chunk:
        _import_chunk(db, catalogs, chunk, now, report)
        if progress:
            progress(report)
    return report


@dataclass
class _ChunkOutcome:
    new: int = 0
    duplicate: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    conflicting: list[tuple[int, str]] = field(default_factory=list)
    values: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # line number -> the new record's values


def _import_chunk(db: MeterDb, catalogs: Catalogs, chunk: list[tuple[int, Any]], now: datetime,
                  report: ImportReport) -> None:
    invalid: list[tuple[int, str]] = []
    valid: list[tuple[int, UsageInput]] = []
    for number, item in chunk:
        if isinstance(item, str):
            invalid.append((number, item))
            continue
        try:
            validate(item, now=now)
            valid.append((number, item))
        except InvalidInput as exc:
            invalid.append((number, exc.message))
    for attempt in range(RETRIES + 1):
        try:
            with db.tx(write=True) as tx:
                out = _charge_chunk(Batch(tx, catalogs, now), valid)
            break
        except RaceLost:
            if attempt == RETRIES:
                raise Conflict("request ids of this file are being recorded by another process; run the import "
                               "again (it is idempotent)") from None
            report.retried += 1
    report.new += out.new
    report.duplicate += out.duplicate
    if report.values is not None:
        report.values.update(out.values)
    report.reject(invalid + out.rejected)
    report.conflict(out.conflicting)


def _charge_chunk(batch: Batch, valid: list[tuple[int, UsageInput]]) -> _ChunkOutcome:
    out = _ChunkOutcome()
    batch.lock([u for _, u in valid])
    known = batch.recorded([u.request_id for _, u in valid])
    for number, u in valid:
        rid = u.request_id
        stored = known.get(rid)
        if stored is None and rid in batch.index:
            stored = batch.content(rid)
        if stored is not None:
            differ = batch.differences(u, stored)
            if differ:
                out.conflicting.append((number, f"request id {rid!r} was already recorded with another "
                                                f"{', '.join(differ)}"))
            else:
                out.duplicate += 1
            continue
        try:
            out.values[number] = batch.charge(u)[0]  # refuses before it changes anything
        except (InvalidInput, NotFound, Refused) as exc:
            out.rejected.append((number, Note(exc.message, code=exc.code, **exc.fields)))  # the CLI words it
            continue
        out.new += 1
    batch.flush()
    return out
