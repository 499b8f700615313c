"""The real Codex CLI and Claude Code, headless, through a real `planctl serve` and the fake upstream.

The two clients come from npm (`.ci/run` installs them and sets PLANCTL_TEST_CLIENTS to the folder
whose `node_modules/.bin` holds `codex` and `claude`); without them these cases are skipped. Each
client's own usage report must equal what planctl recorded and charged, request by request, and a
refusal must stop the client at once instead of starting a retry storm.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.fake_upstream import FakeUpstream
from helpers.gateway import ServeProcess, UP_SECRET, add_upstream, buy, ledger_of, records

CLIENTS = os.environ.get("PLANCTL_TEST_CLIENTS")
BIN = Path(CLIENTS or "/nonexistent") / "node_modules" / ".bin"

pytestmark = pytest.mark.skipif(not (BIN / "codex").exists() or not (BIN / "claude").exists(),
                                reason="Codex CLI and Claude Code are not installed (PLANCTL_TEST_CLIENTS)")

BAD_SECRET = "sk-" + "x" * 44


@pytest.fixture
def served(db: Any, db_url: str, caller: Any) -> Iterator[tuple[ServeProcess, FakeUpstream, str, str]]:
    """A gateway process over `db` with the sample catalog's codex-pro-monthly sold to acme."""
    up = FakeUpstream(key=UP_SECRET).start()
    sub, _key, secret = buy(db, caller, slug="codex-pro-monthly")
    add_upstream(db, caller, "fake", up)
    serve = ServeProcess(db_url)
    yield serve, up, sub, secret
    serve.stop()
    up.stop()


def run_client(argv: list[str], home: Path, env: dict[str, str], timeout: float = 120) -> tuple[int, str, float]:
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(argv, cwd=home, env={"PATH": os.environ["PATH"], "HOME": str(home), **env},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, time.monotonic() - started


def codex(serve: ServeProcess, secret: str, home: Path) -> tuple[int, str, float]:
    codex_home = home / "codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model = "gpt-5.4"\nmodel_provider = "planctl"\n[model_providers.planctl]\nname = "planctl"\n'
        f'base_url = "{serve.url}/v1"\nenv_key = "PLANCTL_API_KEY"\nwire_api = "responses"\n')
    return run_client([str(BIN / "codex"), "exec", "--skip-git-repo-check", "--json", "say hi"], home,
                      {"CODEX_HOME": str(codex_home), "PLANCTL_API_KEY": secret})


def claude(serve: ServeProcess, secret: str, home: Path) -> tuple[int, str, float]:
    return run_client([str(BIN / "claude"), "-p", "--output-format", "json", "say hi"], home,
                      {"ANTHROPIC_BASE_URL": serve.url, "ANTHROPIC_API_KEY": secret})


def totals(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
    return (sum(r["input_tokens"] for r in rows), sum(r["cached_tokens"] for r in rows),
            sum(r["output_tokens"] for r in rows))


def test_codex_exec_usage_equals_what_planctl_charged(db: Any, served: Any, tmp_path: Path) -> None:
    serve, up, sub, secret = served
    code, out, _ = codex(serve, secret, tmp_path / "home")
    assert code == 0, out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    rows = records(db)
    assert rows and all(r["status_code"] == 200 and r["api"] == "responses" for r in rows)
    assert (usage["input_tokens"], usage["cached_input_tokens"], usage["output_tokens"]) == totals(rows)
    assert ledger_of(db, sub) == (sum(r["cost"] for r in rows), 0)
    assert len(up.requests) == len(rows)


def test_claude_code_usage_is_translated_once_and_billed_from_the_upstream(db: Any, served: Any,
                                                                          tmp_path: Path) -> None:
    serve, up, sub, secret = served
    code, out, _ = claude(serve, secret, tmp_path / "home")
    assert code == 0, out
    result = json.loads(out)
    assert result["is_error"] is False and result["result"] == up.text
    rows = records(db)
    assert rows and all(r["api"] == "claude" and r["billed_model"] == "gpt-5.4" for r in rows)
    fed, cached, output = totals(rows)
    shown = result["usage"]
    assert (shown["input_tokens"], shown["cache_read_input_tokens"], shown["output_tokens"]) == (
        fed - cached, cached, output)  # Anthropic's input excludes cache reads: counted once
    assert shown["cache_creation_input_tokens"] == 0
    assert ledger_of(db, sub) == (sum(r["cost"] for r in rows), 0)


def test_a_bad_key_stops_claude_code_at_once(db: Any, served: Any, tmp_path: Path) -> None:
    serve, up, _sub, _secret = served
    code, out, seconds = claude(serve, BAD_SECRET, tmp_path / "home")
    assert code != 0
    assert json.loads(out)["api_error_status"] == 401
    assert "key_unknown" in out and BAD_SECRET not in out
    assert seconds < 60, "x-should-retry: false must stop Claude Code's 3-minute retry loop"
    assert up.requests == [] and records(db) == []
