"""Metering commands: authorize, usage record/import, limits, reservations; all of them clients
of the `Meter` (planctl/metering/), the gateway's entry point too."""


import csv
import gc
import io
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import MISSING
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import State, state
from planctl.cli.output import Column, CsvOpt, JsonlOpt, JsonOpt, emit_json, emit_record, emit_rows, output_format, say
from planctl.domain.errors import ExitCode
from planctl.domain.usage import overdrawn, short

usage_app = typer.Typer(help="Usage logs: query (planctl usage [filters]), record, import, prune.",
                        invoke_without_command=True, no_args_is_help=False,
                        epilog="Example: planctl usage --since today --status 5xx --json")
limits_app = typer.Typer(help="Why a key can't continue: quotas side by side; the periodic-limit switch.",
                         no_args_is_help=True, epilog="Example: planctl limits show sub_k3x9q2mz")
reservations_app = typer.Typer(help="Credit held for requests in flight (two-phase admission).",
                               no_args_is_help=True, epilog="Example: planctl reservations list")

KeyFile = Annotated[Optional[str], typer.Option("--key-file", help="Read the key secret from this file (- = stdin).")]
KeyEnv = Annotated[str, typer.Option("--key-env", help="Read the key secret from this environment variable.")]


def read_secret(key_file: Optional[str], key_env: str) -> str:
    """Secrets never come from a plain flag (they would show in `ps` and shell history)."""
    from planctl.domain.errors import InvalidInput

    if key_file is not None:
        try:
            text = sys.stdin.read() if key_file == "-" else Path(key_file).read_text("utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot read key file {key_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InvalidInput(f"key file {key_file} is not UTF-8 text") from None
        secret = text.strip()
        where = f"key file {key_file}"
    else:
        secret = os.environ.get(key_env, "").strip()
        where = f"environment variable {key_env}"
    if not secret:
        raise InvalidInput(f"no key secret in {where}; use --key-file F or set {key_env}")
    return secret


def _credit(v: Optional[int]) -> Optional[str]:
    from planctl.domain.money import credit_json

    return None if v is None else credit_json(v)


def authorization_json(a: Any) -> dict[str, Any]:
    from planctl.domain.clock import iso

    r = a.remaining
    return {
        "allowed": a.allowed, "reason": a.reason, "message": a.message, "requested_model": a.requested_model,
        "billed_model": a.billed_model, "key_id": a.key_id, "account_id": a.account_id,
        "subscription_id": a.subscription_id, "pool": a.pool, "lifted": a.lifted,
        "remaining": {
            "total": _credit(r.get("total")), "period": _credit(r.get("period")),
            "period_limit_enabled": r.get("period_limit_enabled"), "rpd": r.get("rpd"), "tpd": r.get("tpd"),
            "extra": _credit(r.get("extra")), "payg": _credit(r.get("payg")),
        },
        "next_reset": a.next_reset and iso(a.next_reset),
        "reservation_id": a.reservation_id,
        "reservation_expires_at": a.reservation_expires_at and iso(a.reservation_expires_at),
    }


def authorize(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="The model the client asked for (aliases apply).")],
    api: Annotated[str, typer.Option(help="responses, chat or claude.")] = "responses",
    reserve: Annotated[Optional[str], typer.Option(help="Hold this much credit until the request is recorded.")] = None,
    key_file: KeyFile = None, key_env: KeyEnv = "PLANCTL_API_KEY", json_: JsonOpt = False,
) -> None:
    """May this key run a request now? Exit 0 when allowed, 5 when denied (with the reason code).

    The secret comes from --key-file (or stdin with -) or an environment variable, never a flag.
    Example: PLANCTL_API_KEY=sk-… planctl authorize --model claude-sonnet-4-5 --api claude --reserve 0.5
    """
    from planctl.cli.sales import _credit as parse_credit

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    secret = read_secret(key_file, key_env)
    auth = st.meter().authorize(secret, model, api, parse_credit(reserve, "--reserve"))
    data = authorization_json(auth)
    if fmt == "json":
        emit_json(st, data)
    else:
        rem = data["remaining"]
        emit_record(st, {**data, **{f"remaining_{k}": v for k, v in rem.items()}}, (
            Column("allowed", kind="bool"), Column("reason"), Column("message"), Column("billed_model", "Bills as"),
            Column("pool", "Charged to"), Column("remaining_total", "Total left", "credit"),
            Column("remaining_period", "Period left", "credit"), Column("remaining_rpd", "Requests left today"),
            Column("remaining_tpd", "Tokens left today"), Column("remaining_extra", "Extra usage", "credit"),
            Column("remaining_payg", "PAYG balance", "credit"), Column("next_reset", "Next reset", "time"),
            Column("reservation_id", "Reservation"), Column("reservation_expires_at", "Held until", "time")), fmt)
    if not auth.allowed:
        raise typer.Exit(ExitCode.DENIED)


