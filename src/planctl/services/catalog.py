"""Catalog use cases: plans, products, models, aliases and groups.

Each function is one short transaction: load, ask `domain.catalog`, write the
result and its audit entry. Every change to a plan's terms writes a new
immutable row in `plan_versions`; sales point at that row, so editing or
retiring a plan never changes a subscription already sold.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources
from typing import Any

from sqlmodel import Session, select

from planctl.domain import catalog as rules
from planctl.domain.errors import Conflict, InvalidInput, NotFound
from planctl.domain.money import format_ratio
from planctl.services import audit, settings
from planctl.services.audit import Caller
from planctl.store import refs
from planctl.services.listing import PlanRecord, plan_record
from planctl.store.engine import Database
from planctl.store.sql import Tx
from planctl.store.tables import Group, Model, ModelAlias, Plan, PlanVersion, Product


# ---------------------------------------------------------------- plans


def get_plan(db: Database, slug: str) -> PlanRecord:
    with db.read() as session:
        return plan_record(_plan_row(session, slug), settings.catalog_context(session))


def plan_version_terms(session: Session, plan_version_id: int) -> rules.PlanTerms:
    """The exact terms a sale was made under (used by sales)."""
    row = session.get(PlanVersion, plan_version_id)
    if row is None:
        raise NotFound(f"plan version {plan_version_id} does not exist")
    return rules.parse_plan(row.terms, settings.catalog_context(session))


def create_plan(db: Database, entry: Mapping[str, Any], *, caller: Caller, now: datetime) -> PlanRecord:
    with db.write() as session:
        if _find_plan(session, str(entry.get("slug", ""))) is not None:
            raise Conflict(f"plan {entry['slug']!r} already exists", code="plan_exists")
        ctx = settings.catalog_context(session)
        terms = rules.parse_plan(entry, ctx)
        row = _save_plan(session, None, terms, now)
        audit.record(session, caller, now, f"plan:{terms.slug}", f"created (price {rules.plan_to_dict(terms)['price']})")
        return plan_record(row, ctx)


def update_plan(
    db: Database, slug: str, changes: Mapping[str, Any], *, caller: Caller, now: datetime
) -> PlanRecord:
    """Change a plan's terms; subscriptions already sold keep their version."""
    with db.write() as session:
        ctx = settings.catalog_context(session)
        row = _plan_row(session, slug)
        old = rules.parse_plan(row.terms, ctx)
        new = rules.update_plan(old, changes, ctx)
        if new != old:
            _save_plan(session, row, new, now)
            audit.record(session, caller, now, f"plan:{slug}", _diff_summary(old, new))
        return plan_record(row, ctx)


def set_on_sale(db: Database, slug: str, on_sale: bool, *, caller: Caller, now: datetime) -> PlanRecord:
    """Retire (remove from sale) or put back on sale."""
    return update_plan(db, slug, {"on_sale": on_sale}, caller=caller, now=now)


def _plan_row(session: Session, ref: str) -> Plan:
    from planctl.services.sales import resolve_plan

    return resolve_plan(session, ref)


def _find_plan(session: Session, slug: str) -> Plan | None:
    return session.exec(select(Plan).where(Plan.slug == slug)).first()


def _save_plan(session: Session, row: Plan | None, terms: rules.PlanTerms, now: datetime) -> Plan:
    snapshot = rules.plan_to_dict(terms)
    if row is None:
        row = Plan(slug=terms.slug, family=terms.family, tier=terms.tier, on_sale=terms.on_sale,
                   version=1, terms=snapshot, created_at=now, updated_at=now)
    else:
        row.family, row.tier, row.on_sale = terms.family, terms.tier, terms.on_sale
        row.version, row.terms, row.updated_at = row.version + 1, snapshot, now
    session.add(row)
    session.flush()
    session.add(PlanVersion(plan_id=row.id, version=row.version, terms=snapshot, created_at=now))
    return row


