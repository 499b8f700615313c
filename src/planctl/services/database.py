"""Opening the database and keeping it healthy: migrate, seed, check, back up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from typing import Any

from sqlalchemy import func, select, text
from sqlmodel import Session

from planctl.domain.errors import Conflict, InvalidInput, Note
from planctl.services.catalog import load_sample_catalog
from planctl.store import migrations
from planctl.store.engine import Database, open_engine
from planctl.store.location import DbTarget
from planctl.store.tables import Account, ExtraPack, LedgerEntry, Reservation, Subscription


def open_database(target: DbTarget, *, now: datetime, migrate: bool = True) -> Database:
    """Open (creating if needed), bring the schema up to date and seed a new database.

    With `migrate=False` the schema is left as it is (`db migrate --dry-run`),
    but a database newer than this planctl is still refused.
    """
    db = open_engine(target)
    try:
        if migrate:
            migrations.migrate(db, now=now, on_created=lambda s: load_sample_catalog(s, now))
        else:
            migrations.status(db)
    except BaseException:
        db.dispose()
        raise
    return db


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check(db: Database) -> list[CheckResult]:
    """Integrity, foreign keys and schema version. Later: ledger invariants."""
    results: list[CheckResult] = []
    with db.read() as session:
        conn = session.connection()
        version = migrations.recorded_version(conn)
        results.append(CheckResult(
            "schema_version", version == migrations.LATEST,
            Note(f"version {version} of {migrations.LATEST}",
                 code=None if version == migrations.LATEST else "schema_behind"),
        ))
        if db.dialect == "sqlite":
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
            results.append(CheckResult("integrity", rows == ["ok"], "; ".join(rows[:5])))
            bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            results.append(CheckResult(
                "foreign_keys", not bad, "ok" if not bad else f"{len(bad)} rows point at missing rows"))
        else:
            conn.execute(text("SELECT 1"))
            results.append(CheckResult("integrity", True, "server-side (PostgreSQL checks its own pages)"))
        results.extend(ledger_checks(session))
    return results


def check_journal(db: Database, directory: Path) -> CheckResult:
    """Settlements in the gateway's journal that the database does not have (a worker was killed
    and no worker has started since to replay them)."""
    from planctl.gateway import journal
    from planctl.store import meter

    def known(ids: list[str]) -> set[str]:
        with db.tx(write=False) as tx:
            return meter.known_request_ids(tx, ids)

    missing, live = journal.unreplayed(directory.expanduser(), known)
    if not missing:
        return CheckResult("journal", True, f"nothing to replay in {directory}")
    detail = f"{missing} settlements in {directory} are not in the database"
    if live:
        detail += f" ({live} of them in files of running workers, which are writing them now)"
    return CheckResult("journal", False, Note(detail, code="journal_to_replay"))


def ledger_checks(session: Session) -> list[CheckResult]:
    """Every stored balance equals the sum of its ledger entries (SPEC §5 "Ledger").

    available = granted − used − held, and grants, debits, holds and releases are
    all in the ledger; it is summed in one scan per pool (it has no index to spare
    the metered writes).
    """
    def sums(pool: str, owner: Any) -> dict[Any, int]:
        return dict(session.execute(select(owner, func.sum(LedgerEntry.amount))
                                    .where(LedgerEntry.pool == pool).group_by(owner)).all())

    balances = (
        ("ledger_plan_credit", sums("plan", LedgerEntry.subscription_id),
         select(Subscription.id, Subscription.credit_granted, Subscription.credit_used + Subscription.credit_reserved)),
        ("ledger_extra_usage", sums("extra", LedgerEntry.pack_id),
         select(ExtraPack.id, ExtraPack.credit, ExtraPack.used + ExtraPack.reserved)),
        ("ledger_payg", sums("payg", LedgerEntry.account_id),
         select(Account.id, Account.payg_balance, Account.payg_reserved)),
    )
    out = []
    for name, ledger, query in balances:
        bad = [f"{ident}: balance {(granted or 0) - used} != ledger {ledger.get(ident, 0)}"
               for ident, granted, used in session.execute(query) if (granted or 0) - used != ledger.get(ident, 0)]
        out.append(CheckResult(name, not bad, "ok" if not bad else f"{len(bad)} differ: " + "; ".join(bad[:3])))
    out.append(_counter_check(session))
    out.append(_overdrawn_check(session))
    return out


def _overdrawn_check(session: Session) -> CheckResult:
    """Every balance below zero, by how much: plan credit (granted − used) and PAYG balances. A
    request recorded without a hold is charged in full, so it can overshoot (SPEC §5): that is no
    corruption (the check passes), but an operator must see where and by how much."""
    from planctl.domain.money import credit_json

    found = [f"subscription {i} by {credit_json(-left)}" for i, left in session.execute(
        select(Subscription.id, Subscription.credit_granted - Subscription.credit_used)
        .where(Subscription.credit_granted.is_not(None),  # type: ignore[union-attr]
               Subscription.credit_granted < Subscription.credit_used).order_by(Subscription.id))]
    found += [f"account {i} (pay-as-you-go) by {credit_json(-balance)}" for i, balance in session.execute(
        select(Account.id, Account.payg_balance).where(Account.payg_balance < 0).order_by(Account.id))]
    return CheckResult("overdrawn", True, "none" if not found else f"{len(found)} balances below zero: "
                       + "; ".join(found))


def _counter_check(session: Session) -> CheckResult:
    """Holds recorded on reservations equal the holds stored on balances; none is negative."""
    held = session.execute(select(func.coalesce(func.sum(Reservation.amount), 0))
                           .where(Reservation.status == "held")).scalar()
    negative = session.execute(select(func.count()).select_from(Subscription).where(
        (Subscription.credit_reserved < 0))).scalar()
    negative += session.execute(select(func.count()).select_from(ExtraPack).where(
        (ExtraPack.reserved < 0) | (ExtraPack.used > ExtraPack.credit))).scalar()
    negative += session.execute(select(func.count()).select_from(Account).where(
        (Account.payg_reserved < 0))).scalar()
    ok = negative == 0
    return CheckResult("holds", ok, f"{held} µcr held by open reservations"
                       + ("" if ok else f"; {negative} balances are negative"))


def backup(db: Database, destination: Path) -> int:
    """A consistent online copy of a SQLite database (VACUUM INTO); returns its size."""
    if db.dialect != "sqlite":
        raise InvalidInput("db backup copies SQLite files; back up PostgreSQL with pg_dump")
    destination = destination.expanduser().absolute()
    if destination.exists():
        raise Conflict(f"{destination} already exists; choose a new file name")
    if not destination.parent.is_dir():
        raise InvalidInput(f"directory {destination.parent} does not exist")
    old_umask = os.umask(0o077)  # the copy holds the same data: keep it private
    try:
        raw = db.engine.raw_connection()  # VACUUM cannot run inside a transaction
        try:
            raw.cursor().execute("VACUUM INTO ?", (str(destination),))
        finally:
            raw.close()
    finally:
        os.umask(old_umask)
    return destination.stat().st_size
