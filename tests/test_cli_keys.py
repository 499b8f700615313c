"""Keys (SPEC §4, issue 4): team keys from a plan, batches, secrets, groups, expiry,
rotation, status changes, edits, resolution, listings, pay-as-you-go keys and sub-users.

Driven through Typer's CliRunner (`cli` fixture) against a fresh, seeded database
per test, and also against PostgreSQL when PLANCTL_TEST_DATABASE_URL is set. The
CLI reads the clock, so every command runs under freezegun. Whether a secret may
be used at an instant is asked of the services directly: `services.keys.by_secret`
finds the key, `domain.keys.key_refusal` judges the key itself and
`domain.lifecycle.availability` its subscription. Refusals are checked for their
exit code, one error line on stderr (its reason code with the global --json),
nothing on stdout, and a database left exactly as it was.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from helpers import ENDS, NOW, SECRET_RE, US, assert_refused, db_dump as dump, js, refusals, run, z


PRO, LITE, DAY = "codex-pro-monthly", "codex-lite-monthly", "codex-day-pass"  # PRO: default/priority/economy
ANY_SECRET = re.compile(r"sk-[A-Za-z0-9_-]{40,}")
SUFFIXED = re.compile(r"^ci-runner-([a-z0-9]{4})$")
KEY_FIELDS = {
    "id", "name", "account_id", "kind", "subscription_id", "group", "status", "key", "prefix", "last4",
    "credit_cap", "credit_used", "daily_limit", "rpd", "expires_at", "previous_valid_until", "created_at",
    "updated_at", "last_used_at",
}
CSV_HEADER = ["id", "name", "key", "usable", "account_name", "kind", "plan", "subscription_id", "group", "status",
              "credit_cap", "credit_used", "expires_at", "last_used_at", "unusable_reason"]
LISTED_FIELDS = KEY_FIELDS | {"account_name", "plan", "usable", "unusable_reason"}


# ---------------------------------------------------------------- helpers


def ok(cli: Any, *args: str, when: datetime = NOW) -> Any:
    with freeze_time(when):
        return cli.ok(*args)


def account(cli: Any, name: str = "acme", *options: str) -> str:
    return js(cli, "accounts", "create", name, *options)["id"]


def buy(cli: Any, plan: str = PRO, acc: str = "acme", when: datetime = NOW) -> dict[str, Any]:
    """A sale; returns it with the subscription id at hand."""
    return js(cli, "buy", plan, "--account", acc, when=when)


def make(cli: Any, *args: str, when: datetime = NOW) -> list[dict[str, Any]]:
    return js(cli, "keys", "create", *args, when=when)


def one(cli: Any, *args: str, when: datetime = NOW) -> dict[str, Any]:
    made = make(cli, *args, when=when)
    assert len(made) == 1
    return made[0]


def listed(cli: Any, *args: str, when: datetime = NOW) -> list[dict[str, Any]]:
    return js(cli, "keys", "list", "--limit", "100000", *args, when=when)


def names(rows: list[dict[str, Any]]) -> set[str]:
    return {r["name"] for r in rows}


def audit(cli: Any) -> list[dict[str, Any]]:
    return js(cli, "audit", "--limit", "100000")


def usable(db: Any, secret: str, now: datetime) -> str | None:
    """Why `secret` cannot be used at `now` (None: it can): unknown, the key itself, then its subscription."""
    from planctl.domain.keys import KeyState, key_refusal
    from planctl.domain.lifecycle import availability
    from planctl.services import keys, sales
    from planctl.store.tables import Subscription

    with db.read() as session:
        key = keys.by_secret(session, secret, now)
        if key is None:
            return "unknown_key"
        reason = key_refusal(KeyState(status=key.status, expires_at=key.expires_at), now)
        if reason is None and key.subscription_id is not None:
            sub = session.get(Subscription, key.subscription_id)
            assert sub is not None
            reason = availability(sales.subscription_state(sub), now)
        return reason


def found_id(db: Any, secret: str, now: datetime) -> str | None:
    from planctl.services import keys

    with db.read() as session:
        key = keys.by_secret(session, secret, now)
        return None if key is None else key.id


def stored(db: Any, key_id: str) -> Any:
    from planctl.store.tables import ApiKey

    with db.read() as session:
        key = session.get(ApiKey, key_id)
        assert key is not None
        return key


def leaks(text: str, secret: str) -> bool:
    return secret in text or secret[7:-4] in text  # the whole secret, or its hidden middle


# ---------------------------------------------------------------- batches


def test_batch_of_200_unique_suffixed_names_in_one_account(cli: Any, db: Any) -> None:
    acc = account(cli)
    sub = buy(cli)["subscription"]["id"]
    audit_before = len(audit(cli))
    made = make(cli, "--from-plan", PRO, "--account", "acme", "--name", "ci-runner", "--quantity", "200")
    assert len(made) == 200
    assert all(SUFFIXED.match(k["name"]) for k in made), [k["name"] for k in made if not SUFFIXED.match(k["name"])]
    assert len(names(made)) == 200
    assert {(k["account_id"], k["subscription_id"], k["kind"], k["status"], k["group"]) for k in made} == {
        (acc, sub, "team", "active", "default")}
    secrets_ = [k["secret"] for k in made]
    assert all(SECRET_RE.match(s) for s in secrets_)
    assert len(set(secrets_)) == 200 and len({k["id"] for k in made}) == 200
    assert all((k["prefix"], k["last4"]) == (k["secret"][:7], k["secret"][-4:]) for k in made)
    for k in made[:20]:  # the stored digest is the SHA-256 of the secret, and nothing else identifies it
        assert stored(db, k["id"]).secret_sha256 == hashlib.sha256(k["secret"].encode()).hexdigest()
        assert found_id(db, k["secret"], NOW) == k["id"]
    assert len(audit(cli)) == audit_before + 1  # one audit entry for the whole batch
    assert names(listed(cli, "--account", "acme", "--name", "ci-runner-")) == names(made)

    more = make(cli, "--from-plan", PRO, "--account", "acme", "--name", "ci-runner", "--quantity", "50")
    assert len(names(more)) == 50 and not names(more) & names(made)  # unique across batches too


def test_names_are_unique_per_account(cli: Any, db_url: str) -> None:
    account(cli)
    account(cli, "globex")
    buy(cli)
    buy(cli, acc="globex")
    first = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "deploy")
    assert first["name"] == "deploy"
    refusals(cli, db_url, [
        (("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "deploy"), 6, "conflict",
         "already has a key named 'deploy'"),
        (("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "  deploy "), 6, "conflict",
         "deploy"),
    ])
    other = one(cli, "--from-plan", PRO, "--account", "globex", "--name", "deploy")  # another account: fine
    assert other["name"] == "deploy" and other["account_id"] != first["account_id"]
    batch = make(cli, "--from-plan", PRO, "--account", "acme", "--name", "deploy", "--quantity", "3")
    assert all(k["name"].startswith("deploy-") for k in batch)


def test_suffixes_never_repeat_a_taken_name(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the random suffix narrowed to 2 letters (16 possible names), 16 keys still get 16 names."""
    import random
    from types import SimpleNamespace

    import planctl.domain.keys as key_rules

    account(cli)
    buy(cli)
    monkeypatch.setattr(key_rules, "secrets", SimpleNamespace(choice=lambda alphabet: random.choice(alphabet[:2])))
    first = make(cli, "--from-plan", PRO, "--account", "acme", "--name", "ci", "--quantity", "10")
    second = make(cli, "--from-plan", PRO, "--account", "acme", "--name", "ci", "--quantity", "6")
    assert len(names(first) | names(second)) == 16
    assert names(first) | names(second) == {f"ci-{a}{b}{c}{d}" for a in "ab" for b in "ab" for c in "ab" for d in "ab"}


