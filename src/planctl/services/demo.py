"""Demo data: realistic synthetic traffic, so a new database shows every table at once.

`run` builds, through the ordinary services and at times in the past:

- accounts: one team (with a sub-user) on the team plan, the others on several
  plans of the sample catalog (bought with `sales.sell`, renewed while the
  range is longer than their validity), and one extra-usage pack;
- keys: the subscription key of every purchase plus team keys made with
  `keys.create` in several groups (default, priority, economy), each with a
  traffic profile (interactive, coding agent, night batch) and a weight;
- usage over the last `days` days, ending at `now`: several models (among them
  a `claude-…` name billed through an alias), the three API types, status codes
  about 95 % 2xx / 4 % 4xx / 1 % 5xx (one key is flakier than the rest),
  cache hits, log-normal token counts and latencies, a diurnal and weekly
  pattern in the reset zone, and night-time batch work.

Everything is drawn from one `random.Random(seed)`; the only other input is
`now`, the end of the range. The same seed on an empty database gives the same
accounts, keys, records and costs (ids and key secrets are random, as always).

Two ways of recording the usage:

- default: every request is admitted first (`metering.admission.authorize`, as
  the gateway does) and recorded through the real metering path
  (`metering.importing.import_usage`); a refused request is recorded as refused (status
  429, no tokens, nothing charged, the reason in its error text). Balances,
  counters, extra usage, daily rollups and the ledger agree, `planctl db
  check` is clean, and no subscription uses more than it was granted. Records
  far from every limit are recorded in batches; near a limit each request
  holds its exact cost (`reserve`) and is settled at once, so no limit is
  overshot by requests still waiting in a batch;
- `fast` (benchmarks, millions of records): records are bulk-inserted one
  local day per transaction and each day's rollups are built from them with one
  `INSERT … SELECT … GROUP BY` (the same rows `metering.rollups` would make,
  latency histogram included). Nothing is charged: records carry their cost
  but `pool` is `none`, no `charged_*` amount is set, and balances, counters
  and the ledger are left untouched.
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, func, select
from zoneinfo import ZoneInfo

from planctl.domain.catalog import ModelPrices, resolve_model
from planctl.domain.clock import local_date, start_of_local_day
from planctl.domain.errors import InvalidInput, Note, Refused
from planctl.domain.latency import LATENCY_BUCKETS_MS
from planctl.domain.quota import request_cost
from planctl.domain import lifecycle
from planctl.metering.admission import authorize
from planctl.metering.catalog import Catalogs
from planctl.metering.importing import import_usage
from planctl.metering.recording import UsageInput
from planctl.services import accounts, keys, sales, settings
from planctl.services.audit import Caller
from planctl.store.columns import ROLLUP_COLUMNS, ROLLUP_SUMMED, USAGE_BY_HAND
from planctl.store.engine import Database
from planctl.store.sql import sqlite_text
from planctl.store.tables import Account, Group, Model, ModelAlias, Plan, Product, UsageRecord

Progress = Callable[[int, int], None]  # (records written so far, records in all)

TEAM_PLAN = "codex-team-monthly"
PLANS = ("codex-pro-monthly", "codex-lite-monthly", "codex-weekly", "codex-max-monthly")
EXTRA_PACK = "extra-200"
EXTRA_BUYER_PLAN = "codex-lite-monthly"  # the plan whose daily limit is the tightest
COMPANIES = ("Acme Labs", "Globex", "Initech", "Umbrella Research", "Hooli", "Stark Industries",
             "Wayne Analytics", "Tyrell Systems", "Soylent AI", "Cyberdyne", "Aperture Science", "Massive Dynamic")
MODELS = ("gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.3-codex-spark")
ALIASED = ("claude-sonnet-4-5", "claude-haiku-4-5")
GROUPS = ("default", "priority", "economy")
MS_PER_TOKEN = {"gpt-5.5": 9.0, "gpt-5.4": 6.0, "gpt-5.4-mini": 3.0, "gpt-5.3-codex": 5.0,
                "gpt-5.3-codex-spark": 2.0}
ERROR_RATE = 0.05  # 4 % 4xx + 1 % 5xx over all traffic
SHARE_4XX = 0.8
STATUS_4XX = ((429, 45), (400, 25), (413, 10), (401, 10), (403, 5), (404, 5))
STATUS_5XX = ((502, 35), (500, 30), (503, 20), (504, 15))
ERRORS = {
    400: "invalid_request_error: messages: at least one message is required",
    401: "authentication_error: invalid upstream credentials",
    403: "permission_error: this model is not enabled for the upstream account",
    404: "not_found_error: model not found",
    413: "request_too_large: the prompt exceeds the model's context window",
    429: "rate_limit_error: upstream rate limit reached, retry after 20 s",
    500: "api_error: internal server error",
    502: "upstream connection reset by peer",
    503: "overloaded_error: upstream is temporarily overloaded",
    504: "upstream timed out after 60 s",
}
OK_POOL, ERROR_POOL = 4096, 512  # at most, request shapes per traffic profile (powers of two)
FAST_CHUNK = 50_000  # rows per executemany in fast mode


@dataclass(frozen=True)
class DemoSpec:
    days: int = 7
    records: int = 20_000
    accounts: int = 5
    seed: int = 42
    fast: bool = False


@dataclass
class DemoSummary:
    mode: str  # charged | fast
    seed: int
    days: int
    since: datetime
    until: datetime
    accounts: int = 0
    subscriptions: int = 0
    orders: int = 0
    extra_packs: int = 0
    keys: int = 0
    records: int = 0
    rejected: int = 0
    refused: int = 0  # requests admission refused (recorded as refused, not charged)
    consumption: int = 0  # µcr, the sum of the records' cost
    request_id_prefix: str = ""
    setup_seconds: float = 0.0
    usage_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def charged(self) -> bool:
        return self.mode == "charged"

    @property
    def elapsed_seconds(self) -> float:
        return self.setup_seconds + self.usage_seconds


# ---------------------------------------------------------------- traffic profiles


@dataclass(frozen=True)
class _Profile:
    apis: tuple[tuple[str, float], ...]
    models: dict[str, tuple[tuple[str, float], ...]]  # by API type
    input_median: float
    input_sigma: float
    output_median: float
    output_sigma: float
    cache_probability: float
    cache_share: tuple[float, float]
    stream_probability: float


PROFILES = {
    "interactive": _Profile(
        apis=(("chat", 0.5), ("responses", 0.3), ("claude", 0.2)),
        models={"chat": (("gpt-5.4-mini", 0.6), ("gpt-5.4", 0.4)),
                "responses": (("gpt-5.4", 0.5), ("gpt-5.5", 0.3), ("gpt-5.4-mini", 0.2)),
                "claude": (("claude-sonnet-4-5", 0.7), ("claude-haiku-4-5", 0.3))},
        input_median=1_500, input_sigma=1.0, output_median=250, output_sigma=0.75,
        cache_probability=0.5, cache_share=(0.4, 0.9), stream_probability=0.7),
    "agent": _Profile(
        apis=(("responses", 0.85), ("claude", 0.15)),
        models={"responses": (("gpt-5.3-codex", 0.45), ("gpt-5.5", 0.25), ("gpt-5.3-codex-spark", 0.2),
                              ("gpt-5.4", 0.1)),
                "claude": (("claude-sonnet-4-5", 1.0),)},
        input_median=12_000, input_sigma=0.9, output_median=350, output_sigma=0.6,
        cache_probability=0.85, cache_share=(0.6, 0.95), stream_probability=0.9),
    "batch": _Profile(
        apis=(("responses", 0.8), ("chat", 0.2)),
        models={"responses": (("gpt-5.4-mini", 0.5), ("gpt-5.4", 0.5)),
                "chat": (("gpt-5.4-mini", 1.0),)},
        input_median=6_000, input_sigma=0.6, output_median=2_500, output_sigma=0.6,
        cache_probability=0.3, cache_share=(0.2, 0.6), stream_probability=0.0),
    "backfill": _Profile(  # one afternoon's big batch job, past a daily limit and onto extra usage
        apis=(("responses", 1.0),),
        models={"responses": (("gpt-5.4", 0.7), ("gpt-5.5", 0.3))},
        input_median=30_000, input_sigma=0.3, output_median=4_000, output_sigma=0.3,
        cache_probability=0.2, cache_share=(0.2, 0.5), stream_probability=0.0),
}
BACKFILL_RECORDS = 250  # at most; about 120 credit, past the 80-credit daily limit of the lite plan
BACKFILL_HOURS = (9, 13)  # local time, on the last whole day of the range


@dataclass
class _Key:
    """One demo key and how it sends traffic."""

    id: str
    account_id: str
    subscription_id: str | None
    group: str
    profile: str
    day_weight: float
    night_weight: float
    error_factor: float = 1.0
    error_rate: float = ERROR_RATE
    group_index: int = 0
    secret: str = ""  # for admission, like a client sending it


# ---------------------------------------------------------------- entry point


def run(db: Database, spec: DemoSpec, *, caller: Caller, now: datetime, force: bool = False,
        progress: Progress | None = None) -> DemoSummary:
    """Fill the database with demo accounts, subscriptions, keys and usage ending at `now`."""
    _check_spec(spec)
    started = time.perf_counter()
    since = now - timedelta(days=spec.days)
    summary = DemoSummary(mode="fast" if spec.fast else "charged", seed=spec.seed, days=spec.days,
                          since=since, until=now)
    rng = random.Random(spec.seed)
    with db.read() as session:
        _check_database(session, force=force)
        tz = settings.reset_zone(session)
        catalog = _Catalog.load(session)
        tag = _free_tag(session, f"demo{spec.seed}")
    summary.request_id_prefix = f"req-{tag}-"
    demo_keys, backfill = _setup(db, spec, summary, caller=caller, since=since, now=now, tz=tz)
    _weigh(demo_keys + ([backfill] if backfill else []))
    summary.setup_seconds = time.perf_counter() - started
    traffic = _Traffic(rng, demo_keys, catalog, since, now, tz, spec.records, summary.request_id_prefix, backfill)
    started = time.perf_counter()
    if spec.fast:
        _record_fast(db, traffic, summary, progress)
        summary.notes.append(Note("usage was not charged to balances (records carry their cost, pool 'none'; "
                                  "balances, counters and the ledger are unchanged)", code="demo_fast"))
    else:
        _record_charged(db, traffic, summary, now, progress)
    summary.usage_seconds = time.perf_counter() - started
    return summary


def _check_spec(spec: DemoSpec) -> None:
    if not 1 <= spec.days <= 366:
        raise InvalidInput("the days must be 1 to 366", code="demo_days")
    if spec.records < 0:
        raise InvalidInput("the records must be 0 or more", code="demo_records")
    if not 1 <= spec.accounts <= 100:
        raise InvalidInput("the accounts must be 1 to 100", code="demo_accounts")


def _check_database(session: Session, *, force: bool) -> None:
    has_usage = session.exec(select(UsageRecord.id).limit(1)).first() is not None
    if has_usage and not force:
        raise Refused("the database already has usage records and demo traffic would mix with them",
                      reason="database_not_empty", code="demo_database_not_empty")
    missing = [slug for slug in (TEAM_PLAN, *PLANS) if session.exec(select(Plan.id).where(Plan.slug == slug)).first()
               is None]
    missing += [slug for slug in (EXTRA_PACK,) if session.exec(select(Product.id).where(Product.slug == slug)).first()
                is None]
    missing += [g for g in GROUPS if session.get(Group, g) is None]
    missing += [m for m in MODELS if session.get(Model, m) is None]
    if missing:
        raise Refused(f"the demo uses the sample catalog, and this database lacks {', '.join(missing[:5])}",
                      reason="demo_needs_sample_catalog", code="demo_needs_new_database")


def _free_tag(session: Session, base: str) -> str:
    """A request-id tag no record uses yet (a second demo run with --yes gets `demo42r2`)."""
    for run_number in range(1, 10_000):
        tag = base if run_number == 1 else f"{base}r{run_number}"
        lo, hi = f"req-{tag}-", f"req-{tag}."  # "." sorts right after "-": every id with the prefix
        taken = session.exec(select(UsageRecord.id).where(UsageRecord.request_id >= lo,
                                                          UsageRecord.request_id < hi).limit(1)).first()
        if taken is None:
            return tag
    raise Refused("too many demo runs in this database; use a new one", reason="database_not_empty")


@dataclass
class _Catalog:
    """What pricing a record needs: prices, aliases and group ratios (read once)."""

    prices: dict[str, ModelPrices]
    aliases: dict[str, str]
    ratios: dict[str, int]

    @classmethod
    def load(cls, session: Session) -> _Catalog:
        prices = {m.id: ModelPrices(m.id, m.input_price, m.cached_price, m.output_price)
                  for m in session.exec(select(Model))}
        aliases = {a.pattern: a.model_id for a in session.exec(select(ModelAlias))}
        ratios = {g.name: g.ratio_ppm for g in session.exec(select(Group))}
        for requested in ALIASED:
            if resolve_model(requested, prices, aliases).billed is None:
                raise Refused(f"the demo sends {requested!r}, which no alias of this catalog bills",
                              reason="demo_needs_sample_catalog", code="demo_needs_new_database")
        return cls(prices, aliases, ratios)

    def billed(self, requested: str) -> str:
        billed = resolve_model(requested, self.prices, self.aliases).billed
        assert billed is not None
        return billed


# ---------------------------------------------------------------- accounts, sales and keys


def _setup(db: Database, spec: DemoSpec, summary: DemoSummary, *, caller: Caller, since: datetime,
           now: datetime, tz: ZoneInfo) -> tuple[list[_Key], _Key | None]:
    """Accounts, subscriptions (renewed to cover the range), an extra pack and keys, sold before `since`.

    Returns the keys with their traffic, and the key (if any) that runs one big backfill job.
    """
    at = since.replace(second=0, microsecond=0) - timedelta(hours=2)
    tick = iter(range(1, 10_000))

    def t() -> datetime:  # each setup step a minute after the previous one
        return at + timedelta(minutes=next(tick))

    with db.read() as session:
        taken = set(session.exec(select(Account.name)))
    demo_keys: list[_Key] = []
    buyer: str | None = None  # of the extra pack: the account on the tightest daily limit, else the team
    backfill: _Key | None = None
    for i in range(spec.accounts):
        company = COMPANIES[i % len(COMPANIES)] + ("" if i < len(COMPANIES) else f" {i // len(COMPANIES) + 1}")
        name = _free_name(company, taken)
        slug = "-".join("".join(c for c in word if c.isalnum()) for word in company.lower().split())
        account = accounts.create(db, {"name": name, "billing_name": f"{company} Ltd",
                                       "billing_email": f"billing@{slug}.example"}, caller=caller, now=t())
        summary.accounts += 1
        plan = TEAM_PLAN if i == 0 else PLANS[(i - 1) % len(PLANS)]
        sale = sales.sell(db, sales.SaleRequest(kind="buy", account=account.id, item=plan, payment_method="card",
                                                payment_ref=f"demo-{spec.seed}-{i}"), caller=caller, now=t())
        assert sale.subscription is not None and sale.key is not None
        summary.subscriptions += 1
        summary.orders += 1
        summary.keys += 1
        sub = sale.subscription
        summary.orders += _renew_until(db, sub.id, sub.ends_at, now, caller, tz)
        profile = "agent" if i % 2 else "interactive"
        assert sale.secret is not None
        demo_keys.append(_Key(sale.key.id, account.id, sub.id, sale.key.group_name, profile, 1.5, 0.4,
                              secret=sale.secret.secret))
        if i == 0:
            demo_keys += _team(db, summary, account.id, company, sub.id, taken, caller, t)
        else:
            group = "priority" if plan in ("codex-pro-monthly", "codex-max-monthly") else "economy"
            made = keys.create(db, keys.KeySpec(name=f"{slug}-backend", from_plan=sub.id, account=account.id,
                                                group=group),
                               caller=caller, now=t())
            summary.keys += 1
            if plan == EXTRA_BUYER_PLAN and buyer is None:
                buyer = account.id
                backfill = _Key(made[0].key.id, account.id, sub.id, group, "backfill", 0.0, 0.0,
                                secret=made[0].secret)
            demo_keys.append(_Key(made[0].key.id, account.id, sub.id, group,
                                  "batch" if group == "economy" else "interactive",
                                  0.5 if group == "economy" else 1.0, 1.5 if group == "economy" else 0.3,
                                  secret=made[0].secret))
    buyer = buyer or demo_keys[0].account_id
    sales.sell(db, sales.SaleRequest(kind="extra", account=buyer, item=EXTRA_PACK, payment_method="alipay",
                                     payment_ref=f"demo-{spec.seed}-extra"), caller=caller, now=t())
    summary.orders += 1
    summary.extra_packs += 1
    return demo_keys, backfill


def _team(db: Database, summary: DemoSummary, account_id: str, company: str, sub_id: str, taken: set[str],
          caller: Caller, t: Callable[[], datetime]) -> list[_Key]:
    """The team's keys in three groups, and a sub-user with a quota and its own key."""
    out = []
    for key_name, group, profile, day, night, flaky in (
            ("ci-runner", "default", "agent", 3.0, 0.8, 1.0),
            ("prod-gateway", "priority", "interactive", 4.0, 1.0, 1.0),
            ("nightly-batch", "economy", "batch", 0.6, 6.0, 1.0),
            ("staging", "default", "interactive", 1.5, 0.2, 7.0)):  # a broken deploy: many 4xx
        made = keys.create(db, keys.KeySpec(name=key_name, from_plan=sub_id, account=account_id, group=group),
                           caller=caller, now=t())
        summary.keys += 1
        out.append(_Key(made[0].key.id, account_id, sub_id, group, profile, day, night, flaky,
                        secret=made[0].secret))
    sub_name = _free_name(f"{company} Research", taken)
    subuser = accounts.create(db, {"name": sub_name, "parent": account_id, "subuser_quota": 2_000 * 1_000_000},
                              caller=caller, now=t())
    summary.accounts += 1
    made = keys.create(db, keys.KeySpec(name="notebook", from_plan=sub_id, account=subuser.id, group="priority"),
                       caller=caller, now=t())
    summary.keys += 1
    out.append(_Key(made[0].key.id, subuser.id, sub_id, "priority", "agent", 1.2, 0.2, secret=made[0].secret))
    return out


