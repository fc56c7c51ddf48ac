"""What the statement format needs to know about the schema, read lazily per schema version.

Tables and views (columns, INTEGER PRIMARY KEY, unique keys, nondeterministic DEFAULTs, CHECK and
ON CONFLICT FAIL), triggers, the parents of cascading foreign keys, and which functions a
connection has beyond SQLite's own.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import apsw

from . import determinism
from .row_keys import is_rowid_alias

# The names of the rowid of a rowid table (unless a column takes the name).
ROWID_ALIASES = ("rowid", "oid", "_rowid_")


def fetch_rows(conn: apsw.Connection, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params)]


def fetch_scalar(conn: apsw.Connection, sql: str, params: Any = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class TableInfo:
    """What the statement format needs to know about one table or view."""

    name: str
    kind: str  # "table", "view", "virtual", "shadow"
    without_rowid: bool = False
    columns: tuple[str, ...] = ()  # columns an INSERT can name (not generated)
    ipk: str | None = None  # the INTEGER PRIMARY KEY column, an alias of the rowid
    has_pk: bool = False
    keys: tuple[frozenset[str], ...] = ()  # unique keys (lowercase names): `=` on them pins a row
    order_keys: tuple[frozenset[str], ...] = ()  # unique keys without NULLs: ORDER BY on them is total
    defaults: tuple[tuple[str, str, determinism.DefaultKind], ...] = ()  # nondeterministic DEFAULTs
    has_check: bool = False
    conflict_fail: bool = False  # a constraint declared ON CONFLICT FAIL

    @property
    def rowid_table(self) -> bool:
        return self.kind == "table" and not self.without_rowid

    def column_set(self) -> frozenset[str]:
        return frozenset(c.lower() for c in self.columns)


class Schema:
    """Schema facts of one database at one schema version, read lazily."""

    def __init__(self, conn: apsw.Connection):
        # Weak: a Schema is cached per connection in a WeakKeyDictionary, whose values must not keep
        # their key (the connection, with its open files) alive.
        self._conn = weakref.ref(conn)
        self._tables: dict[str, TableInfo | None] = {}
        self._triggers: dict[str, str] | None = None
        self._temp_triggers: frozenset[str] | None = None
        self._fk_parents: frozenset[str] | None = None
        self._raises_fail: dict[str, bool] = {}

    @property
    def conn(self) -> apsw.Connection:
        conn = self._conn()
        if conn is None:
            raise ReferenceError("the connection these schema facts were read from is gone")
        return conn

    def table(self, name: str) -> TableInfo | None:
        key = name.lower()
        if key not in self._tables:
            self._tables[key] = self._read_table(name)
        return self._tables[key]

    def raises_fail(self, trigger: str) -> bool:
        """True when a trigger's body has RAISE(FAIL, ...), which ends the statement with an error
        but keeps the rows it changed before."""
        key = trigger.lower()
        if key not in self._raises_fail:
            sql = fetch_scalar(self.conn, "SELECT sql FROM main.sqlite_master WHERE type='trigger' AND name=? "
                               "COLLATE NOCASE", (trigger,))
            words = [w for _t, w in determinism.table_tokens(sql or "")]
            self._raises_fail[key] = any(words[i:i + 3] == ["RAISE", "(", "FAIL"] for i in range(len(words)))
        return self._raises_fail[key]

    def triggers(self) -> dict[str, str]:
        """Trigger name -> table name (lowercase) of the main schema."""
        if self._triggers is None:
            self._triggers = {
                str(n).lower(): str(t).lower() for n, t in fetch_rows(
                    self.conn, "SELECT name, tbl_name FROM main.sqlite_master WHERE type='trigger'")}
        return self._triggers

    def temp_triggers(self) -> frozenset[str]:
        """TEMP triggers of this connection (lowercase): they fire on the leader only."""
        if self._temp_triggers is None:
            self._temp_triggers = frozenset(str(n).lower() for (n,) in fetch_rows(
                self.conn, "SELECT name FROM temp.sqlite_master WHERE type='trigger'"))
        return self._temp_triggers

    def fk_parents(self) -> frozenset[str]:
        """Tables that foreign keys with ON DELETE/UPDATE actions refer to: changing them may
        change other tables when foreign_keys is on."""
        if self._fk_parents is None:
            found = set()
            for (name,) in fetch_rows(self.conn, "SELECT name FROM main.sqlite_master WHERE type='table'"):
                for parent, on_update, on_delete in fetch_rows(
                        self.conn, 'SELECT "table", on_update, on_delete FROM pragma_foreign_key_list(?)', (name,)):
                    if {on_update.upper(), on_delete.upper()} & {"CASCADE", "SET NULL", "SET DEFAULT"}:
                        found.add(parent.lower())
            self._fk_parents = frozenset(found)
        return self._fk_parents

    def _read_table(self, name: str) -> TableInfo | None:
        conn = self.conn
        listed = fetch_rows(
            conn, "SELECT name, type, wr FROM pragma_table_list WHERE schema='main' AND name=? COLLATE NOCASE",
            (name,))
        if not listed:
            return None
        real, kind, without_rowid = listed[0]
        if kind != "table":
            return TableInfo(real, kind)
        info = fetch_rows(conn, 'SELECT name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(?)',
                          (real,))
        columns = tuple(c[0] for c in info if c[5] in (0, 1))
        lowered = {c.lower() for c in columns}
        pk = sorted((c for c in info if c[4]), key=lambda c: c[4])
        ipk = None
        if len(pk) == 1 and is_rowid_alias(conn, real, bool(without_rowid)):
            ipk = pk[0][0]  # as SQLite decides (INTEGER PRIMARY KEY DESC is not an alias)
        notnull = {c[0].lower() for c in info if c[2]}
        if without_rowid:
            notnull |= {c[0].lower() for c in pk}
        keys: list[frozenset[str]] = []
        order_keys: list[frozenset[str]] = []
        if not without_rowid:
            for alias in ROWID_ALIASES:
                if alias not in lowered:
                    keys.append(frozenset({alias}))
                    order_keys.append(frozenset({alias}))
            if ipk is not None:
                keys.append(frozenset({ipk.lower()}))
                order_keys.append(frozenset({ipk.lower()}))
        for index, unique, partial in fetch_rows(conn, 'SELECT name, "unique", partial FROM pragma_index_list(?)',
                                                 (real,)):
            if not unique or partial:
                continue
            cols = fetch_rows(conn, "SELECT cid, name, coll FROM pragma_index_xinfo(?) WHERE key=1", (index,))
            if not cols or any(cid < 0 for cid, _n, _c in cols):
                continue  # an index on expressions
            if any(not self._same_collation(real, col, coll) for _cid, col, coll in cols):
                continue  # unique under another collation than the column compares with
            key = frozenset(col.lower() for _cid, col, _coll in cols)
            keys.append(key)
            if key <= notnull:
                order_keys.append(key)
        defaults = []
        for col, _type, _nn, dflt, _pk, hidden in info:
            if dflt is None or hidden not in (0, 1):
                continue
            kind_of = determinism.classify_default(dflt)
            if kind_of.kind is not None or (kind_of.functions - builtin_function_names()):
                defaults.append((col, dflt, kind_of))
        sql = fetch_scalar(conn, "SELECT sql FROM main.sqlite_master WHERE type='table' AND name=?", (real,))
        words = determinism.table_tokens(sql or "")
        texts = [w for _t, w in words]
        has_check = "CHECK" in texts
        conflict_fail = any(texts[i:i + 3] == ["ON", "CONFLICT", "FAIL"] for i in range(len(texts)))
        return TableInfo(real, "table", bool(without_rowid), columns, ipk, bool(pk), tuple(keys),
                         tuple(order_keys), tuple(defaults), has_check, conflict_fail)

    def _same_collation(self, table: str, column: str, index_coll: str) -> bool:
        try:
            declared = self.conn.column_metadata("main", table, column)[1]
        except apsw.Error:
            return False
        return (declared or "BINARY").upper() == (index_coll or "BINARY").upper()


@lru_cache(maxsize=1)
def _pristine_functions() -> frozenset[tuple[Any, ...]]:
    """pragma_function_list of a fresh connection: the functions every node has."""
    conn = apsw.Connection(":memory:")
    try:
        return frozenset(tuple(r) for r in conn.execute("SELECT * FROM pragma_function_list"))
    finally:
        conn.close()


def builtin_function_names() -> frozenset[str]:
    return frozenset(str(r[0]).lower() for r in _pristine_functions())


def application_functions(conn: apsw.Connection) -> frozenset[str]:
    """Functions registered on this connection beyond SQLite's own (added, or built-ins replaced)."""
    rows = {tuple(r) for r in conn.execute("SELECT * FROM pragma_function_list")}
    return frozenset(str(r[0]).lower() for r in rows - _pristine_functions() if not _case_sensitive_like(r))


