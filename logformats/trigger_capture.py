"""The trigger format's capture: one proxy transaction's row images, DDL and counters.

The images are in the capture table, written by the triggers in the same transaction as the
change, so savepoints roll them back with it; the capture reads them before each schema change
(they must be applied against the old schema) and at commit, when they are deleted. DDL is logged
as SQL, with the rows CREATE TABLE ... AS SELECT copied; writes to virtual tables (which run no
trigger) are logged by copying their shadow tables. Outside writes found when the transaction
begins are logged first (trigger_outside.py).
"""

from __future__ import annotations

from typing import Any

import apsw

from . import codec
from .base import (
    Capture,
    CaptureError,
    OutsideLog,
    StatementInfo,
    UnsafeStatementError,
    altered_tables,
    pop_savepoint,
    prepare_only,
)
from .row import read_sequence, read_sequence_at, sequence_chunk
from .row_keys import foreign_collations, refuse_foreign_collations
from .trigger_images import captured_chunks, snapshot, sql_chunk
from .trigger_install import (
    CAPTURE_TABLE,
    OPS,
    quote,
    store_schema,
    sync,
    table_specs,
    trigger_name,
    virtual_tables,
)
from .trigger_outside import catch_up, conn_state, needs_work


class TriggerCapture(Capture):
    """One proxy transaction: the capture rows its statements' triggers wrote, plus its DDL."""

    def __init__(self, conn: apsw.Connection, options: dict[str, Any], outside_log: OutsideLog | None):
        super().__init__(conn, options)
        self._chunks: list[tuple[bytes, bytes]] = []
        self._marks: list[tuple[str, int, int, bool]] = []
        self._flushed = 0  # capture rows with seq <= this are already in self._chunks
        self._resync = False  # capture triggers were dropped for a DDL that has not completed
        self._touched: set[str] = set()
        self._null_keys: list[tuple[int, str]] = []  # (chunk index, table): images keyed by NULL
        self._captured = False
        self._schema_changed = False  # by this transaction (DDL, PRAGMA, capture triggers)
        self._vtabs: dict[str, tuple[str, ...]] | None = None
        self._vtabs_written: set[str] = set()  # by the statement running now
        self._state = state = conn_state(conn)
        (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        if data_version != state.data_version or state.schema_version is None:
            # Someone else committed since this connection last looked: an outside writer may
            # have left rows or changed the schema. Log that first, in its own entries.
            state.schema_version = None
            if needs_work(conn, state):
                self._chunks.extend(catch_up(conn, outside_log)[1])
                self._schema_changed = True
                data_version = None  # not in order until this transaction commits
            state.data_version = data_version
            version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
            if data_version is not None:
                state.schema_version = version
        else:
            version = state.schema_version  # nobody committed, and our transactions kept it
        self._start_version = version
        self._sequence = read_sequence_at(conn, self._start_version)
        self._schema_version = self._start_version
        self._foreign: frozenset[tuple[str, str]] = frozenset()  # before the running schema change

    # -- statements

    def prepare(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        if self._resync:
            # The schema change before this statement failed after its triggers were dropped.
            self._sync()
        self._vtabs_written = set()
        if stmt.temp_triggers_on_main:
            # They fire before replproxy's triggers: a row they change again would be imaged
            # before the change that set them off, and a RAISE(IGNORE) or RAISE(FAIL) in them
            # would keep a change that replproxy's triggers never saw.
            names = ", ".join(repr(name) for name in sorted(stmt.temp_triggers_on_main))
            raise UnsafeStatementError(
                f"this statement fires the TEMP trigger {names} on a table of the main database: "
                "SQLite fires TEMP triggers before the trigger format's capture triggers, so what "
                "it changes would be logged out of order, and a RAISE(IGNORE) or RAISE(FAIL) in it "
                "would keep a change the log never sees. Use a trigger of the main database "
                "(CREATE TRIGGER without TEMP), or the row or mixed format")
        if stmt.kind == "dml" and self._virtual_tables():
            self._check_virtual(sql, params)
        if stmt.kind == "ddl" or stmt.replicated_pragma:
            self._schema_changed = True
            # Images taken so far must be applied against the old schema.
            self._flush()
            self._schema_version = self._read_schema_version()
            if stmt.kind == "ddl":
                self._foreign = foreign_collations(self.conn)
                altered = altered_tables(self.conn, sql, params)
                if altered:
                    # ALTER TABLE refuses to drop or rename what a trigger names: ours step aside.
                    self._resync = True
                    for table in altered:
                        for op in OPS:
                            self.conn.execute(f"DROP TRIGGER IF EXISTS main.{quote(trigger_name(table, op))}")
        return sql, params

    def _virtual_tables(self) -> dict[str, tuple[str, ...]]:
        """Virtual tables -> shadow tables, cached per connection while the schema stays."""
        if self._vtabs is None:
            cached = self._state.vtabs
            if not self._schema_changed and cached is not None and cached[0] == self._start_version:
                self._vtabs = cached[1]
            else:
                self._vtabs = virtual_tables(self.conn)
                if not self._schema_changed:
                    self._state.vtabs = (self._start_version, self._vtabs)
        return self._vtabs

    def _check_virtual(self, sql: str, params: Any) -> None:
        # SQLite runs no trigger on a virtual table, and triggers on FTS5's shadow tables crash
        # SQLite 3.54: a statement that writes a virtual table (itself or through a trigger) is
        # logged by copying the table's shadow tables after it.
        vtabs = self._virtual_tables()
        written = {t for t in _written_tables(self.conn, sql, params) if t in vtabs}
        for name in written:
            if not vtabs[name]:
                raise UnsafeStatementError(
                    f"virtual table {name!r} keeps no shadow tables, so the trigger format cannot "
                    "replicate writes to it")
        self._vtabs_written = written

    def _copy_virtual(self) -> None:
        self._flush()  # images of the statement's other writes come first
        # FTS5 keeps new terms in memory until a savepoint or commit: a savepoint writes them out.
        self.conn.execute("SAVEPOINT _replproxy_flush_virtual")
        self.conn.execute("RELEASE _replproxy_flush_virtual")
        vtabs = self._virtual_tables()
        specs = {s.name.lower(): s for s in table_specs(self.conn, "shadow")}
        for name in sorted(self._vtabs_written):
            for shadow in vtabs[name]:
                self._chunks.append(sql_chunk(f"DELETE FROM main.{quote(shadow)}"))
                spec = specs.get(shadow.lower())
                if spec is not None:
                    self._chunks.extend(snapshot(self.conn, spec))
        self._vtabs_written = set()

    def executed(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        if self._vtabs_written:
            self._copy_virtual()
        if stmt.kind == "ddl":
            if self._read_schema_version() != self._schema_version or self._resync:
                # Rows the statement changed came before the schema change: with foreign_keys on,
                # DROP TABLE deletes its rows first, and their ON DELETE actions (and the triggers
                # those fire, even on the dropped table) write images.
                self._flush()
                refuse_foreign_collations(self.conn, self._foreign)
                created_rows = _is_create_table_as(stmt)
                if created_rows:
                    row = self.conn.execute(
                        "SELECT sql FROM main.sqlite_master WHERE type='table' AND name=?",
                        (stmt.tables_created[0],)).fetchone()
                    self._chunks.append(sql_chunk(row[0]) if row else sql_chunk(sql, params))
                elif self._read_schema_version() != self._schema_version:
                    self._chunks.append(sql_chunk(sql, params))
                self._sync()
                if created_rows:
                    # CREATE TABLE ... AS SELECT fires no trigger: image the copied rows.
                    name = stmt.tables_created[0].lower()
                    for spec in table_specs(self.conn):
                        if spec.name.lower() == name:
                            self._chunks.extend(snapshot(self.conn, spec))
                            self._touched.add(spec.name)
            self._vtabs = None
        elif stmt.replicated_pragma:
            name = (stmt.pragma or "").lower()
            (value,) = self.conn.execute(f"PRAGMA main.{name}").fetchone()
            self._chunks.append(sql_chunk(f"PRAGMA {name} = {int(value)}"))
            store_schema(self.conn)

    def _sync(self) -> None:
        sync(self.conn)
        self._resync = False
        self._schema_changed = True

    def _read_schema_version(self) -> int:
        return self.conn.execute("PRAGMA main.schema_version").fetchone()[0]

    def _flush(self) -> None:
        null_keys: list[str] = []
        groups, last = captured_chunks(self.conn, self._flushed, null_keys, self._touched)
        # Refused at commit, as the row format does, unless a ROLLBACK TO takes the image away.
        self._null_keys.extend((len(self._chunks), table) for table in null_keys)
        for group in groups:
            self._chunks.extend(group)
        if last != self._flushed:
            self._captured = True
        self._flushed = last

    # -- savepoints: the capture rows are in the database and roll back with it

    def savepoint(self, name: str) -> None:
        self._marks.append((name.lower(), len(self._chunks), self._flushed, self._resync))

    def release(self, name: str) -> None:
        self._pop_to(name, keep=False)

    def rollback_to(self, name: str) -> None:
        mark = self._pop_to(name, keep=True)
        if mark is not None:
            _name, chunks, flushed, resync = mark
            del self._chunks[chunks:]
            self._null_keys = [(at, table) for at, table in self._null_keys if at < chunks]
            self._flushed, self._resync = flushed, resync
            self._vtabs = None  # a schema change may have been undone

    def _pop_to(self, name: str, keep: bool) -> tuple[str, int, int, bool] | None:
        return pop_savepoint(self._marks, name, keep)

    # -- commit

    def finish(self) -> bytes | None:
        if self._resync:
            self._sync()
        self._flush()
        if self._null_keys:
            raise CaptureError(
                f"table {self._null_keys[0][1]}: a row image has NULL in its PRIMARY KEY; followers "
                "could not identify the row, so the transaction was not committed. Give the row a "
                "key, or declare the key columns NOT NULL")
        if self._captured:
            # Logged with this entry: gone in the same transaction. If COMMIT is refused (deferred
            # foreign keys) the transaction goes on, later rows start over at seq 1, and finish()
            # runs again with the chunks kept.
            self.conn.execute(f"DELETE FROM main.{CAPTURE_TABLE}")
            self._flushed = 0
            self._captured = False
        chunks = list(self._chunks)
        schema_version = self._read_schema_version() if self._schema_changed else self._start_version
        if schema_version == self._start_version:
            sequence = read_sequence_at(self.conn, schema_version)
        else:
            sequence = read_sequence(self.conn)
        counters = sequence_chunk(self.conn, schema_version, sequence, self._sequence,
                                  self._touched, bool(chunks))
        if counters is not None:
            chunks.append(counters)
        if not chunks:
            return None
        return codec.pack_chunks(chunks)

    def close(self) -> None:
        if self._schema_changed:
            self._state.schema_version = None  # committed or rolled back: read it again


def _is_create_table_as(stmt: StatementInfo) -> bool:
    # As in the row format: a CREATE TABLE that reads a table or calls a function copied rows.
    return bool(stmt.tables_created) and (bool(stmt.tables_read) or bool(stmt.functions))


def _written_tables(conn: apsw.Connection, sql: str, params: Any) -> set[str]:
    """Tables a statement writes, including through triggers, as SQLite's authorizer reports when
    preparing it (lower-cased)."""
    found: set[str] = set()

    def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
        if code in (apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE) and isinstance(arg1, str):
            found.add(arg1.lower())
        return apsw.SQLITE_OK

    prepare_only(conn, sql, params, authorizer)
    return found
