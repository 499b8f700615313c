"""Installation settings stored in the database (`planctl config`)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from planctl.domain import config
from planctl.domain.catalog import Context, currency_decimals
from planctl.domain.clock import zone
from planctl.domain.errors import Refused
from planctl.services import audit
from planctl.store.engine import Database
from planctl.store.tables import Setting, UsageDaily


def load(session: Session) -> dict[str, str]:
    """Every setting, stored or default."""
    return config.effective({s.key: s.value for s in session.exec(select(Setting))})


def reset_zone(session: Session) -> ZoneInfo:
    return zone(load(session)["reset_timezone"])


def catalog_context(session: Session) -> Context:
    """What catalog entries are validated against (services/listing.py)."""
    from planctl.services.listing import catalog_context
    from planctl.store.sql import Tx

    return catalog_context(Tx.within(session))


def list_settings(db: Database) -> dict[str, str]:
    with db.read() as session:
        return load(session)


def get(db: Database, key: str) -> str:
    config.spec(key)
    return list_settings(db)[key]


def set_value(db: Database, key: str, value: str, *, caller: audit.Caller, now: datetime) -> str:
    """Validate and store a setting; returns the stored (normalized) value."""
    stored = config.normalize(key, value)
    with db.write() as session:
        old = load(session)[key]
        if key == "currency" and stored != old:
            _change_currency(session, old, stored, now)
        if stored == old:
            return stored
        if key == "reset_timezone" and session.exec(select(UsageDaily.id).limit(1)).first() is not None:
            raise Refused(
                f"usage is already rolled up by natural days of {old}; the reset zone cannot change "
                "once usage has been recorded (start a new database to use another zone)",
                reason="reset_zone_in_use",
            )
        row = session.get(Setting, key)
        if row is None:
            session.add(Setting(key=key, value=stored))
        else:
            row.value = stored
        audit.record(session, caller, now, f"config:{key}", f"{old!r} -> {stored!r}")
    return stored


def _change_currency(session: Session, old: str, new: str, now: datetime) -> None:
    """Prices are minor units: only a currency with the same minor units can take them over."""
    if currency_decimals(old) != currency_decimals(new):
        raise Refused(
            f"{old} has {currency_decimals(old)} decimals and {new} has {currency_decimals(new)}; "
            "export the catalog, set the currency on a new database, and import it with new prices",
            reason="currency_in_use",
        )
    from planctl.services.catalog import relabel_currency

    relabel_currency(session, new, now)
