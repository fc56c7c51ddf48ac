"""One exception tree, rooted in the PEP 249 classes.

Errors that come from SQLite keep SQLite's message and its (extended) result code in
`sqlite_errorcode` and `sqlite_errorname`, as Python's sqlite3 module does.
"""

from __future__ import annotations

from typing import Any

import apsw


class Warning(Exception):  # noqa: A001 - the name is fixed by PEP 249
    """Important warnings, such as data truncation (PEP 249)."""


class Error(Exception):
    """Base class of every replproxy error (PEP 249)."""

    sqlite_errorcode: int | None = None
    sqlite_errorname: str | None = None


class InterfaceError(Error):
    """The driver itself was misused, not the database (PEP 249)."""


class DatabaseError(Error):
    """An error in the database (PEP 249)."""


class DataError(DatabaseError):
    """A value could not be processed: out of range, too big (PEP 249)."""


class OperationalError(DatabaseError):
    """The database could not do what was asked: missing table, locked file, timeout (PEP 249)."""


class IntegrityError(DatabaseError):
    """A constraint failed: unique, foreign key, not null, check (PEP 249)."""


class InternalError(DatabaseError):
    """The database or the driver reached an inconsistent internal state (PEP 249)."""


class ProgrammingError(DatabaseError):
    """The SQL or its use is wrong: syntax, parameter count, closed object (PEP 249)."""


class NotSupportedError(DatabaseError):
    """The operation is not supported by SQLite or by replication (PEP 249)."""


class ClusterError(OperationalError):
    """A cluster directory, its cluster.toml or one of its node files is missing or damaged."""


class TransportError(ClusterError):
    """NATS (the transport of a distributed cluster) cannot be reached, or refused an operation."""


class LeaseLost(OperationalError):
    """This node is not, or no longer, the leader of its distributed cluster: its lease expired or
    another node holds it. Nothing was written."""


class ReadOnlyNodeError(OperationalError):
    """A write was sent to a follower; only the leader accepts writes."""


class ReplicationError(DatabaseError):
    """A follower could not apply a log entry and stopped there."""

    # Why, for programs: a `store.node.StopKind` value ("apply", "checksum", "behind-retention", ...).
    default_kind = "apply"

    def __init__(self, message: str, *, node: str | None = None, lsn: int | None = None,
                 table: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.node = node
        self.lsn = lsn
        self.table = table
        self.kind = kind or self.default_kind


class ChecksumError(ReplicationError):
    """A log entry's payload does not match its checksum: torn or corrupted."""

    default_kind = "checksum"


class ReplicationTimeout(OperationalError):
    """Followers did not reach the wanted position in time."""


class SyncReplicationTimeout(ReplicationTimeout):
    """A commit is durable on the leader but synchronous followers did not apply it in time."""

    def __init__(self, message: str, *, lsn: int | None = None, nodes: tuple[str, ...] = ()):
        super().__init__(message)
        self.lsn = lsn
        self.nodes = nodes


class UnsafeStatementError(ProgrammingError):
    """The cluster's log format cannot replicate this statement exactly, so it was not run."""


# apsw exception class -> PEP 249 class, following Python's sqlite3 module.
_MAPPING: dict[type[BaseException], type[Error]] = {
    apsw.ConstraintError: IntegrityError,
    apsw.MismatchError: IntegrityError,
    apsw.TooBigError: DataError,
    apsw.RangeError: ProgrammingError,
    apsw.BindingsError: ProgrammingError,
    apsw.SQLError: OperationalError,
    apsw.BusyError: OperationalError,
    apsw.LockedError: OperationalError,
    apsw.ReadOnlyError: OperationalError,
    apsw.CantOpenError: OperationalError,
    apsw.IOError: OperationalError,
    apsw.FullError: OperationalError,
    apsw.InterruptError: OperationalError,
    apsw.ProtocolError: OperationalError,
    apsw.PermissionsError: OperationalError,
    apsw.AbortError: OperationalError,
    apsw.AuthError: DatabaseError,
    apsw.CorruptError: DatabaseError,
    apsw.NotADBError: DatabaseError,
    apsw.SchemaChangeError: OperationalError,
    apsw.InternalError: InternalError,
    apsw.NoMemError: InternalError,
    apsw.MisuseError: InterfaceError,
    apsw.ConnectionClosedError: ProgrammingError,
    apsw.CursorClosedError: ProgrammingError,
    apsw.ExecutionCompleteError: ProgrammingError,
    apsw.ThreadingViolationError: ProgrammingError,
    apsw.IncompleteExecutionError: ProgrammingError,
}


def translate(exc: BaseException, prefix: str | None = None) -> Error:
    """The replproxy error for an apsw (SQLite) error, keeping SQLite's message and code."""
    if isinstance(exc, Error):
        return exc
    cls: type[Error] = DatabaseError
    for klass in type(exc).__mro__:
        if klass in _MAPPING:
            cls = _MAPPING[klass]
            break
    else:
        if isinstance(exc, (TypeError, ValueError, OverflowError)):
            cls = ProgrammingError if isinstance(exc, TypeError) else DataError
    message = str(exc)
    # apsw prefixes messages with its class name ("SQLError: no such table: t"): keep SQLite's words.
    head, sep, rest = message.partition(": ")
    if sep and head.endswith("Error") and " " not in head:
        message = rest
    if prefix:
        message = f"{prefix}: {message}"
    error = cls(message)
    code = getattr(exc, "extendedresult", None) or getattr(exc, "result", None)
    if isinstance(code, int) and code >= 0:
        error.sqlite_errorcode = code
        error.sqlite_errorname = _code_name(code)
    error.__cause__ = exc
    return error


def _code_name(code: int) -> str | None:
    name = apsw.mapping_extended_result_codes.get(code) or apsw.mapping_result_codes.get(code & 0xFF)
    return name if isinstance(name, str) else None


def raise_translated(exc: BaseException, prefix: str | None = None) -> Any:
    """Raise the translated error from inside an `except` block."""
    raise translate(exc, prefix) from exc
