"""The audit log: who changed what, written in the same transaction as the change."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from planctl.store.engine import Database
from planctl.store.queries import starts_with
from planctl.store.tables import AuditEntry


@dataclass(frozen=True)
class Caller:
    """Who is acting, and through which command (for the audit log)."""

    actor: str
    command: str

    @classmethod
    def from_env(cls, command: str) -> Caller:
        actor = os.environ.get("PLANCTL_ACTOR") or _os_user()
        return cls(actor=actor, command=command)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def record(session: Session, caller: Caller, now: datetime, target: str, summary: str) -> None:
    """Append one entry. Callers pass summaries that never contain a secret."""
    session.add(AuditEntry(at=now, actor=caller.actor, command=caller.command, target=target, summary=summary))


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    target: str | None = None
    command: str | None = None
    limit: int = 100


def entries(db: Database, flt: AuditFilter) -> list[AuditEntry]:
    """Newest first; time filters are half-open [since, until)."""
    query = select(AuditEntry)
    if flt.since:
        query = query.where(AuditEntry.at >= flt.since)
    if flt.until:
        query = query.where(AuditEntry.at < flt.until)
    if flt.actor:
        query = query.where(AuditEntry.actor == flt.actor)
    if flt.target:
        query = query.where(starts_with(AuditEntry.target, flt.target))
    if flt.command:
        query = query.where(starts_with(AuditEntry.command, flt.command))
    query = query.order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc()).limit(flt.limit)
    with db.read() as session:
        return list(session.exec(query))
