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

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint
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
