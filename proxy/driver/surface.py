"""Python's sqlite3 connection surface beyond PEP 249, on a replproxy Connection.

What sqlite3 offers on its one connection is offered here for the session: functions and
collations defined on every connection of the session (functions.py), the user's database as SQL,
pages or bytes without replproxy's own objects (copies.py), read-only blobs (blob.py), the trace
callback, the session's total_changes. What cannot be offered raises NotSupportedError saying
why; nothing is silently ignored. docs/dbapi.md, "Python's sqlite3 against replproxy", has the
whole table. The transaction-control attributes (`isolation_level`, `autocommit`) are the
connection's own (connection.py); their rules are here.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import apsw

from ..errors import NotSupportedError, OperationalError, ProgrammingError, translate
from ..store import log as entries_log
from . import copies, functions
from .blob import WRITE_REFUSED, Blob

if TYPE_CHECKING:
    from logformats import StatementInfo

    from ..cluster import Cluster
    from .consistency import Session
    from .leader import LeaderSide
    from .local import LocalState
    from .routing import Router

# sqlite3.LEGACY_TRANSACTION_CONTROL (Python 3.12): `isolation_level` decides transactions.
LEGACY_TRANSACTION_CONTROL = -1
ISOLATION_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")

LOAD_EXTENSION_REFUSED = (
    "loading SQLite extensions is not supported: an extension's functions, collations and virtual "
    "tables would exist on this session's leader connection only, not in the followers' appliers "
    "that replay the log nor on the connections other sessions read through")
AUTHORIZER_REFUSED = (
    "set_authorizer() is not supported: replproxy judges every statement on the leader connection "
    "under an authorizer of its own (what it reads and writes decides where it runs and how it is "
    "logged), and guards its follower connections with another; a second one cannot sit beside them")
PROGRESS_REFUSED = (
    "set_progress_handler() is not supported: on the leader connection the handler would also run "
    "during replproxy's own statements (the log entry appended at every COMMIT), which it could "
    "abort; to stop a long statement call interrupt(), from another thread")
SETLIMIT_REFUSED = (
    "setlimit() is not supported (a negative limit reads it, as getlimit() does): the leader "
    "connection's limits also bound replproxy's own statements (the log entry of a commit, row "
    "images), and a raised limit would let the leader accept statements the followers, which "
    "replay with SQLite's defaults, refuse")
SETCONFIG_REFUSED = (
    "setconfig() is not supported: SQLITE_DBCONFIG options change how SQLite runs statements "
    "(triggers, foreign keys, defensive mode...) on the leader connection alone, while followers "
    "replay with their own; getconfig() reads them")
DESERIALIZE_REFUSED = (
    "deserialize() is not supported: it would replace the leader's database behind the replication "
    "log, and no follower would ever see it. Load data through the connection (executescript() of "
    "a dump, INSERTs), or create a cluster from a database file: replproxy init DIR --from FILE")


def check_isolation_level(level: Any) -> str | None:
    """sqlite3's rule: None, or one of ISOLATION_LEVELS in any case (answered upper-case)."""
    if level is None:
        return None
    if not isinstance(level, str):
        raise TypeError("isolation_level must be str or None")
    if "\0" in level:
        raise ValueError("embedded null character")
    for known in ISOLATION_LEVELS:
        if level.encode("utf-8").upper() == known.encode("ascii"):
            return known
    raise ValueError("isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'")


def check_autocommit(value: Any) -> bool | int:
    """sqlite3 3.12's rule: True, False or LEGACY_TRANSACTION_CONTROL."""
    if value is True or value is False:
        return value
    if type(value) is int and value == LEGACY_TRANSACTION_CONTROL:
        return LEGACY_TRANSACTION_CONTROL
    raise ValueError("autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL")


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what}() argument 'name' must be str, not {type(name).__name__}")
    if name.lower() == "temp":
        raise NotSupportedError(
            f"{what}(name='temp') is not supported: the session's TEMP database is private to its "
            "leader connection, and replproxy reads the leader's file through a connection of its own")
    if name.lower() != "main":
        raise OperationalError(f"unknown database {name}")


