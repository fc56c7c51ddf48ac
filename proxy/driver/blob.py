"""`Connection.blobopen()`: incremental reads of a BLOB, as sqlite3.Blob, read-only.

A blob handle holds a read transaction on the connection it was opened on, so it gets a
connection of its own to the node that routing chose (a follower when the session's consistency
level allows it, else the leader): the session's leader connection never holds an old snapshot
(its next write would fail with "database is locked"). Writing through a blob handle is refused:
incremental blob writes reach neither the session extension nor triggers, so no log format would
capture them.
"""

from __future__ import annotations

import os
from typing import Any

import apsw

from ..errors import NotSupportedError, ProgrammingError, translate

WRITE_REFUSED = (
    "blobs are opened read-only (blobopen(..., readonly=True)): incremental blob writes reach neither "
    "the session extension nor triggers, so no log format would replicate them; UPDATE the column instead")


class Blob:
    """A read-only sqlite3.Blob: read, seek, tell, len(), indexing and slicing, close, `with`.
    `node` names the node it reads."""

    def __init__(self, conn: apsw.Connection, blob: apsw.Blob, node: str):
        self._conn = conn
        self._blob: apsw.Blob | None = blob
        self.node = node

    def _open(self) -> apsw.Blob:
        if self._blob is None:
            raise ProgrammingError("Cannot operate on a closed blob.")
        return self._blob

    def close(self) -> None:
        blob, self._blob = self._blob, None
        if blob is not None:
            try:
                blob.close()
            finally:
                self._conn.close()

    def read(self, length: int = -1) -> bytes:
        """Up to `length` bytes from the current position (all that is left when negative)."""
        blob = self._open()
        try:
            return bytes(blob.read(length))
        except apsw.Error as exc:
            raise translate(exc) from exc

    def write(self, data: Any) -> None:
        self._open()
        raise NotSupportedError(WRITE_REFUSED)

    def tell(self) -> int:
        return int(self._open().tell())

    def seek(self, offset: int, origin: int = os.SEEK_SET) -> None:
        blob = self._open()
        if origin == os.SEEK_SET:
            base = 0
        elif origin == os.SEEK_CUR:
            base = blob.tell()
        elif origin == os.SEEK_END:
            base = blob.length()
        else:
            raise ValueError("'origin' should be os.SEEK_SET, os.SEEK_CUR, or os.SEEK_END")
        where = base + offset
        if not 0 <= where <= blob.length():
            raise ValueError("offset out of blob range")
        blob.seek(where)

    def __len__(self) -> int:
        return int(self._open().length())

    def _span(self, start: int = 0, length: int = -1) -> bytes:
        """Bytes read at `start`, leaving the position where it was."""
        blob = self._open()
        here = blob.tell()
        try:
            blob.seek(start)
            return bytes(blob.read(length))
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            blob.seek(here)

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            return self._span()[key]
        if not isinstance(key, int):
            raise TypeError("Blob indices must be integers")
        size = len(self)
        index = key + size if key < 0 else key
        if not 0 <= index < size:
            raise IndexError("Blob index out of range")
        return self._span(index, 1)[0]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._open()
        raise NotSupportedError(WRITE_REFUSED)

    def __enter__(self) -> Blob:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_blob", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - at collection nothing can be reported
                pass
