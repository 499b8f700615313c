"""Key secrets: generated from a CSPRNG, stored only as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

SECRET_PREFIX = "sk-"
VISIBLE_PREFIX = 7  # "sk-" and four characters, to recognise a key in listings


@dataclass(frozen=True)
class NewSecret:
    secret: str  # shown once, never stored
    sha256: str
    prefix: str
    last4: str


def new_secret() -> NewSecret:
    """`sk-` followed by 43 URL-safe characters (256 bits)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return NewSecret(secret, digest(secret), secret[:VISIBLE_PREFIX], secret[-4:])


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def masked(prefix: str, last4: str) -> str:
    """How a key is shown after creation: `sk-AbCd…wxyz`."""
    return f"{prefix}…{last4}"
