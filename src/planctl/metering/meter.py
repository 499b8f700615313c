"""`Meter`: the one entry point of metering, for the gateway (admit, settle, release, record)
and for the CLI's metering commands (authorize, record, import, reservations, limits).

It owns what must live as long as the process meters: its database, the catalog cache
(catalog.py), the clock, the hold timeout, the SQLite write lock and the price quotes; the
rules run in the package's modules, which take the database and the cache as parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from planctl.domain.errors import Conflict, Refused
from planctl.metering import admission as admissions
from planctl.metering import catalog, holds, importing, recording
from planctl.metering import limits as limit_views
from planctl.metering.admission import Authorization
from planctl.metering.holds import HOLD_FOR
from planctl.metering.importing import ImportReport
from planctl.metering.limits import LimitsView
from planctl.metering.recording import Recorded, UsageInput
from planctl.store.meter import HoldRow
from planctl.store.writelock import WriteLock

T = TypeVar("T")
QUOTE_TTL = 5.0  # seconds a model's price quote is reused (catalog edits show within this)


@dataclass
class Admission:
    """The answer to one request: allowed (with its hold), or a denial with its reason code."""

    allowed: bool
    reason: str | None
    message: str
    requested_model: str
    api: str
    billed_model: str | None = None
    key_id: str | None = None
    account_id: str | None = None
    subscription_id: str | None = None
    next_reset: datetime | None = None
    reservation_id: str | None = None
    reserved: int = 0
    remaining: dict[str, Any] = field(default_factory=dict)


@dataclass
class Usage:
    """What the upstream reported of one request, and what the gateway saw of it."""

    request_id: str
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    status_code: int = 200
    latency_ms: int | None = None
    ttfb_ms: int | None = None
    stream: bool = False
    error: str | None = None
    upstream: str | None = None
    client_request_id: str | None = None
    session_id: str | None = None
    estimated: bool = False


class Meter:
    """One object for every metering call of a process. It owns its database: each thread
    runs on its own driver connection, and on SQLite the writes of every process on the file
    queue on store/writelock.py's lock (not on SQLite's busy handler, which sleeps). It owns its
    catalog cache too (one per database: a Meter per database, a fresh one per one-shot command)."""

    def __init__(self, db: Any, *, clock: Callable[[], datetime] | None = None,
                 hold_for: timedelta = HOLD_FOR) -> None:
        self.db = db
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.hold_for = hold_for
        self.sqlite = getattr(db, "dialect", "sqlite") == "sqlite"
        self._writing: Any = WriteLock(getattr(db, "file", None)) if self.sqlite else nullcontext()
        self.catalogs = catalog.Catalogs()
        self._quotes: dict[str, tuple[float, tuple[int, int] | None]] = {}  # model -> (when, µcr per 1M in, out)

    @classmethod
    def open(cls, location: str | None = None, **kw: Any) -> Meter:
        """The database at `location` (a path or URL; default: PLANCTL_* as the CLI resolves it),
        migrated and seeded when new."""
        from planctl.services.database import open_database
        from planctl.store.location import resolve_target

        return cls(open_database(resolve_target(location), now=datetime.now(timezone.utc)), **kw)

    def close(self) -> None:
        self.db.dispose()
        if self.sqlite:
            self._writing.close()

    # ------------------------------------------------------------ the four calls

    def admit(self, secret: str, model: str, api: str, reserve: int | None = None) -> Admission:
        """Authorize one request and hold `reserve` µcr; every denial is a value, a lost race for
        the last credit included."""
        with self._writing if reserve else nullcontext():
            return self._admit(secret, model, api, reserve)

    def admit_now(self, secret: str, model: str, api: str, reserve: int | None = None) -> Admission | None:
        """`admit`, or None when it would have to wait: for this process's other writer (a
        settlement being written) or, on SQLite, for another process's write lock. A caller that
        must never block (an event loop) tries this first and hands a None to a thread that
        calls `admit`. Only on SQLite (on PostgreSQL every admission waits on the network)."""
        return self._without_waiting(lambda: self._admit(secret, model, api, reserve))

    def _without_waiting(self, write: Callable[[], T]) -> T | None:
        """`write` under the write lock, on a connection that gives up at once when another
        process writes; None when either is taken (SQLite only: None on PostgreSQL)."""
        if not self.sqlite or not self._writing.acquire(blocking=False):
            return None
        try:
            self.db.never_wait()
            return write()
        except Conflict as exc:
            if exc.reason == "database_busy":
                return None
            raise
        finally:
            self._writing.release()

    def _admit(self, secret: str, model: str, api: str, reserve: int | None) -> Admission:
        """`admit` with the write lock held (or not needed)."""
        try:
            auth = self._authorize(secret, model, api, reserve or None)
        except Refused as exc:  # a concurrent request took what the hold needed
            return Admission(False, exc.reason, exc.message, model, api)
        return Admission(auth.allowed, auth.reason, auth.message, model, api, auth.billed_model, auth.key_id,
                         auth.account_id, auth.subscription_id, auth.next_reset, auth.reservation_id,
                         reserve or 0 if auth.reservation_id else 0, auth.remaining)

    def settle(self, admission: Admission, usage: Usage) -> Recorded:
        """Record the request under the admission's key, and settle its hold with the real cost."""
        return self.record(self.settlement(admission, usage))

    def settlement(self, admission: Admission, usage: Usage) -> UsageInput:
        """What `settle` records, timed now: the gateway journals it, then records it later
        (`record` or `record_many`), which changes nothing if its request id is already in."""
        if not admission.allowed or admission.key_id is None:
            raise ValueError("only an allowed admission can be settled")
        return UsageInput(
            request_id=usage.request_id, model=admission.requested_model, key=admission.key_id,
            input_tokens=usage.input_tokens, cached_tokens=min(usage.cached_tokens, usage.input_tokens),
            output_tokens=usage.output_tokens, status_code=usage.status_code, latency_ms=usage.latency_ms,
            api=admission.api, stream=usage.stream, reservation=admission.reservation_id, error=usage.error,
            ttfb_ms=usage.ttfb_ms, upstream=usage.upstream, client_request_id=usage.client_request_id,
            session_id=usage.session_id, usage_estimated=usage.estimated, billed=admission.billed_model,
            at=self.clock())

    def record(self, u: UsageInput) -> Recorded:
        """One usage record in its own transaction (a request id seen before changes nothing)."""
        with self._writing:
            return recording.record(self.db, self.catalogs, u, now=self.clock())

    def release(self, admission_or_reservation_id: Admission | str, reason: str) -> bool:
        """Give a hold back at once (the request never reached an upstream: `reason` says why).
        False when there was nothing to release."""
        res_id = (admission_or_reservation_id if isinstance(admission_or_reservation_id, str)
                  else admission_or_reservation_id.reservation_id)
        if not res_id:
            return False
        with self._writing:
            return holds.release_hold(self.db, res_id, now=self.clock())

    def record_many(self, records: Iterable[UsageInput], *, keep: bool = False) -> ImportReport:
        """Many usage records in batches (one transaction each), as `usage import` does; with
        `keep`, the report has each new record's values by position (from 1)."""
        return self.import_lines(enumerate(records, 1), keep=keep)

    def record_many_now(self, records: list[UsageInput]) -> ImportReport | None:
        """`record_many(records, keep=True)` in one transaction, or None at once when it would have
        to wait for a writer of this process or another (as `admit_now`; SQLite only)."""
        return self._without_waiting(lambda: importing.import_usage(
            self.db, self.catalogs, enumerate(records, 1), now=self.clock(), batch_size=len(records) or 1, keep=True))

    def import_lines(self, lines: Iterable[tuple[int, UsageInput | str]], *, batch_size: int = 2_000,
                     progress: Callable[[ImportReport], Any] | None = None, keep: bool = False) -> ImportReport:
        """(line number, UsageInput or why the line is unreadable) pairs recorded in batches of
        `batch_size`, one transaction each; `progress` sees the report after each batch."""
        with self._writing:
            return importing.import_usage(self.db, self.catalogs, lines, now=self.clock(), batch_size=batch_size,
                                          progress=progress, keep=keep)

    # ------------------------------------------------------------ what the CLI asks besides

    def authorize(self, secret: str, model: str, api: str = "responses",
                  reserve: int | None = None) -> Authorization:
        """`admit` in full (`planctl authorize`): the pool, what extra usage lifted and when the
        hold expires besides; a lost race for the hold is raised (Refused), not answered."""
        with self._writing if reserve else nullcontext():
            return self._authorize(secret, model, api, reserve)

    def _authorize(self, secret: str, model: str, api: str, reserve: int | None) -> Authorization:
        return admissions.authorize(self.db, self.catalogs, secret, model=model, api=api, reserve=reserve,
                                    now=self.clock(), hold_for=self.hold_for)

    def reservations(self, *, status: str | None = "held", key: str | None = None,
                     limit: int = 1000) -> list[HoldRow]:
        """Holds by status (None: all), of one key if given, after releasing the expired ones."""
        return holds.list_reservations(self.db, now=self.clock(), status=status, key=key, limit=limit)

    def release_by_hand(self, reservation_id: str, *, caller: Any) -> HoldRow:
        """Release a hold as an admin does (audited; refused when it is closed already). Needs a
        database with the ORM (`store.engine.Database`)."""
        with self._writing:
            return holds.release_by_hand(self.db, reservation_id, caller=caller, now=self.clock())

    def limits(self, ref: str) -> LimitsView:
        """Every quota of a subscription (by its key) or of one key, side by side."""
        return limit_views.limits_view(self.db, self.catalogs, ref, now=self.clock())

    def set_period_limit(self, ref: str, enabled: bool, *, caller: Any) -> Any:
        """Turn a subscription's periodic limit on or off where its plan allows it (audited; the
        ORM database, as `release_by_hand`). Returns the subscription."""
        with self._writing:
            return limit_views.set_period_limit(self.db, ref, enabled, caller=caller, now=self.clock())

    # ------------------------------------------------------------ what a gateway asks besides

    def quote(self, model: str, *, input_tokens: int, output_tokens: int) -> int | None:
        """The cost of a request of this size at the dearest group ratio (None: unknown model),
        from prices reused for a few seconds."""
        now = time.monotonic()
        hit = self._quotes.get(model)
        if hit is None or now - hit[0] > QUOTE_TTL:
            per_input = catalog.quote(self.db, self.catalogs, model, input_tokens=1_000_000, output_tokens=0)
            per_output = catalog.quote(self.db, self.catalogs, model, input_tokens=0, output_tokens=1_000_000)
            hit = self._quotes[model] = (now, None if per_input is None or per_output is None
                                         else (per_input, per_output))
        prices = hit[1]
        if prices is None:
            return None
        return -(-(input_tokens * prices[0] + output_tokens * prices[1]) // 1_000_000)

    def models(self, secret: str) -> list[tuple[str, str]] | None:
        """(name, billed model) pairs the key's plan allows; None for an unknown key."""
        return admissions.plan_models(self.db, self.catalogs, secret, now=self.clock())
