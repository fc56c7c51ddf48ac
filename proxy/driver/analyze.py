"""What a statement does, as SQLite itself says when it prepares it.

The statement is prepared on the leader connection with an authorizer that records every action
and an exec tracer that stops it before it runs; the read-only flag comes from
`sqlite3_stmt_readonly`. No regular expressions decide anything here.

Results are cached by SQL text for one schema: what a statement does depends on the schema (a
trigger it fires, a view it reads, a TEMP table that shadows a table), so the cache holds only
verdicts made under the leader's `schema_version` and the connection's TEMP `schema_version` of the
moment. The TEMP one is read before every statement that follows one that could change it (only
this connection's own statements can: anything but a read) and after each rollback; the leader's
before every statement that is not a read (a read writes nothing whatever the schema) and after
each rollback. A schema change by
any connection or process, a TEMP object created or dropped, and a rolled-back schema change all
empty the cache. A write checks again once its transaction holds the leader's write lock
(cursor.py), when no other connection can change the schema until it commits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
# What the authorizer is called with: action code, two arguments, database name, trigger name.
_Action = tuple[int, Any, Any, Any, Any]
CACHE_LIMIT = 2048


class MultipleStatementsError(ProgrammingError):
    """More than one statement was passed to execute()."""


# Verdicts that no schema change can alter: what the text says (a PRAGMA, BEGIN, a savepoint,
# nothing), and reads, which write nothing whatever the schema (they are judged again only when a
# TEMP object of the connection changes, which decides where they are served).
_SCHEMA_FREE = frozenset({"read", "pragma", "transaction", "savepoint", "empty"})
# Verdicts whose statements cannot change the TEMP schema (a failure that rolls back calls observe).
_TEMP_NEUTRAL = frozenset({"read", "dml"})
# Verdicts whose statements Cursor._write runs, confirming them under the write lock.
_CONFIRMED = frozenset({"dml", "ddl"})


class Analyzer:
    """Classifies statements for one leader connection, caching by SQL text for one schema."""

    def __init__(self, conn: apsw.Connection):
        self.conn = conn
        self._cache: dict[str, StatementInfo] = {}
        self._main: int | None = None  # main.schema_version the verdicts were made under
        self._temp: int | None = None  # temp.schema_version the verdicts were made under
        # The last verdict was a read or a row change: only this connection changes its TEMP
        # schema, and neither can, so the next statement need not read it again (rollbacks call
        # observe()).
        self._settled = False
        # main.schema_version was read while the caller held the write lock, and every verdict
        # since was a read or a row change: until the lock is let go nobody can change it.
        self._stable = False

    def clear(self) -> None:
        self._cache.clear()
        self._main = self._temp = None
        self._settled = self._stable = False

    def observe(self) -> None:
        """Empty the cache if the schema is not the one its verdicts were made under: another
        connection changed it, this one did, or a ROLLBACK took a change back (a schema may then
        come back to a number it had, with other content: observing after each rollback keeps an
        old verdict from matching it)."""
        self._settled = self._stable = False
        self._observe(main=True)

    def confirm(self, sql: str, info: StatementInfo) -> StatementInfo:
        """The verdict `info` for `sql`, made before this connection took the write lock, judged
        again under it: another connection may have changed the schema in between (a trigger);
        now nobody else can. Nothing ran on this connection in between, so its TEMP schema is
        the one the verdict saw."""
        if info.kind in _SCHEMA_FREE:
            return info
        changed = self._observe(main=True, temp=False)
        self._stable = self._settled
        return self._lookup(sql) if changed else info

    def _observe(self, main: bool, temp: bool = True) -> bool:
        """Empty the cache if the TEMP schema (unless `temp` is false: it cannot have moved), and
        with `main` the leader's schema, moved since its verdicts were made; True if it did."""
        conn = self.conn
        try:
            if temp:
                temp_version = conn.execute("PRAGMA temp.schema_version").fetchone()[0]
                changed = temp_version != self._temp
            else:
                temp_version, changed = self._temp, False
            if main:
                version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
                if version != self._main:
                    # SQLite prepares with the schema it last loaded, and reloads it only when a
                    # statement runs and finds the file's schema cookie moved: this one does, so
                    # the next verdicts see another connection's trigger (a verdict never runs its
                    # statement). Run after reading the cookie: the schema is at least that new.
                    for _ in conn.execute("SELECT 1 FROM main.sqlite_schema LIMIT 0"):
                        pass
                    self._main = version
                    changed = True
        except apsw.Error as exc:
            raise translate(exc) from exc
        if changed:
            self._cache.clear()
            self._temp = temp_version
        return changed

    def __call__(self, sql: str, locked: bool = False, confirms: bool = False) -> StatementInfo:
        """The verdict on `sql`; `locked`: the caller holds the leader's write lock (a write
        transaction of its own is open), so only its own statements can change the schema.
        `confirms`: the caller runs a row change or schema change only after taking the write lock
        and calling confirm() (Cursor._write): such a verdict is not checked against the leader's
        schema now, which outside a transaction costs a read transaction of its own."""
        if not locked:
            self._stable = False  # a lock taken later is another lock
        if not self._settled:
            self._observe(main=False)
        info = self._cache.get(sql) if type(sql) is str else None
        if info is None:
            if not isinstance(sql, str):
                raise ProgrammingError(f"SQL must be a str, not {type(sql).__name__}")
            if "\0" in sql:  # never cached
                raise ProgrammingError("the query contains a null character")  # sqlite3's words
            info = self._lookup(sql)
        if (info.kind not in _SCHEMA_FREE and not (locked and self._stable)
                and not (confirms and info.kind in _CONFIRMED)):
            if self._observe(main=True, temp=False):
                info = self._lookup(sql)  # judged again, under the schema as it is now
            self._stable = locked
        self._settled = info.kind in _TEMP_NEUTRAL
        self._stable = self._stable and self._settled
        return info

    def _lookup(self, sql: str) -> StatementInfo:
        info = self._cache.get(sql)
        if info is None:
            info = self._analyze(sql)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[sql] = info
        return info

    def _analyze(self, sql: str) -> StatementInfo:
        traced, actions = self._prepare(sql)
        if not traced:
            # Only whitespace or comments: SQLite has nothing to run.
            return StatementInfo(sql=sql, readonly=True, kind="empty")
        self._check_one_statement(sql, traced["first"])
        return _classify(sql, traced, actions, self.conn)

    def _prepare(self, sql: str) -> tuple[dict[str, Any], list[_Action]]:
        """Prepare the first statement of `sql` without running it: what the exec tracer saw of it,
        and every action SQLite asked the authorizer about."""
        actions: list[_Action] = []
        traced: dict[str, Any] = {}

        def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
            actions.append((code, arg1, arg2, dbname, trigger))
            # SQLite carries out many PRAGMAs as it prepares them (locking_mode, the flags): ignored
            # here, a PRAGMA compiles to nothing and only runs if the cursor decides it may.
            return apsw.SQLITE_IGNORE if code == apsw.SQLITE_PRAGMA else apsw.SQLITE_OK

        cursor = self.conn.cursor()
        cursor.exec_trace = _tracer_into(traced)
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
        return traced, actions

    def _check_one_statement(self, sql: str, first: str) -> None:
        """Refuse `sql` when more than comments follow its first statement."""
        if sql[len(first):].strip(" \t\r\n;"):
            rest = sql[len(first):].strip()
            if _has_statement(self.conn, rest):
                raise MultipleStatementsError(
                    "You can only execute one statement at a time; use executescript() for several"
                )


