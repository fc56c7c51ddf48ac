"""The sqlite3 shell's dot-commands, as a sqlite3 or litecli user expects them: `.import`, `.dump`,
`.once`, `.width`, `.indexes`, `.show`, `.bail`, `.echo`, `.changes`, `.pager`, `.shell`, and the
ones replproxy refuses (`.load`, `.open`, `.backup`, `.restore`) with the reason.

Registered in registry.py on import (the shell package does it); the cluster's own commands are in
dotcommands.py. `.import` and `.dump` go through the shell's connection, so they work the same on a
distributed cluster; the rest only change how the shell shows results.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import files, in_columns, integer, on_off, switch, tables
from .csvimport import import_rows, read_csv
from .dump import dump
from .registry import CommandError, command

if TYPE_CHECKING:
    from .repl import Shell


# -- moving data in and out --------------------------------------------------------------------

@command(".import FILE TABLE", args=(2, 5),
         complete=lambda shell, i: None if i == 0 else tables(shell, i))
def _import(shell: Shell, args: list[str]) -> None:
    """Import the rows of the CSV file FILE into TABLE, all or nothing.

    --csv     FILE is CSV (it always is here; accepted as sqlite3 takes it)
    --skip N  skip the first N rows of FILE (a header row, when TABLE exists)

    If TABLE does not exist, it is created from the first row: its values name the columns, each
    of type TEXT (as sqlite3 does). Every value is inserted as text; the table's column types
    convert it as SQLite does. The rows go in one transaction (a savepoint of yours if one is
    open), so they replicate as one log entry. A row with the wrong number of fields, a line that
    is not CSV, or a row SQLite refuses is reported with its line, and nothing is imported.
    """
    skip, words = 0, []
    words_left = iter(args)
    for word in words_left:
        if word == "--csv":
            continue
        if word == "--skip":
            skip = integer(next(words_left, ""), "--skip N")
            if skip < 0:
                raise CommandError("--skip N must be 0 or more")
        elif word.startswith("-") and len(word) > 1:
            raise CommandError(f"unknown option {word} (.import takes --csv and --skip N)")
        else:
            words.append(word)
    if len(words) != 2:
        raise CommandError("usage: .import ?--csv? ?--skip N? FILE TABLE")
    path, table = Path(words[0]).expanduser(), words[1]
    records = read_csv(path, skip)
    wrote = shell.conn.last_write_lsn
    done = import_rows(shell.conn, path, table, records, exact_lines=shell.cluster is not None)
    shell.changed(done.rows)
    if shell.settings.nodeinfo:
        what = f"{done.rows} row{'' if done.rows == 1 else 's'} imported into {table}"
        shell.message(shell.describe(done.cursor, done.rows, wrote, what=what + (" (created)" if done.created else "")))


@command(".dump ?TABLE?", args=(0, 16), complete=tables)
def _dump(shell: Shell, args: list[str]) -> None:
    """Write the schema and data as SQL that sqlite3 (or .read) loads.

    TABLE is a LIKE pattern (several may be given): those tables with their indexes and triggers,
    and views of that name. replproxy's internal tables and triggers are left out. The dump is
    read in one transaction, so it is one consistent state, served as the session's read
    consistency allows. `.once FILE` before it writes it to FILE.
    """
    conn = shell.conn
    served = []

    def look(sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        cursor = conn.execute(sql, params)
        served.append(cursor)
        return cursor.fetchall()

    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        text = "".join(dump(look, args))
    finally:
        if own and conn.in_transaction:
            conn.commit()  # nothing was written: nothing is logged
    shell.result(text)
    if shell.settings.nodeinfo and served:
        shell.message(shell.describe(served[-1], 0, what="dump"))


@command(".once FILE", args=(1, 1), complete=files)
def _once(shell: Shell, args: list[str]) -> None:
    """Send the results of the next input only (SQL, or a dot-command such as .dump) to FILE."""
    path = Path(args[0]).expanduser()
    try:
        handle = open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    if shell.once is not None:
        shell.once.close()
    shell.once = handle


# -- how results look ---------------------------------------------------------------------------

@command(".width N1 N2 ...", args=(0, 256))
def _width(shell: Shell, args: list[str]) -> None:
    """Set column widths for the table, box and markdown modes (no N: automatic).

    0 is automatic; a negative width right-justifies the column; a longer value wraps onto more
    lines, as in sqlite3. Columns past the last N are automatic.
    """
    shell.settings.widths = [integer(a, "a width") for a in args]


@command(".indexes ?TABLE?", args=(0, 1), complete=tables)
def _indexes(shell: Shell, args: list[str]) -> None:
    """List the indexes, of the tables matching the LIKE pattern TABLE if given."""
    shell.write(in_columns(shell.index_names(args[0] if args else None)))


@command(".show")
def _show(shell: Shell, args: list[str]) -> None:
    """Show the current settings (mode, headers, widths, output, switches, consistency)."""
    s = shell.settings
    output = "stdout" if shell.out is shell.stdout else str(getattr(shell.out, "name", "a file"))
    settings = {
        "echo": _on(s.echo), "headers": _on(s.headers),
        "mode": s.mode + (f" {s.insert_table}" if s.mode == "insert" else ""),
        "output": output, "width": " ".join(map(str, s.widths)), "bail": _on(s.bail),
        "changes": _on(s.changes), "timer": _on(s.timer), "nodeinfo": _on(s.nodeinfo),
        "pager": _on(s.pager), "consistency": shell.conn.consistency, "cluster": shell.target,
    }
    shell.write("".join(f"{name:>12}: {value}".rstrip() + "\n" for name, value in settings.items()))


def _on(value: bool) -> str:
    return "on" if value else "off"


@command(".bail on|off", args=(1, 1), complete=on_off)
def _bail(shell: Shell, args: list[str]) -> None:
    """Stop a script (stdin, .read) at its first error; the exit status is then 1.

    At the prompt an error never ends the session; a .read it runs stops.
    """
    shell.settings.bail = switch(args[0])


@command(".echo on|off", args=(1, 1), complete=on_off)
def _echo(shell: Shell, args: list[str]) -> None:
    """Print each input (SQL or dot-command) before running it, with the results."""
    shell.settings.echo = switch(args[0])


@command(".changes on|off", args=(1, 1), complete=on_off)
def _changes(shell: Shell, args: list[str]) -> None:
    """Print how many rows each write changed, and the session's total (as sqlite3 does)."""
    shell.settings.changes = switch(args[0])