def _free_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name} ({n})"
    taken.add(candidate)
    return candidate


def _renew_until(db: Database, sub_id: str, ends_at: datetime, now: datetime, caller: Caller, tz: ZoneInfo) -> int:
    """Renew (inside each renewal window) until the subscription runs past `now`; returns the orders."""
    orders = 0
    while ends_at <= now:
        with db.read() as session:
            sub = sales.resolve_subscription(session, sub_id)
            opens = lifecycle.renewal_opens(sales.subscription_state(sub), sales.subscription_terms(session, sub), tz)
        when = max(opens, ends_at - timedelta(hours=1))
        sale = sales.sell(db, sales.SaleRequest(kind="renew", subscription=sub_id, payment_method="card"),
                          caller=caller, now=when)
        assert sale.subscription is not None
        ends_at = sale.subscription.ends_at
        orders += 1
    return orders


def _weigh(demo_keys: list[_Key]) -> None:
    """Per-key error rates, scaled so that all traffic has about ERROR_RATE errors."""
    total = sum(k.day_weight for k in demo_keys)
    mean_factor = sum(k.day_weight * k.error_factor for k in demo_keys) / total
    for k in demo_keys:
        k.error_rate = min(0.9, ERROR_RATE * k.error_factor / mean_factor)
        k.group_index = GROUPS.index(k.group) if k.group in GROUPS else 0


