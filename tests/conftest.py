"""Hermetic fixtures: every test gets its own data directory and database (helpers are in helpers/).

`db` is parametrised over SQLite and, when PLANCTL_TEST_DATABASE_URL is set,
PostgreSQL (each test in a schema of its own, dropped afterwards).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import BACKENDS, NOW, PG_URL, Cli, pg_schema_url


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
        yield pg_schema_url(schema)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


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


@pytest.fixture
def cli(db_url: str) -> Cli:
    return Cli(db_url)


@pytest.fixture
def up(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake OpenAI upstream, started; FAKE_UPSTREAM_KEY holds the secret it expects."""
    from helpers.fake_upstream import FakeUpstream
    from helpers.gateway import UP_SECRET

    monkeypatch.setenv("FAKE_UPSTREAM_KEY", UP_SECRET)
    fake = FakeUpstream(key=UP_SECRET).start()
    yield fake
    fake.stop()
