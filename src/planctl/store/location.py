"""Where the database is: --db, PLANCTL_DATABASE_URL, PLANCTL_DB, PLANCTL_HOME or
the platform's user data directory. Imports nothing heavy (`db path` stays fast)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from planctl.domain.errors import InvalidInput

APP_NAME = "planctl"
DB_FILE = "planctl.db"
CREATED_ON_FIRST_USE = ("default", "PLANCTL_HOME")  # sources planctl picks itself: no typo possible
SCHEMA_VERSION = 7  # the latest migration (store/migrations.py checks it); read without importing the ORM


@dataclass(frozen=True)
class DbTarget:
    """A resolved database: a SQLAlchemy URL, and the file path for SQLite."""

    url: str
    path: Path | None
    source: str  # which setting chose it: "--db", "PLANCTL_DATABASE_URL", …

    @property
    def display(self) -> str:
        return str(self.path) if self.path is not None else mask_password(self.url)


def resolve_target(db_option: str | None, env: Mapping[str, str] = os.environ) -> DbTarget:
    """Pick the database from the first setting present, in documented order."""
    if db_option is not None:
        if not db_option.strip():
            raise InvalidInput("the database is empty: give a SQLite file path or a postgresql://… URL",
                               code="db_option_empty")
        return _from_text(db_option, "--db")
    if env.get("PLANCTL_DATABASE_URL"):
        return _from_url(env["PLANCTL_DATABASE_URL"], "PLANCTL_DATABASE_URL")
    if env.get("PLANCTL_DB"):
        return _from_text(env["PLANCTL_DB"], "PLANCTL_DB")
    if env.get("PLANCTL_HOME"):
        return _sqlite(Path(env["PLANCTL_HOME"]).expanduser() / DB_FILE, "PLANCTL_HOME", make_dir=True)
    from platformdirs import user_data_path

    return _sqlite(user_data_path(APP_NAME) / DB_FILE, "default", make_dir=True)


def _from_text(text: str, source: str) -> DbTarget:
    if "://" in text:
        return _from_url(text, source)
    return _sqlite(Path(text).expanduser(), source, make_dir=False)


def _from_url(url: str, source: str) -> DbTarget:
    scheme = url.split("://", 1)[0]
    if scheme.startswith("sqlite"):
        path = url.split("://", 1)[1].lstrip("/") if scheme == "sqlite" else ""
        if not path:
            raise InvalidInput(f"{source}: give a SQLite database as a file path, not {url!r}")
        return _sqlite(Path("/" + path) if url.startswith("sqlite:////") else Path(path), source, make_dir=False)
    if scheme.startswith("postgresql"):
        if scheme == "postgresql" or scheme == "postgres":
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return DbTarget(url=url, path=None, source=source)
    raise InvalidInput(
        f"{source}: unsupported database URL scheme {scheme!r}; use a file path or postgresql://…"
    )


def _sqlite(path: Path, source: str, *, make_dir: bool) -> DbTarget:
    path = path.absolute()
    if make_dir and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise InvalidInput(f"cannot create data directory {path.parent}: {exc.strerror.lower()}",
                               code="data_directory_unusable") from None
    return DbTarget(url=f"sqlite:///{path}", path=path, source=source)


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def journal_dir(target: DbTarget, env: Mapping[str, str] = os.environ) -> Path:
    """Where `planctl serve` journals settlements by default: beside a SQLite file
    (`planctl.db.journal.d`); for PostgreSQL, one directory per database under PLANCTL_HOME or
    the user data directory (a journal must never be replayed into another database)."""
    if target.path is not None:
        return target.path.with_name(target.path.name + ".journal.d")
    import hashlib

    if env.get("PLANCTL_HOME"):
        home = Path(env["PLANCTL_HOME"]).expanduser()
    else:
        from platformdirs import user_data_path

        home = user_data_path(APP_NAME)
    return home / f"journal-{hashlib.sha256(target.url.encode()).hexdigest()[:16]}"
