"""Usage queries and group health, fast on millions of records.

Reports are read-only SQL that runs unchanged on SQLite and PostgreSQL, through
the store's reader (store/reader.py), which does not import the ORM for a
SQLite file. Aggregations run in SQL. A time range [since, until) is split into
whole natural days of the reset zone, read from the daily rollups, and the
partial days at either end, read from raw records; both give the same sums.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from planctl.domain.clock import local_date, start_of_local_day, zone
from planctl.domain.errors import InvalidInput, NotFound
from planctl.domain.latency import LATENCY_BUCKETS_MS, histogram_p95
from planctl.store import refs
from planctl.store.columns import LATENCY_COLUMNS, USAGE_COLUMNS
from planctl.store.location import SCHEMA_VERSION, DbTarget
from planctl.store.reader import Reader
from planctl.store.sql import schema_version

STATUS_FILTERS = ("ok", "error", "1xx", "2xx", "3xx", "4xx", "5xx")
DIMENSIONS = {"group": "group_name", "user": "account_id", "key": "key_id", "model": "billed_model"}


# ---------------------------------------------------------------- reading


def open_reader(target: DbTarget, *, now: datetime) -> Reader:
    """A reader on an up-to-date database (created, migrated or refused through the store first)."""
    if target.path is not None and schema_version(target.path) == SCHEMA_VERSION:
        return Reader(target)
    from planctl.services.database import open_database

    open_database(target, now=now).dispose()  # creates, migrates, or refuses a newer database
    return Reader(target)


def reset_zone(reader: Reader) -> ZoneInfo:
    row = reader.one("SELECT value FROM settings WHERE key = 'reset_timezone'")
    return zone(row[0] if row else "Asia/Shanghai")


# ---------------------------------------------------------------- filters


@dataclass
class UsageFilter:
    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    key: str | None = None
    account: str | None = None
    group: str | None = None
    request_id: str | None = None
    status: str | None = None
    api: str | None = None
    subscription: str | None = None
    now: datetime | None = None  # when the question is asked: a range from today on with no end is read raw


@dataclass
class _Resolved:
    """A filter with references resolved to ids, ready to become WHERE clauses."""

    since: datetime | None
    until: datetime | None
    key_id: str | None = None
    account_id: str | None = None
    group: str | None = None
    billed: str | None = None
    requested: str | None = None
    status: str | None = None
    api: str | None = None
    subscription: str | None = None
    request_id: str | None = None

    @property
    def rollup_ok(self) -> bool:
        """Rollups serve every filter except an exact status code, a requested alias, a request id."""
        return self.requested is None and self.request_id is None and (
            self.status is None or not self.status.isdigit())


def resolve(reader: Reader, f: UsageFilter) -> _Resolved:
    if f.since and f.until and f.until <= f.since:
        raise InvalidInput("the end of the range must be after its start", code="until_before_since")
    if f.status is not None and f.status not in STATUS_FILTERS and not (
            f.status.isdigit() and 100 <= int(f.status) <= 599):
        raise InvalidInput(f"invalid status {f.status!r}: use a code such as 200, or {', '.join(STATUS_FILTERS)}",
                           code="invalid_status", status=f.status, choices=", ".join(STATUS_FILTERS))
    r = _Resolved(since=f.since, until=f.until, group=f.group, status=f.status, api=f.api,
                  request_id=f.request_id)
    if f.group:
        try:
            r.group = refs.resolve(reader, "group", f.group)
        except NotFound:  # a deleted group with usage is still a filter
            if not reader.one("SELECT 1 FROM usage_daily WHERE group_name = :g LIMIT 1", {"g": f.group}):
                raise
    if f.subscription:
        r.subscription = refs.resolve(reader, "subscription", f.subscription)
    if f.key:
        r.key_id = refs.resolve(reader, "key", f.key)
    if f.account:
        r.account_id = refs.resolve(reader, "account", f.account)
    if f.model:
        if reader.one("SELECT 1 FROM models WHERE id = :m", {"m": f.model}) or reader.one(
                "SELECT 1 FROM usage_daily WHERE billed_model = :m LIMIT 1", {"m": f.model}):
            r.billed = f.model  # a catalog model (or one that was) bills as itself
        elif _alias_bills(reader, f.model):
            r.requested = f.model  # a name an alias bills: only raw records know it
        else:
            raise NotFound(f"unknown model {f.model!r}: neither a model, an alias nor a model with usage",
                           code="unknown_model")
    return r


def _alias_bills(reader: Reader, model: str) -> bool:
    from planctl.domain.catalog import resolve_model  # here: 12 ms to import, and only this filter needs it

    return resolve_model(model, (), dict(reader.rows("SELECT pattern, model_id FROM model_aliases"))).billed is not None


def _where(r: _Resolved, alias: str, *, rollup: bool) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (("key_id", r.key_id), ("account_id", r.account_id), ("group_name", r.group),
                          ("billed_model", r.billed), ("api", r.api), ("subscription_id", r.subscription)):
        if value is not None:
            clauses.append(f"{alias}.{column} = :{column}")
            params[column] = value
    if not rollup:
        if r.requested is not None:
            clauses.append(f"{alias}.requested_model = :requested")
            params["requested"] = r.requested
        if r.request_id is not None:
            clauses.append(f"{alias}.request_id = :request_id")
            params["request_id"] = r.request_id
    if r.status is not None:
        clauses.append(_status_clause(r.status, alias, rollup=rollup))
    return clauses, params


def _status_clause(status: str, alias: str, *, rollup: bool) -> str:
    classes = {"ok": ("1xx", "2xx", "3xx"), "error": ("4xx", "5xx")}.get(status, (status,))
    if rollup:
        return f"{alias}.status_class IN ({', '.join(repr(c) for c in classes)})"
    if status.isdigit():
        return f"{alias}.status_code = {int(status)}"
    return "(" + " OR ".join(f"{alias}.status_code BETWEEN {int(c[0])}00 AND {int(c[0])}99" for c in classes) + ")"


def _time(r: _Resolved, alias: str, since: datetime | None, until: datetime | None,
          clauses: list[str], params: dict[str, Any]) -> None:
    if since is not None:
        clauses.append(f"{alias}.at >= :since")
        params["since"] = since
    if until is not None or since is not None:
        # Always bound both ends: given only a lower bound, SQLite prefers scanning a whole
        # (key|group, at) index to avoid a sort, which takes seconds at 10 M rows.
        clauses.append(f"{alias}.at < :until")
        params["until"] = until or FAR_FUTURE


FAR_FUTURE = datetime(9999, 12, 31, tzinfo=timezone.utc)


@dataclass
class _Plan:
    """How a range is read: raw [since, until) parts and rollup days [first, last) (last None: no end)."""

    raw: list[tuple[datetime | None, datetime | None]]
    days: tuple[date, date | None] | None


def split_range(since: datetime | None, until: datetime | None, tz: ZoneInfo, *, rollups: bool,
                now: datetime | None = None) -> _Plan:
    """Whole natural days go to rollups; the partial days at the ends stay raw.

    Without `until` the range runs to the newest record, and rollups (kept at
    record time) hold today's records too, so no raw tail is needed; but a
    range with no end that starts today (`--since 1h`) has no whole day behind
    it, so it is read raw, like the same range with `--until now`.
    """
    if not rollups or since is None:
        return _Plan([(since, until)], None)
    if until is None and now is not None and local_date(since, tz) >= local_date(now, tz):
        return _Plan([(since, None)], None)
    first = local_date(since, tz)
    if start_of_local_day(first, tz) < since:
        first += timedelta(days=1)
    head_end = start_of_local_day(first, tz)
    head = [(since, head_end)] if since < head_end else []
    if until is None:
        return _Plan(head, (first, None))
    last = local_date(until, tz)  # the day containing `until` is partial (or starts exactly at it)
    if first >= last:
        return _Plan([(since, until)], None)
    tail_start = start_of_local_day(last, tz)
    return _Plan(head + ([(tail_start, until)] if tail_start < until else []), (first, last))


# ---------------------------------------------------------------- listing


# a record with the names people recognise beside its ids (a deleted key or account keeps its id)
_SELECT = ", ".join(f"u.{c}" for c in USAGE_COLUMNS) + ", k.name, a.name"
_FROM = "usage_records u LEFT JOIN api_keys k ON k.id = u.key_id LEFT JOIN accounts a ON a.id = u.account_id"


def get_record(reader: Reader, request_id: str) -> dict[str, Any]:
    row = reader.one(f"SELECT {_SELECT} FROM {_FROM} WHERE u.request_id = :r", {"r": request_id})
    if row is None:
        raise NotFound(f"no usage record with request id {request_id!r}")
    return _record(reader, row)


def _record(reader: Reader, row: Sequence[Any]) -> dict[str, Any]:
    record = dict(zip((*USAGE_COLUMNS, "key_name", "account_name"), row))
    record["at"] = reader.instant(record["at"])
    record["stream"] = bool(record["stream"])
    record["usage_estimated"] = bool(record["usage_estimated"])
    return record


def list_records(reader: Reader, f: UsageFilter, *, limit: int | None, after: str | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Newest first. `after` is the request id of the last row of the previous page."""
    r = resolve(reader, f)
    clauses, params = _where(r, "u", rollup=False)
    _time(r, "u", r.since, r.until, clauses, params)
    if after is not None:
        anchor = reader.one("SELECT at, id FROM usage_records WHERE request_id = :a", {"a": after})
        if anchor is None:
            raise NotFound(f"no usage record with request id {after!r}", code="unknown_after")
        clauses.append("(u.at < :after_at OR (u.at = :after_at AND u.id < :after_id))")
        params.update(after_at=reader.instant(anchor[0]), after_id=anchor[1])
    sql = (f"SELECT {_SELECT} FROM {_FROM}"
           + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY u.at DESC, u.id DESC")
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    for row in reader.rows(sql, params):
        yield _record(reader, row)


# ---------------------------------------------------------------- aggregates


@dataclass
class Aggregate:
    requests: int = 0
    ok: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost: int = 0
    charged_plan: int = 0
    charged_extra: int = 0
    charged_payg: int = 0
    latency_sum: int = 0
    latency_count: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    last_at: datetime | None = None
    p95_ms: int | None = None
    p95_exact: bool = True

    def add(self, other: Aggregate) -> None:
        for name in ("requests", "ok", "input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan",
                     "charged_extra", "charged_payg", "latency_sum", "latency_count"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets)]
        if other.last_at and (self.last_at is None or other.last_at > self.last_at):
            self.last_at = other.last_at

    @property
    def success_rate(self) -> float | None:  # a display ratio, not money
        return None if not self.requests else self.ok / self.requests

    @property
    def cache_hit_rate(self) -> float | None:
        return None if not self.input_tokens else self.cached_tokens / self.input_tokens

    @property
    def avg_latency_ms(self) -> float | None:
        return None if not self.latency_count else self.latency_sum / self.latency_count

    def histogram_p95(self) -> int | None:
        return histogram_p95(self.buckets)


