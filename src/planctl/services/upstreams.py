"""Upstreams: the OpenAI-compatible endpoints `planctl serve` forwards to.

Stored in the database, so every worker and every machine sharing it sees the same set. An
upstream names where its secret is (an environment variable or a file), never the secret: the
gateway reads it when it starts. Changes are audited; the gateway marks an upstream unhealthy
when it refuses its own credentials, and `enable` or a passing `test` marks it healthy again.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import select

from planctl.domain.errors import Conflict, InvalidInput
from planctl.services import audit
from planctl.services.audit import Caller
from planctl.store import refs
from planctl.store.engine import Database
from planctl.store.sql import Tx
from planctl.store.tables import Upstream

APIS = ("responses", "chat")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


@dataclass(frozen=True)
class UpstreamSpec:
    """What `add` and `edit` set (None: keep / default)."""

    base_url: str | None = None
    key_env: str | None = None
    key_file: str | None = None
    models: list[str] | None = None
    apis: list[str] | None = None
    priority: int | None = None
    weight: int | None = None


def _check(spec: UpstreamSpec) -> None:
    if spec.base_url is not None:
        parts = urlsplit(spec.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInput(f"invalid base URL {spec.base_url!r}: use http(s)://host[:port]/v1")
    if spec.key_env is not None and spec.key_file is not None:
        raise InvalidInput("give the secret's environment variable or its file, not both")
    if spec.key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", spec.key_env):
        raise InvalidInput(f"invalid environment variable name {spec.key_env!r}")
    for api in spec.apis or ():
        if api not in APIS:
            raise InvalidInput(f"unknown API type {api!r}: use {', '.join(APIS)}")
    if spec.apis is not None and not spec.apis:
        raise InvalidInput("an upstream serves at least one API type")
    if spec.priority is not None and spec.priority < 0:
        raise InvalidInput("priority must be ≥ 0 (lowest first)")
    if spec.weight is not None and spec.weight < 1:
        raise InvalidInput("weight must be ≥ 1")


def split_apis(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add(db: Database, name: str, spec: UpstreamSpec, *, caller: Caller, now: datetime) -> Upstream:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"invalid upstream name {name!r}: lower-case letters, digits, '.', '_' and '-'")
    if spec.base_url is None:
        raise InvalidInput("an upstream needs a base URL")
    if spec.key_env is None and spec.key_file is None:
        raise InvalidInput("an upstream needs its secret's environment variable or file")
    _check(spec)
    with db.write() as session:
        if session.get(Upstream, name) is not None:
            raise Conflict(f"upstream {name!r} already exists", reason="upstream_exists")
        row = Upstream(name=name, base_url=spec.base_url.rstrip("/"), key_env=spec.key_env, key_file=spec.key_file,
                       models=list(spec.models or []), apis=",".join(spec.apis or APIS),
                       priority=spec.priority or 0, weight=spec.weight or 1, created_at=now, updated_at=now)
        session.add(row)
        audit.record(session, caller, now, f"upstream:{name}", f"added {row.base_url}")
        return row


def edit(db: Database, name: str, spec: UpstreamSpec, *, caller: Caller, now: datetime) -> Upstream:
    _check(spec)
    with db.write() as session:
        row = _get(session, name)
        if spec.base_url is not None:
            row.base_url = spec.base_url.rstrip("/")
        if spec.key_env is not None or spec.key_file is not None:
            row.key_env, row.key_file = spec.key_env, spec.key_file
        if spec.models is not None:
            row.models = list(spec.models)
        if spec.apis is not None:
            row.apis = ",".join(spec.apis)
        if spec.priority is not None:
            row.priority = spec.priority
        if spec.weight is not None:
            row.weight = spec.weight
        row.updated_at = now
        session.add(row)
        audit.record(session, caller, now, f"upstream:{row.name}", "edited")
        return row


def set_enabled(db: Database, name: str, enabled: bool, *, caller: Caller, now: datetime) -> Upstream:
    with db.write() as session:
        row = _get(session, name)
        row.enabled, row.updated_at = enabled, now
        if enabled:
            row.healthy, row.last_error = True, None
        session.add(row)
        audit.record(session, caller, now, f"upstream:{row.name}", "enabled" if enabled else "disabled")
        return row


def remove(db: Database, name: str, *, caller: Caller, now: datetime) -> None:
    with db.write() as session:
        row = _get(session, name)
        session.delete(row)
        audit.record(session, caller, now, f"upstream:{row.name}", "removed")


def get(db: Database, name: str) -> Upstream:
    with db.read() as session:
        return _get(session, name)


def list_all(db: Database) -> list[Upstream]:
    with db.read() as session:
        return list(session.execute(select(Upstream).order_by(Upstream.priority, Upstream.name)).scalars())


def mark_health(db: Database, name: str, healthy: bool, error: str | None, *, now: datetime) -> None:
    """What the gateway (or `test`) learnt of an upstream; not audited (no operator did it)."""
    with db.write() as session:
        row = session.get(Upstream, name)
        if row is not None:
            row.healthy, row.last_error, row.checked_at = healthy, error and error[:500], now
            session.add(row)


REPORT_FRESH = 60  # seconds a worker's report counts (workers report every ROUTES_REFRESH)
_WORST = ("healthy", "cooldown", "half_open", "open", "disabled")


def report_health(db: Database, worker: str, views: dict[str, dict[str, Any]], *, now: datetime) -> None:
    """A gateway worker's view of each upstream (health.Health.view), kept per worker; reports of
    workers gone quiet are dropped."""
    with db.write() as session:
        for row in session.execute(select(Upstream).where(Upstream.name.in_(list(views)))
                                   .with_for_update()).scalars():
            kept = {w: r for w, r in (row.reports or {}).items()
                    if w != worker and (now - datetime.fromisoformat(r["at"])).total_seconds() < 5 * REPORT_FRESH}
            row.reports = {**kept, worker: {**views[row.name], "at": now.isoformat()}}
            session.add(row)


def health_summary(row: Any, now: datetime) -> dict[str, Any]:
    """The fresh reports of the gateway workers merged: the worst state, the highest error rate,
    the median latency; without fresh reports, what the database knows."""
    fresh = [r for r in (row.reports or {}).values()
             if (now - datetime.fromisoformat(r["at"])).total_seconds() < REPORT_FRESH]
    if not row.enabled or not row.healthy:
        state = "off" if not row.enabled else "disabled"
    elif fresh:
        state = max((r.get("state") or "healthy" for r in fresh), key=lambda s: _WORST.index(s) if s in _WORST else 0)
    else:
        state = "no reports"
    rates = [r["error_rate"] for r in fresh if r.get("error_rate") is not None]
    latencies = sorted(r["latency_ms"] for r in fresh if r.get("latency_ms") is not None)
    return {"state": state, "error_rate": max(rates) if rates else None,
            "latency_ms": latencies[len(latencies) // 2] if latencies else None, "workers": len(fresh)}


def probe(db: Database, name: str, *, model: str | None, now: datetime) -> dict[str, Any]:
    """One tiny request to the upstream: its status and latency; records its health."""
    import time

    import httpx

    row = get(db, name)
    secret = read_secret(row)
    model = model or (row.models[0] if row.models and not any(c in row.models[0] for c in "*?[") else "gpt-5.4-mini")
    if "responses" in split_apis(row.apis):
        path, body = "/responses", {"model": model, "input": "ping", "max_output_tokens": 16}
    else:
        path, body = "/chat/completions", {"model": model, "messages": [{"role": "user", "content": "ping"}],
                                           "max_completion_tokens": 16}
    started = time.perf_counter()
    try:
        answer = httpx.post(row.base_url + path, json=body, headers={"authorization": f"Bearer {secret}"}, timeout=30)
        status, error = answer.status_code, None if answer.status_code < 400 else answer.text[:300]
    except httpx.HTTPError as exc:
        status, error = None, f"{type(exc).__name__}: {exc}"[:300]
    latency = int((time.perf_counter() - started) * 1000)
    ok = status is not None and status < 400
    if ok or status in (401, 403):
        mark_health(db, name, ok, error, now=now)
    return {"name": name, "status": status, "latency_ms": latency, "ok": ok, "error": error}


def read_secret(row: Any, env: Any = os.environ) -> str:
    """The upstream's secret from its variable or file (never stored, never printed)."""
    if row.key_env:
        secret = env.get(row.key_env, "").strip()
        where = f"environment variable {row.key_env}"
    else:
        try:
            secret = Path(row.key_file).read_text("utf-8").strip()
        except OSError as exc:
            raise InvalidInput(f"upstream {row.name}: cannot read key file {row.key_file}: {exc.strerror}") from None
        where = f"key file {row.key_file}"
    if not secret:
        raise InvalidInput(f"upstream {row.name}: no secret in {where}")
    return secret


def _get(session: Any, name: str) -> Upstream:
    row = session.get(Upstream, refs.resolve(Tx.within(session), "upstream", name))
    assert row is not None
    return row
