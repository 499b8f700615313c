"""Errors and notes worded for the command line: the flags to fix and the commands to run next.

Below cli/ an error (or a note: a sale's warning, a check's detail) says what was
wrong in words any caller can show; where the command line has more to say, it
carries a `code` and `fields` (domain/errors.py) and this table words it. A template is formatted with the
error's fields and `message` (what the error itself says); a code without a
template prints the message as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from planctl.domain.errors import Note, PlanctlError

NEW_DEMO_DATABASE = "run it on a new database: planctl --db demo.db demo"

LISTS = {  # unknown_<thing>: where to see the ones there are
    "account": "accounts list", "key": "keys list", "plan": "plans list", "subscription": "subscriptions list",
    "order": "orders list", "invoice": "invoices list", "group": "groups list", "model": "models list",
    "product": "products list", "alias": "aliases list", "discount_code": "discounts list",
    "setting": "config list", "reservation": "reservations list", "upstream": "upstreams list",
}

Template = str | Callable[[Mapping[str, Any]], str]

WORDING: dict[str, Template] = {
    **{f"unknown_{thing}": f"{{message}}; see 'planctl {listing}'" for thing, listing in LISTS.items()},
    "unknown_product_of_kind": "{message}; see 'planctl products list --kind {kind}'",
    "unknown_model_to_create": "{message}; add it with --create and all three prices",
    "unknown_after": "--after: {message}",
    "ambiguous_key": "{message} (or --account)",
    "plan_exists": "{message}; change it with 'planctl plans update'",
    "group_exists": "{message}; change it with 'planctl groups update'",
    "at_least_one": lambda f: f"--{f['option'].replace('_', '-')} must be at least 1",
    # accounts and keys
    "quota_needs_parent": "--quota applies to sub-users: give --parent too",
    "key_quantity": "--quantity must be between 1 and {most}, got {quantity}",
    "expiry_past": "--expires must be in the future",
    "group_not_in_plan": "{message}; choose one with --group",
    "key_needs_source": "give --from-plan PLAN_OR_SUBSCRIPTION, or --payg for a pay-as-you-go key",
    "key_needs_account_to_pick": "give --account to pick {plan} subscriptions (or pass a subscription id)",
    "key_several_subscriptions": "{message}; pass the subscription id to --from-plan",
    "payg_key_with_plan": "--payg keys draw on the account's balance: leave out --from-plan",
    "payg_key_needs_account": "give --account for a pay-as-you-go key",
    "payg_key_with_cap": "--credit caps plan credit; a pay-as-you-go key draws on the account balance",
    "payg_key_cap_edit": "--credit caps plan credit; a pay-as-you-go key has none",
    # sales, refunds, invoices, discounts
    "buyer_missing": "give the buyer with --account",
    "direct_renewal_needs_reason": "a direct renewal needs --reason (it is recorded in the audit log)",
    "amount_not_direct": "--amount sets the price of a direct renewal (--direct), zero or more",
    "code_not_applicable": "{cause} (sell at list price with --ignore-invalid-code)",
    "code_not_applied": "code not applied, sold at list price: {cause}",
    "move_keys_to_group": "{message}: planctl keys edit KEY --group {group}",
    "refund_amount_needs_reason": "an override amount needs --reason",
    "refund_policy_none": "{message}; an operator can still refund with --amount and --reason",
    "refund_by_amount": "{message}; an operator can refund with --amount",
    "already_invoiced": "{message}; see 'planctl invoices show {invoice}'",
    "invoice_not_supported": "{message}; the operator can enable them with 'planctl plans update'",
    "until_before_from": "--until must be after --from",
    "discount_already_expired": lambda f: f"--until {f['until'].isoformat()} is already past: the code could "
                                          "never be used (pass --force to create it anyway)",
    # metering and reports
    "reserve_not_positive": "--reserve must be greater than zero",
    "until_before_since": "--until must be after --since",
    "invalid_status": "invalid --status {status!r}: use a code such as 200, or {choices}",
    # the database
    "database_damaged": "{message}; run 'planctl db check'",
    "schema_behind": "{message}; run 'planctl db migrate'",
    "journal_to_replay": "{message}; start planctl serve to replay them",
    "unusable_database_file": "{message}; choose another file with --db or PLANCTL_DB",
    "db_option_empty": "--db is empty: give a SQLite file path or a postgresql://… URL",
    "data_directory_unusable": "{message}; set PLANCTL_HOME or --db",
    # demo
    "demo_fast": "--fast: {message}",
    "demo_days": "--days must be 1 to 366",
    "demo_records": "--records must be 0 or more",
    "demo_accounts": "--accounts must be 1 to 100",
    "demo_range_too_short": "{message}; give --days 1 or more",
    "demo_database_not_empty": "{message}; pass --yes to add it anyway, or use a new database: "
                               "planctl --db demo.db demo",
    "demo_needs_new_database": "{message}; " + NEW_DEMO_DATABASE,
}


def word(said: PlanctlError | str) -> str:
    """The line people read for an error or a note (domain/errors.py): its message, or its code
    worded with its fields."""
    message = said.message if isinstance(said, PlanctlError) else str(said)
    template = WORDING.get(getattr(said, "code", None) or "")
    if template is None:
        return message
    fields = {k: word(v) if isinstance(v, (PlanctlError, Note)) else v for k, v in said.fields.items()}
    if callable(template):
        return template(fields)
    return template.format(message=message, **fields)


SUGGESTIONS: dict[str, Template] = {  # what would lift a limit (`limits show`): domain/denials.py remedies
    "buy_extra_usage": "buy extra usage: planctl extra buy extra-50 --account {subscription_account}",
    "disable_period_limit": "disable the periodic limit to use the total credit: planctl limits disable {subscription}",
    "wait_for_reset": "wait for the reset shown above (this plan offers no other way)",
    "renew": "renew (inside the renewal window) or ask for a direct renewal: planctl renew {subscription}",
    "payg_balance_empty": "top up: planctl topup {account} 100",
    "key_credit_cap_reached": "raise or clear the key's credit cap: planctl keys edit {key} --credit none",
    "key_daily_limit_reached": "raise or clear the key's daily limit: planctl keys edit {key} "
                               "--daily-limit none (or wait for the reset)",
    "key_rpd_reached": "raise or clear the key's RPD: planctl keys edit {key} --rpd none (or wait for the reset)",
    "key_disabled": "enable the key: planctl keys enable {key}",
    "key_expired": "extend the key: planctl keys edit {key} --expires none",
    "key_revoked": lambda f: "a revoked key stays revoked: create a new one with planctl keys create --from-plan "
                             + (f["subscription"] or "PLAN"),
    "subscription_cancelled": lambda f: f"buy the plan again: planctl buy {f['plan'] or 'PLAN'} --account {f['owner']}",
    "subscription_not_started": "wait for the subscription's start (planctl subscriptions show)",
    "subuser_quota_reached": "raise or clear the sub-user's quota: planctl accounts update {subuser} --quota none",
    "group_not_in_plan": "move the key to one of the plan's groups: planctl keys edit {key} --group GROUP",
    "model_not_in_plan": "use a model of the plan, or upgrade to a plan that has it: planctl upgrade",
    "api_type_not_in_plan": "use an API type of the plan, or upgrade to a plan that has it: planctl upgrade",
}


def suggestion(code: str, fields: Mapping[str, Any]) -> str:
    """One way to lift what blocks, as a command to run."""
    template = SUGGESTIONS[code]
    return template(fields) if callable(template) else template.format(**fields)