def _diff_summary(old: Any, new: Any) -> str:
    before, after = _as_dict(old), _as_dict(new)
    changed = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in after if before.get(k) != after[k]]
    return "; ".join(changed) or "no change"


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, rules.PlanTerms):
        return rules.plan_to_dict(value)
    return rules.product_to_dict(value)


# ---------------------------------------------------------------- products


def list_products(db: Database, *, kind: str | None = None) -> list[rules.ProductTerms]:
    with db.read() as session:
        query = select(Product).order_by(Product.kind, Product.price_minor, Product.slug)
        if kind:
            query = query.where(Product.kind == kind)
        return [product_from_row(p) for p in session.exec(query)]


def get_product(db: Database, slug: str, *, kind: str | None = None) -> rules.ProductTerms:
    with db.read() as session:
        slug = refs.resolve(Tx.within(session), "product", slug)
        row = session.exec(select(Product).where(Product.slug == slug)).one()
        if kind and row.kind != kind:
            raise NotFound(f"unknown product {slug!r}", code="unknown_product")
        return product_from_row(row)


def product_from_row(row: Product) -> rules.ProductTerms:
    return rules.ProductTerms(
        slug=row.slug, kind=row.kind, name=row.name, price=row.price_minor, currency=row.currency,
        credit=row.credit, pricing=row.pricing,
        validity=None if row.validity is None else rules.parse_duration(row.validity), on_sale=row.on_sale,
    )


def _save_product(session: Session, terms: rules.ProductTerms, now: datetime) -> str:
    row = session.exec(select(Product).where(Product.slug == terms.slug)).first()
    values = dict(kind=terms.kind, name=terms.name, pricing=terms.pricing, price_minor=terms.price,
                  currency=terms.currency, credit=terms.credit, on_sale=terms.on_sale,
                  validity=None if terms.validity is None else str(terms.validity))
    if row is None:
        session.add(Product(slug=terms.slug, created_at=now, updated_at=now, **values))
        return "created"
    if product_from_row(row) == terms:
        return "unchanged"
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = now
    session.add(row)
    return "updated"


# ---------------------------------------------------------------- models and aliases


def list_models(db: Database) -> list[rules.ModelPrices]:
    with db.read() as session:
        return [_model(m) for m in session.exec(select(Model).order_by(Model.id))]


def _model(row: Model) -> rules.ModelPrices:
    return rules.ModelPrices(row.id, row.input_price, row.cached_price, row.output_price)


def set_model_price(
    db: Database, entry: Mapping[str, Any], *, create: bool, caller: Caller, now: datetime
) -> rules.ModelPrices:
    """Set a model's prices; `entry` may leave out prices that stay as they are."""
    with db.write() as session:
        row = session.get(Model, rules.model_id(entry["id"]))
        if row is None and not create:
            raise NotFound(f"unknown model {entry['id']!r}", code="unknown_model_to_create")
        current = rules.model_to_dict(_model(row)) if row else {}
        prices = rules.parse_model({**current, **{k: v for k, v in entry.items() if v is not None}})
        if _save_model(session, row, prices, now) != "unchanged":
            audit.record(session, caller, now, f"model:{prices.id}", _price_summary(prices))
        return prices


def _save_model(session: Session, row: Model | None, m: rules.ModelPrices, now: datetime) -> str:
    if row is not None and _model(row) == m:
        return "unchanged"
    if row is None:
        row = Model(id=m.id, input_price=0, cached_price=0, output_price=0, created_at=now, updated_at=now)
        status = "created"
    else:
        status = "updated"
    row.input_price, row.cached_price, row.output_price, row.updated_at = (
        m.input_price, m.cached_price, m.output_price, now)
    session.add(row)
    return status


def _price_summary(m: rules.ModelPrices) -> str:
    d = rules.model_to_dict(m)
    return f"prices per 1M tokens: input {d['input_price']}, cached {d['cached_price']}, output {d['output_price']}"


