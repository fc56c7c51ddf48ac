"""Rendering result sets for the CLI and the shell: table, box, csv, json, line."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

import click

from ..store.decode import jsonable, show

MODES = ("table", "box", "csv", "json", "line")


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], mode: str = "table",
           show_headers: bool = True) -> str:
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
    return _grid(headers, rows, box=(mode == "box"), show_headers=show_headers)


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
