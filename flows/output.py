"""How the read commands print a result: a table for people, JSON or CSV for scripts.

``--format table`` draws a rich table on a terminal and plain aligned columns (no box drawing,
no colour, nothing cut to the terminal's width) when stdout is a pipe or a file; ``json`` prints
the whole result as one JSON document; ``csv`` prints the rows (with a header line) only.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import json
import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@dataclasses.dataclass(frozen=True)
class Listing:
    """A result to print: ``title`` and ``notes`` (lines after the table) are for people only;
    ``columns`` and ``rows`` (cells as Python values) make the table and the CSV; ``document``
    is the JSON (dataclasses and datetimes allowed)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    document: Any
    notes: Sequence[str] = ()


def emit(listing: Listing, fmt: Format, console: Console) -> None:
    """Print ``listing`` to ``console`` (stdout) as ``fmt`` asks."""
    if fmt is Format.json:
        sys.stdout.write(json.dumps(listing.document, default=_json_value, ensure_ascii=False, indent=2) + "\n")
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(listing.columns)
        writer.writerows([["" if cell is None else cell for cell in row] for row in listing.rows])
    elif console.is_terminal:
        table = Table(*listing.columns, title=Text(listing.title))
        for row in listing.rows:
            table.add_row(*(Text(_cell(cell)) for cell in row))
        console.print(table)
        for note in listing.notes:
            console.print(Text(note), soft_wrap=True)
    else:
        sys.stdout.write("\n".join([listing.title, *plain_table(listing.columns, listing.rows), *listing.notes]) + "\n")


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of a table in plain text: columns padded to their widest cell, two spaces apart,
    numbers right-aligned; a cell's line breaks and tabs shown as spaces."""
    cells = [list(columns)] + [[_cell(cell) for cell in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(columns))]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return [
        "  ".join(
            (cell.rjust(width) if right else cell.ljust(width)) for cell, width, right in zip(line, widths, numeric)
        ).rstrip()
        for line in cells
    ]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return " ".join(str(value).replace("\t", " ").splitlines()) if isinstance(value, str) else str(value)


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
