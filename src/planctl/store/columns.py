"""The column lists of the tables written and read with plain SQL: written here once.

store/tables.py is the schema; the metering hot path (store/meter.py), the
reporting reader (store/reader.py) and the demo's bulk loader build their
statements from these lists instead of spelling the columns again, and
tests/test_store_data_layer.py fails when a list and its table disagree (a new
column that no statement writes).

Rows of the hot path are plain tuples in the order of their list (a usage
import builds a million of them); code elsewhere reads them through the
positions below, never through a bare number. This module imports nothing, so
a command that only meters stays light.
"""

from __future__ import annotations

USAGE_COLUMNS = ("request_id", "at", "local_day", "account_id", "key_id", "subscription_id", "group_name",
                 "requested_model", "billed_model", "api", "input_tokens", "cached_tokens", "output_tokens", "cost",
                 "charged_plan", "charged_extra", "charged_payg", "pool", "status_code", "latency_ms", "stream",
                 "error", "reservation_id", "ttfb_ms", "upstream", "client_request_id", "session_id",
                 "usage_estimated")  # usage_records, all but its serial id
USAGE_BY_HAND = USAGE_COLUMNS[:USAGE_COLUMNS.index("reservation_id") + 1]  # what a request not seen by the gateway has

# positions in a row of USAGE_COLUMNS
U_LOCAL_DAY = USAGE_COLUMNS.index("local_day")
U_ACCOUNT = USAGE_COLUMNS.index("account_id")
U_KEY = USAGE_COLUMNS.index("key_id")
U_SUBSCRIPTION = USAGE_COLUMNS.index("subscription_id")
U_GROUP = USAGE_COLUMNS.index("group_name")
U_BILLED = USAGE_COLUMNS.index("billed_model")
U_API = USAGE_COLUMNS.index("api")
U_INPUT = USAGE_COLUMNS.index("input_tokens")
U_CACHED = USAGE_COLUMNS.index("cached_tokens")
U_OUTPUT = USAGE_COLUMNS.index("output_tokens")
U_COST = USAGE_COLUMNS.index("cost")
U_CHARGED_PLAN = USAGE_COLUMNS.index("charged_plan")
U_CHARGED_EXTRA = USAGE_COLUMNS.index("charged_extra")
U_CHARGED_PAYG = USAGE_COLUMNS.index("charged_payg")
U_STATUS = USAGE_COLUMNS.index("status_code")
U_LATENCY = USAGE_COLUMNS.index("latency_ms")

CONTENT_COLUMNS = ("request_id", "key_id", "requested_model", "api", "input_tokens", "cached_tokens", "output_tokens",
                   "status_code", "latency_ms", "stream", "error", "reservation_id", "at")  # what a request said

LEDGER_COLUMNS = ("at", "account_id", "pool", "subscription_id", "pack_id", "key_id", "kind", "amount", "order_id",
                  "request_id", "reason")  # ledger, all but its serial id

RESERVATION_COLUMNS = ("id", "key_id", "account_id", "subscription_id", "pool", "amount", "holds", "status",
                       "request_id", "created_at", "expires_at", "closed_at")  # reservations

LATENCY_COLUMNS = tuple(f"lat_{i}" for i in range(12))  # one per bucket of domain/latency.py
ROLLUP_DIMENSIONS = ("local_day", "key_id", "group_name", "billed_model", "api", "status_class")
ROLLUP_SUMMED = ("input_tokens", "cached_tokens", "output_tokens", "cost", "charged_plan", "charged_extra",
                 "charged_payg")  # usage record columns a rollup sums as they are
ROLLUP_SUMS = ("requests", *ROLLUP_SUMMED, "latency_sum", "latency_count", *LATENCY_COLUMNS)
ROLLUP_COLUMNS = (*ROLLUP_DIMENSIONS, "account_id", "subscription_id", *ROLLUP_SUMS,
                  "last_at")  # usage_daily, all but its serial id

# what the read-only lists select (store/reads.py: plans, accounts, keys, subscriptions list)
PLAN_LISTED = ("id", "slug", "family", "tier", "on_sale", "version", "terms", "created_at", "updated_at")
ACCOUNT_LISTED = ("id", "name", "default_group", "parent_id", "subuser_quota", "payg_balance", "billing_name",
                  "billing_email", "billing_address", "billing_tax_id", "created_at", "updated_at")
KEY_LISTED = ("id", "account_id", "subscription_id", "kind", "name", "group_name", "status", "prefix", "last4",
              "credit_cap", "credit_used", "daily_limit", "rpd", "expires_at", "previous_valid_until", "created_at",
              "updated_at", "last_used_at")
SUBSCRIPTION_LISTED = ("id", "account_id", "plan_id", "plan_version_id", "status", "starts_at", "ends_at", "anchor_day",
                       "credit_granted", "credit_used", "period_limit_enabled", "cancelled_at")