# ---------------------------------------------------------------- traffic


def _weighted(rng: random.Random, choices: tuple[tuple[Any, float], ...]) -> Any:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, int(rng.lognormvariate(math.log(median), sigma))))


class _Traffic:
    """The demo's requests, in time order, one minute at a time.

    Each minute of [since, now) gets a share of the records by a diurnal curve
    in the reset zone (quiet at 03:00, busiest at 15:00), quieter weekends and
    some burstiness; each request picks a key by weight (night batch work at
    night), then an outcome by the key's error rate, then one of the profile's
    pre-drawn request shapes (model, API type, tokens, latency, status).
    """

    def __init__(self, rng: random.Random, demo_keys: list[_Key], catalog: _Catalog, since: datetime,
                 until: datetime, tz: ZoneInfo, records: int, prefix: str, backfill: _Key | None = None) -> None:
        self.rng, self.keys, self.catalog, self.tz = rng, demo_keys, catalog, tz
        self.records, self.prefix = records, prefix
        self.group_ratios = tuple(catalog.ratios.get(g, 1_000_000) for g in GROUPS)
        self.first = (since + timedelta(minutes=1) - timedelta(microseconds=1)).replace(second=0, microsecond=0)
        self.minutes = max(0, int((until.replace(second=0, microsecond=0) - self.first).total_seconds()) // 60)
        self.ok_pool = min(OK_POOL, max(64, 1 << max(0, records - 1).bit_length()))  # small runs draw fewer
        self.error_pool = min(ERROR_POOL, self.ok_pool // 8)
        self.templates = {name: self._templates(p) for name, p in PROFILES.items()}
        self.day_cum = self._cumulative([k.day_weight for k in demo_keys])
        self.night_cum = self._cumulative([k.night_weight for k in demo_keys])
        self.counts = self._counts()
        self.backfill, self.window, self.backfill_share = backfill, (0, 0), 0.0
        if backfill is not None:
            self._plan_backfill(until)

    @staticmethod
    def _cumulative(weights: list[float]) -> list[float]:
        out, total = [], 0.0
        for w in weights:
            total += w
            out.append(total)
        return [c / total for c in out]

    def _local(self, minute: int) -> datetime:
        return (self.first + timedelta(minutes=minute)).astimezone(self.tz)

    def _counts(self) -> list[int]:
        """How many records fall in each minute (exactly `records` in all)."""
        rng, weights = self.rng, []
        jitter = 1.0
        for minute in range(self.minutes):
            local = self._local(minute)
            if minute % 15 == 0:
                jitter = rng.lognormvariate(0.0, 0.3)
            hour = local.hour + local.minute / 60
            diurnal = 0.12 + 0.88 * ((1 - math.cos(2 * math.pi * (hour - 3) / 24)) / 2) ** 1.5
            weekend = 0.55 if local.weekday() >= 5 else 1.0
            weights.append(diurnal * weekend * jitter)
        total = sum(weights) or 1.0
        counts, acc, placed = [], 0.0, 0
        for w in weights:
            acc += w
            upto = round(self.records * acc / total)
            counts.append(upto - placed)
            placed = upto
        if counts:
            counts[-1] += self.records - placed
        elif self.records:
            raise InvalidInput("the range is shorter than a minute", code="demo_range_too_short")
        return counts

    def _plan_backfill(self, until: datetime) -> None:
        """One big job between 09:00 and 13:00 local on the last whole day of the range."""
        day = local_date(until, self.tz) - timedelta(days=1)
        opens = start_of_local_day(day, self.tz) + timedelta(hours=BACKFILL_HOURS[0])
        first = max(0, int((opens - self.first).total_seconds()) // 60)
        last = min(self.minutes, first + 60 * (BACKFILL_HOURS[1] - BACKFILL_HOURS[0]))
        in_window = sum(self.counts[first:last])
        wanted = min(BACKFILL_RECORDS, self.records // 80)
        if opens >= self.first and in_window and wanted:
            self.window, self.backfill_share = (first, last), min(0.8, wanted / in_window)

    def _templates(self, p: _Profile) -> dict[str, list[tuple[Any, ...]]]:
        """Pre-drawn request shapes: (requested, billed, api, input, cached, output, status, latency, stream,
        error, cost by group)."""
        rng = self.rng
        ok, e4, e5 = [], [], []
        for _ in range(self.ok_pool):
            api = _weighted(rng, p.apis)
            requested = _weighted(rng, p.models[api])
            billed = self.catalog.billed(requested)
            input_tokens = _lognormal(rng, p.input_median, p.input_sigma, 1, 400_000)
            cached = int(input_tokens * rng.uniform(*p.cache_share)) if rng.random() < p.cache_probability else 0
            output = _lognormal(rng, p.output_median, p.output_sigma, 1, 64_000)
            stream = rng.random() < p.stream_probability
            latency = int(rng.lognormvariate(math.log(350), 0.5)
                          + output * MS_PER_TOKEN.get(billed, 6.0) * rng.lognormvariate(0.0, 0.25))
            ok.append(self._shape(requested, billed, api, input_tokens, cached, output, 200, latency, stream, None))
        for pool, codes in ((e4, STATUS_4XX), (e5, STATUS_5XX)):
            for _ in range(self.error_pool):
                api = _weighted(rng, p.apis)
                requested = _weighted(rng, p.models[api])
                billed = self.catalog.billed(requested)
                status = _weighted(rng, codes)
                input_tokens = 0
                if status >= 500 and rng.random() < 0.3:  # the upstream read the prompt, then failed
                    input_tokens = _lognormal(rng, p.input_median, p.input_sigma, 1, 400_000)
                if status == 504:
                    latency = int(60_000 + rng.uniform(0, 1_500))
                elif status >= 500:
                    latency = int(rng.lognormvariate(math.log(1_500), 0.8))
                else:
                    latency = int(rng.lognormvariate(math.log(40), 0.6))
                pool.append(self._shape(requested, billed, api, input_tokens, 0, 0, status, latency, False,
                                        ERRORS[status]))
        return {"ok": ok, "4xx": e4, "5xx": e5}

    def _shape(self, requested: str, billed: str, api: str, input_tokens: int, cached: int, output: int,
               status: int, latency: int, stream: bool, error: str | None) -> tuple[Any, ...]:
        prices = self.catalog.prices[billed]
        costs = tuple(request_cost(prices, input_tokens=input_tokens, cached_tokens=cached, output_tokens=output,
                                   ratio_ppm=ratio) for ratio in self.group_ratios)
        return (requested, billed, api, input_tokens, cached, output, status, latency, stream, error, costs)

    def minutes_iter(self) -> Iterator[tuple[datetime, datetime, list[tuple[int, _Key, tuple[Any, ...]]]]]:
        """(minute start in UTC, local time, [(µs into the minute, key, shape)]) for every minute with requests."""
        rng, keys_, templates = self.rng, self.keys, self.templates
        rand, bits = rng.random, rng.getrandbits
        ok_bits, err_bits = self.ok_pool.bit_length() - 1, self.error_pool.bit_length() - 1
        backfill, (b_first, b_last), b_share = self.backfill, self.window, self.backfill_share
        for minute, count in enumerate(self.counts):
            if not count:
                continue
            start = self.first + timedelta(minutes=minute)
            local = start.astimezone(self.tz)
            cum = self.night_cum if local.hour < 7 else self.day_cum
            offsets = sorted(int(rand() * 60_000_000) for _ in range(count))
            events = []
            in_backfill = b_first <= minute < b_last
            for offset in offsets:
                key = keys_[min(bisect(cum, rand()), len(keys_) - 1)]
                if in_backfill and rand() < b_share:
                    key = backfill  # type: ignore[assignment]
                pools = templates[key.profile]
                r = rand()
                if r >= key.error_rate:
                    shape = pools["ok"][bits(ok_bits)]
                elif r < key.error_rate * SHARE_4XX:
                    shape = pools["4xx"][bits(err_bits)]
                else:
                    shape = pools["5xx"][bits(err_bits)]
                events.append((offset, key, shape))
            yield start, local, events


# ---------------------------------------------------------------- recording: through metering


BATCH = 2_000  # records per import transaction, far from every limit
NEAR = 20_000_000  # µcr: closer than this (plus the request's cost) to a limit, a request holds its cost


def _record_charged(db: Database, traffic: _Traffic, summary: DemoSummary, now: datetime,
                    progress: Progress | None) -> None:
    """Admit each request, then record it (refused: as refused); see the module docstring."""
    catalogs = Catalogs()  # the catalog, read once for the whole run (and again if it changes)
    total = traffic.records
    chunk: list[tuple[int, UsageInput]] = []
    pending: dict[str, int] = {}  # µcr in `chunk` per pool owner (subscription, or account for PAYG)
    number = 0

    def flush(when: datetime = now) -> None:
        if chunk:
            report = import_usage(db, catalogs, chunk, now=when, batch_size=len(chunk))
            summary.records += report.new
            summary.rejected += report.rejected
            if report.rejected and not any(n.startswith("records rejected") for n in summary.notes):
                summary.notes.append(f"records rejected, the first: {report.rejected_lines[0][1]}")
            chunk.clear()
            pending.clear()
            if progress:
                progress(summary.records + summary.rejected, total)

    for start, _local, events in traffic.minutes_iter():
        for offset, key, s in events:
            number += 1
            at = start + timedelta(microseconds=offset)
            cost, owner = s[10][key.group_index], key.subscription_id or key.account_id
            usage = UsageInput(
                request_id=f"{traffic.prefix}{number:08d}", key=key.id, model=s[0], api=s[2], input_tokens=s[3],
                cached_tokens=s[4], output_tokens=s[5], status_code=s[6], latency_ms=s[7], stream=s[8],
                error=s[9], at=at)
            auth = authorize(db, catalogs, key.secret, model=s[0], api=s[2], now=at)
            if auth.allowed and _headroom(auth.remaining) - pending.get(owner, 0) < cost + NEAR:
                flush()  # near a limit: hold the exact cost, and settle it at once
                auth = authorize(db, catalogs, key.secret, model=s[0], api=s[2], reserve=max(cost, 1), now=at)
                if auth.allowed:
                    usage.reservation = auth.reservation_id
                    chunk.append((number, usage))
                    flush(at)  # settled at the request's own time, long before its hold expires
                    continue
            if not auth.allowed:
                summary.refused += 1
                usage = _refused(usage, auth.reason)
            chunk.append((number, usage))
            pending[owner] = pending.get(owner, 0) + cost * auth.allowed
            if len(chunk) >= BATCH:
                flush()
    flush()
    if summary.refused:
        summary.notes.append(f"{summary.refused} requests were refused by admission and recorded as refused "
                             "(status 429, nothing charged)")
    with db.read() as session:
        lo, hi = traffic.prefix, traffic.prefix[:-1] + "."
        summary.consumption = int(session.exec(select(func.coalesce(func.sum(UsageRecord.cost), 0)).where(
            UsageRecord.request_id >= lo, UsageRecord.request_id < hi)).one())


def _headroom(remaining: dict[str, Any]) -> int:
    """The least credit (µcr) left before any credit limit the admission answer names."""
    left = [v for v in (remaining["total"], remaining["payg"]) if v is not None]
    if remaining["period"] is not None and remaining["period_limit_enabled"]:
        left.append(remaining["period"] + remaining["extra"])
    return min(left, default=NEAR * 1_000)


def _refused(u: UsageInput, reason: str | None) -> UsageInput:
    """The record of a request admission refused: it never reached the model, so it costs nothing."""
    from dataclasses import replace

    return replace(u, input_tokens=0, cached_tokens=0, output_tokens=0, status_code=429, latency_ms=1,
                   stream=False, error=f"refused by admission: {reason}")


# ---------------------------------------------------------------- recording: bulk (--fast)


def rollup_sql(mark: str) -> str:
    """Daily rollups of the usage records with id > the parameter, as `metering.rollups` makes them.

    Per (local day, key, group, billed model, API type, status class): request count, sums of tokens, cost
    and charges, latency sum and count (non-null latencies), the latency histogram (bucket i holds
    LATENCY_BUCKETS_MS[i-1] < ms ≤ LATENCY_BUCKETS_MS[i]; the last one everything slower) and the last
    request time. Portable SQL (SQLite and PostgreSQL); `mark` is the driver's placeholder.
    """
    bounds = LATENCY_BUCKETS_MS
    buckets = []
    for i in range(len(bounds) + 1):
        if i == 0:
            cond = f"latency_ms <= {bounds[0]}"
        elif i < len(bounds):
            cond = f"latency_ms > {bounds[i - 1]} AND latency_ms <= {bounds[i]}"
        else:
            cond = f"latency_ms > {bounds[-1]}"
        buckets.append(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)")
    status_class = "CAST(status_code / 100 AS VARCHAR(1)) || 'xx'"
    return (f"INSERT INTO usage_daily ({', '.join(ROLLUP_COLUMNS)}) "
            f"SELECT local_day, key_id, group_name, billed_model, api, {status_class}, MIN(account_id), "
            f"MIN(subscription_id), COUNT(*), " + ", ".join(f"SUM({c})" for c in ROLLUP_SUMMED)
            + ", COALESCE(SUM(latency_ms), 0), COUNT(latency_ms), " + ", ".join(buckets) + ", MAX(at) "
            f"FROM usage_records WHERE id > {mark} "
            f"GROUP BY local_day, key_id, group_name, billed_model, api, {status_class}")


def _record_fast(db: Database, traffic: _Traffic, summary: DemoSummary, progress: Progress | None) -> None:
    """Bulk insert, one local day per transaction with that day's rollups; nothing is charged."""
    is_sqlite = db.dialect == "sqlite"
    mark = "?" if db.engine.dialect.paramstyle == "qmark" else "%s"
    insert_sql = (f"INSERT INTO usage_records ({', '.join(USAGE_BY_HAND)}) "
                  f"VALUES ({', '.join([mark] * len(USAGE_BY_HAND))})")
    rollup = rollup_sql(mark)
    prefix, total = traffic.prefix, traffic.records
    number = consumption = 0
    minutes = traffic.minutes_iter()
    pending = next(minutes, None)
    while pending is not None:
        day = pending[1].date()
        with db.write() as session:
            conn = session.connection()
            if is_sqlite:
                conn.exec_driver_sql("PRAGMA cache_size = -262144")  # 256 MiB for this bulk connection
            before = conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM usage_records").scalar()
            local_day = day.isoformat()
            rows: list[tuple[Any, ...]] = []
            while pending is not None and pending[1].date() == day:
                start, _local, events = pending
                stamp = sqlite_text(start)[:17] if is_sqlite else None  # "YYYY-MM-DD HH:MM:"
                for offset, key, s in events:
                    number += 1
                    cost = s[10][key.group_index]
                    consumption += cost
                    seconds, micros = divmod(offset, 1_000_000)
                    at = f"{stamp}{seconds:02d}.{micros:06d}" if is_sqlite else \
                        start + timedelta(microseconds=offset)
                    rows.append((f"{prefix}{number:08d}", at, local_day, key.account_id, key.id,  # USAGE_BY_HAND
                                 key.subscription_id, key.group, s[0], s[1], s[2], s[3], s[4], s[5], cost, 0, 0, 0,
                                 "none", s[6], s[7], s[8], s[9], None))
                if len(rows) >= FAST_CHUNK:
                    conn.exec_driver_sql(insert_sql, rows)
                    rows = []
                    if progress:
                        progress(number, total)
                pending = next(minutes, None)
            if rows:
                conn.exec_driver_sql(insert_sql, rows)
            conn.exec_driver_sql(rollup, (before,))
        if progress:
            progress(number, total)
    with db.write() as session:
        _touch_keys(session.connection(), traffic.keys + ([traffic.backfill] if traffic.backfill else []), mark)
    summary.records, summary.consumption = number, consumption


def _touch_keys(conn: Any, demo_keys: list[_Key], mark: str) -> None:
    """Keys show when they were last used, as if metering had seen their requests."""
    for key in demo_keys:
        conn.exec_driver_sql(f"UPDATE api_keys SET last_used_at = (SELECT MAX(at) FROM usage_records "
                             f"WHERE key_id = {mark}) WHERE id = {mark}", (key.id, key.id))


def summary_json(s: DemoSummary) -> dict[str, Any]:
    """The summary as `planctl demo --json` prints it (stable keys)."""
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    return {
        "mode": s.mode, "charged": s.charged, "seed": s.seed, "days": s.days,
        "since": iso(s.since), "until": iso(s.until),
        "accounts": s.accounts, "subscriptions": s.subscriptions, "orders": s.orders,
        "extra_packs": s.extra_packs, "keys": s.keys, "records": s.records, "rejected": s.rejected,
        "refused": s.refused,
        "consumption": credit_json(s.consumption), "request_id_prefix": s.request_id_prefix,
        "elapsed_seconds": round(s.elapsed_seconds, 3), "setup_seconds": round(s.setup_seconds, 3),
        "usage_seconds": round(s.usage_seconds, 3),
        "records_per_second": round(s.records / s.usage_seconds) if s.usage_seconds > 0 else None,
        "notes": s.notes,
    }

