"""SQLModel table classes: the schema, and nothing else.

Money and credit are integers (minor units, micro-credits); timestamps are UTC
(`UTCDateTime` makes them timezone-aware on the way out, also on SQLite).
A plan's terms live in one JSON document (validated by `domain.catalog`), with
the columns that listings filter on mirrored beside it; every version of those
terms is kept in `plan_versions` so a sale can point at the exact terms it was
sold under.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _utc(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


def _int(**kw: Any) -> Any:
    """A 64-bit integer column (credit in µcr outgrows 32 bits quickly)."""
    return Field(sa_type=BigInteger, **kw)


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str
    applied_at: datetime = _utc()


class Setting(SQLModel, table=True):
    __tablename__ = "settings"

    key: str = Field(primary_key=True)
    value: str


class Group(SQLModel, table=True):
    __tablename__ = "groups"

    name: str = Field(primary_key=True)
    description: str = ""
    ratio_ppm: int = _int(default=1_000_000)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class Model(SQLModel, table=True):
    __tablename__ = "models"

    id: str = Field(primary_key=True)
    input_price: int = _int()  # µcr per million uncached input tokens
    cached_price: int = _int()  # µcr per million cached input tokens
    output_price: int = _int()  # µcr per million output tokens
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class ModelAlias(SQLModel, table=True):
    __tablename__ = "model_aliases"

    pattern: str = Field(primary_key=True)
    model_id: str = Field(foreign_key="models.id")
    created_at: datetime = _utc()


class Plan(SQLModel, table=True):
    __tablename__ = "plans"

    id: Optional[int] = Field(default=None, primary_key=True)
    slug: str = Field(unique=True)
    family: str = Field(index=True)
    tier: int
    on_sale: bool
    version: int = 1
    terms: dict = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class PlanVersion(SQLModel, table=True):
    __tablename__ = "plan_versions"
    __table_args__ = (UniqueConstraint("plan_id", "version"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    plan_id: int = Field(foreign_key="plans.id")
    version: int
    terms: dict = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _utc()


class Product(SQLModel, table=True):
    """Extra-usage packs and pay-as-you-go top-ups."""

    __tablename__ = "products"

    id: Optional[int] = Field(default=None, primary_key=True)
    slug: str = Field(unique=True)
    kind: str  # "extra" | "payg"
    name: str
    pricing: str  # "pack" (fixed credit for the price) | "rate" (price per `credit`)
    price_minor: int = _int()
    currency: str
    credit: int = _int()
    validity: Optional[str] = None  # extra packs only; None = valid until used
    on_sale: bool = True
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class Account(SQLModel, table=True):
    __tablename__ = "accounts"

    id: str = Field(primary_key=True)
    name: str = Field(unique=True)
    default_group: str = Field(foreign_key="groups.name")
    parent_id: Optional[str] = Field(default=None, foreign_key="accounts.id", index=True)
    subuser_quota: Optional[int] = _int(default=None, nullable=True)
    billing_name: str = ""
    billing_email: str = ""
    billing_address: str = ""
    billing_tax_id: str = ""
    payg_balance: int = _int(default=0)
    payg_reserved: int = _int(default=0)  # schema version 2
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_target", "target"))

    id: Optional[int] = Field(default=None, primary_key=True)
    at: datetime = _utc()
    actor: str
    command: str
    target: str
    summary: str


# ---------------------------------------------------------------- sales (schema version 2)


class Counter(SQLModel, table=True):
    """Gapless sequences (order numbers per day, invoice numbers per year).

    Taken with one conditional UPDATE inside the write transaction, so two
    processes can never draw the same number.
    """

    __tablename__ = "counters"

    name: str = Field(primary_key=True)
    value: int = _int(default=0)


class Subscription(SQLModel, table=True):
    """A sold plan. Its terms are the plan version it points at, never the live plan.

    Each renewal moves `ends_at` by one validity, anchored on `anchor_day` (the
    local day the subscription started), so stacked monthly renewals keep the
    day: Jan 31 → Feb 28 → Mar 31. `credit_granted` is None for a purely
    periodic plan.
    """

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_account", "account_id", "status"),)

    id: str = Field(primary_key=True)
    account_id: str = Field(foreign_key="accounts.id")
    plan_id: int = Field(foreign_key="plans.id")
    plan_version_id: int = Field(foreign_key="plan_versions.id")
    status: str = "active"  # active | cancelled (expiry is computed from ends_at)
    starts_at: datetime = _utc()
    ends_at: datetime = _utc(index=True)
    anchor_day: int
    credit_granted: Optional[int] = _int(default=None, nullable=True)
    credit_used: int = _int(default=0)
    credit_reserved: int = _int(default=0)
    period_limit_enabled: bool = True
    cancelled_at: Optional[datetime] = _utc(default=None, nullable=True)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class SubscriptionTerm(SQLModel, table=True):
    """A renewed term sold under another plan version than the one in force when it was sold.

    The subscription's own `plan_version_id` holds until the first such term
    starts; from `starts_at` on, the term's version applies (schema version 6).
    """

    __tablename__ = "subscription_terms"
    __table_args__ = (Index("ix_subscription_terms_sub", "subscription_id", "starts_at"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    subscription_id: str = Field(foreign_key="subscriptions.id")
    starts_at: datetime = _utc()
    plan_version_id: int = Field(foreign_key="plan_versions.id")
    order_id: str = Field(foreign_key="orders.id")


class ApiKey(SQLModel, table=True):
    """A key. Only a SHA-256 digest of the secret is stored, with a visible prefix and last four."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: str = Field(primary_key=True)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    subscription_id: Optional[str] = Field(default=None, foreign_key="subscriptions.id", index=True)
    kind: str  # subscription | team | payg
    name: str
    secret_sha256: str = Field(unique=True)
    prefix: str
    last4: str
    group_name: str = Field(foreign_key="groups.name")
    status: str = "active"  # active | disabled | revoked
    expires_at: Optional[datetime] = _utc(default=None, nullable=True)
    credit_cap: Optional[int] = _int(default=None, nullable=True)
    credit_used: int = _int(default=0)
    credit_reserved: int = _int(default=0)
    daily_limit: Optional[int] = _int(default=None, nullable=True)
    rpd: Optional[int] = None
    previous_sha256: Optional[str] = Field(default=None, index=True)
    previous_valid_until: Optional[datetime] = _utc(default=None, nullable=True)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()
    last_used_at: Optional[datetime] = _utc(default=None, nullable=True)


