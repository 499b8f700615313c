"""How each upstream is doing, as one worker sees it (pure: the caller passes the time).

- 429: cooldown for its Retry-After (capped; a default when it gives none).
- Connect errors and 5xx: after `FAILURES` in a row the circuit opens for `OPEN_FOR` seconds,
  then half-opens: one request goes through; success closes it, failure opens it again.
- Its own credentials refused (401/403) or its quota gone: disabled until an operator enables it
  (the gateway marks it unhealthy in the database; `planctl upstreams enable` clears that).
- After a cooldown or an open circuit, traffic ramps back: its weight grows from a tenth to the
  whole over `RAMP` seconds.
- A window of recent outcomes gives its error rate and median latency.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

COOLDOWN_DEFAULT = 5.0
COOLDOWN_CAP = 60.0
FAILURES = 3
OPEN_FOR = 10.0
RAMP = 30.0
WINDOW = 100  # recent outcomes kept


@dataclass
class Health:
    state: str = "healthy"  # healthy | cooldown | open | half_open | disabled
    until: float = 0.0  # end of a cooldown or of an open circuit (monotonic seconds)
    failures: int = 0  # in a row
    recovered: float | None = None  # when it came back (the ramp starts)
    probing: bool = False  # a half-open circuit's one request is out
    reason: str | None = None
    recent: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def available(self, now: float) -> bool:
        """May a request go there now? (A half-open circuit takes one at a time.)"""
        if self.state in ("cooldown", "open") and now >= self.until:
            self.state = "healthy" if self.state == "cooldown" else "half_open"
            if self.state == "healthy":
                self.recovered = now
        if self.state == "half_open":
            return not self.probing
        return self.state == "healthy"

    def share(self, now: float) -> float:
        """The part of its weight it gets now (ramping back after a recovery)."""
        if self.recovered is None:
            return 1.0
        part = (now - self.recovered) / RAMP
        if part >= 1.0:
            self.recovered = None
            return 1.0
        return max(0.1, part)

    def sent(self) -> None:
        if self.state == "half_open":
            self.probing = True

    def succeeded(self, now: float, latency: float) -> None:
        self.recent.append((True, latency))
        self.failures, self.probing = 0, False
        if self.state == "half_open":
            self.state, self.recovered, self.reason = "healthy", now, None

    def failed(self, now: float, why: str, latency: float = 0.0) -> None:
        """A connect error or a 5xx."""
        self.recent.append((False, latency))
        self.failures += 1
        self.probing = False
        if self.state == "half_open" or (self.state == "healthy" and self.failures >= FAILURES):
            self.state, self.until, self.reason = "open", now + OPEN_FOR, why

    def limited(self, now: float, retry_after: str | None) -> None:
        """A 429: cool down for Retry-After seconds (capped)."""
        self.recent.append((False, 0.0))
        self.probing = False
        try:
            wait = float(retry_after) if retry_after else COOLDOWN_DEFAULT
        except ValueError:
            wait = COOLDOWN_DEFAULT
        wait = min(max(wait, 0.0), COOLDOWN_CAP)
        if self.state != "disabled":
            self.state, self.until, self.reason = "cooldown", now + wait, f"HTTP 429: cooling down {wait:g} s"

    def disable(self, why: str) -> None:
        self.state, self.reason, self.probing = "disabled", why, False

    def error_rate(self) -> float | None:
        if not self.recent:
            return None
        return sum(1 for ok, _ in self.recent if not ok) / len(self.recent)

    def latency_ms(self) -> int | None:
        """The median latency of recent successes, to the first byte of the answer."""
        times = [t for ok, t in self.recent if ok]
        return int(statistics.median(times) * 1000) if times else None

    def view(self, now: float) -> dict[str, object]:
        self.available(now)
        rate = self.error_rate()
        return {"state": self.state, "reason": self.reason,
                "error_rate": None if rate is None else round(rate, 3), "latency_ms": self.latency_ms(),
                "retry_in": round(self.until - now, 1) if self.state in ("cooldown", "open") else None}


def quota_gone(status: int, body: bytes) -> bool:
    """An upstream saying its own account is out of quota (not a passing rate limit)."""
    return status in (402, 429) and (b"insufficient_quota" in body or b"billing_hard_limit" in body)
