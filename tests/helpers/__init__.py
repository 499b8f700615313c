"""Shared test helpers: one copy of each. Test modules import from here, never from each other.

- this module: the fixed clock (`NOW`, `ENDS`, `OPENS`), instants (`utc`, `local`, `z`), credit
  (`CR`, `cr`), the in-process CLI (`Cli`, `run`, `js`, `error_reason`, `csv_rows`), database
  dumps, `rows` and the refusal checks (`assert_refused`, `refusals`);
- `helpers.sales`: sales through the services (`account`, `sell`, `order_row`, `checks_ok`);
- `helpers.metering`: the metering world of plans billing the test model `unit` (1 µcr a token);
- `helpers.gateway`: a gateway in a thread or `planctl serve` as a process, before the fake upstream;
- `helpers.fake_upstream`: the fake OpenAI upstream (also standalone, for benchmarks/gateway.py);
- `helpers.procs`: spawned worker processes for the concurrency tests.

Fixtures (`db`, `cli`, `caller`, `up`, ...) are in conftest.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

PG_URL = os.environ.get("PLANCTL_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
NOW = datetime(2026, 11, 21, 4, 0, tzinfo=timezone.utc)  # 12:00 in Beijing
US = timedelta(microseconds=1)
CR = 1_000_000  # µcr per credit
ENDS = datetime(2026, 12, 21, 4, 0, tzinfo=timezone.utc)  # end of a 1mo plan bought at NOW (codex-pro-monthly)
OPENS = ENDS - timedelta(days=3)  # its default renewal window opens
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?[+-]\d{2}:\d{2}$")
SECRET_RE = re.compile(r"^sk-[A-Za-z0-9_-]{40,}$")


def utc(*args: Any) -> datetime:
    """An aware UTC instant: utc(2026, 11, 21, 4) or utc("2026-11-21T04:00") (a trailing Z is allowed)."""
    if len(args) == 1 and isinstance(args[0], str):
        return datetime.fromisoformat(args[0].removesuffix("Z")).replace(tzinfo=timezone.utc)
    return datetime(*args, tzinfo=timezone.utc)


def local(text: str, tz: Any) -> datetime:
    """The UTC instant of an (unambiguous) local wall time."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(timezone.utc)


def z(instant: datetime) -> str:
    return instant.isoformat()  # UTC instants as the JSON carries them: "2026-12-21T04:00:00+00:00"


def cr(micro: int) -> str:
    """Credit as JSON carries it: exact, six decimals."""
    return f"{micro // CR}.{micro % CR:06d}"


def pg_schema_url(schema: str) -> str:
    assert PG_URL
    sep = "&" if "?" in PG_URL else "?"
    url = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1) if PG_URL.startswith("postgresql://") else PG_URL
    return f"{url}{sep}options=-csearch_path%3D{schema}"


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


def run(cli: Any, *args: str, when: datetime = NOW, input: str | None = None) -> Any:
    """`cli(*args)` with the clock frozen at `when`."""
    from freezegun import freeze_time

    with freeze_time(when):
        return cli(*args, input=input)


def js(cli: Any, *args: str, when: datetime = NOW) -> Any:
    """`cli.json(*args)` with the clock frozen at `when`."""
    from freezegun import freeze_time

    with freeze_time(when):
        return cli.json(*args)


def error_reason(result: Any) -> str:
    """The reason code of a refusal run with the global --json (its one stderr line)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return json.loads(lines[0])["error"]


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


Case = tuple[tuple[str, ...], int, "str | None", str]  # (arguments, exit code, reason code, message)


def refusals(cli: Any, db_url: str, cases: list[Case], when: datetime = NOW) -> None:
    """assert_refused with the clock frozen at `when` (NOW unless told)."""
    assert_refused(cli, db_url, cases, when)


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def rows(db: Any, model: Any, *where: Any) -> list[Any]:
    from sqlmodel import select

    with db.read() as session:
        return list(session.exec(select(model).where(*where)))