def test_a_batch_that_fails_half_way_leaves_no_key(cli: Any, db_url: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import planctl.services.keys as key_service
    from planctl.domain.secrets import new_secret as real_new_secret

    account(cli)
    buy(cli)
    keys_before, audit_before, rows_before = listed(cli), audit(cli), dump(db_url)
    calls = []

    def failing_new_secret() -> Any:
        calls.append(1)
        if len(calls) == 100:
            raise RuntimeError("entropy source went away")
        return real_new_secret()

    monkeypatch.setattr(key_service, "new_secret", failing_new_secret)
    out = tmp_path / "half.json"
    result = run(cli, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci-runner",
                 "--quantity", "200", "--secrets-file", str(out))
    assert len(calls) == 100  # it did fail half-way, after 99 keys were made
    assert result.exit_code == 1, result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert not out.exists()
    monkeypatch.undo()
    assert listed(cli) == keys_before
    assert audit(cli) == audit_before
    assert dump(db_url) == rows_before


def test_quantity_must_be_1_to_1000(cli: Any, db_url: str, tmp_path: Path) -> None:
    account(cli)
    buy(cli)
    out = tmp_path / "never.json"
    base = ("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci")
    refusals(cli, db_url, [
        ((*base, "--quantity", "0"), 2, "invalid_input", "--quantity must be between 1 and 1000"),
        ((*base, "--quantity", "1001"), 2, "invalid_input", "--quantity must be between 1 and 1000"),
        ((*base, "--quantity", "-3"), 2, "invalid_input", "--quantity"),
        ((*base, "--quantity", "1001", "--secrets-file", str(out)), 2, "invalid_input", "--quantity"),
    ])
    assert not out.exists()
    assert len(make(cli, *base[2:], "--quantity", "1000")) == 1000  # the upper bound itself is fine


# ---------------------------------------------------------------- secrets


def test_secrets_file_is_private_complete_and_never_overwritten(cli: Any, db_url: str, tmp_path: Path) -> None:
    account(cli)
    buy(cli)
    out = tmp_path / "ci-keys.json"
    result = ok(cli, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci", "--quantity", "5",
                "--secrets-file", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    written = json.loads(out.read_text())
    assert len(written) == 5 and all(SECRET_RE.match(r["secret"]) for r in written)
    assert not ANY_SECRET.search(result.stdout)  # the table names the keys, the file holds the secrets
    assert not any(leaks(result.stdout + result.stderr, r["secret"]) for r in written)
    assert {r["id"] for r in written} == {k["id"] for k in listed(cli, "--name", "ci-")}

    out2 = tmp_path / "more.json"
    as_json = js(cli, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "svc", "--quantity", "3",
                 "--secrets-file", str(out2))
    assert len(as_json) == 3 and all("secret" not in k for k in as_json)
    file_rows = json.loads(out2.read_text())
    assert [r["id"] for r in file_rows] == [k["id"] for k in as_json]
    assert [{k: v for k, v in r.items() if k != "secret"} for r in file_rows] == as_json
    for stored_key in file_rows:  # each written secret is the key's secret
        assert stored_key["prefix"] == stored_key["secret"][:7] and stored_key["last4"] == stored_key["secret"][-4:]

    content, mtime = out.read_bytes(), out.stat().st_mtime_ns
    refusals(cli, db_url, [
        (("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "again", "--secrets-file", str(out)),
         6, "conflict", "already exists"),
        (("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "again", "--quantity", "10",
          "--secrets-file", str(out)), 6, "conflict", "already exists"),
    ])
    assert out.read_bytes() == content and out.stat().st_mtime_ns == mtime
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_an_unwritable_secrets_file_creates_no_key(cli: Any, db_url: str, tmp_path: Path) -> None:
    """BUG (found by this test): the keys are committed before the file is opened, so a file that
    cannot be written leaves keys nobody has the secret of. A failed command changes nothing (§8)."""
    account(cli)
    buy(cli)
    missing = tmp_path / "no-such-dir" / "keys.json"
    refusals(cli, db_url, [
        (("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci", "--quantity", "5",
          "--secrets-file", str(missing)), 2, "invalid_input", "cannot write"),
    ])
    assert not missing.exists()


def test_secrets_are_stored_as_digests_and_shown_nowhere_later(cli: Any, db: Any, db_url: str) -> None:
    account(cli)
    sub = buy(cli)["subscription"]["id"]
    made = make(cli, "--from-plan", PRO, "--account", "acme", "--name", "svc", "--quantity", "3")
    table = ok(cli, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "table-key")
    printed = ANY_SECRET.findall(table.stdout)
    assert len(printed) == 1 and "shown once" in table.stdout  # a table on creation shows it, once
    rotated = js(cli, "keys", "rotate", made[0]["name"], "--grace", "10m")
    secrets_ = [k["secret"] for k in made] + printed + [rotated["secret"]]
    ids = [k["id"] for k in made] + [k["id"] for k in listed(cli, "--name", "table-key")]

    later = [run(cli, *args).stdout for args in (
        ("keys", "list", "--json"), ("keys", "list", "--csv"), ("keys", "list", "--jsonl"), ("keys", "list"),
        ("audit", "--json"), ("audit", "--csv"), ("subscriptions", "show", sub, "--json"),
        *[("keys", "show", i, "--json") for i in ids], *[("keys", "show", i) for i in ids])]
    assert all(out for out in later)
    for s in secrets_:
        assert not any(leaks(out, s) for out in later), s

    rows = "\n".join(dump(db_url))
    for s in secrets_:
        assert not leaks(rows, s)
    for k in made[1:]:
        assert stored(db, k["id"]).secret_sha256 == hashlib.sha256(k["secret"].encode()).hexdigest()
    assert stored(db, made[0]["id"]).secret_sha256 == hashlib.sha256(rotated["secret"].encode()).hexdigest()
    assert stored(db, made[0]["id"]).previous_sha256 == hashlib.sha256(made[0]["secret"].encode()).hexdigest()
    if "://" not in db_url:  # the raw SQLite files, write-ahead log and shared memory included
        raw = b"".join(Path(db_url + sfx).read_bytes() for sfx in ("", "-wal", "-shm") if Path(db_url + sfx).exists())
        assert hashlib.sha256(secrets_[1].encode()).hexdigest().encode() in raw  # the digest is there …
        for s in secrets_:
            assert s.encode() not in raw and s[7:-4].encode() not in raw  # … the secret is not


def test_a_pasted_secret_is_never_echoed_in_an_error(cli: Any) -> None:
    """BUG (found by this test): `keys show <full secret>` answers "unknown key 'sk-…'" with the whole
    secret on stderr, where CI logs keep it. Errors never contain a secret (issue 4)."""
    account(cli)
    buy(cli)
    secret = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "ci")["secret"]
    for args in (("keys", "show", secret), ("keys", "disable", secret), ("keys", "rotate", secret),
                 ("--json", "keys", "show", secret)):
        result = run(cli, *args)
        assert not leaks(result.stdout + result.stderr, secret), (args, result.stderr)


# ---------------------------------------------------------------- groups and --from-plan


def test_group_defaults_to_the_accounts_and_must_be_in_the_plan(cli: Any, db_url: str) -> None:
    account(cli, "acme", "--group", "economy")
    account(cli, "vip", "--group", "priority")
    buy(cli, PRO)
    lite = buy(cli, LITE)["subscription"]["id"]
    buy(cli, LITE, acc="vip")
    assert one(cli, "--from-plan", PRO, "--account", "acme", "--name", "a")["group"] == "economy"
    assert one(cli, "--from-plan", PRO, "--account", "acme", "--name", "b", "--group", "priority")["group"] == \
        "priority"
    assert one(cli, "--from-plan", lite, "--name", "c", "--group", "default")["group"] == "default"
    refusals(cli, db_url, [
        (("keys", "create", "--from-plan", lite, "--name", "d", "--group", "priority"), 4, "group_not_in_plan",
         "'priority' is not in plan codex-lite-monthly"),
        (("keys", "create", "--from-plan", LITE, "--account", "acme", "--name", "d", "--group", "priority"), 4,
         "group_not_in_plan", "--group"),
        (("keys", "create", "--from-plan", LITE, "--account", "vip", "--name", "d"), 4, "group_not_in_plan",
         "'priority' is not in plan"),  # the account's default group is not in the plan: refused, not replaced
        (("keys", "create", "--from-plan", LITE, "--account", "vip", "--name", "d", "--quantity", "20"), 4,
         "group_not_in_plan", "priority"),
    ])


def test_from_plan_by_slug_or_subscription_id(cli: Any, db_url: str) -> None:
    acc = account(cli)
    first = buy(cli)["subscription"]["id"]
    key = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "one")
    assert (key["subscription_id"], key["account_id"], key["kind"]) == (first, acc, "team")

    second = buy(cli, when=NOW + timedelta(hours=1))["subscription"]["id"]
    result = run(cli, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "two")
    assert result.exit_code == 2 and first in result.stderr and second in result.stderr, result.stderr
    assert "subscription id" in result.stderr
    refusals(cli, db_url, [
        (("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "two"), 2, "invalid_input",
         f"{first}"),
        (("keys", "create", "--from-plan", LITE, "--account", "acme", "--name", "two"), 3, "not_found",
         "no active subscription of codex-lite-monthly"),
        (("keys", "create", "--from-plan", "sub_nosuchxx", "--name", "two"), 3, "not_found", "sub_nosuchxx"),
        (("keys", "create", "--from-plan", PRO, "--name", "two"), 2, "invalid_input", "--account"),
        (("keys", "create", "--account", "acme", "--name", "two"), 2, "invalid_input", "--from-plan"),
    ])
    by_id = one(cli, "--from-plan", second, "--name", "two")  # a subscription id names its owner
    assert (by_id["subscription_id"], by_id["account_id"]) == (second, acc)
    by_id_and_account = one(cli, "--from-plan", first, "--account", "acme", "--name", "three")
    assert by_id_and_account["subscription_id"] == first


def test_from_plan_refuses_an_expired_or_cancelled_subscription(cli: Any, db_url: str) -> None:
    account(cli)
    day = buy(cli, DAY)["subscription"]
    ends = datetime.fromisoformat(day["ends_at"])
    assert ends > NOW
    last = one(cli, "--from-plan", day["id"], "--name", "last-moment", when=ends - US)
    assert last["subscription_id"] == day["id"]
    refusals(cli, db_url, [
        (("keys", "create", "--from-plan", day["id"], "--name", "late"), 4, "subscription_expired", "expired"),
        (("keys", "create", "--from-plan", DAY, "--account", "acme", "--name", "late"), 3, "not_found",
         "no active subscription"),
    ], when=ends)

    sale = buy(cli, PRO)
    ok(cli, "refund", sale["order"]["id"], "--reason", "changed mind", "--yes")
    assert js(cli, "subscriptions", "show", sale["subscription"]["id"])["status"] == "cancelled"
    refusals(cli, db_url, [
        (("keys", "create", "--from-plan", sale["subscription"]["id"], "--name", "x"), 4, "subscription_cancelled",
         "cancelled"),
        (("keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "x"), 3, "not_found",
         "no active subscription"),
    ])


# ---------------------------------------------------------------- expiry edges


def test_key_expiry_edge(cli: Any, db: Any) -> None:
    account(cli)
    buy(cli)
    expires = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
    key = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "temp", "--expires", z(expires))
    assert key["expires_at"] == z(expires)
    secret = key["secret"]
    assert usable(db, secret, NOW) is None
    assert usable(db, secret, expires - US) is None
    assert usable(db, secret, expires) == "key_expired"
    assert usable(db, secret, expires + timedelta(days=1)) == "key_expired"
    assert found_id(db, secret, expires) == key["id"]  # still recognised, just refused

    with freeze_time(expires):
        assert names(listed(cli, "--expiring-before", z(expires + US))) == {"temp"}
        assert listed(cli, "--expiring-before", z(expires)) == []


def test_an_expired_subscription_makes_any_key_unusable(cli: Any, db: Any) -> None:
    account(cli)
    buy(cli)
    later = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "long", "--expires", "90d")
    assert datetime.fromisoformat(later["expires_at"]) > ENDS  # its own expiry is after the subscription's end
    forever = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "forever")
    for k in (later, forever):
        assert usable(db, k["secret"], ENDS - US) is None
        assert usable(db, k["secret"], ENDS) == "subscription_expired"
        assert usable(db, k["secret"], ENDS + timedelta(days=30)) == "subscription_expired"
    from planctl.domain.keys import KeyState, key_refusal

    k = stored(db, later["id"])
    assert key_refusal(KeyState(k.status, k.expires_at), ENDS) is None  # the key itself has not expired


