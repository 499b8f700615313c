"""The plain-SQL metering layer: the catalog cache and its stamp, the ORM-free SQLite path of the
CLI, driver errors, and the SQL dialect conversion (store/sql.py, store/meter.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import NOW, sqlite_dump
from helpers.metering import auth, buy, catalogs, install, plan, use
from helpers.sales import account

FIXTURES = Path(__file__).parent / "fixtures"


def _stamp(db: Any) -> int | None:
    from planctl.store import meter

    with db.tx(write=False) as tx:
        return meter.catalog_stamp(tx)


def _bought(db: Any, caller: Any) -> Any:
    install(db, caller, plan("meter", total_credit="1"))
    return buy(db, caller, account(db, caller), "meter")


# ---------------------------------------------------------------- the catalog cache


def test_a_price_change_reaches_the_next_record_in_the_same_process(db: Any, caller: Any) -> None:
    from planctl.services import catalog

    b = _bought(db, caller)
    assert use(db, b.key, "before", 1000).record.cost == 1000  # unit: 1 µcr per input token
    catalog.set_model_price(db, {"id": "unit", "input_price": "3"}, create=False, caller=caller, now=NOW)
    assert use(db, b.key, "after", 1000).record.cost == 3000


def test_a_new_alias_bills_at_once(db: Any, caller: Any) -> None:
    from planctl.services import catalog

    b = _bought(db, caller)
    assert auth(db, b.secret, model="house-model-1").reason == "model_not_in_plan"
    catalog.set_alias(db, "house-model-*", "unit", caller=caller, now=NOW)
    allowed = auth(db, b.secret, model="house-model-1")
    assert (allowed.allowed, allowed.billed_model) == (True, "unit")


def test_every_catalog_write_renews_the_stamp_and_metering_does_not(db: Any, caller: Any) -> None:
    from planctl.services import catalog, settings

    b = _bought(db, caller)
    first = _stamp(db)
    assert first is not None
    use(db, b.key, "r1", 10)
    auth(db, b.secret, reserve=10)
    assert _stamp(db) == first
    catalog.set_model_price(db, {"id": "unit", "output_price": "4"}, create=False, caller=caller, now=NOW)
    second = _stamp(db)
    assert second not in (None, first)
    settings.set_value(db, "currency", "EUR", caller=caller, now=NOW)
    assert _stamp(db) not in (None, first, second)


def test_a_database_without_a_stamp_is_metered_and_then_stamped(db: Any, caller: Any) -> None:
    from planctl.store import meter

    b = _bought(db, caller)
    with db.tx(write=True) as tx:
        tx.run("DELETE FROM counters WHERE name = :name", {"name": meter.CATALOG_STAMP})
    catalogs(db, fresh=True)  # nothing cached
    assert auth(db, b.secret).allowed  # a read: loads the catalog without caching it
    assert _stamp(db) is None
    assert use(db, b.key, "r1", 10).record.cost == 10  # a write gives the catalog its stamp
    assert _stamp(db) is not None


# ---------------------------------------------------------------- the CLI's SQLite path


def _file_with_a_key(path: Path, caller: Any) -> Any:
    """A SQLite file with one subscription bought; returns the purchase."""
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    db = open_database(resolve_target(str(path)), now=NOW)
    try:
        return _bought(db, caller)
    finally:
        db.dispose()


def _planctl(db_path: Path, *args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter; `code` runs after it (sys.modules is still there)."""
    script = ("import sys\nfrom planctl.cli import main\nsys.argv = ['planctl', *sys.argv[1:]]\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    status = exc.code\n" + code +
              "sys.exit(status)\n")
    env = {**os.environ, "PLANCTL_DB": str(db_path), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_authorize_on_a_current_sqlite_file_does_not_load_sqlalchemy(tmp_path: Path, caller: Any) -> None:
    path = tmp_path / "current.db"
    b = _file_with_a_key(path, caller)
    secret = tmp_path / "secret"
    secret.write_text(b.secret)
    done = _planctl(path, "authorize", "--model", "unit", "--key-file", str(secret), "--json",
                    code="print('sqlalchemy loaded' if 'sqlalchemy' in sys.modules else 'no sqlalchemy', "
                         "file=sys.stderr)\n")
    assert done.returncode == 0, done.stderr
    assert '"allowed": true' in done.stdout
    assert "no sqlalchemy" in done.stderr


def test_cli_authorize_migrates_an_older_file_first(tmp_path: Path) -> None:
    from planctl.store.location import SCHEMA_VERSION

    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / "schema_v2_sqlite.sql").read_text())
    conn.close()
    done = _planctl(path, "authorize", "--model", "unit", "--key-env", "NO_SUCH_KEY_VAR", "--json")
    assert done.returncode == 2 and "NO_SUCH_KEY_VAR" in done.stderr  # refused before the database is read
    os.environ["PLANCTL_TEST_SECRET"] = "sk-not-a-key"
    try:
        done = _planctl(path, "authorize", "--model", "unit", "--key-env", "PLANCTL_TEST_SECRET", "--json")
    finally:
        del os.environ["PLANCTL_TEST_SECRET"]
    assert done.returncode == 5 and '"reason": "key_unknown"' in done.stdout, done.stderr
    version = sqlite3.connect(path).execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    assert version == SCHEMA_VERSION


