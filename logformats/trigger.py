"""Trigger-based log: AFTER INSERT/UPDATE/DELETE triggers write row images into a capture table.

The leader holds, beside the user's tables (all internal, never replicated or compared):

- `_replproxy_capture(seq INTEGER PRIMARY KEY, lay, c0, c1, ...)`: one row per changed row, written
  by replproxy's triggers in the same transaction as the change. The columns `c0...` have no type,
  so every value keeps its storage class exactly (INTEGER, REAL to the bit, TEXT even when it is
  not UTF-8, BLOB, NULL). `lay` names the row's layout.
- `_replproxy_capture_layout(id, tbl, op, keys, cols, nullable)`: what the values of a capture row
  are: the table, the operation, the identifying columns (the PRIMARY KEY, or the rowid for a
  table without one) and the columns of the image. The id is a hash of that content, so an id
  always means the same layout (a layout created by a transaction that was rolled back comes back
  with the same id, and caches never go stale).
- `_replproxy_capture_schema`: the user schema (and `user_version`/`application_id`) as the log
  has replicated it, to notice schema changes made by programs outside the proxy.

Triggers are named `_replproxy_ins_<table>`, `_replproxy_upd_<table>`, `_replproxy_del_<table>`.
An INSERT image holds the new row, an UPDATE image the old key then the new row, a DELETE image
the old key. Generated columns are never in an image (followers compute them). replproxy's
triggers are always the newest on their table: SQLite fires the newest trigger first, so each
image is taken before a user's AFTER trigger changes the row again, and images are in the order
the changes happened.

On commit through the proxy the capture's rows become one log entry and are deleted in the same
transaction. Rows left in the capture table by programs that write to the leader file without
the proxy are logged by `TriggerFormat.log_outside` (see docs/logformats.md for when).

Followers apply images by key with their triggers disabled: INSERT OR REPLACE for an insert (a
REPLACE on the leader deletes without firing delete triggers; the follower's REPLACE deletes the
same rows), UPDATE OR REPLACE ... WHERE key IS old key, DELETE ... WHERE key IS old key. An
update or delete that finds no row stops the follower with a conflict.

The format is split into: trigger_install.py (capture tables, layouts, triggers, the schema as
replicated), trigger_images.py (row images read from the capture table into chunks, and decoded),
trigger_outside.py (writers outside the proxy), trigger_capture.py (the capture of one proxy
transaction). This module holds the format: install, capture, apply, invert, decode.
"""

from __future__ import annotations

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
    OutsideLog,
    SchemaLookup,
    not_invertible,
)
from .row import TAG_SEQUENCE, TAG_SQL, apply_sequence, sql_chunk_reason
from .trigger_capture import TriggerCapture
from .trigger_images import TAG_ORIGIN, TAG_RAW_ROWS, TAG_ROWS, decode_rows, is_outside_entry
from .trigger_install import (
    CAPTURE_TABLE,
    DELETE,
    INSERT,
    LAYOUT_TABLE,
    MARK_LAYOUT,
    SCHEMA_TABLE,
    UPDATE,
    Layout,
    install_capture,
    is_capture_trigger,
    is_installed,
    quote,
)
from .trigger_outside import catch_up, conn_state, needs_work


