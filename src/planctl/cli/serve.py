"""`planctl serve`: run the gateway (imports uvicorn and Starlette only here)."""

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from planctl.cli.context import state


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8787,
    workers: Annotated[int, typer.Option(help="Worker processes (they share the database).")] = 1,
    log_format: Annotated[str, typer.Option("--log-format", help="text or json (one object per line).")] = "text",
    grace: Annotated[float, typer.Option(help="Seconds in-flight requests may finish after SIGTERM/Ctrl-C.")] = 30.0,
    max_reserve: Annotated[str, typer.Option(
        "--max-reserve", help="Largest hold one request takes, in credit.")] = "5",
    default_output: Annotated[int, typer.Option(
        "--default-output-tokens", help="Output tokens assumed by a hold when a request sets no cap.")] = 4096,
    journal: Annotated[Optional[Path], typer.Option(
        help="Directory of the settlement journal (default: beside the SQLite file, or under the data "
             "directory for PostgreSQL).")] = None,
    no_journal: Annotated[bool, typer.Option(
        "--no-journal", help="Settle without a journal: a killed worker loses the usage it had not written.")] = False,
    max_body_mib: Annotated[int, typer.Option(
        "--max-body-mib", help="Largest request body in MiB (bigger ones get 413).")] = 32,
    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", help="Seconds a client may take to send its request body (then 408).")] = 30.0,
    max_concurrent_per_key: Annotated[int, typer.Option(
        "--max-concurrent-per-key", help="Requests of one key in progress at once, per worker (then 429; "
        "0: no limit).")] = 0,
    group_commit: Annotated[bool, typer.Option(
        "--group-commit/--no-group-commit", help="Write concurrent settlements in shared transactions.")] = True,
) -> None:
    """Serve the OpenAI API and the Claude API to planctl keys.

    /v1/responses, /v1/chat/completions and /v1/models for Codex CLI and OpenAI SDKs;
    /v1/messages for Claude Code and Anthropic SDKs (translated to the Responses API).
    Every request is authenticated, admitted with a hold, forwarded to an upstream
    (planctl upstreams), metered from the upstream's own usage and settled. Settlements go to a
    journal on disk before the answer ends, so a killed worker loses no usage.

    Example: planctl serve --port 8787 --workers 2
    """
    from planctl.domain.errors import InvalidInput
    from planctl.domain.money import parse_credit

    if log_format not in ("text", "json"):
        raise InvalidInput(f"unknown log format {log_format!r}: use text or json")
    if workers < 1 or not 0 < port < 65536 or grace < 0:
        raise InvalidInput("--workers must be ≥ 1, --port 1-65535 and --grace ≥ 0")
    if default_output < 1:
        raise InvalidInput("--default-output-tokens must be ≥ 1")
    if max_body_mib < 1 or body_timeout <= 0 or max_concurrent_per_key < 0:
        raise InvalidInput("--max-body-mib must be ≥ 1, --body-timeout > 0 and --max-concurrent-per-key ≥ 0")
    reserve = parse_credit(max_reserve, allow_zero=False)
    if journal is not None and no_journal:
        raise InvalidInput("give --journal DIR or --no-journal, not both")
    st = state(ctx)
    target = st.target
    if not no_journal:
        from planctl.store.location import journal_dir

        journal = (journal or journal_dir(target)).expanduser().absolute()
        try:
            journal.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InvalidInput(f"cannot create the journal directory {journal}: {exc.strerror}") from None
    st.db()  # created and migrated once, before the workers start
    st.close()
    os.environ.update({
        "PLANCTL_GATEWAY_DB": str(target.path) if target.path is not None else target.url,
        "PLANCTL_GATEWAY_MAX_RESERVE": str(reserve),
        "PLANCTL_GATEWAY_DEFAULT_OUTPUT_TOKENS": str(default_output),
        "PLANCTL_GATEWAY_GRACE": str(grace),
        "PLANCTL_GATEWAY_JOURNAL": "" if no_journal else str(journal),
        "PLANCTL_GATEWAY_GROUP_COMMIT": "1" if group_commit else "0",
        "PLANCTL_GATEWAY_MAX_BODY": str(max_body_mib * 1024 * 1024),
        "PLANCTL_GATEWAY_BODY_TIMEOUT": str(body_timeout),
        "PLANCTL_GATEWAY_MAX_CONCURRENT_PER_KEY": str(max_concurrent_per_key),
    })
    if workers > 1:  # the workers' metrics meet in a fresh directory (prometheus-client's multi-process mode)
        import shutil
        import tempfile

        metrics_dir = tempfile.mkdtemp(prefix="planctl-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from planctl.gateway.server import run

    try:
        run(host=host, port=port, workers=workers, log_format=log_format, grace=grace)
    finally:
        if workers > 1:
            shutil.rmtree(metrics_dir, ignore_errors=True)
