"""`planctl db …` and the global options, through the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from planctl.store import migrations
from helpers import Cli, sqlite_dump


def test_db_path_names_the_file_and_its_source(tmp_path: Path) -> None:
    cli = Cli(str(tmp_path / "x.db"), init=False)
    assert cli.ok("db", "path").stdout.strip() == str(tmp_path / "x.db")
    data = cli.json("db", "path")
    assert data == {"database": str(tmp_path / "x.db"), "path": str(tmp_path / "x.db"), "source": "--db"}
    assert not (tmp_path / "x.db").exists()  # db path never creates the database


def test_db_check_json_shape(cli: Cli) -> None:
    rows = cli.json("db", "check")
    assert {r["check"] for r in rows} >= {"schema_version", "integrity"}
    assert all(set(r) == {"check", "ok", "detail"} and r["ok"] is True for r in rows)


def test_db_check_fails_with_exit_1_on_a_broken_foreign_key(tmp_path: Path) -> None:
    cli = Cli(str(tmp_path / "x.db"))
    cli.ok("plans", "list")
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("INSERT INTO model_aliases VALUES ('ghost*', 'no-such-model', '2026-11-21 00:00:00')")
    conn.commit()
    conn.close()
    result = cli("db", "check")
    assert result.exit_code == 1
    assert "foreign_keys" in result.stdout


def test_db_migrate_lists_applied_migrations(cli: Cli) -> None:
    rows = cli.json("db", "migrate")
    assert [r["version"] for r in rows] == [m.version for m in migrations.MIGRATIONS]
    assert all(r["status"] == "applied" and r["applied_at"].endswith("+00:00") for r in rows)


def test_db_migrate_dry_run_on_blank_database_shows_pending(tmp_path: Path) -> None:
    cli = Cli(str(tmp_path / "blank.db"), init=False)
    rows = cli.json("db", "migrate", "--dry-run")
    assert {r["status"] for r in rows} == {"pending"}
    conn = sqlite3.connect(tmp_path / "blank.db")
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] == 0
    conn.close()


def test_db_backup_then_refuses_to_overwrite(tmp_path: Path) -> None:
    cli = Cli(str(tmp_path / "x.db"))
    data = cli.json("db", "backup", str(tmp_path / "b.db"))
    assert data["backup"] == str(tmp_path / "b.db") and data["bytes"] > 0
    result = cli("db", "backup", str(tmp_path / "b.db"))
    assert result.exit_code == 6
    assert result.stderr.startswith("error: ") and "already exists" in result.stderr


def test_newer_database_is_refused_with_exit_4_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    cli = Cli(str(path))
    cli.ok("plans", "list")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', '2030-01-01 00:00:00')")
    conn.commit()
    conn.close()
    before = sqlite_dump(path)
    for args in (("plans", "list"), ("db", "check"), ("db", "migrate"), ("accounts", "create", "x")):
        result = cli(*args)
        assert result.exit_code == 4, args
        assert result.stderr.count("\n") == 1 and "newer than this planctl" in result.stderr
    assert sqlite_dump(path) == before


def test_unknown_time_zone_is_bad_usage(cli: Cli) -> None:
    result = cli("--tz", "Mars/Olympus", "plans", "list")
    assert result.exit_code == 2
    assert "unknown time zone 'Mars/Olympus'" in result.stderr


def test_tz_changes_displayed_times(cli: Cli) -> None:
    out_utc = cli.ok("--tz", "UTC", "db", "migrate").stdout
    out_bj = cli.ok("--tz", "Asia/Shanghai", "db", "migrate").stdout
    assert out_utc != out_bj  # same instant, shown 8 hours apart


def test_json_errors_are_one_json_line(cli: Cli) -> None:
    result = cli("plans", "show", "nope", "--json")
    assert result.exit_code == 3
    assert result.stdout == ""
    error = json.loads(result.stderr)
    assert error["error"] == "not_found" and "nope" in error["message"]


def test_two_output_formats_are_refused(cli: Cli) -> None:
    result = cli("plans", "list", "--json", "--csv")
    assert result.exit_code == 2
    assert "choose one output format" in result.stderr


def test_unexpected_errors_are_one_line_without_traceback(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from planctl.services import listing

    def boom(*_: Any, **__: Any) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(listing, "plans", boom)
    result = cli("plans", "list")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: unexpected ZeroDivisionError: division by zero (rerun with PLANCTL_DEBUG=1 for a traceback)"
    ]
    monkeypatch.setenv("PLANCTL_DEBUG", "1")
    assert "Traceback" in cli("plans", "list").stderr
