"""The command tree: the root Typer app, its global options and the table of commands.

`app` is the Typer application (`planctl.cli.main` runs it). Domain errors are
turned into one stderr line and a documented exit code here, in one place
(`PlanctlGroup.invoke`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, MutableMapping
from typing import Annotated, Any, NoReturn, Optional

import typer
from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption, UsageError
from typer.core import TyperGroup

from planctl.cli.context import State, env_flag
from planctl.domain.errors import ExitCode, PlanctlError


GLOBAL_FLAGS = ("--json", "--no-color", "--no-input", "--wide")  # also accepted after the sub-command
_NEGATIVE = re.compile(r"-\d[\d_.,]*")


class PlanctlGroup(TyperGroup):
    """The root group: maps every error raised below it to an exit code; builds a command only
    when it is used (`COMMANDS`)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _LazyCommands(
            {name: functools.partial(_click_command, self, name, where) for name, where in COMMANDS.items()},
            built=self.commands)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names alone: TyperGroup's would build every command

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """A bad root option (`planctl --bogus`) is one line too, like one below the root."""
        try:
            return super().parse_args(ctx, _hoist_global_flags(self, args))
        except NoArgsIsHelpError as exc:
            _help(exc)
        except UsageError as exc:
            _usage_error(ctx, exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError as exc:
            _help(exc)
        except UsageError as exc:
            _usage_error(ctx, exc)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except PlanctlError as exc:
            from planctl.cli.hints import word

            _report(ctx, exc.reason, word(exc))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:  # `planctl … | head`: the reader has all it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(ExitCode.OK) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except Exception as exc:
            if env_flag("PLANCTL_DEBUG"):
                traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            _report(ctx, "unexpected", f"unexpected {type(exc).__name__}: {first} "
                    "(rerun with PLANCTL_DEBUG=1 for a traceback)")
            raise typer.Exit(ExitCode.FAILURE) from None
        finally:
            if isinstance(ctx.obj, State):
                ctx.obj.close()


def _hoist_global_flags(root: Any, args: list[str]) -> list[str]:
    """`planctl plans list --no-color` means `planctl --no-color plans list`: global flags after
    the sub-command move in front of it, unless that command has an option of the same name."""
    command, start = root, 0
    for i, arg in enumerate(args):
        if arg == "--" or not hasattr(command, "commands"):
            break
        if not arg.startswith("-") and arg in command.commands:
            command, start = command.commands[arg], i + 1
    if command is root:
        return args
    own = {name for param in command.params for name in getattr(param, "opts", ())}
    tail = list(args[start:])
    stop = tail.index("--") if "--" in tail else len(tail)
    hoisted = [a for a in tail[:stop] if a in GLOBAL_FLAGS and a not in own]
    if not hoisted:
        return args
    return hoisted + list(args[:start]) + [a for i, a in enumerate(tail) if i >= stop or a not in hoisted]


def _help(exc: NoArgsIsHelpError) -> NoReturn:
    """A bare `planctl` (or `planctl keys`) prints its help on stdout and succeeds, as git and gh do."""
    print(exc.ctx.get_help() if exc.ctx else exc.format_message())
    raise typer.Exit(ExitCode.OK) from None


def _usage_error(ctx: Any, exc: UsageError) -> NoReturn:
    where = exc.ctx.command_path if exc.ctx else "planctl"
    message = exc.format_message().rstrip(".")
    option = getattr(exc, "option_name", None)
    if isinstance(exc, NoSuchOption) and option and _NEGATIVE.fullmatch(option):
        message = f"{option} must not be negative (amounts, counts and limits never are)"
    _report(ctx, "usage", f"{message}; see '{where} --help'")
    raise typer.Exit(ExitCode.USAGE) from None


def _report(ctx: Any, reason: str, message: str) -> None:
    """One stderr line: plain text, or a JSON object when --json was asked for; never a secret."""
    from planctl.domain.secrets import redact

    message = redact(message)
    if isinstance(ctx.obj, State) and ctx.obj.json:
        print(json.dumps({"error": reason, "message": message}, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)


app = typer.Typer(
    cls=PlanctlGroup,
    name="planctl",
    help="Administer LLM API subscription plans: catalog, sales, keys, quotas and usage.",
    epilog="Example: planctl plans list --json. Docs: README.md. Exit codes: 0 ok, 1 failure, "
    "2 bad input, 3 not found, 4 refused, 5 denied, 6 conflict, 7 declined at a prompt.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from planctl.cli import version

        print(version())
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[Optional[str], typer.Option(
        "--db", metavar="PATH|URL",
        help="SQLite file or postgresql://… URL. Default: PLANCTL_DATABASE_URL, PLANCTL_DB, "
        "PLANCTL_HOME/planctl.db, then the user data directory.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON output for every command.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour (also NO_COLOR=1).")] = False,
    no_input: Annotated[bool, typer.Option("--no-input", help="Never prompt; fail instead.")] = False,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Tables show every column, even when the terminal is too narrow.")] = False,
    tz: Annotated[Optional[str], typer.Option(
        "--tz", envvar="PLANCTL_TZ", help="Time zone for displayed and entered times (default: local).")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Global options come before the command (planctl --db ./test.db plans list); --json, --no-color,
    --no-input and --wide also work after it."""
    if tz:
        from planctl.domain.clock import zone

        zone(tz)
    ctx.obj = State(db_option=db, json=json_, no_color=no_color or bool(os.environ.get("NO_COLOR")),
                    no_input=no_input or env_flag("PLANCTL_NO_INPUT"), tz_name=tz, wide=wide)


@functools.cache
def _usage_app() -> typer.Typer:
    """`planctl usage [filters]` and `usage prune` read (reporting); `usage record` and `import` meter."""
    from planctl.cli import metering, reporting

    metering.usage_app.callback()(reporting.usage)
    metering.usage_app.command("prune")(reporting.prune)
    return metering.usage_app


# Every command, in the order `planctl --help` lists them: its name → the command function or
# Typer sub-app ("module:attribute" in cli/), or a function returning one. A module is imported,
# and its commands built, only when one of them runs (help and completion of the root list them
# all), so `planctl plans list` loads cli/plans.py and nothing of `serve` or `usage import`.
COMMANDS: dict[str, str | Callable[[], Any]] = {
    "buy": "sales:buy", "renew": "sales:renew", "upgrade": "sales:upgrade", "topup": "sales:topup",
    "refund": "sales:refund", "authorize": "metering:authorize", "health": "reporting:health",
    "audit": "admin:audit", "demo": "demo:demo", "serve": "serve:serve",
    "plans": "plans:app", "products": "plans:products_app", "models": "catalog:models_app",
    "aliases": "catalog:aliases_app", "groups": "catalog:groups_app", "accounts": "accounts:app",
    "subscriptions": "sales:subscriptions_app", "orders": "sales:orders_app", "extra": "sales:extra_app",
    "discounts": "discounts:app", "invoices": "invoices:app", "keys": "keys:app",
    "usage": _usage_app, "limits": "metering:limits_app", "reservations": "metering:reservations_app",
    "db": "admin:db_app", "config": "admin:config_app", "upstreams": "upstreams:app",
}


class _LazyCommands(MutableMapping[str, Any]):
    """A group's commands: every name is known up front (help order, suggestions for a typo,
    completion); a command is built (and its module imported) on first access."""

    def __init__(self, builders: dict[str, Callable[[], Any]], built: MutableMapping[str, Any] | None = None) -> None:
        self._builders, self._built = dict(builders), dict(built or {})

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = self._builders[name]()
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._builders.pop(name, None)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self._builders
        yield from (name for name in self._built if name not in self._builders)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        return name in self._builders or name in self._built


def _click_command(group: TyperGroup, name: str, where: str | Callable[[], Any]) -> Any:
    """What `app.add_typer(sub_app, name=name)` or `app.command(name)(function)` would have built,
    except that a sub-app's commands are built one by one on first use too (`planctl --help`
    needs only the groups' help)."""
    import copy
    import importlib

    import typer.main

    if callable(where):
        target = where()
    else:
        module, attribute = where.split(":")
        target = getattr(importlib.import_module(f"planctl.cli.{module}"), attribute)
    holder = typer.Typer()
    if not isinstance(target, typer.Typer):
        holder.command(name)(target)
        return typer.main.get_command_from_info(
            holder.registered_commands[0], pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=group.rich_markup_mode)
    assert not target.registered_groups, f"{name}: a sub-app of a sub-app is not built lazily"
    bare = copy.copy(target)  # the group itself, its callback included, without its commands
    bare.registered_commands = []
    holder.add_typer(bare, name=name)
    built = typer.main.get_group_from_info(
        holder.registered_groups[0], pretty_exceptions_short=app.pretty_exceptions_short,
        suggest_commands=group.suggest_commands, rich_markup_mode=group.rich_markup_mode)
    built.commands = _LazyCommands({
        info.name or typer.main.get_command_name(info.callback.__name__): functools.partial(
            typer.main.get_command_from_info, info, pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=group.rich_markup_mode)
        for info in target.registered_commands})
    return built
