"""Retention: remove old raw usage records; daily rollups keep the history of consumption."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from planctl.domain.clock import iso
from planctl.services import audit
from planctl.services.audit import Caller
from planctl.store.engine import Database
from planctl.store.tables import UsageRecord


@dataclass(frozen=True)
class PruneSummary:
    before: datetime
    records: int
    oldest: datetime | None
    newest: datetime | None

    @property
    def before_iso(self) -> str:
        return iso(self.before)

    @property
    def oldest_iso(self) -> str | None:
        return self.oldest and iso(self.oldest)

    @property
    def newest_iso(self) -> str | None:
        return self.newest and iso(self.newest)


def summarize(db: Database, before: datetime) -> PruneSummary:
    with db.read() as session:
        count, oldest, newest = session.execute(
            select(func.count(), func.min(UsageRecord.at), func.max(UsageRecord.at)).where(UsageRecord.at < before)
        ).one()
    from planctl.store.tables import UTCDateTime

    fix = UTCDateTime().process_result_value
    return PruneSummary(before, int(count), fix(oldest, db.engine.dialect), fix(newest, db.engine.dialect))


def prune(db: Database, before: datetime, *, caller: Caller, now: datetime) -> int:
    """Delete raw records older than `before` in one transaction; returns how many."""
    with db.write() as session:
        removed = session.execute(delete(UsageRecord).where(UsageRecord.at < before)).rowcount
        audit.record(session, caller, now, "usage", f"pruned {removed} raw usage records before {iso(before)}")
        return int(removed)
