"""The latency histogram kept in daily rollups (p95 over long ranges comes from it)."""

from __future__ import annotations

from bisect import bisect_left

LATENCY_BUCKETS_MS = (100, 250, 500, 1_000, 2_000, 4_000, 8_000, 15_000, 30_000, 60_000, 120_000)
"""Upper bounds (inclusive) of the buckets; one more bucket holds everything slower."""


def bucket_of(ms: int) -> int:
    return bisect_left(LATENCY_BUCKETS_MS, ms)


def histogram_p95(buckets: list[int]) -> int | None:
    """Nearest-rank p95: the upper bound of the bucket that holds it (above the last: last + 1)."""
    total = sum(buckets)
    if not total:
        return None
    rank, seen = -(-95 * total // 100), 0
    for i, count in enumerate(buckets):
        seen += count
        if seen >= rank:
            return LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else LATENCY_BUCKETS_MS[-1] + 1
    return None