def _tracer_into(traced: dict[str, Any]) -> Callable[[apsw.Cursor, str, Any], bool]:
    """An exec tracer that records what SQLite says of the prepared statement, then stops it."""

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

    return tracer


def _has_statement(conn: apsw.Connection, sql: str) -> bool:
    """True when `sql` holds more than comments: SQLite prepares something from it."""
    found: list[bool] = []

    def tracer(cursor: apsw.Cursor, first: str, bindings: Any) -> bool:
        # apsw traces comment-only text too, as a statement with no SQL in it.
        found.append(bool(cursor.expanded_sql))
        return False

    cursor = conn.cursor()
    cursor.exec_trace = tracer
    previous = conn.authorizer
    conn.authorizer = _no_pragma
    try:
        cursor.execute(sql, _NULL_BINDINGS, can_cache=False)
    except apsw.ExecTraceAbort:
        pass
    except apsw.Error:
        return True
    finally:
        conn.authorizer = previous
        cursor.exec_trace = None
    return any(found)


def _no_pragma(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
    """Prepare without carrying out a PRAGMA (SQLite does many as it prepares them)."""
    return apsw.SQLITE_IGNORE if code == apsw.SQLITE_PRAGMA else apsw.SQLITE_OK


# Blanks and SQL comments between the words of a statement.
_SKIP = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.S)
_WORD = re.compile(r"[A-Za-z_]+")


