"""`planctl keys …`: team keys from a plan, pay-as-you-go keys, rotation and limits."""


import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import State, credit_option, instant_option, state
from planctl.cli.output import (
    Column, CsvOpt, JsonlOpt, JsonOpt, YesOpt, emit_json, emit_record, emit_rows, output_format, say,
)

app = typer.Typer(help="API keys: create team keys from a plan, list, disable, revoke, rotate, edit.",
                  no_args_is_help=True,
                  epilog="Example: planctl keys create --from-plan codex-team-monthly --account acme "
                         "--name ci-runner --quantity 20 --secrets-file ci-keys.json")

# left out when a terminal is too narrow, in this order: last used, subscription, plan, cap, kind,
# group, status (Usable says more), account, expires, used; --wide shows all (README "Tables")
COLUMNS = (
    Column("id", kind="id"), Column("name"), Column("key", "Key", "id"), Column("usable", "Usable"),
    Column("account_name", "Account", drop=3), Column("kind", drop=6), Column("plan", kind="id", drop=8),
    Column("subscription_id", "Subscription", "id", drop=9), Column("group", drop=5),
    Column("status", drop=4), Column("credit_cap", "Cap", "credit", drop=7),
    Column("credit_used", "Used", "credit", drop=1), Column("expires_at", "Expires", "time", drop=2),
    Column("last_used_at", "Last used", "time", drop=10), Column("unusable_reason", table=False),
)
SHOW_COLUMNS = COLUMNS + (Column("account_id", "Account id", "id"),Column("daily_limit", "Daily limit", "credit"), Column("rpd", "RPD", "int"),
                          Column("previous_valid_until", "Old secret valid until", "time"),
                          Column("created_at", "Created", "time"), Column("updated_at", "Updated", "time"))

KeyRef = Annotated[str, typer.Argument(help="Key id, unique name, or visible prefix (sk-AbCd).")]
AccountOpt = Annotated[Optional[str], typer.Option("--account", "-a", help="Account (to tell same-named keys apart).")]


def key_json(k: Any, secret: str | None = None) -> dict[str, Any]:
    from planctl.domain.clock import iso
    from planctl.domain.money import credit_json
    from planctl.domain.secrets import masked

    def t(v: Any) -> Any:
        return v and iso(v)

    def c(v: Any) -> Any:
        return None if v is None else credit_json(v)

    out = {
        "id": k.id, "name": k.name, "account_id": k.account_id, "kind": k.kind, "subscription_id": k.subscription_id,
        "group": k.group_name, "status": k.status, "key": masked(k.prefix, k.last4), "prefix": k.prefix,
        "last4": k.last4, "credit_cap": c(k.credit_cap), "credit_used": credit_json(k.credit_used),
        "daily_limit": c(k.daily_limit), "rpd": k.rpd, "expires_at": t(k.expires_at),
        "previous_valid_until": t(k.previous_valid_until), "created_at": iso(k.created_at),
        "updated_at": iso(k.updated_at), "last_used_at": t(k.last_used_at),
    }
    if secret is not None:
        out["secret"] = secret
    return out


def key_view_json(view: Any) -> dict[str, Any]:
    """A key as listed: its JSON plus names beside ids and whether it can be used now."""
    return {**key_json(view.key), "account_name": view.account_name, "plan": view.plan,
            "usable": view.unusable is None, "unusable_reason": view.unusable}


def _usable_text(row: dict[str, Any]) -> dict[str, Any]:
    """The table's Usable cell: yes, or no with the reason in words."""
    reason = row["unusable_reason"]
    return {**row, "usable": "yes" if reason is None else "no: " + reason.replace("_", " ")}