# ---------------------------------------------------------------- rotation


def test_rotation_grace_boundary_keeps_identity_and_limits(cli: Any, db: Any) -> None:
    from planctl.store.tables import ApiKey

    account(cli)
    buy(cli)
    key = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "svc", "--group", "priority", "--credit", "50",
              "--daily-limit", "10", "--rpd", "100", "--expires", "60d")
    with db.write() as session:  # some history: credit already used
        row = session.get(ApiKey, key["id"])
        row.credit_used = 1_234_567
        session.add(row)
    before = js(cli, "keys", "show", key["id"])
    assert before["credit_used"] == "1.234567"

    rotated_at = NOW + timedelta(hours=1)
    rotated = js(cli, "keys", "rotate", "svc", "--grace", "10m", when=rotated_at)
    old, new = key["secret"], rotated["secret"]
    assert SECRET_RE.match(new) and new != old
    assert rotated["id"] == key["id"] and rotated["previous_valid_until"] == z(rotated_at + timedelta(minutes=10))
    after = js(cli, "keys", "show", key["id"])
    unchanged = ("id", "name", "account_id", "kind", "subscription_id", "group", "status", "credit_cap",
                 "credit_used", "daily_limit", "rpd", "expires_at", "created_at", "last_used_at")
    assert {f: after[f] for f in unchanged} == {f: before[f] for f in unchanged}
    assert (after["prefix"], after["last4"]) == (new[:7], new[-4:]) != (before["prefix"], before["last4"])

    grace_end = rotated_at + timedelta(minutes=10)
    assert found_id(db, old, rotated_at) == key["id"]
    assert found_id(db, old, grace_end - US) == key["id"]
    assert usable(db, old, grace_end - US) is None
    assert found_id(db, old, grace_end) is None
    assert found_id(db, old, grace_end + timedelta(days=1)) is None
    assert found_id(db, new, rotated_at) == key["id"] and found_id(db, new, grace_end) == key["id"]

    # a second rotation inside the grace would cut the old secret's grace short: refused, saying when
    assert_refused(cli, cli.db_location, [(("keys", "rotate", key["id"]), 4, "rotation_grace_running",
                                           "stays valid until 2026-11-21 13:10 CST")],
                   when=grace_end - US)
    assert found_id(db, old, grace_end - US) == key["id"]
    again = grace_end  # from the end of the grace; without --grace the replaced secret stops at once
    newest = js(cli, "keys", "rotate", key["id"], when=again)["secret"]
    assert found_id(db, new, again) is None
    assert found_id(db, newest, again) == key["id"]
    assert js(cli, "keys", "show", key["id"])["previous_valid_until"] is None
    entries = [e["summary"] for e in audit(cli) if e["target"] == f"key:{key['id']}"]
    first, second = sorted((e for e in entries if "rotated" in e), key=lambda e: "until" not in e)
    assert f"old {old[:7]}…{old[-4:]} until 2026-11-21 13:10 CST" in first
    assert f"valid now: new {new[:7]}…{new[-4:]}" in first
    assert f"old {new[:7]}…{new[-4:]} stopped working" in second


