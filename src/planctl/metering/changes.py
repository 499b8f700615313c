"""The unit of work of one metering transaction (`Changes`).

The rows a transaction reads or moves, one object per row, and its ledger entries; what
every row moved is written as increments, one statement per table. Holds and recording
both run on it.
"""

from __future__ import annotations

from datetime import datetime
from operator import itemgetter
from typing import Any

from planctl.metering.state import EPOCH
from planctl.store import meter
from planctl.store.meter import AccountRow, CounterRow, KeyRow, PackRow, SubRow
from planctl.store.sql import Tx

_MOVED = {  # the fields of each kind of row that charging and holds move, always by increments
    "key": ("credit_used", "credit_reserved"),
    "account": ("payg_balance", "payg_reserved"),
    "sub": ("credit_used", "credit_reserved"),
    "pack": ("used", "reserved"),
    "counter": ("requests", "tokens", "credit", "reserved"),
}


def _blank(kind: str, ident: Any) -> Any:
    """A row moved before it is read: zeros, so that its fields hold only the changes."""
    if kind == "counter":
        return CounterRow()
    if kind == "pack":
        return PackRow(ident, 0, 0, 0, None)
    if kind == "key":
        return KeyRow(ident, "", None, "", "", "", "", None, None, 0, 0, None, None, None, None)
    if kind == "account":
        return AccountRow(ident, None, None, 0, 0)
    return SubRow(ident, "", 0, "", EPOCH, EPOCH, 1, None, 0, 0, True)


class Changes:
    """The rows one transaction reads or moves, one object per row, and its ledger entries.

    Charging changes the objects in place (`sub.credit_used += plan`), so each
    request of a batch sees the ones before it; `apply` writes what every row
    moved since it was read, as increments: one statement per table, however
    many requests the batch charges. A row moved before it is read starts blank
    (`row`); reading it later (`adopt`) puts the database's values under the
    changes.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, Any], Any] = {}
        self.read: dict[tuple[str, Any], tuple[int, ...]] = {}  # the moved fields as read (or last applied)
        self.blank: set[tuple[str, Any]] = set()  # rows not read from the database yet
        self.last_used: dict[str, datetime] = {}  # key id -> its latest use in this transaction
        self.ledger: list[tuple[Any, ...]] = []  # rows of LEDGER_COLUMNS, `at` as stored
        self.plan_debits: list[tuple[Any, ...]] = []  # usage charged to plan credit (meter.insert_plan_debits)

    def row(self, kind: str, ident: Any) -> Any:
        """The object of a row, blank when it has not been read."""
        obj = self.rows.get((kind, ident))
        if obj is None:
            obj = self.rows[(kind, ident)] = _blank(kind, ident)
            self.read[(kind, ident)] = (0,) * len(_MOVED[kind])
            self.blank.add((kind, ident))
        return obj

    def adopt(self, kind: str, ident: Any, obj: Any) -> Any:
        """The transaction's object for a row just read: the one it already has (the database's
        values under its changes, if it was blank), or this one."""
        key = (kind, ident)
        known = self.rows.get(key)
        names = _MOVED[kind]
        if known is None:
            self.rows[key] = obj
            self.read[key] = tuple([getattr(obj, name) for name in names])
            return obj
        if key in self.blank:
            self.blank.discard(key)
            moved = [getattr(known, name) - base for name, base in zip(names, self.read[key])]
            for slot in obj.__slots__:
                setattr(known, slot, getattr(obj, slot))
            self.read[key] = tuple([getattr(obj, name) for name in names])
            for name, amount in zip(names, moved):
                setattr(known, name, getattr(known, name) + amount)
        return known

    def used(self, key_id: str, at: datetime) -> None:
        """A key was used at `at` (its last use only moves forward)."""
        last = self.last_used.get(key_id)
        if last is None or at > last:
            self.last_used[key_id] = at

    def entry(self, stored_at: Any, account_id: str, pool: str, subscription_id: str | None, pack_id: int | None,
              key_id: str | None, kind: str, amount: int, request_id: str | None, reason: str) -> None:
        """A ledger entry, its values in the order of LEDGER_COLUMNS (no order: metering's own)."""
        self.ledger.append((stored_at, account_id, pool, subscription_id, pack_id, key_id, kind, amount, None,
                            request_id, reason))

    def apply(self, tx: Tx) -> None:
        """Keys, accounts and subscriptions in the order they are locked everywhere else."""
        moved: dict[str, list[tuple[Any, list[int]]]] = {kind: [] for kind in _MOVED}
        for key, obj in self.rows.items():
            kind, ident = key
            names = _MOVED[kind]
            now = [getattr(obj, name) for name in names]
            delta = [value - base for value, base in zip(now, self.read[key])]
            if any(delta) or (kind == "key" and ident in self.last_used):
                moved[kind].append((ident, delta))
                self.read[key] = tuple(now)
        for rows in moved.values():
            rows.sort(key=itemgetter(0))  # every writer moves rows in one order: no deadlock
        last = self.last_used
        meter.charge_keys(tx, [{"id": i, "used": d[0], "reserved": d[1], "last": last.get(i)} for i, d in moved["key"]])
        meter.charge_payg(tx, [{"id": i, "balance": d[0], "reserved": d[1]} for i, d in moved["account"]])
        meter.charge_subscriptions(tx, [{"id": i, "used": d[0], "reserved": d[1]} for i, d in moved["sub"]])
        meter.charge_packs(tx, [{"id": i, "used": d[0], "reserved": d[1]} for i, d in moved["pack"]])
        meter.add_to_counters(tx, [{"id": w, "requests": d[0], "tokens": d[1], "credit": d[2], "reserved": d[3]}
                                   for w, d in moved["counter"]])
        meter.insert_ledger(tx, self.ledger)
        meter.insert_plan_debits(tx, self.plan_debits)
        self.last_used, self.ledger, self.plan_debits = {}, [], []
