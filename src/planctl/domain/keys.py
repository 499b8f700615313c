"""Key rules: names, batches, groups, and whether a key may be used now."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from planctl.domain.errors import InvalidInput, Refused

MAX_BATCH = 1_000
SUFFIX_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
SUFFIX_LENGTH = 4
STATUSES = ("active", "disabled", "revoked")
KINDS = ("subscription", "team", "payg")


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 100 or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"invalid key name {name!r}: use 1 to 100 printable characters")
    return name


def check_quantity(quantity: int) -> int:
    if not 1 <= quantity <= MAX_BATCH:
        raise InvalidInput(f"the quantity must be between 1 and {MAX_BATCH}, got {quantity}", code="key_quantity",
                           most=MAX_BATCH, quantity=quantity)
    return quantity


def batch_names(base: str, quantity: int, taken: Iterable[str]) -> list[str]:
    """`quantity` names: the base itself for one key, else `base-k3x9` with random suffixes,
    none of them already taken (names are unique per account)."""
    base = check_name(base)
    used = set(taken)
    if quantity == 1:
        return [base]
    if len(base) > 100 - SUFFIX_LENGTH - 1:
        raise InvalidInput(f"key name {base[:20]!r}… is too long for a batch: at most {100 - SUFFIX_LENGTH - 1} "
                           "characters leave room for the suffix")
    names: list[str] = []
    while len(names) < quantity:
        name = f"{base}-" + "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
        if name not in used:
            used.add(name)
            names.append(name)
    return names


def check_group(group: str, plan_groups: Iterable[str], *, plan: str) -> str:
    groups = tuple(plan_groups)
    if group not in groups:
        raise Refused(f"group {group!r} is not in plan {plan} (its groups: {', '.join(groups)})",
                      reason="group_not_in_plan", code="group_not_in_plan")
    return group


def check_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("the expiry must be in the future", code="expiry_past")
    return expires_at


def check_status_change(current: str, action: str, key: str) -> str:
    """disable/enable are reversible; revoke is final."""
    target = {"disable": "disabled", "enable": "active", "revoke": "revoked"}[action]
    if current == "revoked" and target != "revoked":
        raise Refused(f"key {key} was revoked; revocation is final: create a new key", reason="key_revoked")
    return target


@dataclass(frozen=True)
class KeyState:
    """What admission needs to know about a key itself (SPEC §5 order)."""

    status: str
    expires_at: datetime | None


def key_refusal(key: KeyState, now: datetime) -> str | None:
    """The reason a key cannot be used now, or None: status first, then its own expiry."""
    if key.status == "revoked":
        return "key_revoked"
    if key.status == "disabled":
        return "key_disabled"
    if key.expires_at is not None and now >= key.expires_at:
        return "key_expired"
    return None
