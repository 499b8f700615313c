"""The rows the read-only admin lists show, read with plain SQL (see store/sql.py).

`plans list`, `accounts list`, `keys list`, `subscriptions list` and
`limits show` run on a `store.sql.Tx` so that they start without importing the
ORM (issue 14: each within 300 ms). A row comes back as a namespace with the
same attribute names and Python types as the `store/tables.py` model, so the
CLI renders both alike. The columns are listed in store/columns.py, their kinds
here; tests/test_store_data_layer.py compares both with tables.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from planctl.store import columns
from planctl.store.sql import Tx


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    instants: tuple[str, ...] = ()  # UTCDateTime: stored UTC, read back aware
    flags: tuple[str, ...] = ()  # Boolean (SQLite stores 0/1)
    documents: tuple[str, ...] = ()  # JSON

    def select(self, alias: str) -> str:
        return ", ".join(f"{alias}.{c}" for c in self.columns)

    def reader(self, tx: Tx) -> Callable[[Sequence[Any]], SimpleNamespace]:
        """Turns a row of `select()`'s columns into a namespace typed like the ORM's object."""
        convert: list[Callable[[Any], Any] | None] = [
            tx.instant if c in self.instants else _flag if c in self.flags else tx.json_out if c in self.documents
            else None for c in self.columns]
        pairs = list(zip(self.columns, convert))

        def read(values: Sequence[Any]) -> SimpleNamespace:
            return SimpleNamespace(**{c: v if f is None else f(v) for (c, f), v in zip(pairs, values)})
        return read

    def rows(self, tx: Tx, alias: str, tail: str, params: dict[str, Any] | None = None) -> list[SimpleNamespace]:
        """`SELECT <columns> FROM <table> <alias> <tail>`, as namespaces."""
        read = self.reader(tx)
        return [read(r) for r in tx.rows(f"SELECT {self.select(alias)} FROM {self.name} {alias} {tail}", params)]


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


PLANS = Table("plans", columns.PLAN_LISTED, instants=("created_at", "updated_at"), flags=("on_sale",),
              documents=("terms",))
ACCOUNTS = Table("accounts", columns.ACCOUNT_LISTED, instants=("created_at", "updated_at"))
KEYS = Table("api_keys", columns.KEY_LISTED,
             instants=("expires_at", "previous_valid_until", "created_at", "updated_at", "last_used_at"))
SUBSCRIPTIONS = Table("subscriptions", columns.SUBSCRIPTION_LISTED, instants=("starts_at", "ends_at", "cancelled_at"),
                      flags=("period_limit_enabled",))
TABLES = (PLANS, ACCOUNTS, KEYS, SUBSCRIPTIONS)


def settings(tx: Tx) -> dict[str, str]:
    """The stored settings (domain/config.py fills in the defaults)."""
    return dict(tx.rows("SELECT key, value FROM settings"))


def names(tx: Tx, table: str, column: str) -> list[Any]:
    """Every value of a table's key column (model ids, group names), for validating entries against."""
    assert (table, column) in (("models", "id"), ("groups", "name"))
    return [r[0] for r in tx.rows(f"SELECT {column} FROM {table}")]


def in_chunks(tx: Tx, sql: str, ids: Sequence[Any], size: int = 500) -> list[tuple[Any, ...]]:
    """`sql` with `IN (:ids)` run over `ids` a chunk at a time (drivers cap the parameters)."""
    out: list[tuple[Any, ...]] = []
    for i in range(0, len(ids), size):
        chunk = ids[i:i + size]
        marks = ", ".join(f":i{n}" for n in range(len(chunk)))
        out.extend(tx.rows(sql.replace(":ids", marks), {f"i{n}": v for n, v in enumerate(chunk)}))
    return out
