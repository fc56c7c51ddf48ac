"""Statement payloads: the encoding of a transaction's statement records and row payloads.

Chunks, in order: `T` the distinct SQL texts of the entry, then `X` runs of statement records
(text index, settings flags, parameters) and, in the mixed format, `R` row payloads (row.py).
An entry carries the texts it uses, so it decodes alone: for a follower set up later from a
snapshot, for a transport that ships entries one by one, and for `replproxy log --from N`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

from . import codec
from .base import DecodeError

TAG_TEXTS = b"T"
TAG_STATEMENTS = b"X"
TAG_ROWS = b"R"

# Settings of the leader connection that a statement depends on, replayed around it on followers.
FLAG_FOREIGN_KEYS = 1
FLAG_RECURSIVE_TRIGGERS = 2
FLAG_REVERSE_ORDER = 4
FLAG_CASE_SENSITIVE_LIKE = 8
FLAG_IGNORE_CHECK = 16
# flag -> the PRAGMA that holds the setting (also how `replproxy log` names it)
FLAG_NAMES = {
    FLAG_FOREIGN_KEYS: "foreign_keys",
    FLAG_RECURSIVE_TRIGGERS: "recursive_triggers",
    FLAG_REVERSE_ORDER: "reverse_unordered_selects",
    FLAG_CASE_SENSITIVE_LIKE: "case_sensitive_like",
    FLAG_IGNORE_CHECK: "ignore_check_constraints",
}


def _pack_params(params: Any, out: bytearray) -> None:
    if params is None:
        out += b"N"
    elif isinstance(params, dict):
        names = list(params)
        out += b"D"
        codec.pack_compact_values(names, out)
        codec.pack_compact_values([params[n] for n in names], out)
    else:
        out += b"L"
        codec.pack_compact_values(list(params), out)


def _unpack_params(data: bytes, pos: int) -> tuple[Any, int]:
    tag = data[pos:pos + 1]
    pos += 1
    if tag == b"N":
        return None, pos
    if tag == b"L":
        return codec.unpack_compact_values(data, pos)
    if tag == b"D":
        names, pos = codec.unpack_compact_values(data, pos)
        values, pos = codec.unpack_compact_values(data, pos)
        return dict(zip(names, values, strict=False)), pos
    raise DecodeError(f"unknown parameter tag {tag!r}")


def encode_item_size(item: tuple[Any, ...], text_known: bool) -> int:
    """Bytes a statement record adds to a payload (its text too unless the entry has it)."""
    _kind, sql, flags, params = item
    out = bytearray()
    codec.pack_varint(0, out)
    codec.pack_varint(flags, out)
    _pack_params(params, out)
    return len(out) + (0 if text_known else len(sql.encode("utf-8")) + 2)


def encode(items: Sequence[tuple[Any, ...]]) -> bytes:
    """The payload of statement records and row payloads, in order; each SQL text stored once."""
    texts: dict[str, int] = {}
    chunks: list[tuple[bytes, bytes]] = []
    run = bytearray()
    for item in items:
        if item[0] == "stmt":
            _kind, sql, flags, params = item
            index = texts.setdefault(sql, len(texts))
            codec.pack_varint(index, run)
            codec.pack_varint(flags, run)
            _pack_params(params, run)
        else:
            if run:
                chunks.append((TAG_STATEMENTS, bytes(run)))
                run = bytearray()
            chunks.append((TAG_ROWS, item[1]))
    if run:
        chunks.append((TAG_STATEMENTS, bytes(run)))
    if texts:
        table = bytearray()
        codec.pack_compact_values(list(texts), table)
        chunks.insert(0, (TAG_TEXTS, bytes(table)))
    return codec.pack_chunks(chunks)


_CHUNK_LENGTH = struct.Struct("<I")


def iter_payload(payload: bytes) -> Iterator[tuple[str, Any]]:
    """("stmt", (sql, flags, params)) and ("rows", row payload) items of a payload, in order."""
    return iter(payload_items(payload))


def payload_items(payload: bytes) -> list[tuple[str, Any]]:
    """The items of a payload as a list (the chunk framing of codec.iter_chunks, parsed inline:
    this runs for every entry a follower applies)."""
    if not payload or payload[0] != codec.PAYLOAD_VERSION:
        raise DecodeError(f"unknown payload version {payload[:1]!r}")
    texts: list[Any] = []
    out: list[tuple[str, Any]] = []
    pos, end = 1, len(payload)
    unpack_varint = codec.unpack_varint
    while pos < end:
        if pos + 5 > end:
            raise DecodeError("truncated chunk header")
        tag = payload[pos:pos + 1]
        (length,) = _CHUNK_LENGTH.unpack_from(payload, pos + 1)
        pos += 5
        stop = pos + length
        if stop > end:
            raise DecodeError("truncated chunk")
        data = payload[pos:stop]
        pos = stop
        if tag == TAG_TEXTS:
            texts, _ = codec.unpack_compact_values(data)
        elif tag == TAG_STATEMENTS:
            at = 0
            size = len(data)
            try:
                while at < size:
                    index, at = unpack_varint(data, at)
                    flags, at = unpack_varint(data, at)
                    params, at = _unpack_params(data, at)
                    out.append(("stmt", (texts[index], flags, params)))
            except IndexError:
                raise DecodeError("statement refers to an unknown SQL text") from None
            if at != size:
                raise DecodeError("truncated statement record")
        elif tag == TAG_ROWS:
            out.append(("rows", data))
        else:
            raise DecodeError(f"unknown chunk tag {tag!r}")
    return out
