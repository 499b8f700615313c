"""Refusals in the OpenAI error format, from planctl reason codes (pure functions).

`{"error": {"message", "type", "code", "param"}}` plus `reason` (the planctl reason code):
- a key that cannot be used: 401;
- a model, group or API type outside the plan: 403;
- a boundary that resets (periodic limit, RPD, TPD, a key's daily limits): 429 with
  `type: usage_limit_reached`, `resets_at` (unix seconds) and `Retry-After`, which Codex shows
  as "try again at HH:MM" instead of retrying;
- exhaustion that does not reset (credit, subscription, PAYG, caps): 429 `insufficient_quota`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

UNAUTHORIZED = ("key_unknown", "key_disabled", "key_revoked", "key_expired", "no_key")
FORBIDDEN = ("model_not_in_plan", "group_not_in_plan", "api_type_not_in_plan", "subscription_not_started")
RESETTING = ("period_limit_reached", "rpd_reached", "tpd_reached", "key_daily_limit_reached", "key_rpd_reached")

_LIFTS = {
    "no_key": "send the key as 'Authorization: Bearer <key>' or 'x-api-key'",
    "key_unknown": "check the key, or ask the operator for a new one",
    "key_disabled": "ask the operator to enable the key",
    "key_revoked": "ask the operator for a new key",
    "key_expired": "ask the operator for a new key",
    "model_not_in_plan": "use a model your plan includes (GET /v1/models lists them)",
    "group_not_in_plan": "ask the operator to move the key to a group of the plan",
    "api_type_not_in_plan": "use an API your plan includes",
    "subscription_not_started": "wait until the subscription starts",
    "credit_exhausted": "renew the subscription or buy extra usage",
    "subscription_expired": "renew the subscription",
    "subscription_cancelled": "buy a new subscription",
    "payg_balance_empty": "top up the pay-as-you-go balance",
    "key_credit_cap_reached": "ask the operator to raise the key's credit cap",
    "subuser_quota_reached": "ask the account owner to raise the sub-user quota",
}


@dataclass
class ErrorAnswer:
    """An HTTP error: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, type_: str, code: str | None = None, **extra: Any) -> ErrorAnswer:
    return ErrorAnswer(status, {"error": {"message": message, "type": type_, "code": code, "param": None, **extra}})


def refusal(reason: str, message: str, next_reset: datetime | None, now: datetime) -> ErrorAnswer:
    """The answer to a request admission refused, by its reason code."""
    lifts = _LIFTS.get(reason)
    text = f"{message} ({reason})" + (f": {lifts}" if lifts else "")
    if reason in UNAUTHORIZED:
        return error(401, text, "invalid_request_error", "invalid_api_key", reason=reason)
    if reason in FORBIDDEN:
        return error(403, text, "permission_error", reason, reason=reason)
    if reason in RESETTING and next_reset is not None:
        wait = max(1, math.ceil((next_reset - now).total_seconds()))
        answer = error(429, text, "usage_limit_reached", reason, reason=reason,
                       resets_at=int(next_reset.timestamp()), resets_in_seconds=wait)
        answer.headers["Retry-After"] = str(wait)
        return answer
    return error(429, text, "insufficient_quota", "insufficient_quota", reason=reason)


def from_upstream(status: int, content: bytes, retry_after: str | None) -> ErrorAnswer:
    """An upstream's error answer as it was (an OpenAI error body), or wrapped in one."""
    import json

    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        answer = ErrorAnswer(status, body)
    else:
        text = content[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
        answer = error(status, f"the upstream answered: {text}", "upstream_error" if status >= 500 else
                       "invalid_request_error", None)
    if retry_after:
        answer.headers["Retry-After"] = retry_after
    return answer


def bad_request(message: str) -> ErrorAnswer:
    return error(400, message, "invalid_request_error", "invalid_request")


def no_upstream(model: str, api: str) -> ErrorAnswer:
    return error(503, f"no upstream serves model {model!r} for the {api} API: the operator must add one "
                 "(planctl upstreams add)", "server_error", "no_upstream")


def too_many_concurrent(limit: int) -> ErrorAnswer:
    answer = error(429, f"this key already has {limit} requests in progress here: wait for one to finish",
                   "rate_limit_error", "too_many_concurrent_requests")
    answer.headers["Retry-After"] = "1"
    return answer


def upstreams_resting(retry_after: int) -> ErrorAnswer:
    answer = error(429, f"every upstream for this model is cooling down or failing: try again in {retry_after} s",
                   "rate_limit_error", "upstreams_resting")
    answer.headers["Retry-After"] = str(retry_after)
    return answer


def upstream_auth(name: str, status: int) -> ErrorAnswer:
    return error(502, f"the gateway's upstream {name!r} refused the operator's credentials (HTTP {status}): "
                 "this is the operator's fault, not yours; the upstream is marked unhealthy",
                 "server_error", "upstream_auth_failed")


def upstream_unreachable(detail: str) -> ErrorAnswer:
    return error(502, f"no upstream could be reached: {detail}", "server_error", "upstream_unreachable")


def overloaded(detail: str, retry_after: int = 2) -> ErrorAnswer:
    answer = error(503, f"the gateway cannot meter requests right now: {detail}", "server_error",
                   "server_is_overloaded")
    answer.headers["Retry-After"] = str(retry_after)
    return answer
