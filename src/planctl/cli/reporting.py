"""`planctl usage [filters]`, `planctl health` and `planctl usage prune`.

These read through `services.reporting`, which uses the standard sqlite3
module on SQLite files, so a lookup does not pay for importing the ORM.
"""


from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import State, state
from planctl.cli.output import (
    Column, CsvOpt, JsonlOpt, JsonOpt, YesOpt, emit_json, emit_record, emit_rows, output_format, say,
)

Since = Annotated[Optional[str], typer.Option(help="From (24h, 7d, today, yesterday, a date); reset zone or --tz.")]
Until = Annotated[Optional[str], typer.Option(help="Before (exclusive); same forms as --since.")]
Model = Annotated[Optional[str], typer.Option(help="Requested or billed model.")]
Key = Annotated[Optional[str], typer.Option(help="Key id, name or visible prefix.")]
AccountOpt = Annotated[Optional[str], typer.Option("--account", "--user", help="Account (user) id or name.")]
GroupOpt = Annotated[Optional[str], typer.Option("--group", help="Group.")]
Status = Annotated[Optional[str], typer.Option(help="200 (a code), 2xx, 4xx, 5xx, ok or error.")]
Api = Annotated[Optional[str], typer.Option(help="responses, chat or claude.")]
SubscriptionOpt = Annotated[Optional[str], typer.Option("--subscription", help="Subscription id.")]

LIST_COLUMNS = (
    Column("at", "Time", "time"), Column("request_id", "Request", "id"), Column("key_name", "Key"),
    Column("account_name", "Account", drop=5), Column("key_id", "Key id", "id", drop=9),
    Column("billed_model", "Model"), Column("api", "API", drop=6), Column("status_code", "Status", "int"),
    Column("input_tokens", "In", "int", drop=3), Column("cached_tokens", "Cached", "int", drop=7),
    Column("output_tokens", "Out", "int", drop=2), Column("cost", "Cost", "credit"), Column("pool", drop=4),
    Column("latency_ms", "ms", "int", drop=8),
)
# `usage --request-id`: every field, labelled for people, cost with all six decimals
RECORD_VIEW = (
    Column("request_id", "Request", "id"), Column("at", "Time", "time"), Column("local_day", "Day (reset zone)"),
    Column("account_name", "Account"), Column("account_id", "Account id", "id"), Column("key_name", "Key"),
    Column("key_id", "Key id", "id"), Column("subscription_id", "Subscription", "id"), Column("group_name", "Group"),
    Column("requested_model", "Requested model"), Column("billed_model", "Billed model"), Column("api", "API"),
    Column("input_tokens", "Input tokens", "int"), Column("cached_tokens", "Cached tokens", "int"),
    Column("output_tokens", "Output tokens", "int"), Column("cost", "Cost (credit)", "exact"),
    Column("charged_plan", "Charged to plan", "exact"), Column("charged_extra", "Charged to extra usage", "exact"),
    Column("charged_payg", "Charged to PAYG", "exact"), Column("pool", "Pool"),
    Column("status_code", "HTTP status", "int"), Column("latency_ms", "Latency (ms)", "int"),
    Column("stream", "Streamed", "bool"), Column("ttfb_ms", "Time to first byte (ms)", "int"),
    Column("upstream", "Upstream"), Column("usage_estimated", "Usage estimated", "bool"),
    Column("error", "Error"), Column("reservation_id", "Reservation", "id"),
    Column("client_request_id", "Client request id", "id"), Column("session_id", "Session", "id"),
)
HEALTH_COLUMNS = (
    Column("name"), Column("requests", kind="int"), Column("success_rate", "Success %", "int"),
    Column("consumption", "Consumption", "credit"), Column("cache_hit_rate", "Cache hit %", "int", drop=2),
    Column("avg_latency_ms", "Avg ms", "int", drop=3), Column("p95_latency_ms", "p95 ms", "int"),
    Column("last_request_at", "Last request", "time", drop=1), Column("status"),
)


def _reader(st: State) -> Any:
    from planctl.services import reporting

    return reporting.open_reader(st.target, now=st.now())


def _filter(st: State, reader: Any, since: Optional[str], until: Optional[str], **rest: Any) -> Any:
    """The same filter, with the same half-open [since, until), for every report."""
    from planctl.domain.clock import parse_instant, zone
    from planctl.domain.errors import InvalidInput
    from planctl.services import reporting

    tz = zone(st.tz_name) if st.tz_name else reporting.reset_zone(reader)

    def when(text: Optional[str], option: str) -> Any:
        if text is None:
            return None
        try:
            return parse_instant(text, now=st.now(), tz=tz, direction=-1)
        except InvalidInput as exc:
            raise InvalidInput(f"{option}: {exc.message}") from None

    return reporting.UsageFilter(since=when(since, "--since"), until=when(until, "--until"), now=st.now(), **rest)


def record_json(r: dict[str, Any]) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    out = dict(r)
    out["at"] = iso(r["at"])
    for name in ("cost", "charged_plan", "charged_extra", "charged_payg"):
        out[name] = credit_json(r[name])
    return out


