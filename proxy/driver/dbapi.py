"""What every replproxy DB-API connection and cursor shares, local or over NATS: PEP 249's
exception classes as attributes, the read-consistency settings, sqlite3's shortcuts and context
managers, and cursor iteration."""

from __future__ import annotations

from typing import Any

from ..errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from .consistency import check_level, check_policy


class DBAPIConnection:
    """A base for connections; subclasses give cursor(), commit(), rollback(), closed and
    _check_open(), and set `_consistency` and `_on_stale`."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    _consistency: str
    _on_stale: str

    @property
    def consistency(self) -> str:
        """The read consistency level of this connection (cursors may override it)."""
        return self._consistency

    @consistency.setter
    def consistency(self, level: str) -> None:
        self._consistency = check_level(level)

    @property
    def on_stale(self) -> str:
        """What a read does when no follower qualifies: "wait", "leader" or "error"."""
        return self._on_stale

    @on_stale.setter
    def on_stale(self, policy: str) -> None:
        self._on_stale = check_policy(policy)

    # -- the session's positions (`session`, a consistency.Session, set by the subclass)

    def _settle(self) -> None:
        """Bring the session's positions up to date before they are read (nothing to do unless
        reads in flight can still raise them)."""

    @property
    def session_token(self) -> str:
        """An opaque string holding what this session has written and read; pass it to
        `connect(..., session_token=...)` to continue the session elsewhere."""
        self._settle()
        return self.session.token()  # type: ignore[attr-defined]

    @property
    def last_write_lsn(self) -> int:
        """LSN of the last write this session committed (0 if none)."""
        return self.session.last_write_lsn  # type: ignore[attr-defined]

    @property
    def last_read_lsn(self) -> int:
        """Highest log position this session has read (an upper bound once it has read followers)."""
        self._settle()
        return self.session.last_read_lsn  # type: ignore[attr-defined]

    # sqlite3-style shortcuts
    def execute(self, sql: str, parameters: Any = ()) -> Any:
        return self.cursor().execute(sql, parameters)  # type: ignore[attr-defined]

    def executemany(self, sql: str, seq_of_parameters: Any) -> Any:
        return self.cursor().executemany(sql, seq_of_parameters)  # type: ignore[attr-defined]

    def executescript(self, script: str) -> Any:
        return self.cursor().executescript(script)  # type: ignore[attr-defined]

    def __enter__(self) -> Any:
        self._check_open()  # type: ignore[attr-defined]
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Like sqlite3: commit on success, roll back on error; the connection stays open.
        if self.closed:  # type: ignore[attr-defined]
            return
        if exc_type is None:
            self.commit()  # type: ignore[attr-defined]
        else:
            self.rollback()  # type: ignore[attr-defined]


class DBAPICursor:
    """A base for cursors; subclasses give fetchone(), close() and _check_open()."""

    def setinputsizes(self, sizes: Any) -> None:
        self._check_open()  # type: ignore[attr-defined]

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        self._check_open()  # type: ignore[attr-defined]

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()  # type: ignore[attr-defined]
        if row is None:
            raise StopIteration
        return row

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]

    def _check_result(self) -> None:
        # PEP 249: fetching is an error when the last statement produced no result set.
        if self.description is None:  # type: ignore[attr-defined]
            raise ProgrammingError("no result set to fetch from: execute a statement that returns "
                                   "rows (a SELECT, or a write with RETURNING) first")
