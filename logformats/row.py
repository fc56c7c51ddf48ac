"""Row-based (logical) log: row images from SQLite's session extension.

`row_image=full` records changesets (before and after images: followers detect divergence),
`row_image=minimal` records patchsets (primary key plus changed values), like MySQL's
binlog_row_image FULL/MINIMAL. Tables without a PRIMARY KEY are captured by rowid
(SQLITE_SESSION_OBJCONFIG_ROWID), so no row is ever left out.

What the session extension does not see is logged beside the images, in order:
schema changes (as SQL), replicated PRAGMAs and AUTOINCREMENT counters (sqlite_sequence).
"""

from __future__ import annotations

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
)

TAG_SQL = b"S"
TAG_CHANGESET = b"C"
TAG_PATCHSET = b"P"
TAG_SEQUENCE = b"Q"

_APPLY_FLAGS = apsw.SQLITE_CHANGESETAPPLY_NOSAVEPOINT | apsw.SQLITE_CHANGESETAPPLY_FKNOACTION

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


class RowCapture(Capture):
    """Collects one transaction's row images plus the schema changes between them."""

    def __init__(self, conn: apsw.Connection, options: dict[str, Any]):
        super().__init__(conn, options)
        self._minimal = options.get("row_image", "full") == "minimal"
        self._chunks: list[tuple[bytes, bytes]] = []
        self._marks: list[tuple[str, int]] = []
        self._sequence = read_sequence(conn)
        self._session: apsw.Session | None = self._new_session()
        self._schema_version = 0

    def _new_session(self) -> apsw.Session:
        session = apsw.Session(self.conn, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.table_filter(_user_table)
        return session

    def _flush(self) -> None:
        """Close the open session, keeping what it saw as one chunk."""
        session, self._session = self._session, None
        if session is None:
            return
        if not session.is_empty:
            if self._minimal:
                self._chunks.append((TAG_PATCHSET, session.patchset()))
            else:
                self._chunks.append((TAG_CHANGESET, session.changeset()))
        session.close()

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def prepare(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        if stmt.kind == "ddl" or stmt.replicated_pragma:
            # Images before a schema change must be taken against the old schema.
            self._flush()
            self._schema_version = self._read_schema_version()
            if _is_create_table_as(stmt):
                # CREATE TABLE ... AS SELECT: the rows it copies are captured as images.
                self._session = self._new_session()
        return sql, params

    def executed(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        if stmt.kind == "ddl":
            if self._read_schema_version() != self._schema_version:
                rows_session, self._session = self._session, None
                self._chunks.append((TAG_SQL, codec.pack_sql(*self._ddl_text(stmt, sql, params))))
                if rows_session is not None:
                    self._session = rows_session
                    self._flush()
            else:
                self._drop_session()
            self._session = self._new_session()
        elif stmt.replicated_pragma:
            name = (stmt.pragma or "").lower()
            (value,) = self.conn.execute(f"PRAGMA main.{name}").fetchone()
            self._chunks.append((TAG_SQL, codec.pack_sql(f"PRAGMA {name} = {int(value)}")))
            self._session = self._new_session()

    def _ddl_text(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        if _is_create_table_as(stmt):
            row = self.conn.execute(
                "SELECT sql FROM main.sqlite_master WHERE type='table' AND name=?",
                (stmt.tables_created[0],),
            ).fetchone()
            if row is not None:
                return row[0], None
        return sql, params

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
        name = name.lower()
        for index in range(len(self._marks) - 1, -1, -1):
            if self._marks[index][0] == name:
                position = self._marks[index][1]
                del self._marks[index + (1 if keep else 0) :]
                return position
        return None

    def finish(self) -> bytes | None:
        self._flush()
        # COMMIT may still be refused (deferred foreign keys) and the transaction go on: keep
        # capturing, and leave the chunks as they were so that finish() can be called again.
        self._session = self._new_session()
        chunks = list(self._chunks)
        sequence = read_sequence(self.conn)
        if sequence is not None and sequence != self._sequence:
            changed = [
                (name, seq)
                for name, seq in sequence.items()
                if (self._sequence or {}).get(name) != seq and not is_internal_table(name)
            ]
            if changed:
                flat = [value for pair in changed for value in pair]
                chunks.append((TAG_SEQUENCE, codec.pack_values(flat)))
        if not chunks:
            return None
        return codec.pack_chunks(chunks)

    def close(self) -> None:
        self._drop_session()


def _is_create_table_as(stmt: StatementInfo) -> bool:
    return bool(stmt.tables_created) and bool(stmt.tables_read)


class RowFormat(LogFormat):
    """Row images from the session extension (changesets or patchsets)."""

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options=dict(options or {}))
        self.name = "row"

    def capture(self, conn: apsw.Connection) -> Capture:
        return RowCapture(conn, self.options)

    def apply(self, conn: apsw.Connection, payload: bytes) -> None:
        apply_chunks(conn, payload)

    def decode(self, payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
        return decode_chunks(payload, schema)


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
        apsw.Changeset.apply(data, conn, conflict=on_conflict, flags=_APPLY_FLAGS)
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
    for name, seq in zip(flat[0::2], flat[1::2]):
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
        for name, value in zip(columns, values)
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
            for name, seq in zip(flat[0::2], flat[1::2]):
                events.append(Event("SEQUENCE", table=name, new={"seq": seq}))
        else:
            raise DecodeError(f"unknown chunk tag {tag!r}")
    return events
