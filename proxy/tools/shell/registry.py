"""The dot-command registry: `@command(usage)` registers a handler; its docstring builds `.help`.

Each command is a function `(shell, args) -> None`. The first line of its docstring is its line in
`.help`; the whole docstring is `.help NAME`. Arguments are split like a shell's words (quotes group
words). A command reports misuse by raising CommandError; errors from the cluster (proxy.Error) are
printed by the shell the same way as SQL errors. A command registered with `instead=` works on an
embedded cluster only: on a distributed one (a shell whose `cluster` is None) it is refused with
that advice. The commands themselves are in dotcommands.py (the cluster's) and sqlitecommands.py
(the sqlite3 shell's).
"""

from __future__ import annotations

import inspect
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Handler = Callable[[Any, list[str]], None]
# Candidates for one argument: (shell, index of the argument) -> words; None: complete file names.
ArgCompleter = Callable[[Any, int], "list[str] | None"]


class CommandError(Exception):
    """A dot-command was misused or cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class DotCommand:
    """One dot-command: its name, usage line, handler and how its arguments complete."""

    name: str
    usage: str
    handler: Handler
    min_args: int = 0
    max_args: int = 0
    aliases: tuple[str, ...] = ()
    complete: ArgCompleter | None = None
    instead: str | None = None  # embedded clusters only: what to do on a distributed one

    @property
    def summary(self) -> str:
        return self.help.splitlines()[0] if self.help else ""

    @property
    def help(self) -> str:
        return inspect.getdoc(self.handler) or ""


COMMANDS: dict[str, DotCommand] = {}  # every name and alias -> its command


def command(usage: str, *, args: tuple[int, int] = (0, 0), aliases: tuple[str, ...] = (),
            complete: ArgCompleter | None = None, instead: str | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated function as the dot-command named by the first word of `usage`;
    `instead`: it works on an embedded cluster only, and this is what to do on a distributed one."""

    def register(handler: Handler) -> Handler:
        name = usage.split()[0].lstrip(".")
        cmd = DotCommand(name, usage, handler, args[0], args[1], aliases, complete, instead)
        for key in (name, *aliases):
            if key in COMMANDS:
                raise ValueError(f"dot-command .{key} is registered twice")
            COMMANDS[key] = cmd
        return handler

    return register


def commands() -> list[DotCommand]:
    """Every command once, sorted by name."""
    unique = {cmd.name: cmd for cmd in COMMANDS.values()}
    return [unique[name] for name in sorted(unique)]


def lookup(name: str) -> DotCommand:
    """The command called `name`, or the only one it is a prefix of (like sqlite3: `.sch`)."""
    if name in COMMANDS:
        return COMMANDS[name]
    matches = {cmd.name: cmd for key, cmd in COMMANDS.items() if key.startswith(name)}
    if len(matches) == 1:
        return next(iter(matches.values()))
    if matches:
        raise CommandError(f"ambiguous dot-command .{name}: " + ", ".join(f".{n}" for n in sorted(matches)))
    raise CommandError(f"unknown dot-command .{name}; enter .help for the list")


def dispatch(shell: Any, line: str) -> None:
    """Run one dot-command line such as `.schema notes`."""
    try:
        words = shlex.split(line.strip()[1:])
    except ValueError as exc:
        raise CommandError(f"cannot parse {line.strip()!r}: {exc}") from None
    if not words:
        raise CommandError("empty dot-command; enter .help for the list")
    cmd = lookup(words[0])
    if cmd.instead is not None and shell.cluster is None:
        raise CommandError(f".{cmd.name} works on an embedded cluster only, and {shell.target} is a distributed "
                           f"cluster (docs/distributed.md): {cmd.instead}")
    args = words[1:]
    if not cmd.min_args <= len(args) <= cmd.max_args:
        raise CommandError(f"usage: {cmd.usage}")
    cmd.handler(shell, args)
