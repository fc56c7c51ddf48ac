"""Row images of the trigger format: read from the capture table into payload chunks, and back.

A rows chunk holds the images of one table and operation: a header (table, operation, keys,
columns; length first, so a follower can look a header it has seen up without decoding it), then
one image per row. TEXT that is not UTF-8 (which Python cannot decode) travels as its bytes in a
chunk of its own tag, with the positions of such values, and is written back as TEXT.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import apsw

from . import codec
from .base import DecodeError
from .row import TAG_SQL
from .trigger_install import (
    CAPTURE_TABLE,
    INSERT,
    MARK_LAYOUT,
    OPS,
    Layout,
    TableSpec,
    capture_width,
    quote,
    stored_layout,
)

TAG_ROWS = b"R"  # row images of one table and operation
TAG_RAW_ROWS = b"X"  # the same, for images holding TEXT that is not UTF-8
TAG_ORIGIN = b"O"  # transactions committed outside the proxy (informational)


class RawText(bytes):
    """A TEXT value whose bytes are not UTF-8: kept as its bytes, written back as TEXT."""


def _fetch(conn: apsw.Connection, columns: Sequence[str], rest: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """SELECT columns; TEXT that is not UTF-8 (which Python cannot decode) comes back as RawText."""
    try:
        return conn.execute(f"SELECT {', '.join(columns)} {rest}", params).fetchall()
    except UnicodeDecodeError:
        pass
    exprs = ", ".join(f"typeof({c}), CASE typeof({c}) WHEN 'text' THEN CAST({c} AS BLOB) ELSE {c} END"
                      for c in columns)
    out = []
    for row in conn.execute(f"SELECT {exprs} {rest}", params):
        values = []
        for kind, value in zip(row[0::2], row[1::2], strict=False):
            if kind == "text":
                try:
                    value = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    value = RawText(value)
            values.append(value)
        out.append(tuple(values))
    return out


# Layout -> the encoded header of its rows chunks (built once per layout).
_HEADERS: dict[Layout, bytes] = {}


def _rows_chunk(header: Layout, images: list[Sequence[Any]]) -> tuple[bytes, bytes]:
    head = _HEADERS.get(header)
    if head is None:
        values = codec.pack_values([header.table, header.op, len(header.keys), *header.keys, *header.cols])
        # Length first, so a follower can look a header it has seen up without decoding it.
        head = _HEADERS[header] = struct.pack("<I", len(values)) + values
    raw = any(type(v) is RawText for image in images for v in image)
    parts = [head]
    for image in images:
        if raw:
            parts.append(codec.pack_values([bytes(v) if isinstance(v, RawText) else v for v in image]))
            parts.append(codec.pack_values([i for i, v in enumerate(image) if isinstance(v, RawText)]))
        else:
            parts.append(codec.pack_values(image))
    return (TAG_RAW_ROWS if raw else TAG_ROWS), b"".join(parts)


def captured_chunks(conn: apsw.Connection, after: int, null_keys: list[str] | None = None,
                    touched: set[str] | None = None, split_marks: bool = False
                    ) -> tuple[list[list[tuple[bytes, bytes]]], int]:
    """Chunks of the capture rows with seq > after, in order, one run per layout; with
    `split_marks`, a new group starts after each boundary mark. Returns (groups, last seq).
    Tables with an image whose key holds NULL are added to `null_keys`."""
    rest = f"FROM main.{CAPTURE_TABLE} WHERE seq > ? ORDER BY seq"
    try:
        rows = conn.execute(f"SELECT * {rest}", (after,)).fetchall()
    except UnicodeDecodeError:  # TEXT that is not UTF-8: read value by value
        columns = ["seq", "lay"] + [f"c{i}" for i in range(capture_width(conn))]
        rows = _fetch(conn, columns, rest, (after,))
    groups: list[list[tuple[bytes, bytes]]] = [[]]
    last = after
    run_layout: Layout | None = None
    run_id = -1
    run: list[Sequence[Any]] = []

    def close_run() -> None:
        if run_layout is not None and run:
            groups[-1].append(_rows_chunk(run_layout, list(run)))
        run.clear()

    for row in rows:
        last = row[0]
        layout_id = row[1]
        if layout_id == MARK_LAYOUT:
            if split_marks:
                close_run()
                run_layout, run_id = None, -1
                if groups[-1]:
                    groups.append([])
            continue
        if layout_id != run_id:
            close_run()
            run_layout, run_id = stored_layout(conn, layout_id), layout_id
        assert run_layout is not None
        image = row[2: 2 + run_layout.width]
        if (null_keys is not None and run_layout.nullable
                and any(v is None for v in run_layout.key_of(image))):
            null_keys.append(f"{run_layout.table!r} ({', '.join(run_layout.keys)})")
        if touched is not None:
            touched.add(run_layout.table)
        run.append(image)
    close_run()
    return [g for g in groups if g], last


def snapshot(conn: apsw.Connection, spec: TableSpec) -> list[tuple[bytes, bytes]]:
    """INSERT images of every row of a table (for tables created or changed outside the proxy, or
    whose capture was off, and for CREATE TABLE ... AS SELECT)."""
    if spec.error is not None:
        return []
    rows = _fetch(conn, [quote(c) for c in spec.cols], f"FROM main.{quote(spec.name)}")
    if not rows:
        return []
    return [_rows_chunk(spec.layout(INSERT), rows)]


def sql_chunk(sql: str, params: Any = None) -> tuple[bytes, bytes]:
    return TAG_SQL, codec.pack_sql(sql, params)


def is_outside_entry(payload: bytes) -> bool:
    """True for an entry logging transactions committed outside the proxy."""
    return any(tag == TAG_ORIGIN for tag, _ in codec.iter_chunks(payload))


# Encoded header -> Layout, on followers.
_DECODED_HEADERS: dict[bytes, Layout] = {}


def decode_rows(data: bytes, raw: bool) -> tuple[Layout, list[Any]]:
    """(layout, images) of a rows chunk; with `raw`, each image is (values, raw text positions)."""
    try:
        (size,) = struct.unpack_from("<I", data, 0)
    except struct.error:
        raise DecodeError("truncated row images header") from None
    pos = 4 + size
    head_bytes = data[4:pos]
    layout = _DECODED_HEADERS.get(head_bytes)
    if layout is None:
        head, end = codec.unpack_values(head_bytes, 0)
        try:
            table, op, nkeys = head[0], head[1], int(head[2])
            keys, cols = tuple(head[3: 3 + nkeys]), tuple(head[3 + nkeys:])
        except (IndexError, TypeError, ValueError):
            raise DecodeError("corrupt row images header") from None
        if op not in OPS or end != size:
            raise DecodeError(f"corrupt row images header (operation {op!r})")
        layout = Layout(table, op, keys, cols)
        if len(_DECODED_HEADERS) < 4096:
            _DECODED_HEADERS[head_bytes] = layout
    images: list[Any] = []
    end = len(data)
    while pos < end:
        values, pos = codec.unpack_values(data, pos)
        if len(values) != layout.width:
            raise DecodeError(f"row image of {table!r} has {len(values)} values, expected {layout.width}")
        if raw:
            positions, pos = codec.unpack_values(data, pos)
            images.append((values, tuple(positions)))
        else:
            images.append(values)
    return layout, images