def _case_sensitive_like(row: tuple[Any, ...]) -> bool:
    # PRAGMA case_sensitive_like=ON registers like() again, as a function SQLite does not mark
    # built-in; the statement format replays that setting itself (FLAG_CASE_SENSITIVE_LIKE).
    name, _builtin, _type, _enc, narg, flags = row[:6]
    return str(name).lower() == "like" and narg in (2, 3) and flags == 0x200000


@lru_cache(maxsize=1)
def _pristine_collations() -> frozenset[str]:
    conn = apsw.Connection(":memory:")
    try:
        return frozenset(str(r[1]).lower() for r in conn.execute("PRAGMA collation_list"))
    finally:
        conn.close()


def application_collations(conn: apsw.Connection) -> frozenset[str]:
    """Collations registered on this connection beyond SQLite's own (lowercase)."""
    return frozenset(str(r[1]).lower() for r in conn.execute("PRAGMA collation_list")) - _pristine_collations()


@lru_cache(maxsize=1)
def _pristine_modules() -> frozenset[str]:
    conn = apsw.Connection(":memory:")
    try:
        return frozenset(str(r[0]).lower() for r in conn.execute("PRAGMA module_list"))
    finally:
        conn.close()


def application_modules(conn: apsw.Connection) -> frozenset[str]:
    """Virtual table modules registered on this connection beyond SQLite's own (lowercase)."""
    return frozenset(str(r[0]).lower() for r in conn.execute("PRAGMA module_list")) - _pristine_modules()
