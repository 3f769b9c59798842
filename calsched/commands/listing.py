"""Listings: rows a command prints as a table, JSON, JSON Lines or CSV, bounded by default.

Every command that lists rows (``history``, ``events``, ``slots list``, the tables of
``status``) prints through here, so they agree:

- a default of :data:`DEFAULT_LIMIT` rows, ``--limit N`` for another bound and ``--all``
  for none, and a note on stderr when rows were left out ("showing 50 of 198,000 events
  (use --limit N or --all)"), so a bound is never silent;
- rows are written as they are read: ``--all`` exports a journal of any size in bounded
  memory (JSON as one array written element by element, JSON Lines one object a line,
  CSV a row a line, a table in blocks of :data:`TABLE_BLOCK` rows);
- tables fit the terminal: timestamps never wrap and are never cut, ids and text fold
  rather than end in ``…``, and below :data:`WIDE` columns the columns shown ``wide``
  are left out (the JSON forms always carry every field).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain, islice
from typing import TYPE_CHECKING, Annotated, Any

import typer

from calsched.commands.common import EXIT_USAGE, console, fail, short_time

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "DEFAULT_LIMIT",
    "TABLE_BLOCK",
    "WIDE",
    "AllOption",
    "Cell",
    "Format",
    "JsonLinesOption",
    "LimitOption",
    "bound",
    "emit",
    "field_cell",
    "note_cell",
    "note_shown",
    "output_form",
    "print_table",
    "table_of",
    "time_cell",
]

#: Rows a listing shows unless told otherwise.
DEFAULT_LIMIT = 50
#: Rows per rich table when a table streams (``--all``): rich lays out a table whole.
TABLE_BLOCK = 1000
#: Terminals at least this wide get every column; narrower ones the essential ones.
WIDE = 100
#: Width of a table timestamp, ``2026-11-27T22:00:00Z``.
TIME_WIDTH = 20

LimitOption = Annotated[
    int,
    typer.Option(min=0, metavar="N", help="Show at most N rows (0: all)."),
]
AllOption = Annotated[bool, typer.Option("--all", help="Show every row (overrides --limit).")]
JsonLinesOption = Annotated[
    bool, typer.Option("--jsonl", help="Print JSON Lines: one object a line, streamed.")
]


class Format(StrEnum):
    """How a listing is printed."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


def output_form(as_json: bool, as_jsonl: bool, chosen: Format | None = None) -> Format:
    """The one form ``--json``, ``--jsonl`` (and ``--format``, where there is one) ask for;
    more than one is a usage error."""
    wanted = {Format.json} if as_json else set()
    if as_jsonl:
        wanted.add(Format.jsonl)
    if chosen is not None and chosen is not Format.table:
        wanted.add(chosen)
    if len(wanted) > 1:
        options = "--json, --jsonl and --format" if chosen is not None else "--json and --jsonl"
        fail(f"give only one of {options}", EXIT_USAGE)
    return wanted.pop() if wanted else Format.table


def bound(limit: int, everything: bool) -> int | None:
    """The row bound of ``--limit N`` / ``--all``: ``None`` for no bound."""
    return None if everything or limit == 0 else limit


def note_shown(
    shown: int, total: int, noun: str, *, which: str = "", hint: str = "use --limit N or --all"
) -> None:
    """On stderr, when rows were left out: ``showing 50 of 198,000 events (...)``."""
    if shown < total:
        typer.echo(f"showing {which}{shown:,} of {total:,} {noun} ({hint})", err=True)


@dataclass(frozen=True)
class Cell:
    """One column of a table: its header, its text for a row, and how it lays out.

    ``kind``: ``"time"`` never wraps (a timestamp prints whole), ``"word"`` never wraps
    (short fixed words: states, triggers, numbers), ``"text"`` folds (ids, summaries).
    ``show``: ``"wide"`` only on terminals of at least :data:`WIDE` columns, ``"narrow"``
    only below (a compact stand-in for wide columns), else always.
    """

    header: str
    text: Callable[[Mapping[str, Any]], str]
    kind: str = "text"
    show: str = "always"


def field_cell(header: str, key: str, *, kind: str = "text", show: str = "always") -> Cell:
    """A column showing the row's value at ``key`` (``None`` as empty)."""
    return Cell(header, lambda row: "" if row.get(key) is None else str(row[key]), kind, show)


def time_cell(header: str, key: str, *, show: str = "always") -> Cell:
    """A timestamp column from the RFC 3339 value at ``key``, to the second."""
    return Cell(header, lambda row: short_time(row.get(key)), kind="time", show=show)


def note_cell(header: str = "summary / reason") -> Cell:
    """The summary, else the reason."""
    return Cell(header, lambda row: row.get("summary") or row.get("reason") or "")


def table_of(cells: Sequence[Cell], out: Console, *, title: str | None = None) -> Table:
    """An empty rich table of ``cells`` laid out for ``out``'s width."""
    from rich.table import Column, Table

    columns = [
        Column(
            cell.header,
            no_wrap=cell.kind != "text",
            overflow="fold",
            min_width=TIME_WIDTH if cell.kind == "time" else None,
        )
        for cell in _shown(cells, out)
    ]
    return Table(
        *columns, title=title, box=None, pad_edge=False, padding=(0, 1), header_style="bold"
    )


def _shown(cells: Sequence[Cell], out: Console) -> list[Cell]:
    hidden = "narrow" if out.width >= WIDE else "wide"
    return [cell for cell in cells if cell.show != hidden]


def print_table(
    rows: Iterable[Mapping[str, Any]], cells: Sequence[Cell], *, title: str | None = None
) -> None:
    """Print rows already in hand as one table laid out for the terminal."""
    out = console()
    shown = _shown(cells, out)
    table = table_of(shown, out, title=title)
    for row in rows:
        table.add_row(*(cell.text(row) for cell in shown))
    out.print(table)


def emit(
    rows: Iterable[Mapping[str, Any]],
    output: Format,
    cells: Sequence[Cell],
    *,
    fields: Sequence[str] = (),
) -> int:
    """Print ``rows`` as they come in ``output`` form; return how many were printed.

    ``cells`` lay out the table; ``fields`` are the CSV columns. The first row is read
    before anything is written, so a query that fails at once prints nothing on stdout
    (its ``error:`` line alone on stderr), not half a document.
    """
    iterator = iter(rows)
    first = next(iterator, None)
    rows = iterator if first is None else chain((first,), iterator)
    if output is Format.json:
        return _json_array(rows)
    if output is Format.jsonl:
        count = 0
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        return count
    if output is Format.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        count = 0
        for row in rows:
            writer.writerow(row)
            count += 1
        return count
    return _tables(rows, cells)


def _json_array(rows: Iterable[Mapping[str, Any]]) -> int:
    # Element by element, so an export never holds the whole array; one element a line.
    count = 0
    sys.stdout.write("[")
    for row in rows:
        sys.stdout.write(("," if count else "") + "\n  " + json.dumps(row, ensure_ascii=False))
        count += 1
    sys.stdout.write("\n]\n" if count else "]\n")
    return count


def _tables(rows: Iterable[Mapping[str, Any]], cells: Sequence[Cell]) -> int:
    out = console()
    shown = _shown(cells, out)
    count = 0
    iterator = iter(rows)
    while True:
        block = list(islice(iterator, TABLE_BLOCK))
        if not block and count:
            return count
        table = table_of(shown, out)
        table.show_header = count == 0  # one header; later blocks continue the table
        for row in block:
            table.add_row(*(cell.text(row) for cell in shown))
        out.print(table)
        count += len(block)
        if len(block) < TABLE_BLOCK:
            return count