def _optional_credit(text: Optional[str], option: str) -> Any:
    """None: not given; "none": cleared; else µcr."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return "none"
    return credit_option(text, option)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Key name; with --quantity each gets a random suffix.")],
    from_plan: Annotated[Optional[str], typer.Option(
        "--from-plan", help="Plan slug (the account's one active subscription of it) or subscription id.")] = None,
    account: Annotated[Optional[str], typer.Option("--account", "-a", help="Owner (or a sub-user of the owner).")] = None,
    payg: Annotated[bool, typer.Option("--payg", help="A key that draws on the account's pay-as-you-go balance.")] = False,
    quantity: Annotated[int, typer.Option(help="How many keys (1 to 1000), all or none.")] = 1,
    credit: Annotated[Optional[str], typer.Option("--credit", help="Most plan credit this key may consume.")] = None,
    expires: Annotated[Optional[str], typer.Option(help="When the key stops working (30d, a date, …).")] = None,
    group: Annotated[Optional[str], typer.Option(help="Group (default: the account's; must be in the plan).")] = None,
    daily_limit: Annotated[Optional[str], typer.Option(help="Most credit per natural day.")] = None,
    rpd: Annotated[Optional[int], typer.Option(help="Most requests per natural day.")] = None,
    secrets_file: Annotated[Optional[Path], typer.Option(
        help="Write the secrets to this new file (mode 0600) instead of the terminal.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create team keys from a plan (or --payg keys). Each secret is shown once.

    Example: planctl keys create --from-plan codex-team-monthly --account acme --name ci-runner
    --quantity 20 --credit 50 --expires 90d --secrets-file ci-keys.json
    """
    from planctl.services import keys

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    spec = keys.KeySpec(
        name=name, from_plan=from_plan, account=account, payg=payg, quantity=quantity,
        credit_cap=credit_option(credit, "--credit"), expires_at=instant_option(st, expires, "--expires"), group=group,
        daily_limit=credit_option(daily_limit, "--daily-limit"), rpd=rpd,
    )
    # The secrets file is claimed (private, new) before any key exists and written and synced to disk
    # inside the keys' transaction, before its commit: no moment leaves a key whose secret is lost.
    out = SecretsFile(secrets_file, lambda ids: keys.existing(st.db(), ids)) if secrets_file is not None else None
    try:
        with _progress(st, quantity) as progress:
            created = keys.create(st.db(), spec, caller=st.caller(), now=st.now(), progress=progress,
                                  before_commit=out.write if out is not None else None)
    except BaseException:
        if out is not None:
            out.abandon()
        raise
    rows = [key_json(c.key, c.secret) for c in created]
    if out is not None:
        say(st, f"created {len(rows)} key(s); secrets written to {secrets_file} (mode 0600)")
        if fmt == "json":
            emit_json(st, [{k: v for k, v in r.items() if k != "secret"} for r in rows])
        return
    if fmt == "json":
        emit_json(st, rows)
        return
    emit_rows(st, rows, (Column("id"), Column("name"), Column("group"), Column("key", "Key"),
                         Column("secret", "Secret (shown once)")), fmt)


