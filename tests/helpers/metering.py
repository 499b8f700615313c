"""The metering world: plans billing the test model `unit` (1 µcr an input token), sales, team
keys, authorize and record through the metering engine, at NOW unless told."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from helpers import NOW, rows
from helpers.sales import account, sell


UNIT = {"id": "unit", "input_price": "1", "cached_price": "0.5", "output_price": "2"}


def plan(slug: str, **terms: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "slug": slug, "name": slug.title(), "family": slug, "tier": 1, "price": "10.00", "validity": "1mo",
        "total_credit": "0.01",  # 10,000 µcr
        "models": ["unit", "gpt-5.4", "gpt-5.4-mini"], "groups": ["default", "priority", "economy"],
        "refund_policy": "unused:7d",
    }
    entry.update(terms)
    return {k: v for k, v in entry.items() if v is not None}


def install(db: Any, caller: Any, *plans: dict[str, Any], extra: tuple[dict[str, Any], ...] = ()) -> None:
    from planctl.services import catalog

    doc: dict[str, Any] = {"models": [UNIT], "plans": list(plans)}
    if extra:
        doc["extra"] = list(extra)
    catalog.import_catalog(db, doc, caller=caller, now=NOW - timedelta(days=60))


@dataclass
class Bought:
    sub: str
    key: str
    secret: str
    order: str


def buy(db: Any, caller: Any, acc: str, slug: str, now: datetime = NOW, **request: Any) -> Bought:
    r = sell(db, caller, now, kind="buy", account=acc, item=slug, **request)
    return Bought(r.subscription.id, r.key.id, r.secret.secret, r.order.id)


def team(db: Any, caller: Any, sub: str, name: str = "team", now: datetime = NOW, **spec: Any) -> tuple[str, str]:
    """A team key from the subscription; returns (key id, secret)."""
    from planctl.services import keys

    made = keys.create(db, keys.KeySpec(name=name, from_plan=sub, **spec), caller=caller, now=now)
    return made[0].key.id, made[0].secret


_CATALOGS: dict[int, tuple[Any, Any]] = {}  # id(db) -> (a weak reference to it, its cache)


def catalogs(db: Any, *, fresh: bool = False) -> Any:
    """The catalog cache of a database, as a `Meter` on it would own one: kept across calls, so
    tests see it reloaded when the catalog changes (`fresh`: a new one, as a new Meter starts)."""
    from planctl.metering.catalog import Catalogs

    hit = _CATALOGS.get(id(db))
    if hit is None or hit[0]() is not db or fresh:  # (an id is reused once its database is gone)
        hit = _CATALOGS[id(db)] = (weakref.ref(db), Catalogs())
    return hit[1]


def auth(db: Any, secret: str, model: str = "unit", now: datetime = NOW, **kw: Any) -> Any:
    from planctl.metering.admission import authorize

    return authorize(db, catalogs(db), secret, model=model, now=now, **kw)


def use(db: Any, key: str, rid: str, tokens: int = 0, at: datetime = NOW, model: str = "unit",
        now: datetime | None = None, **kw: Any) -> Any:
    """Record a request; with the `unit` model `tokens` input tokens cost exactly that many µcr."""
    from planctl.metering.recording import UsageInput, record

    fields: dict[str, Any] = {"input_tokens": tokens, "output_tokens": 0, "status_code": 200, **kw}
    u = UsageInput(request_id=rid, key=key, model=model, at=at, **fields)
    return record(db, catalogs(db), u, now=now or at)


def sub_row(db: Any, sub: str) -> Any:
    from planctl.store.tables import Subscription

    (row,) = rows(db, Subscription, Subscription.id == sub)
    return row


def checks_ok(db: Any) -> None:
    """`db check` is clean, and it ran the ledger and hold checks."""
    from planctl.services.database import check

    results = check(db)
    assert [r.name for r in results if not r.ok] == [], [(r.name, r.detail) for r in results]
    assert {"ledger_plan_credit", "ledger_extra_usage", "ledger_payg", "holds"} <= {r.name for r in results}


def sold_meter(db: Any, caller: Any, **terms: Any) -> tuple[str, Bought]:
    """One account that bought the plan `meter` (with `terms`): (account id, what it bought)."""
    install(db, caller, plan("meter", **terms))
    acc = account(db, caller)
    return acc, buy(db, caller, acc, "meter")
