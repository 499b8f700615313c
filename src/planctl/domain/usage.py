"""What a usage record may say: the bounds every recorded request is checked against.

A record comes from a gateway, a log file or a flag: each one is checked on
its own, before anything is written, so one absurd line (a token count that
overflows 64 bits, a time Python cannot represent) is rejected alone with its
line number and never charges a subscription a fortune. README "Recording"
documents these bounds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

MAX_TOKENS = 100_000_000  # per token count of one request (the largest context windows hold ~2 million)
MAX_LATENCY_MS = 86_400_000  # one day
MAX_AGE = timedelta(days=366)  # a request time at most a year before now…
MAX_AHEAD = timedelta(hours=1)  # …and at most an hour after it (clock skew)
MAX_ID = 200  # characters of a request id
MAX_TEXT = 2_000  # characters of an error text kept (longer ones are cut)
MAX_FIELD = 500  # characters of any other text field (key, model, API, reservation)


def token_error(name: str, value: object) -> str | None:
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        return f"{name} tokens must be a whole number from 0 to {MAX_TOKENS:,}, got {short(value)}"
    return None


def latency_error(value: object) -> str | None:
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_LATENCY_MS):
        return f"latency must be a whole number of milliseconds from 0 to {MAX_LATENCY_MS:,}, got {short(value)}"
    return None


def time_error(at: datetime, now: datetime) -> str | None:
    """A request time outside [now − MAX_AGE, now + MAX_AHEAD] (or one without an offset)."""
    if at.tzinfo is None or at.utcoffset() is None:
        return "the request time needs a UTC offset"
    try:
        inside = now - MAX_AGE <= at <= now + MAX_AHEAD
    except (OverflowError, ValueError):  # 0001-01-01 with a positive offset is before any representable UTC
        inside = False
    if not inside:
        return (f"request time {short(at.isoformat())} is outside the accepted window "
                f"(from {MAX_AGE.days} days before now to {int(MAX_AHEAD.total_seconds() // 3600)} hour after)")
    return None


def text_error(name: str, value: object, limit: int) -> str | None:
    """Text that a database cannot store (NUL, lone surrogates) or that is too long."""
    if not isinstance(value, str):
        return f"{name} must be text, got {short(value)}"
    if len(value) > limit:
        return f"{name} has more than {limit:,} characters"
    if "\x00" in value:
        return f"{name} contains a NUL character"
    if value.isascii():  # the usual case, answered without encoding it
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid UTF-8 text"
    return None


def short(value: object, limit: int = 40) -> str:
    """A value quoted in a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def overdrawn(balance: int | None) -> int | None:
    """By how much a balance (granted − used, or a PAYG balance) is below zero; None when it is not
    (a request recorded without a hold is charged in full, so it may overshoot: README "Recording")."""
    return -balance if balance is not None and balance < 0 else None
