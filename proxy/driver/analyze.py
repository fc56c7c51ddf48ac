"""What a statement does, as SQLite itself says when it prepares it.

The statement is prepared on the leader connection with an authorizer that records every action
and an exec tracer that stops it before it runs; the read-only flag comes from
`sqlite3_stmt_readonly`. No regular expressions decide anything here. Results are cached by SQL text.
"""

from __future__ import annotations

from typing import Any

import apsw

from logformats import StatementInfo

from ..errors import NotSupportedError, ProgrammingError, translate

_DDL = {
    apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_TRIGGER,
    apsw.SQLITE_CREATE_VIEW, apsw.SQLITE_DROP_INDEX, apsw.SQLITE_DROP_TABLE,
    apsw.SQLITE_DROP_TRIGGER, apsw.SQLITE_DROP_VIEW, apsw.SQLITE_ALTER_TABLE,
    apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE, apsw.SQLITE_ANALYZE, apsw.SQLITE_REINDEX,
}
_TEMP_DDL = {
    apsw.SQLITE_CREATE_TEMP_INDEX, apsw.SQLITE_CREATE_TEMP_TABLE, apsw.SQLITE_CREATE_TEMP_TRIGGER,
    apsw.SQLITE_CREATE_TEMP_VIEW, apsw.SQLITE_DROP_TEMP_INDEX, apsw.SQLITE_DROP_TEMP_TABLE,
    apsw.SQLITE_DROP_TEMP_TRIGGER, apsw.SQLITE_DROP_TEMP_VIEW,
}
_WRITE = {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE}
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
_NULL_BINDINGS = getattr(apsw, "_null_bindings", None)
CACHE_LIMIT = 2048


class MultipleStatementsError(ProgrammingError):
    """More than one statement was passed to execute()."""


class Analyzer:
    """Classifies statements for one leader connection, caching by SQL text."""

    def __init__(self, conn: apsw.Connection):
        self.conn = conn
        self._cache: dict[str, StatementInfo] = {}

    def clear(self) -> None:
        self._cache.clear()

    def __call__(self, sql: str) -> StatementInfo:
        info = self._cache.get(sql)
        if info is None:
            info = self._analyze(sql)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[sql] = info
        return info

    def _analyze(self, sql: str) -> StatementInfo:
        if not isinstance(sql, str):
            raise ProgrammingError(f"SQL must be a str, not {type(sql).__name__}")
        actions: list[tuple[int, Any, Any, Any, Any]] = []
        traced: dict[str, Any] = {}

        def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
            actions.append((code, arg1, arg2, dbname, trigger))
            return apsw.SQLITE_OK

        def tracer(cursor: apsw.Cursor, first: str, bindings: Any) -> bool:
            traced["first"] = first
            traced["readonly"] = cursor.is_readonly
            traced["explain"] = cursor.is_explain
            traced["count"] = cursor.bindings_count
            traced["names"] = cursor.bindings_names
            try:
                traced["columns"] = len(cursor.get_description())
            except Exception:  # unknown: returns_rows stays True, the safe answer
                pass
            return False

        cursor = self.conn.cursor()
        cursor.exec_trace = tracer
        previous = self.conn.authorizer
        self.conn.authorizer = authorizer
        try:
            bindings = _NULL_BINDINGS if _NULL_BINDINGS is not None else None
            cursor.execute(sql, bindings, can_cache=False)
        except apsw.ExecTraceAbort:
            pass
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self.conn.authorizer = previous
            cursor.exec_trace = None
        if not traced:
            # Only whitespace or comments: SQLite has nothing to run.
            return StatementInfo(sql=sql, readonly=True, kind="empty")
        first: str = traced["first"]
        if sql[len(first):].strip(" \t\r\n;"):
            rest = sql[len(first):].strip()
            if _has_statement(self.conn, rest):
                raise MultipleStatementsError(
                    "You can only execute one statement at a time; use executescript() for several"
                )
        return _classify(sql, traced, actions)


def _has_statement(conn: apsw.Connection, sql: str) -> bool:
    """True when `sql` holds more than comments: SQLite prepares something from it."""
    found: list[bool] = []

    def tracer(cursor: apsw.Cursor, first: str, bindings: Any) -> bool:
        # apsw traces comment-only text too, as a statement with no SQL in it.
        found.append(bool(cursor.expanded_sql))
        return False

    cursor = conn.cursor()
    cursor.exec_trace = tracer
    try:
        cursor.execute(sql, _NULL_BINDINGS, can_cache=False)
    except apsw.ExecTraceAbort:
        pass
    except apsw.Error:
        return True
    finally:
        cursor.exec_trace = None
    return any(found)


