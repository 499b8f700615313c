"""Usage records summed into the daily rollup rows `usage_daily` keeps (one per day, key,
group, model, API and status class): what a batch writes beside its records, and what
the demo's bulk load must equal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from planctl.domain.latency import bucket_of
from planctl.store.columns import (ROLLUP_SUMS, U_ACCOUNT, U_API, U_BILLED, U_CACHED, U_CHARGED_EXTRA,
                                   U_CHARGED_PAYG, U_CHARGED_PLAN, U_COST, U_GROUP, U_INPUT, U_KEY, U_LATENCY,
                                   U_LOCAL_DAY, U_OUTPUT, U_STATUS, U_SUBSCRIPTION, USAGE_COLUMNS)


class Rollups:
    """Usage records summed into daily rollup rows (one per day, key, group, model, API and status
    class), as `usage_daily` keeps them."""

    def __init__(self) -> None:
        self.sums: dict[tuple[Any, ...], list[Any]] = {}  # dimensions -> [owners, last at, *ROLLUP_SUMS]

    def add(self, v: tuple[Any, ...], at: datetime) -> None:
        """One usage record (values of USAGE_COLUMNS) made at `at`."""
        dims = (v[U_LOCAL_DAY], v[U_KEY], v[U_GROUP], v[U_BILLED], v[U_API], v[U_STATUS] // 100)
        row = self.sums.get(dims)
        if row is None:
            row = self.sums[dims] = [(v[U_ACCOUNT], v[U_SUBSCRIPTION]), at] + [0] * len(ROLLUP_SUMS)
        elif at > row[1]:
            row[1] = at
        row[2] += 1  # then from row[3] on, as ROLLUP_SUMS has them: the summed columns, the latency
        row[3] += v[U_INPUT]
        row[4] += v[U_CACHED]
        row[5] += v[U_OUTPUT]
        row[6] += v[U_COST]
        row[7] += v[U_CHARGED_PLAN]
        row[8] += v[U_CHARGED_EXTRA]
        row[9] += v[U_CHARGED_PAYG]
        latency = v[U_LATENCY]
        if latency is not None:
            row[10] += latency
            row[11] += 1
            row[12 + bucket_of(latency)] += 1

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (day, key_id, group, model, api, hundreds), row in self.sums.items():
            (account_id, subscription_id), last_at = row[0], row[1]
            out.append(dict(zip(ROLLUP_SUMS, row[2:]), local_day=day, key_id=key_id, group_name=group,
                            billed_model=model, api=api, status_class=f"{hundreds}xx", account_id=account_id,
                            subscription_id=subscription_id, last_at=last_at))
        return out


def rollups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Usage records (dicts of USAGE_COLUMNS, `at` aware) summed into daily rollup rows."""
    sums = Rollups()
    for r in records:
        sums.add(tuple(r[c] for c in USAGE_COLUMNS), r["at"])
    return sums.rows()