# ---------------------------------------------------------------- driver errors


def test_a_busy_database_is_refused_as_a_conflict_and_left_untouched(tmp_path: Path, caller: Any) -> None:
    from planctl.domain.errors import Conflict
    from planctl.metering.recording import UsageInput, record
    from planctl.store.sql import SqliteFile

    path = tmp_path / "busy.db"
    b = _file_with_a_key(path, caller)
    before = sqlite_dump(path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    meter_db = SqliteFile(path, str(path))
    meter_db.connection.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(Conflict, match="is busy"):
            record(meter_db, catalogs(meter_db), UsageInput(request_id="r1", key=b.key, model="unit",
                                                            input_tokens=1, output_tokens=0, status_code=200), now=NOW)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert sqlite_dump(path) == before
    assert record(meter_db, catalogs(meter_db), UsageInput(request_id="r1", key=b.key, model="unit", input_tokens=1,
                                                           output_tokens=0, status_code=200), now=NOW).row
    meter_db.dispose()


def test_a_read_only_database_is_refused_with_a_clear_line(tmp_path: Path, caller: Any) -> None:
    from planctl.domain.errors import InvalidInput
    from planctl.metering.recording import UsageInput, record
    from planctl.store.sql import SqliteFile

    path = tmp_path / "ro.db"
    b = _file_with_a_key(path, caller)
    meter_db = SqliteFile(path, str(path))
    meter_db.connection.execute("PRAGMA query_only = ON")  # refuses writes as a read-only file would
    try:
        with pytest.raises(InvalidInput, match="read-only"):
            record(meter_db, catalogs(meter_db), UsageInput(request_id="r1", key=b.key, model="unit",
                                                            input_tokens=1, output_tokens=0, status_code=200), now=NOW)
    finally:
        meter_db.dispose()


# ---------------------------------------------------------------- SQL text


def test_named_parameters_become_positional_markers_and_nothing_else_changes() -> None:
    from planctl.store.sql import compile_sql

    text = "SELECT '12:30', x::text FROM t WHERE id = :id AND b = :b_2 AND c = :id"
    for sqlite, marker in ((True, "?"), (False, "%s")):
        positional, pick = compile_sql(text, sqlite)
        assert positional == f"SELECT '12:30', x::text FROM t WHERE id = {marker} AND b = {marker} AND c = {marker}"
        assert pick({"b_2": 2, "id": 1, "unused": 3}) == (1, 2, 1)
    assert compile_sql("SELECT 1 WHERE a = :a", True)[1]({"a": 7}) == (7,)
    assert compile_sql("SELECT 1", True)[1](None) == ()


def test_instants_are_stored_as_sqlalchemy_stores_them_and_read_back_aware() -> None:
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from planctl.store.sql import Tx

    tx = Tx(sqlite3.connect(":memory:"), sqlite=True)
    beijing = datetime(2026, 11, 22, 0, 0, 0, 5, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert tx.at(beijing) == "2026-11-21 16:00:00.000005"
    assert tx.at(datetime(2026, 11, 21, 16, tzinfo=timezone.utc)) == "2026-11-21 16:00:00.000000"
    assert tx.instant("2026-11-21 16:00:00.000005") == beijing
    assert tx.instant("2026-11-21 16:00:00.000005").tzinfo is timezone.utc
    for sqlite in (True, False):  # a naive instant would be read as local time: refused, as the ORM refuses it
        with pytest.raises(ValueError, match="naive"):
            Tx(sqlite3.connect(":memory:"), sqlite=sqlite).at(datetime(2026, 11, 21, 16))
        with pytest.raises(ValueError, match="naive"):
            Tx(sqlite3.connect(":memory:"), sqlite=sqlite).at_once(datetime(2026, 11, 21, 16))
    # a record's own time takes the uncached path: the same text, whatever its zone
    for instant in (beijing, datetime(2026, 11, 21, 16, tzinfo=timezone.utc), datetime(2026, 2, 28, 23, 59, 59, 999_999,
                                                                                        tzinfo=timezone.utc)):
        assert tx.at_once(instant) == tx.at(instant) == instant.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    assert Tx(sqlite3.connect(":memory:"), sqlite=False).at_once(beijing) is beijing  # PostgreSQL keeps the instant


def test_a_row_moved_before_it_is_read_gets_the_database_values_under_its_changes(db: Any, caller: Any) -> None:
    """The batch's identity map: a counter settled (moved) before a decision reads it must show
    the stored value plus the change, and write only the change."""
    from planctl.metering.changes import Changes
    from planctl.store import meter

    b = _bought(db, caller)
    use(db, b.key, "r1", 100)  # the key's day counter now holds 1 request, 100 µcr
    with db.tx(write=True) as tx:
        key_id = meter.key_by(tx, "id", b.key, write=False)[0].id
        window = (key_id, "key-day", catalogs(db).get(tx, write=False).day(NOW)[0])
        stored = meter.counters(tx, [window])[window]
        assert (stored.requests, stored.credit) == (1, 100)
        changes = Changes()
        moved = changes.row("counter", window)  # blank: only the change
        moved.requests += 1
        moved.credit += 5
        read = changes.adopt("counter", window, meter.counters(tx, [window])[window])
        assert read is moved and (read.requests, read.credit) == (2, 105)
        read.credit += 10
        assert changes.adopt("counter", window, meter.CounterRow(99, 99, 99, 99)) is read  # read once per batch
        changes.apply(tx)
        changes.apply(tx)  # nothing moved since: nothing written twice
        after = meter.counters(tx, [window])[window]
    assert (after.requests, after.credit) == (2, 115)


# ---------------------------------------------------------------- reservations


def test_reservation_listing_refuses_an_unknown_status(cli: Any) -> None:
    result = cli("reservations", "list", "--status", "pending")
    assert result.exit_code == 2
    assert "unknown reservation status 'pending'" in result.stderr


def test_expired_holds_are_found_through_the_open_holds_index(db: Any, caller: Any) -> None:
    """Settled and expired holds leave the partial index; stale ones are still released."""
    from planctl.metering.holds import HOLD_FOR, list_reservations

    b = _bought(db, caller)
    held = [auth(db, b.secret, reserve=100).reservation_id for _ in range(3)]
    use(db, b.key, "r1", 10, reservation=held[0])
    later = NOW + HOLD_FOR + timedelta(seconds=1)
    assert [r.id for r in list_reservations(db, now=later, status="held")] == []
    statuses = {r.id: r.status for r in list_reservations(db, now=later, status=None)}
    assert statuses == {held[0]: "settled", held[1]: "expired", held[2]: "expired"}


def test_driver_errors_that_mean_try_again_become_conflicts_and_roll_back() -> None:
    """PostgreSQL reports a lock conflict or a deadlock (two batches locking keys in different
    orders) as OperationalError: the user is told to try again, exit 6."""
    from types import SimpleNamespace

    from planctl.domain.errors import Conflict, InvalidInput
    from planctl.store.sql import transaction

    class DatabaseError(Exception):
        pass

    class OperationalError(DatabaseError):
        pass

    class IntegrityError(DatabaseError):
        pass

    class Connection:
        rolled_back = committed = 0

        def cursor(self) -> None:
            return None

        def rollback(self) -> None:
            self.rolled_back += 1

        def commit(self) -> None:
            self.committed += 1

    errors = SimpleNamespace(DatabaseError=DatabaseError, OperationalError=OperationalError,
                             IntegrityError=IntegrityError)
    for raised, expected in ((OperationalError("deadlock detected\nDETAIL: ..."), Conflict),
                             (OperationalError("could not obtain lock on row"), Conflict),
                             (IntegrityError("duplicate key value"), Conflict),
                             (OperationalError("attempt to write a readonly database"), InvalidInput),
                             (OperationalError("disk I/O error"), OperationalError),
                             (DatabaseError("file is not a database"), InvalidInput),
                             (DatabaseError("database disk image is malformed"), InvalidInput)):
        connection = Connection()
        with pytest.raises(expected):
            with transaction(connection, sqlite=False, write=True, display="db", errors=errors):
                raise raised
        assert (connection.rolled_back, connection.committed) == (1, 0)


def test_prune_removes_closed_reservations_before_the_cutoff_and_never_an_open_hold(db: Any, caller: Any) -> None:
    from planctl.metering.holds import list_reservations
    from planctl.services import pruning

    install(db, caller, plan("meter", total_credit="1", validity="1y"))
    old, new = NOW - timedelta(days=40), NOW - timedelta(days=1)
    b = buy(db, caller, account(db, caller, now=old), "meter", now=old)
    settled_old = auth(db, b.secret, reserve=100, now=old).reservation_id
    use(db, b.key, "old", 10, at=old, reservation=settled_old)
    open_old = auth(db, b.secret, reserve=100, now=old, hold_for=timedelta(days=90)).reservation_id
    settled_new = auth(db, b.secret, reserve=100, now=new).reservation_id
    use(db, b.key, "new", 10, at=new, reservation=settled_new)
    cutoff = NOW - timedelta(days=30)
    summary = pruning.summarize(db, cutoff)
    assert (summary.records, summary.reservations) == (1, 1)
    assert pruning.prune(db, cutoff, caller=caller, now=NOW) == (1, 1)
    left = {r.id: r.status for r in list_reservations(db, now=NOW, status=None)}
    assert left == {open_old: "held", settled_new: "settled"}
