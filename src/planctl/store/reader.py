"""The reporting reader: read-only SQL on SQLite or PostgreSQL, for reports and lookups.

Statements are portable, with `:name` parameters. A SQLite file is read with
the standard `sqlite3` module, opened read-only, so `planctl usage
--request-id R` does not pay for importing the ORM; PostgreSQL is read through
SQLAlchemy, streaming. Instants go in and come out through the one timestamp
codec of store/sql.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from planctl.store.location import DbTarget
from planctl.store.sql import BUSY_TIMEOUT_MS, instant, stored_at


class Reader:
    """Portable read-only SQL over sqlite3 (SQLite files) or SQLAlchemy (PostgreSQL)."""

    def __init__(self, target: DbTarget) -> None:
        self.target = target
        self.sqlite = target.path is not None
        if self.sqlite:
            self.conn: Any = sqlite3.connect(f"file:{target.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            self.conn.execute("PRAGMA query_only = ON")
        else:
            from sqlalchemy import create_engine

            self.engine = create_engine(target.url)
            self.conn = self.engine.connect()

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[tuple[Any, ...]]:
        params = {k: stored_at(v, sqlite=self.sqlite) if isinstance(v, datetime) else v
                  for k, v in (params or {}).items()}
        if self.sqlite:
            yield from self.conn.execute(sql, params)
        else:
            from sqlalchemy import text

            yield from self.conn.execution_options(stream_results=True, yield_per=5_000).execute(text(sql), params)

    def one(self, sql: str, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        return next(self.rows(sql, params), None)

    instant = staticmethod(instant)  # a stored instant, timezone-aware UTC

    def close(self) -> None:
        self.conn.close()
        if not self.sqlite:
            self.engine.dispose()