@command(".pager on|off", args=(1, 1), complete=on_off)
def _pager(shell: Shell, args: list[str]) -> None:
    """Page results taller than the terminal (on by default, at a terminal only).

    The pager is $PAGER, else `less` (with LESS=-SRXF unless LESS is set), as litecli does.
    """
    shell.settings.pager = switch(args[0])


# -- the system shell ---------------------------------------------------------------------------

@command(".shell CMD ARGS...", args=(1, 256), aliases=("system",), complete=files)
def _system(shell: Shell, args: list[str]) -> None:
    """Run CMD ARGS... in the system shell (/bin/sh), as sqlite3 does.

    At the terminal the command has the terminal; otherwise (a script) what it prints is a result,
    which .output and .once redirect.
    """
    line = " ".join(shlex.quote(a) if not a or re.search(r"[\s'\"]", a) else a for a in args)
    if shell.interactive and shell.out is shell.stdout:
        shell.stdout.flush()
        code = subprocess.run(line, shell=True, check=False).returncode
    else:
        done = subprocess.run(line, shell=True, check=False, capture_output=True, text=True)
        shell.write(done.stdout)
        if done.stderr:
            shell.message(done.stderr.rstrip("\n"))
        code = done.returncode
    if code:
        shell.message(f"System command returns {code}")


# -- what is refused, and why -------------------------------------------------------------------

@command(".load FILE ?ENTRY?", args=(0, 2))
def _load(shell: Shell, args: list[str]) -> None:
    """Refused: loading an SQLite extension.

    A function or virtual table module loaded on this connection would not exist on the followers
    that serve reads, nor where followers replay the log.
    """
    raise CommandError(".load: extensions are not supported: a function or module loaded on this connection "
                       "would not exist on the followers that serve reads, nor where followers replay the log")


@command(".open ?FILE?", args=(0, 8))
def _open(shell: Shell, args: list[str]) -> None:
    """Refused: the shell stays on the cluster it was started on.

    Leave and run `replproxy shell DIR` on another cluster; `replproxy init DIR --from FILE` makes
    a cluster of an SQLite file.
    """
    raise CommandError(f".open: this shell stays on the cluster it was started on ({shell.target}); leave and run "
                       "`replproxy shell DIR` for another, or `replproxy init DIR --from FILE` to make a cluster "
                       "of an SQLite file")


@command(".backup ?DB? FILE", args=(0, 8), aliases=("save",))
def _backup(shell: Shell, args: list[str]) -> None:
    """Refused: copying a node's file; `.once FILE` then `.dump` writes the data as SQL.

    A node's file also holds replproxy's log and internal tables. `sqlite3 NEW.db < FILE` makes a
    database of a dump; `replproxy add-follower` copies a node from a snapshot.
    """
    raise CommandError(".backup: not provided: a node's file also holds replproxy's log and internal tables; "
                       "`.once FILE` then `.dump` writes your schema and data as SQL (`sqlite3 NEW.db < FILE` "
                       "loads it), and `replproxy add-follower` copies a node from a snapshot")


@command(".restore ?DB? FILE", args=(0, 8))
def _restore(shell: Shell, args: list[str]) -> None:
    """Refused: replacing the content behind the log; `.read` a dump instead, which replicates."""
    raise CommandError(".restore: not provided: content copied into a node's file bypasses the log, so the "
                       "followers would never get it; `.read FILE` of a .dump loads it through the proxy, "
                       "which replicates it")