# ---------------------------------------------------------------- status changes and edits


def test_disable_enable_are_reversible_and_revoke_is_final(cli: Any, db: Any, db_url: str) -> None:
    account(cli)
    buy(cli)
    key = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "svc")
    spare = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "spare")
    assert js(cli, "keys", "disable", "svc")[0]["status"] == "disabled"
    assert usable(db, key["secret"], NOW) == "key_disabled"
    assert js(cli, "keys", "enable", "svc")[0]["status"] == "active"
    assert usable(db, key["secret"], NOW) is None
    refusals(cli, db_url, [
        (("keys", "revoke", "svc"), 2, "invalid_input", "--yes"),  # no terminal: confirmation needs --yes
        (("keys", "disable", "spare", "nosuchkey"), 3, "not_found", "nosuchkey"),  # all or none
    ])
    assert js(cli, "keys", "show", "spare")["status"] == "active"
    assert usable(db, spare["secret"], NOW) is None  # the refused batch disabled nothing
    assert js(cli, "keys", "revoke", "svc", "--yes")[0]["status"] == "revoked"
    assert usable(db, key["secret"], NOW) == "key_revoked"
    refusals(cli, db_url, [
        (("keys", "enable", "svc"), 4, "key_revoked", "revocation is final"),
        (("keys", "disable", "svc"), 4, "key_revoked", "revoked"),
        (("keys", "rotate", "svc"), 4, "key_revoked", "revoked"),
        (("keys", "edit", "svc", "--credit", "5"), 4, "key_revoked", "revoked"),
    ])
    changes = [e["summary"] for e in audit(cli) if e["target"] == f"key:{key['id']}"]
    assert changes == ["svc: active -> revoked", "svc: disabled -> active", "svc: active -> disabled"]  # newest first


