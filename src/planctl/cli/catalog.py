"""`planctl models …`, `planctl aliases …` and `planctl groups …`."""


from typing import Annotated, Optional

import typer

from planctl.cli.context import state
from planctl.cli.output import (
    Column, CsvOpt, JsonlOpt, JsonOpt, YesOpt, emit_record, emit_rows, output_format, say,
)

models_app = typer.Typer(help="Models and their prices (credit per million tokens).",
                         epilog="Example: planctl models set-price gpt-5.4 --output 65", no_args_is_help=True)
aliases_app = typer.Typer(help="Model aliases: glob patterns billed as a catalog model.",
                          epilog="Example: planctl aliases resolve claude-sonnet-4-5", no_args_is_help=True)
groups_app = typer.Typer(help="Groups and their price ratios.",
                         epilog="Example: planctl groups create batch --ratio 0.6", no_args_is_help=True)

MODEL_COLUMNS = (
    Column("id", "Model", "id"), Column("input_price", "Input /1M", "credit"),
    Column("cached_price", "Cached /1M", "credit"), Column("output_price", "Output /1M", "credit"),
)
ALIAS_COLUMNS = (Column("pattern", kind="id"), Column("model", kind="id"))
GROUP_COLUMNS = (Column("name", kind="id"), Column("ratio", kind="int"), Column("description"))


@models_app.command("list")
def list_models(ctx: typer.Context, json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False) -> None:
    """List models with their prices in credit per million tokens.

    Example: planctl models list --json
    """
    from planctl.domain.catalog import model_to_dict
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    emit_rows(st, (model_to_dict(m) for m in catalog.list_models(st.db())), MODEL_COLUMNS, fmt)


@models_app.command("set-price")
def set_price(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Model id, e.g. gpt-5.4.")],
    input_price: Annotated[Optional[str], typer.Option("--input", help="Credit per 1M uncached input tokens.")] = None,
    cached_price: Annotated[Optional[str], typer.Option("--cached", help="Credit per 1M cached input tokens.")] = None,
    output_price: Annotated[Optional[str], typer.Option("--output", help="Credit per 1M output tokens.")] = None,
    create: Annotated[bool, typer.Option("--create", help="Add the model if it does not exist.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Set a model's prices (prices not given stay as they are).

    Example: planctl models set-price gpt-5.4 --input 8.75 --cached 0.875 --output 70
    """
    from planctl.domain.catalog import model_to_dict
    from planctl.domain.errors import InvalidInput
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    if input_price is None and cached_price is None and output_price is None:
        raise InvalidInput("give at least one of --input, --cached, --output")
    entry = {"id": model, "input_price": input_price, "cached_price": cached_price, "output_price": output_price}
    prices = catalog.set_model_price(st.db(), entry, create=create, caller=st.caller(), now=st.now())
    emit_record(st, model_to_dict(prices), MODEL_COLUMNS, fmt)


@aliases_app.command("list")
def list_aliases(ctx: typer.Context, json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False) -> None:
    """List aliases, most specific first (the order in which they win).

    Example: planctl aliases list
    """
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    rows = ({"pattern": p, "model": m} for p, m in catalog.list_aliases(st.db()))
    emit_rows(st, rows, ALIAS_COLUMNS, fmt)


@aliases_app.command("set")
def set_alias(
    ctx: typer.Context,
    pattern: Annotated[str, typer.Argument(help="Glob pattern, e.g. 'claude-opus*'.")],
    model: Annotated[str, typer.Argument(help="Catalog model it bills as.")],
    json_: JsonOpt = False,
) -> None:
    """Bill requests for models matching PATTERN as MODEL (creates or replaces).

    Example: planctl aliases set 'claude-opus*' gpt-5.5
    """
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    pattern, model = catalog.set_alias(st.db(), pattern, model, caller=st.caller(), now=st.now())
    emit_record(st, {"pattern": pattern, "model": model}, ALIAS_COLUMNS, fmt)


@aliases_app.command("remove")
def remove_alias(
    ctx: typer.Context, pattern: Annotated[str, typer.Argument(help="The exact pattern.")], yes: YesOpt = False
) -> None:
    """Remove an alias (asks first on a terminal; --yes in scripts).

    Example: planctl aliases remove 'claude-opus*' --yes
    """
    from planctl.services import catalog

    st = state(ctx)
    st.confirm(f"Remove alias {pattern!r}? Requests matching it will no longer be billed through it", yes=yes)
    catalog.remove_alias(st.db(), pattern, caller=st.caller(), now=st.now())
    say(st, f"removed alias {pattern}")


@aliases_app.command("resolve")
def resolve(
    ctx: typer.Context, model: Annotated[str, typer.Argument(help="A requested model name.")], json_: JsonOpt = False
) -> None:
    """Show which model a requested name bills as, and which rule wins.

    Exit 3 when nothing matches. Example: planctl aliases resolve claude-haiku-4-5
    """
    from planctl.domain.errors import NotFound
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_)
    res = catalog.resolve(st.db(), model)
    record = {
        "requested": res.requested, "billed": res.billed, "rule": res.rule,
        "matches": [{"pattern": p, "model": m} for p, m in res.matches],
    }
    if res.billed is None:
        raise NotFound(f"no model or alias matches {model!r}; see 'planctl aliases list'")
    if fmt == "table":
        record["matches"] = [f"{p} -> {m}" for p, m in res.matches]
        record["rule"] = res.rule or "catalog model"
    emit_record(st, record, (Column("requested"), Column("billed", "Bills as"), Column("rule", "Winning rule"),
                             Column("matches", "All matches", "list")), fmt)


@groups_app.command("list")
def list_groups(ctx: typer.Context, json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False) -> None:
    """List groups with their price ratios.

    Example: planctl groups list
    """
    from planctl.domain.catalog import group_to_dict
    from planctl.services import catalog

    st = state(ctx, read_only=True)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    emit_rows(st, (group_to_dict(g) for g in catalog.list_groups(st.db())), GROUP_COLUMNS, fmt)


Ratio = Annotated[Optional[str], typer.Option(help="Price ratio, e.g. 1.5 (default 1.0).")]
Description = Annotated[Optional[str], typer.Option(help="What the group is for.")]


@groups_app.command("create")
def create_group(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Group name (lowercase, digits, -).")],
    ratio: Ratio = None, description: Description = None, json_: JsonOpt = False,
) -> None:
    """Create a group.

    Example: planctl groups create batch --ratio 0.6 --description "Nightly batch"
    """
    from planctl.domain.catalog import group_to_dict
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    entry = {"name": name, "ratio": ratio, "description": description}
    group = catalog.create_group(st.db(), entry, caller=st.caller(), now=st.now())
    emit_record(st, group_to_dict(group), GROUP_COLUMNS, fmt)


@groups_app.command("update")
def update_group(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Group name.")],
    ratio: Ratio = None, description: Description = None, json_: JsonOpt = False,
) -> None:
    """Change a group's ratio or description.

    Example: planctl groups update priority --ratio 1.4
    """
    from planctl.domain.catalog import group_to_dict
    from planctl.services import catalog

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    changes = {"ratio": ratio, "description": description}
    group = catalog.update_group(st.db(), name, changes, caller=st.caller(), now=st.now())
    emit_record(st, group_to_dict(group), GROUP_COLUMNS, fmt)