_BUCKET_SQL = ", ".join(
    f"SUM(CASE WHEN u.latency_ms {'<=' if i < len(LATENCY_BUCKETS_MS) else '>'} "
    f"{LATENCY_BUCKETS_MS[min(i, len(LATENCY_BUCKETS_MS) - 1)]}"
    + (f" AND u.latency_ms > {LATENCY_BUCKETS_MS[i - 1]}" if 0 < i < len(LATENCY_BUCKETS_MS) else "")
    + " THEN 1 ELSE 0 END)" for i in range(len(LATENCY_BUCKETS_MS) + 1))
_RAW_SUMS = ("COUNT(*), SUM(CASE WHEN u.status_code < 400 THEN 1 ELSE 0 END), SUM(u.input_tokens), "
             "SUM(u.cached_tokens), SUM(u.output_tokens), SUM(u.cost), SUM(u.charged_plan), SUM(u.charged_extra), "
             "SUM(u.charged_payg), SUM(u.latency_ms), COUNT(u.latency_ms), MAX(u.at), " + _BUCKET_SQL)
_ROLLUP_SUMS = ("SUM(d.requests), SUM(CASE WHEN d.status_class IN ('1xx', '2xx', '3xx') THEN d.requests ELSE 0 END), "
                "SUM(d.input_tokens), SUM(d.cached_tokens), SUM(d.output_tokens), SUM(d.cost), SUM(d.charged_plan), "
                "SUM(d.charged_extra), SUM(d.charged_payg), SUM(d.latency_sum), SUM(d.latency_count), "
                "MAX(d.last_at), " + ", ".join(f"SUM(d.{c})" for c in LATENCY_COLUMNS))