def test_keys_edit(cli: Any, db_url: str) -> None:
    account(cli)
    buy(cli)
    buy(cli, LITE)
    a = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "a")
    one(cli, "--from-plan", PRO, "--account", "acme", "--name", "b")
    lite = one(cli, "--from-plan", LITE, "--account", "acme", "--name", "lite")
    assert js(cli, "keys", "edit", "a", "--credit", "50")["credit_cap"] == "50.000000"
    assert js(cli, "keys", "edit", "a", "--credit", "none")["credit_cap"] is None
    edited = js(cli, "keys", "edit", "a", "--name", "a2", "--group", "priority", "--expires", "2027-01-31T00:00:00Z",
                "--rpd", "9", "--daily-limit", "3")
    assert (edited["id"], edited["name"], edited["group"], edited["expires_at"], edited["rpd"],
            edited["daily_limit"]) == (a["id"], "a2", "priority", "2027-01-31T00:00:00+00:00", 9, "3.000000")
    cleared = js(cli, "keys", "edit", "a2", "--expires", "none", "--rpd", "none", "--daily-limit", "none")
    assert (cleared["expires_at"], cleared["rpd"], cleared["daily_limit"]) == (None, None, None)
    assert js(cli, "keys", "edit", "a2", "--name", "a2")["name"] == "a2"  # its own name is no clash
    refusals(cli, db_url, [
        (("keys", "edit", "b", "--name", "a2"), 6, "conflict", "'a2'"),
        (("keys", "edit", "lite", "--group", "priority"), 4, "group_not_in_plan", "not in plan codex-lite-monthly"),
        (("keys", "edit", "lite", "--group", "nosuchgroup"), 3, "not_found", "nosuchgroup"),
        (("keys", "edit", "b"), 2, "invalid_input", "nothing to change"),
        (("keys", "edit", "b", "--expires", "2020-01-01"), 2, "invalid_input", "future"),
        (("keys", "edit", "b", "--rpd", "0"), 2, "invalid_input", "--rpd"),
        (("keys", "edit", "nosuchkey", "--credit", "5"), 3, "not_found", "nosuchkey"),
    ])
    assert js(cli, "keys", "show", lite["id"])["group"] == "default"


