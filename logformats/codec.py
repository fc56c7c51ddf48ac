"""Compact binary framing shared by the formats: tagged chunks and SQLite values.

A payload is a version byte followed by chunks, each `tag (1 byte) | length (u32 LE) | data`.
Values are `type (1 byte) | data` with SQLite's five storage classes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

from .base import DecodeError

PAYLOAD_VERSION = 1

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")

_NULL, _INT, _FLOAT, _TEXT, _BLOB, _BIGINT = range(6)


def pack_chunks(chunks: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Frame `(tag, data)` pairs into one payload."""
    parts = [bytes([PAYLOAD_VERSION])]
    for tag, data in chunks:
        parts.append(tag)
        parts.append(_U32.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def iter_chunks(payload: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield `(tag, data)` pairs; raise DecodeError on a torn or foreign payload."""
    view = memoryview(payload)
    if not payload or payload[0] != PAYLOAD_VERSION:
        raise DecodeError(f"unknown payload version {payload[:1]!r}")
    pos, end = 1, len(payload)
    while pos < end:
        if pos + 5 > end:
            raise DecodeError("truncated chunk header")
        tag = bytes(view[pos : pos + 1])
        (length,) = _U32.unpack_from(view, pos + 1)
        pos += 5
        if pos + length > end:
            raise DecodeError("truncated chunk")
        yield tag, bytes(view[pos : pos + length])
        pos += length


def _pack_value(value: Any, out: list[bytes]) -> None:
    if value is None:
        out.append(b"\x00")
    elif isinstance(value, bool) or isinstance(value, int):
        value = int(value)
        if -(2**63) <= value < 2**63:
            out.append(b"\x01" + _I64.pack(value))
        else:  # SQLite refuses these anyway; keep them lossless in the log
            text = str(value).encode()
            out.append(b"\x05" + _U32.pack(len(text)) + text)
    elif isinstance(value, float):
        out.append(b"\x02" + _F64.pack(value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out.append(b"\x03" + _U32.pack(len(data)) + data)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(b"\x04" + _U32.pack(len(data)) + data)
    else:
        raise TypeError(f"cannot encode a value of type {type(value).__name__}")


def pack_values(values: Sequence[Any]) -> bytes:
    """Encode a sequence of SQLite values."""
    out: list[bytes] = [_U32.pack(len(values))]
    for value in values:
        _pack_value(value, out)
    return b"".join(out)


def _unpack_value(data: bytes, pos: int) -> tuple[Any, int]:
    kind = data[pos]
    pos += 1
    if kind == _NULL:
        return None, pos
    if kind == _INT:
        return _I64.unpack_from(data, pos)[0], pos + 8
    if kind == _FLOAT:
        return _F64.unpack_from(data, pos)[0], pos + 8
    if kind in (_TEXT, _BLOB, _BIGINT):
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        raw = data[pos : pos + length]
        if len(raw) != length:
            raise DecodeError("truncated value")
        pos += length
        if kind == _TEXT:
            return raw.decode("utf-8", "surrogatepass"), pos
        if kind == _BIGINT:
            return int(raw), pos
        return bytes(raw), pos
    raise DecodeError(f"unknown value type {kind}")


def unpack_values(data: bytes, pos: int = 0) -> tuple[list[Any], int]:
    """Decode what `pack_values` wrote; return the values and the position after them."""
    try:
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        values = []
        for _ in range(count):
            value, pos = _unpack_value(data, pos)
            values.append(value)
        return values, pos
    except (struct.error, IndexError) as exc:
        raise DecodeError(f"truncated values: {exc}") from None


def pack_params(params: Any) -> bytes:
    """Encode statement parameters: a sequence (qmark) or a mapping (named)."""
    if params is None:
        return b"N"
    if isinstance(params, dict):
        names = list(params)
        return b"D" + pack_values(names) + pack_values([params[n] for n in names])
    return b"L" + pack_values(list(params))


def unpack_params(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode what `pack_params` wrote."""
    if pos >= len(data):
        raise DecodeError("missing parameters")
    tag = data[pos : pos + 1]
    pos += 1
    if tag == b"N":
        return None, pos
    if tag == b"L":
        return unpack_values(data, pos)
    if tag == b"D":
        names, pos = unpack_values(data, pos)
        values, pos = unpack_values(data, pos)
        return dict(zip(names, values, strict=False)), pos
    raise DecodeError(f"unknown parameter tag {tag!r}")


def pack_sql(sql: str, params: Any = None) -> bytes:
    """Encode one SQL statement with its bound parameters."""
    text = sql.encode("utf-8")
    return _U32.pack(len(text)) + text + pack_params(params)


def unpack_sql(data: bytes, pos: int = 0) -> tuple[str, Any, int]:
    """Decode what `pack_sql` wrote: SQL text, parameters, next position."""
    try:
        (length,) = _U32.unpack_from(data, pos)
    except struct.error:
        raise DecodeError("truncated SQL") from None
    pos += 4
    raw = data[pos : pos + length]
    if len(raw) != length:
        raise DecodeError("truncated SQL")
    params, pos = unpack_params(data, pos + length)
    return raw.decode("utf-8"), params, pos


# -- compact encoding (statement records): varints instead of fixed-width integers and lengths ----

_C_NULL, _C_INT, _C_FLOAT, _C_TEXT, _C_BLOB, _C_BIGINT = range(6)


def pack_varint(value: int, out: bytearray) -> None:
    """Append an unsigned LEB128 integer."""
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def unpack_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read an unsigned LEB128 integer; return it and the position after it."""
    if pos < len(data) and data[pos] < 0x80:
        return data[pos], pos + 1
    result = shift = 0
    try:
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift > 70:
                raise DecodeError("varint too long")
    except IndexError:
        raise DecodeError("truncated varint") from None


def _pack_compact(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(_C_NULL)
    elif isinstance(value, (bool, int)):
        value = int(value)
        if -(2**63) <= value < 2**63:
            out.append(_C_INT)
            pack_varint((value << 1) ^ (value >> 63), out)  # zigzag: small negatives stay short
        else:
            text = str(value).encode()
            out.append(_C_BIGINT)
            pack_varint(len(text), out)
            out += text
    elif isinstance(value, float):
        out.append(_C_FLOAT)
        out += _F64.pack(value)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out.append(_C_TEXT)
        pack_varint(len(data), out)
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(_C_BLOB)
        pack_varint(len(data), out)
        out += data
    elif type(value).__name__ == "zeroblob" and hasattr(value, "length"):
        out.append(_C_BLOB)  # apsw.zeroblob(n): a blob of n zero bytes
        pack_varint(value.length(), out)
        out += bytes(value.length())
    else:
        raise TypeError(f"cannot encode a value of type {type(value).__name__}")


def pack_compact_values(values: Sequence[Any], out: bytearray) -> None:
    """Append a count and SQLite values in the compact encoding."""
    pack_varint(len(values), out)
    for value in values:
        # Fast paths for the common short values (this runs for every logged statement).
        kind = type(value)
        if kind is int and -(2**62) <= value < 2**62:
            zigzag = (value << 1) ^ (value >> 63)
            if zigzag < 0x80:
                out += bytes((_C_INT, zigzag))
                continue
            out.append(_C_INT)
            pack_varint(zigzag, out)
        elif kind is str:
            data = value.encode("utf-8", "surrogatepass")
            if len(data) < 0x80:
                out += bytes((_C_TEXT, len(data)))
                out += data
                continue
            out.append(_C_TEXT)
            pack_varint(len(data), out)
            out += data
        else:
            _pack_compact(value, out)


def unpack_compact_values(data: bytes, pos: int = 0) -> tuple[list[Any], int]:
    """Decode what `pack_compact_values` wrote; return the values and the next position."""
    count, pos = unpack_varint(data, pos)
    values: list[Any] = []
    append = values.append
    size = len(data)
    try:
        for _ in range(count):
            kind = data[pos]
            if kind == _C_INT:
                first = data[pos + 1]
                if first < 0x80:  # most integers of a statement fit one byte
                    append((first >> 1) ^ -(first & 1))
                    pos += 2
                    continue
                raw, pos = unpack_varint(data, pos + 1)
                append((raw >> 1) ^ -(raw & 1))
            elif kind in (_C_TEXT, _C_BLOB, _C_BIGINT):
                length = data[pos + 1]
                if length < 0x80:
                    pos += 2
                else:
                    length, pos = unpack_varint(data, pos + 1)
                end = pos + length
                if end > size:
                    raise DecodeError("truncated value")
                chunk = data[pos:end]
                pos = end
                if kind == _C_TEXT:
                    append(chunk.decode("utf-8", "surrogatepass"))
                elif kind == _C_BLOB:
                    append(bytes(chunk))
                else:
                    append(int(chunk))
            elif kind == _C_NULL:
                append(None)
                pos += 1
            elif kind == _C_FLOAT:
                append(_F64.unpack_from(data, pos + 1)[0])
                pos += 9
            else:
                raise DecodeError(f"unknown value type {kind}")
    except (IndexError, struct.error):
        raise DecodeError("truncated values") from None
    return values, pos