def _aggregate(reader: Reader, row: Sequence[Any]) -> Aggregate:
    n = 12
    values = [int(v or 0) for v in row[:11]]
    return Aggregate(*values, buckets=[int(v or 0) for v in row[n:]],  # type: ignore[arg-type]
                     last_at=reader.instant(row[11]))


def aggregate(reader: Reader, f: UsageFilter, *, by: str | None = None, tz: ZoneInfo | None = None,
              exact_p95: bool = True) -> dict[str | None, Aggregate]:
    """Sums per dimension value (or one total when `by` is None), rollups and raw combined."""
    r = resolve(reader, f)
    tz = tz or reset_zone(reader)
    dim = DIMENSIONS[by] if by else None
    plan = split_range(r.since, r.until, tz, rollups=r.rollup_ok, now=f.now)
    out: dict[str | None, Aggregate] = {}

    def merge(rows: Iterator[tuple[Any, ...]]) -> None:
        for row in rows:
            value = row[0] if dim else None
            agg = _aggregate(reader, row[1:] if dim else row)
            if agg.requests:
                out.setdefault(value, Aggregate()).add(agg)

    select_dim = f"u.{dim}, " if dim else ""
    for since, until in plan.raw:
        clauses, params = _where(r, "u", rollup=False)
        _time(r, "u", since, until, clauses, params)
        sql = (f"SELECT {select_dim}{_RAW_SUMS} FROM usage_records u"
               + (" WHERE " + " AND ".join(clauses) if clauses else "") + (f" GROUP BY u.{dim}" if dim else ""))
        merge(reader.rows(sql, params))
    if plan.days is not None:
        clauses, params = _where(r, "d", rollup=True)
        clauses.append("d.local_day >= :day0")
        params["day0"] = plan.days[0].isoformat()
        if plan.days[1] is not None:
            clauses.append("d.local_day < :day1")
            params["day1"] = plan.days[1].isoformat()
        sql = (f"SELECT {'d.' + dim + ', ' if dim else ''}{_ROLLUP_SUMS} FROM usage_daily d WHERE "
               + " AND ".join(clauses) + (f" GROUP BY d.{dim}" if dim else ""))
        merge(reader.rows(sql, params))
    _p95(reader, r, plan, dim, out, exact=exact_p95 and plan.days is None)
    return out


