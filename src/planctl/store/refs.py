"""The one reference resolver: how every command finds the account, key, plan, subscription,
order, invoice, product, group, model, upstream or discount code a person names.

The rules, the same for every command (README "Naming things"):

1. an exact id, then an exact name (a key's visible prefix `sk-AbCd` counts as a name);
2. else an unambiguous prefix, of at least `MIN_PREFIX` characters, of an id or a name
   (not for the kinds named exactly: see `Kind.prefixes`);
3. several matches are refused (exit 2) with the candidates listed; none is "unknown"
   (exit 3), with "did you mean …" when a name is close to one that exists.

It runs plain SQL through any object with `rows(sql, params)` (`store.sql.Tx` inside a
transaction, `store.reader.Reader`), so it imports nothing heavy.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from planctl.domain.errors import InvalidInput, NotFound

MIN_PREFIX = 3
_SHOW = 5  # candidates named in an "ambiguous" message


class Rows(Protocol):
    def rows(self, sql: str, params: dict[str, Any] | None = None) -> Iterable[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Kind:
    noun: str
    table: str
    columns: tuple[str, ...]  # matched in this order: the id column first
    label: str  # the column people recognise, shown beside ids in messages
    upper: bool = False  # document numbers are upper-case: `ord-2026` finds ORD-2026…
    prefixes: bool = True  # False: only the exact id or name (rule 2 does not apply)
    suggest: bool = True  # False: an unknown one is never answered with existing names


KINDS = {k.noun: k for k in (
    Kind("account", "accounts", ("id", "name"), "name"),
    Kind("key", "api_keys", ("id", "name", "prefix"), "name"),
    Kind("plan", "plans", ("slug",), "slug"),
    Kind("product", "products", ("slug",), "slug"),
    Kind("subscription", "subscriptions", ("id",), "id"),
    Kind("order", "orders", ("id",), "id", upper=True),
    Kind("invoice", "invoices", ("id",), "id", upper=True),
    Kind("upstream", "upstreams", ("name",), "name"),
    # copied as they are into keys and plan terms, which compare them exactly
    Kind("group", "groups", ("name",), "name", prefixes=False),
    # a prefix of a model's id is often another model's (gpt-5, gpt-5-mini)
    Kind("model", "models", ("id",), "id", prefixes=False),
    # buyers type codes: a prefix or a suggestion would give away codes they were not given
    Kind("discount code", "discount_codes", ("code",), "code", upper=True,
         prefixes=False, suggest=False),
)}


def resolve(db: Rows, noun: str, ref: str | None, *, account_id: str | None = None) -> str:
    """The id (a plan's slug) that `ref` names, by the rules above; `account_id` narrows keys."""
    kind = KINDS[noun]
    ref = (ref or "").strip()
    if kind.upper:
        ref = ref.upper()
    shown = _shown(ref)
    if not ref:
        raise InvalidInput(f"give the {kind.noun} (id or name)")
    for column in kind.columns:
        found = _match(db, kind, f"{column} = :ref", ref, account_id)
        if len(found) == 1:
            return found[0][0]
        if found:
            _ambiguous(kind, shown, found)
    prefix = {}
    for column in kind.columns if kind.prefixes else ():
        for row in _match(db, kind, f"substr({column}, 1, :n) = :ref", ref, account_id):
            prefix[row[0]] = row
    if len(ref) >= MIN_PREFIX:
        if len(prefix) == 1:
            return next(iter(prefix))
        if prefix:
            _ambiguous(kind, shown, list(prefix.values()))
    elif prefix:
        raise InvalidInput(f"{shown!r} is too short to pick one {kind.noun}: give at least {MIN_PREFIX} "
                           f"characters, the name or the id")
    close = _close_names(db, kind, ref, account_id) if kind.suggest else []
    if close:
        raise NotFound(f"unknown {kind.noun} {shown!r}; did you mean {_either(close)}?")
    raise NotFound(f"unknown {kind.noun} {shown!r}", code=f"unknown_{kind.noun.replace(' ', '_')}")


def _match(db: Rows, kind: Kind, condition: str, ref: str, account_id: str | None) -> list[tuple[Any, ...]]:
    scope = " AND account_id = :account" if account_id is not None else ""
    return [tuple(r) for r in db.rows(
        f"SELECT {kind.columns[0]}, {kind.label} FROM {kind.table} WHERE {condition}{scope} "
        f"ORDER BY {kind.columns[0]} LIMIT {_SHOW + 1}", {"ref": ref, "n": len(ref), "account": account_id})]


def _ambiguous(kind: Kind, shown: str, found: list[tuple[Any, ...]]) -> None:
    listed = ", ".join(str(i) if i == label else f"{label} ({i})" for i, label in found[:_SHOW])
    more = ", …" if len(found) > _SHOW else ""
    raise InvalidInput(f"{shown!r} matches several {kind.noun}s: {listed}{more}; give more of it, or use the id",
                       code=f"ambiguous_{kind.noun}")


def _close_names(db: Rows, kind: Kind, ref: str, account_id: str | None) -> list[str]:
    """Existing names close to `ref`, for "did you mean" (never for something that looks like a secret)."""
    if ref.startswith("sk-"):
        return []
    scope = " WHERE account_id = :account" if account_id is not None else ""
    names = [r[0] for r in db.rows(f"SELECT {kind.label} FROM {kind.table}{scope} LIMIT 20000",
                                   {"account": account_id})]
    close = difflib.get_close_matches(ref, names, n=3, cutoff=0.8)
    if not close:
        lowered = {str(n).lower(): n for n in names}
        close = [lowered[ref.lower()]] if ref.lower() in lowered else []
    return close


def _either(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _shown(ref: str) -> str:
    """What may be echoed: never more of a pasted secret than its visible prefix."""
    return ref[:7] + "…" if ref.startswith("sk-") and len(ref) > 7 else ref
