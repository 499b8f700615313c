"""The planctl command line: one Typer app, sub-commands by noun (a module of cli/ each).

`main` is the console-script entry point. The app itself (`app`, its root group
`PlanctlGroup`, the table of commands `COMMANDS`) is in cli/commands.py, imported
on first use, so that `planctl --version` answers before Typer is imported.
"""

from __future__ import annotations

import os
import sys

_FROM_COMMANDS = ("app", "COMMANDS", "GLOBAL_FLAGS", "PlanctlGroup")


def main() -> None:
    """Console-script entry point."""
    if sys.argv[1:] == ["--version"] and "_PLANCTL_COMPLETE" not in os.environ:
        print(version())
        return
    from planctl.cli.commands import app

    app(prog_name="planctl")


def version() -> str:
    from planctl import __version__

    return f"planctl {__version__}"


def __getattr__(name: str) -> object:  # (no `typing` import: it costs more than the rest)
    """`from planctl.cli import app` imports the command tree."""
    if name in _FROM_COMMANDS:
        from planctl.cli import commands

        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
