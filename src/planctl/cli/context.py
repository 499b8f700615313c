"""The one context object every command reads: global options and the lazy database.

Nothing here imports the database stack at module level, so `--help`,
`--version` and completion stay fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from planctl.metering import Meter
    from planctl.services.audit import Caller
    from planctl.store.engine import Database
    from planctl.store.location import DbTarget
    from planctl.store.sql import SqliteFile


@dataclass
class State:
    """Global options (flags first, then PLANCTL_* environment variables)."""

    db_option: str | None = None
    json: bool = False
    no_color: bool = False
    no_input: bool = False
    tz_name: str | None = None
    wide: bool = False
    read_only: bool = False  # the command only reads: a named database file must exist
    command: str = "planctl"
    _db: Database | None = field(default=None, repr=False)
    _sqlite_file: SqliteFile | None = field(default=None, repr=False)

    @property
    def target(self) -> DbTarget:
        """The database; for a command that only reads, a file named by --db, PLANCTL_DB or
        PLANCTL_DATABASE_URL must exist (a typo must not create an empty database that answers
        `[]`). The default location is created on first use by any command."""
        from planctl.store.location import CREATED_ON_FIRST_USE, resolve_target

        target = resolve_target(self.db_option)
        if (self.read_only and target.path is not None and target.source not in CREATED_ON_FIRST_USE
                and not target.path.exists()):
            from planctl.domain.errors import NotFound

            raise NotFound(f"no database at {target.path} (from {target.source}); check the path, or create "
                           "one with 'planctl db init'", reason="no_database")
        return target

    def db(self, *, migrate: bool = True) -> Database:
        """The database, opened (created, migrated and seeded) on first use."""
        if self._db is None:
            from planctl.services.database import open_database

            self._db = open_database(self.target, now=self.now(), migrate=migrate)
        return self._db

    def meter_db(self) -> Database | SqliteFile:
        """For commands that meter or only read (with plain SQL, `db.tx()`): an up-to-date SQLite
        file opened with `sqlite3` alone (no SQLAlchemy import, so `authorize` and the lists start
        fast); otherwise the full database (created, migrated; PostgreSQL)."""
        if self._db is None and self._sqlite_file is None:
            from planctl.store.location import SCHEMA_VERSION
            from planctl.store.sql import SqliteFile, schema_version

            target = self.target
            if target.path is not None and schema_version(target.path) == SCHEMA_VERSION:
                self._sqlite_file = SqliteFile(target.path, target.display)
        return self._sqlite_file or self.db()

    def meter(self, *, orm: bool = False) -> Meter:
        """The metering engine (planctl/metering/), the gateway's entry point, on `meter_db()`;
        with `orm`, on the full database (the audited admin writes need the ORM). One per
        command: its catalog cache lives as long as the command."""
        from planctl.metering import Meter

        return Meter(self.db() if orm else self.meter_db(), clock=self.now)

    def close(self) -> None:
        if self._sqlite_file is not None:
            self._sqlite_file.dispose()
            self._sqlite_file = None
        if self._db is not None:
            self._db.dispose()
            self._db = None

    @staticmethod
    def now() -> datetime:
        return datetime.now(timezone.utc)

    def caller(self) -> Caller:
        from planctl.services.audit import Caller

        return Caller.from_env(self.command)

    @property
    def display_zone(self) -> tzinfo:
        """--tz or PLANCTL_TZ, else the machine's local zone."""
        if self.tz_name:
            from planctl.domain.clock import zone

            return zone(self.tz_name)
        local = datetime.now().astimezone().tzinfo
        return local or timezone.utc

    @property
    def interactive(self) -> bool:
        """May we ask questions? Not with --no-input, not without a terminal."""
        return not self.no_input and sys.stdin.isatty() and sys.stderr.isatty()

    def confirm(self, question: str, *, yes: bool) -> None:
        """Ask before a destructive change; without a terminal, --yes is required.

        `question` says what will happen. Declining changes nothing, says so and exits 7."""
        import sys

        from planctl.domain.errors import InvalidInput

        if yes:
            return
        if not self.interactive:
            raise InvalidInput(f"{question.rstrip('?')}: refusing without confirmation; pass --yes")
        if not typer.confirm(question, default=False, err=True):
            from planctl.domain.errors import ExitCode

            print("declined: nothing was changed", file=sys.stderr)
            raise typer.Exit(ExitCode.DECLINED)


def state(ctx: typer.Context, *, read_only: bool = False) -> State:
    """The command's State; `read_only=True` for commands that never write (see State.target)."""
    obj: Any = ctx.find_root().obj
    if not isinstance(obj, State):  # a command invoked without the root callback (tests)
        obj = State()
        ctx.find_root().obj = obj
    obj.command = " ".join(ctx.command_path.split()[1:]) or "planctl"
    obj.read_only = read_only
    return obj


def instant_option(st: State, text: str | None, option: str) -> datetime | None:
    """The time given to `option` (a date, a date-time, `today`, `90d`…) in the display zone; None
    when it was not given."""
    if text is None:
        return None
    from planctl.domain.clock import parse_instant
    from planctl.domain.errors import InvalidInput

    try:
        return parse_instant(text, now=st.now(), tz=st.display_zone)
    except InvalidInput as exc:
        raise InvalidInput(f"{option}: {exc.message}") from None


def credit_option(text: str | None, option: str) -> int | None:
    """The credit given to `option`, in µcr (more than zero); None when it was not given."""
    if text is None:
        return None
    from planctl.domain.errors import InvalidInput
    from planctl.domain.money import parse_credit

    try:
        return parse_credit(text, allow_zero=False)
    except InvalidInput as exc:
        raise InvalidInput(f"{option}: {exc.message}") from None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
