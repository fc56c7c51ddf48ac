"""`.import FILE TABLE`: CSV rows into a table through the shell's connection, as sqlite3 imports them
(a missing table is created from the header row, every value is inserted as text), but all or
nothing: the rows go in one transaction, so they replicate as one log entry, and a bad row (a
malformed line, the wrong number of fields, a constraint SQLite refuses) is reported with its line
and leaves nothing imported.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import Error
from ..render import quote_identifier
from .registry import CommandError

if TYPE_CHECKING:
    from ...driver import Connection, Cursor
    from ...remote.client import RemoteConnection, RemoteCursor

SAVEPOINT = "replproxy_import"
REMOTE_BATCH = 1000  # rows per executemany over NATS (an error names the lines of its batch)


@dataclass(frozen=True)
class Imported:
    """What an import did: rows inserted, whether it created the table, the cursor that ended it."""

    rows: int
    created: bool
    cursor: Cursor | RemoteCursor


def read_csv(path: Path, skip: int = 0) -> list[tuple[int, list[str]]]:
    """(line, fields) of each record of the CSV file after the first `skip`; blank lines are skipped.
    The line is where the record starts (a quoted field may span lines)."""
    records: list[tuple[int, list[str]]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            start = 1
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    raise CommandError(f"{path} line {start}: not valid CSV: {exc}; nothing imported") from None
                line, start = start, reader.line_num + 1
                if not fields:
                    continue
                if skip > 0:
                    skip -= 1
                    continue
                records.append((line, fields))
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); nothing imported") from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return records


def import_rows(conn: Connection | RemoteConnection, path: Path, table: str, records: list[tuple[int, list[str]]],
                exact_lines: bool) -> Imported:
    """Insert the records into `table` (created from the first record, the header, if it does not
    exist) in one transaction, or in a savepoint of the transaction already open. `exact_lines`:
    an error names the row's line (embedded: executemany runs the rows as it takes them); else the
    lines of the batch it was in (remote: executemany sends rows in batches)."""
    nested = conn.in_transaction
    conn.execute(f"SAVEPOINT {SAVEPOINT}" if nested else "BEGIN IMMEDIATE")
    try:
        columns = [name for name, hidden in conn.execute("SELECT name, hidden FROM pragma_table_xinfo(?)",
                                                         (table,)).fetchall() if hidden == 0]
        created = not columns
        if created:
            if not records:
                raise CommandError(f"{path} is empty: there is no header row to create {table} from")
            line, columns = records[0]
            records = records[1:]
            create = (f"CREATE TABLE {quote_identifier(table)}"
                      f"({', '.join(quote_identifier(c) + ' TEXT' for c in columns)})")
            try:
                conn.execute(create)
            except Error as exc:
                raise CommandError(f"{path} line {line} (the header): {exc}; nothing imported") from None
        for line, fields in records:
            if len(fields) != len(columns):
                raise CommandError(f"{path} line {line}: expected {len(columns)} columns, found {len(fields)}; "
                                   "nothing imported")
        insert = (f"INSERT INTO {quote_identifier(table)}({', '.join(map(quote_identifier, columns))}) "
                  f"VALUES({', '.join('?' * len(columns))})")
        _insert(conn, path, insert, records, exact_lines)
        cursor = conn.execute(f"RELEASE {SAVEPOINT}" if nested else "COMMIT")
    except BaseException:
        _undo(conn, nested)
        raise
    return Imported(len(records), created, cursor)


def _undo(conn: Connection | RemoteConnection, nested: bool) -> None:
    """Take back what the import did (the driver may have rolled back the transaction already)."""
    if not conn.in_transaction:
        return
    try:
        if nested:
            conn.execute(f"ROLLBACK TO {SAVEPOINT}")
            conn.execute(f"RELEASE {SAVEPOINT}")
        else:
            conn.rollback()
    except Error:
        pass  # the error that stopped the import is the one to report


def _insert(conn: Connection | RemoteConnection, path: Path, insert: str, records: list[tuple[int, list[str]]],
            exact_lines: bool) -> None:
    batch = len(records) if exact_lines else REMOTE_BATCH
    for start in range(0, len(records), max(batch, 1)):
        chunk = records[start:start + batch]
        taken = [0]

        def fields(rows: list[tuple[int, list[str]]] = chunk, taken: list[int] = taken) -> Iterator[list[Any]]:
            for line, values in rows:
                taken[0] = line
                yield values

        try:
            conn.executemany(insert, fields())
        except Error as exc:
            where = f"line {taken[0]}" if exact_lines else f"a row in lines {chunk[0][0]}-{chunk[-1][0]}"
            raise CommandError(f"{path} {where}: {exc}; nothing imported") from None
