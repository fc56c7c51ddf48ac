"""The pager for results taller than the terminal, as litecli pages them: click's echo_via_pager,
which runs $PAGER (else `less`), with `LESS=-SRXF` unless LESS is set (chop long lines instead of
wrapping them, keep colours, leave the text on the screen, quit at once when it fits)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import click
from prompt_toolkit.utils import get_cwidth

LESS_OPTIONS = "-SRXF"


def screen_size(stream: IO[str]) -> tuple[int, int] | None:
    """(rows, columns) of the terminal `stream` writes to; None if it is not a terminal."""
    try:
        if not stream.isatty():
            return None
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return size.lines, size.columns


def taller_than(text: str, rows: int, columns: int) -> bool:
    """Whether `text` printed on a terminal of this size scrolls its first line away (with the prompt
    below it): long lines count as the rows they wrap onto."""
    used = 0
    for line in text.splitlines():
        used += max(1, -(-get_cwidth(line) // max(columns, 1)))
        if used >= rows:
            return True
    return False


@contextmanager
def _less_options() -> Iterator[None]:
    if "LESS" in os.environ:
        yield
        return
    os.environ["LESS"] = LESS_OPTIONS  # the pager's process inherits it (click starts it now)
    try:
        yield
    finally:
        os.environ.pop("LESS", None)


def page(text: str) -> None:
    """Show `text` through the pager (click writes it to stdout itself when stdout is no terminal)."""
    with _less_options():
        # echo_via_pager adds the final newline itself.
        click.echo_via_pager(text[:-1] if text.endswith("\n") else text)
