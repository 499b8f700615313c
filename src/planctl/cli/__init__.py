"""The planctl command line: one Typer app, sub-commands by noun.

`app` is the Typer application; `main` is the console-script entry point.
Domain errors are turned into one stderr line and a documented exit code here,
in one place (`PlanctlGroup.invoke`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from typing import Annotated, Any, NoReturn, Optional

import typer
from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption, UsageError
from typer.core import TyperGroup

from planctl import __version__
from planctl.cli.context import State, env_flag
from planctl.domain.errors import ExitCode, PlanctlError


GLOBAL_FLAGS = ("--json", "--no-color", "--no-input", "--wide")  # also accepted after the sub-command
_NEGATIVE = re.compile(r"-\d[\d_.,]*")


class PlanctlGroup(TyperGroup):
    """The root group: maps every error raised below it to an exit code."""

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
        print(f"planctl {__version__}")
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


def _register() -> None:
    from planctl.cli import (accounts, admin, catalog, demo, discounts, invoices, keys, metering, plans, reporting, sales,
                             serve, upstreams)

    app.add_typer(plans.app, name="plans")
    app.add_typer(plans.products_app, name="products")
    app.add_typer(catalog.models_app, name="models")
    app.add_typer(catalog.aliases_app, name="aliases")
    app.add_typer(catalog.groups_app, name="groups")
    app.add_typer(accounts.app, name="accounts")
    for command in (sales.buy, sales.renew, sales.upgrade, sales.topup, sales.refund):
        app.command(command.__name__)(command)
    app.add_typer(sales.subscriptions_app, name="subscriptions")
    app.add_typer(sales.orders_app, name="orders")
    app.add_typer(sales.extra_app, name="extra")
    app.add_typer(discounts.app, name="discounts")
    app.add_typer(invoices.app, name="invoices")
    app.add_typer(keys.app, name="keys")
    app.command("authorize")(metering.authorize)
    metering.usage_app.callback()(reporting.usage)
    metering.usage_app.command("prune")(reporting.prune)
    app.add_typer(metering.usage_app, name="usage")
    app.command("health")(reporting.health)
    app.add_typer(metering.limits_app, name="limits")
    app.add_typer(metering.reservations_app, name="reservations")
    app.add_typer(admin.db_app, name="db")
    app.add_typer(admin.config_app, name="config")
    app.command("audit")(admin.audit)
    app.command("demo")(demo.demo)
    app.add_typer(upstreams.app, name="upstreams")
    app.command("serve")(serve.serve)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="planctl")
