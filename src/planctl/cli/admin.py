"""`planctl db …`, `planctl config …` and `planctl audit`."""


from pathlib import Path
from typing import Annotated, Optional

import typer

from planctl.cli.context import state
from planctl.cli.output import (
    Column, CsvOpt, JsonlOpt, JsonOpt, emit_json, emit_rows, output_format, say,
)

db_app = typer.Typer(help="The database: where it is, check, back up, migrate.",
                     epilog="Example: planctl db backup ~/planctl-backup.db", no_args_is_help=True)
config_app = typer.Typer(help="Installation settings (reset time zone, currency, seller, thresholds).",
                         epilog="Example: planctl config set reset_timezone Asia/Shanghai",
                         no_args_is_help=True)


@db_app.command("path")
def path(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Print which database planctl uses, and which setting chose it.

    Example: planctl db path
    """
    st = state(ctx)
    target = st.target
    if output_format(st, json_=json_) == "json":
        emit_json(st, {"database": target.display, "path": None if target.path is None else str(target.path),
                       "source": target.source})
    else:
        print(target.display)


@db_app.command("init")
def init(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Create the database (schema and sample catalog), or bring an existing one up to date.

    Commands that only read refuse a database file that does not exist (exit 3); this makes it.
    Example: planctl --db ./staging.db db init
    """
    st = state(ctx)
    fmt = output_format(st, json_=json_)
    target = st.target
    existed = target.path is None or target.path.exists()
    st.db()
    if fmt == "json":
        emit_json(st, {"database": target.display, "created": not existed})
    else:
        say(st, f"{'database ' + target.display + ' is ready' if existed else 'created ' + target.display}")


@db_app.command("check")
def check(ctx: typer.Context, json_: JsonOpt = False, journal: Annotated[Optional[Path], typer.Option(
        help="The gateway's settlement journal (default: where planctl serve puts it).")] = None) -> None:
    """Check integrity, foreign keys, schema version, ledger balances, and that the gateway's journal
    holds no settlement missing from the database; exit 1 if any check fails.

    Example: planctl db check
    """
    from planctl.cli.hints import word
    from planctl.services import database
    from planctl.store.location import journal_dir

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    results = database.check(st.db())
    results.append(database.check_journal(st.db(), journal or journal_dir(st.target)))
    rows = [{"check": r.name, "ok": r.ok, "detail": word(r.detail)} for r in results]
    emit_rows(st, rows, (Column("check"), Column("ok", kind="bool"), Column("detail")), fmt)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@db_app.command("backup")
def backup(ctx: typer.Context, file: Annotated[Path, typer.Argument(help="New file to write (must not exist).")],
           json_: JsonOpt = False) -> None:
    """Write a consistent copy of the SQLite database while it is in use.

    Example: planctl db backup ~/planctl-$(date +%F).db
    """
    from planctl.services import database

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    size = database.backup(st.db(), file)
    if fmt == "json":
        emit_json(st, {"backup": str(file.expanduser().absolute()), "bytes": size})
    else:
        say(st, f"backed up to {file} ({size} bytes)")


@db_app.command("migrate")
def migrate(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show pending migrations; apply nothing.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Show applied and pending schema migrations, and apply the pending ones.

    Migrations also run automatically whenever planctl opens a database.
    Example: planctl db migrate --dry-run
    """
    from planctl.store import migrations

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    db = st.db(migrate=False)
    if not dry_run:
        from planctl.services.catalog import load_sample_catalog

        now = st.now()
        migrations.migrate(db, now=now, on_created=lambda s: load_sample_catalog(s, now))
    from planctl.domain.clock import iso

    rows = [{"version": m.version, "name": m.name, "status": "applied" if m.applied_at else "pending",
             "applied_at": m.applied_at and iso(m.applied_at)} for m in migrations.status(db)]
    emit_rows(st, rows, (Column("version", kind="int"), Column("name"), Column("status"),
                         Column("applied_at", "Applied", "time")), fmt)


@config_app.command("list")
def config_list(ctx: typer.Context, json_: JsonOpt = False, csv_: CsvOpt = False) -> None:
    """List every setting with its value and meaning.

    Example: planctl config list
    """
    from planctl.domain.config import SETTINGS
    from planctl.services import settings

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, csv_=csv_)
    values = settings.list_settings(st.db())
    if fmt == "json":
        emit_json(st, values)
        return
    rows = [{"key": k, "value": v, "description": SETTINGS[k].description} for k, v in values.items()]
    emit_rows(st, rows, (Column("key"), Column("value"), Column("description")), fmt)


@config_app.command("get")
def config_get(ctx: typer.Context, key: Annotated[str, typer.Argument(help="Setting name.")],
               json_: JsonOpt = False) -> None:
    """Print one setting.

    Example: planctl config get reset_timezone
    """
    from planctl.services import settings

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    value = settings.get(st.db(), key)
    if fmt == "json":
        emit_json(st, {"key": key, "value": value})
    else:
        print(value)


@config_app.command("set")
def config_set(
    ctx: typer.Context, key: Annotated[str, typer.Argument(help="Setting name.")],
    value: Annotated[str, typer.Argument(help="New value.")], json_: JsonOpt = False,
) -> None:
    """Change a setting (validated; recorded in the audit log).

    Example: planctl config set seller_name "Example Cloud Ltd"
    """
    from planctl.services import settings

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    stored = settings.set_value(st.db(), key, value, caller=st.caller(), now=st.now())
    if fmt == "json":
        emit_json(st, {"key": key, "value": stored})
    else:
        say(st, f"{key} = {stored}")


AUDIT_COLUMNS = (Column("at", "Time", "time"), Column("actor", drop=1), Column("command"), Column("target", kind="id"),
                 Column("summary"))


def audit(
    ctx: typer.Context,
    since: Annotated[Optional[str], typer.Option(help="From this time (24h, 7d, a date, today).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Before this time.")] = None,
    actor: Annotated[Optional[str], typer.Option(help="Only this actor.")] = None,
    target: Annotated[Optional[str], typer.Option(help="Targets starting with this, e.g. plan: or account:acc_.")] = None,
    command: Annotated[Optional[str], typer.Option(help="Commands starting with this, e.g. 'plans update'.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="At most this many entries.")] = 100,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """Show the audit log of changes, newest first.

    Example: planctl audit --since 7d --target plan:
    """
    from planctl.domain.clock import iso, parse_instant
    from planctl.services import audit as audit_service

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    now, zone = st.now(), st.display_zone
    flt = audit_service.AuditFilter(
        since=since and parse_instant(since, now=now, tz=zone, direction=-1),
        until=until and parse_instant(until, now=now, tz=zone, direction=-1),
        actor=actor, target=target, command=command, limit=limit,
    )
    rows = ({"id": e.id, "at": iso(e.at), "actor": e.actor, "command": e.command, "target": e.target,
             "summary": e.summary} for e in audit_service.entries(st.db(), flt))
    emit_rows(st, rows, AUDIT_COLUMNS, fmt)