# ---------------------------------------------------------------- resolving KEY


def test_key_is_an_id_a_unique_name_or_a_visible_prefix(cli: Any, db_url: str) -> None:
    acme_id = account(cli)
    account(cli, "globex")
    buy(cli)
    buy(cli, acc="globex")
    unique = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "Only-Here")
    shared_a = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "shared")
    shared_g = one(cli, "--from-plan", PRO, "--account", "globex", "--name", "shared")
    assert js(cli, "keys", "show", unique["id"])["name"] == "Only-Here"
    assert js(cli, "keys", "show", "Only-Here")["id"] == unique["id"]
    assert run(cli, "keys", "show", "only-here").exit_code == 3  # names are exact
    assert js(cli, "keys", "show", unique["prefix"])["id"] == unique["id"]
    assert js(cli, "keys", "show", "shared", "--account", "acme")["id"] == shared_a["id"]
    assert js(cli, "keys", "show", "shared", "--account", "globex")["id"] == shared_g["id"]
    assert js(cli, "keys", "disable", "shared", "--account", acme_id)[0]["id"] == shared_a["id"]
    result = run(cli, "keys", "show", "shared")
    assert shared_a["id"] in result.stderr and shared_g["id"] in result.stderr
    refusals(cli, db_url, [
        (("keys", "show", "shared"), 2, "invalid_input", "matches several keys"),
        (("keys", "enable", "shared"), 2, "invalid_input", "--account"),
        (("keys", "show", "nosuchkey"), 3, "not_found", "unknown key 'nosuchkey'"),
        (("keys", "show", "Only-Here", "--account", "globex"), 3, "not_found", "Only-Here"),
    ])


# ---------------------------------------------------------------- listings


def test_list_filters(cli: Any) -> None:
    acme_id = account(cli)
    account(cli, "globex")
    pro = buy(cli)["subscription"]["id"]
    lite = buy(cli, LITE)["subscription"]["id"]
    buy(cli, acc="globex")
    runners = make(cli, "--from-plan", pro, "--name", "ci-runner", "--quantity", "3")
    one(cli, "--from-plan", pro, "--name", "ci_1", "--group", "priority")
    one(cli, "--from-plan", pro, "--name", "ci%2", "--expires", "2026-12-01T00:00:00Z")
    one(cli, "--from-plan", lite, "--name", "cix3", "--group", "economy")
    one(cli, "--from-plan", PRO, "--account", "globex", "--name", "ci-runner")
    one(cli, "--payg", "--account", "acme", "--name", "wallet")
    ok(cli, "keys", "disable", "cix3")
    runner_names = names(runners)
    sub_key = f"Subscription Access - {PRO}"

    assert names(listed(cli, "--account", "acme")) == runner_names | {
        "ci_1", "ci%2", "cix3", "wallet", sub_key, f"Subscription Access - {LITE}"}
    assert names(listed(cli, "--account", "globex")) == {"ci-runner", sub_key}
    assert names(listed(cli, "--subscription", pro)) == runner_names | {"ci_1", "ci%2", sub_key}
    assert names(listed(cli, "--subscription", lite)) == {"cix3", f"Subscription Access - {LITE}"}
    assert len(listed(cli, "--plan", PRO)) == 8  # both accounts' PRO keys
    assert names(listed(cli, "--plan", PRO, "--account", "acme")) == runner_names | {"ci_1", "ci%2", sub_key}
    assert names(listed(cli, "--plan", LITE)) == {"cix3", f"Subscription Access - {LITE}"}
    assert names(listed(cli, "--group", "priority")) == {"ci_1"}
    assert names(listed(cli, "--group", "economy")) == {"cix3"}
    assert names(listed(cli, "--status", "disabled")) == {"cix3"}
    assert "cix3" not in names(listed(cli, "--status", "active"))
    assert names(listed(cli, "--kind", "payg")) == {"wallet"}
    assert names(listed(cli, "--kind", "subscription")) == {sub_key, f"Subscription Access - {LITE}"}
    assert len(listed(cli, "--kind", "team")) == 7
    # --name: a literal prefix, or a glob with * and ?; % and _ are plain characters
    assert names(listed(cli, "--account", "acme", "--name", "ci-")) == runner_names
    assert names(listed(cli, "--account", "acme", "--name", "ci-*")) == runner_names
    assert names(listed(cli, "--name", "ci_")) == {"ci_1"}
    assert names(listed(cli, "--name", "ci_*")) == {"ci_1"}
    assert names(listed(cli, "--name", "ci%")) == {"ci%2"}
    assert names(listed(cli, "--name", "ci%*")) == {"ci%2"}
    assert names(listed(cli, "--name", "ci?[0-9]")) == set()  # no character classes: '[' is literal too
    assert names(listed(cli, "--name", "ci?3")) == {"cix3"}
    assert names(listed(cli, "--name", "*ix3")) == {"cix3"}  # random suffixes never contain i
    assert names(listed(cli, "--name", "CI-")) == set()  # case-sensitive
    assert names(listed(cli, "--expiring-before", "2026-12-01T00:00:01Z")) == {"ci%2"}
    assert listed(cli, "--expiring-before", "2026-12-01T00:00:00Z") == []
    assert names(listed(cli, "--account", acme_id, "--name", "ci*", "--status", "active", "--group", "default")) == \
        runner_names | {"ci%2"}
    rows = listed(cli)
    assert [(r["account_id"], r["name"]) for r in rows] == sorted((r["account_id"], r["name"]) for r in rows)


