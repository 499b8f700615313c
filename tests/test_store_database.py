"""The store: locations, file modes, pragmas, transactions, migrations, backups."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from planctl.domain.errors import Conflict, InvalidInput, Refused
from planctl.services.database import backup, check, open_database
from planctl.store import migrations
from planctl.store.location import resolve_target
from planctl.store.tables import Plan
from helpers import NOW, sqlite_dump

FIXTURES = Path(__file__).parent / "fixtures"


# ---------------------------------------------------------------- locations


def test_resolution_order(tmp_path: Path) -> None:
    env = {"PLANCTL_DATABASE_URL": "postgresql://u:secret@h/db", "PLANCTL_DB": str(tmp_path / "b.db"),
           "PLANCTL_HOME": str(tmp_path / "home")}
    assert resolve_target(str(tmp_path / "a.db"), env).source == "--db"
    url = resolve_target(None, env)
    assert url.source == "PLANCTL_DATABASE_URL" and url.url.startswith("postgresql+psycopg://")
    assert "secret" not in url.display
    del env["PLANCTL_DATABASE_URL"]
    assert resolve_target(None, env).path == tmp_path / "b.db"
    del env["PLANCTL_DB"]
    assert resolve_target(None, env).path == tmp_path / "home" / "planctl.db"


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unsupported database URL scheme 'mysql'"):
        resolve_target("mysql://h/db", {})


def test_new_database_is_private(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    target = resolve_target(None, {"PLANCTL_HOME": str(home)})
    open_database(target, now=NOW).dispose()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "planctl.db").stat().st_mode) == 0o600


@pytest.mark.parametrize("make_bad", ["missing_dir", "is_dir", "read_only"])
def test_unusable_paths_are_refused_cleanly(tmp_path: Path, make_bad: str) -> None:
    path = tmp_path / "missing" / "x.db"
    if make_bad == "is_dir":
        path = tmp_path
    elif make_bad == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root can write read-only files")
        path = tmp_path / "ro.db"
        path.touch(mode=0o400)
    with pytest.raises(InvalidInput) as err:
        open_database(resolve_target(str(path)), now=NOW)
    assert str(path) in err.value.message and "unusable_database_file" not in err.value.message
    assert err.value.code == "unusable_database_file"
    from planctl.cli.hints import word

    assert word(err.value).endswith("; choose another file with --db or PLANCTL_DB")  # the CLI's words
    if make_bad == "missing_dir":
        assert not path.parent.exists()


# ---------------------------------------------------------------- SQLite settings and transactions


def test_sqlite_pragmas(db: Any) -> None:
    if db.dialect != "sqlite":
        pytest.skip("SQLite only")
    with db.read() as session:
        conn = session.connection()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_write_transactions_take_the_lock_at_begin(db: Any) -> None:
    """BEGIN IMMEDIATE: a second writer waits for the lock instead of failing mid-way."""
    if db.dialect != "sqlite":
        pytest.skip("SQLite only")
    other = sqlite3.connect(db.target.path, timeout=0, isolation_level=None)
    with db.write() as session:
        session.connection()  # the transaction has begun, before any write statement
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again after commit
    other.execute("ROLLBACK")
    other.close()


def test_busy_database_is_a_conflict(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if db.dialect != "sqlite":
        pytest.skip("SQLite only")
    blocker = sqlite3.connect(db.target.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout = 50")  # this pooled connection only
        with pytest.raises(Conflict, match="busy"):
            with db.write() as session:
                session.connection().exec_driver_sql("PRAGMA busy_timeout = 50")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_failed_write_rolls_back(db: Any) -> None:
    before = _plan_count(db)
    with pytest.raises(RuntimeError):
        with db.write() as session:
            session.add(Plan(slug="x-plan", family="x", tier=1, on_sale=True, terms={}, created_at=NOW, updated_at=NOW))
            session.flush()
            raise RuntimeError("boom")
    assert _plan_count(db) == before


def _plan_count(db: Any) -> int:
    with db.read() as session:
        return session.connection().execute(text("SELECT count(*) FROM plans")).scalar()


# ---------------------------------------------------------------- migrations


def schema_of(engine_or_conn: Any) -> dict[str, Any]:
    """Tables with their columns (name, generic type, nullability), primary keys and indexes."""
    insp = inspect(engine_or_conn)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        columns = {c["name"]: (type(c["type"]).__name__.upper().replace("BIGINTEGER", "BIGINT"), c["nullable"])
                   for c in insp.get_columns(table)}
        indexes = sorted((tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table))
        uniques = sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table))
        out[table] = (columns, tuple(insp.get_pk_constraint(table)["constrained_columns"]), indexes, uniques)
    return out


def models_schema(dialect_db: Any) -> dict[str, Any]:
    """What the table models give on a scratch database of the same kind."""
    from sqlalchemy import create_engine

    if dialect_db.dialect != "sqlite":
        pytest.skip("compared on SQLite; PostgreSQL runs the same create_all")
    scratch = create_engine("sqlite://")
    SQLModel.metadata.create_all(scratch)
    return schema_of(scratch)


def test_blank_database_matches_models_and_is_current(db: Any) -> None:
    with db.read() as session:
        assert migrations.recorded_version(session.connection()) == migrations.LATEST
        tables = set(inspect(session.connection()).get_table_names())
    assert tables == set(SQLModel.metadata.tables)
    if db.dialect == "sqlite":
        assert schema_of(db.engine) == models_schema(db)
    assert [m.applied_at is not None for m in migrations.status(db)] == [True] * len(migrations.MIGRATIONS)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_old_schema_fixtures_migrate_to_the_models(tmp_path: Path, version: int) -> None:
    """Fails when tables.py changes without a migration (and a new fixture)."""
    path = tmp_path / f"v{version}.db"
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / f"schema_v{version}_sqlite.sql").read_text())
    conn.close()
    db = open_database(resolve_target(str(path)), now=NOW)
    try:
        assert schema_of(db.engine) == models_schema(db)
        with db.read() as session:
            assert migrations.recorded_version(session.connection()) == migrations.LATEST
    finally:
        db.dispose()


def test_newer_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    open_database(resolve_target(str(path)), now=NOW).dispose()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', '2030-01-01 00:00:00')",
                 (migrations.LATEST + 1,))
    conn.commit()
    conn.close()
    before = sqlite_dump(path)
    with pytest.raises(Refused, match="newer than this planctl") as err:
        open_database(resolve_target(str(path)), now=NOW)
    assert err.value.reason == "database_too_new"
    assert sqlite_dump(path) == before


def test_two_processes_opening_a_blank_database_seed_it_once(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            open_database(resolve_target(str(path)), now=NOW).dispose()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM plans").fetchone()[0] == 6
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == migrations.LATEST
    conn.close()


# ---------------------------------------------------------------- check and backup


def test_check_reports_ok(db: Any) -> None:
    results = check(db)
    assert {r.name for r in results} >= {"schema_version", "integrity"}
    assert all(r.ok for r in results), results


def test_check_finds_a_dangling_foreign_key(db: Any) -> None:
    if db.dialect != "sqlite":
        pytest.skip("SQLite only")
    conn = sqlite3.connect(db.target.path)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("INSERT INTO model_aliases VALUES ('ghost*', 'no-such-model', '2026-11-21 00:00:00')")
    conn.commit()
    conn.close()
    by_name = {r.name: r for r in check(db)}
    assert not by_name["foreign_keys"].ok


def test_backup_is_a_private_consistent_copy(db: Any, tmp_path: Path) -> None:
    if db.dialect != "sqlite":
        with pytest.raises(InvalidInput, match="pg_dump"):
            backup(db, tmp_path / "b.db")
        return
    dest = tmp_path / "copy.db"
    assert backup(db, dest) > 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sqlite_dump(dest) == sqlite_dump(db.target.path)
    with pytest.raises(Conflict, match="already exists"):
        backup(db, dest)
