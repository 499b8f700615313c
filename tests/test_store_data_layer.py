"""One place per piece of data-layer knowledge: column lists and the timestamp codec.

The column lists of store/columns.py agree with the schema of store/tables.py.
Plain-SQL statements (metering, the reporting reader, the demo's bulk loader)
are built from those lists. When a test here fails, a table gained, lost or
reordered a column: change store/columns.py to match, and the statements and
row builders that use the list (the failure names the list).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from planctl.domain.latency import LATENCY_BUCKETS_MS
from planctl.store import columns, meter
from planctl.store.tables import (Account, ApiKey, ExtraPack, LedgerEntry, Reservation, Subscription, UsageCounter,
                                  UsageDaily, UsageRecord)


def written(table: type) -> tuple[str, ...]:
    """A table's columns in schema order, but for a serial id the database assigns."""
    return tuple(c.name for c in table.__table__.columns  # type: ignore[attr-defined]
                 if not (c.primary_key and c.type.python_type is int))


def test_every_usage_record_column_is_written_in_schema_order() -> None:
    assert columns.USAGE_COLUMNS == written(UsageRecord)


def test_every_ledger_column_is_written_in_schema_order() -> None:
    assert columns.LEDGER_COLUMNS == written(LedgerEntry)


def test_every_reservation_column_is_written_in_schema_order() -> None:
    assert columns.RESERVATION_COLUMNS == written(Reservation)


def test_every_rollup_column_is_written_and_sums_follow_the_latency_buckets() -> None:
    assert sorted(columns.ROLLUP_COLUMNS) == sorted(written(UsageDaily))
    assert len(columns.LATENCY_COLUMNS) == len(LATENCY_BUCKETS_MS) + 1
    assert set(columns.ROLLUP_SUMMED) <= set(columns.USAGE_COLUMNS)
    unique = [c for c in UsageDaily.__table__.constraints if c.__class__.__name__ == "UniqueConstraint"]  # type: ignore[attr-defined]
    assert [tuple(c.name for c in u.columns) for u in unique] == [columns.ROLLUP_DIMENSIONS]


def test_the_content_of_a_request_is_columns_of_its_usage_record() -> None:
    assert set(columns.CONTENT_COLUMNS) <= set(columns.USAGE_COLUMNS)
    assert set(columns.USAGE_BY_HAND) <= set(columns.USAGE_COLUMNS)


@pytest.mark.parametrize(("row", "table"), [
    (meter.KeyRow, ApiKey), (meter.AccountRow, Account), (meter.SubRow, Subscription), (meter.PackRow, ExtraPack),
    (meter.CounterRow, UsageCounter), (meter.HoldRow, Reservation),
])
def test_metering_rows_name_columns_of_their_table(row: type, table: type) -> None:
    names = [f.name for f in dataclasses.fields(row)]
    assert set(names) <= {c.name for c in table.__table__.columns}, set(names) - {  # type: ignore[attr-defined]
        c.name for c in table.__table__.columns}  # type: ignore[attr-defined]


def test_the_column_lists_import_nothing() -> None:
    """A command that only meters imports store/columns.py: it must stay free of the ORM."""
    code = "import sys, planctl.store.columns, planctl.store.meter; print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('sqlalchemy', 'sqlmodel')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_reporting_reader_binds_and_reads_instants_as_metering_stores_them(tmp_path: Path) -> None:
    from planctl.store.location import DbTarget
    from planctl.store.reader import Reader
    from planctl.store.sql import Tx

    beijing = datetime(2026, 11, 22, 0, 0, 0, 5, tzinfo=ZoneInfo("Asia/Shanghai"))
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (at TEXT)")
        connection.execute("INSERT INTO t (at) VALUES (?)", (Tx(connection, sqlite=True).at(beijing),))
    reader = Reader(DbTarget(f"sqlite:///{path}", path, "--db"))
    try:
        rows = list(reader.rows("SELECT at FROM t WHERE at = :at", {"at": beijing}))
        assert len(rows) == 1 and reader.instant(rows[0][0]) == beijing  # the text Tx stored, found and read back
        assert reader.instant(rows[0][0]).tzinfo is timezone.utc
    finally:
        reader.close()


def test_plain_reads_name_the_models_columns_and_kinds() -> None:
    """The ORM-free lists (store/reads.py, their columns in store/columns.py): each must exist in tables.py,
    with every instant, flag and JSON column converted as the model converts it."""
    from sqlalchemy import JSON, Boolean
    from sqlmodel import SQLModel

    from planctl.store.reads import TABLES
    from planctl.store.tables import UTCDateTime

    for table in TABLES:
        model = SQLModel.metadata.tables[table.name]
        assert set(table.columns) <= set(model.columns.keys()), table.name
        kinds = {c: type(model.columns[c].type) for c in table.columns}
        assert set(table.instants) == {c for c, k in kinds.items() if issubclass(k, UTCDateTime)}, table.name
        assert set(table.flags) == {c for c, k in kinds.items() if issubclass(k, Boolean)}, table.name
        assert set(table.documents) == {c for c, k in kinds.items() if issubclass(k, JSON)}, table.name