def list_aliases(db: Database) -> list[tuple[str, str]]:
    with db.read() as session:
        rows = session.exec(select(ModelAlias)).all()
        return sorted(((a.pattern, a.model_id) for a in rows), key=lambda pm: rules.specificity(pm[0]))


def set_alias(db: Database, pattern: str, model: str, *, caller: Caller, now: datetime) -> tuple[str, str]:
    pattern = rules.alias_pattern(pattern)
    with db.write() as session:
        model = refs.resolve(Tx.within(session), "model", model)
        _save_alias(session, pattern, model, now)
        audit.record(session, caller, now, f"alias:{pattern}", f"-> {model}")
    return pattern, model


def _save_alias(session: Session, pattern: str, model: str, now: datetime) -> str:
    row = session.get(ModelAlias, pattern)
    if row is None:
        session.add(ModelAlias(pattern=pattern, model_id=model, created_at=now))
        return "created"
    if row.model_id == model:
        return "unchanged"
    row.model_id = model
    session.add(row)
    return "updated"


def remove_alias(db: Database, pattern: str, *, caller: Caller, now: datetime) -> None:
    with db.write() as session:
        row = session.get(ModelAlias, pattern)
        if row is None:
            raise NotFound(f"no alias with pattern {pattern!r}", code="unknown_alias")
        session.delete(row)
        audit.record(session, caller, now, f"alias:{pattern}", f"removed (was -> {row.model_id})")


def resolve(db: Database, requested: str) -> rules.Resolution:
    with db.read() as session:
        models = session.exec(select(Model.id)).all()
        aliases = {a.pattern: a.model_id for a in session.exec(select(ModelAlias))}
    return rules.resolve_model(requested, models, aliases)


# ---------------------------------------------------------------- groups


def list_groups(db: Database) -> list[rules.GroupSpec]:
    with db.read() as session:
        return [_group(g) for g in session.exec(select(Group).order_by(Group.name))]


def _group(row: Group) -> rules.GroupSpec:
    return rules.GroupSpec(row.name, row.ratio_ppm, row.description)


def create_group(db: Database, entry: Mapping[str, Any], *, caller: Caller, now: datetime) -> rules.GroupSpec:
    spec = rules.parse_group(entry)
    with db.write() as session:
        if session.get(Group, spec.name) is not None:
            raise Conflict(f"group {spec.name!r} already exists", code="group_exists")
        _save_group(session, None, spec, now)
        audit.record(session, caller, now, f"group:{spec.name}", f"created, ratio {format_ratio(spec.ratio_ppm)}")
    return spec


def update_group(db: Database, name: str, changes: Mapping[str, Any], *, caller: Caller, now: datetime) -> rules.GroupSpec:
    with db.write() as session:
        row = session.get(Group, refs.resolve(Tx.within(session), "group", name))
        assert row is not None
        old = _group(row)
        new = rules.parse_group({**rules.group_to_dict(old), **{k: v for k, v in changes.items() if v is not None}})
        if _save_group(session, row, new, now) != "unchanged":
            audit.record(session, caller, now, f"group:{name}",
                         f"ratio {format_ratio(old.ratio_ppm)} -> {format_ratio(new.ratio_ppm)}; "
                         f"description {old.description!r} -> {new.description!r}")
    return new


def _save_group(session: Session, row: Group | None, g: rules.GroupSpec, now: datetime) -> str:
    if row is not None and _group(row) == g:
        return "unchanged"
    status = "updated" if row else "created"
    row = row or Group(name=g.name, created_at=now, updated_at=now)
    row.ratio_ppm, row.description, row.updated_at = g.ratio_ppm, g.description, now
    session.add(row)
    return status


# ---------------------------------------------------------------- import / export


@dataclass(frozen=True)
class ImportChange:
    section: str
    name: str
    status: str  # created | updated | unchanged


