"""The catalog metering reads (models, aliases, group ratios, settings, plan terms), cached.

A `Catalogs` cache belongs to whoever meters one database (a `Meter` owns one; a one-shot
command makes a fresh one): it keeps the catalog as of one stamp and reloads it when the
stamp in the database changes, which every ORM write to those tables renews (see
store/engine.py). Nothing here is module-global.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from planctl.domain import config, quota
from planctl.domain.catalog import Context, ModelPrices, PlanTerms, currency_decimals, parse_plan, resolve_model
from planctl.domain.clock import start_of_local_day, zone
from planctl.store import meter
from planctl.store.sql import Tx

UNREAD = -1  # a catalog stamp not read yet


class Catalog:
    """Models, aliases, groups, settings and plan terms as of one catalog stamp."""

    def __init__(self, rows: meter.CatalogRows) -> None:
        self.models = {m[0]: ModelPrices(*m) for m in rows.models}
        self.aliases = dict(rows.aliases)
        self.ratios = dict(rows.groups)
        settings = config.effective(rows.settings)
        self.tz = zone(settings["reset_timezone"])
        currency = settings["currency"]
        self.context = Context(currency=currency, currency_decimals=currency_decimals(currency),
                               models=frozenset(self.models), groups=frozenset(self.ratios))
        self._terms: dict[int, PlanTerms] = {}
        self._billed: dict[str, str | None] = {}
        self._days: dict[date, tuple[tuple[datetime, datetime], str]] = {}
        self._last_day: tuple[tuple[datetime, datetime], str] | None = None

    def terms(self, tx: Tx, version_id: int) -> PlanTerms:
        terms = self._terms.get(version_id)
        if terms is None:  # plan versions are immutable
            terms = self._terms[version_id] = parse_plan(meter.plan_version_terms(tx, version_id), self.context)
        return terms

    def billed(self, requested: str) -> str | None:
        if requested not in self._billed:
            self._billed[requested] = resolve_model(requested, self.models, self.aliases).billed
        return self._billed[requested]

    def day(self, at: datetime) -> tuple[datetime, datetime]:
        """[start, end) in UTC of the natural day in the reset zone that contains `at`."""
        return self.local_day(at)[0]

    def local_day(self, at: datetime) -> tuple[tuple[datetime, datetime], str]:
        """That day's bounds and its date (YYYY-MM-DD), which usage records are filed under."""
        last = self._last_day
        if last is not None and last[0][0] <= at < last[0][1]:  # most records fall in the day before them
            return last
        local = at.astimezone(self.tz).date()  # `at` is aware (validated on the way in)
        hit = self._days.get(local)
        if hit is None:
            hit = self._days[local] = ((start_of_local_day(local, self.tz),
                                        start_of_local_day(local + timedelta(days=1), self.tz)), local.isoformat())
        self._last_day = hit
        return hit


class Catalogs:
    """The catalog of ONE database, as of its stamp: read through `get` in each transaction."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached: tuple[int, Catalog] | None = None

    def get(self, tx: Tx, *, write: bool, stamp: int | None = UNREAD) -> Catalog:
        """The cached catalog when its stamp (read here, or given) is current, else loaded afresh
        (and kept, when the database has a stamp)."""
        if stamp == UNREAD:
            stamp = meter.catalog_stamp(tx)
        if stamp is None and write:  # a database from before stamps: give it one
            stamp = meter.new_catalog_stamp(tx)
        cached = self._cached
        if stamp is not None and cached is not None and cached[0] == stamp:
            return cached[1]
        cat = Catalog(meter.catalog_rows(tx))
        if stamp is not None:
            self._cached = (stamp, cat)
        return cat


def quote(db: Any, catalogs: Catalogs, model: str, *, input_tokens: int, output_tokens: int) -> int | None:
    """What a request would cost at the dearest group ratio (None for a model nobody knows): what
    a gateway needs to size a hold before it knows the key."""
    with db.tx(write=False) as tx:
        cat = catalogs.get(tx, write=False)
    billed = cat.billed(model)
    if billed is None:
        return None
    ratio = max(cat.ratios.values(), default=1_000_000)
    return quota.request_cost(cat.models[billed], input_tokens=input_tokens, cached_tokens=0,
                              output_tokens=output_tokens, ratio_ppm=ratio)
