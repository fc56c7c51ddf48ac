"""The user's database out of the leader's file, as Python's sqlite3 gives it: `iterdump()` (SQL
text), `backup()` (pages into another database) and `serialize()` (bytes).

The leader's file also holds replproxy's own objects: its log, meta and state tables, the trigger
format's capture tables, and triggers on user tables (capture and guard triggers), all named
`_replproxy_*`. None of them is in a dump or a copy: what comes out is the application's database
(tables, indexes, views, triggers, rows, `sqlite_sequence`, `sqlite_stat1`, the user_version and
application_id header fields), ready to be opened by any SQLite program.

A copy is made in two steps: SQLite's backup API copies the leader's file (one read transaction:
one committed state) into a private temporary file, where replproxy's objects are dropped and the
journal mode set back to DELETE; that file is then backed up into the target, in `pages` steps,
calling `progress` like sqlite3, or serialized.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw

from logformats import INTERNAL_PREFIX

from ..errors import OperationalError, ProgrammingError

_LIKE_INTERNAL = "'\\_replproxy\\_%' ESCAPE '\\'"


def internal(name: str | None) -> bool:
    return name is not None and name.lower().startswith(INTERNAL_PREFIX)


def _quote_name(name: str) -> str:
    return '"{}"'.format(name.replace('"', '""'))


def _quote_value(value: str) -> str:
    return "'{}'".format(value.replace("'", "''"))


def iterdump(conn: apsw.Connection, filter: str | None = None) -> Iterator[str]:
    """sqlite3's iterdump (Lib/sqlite3/dump.py of 3.12, with 3.13's `filter`, a LIKE pattern of
    table names) over `conn`'s main database, leaving out replproxy's objects."""
    writable_schema = False
    yield "BEGIN TRANSACTION;"
    like = " AND \"name\" LIKE ?" if filter is not None else ""
    args = (filter,) if filter is not None else ()
    tables = conn.execute(f'SELECT "name", "type", "sql" FROM "main"."sqlite_master" WHERE "sql" NOT NULL '
                          f"AND \"type\" == 'table'{like} ORDER BY \"name\"", args).fetchall()
    sequence: list[str] = []
    for table, _type, sql in tables:
        where = ""
        if internal(table):
            continue
        if table == "sqlite_sequence":
            rows = conn.execute('SELECT * FROM "main"."sqlite_sequence"').fetchall()
            sequence = ['DELETE FROM "sqlite_sequence"']
            sequence += [f'INSERT INTO "sqlite_sequence" VALUES({_quote_value(name)},{seq})'
                         for name, seq in rows if not internal(name)]
            continue
        if table == "sqlite_stat1":
            yield 'ANALYZE "sqlite_master";'
            where = f' WHERE "tbl" NOT LIKE {_LIKE_INTERNAL}'
        elif table.startswith("sqlite_"):
            continue
        elif sql.startswith("CREATE VIRTUAL TABLE"):
            if not writable_schema:
                writable_schema = True
                yield "PRAGMA writable_schema=ON;"
            yield ("INSERT INTO sqlite_master(type,name,tbl_name,rootpage,sql)"
                   f"VALUES('table',{_quote_value(table)},{_quote_value(table)},0,{_quote_value(sql)});")
        else:
            yield f"{sql};"
        ident = _quote_name(table)
        columns = [str(row[1]) for row in conn.execute(f"PRAGMA main.table_info({ident})").fetchall()]
        values = ",".join(f"'||quote({_quote_name(column)})||'" for column in columns)
        for (row,) in conn.execute(f"SELECT 'INSERT INTO {ident} VALUES({values})' FROM \"main\".{ident}{where}"):
            yield f"{row};"
    like = " AND \"tbl_name\" LIKE ?" if filter is not None else ""
    for name, tbl_name, sql in conn.execute(
            'SELECT "name", "tbl_name", "sql" FROM "main"."sqlite_master" WHERE "sql" NOT NULL '
            f"AND \"type\" IN ('index', 'trigger', 'view'){like}", args).fetchall():
        if not internal(name) and not internal(tbl_name):
            yield f"{sql};"
    if writable_schema:
        yield "PRAGMA writable_schema=OFF;"
    for statement in sequence:
        yield f"{statement};"
    yield "COMMIT;"


@contextlib.contextmanager
def private_file() -> Iterator[str]:
    """The path of a new file in a private temporary directory, removed after the `with` block."""
    with tempfile.TemporaryDirectory(prefix="replproxy-copy-") as directory:
        yield os.path.join(directory, "copy.db")


def copy_user_data(source: apsw.Connection, path: str) -> None:
    """Copy `source`'s main database into the file `path`, then drop replproxy's objects there.
    The file's connection is closed on return: any SQLite library may open it."""
    dest = apsw.Connection(path)
    try:
        with dest.backup("main", source, "main") as backup:
            while not backup.step(-1):  # one step: one read transaction of the source
                pass
        _strip(dest)
    finally:
        dest.close()


