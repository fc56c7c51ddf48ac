"""The interface every log format implements, and the value types it shares with the proxy.

A log format is a pair: a *capture* that runs on the leader inside the write transaction and turns
what the transaction did into a payload, and an *apply* that replays a payload on a follower inside
the follower's own transaction. A decoder turns a payload into events for humans (`replproxy log`).
Formats work on plain apsw connections and know nothing about clusters, nodes or routing.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import apsw

# Tables whose name starts with this prefix belong to replproxy: never captured, never compared.
INTERNAL_PREFIX = "_replproxy_"


def is_internal_table(name: str) -> bool:
    """True for replproxy's own tables and SQLite's bookkeeping tables."""
    lowered = name.lower()
    return lowered.startswith(INTERNAL_PREFIX) or lowered.startswith("sqlite_")


@dataclass(frozen=True)
class StatementInfo:
    """What SQLite says one statement does, found by preparing it (never by pattern matching)."""

    sql: str
    readonly: bool
    # "read", "dml", "ddl", "pragma", "transaction", "savepoint", "attach", "vacuum", "other"
    kind: str
    # For transaction/savepoint statements: "BEGIN", "COMMIT", "ROLLBACK", "RELEASE".
    operation: str | None = None
    savepoint: str | None = None
    pragma: str | None = None
    pragma_value: str | None = None
    tables_written: frozenset[str] = frozenset()
    tables_read: frozenset[str] = frozenset()
    tables_created: tuple[str, ...] = ()
    functions: frozenset[str] = frozenset()
    uses_temp: bool = False
    is_insert: bool = False
    param_count: int = 0
    param_names: tuple[str | None, ...] = ()
    # False when the statement has no result columns (no SELECT, RETURNING or PRAGMA result):
    # a property of its text, so it cannot change with the schema.
    returns_rows: bool = True
    # TEMP triggers on tables of the main database that this statement fires (lowercase): SQLite
    # fires them before the main schema's triggers.
    temp_triggers_on_main: frozenset[str] = frozenset()

    @functools.cached_property
    def leader_only(self) -> bool:
        """Runs on the leader only, never on a follower: it uses TEMP objects (a TEMP table or
        view that shadows a table of the same name included), is not a plain read, or reads
        replproxy's own tables (which live in the leader's file)."""
        return self.uses_temp or self.kind != "read" or any(
            table.lower().startswith(INTERNAL_PREFIX) for table in self.tables_read)

    @property
    def writes(self) -> bool:
        """True when the statement changes the database file."""
        return self.kind in ("dml", "ddl", "vacuum") or self.replicated_pragma

    @property
    def replicated_pragma(self) -> bool:
        """PRAGMAs that change database content that followers must share."""
        return (
            self.kind == "pragma"
            and self.pragma_value is not None
            and (self.pragma or "").lower() in REPLICATED_PRAGMAS
        )


# PRAGMAs stored in the database header that a follower must match; every other PRAGMA is local
# to a connection or a file (journal_mode, foreign_keys, cache_size...) and is not replicated.
REPLICATED_PRAGMAS = frozenset({"user_version", "application_id"})


@dataclass(frozen=True)
class Event:
    """One decoded change, for humans and for change-data-capture consumers."""

    kind: str  # "INSERT", "UPDATE", "DELETE", "SQL", "SEQUENCE"
    table: str | None = None
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    sql: str | None = None
    params: Sequence[Any] | dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("table", "old", "new", "sql", "params"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class ApplyError(Exception):
    """A payload could not be applied on a follower; nothing of it was kept."""

    def __init__(self, message: str, table: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.table = table
        self.reason = reason


class DecodeError(ApplyError):
    """A payload is not valid for its format (torn, truncated or from another version)."""


class CaptureError(Exception):
    """The leader's transaction cannot be captured exactly; it must not be committed."""


class UnsafeStatementError(Exception):
    """The format cannot replicate this statement exactly, so it refuses to run it."""