def _p95(reader: Reader, r: _Resolved, plan: _Plan, dim: str | None, out: dict[str | None, Aggregate],
         *, exact: bool) -> None:
    """Exact nearest-rank p95 from raw rows when the range was read raw; else from the histogram."""
    if not exact:
        for agg in out.values():
            agg.p95_ms, agg.p95_exact = agg.histogram_p95(), False
        return
    if not plan.raw:
        return
    clauses, params = _where(r, "u", rollup=False)
    _time(r, "u", plan.raw[0][0], plan.raw[0][1], clauses, params)
    clauses.append("u.latency_ms IS NOT NULL")
    part = f"PARTITION BY u.{dim} " if dim else ""
    sql = (f"SELECT v, latency_ms FROM (SELECT {'u.' + dim if dim else 'NULL'} AS v, u.latency_ms, "
           f"ROW_NUMBER() OVER ({part}ORDER BY u.latency_ms) AS rn, COUNT(*) OVER ({part.strip()}) AS n "
           f"FROM usage_records u WHERE {' AND '.join(clauses)}) ranked WHERE rn = (95 * n + 99) / 100")
    for value, latency in reader.rows(sql, params):
        if value in out:
            out[value].p95_ms, out[value].p95_exact = int(latency), True


def total(reader: Reader, f: UsageFilter, groups: dict[str | None, Aggregate]) -> Aggregate:
    """The totals row: the sum of the groups (p95 from their merged histogram, or exact when read raw)."""
    out = Aggregate()
    if not groups:
        return out
    for agg in groups.values():
        out.add(agg)
    if all(a.p95_exact for a in groups.values()):
        return aggregate(reader, f).get(None, out)  # raw range: one more query gives the exact p95
    out.p95_ms, out.p95_exact = out.histogram_p95(), False
    return out


def names(reader: Reader, by: str, ids: Sequence[str]) -> dict[str, str]:
    """Display names for keys and accounts."""
    table = {"key": "api_keys", "user": "accounts"}.get(by)
    if table is None or not ids:
        return {}
    found: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        chunk = list(ids[i:i + 500])
        marks = ", ".join(f":i{j}" for j in range(len(chunk)))
        found.update(dict(reader.rows(f"SELECT id, name FROM {table} WHERE id IN ({marks})",
                                      {f"i{j}": v for j, v in enumerate(chunk)})))
    return found
