"""End to end: the installed `planctl` executable as a real subprocess on a temporary database.

A handful of runs (each about half a second) covering what CliRunner cannot
see: the console script and `python -m planctl`, database selection through
`--db`, PLANCTL_DB and PLANCTL_HOME, file permissions of a new database, and
the one-line error contract (SPEC §8) on real stdout/stderr and exit codes.
The autouse fixture in conftest.py already points PLANCTL_HOME at tmp_path.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from planctl import __version__

PLANCTL = Path(sys.executable).parent / ("planctl.exe" if os.name == "nt" else "planctl")
pytestmark = pytest.mark.skipif(
    not PLANCTL.is_file(),
    reason=f"no installed 'planctl' console script next to {sys.executable} (pip install -e .)",
)

SAMPLE_SLUGS = sorted(
    p["slug"] for p in tomllib.loads(files("planctl").joinpath("data/sample_catalog.toml").read_text("utf-8"))["plans"]
)


def run(*args: str, env: dict[str, str] | None = None, exe: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run planctl with the (hermetic) test environment plus `env`; umask 022 like a normal login."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("_PLANCTL_", "_TYPER_"))}
    full_env.update(env or {})
    return subprocess.run(
        [*(exe or [str(PLANCTL)]), *args],
        env=full_env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: os.umask(0o022)) if os.name == "posix" else None,
    )


def _slugs(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list)
    return sorted(row["slug"] for row in rows)


def _assert_one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.stdout == "", f"errors must not write to stdout: {proc.stdout!r}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines}"
    return lines[0]


def test_sample_catalog_has_six_plans() -> None:
    assert len(SAMPLE_SLUGS) == 6, SAMPLE_SLUGS


def test_fresh_database_via_db_flag_lists_the_sample_catalog(tmp_path: Path) -> None:
    db = tmp_path / "flag.db"
    assert run("--db", str(db), "db", "init").returncode == 0
    assert _slugs(run("--db", str(db), "plans", "list", "--json")) == SAMPLE_SLUGS
    assert db.is_file()
    assert not (tmp_path / "home" / "planctl.db").exists(), "--db must win over PLANCTL_HOME"


def test_fresh_database_via_planctl_db_env(tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    assert run("accounts", "create", "acme", env={"PLANCTL_DB": str(db)}).returncode == 0  # a writer creates it
    assert _slugs(run("plans", "list", "--json", env={"PLANCTL_DB": str(db)})) == SAMPLE_SLUGS
    assert db.is_file()
    assert not (tmp_path / "home" / "planctl.db").exists(), "PLANCTL_DB must win over PLANCTL_HOME"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_default_database_is_private(tmp_path: Path) -> None:
    home = tmp_path / "not" / "yet" / "home"
    assert _slugs(run("plans", "list", "--json", env={"PLANCTL_HOME": str(home)})) == SAMPLE_SLUGS
    db = home / "planctl.db"
    assert db.is_file()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700, oct(home.stat().st_mode)
    for path in home.iterdir():  # the database and any -wal/-shm left behind
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name}: {oct(path.stat().st_mode)}"


def test_python_dash_m_version() -> None:
    proc = run("--version", exe=[sys.executable, "-m", "planctl"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"planctl {__version__}"


def test_not_found_is_one_plain_line_and_exit_3(tmp_path: Path) -> None:
    run("--db", str(tmp_path / "t.db"), "db", "init")
    line = _assert_one_error_line(run("--db", str(tmp_path / "t.db"), "plans", "show", "nope"), 3)
    assert line.startswith("error:"), line
    assert "nope" in line


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--json", "plans", "show", "nope"], id="global-json"),
        pytest.param(["plans", "show", "nope", "--json"], id="command-json"),
    ],
)
def test_not_found_with_json_is_one_json_line(tmp_path: Path, argv: list[str]) -> None:
    run("--db", str(tmp_path / "t.db"), "db", "init")
    line = _assert_one_error_line(run("--db", str(tmp_path / "t.db"), *argv), 3)
    error = json.loads(line)
    assert isinstance(error, dict) and {"error", "message"} <= error.keys(), error
    assert "nope" in error["message"]


def test_database_in_a_missing_directory_is_bad_input() -> None:
    missing = Path("/nonexistent-dir/x.db")
    if missing.parent.exists():
        pytest.skip(f"{missing.parent} exists on this machine")
    line = _assert_one_error_line(run("--db", str(missing), "accounts", "create", "acme"), 2)
    assert str(missing) in line, line
    assert not missing.parent.exists()