def test_list_json_shape_and_csv_header(cli: Any) -> None:
    acc = account(cli)
    sub = buy(cli)["subscription"]["id"]
    made = one(cli, "--from-plan", PRO, "--account", "acme", "--name", "svc", "--credit", "12.5", "--rpd", "7",
               "--expires", "2026-12-01T00:00:00Z")
    assert set(made) == KEY_FIELDS | {"secret"}
    rows = listed(cli, "--name", "svc")
    assert len(rows) == 1 and set(rows[0]) == LISTED_FIELDS
    row = rows[0]
    assert row == {"account_name": "acme", "plan": PRO, "usable": True, "unusable_reason": None,
        "id": made["id"], "name": "svc", "account_id": acc, "kind": "team", "subscription_id": sub,
        "group": "default", "status": "active", "key": f"{made['prefix']}…{made['last4']}", "prefix": made["prefix"],
        "last4": made["last4"], "credit_cap": "12.500000", "credit_used": "0.000000", "daily_limit": None, "rpd": 7,
        "expires_at": "2026-12-01T00:00:00+00:00", "previous_valid_until": None, "created_at": z(NOW),
        "updated_at": z(NOW), "last_used_at": None,
    }
    assert js(cli, "keys", "show", "svc") == row
    assert list(csv.reader(io.StringIO(ok(cli, "keys", "list", "--csv").stdout)))[0] == CSV_HEADER
    assert ok(cli, "keys", "list", "--csv", "--name", "nothing").stdout.splitlines() == [",".join(CSV_HEADER)]
    assert listed(cli, "--name", "nothing") == []


# ---------------------------------------------------------------- pay-as-you-go keys


def test_payg_keys(cli: Any, db_url: str) -> None:
    acc = account(cli, "acme", "--group", "economy")
    key = one(cli, "--payg", "--account", "acme", "--name", "wallet", "--rpd", "50")
    assert (key["kind"], key["subscription_id"], key["account_id"], key["group"], key["credit_cap"]) == (
        "payg", None, acc, "economy", None)
    assert SECRET_RE.match(key["secret"])
    batch = make(cli, "--payg", "--account", "acme", "--name", "wallet", "--quantity", "4", "--group", "priority")
    assert {(k["kind"], k["group"]) for k in batch} == {("payg", "priority")}
    refusals(cli, db_url, [
        (("keys", "create", "--payg", "--account", "acme", "--name", "w2", "--credit", "5"), 2, "invalid_input",
         "--credit"),
        (("keys", "create", "--payg", "--name", "w2"), 2, "invalid_input", "--account"),
        (("keys", "create", "--payg", "--account", "acme", "--name", "w2", "--from-plan", PRO), 2, "invalid_input",
         "--from-plan"),
        (("keys", "create", "--payg", "--account", "acme", "--name", "w2", "--group", "nosuch"), 3, "not_found",
         "nosuch"),
        (("keys", "edit", "wallet", "--credit", "5"), 2, "invalid_input", "--credit"),
        (("keys", "create", "--payg", "--account", "acme", "--name", "wallet"), 6, "conflict", "wallet"),
    ])
    assert names(listed(cli, "--kind", "payg")) == {"wallet"} | names(batch)


# ---------------------------------------------------------------- sub-users


def small_team_plan(cli: Any, slug: str = "team-small", max_subusers: str = "2") -> None:
    ok(cli, "plans", "create", slug, "--name", "Team Small", "--family", slug, "--tier", "1", "--price", "100",
       "--validity", "1mo", "--total-credit", "1000", "--model", "gpt-5.4", "--group", "default",
       "--group", "priority", "--max-subusers", max_subusers)


def test_a_plan_without_subuser_access_refuses_subusers(cli: Any, db_url: str) -> None:
    account(cli)
    account(cli, "loner")
    buy(cli, PRO)
    small_team_plan(cli, "team-none", "0")
    buy(cli, "team-none")
    refusals(cli, db_url, [
        (("accounts", "create", "dev", "--parent", "acme"), 4, "subuser_access_required", "sub-user access"),
        (("accounts", "create", "dev", "--parent", "loner"), 4, "subuser_access_required", "sub-user access"),
        (("accounts", "create", "dev", "--parent", "acme", "--quota", "100"), 4, "subuser_access_required",
         "sub-user access"),
    ])


