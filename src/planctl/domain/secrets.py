"""Key secrets: generated from a CSPRNG, stored only as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import re
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


_SECRET_LIKE = re.compile(r"(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]{4,}")


def redact(text: str) -> str:
    """Any value shaped like a key secret cut to its visible prefix (`sk-AbCd…`): messages
    quote what they were given, and a shifted CSV column may hand them a secret."""
    return _SECRET_LIKE.sub(r"\1…", text) if "sk-" in text else text
