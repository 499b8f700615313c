"""Errors carry codes and fields; the CLI words them (cli/hints.py, domain/errors.py).

Below cli/ no message names a flag or a `planctl …` command: the gateway shows
those messages to API clients, and a service is not only called from the command line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from planctl.cli import hints
from planctl.domain import denials
from planctl.domain.errors import Conflict, Note, NotFound, Refused
from planctl.store import refs

SRC = Path(__file__).resolve().parents[1] / "src" / "planctl"
BELOW_CLI = ("services", "store", "domain", "metering", "gateway")
ALLOWED = {  # (file, text it contains): why it may name the command line
    ("gateway/errors.py", "(planctl upstreams add)"): "the operator's fix, asserted by the gateway tests",
    ("store/location.py", "--db"): "the name of the setting that chose the database (`db info`)",
    ("domain/config.py", "(shown with --usd)"): "a setting's description, which says what it is for",
}


def _command_line() -> re.Pattern[str]:
    """A flag, or `planctl` followed by one of its commands."""
    import typer.main

    from planctl.cli import app

    commands = "|".join(sorted(typer.main.get_command(app).commands))  # type: ignore[attr-defined]
    return re.compile(rf"(?:^|[\s'(])--[a-z]|\bplanctl (?:{commands})\b")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings, f-string pieces included."""
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs]


def test_no_message_below_cli_names_a_flag_or_a_planctl_command() -> None:
    found, command_line = [], _command_line()
    for layer in BELOW_CLI:
        for path in sorted((SRC / layer).rglob("*.py")):
            name = str(path.relative_to(SRC))
            for line, text in _strings(ast.parse(path.read_text())):
                if command_line.search(text) and not any(f == name and a in text for f, a in ALLOWED):
                    found.append(f"{name}:{line}: {text!r}")
    assert not found, "\n".join(found)


def _codes() -> set[str]:
    """Every literal `code=` given to an error or a note below cli/."""
    out = set()
    for layer in BELOW_CLI:
        for path in (SRC / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant) \
                        and isinstance(node.value.value, str):
                    out.add(node.value.value)
    return out


def test_every_code_given_below_cli_is_worded_by_the_cli() -> None:
    codes = _codes() | {f"unknown_{noun.replace(' ', '_')}" for noun in refs.KINDS}
    assert len(codes) > 40  # the scan sees them
    assert not codes - set(hints.WORDING), sorted(codes - set(hints.WORDING))


@pytest.mark.parametrize(("said", "line"), [
    (NotFound("unknown group 'x'", code="unknown_group"), "unknown group 'x'; see 'planctl groups list'"),
    (NotFound("unknown key 'k'", code="unknown_key"), "unknown key 'k'; see 'planctl keys list'"),
    (Conflict("order ORD-1 already has invoice INV-1", reason="already_invoiced", code="already_invoiced",
              invoice="INV-1"), "order ORD-1 already has invoice INV-1; see 'planctl invoices show INV-1'"),
    (Refused("this order granted no credit to prorate", code="refund_by_amount"),
     "this order granted no credit to prorate; an operator can refund with --amount"),
    (Refused("x", code="at_least_one", option="max_per_account"), "--max-per-account must be at least 1"),
    (NotFound("no such thing"), "no such thing"),  # no code: the message as it is
    (Note("version 6 of 7", code="schema_behind"), "version 6 of 7; run 'planctl db migrate'"),
    (Note("nothing to replay"), "nothing to replay"),
])
def test_the_cli_words_an_error_or_a_note_from_its_code_and_fields(said: object, line: str) -> None:
    assert hints.word(said) == line  # type: ignore[arg-type]


def test_a_wrapped_error_is_worded_with_the_words_of_its_cause() -> None:
    cause = NotFound("unknown discount code 'NOPE'", code="unknown_discount_code")
    wrapped = NotFound(cause.message, code="code_not_applicable", cause=cause)
    assert hints.word(wrapped) == ("unknown discount code 'NOPE'; see 'planctl discounts list' "
                                   "(sell at list price with --ignore-invalid-code)")


def test_every_way_to_lift_a_limit_is_a_command_with_the_ids_filled_in() -> None:
    fields = {"key": "key_1", "account": "acc_1", "subuser": "acc_2", "subscription": "sub_1", "plan": "pro",
              "subscription_account": "acc_1", "owner": "acc_1"}
    assert set(denials.FIXABLE) | {"buy_extra_usage", "disable_period_limit", "wait_for_reset", "renew"} \
        == set(hints.SUGGESTIONS)
    for code in hints.SUGGESTIONS:
        said = hints.suggestion(code, fields)
        assert "{" not in said, said
    assert hints.suggestion("key_revoked", {**fields, "subscription": None}).endswith("--from-plan PLAN")
    assert hints.suggestion("subscription_cancelled", fields) == "buy the plan again: planctl buy pro --account acc_1"
