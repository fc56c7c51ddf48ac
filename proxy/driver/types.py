"""PEP 249 type objects and constructors.

SQLite types values, not columns; a column only has a declared type and an affinity derived from
it (https://sqlite.org/datatype3.html). `cursor.description` carries the declared type as its
type_code (None for expressions), and each type object compares equal to the declared types whose
affinity it stands for: `STRING == "VARCHAR(20)"`.
"""

from __future__ import annotations

import datetime
import time
from typing import Any


def affinity(declared: str | None) -> str | None:
    """SQLite's affinity for a declared column type."""
    if declared is None:
        return None
    upper = declared.upper()
    if "INT" in upper:
        return "INTEGER"
    if "CHAR" in upper or "CLOB" in upper or "TEXT" in upper:
        return "TEXT"
    if not upper or "BLOB" in upper:
        return "BLOB"
    if "REAL" in upper or "FLOA" in upper or "DOUB" in upper:
        return "REAL"
    return "NUMERIC"


class DBAPITypeObject:
    """Compares equal to declared column types of the given affinities (or exact names)."""

    def __init__(self, name: str, affinities: tuple[str, ...] = (), words: tuple[str, ...] = ()):
        self.name = name
        self.affinities = affinities
        self.words = words

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return other is self
        if not isinstance(other, str):
            return NotImplemented
        upper = other.upper()
        if self.words:
            return any(word in upper for word in self.words)
        return affinity(other) in self.affinities

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<DBAPITypeObject {self.name}>"


STRING = DBAPITypeObject("STRING", ("TEXT",))
BINARY = DBAPITypeObject("BINARY", ("BLOB",))
NUMBER = DBAPITypeObject("NUMBER", ("INTEGER", "REAL", "NUMERIC"))
DATETIME = DBAPITypeObject("DATETIME", words=("DATE", "TIME"))
ROWID = DBAPITypeObject("ROWID", words=("ROWID",))


def Date(year: int, month: int, day: int) -> datetime.date:  # noqa: N802 - PEP 249 names
    return datetime.date(year, month, day)


def Time(hour: int, minute: int, second: int) -> datetime.time:  # noqa: N802
    return datetime.time(hour, minute, second)


def Timestamp(year: int, month: int, day: int, hour: int, minute: int, second: int  # noqa: N802
              ) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, second)


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802
    return Timestamp(*time.localtime(ticks)[:6])


def Binary(data: Any) -> bytes:  # noqa: N802
    return bytes(data)


_NATIVE = (int, float, str, bytes, type(None))
_NATIVE_SET = frozenset(_NATIVE)


def adapt(value: Any) -> Any:
    """A value SQLite can store: dates and times as ISO 8601 text (what SQLite's date functions
    read, and what Python's sqlite3 stored by default), buffers as BLOBs, booleans as integers."""
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def adapt_params(params: Any) -> Any:
    """Parameters with every value SQLite cannot bind as is adapted; unchanged when all are native."""
    values = params.values() if isinstance(params, dict) else params
    for value in values:
        if type(value) not in _NATIVE_SET:
            break
    else:
        return params
    if isinstance(params, dict):
        return {k: adapt(v) for k, v in params.items()}
    return [adapt(v) for v in params]