def usage(
    ctx: typer.Context,
    since: Since = None, until: Until = None, model: Model = None, key: Key = None, account: AccountOpt = None,
    group: GroupOpt = None, request_id: Annotated[Optional[str], typer.Option(help="One request, in full.")] = None,
    status: Status = None, api: Api = None, subscription: SubscriptionOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows (0 < N).")] = 50,
    after: Annotated[Optional[str], typer.Option(help="Next page: the request id of the last row shown.")] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="No limit (for exports).")] = False,
    sum_: Annotated[bool, typer.Option("--sum", help="Totals for the filter instead of rows.")] = False,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """Query the usage log, newest first; or --sum for totals.

    Examples: planctl usage --request-id req_123 --json;
    planctl usage --since today --status 5xx; planctl usage --since 30d --all --csv > usage.csv
    """
    if ctx.invoked_subcommand is not None:
        return
    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    from planctl.services import reporting

    reader = _reader(st)
    try:
        if request_id is not None and not sum_:
            record = record_json(reporting.get_record(reader, request_id))
            shown = {c.key for c in RECORD_VIEW}
            emit_record(st, record, RECORD_VIEW + tuple(Column(k) for k in record if k not in shown), fmt)
            return
        flt = _filter(st, reader, since, until, model=model, key=key, account=account, group=group,
                      request_id=request_id, status=status, api=api, subscription=subscription)
        if sum_:
            _emit_sum(st, reader, flt, fmt)
            return
        rows = reporting.list_records(reader, flt, limit=None if all_rows else limit, after=after)
        emit_rows(st, (record_json(r) for r in rows), LIST_COLUMNS, fmt)
    finally:
        reader.close()


def _emit_sum(st: State, reader: Any, flt: Any, fmt: str) -> None:
    from planctl.domain.money import credit_json
    from planctl.services import reporting

    total = reporting.aggregate(reader, flt).get(None) or reporting.Aggregate()
    data = {"requests": total.requests, "ok": total.ok, "input_tokens": total.input_tokens,
            "cached_tokens": total.cached_tokens, "output_tokens": total.output_tokens,
            "consumption": credit_json(total.cost),
            "by_pool": {"plan": credit_json(total.charged_plan), "extra": credit_json(total.charged_extra),
                        "payg": credit_json(total.charged_payg)}}
    if fmt == "json":
        emit_json(st, data)
        return
    flat = {**data, **{f"pool_{k}": v for k, v in data["by_pool"].items()}}
    emit_record(st, flat, (Column("requests", kind="int"), Column("ok", "Succeeded", "int"),
                           Column("input_tokens", "Input tokens", "int"), Column("cached_tokens", "Cached", "int"),
                           Column("output_tokens", "Output tokens", "int"), Column("consumption", kind="credit"),
                           Column("pool_plan", "Plan credit", "credit"), Column("pool_extra", "Extra usage", "credit"),
                           Column("pool_payg", "PAYG", "credit")), fmt)


def health_row(name: Optional[str], label: str, agg: Any, thresholds: tuple[float, int]) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    min_success, max_p95 = thresholds
    status = "ok"
    if agg.success_rate is not None and agg.success_rate * 100 < min_success:
        status = "failing"
    elif agg.p95_ms is not None and agg.p95_ms > max_p95:
        status = "slow"
    return {
        "id": name, "name": label, "requests": agg.requests,
        "success_rate": None if agg.success_rate is None else round(agg.success_rate * 100, 2),
        "consumption": credit_json(agg.cost),
        "cache_hit_rate": None if agg.cache_hit_rate is None else round(agg.cache_hit_rate * 100, 2),
        "avg_latency_ms": None if agg.avg_latency_ms is None else round(agg.avg_latency_ms, 1),
        "p95_latency_ms": agg.p95_ms, "p95_exact": agg.p95_exact,
        "last_request_at": agg.last_at and iso(agg.last_at), "status": status,
    }