def _leading_words(sql: str, count: int) -> list[str]:
    """The first `count` words of `sql`, upper-cased, past blanks and comments."""
    words: list[str] = []
    pos = 0
    while len(words) < count:
        blank = _SKIP.match(sql, pos)
        pos = blank.end() if blank else pos
        word = _WORD.match(sql, pos)
        if word is None:
            break
        words.append(word.group().upper())
        pos = word.end()
    return words


def _begin_mode(sql: str) -> str:
    """"BEGIN", "BEGIN IMMEDIATE" or "BEGIN EXCLUSIVE" (DEFERRED is plain BEGIN). SQLite's authorizer
    does not say which; the word after BEGIN does (SQLite has just accepted the text as a BEGIN)."""
    words = _leading_words(sql, 2)
    if len(words) > 1 and words[1] in ("IMMEDIATE", "EXCLUSIVE"):
        return f"BEGIN {words[1]}"
    return "BEGIN"


def _classify(sql: str, traced: dict[str, Any], actions: list[_Action], conn: apsw.Connection
              ) -> StatementInfo:
    readonly = bool(traced["readonly"])
    touched = _Touched.of(actions)
    kind = _kind(sql, readonly, bool(traced["explain"]), touched, actions)
    _check_allowed(kind.kind, actions)
    return StatementInfo(
        sql=sql,
        readonly=readonly,
        kind=kind.kind,
        operation=kind.operation,
        savepoint=kind.savepoint,
        pragma=kind.pragma,
        pragma_value=kind.pragma_value,
        tables_written=frozenset(touched.written),
        tables_read=frozenset(touched.read),
        tables_created=tuple(touched.created),
        functions=frozenset(touched.functions),
        uses_temp=touched.uses_temp,
        is_insert=touched.is_insert,
        param_count=int(traced["count"] or 0),
        param_names=tuple(traced["names"] or ()),
        returns_rows=bool(traced.get("columns", 1)),
        temp_triggers_on_main=_temp_triggers_on_main(conn, touched) if touched.fired else frozenset(),
    )