RECORD_COLUMNS = (Column("request_id", "Request"), Column("duplicate", kind="bool"), Column("billed_model", "Bills as"),
                  Column("cost", kind="credit"), Column("pool", "Charged to"), Column("note"))


def record_json(result: Any) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    r = result.record
    out: dict[str, Any] = {"request_id": result.request_id, "duplicate": result.duplicate, "note": result.note}
    if r is not None:
        out.update({"at": iso(r.at), "key_id": r.key_id, "account_id": r.account_id,
                    "subscription_id": r.subscription_id, "billed_model": r.billed_model,
                    "cost": credit_json(r.cost), "pool": r.pool,
                    "charged": {"plan": credit_json(r.charged_plan), "extra": credit_json(r.charged_extra),
                                "payg": credit_json(r.charged_payg)}})
    return out


@usage_app.command("record")
def usage_record(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Option(help="Unique id of the request (recording is idempotent by it).")],
    model: Annotated[str, typer.Option(help="Model the client asked for.")],
    input_tokens: Annotated[int, typer.Option("--input", min=0, help="Input tokens, cached ones included.")],
    output_tokens: Annotated[int, typer.Option("--output", min=0, help="Output tokens.")],
    status: Annotated[int, typer.Option(help="HTTP status code of the upstream answer.")],
    key: Annotated[Optional[str], typer.Option(help="Key id, name or visible prefix.")] = None,
    key_file: KeyFile = None,
    cached: Annotated[int, typer.Option(min=0, help="Cached input tokens.")] = 0,
    latency_ms: Annotated[Optional[int], typer.Option(min=0, help="Latency in milliseconds.")] = None,
    api: Annotated[str, typer.Option(help="responses, chat or claude.")] = "responses",
    stream: Annotated[bool, typer.Option("--stream", help="The response was streamed.")] = False,
    time: Annotated[Optional[str], typer.Option("--time", help="When the request ran (default now).")] = None,
    reservation: Annotated[Optional[str], typer.Option(help="Settle this reservation.")] = None,
    error: Annotated[Optional[str], typer.Option(help="Error text of a failed request.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Record one request and charge it; the same request id twice changes nothing (duplicate: true),
    unless its content differs (exit 6, naming the fields). Bounds: README "Recording".

    Example: planctl usage record --request-id req_1 --key ci-runner-k3x9 --model gpt-5.4
    --input 1200 --cached 800 --output 300 --status 200 --latency-ms 950
    """
    from planctl.cli.sales import _when
    from planctl.domain.errors import InvalidInput
    from planctl.metering.recording import UsageInput

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    if (key is None) == (key_file is None):
        raise InvalidInput("give --key (id, name or prefix) or --key-file, one of them")
    u = UsageInput(
        request_id=request_id, key=key, secret=read_secret(key_file, "") if key_file else None, model=model,
        input_tokens=input_tokens, cached_tokens=cached, output_tokens=output_tokens, status_code=status,
        latency_ms=latency_ms, api=api, stream=stream, at=_when(st, time, "--time"), reservation=reservation,
        error=error)
    result = st.meter().record(u)
    emit_record(st, record_json(result), RECORD_COLUMNS, fmt)
    if result.duplicate:
        say(st, f"note: {result.note}")


FIELDS = {  # accepted names in import files -> UsageInput fields
    "request_id": "request_id", "key": "key", "key_id": "key", "model": "model",
    "input": "input_tokens", "input_tokens": "input_tokens", "cached": "cached_tokens",
    "cached_tokens": "cached_tokens", "output": "output_tokens", "output_tokens": "output_tokens",
    "status": "status_code", "status_code": "status_code", "latency_ms": "latency_ms", "api": "api",
    "stream": "stream", "time": "at", "at": "at", "reservation": "reservation", "error": "error",
}
_REQUIRED = ("request_id", "key", "model", "input_tokens", "output_tokens", "status_code")
_REQUIRED_SET = frozenset(_REQUIRED)
_TYPES = {target: str for target in FIELDS.values()} | {  # what each field holds once parsed
    "input_tokens": int, "cached_tokens": int, "output_tokens": int, "status_code": int, "latency_ms": int,
    "stream": bool, "at": datetime,
}


class RowParser:
    """Import rows -> UsageInput, or an error text (the line is then rejected).

    The rows of a file mostly share one shape: the same fields in the same order,
    each value already of its type. A shape is worked out once; a row of a known
    shape is taken whole (its values picked into UsageInput's order, the time
    parsed), and any other row field by field.
    """

    MAX_SHAPES = 64

    def __init__(self) -> None:
        from dataclasses import fields

        from planctl.metering.recording import UsageInput

        self.make = UsageInput
        self.slots = [f.name for f in fields(UsageInput)]
        self.defaults = tuple(None if f.default is MISSING else f.default for f in fields(UsageInput))
        self.shapes: dict[tuple[str, ...], Any] = {}  # field names -> (value types, picker, time's place) | None

    def __call__(self, raw: dict[str, Any]) -> Any:
        names = tuple(raw)
        shape = self.shapes.get(names)
        if shape is None and names not in self.shapes and len(self.shapes) < self.MAX_SHAPES:
            shape = self.shapes[names] = self._shape(names)
        if shape is not None:
            values = tuple(raw.values())
            types, pick, at = shape
            if tuple(map(type, values)) == types and "" not in values:
                u = self.make(*pick(values + self.defaults))
                if at is not None:
                    try:
                        u.at = _coerce("at", "time", values[at])
                    except ValueError as exc:
                        return str(exc)
                return u
        return self._field_by_field(raw)

    def _shape(self, names: tuple[str, ...]) -> Any:
        """None for rows that always take the long way (an unknown or a missing field: reported there)."""
        if not all(name in FIELDS for name in names):
            return None
        targets = [FIELDS[name] for name in names]
        if not _REQUIRED_SET <= set(targets):
            return None
        place = {target: i for i, target in enumerate(targets)}  # a field given twice: the last one counts
        pick = itemgetter(*(place.get(slot, len(names) + j) for j, slot in enumerate(self.slots)))
        types = tuple(str if target == "at" else _TYPES[target] for target in targets)  # a time is text until parsed
        return types, pick, place.get("at")

    def _field_by_field(self, raw: dict[str, Any]) -> Any:
        fields: dict[str, Any] = {}
        for name, value in raw.items():
            target = FIELDS.get(name)
            if target is None:
                return f"unknown field {name!r}"
            if type(value) is not _TYPES[target]:  # JSON mostly gives the right type already; CSV gives text
                if value is None or value == "":
                    continue
                try:
                    value = _coerce(target, name, value)
                except ValueError as exc:
                    return str(exc)
            fields[target] = value
        if not _REQUIRED_SET <= fields.keys():
            return f"missing field {next(f for f in _REQUIRED if f not in fields)!r}"
        return self.make(**fields)


def _coerce(target: str, name: str, value: Any) -> Any:
    """A value of another type than the field holds (digits from CSV, a time as text), or ValueError."""
    if target == "at":  # by name: freezegun swaps the datetime class
        try:
            at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"time must be ISO 8601 with an offset, got {short(value)}") from None
        if at.tzinfo is None:
            raise ValueError(f"time {short(value)} needs a UTC offset")
        return at
    kind = _TYPES[target]
    if kind is int:
        if isinstance(value, str) and len(value) < 20 and value.strip().isascii() and value.strip().isdigit():
            return int(value)
        raise ValueError(f"{name} must be a whole number, got {short(value)}")
    if kind is bool:
        return str(value).lower() in ("1", "true", "yes")
    return str(value)


def read_rows(handle: Any, kind: str) -> Iterator[tuple[int, Any]]:
    """(line number, UsageInput or error) from JSON Lines or CSV read as bytes, streaming: a line
    that is not UTF-8, not JSON or not CSV is one rejected line, never the end of the import."""
    import orjson  # here, not at the top: every command imports this module

    parse_line = RowParser()
    if kind == "csv":
        # bytes that are not UTF-8 survive as lone surrogates, which validation rejects per line
        reader = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline=""))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num + 1, f"not CSV: {exc}"
                continue
            if None in row:
                yield reader.line_num, "more values than the header has columns"
                continue
            yield reader.line_num, parse_line(row)
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, f"not JSON: {exc.msg}"
            continue
        yield number, parse_line(raw) if isinstance(raw, dict) else "expected a JSON object"


@usage_app.command("import")
def usage_import(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="JSON Lines or CSV file, or - for stdin.")],
    format_: Annotated[Optional[str], typer.Option("--format", help="jsonl or csv (default: from the file name).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Records per transaction.")] = 2_000,
    json_: JsonOpt = False,
) -> None:
    """Import usage records, streaming, in batches; idempotent by request id.

    Prints how many lines were new, duplicate, rejected and conflicting (a request id
    recorded before with other content); those lines are listed with their line numbers
    and never half-applied. Exit 2 when any line was rejected, else 6 when any conflicted.
    Fields: request_id, key, model, input_tokens, cached_tokens, output_tokens, status,
    latency_ms, api, stream, time, reservation, error.
    Example: planctl usage import gateway-2026-11-21.jsonl
    """
    from planctl.cli.hints import word
    from planctl.domain.errors import InvalidInput
    from planctl.metering.importing import ImportReport

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    kind = format_ or ("csv" if file.endswith(".csv") else "jsonl")
    if kind not in ("jsonl", "csv"):
        raise InvalidInput(f"unknown format {kind!r}: use jsonl or csv")
    try:
        handle = sys.stdin.buffer if file == "-" else open(file, "rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None
    gc.freeze()  # the objects made so far live to the end: keep them out of the collections a long import triggers
    committed = ImportReport()

    def batch_done(report: Any) -> None:  # called after each committed batch
        committed.new, committed.duplicate = report.new, report.duplicate
        if progress:
            progress(report)

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl-C
    try:
        with handle, _Progress(st) as progress:
            report = st.meter().import_lines(read_rows(handle, kind), batch_size=batch_size, progress=batch_done)
    except KeyboardInterrupt:
        say(st, f"interrupted: {committed.new:,} new and {committed.duplicate:,} duplicate lines were committed "
                f"(imports commit every {batch_size:,} lines); re-running the same file is safe: lines already "
                "imported count as duplicates")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    data = {"new": report.new, "duplicate": report.duplicate, "rejected": report.rejected,
            "rejected_lines": [{"line": n, "error": word(e)} for n, e in report.rejected_lines],
            "conflicting": report.conflicting,
            "conflicting_lines": [{"line": n, "error": e} for n, e in report.conflicting_lines],
            "retried": report.retried}
    if fmt == "json":
        emit_json(st, data)
    else:
        print(f"new {report.new}, duplicate {report.duplicate}, rejected {report.rejected}"
              + (f", conflicting {report.conflicting}" if report.conflicting else ""))
        for what, count, lines in (("rejected", report.rejected, report.rejected_lines),
                                   ("conflicting", report.conflicting, report.conflicting_lines)):
            for number, why in lines[:20]:
                say(st, f"line {number}: {word(why)}")
            if count > 20:
                say(st, f"… and {count - 20} more {what} lines (--json lists the first {report.KEEP:,})")
    if report.rejected:
        raise typer.Exit(ExitCode.USAGE)
    if report.conflicting:
        raise typer.Exit(ExitCode.CONFLICT)


class _Progress:
    """A Rich progress counter on a terminal (imports stream, so the total is unknown)."""

    def __init__(self, st: State) -> None:
        self.show = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"

    def __enter__(self) -> Any:
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
                            transient=True)
        self.bar.start()
        task = self.bar.add_task("importing")
        return lambda r: self.bar.update(task, description=f"imported {r.new:,} new, {r.duplicate:,} duplicate, "
                                                           f"{r.rejected:,} rejected")

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self.bar.stop()


# ---------------------------------------------------------------- limits


def limits_json(v: Any, zone: Any) -> dict[str, Any]:
    from planctl.cli.hints import suggestion
    from planctl.domain.clock import iso

    c, lim = v.counters, v.limits

    def left(limit: int | None, *used: int) -> int | None:
        return None if limit is None else max(0, limit - sum(used))

    def credit_left(limit: int | None, *used: int) -> str | None:
        return _credit(left(limit, *used))

    return {
        "subscription_id": v.subscription_id, "key_id": v.key_id, "plan": v.plan,
        "blocking": v.blocking, "lifted_by_extra_usage": v.lifted_by_extra,
        "next_reset": v.next_reset and iso(v.next_reset),
        "next_reset_local": v.next_reset and iso(v.next_reset.astimezone(zone)),
        "total": {"granted": _credit(c.plan_granted), "used": _credit(c.plan_used),
                  "held": _credit(c.plan_reserved), "remaining": _credit(c.plan_remaining),
                  "overdrawn": _credit(overdrawn(None if c.plan_granted is None else c.plan_granted - c.plan_used))},
        "payg_overdrawn": _credit(overdrawn(v.payg_balance)),
        "period": None if lim.period_credit is None else {
            "limit": _credit(lim.period_credit), "used": _credit(c.period_used), "held": _credit(c.period_reserved),
            "remaining": credit_left(lim.period_credit, c.period_used, c.period_reserved),
            "enabled": lim.period_limit_enabled, "can_disable": v.can_disable_limit,
            "starts_at": v.period and iso(v.period[0]), "resets_at": v.period and iso(v.period[1]),
            "resets_at_local": v.period and iso(v.period[1].astimezone(zone))},
        "today": {"requests": c.day_requests, "rpd": lim.rpd, "rpd_remaining": left(lim.rpd, c.day_requests),
                  "tokens": c.day_tokens, "tpd": lim.tpd, "tpd_remaining": left(lim.tpd, c.day_tokens),
                  "resets_at": iso(v.day[1]), "resets_at_local": iso(v.day[1].astimezone(zone))},
        "key": {"cap": _credit(lim.key_cap), "used": _credit(c.key_used),
                "cap_remaining": credit_left(lim.key_cap, c.key_used, c.key_reserved),
                "daily_limit": _credit(lim.key_daily_limit), "used_today": _credit(c.key_day_credit),
                "daily_remaining": credit_left(lim.key_daily_limit, c.key_day_credit),
                "rpd": lim.key_rpd, "requests_today": c.key_day_requests,
                "rpd_remaining": left(lim.key_rpd, c.key_day_requests)},
        "extra_usage": _credit(c.extra_available),
        "payg_balance": None if v.subscription_id else _credit(c.payg_available),
        "reset_zone": v.reset_zone, "suggestions": [suggestion(code, v.about) for code in v.suggestions],
    }


@limits_app.command("show")
def limits_show(ctx: typer.Context, target: Annotated[str, typer.Argument(help="Subscription id or key.")],
                json_: JsonOpt = False) -> None:
    """"I still have balance, why can't I continue today?": every quota side by side.

    One row per limit that applies (plan and key), each with what is left.
    Example: planctl limits show sub_k3x9q2mz
    """
    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    data = limits_json(st.meter().limits(target), st.display_zone)
    if fmt == "json":
        emit_json(st, data)
        return
    t, p, d, k = data["total"], data["period"], data["today"], data["key"]

    def cr(v: Optional[str]) -> Optional[str]:
        from planctl.cli.output import display

        return None if v is None else display(v, "credit", st.display_zone)

    candidates = [
        (t["granted"], {"quota": "total credit", "used": cr(t["used"]), "limit": cr(t["granted"]),
                        "left": cr(t["remaining"]), "resets": None}),
        (p, p and {"quota": f"this period (limit {'on' if p['enabled'] else 'off'})", "used": cr(p["used"]),
                   "limit": cr(p["limit"]), "left": cr(p["remaining"]), "resets": p["resets_at"]}),
        (d["rpd"], {"quota": "requests today (RPD)", "used": d["requests"], "limit": d["rpd"],
                    "left": d["rpd_remaining"], "resets": d["resets_at"]}),
        (d["tpd"], {"quota": "tokens today (TPD)", "used": d["tokens"], "limit": d["tpd"],
                    "left": d["tpd_remaining"], "resets": d["resets_at"]}),
        (k["cap"], {"quota": "this key (credit cap)", "used": cr(k["used"]), "limit": cr(k["cap"]),
                    "left": cr(k["cap_remaining"]), "resets": None}),
        (k["daily_limit"], {"quota": "this key today (daily limit)", "used": cr(k["used_today"]),
                            "limit": cr(k["daily_limit"]), "left": cr(k["daily_remaining"]),
                            "resets": d["resets_at"]}),
        (k["rpd"], {"quota": "this key's requests today (RPD)", "used": k["requests_today"], "limit": k["rpd"],
                    "left": k["rpd_remaining"], "resets": d["resets_at"]}),
        (data["payg_balance"], {"quota": "pay-as-you-go balance", "used": None, "limit": None,
                                "left": cr(data["payg_balance"]), "resets": None}),
        (True, {"quota": "extra usage", "used": None, "limit": None, "left": cr(data["extra_usage"]),
                "resets": None}),
    ]
    rows = [row for applies, row in candidates if applies is not None and applies is not False]
    emit_rows(st, rows, (Column("quota"), Column("used", kind="int"), Column("limit", kind="int"),
                         Column("left", kind="int"), Column("resets", "Resets (local)", "time")), fmt)
    blocking = data["blocking"]
    from datetime import datetime

    from planctl.domain.clock import when

    reset = data["next_reset"] and when(datetime.fromisoformat(data["next_reset"]), st.display_zone)
    print(f"blocking now: {blocking or 'nothing'}"
          + (" (extra usage absorbs it)" if data["lifted_by_extra_usage"] else "")
          + (f"; next reset {reset}" if blocking and reset else "")
          + f"; natural days in {data['reset_zone']}")
    for what, by in (("the plan credit", t["overdrawn"]), ("the pay-as-you-go balance", data["payg_overdrawn"])):
        if by is not None:
            print(f"overdrawn: {what} is {cr(by)} below zero (requests recorded without a hold are charged in full)")
    for s in data["suggestions"]:
        print(f"to lift it: {s}")


def _toggle(ctx: typer.Context, sub: str, enabled: bool, json_: bool) -> None:
    st = state(ctx)
    fmt = output_format(st, json_=json_)
    row = st.meter(orm=True).set_period_limit(sub, enabled, caller=st.caller())
    data = {"subscription_id": row.id, "period_limit_enabled": row.period_limit_enabled}
    if fmt == "json":
        emit_json(st, data)
    else:
        say(st, f"periodic limit of {row.id} is {'on' if row.period_limit_enabled else 'off'}")


@limits_app.command("disable")
def limits_disable(ctx: typer.Context, subscription: Annotated[str, typer.Argument(help="Subscription id.")],
                   json_: JsonOpt = False) -> None:
    """Turn the periodic limit off: requests then use the total credit with no periodic cap.

    Only where the plan allows it. Example: planctl limits disable sub_k3x9q2mz
    """
    _toggle(ctx, subscription, False, json_)


@limits_app.command("enable")
def limits_enable(ctx: typer.Context, subscription: Annotated[str, typer.Argument(help="Subscription id.")],
                  json_: JsonOpt = False) -> None:
    """Turn the periodic limit back on (this period's use so far still counts).

    Example: planctl limits enable sub_k3x9q2mz
    """
    _toggle(ctx, subscription, True, json_)


# ---------------------------------------------------------------- reservations

RES_COLUMNS = (Column("id"), Column("key_id", "Key"), Column("pool"), Column("amount", kind="credit"),
               Column("status"), Column("created_at", "Created", "time"), Column("expires_at", "Expires", "time"),
               Column("request_id", "Request"))


def reservation_json(r: Any) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json

    return {"id": r.id, "key_id": r.key_id, "account_id": r.account_id, "subscription_id": r.subscription_id,
            "pool": r.pool, "amount": credit_json(r.amount), "status": r.status, "request_id": r.request_id,
            "created_at": iso(r.created_at), "expires_at": iso(r.expires_at),
            "closed_at": r.closed_at and iso(r.closed_at)}


@reservations_app.command("list")
def reservations_list(
    ctx: typer.Context,
    status: Annotated[str, typer.Option(help="held, settled, released, expired or all.")] = "held",
    key: Annotated[Optional[str], typer.Option(help="Only this key.")] = None,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List reservations (stale holds are released first).

    Example: planctl reservations list --status all --json
    """
    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    rows = st.meter().reservations(status=None if status == "all" else status, key=key)
    emit_rows(st, (reservation_json(r) for r in rows), RES_COLUMNS, fmt)


@reservations_app.command("release")
def reservations_release(ctx: typer.Context, reservation: Annotated[str, typer.Argument(help="Reservation id.")],
                         json_: JsonOpt = False) -> None:
    """Release a hold by hand (the request will not be recorded against it).

    Example: planctl reservations release res_k3x9q2mzab
    """
    st = state(ctx)
    fmt = output_format(st, json_=json_)
    res = st.meter(orm=True).release_by_hand(reservation, caller=st.caller())
    emit_record(st, reservation_json(res), RES_COLUMNS, fmt)
