"""`planctl upstreams …`: stored in the database, secrets never stored nor printed."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import assert_refused, db_dump
from helpers.fake_upstream import FakeUpstream

SECRET = "sk-upstream-very-secret-1234"


def test_add_list_show_edit_disable_enable_remove(cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_KEY", SECRET)
    added = cli.json("upstreams", "add", "openai", "--base-url", "https://api.example.com/v1/", "--key-env",
                     "OPENAI_KEY", "--models", "gpt-5*", "--models", "unit", "--api", "responses", "--priority", "2",
                     "--weight", "3")
    assert added == {"name": "openai", "base_url": "https://api.example.com/v1", "key_env": "OPENAI_KEY",
                     "key_file": None, "secret_from": "env:OPENAI_KEY", "models": ["gpt-5*", "unit"],
                     "apis": ["responses"], "priority": 2, "weight": 3, "enabled": True, "healthy": True,
                     "last_error": None, "checked_at": None,
                     "state": "no reports", "error_rate": None, "latency_ms": None, "workers": 0}
    cli.ok("upstreams", "add", "backup", "--base-url", "http://127.0.0.1:9/v1", "--key-file", "/etc/key")
    assert [u["name"] for u in cli.json("upstreams", "list")] == ["backup", "openai"]  # the order they are tried
    edited = cli.json("upstreams", "edit", "openai", "--priority", "0", "--api", "responses,chat")
    assert (edited["priority"], edited["apis"], edited["weight"]) == (0, ["responses", "chat"], 3)
    cli.ok("upstreams", "disable", "openai")
    assert cli.json("upstreams", "show", "openai")["enabled"] is False
    cli.ok("upstreams", "enable", "openai")
    assert cli.json("upstreams", "show", "openai")["enabled"] is True
    text = cli.ok("upstreams", "list").stdout + cli.ok("upstreams", "show", "openai").stdout
    assert "env:OPENAI_KEY" in text and SECRET not in text
    assert all(SECRET not in line for line in db_dump(db_url))  # never stored
    cli.ok("upstreams", "remove", "backup", "--yes")
    assert [u["name"] for u in cli.json("upstreams", "list")] == ["openai"]
    audit = cli.json("audit")
    assert {"upstream:openai", "upstream:backup"} <= {a["target"] for a in audit}


def test_bad_upstream_input_is_refused_and_changes_nothing(cli: Any, db_url: str) -> None:
    cli.ok("upstreams", "add", "openai", "--base-url", "https://api.example.com/v1", "--key-env", "K")
    assert_refused(cli, db_url, [
        (("upstreams", "add", "x", "--base-url", "ftp://h/v1", "--key-env", "K"), 2, "invalid base URL"),
        (("upstreams", "add", "x", "--base-url", "https://h/v1"), 2, "needs its secret"),
        (("upstreams", "add", "x", "--base-url", "https://h/v1", "--key-env", "K", "--key-file", "f"), 2, "not both"),
        (("upstreams", "add", "x", "--base-url", "https://h/v1", "--key-env", "K", "--api", "claude"), 2,
         "unknown API type"),
        (("upstreams", "add", "x", "--base-url", "https://h/v1", "--key-env", "K", "--weight", "0"), 2, "weight"),
        (("upstreams", "add", "Bad Name", "--base-url", "https://h/v1", "--key-env", "K"), 2, "invalid upstream name"),
        (("upstreams", "add", "openai", "--base-url", "https://h/v1", "--key-env", "K"), 6, "upstream_exists",
         "already exists"),
        (("upstreams", "show", "nope"), 3, "unknown upstream"),
        (("upstreams", "edit", "nope", "--weight", "2"), 3, "unknown upstream"),
        (("upstreams", "remove", "nope", "--yes"), 3, "unknown upstream"),
    ])


def test_test_sends_one_tiny_request_and_records_health(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", SECRET)
    fake = FakeUpstream(key=SECRET).start()
    try:
        cli.ok("upstreams", "add", "fake", "--base-url", fake.base_url, "--key-env", "UP_KEY")
        result = cli.json("upstreams", "test", "fake")
        assert result["ok"] is True and result["status"] == 200 and result["latency_ms"] >= 0
        assert fake.requests[-1].body["max_output_tokens"] == 16
        fake.key = "sk-another"
        failed = cli("upstreams", "test", "fake", "--json")
        assert failed.exit_code == 1 and '"status": 401' in failed.stdout and SECRET not in failed.stdout
        shown = cli.json("upstreams", "show", "fake")
        assert shown["healthy"] is False and shown["checked_at"]
    finally:
        fake.stop()


def test_serve_refuses_bad_options_before_starting(cli: Any, db_url: str) -> None:
    assert_refused(cli, db_url, [
        (("serve", "--log-format", "xml"), 2, "unknown log format"),
        (("serve", "--workers", "0"), 2, "--workers must be"),
        (("serve", "--port", "70000"), 2, "--port 1-65535"),
        (("serve", "--default-output-tokens", "0"), 2, "--default-output-tokens"),
        (("serve", "--max-reserve", "0"), 2, None, "credit"),
        (("serve", "--max-body-mib", "0"), 2, "--max-body-mib"),
        (("serve", "--max-concurrent-per-key", "-1"), 2, "--max-concurrent-per-key"),
        (("serve", "--journal", "/tmp/j", "--no-journal"), 2, "--no-journal"),
    ])