class DiscountCode(SQLModel, table=True):
    __tablename__ = "discount_codes"

    code: str = Field(primary_key=True)
    kind: str  # percent | fixed
    value: int = _int()  # percent: basis points (1250 = 12.5 %); fixed: minor units
    currency: str
    valid_from: Optional[datetime] = _utc(default=None, nullable=True)
    valid_until: Optional[datetime] = _utc(default=None, nullable=True)
    max_redemptions: Optional[int] = None
    max_per_account: Optional[int] = None
    plans: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # [] = every plan
    order_kinds: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # [] = every kind
    payment_methods: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # [] = any
    min_amount: int = _int(default=0)
    active: bool = True
    redemptions: int = 0
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class Order(SQLModel, table=True):
    """A sale or a renewal: what was bought, at what price, with what discount."""

    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_account", "account_id", "created_at"),)

    id: str = Field(primary_key=True)  # ORD-20261121-0001
    kind: str  # buy | renew | upgrade | extra | topup | direct-renewal
    account_id: str = Field(foreign_key="accounts.id")
    subscription_id: Optional[str] = Field(default=None, foreign_key="subscriptions.id", index=True)
    plan_version_id: Optional[int] = Field(default=None, foreign_key="plan_versions.id")
    item: str  # plan or product slug
    currency: str
    list_price: int = _int()
    discount_code: Optional[str] = Field(default=None, foreign_key="discount_codes.code")
    discount_amount: int = _int(default=0)
    discount_terms: Optional[dict] = Field(default=None, sa_column=Column(JSON, nullable=True))
    payable: int = _int()
    refunded: int = _int(default=0)
    payment_method: str
    payment_ref: Optional[str] = None
    status: str = "paid"  # pending | paid | refunded | partially-refunded | cancelled
    credit_granted: int = _int(default=0)
    validity_granted: Optional[str] = None
    reason: Optional[str] = None
    idempotency_key: Optional[str] = Field(default=None, unique=True)
    request_digest: Optional[str] = None
    created_at: datetime = _utc()
    paid_at: Optional[datetime] = _utc(default=None, nullable=True)


