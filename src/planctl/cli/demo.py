"""`planctl demo`: fill a database with realistic synthetic traffic (services.demo)."""


import sys
import time
from typing import Annotated, Any

import typer

from planctl.cli.context import State, state
from planctl.cli.output import JsonOpt, emit_json, output_format, say


def demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, max=366, help="Traffic over the last N days, ending now.")] = 7,
    records: Annotated[int, typer.Option(min=0, help="Usage records to make.")] = 20_000,
    accounts: Annotated[int, typer.Option(min=1, max=100, help="Buying accounts (the first is a team "
                                                               "with a sub-user).")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed makes the same data.")] = 42,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Bulk-insert records and build rollups in SQL, for millions of records; usage is NOT "
                       "charged to balances.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Add to a database that already has usage "
                                                          "records.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Fill the database with demo accounts, subscriptions, keys and usage, so every table has rows.

    Makes a team with a sub-user and other accounts on several sample plans, an extra-usage
    pack, keys in several groups, and requests over the last --days days (several models, API
    types, status codes, cache hits, latencies; busier by day). By default every request is
    recorded through metering, so balances, counters, rollups and the ledger agree. --fast
    bulk-inserts the records and their daily rollups without charging balances (for
    benchmarks). Refused (exit 4) on a database that already has usage records, unless --yes.
    Example: planctl --db demo.db demo --days 7 --seed 42
    """
    from planctl.cli.hints import word
    from planctl.services import demo as service

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    spec = service.DemoSpec(days=days, records=records, accounts=accounts, seed=seed, fast=fast)
    progress = _Progress(st)
    summary = service.run(st.db(), spec, caller=st.caller(), now=st.now(), force=yes, progress=progress)
    progress.finish()
    data = service.summary_json(summary)
    data["notes"] = [word(n) for n in summary.notes]
    if fmt == "json":
        emit_json(st, data)
    else:
        _report(st, data)


class _Progress:
    """A progress line on stderr every few seconds (long --fast runs take minutes); a run that
    showed progress ends with its 100 % line."""

    EVERY = 5.0

    def __init__(self, st: State) -> None:
        self.st, self.started, self.last = st, time.monotonic(), time.monotonic()
        self.shown, self.total = False, 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.EVERY or done >= total:
            return
        self.last, self.shown, self.total = now, True, total
        rate = done / max(now - self.started, 1e-9)
        left = (total - done) / rate if rate else 0
        print(f"demo: {done:,} of {total:,} records ({100 * done / total:.0f} %, {rate:,.0f}/s, "
              f"about {left:.0f} s left)", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """The last line of a run that showed progress: 100 %, not the last 5-second mark."""
        if self.shown:
            print(f"demo: {self.total:,} of {self.total:,} records (100 %)", file=sys.stderr, flush=True)


def _report(st: State, data: dict[str, Any]) -> None:
    """The summary for people, on stderr."""
    how = "charged through metering" if data["charged"] else "bulk-inserted, NOT charged to balances (--fast)"
    say(st, f"demo data ({data['mode']}, seed {data['seed']}): {data['accounts']} accounts, "
            f"{data['subscriptions']} subscriptions, {data['orders']} orders, {data['extra_packs']} extra pack, "
            f"{data['keys']} keys")
    say(st, f"{data['records']:,} usage records over {data['days']} days ({data['since']} to {data['until']}), "
            f"{how}; consumption {data['consumption']} credit")
    rate = f", {data['records_per_second']:,} records/s" if data["records_per_second"] else ""
    say(st, f"elapsed {data['elapsed_seconds']:.1f} s{rate}")
    for note in data["notes"]:
        say(st, f"note: {note}")
    say(st, "try: planctl health --by key --since 7d; planctl usage --since 1h; planctl subscriptions list")