def test_subusers_up_to_the_maximum_get_keys_from_the_parents_subscription(cli: Any, db_url: str) -> None:
    account(cli)
    account(cli, "stranger")
    small_team_plan(cli)
    sub = buy(cli, "team-small")["subscription"]["id"]
    buy(cli, "team-small", acc="stranger")
    dev1 = js(cli, "accounts", "create", "dev1", "--parent", "acme", "--quota", "100")
    dev2 = js(cli, "accounts", "create", "dev2", "--parent", "acme")
    assert (dev1["subuser_quota"], dev2["subuser_quota"]) == ("100.000000", None)
    refusals(cli, db_url, [
        (("accounts", "create", "dev3", "--parent", "acme"), 4, "subuser_limit_reached", "(2)"),
        (("accounts", "create", "dev3", "--parent", "dev1"), 4, "subuser_nesting", "sub-user"),
        (("keys", "create", "--from-plan", sub, "--account", "stranger", "--name", "steal"), 4,
         "not_your_subscription", "belongs to acme"),
        (("keys", "create", "--from-plan", sub, "--account", "stranger", "--name", "steal", "--quantity", "5"), 4,
         "not_your_subscription", "belongs to acme"),
    ])
    key = one(cli, "--from-plan", sub, "--account", "dev1", "--name", "laptop")
    assert (key["account_id"], key["subscription_id"], key["kind"]) == (dev1["id"], sub, "team")
    by_slug = one(cli, "--from-plan", "team-small", "--account", "dev2", "--name", "laptop")  # via the parent
    assert (by_slug["account_id"], by_slug["subscription_id"]) == (dev2["id"], sub)
    batch = make(cli, "--from-plan", sub, "--account", "dev2", "--name", "ci", "--quantity", "5")
    assert {(k["account_id"], k["subscription_id"]) for k in batch} == {(dev2["id"], sub)}
    assert names(listed(cli, "--account", "dev1")) == {"laptop"}
    assert len(listed(cli, "--subscription", sub)) == 1 + 1 + 1 + 5  # the subscription key and the sub-users'


# ---------------------------------------------------------------- a key never outlives its secret (issue #12.4)

_KILLED_AT = """
import os, signal, sys
from planctl.cli import keys as cli_keys
from planctl.services import keys as service

step = sys.argv[1]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
write, create = cli_keys.SecretsFile.write, service.create
if step == "before the file":
    cli_keys.SecretsFile.write = lambda self, created: die()
elif step == "after the file":
    cli_keys.SecretsFile.write = lambda self, created: (write(self, created), die())
elif step == "after the commit":
    service.create = lambda *a, **k: (create(*a, **k), die())
sys.argv = ["planctl", *sys.argv[2:]]
from planctl.cli import main
main()
"""


@pytest.mark.parametrize("step", ["before the file", "after the file", "after the commit"])
def test_a_kill_at_any_step_of_a_key_batch_leaves_no_key_without_its_secret(
        cli: Any, db: Any, db_url: str, tmp_path: Path, step: str) -> None:
    """kill -9 (fault injection, not timing luck): before the commit no key exists and the file is
    empty or lists keys that never existed, and a re-run with the same file succeeds; after it
    every key's secret is in the file, synced, and the file is kept."""
    import subprocess
    import sys

    from helpers.metering import checks_ok

    account(cli)
    buy(cli)
    out = tmp_path / "ci.json"
    args = ["--db", db_url, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci",
            "--quantity", "50", "--secrets-file", str(out)]
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT, step, *args], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    made = listed(cli, "--name", "ci-")
    checks_ok(db)
    if step == "after the commit":
        written = json.loads(out.read_text())
        assert len(made) == 50 and {r["id"] for r in written} == {k["id"] for k in made}
        assert all(found_id(db, r["secret"], NOW) == r["id"] for r in written)
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        again = run(cli, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci", "--quantity",
                    "50", "--secrets-file", str(out))
        assert again.exit_code == 6 and "holds secrets of existing keys" in again.stderr
        assert json.loads(out.read_text()) == written
        return
    assert made == [] and out.exists()
    leftover = out.read_text()
    assert leftover == "" if step == "before the file" else len(json.loads(leftover)) == 50
    again = run(cli, "--json", "keys", *args[3:])
    assert again.exit_code == 0, again.stderr
    rerun = json.loads(again.stdout)
    written = json.loads(out.read_text())
    assert [k["id"] for k in rerun] == [r["id"] for r in written] and len(written) == 50
    assert all(found_id(db, r["secret"], NOW) == r["id"] for r in written)
    checks_ok(db)


def test_ctrl_c_after_the_commit_keeps_the_secrets_file(cli: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An interruption that lands after the commit must not delete the only copy of the secrets."""
    import planctl.services.keys as key_service

    account(cli)
    buy(cli)
    real = key_service.create

    def interrupted(*args: Any, **kw: Any) -> Any:
        real(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(key_service, "create", interrupted)
    out = tmp_path / "ci.json"
    result = run(cli, "keys", "create", "--from-plan", PRO, "--account", "acme", "--name", "ci", "--quantity", "3",
                 "--secrets-file", str(out))
    monkeypatch.undo()
    assert result.exit_code == 130
    assert {r["id"] for r in json.loads(out.read_text())} == {k["id"] for k in listed(cli, "--name", "ci-")}