class SecretsFile:
    """The file `keys create --secrets-file` writes: claimed before the keys exist, written and
    synced to disk before they are committed, removed only if they were not (README "Keys").

    A file left by an interrupted run is reused when it is empty, or when it lists only keys
    that do not exist (the run stopped before its commit); any other existing file is refused.
    """

    def __init__(self, path: Path, existing: Any) -> None:
        from planctl.domain.errors import Conflict, InvalidInput

        self.path, self.existing, self.ids = path, existing, []
        try:
            self.fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            if not self._leftover():
                raise Conflict(f"{path} already exists and holds secrets of existing keys; secrets are only "
                               "written to a new file: choose another name") from None
            self.fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.fchmod(self.fd, 0o600)
        except OSError as exc:
            raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None

    def _leftover(self) -> bool:
        """Is the existing file the trace of a run that never committed its keys?"""
        if not self.path.is_file():
            return False
        try:
            text = self.path.read_text("utf-8")
            listed = [row["id"] for row in json.loads(text)] if text.strip() else []
        except (OSError, ValueError, TypeError, KeyError):
            return False
        return not self.existing(listed)

    def write(self, created: list[Any]) -> None:
        """The secrets, synced to disk (file and directory) before the keys are committed."""
        self.ids = [c.key.id for c in created]
        data = (json.dumps([key_json(c.key, c.secret) for c in created], indent=2) + "\n").encode()
        with os.fdopen(self.fd, "wb", closefd=True) as handle:
            self.fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def abandon(self) -> None:
        """After a failure: remove the file unless its keys were committed after all (an
        interruption can land after the commit), in which case it is the only copy of their secrets."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            committed = bool(self.ids) and bool(self.existing(self.ids))
        except Exception:
            return  # cannot tell: keep it (a re-run recognises an uncommitted leftover)
        if not committed:
            self.path.unlink(missing_ok=True)


class _progress:
    """A Rich progress bar on a terminal for large batches; nothing otherwise."""

    def __init__(self, st: State, total: int) -> None:
        self.show = total >= 50 and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.total = total

    def __enter__(self) -> Any:
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("creating keys", total=self.total)
        return lambda done: self.bar.update(task, completed=done)

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self.bar.stop()


@app.command("list")
def list_keys(
    ctx: typer.Context,
    account: AccountOpt = None,
    subscription: Annotated[Optional[str], typer.Option(help="Only keys of this subscription.")] = None,
    plan: Annotated[Optional[str], typer.Option(help="Only keys of subscriptions of this plan.")] = None,
    group: Annotated[Optional[str], typer.Option(help="Only this group.")] = None,
    status: Annotated[Optional[str], typer.Option(help="active, disabled or revoked.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="subscription, team or payg.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Names starting with this, or a glob (ci-*).")] = None,
    expiring_before: Annotated[Optional[str], typer.Option(help="Keys that expire before this time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="At most this many.")] = 1_000,
    json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False,
) -> None:
    """List keys (never their secrets).

    Example: planctl keys list --account acme --name 'ci-*' --status active --csv
    """
    from planctl.services import listing

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    flt = listing.KeyFilter(account=account, subscription=subscription, plan=plan, group=group, status=status,
                         kind=kind, name=name, expiring_before=instant_option(st, expiring_before, "--expiring-before"),
                         limit=limit)
    rows = (key_view_json(v) for v in listing.keys(st.meter_db(), flt, now=st.now()))
    emit_rows(st, (_usable_text(r) for r in rows) if fmt == "table" else rows, COLUMNS, fmt)


@app.command("show")
def show(ctx: typer.Context, key: KeyRef, account: AccountOpt = None, json_: JsonOpt = False) -> None:
    """Show one key (never its secret).

    Example: planctl keys show ci-runner-k3x9
    """
    from planctl.services import keys

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    data = key_view_json(keys.view(st.db(), key, now=st.now(), account=account))
    emit_record(st, _usable_text(data) if fmt == "table" else data, SHOW_COLUMNS, fmt)


def _set_status(ctx: typer.Context, refs: list[str], action: str, account: Optional[str], json_: bool) -> None:
    from planctl.services import keys

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    changed = keys.set_status(st.db(), refs, action, caller=st.caller(), now=st.now(), account=account)
    emit_rows(st, (key_json(k) for k in changed), (Column("id"), Column("name"), Column("status")), fmt)


@app.command("disable")
def disable(ctx: typer.Context, key: Annotated[list[str], typer.Argument(help="Keys (id, name or prefix).")],
            account: AccountOpt = None, json_: JsonOpt = False) -> None:
    """Disable keys (reversible with enable).

    Example: planctl keys disable ci-runner-k3x9 ci-runner-m2p7
    """
    _set_status(ctx, key, "disable", account, json_)


@app.command("enable")
def enable(ctx: typer.Context, key: Annotated[list[str], typer.Argument(help="Keys (id, name or prefix).")],
           account: AccountOpt = None, json_: JsonOpt = False) -> None:
    """Enable disabled keys.

    Example: planctl keys enable ci-runner-k3x9
    """
    _set_status(ctx, key, "enable", account, json_)


@app.command("revoke")
def revoke(ctx: typer.Context, key: Annotated[list[str], typer.Argument(help="Keys (id, name or prefix).")],
           account: AccountOpt = None, yes: YesOpt = False, json_: JsonOpt = False) -> None:
    """Revoke keys for good (asks first on a terminal; --yes in scripts).

    Example: planctl keys revoke ci-runner-k3x9 --yes
    """
    st = state(ctx)
    if not yes:
        from planctl.domain.secrets import masked
        from planctl.services import keys

        found = [keys.get(st.db(), ref, account=account) for ref in key]
        named = ", ".join(f"{k.name} ({masked(k.prefix, k.last4)})" for k in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        st.confirm(f"Revoke {len(found)} key(s) for good: {named}{more}? They stop working at once; "
                   "this cannot be undone", yes=yes)
    _set_status(ctx, key, "revoke", account, json_)


@app.command("rotate")
def rotate(
    ctx: typer.Context, key: KeyRef, account: AccountOpt = None,
    grace: Annotated[Optional[str], typer.Option(help="Keep the old secret working this long (e.g. 10m).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Give a key a new secret; its id, history and limits stay. The new secret is shown once.

    Example: planctl keys rotate ci-runner-k3x9 --grace 10m
    """
    from datetime import timedelta

    from planctl.domain.clock import parse_duration
    from planctl.domain.errors import InvalidInput
    from planctl.services import keys

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    delta = None
    if grace is not None:
        duration = parse_duration(grace)
        if duration.months or duration.days > 30:
            raise InvalidInput("--grace is for a short overlap: at most 30d")
        delta = timedelta(days=duration.days, seconds=duration.seconds)
    created = keys.rotate(st.db(), key, grace=delta, caller=st.caller(), now=st.now(), account=account)
    data = key_json(created.key, created.secret)
    if fmt == "json":
        emit_json(st, data)
        return
    emit_record(st, data, (Column("id"), Column("name"), Column("key", "Key"),
                           Column("previous_valid_until", "Old secret valid until", "time"),
                           Column("secret", "New secret (shown once)")), fmt)