def _temp_triggers_on_main(conn: apsw.Connection, touched: _Touched) -> frozenset[str]:
    """The TEMP triggers on tables of the main database that the statement fires."""
    try:
        temp = {str(name).lower(): str(table).lower() for name, table in conn.execute(
            "SELECT name, tbl_name FROM temp.sqlite_master WHERE type='trigger'")}
        fired = touched.fired & temp.keys()
        if not fired:
            return frozenset()
        main_tables = {str(name).lower() for (name,) in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type='table'")}
    except apsw.Error as exc:
        raise translate(exc) from exc
    # A trigger name the authorizer gives may be a main one of the same name: counted as TEMP.
    return frozenset(name for name in fired if temp[name] in main_tables)


@dataclass
class _Touched:
    """The tables and functions a statement uses, from its authorizer actions."""

    written: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    created: list[str] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)
    uses_temp: bool = False
    is_insert: bool = False
    # A trigger changes a replicated table: a TEMP trigger on a TEMP object makes the write a DML
    trigger_writes: bool = False
    fired: set[str] = field(default_factory=set)  # every trigger the statement fires (lowercase)

    @classmethod
    def of(cls, actions: list[_Action]) -> _Touched:
        touched = cls()
        for code, arg1, arg2, dbname, trigger in actions:
            if dbname == "temp":
                touched.uses_temp = True
            if isinstance(trigger, str):
                touched.fired.add(trigger.lower())
            if code in _WRITE and trigger is None and isinstance(arg1, str):
                if arg1.lower() not in _SCHEMA_TABLES and dbname != "temp":
                    touched.written.add(arg1)
                    touched.is_insert = touched.is_insert or code == apsw.SQLITE_INSERT
            elif code in _WRITE and isinstance(arg1, str) and dbname != "temp":
                touched.trigger_writes = touched.trigger_writes or arg1.lower() not in _SCHEMA_TABLES
            elif code == apsw.SQLITE_READ and isinstance(arg1, str) and dbname != "temp":
                if arg1.lower() not in _SCHEMA_TABLES:
                    touched.read.add(arg1)
            elif code == apsw.SQLITE_FUNCTION and isinstance(arg2, str):
                touched.functions.add(arg2.lower())
            elif code == apsw.SQLITE_CREATE_TABLE and isinstance(arg1, str):
                touched.created.append(arg1)
        return touched


class _Kind(NamedTuple):
    kind: str
    operation: str | None = None
    savepoint: str | None = None
    pragma: Any = None
    pragma_value: Any = None


def _kind(sql: str, readonly: bool, explain: bool, touched: _Touched, actions: list[_Action]) -> _Kind:
    """What kind of statement this is (StatementInfo.kind), with its operation where it has one."""
    codes = {a[0] for a in actions}
    if apsw.SQLITE_TRANSACTION in codes:
        operation = next(str(a[1]).upper() for a in actions if a[0] == apsw.SQLITE_TRANSACTION)
        return _Kind("transaction", _begin_mode(sql) if operation == "BEGIN" else operation)
    if apsw.SQLITE_SAVEPOINT in codes:
        op = next(a for a in actions if a[0] == apsw.SQLITE_SAVEPOINT)
        return _Kind("savepoint", str(op[1]).upper(), str(op[2]))
    if codes & {apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH}:
        return _Kind("attach")
    if codes & _DDL:
        # SQLite reports some DDL on TEMP objects with the codes of main ones (ALTER TABLE, CREATE
        # INDEX, CREATE TABLE temp.x AS ...): what only changes the TEMP schema is not replicated.
        return _Kind("temp", "DDL") if _temp_only(actions) else _Kind("ddl")
    if codes & _TEMP_DDL:
        return _Kind("temp", "DDL")
    if apsw.SQLITE_PRAGMA in codes and not touched.written:
        op = next(a for a in actions if a[0] == apsw.SQLITE_PRAGMA)
        return _Kind("pragma", pragma=op[1], pragma_value=op[2])
    if touched.written or touched.trigger_writes:
        return _Kind("dml")
    if not readonly and not actions:
        return _Kind("vacuum")
    if not readonly and touched.uses_temp:
        return _Kind("temp")
    if explain:
        return _Kind("read")
    return _Kind("read" if readonly else "other")


