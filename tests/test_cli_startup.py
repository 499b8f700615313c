"""Start-up stays fast, and every command's help shows an example.

SPEC §11: `planctl --help` and `planctl --version` must not import the database
stack (sqlalchemy, sqlmodel) or httpx; commands import what they use
(ARCHITECTURE habit 12). Each case runs the real entry point in a fresh
interpreter, because an in-process check would see modules other tests loaded.

SPEC §8: help texts with examples. The walk over the command tree makes a new
command without "Example" in its help fail here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main

from planctl import __version__, cli

HEAVY = ("sqlalchemy", "sqlmodel", "httpx", "pydantic")
# the modules of cli/ that hold commands: each is imported only when one of its commands runs
COMMAND_MODULES = tuple(sorted({f"planctl.cli.{where.split(':')[0]}" for where in cli.COMMANDS.values()
                                if isinstance(where, str)}))
REPORTED = HEAVY + COMMAND_MODULES + ("typer",)

_PROBE = """
import json, sys
sys.argv = ["planctl", *{argv!r}]
from planctl.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
sys.stdout.flush()
print(json.dumps({{"exit": code, "imported": sorted(m for m in {reported!r} if m in sys.modules)}}),
      file=sys.stderr)
"""


def _probe(argv: list[str]) -> tuple[int, str, list[str]]:
    """Run planctl.cli.main(argv) in a new interpreter: exit code, stdout, heavy modules loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_PLANCTL_", "_TYPER_"))}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv, reported=REPORTED)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"probe crashed:\n{proc.stderr}"
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["exit"], proc.stdout, report["imported"]


@pytest.mark.parametrize(
    ("argv", "expected", "modules"),
    [
        pytest.param(["--help"], "Usage: planctl", COMMAND_MODULES, id="help"),
        pytest.param(["--version"], f"planctl {__version__}", (), id="version"),
        pytest.param(["--db", "x.db", "--version"], f"planctl {__version__}", (), id="version-after-an-option"),
        pytest.param(["plans", "--help"], "Usage: planctl plans", ("planctl.cli.plans",), id="plans-help"),
    ],
)
def test_startup_does_not_import_the_database_stack(argv: list[str], expected: str, modules: tuple[str, ...]) -> None:
    """Nor any command module but those it shows (the root's help lists every command)."""
    code, stdout, imported = _probe(argv)
    assert code == 0, stdout
    assert expected in stdout
    heavy = [m for m in imported if m in HEAVY]
    assert not heavy, (
        f"'planctl {' '.join(argv)}' imported {heavy} (all loaded: {imported}); "
        "import the database stack and httpx inside the commands that use them"
    )
    assert [m for m in imported if m in COMMAND_MODULES] == sorted(modules)


def test_version_alone_answers_before_typer_is_imported() -> None:
    """Scripts and package managers ask `planctl --version`: it costs little more than the interpreter."""
    assert _probe(["--version"]) == (0, f"planctl {__version__}\n", [])


def test_usage_lookup_on_a_current_database_skips_the_orm(tmp_path: Any) -> None:
    """`planctl usage --request-id` is what CI scripts call most: it reads with sqlite3 only."""
    db = tmp_path / "x.db"
    subprocess.run([sys.executable, "-m", "planctl", "--db", str(db), "db", "init"],
                   check=True, capture_output=True, timeout=60)
    code, stdout, imported = _probe(["--db", str(db), "usage", "--request-id", "nope", "--json"])
    assert code == 3, stdout
    assert not [m for m in imported if m in HEAVY], imported


@pytest.fixture(scope="module")
def sold(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A database with an account, a subscription and its key: (path, subscription id)."""
    db = str(tmp_path_factory.mktemp("sold") / "x.db")

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "planctl", "--db", db, *args], check=True,
                              capture_output=True, text=True, timeout=120).stdout

    run("accounts", "create", "acme")
    return db, json.loads(run("buy", "codex-team-monthly", "--account", "acme", "--json"))["order"]["subscription_id"]


@pytest.mark.parametrize("argv", [
    ["plans", "list"], ["accounts", "list"], ["subscriptions", "list"], ["keys", "list"], ["limits", "show", "SUB"],
    ["reservations", "list"],
], ids=lambda argv: " ".join(argv[:2]))
def test_read_only_commands_skip_the_orm(sold: tuple[str, str], argv: list[str]) -> None:
    """Issue 14: the lists people run most read with sqlite3 alone (services/listing.py), so
    they start within 300 ms; the ORM is imported only by commands that write, and of cli/
    only the module that holds the command (cli.COMMANDS)."""
    db, subscription = sold
    code, stdout, imported = _probe(["--db", db, *[subscription if a == "SUB" else a for a in argv], "--json"])
    assert code == 0, stdout
    assert json.loads(stdout) is not None
    assert not [m for m in imported if m in HEAVY], imported
    assert [m for m in imported if m in COMMAND_MODULES] == [f"planctl.cli.{cli.COMMANDS[argv[0]].split(':')[0]}"]


def _walk(cmd: Any, path: tuple[str, ...], parent: Any = None) -> Iterator[tuple[str, Any, Any]]:
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
    yield " ".join(path), cmd, ctx
    for name in sorted(getattr(cmd, "commands", {}) or {}):
        sub = cmd.commands[name]
        if not sub.hidden:
            yield from _walk(sub, (*path, name), ctx)


def _commands() -> list[tuple[str, Any, Any]]:
    from planctl.cli import app

    return list(_walk(typer.main.get_command(app), ("planctl",)))


COMMANDS = _commands()


def test_the_command_tree_is_walked() -> None:
    names = {path for path, _, _ in COMMANDS}
    assert {"planctl", "planctl plans", "planctl plans list", "planctl db path"} <= names


@pytest.mark.parametrize(("path", "cmd", "ctx"), COMMANDS, ids=[p for p, _, _ in COMMANDS])
def test_every_command_help_has_an_example(path: str, cmd: Any, ctx: Any) -> None:
    text = cmd.get_help(ctx)
    assert "Example" in text, (
        f"'{path} --help' shows no example; add 'Example: {path} …' to its docstring "
        f"(or, for a command group, to the Typer(help=…/epilog=…) of its sub-app)\n{text}"
    )