def _strip(conn: apsw.Connection) -> None:
    """Drop replproxy's objects from a copy, and make it a plain rollback-journal database."""
    conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    objects = conn.execute(
        f"SELECT type, name FROM main.sqlite_master WHERE (name LIKE {_LIKE_INTERNAL} OR tbl_name LIKE "
        f"{_LIKE_INTERNAL}) AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").fetchall()
    order = {"trigger": 0, "view": 1, "index": 2, "table": 3}
    conn.execute("BEGIN")
    for kind, name in sorted(objects, key=lambda o: order.get(o[0], 4)):
        # IF EXISTS: a table takes its indexes and triggers with it
        conn.execute(f"DROP {kind.upper()} IF EXISTS main.{_quote_name(name)}")
    for table, column in (("sqlite_sequence", "name"), ("sqlite_stat1", "tbl")):
        if conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = ?", (table,)).fetchall():
            conn.execute(f"DELETE FROM main.{table} WHERE {column} LIKE {_LIKE_INTERNAL}")
    conn.execute("COMMIT")


def serialize(path: str) -> bytes:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return bytes(conn.serialize("main") or b"")
    finally:
        conn.close()


def target_file(target: Any) -> str | None:
    """The file of a backup target's main database, checked to be a SQLite connection of either
    library (None for an in-memory target)."""
    sqlite3 = sys.modules.get("sqlite3")
    if isinstance(target, apsw.Connection):
        name = target.db_filename("main")
    elif sqlite3 is not None and isinstance(target, sqlite3.Connection):
        name = next((row[2] for row in target.execute("PRAGMA database_list") if row[1] == "main"), "")
    else:
        raise TypeError(f"backup() argument 'target' must be sqlite3.Connection or apsw.Connection, not "
                        f"{type(target).__name__}")
    return os.path.realpath(name) if name else None


def backup(path: str, target: Any, *, pages: int, progress: Callable[[int, int, int], Any] | None,
           sleep: float) -> None:
    """Back the copy at `path` up into `target`, as sqlite3's backup() does."""
    if progress is not None and not callable(progress):
        raise TypeError("progress argument must be a callable")
    if not isinstance(pages, int):
        raise TypeError("pages must be an int")
    if isinstance(target, apsw.Connection):
        source = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            _backup_apsw(source, target, pages, progress, sleep)
        finally:
            source.close()
        return
    sqlite3 = sys.modules["sqlite3"]  # target_file() saw a sqlite3 connection
    source = sqlite3.connect(path)
    try:
        source.backup(target, pages=pages, progress=progress, sleep=sleep)
    finally:
        source.close()


def _backup_apsw(source: apsw.Connection, target: apsw.Connection, pages: int,
                 progress: Callable[[int, int, int], Any] | None, sleep: float) -> None:
    if not target.get_autocommit():
        raise OperationalError("target is in transaction")
    step = -1 if pages == 0 else pages
    try:
        with target.backup("main", source, "main") as job:
            while True:
                try:
                    done = job.step(step)
                    status = apsw.SQLITE_DONE if done else apsw.SQLITE_OK
                except apsw.BusyError:
                    done, status = False, apsw.SQLITE_BUSY
                except apsw.LockedError:
                    done, status = False, apsw.SQLITE_LOCKED
                if progress is not None:
                    progress(status, job.remaining, job.page_count)
                if done:
                    return
                if status != apsw.SQLITE_OK:
                    time.sleep(sleep)
    except apsw.ThreadingViolationError as exc:
        raise ProgrammingError(f"the target connection is in use: {exc}") from exc
