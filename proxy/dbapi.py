"""PEP 249 (DB-API 2.0) driver: the proxy as applications see it.

Writes and write transactions go to the leader, where the cluster's log format captures them and
the log entry is appended in the same SQLite transaction. Reads outside a write transaction go to a
follower that has applied this connection's last write, otherwise to the leader.
Transactions follow Python's sqlite3 module: a DML statement opens a transaction that lasts until
commit() or rollback(); DDL outside a transaction commits by itself; `autocommit=True` commits
every statement.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Iterator, Sequence

import apsw

import logformats
from logformats import StatementInfo

from . import errors, storage
from .analyze import Analyzer
from .cluster import Cluster
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    ReadOnlyNodeError,
    Warning,
    translate,
)

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"  # named (:name) parameters work too

_clusters: dict[str, Cluster] = {}
_clusters_lock = threading.Lock()


def shared_cluster(directory: str | os.PathLike[str]) -> Cluster:
    """The process-wide Cluster for a directory: one background replicator per cluster."""
    key = os.path.realpath(directory)
    with _clusters_lock:
        cluster = _clusters.get(key)
        if cluster is None or cluster._closed:
            cluster = _clusters[key] = Cluster(directory)
        return cluster


def connect(directory: str | os.PathLike[str], *, autocommit: bool = False, node: str | None = None,
            cluster: Cluster | None = None) -> "Connection":
    """Open a DB-API connection to the cluster in `directory`.

    `autocommit`: commit every statement by itself (default False: DML opens a transaction that
    lasts until commit() or rollback(), as in Python's sqlite3).
    `node`: read from this node only; writes are then refused unless it is the leader.
    """
    return Connection(cluster or shared_cluster(directory), autocommit=autocommit, node=node)


class _Transaction:
    __slots__ = ("capture", "explicit", "savepoints", "by_savepoint")

    def __init__(self, capture: logformats.Capture, explicit: bool):
        self.capture = capture
        self.explicit = explicit
        self.savepoints: list[str] = []
        self.by_savepoint = False


class Connection:
    """A PEP 249 connection to a replproxy cluster."""

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

    def __init__(self, cluster: Cluster, *, autocommit: bool = False, node: str | None = None):
        self.cluster = cluster
        self.autocommit = autocommit
        if node is not None:
            cluster.config.node(node)
        self.pinned_node = node
        self._leader = cluster.open_node(cluster.leader)
        self._leader_name = cluster.leader
        self._analyze = Analyzer(self._leader)
        self._format = cluster.format
        self._followers: dict[str, apsw.Connection] = {}
        self._follower_lsn: dict[str, int] = {}
        self._txn: _Transaction | None = None
        self._closed = False
        self.last_write_lsn = 0
        self.last_node: str | None = None

    # -- PEP 249 ------------------------------------------------------------------------------

    def cursor(self) -> "Cursor":
        self._check_open()
        return Cursor(self)

    def commit(self) -> None:
        self._check_open()
        if self._txn is not None:
            self._commit()

    def rollback(self) -> None:
        self._check_open()
        if self._txn is not None:
            self._rollback()

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._txn is not None:
                self._rollback()
        finally:
            self._closed = True
            for conn in self._followers.values():
                conn.close()
            self._followers.clear()
            self._leader.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_transaction(self) -> bool:
        """True while a write transaction is open on the leader."""
        return self._txn is not None

    def __enter__(self) -> "Connection":
        self._check_open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Like sqlite3: commit on success, roll back on error; the connection stays open.
        if self._closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    # sqlite3-style shortcuts
    def execute(self, sql: str, parameters: Any = ()) -> "Cursor":
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> "Cursor":
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, script: str) -> "Cursor":
        return self.cursor().executescript(script)

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed connection.")

    def _check_writable(self, stmt: StatementInfo) -> None:
        if self.pinned_node is not None and self.pinned_node != self._leader_name:
            raise ReadOnlyNodeError(
                f"{self.pinned_node} is a follower and is read-only; writes go to the leader "
                f"({self._leader_name}). Connect without node= to write.")

    def _begin(self, explicit: bool) -> _Transaction:
        try:
            self._leader.execute("BEGIN IMMEDIATE")
        except apsw.Error as exc:
            raise translate(exc) from exc
        try:
            capture = self._format.capture(self._leader)
        except BaseException:
            self._leader.execute("ROLLBACK")
            raise
        self._txn = _Transaction(capture, explicit)
        return self._txn

    def _commit(self) -> None:
        txn = self._txn
        assert txn is not None
        leader = self._leader
        lsn = None
        savepoint = False
        try:
            payload = txn.capture.finish()
            leader.execute("SAVEPOINT replproxy_commit")
            savepoint = True
            if payload is not None:
                lsn = storage.append(leader, epoch=self.cluster.epoch, format=self._format.name,
                                     payload=payload)
            # The savepoint stays open through COMMIT: if COMMIT is refused (deferred foreign keys)
            # the log entry is rolled back to it below while the transaction stays open.
            leader.execute("COMMIT")
        except apsw.Error as exc:
            if leader.get_autocommit():
                self._end_txn()
            elif savepoint:
                # COMMIT refused (deferred foreign keys): the transaction stays open, without the entry.
                leader.execute("ROLLBACK TO replproxy_commit")
                leader.execute("RELEASE replproxy_commit")
            raise translate(exc) from exc
        except logformats.CaptureError as exc:
            self._abort()
            raise IntegrityError(f"{exc} (rolled back)") from exc
        except BaseException:
            self._abort()
            raise
        self._end_txn()
        if lsn is not None:
            self.last_write_lsn = lsn
            self.cluster.notify_commit()

    def _rollback(self) -> None:
        try:
            if not self._leader.get_autocommit():
                self._leader.execute("ROLLBACK")
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self._end_txn()

    def _abort(self) -> None:
        try:
            if not self._leader.get_autocommit():
                self._leader.execute("ROLLBACK")
        finally:
            self._end_txn()

    def _end_txn(self) -> None:
        if self._txn is not None:
            self._txn.capture.close()
            self._txn = None

    def _sync_txn_state(self) -> None:
        # SQLite ends a transaction by itself on some errors (ON CONFLICT ROLLBACK, disk full).
        if self._txn is not None and self._leader.get_autocommit():
            self._end_txn()

    def _follower(self, name: str) -> apsw.Connection:
        conn = self._followers.get(name)
        if conn is None:
            conn = self.cluster.open_node(name)
            conn.execute("PRAGMA query_only=1")
            self._followers[name] = conn
        return conn

    def _follower_applied(self, name: str, needed: int) -> int:
        known = self._follower_lsn.get(name, -1)
        if known >= needed:
            return known  # positions only move forward
        state = storage.read_state(self._follower(name))
        self._follower_lsn[name] = state.applied_lsn
        return state.applied_lsn

    def _read_node(self, stmt: StatementInfo) -> str:
        """Where a read goes: the pinned node, else a follower that has our writes, else the leader."""
        if self.pinned_node is not None:
            return self.pinned_node
        if self._txn is not None or stmt.uses_temp or stmt.kind != "read":
            return self._leader_name
        if any(t.lower().startswith(logformats.INTERNAL_PREFIX) for t in stmt.tables_read):
            return self._leader_name
        needed = self.last_write_lsn
        candidates = self.cluster.followers
        if self.last_node in candidates:
            candidates = [self.last_node] + [n for n in candidates if n != self.last_node]
        for name in candidates:
            try:
                if self._follower_applied(name, needed) >= needed:
                    return name
            except (apsw.Error, errors.ClusterError):
                self._drop_follower(name)
        return self._leader_name

    def _drop_follower(self, name: str) -> None:
        conn = self._followers.pop(name, None)
        self._follower_lsn.pop(name, None)
        if conn is not None:
            conn.close()

    def _connection_for(self, name: str) -> apsw.Connection:
        return self._leader if name == self._leader_name else self._follower(name)


class Cursor:
    """A PEP 249 cursor. `node` names the node that served the last statement."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.node: str | None = None
        self.lsn: int | None = None
        self._rows: Iterator[tuple[Any, ...]] | None = None
        self._closed = False

    # -- PEP 249 ------------------------------------------------------------------------------

    def close(self) -> None:
        self._rows = None
        self._closed = True

    def setinputsizes(self, sizes: Any) -> None:
        self._check_open()

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        self._check_open()

    def execute(self, operation: str, parameters: Any = ()) -> "Cursor":
        self._check_open()
        conn = self.connection
        stmt = conn._analyze(operation)
        self._reset()
        self._run(stmt, operation, _params(parameters))
        return self

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> "Cursor":
        self._check_open()
        conn = self.connection
        stmt = conn._analyze(operation)
        if stmt.kind not in ("dml", "empty"):
            raise ProgrammingError("executemany() can only execute DML statements.")
        self._reset()
        total = 0
        for parameters in seq_of_parameters:
            self._run(stmt, operation, _params(parameters), many=True)
            total += max(self.rowcount, 0)
        self.rowcount = total
        self._rows = None
        self.description = None
        return self

    def executescript(self, script: str) -> "Cursor":
        """Run several statements; a transaction left open by DML is committed first, as sqlite3 does."""
        self._check_open()
        conn = self.connection
        if not isinstance(script, str):
            raise ValueError("script argument must be unicode.")
        if conn._txn is not None and not conn._txn.explicit:
            conn.commit()
        for sql in _split_statements(conn._leader, script):
            self.execute(sql)
            if self._rows is not None:
                for _ in self._rows:
                    pass
        if conn._txn is not None and not conn._txn.explicit and not conn.autocommit:
            conn.commit()
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        self._check_open()
        if self._rows is None:
            return None
        try:
            return next(self._rows)
        except StopIteration:
            self._rows = None
            return None
        except apsw.Error as exc:
            self._rows = None
            raise translate(exc) from exc

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._check_open()
        count = self.arraysize if size is None else size
        rows = []
        for _ in range(max(count, 0)):
            row = self.fetchone()
            if row is None:
                break
            rows.append(row)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._check_open()
        if self._rows is None:
            return []
        try:
            rows = list(self._rows)
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self._rows = None
        return rows

    def __iter__(self) -> "Cursor":
        return self

    def __next__(self) -> tuple[Any, ...]:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check_open()

    def _reset(self) -> None:
        self._rows = None
        self.description = None
        self.rowcount = -1

    def _run(self, stmt: StatementInfo, sql: str, params: Any, many: bool = False) -> None:
        kind = stmt.kind
        if kind == "empty":
            return
        if kind == "transaction":
            self._transaction(stmt)
        elif kind == "savepoint":
            self._savepoint(stmt, sql)
        elif kind == "read" or (kind == "pragma" and not stmt.replicated_pragma):
            self._read(stmt, sql, params)
        elif kind == "temp":
            self._local(stmt, sql, params)
        elif kind == "vacuum":
            self._vacuum(stmt, sql)
        else:
            self._write(stmt, sql, params)

    def _execute_on(self, conn: apsw.Connection, sql: str, params: Any,
                    returns_rows: bool = True) -> apsw.Cursor:
        cursor = conn.cursor()
        description: list[Any] = []
        if returns_rows:
            # The columns are known once the statement is prepared, even if it returns no row.
            def trace(cur: apsw.Cursor, statement: str, bindings: Any) -> bool:
                description[:] = [cur.get_description()]
                return True

            cursor.exec_trace = trace
        try:
            cursor.execute(sql, params)
        except apsw.Error as exc:
            raise translate(exc) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise translate(exc) from exc
        except KeyError as exc:
            # apsw looks named parameters up in the mapping; a missing one is the caller's mistake.
            raise ProgrammingError(
                f"You did not supply a value for binding parameter :{exc.args[0]}.") from exc
        if not description:
            self.description = None  # what an empty description gives
            return cursor
        desc = description[0]
        self.description = tuple((name, None, None, None, None, None, None) for name, _ in desc) or None
        return cursor

    def _read(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        conn = self.connection
        node = conn._read_node(stmt)
        target = conn._connection_for(node)
        try:
            cursor = self._execute_on(target, sql, params)
        except OperationalError:
            if node == conn._leader_name:
                raise
            # The follower may not have the schema this statement needs yet: the leader has it.
            node = conn._leader_name
            cursor = self._execute_on(conn._leader, sql, params)
        if node != conn._leader_name:
            conn.last_node = node
            self.lsn = conn._follower_lsn.get(node)
        else:
            self.lsn = None
        self.node = node
        self.rowcount = -1
        self._rows = iter(cursor) if self.description else None
        if self._rows is None:
            # Statements that return nothing still run to completion now.
            for _ in cursor:
                pass

    def _local(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        """TEMP objects live on the leader connection only and are not replicated."""
        conn = self.connection
        cursor = self._execute_on(conn._leader, sql, params)
        rows = list(cursor)
        self.node = conn._leader_name
        writes_rows = not stmt.readonly and stmt.operation != "DDL"
        self.rowcount = conn._leader.changes() if writes_rows else -1
        self._rows = iter(rows) if self.description else None

    def _vacuum(self, stmt: StatementInfo, sql: str) -> None:
        conn = self.connection
        conn._check_writable(stmt)
        if conn._txn is not None:
            raise OperationalError("cannot VACUUM from within a transaction")
        keyed_by_rowid = _rowid_keyed_tables(conn._leader)
        if keyed_by_rowid:
            raise NotSupportedError(
                "VACUUM may renumber the rowids of tables without a PRIMARY KEY "
                f"({', '.join(keyed_by_rowid)}), which are replicated by rowid; it would make "
                "followers diverge, so it is refused")
        # VACUUM only rewrites the leader's file: content, and so the followers, are unchanged.
        self._execute_on(conn._leader, sql, None)
        self.node = conn._leader_name

    def _write(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        conn = self.connection
        conn._check_writable(stmt)
        try:
            conn._format.check_statement(stmt)
        except logformats.UnsafeStatementError as exc:
            raise errors.UnsafeStatementError(str(exc)) from exc
        txn = conn._txn
        own_txn = False
        opened_here = txn is None
        if txn is None:
            txn = conn._begin(explicit=False)
            # sqlite3 semantics: DML opens a transaction; DDL outside one commits by itself.
            own_txn = conn.autocommit or stmt.kind != "dml"
        try:
            run_sql, run_params = txn.capture.prepare(stmt, sql, params)
        except (logformats.UnsafeStatementError, logformats.CaptureError) as exc:
            # Refused before it ran: a transaction opened for it alone is closed again.
            if opened_here and conn._txn is not None:
                conn._abort()
            if isinstance(exc, logformats.UnsafeStatementError):
                raise errors.UnsafeStatementError(str(exc)) from exc
            raise IntegrityError(str(exc)) from exc
        cursor = None
        try:
            # No result columns (most writes): no exec tracer needed to learn the description.
            cursor = self._execute_on(conn._leader, run_sql, run_params,
                                      stmt.returns_rows or run_sql is not sql)
            rows = list(cursor)
        except BaseException as exc:
            if cursor is not None:
                # Stopped half way (RETURNING a text that is not UTF-8): a statement left active
                # would make the commit fail with "database is locked".
                cursor.close(True)
            conn._sync_txn_state()
            if own_txn and conn._txn is not None:
                conn._abort()
            if isinstance(exc, (apsw.Error, UnicodeDecodeError)):
                raise translate(exc) from exc
            raise
        leader = conn._leader
        if stmt.kind == "dml":
            self.rowcount = leader.changes()
            if stmt.is_insert:
                self.lastrowid = leader.last_insert_rowid()
        else:
            self.rowcount = -1
        try:
            txn.capture.executed(stmt, run_sql, run_params)
        except BaseException:
            conn._abort()
            raise
        self.node = conn._leader_name
        self._rows = iter(rows) if self.description else None
        if own_txn:
            conn._commit()
            self.lsn = conn.last_write_lsn

    def _transaction(self, stmt: StatementInfo) -> None:
        conn = self.connection
        op = stmt.operation
        self.node = conn._leader_name
        if op == "BEGIN":
            if conn._txn is not None:
                raise OperationalError("cannot start a transaction within a transaction")
            conn._check_writable(stmt)
            conn._begin(explicit=True)
        elif op == "COMMIT":
            if conn._txn is None:
                raise OperationalError("cannot commit - no transaction is active")
            conn._commit()
            self.lsn = conn.last_write_lsn
        else:
            if conn._txn is None:
                raise OperationalError("cannot rollback - no transaction is active")
            conn._rollback()

    def _savepoint(self, stmt: StatementInfo, sql: str) -> None:
        conn = self.connection
        op, name = stmt.operation, stmt.savepoint or ""
        self.node = conn._leader_name
        if op == "BEGIN":
            txn = conn._txn
            if txn is None:
                conn._check_writable(stmt)
                txn = conn._begin(explicit=True)
                txn.by_savepoint = True
            self._execute_on(conn._leader, sql, None)
            txn.savepoints.append(name.lower())
            txn.capture.savepoint(name)
            return
        txn = conn._txn
        if txn is None or name.lower() not in txn.savepoints:
            raise OperationalError(f"no such savepoint: {name}")
        if op == "RELEASE":
            index = len(txn.savepoints) - 1 - txn.savepoints[::-1].index(name.lower())
            if index == 0 and txn.by_savepoint:
                # Releasing the outermost savepoint that began the transaction commits it.
                del txn.savepoints[index:]
                conn._commit()
                self.lsn = conn.last_write_lsn
                return
            self._execute_on(conn._leader, sql, None)
            del txn.savepoints[index:]
            txn.capture.release(name)
        else:  # ROLLBACK TO
            self._execute_on(conn._leader, sql, None)
            index = len(txn.savepoints) - 1 - txn.savepoints[::-1].index(name.lower())
            del txn.savepoints[index + 1:]
            txn.capture.rollback_to(name)


def _params(parameters: Any) -> Any:
    if parameters is None:
        return ()
    if isinstance(parameters, (str, bytes)):
        raise ProgrammingError("parameters must be a sequence or a mapping, not a string")
    return parameters


def _rowid_keyed_tables(conn: apsw.Connection) -> list[str]:
    """User tables replicated by rowid: rowid tables without an INTEGER PRIMARY KEY or any PRIMARY KEY."""
    out = []
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ).fetchall():
        if logformats.is_internal_table(name):
            continue
        info = conn.execute("SELECT pk FROM pragma_table_info(?)", (name,)).fetchall()
        if not any(pk for (pk,) in info):
            wr = conn.execute("SELECT wr FROM pragma_table_list(?)", (name,)).fetchone()
            if wr is None or not wr[0]:
                out.append(name)
    return out


def _split_statements(conn: apsw.Connection, script: str) -> list[str]:
    """Split a script into statements the way SQLite's parser does (sqlite3_complete)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if apsw.complete(current):
            statements.extend(_split_complete(current))
            current = ""
    if current.strip():
        statements.extend(_split_complete(current))
    return [s for s in statements if s.strip()]


def _split_complete(text: str) -> list[str]:
    out, current = [], ""
    for char in text:
        current += char
        if char == ";" and apsw.complete(current):
            out.append(current)
            current = ""
    if current.strip():
        out.append(current)
    return out


__all__ = [
    "Connection",
    "Cursor",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