class TriggerFormat(LogFormat):
    """Row images written by triggers into a capture table; captures writers outside the proxy."""

    # Followers apply images with their triggers disabled: the images hold what triggers did.
    follower_triggers = False
    captures_outside_writers = True

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options=dict(options or {}))
        self.name = "trigger"
        self._outside_log: OutsideLog | None = None
        self._apply_sql: dict[tuple[Any, ...], str] = {}

    def bind_outside_log(self, append: OutsideLog | None) -> None:
        """`append(conn, payload) -> lsn` adds one log entry inside the caller's transaction. With
        it, transactions committed outside the proxy are logged as entries of their own; without,
        they are logged at the head of the next transaction captured here."""
        self._outside_log = append

    def install(self, conn: apsw.Connection) -> None:
        own = conn.get_autocommit()
        if own:
            conn.execute("BEGIN IMMEDIATE")
        try:
            install_capture(conn)
        except BaseException:
            if own:
                conn.execute("ROLLBACK")
            raise
        if own:
            conn.execute("COMMIT")

    def capture(self, conn: apsw.Connection) -> Capture:
        return TriggerCapture(conn, self.options, self._outside_log)

    # -- writers outside the proxy

    def outside_pending(self, conn: apsw.Connection) -> bool:
        """Whether the leader holds changes committed outside the proxy and not logged yet (or
        needs its capture installed). A read; call it outside a transaction."""
        return needs_work(conn, conn_state(conn))

    def log_outside(self, conn: apsw.Connection) -> int:
        """Inside a write transaction on the leader: log what was committed outside the proxy
        through the bound appender (installing the capture if it is missing); return the number
        of entries added."""
        if self._outside_log is None:
            raise RuntimeError("no outside log bound to the trigger format")
        return catch_up(conn, self._outside_log)[0]

    # -- followers

    def apply(self, conn: apsw.Connection, payload: bytes) -> None:
        self.apply_many(conn, [payload])

    def apply_many(self, conn: apsw.Connection, payloads: Sequence[bytes]) -> None:
        # Consecutive INSERT images of one table, across entries, go to SQLite in one
        # executemany; everything else is applied in order as it comes.
        pending: list[Any] = []
        pending_layout: Layout | None = None

        def flush() -> None:
            nonlocal pending_layout
            if pending_layout is not None and pending:
                self._run_images(conn, pending_layout, pending, False)
            pending.clear()
            pending_layout = None

        for payload in payloads:
            for tag, data in codec.iter_chunks(payload):
                if tag == TAG_ROWS:
                    layout, images = decode_rows(data, False)
                    if layout.op == INSERT:
                        if layout != pending_layout:
                            flush()
                            pending_layout = layout
                        pending.extend(images)
                        continue
                    flush()
                    self._run_images(conn, layout, images, False)
                    continue
                flush()
                if tag == TAG_SQL:
                    sql, params, _ = codec.unpack_sql(data)
                    try:
                        for _ in conn.execute(sql, params):
                            pass
                    except apsw.Error as exc:
                        raise ApplyError(f"{sql!r} failed: {exc}", reason=str(exc)) from exc
                elif tag == TAG_RAW_ROWS:
                    layout, images = decode_rows(data, True)
                    self._run_images(conn, layout, images, True)
                elif tag == TAG_SEQUENCE:
                    apply_sequence(conn, data)
                elif tag != TAG_ORIGIN:
                    raise DecodeError(f"unknown chunk tag {tag!r}")
        flush()

    def _statement(self, layout: Layout, raw: tuple[int, ...] = ()) -> str:
        key = (layout, raw)
        sql = self._apply_sql.get(key)
        if sql is None:
            sql = self._apply_sql[key] = _apply_statement(layout, raw)
        return sql

    def _run_images(self, conn: apsw.Connection, layout: Layout, images: list[Any], raw: bool) -> None:
        try:
            if layout.op == INSERT and not raw:
                conn.executemany(self._statement(layout), images)
                return
            for image, raw_at in images if raw else ((i, ()) for i in images):
                values = list(image)
                if layout.op == UPDATE:
                    # The image is old key + new row; the statement binds new row, then old key.
                    count = len(layout.keys)
                    values = values[count:] + values[:count]
                    raw_at = tuple(i - count if i >= count else len(layout.cols) + i for i in raw_at)
                conn.execute(self._statement(layout, tuple(raw_at)), values)
                if layout.op != INSERT and conn.changes() != 1:
                    key = layout.key_of(image)
                    reason = ("the row to change does not exist" if conn.changes() == 0
                              else "the key matches several rows")
                    raise ApplyError(f"conflict on table {layout.table!r} at key "
                                     f"{key[0] if len(key) == 1 else key!r}: {reason}",
                                     table=layout.table, reason=reason)
        except apsw.Error as exc:
            raise ApplyError(f"row images of table {layout.table!r} could not be applied: {exc}",
                             table=layout.table, reason=str(exc)) from exc

    def invert(self, payload: bytes) -> bytes:
        # The images lack what an exact undo needs: UPDATE and DELETE images hold the old key
        # only, and an INSERT image may hide the rows its REPLACE deleted (no delete trigger fires
        # for those unless recursive_triggers is on). Only counters and marks carry no change.
        images: Layout | None = None
        for tag, data in codec.iter_chunks(payload):
            if tag in (TAG_ROWS, TAG_RAW_ROWS):
                layout = decode_rows(data, tag == TAG_RAW_ROWS)[0]
                if images is None or (images.op == INSERT and layout.op != INSERT):
                    images = layout  # name missing old values first: the plainer reason
            elif tag == TAG_SQL:
                sql, _params, _ = codec.unpack_sql(data)
                raise not_invertible(self.name, sql_chunk_reason(sql))
            elif tag not in (TAG_SEQUENCE, TAG_ORIGIN):
                raise DecodeError(f"unknown chunk tag {tag!r}")
        if images is not None:
            raise not_invertible(self.name, _not_invertible_images(images))
        return codec.pack_chunks([])

    def decode(self, payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
        events: list[Event] = []
        for tag, data in codec.iter_chunks(payload):
            if tag == TAG_SQL:
                sql, params, _ = codec.unpack_sql(data)
                events.append(Event("SQL", sql=sql, params=params))
            elif tag in (TAG_ROWS, TAG_RAW_ROWS):
                layout, images = decode_rows(data, tag == TAG_RAW_ROWS)
                for item in images:
                    image = item[0] if tag == TAG_RAW_ROWS else item
                    events.append(_event(layout, image))
            elif tag == TAG_SEQUENCE:
                flat, _ = codec.unpack_values(data)
                for name, seq in zip(flat[0::2], flat[1::2], strict=False):
                    events.append(Event("SEQUENCE", table=name, new={"seq": seq}))
            elif tag == TAG_ORIGIN:
                pass
            else:
                raise DecodeError(f"unknown chunk tag {tag!r}")
        return events


def _not_invertible_images(layout: Layout) -> str:
    table = repr(layout.table)
    if layout.op == UPDATE:
        return (f"its UPDATE images of table {table} hold the old key and the new row, not the old "
                "values the undo would have to write back")
    if layout.op == DELETE:
        return f"its DELETE images of table {table} hold the key of each deleted row, not its values"
    return (f"its INSERT images of table {table} cannot show whether the insert replaced a row "
            "(INSERT OR REPLACE deletes the rows in its way without a delete image), so deleting "
            "the inserted rows is not an exact undo")


def _apply_statement(layout: Layout, raw: tuple[int, ...]) -> str:
    def param(i: int) -> str:
        return "CAST(? AS TEXT)" if i in raw else "?"

    table = f"main.{quote(layout.table)}"
    if layout.op == INSERT:
        cols = ", ".join(quote(c) for c in layout.cols)
        marks = ", ".join(param(i) for i in range(len(layout.cols)))
        return f"INSERT OR REPLACE INTO {table}({cols}) VALUES ({marks})"
    if layout.op == UPDATE:
        sets = ", ".join(f"{quote(c)} = {param(i)}" for i, c in enumerate(layout.cols))
        where = " AND ".join(f"{quote(k)} IS {param(len(layout.cols) + i)}" for i, k in enumerate(layout.keys))
        return f"UPDATE OR REPLACE {table} SET {sets} WHERE {where}"
    where = " AND ".join(f"{quote(k)} IS {param(i)}" for i, k in enumerate(layout.keys))
    return f"DELETE FROM {table} WHERE {where}"


def _event(layout: Layout, image: Sequence[Any]) -> Event:
    def values(names: Sequence[str], vals: Sequence[Any]) -> dict[str, Any]:
        return dict(zip(names, vals, strict=False))

    if layout.op == INSERT:
        return Event("INSERT", table=layout.table, new=values(layout.cols, image))
    if layout.op == UPDATE:
        count = len(layout.keys)
        return Event("UPDATE", table=layout.table, old=values(layout.keys, image[:count]),
                     new=values(layout.cols, image[count:]))
    return Event("DELETE", table=layout.table, old=values(layout.keys, image))


__all__ = [
    "CAPTURE_TABLE",
    "LAYOUT_TABLE",
    "MARK_LAYOUT",
    "SCHEMA_TABLE",
    "TriggerCapture",
    "TriggerFormat",
    "is_capture_trigger",
    "is_installed",
    "is_outside_entry",
]
