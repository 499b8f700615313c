"""One output switch for every command: Rich table, JSON, JSON Lines or CSV.

Rows are JSON-ready dicts (SPEC §9: exact decimal strings, ISO timestamps);
the table view only re-formats them for people (two-decimal credit, local
time). JSON never goes through Rich (it would wrap lines). stdout is data,
stderr is talk.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Annotated, Any

import typer

from planctl.cli.context import State

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (stable field names; see README).")]
JsonlOpt = Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per line.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV with a header row.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@dataclass(frozen=True)
class Column:
    """A table column. `id` columns (ids, key prefixes, numbers people copy) never wrap or
    shrink; `text` columns (names, descriptions) fold first. When a table cannot fit, columns
    with a `drop` rank are left out, the highest rank first (README "Tables"); 0 never is."""

    key: str
    header: str = ""
    kind: str = "text"  # text | id | int | credit | money | time | bool | list | exact
    drop: int = 0
    table: bool = True  # False: in CSV only (the table says it another way)

    @property
    def title(self) -> str:
        return self.header or self.key.replace("_", " ").title()

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "credit", "money")

    @property
    def fixed(self) -> bool:
        """Shown whole or not at all: never wrapped, folded or truncated."""
        return self.kind not in ("text", "list")


NAME_MIN = 10  # a folding column is not squeezed below this many cells when deciding what fits


def output_format(state: State, *, json_: bool = False, jsonl: bool = False, csv_: bool = False) -> str:
    """The one format asked for; --json also changes how errors are printed."""
    chosen = [name for name, on in (("json", json_ or state.json), ("jsonl", jsonl), ("csv", csv_)) if on]
    if len(chosen) > 1 and not (chosen == ["json", "jsonl"] and state.json):
        from planctl.domain.errors import InvalidInput

        raise InvalidInput(f"choose one output format, not {' and '.join('--' + c for c in chosen)}")
    fmt = chosen[-1] if chosen else "table"
    state.json = state.json or fmt in ("json", "jsonl")
    return fmt


def emit_rows(
    state: State, rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], fmt: str, *, title: str | None = None
) -> None:
    """Print a listing. Empty listings print `[]` in JSON and a note on stderr for people."""
    if fmt == "json":  # streamed: flat memory for exports of millions of rows
        first = True
        for row in rows:
            _write(("[\n" if first else ",\n") + json.dumps(row, ensure_ascii=False))
            first = False
        _write("[]\n" if first else "\n]\n")
    elif fmt == "jsonl":
        for row in rows:
            _write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        _emit_csv(rows, columns)
    else:
        _emit_table(state, list(rows), [c for c in columns if c.table], title)


def emit_record(state: State, record: Mapping[str, Any], columns: Sequence[Column], fmt: str) -> None:
    """Print one object: JSON as is, or a two-column field/value table."""
    if fmt in ("json", "jsonl"):
        _write(json.dumps(record, indent=None if fmt == "jsonl" else 2, ensure_ascii=False) + "\n")
        return
    if fmt == "csv":
        _emit_csv([record], columns)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for column in columns:
        value = record.get(column.key)
        if column.table and column.kind == "list" and isinstance(value, list) and value:
            table.add_row(column.title, "\n".join(str(v) for v in value))  # one item a line
        elif column.table:
            table.add_row(column.title, display(value, column.kind, state.display_zone))
    _console(state).print(table)


def emit_json(state: State, value: Any) -> None:
    state.json = True
    _write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def say(state: State, message: str) -> None:
    """A message for people: stderr, never stdout."""
    print(message, file=sys.stderr)


def display(value: Any, kind: str, tz: tzinfo) -> str:
    """Human form of a JSON value."""
    if value is None or value == "":
        return "-"
    if kind == "credit":
        from planctl.domain.money import format_credit, parse_credit

        return format_credit(parse_credit(str(value), allow_negative=True))
    if kind == "time":
        return datetime.fromisoformat(str(value)).astimezone(tz).strftime("%Y-%m-%d %H:%M")
    if kind == "bool":
        return "yes" if value else "no"
    if kind == "list" or isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def fit_columns(columns: Sequence[Column], cells: Sequence[Sequence[str]], width: int) -> list[int]:
    """Which columns a table of `width` cells shows: all of them if they fit (fixed columns whole,
    folding ones at NAME_MIN), else without the droppable ones, highest `drop` rank first."""
    from rich.cells import cell_len

    def need(i: int) -> int:
        natural = max([cell_len(columns[i].title), *(cell_len(row[i]) for row in cells)])
        return natural if columns[i].fixed else min(natural, NAME_MIN)

    keep = list(range(len(columns)))
    while sum(need(i) for i in keep) + 3 * len(keep) + 1 > width:  # 1 padding each side and a rule per column
        droppable = [i for i in keep if columns[i].drop]
        if not droppable:
            break
        keep.remove(max(droppable, key=lambda i: columns[i].drop))
    return keep


def _emit_table(state: State, rows: list[Mapping[str, Any]], columns: Sequence[Column], title: str | None) -> None:
    if not rows:
        say(state, "(no results)")
        return
    from rich.cells import cell_len
    from rich.table import Table

    zone = state.display_zone
    cells = [[display(row.get(c.key), c.kind, zone) for c in columns] for row in rows]
    console = _console(state)
    if state.wide:
        keep = list(range(len(columns)))
        natural = sum(max(cell_len(c.title), *(cell_len(r[i]) for r in cells)) + 3 for i, c in enumerate(columns))
        console.width = max(console.width, natural + 1)
    else:
        keep = fit_columns(columns, cells, console.width)
    table = Table(title=title, header_style="bold")
    for i in keep:
        column = columns[i]
        table.add_column(column.title, justify="right" if column.numeric else "left", no_wrap=column.fixed,
                         overflow="fold", min_width=cell_len(column.title) if column.fixed else None)
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    hidden = [c.title for i, c in enumerate(columns) if i not in keep]
    if hidden:
        say(state, f"(left out to fit {console.width} columns: {', '.join(hidden)}; --wide shows every column)")


def _emit_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([c.key for c in columns])
    for row in rows:
        writer.writerow([_csv_cell(row.get(c.key)) for c in columns])


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _write(text: str) -> None:
    sys.stdout.write(text)


def _console(state: State) -> Any:
    from rich.console import Console

    import os

    # Piped tables keep their full width instead of being squeezed to 80 columns.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 250
    return Console(no_color=state.no_color or None, highlight=False, soft_wrap=False, width=width)
