"""What a fetch hands out, as Python's sqlite3 shapes it: `row_factory` and `text_factory`.

`Row` is sqlite3.Row for replproxy's cursors (and the remote ones): `sqlite3.Row(cursor, row)`
accepts only a sqlite3.Cursor, so a `row_factory` set to `sqlite3.Row` is answered by `Row`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any, SupportsIndex, overload


class Row:
    """A result row like sqlite3.Row: by index, by column name (case-insensitive), `keys()`,
    equal to a Row with the same description and values, hashable."""

    __slots__ = ("_description", "_data")

    def __init__(self, cursor: Any, data: tuple[Any, ...]):
        if not isinstance(data, tuple):
            raise TypeError(f"Row() argument 2 must be tuple, not {type(data).__name__}")
        self._description = getattr(cursor, "description", None) or ()
        self._data = data

    def keys(self) -> list[str]:
        """The column names, in order."""
        return [column[0] for column in self._description]

    @overload
    def __getitem__(self, key: SupportsIndex | str) -> Any: ...

    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            # sqlite3's rule: ASCII letters match without case, nothing else does (bytes.lower()).
            wanted = key.encode("utf-8").lower()
            for index, column in enumerate(self._description):
                if str(column[0]).encode("utf-8").lower() == wanted:
                    return self._data[index]
            raise IndexError("No item with that key")
        return self._data[key]

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._description == other._description and self._data == other._data

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self._description) ^ hash(self._data)

    def __repr__(self) -> str:
        return f"<proxy.Row {dict(zip(self.keys(), self._data, strict=False))!r}>"


def resolve_row_factory(factory: Any) -> Callable[[Any, tuple[Any, ...]], Any] | None:
    """The callable a fetch applies: `sqlite3.Row` (which needs a sqlite3 cursor) becomes `Row`."""
    if factory is None:
        return None
    sqlite3 = sys.modules.get("sqlite3")  # a factory from sqlite3 means it is already imported
    if sqlite3 is not None and factory is getattr(sqlite3, "Row", None):
        return Row
    return factory  # type: ignore[no-any-return]


def text_converter(factory: Any) -> Callable[[str], Any] | None:
    """What becomes of each TEXT value under `text_factory`; None for `str` (nothing to do)."""
    if factory is str or factory is None:
        return None
    if factory is bytes:
        return _utf8
    if not callable(factory):
        raise TypeError("text_factory must be callable")

    def convert(value: str) -> Any:
        return factory(value.encode("utf-8"))

    return convert


def _utf8(value: str) -> bytes:
    return value.encode("utf-8")


class Shaper:
    """Applies a cursor's row factory and its connection's text factory to fetched rows."""

    __slots__ = ("cursor", "factory", "text")

    def __init__(self, cursor: Any, row_factory: Any, text_factory: Any):
        self.cursor = cursor
        self.factory = resolve_row_factory(row_factory)
        self.text = text_converter(text_factory)

    def __call__(self, row: tuple[Any, ...]) -> Any:
        text = self.text
        if text is not None:
            row = tuple(text(value) if type(value) is str else value for value in row)
        return row if self.factory is None else self.factory(self.cursor, row)


def shaper(cursor: Any, row_factory: Any, text_factory: Any) -> Shaper | None:
    """A Shaper, or None when rows are handed out as they come (the default)."""
    if row_factory is None and (text_factory is str or text_factory is None):
        return None
    return Shaper(cursor, row_factory, text_factory)
