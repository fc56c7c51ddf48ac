"""The PEP 249 cursor: runs each statement where it belongs (a read on the node routing picks or in
the open transaction, a write in a captured transaction on the leader) and hands out its rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import apsw

import logformats
from logformats import StatementInfo

from .. import errors
from ..errors import (
    IntegrityError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    ReadOnlyNodeError,
    translate,
)
from . import pragmas
from .consistency import check_level
from .dbapi import DBAPICursor
from .functions import raised_by_user_code
from .rows import shaper
from .types import adapt_params

if TYPE_CHECKING:
    from .connection import Connection


class Cursor(DBAPICursor):
    """A PEP 249 cursor. `node` names the node that served the last statement; `row_factory`
    shapes the rows it hands out, as in sqlite3 (`sqlite3.Row` is answered by `proxy.Row`)."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.node: str | None = None
        self.lsn: int | None = None
        # Read consistency for this cursor's statements; None: the connection's.
        self.consistency: str | None = None
        self.row_factory: Any = None
        # As sqlite3 steps: while _rows is not None, _ahead is the next row to hand out (already
        # stepped) and _rows yields the ones after it; None: no more rows. Handing out the last
        # row has stepped the statement to its end, so it no longer holds a read snapshot (held,
        # it made the connection's next write fail with SQLITE_BUSY_SNAPSHOT, and its follower's
        # position look older than it is).
        self._rows: Iterator[tuple[Any, ...]] | None = None
        self._ahead: tuple[Any, ...] = ()
        self._closed = False
        # The SQLite cursor of the last statement and its connection: the next statement on the
        # same connection runs on it (executing resets what it ran before, as dropping it would).
        self._sqlite: tuple[apsw.Connection, apsw.Cursor] | None = None

    # -- PEP 249 ------------------------------------------------------------------------------

    def close(self) -> None:
        self._rows = None
        self._sqlite = None
        self._closed = True

    def execute(self, operation: str, parameters: Any = (), *, consistency: str | None = None
                ) -> Cursor:
        """Run one statement. `consistency` overrides the cursor's and connection's level for it."""
        conn = self.connection
        if self._closed or conn._closed:
            self._check_open()
        txn = conn._txn
        locked = txn is not None and txn.capture is not None
        # Without the write lock, a write is confirmed once _write has taken it.
        stmt = conn._leader_side.analyze(operation, locked, not locked)
        self._rows = None  # self._reset(), inline: this is every statement's path
        self.description = None
        self.rowcount = -1
        level = consistency or self.consistency or conn._consistency
        if consistency is not None or self.consistency is not None:
            check_level(level)
        params = adapt_params(parameters) if type(parameters) is tuple else _params(parameters)
        if conn._trace_callback is not None:
            conn._trace_statement(stmt, operation, params)
        if txn is None and stmt.kind == "read":
            stay = conn._router.staying(conn, stmt, level)
            if stay is None:
                self._read(stmt, operation, params, level)  # _run's dispatch, for a read
            else:
                self._read_staying(stay, operation, params)
        else:
            self._run(stmt, operation, params, level=level)
        # As sqlite3: after every execute() (not executemany), the connection's last_insert_rowid().
        self.lastrowid = conn._local.last_rowid
        return self

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        self._check_open()
        conn = self.connection
        stmt = conn._leader_side.analyze(operation)
        if stmt.kind not in ("dml", "empty"):
            raise ProgrammingError("executemany() can only execute DML statements.")
        self._reset()
        total = 0
        for parameters in seq_of_parameters:
            params = _params(parameters)
            conn._trace_statement(stmt, operation, params)
            # The first row may check the statement again under the write lock: keep its verdict.
            stmt = self._run(stmt, operation, params, many=True)
            total += max(self.rowcount, 0)
        self.rowcount = total
        self._rows = None
        self.description = None
        return self

    def executescript(self, script: str) -> Cursor:
        """Run several statements as sqlite3 does: a pending transaction is committed first (unless
        autocommit=True), then each statement commits by itself unless the script opens a
        transaction with BEGIN; so a statement that fails leaves the ones before it committed.
        `lastrowid` is left as it was."""
        self._check_open()
        conn = self.connection
        if not isinstance(script, str):
            raise ValueError("script argument must be unicode.")
        if "\0" in script:
            raise ProgrammingError("the query contains a null character")
        if conn._txn is not None and conn._implicit_begin:
            conn.commit()
        for sql in _split_statements(conn._leader, script):
            stmt = conn._leader_side.analyze(sql)
            self._reset()
            conn._trace_statement(stmt, sql, (), autocommit=True)
            self._run(stmt, sql, (), level=self.consistency or conn.consistency, autocommit=True)
            rows, self._rows = self._rows, None
            if rows is not None:
                try:
                    for _ in rows:
                        pass
                except (apsw.Error, UnicodeDecodeError) as exc:
                    raise _translate(exc, self.description) from exc
        return self

    def fetchone(self) -> Any:
        conn = self.connection
        if self._closed or conn._closed:
            self._check_open()
        if self.description is None:
            self._check_result()
        rows = self._rows  # self._next_row(), inline: every point read comes here
        if rows is None:
            return None
        row = self._ahead
        try:
            following = next(rows, None)
        except (apsw.Error, UnicodeDecodeError) as exc:
            self._rows = None
            raise _translate(exc, self.description) from exc
        if following is None:
            self._rows = None
        else:
            self._ahead = following
        if self.row_factory is None and conn.text_factory is str:
            return row  # as SQLite gave it (shaper() would say so, one call later)
        shape = shaper(self, self.row_factory, conn.text_factory)
        return row if shape is None else shape(row)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        self._check_open()
        self._check_result()
        count = self.arraysize if size is None else size
        rows = []
        for _ in range(max(count, 0)):
            row = self._next_row()
            if row is None:
                break
            rows.append(row)
        shape = shaper(self, self.row_factory, self.connection.text_factory)
        return rows if shape is None else [shape(row) for row in rows]

    def fetchall(self) -> list[Any]:
        self._check_open()
        self._check_result()
        if self._rows is None:
            return []
        rows = [self._ahead]
        try:
            rows.extend(self._rows)
        except (apsw.Error, UnicodeDecodeError) as exc:
            raise _translate(exc, self.description) from exc
        finally:
            self._rows = None
        shape = shaper(self, self.row_factory, self.connection.text_factory)
        return rows if shape is None else [shape(row) for row in rows]

    def __next__(self) -> Any:
        self._check_open()
        self._check_result()
        row = self._next_row()
        if row is None:
            raise StopIteration
        shape = shaper(self, self.row_factory, self.connection.text_factory)
        return row if shape is None else shape(row)

    def _next_row(self) -> tuple[Any, ...] | None:
        """The next row as SQLite gave it, None when there is none."""
        rows = self._rows
        if rows is None:
            return None
        row = self._ahead
        try:
            following = next(rows, None)
        except (apsw.Error, UnicodeDecodeError) as exc:
            self._rows = None
            raise _translate(exc, self.description) from exc
        if following is None:
            self._rows = None
        else:
            self._ahead = following
        return row

    def _start_rows(self, rows: Iterator[tuple[Any, ...]]) -> None:
        """Hand out `rows` from now on; the first is stepped now, as sqlite3's execute() does."""
        try:
            first = next(rows, None)
        except (apsw.Error, UnicodeDecodeError) as exc:
            self._rows = None
            raise _translate(exc, self.description) from exc
        if first is None:
            self._rows = None
        else:
            self._ahead = first
            self._rows = rows

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check_open()

    def _reset(self) -> None:
        self._rows = None
        self.description = None
        self.rowcount = -1

    def _run(self, stmt: StatementInfo, sql: str, params: Any, many: bool = False,
             level: str | None = None, autocommit: bool = False) -> StatementInfo:
        """Run one statement; return its verdict (checked again when a write took the lock).
        `autocommit`: a write outside a transaction commits by itself (executescript)."""
        kind = stmt.kind
        if kind == "empty":
            return stmt
        if kind == "transaction":
            self._transaction(stmt)
        elif kind == "savepoint":
            self._savepoint(stmt, sql)
        elif kind == "pragma" and not stmt.replicated_pragma:
            self._pragma(stmt, sql, params, level or self.connection.consistency)
        elif kind == "read":
            self._read(stmt, sql, params, level or self.connection.consistency)
        elif kind == "temp":
            self._local(stmt, sql, params)
        elif kind == "vacuum":
            self._vacuum(stmt, sql)
        else:
            return self._write(stmt, sql, params, autocommit)
        return stmt

    def _execute_on(self, conn: apsw.Connection, sql: str, params: Any,
                    returns_rows: bool = True) -> apsw.Cursor:
        if conn is self.connection._leader_side.conn:
            # replproxy's own inserts (the log) since the session's last statement do not count
            conn.set_last_insert_rowid(self.connection._local.last_rowid)
        last = self._sqlite
        if last is not None and last[0] is conn:
            cursor = last[1]
        else:
            cursor = conn.cursor()
            self._sqlite = (conn, cursor)
        try:
            cursor.execute(sql, params)
        except _EXECUTE_ERRORS as exc:
            raise _execution_error(exc) from exc
        if not returns_rows:
            self.description = None
            return cursor
        try:
            # apsw's (name, declared type, None x 5), as PEP 249 has it
            self.description = cursor.description or None  # while the statement has a row to give
        except apsw.ExecutionCompleteError:  # no row: ask the prepared statement
            self.description = _describe(_prepared_description(conn, sql))
        return cursor

    def _read(self, stmt: StatementInfo, sql: str, params: Any, level: str) -> None:
        conn = self.connection
        txn = conn._txn
        if txn is not None:
            # Inside a transaction every read runs on the transaction's own snapshot.
            if txn.node is None:
                conn._bind_read_txn(txn, level, stmt)
            node = txn.node or conn._leader_name
            cursor = self._execute_on(conn._router.connection_for(node), sql, params)
            self.lsn = txn.snapshot_lsn if node != conn._leader_name else None
        else:
            router = conn._router
            node = router.target(stmt, level)
            target = router.connection_for(node)
            try:
                cursor = self._execute_on(target, sql, params)
            except OperationalError as exc:
                if not self._leader_may_answer(exc, node):
                    raise
                node, target = conn._leader_name, conn._leader
                cursor = self._execute_on(target, sql, params)
            self.lsn = router.served(node, target)
        self.node = node
        self._hand_out(cursor)

    def _read_staying(self, stay: tuple[str, apsw.Connection, int], sql: str, params: Any) -> None:
        """A read that stays on the session's last follower (Router.staying): _read and
        _execute_on in one step, for the most common statement of all."""
        node, target, lsn = stay
        last = self._sqlite
        if last is not None and last[0] is target:
            cursor = last[1]
        else:
            cursor = target.cursor()
            self._sqlite = (target, cursor)
        try:
            cursor.execute(sql, params)
        except _EXECUTE_ERRORS as exc:
            error = _execution_error(exc)
            if not isinstance(error, OperationalError) or not self._leader_may_answer(error, node):
                raise error from exc
            node, target = self.connection._leader_name, self.connection._leader
            cursor = self._execute_on(target, sql, params)
            self.lsn = self.connection._router.served(node, target)
        else:
            try:
                self.description = cursor.description or None  # while the statement has a row to give
            except apsw.ExecutionCompleteError:  # no row: ask the prepared statement
                self.description = _describe(_prepared_description(target, sql))
            self.connection._router.unsettled = node  # what served() notes of a read on the last follower
            self.lsn = lsn
        self.node = node
        self._hand_out(cursor)

    def _leader_may_answer(self, exc: OperationalError, node: str) -> bool:
        """A read failed on `node`: a follower may not have the schema it needs yet, and the leader
        has it. Not when it failed on the leader or a pinned node, or for another reason."""
        conn = self.connection
        return not (node == conn._leader_name or node == conn.pinned_node
                    or exc.sqlite_errorcode == apsw.SQLITE_INTERRUPT or raised_by_user_code(exc))

    def _hand_out(self, cursor: apsw.Cursor) -> None:
        if self.description:
            self._start_rows(cursor)
            return
        self._rows = None
        # Statements that return nothing still run to completion now.
        try:
            for _ in cursor:
                pass
        except (apsw.Error, UnicodeDecodeError) as exc:
            raise _translate(exc, self.description) from exc

    def _local(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        """TEMP objects live on the leader connection only and are not replicated."""
        conn = self.connection
        leader = conn._leader
        writes_rows = not stmt.readonly and stmt.operation != "DDL"
        conn._local.before(leader, False)
        try:
            cursor = self._execute_on(leader, sql, params)
            rows = _all_rows(cursor, self.description)
        finally:
            conn._local.after(leader, writes_rows)
        self.node = conn._leader_name
        self.rowcount = conn._local.changes if writes_rows else -1
        self._rows = None
        if self.description:
            self._start_rows(iter(rows))

    def _pragma(self, stmt: StatementInfo, sql: str, params: Any, level: str) -> None:
        """A PRAGMA, by its rule in pragmas.py: a report runs where reads run; a setting is the
        session's, made on the leader connection (and its follower reads); the leader's own file is
        maintained on the leader only; what would make the leader diverge is refused."""
        conn = self.connection
        name, value = (stmt.pragma or "").lower(), stmt.pragma_value
        rule = pragmas.rule_for(name)
        why = pragmas.refusal(name, value, conn._leader_side.format)
        if why is not None:
            raise NotSupportedError(why)
        if (rule.kind == pragmas.QUERY or rule.kind == pragmas.HEADER and value is None
                or rule.kind == pragmas.LEADER_FILE and not rule.acts(value)):
            self._read(stmt, sql, params, level)
            return
        on_follower = conn.pinned_node is not None and conn.pinned_node != conn._leader_name
        if rule.kind == pragmas.LEADER_FILE:
            if on_follower:
                raise ReadOnlyNodeError(
                    f"{conn.pinned_node} is a follower: PRAGMA {name} would change its file, which "
                    f"only replication changes; run it on the leader ({conn._leader_name}), from a "
                    f"connection without node=")
            conn._leader_side.ensure_up()
        elif rule.kind == pragmas.TRANSACTION and value is not None and conn._txn is not None:
            if not on_follower:
                conn._writable_txn()  # it belongs to the leader's write transaction
        leader = conn._leader
        cursor = self._execute_on(leader, sql, params)
        rows = _all_rows(cursor, self.description)
        if rule.kind == pragmas.SETTING and value is not None:
            conn._local.remember(name, value, sql)
        self.node = conn._leader_name
        self.rowcount = -1
        self._rows = None
        if self.description:
            self._start_rows(iter(rows))

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

    def _write(self, stmt: StatementInfo, sql: str, params: Any, autocommit: bool = False) -> StatementInfo:
        conn = self.connection
        conn._check_writable(stmt)
        _check_format(conn, stmt)
        txn = conn._txn
        took_lock = txn is None or txn.capture is None
        own_txn = False
        opened_here = txn is None
        if txn is None:
            txn = conn._begin(explicit=False)
            # sqlite3 semantics: DML opens a transaction; DDL outside one commits by itself.
            own_txn = autocommit or not conn._implicit_begin or stmt.kind != "dml"
        else:
            txn = conn._writable_txn()
        assert txn.capture is not None
        try:
            if took_lock:
                # The verdict was made before this transaction held the write lock: another
                # connection may have changed the schema since (a trigger). Now nobody else can.
                fresh = conn._leader_side.analyze.confirm(sql, stmt)
                if fresh is not stmt:
                    stmt = fresh
                    _check_format(conn, stmt)
            run_sql, run_params = txn.capture.prepare(stmt, sql, params)
            if stmt.kind == "ddl":
                _check_schema_functions(conn, stmt)
        except (errors.Error, logformats.UnsafeStatementError, logformats.CaptureError) as exc:
            # Refused before it ran: a transaction opened for it alone is closed again.
            if opened_here and conn._txn is not None:
                conn._abort()
            if isinstance(exc, errors.Error):
                raise
            if isinstance(exc, logformats.UnsafeStatementError):
                raise errors.UnsafeStatementError(str(exc)) from exc
            raise IntegrityError(str(exc)) from exc
        cursor = None
        leader = conn._leader
        local = conn._local
        local.before(leader, conn._leader_side.internal_triggers)
        try:
            # No result columns (most writes): no exec tracer needed to learn the description.
            cursor = self._execute_on(leader, run_sql, run_params,
                                      stmt.returns_rows or run_sql is not sql)
            rows = list(cursor)
        except BaseException as exc:
            local.after(leader, stmt.kind == "dml")
            if cursor is not None:
                # Stopped half way (RETURNING a text that is not UTF-8): a statement left active
                # would make the commit fail with "database is locked".
                cursor.close(True)
                self._sqlite = None
            conn._sync_txn_state()
            if own_txn and conn._txn is not None:
                conn._abort()
            if isinstance(exc, (apsw.Error, UnicodeDecodeError)):
                raise _translate(exc, self.description) from exc
            raise
        local.after(leader, stmt.kind == "dml")
        self.rowcount = local.changes if stmt.kind == "dml" else -1
        try:
            txn.capture.executed(stmt, run_sql, run_params)
        except logformats.CaptureError as exc:
            # The statement ran but cannot be replicated exactly: the transaction is rolled back.
            conn._abort()
            raise IntegrityError(f"{exc} (rolled back)") from exc
        except logformats.UnsafeStatementError as exc:
            conn._abort()
            raise errors.UnsafeStatementError(f"{exc} (rolled back)") from exc
        except (apsw.Error, UnicodeDecodeError) as exc:
            # The capture could not read what the statement did (text that is not UTF-8 in rows
            # it copies): nothing of it can be logged, so nothing of it is kept.
            conn._abort()
            error = _translate(exc, None)
            error.args = (f"{error} (rolled back)",)
            raise error from exc
        except BaseException:
            conn._abort()
            raise
        self.node = conn._leader_name
        self._rows = None
        if self.description:
            self._start_rows(iter(rows))
        if own_txn:
            conn._commit()
            self.lsn = conn.last_write_lsn
        return stmt

    def _transaction(self, stmt: StatementInfo) -> None:
        conn = self.connection
        op = stmt.operation or ""
        if op.startswith("BEGIN"):
            if conn._txn is not None:
                raise OperationalError("cannot start a transaction within a transaction")
            if op == "BEGIN":
                conn._begin_deferred()
            else:
                conn._check_writable(stmt)
                conn._begin(explicit=True)
            self.node = conn._txn.node if conn._txn else None
            return
        txn = conn._txn
        self.node = txn.node if txn is not None else conn._leader_name
        if op == "COMMIT":
            if txn is None:
                raise OperationalError("cannot commit - no transaction is active")
            conn._finish_txn(commit=True)
            self.lsn = conn.last_write_lsn
        else:
            if txn is None:
                raise OperationalError("cannot rollback - no transaction is active")
            conn._finish_txn(commit=False)

    def _savepoint(self, stmt: StatementInfo, sql: str) -> None:
        conn = self.connection
        op, name = stmt.operation, stmt.savepoint or ""
        self.node = conn._leader_name
        if op == "BEGIN":
            txn = conn._txn
            conn._check_writable(stmt)
            if txn is None:
                txn = conn._begin(explicit=True)
                txn.by_savepoint = True
            else:
                txn = conn._writable_txn()
            assert txn.capture is not None
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
            conn._schema_rolled_back()
            index = len(txn.savepoints) - 1 - txn.savepoints[::-1].index(name.lower())
            del txn.savepoints[index + 1:]
            txn.capture.rollback_to(name)


def _check_format(conn: Connection, stmt: StatementInfo) -> None:
    try:
        conn._leader_side.format.check_statement(stmt)
    except logformats.UnsafeStatementError as exc:
        raise errors.UnsafeStatementError(str(exc)) from exc


def _check_schema_functions(conn: Connection, stmt: StatementInfo) -> None:
    """A table or index whose definition calls a function this connection defined (a CHECK, an
    index expression, a generated column): followers replay schema changes as statements, in
    appliers that do not have the function, and would stop. (The statement and mixed formats
    refuse it themselves, in their own words, before this check.) Views and triggers only name
    functions: SQLite does not report them, and they are accepted."""
    used = sorted(stmt.functions & conn._local.definitions.function_names())
    if used:
        raise errors.UnsafeStatementError(
            f"this schema change uses the function {used[0]!r}, which this connection defined "
            "(create_function and the like): followers replay schema changes in appliers that do not "
            "have it, and would stop. Compute the value in the application, or use a built-in function")


def _translate(exc: BaseException, description: Any) -> errors.Error:
    """The DB-API error for a failure while stepping: text that is not UTF-8 is an
    OperationalError, in sqlite3's words (which name the column when it is known)."""
    if not isinstance(exc, UnicodeDecodeError):
        return translate(exc)
    raw = exc.object if isinstance(exc.object, bytes) else bytes(exc.object)
    text = raw.decode("utf-8", "replace")
    if description is not None and len(description) == 1:
        column = f"column {description[0][0]!r}"
    else:
        column = "a column"
    error = OperationalError(f"Could not decode to UTF-8 {column} with text {text!r}")
    error.__cause__ = exc
    return error


def _all_rows(cursor: apsw.Cursor, description: Any) -> list[tuple[Any, ...]]:
    try:
        return list(cursor)
    except (apsw.Error, UnicodeDecodeError) as exc:
        raise _translate(exc, description) from exc


def _describe(desc: tuple[tuple[str, str | None], ...]) -> tuple[tuple[Any, ...], ...] | None:
    """PEP 249 7-item column descriptions (name, declared type, None x 5), as apsw's
    `Cursor.description` gives them while a statement has a row."""
    return tuple((name, decl, None, None, None, None, None) for name, decl in desc) or None


def _prepared_description(conn: apsw.Connection, sql: str) -> tuple[tuple[str, str | None], ...]:
    """The result columns of `sql`, from preparing it without running it."""
    found: list[Any] = []

    def trace(cur: apsw.Cursor, statement: str, bindings: Any) -> bool:
        found.append(cur.get_description())
        return False

    cursor = conn.cursor()
    cursor.exec_trace = trace
    try:
        cursor.execute(sql, getattr(apsw, "_null_bindings", None))
    except apsw.ExecTraceAbort:
        pass
    except apsw.Error:
        return ()
    return found[0] if found else ()


_EXECUTE_ERRORS = (apsw.Error, UnicodeDecodeError, TypeError, ValueError, OverflowError, KeyError)


def _execution_error(exc: BaseException) -> Exception:
    """What an apsw cursor's execute() raised, as the driver raises it."""
    if isinstance(exc, UnicodeDecodeError):
        return _translate(exc, None)  # the first row holds text that is not UTF-8
    if isinstance(exc, KeyError):
        # apsw looks named parameters up in the mapping; a missing one is the caller's mistake.
        return ProgrammingError(f"You did not supply a value for binding parameter :{exc.args[0]}.")
    return translate(exc)


def _params(parameters: Any) -> Any:
    if parameters is None:
        return ()
    if isinstance(parameters, (str, bytes)):
        raise ProgrammingError("parameters must be a sequence or a mapping, not a string")
    return adapt_params(parameters)


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

