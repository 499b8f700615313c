"""Hermetic fixtures: every test gets its own data directory and database.

`db` is parametrised over SQLite and, when PLANCTL_TEST_DATABASE_URL is set,
PostgreSQL (each test in a schema of its own, dropped afterwards).
"""

from __future__ import annotations

import functools
import os
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

PG_URL = os.environ.get("PLANCTL_TEST_DATABASE_URL")
NOW = datetime(2026, 11, 21, 4, 0, tzinfo=timezone.utc)  # 12:00 in Beijing


@functools.cache
def _click_command(app: Any) -> Any:
    import typer.main

    return typer.main.get_command(app)


@pytest.fixture(autouse=True)
def _build_the_cli_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer rebuilds the whole click command tree on every CliRunner.invoke (most of
    the time a call costs); build it once per test session. Same commands."""
    import typer.testing

    monkeypatch.setattr(typer.testing, "_get_command", _click_command)


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PLANCTL_DB", "PLANCTL_DATABASE_URL", "PLANCTL_TZ", "PLANCTL_DEBUG", "PLANCTL_NO_INPUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PLANCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PLANCTL_ACTOR", "tester")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


def _pg_schema_url(schema: str) -> str:
    assert PG_URL
    sep = "&" if "?" in PG_URL else "?"
    url = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1) if PG_URL.startswith("postgresql://") else PG_URL
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema; yields a URL whose connections use it."""
    if not PG_URL:
        pytest.skip("PLANCTL_TEST_DATABASE_URL is not set")
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    plain = PG_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _pg_schema_url(schema)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database location: a SQLite file path, or a PostgreSQL URL with its own schema."""
    if request.param == "sqlite":
        return str(tmp_path / "planctl.db")
    return request.getfixturevalue("pg_schema")


@pytest.fixture
def db(db_url: str) -> Iterator[Any]:
    """An open, migrated and seeded database (sample catalog loaded)."""
    from planctl.services.database import open_database
    from planctl.store.location import resolve_target

    database = open_database(resolve_target(db_url), now=NOW)
    yield database
    database.dispose()


@pytest.fixture
def caller() -> Any:
    from planctl.services.audit import Caller

    return Caller(actor="tester", command="test")


class Cli:
    """Runs the Typer app in-process against one database, like a user would."""

    def __init__(self, db_location: str, *, init: bool = True) -> None:
        self.db_location = db_location
        self.runner = CliRunner()
        if init:
            self.ok("db", "init")  # as a user would: commands that only read refuse a database that does not exist

    def __call__(self, *args: str, input: str | None = None) -> Any:
        from planctl.cli import app

        return self.runner.invoke(app, ["--db", self.db_location, *args], input=input, catch_exceptions=False)

    def ok(self, *args: str, input: str | None = None) -> Any:
        result = self(*args, input=input)
        assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        import json

        return json.loads(self.ok(*args, "--json").stdout)


@pytest.fixture
def cli(db_url: str) -> Cli:
    return Cli(db_url)


def sqlite_dump(path: str | Path) -> list[str]:
    """Every row of every table, for 'the database is exactly as it was' assertions."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [f"{t}:{row!r}" for t in tables for row in conn.execute(f'SELECT * FROM "{t}" ORDER BY 1')]
    finally:
        conn.close()

def db_dump(db_url: str) -> list[str]:
    """Every row of every table (SQLite via sqlite_dump, PostgreSQL via SQLAlchemy)."""
    if "://" not in db_url:
        return sqlite_dump(db_url)
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = sorted(inspect(conn).get_table_names())
            return [f"{t}:{tuple(row)!r}" for t in tables
                    for row in conn.execute(text(f'SELECT * FROM "{t}" ORDER BY 1'))]
    finally:
        engine.dispose()


def assert_refused(cli: Cli, db_url: str, cases: list[tuple[Any, ...]], when: Any = None) -> None:
    """Each case is refused and changes nothing: (arguments, exit code, part of the message), or
    (arguments, exit code, reason code or None, part of the message).

    Each runs twice: plainly (exactly one `error: …` line, nothing on stdout) and with the global
    --json (one JSON line carrying the reason). With `when`, both run with time frozen there.
    """
    import json
    from contextlib import nullcontext

    from freezegun import freeze_time

    cli.ok("plans", "list", "--json")  # the database exists before the snapshot
    before = db_dump(db_url)
    problems = []
    for args, code, *rest in cases:
        reason, message = rest if len(rest) == 2 else (None, rest[0])
        with freeze_time(when) if when is not None else nullcontext():
            plain, as_json = cli(*args), cli("--json", *args)
        lines = plain.stderr.splitlines()
        if plain.exit_code != code:
            problems.append(f"{args}: exit {plain.exit_code}, expected {code}: {plain.stderr.strip()}")
        elif len(lines) != 1 or not lines[0].startswith("error: ") or message not in lines[0]:
            problems.append(f"{args}: stderr {plain.stderr!r}, expected one 'error: ...{message}...' line")
        elif plain.stdout != "" or as_json.stdout != "":
            problems.append(f"{args}: stdout {plain.stdout!r} / {as_json.stdout!r}")
        elif reason is not None and (as_json.exit_code != code or len(as_json.stderr.splitlines()) != 1
                                     or json.loads(as_json.stderr)["error"] != reason):
            problems.append(f"{args}: --json stderr {as_json.stderr!r}, expected reason {reason}")
        if db_dump(db_url) != before:
            problems.append(f"{args}: the database changed")
            before = db_dump(db_url)
    assert not problems, "\n".join(problems)