@app.command("edit")
def edit(
    ctx: typer.Context, key: KeyRef, account: AccountOpt = None,
    name: Annotated[Optional[str], typer.Option(help="New name.")] = None,
    credit: Annotated[Optional[str], typer.Option("--credit", help="Credit cap, or 'none'.")] = None,
    expires: Annotated[Optional[str], typer.Option(help="New expiry, or 'none'.")] = None,
    group: Annotated[Optional[str], typer.Option(help="New group (must be in the plan).")] = None,
    daily_limit: Annotated[Optional[str], typer.Option(help="Credit per natural day, or 'none'.")] = None,
    rpd: Annotated[Optional[str], typer.Option(help="Requests per natural day, or 'none'.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Change a key's name, credit cap, expiry, group, daily limit or RPD.

    Example: planctl keys edit ci-runner-k3x9 --credit 80 --expires 2027-01-31
    """
    from planctl.domain.errors import InvalidInput
    from planctl.services import keys

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if group is not None:
        changes["group_name"] = group
    for field, value in (("credit_cap", _optional_credit(credit, "--credit")),
                         ("daily_limit", _optional_credit(daily_limit, "--daily-limit"))):
        if value is not None:
            changes[field] = None if value == "none" else value
    if expires is not None:
        changes["expires_at"] = None if expires.strip().lower() == "none" else instant_option(st, expires, "--expires")
    if rpd is not None:
        if rpd.strip().lower() == "none":
            changes["rpd"] = None
        elif rpd.strip().isdigit() and int(rpd) >= 1:
            changes["rpd"] = int(rpd)
        else:
            raise InvalidInput(f"--rpd: expected a whole number of at least 1 or 'none', got {rpd!r}")
    if not changes:
        raise InvalidInput("nothing to change: give at least one of --name, --credit, --expires, --group, "
                           "--daily-limit, --rpd")
    updated = keys.edit(st.db(), key, changes, caller=st.caller(), now=st.now(), account=account)
    data = key_view_json(keys.view(st.db(), updated.id, now=st.now()))
    emit_record(st, _usable_text(data) if fmt == "table" else data, SHOW_COLUMNS, fmt)
