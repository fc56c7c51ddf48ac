"""Rendering result sets for the CLI and the shell: table, box, csv, json, line, and the sqlite3 shell's
list, markdown, tabs, quote and insert; SQL literals and identifiers as sqlite3's `.dump` writes them.

table and box are drawn here (fast, for any number of rows); with column widths (`.width`) and for
markdown, rich draws them: it wraps long values to a width, justifies, and measures wide characters.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

import apsw
import click

from ..store.decode import jsonable, show

MODES = ("table", "box", "csv", "json", "line", "list", "markdown", "tabs", "quote", "insert")


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], mode: str = "table",
           show_headers: bool = True, *, widths: Sequence[int] = (), table: str = "table") -> str:
    """Rows as `mode` shows them. `widths`: sqlite3's `.width` for table, box and markdown (0 is
    automatic, a negative width right-justifies, longer values wrap); `table`: the insert mode's table."""
    if mode == "json":
        return json.dumps([dict(zip(headers, map(jsonable, row), strict=True)) for row in rows], ensure_ascii=False,
                          indent=None) + "\n"
    if mode == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if show_headers:
            writer.writerow(headers)
        for row in rows:
            writer.writerow(["" if v is None else show(v) if isinstance(v, bytes) else v for v in row])
        return buffer.getvalue()
    if mode == "line":
        width = max((len(h) for h in headers), default=0)
        blocks = ["\n".join(f"{h.rjust(width)} = {show(v)}" for h, v in zip(headers, row, strict=True)) for row in rows]
        return "\n\n".join(blocks) + ("\n" if blocks else "")
    if mode in ("list", "tabs"):
        separator = "|" if mode == "list" else "\t"
        lines = [separator.join(headers)] if show_headers else []
        lines += [separator.join("" if v is None else show(v) for v in row) for row in rows]
        return "".join(line + "\n" for line in lines)
    if mode == "quote":
        lines = [",".join(sql_literal(h) for h in headers)] if show_headers else []
        lines += [",".join(map(sql_literal, row)) for row in rows]
        return "".join(line + "\n" for line in lines)
    if mode == "insert":
        into = quote_identifier(table)
        if show_headers:
            into += "(" + ",".join(map(quote_identifier, headers)) + ")"
        return "".join(f"INSERT INTO {into} VALUES({','.join(map(sql_literal, row))});\n" for row in rows)
    if mode == "markdown" or any(widths):
        return _rich_grid(headers, rows, mode, show_headers or mode == "markdown", widths)
    return _grid(headers, rows, box=(mode == "box"), show_headers=show_headers)


