"""The hold a request takes before it is forwarded, and the usage charged when an upstream never
reported any (pure functions).

- input tokens ≈ request body bytes ÷ 4 (JSON overhead makes this an over-estimate);
- output tokens = the request's own cap (`max_output_tokens`, `max_completion_tokens`,
  `max_tokens`), else the installation's default;
- the hold is the cost of both at the dearest group ratio, capped by the configured maximum.

When usage never arrives (an upstream that broke, a drain that timed out), the record is charged
with the input estimate and one output token per streamed event, and flagged `usage_estimated`.
"""

from __future__ import annotations

from typing import Any

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 4_096
MAX_RESERVE = 5_000_000  # µcr (5 credits)


def input_tokens(body_size: int) -> int:
    return -(-body_size // BYTES_PER_TOKEN)


def output_cap(body: dict[str, Any], default: int = DEFAULT_OUTPUT_TOKENS) -> int:
    for name in ("max_output_tokens", "max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def hold(cost: int | None, cap: int = MAX_RESERVE) -> int:
    """µcr to hold for a request whose estimated cost is `cost` (None: model unknown, the
    admission refuses it anyway)."""
    return max(1, min(cost if cost is not None else 1, cap))
