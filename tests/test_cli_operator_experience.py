"""Issue 13: names people can read, listings that fit, prompts that say what will happen.

Tables are checked with a Rich console of a fixed width (COLUMNS=80 and 160); prompts and an
interrupted import run planctl as a real subprocess (prompts on a pseudo-terminal).
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from helpers import Cli, NOW, assert_refused, db_dump

PLANCTL = Path(sys.executable).with_name("planctl")
LONG = "Acme Research Laboratories International Holdings"
PRO, TEAM = "codex-pro-monthly", "codex-team-monthly"


def at(cli: Cli, width: int, *args: str, when: Any = NOW) -> Any:
    """planctl at a terminal `width` columns wide (time frozen at `when`)."""
    from planctl.cli import app

    with freeze_time(when):
        return cli.runner.invoke(app, ["--db", cli.db_location, *args], env={"COLUMNS": str(width)},
                                 catch_exceptions=False)


def js(cli: Cli, *args: str, when: Any = NOW) -> Any:
    result = at(cli, 200, *args, "--json", when=when)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def shop(cli: Cli) -> dict[str, Any]:
    """A long-named team with a plan, team keys with long names, usage, an extra pack and an invoice."""
    acc = js(cli, "accounts", "create", LONG)
    sale = js(cli, "buy", TEAM, "--account", LONG)
    made = js(cli, "keys", "create", "--from-plan", TEAM, "--account", LONG, "--quantity", "12",
              "--name", "continuous-integration-runner-with-a-long-name")
    js(cli, "extra", "buy", "extra-50", "--account", LONG)
    js(cli, "topup", LONG, "12.5")
    js(cli, "invoices", "issue", sale["order"]["id"])
    js(cli, "discounts", "create", "SPRING15", "--value", "15%", "--plan", TEAM, "--until", "2027-04-01")
    js(cli, "usage", "record", "--request-id", "req-long-0001", "--key", made[0]["id"], "--model", "gpt-5.4",
       "--input", "1234", "--output", "321", "--status", "200", "--latency-ms", "850", "--stream")
    return {"account": acc, "sale": sale, "keys": made, "sub": sale["subscription"]["id"]}


# ---------------------------------------------------------------- listings that fit

LISTINGS = [
    (("accounts", "list"), ("id",)),
    (("keys", "list"), ("id", "key", "plan")),
    (("subscriptions", "list"), ("id", "plan")),
    (("orders", "list"), ("id", "item")),
    (("invoices", "list"), ("number", "order_id")),
    (("usage",), ("request_id",)),
    (("extra", "list", "--account", LONG), ("product",)),
    (("plans", "list"), ("slug",)),
    (("products", "list"), ("slug",)),
    (("discounts", "list"), ("code",)),
    (("audit",), ()),
]


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize(("command", "whole"), LISTINGS, ids=[" ".join(c) for c, _ in LISTINGS])
def test_every_listing_fits_and_keeps_ids_whole(cli: Cli, shop: Any, width: int, command: tuple[str, ...],
                                                whole: tuple[str, ...]) -> None:
    table = at(cli, width, *command)
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= width, table.stdout
    rows = js(cli, *command)
    for row in rows:
        for field in whole:  # ids, key prefixes and slugs are never wrapped or cut
            if row.get(field):
                assert str(row[field]) in table.stdout, (field, row[field], table.stdout)


def test_a_narrow_table_leaves_out_columns_in_the_documented_order(cli: Cli, shop: Any) -> None:
    narrow = at(cli, 80, "keys", "list")
    header = narrow.stdout.splitlines()[1]
    assert [h in header for h in ("Id", "Name", "Key", "Usable")] == [True] * 4
    assert "Last used" not in header and "Subscription" not in header
    assert narrow.stderr.strip().endswith("--wide shows every column)")
    assert "Last used, " not in narrow.stderr and narrow.stderr.index("Subscription") < narrow.stderr.index("Last used")
    wide = at(cli, 80, "keys", "list", "--wide")  # after the sub-command too
    assert all(h in wide.stdout for h in ("Last used", "Subscription", "Account", "Cap")) and wide.stderr == ""
    roomy = at(cli, 160, "keys", "list")
    assert "Account" in roomy.stdout.splitlines()[1] and "Usable" in roomy.stdout.splitlines()[1]


def test_fit_columns_drops_highest_rank_first_and_never_the_ids() -> None:
    from planctl.cli.output import Column, fit_columns

    columns = [Column("id", kind="id"), Column("name"), Column("a", kind="id", drop=1), Column("b", kind="id", drop=3),
               Column("c", kind="id", drop=2)]
    cells = [["key_0123456789", "a rather long name", "x" * 20, "y" * 20, "z" * 20]]
    assert fit_columns(columns, cells, 200) == [0, 1, 2, 3, 4]
    assert fit_columns(columns, cells, 70) == [0, 1, 2]  # b (3), then c (2) left out
    assert fit_columns(columns, cells, 10) == [0, 1]  # never the columns without a rank


# ---------------------------------------------------------------- names beside ids, usable keys


def test_names_beside_ids_in_listings_json_and_csv(cli: Cli, shop: Any) -> None:
    assert {s["account_name"] for s in js(cli, "subscriptions", "list")} == {LONG}
    assert {o["account_name"] for o in js(cli, "orders", "list")} == {LONG}
    assert {i["account_name"] for i in js(cli, "invoices", "list")} == {LONG}
    keys = js(cli, "keys", "list")
    assert all(k["account_name"] == LONG and k["account_id"] == shop["account"]["id"] for k in keys)
    record = js(cli, "usage", "--since", "1d")[0]
    assert (record["key_name"], record["account_name"], record["key_id"]) == (
        shop["keys"][0]["name"], LONG, shop["keys"][0]["id"])
    csv_head = at(cli, 80, "usage", "--csv").stdout.splitlines()[0].split(",")
    assert {"key_name", "account_name", "key_id"} <= set(csv_head)


def test_keys_list_says_whether_a_key_is_usable_now_and_why_not(cli: Cli, shop: Any) -> None:
    first, second, third = (k["id"] for k in shop["keys"][:3])
    js(cli, "keys", "disable", first)
    js(cli, "keys", "edit", second, "--expires", "1d")
    usable = {k["id"]: (k["usable"], k["unusable_reason"]) for k in js(cli, "keys", "list")}
    assert usable[first] == (False, "key_disabled") and usable[second] == (True, None)
    later = {k["id"]: k["unusable_reason"] for k in js(cli, "keys", "list", when=NOW + timedelta(days=2))}
    assert later[second] == "key_expired" and later[third] is None
    expired = {k["id"]: k["unusable_reason"] for k in js(cli, "keys", "list", when=NOW + timedelta(days=40))}
    assert expired[third] == "subscription_expired" and expired[first] == "key_disabled"
    js(cli, "refund", shop["sale"]["order"]["id"], "--yes", "--amount", "1", "--reason", "test")
    refunded = js(cli, "refund", shop["sale"]["order"]["id"], "--yes")
    assert refunded["cancelled_subscription"] == shop["sub"]
    after = {k["id"]: k["unusable_reason"] for k in js(cli, "keys", "list")}
    assert after[third] == "subscription_refunded"
    assert "no: subscription refunded" in at(cli, 160, "keys", "show", third).stdout


def test_subscriptions_show_summarises_its_keys(cli: Cli, shop: Any) -> None:
    js(cli, "keys", "disable", shop["keys"][0]["id"])
    shown = js(cli, "subscriptions", "show", shop["sub"])
    assert shown["keys_total"] == 13 and shown["key_counts"] == {"active": 12, "disabled": 1}
    assert len(shown["keys"]) == 10 and shown["account_name"] == LONG
    table = at(cli, 200, "subscriptions", "show", shop["sub"]).stdout
    assert "13 (12 active, 1 disabled)" in table
    assert f"3 more: planctl keys list --subscription {shop['sub']}" in table


def test_account_packs_and_payg_balance(cli: Cli, shop: Any) -> None:
    js(cli, "extra", "buy", "extra-50", "--account", LONG, when=NOW + timedelta(days=1))
    shown = js(cli, "accounts", "show", LONG)
    assert shown["payg_balance"] == "12.500000" and shown["extra_remaining"] == "100.000000"
    assert [p["draw_order"] for p in shown["extra_packs"]] == [1, 2]
    packs = js(cli, "extra", "list", "--account", LONG)
    assert packs == shown["extra_packs"] and packs[0]["expires_at"] < packs[1]["expires_at"]
    assert all(p["remaining"] == "50.000000" and p["status"] == "active" for p in packs)
    table = at(cli, 120, "accounts", "show", LONG).stdout
    assert "#1 extra-50: 50.00 left" in table and "PAYG balance" in table
    gone = js(cli, "extra", "list", "--account", LONG, when=NOW + timedelta(days=400))
    assert [(p["status"], p["draw_order"]) for p in gone] == [("expired", None), ("expired", None)]


def test_usage_request_id_has_full_precision_and_human_labels(cli: Cli, shop: Any) -> None:
    record = js(cli, "usage", "--request-id", "req-long-0001")
    table = at(cli, 160, "usage", "--request-id", "req-long-0001").stdout
    assert "Cost (credit)" in table and record["cost"] in table  # all six decimals
    assert "Latency (ms)" in table and "Streamed" in table and "yes" in table
    assert "Latency Ms" not in table and "Ttfb Ms" not in table and "True" not in table
    assert LONG in table and shop["keys"][0]["name"] in table


# ---------------------------------------------------------------- one resolver, did you mean


def test_one_resolver_for_every_command(cli: Cli, shop: Any) -> None:
    js(cli, "accounts", "create", "alpha")
    for args in (("accounts", "show", "a"), ("usage", "--account", "a"), ("keys", "list", "--account", "a"),
                 ("orders", "list", "--account", "a")):
        result = at(cli, 80, *args)
        assert result.exit_code == 2 and "too short to pick one account" in result.stderr, (args, result.stderr)
    for args in (("accounts", "show", "alp"), ("usage", "--account", "alp"), ("keys", "list", "--account", "alp")):
        assert at(cli, 80, *args).exit_code == 0, args
    js(cli, "accounts", "create", "alphabet")
    for args in (("accounts", "show", "alp"), ("usage", "--account", "alp")):
        result = at(cli, 80, *args)
        assert result.exit_code == 2 and "matches several accounts: " in result.stderr, result.stderr
        assert "alpha (" in result.stderr and "alphabet (" in result.stderr


def test_did_you_mean(cli: Cli, shop: Any, db_url: str) -> None:
    assert_refused(cli, db_url, [
        (("accounts", "show", "Acme Research Laboratories Internationl Holdings"), 3, "not_found",
         f"did you mean {LONG!r}?"),
        (("buy", "codex-pro-montly", "--account", LONG), 3, "not_found", "did you mean 'codex-pro-monthly'"),
        (("keys", "show", shop["keys"][0]["name"][:-1] + "#"), 3, "not_found",
         f"did you mean {shop['keys'][0]['name']!r}"),
        (("plans", "show", "codex-ultra"), 3, "not_found", "see 'planctl plans list'"),
    ])


def test_products_upstreams_groups_models_and_codes_go_through_the_resolver(cli: Cli, shop: Any, db_url: str) -> None:
    assert js(cli, "products", "show", "extra-20")["slug"] == "extra-200"  # a unique prefix, like a plan's
    js(cli, "upstreams", "add", "openai", "--base-url", "https://api.example.com/v1", "--key-env", "K")
    assert js(cli, "upstreams", "show", "open")["name"] == "openai"
    assert js(cli, "discounts", "show", "spring15")["code"] == "SPRING15"  # codes ignore case
    assert_refused(cli, db_url, [
        (("accounts", "create", "beta", "--group", "prio"), 3, "not_found", "unknown group 'prio'"),  # named in full
        (("accounts", "create", "beta", "--group", "priorty"), 3, "not_found", "did you mean 'priority'?"),
        (("aliases", "set", "x*", "gpt-5"), 3, "not_found", "unknown model 'gpt-5'"),  # gpt-5.4 is another model
        (("discounts", "show", "SPRING"), 3, "not_found", "unknown discount code 'SPRING'; see"),  # no prefix
        (("discounts", "show", "SPRING16"), 3, "not_found", "unknown discount code 'SPRING16'; see"),  # no hint
        (("upstreams", "remove", "op", "--yes"), 2, None, "too short to pick one upstream"),
    ])


# ---------------------------------------------------------------- safety rails


def test_reading_a_database_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "dya.db"
    cli = Cli(str(missing), init=False)
    for args in (("accounts", "list"), ("usage", "--since", "1h"), ("plans", "list", "--json"), ("health",)):
        result = cli(*args)
        assert result.exit_code == 3 and "planctl db init" in result.stderr and result.stdout == "", args
        assert len(result.stderr.splitlines()) == 1
    assert not missing.exists()
    assert "created" in cli.ok("db", "init").stderr and missing.exists()
    assert "is ready" in cli.ok("db", "init").stderr
    assert cli.json("accounts", "list") == []
    writer = tmp_path / "w.db"
    Cli(str(writer), init=False).ok("accounts", "create", "acme")  # writers still create it
    assert writer.exists()


def test_unknown_code_with_ignore_invalid_code_sells_at_list_price(cli: Cli, db_url: str) -> None:
    js(cli, "accounts", "create", "acme")
    assert_refused(cli, db_url, [(("buy", PRO, "--account", "acme", "--code", "NOPE"), 3, "--ignore-invalid-code")])
    sale = js(cli, "buy", PRO, "--account", "acme", "--code", "NOPE", "--ignore-invalid-code")
    assert sale["order"]["discount_code"] is None and sale["order"]["payable"] == sale["order"]["list_price"]
    assert any("unknown discount code 'NOPE'" in n and "list price" in n for n in sale["notes"])


def test_an_already_expired_discount_code_needs_force(cli: Cli, db_url: str) -> None:
    assert_refused(cli, db_url, [
        (("discounts", "create", "OLD10", "--value", "10%", "--until", "2026-01-01"), 4, "discount_already_expired",
         "--force"),
    ], when=NOW)
    assert js(cli, "discounts", "create", "OLD10", "--value", "10%", "--until", "2026-01-01", "--force")["code"] == "OLD10"


def test_negative_numbers_and_root_usage(cli: Cli, db_url: str) -> None:
    js(cli, "accounts", "create", "acme")
    before = db_dump(db_url)
    for args in (("topup", "acme", "-5"), ("topup", "acme", "-0.5")):
        result = cli(*args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "must not be negative" in result.stderr and "No such option" not in result.stderr
    assert db_dump(db_url) == before
    from planctl.cli import app

    bare = cli.runner.invoke(app, [])
    assert bare.exit_code == 0 and "Usage: planctl" in bare.stdout and "Commands:" in bare.stdout
    group = cli.runner.invoke(app, ["keys"])
    assert group.exit_code == 0 and "revoke" in group.stdout
    for args in (["bogus"], ["--bogus"]):
        wrong = cli.runner.invoke(app, args)
        assert wrong.exit_code == 2 and wrong.stderr.count("\n") == 1 and wrong.stderr.startswith("error: ")


def test_global_flags_also_work_after_the_sub_command(cli: Cli, shop: Any) -> None:
    assert "\x1b[" not in at(cli, 80, "keys", "list", "--no-color").stdout
    refused = cli("keys", "revoke", shop["keys"][0]["id"], "--no-input")
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr
    assert json.loads(cli("db", "check", "--json").stdout)  # a command's own --json is its own
    error = cli("accounts", "show", "nobody-at-all", "--json")  # the global one changes how errors look
    assert error.exit_code == 3 and json.loads(error.stderr)["error"] == "not_found"
    audit = cli("audit", "--since", "1d", "--wide")
    assert audit.exit_code == 0, audit.stderr


def test_demo_progress_ends_at_100_percent(capsys: Any) -> None:
    from planctl.cli.context import State
    from planctl.cli.demo import _Progress

    progress = _Progress(State())
    progress.EVERY = 0
    progress(500, 1000)
    progress(1000, 1000)
    progress.finish()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("demo: 500 of 1,000 records (50 %") and lines[-1] == "demo: 1,000 of 1,000 records (100 %)"
    quiet = _Progress(State())  # a short run printed nothing: it prints no 100 % line either
    quiet.finish()
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- real processes: prompts, interrupted import


def on_terminal(args: list[str], answer: str, env: dict[str, str]) -> tuple[int, str]:
    """Run planctl with stdin/stdout/stderr on a pseudo-terminal; answer the prompt; (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: planctl on the terminal
        os.execve(str(PLANCTL), [str(PLANCTL), *args], env)
    output, answered, deadline = b"", False, time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"[y/N]" in output:
                os.write(fd, answer.encode() + b"\r")
                answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def _env(db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_PLANCTL_", "_TYPER_"))}
    return {**env, "PLANCTL_DB": db, "TERM": "xterm", "NO_COLOR": "1"}


def test_declined_refund_says_what_would_have_happened_and_exits_7(cli: Cli, db_url: str) -> None:
    if "://" in db_url:
        pytest.skip("a subprocess on the SQLite file is enough")
    js(cli, "accounts", "create", "acme")
    sale = cli.json("buy", PRO, "--account", "acme")  # now: the subprocess runs at the real time
    cli.json("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci", "--quantity", "2")
    before = db_dump(db_url)
    code, out = on_terminal(["refund", sale["order"]["id"]], "n", _env(db_url))
    assert code == 7, out
    assert f"Refund 299.00 CNY of order {sale['order']['id']} ({PRO}, paid 299.00 CNY)?" in out
    assert f"Subscription {sale['subscription']['id']} is cancelled and its 3 active key(s) stop working" in out
    assert "declined: nothing was changed" in out
    assert db_dump(db_url) == before


def test_declined_revoke_names_the_keys(cli: Cli, db_url: str) -> None:
    if "://" in db_url:
        pytest.skip("a subprocess on the SQLite file is enough")
    js(cli, "accounts", "create", "acme")
    made = js(cli, "keys", "create", "--payg", "--account", "acme", "--name", "wallet")
    before = db_dump(db_url)
    code, out = on_terminal(["keys", "revoke", "wallet"], "n", _env(db_url))
    assert code == 7 and f"wallet ({made[0]['key']})" in out and "declined: nothing was changed" in out, out
    assert db_dump(db_url) == before
    code, out = on_terminal(["keys", "revoke", "wallet"], "y", _env(db_url))
    assert code == 0 and js(cli, "keys", "show", "wallet")["status"] == "revoked", out


def test_interrupted_import_reports_what_was_committed(cli: Cli, db_url: str, tmp_path: Path) -> None:
    if "://" in db_url:
        pytest.skip("a subprocess on the SQLite file is enough")
    js(cli, "accounts", "create", "acme")
    key = js(cli, "keys", "create", "--payg", "--account", "acme", "--name", "wallet")[0]["id"]
    js(cli, "topup", "acme", "1000")
    lines = [json.dumps({"request_id": f"req-{n:04d}", "key": key, "model": "gpt-5.4", "input_tokens": 10,
                         "output_tokens": 5, "status": 200}) + "\n" for n in range(40)]
    proc = subprocess.Popen([str(PLANCTL), "usage", "import", "-", "--batch-size", "10"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(db_url))
    assert proc.stdin is not None
    proc.stdin.write("".join(lines[:25]))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while len(js(cli, "usage", "--all")) < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # as `kill` does; Ctrl-C takes the same path
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: 20 new and 0 duplicate lines were committed" in err and "re-running the same file is safe" in err
    assert len(js(cli, "usage", "--all")) == 20
    source = tmp_path / "all.jsonl"
    source.write_text("".join(lines))
    again = js(cli, "usage", "import", str(source))
    assert (again["new"], again["duplicate"]) == (20, 20)
