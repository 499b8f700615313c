"""`planctl upstreams …`: the endpoints `planctl serve` forwards to."""

from typing import Annotated, Any, Optional

import typer

from planctl.cli.context import state
from planctl.cli.output import Column, CsvOpt, JsonlOpt, JsonOpt, YesOpt, emit_record, emit_rows, output_format, say

app = typer.Typer(help="Upstreams the gateway forwards to (their secrets stay in variables or files).",
                  epilog="Example: planctl upstreams add openai --base-url https://api.openai.com/v1 "
                  "--key-env OPENAI_API_KEY", no_args_is_help=True)

COLUMNS = (Column("name"), Column("base_url", "Base URL"), Column("secret_from", "Secret from"),
           Column("models", kind="list"), Column("apis", "APIs", "list"), Column("priority", kind="int"),
           Column("weight", kind="int"), Column("enabled", kind="bool"), Column("healthy", kind="bool"),
           Column("state"), Column("error_rate", "Errors", "float"), Column("latency_ms", "Latency ms", "int"),
           Column("last_error", "Last error"))

Name = Annotated[str, typer.Argument(help="The upstream's name, e.g. openai-main.")]
BaseUrl = Annotated[Optional[str], typer.Option("--base-url", help="Its OpenAI base URL, e.g. https://host/v1.")]
KeyEnv = Annotated[Optional[str], typer.Option("--key-env", help="Environment variable holding its secret.")]
KeyFile = Annotated[Optional[str], typer.Option("--key-file", help="File holding its secret.")]
Models = Annotated[Optional[list[str]], typer.Option(
    "--models", help="Billed models it serves (glob; repeat). Default: all.")]
Apis = Annotated[Optional[str], typer.Option("--api", help="API types it serves: responses,chat (default both).")]
Priority = Annotated[Optional[int], typer.Option("--priority", help="Lower is tried first (default 0).")]
Weight = Annotated[Optional[int], typer.Option("--weight", help="Share within its priority (default 1).")]


def upstream_json(row: Any) -> dict[str, Any]:
    from datetime import datetime, timezone

    from planctl.domain.clock import iso
    from planctl.services.upstreams import health_summary, split_apis

    return {"name": row.name, "base_url": row.base_url, "key_env": row.key_env, "key_file": row.key_file,
            "secret_from": f"env:{row.key_env}" if row.key_env else f"file:{row.key_file}",
            "models": list(row.models), "apis": split_apis(row.apis), "priority": row.priority,
            "weight": row.weight, "enabled": row.enabled, "healthy": row.healthy, "last_error": row.last_error,
            "checked_at": row.checked_at and iso(row.checked_at),
            **health_summary(row, datetime.now(timezone.utc))}


def _spec(base_url: Optional[str], key_env: Optional[str], key_file: Optional[str], models: Optional[list[str]],
          apis: Optional[str], priority: Optional[int], weight: Optional[int]) -> Any:
    from planctl.services.upstreams import UpstreamSpec, split_apis

    return UpstreamSpec(base_url, key_env, key_file, models, None if apis is None else split_apis(apis),
                        priority, weight)


@app.command("add")
def add(ctx: typer.Context, name: Name, base_url: BaseUrl = None, key_env: KeyEnv = None, key_file: KeyFile = None,
        models: Models = None, api: Apis = None, priority: Priority = None, weight: Weight = None,
        json_: JsonOpt = False) -> None:
    """Add an upstream. Its secret is read from --key-env or --key-file when the gateway starts.

    Example: planctl upstreams add openai --base-url https://api.openai.com/v1 --key-env OPENAI_API_KEY
    """
    from planctl.services import upstreams

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    row = upstreams.add(st.db(), name, _spec(base_url, key_env, key_file, models, api, priority, weight),
                        caller=st.caller(), now=st.now())
    emit_record(st, upstream_json(row), COLUMNS, fmt)


@app.command("edit")
def edit(ctx: typer.Context, name: Name, base_url: BaseUrl = None, key_env: KeyEnv = None, key_file: KeyFile = None,
         models: Models = None, api: Apis = None, priority: Priority = None, weight: Weight = None,
         json_: JsonOpt = False) -> None:
    """Change an upstream (options not given stay as they are).

    Example: planctl upstreams edit openai --priority 1 --weight 3
    """
    from planctl.services import upstreams

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    row = upstreams.edit(st.db(), name, _spec(base_url, key_env, key_file, models, api, priority, weight),
                         caller=st.caller(), now=st.now())
    emit_record(st, upstream_json(row), COLUMNS, fmt)


@app.command("list")
def list_(ctx: typer.Context, json_: JsonOpt = False, jsonl: JsonlOpt = False, csv_: CsvOpt = False) -> None:
    """List upstreams in the order the gateway tries them, with their health.

    Example: planctl upstreams list --json
    """
    from planctl.services import upstreams

    st = state(ctx)
    fmt = output_format(st, json_=json_, jsonl=jsonl, csv_=csv_)
    emit_rows(st, (upstream_json(r) for r in upstreams.list_all(st.db())), COLUMNS, fmt)


@app.command("show")
def show(ctx: typer.Context, name: Name, json_: JsonOpt = False) -> None:
    """Show one upstream.

    Example: planctl upstreams show openai
    """
    from planctl.services import upstreams

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    emit_record(st, upstream_json(upstreams.get(st.db(), name)), COLUMNS, fmt)


def _toggle(ctx: typer.Context, name: str, enabled: bool) -> None:
    from planctl.services import upstreams

    st = state(ctx)
    upstreams.set_enabled(st.db(), name, enabled, caller=st.caller(), now=st.now())
    say(st, f"{'enabled' if enabled else 'disabled'} upstream {name}")


@app.command("disable")
def disable(ctx: typer.Context, name: Name) -> None:
    """Stop forwarding to an upstream (gateways notice within seconds).

    Example: planctl upstreams disable openai
    """
    _toggle(ctx, name, False)


@app.command("enable")
def enable(ctx: typer.Context, name: Name) -> None:
    """Forward to an upstream again, and mark it healthy.

    Example: planctl upstreams enable openai
    """
    _toggle(ctx, name, True)


@app.command("remove")
def remove(ctx: typer.Context, name: Name, yes: YesOpt = False) -> None:
    """Remove an upstream (asks first on a terminal; --yes in scripts).

    Example: planctl upstreams remove openai --yes
    """
    from planctl.services import upstreams

    st = state(ctx)
    upstreams.get(st.db(), name)
    st.confirm(f"Remove upstream {name!r}?", yes=yes)
    upstreams.remove(st.db(), name, caller=st.caller(), now=st.now())
    say(st, f"removed upstream {name}")


@app.command("test")
def test(ctx: typer.Context, name: Name,
         model: Annotated[Optional[str], typer.Option("--model", help="Model to ask (default: its first "
                                                      "model, else gpt-5.4-mini).")] = None,
         json_: JsonOpt = False) -> None:
    """Send one tiny request (max 16 output tokens) and print its status and latency.

    Example: planctl upstreams test openai --model gpt-5.4-mini
    """
    from planctl.domain.errors import ExitCode
    from planctl.services import upstreams

    st = state(ctx)
    fmt = output_format(st, json_=json_)
    result = upstreams.probe(st.db(), name, model=model, now=st.now())
    emit_record(st, result, (Column("name"), Column("status", kind="int"), Column("latency_ms", "Latency ms", "int"),
                             Column("ok", kind="bool"), Column("error")), fmt)
    if not result["ok"]:
        raise typer.Exit(ExitCode.FAILURE)
