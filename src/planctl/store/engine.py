"""Engine factory and transactions.

SQLite (the default) runs in WAL mode with foreign keys on and a busy timeout;
every write transaction begins `IMMEDIATE`, so two writers queue on the lock
instead of failing half-way. PostgreSQL is selected by a database URL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlmodel import Session, create_engine

from planctl.domain.errors import InvalidInput, PlanctlError
from planctl.store.location import DbTarget
from planctl.store.sql import BUSY_TIMEOUT_MS, PRAGMAS, Tx, driver_error, transaction
_WRITE = "planctl_write"
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass
class Database:
    """An open database: the engine plus the two ways of using it."""

    target: DbTarget
    engine: Engine
    _local: threading.local = field(default_factory=threading.local, repr=False)  # this thread's metering connection
    _held: list[Any] = field(default_factory=list, repr=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self, *, rollback: bool = False) -> Iterator[Session]:
        """One short write transaction: `BEGIN IMMEDIATE` on SQLite, commit on success.

        With `rollback` the same work runs under the same lock and is then
        discarded: a dry run sees exactly what the real run would.
        """
        with _translate_errors(self.target), Session(
            self.engine, execution_options={_WRITE: True}, expire_on_commit=False
        ) as session:
            with session.begin() as transaction:
                yield session
                if rollback:
                    session.flush()
                    session.expunge_all()  # callers keep the objects as the real run would leave them
                    transaction.rollback()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (deferred on SQLite: WAL readers never wait)."""
        with _translate_errors(self.target), Session(self.engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    def tx(self, *, write: bool) -> transaction:
        """A plain driver transaction (the metering hot path: no ORM) on a connection this thread
        keeps until `dispose` (a pool checkout per request cost more than the statements)."""
        return transaction(self._connection(), sqlite=self.dialect == "sqlite", write=write,
                           display=self.target.display, errors=self.engine.dialect.dbapi)

    def _connection(self) -> Any:
        """This thread's driver connection (made on first use, replaced when the server dropped it)."""
        held = getattr(self._local, "connection", None)
        if held is not None and getattr(held.dbapi_connection, "closed", False):  # the server dropped it
            self._held.remove(held)
            held.invalidate()
            held = None
        if held is None:
            held = self._local.connection = self.engine.raw_connection()
            held.detach()  # the thread's own: as many threads as metering runs on, the pool's size aside
            self._held.append(held)
            if self.dialect != "sqlite":  # transactions begin with their first statements (store/sql.py)
                held.dbapi_connection.rollback()
                held.dbapi_connection.autocommit = True
        return held.dbapi_connection

    def never_wait(self) -> None:
        """On SQLite, this thread's connection stops waiting for another process's write lock:
        its write transactions fail at once as busy instead (the gateway's event loop admits
        on such a connection, and hands a busy admission to a thread that may wait)."""
        if self.dialect == "sqlite" and not getattr(self._local, "never_waits", False):
            self._connection().execute("PRAGMA busy_timeout = 0")
            self._local.never_waits = True

    @property
    def file(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return self.target.path

    @property
    def url(self) -> str:
        return self.target.url

    def dispose(self) -> None:
        for held in self._held:
            held.close()
        self._held.clear()
        self._local = threading.local()
        self.engine.dispose()


_CATALOG_TABLES = ("models", "model_aliases", "groups", "settings")


@event.listens_for(Session, "after_flush")
def _stamp_catalog_changes(session: Session, _context: Any) -> None:
    """Any ORM write to the catalog gives it a new stamp, so metering's cached copy is reloaded
    (store/meter.py `catalog_stamp`)."""
    for obj in (*session.new, *session.dirty, *session.deleted):
        if getattr(obj, "__tablename__", None) in _CATALOG_TABLES:
            from planctl.store.meter import new_catalog_stamp

            new_catalog_stamp(Tx.within(session))
            return


def open_engine(target: DbTarget) -> Database:
    """Create the engine for a target; creates a new SQLite file with mode 0600."""
    if target.path is None:
        engine = create_engine(target.url, pool_pre_ping=False)
        return Database(target, engine)
    _prepare_sqlite_file(target.path)
    engine = create_engine(
        target.url,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )
    _configure_sqlite(engine)
    return Database(target, engine)


def _prepare_sqlite_file(path: Path) -> None:
    """Refuse unusable paths with one clear line; create a new file private (0600)."""
    hint = "unusable_database_file"
    if path.is_dir():
        raise InvalidInput(f"database path {path} is a directory", code=hint)
    if path.exists():
        if not path.is_file():
            raise InvalidInput(f"not a planctl database: {path} is not a regular file", code=hint)
        if not os.access(path, os.R_OK | os.W_OK):
            raise InvalidInput(f"database file {path} is not readable and writable", code=hint)
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:  # an empty file is a new database
            raise InvalidInput(f"not a planctl database: {path} is not a SQLite file", code=hint)
        return
    parent = path.parent
    if not parent.is_dir():
        raise InvalidInput(f"cannot create database {path}: directory {parent} does not exist", code=hint)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise InvalidInput(f"cannot create database {path}: {exc.strerror.lower()}", code=hint) from None
    os.close(fd)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def _translate_errors(target: DbTarget) -> Iterator[None]:
    """Turn driver errors that have a user-facing meaning into domain errors."""
    try:
        yield
    except PlanctlError:
        raise
    except DatabaseError as exc:  # integrity, operational, or a file that is not a database
        meaning = driver_error(exc.orig or exc, target.display, integrity=isinstance(exc, IntegrityError))
        if meaning is None:
            raise
        raise meaning from None
