"""What dot-commands share about their arguments and output: on/off switches, numbers, argument
completers, and names laid out in columns across the screen (`.tables`, `.indexes`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import CommandError

if TYPE_CHECKING:
    from .repl import Shell


def switch(value: str) -> bool:
    """on/off (also yes/no, true/false, 1/0), as sqlite3 reads its switches."""
    lowered = value.lower()
    if lowered in ("on", "yes", "true", "1"):
        return True
    if lowered in ("off", "no", "false", "0"):
        return False
    raise CommandError(f"expected on or off, not {value!r}")


def integer(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"{what} must be a whole number, not {value!r}") from None


def in_columns(names: list[str], width: int = 80) -> str:
    """Names across the screen in columns, like sqlite3's `.tables`."""
    if not names:
        return ""
    column = max(len(n) for n in names) + 2
    per_line = max(1, width // column)
    rows = [names[i:i + per_line] for i in range(0, len(names), per_line)]
    return "".join("".join(n.ljust(column) for n in row).rstrip() + "\n" for row in rows)


# -- argument completers: (shell, index of the argument) -> candidates; None: file names ------

def on_off(shell: Shell, index: int) -> list[str]:
    return ["on", "off"]


def tables(shell: Shell, index: int) -> list[str]:
    return sorted(shell.schema())


def files(shell: Shell, index: int) -> None:
    return None
