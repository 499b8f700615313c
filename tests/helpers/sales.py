"""Sales through the services on the `db` fixture, at NOW unless told."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from helpers import NOW


def account(db: Any, caller: Any, name: str = "acme", now: datetime = NOW, **fields: Any) -> str:
    from planctl.services import accounts

    return accounts.create(db, {"name": name, **fields}, caller=caller, now=now).id


def sell(db: Any, caller: Any, now: datetime = NOW, dry_run: bool = False, **request: Any) -> Any:
    from planctl.services.sales import SaleRequest, sell as sell_

    return sell_(db, SaleRequest(**request), caller=caller, now=now, dry_run=dry_run)


def order_row(db: Any, order_id: str) -> Any:
    from planctl.store.tables import Order

    with db.read() as session:
        return session.get(Order, order_id)


def checks_ok(db: Any) -> None:
    from planctl.services.database import check

    bad = [r for r in check(db) if not r.ok]
    assert not bad, bad
