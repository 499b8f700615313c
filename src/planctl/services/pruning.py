"""Retention: remove old raw usage records (daily rollups keep the history of consumption) and the
closed reservations of the same period (admission writes one per reserved request)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from planctl.domain.clock import iso
from planctl.services import audit
from planctl.services.audit import Caller
from planctl.store.engine import Database
from planctl.store.tables import Reservation, UsageRecord


@dataclass(frozen=True)
class PruneSummary:
    before: datetime
    records: int
    oldest: datetime | None
    newest: datetime | None
    reservations: int = 0  # closed (settled, released, expired) ones; open holds are never removed

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
        holds = session.execute(select(func.count()).select_from(Reservation).where(_closed_before(before))).scalar()
    from planctl.store.tables import UTCDateTime

    fix = UTCDateTime().process_result_value
    return PruneSummary(before, int(count), fix(oldest, db.engine.dialect), fix(newest, db.engine.dialect),
                        int(holds or 0))


def _closed_before(before: datetime) -> Any:
    return (Reservation.status != "held") & (Reservation.created_at < before)


def prune(db: Database, before: datetime, *, caller: Caller, now: datetime) -> tuple[int, int]:
    """Delete raw records, and closed reservations, older than `before` in one transaction;
    returns how many of each."""
    with db.write() as session:
        removed = int(session.execute(delete(UsageRecord).where(UsageRecord.at < before)).rowcount)
        holds = int(session.execute(delete(Reservation).where(_closed_before(before))).rowcount)
        audit.record(session, caller, now, "usage", f"pruned {removed} raw usage records and {holds} closed "
                     f"reservations before {iso(before)}")
        return removed, holds