def health(
    ctx: typer.Context,
    by: Annotated[str, typer.Option(help="group, user, key or model.")] = "group",
    since: Since = None, until: Until = None, model: Model = None, key: Key = None, account: AccountOpt = None,
    group: GroupOpt = None, status: Status = None, api: Api = None, subscription: SubscriptionOpt = None,
    sort: Annotated[str, typer.Option(help="Column to sort by (descending), e.g. requests, p95_latency_ms.")] = "requests",
    json_: JsonOpt = False, csv_: CsvOpt = False,
) -> None:
    """Group health: requests, success rate, consumption, cache hits, latency and last request.

    Rows past the thresholds (config health_min_success_rate, health_max_p95_latency_ms)
    are marked. p95 is exact over raw records; when whole days come from the daily
    rollups it is the upper bound of the latency bucket holding it (p95_exact: false).
    Example: planctl health --by key --since 30d --sort p95_latency_ms
    """
    from planctl.domain.errors import InvalidInput
    from planctl.services import reporting

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, csv_=csv_)
    if by not in reporting.DIMENSIONS:
        raise InvalidInput(f"unknown --by {by!r}: use {', '.join(reporting.DIMENSIONS)}")
    sortable = {c.key for c in HEALTH_COLUMNS} - {"status"}
    if sort not in sortable:
        raise InvalidInput(f"unknown --sort {sort!r}: use one of {', '.join(sorted(sortable))}")
    reader = _reader(st)
    try:
        flt = _filter(st, reader, since, until, model=model, key=key, account=account, group=group,
                      status=status, api=api, subscription=subscription)
        groups = reporting.aggregate(reader, flt, by=by)
        totals = reporting.total(reader, flt, groups)
        labels = reporting.names(reader, by, [k for k in groups if k])
        settings = dict(reader.rows("SELECT key, value FROM settings"))
    finally:
        reader.close()
    thresholds = (float(settings.get("health_min_success_rate", "95")),
                  int(settings.get("health_max_p95_latency_ms", "10000")))
    rows = [health_row(k, labels.get(k or "", k or "-"), agg, thresholds) for k, agg in groups.items()]
    from decimal import Decimal

    def order(r: dict[str, Any]) -> tuple[bool, Any]:
        value = r[sort]
        if value is None:
            return (False, 0)
        return (True, Decimal(value) if sort == "consumption" else value)

    rows.sort(key=order, reverse=True)
    total_row = health_row(None, "TOTAL", totals, thresholds)
    if fmt == "json":
        emit_json(st, {"by": by, "rows": rows, "totals": total_row})
        return
    if fmt == "csv":
        emit_rows(st, rows + [total_row], (Column("id"),) + HEALTH_COLUMNS + (Column("p95_exact"),), fmt)
        return
    _health_table(st, rows, total_row, by)


def _health_table(st: State, rows: list[dict[str, Any]], total: dict[str, Any], by: str) -> None:
    if not rows:
        say(st, "(no requests match)")
        return
    from rich.table import Table

    from planctl.cli.output import _console, display

    table = Table(title=f"Health by {by}", header_style="bold")
    for c in HEALTH_COLUMNS:
        table.add_column(c.title, justify="right" if c.numeric else "left")
    zone = st.display_zone
    for row in rows + [total]:
        style = {"failing": "red", "slow": "yellow"}.get(row["status"]) if row is not total else "bold"
        cells = [display(row[c.key], c.kind, zone) for c in HEALTH_COLUMNS]
        cells[6] = p95_cell(row["p95_latency_ms"], row["p95_exact"], cells[6])
        table.add_row(*cells, style=style)
    _console(st).print(table)


def p95_cell(ms: int | None, exact: bool, shown: str) -> str:
    """A p95 read from the rollups' histogram is a bucket's upper bound (≤2000); in the last,
    open bucket it is only known to be above the last bound (>120000; JSON gives that + 1)."""
    from planctl.domain.latency import LATENCY_BUCKETS_MS

    if exact or ms is None:
        return shown
    if ms > LATENCY_BUCKETS_MS[-1]:
        return f">{LATENCY_BUCKETS_MS[-1]}"
    return f"≤{shown}"


def prune(
    ctx: typer.Context,
    before: Annotated[str, typer.Option(help="Remove raw records older than this (90d, a date).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    yes: YesOpt = False, json_: JsonOpt = False,
) -> None:
    """Remove raw usage records and closed reservations before a time; rollups keep the totals.

    Example: planctl usage prune --before 180d --yes
    """
    from planctl.domain.clock import parse_instant
    from planctl.domain.errors import InvalidInput
    from planctl.services import pruning

    from planctl.domain.clock import zone
    from planctl.services import settings

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    with st.db().read() as session:
        tz = zone(st.tz_name) if st.tz_name else settings.reset_zone(session)
    try:
        cutoff = parse_instant(before, now=st.now(), tz=tz, direction=-1)
    except InvalidInput as exc:
        raise InvalidInput(f"--before: {exc.message}") from None
    summary = pruning.summarize(st.db(), cutoff)
    data = {"before": summary.before_iso, "records": summary.records, "oldest": summary.oldest_iso,
            "newest": summary.newest_iso, "reservations": summary.reservations, "removed": 0,
            "reservations_removed": 0, "dry_run": dry_run}
    if (summary.records or summary.reservations) and not dry_run:
        say(st, f"{summary.records} usage records from {summary.oldest_iso} to {summary.newest_iso} and "
                f"{summary.reservations} closed reservations will be removed (rollups keep their totals)")
        st.confirm("Remove them?", yes=yes)
        data["removed"], data["reservations_removed"] = pruning.prune(st.db(), cutoff, caller=st.caller(),
                                                                      now=st.now())
    if fmt == "json":
        emit_json(st, data)
    else:
        records, holds = ((data["records"], data["reservations"]) if dry_run
                          else (data["removed"], data["reservations_removed"]))
        say(st, f"{'would remove' if dry_run else 'removed'} {records} usage records and {holds} closed "
                f"reservations before {data['before']}")