def _expanded(conn: apsw.Connection, sql: str, params: Any) -> str:
    """`sql` with its parameters written in, as SQLite expands them (sqlite3's trace text)."""
    found: list[str] = []

    def tracer(cursor: apsw.Cursor, text: str, bindings: Any) -> bool:
        found.append(cursor.expanded_sql)
        return False

    def no_pragma(code: int, *args: Any) -> int:
        # SQLite carries out many PRAGMAs as it prepares them: prepared here, none runs
        return apsw.SQLITE_IGNORE if code == apsw.SQLITE_PRAGMA else apsw.SQLITE_OK

    cursor = conn.cursor()
    cursor.exec_trace = tracer
    previous = conn.authorizer
    conn.authorizer = no_pragma
    try:
        cursor.execute(sql, params)
    except apsw.ExecTraceAbort:
        pass
    except Exception:  # noqa: BLE001 - the statement's own error comes when it runs
        return sql
    finally:
        conn.authorizer = previous
    return found[0] if found and found[0] else sql


def _translated(rows: Iterator[str]) -> Iterator[str]:
    try:
        yield from rows
    except apsw.Error as exc:
        raise translate(exc) from exc


class Sqlite3Surface:
    """The part of a Connection that mirrors sqlite3.Connection beyond PEP 249."""

    # Provided by Connection.
    cluster: Cluster
    session: Session
    consistency: str
    _local: LocalState
    _leader_side: LeaderSide
    _router: Router
    _txn: Any
    _autocommit_mode: bool | int
    _isolation_level: str | None

    def _check_open(self) -> None:
        raise NotImplementedError

    # -- transaction control rules ----------------------------------------------------------

    @property
    def _implicit_begin(self) -> bool:
        """sqlite3's legacy control with an isolation level: DML outside a transaction opens one."""
        mode = self._autocommit_mode
        return mode is not True and mode is not False and self._isolation_level is not None

    # -- counters -----------------------------------------------------------------------------

    @property
    def total_changes(self) -> int:
        """Rows the session's own statements inserted, updated or deleted since it connected."""
        self._check_open()
        return self._local.total_changes

    # -- functions and collations -------------------------------------------------------------

    def create_function(self, name: str, narg: int, func: Callable[..., Any] | None, *,
                        deterministic: bool = False) -> None:
        """A SQL function for this session's statements, wherever they run (None removes it)."""
        target = None if func is None else functions.scalar(func)
        self._define(functions.Definition("function", name, narg, target, deterministic))

    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Any) -> None:
        """An aggregate: `aggregate_class()` per group, with step(*args) and finalize()."""
        target = None if aggregate_class is None else functions.aggregate_factory(aggregate_class)
        self._define(functions.Definition("aggregate", name, n_arg, target))

    def create_window_function(self, name: str, num_params: int, aggregate_class: Any, /) -> None:
        """An aggregate window function: step, inverse, value and finalize."""
        target = None if aggregate_class is None else functions.aggregate_factory(aggregate_class, window=True)
        self._define(functions.Definition("window", name, num_params, target))

    def create_collation(self, name: str, callable: Callable[[str, str], Any] | None, /) -> None:
        """A collation for this session's statements, wherever they run (None removes it)."""
        if callable is not None and not builtins.callable(callable):
            raise TypeError("parameter must be callable")
        target = None if callable is None else functions.collation(callable)
        self._define(functions.Definition("collation", name, 0, target))

    def _define(self, definition: functions.Definition) -> None:
        self._check_open()
        if not isinstance(definition.name, str):
            raise TypeError(f"name must be str, not {type(definition.name).__name__}")
        try:
            self._local.definitions.define(definition, self._leader_side.conn)
        except apsw.Error as exc:
            raise translate(exc) from exc

    # -- tracing ------------------------------------------------------------------------------

    _trace_callback: Callable[[str], object] | None = None

    def set_trace_callback(self, trace_callback: Callable[[str], object] | None, /) -> None:
        """Call `trace_callback(sql)` with each statement the session runs (parameters written
        in, as sqlite3 does), and the BEGIN, COMMIT and ROLLBACK it issues for the application;
        never with replproxy's own statements. None stops it."""
        self._check_open()
        self._trace_callback = trace_callback

    def _trace(self, text: str) -> None:
        callback = self._trace_callback
        if callback is not None:
            try:
                callback(text)
            except Exception:  # noqa: BLE001 - as sqlite3: a failing trace callback is ignored
                pass

    def _trace_statement(self, stmt: StatementInfo, sql: str, params: Any, autocommit: bool = False) -> None:
        """Before the session runs `sql` (cursor.py): trace it, after the BEGIN sqlite3 would issue."""
        if self._trace_callback is None:
            return
        if stmt.kind == "dml" and self._txn is None and not autocommit and self._implicit_begin:
            self._trace(f"BEGIN {self._isolation_level or ''}")
        self._trace(_expanded(self._leader_side.conn, sql, params) if params else sql)

    # -- the user's database out of the leader --------------------------------------------------

    @contextlib.contextmanager
    def _leader_snapshot(self) -> Iterator[apsw.Connection]:
        """A connection of its own to the leader's file, in one read transaction: its committed
        state. The session has then read that position (monotonic reads)."""
        self._leader_side.ensure_up()
        conn = self.cluster.open_node(self._leader_side.name)
        try:
            conn.execute("BEGIN")
            lsn = entries_log.last_lsn(conn)
            yield conn
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            conn.close()
        self.session.read(lsn)

    def iterdump(self, *, filter: str | None = None) -> Iterator[str]:
        """The user's schema and rows as SQL, like sqlite3's iterdump (without replproxy's
        `_replproxy_*` tables and triggers). Inside a transaction, what that transaction sees;
        otherwise the leader's committed state, read in one snapshot."""
        self._check_open()
        if filter is not None and not isinstance(filter, str):
            raise TypeError(f"filter must be str or None, not {type(filter).__name__}")
        return self._dump(filter)

    def _dump(self, filter: str | None) -> Iterator[str]:
        txn = self._txn
        if txn is not None and txn.node is not None:
            yield from _translated(copies.iterdump(self._router.connection_for(txn.node), filter))
            return
        with self._leader_snapshot() as conn:
            yield from _translated(copies.iterdump(conn, filter))

    def _private_copy(self, path: str) -> None:
        with self._leader_snapshot() as source:
            copies.copy_user_data(source, path)

    def backup(self, target: Any, *, pages: int = -1, progress: Callable[[int, int, int], object] | None = None,
               name: str = "main", sleep: float = 0.250) -> None:
        """Copy the user's database (the leader's committed state, without replproxy's internal
        tables and triggers) into `target`, a sqlite3 or apsw connection, like sqlite3's backup()."""
        self._check_open()
        if target is self:
            raise ValueError("target cannot be the same connection instance")
        if hasattr(target, "session_token"):
            raise NotSupportedError(
                "backup() into a replproxy connection is not supported: a backup writes pages into the "
                "file directly, behind the replication log. Load a dump through it instead: "
                "target.executescript('\\n'.join(source.iterdump()))")
        if progress is not None and not callable(progress):
            raise TypeError("progress argument must be a callable")
        if not isinstance(pages, int):
            raise TypeError("pages must be an int")
        _check_name(name, "backup")
        path = copies.target_file(target)
        nodes = {os.path.realpath(self.cluster.path_of(node.name)) for node in self.cluster.config.nodes}
        if path is not None and path in nodes:
            raise ProgrammingError(f"the backup target {path} is a node file of this cluster")
        with copies.private_file() as copy:
            self._private_copy(copy)
            try:
                copies.backup(copy, target, pages=pages, progress=progress, sleep=sleep)
            except apsw.Error as exc:
                raise translate(exc) from exc

    def serialize(self, *, name: str = "main") -> bytes:
        """The user's database as bytes (what backup() would write into a file)."""
        self._check_open()
        _check_name(name, "serialize")
        with copies.private_file() as copy:
            self._private_copy(copy)
            try:
                return copies.serialize(copy)
            except apsw.Error as exc:
                raise translate(exc) from exc

    def deserialize(self, data: Any, /, *, name: str = "main") -> None:
        raise NotSupportedError(DESERIALIZE_REFUSED)

    def blobopen(self, table: str, column: str, row: int, /, *, readonly: bool = False,
                 name: str = "main") -> Blob:
        """A read-only handle on one BLOB, read on a connection of its own to the node a read at
        the connection's consistency level goes to (committed data, outside any transaction)."""
        self._check_open()
        if not readonly:
            raise NotSupportedError(WRITE_REFUSED)
        _check_name(name, "blobopen")
        sql = f'SELECT "{column.replace(chr(34), chr(34) * 2)}" FROM main."{table.replace(chr(34), chr(34) * 2)}"'
        router = self._router
        node = router.target(self._leader_side.analyze(sql + " WHERE rowid = ?"), self.consistency)
        conn = self.cluster.open_node(node)
        try:
            conn.execute("PRAGMA query_only=1")
            conn.execute("BEGIN")
            router.observed(node, conn)
            handle = conn.blob_open("main", table, column, row, False)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, apsw.Error):
                raise translate(exc) from exc
            raise
        return Blob(conn, handle, node)

    # -- what replproxy does not offer ----------------------------------------------------------

    def enable_load_extension(self, enabled: bool, /) -> None:
        """Refused when enabling (NotSupportedError); disabling changes nothing: it is off."""
        self._check_open()
        if enabled:
            raise NotSupportedError(LOAD_EXTENSION_REFUSED)

    def load_extension(self, name: str, /, *, entrypoint: str | None = None) -> None:
        raise NotSupportedError(LOAD_EXTENSION_REFUSED)

    def set_authorizer(self, authorizer_callback: Any, /) -> None:
        """Refused (NotSupportedError) but for None: no authorizer of the application is set."""
        self._check_open()
        if authorizer_callback is not None:
            raise NotSupportedError(AUTHORIZER_REFUSED)

    def set_progress_handler(self, progress_handler: Any, /, n: int = 100) -> None:
        """Refused (NotSupportedError) but for None: no progress handler is set."""
        self._check_open()
        if progress_handler is not None:
            raise NotSupportedError(PROGRESS_REFUSED)

    def getlimit(self, category: int, /) -> int:
        """A run-time limit of the leader connection (followers' connections have SQLite's defaults)."""
        self._check_open()
        value = self._leader_side.conn.limit(category)
        if value < 0:
            raise ProgrammingError("'category' is out of bounds")
        return int(value)

    def setlimit(self, category: int, limit: int, /) -> int:
        """With a negative `limit`, the limit (unchanged); otherwise NotSupportedError."""
        if limit < 0:
            return self.getlimit(category)
        self._check_open()
        raise NotSupportedError(SETLIMIT_REFUSED)

    def getconfig(self, op: int, /) -> bool:
        """A SQLITE_DBCONFIG_* option of the leader connection."""
        self._check_open()
        try:
            return bool(self._leader_side.conn.config(op, -1))
        except apsw.Error as exc:
            raise translate(exc) from exc

    def setconfig(self, op: int, enable: bool = True, /) -> bool:
        self._check_open()
        raise NotSupportedError(SETCONFIG_REFUSED)
