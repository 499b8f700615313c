"""Numbered schema migrations, applied on open.

A blank database is created from the table models and stamped with every
migration (the baseline `m001_initial`); an existing database runs, in order,
each migration newer than the version it records, each migration and its record
in one transaction. A database whose recorded version is newer than this
planctl knows is refused before anything is written.

To change the schema: edit `tables.py`, append `mNNN_…` here that brings the
previous version to the new one, and add the previous version's schema as a
fixture under `tests/fixtures/` (the migration tests upgrade each and compare).
A migration may create new tables from the current models; when a later
migration alters such a table, first freeze the earlier one (give it the
table's old definition) so that every step still applies in order.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, func, inspect, select, text
from sqlmodel import Session, SQLModel

from planctl.domain.errors import Refused
from planctl.store import tables
from planctl.store.engine import Database
from planctl.store.location import SCHEMA_VERSION
from planctl.store.meter import CATALOG_STAMP

OnCreated = Callable[[Session], None]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def m001_initial(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)


def m002_sales_and_metering(conn: Connection) -> None:
    """Subscriptions, keys, discount codes, orders, extra packs, refunds, invoices, the ledger,
    usage records, counters and reservations; accounts gain their PAYG holds."""
    names = ("counters", "subscriptions", "api_keys", "discount_codes", "orders", "extra_packs",
             "refunds", "invoices", "ledger", "usage_counters", "reservations", "usage_records", "usage_daily")
    SQLModel.metadata.create_all(conn, tables=[SQLModel.metadata.tables[n] for n in names])
    conn.execute(text("ALTER TABLE accounts ADD COLUMN payg_reserved BIGINT DEFAULT 0 NOT NULL"))


def m003_leaner_metering_writes(conn: Connection) -> None:
    """Fewer index pages written per metered request: the ledger loses its two indexes (only
    `db check` read them, and it now sums the ledger in one scan), reservations index only the
    open holds; the catalog gets its first stamp (store/meter.py)."""
    for name in ("ix_ledger_subscription", "ix_ledger_account", "ix_reservations_key_id",
                 "ix_reservations_status_expiry"):
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_reservations_held ON reservations (expires_at) "
                      "WHERE status = 'held'"))
    conn.execute(text("INSERT INTO counters (name, value) VALUES (:name, :value) ON CONFLICT (name) DO NOTHING"),
                 {"name": CATALOG_STAMP, "value": secrets.randbits(62)})


def m004_fewer_usage_indexes(conn: Connection) -> None:
    """Usage records lose their group and model indexes: two B-tree inserts fewer per recorded
    request. Reports read whole days from the rollups and filter the raw rows of a time range."""
    for name in ("ix_usage_group_at", "ix_usage_model_at"):
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


def m005_gateway(conn: Connection) -> None:
    """The gateway: the upstreams it forwards to, and what it knows of each request it meters
    (time to first byte, upstream, the client's request and session ids, estimated usage)."""
    SQLModel.metadata.create_all(conn, tables=[SQLModel.metadata.tables["upstreams"]])
    have = {c["name"] for c in inspect(conn).get_columns("usage_records")}  # m002 creates today's table
    for column, kind in (("ttfb_ms", "INTEGER"), ("upstream", "VARCHAR"), ("client_request_id", "VARCHAR"),
                         ("session_id", "VARCHAR"), ("usage_estimated", "BOOLEAN")):
        if column not in have:
            conn.execute(text(f"ALTER TABLE usage_records ADD COLUMN {column} {kind}"))


def m006_versions_per_term(conn: Connection) -> None:
    """Renewed terms keep the plan version they were sold under (`subscription_terms`); until
    one starts, the subscription's own version holds, so existing subscriptions need no rows."""
    SQLModel.metadata.create_all(conn, tables=[SQLModel.metadata.tables["subscription_terms"]])


def m007_upstream_reports(conn: Connection) -> None:
    """What each gateway worker sees of each upstream (state, error rate, latency), for
    `planctl upstreams list`."""
    if "reports" not in {c["name"] for c in inspect(conn).get_columns("upstreams")}:  # m005 may have made it
        conn.execute(text("ALTER TABLE upstreams ADD COLUMN reports JSON"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", m001_initial),
    Migration(2, "sales and metering", m002_sales_and_metering),
    Migration(3, "leaner metering writes", m003_leaner_metering_writes),
    Migration(4, "fewer usage indexes", m004_fewer_usage_indexes),
    Migration(5, "gateway", m005_gateway),
    Migration(6, "plan versions per term", m006_versions_per_term),
    Migration(7, "upstream reports", m007_upstream_reports),
)
LATEST = MIGRATIONS[-1].version
assert LATEST == SCHEMA_VERSION, "update SCHEMA_VERSION in store/location.py with each migration"


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None  # None = pending


def recorded_version(conn: Connection) -> int:
    if not inspect(conn).has_table(tables.SchemaMigration.__tablename__):
        return 0
    row = conn.execute(select(func.max(tables.SchemaMigration.version))).scalar()
    return int(row or 0)


def status(db: Database) -> list[MigrationStatus]:
    """Every known migration with when it was applied (None when pending)."""
    with db.read() as session:
        conn = session.connection()
        applied: dict[int, datetime] = {}
        if recorded_version(conn):
            rows = session.execute(select(tables.SchemaMigration.version, tables.SchemaMigration.applied_at))
            applied = {int(v): at for v, at in rows}
        _refuse_newer(max(applied, default=0), db)
    return [MigrationStatus(m.version, m.name, applied.get(m.version)) for m in MIGRATIONS]


def migrate(db: Database, *, now: datetime | None = None, on_created: OnCreated | None = None) -> list[Migration]:
    """Apply pending migrations; returns those applied (empty when current).

    `on_created` runs inside the transaction that creates a blank database, so
    seeding it (the sample catalog) is all-or-nothing with its creation.
    """
    with db.read() as session:
        version = recorded_version(session.connection())
    _refuse_newer(version, db)
    if version == LATEST:
        return []
    applied: list[Migration] = []
    while True:
        with db.write() as session:
            conn = session.connection()
            if db.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(727001)"))
            version = recorded_version(conn)
            _refuse_newer(version, db)
            todo = [m for m in MIGRATIONS if m.version > version]
            if not todo:
                return applied
            stamp = now or datetime.now(timezone.utc)
            if version == 0:
                todo[0].apply(conn)  # the baseline creates the current schema
                batch = list(MIGRATIONS)
            else:
                batch = todo[:1]
                batch[0].apply(conn)
            for m in batch:
                session.add(tables.SchemaMigration(version=m.version, name=m.name, applied_at=stamp))
            session.flush()
            if version == 0 and on_created is not None:
                on_created(session)
            applied.extend(batch)


def _refuse_newer(version: int, db: Database) -> None:
    if version > LATEST:
        raise Refused(
            f"database {db.target.display} has schema version {version}, newer than this "
            f"planctl understands ({LATEST}); upgrade planctl, the database was not touched",
            reason="database_too_new",
        )
