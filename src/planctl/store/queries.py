"""Small query helpers shared by the services."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func


def starts_with(column: Any, prefix: str) -> Any:
    """`column` begins with `prefix`, literally and case-sensitively on every backend.

    (SQL LIKE would treat % and _ as wildcards and ignores case on SQLite.)
    """
    return func.substr(column, 1, len(prefix)) == prefix