def _check_allowed(kind: str, actions: list[_Action]) -> None:
    """Refuse statements that change replproxy's own tables or edit the schema tables directly,
    and ATTACH / DETACH."""
    if any(code == apsw.SQLITE_ANALYZE and isinstance(arg1, str) and arg1.lower().startswith("_replproxy_")
           for code, arg1, _arg2, _dbname, _trigger in actions):
        raise ProgrammingError(
            "this ANALYZE would also analyze replproxy's internal tables (_replproxy_*), which cannot "
            "be changed through the proxy: name the tables or indexes to analyze (ANALYZE mytable), "
            "which is replicated")
    if _touches_internal(kind, actions):
        raise ProgrammingError("replproxy's internal tables (_replproxy_*) cannot be changed through the proxy")
    codes = {a[0] for a in actions}
    if not codes & (_DDL | _TEMP_DDL) and any(
            code in _WRITE and isinstance(arg1, str) and arg1.lower() in _SCHEMA_TABLES
            for code, arg1, _arg2, _dbname, _trigger in actions):
        raise ProgrammingError(
            "the schema table (sqlite_schema) cannot be edited through the proxy: such edits are "
            "never replicated. Change the schema with CREATE, DROP and ALTER statements")
    if kind == "attach":
        raise NotSupportedError(
            "ATTACH and DETACH are not supported through the proxy: changes to attached databases "
            "would not be replicated"
        )


def _touches_internal(kind: str, actions: list[_Action]) -> bool:
    # Writes done by triggers count too: a trigger must not change replproxy's tables either.
    # The trigger format's own capture triggers (named _replproxy_*) are the exception.
    if any(
        code in _WRITE and isinstance(arg1, str) and dbname != "temp"
        and arg1.lower().startswith("_replproxy_")
        and not (isinstance(trigger, str) and trigger.lower().startswith("_replproxy_"))
        for code, arg1, _arg2, dbname, trigger in actions
    ):
        return True
    if kind not in ("ddl", "temp"):
        return False
    # DROP TABLE drops the table's capture triggers with it.
    dropped = {str(a[1]).lower() for a in actions if a[0] == apsw.SQLITE_DROP_TABLE}
    for code, arg1, arg2, _dbname, trigger in actions:
        if (code == apsw.SQLITE_DROP_TRIGGER and isinstance(arg2, str) and arg2.lower() in dropped
                and not arg2.lower().startswith("_replproxy_")):
            continue
        # TEMP objects too: a TEMP table named _replproxy_log would take the log's entries (names
        # resolve to TEMP first), a TEMP trigger on it would run at every commit.
        if (code in _DDL or code in _TEMP_DDL) and trigger is None:
            for name in (arg1, arg2):
                if isinstance(name, str) and name.lower().startswith("_replproxy_"):
                    return True
    return False


def _temp_only(actions: list[_Action]) -> bool:
    """True when every schema change of the statement is in the TEMP database."""
    targets = [arg1 if code == apsw.SQLITE_ALTER_TABLE else dbname
               for code, arg1, _arg2, dbname, _trigger in actions if code in _DDL or code in _TEMP_DDL]
    return bool(targets) and all(target == "temp" for target in targets)


def split_statements(script: str) -> list[str]:
    """A script's statements, split where SQLite's parser would split them (sqlite3_complete: a
    ';' inside a string, a comment or a trigger's body does not end a statement); a last one
    without ';' is kept, pieces with only whitespace and comments are not."""
    statements, start, at = [], 0, script.find(";")
    while at >= 0:
        if apsw.complete(script[start:at + 1]):
            statements.append(script[start:at + 1])
            start = at + 1
        at = script.find(";", at + 1)
    statements.append(script[start:])
    return [s for s in statements if not is_blank(s)]


def is_blank(text: str) -> bool:
    """Only whitespace and comments: nothing to run (sqlite3's shell skips these too)."""
    index, end = 0, len(text)
    while index < end:
        if text[index].isspace():
            index += 1
        elif text.startswith("--", index):
            index = text.find("\n", index)
            if index < 0:
                return True
        elif text.startswith("/*", index):
            index = text.find("*/", index + 2)
            if index < 0:
                return True  # an unfinished comment is still only a comment
            index += 2
        else:
            return False
    return True
