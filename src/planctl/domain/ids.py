"""Short, human-usable identifiers."""

from __future__ import annotations

import secrets

_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


def short_id(prefix: str, length: int = 8) -> str:
    """`acc_k3x9q2mz`: a prefix naming the kind, then random characters."""
    n = secrets.randbelow(len(_ALPHABET) ** length)  # one draw, uniform over every string of `length`
    chars = []
    for _ in range(length):
        n, digit = divmod(n, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return f"{prefix}_" + "".join(chars)