def _begin_mode(sql: str) -> str:
    """"BEGIN", "BEGIN IMMEDIATE" or "BEGIN EXCLUSIVE" (DEFERRED is plain BEGIN). SQLite's authorizer
    does not say which; the token after BEGIN does."""
    import sqlglot.tokens

    tokens = sqlglot.tokens.Tokenizer().tokenize(sql)
    if len(tokens) > 1 and tokens[1].text.upper() in ("IMMEDIATE", "EXCLUSIVE"):
        return f"BEGIN {tokens[1].text.upper()}"
    return "BEGIN"


def _classify(sql: str, traced: dict[str, Any], actions: list[tuple[int, Any, Any, Any, Any]]) -> StatementInfo:
    readonly = bool(traced["readonly"])
    codes = {a[0] for a in actions}
    written: set[str] = set()
    read: set[str] = set()
    created: list[str] = []
    functions: set[str] = set()
    uses_temp = False
    is_insert = False
    operation = savepoint = pragma = pragma_value = None
    kind = "read" if readonly else "other"

    for code, arg1, arg2, dbname, trigger in actions:
        if dbname == "temp":
            uses_temp = True
        if code in _WRITE and trigger is None and isinstance(arg1, str):
            if arg1.lower() not in _SCHEMA_TABLES and dbname != "temp":
                written.add(arg1)
                is_insert = is_insert or code == apsw.SQLITE_INSERT
        elif code == apsw.SQLITE_READ and isinstance(arg1, str) and dbname != "temp":
            if arg1.lower() not in _SCHEMA_TABLES:
                read.add(arg1)
        elif code == apsw.SQLITE_FUNCTION and isinstance(arg2, str):
            functions.add(arg2.lower())
        elif code == apsw.SQLITE_CREATE_TABLE and isinstance(arg1, str):
            created.append(arg1)

    if apsw.SQLITE_TRANSACTION in codes:
        kind = "transaction"
        operation = next(str(a[1]).upper() for a in actions if a[0] == apsw.SQLITE_TRANSACTION)
        if operation == "BEGIN":
            operation = _begin_mode(sql)
    elif apsw.SQLITE_SAVEPOINT in codes:
        kind = "savepoint"
        op = next(a for a in actions if a[0] == apsw.SQLITE_SAVEPOINT)
        operation, savepoint = str(op[1]).upper(), str(op[2])
    elif codes & {apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH}:
        kind = "attach"
    elif codes & _DDL:
        kind = "ddl"
    elif codes & _TEMP_DDL:
        kind, operation = "temp", "DDL"
    elif apsw.SQLITE_PRAGMA in codes and not written:
        kind = "pragma"
        op = next(a for a in actions if a[0] == apsw.SQLITE_PRAGMA)
        pragma, pragma_value = op[1], op[2]
    elif written:
        kind = "dml"
    elif not readonly and not actions:
        kind = "vacuum"
    elif not readonly and uses_temp:
        kind = "temp"
    elif traced["explain"]:
        kind = "read"

    # Writes done by triggers count too: a trigger must not change replproxy's tables either.
    # The trigger format's own capture triggers (named _replproxy_*) are the exception.
    touches_internal = any(
        code in _WRITE and isinstance(arg1, str) and dbname != "temp"
        and arg1.lower().startswith("_replproxy_")
        and not (isinstance(trigger, str) and trigger.lower().startswith("_replproxy_"))
        for code, arg1, _arg2, dbname, trigger in actions
    )
    if kind == "ddl":
        # DROP TABLE drops the table's capture triggers with it.
        dropped = {str(a[1]).lower() for a in actions if a[0] == apsw.SQLITE_DROP_TABLE}
        for code, arg1, arg2, _dbname, trigger in actions:
            if (code == apsw.SQLITE_DROP_TRIGGER and isinstance(arg2, str) and arg2.lower() in dropped
                    and not arg2.lower().startswith("_replproxy_")):
                continue
            if code in _DDL and trigger is None:
                for name in (arg1, arg2):
                    if isinstance(name, str) and name.lower().startswith("_replproxy_"):
                        touches_internal = True
    if touches_internal:
        raise ProgrammingError("replproxy's internal tables (_replproxy_*) cannot be changed through the proxy")
    if kind == "attach":
        raise NotSupportedError(
            "ATTACH and DETACH are not supported through the proxy: changes to attached databases "
            "would not be replicated"
        )

    return StatementInfo(
        sql=sql,
        readonly=readonly,
        kind=kind,
        operation=operation,
        savepoint=savepoint,
        pragma=pragma,
        pragma_value=pragma_value,
        tables_written=frozenset(written),
        tables_read=frozenset(read),
        tables_created=tuple(created),
        functions=frozenset(functions),
        uses_temp=uses_temp,
        is_insert=is_insert,
        param_count=int(traced["count"] or 0),
        param_names=tuple(traced["names"] or ()),
        returns_rows=bool(traced.get("columns", 1)),
    )