def parse_catalog_text(text: str, *, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source} is not valid TOML: {exc}") from None


def import_catalog(
    db: Database, doc: Mapping[str, Any], *, caller: Caller, now: datetime, dry_run: bool = False
) -> list[ImportChange]:
    """Validate the whole document first, then apply it in one transaction.

    Entries are created or updated by name; nothing absent from the file is
    removed (retire plans explicitly). With `dry_run` nothing is written.
    """
    with db.write(rollback=dry_run) as session:
        catalog = rules.parse_catalog(doc, settings.catalog_context(session))
        changes = _apply_catalog(session, catalog, now)
        touched = [c for c in changes if c.status != "unchanged"]
        if touched:
            audit.record(session, caller, now, "catalog",
                         f"import: {len(touched)} changed of {len(changes)} entries: "
                         + ", ".join(f"{c.section}:{c.name} {c.status}" for c in touched[:20]))
        return changes


def _apply_catalog(session: Session, c: rules.Catalog, now: datetime) -> list[ImportChange]:
    out: list[ImportChange] = []
    for g in c.groups:
        out.append(ImportChange("groups", g.name, _save_group(session, session.get(Group, g.name), g, now)))
    for m in c.models:
        out.append(ImportChange("models", m.id, _save_model(session, session.get(Model, m.id), m, now)))
    session.flush()
    for pattern, model in c.aliases:
        out.append(ImportChange("aliases", pattern, _save_alias(session, pattern, model, now)))
    ctx = settings.catalog_context(session)
    for terms in c.plans:
        row = _find_plan(session, terms.slug)
        if row is not None and rules.parse_plan(row.terms, ctx) == terms:
            out.append(ImportChange("plans", terms.slug, "unchanged"))
            continue
        _save_plan(session, row, terms, now)
        out.append(ImportChange("plans", terms.slug, "updated" if row else "created"))
    for p in c.products:
        out.append(ImportChange(p.kind, p.slug, _save_product(session, p, now)))
    session.flush()
    return out


def export_catalog(db: Database) -> dict[str, Any]:
    """The whole catalog as a document `import_catalog` accepts."""
    with db.read() as session:
        ctx = settings.catalog_context(session)
        catalog = rules.Catalog(
            groups=tuple(_group(g) for g in session.exec(select(Group).order_by(Group.name))),
            models=tuple(_model(m) for m in session.exec(select(Model).order_by(Model.id))),
            aliases=tuple(sorted(((a.pattern, a.model_id) for a in session.exec(select(ModelAlias))),
                                 key=lambda pm: rules.specificity(pm[0]))),
            plans=tuple(plan_record(p, ctx).terms for p in session.exec(select(Plan).order_by(Plan.family, Plan.tier))),
            products=tuple(product_from_row(p) for p in session.exec(select(Product).order_by(Product.kind, Product.slug))),
        )
    return rules.catalog_to_dict(catalog)


def load_sample_catalog(session: Session, now: datetime) -> None:
    """Seed a new database (runs inside the transaction that creates it)."""
    text = resources.files("planctl.data").joinpath("sample_catalog.toml").read_text("utf-8")
    doc = parse_catalog_text(text, source="the sample catalog")
    changes = _apply_catalog(session, rules.parse_catalog(doc, settings.catalog_context(session)), now)
    audit.record(session, Caller.from_env("(new database)"), now, "catalog",
                 f"database created; sample catalog loaded ({len(changes)} entries)")


def relabel_currency(session: Session, currency: str, now: datetime) -> None:
    """Move every price to another currency with the same minor units (config set currency)."""
    ctx = settings.catalog_context(session)
    for row in session.exec(select(Plan)):
        _save_plan(session, row, replace(rules.parse_plan(row.terms, ctx), currency=currency), now)
    for product in session.exec(select(Product)):
        product.currency, product.updated_at = currency, now
        session.add(product)
