"""Plain DB-API transactions: the metering hot path runs here, without the ORM.

An admission or a recorded request is a dozen short statements; through the
ORM each one cost about 0.3 ms of Python, through the driver a few
microseconds. So metering writes its SQL once, with `:name` parameters, and
runs it on the driver's own connection: `sqlite3` (a SQLite file opened
directly, or a connection a thread holds from the SQLAlchemy pool) or psycopg
(PostgreSQL). Each statement is compiled once to positional markers (`?` or
`%s`) and a picker of its parameters, which the drivers bind several times
faster than names.

This module imports neither SQLAlchemy nor the table models, so a command that
only meters (`planctl authorize`) starts in about the time of `--version`.

On PostgreSQL every statement is a round trip to the server, so a metering
transaction sends its statements in groups: `Tx.later` queues a write (with a
check of its affected-row count), and the queue goes out with the next read,
`Tx.send`, or the commit, as one multi-statement query (psycopg's client-side
binding); `Tx.batch` sends several reads at once. The metering connection runs
in autocommit mode and a write transaction's `BEGIN` travels with its first
statements; a read-only one runs each statement on its own snapshot (what READ
COMMITTED gives a transaction anyway). On SQLite, in process, all of this runs
statement by statement, checks included, as before.

Conventions the ORM also follows: instants are stored in UTC (naive
`YYYY-MM-DD HH:MM:SS.ffffff` text on SQLite, `timestamptz` on PostgreSQL) and
read back timezone-aware; a write transaction on SQLite begins `IMMEDIATE`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any

from planctl.domain.errors import Conflict, InvalidInput, PlanctlError

BUSY_TIMEOUT_MS = 10_000
PRAGMAS = (f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}", "PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL",
           "PRAGMA foreign_keys = ON")
UTC = timezone.utc
_PARAM = re.compile(r"(?<![:\w]):(\w+)")
_COMPILED: dict[tuple[str, bool], tuple[str, Callable[[Any], Any]]] = {}
_STORED: dict[datetime, str] = {}
_PREPARED: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()  # PostgreSQL: per connection  # instants as SQLite text: window starts and `now` repeat within a request


# ---------------------------------------------------------------- the timestamp codec


def sqlite_text(value: datetime) -> str:
    """An aware instant as SQLite stores it: naive UTC text `YYYY-MM-DD HH:MM:SS.ffffff` (the
    ORM's own format, so both sort and compare alike)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    return utc.isoformat(" ", "microseconds")[:26]  # no "+00:00"


def stored_at(value: datetime | None, *, sqlite: bool) -> Any:
    """An aware instant as the column stores it (PostgreSQL's `timestamptz` takes it as it is)."""
    if value is None:
        return None
    if not sqlite:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value
    return sqlite_text(value)


def instant(value: Any) -> datetime | None:
    """A stored instant (SQLite text, or a driver's datetime), timezone-aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value + "+00:00")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------- statements


def compile_sql(text: str, sqlite: bool) -> tuple[str, Callable[[Any], Any]]:
    """The statement with positional markers, and a function picking its parameters out of a dict
    in order (the drivers bind positions several times faster than names)."""
    key = (text, sqlite)
    hit = _COMPILED.get(key)
    if hit is None:
        names = _PARAM.findall(text)
        positional = _PARAM.sub("?" if sqlite else "%s", text)
        if not names:
            pick: Callable[[Any], Any] = lambda params: ()  # noqa: E731
        elif len(names) == 1:
            pick = lambda params, name=names[0]: (params[name],)  # noqa: E731
        else:
            pick = itemgetter(*names)
        hit = _COMPILED[key] = (positional, pick)
    return hit


class Tx:
    """One open transaction on a driver connection."""

    __slots__ = ("cur", "sqlite", "lock", "connection", "begin", "queue", "_client")

    def __init__(self, connection: Any, *, sqlite: bool, begin: bool = False, grouped: bool = False) -> None:
        self.connection = connection
        self.cur = connection.cursor()
        self.sqlite = sqlite
        self.lock = "" if sqlite else " FOR NO KEY UPDATE"  # SQLite's write transaction already excludes writers
        self.begin = begin and not sqlite  # PostgreSQL: BEGIN goes out with the first statements
        self.queue: list[tuple[str, tuple[Any, ...], Callable[[int], None] | None]] | None = (
            [] if grouped and not sqlite else None)  # PostgreSQL writes waiting for the next round trip
        self._client: Any = None

    def run(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Execute; returns the affected-row count (what a conditional UPDATE is decided by)."""
        if self.begin or self.queue:
            return self.batch([(sql, params)])[0][0]
        text, pick = compile_sql(sql, self.sqlite)
        self.cur.execute(text, pick(params))
        return self.cur.rowcount

    def later(self, sql: str, rows: Any = None, *, check: Callable[[int], None] | None = None) -> None:
        """A write whose result nothing reads before the commit: on PostgreSQL it waits for the
        next round trip; `check` gets the affected-row count of all its rows (and raises to
        refuse). On SQLite it runs, and is checked, now. `rows`: one dict of parameters, a list
        of them, or a list of tuples already in the statement's order."""
        rows = [rows or {}] if rows is None or isinstance(rows, dict) else rows
        if not rows:
            return
        if self.queue is None or len(rows) > 16:  # many rows: the driver's executemany binds them best
            self.send()
            count = (self.many_in_order(sql, rows) if isinstance(rows[0], tuple)
                     else self.many(sql, rows) or self.cur.rowcount)
            if check is not None:
                check(count)
            return
        text, pick = compile_sql(sql, False)
        for row in rows:
            self.queue.append((text, row if isinstance(row, tuple) else pick(row), None))
        if check is not None:  # one check over the rows just queued
            self.queue.append(("", (len(rows),), check))

    def send(self) -> None:
        """Run what is queued now (one round trip), checks included."""
        if self.begin or self.queue:
            self.batch([])

    def batch(self, statements: list[tuple[str, Any]]) -> list[tuple[int, list[Any] | None]]:
        """Several statements at once: (affected rows, fetched rows or None) of each. On
        PostgreSQL one round trip carries them, after what is queued (and BEGIN, if pending)."""
        if self.sqlite or self.queue is None and not self.begin:
            out = []
            for sql, params in statements:
                text, pick = compile_sql(sql, self.sqlite)
                self.cur.execute(text, params if isinstance(params, tuple) else pick(params))
                out.append((self.cur.rowcount, self.cur.fetchall() if self.cur.description else None))
            return out
        if self._client is None:
            from psycopg import ClientCursor

            self._client = ClientCursor(self.connection)
        cur = self._client
        prepared = _PREPARED.setdefault(self.connection, {})
        preparing: dict[str, str] = {}
        texts: list[str] = ["BEGIN"] if self.begin else []
        checks: list[tuple[list[int], Callable[[int], None]]] = []  # (the results it counts, check)
        executed: list[int] = []  # where each statement's own result is (not a PREPARE's)

        def add(text: str, values: tuple[Any, ...]) -> None:
            """EXECUTE of the statement prepared on this connection (the server plans it once, as
            the driver's own prepared statements), PREPAREd first when new."""
            executed.append(len(texts))
            if len(values) > 50 or text in ("COMMIT", "BEGIN"):  # a long IN list: not worth keeping
                texts.append(cur.mogrify(text, values))
                return
            name = prepared.get(text) or preparing.get(text)
            if name is None:
                name = preparing[text] = f"planctl_{len(prepared) + len(preparing)}"
                numbered = text.split("%s")
                texts.append(f"PREPARE {name} AS " + "".join(
                    part + (f"${i + 1}" if i < len(numbered) - 1 else "") for i, part in enumerate(numbered)))
                executed[-1] += 1
            texts.append(f"EXECUTE {name}" + (cur.mogrify("(" + ", ".join(["%s"] * len(values)) + ")", values)
                                              if values else ""))

        for text, values, check in self.queue or ():
            if check is None:
                add(text, values)
            else:
                checks.append((executed[-values[0]:], check))
        mine = len(executed)
        for sql, params in statements:  # params: by name, or a tuple in the statement's order
            text, pick = compile_sql(sql, False)
            add(text, params if isinstance(params, tuple) else pick(params))
        kept = set(executed[mine:])
        self.begin = False
        if self.queue:
            self.queue = []
        if len(texts) == 0:
            return []
        cur.execute("; ".join(texts))  # bound already: no parameters, no parse of the whole
        prepared.update(preparing)
        counts: list[int] = []
        out = []
        for i in range(len(texts)):
            if i:
                cur.nextset()
            counts.append(cur.rowcount)
            if i in kept:
                out.append((cur.rowcount, cur.fetchall() if cur.description else None))
        for counted, check in checks:
            check(sum(counts[i] for i in counted))
        return out

    def commit(self) -> None:
        """On PostgreSQL what is queued goes out with the COMMIT (first on its own when it has
        checks: they must pass before anything is committed). The driver's commit and rollback
        act on an open transaction, in autocommit mode too."""
        if self.queue and any(check is not None for _, _, check in self.queue):
            self.send()
        if self.queue:
            self.batch([("COMMIT", None)])
        else:
            self.connection.commit()

    def rollback(self) -> None:
        self.begin, self.queue = False, [] if self.queue is not None else None
        self.connection.rollback()

    def many(self, sql: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.send()
            text, pick = compile_sql(sql, self.sqlite)
            if len(rows) == 1:  # psycopg sets up a pipeline for executemany: dear for one row
                self.cur.execute(text, pick(rows[0]))
            else:
                self.cur.executemany(text, map(pick, rows))

    def many_in_order(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        """Like `many`, for rows that are already sequences in the order of the statement's
        parameters (bulk inserts build them so: no dict per row, no picking); returns the
        affected-row count of them all."""
        if not rows:
            return 0
        if self.queue is not None and len(rows) <= 16:  # with what is queued, in one round trip
            return sum(count for count, _ in self.batch([(sql, row) for row in rows]))
        self.send()
        text = compile_sql(sql, self.sqlite)[0]
        if len(rows) == 1:
            self.cur.execute(text, rows[0])
        else:
            self.cur.executemany(text, rows)
        return self.cur.rowcount

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if self.begin or self.queue:
            return self.batch([(sql, params)])[0][1] or []
        text, pick = compile_sql(sql, self.sqlite)
        self.cur.execute(text, pick(params))
        return self.cur.fetchall()

    def one(self, sql: str, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        if self.begin or self.queue:
            found = self.batch([(sql, params)])[0][1]
            return found[0] if found else None
        text, pick = compile_sql(sql, self.sqlite)
        self.cur.execute(text, pick(params))
        return self.cur.fetchone()

    def at(self, value: datetime | None) -> Any:
        """An aware instant as the column stores it (a naive one is refused, as the ORM refuses it)."""
        if value is None:
            return None
        if self.sqlite:
            text = _STORED.get(value)
            if text is not None:
                return text
        if not self.sqlite:
            return stored_at(value, sqlite=False)
        if len(_STORED) > 4096:
            _STORED.clear()
        text = _STORED[value] = sqlite_text(value)
        return text

    def at_once(self, value: datetime) -> Any:
        """`at` for an instant that will not repeat (a record's own time): no cache to fill,
        and on SQLite no hash of the instant to compute."""
        if not self.sqlite or value.tzinfo is not UTC:
            return self.at(value)
        return value.isoformat(" ", "microseconds")[:26]  # sqlite_text, inlined: one per record

    instant = staticmethod(instant)

    def json_in(self, value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    def json_out(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @classmethod
    def within(cls, session: Any) -> Tx:
        """The transaction an ORM session has open, for statements that must join it."""
        connection = session.connection()
        return cls(connection.connection.driver_connection, sqlite=connection.dialect.name == "sqlite")


class transaction:  # noqa: N801 - used like the contextmanager it replaces, without its overhead per request
    """`with transaction(...) as tx:` commits on success and rolls back on any error; driver
    errors with a meaning for the user become domain errors."""

    __slots__ = ("connection", "sqlite", "write", "display", "errors", "on_exit", "tx")

    def __init__(self, connection: Any, *, sqlite: bool, write: bool, display: str, errors: Any,
                 on_exit: Any = None) -> None:
        self.connection, self.sqlite, self.write, self.display = connection, sqlite, write, display
        self.errors, self.on_exit = errors, on_exit

    def __enter__(self) -> Tx:
        if self.sqlite:
            try:
                self.connection.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
            except BaseException as exc:
                self._finish()
                translated = self._translate(exc)
                if translated is exc:
                    raise
                raise translated from None
        self.tx = Tx(self.connection, sqlite=self.sqlite, begin=self.write, grouped=True)
        return self.tx

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> None:
        try:
            if exc is None:
                try:
                    self.tx.commit()
                    return
                except BaseException as failed:
                    exc = failed
                    self.tx.rollback()
            else:
                self.tx.rollback()
        finally:
            self._finish()
        translated = self._translate(exc)
        if translated is not exc:
            raise translated from None
        if kind is None:  # the commit failed
            raise exc

    def _finish(self) -> None:
        if self.on_exit is not None:
            self.on_exit()

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, self.errors.IntegrityError):
            return driver_error(exc, self.display, integrity=True) or exc
        if isinstance(exc, self.errors.DatabaseError):
            return driver_error(exc, self.display, integrity=False) or exc
        return exc


def driver_error(exc: BaseException, display: str, *, integrity: bool) -> PlanctlError | None:
    """The domain error a driver's integrity or operational error means to a user, if any
    (store/engine.py asks the same of the errors SQLAlchemy wraps)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if any(words in first for words in ("file is not a database", "disk image is malformed")):
        return InvalidInput(f"not a planctl database: {display}: {first.split(') ')[-1]}")
    if integrity:
        return Conflict(f"the change conflicts with existing data ({first})")
    text = str(exc).lower()
    if any(word in text for word in ("locked", "busy", "could not obtain lock", "deadlock detected")):
        return Conflict(f"database {display} is busy (another planctl is writing); try again", reason="database_busy")
    if "readonly" in text or "read-only" in text:
        return InvalidInput(f"database {display} is read-only; check its permissions")
    if "unable to open" in text or "connection" in text or "could not connect" in text:
        return InvalidInput(f"cannot open database {display}: {first}")
    return None


def connect_sqlite(path: Path | str) -> sqlite3.Connection:
    """A SQLite connection set up as the engine sets up its own (WAL, foreign keys, busy timeout)."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                 check_same_thread=False, cached_statements=256)
    for pragma in PRAGMAS:
        connection.execute(pragma)
    return connection


class SqliteFile:
    """An up-to-date SQLite database opened with the standard `sqlite3` module only.

    It offers the same `tx()` as `store.engine.Database`, so metering runs on
    either; commands that only meter use it to skip importing SQLAlchemy.
    """

    dialect = "sqlite"

    def __init__(self, path: Path, display: str) -> None:
        self.url, self.display, self.file = f"sqlite:///{path}", display, path
        self.connection = connect_sqlite(path)

    def tx(self, *, write: bool) -> transaction:
        return transaction(self.connection, sqlite=True, write=write, display=self.display, errors=sqlite3)

    def dispose(self) -> None:
        self.connection.close()


def schema_version(path: Path) -> int | None:
    """The schema version a SQLite file records, or None (no file, not a planctl database)."""
    if not path.exists():
        return None
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            row = connection.execute("SELECT max(version) FROM schema_migrations").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None