class ExtraPack(SQLModel, table=True):
    """Extra-usage credit bought by an account; packs expiring first are drawn first."""

    __tablename__ = "extra_packs"
    __table_args__ = (Index("ix_extra_packs_account", "account_id", "expires_at"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    account_id: str = Field(foreign_key="accounts.id")
    order_id: str = Field(foreign_key="orders.id")
    credit: int = _int()
    used: int = _int(default=0)
    reserved: int = _int(default=0)
    expires_at: Optional[datetime] = _utc(default=None, nullable=True)
    created_at: datetime = _utc()


class Refund(SQLModel, table=True):
    __tablename__ = "refunds"

    id: Optional[int] = Field(default=None, primary_key=True)
    order_id: str = Field(foreign_key="orders.id", index=True)
    amount: int = _int()
    credit_reversed: int = _int(default=0)
    reason: str
    policy: str  # the rule that decided, or "override"
    details: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _utc()


class Invoice(SQLModel, table=True):
    """An issued invoice or credit note: an immutable snapshot."""

    __tablename__ = "invoices"
    __table_args__ = (  # one invoice per order, guaranteed by the database (credit notes may be many)
        Index("ux_invoices_one_per_order", "order_id", unique=True,
              sqlite_where=text("kind = 'invoice'"), postgresql_where=text("kind = 'invoice'")),
    )

    id: str = Field(primary_key=True)  # INV-2026-000001 / CN-2026-000001
    kind: str  # invoice | credit-note
    order_id: str = Field(foreign_key="orders.id", index=True)
    refund_id: Optional[int] = Field(default=None, foreign_key="refunds.id")
    references_id: Optional[str] = Field(default=None, foreign_key="invoices.id")
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    issued_at: datetime = _utc()


class LedgerEntry(SQLModel, table=True):
    """Append-only record of every change of credit; balances must equal its sums."""

    __tablename__ = "ledger"  # append-only and unindexed: `db check` sums it in one scan (schema version 3)

    id: Optional[int] = Field(default=None, primary_key=True)
    at: datetime = _utc()
    account_id: str = Field(foreign_key="accounts.id")
    pool: str  # plan | extra | payg
    subscription_id: Optional[str] = Field(default=None, foreign_key="subscriptions.id")
    pack_id: Optional[int] = Field(default=None, foreign_key="extra_packs.id")
    key_id: Optional[str] = Field(default=None, foreign_key="api_keys.id")
    kind: str  # grant | debit | reserve | release | expiry | refund-reversal | adjustment
    amount: int = _int()  # signed µcr: + adds to the balance, − takes from it
    order_id: Optional[str] = Field(default=None, foreign_key="orders.id")
    request_id: Optional[str] = None
    reason: str = ""


# ---------------------------------------------------------------- metering


class UsageCounter(SQLModel, table=True):
    """Use per natural window: a subscription's period and day, a key's day, a sub-user's total.

    A counter belongs to its window's start instant, so nothing needs to run at
    midnight: the next day's requests simply count in a new row.
    """

    __tablename__ = "usage_counters"
    __table_args__ = (UniqueConstraint("owner", "scope", "window_start"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    owner: str  # subscription, key or account id
    scope: str  # sub-period | sub-day | key-day | subuser
    window_start: datetime = _utc()
    requests: int = _int(default=0)
    tokens: int = _int(default=0)
    credit: int = _int(default=0)
    reserved: int = _int(default=0)


class Reservation(SQLModel, table=True):
    """A hold (two-phase admission): settled by the request's record, or released when stale."""

    __tablename__ = "reservations"
    __table_args__ = (  # only open holds are indexed, so the index stays as small as the holds in flight
        Index("ix_reservations_held", "expires_at",
              sqlite_where=text("status = 'held'"), postgresql_where=text("status = 'held'")),
    )

    id: str = Field(primary_key=True)
    key_id: str = Field(foreign_key="api_keys.id")
    account_id: str = Field(foreign_key="accounts.id")
    subscription_id: Optional[str] = Field(default=None, foreign_key="subscriptions.id")
    pool: str  # plan | extra | payg
    amount: int = _int()
    holds: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # what was held where
    status: str = "held"  # held | settled | released | expired
    request_id: Optional[str] = None
    created_at: datetime = _utc()
    expires_at: datetime = _utc()
    closed_at: Optional[datetime] = _utc(default=None, nullable=True)


class UsageRecord(SQLModel, table=True):
    """One request, kept in full. Re-recording the same request id changes nothing."""

    __tablename__ = "usage_records"
    __table_args__ = (  # each index costs every recorded request a B-tree insert (schema version 4 dropped
        Index("ix_usage_at", "at"),  # the group and model ones: a raw time range is filtered by them, and whole
        Index("ix_usage_key_at", "key_id", "at"),  # days are read from the rollups)
        Index("ix_usage_account_at", "account_id", "at"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    request_id: str = Field(unique=True)
    at: datetime = _utc()
    local_day: str  # natural day in the reset zone, YYYY-MM-DD, computed once at write time
    account_id: str = Field(foreign_key="accounts.id")
    key_id: str = Field(foreign_key="api_keys.id")
    subscription_id: Optional[str] = Field(default=None, foreign_key="subscriptions.id")
    group_name: str
    requested_model: str
    billed_model: str
    api: str
    input_tokens: int = _int(default=0)
    cached_tokens: int = _int(default=0)
    output_tokens: int = _int(default=0)
    cost: int = _int(default=0)  # µcr
    charged_plan: int = _int(default=0)
    charged_extra: int = _int(default=0)
    charged_payg: int = _int(default=0)
    pool: str  # where the cost went: plan | extra | payg | mixed | none
    status_code: int
    latency_ms: Optional[int] = None
    stream: bool = False
    error: Optional[str] = None
    reservation_id: Optional[str] = None
    ttfb_ms: Optional[int] = None  # schema 5: what the gateway knows of a request (None when recorded by hand)
    upstream: Optional[str] = None  # the upstream's name
    client_request_id: Optional[str] = None  # the client's own request id (x-client-request-id), for support
    session_id: Optional[str] = None  # the client's session id (session-id), for support
    usage_estimated: Optional[bool] = None  # the upstream never reported usage: charged from an estimate


class UsageDaily(SQLModel, table=True):
    """Daily rollup of usage per key, group, model, API and status class, kept at record time.

    Long-range reports read these instead of raw records; `local_day` is the
    natural day in the reset zone. Latency is kept as a sum and a histogram
    (`lat_i` counts requests in bucket i of domain/latency.py).
    """

    __tablename__ = "usage_daily"
    __table_args__ = (
        UniqueConstraint("local_day", "key_id", "group_name", "billed_model", "api", "status_class"),
        Index("ix_usage_daily_day", "local_day"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    local_day: str
    key_id: str = Field(foreign_key="api_keys.id")
    account_id: str = Field(foreign_key="accounts.id")
    subscription_id: Optional[str] = None
    group_name: str
    billed_model: str
    api: str
    status_class: str  # 2xx | 3xx | 4xx | 5xx | 1xx
    requests: int = _int(default=0)
    input_tokens: int = _int(default=0)
    cached_tokens: int = _int(default=0)
    output_tokens: int = _int(default=0)
    cost: int = _int(default=0)
    charged_plan: int = _int(default=0)
    charged_extra: int = _int(default=0)
    charged_payg: int = _int(default=0)
    latency_sum: int = _int(default=0)
    latency_count: int = _int(default=0)
    lat_0: int = _int(default=0)
    lat_1: int = _int(default=0)
    lat_2: int = _int(default=0)
    lat_3: int = _int(default=0)
    lat_4: int = _int(default=0)
    lat_5: int = _int(default=0)
    lat_6: int = _int(default=0)
    lat_7: int = _int(default=0)
    lat_8: int = _int(default=0)
    lat_9: int = _int(default=0)
    lat_10: int = _int(default=0)
    lat_11: int = _int(default=0)
    last_at: Optional[datetime] = _utc(default=None, nullable=True)


class Upstream(SQLModel, table=True):
    """An OpenAI-compatible endpoint the gateway forwards to. Its secret is never stored: only
    the name of the environment variable or file that holds it."""

    __tablename__ = "upstreams"

    name: str = Field(primary_key=True)
    base_url: str
    key_env: Optional[str] = None
    key_file: Optional[str] = None
    models: list[str] = Field(default_factory=list, sa_type=JSON)  # globs of billed models; empty = all
    apis: str = "responses,chat"  # API types served, comma-separated
    priority: int = 0  # lowest first
    weight: int = 1  # share within a priority
    enabled: bool = True
    healthy: bool = True  # false after the upstream refused its own key (401/403)
    last_error: Optional[str] = None
    reports: Optional[dict[str, Any]] = Field(default=None, sa_type=JSON)  # gateway worker -> its view (health)
    checked_at: Optional[datetime] = _utc(default=None)
    created_at: datetime = _utc()
    updated_at: datetime = _utc()
