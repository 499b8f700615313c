"""Whatever a usage file or `usage record`'s flags hold, the answer is an exit code that means
something (0, or 2 with the line number or one message), never 1, never a traceback, never a
full key secret (issue #12 items 1 and 5). Property-based: hypothesis writes the inputs.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import NOW, run
from helpers.metering import sold_meter

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECRET = "sk-" + "Q" * 43  # shaped like a key secret: must never be echoed whole
FIELD_NAMES = ["request_id", "key", "model", "input", "input_tokens", "cached", "output", "status", "latency_ms",
               "api", "stream", "time", "reservation", "error", "colour"]
TIMES = st.sampled_from(["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00Z",
                         "2026-11-21T04:30:00Z", "2026-11-20T23:00:00+00:00", "2025-01-01T00:00:00Z",
                         "2026-11-21T12:00:00", "yesterday", ""])
VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.integers(min_value=0, max_value=2_000),
    st.booleans(), st.none(), st.floats(allow_nan=True), st.text(max_size=30), TIMES, st.just(SECRET),
    st.just("unit"), st.just("gpt-5.4"), st.just("\x00"),
)


def _clean(result: Any) -> None:
    """One meaningful exit code; stderr at most one line per rejected line, no traceback, no secret."""
    assert result.exit_code in (0, 2, 6), (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert SECRET[:12] not in result.stdout + result.stderr  # masked to the visible prefix


def test_any_import_file_ends_in_a_meaningful_exit_with_line_numbers(db: Any, cli: Any, caller: Any,
                                                                       tmp_path: Path) -> None:
    _, b = sold_meter(db, caller, total_credit="100")
    path = tmp_path / "u.jsonl"
    count = iter(range(10**9))

    objects = st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=9).map(
        lambda d: json.dumps({"request_id": f"p{next(count)}", "key": b.key, "model": "unit", "input": 1,
                              "output": 1, "status": 200, **d}, default=str).encode())
    raw = st.binary(max_size=60).filter(lambda line: b"\n" not in line)

    @SETTINGS
    @given(st.lists(st.one_of(objects, raw), min_size=1, max_size=8))
    def check(lines: list[bytes]) -> None:
        path.write_bytes(b"\n".join(lines) + b"\n")
        result = run(cli, "usage", "import", str(path), "--batch-size", "3", "--json")
        _clean(result)
        report = json.loads(result.stdout)
        listed = report["rejected_lines"] + report["conflicting_lines"]
        assert report["new"] + report["duplicate"] + report["rejected"] + report["conflicting"] == sum(
            1 for line in lines if line.strip())
        assert all(1 <= r["line"] <= len(lines) and r["error"] for r in listed)
        assert (result.exit_code == 0) == (not listed)

    check()


def test_any_csv_file_ends_in_a_meaningful_exit(db: Any, cli: Any, caller: Any, tmp_path: Path) -> None:
    _, b = sold_meter(db, caller, total_credit="100")
    path = tmp_path / "u.csv"
    cell = st.one_of(st.text(max_size=12).map(lambda t: t.replace('"', "")), st.just(SECRET), st.just(b.key),
                     TIMES, st.integers(min_value=-2**70, max_value=2**70).map(str))

    @SETTINGS
    @given(st.lists(st.lists(cell, min_size=1, max_size=9), min_size=1, max_size=6), st.binary(max_size=20))
    def check(table: list[list[str]], noise: bytes) -> None:
        header = "request_id,key,model,input,output,status,time,latency_ms,cached"
        body = "\n".join(",".join(f'"{c}"' for c in row) for row in table)
        path.write_bytes(f"{header}\n{body}\n".encode("utf-8", "surrogatepass") + noise + b"\n")
        _clean(run(cli, "usage", "import", str(path), "--json"))

    check()


def test_a_shifted_csv_column_never_echoes_a_secret(db: Any, cli: Any, caller: Any, tmp_path: Path) -> None:
    """The secret slid into the `input` column: the line is rejected, the secret shown masked."""
    _, b = sold_meter(db, caller)
    (path := tmp_path / "shifted.csv").write_text(
        f"request_id,key,model,input,output,status\nr1,{b.key},{SECRET},unit,1,200\nr2,{SECRET},unit,5,1,200\n")
    for args in (("--json",), ()):
        result = run(cli, "usage", "import", str(path), *args)
        assert result.exit_code == 2
        assert SECRET not in result.stdout + result.stderr and "sk-QQQQ…" in result.stdout + result.stderr


def test_any_usage_record_flags_end_in_a_meaningful_exit(db: Any, cli: Any, caller: Any) -> None:
    _, b = sold_meter(db, caller, total_credit="100")
    count = iter(range(10**9))
    number = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.integers(min_value=0, max_value=3000)
                       ).map(str) | st.text(max_size=8)
    flags = st.fixed_dictionaries({}, optional={
        "--input": number, "--output": number, "--cached": number, "--latency-ms": number, "--status": number,
        "--time": TIMES, "--model": st.sampled_from(["unit", "llama", SECRET, ""]),
        "--api": st.sampled_from(["claude", "chat", "fax", SECRET]), "--error": st.text(max_size=20),
    })

    @SETTINGS
    @given(flags)
    def check(given_flags: dict[str, str]) -> None:
        args = {"--model": "unit", "--input": "1", "--output": "1", "--status": "200", **given_flags}
        result = run(cli, "usage", "record", "--request-id", f"f{next(count)}", "--key", b.key,
                     *[part for pair in args.items() for part in pair], when=NOW + timedelta(minutes=1))
        assert result.exit_code in (0, 2, 4), (args, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
        assert SECRET not in result.stdout + result.stderr
        if result.exit_code:
            assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")

    check()