class NotInvertibleError(Exception):
    """A log entry cannot be undone exactly: its payload lacks what the inverse needs (the rows as
    they were before), or it changed something other than rows (the schema, a header PRAGMA)."""

    def __init__(self, message: str, format: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.format = format
        self.reason = reason


def not_invertible(format_name: str, reason: str) -> NotInvertibleError:
    """The error for an entry of `format_name` that cannot be undone, `reason` saying why."""
    return NotInvertibleError(f"{format_name} entries cannot be undone: {reason}",
                              format=format_name, reason=reason)


def sql_excerpt(sql: str, limit: int = 80) -> str:
    """A statement's text on one line, shortened for an error message."""
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Describes columns of a table by position, for decoders: table name -> column names.
SchemaLookup = Callable[[str], "Sequence[str] | None"]

# Appends one log entry holding `payload` inside the caller's transaction on `conn`; returns its LSN.
OutsideLog = Callable[[apsw.Connection, bytes], int]


def pop_savepoint(marks: list[Any], name: str, keep: bool) -> Any:
    """Savepoint bookkeeping shared by the captures: `marks` holds (name, position...) tuples,
    innermost last. Drop the marks above the innermost one named `name` (and that one too unless
    `keep`, as ROLLBACK TO keeps its savepoint open); return that mark, or None."""
    name = name.lower()
    for index in range(len(marks) - 1, -1, -1):
        if marks[index][0] == name:
            mark = marks[index]
            del marks[index + (1 if keep else 0):]
            return mark
    return None


def prepare_only(conn: apsw.Connection, sql: str, params: Any, authorizer: Callable[..., int]) -> bool:
    """Prepare `sql` with `authorizer` and stop before it runs; False if it cannot be prepared."""
    previous = conn.authorizer
    conn.authorizer = authorizer
    cursor = conn.cursor()
    cursor.exec_trace = lambda *_args: False  # prepared, never run
    try:
        cursor.execute(sql, params, can_cache=False)
    except apsw.ExecTraceAbort:
        pass
    except apsw.Error:
        return False  # it will fail again when run, and report it
    finally:
        conn.authorizer = previous
        cursor.exec_trace = None
    return True


def altered_tables(conn: apsw.Connection, sql: str, params: Any) -> list[str]:
    """The main tables an ALTER TABLE statement changes, as SQLite's authorizer reports them
    when it prepares the statement (nothing if it cannot be prepared)."""
    found: list[str] = []

    def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
        if code == apsw.SQLITE_ALTER_TABLE and arg1 == "main" and isinstance(arg2, str):
            found.append(arg2)
        return apsw.SQLITE_OK

    return found if prepare_only(conn, sql, params, authorizer) else []


class Capture(abc.ABC):
    """Leader side of a format: lives for exactly one write transaction on one connection.

    The proxy calls `prepare` and `executed` around each write statement, the savepoint hooks
    as the transaction nests, and `finish` just before COMMIT. The payload that `finish` returns is
    appended to the log in the same SQLite transaction as the change.
    """

    def __init__(self, conn: apsw.Connection, options: dict[str, Any]):
        self.conn = conn
        self.options = options

    def prepare(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        """Called before a write statement runs; may rewrite it (statement format)."""
        return sql, params

    def executed(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        """Called after a write statement ran successfully."""

    def savepoint(self, name: str) -> None:
        """A SAVEPOINT was opened inside the transaction."""

    def release(self, name: str) -> None:
        """A SAVEPOINT was released (its changes stay)."""

    def rollback_to(self, name: str) -> None:
        """ROLLBACK TO undid everything since the SAVEPOINT."""

    @abc.abstractmethod
    def finish(self) -> bytes | None:
        """The payload of the transaction, or None when it changed nothing."""

    def close(self) -> None:
        """Release resources; called after commit or rollback."""


@dataclass
class LogFormat(abc.ABC):
    """A named log format: capture on the leader, apply on followers, decode for humans."""

    name: str = field(default="", init=False)
    options: dict[str, Any] = field(default_factory=dict)

    # Capabilities the proxy reads (ClassVar: not dataclass fields; formats override them).
    # Followers replay entries with their own triggers firing (True) or disabled (False).
    follower_triggers: ClassVar[bool] = False
    # The format also logs what programs bypassing the proxy commit to the leader file.
    captures_outside_writers: ClassVar[bool] = False

    @abc.abstractmethod
    def capture(self, conn: apsw.Connection) -> Capture:
        """Start capturing one write transaction on the leader connection `conn`."""

    @abc.abstractmethod
    def apply(self, conn: apsw.Connection, payload: bytes) -> None:
        """Replay `payload` on a follower; the caller holds the transaction and disables triggers."""

    def apply_many(self, conn: apsw.Connection, payloads: Sequence[bytes]) -> None:
        """Replay consecutive payloads; formats may merge them as long as the end state is the
        same as applying each in order. The caller finds the failing entry with `apply` on error."""
        for payload in payloads:
            self.apply(conn, payload)

    @abc.abstractmethod
    def decode(self, payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
        """Turn a payload into events for humans."""

    def check_statement(self, stmt: StatementInfo) -> None:
        """Raise UnsafeStatementError for statements this format cannot replicate exactly. Called
        before the write lock is taken with a verdict that may predate another connection's
        schema change (so only on what the statement's text decides), and again under the lock
        when the verdict changed; what depends on the schema belongs in the capture."""

    def install(self, conn: apsw.Connection) -> None:
        """Prepare a leader database for this format (capture tables, triggers)."""

    # Writers outside the proxy. The defaults are those of a format that does not see them
    # (captures_outside_writers = False): there is never anything to log, so binding an appender
    # does nothing, nothing is pending and logging adds no entry. That is what such a format can
    # truthfully say, and it lets a caller use the three without checking the capability first
    # (rather than raising, which would turn a forgotten check into a failure of the replicator).

    def bind_outside_log(self, append: OutsideLog | None) -> None:
        """Give the format `append(conn, payload) -> lsn`, which adds one log entry inside the
        caller's transaction, for logging changes committed outside the proxy as entries of their
        own (None unbinds it). The default ignores it: this format never logs such changes."""

    def outside_pending(self, conn: apsw.Connection) -> bool:
        """Whether the leader `conn` holds changes committed outside the proxy that this format
        has not logged yet (a read; call it outside a transaction). The default is False: a format
        that does not capture outside writers has nothing it could log."""
        return False

    def log_outside(self, conn: apsw.Connection) -> int:
        """Inside a write transaction on the leader `conn`: log what was committed outside the
        proxy through the bound appender; return the number of entries added. The default adds
        none and returns 0, consistent with `outside_pending` being always False."""
        return 0

    # Why the default `invert` refuses; formats that cannot undo their entries say why here.
    not_invertible_reason = "this format does not implement undoing its entries"

    def invert(self, payload: bytes) -> bytes:
        """A payload of this format that undoes `payload`.

        Applied with `apply` (as a follower applies: inside a transaction, triggers disabled) to a
        database in the state `payload` left it in, it puts every user table back as it was before
        the entry: values, storage classes and the rowids that identify rows. Undoing entries n,
        n-1, ..., k+1 in that order gives the state at k. AUTOINCREMENT counters are never moved
        back (keys handed out by an undone transaction are never handed out again); putting back
        a row whose key is above its counter raises the counter, as any insert does. An inverse
        applied to a database in another state fails in `apply` with ApplyError, as any
        conflicting entry does.
        Raise NotInvertibleError when the entry cannot be undone exactly (schema changes, entries
        without before images)."""
        raise not_invertible(self.name, self.not_invertible_reason)
