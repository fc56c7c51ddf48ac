"""`.dump`: the user's schema and data as SQL text, in the order and shape sqlite3's `.dump` writes
them, without replproxy's internal tables and triggers, so that sqlite3 (or `.read` in another
cluster) loads it into a database holding the same thing.

Everything is read through `look(sql, params)`, the shell's connection (embedded or remote); the
caller runs it in one transaction so the whole dump is one snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import logformats

from ..render import quote_identifier, sql_literal

Look = Callable[[str, tuple[Any, ...]], Iterable[Sequence[Any]]]


def _matching(column: str, patterns: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause: `column` LIKE any of the patterns (all names without patterns)."""
    if not patterns:
        return "1", ()
    return "(" + " OR ".join(f"{column} LIKE ?" for _ in patterns) + ")", tuple(patterns)


def _user(name: str) -> bool:
    return not logformats.is_internal_table(name)  # replproxy's tables and SQLite's own


def dump(look: Look, patterns: Sequence[str] = ()) -> Iterator[str]:
    """The lines of the dump, each ending with a newline. `patterns`: LIKE patterns of the tables
    to dump (with their indexes and triggers, and views whose name matches); none: everything."""
    yield "PRAGMA foreign_keys=OFF;\n"
    yield "BEGIN TRANSACTION;\n"
    kinds: dict[str, str] = {name: kind for name, kind in
                             look("SELECT name, type FROM pragma_table_list WHERE schema = 'main'", ())}
    where, params = _matching("name", patterns)
    tables = list(look(f"SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
                       f"AND {where} ORDER BY rowid", params))
    dumped: list[str] = []
    writable_schema = False
    for name, sql in tables:
        if not _user(name):
            continue
        if kinds.get(name) == "virtual":
            # As sqlite3 does: the virtual table's entry goes back into the schema as it was, over
            # its shadow tables, which are dumped like any table.
            if not writable_schema:
                yield "PRAGMA writable_schema=ON;\n"
                writable_schema = True
            yield (f"INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table',"
                   f"{sql_literal(name)},{sql_literal(name)},0,{sql_literal(sql)});\n")
            continue
        yield sql + ";\n"
        dumped.append(name)
        yield from _rows(look, name)
    if dumped and "sqlite_sequence" in kinds:
        sequences = [(name, seq) for name, seq in look("SELECT name, seq FROM sqlite_sequence", ())
                     if name in dumped]
        if sequences:
            yield ("DELETE FROM sqlite_sequence;\n" if not patterns else
                   "".join(f"DELETE FROM sqlite_sequence WHERE name = {sql_literal(n)};\n" for n, _ in sequences))
            yield from (f"INSERT INTO sqlite_sequence VALUES({sql_literal(n)},{seq});\n" for n, seq in sequences)
    where, params = _matching("tbl_name", patterns)
    for name, table, sql in list(look(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            f"AND type IN ('index', 'trigger', 'view') AND {where} ORDER BY rowid", params)):
        if _user(name) and _user(table):  # replproxy's capture and guard triggers are not the user's
            yield sql + ";\n"
    if writable_schema:
        yield "PRAGMA writable_schema=OFF;\n"
    yield "COMMIT;\n"


def _rows(look: Look, table: str) -> Iterator[str]:
    """One INSERT per row; generated columns are left for SQLite to compute, as sqlite3 leaves them."""
    columns = [name for name, hidden in look("SELECT name, hidden FROM pragma_table_xinfo(?)", (table,))
               if hidden == 0]
    if not columns:
        return
    into = quote_identifier(table)
    select = f"SELECT {', '.join(map(quote_identifier, columns))} FROM {into}"
    for row in look(select, ()):
        yield f"INSERT INTO {into} VALUES({','.join(map(sql_literal, row))});\n"
