"""Row-based (logical) log: row images from SQLite's session extension.

`row_image=full` records changesets (before and after images: followers detect divergence),
`row_image=minimal` records patchsets (primary key plus changed values), like MySQL's
binlog_row_image FULL/MINIMAL. Tables without a PRIMARY KEY are captured by rowid
(SQLITE_SESSION_OBJCONFIG_ROWID), so no row is ever left out.

What the session extension does not see is logged beside the images, in order:
schema changes (as SQL), replicated PRAGMAs and AUTOINCREMENT counters (sqlite_sequence).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any

import apsw

from . import codec
from .base import (
    ApplyError,
    Capture,
    DecodeError,
    Event,
    LogFormat,
    SchemaLookup,
    StatementInfo,
    is_internal_table,
    not_invertible,
    pop_savepoint,
    prepare_only,
    sql_excerpt,
)
from .row_keys import (
    foreign_collations,
    key_info,
    refuse_ambiguous_keys,
    refuse_collated_keys,
    refuse_foreign_collations,
    refuse_null_keys,
    refuse_wide_tables,
)

TAG_SQL = b"S"
TAG_CHANGESET = b"C"
TAG_PATCHSET = b"P"
TAG_SEQUENCE = b"Q"

_APPLY_FLAGS = apsw.SQLITE_CHANGESETAPPLY_NOSAVEPOINT | apsw.SQLITE_CHANGESETAPPLY_FKNOACTION
# FKNOACTION only changes anything on a connection with PRAGMA foreign_keys=ON (SQLite consults
# SQLITE_FkNoAction only inside its foreign-key processing), but setting it costs every apply a
# schema-cookie bump that re-prepares each statement of the connection, about half the apply time.
_APPLY_FLAGS_NO_FK = apsw.SQLITE_CHANGESETAPPLY_NOSAVEPOINT

_CONFLICT_NAMES = {
    apsw.SQLITE_CHANGESET_DATA: "the row's current values differ from the leader's before image",
    apsw.SQLITE_CHANGESET_NOTFOUND: "the row to change does not exist",
    apsw.SQLITE_CHANGESET_CONFLICT: "a row with the same primary key already exists",
    apsw.SQLITE_CHANGESET_CONSTRAINT: "a constraint failed",
    apsw.SQLITE_CHANGESET_FOREIGN_KEY: "a foreign key constraint failed",
}


def _user_table(name: str) -> bool:
    return not is_internal_table(name)


def read_sequence(conn: apsw.Connection) -> dict[str, int] | None:
    """AUTOINCREMENT counters, or None when no table uses AUTOINCREMENT."""
    try:
        return {name: seq for name, seq in conn.execute("SELECT name, seq FROM main.sqlite_sequence")}
    except apsw.SQLError:
        return None


# Whether main.sqlite_sequence exists, per connection: (PRAGMA schema_version, exists). Only the
# schema decides it, so the query runs again only when the schema version moves; without it every
# transaction on a database with no AUTOINCREMENT table would prepare a failing query (and raise)
# twice. Keyed by the connection, not the file name: a file recreated at the same path starts its
# schema version over and must not inherit the answer.
_SEQUENCE_TABLE: weakref.WeakKeyDictionary[apsw.Connection, tuple[int, bool]] = weakref.WeakKeyDictionary()


def _schema_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA main.schema_version").fetchone()[0]


def read_sequence_at(conn: apsw.Connection, schema_version: int) -> dict[str, int] | None:
    """`read_sequence(conn)`, where `schema_version` is conn's current PRAGMA main.schema_version
    (read in the same transaction): no query when this connection found no sqlite_sequence at it."""
    known = _SEQUENCE_TABLE.get(conn)
    if known is not None and known[0] == schema_version and not known[1]:
        return None
    sequence = read_sequence(conn)
    _SEQUENCE_TABLE[conn] = (schema_version, sequence is not None)
    return sequence


class RowCapture(Capture):
    """Collects one transaction's row images plus the schema changes between them."""

    def __init__(self, conn: apsw.Connection, options: dict[str, Any], *, only_touched: bool = False):
        super().__init__(conn, options)
        # The mixed format captures single statements: it checks only the tables they changed for
        # rows that images cannot identify (NULL keys that statements elsewhere may have left).
        self._only_touched = only_touched
        self._minimal = options.get("row_image", "full") == "minimal"
        self._chunks: list[tuple[bytes, bytes]] = []
        self._marks: list[tuple[str, int]] = []
        # The schema as committed: PRAGMA schema_version names one schema only once committed (a
        # rolled-back transaction's versions come round again with other schemas), so the caches
        # keyed by it are used only while this transaction has not changed the schema.
        self._start_version = _schema_version(conn)
        # Only a statement of this capture moves the schema (this connection holds the write
        # lock): without a schema change or replicated PRAGMA it is the same at COMMIT.
        self._schema_may_move = False
        self._sequence = read_sequence_at(conn, self._start_version)
        self._touched: set[str] = set()
        self._session: apsw.Session | None = self._new_session()
        self._ddl_running = False  # self._session was opened for a schema change still running
        self._collated: dict[str, Any] | None = None  # see _split_statements
        self._foreign: frozenset[tuple[str, str]] | None = None  # set by the first schema change
        self._schema_version = 0

    def _new_session(self, leave_out: frozenset[str] = frozenset()) -> apsw.Session:
        session = apsw.Session(self.conn, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        if leave_out:
            session.table_filter(lambda name: name.lower() not in leave_out and self._filter(name))
        else:
            session.table_filter(self._filter)
        return session

    def _filter(self, name: str) -> bool:
        if _user_table(name):
            self._touched.add(name)
            return True
        return False

    def _flush(self) -> None:
        """Close the open session, keeping what it saw as one chunk."""
        session, self._session = self._session, None
        if session is None:
            return
        if self._ddl_running:
            # Opened for a schema change that then failed: SQLite undid all it saw, and it leaves
            # out the tables that statement named, so it must not record what comes next.
            self._ddl_running = False
        elif not session.is_empty:
            if self._minimal:
                self._chunks.append((TAG_PATCHSET, session.patchset()))
            else:
                self._chunks.append((TAG_CHANGESET, session.changeset()))
        session.close()

    def _drop_session(self) -> None:
        self._ddl_running = False
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def prepare(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        if stmt.kind != "dml":
            self._schema_may_move = True
        if stmt.kind == "ddl" or stmt.replicated_pragma:
            # Images before a schema change must be taken against the old schema.
            self._flush()
            self._schema_version = self._read_schema_version()
            if stmt.kind == "ddl":
                # A schema change may change rows too: with foreign_keys on, DROP TABLE deletes the
                # table's rows first and their ON DELETE actions change other tables (and fire
                # those tables' triggers). A session sees that; the tables the statement drops or
                # alters are left out of it (it could not describe them afterwards).
                self._session = self._new_session(_restructured_tables(self.conn, sql, params))
                self._ddl_running = True
                self._foreign = foreign_collations(self.conn)
        elif self._session is None or self._ddl_running:
            self._flush()
            # The schema change before this statement failed (a UNIQUE index over duplicates), so
            # executed() never started the next session: without one these rows would not be seen.
            self._session = self._new_session()
        return sql, params

    def executed(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        self._ddl_running = False
        if stmt.kind == "ddl":
            if self._read_schema_version() != self._schema_version:
                created = _is_create_table_as(stmt)
                if not created:
                    self._flush()  # rows changed before the schema (DROP TABLE's cascades)
                rows_session, self._session = self._session, None
                self._chunks.append((TAG_SQL, codec.pack_sql(*self._ddl_text(stmt, sql, params))))
                if rows_session is not None:
                    self._session = rows_session
                    self._flush()
                if created:
                    self._capture_created_rows(stmt.tables_created[0])
                refuse_foreign_collations(self.conn, self._foreign or frozenset())
                self._collated = None
            else:
                self._drop_session()
            self._session = self._new_session()
        elif stmt.replicated_pragma:
            name = (stmt.pragma or "").lower()
            (value,) = self.conn.execute(f"PRAGMA main.{name}").fetchone()
            self._chunks.append((TAG_SQL, codec.pack_sql(f"PRAGMA {name} = {int(value)}")))
            self._session = self._new_session()
        elif self._split_statements():
            self._flush()
            self._session = self._new_session()

    def _split_statements(self) -> bool:
        """Whether each statement's images go into a chunk of their own: once the transaction has
        written a table whose key compares under a collation. The session extension keeps one entry
        per key as bytes but reads rows back with the collation, so a key renamed back and forth
        ('abc' -> 'ABC' -> 'abc') across statements would come out as an INSERT of a row that
        exists; per statement, what cannot be told apart is refused (refuse_collated_keys) and a
        DELETE then INSERT of equal keys applies in order."""
        if self._collated is None:
            # Before any schema change the version read when the transaction began still holds.
            version = self._read_schema_version() if self._foreign is not None else self._start_version
            self._collated = key_info(self.conn, version, version == self._start_version).collated
        return bool(self._collated) and any(t.lower() in self._collated for t in self._touched)

    def _ddl_text(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        if _is_create_table_as(stmt):
            row = self.conn.execute(
                "SELECT sql FROM main.sqlite_master WHERE type='table' AND name=?",
                (stmt.tables_created[0],),
            ).fetchone()
            if row is not None:
                return row[0], None
        return sql, params

    def _capture_created_rows(self, table: str) -> None:
        # SQLite runs no pre-update hook for the rows CREATE TABLE ... AS SELECT copies, so the
        # session never sees them: build their INSERT images from the new table itself.
        quoted = '"' + table.replace('"', '""') + '"'
        if self.conn.execute(f"SELECT 1 FROM main.{quoted} LIMIT 1").fetchone() is None:
            return  # a plain CREATE TABLE (which may be WITHOUT ROWID): nothing was copied
        builder = apsw.ChangesetBuilder()
        try:
            builder.schema(self.conn, "main")
            count = 0
            for row in self.conn.execute(f"SELECT rowid, * FROM main.{quoted}"):
                builder.add_insert(table, False, row)
                count += 1
            if count:
                self._chunks.append((TAG_CHANGESET, builder.output()))
                self._touched.add(table)  # checked at commit like any table written
        finally:
            builder.close()

    def _read_schema_version(self) -> int:
        return self.conn.execute("PRAGMA main.schema_version").fetchone()[0]

    def savepoint(self, name: str) -> None:
        self._flush()
        self._marks.append((name.lower(), len(self._chunks)))
        self._session = self._new_session()

    def release(self, name: str) -> None:
        self._pop_to(name, keep=False)

    def rollback_to(self, name: str) -> None:
        # Everything since the savepoint was undone: forget its images and schema changes.
        self._drop_session()
        mark = self._pop_to(name, keep=True)
        if mark is not None:
            del self._chunks[mark:]
        self._session = self._new_session()

    def _pop_to(self, name: str, keep: bool) -> int | None:
        mark = pop_savepoint(self._marks, name, keep)
        return None if mark is None else mark[1]

    def finish(self) -> bytes | None:
        self._flush()
        # COMMIT may still be refused (deferred foreign keys) and the transaction go on: prepare()
        # then opens a new session, and the chunks stay as they were so finish() can run again.
        schema_version = _schema_version(self.conn) if self._schema_may_move else self._start_version
        same_schema = schema_version == self._start_version
        # One description of the keys for every check (cached only while the schema is the one
        # the transaction began with: see key_info).
        info = key_info(self.conn, schema_version, same_schema)
        refuse_null_keys(self.conn, info, tables=self._checked_tables())
        sequence = read_sequence_at(self.conn, schema_version) if same_schema else read_sequence(self.conn)
        chunks = list(self._chunks)
        images = [data for tag, data in chunks if tag in (TAG_CHANGESET, TAG_PATCHSET)]
        refuse_ambiguous_keys(images, info)
        refuse_collated_keys(images, info)
        refuse_wide_tables(self.conn, self._touched, info)
        counters = sequence_chunk(self.conn, schema_version, sequence, self._sequence,
                                  self._touched, bool(chunks))
        if counters is not None:
            chunks.append(counters)
        if not chunks:
            return None
        return codec.pack_chunks(chunks)

    def _checked_tables(self) -> set[str] | None:
        return self._touched if self._only_touched else None

    def close(self) -> None:
        self._drop_session()


def sequence_chunk(conn: apsw.Connection, schema_version: int, sequence: dict[str, int] | None,
                   before: dict[str, int] | None, touched: set[str], rows_changed: bool
                   ) -> tuple[bytes, bytes] | None:
    """The counters chunk of an entry: counters that moved, and those of every table whose rows
    changed (a follower's own counter can move while it applies: a key updated upwards arrives as
    an insert). A counter row that is absent on the leader is sent as NULL, so followers drop
    theirs: a statement that failed midway under OR FAIL keeps its rows without ever writing the
    counter, while a follower's apply of those rows writes it."""
    if sequence is None:
        return None
    changed: list[tuple[str, int | None]] = [
        (name, seq) for name, seq in sequence.items()
        if ((before or {}).get(name) != seq or (name in touched and rows_changed))
        and not is_internal_table(name)
    ]
    gone = set(before or {}) - set(sequence)
    if rows_changed:
        gone |= (touched - set(sequence)) & autoincrement_tables(conn, schema_version)
    changed += [(name, None) for name in sorted(gone) if not is_internal_table(name)]
    if not changed:
        return None
    return TAG_SEQUENCE, codec.pack_values([value for pair in changed for value in pair])


# connection -> (schema_version, names of the AUTOINCREMENT tables); see _SEQUENCE_TABLE
_AUTOINCREMENT: weakref.WeakKeyDictionary[apsw.Connection, tuple[int, frozenset[str]]] = (
    weakref.WeakKeyDictionary())
_AUTOINCREMENT_WORD = re.compile(r"\bAUTOINCREMENT\b", re.IGNORECASE)


def autoincrement_tables(conn: apsw.Connection, schema_version: int | None = None) -> frozenset[str]:
    """Names of the AUTOINCREMENT tables (cached per connection and PRAGMA schema_version)."""
    if schema_version is None:
        schema_version = _schema_version(conn)
    known = _AUTOINCREMENT.get(conn)
    if known is None or known[0] != schema_version:
        names = frozenset(name for name, sql in conn.execute(
            "SELECT name, sql FROM main.sqlite_master WHERE type = 'table'")
            if sql and _AUTOINCREMENT_WORD.search(sql))
        known = _AUTOINCREMENT[conn] = (schema_version, names)
    return known[1]


def _restructured_tables(conn: apsw.Connection, sql: str, params: Any) -> frozenset[str]:
    """Tables of the main database (lower-cased) that a schema change drops or alters, as SQLite's
    authorizer reports when preparing it."""
    found: set[str] = set()

    def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
        if code == apsw.SQLITE_DROP_TABLE and isinstance(arg1, str):
            found.add(arg1.lower())
        elif code == apsw.SQLITE_ALTER_TABLE and isinstance(arg2, str):
            found.add(arg2.lower())
        return apsw.SQLITE_OK

    prepare_only(conn, sql, params, authorizer)
    return frozenset(found)


def _is_create_table_as(stmt: StatementInfo) -> bool:
    # Reading no table but calling functions (random(), datetime('now')): the rows must still be
    # images, a replay could compute other values.
    return bool(stmt.tables_created) and (bool(stmt.tables_read) or bool(stmt.functions))


class RowFormat(LogFormat):
    """Row images from the session extension (changesets or patchsets)."""

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options=dict(options or {}))
        self.name = "row"

    def capture(self, conn: apsw.Connection) -> Capture:
        return RowCapture(conn, self.options)

    def apply(self, conn: apsw.Connection, payload: bytes) -> None:
        apply_chunks(conn, payload)

    def apply_many(self, conn: apsw.Connection, payloads: Sequence[bytes]) -> None:
        # Row images of consecutive entries are merged (a changegroup) and applied in one call:
        # SQLite prepares its statements once per call, so this is several times faster. Schema
        # changes end a group; counters are set after the images they follow.
        group: list[tuple[bytes, bytes]] = []
        counters: list[bytes] = []

        def flush() -> None:
            if group:
                if len(group) == 1:
                    apply_changeset(conn, group[0][1])
                else:
                    builder = apsw.ChangesetBuilder()
                    try:
                        for _tag, data in group:
                            builder.add(data)
                        apply_changeset(conn, builder.output())
                    finally:
                        builder.close()
                group.clear()
            for data in counters:
                apply_sequence(conn, data)
            counters.clear()

        for payload in payloads:
            for tag, data in codec.iter_chunks(payload):
                if tag in (TAG_CHANGESET, TAG_PATCHSET):
                    if group and group[0][0] != tag:
                        flush()
                    group.append((tag, data))
                elif tag == TAG_SEQUENCE:
                    counters.append(data)
                else:
                    flush()
                    apply_chunks(conn, codec.pack_chunks([(tag, data)]))
        flush()

    def decode(self, payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
        return decode_chunks(payload, schema)

    def invert(self, payload: bytes) -> bytes:
        return codec.pack_chunks(invert_chunks(payload, self.name))


def sql_chunk_reason(sql: str) -> str:
    """Why an entry holding this SQL (a schema change or a header PRAGMA) cannot be undone."""
    if sql.lstrip()[:6].upper() == "PRAGMA":
        return f"it sets a database header value ({sql_excerpt(sql)}) whose previous value it does not hold"
    return f"it holds a schema change ({sql_excerpt(sql)}), which row images cannot undo"


def invert_chunks(payload: bytes, format_name: str = "row") -> list[tuple[bytes, bytes]]:
    """The chunks that undo a row payload: each changeset inverted, last chunk first (a row may be
    in several chunks when savepoints split the session: its last change is undone first).
    Counters are dropped: they only go up. NotInvertibleError for SQL chunks (named first, being
    the more fundamental reason) and patchsets."""
    chunks: list[tuple[bytes, bytes]] = []
    patchset = False
    for tag, data in codec.iter_chunks(payload):
        if tag == TAG_CHANGESET:
            if not data:
                continue
            try:
                chunks.append((TAG_CHANGESET, apsw.Changeset.invert(data)))
            except apsw.Error as exc:
                raise DecodeError(f"corrupt row images: {exc}") from exc
        elif tag == TAG_PATCHSET:
            patchset = True
        elif tag == TAG_SQL:
            sql, _params, _ = codec.unpack_sql(data)
            raise not_invertible(format_name, sql_chunk_reason(sql))
        elif tag != TAG_SEQUENCE:
            raise DecodeError(f"unknown chunk tag {tag!r}")
    if patchset:
        raise not_invertible(format_name, "its row images are patchsets (row_image=minimal), which "
                             "hold no old values of the rows they change")
    chunks.reverse()
    return chunks


def apply_chunks(conn: apsw.Connection, payload: bytes) -> None:
    """Replay the chunks of a row payload on a follower connection, in order."""
    for tag, data in codec.iter_chunks(payload):
        if tag == TAG_SQL:
            sql, params, _ = codec.unpack_sql(data)
            try:
                for _ in conn.execute(sql, params):
                    pass
            except apsw.Error as exc:
                raise ApplyError(f"{sql!r} failed: {exc}", reason=str(exc)) from exc
        elif tag in (TAG_CHANGESET, TAG_PATCHSET):
            apply_changeset(conn, data)
        elif tag == TAG_SEQUENCE:
            apply_sequence(conn, data)
        else:
            raise DecodeError(f"unknown chunk tag {tag!r}")


def apply_changeset(conn: apsw.Connection, data: bytes) -> None:
    """Apply row images; any conflict aborts with the table and the reason."""
    conflicts: list[tuple[int, str, Any]] = []

    def on_conflict(reason: int, change: apsw.TableChange) -> int:
        key = change.old if change.old is not None else change.new
        conflicts.append((reason, change.name, _pk_values(change, key)))
        return apsw.SQLITE_CHANGESET_ABORT

    try:
        foreign_keys = conn.execute("PRAGMA foreign_keys").fetchone()[0]
        flags = _APPLY_FLAGS if foreign_keys else _APPLY_FLAGS_NO_FK
        collated = key_info(conn).collated
        if collated:
            # A DELETE of 'abc' and an INSERT of 'ABC' (under NOCASE) from separate statements or
            # entries, merged in one changeset, are two keys to the session extension, in any
            # order, but one to SQLite: the INSERT would meet the row the DELETE removes. Deleting
            # those tables' rows first is always possible (the leader never held two rows of one
            # key as SQLite compares; a statement that mixes them up is refused there).
            def first(change: apsw.TableChange) -> bool:
                return change.op == "DELETE" and change.name.lower() in collated

            apsw.Changeset.apply(data, conn, filter_change=first, conflict=on_conflict, flags=flags)
            apsw.Changeset.apply(data, conn, filter_change=lambda change: not first(change),
                                 conflict=on_conflict, flags=flags)
        else:
            apsw.Changeset.apply(data, conn, conflict=on_conflict, flags=flags)
    except apsw.Error as exc:
        if conflicts:
            reason, table, key = conflicts[0]
            text = _CONFLICT_NAMES.get(reason, f"conflict {reason}")
            raise ApplyError(
                f"conflict on table {table!r} at key {key!r}: {text}", table=table, reason=text
            ) from exc
        raise ApplyError(f"changeset could not be applied: {exc}", reason=str(exc)) from exc


def _pk_values(change: apsw.TableChange, values: Any) -> Any:
    if values is None:
        return None
    picked = [values[i] for i in sorted(change.pk_columns) if i < len(values)]
    return picked[0] if len(picked) == 1 else tuple(picked)


def apply_sequence(conn: apsw.Connection, data: bytes) -> None:
    """Set AUTOINCREMENT counters to the leader's values."""
    flat, _ = codec.unpack_values(data)
    for name, seq in zip(flat[0::2], flat[1::2], strict=False):
        if seq is None:  # no counter row on the leader (see sequence_chunk)
            conn.execute("DELETE FROM main.sqlite_sequence WHERE name=?", (name,))
            continue
        conn.execute("UPDATE main.sqlite_sequence SET seq=? WHERE name=?", (seq, name))
        if conn.changes() == 0:
            conn.execute("INSERT INTO main.sqlite_sequence(name, seq) VALUES(?, ?)", (name, seq))


def _columns_for(table: str, count: int, schema: SchemaLookup | None) -> list[str]:
    names = list(schema(table) or []) if schema else []
    if len(names) == count:
        return names
    if len(names) + 1 == count:
        return ["rowid", *names]  # a table without PRIMARY KEY, captured by rowid
    return [f"c{i}" for i in range(count)]


def _image(columns: list[str], values: Any) -> dict[str, Any] | None:
    if values is None:
        return None
    return {
        name: value
        for name, value in zip(columns, values, strict=False)
        if value is not apsw.no_change
    }


def decode_chunks(payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
    """Events of a row payload: one per row image, SQL and counter chunk."""
    events: list[Event] = []
    for tag, data in codec.iter_chunks(payload):
        if tag == TAG_SQL:
            sql, params, _ = codec.unpack_sql(data)
            events.append(Event("SQL", sql=sql, params=params))
        elif tag in (TAG_CHANGESET, TAG_PATCHSET):
            try:
                for change in apsw.Changeset.iter(data):
                    columns = _columns_for(change.name, change.column_count, schema)
                    events.append(
                        Event(
                            change.op,
                            table=change.name,
                            old=_image(columns, change.old),
                            new=_image(columns, change.new),
                        )
                    )
            except apsw.Error as exc:
                raise DecodeError(f"corrupt row images: {exc}") from exc
        elif tag == TAG_SEQUENCE:
            flat, _ = codec.unpack_values(data)
            for name, seq in zip(flat[0::2], flat[1::2], strict=False):
                events.append(Event("SEQUENCE", table=name, new={"seq": seq}))
        else:
            raise DecodeError(f"unknown chunk tag {tag!r}")
    return events