# -- SQL text ---------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote_identifier(name: str) -> str:
    """A table or column name as SQL: bare when it can be, else in double quotes (as sqlite3)."""
    if _BARE.fullmatch(name) and name.upper() not in apsw.keywords:
        return name
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: Any) -> str:
    """A value as an SQL literal that reads back as the same value, as sqlite3's quote and insert
    modes and `.dump` write it: reals with enough digits to round-trip, BLOBs as X'..'; text with a
    NUL or a carriage return (which a reader of the file might change) as bytes cast to text."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NULL"  # SQLite stores a NaN as NULL
        if math.isinf(value):
            return "9.0e+999" if value > 0 else "-9.0e+999"
        if value.is_integer() and abs(value) < 2 ** 63:
            return f"{'-' if math.copysign(1, value) < 0 and value == 0 else ''}{int(value)}.0"
        return _real_literal(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'" + bytes(value).hex() + "'"
    text = str(value)
    if "\0" in text or "\r" in text:
        return "CAST(X'" + text.encode("utf-8", "surrogatepass").hex() + "' AS TEXT)"
    return "'" + text.replace("'", "''") + "'"


_READERS: list[Any] = []  # in-memory databases of the SQLite libraries in this process
_STEP = 1 << 62  # a power of two SQLite reads exactly, as an integer literal


def _reads_back(text: str, value: float) -> bool:
    if not _READERS:
        import sqlite3  # only in memory: no file is shared with apsw's SQLite

        import apsw

        _READERS.extend([apsw.Connection(":memory:"), sqlite3.connect(":memory:", check_same_thread=False)])
    for reader in _READERS:
        back = next(iter(reader.execute(f"SELECT {text}")))[0]
        if not isinstance(back, float) or back.hex() != value.hex():
            return False
    return True


def _real_literal(value: float) -> str:
    """A REAL that reads back to the bit: 20 significant digits as the sqlite3 shell writes it,
    when SQLite parses that exactly (some SQLite versions round very large or small exponents off
    by one unit); otherwise the exact arithmetic m * 2^e with m an integer of 53 bits and powers of
    two as integer literals, as the sqlite3 shell falls back to ieee754()."""
    text = f"{value:.20g}"
    if _reads_back(text, value):
        return text
    fraction, exponent = math.frexp(value)
    mantissa, power = int(math.ldexp(fraction, 53)), exponent - 53
    parts = [f"{mantissa} * 1.0"]
    while power:
        step = min(abs(power), 62)
        parts.append(("* " if power > 0 else "/ ") + str(1 << step))
        power += -step if power > 0 else step
    return "(" + " ".join(parts) + ")"


# -- grids ------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _cell(value: Any, markdown: bool) -> str:
    text = _CONTROL.sub(lambda m: "^" + chr(ord(m.group()) ^ 0x40), show(value))  # ESC as ^[, as sqlite3
    if markdown:
        text = text.replace("|", "\\|").replace("\n", "<br>")
    return text


def _rich_grid(headers: Sequence[str], rows: Sequence[Sequence[Any]], mode: str, show_headers: bool,
               widths: Sequence[int]) -> str:
    """table, box or markdown drawn by rich: its ASCII2 and SQUARE boxes are the borders _grid draws."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    markdown = mode == "markdown"
    style = box.MARKDOWN if markdown else box.SQUARE if mode == "box" else box.ASCII2
    cells = [[_cell(v, markdown) for v in row] for row in rows]
    wraps = False
    grid = Table(box=style, show_header=show_headers, highlight=False, header_style=None, show_edge=True)
    for index, header in enumerate(headers):
        width = widths[index] if index < len(widths) else 0
        if width:
            wraps = wraps or any(len(row[index]) > abs(width) or "\n" in row[index] for row in cells)
        grid.add_column(Text(header), width=abs(width) or None, justify="right" if width < 0 else "left",
                        overflow="fold")
    grid.show_lines = wraps and not markdown  # rows of several lines are told apart, as sqlite3 does
    for row in cells:
        grid.add_row(*(Text(cell) for cell in row))
    buffer = io.StringIO()
    console = Console(file=buffer, width=1_000_000, color_system=None, force_terminal=False, highlight=False,
                      markup=False, emoji=False, legacy_windows=False)
    console.print(grid)
    lines = [line.rstrip() if markdown else line for line in buffer.getvalue().splitlines()]
    if markdown:  # rich's markdown box has blank top and bottom edges
        lines = [line for line in lines if line]
    return "".join(line + "\n" for line in lines)


def _grid(headers: Sequence[str], rows: Sequence[Sequence[Any]], box: bool, show_headers: bool) -> str:
    cells = [[show(v) for v in row] for row in rows]
    widths = [len(h) if show_headers else 0 for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    if box:
        top, mid, bottom, bar = ("┌", "┬", "┐"), ("├", "┼", "┤"), ("└", "┴", "┘"), "│"
        line = "─"
    else:
        top = mid = bottom = ("+", "+", "+")
        bar, line = "|", "-"

    def rule(parts: tuple[str, str, str]) -> str:
        return parts[0] + parts[1].join(line * (w + 2) for w in widths) + parts[2]

    def fmt(values: Sequence[str]) -> str:
        return bar + bar.join(f" {v.ljust(w)} " for v, w in zip(values, widths, strict=True)) + bar

    out = [rule(top)]
    if show_headers:
        out += [fmt(list(headers)), rule(mid)]
    out += [fmt(row) for row in cells]
    out.append(rule(bottom))
    return "\n".join(out) + "\n"


def echo_errors(errors: Iterable[tuple[str, str | None]], width: int = 80) -> None:
    """Each node's error under a status table, wrapped to `width` columns."""
    for name, error in errors:
        if error:
            click.echo(textwrap.fill(error, width, initial_indent=f"{name}: ", subsequent_indent="  ",
                                     break_on_hyphens=False, break_long_words=False))
