"""Statement-based log: the transaction's write statements with their parameters, replayed by followers.

Followers execute the statements themselves, with their own triggers firing as the leader's did.
That is exact only if every statement computes the same thing on every node, so before the leader
runs a statement it is made deterministic or refused:

- nondeterministic values (random(), randomblob(N), the clock, the time zone, nondeterministic
  column DEFAULTs) are computed once on the leader and bound as extra parameters `?K` of a
  rewritten statement; the rewritten statement is what the leader runs and what the log holds;
- what cannot be fixed that way (order-dependent results, connection state, node-dependent
  functions, application-defined functions, nondeterministic triggers...) raises
  UnsafeStatementError before the statement runs (the mixed format logs row images instead);
- connection settings that change what a statement does on the leader (foreign_keys, recursive
  triggers, reverse scan order, case-sensitive LIKE, ignored CHECK constraints) travel with the
  statement and are set on the follower around it.

The text analysis (sqlglot, determinism.py) is cached by SQL text; what depends on the schema is
cached per connection and schema version, so a repeated parameterized statement costs a dictionary
lookup. `no_rewrite=True` is the naive mode for demonstrations: statements are logged as they are,
nothing is checked or rewritten, and nondeterministic statements visibly diverge.

Payload chunks, in order: `T` the distinct SQL texts of the entry, then `X` runs of statement
records (text index, settings, parameters) and, in the mixed format, `R` row payloads (row.py).
An entry carries the texts it uses, so it decodes alone: for a follower set up later from a
snapshot, for a transport that ships entries one by one, and for `replproxy log --from N`.
"""

from __future__ import annotations

import struct
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import apsw

from . import codec, determinism, row
from .base import (
    ApplyError,
    Capture,
    CaptureError,
    DecodeError,
    Event,
    LogFormat,
    SchemaLookup,
    StatementInfo,
    UnsafeStatementError,
    pop_savepoint,
)
from .determinism import ColumnRef, QueryFacts, TextPlan, quote_identifier

TAG_TEXTS = b"T"
TAG_STATEMENTS = b"X"
TAG_ROWS = b"R"

# Settings of the leader connection that a statement depends on, replayed around it on followers.
FLAG_FOREIGN_KEYS = 1
FLAG_RECURSIVE_TRIGGERS = 2
FLAG_REVERSE_ORDER = 4
FLAG_CASE_SENSITIVE_LIKE = 8
FLAG_IGNORE_CHECK = 16
_FLAG_NAMES = {
    FLAG_FOREIGN_KEYS: "foreign_keys",
    FLAG_RECURSIVE_TRIGGERS: "recursive_triggers",
    FLAG_REVERSE_ORDER: "reverse_unordered_selects",
    FLAG_CASE_SENSITIVE_LIKE: "case_sensitive_like",
    FLAG_IGNORE_CHECK: "ignore_check_constraints",
}

MAX_ROWID = 2**63 - 1
# Past this rowid SQLite is (or may within one statement get) out of room for max(rowid)+1 and
# picks rowids at random.
ROWID_DANGER = MAX_ROWID - 2**32
_ROWID_ALIASES = ("rowid", "oid", "_rowid_")
_PHYSICAL_TABLES = frozenset({"dbstat", "sqlite_dbpage"})
_SUGGEST = "use --format mixed (row images for such statements) or --format row"


def unsafe_message(reason: str) -> str:
    return f"statement-based replication cannot replay this statement exactly: {reason}; {_SUGGEST}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(conn: apsw.Connection, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params)]


def _scalar(conn: apsw.Connection, sql: str, params: Any = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


# -- what the schema says -------------------------------------------------------------------------


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
        self.conn = conn
        self._tables: dict[str, TableInfo | None] = {}
        self._triggers: dict[str, str] | None = None
        self._fk_parents: frozenset[str] | None = None
        self._raises_fail: dict[str, bool] = {}

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
            sql = _scalar(self.conn, "SELECT sql FROM main.sqlite_master WHERE type='trigger' AND name=? "
                          "COLLATE NOCASE", (trigger,))
            words = [w for _t, w in determinism.table_tokens(sql or "")]
            self._raises_fail[key] = any(words[i:i + 3] == ["RAISE", "(", "FAIL"] for i in range(len(words)))
        return self._raises_fail[key]

    def triggers(self) -> dict[str, str]:
        """Trigger name -> table name (lowercase) of the main schema."""
        if self._triggers is None:
            self._triggers = {
                str(n).lower(): str(t).lower() for n, t in _rows(
                    self.conn, "SELECT name, tbl_name FROM main.sqlite_master WHERE type='trigger'")}
        return self._triggers

    def fk_parents(self) -> frozenset[str]:
        """Tables that foreign keys with ON DELETE/UPDATE actions refer to: changing them may
        change other tables when foreign_keys is on."""
        if self._fk_parents is None:
            found = set()
            for (name,) in _rows(self.conn, "SELECT name FROM main.sqlite_master WHERE type='table'"):
                for parent, on_update, on_delete in _rows(
                        self.conn, 'SELECT "table", on_update, on_delete FROM pragma_foreign_key_list(?)', (name,)):
                    if {on_update.upper(), on_delete.upper()} & {"CASCADE", "SET NULL", "SET DEFAULT"}:
                        found.add(parent.lower())
            self._fk_parents = frozenset(found)
        return self._fk_parents

    def _read_table(self, name: str) -> TableInfo | None:
        conn = self.conn
        listed = _rows(
            conn, "SELECT name, type, wr FROM pragma_table_list WHERE schema='main' AND name=? COLLATE NOCASE",
            (name,))
        if not listed:
            return None
        real, kind, without_rowid = listed[0]
        if kind != "table":
            return TableInfo(real, kind)
        info = _rows(conn, 'SELECT name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(?)',
                     (real,))
        columns = tuple(c[0] for c in info if c[5] in (0, 1))
        lowered = {c.lower() for c in columns}
        pk = sorted((c for c in info if c[4]), key=lambda c: c[4])
        ipk = None
        if not without_rowid and len(pk) == 1 and pk[0][1].upper() == "INTEGER":
            ipk = pk[0][0]
        notnull = {c[0].lower() for c in info if c[2]}
        if without_rowid:
            notnull |= {c[0].lower() for c in pk}
        keys: list[frozenset[str]] = []
        order_keys: list[frozenset[str]] = []
        if not without_rowid:
            for alias in _ROWID_ALIASES:
                if alias not in lowered:
                    keys.append(frozenset({alias}))
                    order_keys.append(frozenset({alias}))
            if ipk is not None:
                keys.append(frozenset({ipk.lower()}))
                order_keys.append(frozenset({ipk.lower()}))
        for index, unique, partial in _rows(conn, 'SELECT name, "unique", partial FROM pragma_index_list(?)',
                                            (real,)):
            if not unique or partial:
                continue
            cols = _rows(conn, "SELECT cid, name, coll FROM pragma_index_xinfo(?) WHERE key=1", (index,))
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
        sql = _scalar(conn, "SELECT sql FROM main.sqlite_master WHERE type='table' AND name=?", (real,))
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


# -- plans ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatementPlan:
    """How to run and log one statement text on one schema, with given connection settings."""

    unsafe: str | None = None
    leader_sql: str = ""
    log_sql: str = ""
    convert: bool = False  # parameters become one list bound to ?1..?N
    log_convert: bool = False
    param_count: int = 0
    param_names: tuple[str | None, ...] = ()
    referenced: frozenset[int] = frozenset()
    log_count: int = 0  # parameters the logged statement binds (when converted)
    eval_sql: str | None = None
    modifier_params: tuple[int, ...] = ()
    rowid_checks: tuple[str, ...] = ()  # rowid tables that may receive automatic rowids
    # ... of which the statement may also give explicit rowids: (table, written by a trigger)
    post_checks: tuple[tuple[str, bool], ...] = ()
    fk_relevant: bool = False
    order_relevant: bool = False
    like_relevant: bool = False
    check_relevant: bool = False

    @classmethod
    def refused(cls, reason: str) -> StatementPlan:
        return cls(unsafe=reason)


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    kind: str  # "param", "computed", "guard", "insert", "delete"
    text: str = ""
    number: int = 0


def _render(sql: str, edits: Sequence[_Edit], lo: int = 0, hi: int | None = None) -> str:
    """The text of sql[lo:hi] with the edits inside it applied; a guard renders what it wraps."""
    hi = len(sql) if hi is None else hi
    inside = sorted((e for e in edits if lo <= e.start and e.end <= hi),
                    key=lambda e: (e.start, -(e.end - e.start)))
    out: list[str] = []
    pos = lo
    for edit in inside:
        if edit.start < pos:
            continue  # inside a span already rendered (a guard renders its own content)
        out.append(sql[pos:edit.start])
        if edit.kind == "guard":
            inner = _render(sql, [e for e in edits if e is not edit], edit.start, edit.end)
            out.append(f"CASE WHEN lower(({inner})) IN ('now', 'subsec', 'subsecond') "
                       f"THEN ?{edit.number} ELSE ({inner}) END")
        else:
            out.append(edit.text)
        pos = edit.end
    out.append(sql[pos:hi])
    return "".join(out)


@dataclass
class _Actions:
    """What SQLite's authorizer reports while preparing the logged statement."""

    functions: list[tuple[str, str | None]] = field(default_factory=list)  # (name, trigger or view)
    written: set[str] = field(default_factory=set)
    trigger_inserts: set[str] = field(default_factory=set)
    trigger_writers: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)  # triggers and views the statement runs
    reads: list[tuple[str, str, str | None]] = field(default_factory=list)  # (table, column, db)
    bindings: int = 0


_WRITE_CODES = {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE}


def _authorize(conn: apsw.Connection, sql: str) -> _Actions:
    found = _Actions()
    traced: dict[str, int] = {}

    def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
        if trigger is not None:
            found.owners.add(str(trigger).lower())
        if code == apsw.SQLITE_FUNCTION and isinstance(arg2, str):
            found.functions.append((arg2.lower(), trigger))
        elif code in _WRITE_CODES and isinstance(arg1, str):
            found.written.add(arg1.lower())
            if trigger is not None:
                found.trigger_writers.add(str(trigger).lower())
                if code == apsw.SQLITE_INSERT:
                    found.trigger_inserts.add(arg1.lower())
        elif code == apsw.SQLITE_READ and isinstance(arg1, str):
            found.reads.append((arg1.lower(), str(arg2 or ""), dbname))
        return apsw.SQLITE_OK

    def tracer(cursor: apsw.Cursor, first: str, bindings: Any) -> bool:
        traced["count"] = cursor.bindings_count
        return False

    cursor = conn.cursor()
    cursor.exec_trace = tracer
    previous = conn.authorizer
    conn.authorizer = authorizer
    try:
        cursor.execute(sql, getattr(apsw, "_null_bindings", None), can_cache=False)
    except apsw.ExecTraceAbort:
        pass
    finally:
        conn.authorizer = previous
        cursor.exec_trace = None
    found.bindings = traced.get("count", 0)
    return found


class _Unsafe(Exception):
    pass


def _resolve(ref: ColumnRef, sources: Sequence[tuple[str, str | None]], schema: Schema) -> int | None:
    """Index of the source a column belongs to, or None."""
    if ref.qualifier is not None:
        for i, (name, alias) in enumerate(sources):
            if ref.qualifier.lower() in ((alias or "").lower(), name.lower()):
                return i
        return None
    owners = []
    for i, (name, _alias) in enumerate(sources):
        info = schema.table(name)
        if info is not None and (ref.name.lower() in info.column_set()
                                 or (info.rowid_table and ref.name.lower() in _ROWID_ALIASES)):
            owners.append(i)
    return owners[0] if len(owners) == 1 else None


def _covers(cols: set[str], keys: Sequence[frozenset[str]]) -> bool:
    return any(key <= cols for key in keys)


def _ordered(facts: QueryFacts, schema: Schema) -> bool:
    """The query's rows come in one order on every node."""
    if facts.table_free or facts.single_row:
        return True
    if facts.sources and facts.order is not None:
        per_source: list[set[str]] = [set() for _ in facts.sources]
        for ref in facts.order:
            i = _resolve(ref, facts.sources, schema)
            if i is not None:
                per_source[i].add(ref.name.lower())
        if all(
            (info := schema.table(name)) is not None and info.kind == "table"
            and _covers(per_source[i], info.order_keys)
            for i, (name, _alias) in enumerate(facts.sources)
        ):
            return True
    if facts.pin_ok and facts.sources and len(facts.sources) == 1:
        return _pinned(facts.sources[0], facts.eq, schema)
    return False


def _pinned(source: tuple[str, str | None], eq: Sequence[tuple[ColumnRef, tuple[ColumnRef, ...]]],
            schema: Schema) -> bool:
    """WHERE selects at most one row of `source`: equality with values that are not its columns
    on every column of a unique key."""
    info = schema.table(source[0])
    if info is None or info.kind != "table":
        return False
    pinned: set[str] = set()
    for col, others in eq:
        if _resolve(col, [source], schema) != 0:
            continue
        if any(_resolve(other, [source], schema) == 0 for other in others):
            continue
        pinned.add(col.name.lower())
    return _covers(pinned, info.keys)


def build_plan(conn: apsw.Connection, schema: Schema, stmt: StatementInfo, sql: str,
               app_functions: frozenset[str]) -> StatementPlan:
    """The plan of one statement text; reasons to refuse it come back in `unsafe`."""
    text = determinism.analyze(sql)
    if text.unsafe:
        return StatementPlan.refused(text.unsafe)
    try:
        return _build(conn, schema, stmt, text, app_functions)
    except _Unsafe as exc:
        return StatementPlan.refused(str(exc))


def _build(conn: apsw.Connection, schema: Schema, stmt: StatementInfo, text: TextPlan,
           app_functions: frozenset[str]) -> StatementPlan:
    sql = text.sql
    # SQLite's numbering of the parameters must be ours, or the rewritten text would bind wrongly.
    names = tuple(stmt.param_names)
    if text.param_count != stmt.param_count or len(names) != stmt.param_count or any(
            names[p.index - 1] != p.name for p in text.params):
        raise _Unsafe("its parameters could not be matched with SQLite's numbering of them")
    info = schema.table(text.target) if text.target else None
    if text.target and info is None:
        # No such table: let SQLite report it; nothing runs, nothing is logged.
        return StatementPlan(leader_sql=sql, log_sql=sql)

    pinned = False
    if text.kind in ("update", "delete") and text.target:
        pinned = _pinned((text.target, text.target_alias), text.pin_eq, schema)
    if text.kind == "update" and text.conflict in ("IGNORE", "REPLACE") and not pinned:
        raise _Unsafe(f"UPDATE OR {text.conflict} of several rows resolves conflicts in the order rows "
                      "are visited, which no ORDER BY fixes")
    for site in text.computed:
        if site.needs_pinned and not pinned:
            raise _Unsafe(f"{site.what} in UPDATE ... SET is evaluated once per row, and this UPDATE "
                          "is not limited to one row by equality on a unique key")
    # Row order: LIMIT, scalar subqueries, order-sensitive functions, rowids of INSERT ... SELECT.
    for need in text.needs:
        if need.kind == "insert_select":
            applies = (info is not None and info.rowid_table) or text.conflict in ("IGNORE", "REPLACE") \
                or text.upsert
            if not applies:
                continue
        if not _ordered(need.facts, schema):
            raise _Unsafe(_order_message(need, info))

    # The logged statement's edits; parameter numbers K go beyond the statement's own.
    next_number = text.param_count
    edits: list[_Edit] = []
    exprs: list[str] = []

    def new_param(expr: str) -> int:
        nonlocal next_number
        next_number += 1
        exprs.append(expr)
        return next_number

    param_edits = [_Edit(p.start, p.end, "param", f"?{p.index}") for p in text.params]
    for site in text.computed:
        expr = site.literal if site.literal is not None else _render(sql, param_edits, site.start, site.end)
        edits.append(_Edit(site.start, site.end, "computed", f"?{new_param(expr)}"))
    if text.guards:
        now = new_param("strftime('%Y-%m-%d %H:%M:%f', 'now')")
        edits.extend(_Edit(g.start, g.end, "guard", number=now) for g in text.guards)
    if text.kind == "insert" and info is not None and info.kind == "table":
        edits.extend(_default_edits(text, info, new_param, app_functions))

    leader_convert = bool(edits)
    returning_params = text.returning is not None and any(
        text.returning[0] <= p.start < text.returning[1] for p in text.params)
    log_convert = leader_convert or returning_params
    all_edits = edits + (param_edits if log_convert else [])
    leader_sql = _render(sql, all_edits) if leader_convert else sql
    log_edits = list(all_edits)
    if text.returning is not None:
        log_edits.append(_Edit(text.returning[0], text.returning[1], "delete"))
    log_sql = _render(sql, log_edits) if log_edits else sql
    eval_sql = None
    if exprs:
        bind_all = f", ?{text.param_count}" if text.param_count else ""
        eval_sql = "SELECT " + ", ".join(exprs) + bind_all

    try:
        actions = _authorize(conn, log_sql)
    except apsw.Error as exc:
        try:
            _authorize(conn, sql)
        except apsw.Error:
            # SQLite cannot prepare it (a missing column...): it fails on the leader, unlogged.
            return StatementPlan(leader_sql=sql, log_sql=sql)
        raise _Unsafe(f"its rewritten form could not be prepared ({exc})") from None
    _check_actions(actions, schema, info, text, pinned, app_functions)

    rowid_checks: list[str] = []
    post_checks: list[tuple[str, bool]] = []
    if text.kind == "insert" and info is not None and info.rowid_table:
        rowid_checks.append(info.name)
        given = {c.lower() for c in text.insert_columns} if text.insert_columns is not None else None
        if given is None and text.source != "default" or (
                given is not None and given & ({*(_ROWID_ALIASES), (info.ipk or "").lower()} - {""})):
            post_checks.append((info.name, False))
    for table in sorted(actions.trigger_inserts):
        target = schema.table(table)
        if target is not None and target.rowid_table and target.name not in rowid_checks:
            rowid_checks.append(target.name)
            post_checks.append((target.name, True))
    triggers = schema.triggers()
    written_infos = [schema.table(t) for t in actions.written]
    fk_relevant = bool(actions.written & schema.fk_parents())
    return StatementPlan(
        leader_sql=leader_sql,
        log_sql=log_sql,
        convert=leader_convert,
        log_convert=log_convert,
        param_count=text.param_count,
        param_names=names,
        referenced=frozenset(p.index for p in text.params),
        log_count=actions.bindings,
        eval_sql=eval_sql,
        modifier_params=text.modifier_params,
        rowid_checks=tuple(rowid_checks),
        post_checks=tuple(post_checks),
        fk_relevant=fk_relevant,
        order_relevant=bool(actions.reads) or bool(set(triggers.values()) & actions.written),
        like_relevant=any(name == "like" for name, _ in actions.functions),
        check_relevant=any(i is not None and i.has_check for i in written_infos),
    )


def _order_message(need: determinism.OrderNeed, info: TableInfo | None) -> str:
    if need.kind == "limit":
        return (f"{need.what} selects rows in an order that is not fully determined (ORDER BY must cover "
                "a unique key whose columns are NOT NULL)")
    if need.kind == "scalar":
        return (f"{need.what}: SQLite uses its first row, and which row comes first is not determined "
                "(select one row by a unique key, aggregate, or ORDER BY a unique key)")
    if need.kind in ("window", "aggregate"):
        what = need.what.replace("groupconcat()", "group_concat()")
        return f"{what}: the result depends on the order rows are visited"
    if need.kind == "ctas":
        return ("CREATE TABLE ... AS SELECT assigns rowids in the order the SELECT returns rows, which is "
                "not fixed (ORDER BY a unique key of every table it reads)")
    target = info.name if info is not None else "the table"
    return (f"INSERT ... SELECT into {target}: the rows it assigns rowids to (or resolves conflicts for) "
            "come in an order that is not fixed (ORDER BY a unique key of every table it reads)")


def _default_edits(text: TextPlan, info: TableInfo, new_param: Any,
                   app_functions: frozenset[str]) -> list[_Edit]:
    """Nondeterministic DEFAULTs of columns the INSERT omits, made explicit."""
    if text.source == "default":
        given: set[str] = set()
    elif text.insert_columns is None:
        return []  # every column is given
    else:
        given = {c.lower() for c in text.insert_columns}
        if info.ipk is not None and given & set(_ROWID_ALIASES):
            given.add(info.ipk.lower())
    omitted = [(col, dflt, kind) for col, dflt, kind in info.defaults if col.lower() not in given]
    if not omitted:
        return []
    builtins = builtin_function_names()
    for col, dflt, kind in omitted:
        foreign = (kind.functions - builtins) | (kind.functions & app_functions)
        if kind.kind == "unsafe" or foreign:
            why = kind.reason or f"it calls {', '.join(sorted(foreign))}(), which followers do not have"
            raise _Unsafe(f"column {col!r} of {info.name!r} has DEFAULT {dflt}: {why}")
    edits: list[_Edit] = []
    names = ", ".join(quote_identifier(col) for col, _d, _k in omitted)
    if text.source == "default":
        assert text.default_values is not None
        values = ", ".join(f"?{new_param(dflt)}" for _c, dflt, _k in omitted)
        edits.append(_Edit(*text.default_values, "insert", f"({names}) VALUES ({values})"))
        return edits
    assert text.column_list_end is not None
    edits.append(_Edit(text.column_list_end, text.column_list_end, "insert", ", " + names))
    if text.source == "values":
        shared = {col: new_param(dflt) for col, dflt, kind in omitted if kind.kind != "random"}
        for end in text.values_row_ends:
            numbers = [shared[col] if col in shared else new_param(dflt) for col, dflt, _k in omitted]
            edits.append(_Edit(end, end, "insert", "".join(f", ?{n}" for n in numbers)))
        return edits
    # INSERT ... SELECT: a value per statement can be appended to each arm's result columns.
    random_cols = [col for col, _d, kind in omitted if kind.kind == "random"]
    if random_cols:
        raise _Unsafe(f"INSERT ... SELECT omits column {random_cols[0]!r} of {info.name!r}, whose DEFAULT "
                      "is random per row; name the column and give it a value")
    if text.arm_ends is None:
        raise _Unsafe(f"INSERT ... SELECT omits columns of {info.name!r} with nondeterministic DEFAULTs, and "
                      "their values cannot be added to this SELECT; name the columns and give them values")
    numbers = [new_param(dflt) for _c, dflt, _k in omitted]
    for end in text.arm_ends:
        edits.append(_Edit(end, end, "insert", "".join(f", ?{n}" for n in numbers)))
    return edits


def _check_actions(actions: _Actions, schema: Schema, info: TableInfo | None, text: TextPlan,
                   pinned: bool, app_functions: frozenset[str]) -> None:
    """What the prepared statement does beyond its text: triggers, views, defaults, reads."""
    builtins = builtin_function_names()
    triggers = schema.triggers()
    nondeterministic = determinism.RANDOM_FUNCS | determinism.TIME_FUNCS | {
        "current_timestamp", "current_date", "current_time"}
    for name, owner in actions.functions:
        if name in app_functions or name not in builtins:
            where = f" (in {_owner(owner, triggers)})" if owner else ""
            raise _Unsafe(f"it calls {name}(){where}, an application-defined function that followers "
                          "do not have")
        if name in determinism.ALWAYS_UNSAFE:
            where = f" in {_owner(owner, triggers)}" if owner else ""
            raise _Unsafe(f"{name}(){where}: {determinism.ALWAYS_UNSAFE[name]}")
        if owner is not None and name in nondeterministic:
            raise _Unsafe(f"it runs {_owner(owner, triggers)}, which calls {name}(): the values it computes "
                          "would differ on each node")
        # Top-level random() and the clock were rewritten in the text, and the DEFAULTs of omitted
        # columns made explicit; SQLite also reports DEFAULTs an UPDATE never evaluates.
    for table, column, db in actions.reads:
        if db == "temp":
            raise _Unsafe(f"it reads the TEMP table {table!r}, which exists on the leader connection only")
        if table in _PHYSICAL_TABLES:
            raise _Unsafe(f"it reads {table}, the layout of this node's file")
        if column.upper() == "ROWID":
            read = schema.table(table)
            if read is not None and read.rowid_table and read.has_pk and read.ipk is None:
                raise _Unsafe(f"it reads the hidden rowid of {table!r}, whose PRIMARY KEY is not an INTEGER "
                              "PRIMARY KEY: VACUUM renumbers such rowids on the leader alone")
    for owner in actions.owners:
        if owner in triggers and schema.raises_fail(owner):
            raise _Unsafe(f"trigger {owner!r} uses RAISE(FAIL), which keeps the rows a failing statement "
                          "changed before it failed; the log only holds statements that succeeded")
    for trigger in actions.trigger_writers:
        if trigger not in triggers and not _is_view(schema, trigger):
            raise _Unsafe(f"the TEMP trigger {trigger!r} changes tables on the leader only")
    for table in actions.written:
        written = schema.table(table)
        if written is not None and written.conflict_fail:
            raise _Unsafe(f"table {written.name!r} declares ON CONFLICT FAIL, which keeps the rows a "
                          "failing statement changed before it failed")
    if actions.trigger_inserts:
        rowid_targets = [t for t in sorted(actions.trigger_inserts)
                         if (ti := schema.table(t)) is not None and ti.rowid_table]
        if rowid_targets and not _rows_in_order(text, pinned, schema):
            raise _Unsafe(f"it fires triggers that insert into {rowid_targets[0]!r} once per changed row, "
                          "and the rowids they get depend on the order rows are visited (limit the "
                          "statement to one row by a unique key)")


def _owner(name: str, triggers: dict[str, str]) -> str:
    return f"trigger {name!r}" if name.lower() in triggers else f"view {name!r}"


def _is_view(schema: Schema, name: str) -> bool:
    info = schema.table(name)
    return info is not None and info.kind == "view"


def _rows_in_order(text: TextPlan, pinned: bool, schema: Schema) -> bool:
    if text.kind == "insert":
        if text.source in ("values", "default"):
            return True
        return text.source_facts is not None and _ordered(text.source_facts, schema)
    if text.kind in ("update", "delete"):
        return pinned
    return True


# -- per connection ---------------------------------------------------------------------------


class _ConnState:
    """Plans and schema facts of one connection at one schema version."""

    def __init__(self, conn: apsw.Connection, version: int):
        self.version = version
        self.schema = Schema(conn)
        self.plans: dict[tuple[str, int, int], StatementPlan] = {}
        self.has_triggers: bool | None = None


_STATES: weakref.WeakKeyDictionary[apsw.Connection, _ConnState] = weakref.WeakKeyDictionary()
_PLAN_LIMIT = 2048


def _is_create_table_as(stmt: StatementInfo, sql: str) -> bool:
    return stmt.kind == "ddl" and bool(stmt.tables_created) and determinism.is_create_as(sql)


@dataclass
class _Pending:
    sql: str
    flags: int
    params: Any
    post_checks: tuple[tuple[str, bool], ...] = ()
    before: dict[str, int | None] = field(default_factory=dict)


class StatementCapture(Capture):
    """Collects one transaction's statements, made deterministic before the leader runs them."""

    def __init__(self, conn: apsw.Connection, options: dict[str, Any]):
        super().__init__(conn, options)
        self._naive = bool(options.get("no_rewrite", False))
        # ("stmt", sql, flags, params) or ("rows", row payload), in execution order
        self._items: list[tuple[Any, ...]] = []
        self._marks: list[tuple[str, int]] = []
        self._errors: list[tuple[int, str]] = []  # refusals found after a statement ran
        self._pending: _Pending | None = None
        self._shared: _ConnState | None = None
        self._local: _ConnState | None = None  # after this transaction changed the schema

    # -- the per-connection caches ------------------------------------------------------------

    def _version(self) -> int:
        return int(_scalar(self.conn, "PRAGMA main.schema_version"))

    def _state(self) -> _ConnState:
        # A schema version reached inside a transaction may come round again with another schema
        # once it rolls back: after DDL here, plans live in a cache of this transaction only.
        if self._local is not None:
            version = self._version()
            if self._local.version != version:
                self._local = _ConnState(self.conn, version)
            return self._local
        if self._shared is None:
            version = self._version()
            state = _STATES.get(self.conn)
            if state is None or state.version != version:
                state = _STATES[self.conn] = _ConnState(self.conn, version)
            self._shared = state
        return self._shared

    def _plan(self, state: _ConnState, stmt: StatementInfo, sql: str, fk: int, rt: int) -> StatementPlan:
        key = (sql, fk, rt)
        plan = state.plans.get(key)
        if plan is None:
            # Read for every new plan: the application may register functions at any time.
            plan = build_plan(self.conn, state.schema, stmt, sql, application_functions(self.conn))
            if len(state.plans) >= _PLAN_LIMIT:
                state.plans.clear()
            state.plans[key] = plan
        return plan

    # -- capture ------------------------------------------------------------------------------

    def prepare(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        self._pending = None
        conn = self.conn
        if self._naive:
            # No rewriting and no checks, but the connection's settings still travel: the naive
            # mode shows what nondeterminism does, not what a forgotten PRAGMA does.
            flags = FLAG_FOREIGN_KEYS if conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1) else 0
            if _scalar(conn, "PRAGMA recursive_triggers"):
                flags |= FLAG_RECURSIVE_TRIGGERS
            self._pending = _Pending(sql, flags, params)
            return sql, params
        if stmt.kind != "dml" and not _is_create_table_as(stmt, sql):
            # Schema changes and replicated PRAGMAs are deterministic as written; with
            # foreign_keys on, DROP TABLE deletes rows first and may cascade.
            fk = conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1)
            self._pending = _Pending(sql, FLAG_FOREIGN_KEYS if fk else 0, params)
            return sql, params
        state = self._state()
        fk = conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1)
        if state.has_triggers is None:
            state.has_triggers = bool(state.schema.triggers())
        rt = 0
        if state.has_triggers:
            rt = int(_scalar(conn, "PRAGMA recursive_triggers"))
        plan = self._plan(state, stmt, sql, fk, rt)
        if plan.unsafe:
            raise UnsafeStatementError(unsafe_message(plan.unsafe))
        flags = (FLAG_FOREIGN_KEYS if fk and plan.fk_relevant else 0) | (
            FLAG_RECURSIVE_TRIGGERS if rt else 0)
        if plan.order_relevant and conn.config(apsw.SQLITE_DBCONFIG_REVERSE_SCANORDER, -1):
            flags |= FLAG_REVERSE_ORDER
        if plan.like_relevant and not _scalar(conn, "SELECT 'a' LIKE 'A'"):
            flags |= FLAG_CASE_SENSITIVE_LIKE
        if plan.check_relevant and _scalar(conn, "PRAGMA ignore_check_constraints"):
            flags |= FLAG_IGNORE_CHECK
        before: dict[str, int | None] = {}
        for table in plan.rowid_checks:
            top = _scalar(conn, f"SELECT max(rowid) FROM main.{_quoted(table)}")
            if isinstance(top, int) and top >= ROWID_DANGER:
                raise UnsafeStatementError(unsafe_message(
                    f"table {table!r} holds rowid {top}, near the largest; SQLite then picks new rowids "
                    "at random"))
            before[table] = top
        run_sql, run_params, log_params = plan.leader_sql, params, params
        if plan.log_convert:
            base = self._as_list(plan, params)
            for index in plan.modifier_params:
                value = base[index - 1]
                if isinstance(value, str) and value.strip().lower() in determinism.TZ_MODIFIERS:
                    raise UnsafeStatementError(unsafe_message(
                        f"modifier {value!r} applied to a column value depends on each node's time zone"))
            values = base
            if plan.eval_sql is not None:
                try:
                    computed = list(_rows(conn, plan.eval_sql, base)[0])
                except apsw.Error as exc:
                    raise UnsafeStatementError(
                        f"the values that make this statement deterministic could not be computed: {exc}"
                    ) from exc
                values = base + list(computed[:len(computed) - (1 if plan.param_count else 0)])
            if plan.convert:
                run_params = values
            log_params = values[:plan.log_count]
        self._pending = _Pending(plan.log_sql, flags, log_params, plan.post_checks, before)
        return run_sql, run_params

    def _as_list(self, plan: StatementPlan, params: Any) -> list[Any]:
        if isinstance(params, dict):
            out: list[Any] = []
            for index in range(1, plan.param_count + 1):
                if index not in plan.referenced:
                    out.append(None)
                    continue
                name = plan.param_names[index - 1]
                if name is None:
                    raise UnsafeStatementError(
                        f"Binding {index} has no name, but you supplied a dict (which only has names).")
                if name not in params:
                    raise UnsafeStatementError(f"You did not supply a value for binding parameter :{name}.")
                out.append(params[name])
            return out
        values = list(params)
        if len(values) != plan.param_count:
            raise UnsafeStatementError(
                f"Incorrect number of bindings supplied. The current statement uses {plan.param_count}, "
                f"and there are {len(values)} supplied.")
        return values

    def executed(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        for table, by_trigger in pending.post_checks:
            top = _scalar(self.conn, f"SELECT max(rowid) FROM main.{_quoted(table)}")
            # Taking the largest rowid is itself exact; an automatic rowid after it in the same
            # statement is not, and only a statement that inserted several rows can have one.
            several = by_trigger or self.conn.changes() > 1
            if top == MAX_ROWID and pending.before.get(table) != MAX_ROWID and several:
                self._errors.append((len(self._items), (
                    f"the statement gave table {table!r} the largest rowid ({MAX_ROWID}); SQLite picks "
                    "any later automatic rowid at random, which a statement-based log cannot reproduce, "
                    "so the transaction was not committed")))
        self._items.append(("stmt", pending.sql, pending.flags, pending.params))
        if stmt.kind == "ddl" or stmt.replicated_pragma:
            self._schema_changed()

    def _schema_changed(self) -> None:
        """This transaction changed the schema: plans from now on are cached for it alone."""
        self._local = _ConnState(self.conn, -1)

    def savepoint(self, name: str) -> None:
        self._marks.append((name.lower(), len(self._items)))

    def release(self, name: str) -> None:
        self._pop_to(name, keep=False)

    def rollback_to(self, name: str) -> None:
        mark = self._pop_to(name, keep=True)
        if mark is not None:
            del self._items[mark:]
            self._errors = [(at, msg) for at, msg in self._errors if at < mark]
        if self._local is not None:
            self._schema_changed()  # DDL undone: the schema the plans were made for may be gone

    def _pop_to(self, name: str, keep: bool) -> int | None:
        mark = pop_savepoint(self._marks, name, keep)
        return None if mark is None else mark[1]

    def finish(self) -> bytes | None:
        if self._errors:
            raise CaptureError(self._errors[0][1])
        if not self._items:
            return None
        return encode(self._items)

    def close(self) -> None:
        self._items.clear()
        self._pending = None


# -- payloads -------------------------------------------------------------------------------------


def _pack_params(params: Any, out: bytearray) -> None:
    if params is None:
        out += b"N"
    elif isinstance(params, dict):
        names = list(params)
        out += b"D"
        codec.pack_compact_values(names, out)
        codec.pack_compact_values([params[n] for n in names], out)
    else:
        out += b"L"
        codec.pack_compact_values(list(params), out)


def _unpack_params(data: bytes, pos: int) -> tuple[Any, int]:
    tag = data[pos:pos + 1]
    pos += 1
    if tag == b"N":
        return None, pos
    if tag == b"L":
        return codec.unpack_compact_values(data, pos)
    if tag == b"D":
        names, pos = codec.unpack_compact_values(data, pos)
        values, pos = codec.unpack_compact_values(data, pos)
        return dict(zip(names, values, strict=False)), pos
    raise DecodeError(f"unknown parameter tag {tag!r}")


def encode_item_size(item: tuple[Any, ...], text_known: bool) -> int:
    """Bytes a statement record adds to a payload (its text too unless the entry has it)."""
    _kind, sql, flags, params = item
    out = bytearray()
    codec.pack_varint(0, out)
    codec.pack_varint(flags, out)
    _pack_params(params, out)
    return len(out) + (0 if text_known else len(sql.encode("utf-8")) + 2)


def encode(items: Sequence[tuple[Any, ...]]) -> bytes:
    """The payload of statement records and row payloads, in order; each SQL text stored once."""
    texts: dict[str, int] = {}
    chunks: list[tuple[bytes, bytes]] = []
    run = bytearray()
    for item in items:
        if item[0] == "stmt":
            _kind, sql, flags, params = item
            index = texts.setdefault(sql, len(texts))
            codec.pack_varint(index, run)
            codec.pack_varint(flags, run)
            _pack_params(params, run)
        else:
            if run:
                chunks.append((TAG_STATEMENTS, bytes(run)))
                run = bytearray()
            chunks.append((TAG_ROWS, item[1]))
    if run:
        chunks.append((TAG_STATEMENTS, bytes(run)))
    if texts:
        table = bytearray()
        codec.pack_compact_values(list(texts), table)
        chunks.insert(0, (TAG_TEXTS, bytes(table)))
    return codec.pack_chunks(chunks)


_CHUNK_LENGTH = struct.Struct("<I")


def iter_payload(payload: bytes) -> Iterator[tuple[str, Any]]:
    """("stmt", (sql, flags, params)) and ("rows", row payload) items of a payload, in order."""
    return iter(payload_items(payload))


def payload_items(payload: bytes) -> list[tuple[str, Any]]:
    """The items of a payload as a list (the chunk framing of codec.iter_chunks, parsed inline:
    this runs for every entry a follower applies)."""
    if not payload or payload[0] != codec.PAYLOAD_VERSION:
        raise DecodeError(f"unknown payload version {payload[:1]!r}")
    texts: list[Any] = []
    out: list[tuple[str, Any]] = []
    pos, end = 1, len(payload)
    unpack_varint = codec.unpack_varint
    while pos < end:
        if pos + 5 > end:
            raise DecodeError("truncated chunk header")
        tag = payload[pos:pos + 1]
        (length,) = _CHUNK_LENGTH.unpack_from(payload, pos + 1)
        pos += 5
        stop = pos + length
        if stop > end:
            raise DecodeError("truncated chunk")
        data = payload[pos:stop]
        pos = stop
        if tag == TAG_TEXTS:
            texts, _ = codec.unpack_compact_values(data)
        elif tag == TAG_STATEMENTS:
            at = 0
            size = len(data)
            try:
                while at < size:
                    index, at = unpack_varint(data, at)
                    flags, at = unpack_varint(data, at)
                    params, at = _unpack_params(data, at)
                    out.append(("stmt", (texts[index], flags, params)))
            except IndexError:
                raise DecodeError("statement refers to an unknown SQL text") from None
            if at != size:
                raise DecodeError("truncated statement record")
        elif tag == TAG_ROWS:
            out.append(("rows", data))
        else:
            raise DecodeError(f"unknown chunk tag {tag!r}")
    return out


class _Settings:
    """The follower connection's settings while an entry is applied; put back as found at the end."""

    def __init__(self, conn: apsw.Connection):
        self.conn = conn
        self.found: dict[int, int] = {}
        self.current: dict[int, int] = {}
        self.found_triggers: int | None = None

    def _read(self, flag: int) -> int:
        conn = self.conn
        if flag == FLAG_FOREIGN_KEYS:
            return conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1)
        if flag == FLAG_REVERSE_ORDER:
            return conn.config(apsw.SQLITE_DBCONFIG_REVERSE_SCANORDER, -1)
        if flag == FLAG_CASE_SENSITIVE_LIKE:
            return 0 if _scalar(conn, "SELECT 'a' LIKE 'A'") else 1
        return int(_scalar(conn, f"PRAGMA {_FLAG_NAMES[flag]}"))

    def _write(self, flag: int, value: int) -> None:
        conn = self.conn
        if flag == FLAG_FOREIGN_KEYS:
            # PRAGMA foreign_keys is a no-op inside a transaction; the connection flag is not.
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, value)
        elif flag == FLAG_REVERSE_ORDER:
            conn.config(apsw.SQLITE_DBCONFIG_REVERSE_SCANORDER, value)
        else:
            conn.execute(f"PRAGMA {_FLAG_NAMES[flag]}={value}")

    def apply(self, flags: int) -> None:
        for flag in _FLAG_NAMES:
            want = 1 if flags & flag else 0
            have = self.current.get(flag)
            if have is None:
                if not want and flag not in self.found:
                    continue  # never touched and not wanted: whatever the connection has
                have = self.found[flag] = self._read(flag)
                self.current[flag] = have
            if want != have:
                self._write(flag, want)
                self.current[flag] = want

    def defaults(self) -> None:
        """As found: row images are applied with the follower's own settings."""
        for flag, value in self.found.items():
            if self.current.get(flag) != value:
                self._write(flag, value)
                self.current[flag] = value

    def triggers(self, on: bool) -> None:
        state = self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, -1)
        if self.found_triggers is None:
            self.found_triggers = state
        if bool(state) != on:
            self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1 if on else 0)

    def restore(self) -> None:
        self.defaults()
        if self.found_triggers is not None:
            if self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, -1) != self.found_triggers:
                self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, self.found_triggers)


def apply_payload(conn: apsw.Connection, payload: bytes) -> None:
    """Replay a statement (or mixed) payload on a follower: statements with triggers on and the
    leader's settings, row images with triggers off. The connection is left as it was found."""
    apply_payloads(conn, (payload,))


def apply_payloads(conn: apsw.Connection, payloads: Iterable[bytes]) -> None:
    """Replay consecutive payloads in order, switching settings only when they change."""
    settings = _Settings(conn)
    triggers_on: bool | None = None
    execute = conn.execute
    try:
        for payload in payloads:
            for kind, item in iter_payload(payload):
                if kind == "stmt":
                    sql, flags, params = item
                    if triggers_on is not True:
                        settings.triggers(True)
                        triggers_on = True
                    if flags or settings.current:
                        settings.apply(flags)
                    try:
                        for _ in execute(sql, params):
                            pass
                    except apsw.Error as exc:
                        raise ApplyError(f"{sql!r} failed: {exc}", reason=str(exc)) from exc
                else:
                    settings.defaults()
                    settings.triggers(False)
                    triggers_on = False
                    row.apply_chunks(conn, item)
    finally:
        settings.restore()


def decode_payload(payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
    events: list[Event] = []
    for kind, item in iter_payload(payload):
        if kind == "stmt":
            sql, flags, params = item
            if flags:
                settings = ", ".join(f"{name}=1" for flag, name in _FLAG_NAMES.items() if flags & flag)
                sql = f"/* {settings} */ {sql}"
            events.append(Event("SQL", sql=sql, params=params))
        else:
            events.extend(row.decode_chunks(item, schema))
    return events


class StatementPayloadFormat(LogFormat):
    """Formats whose entries are statement payloads (statement, mixed): replayed with the
    follower's own triggers firing."""

    follower_triggers = True

    def apply(self, conn: apsw.Connection, payload: bytes) -> None:
        apply_payload(conn, payload)

    def apply_many(self, conn: apsw.Connection, payloads: Sequence[bytes]) -> None:
        apply_payloads(conn, payloads)

    def decode(self, payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
        return decode_payload(payload, schema)


class StatementFormat(StatementPayloadFormat):
    """Statement-based log with deterministic rewriting; `no_rewrite=True` for the naive mode."""

    not_invertible_reason = "a statement does not carry the rows it changed"

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options=dict(options or {}))
        self.name = "statement"
        value = self.options.get("no_rewrite", False)
        if not isinstance(value, bool):
            raise ValueError(f"no_rewrite must be true or false, not {value!r}")

    def capture(self, conn: apsw.Connection) -> Capture:
        return StatementCapture(conn, self.options)


__all__ = [
    "StatementCapture",
    "StatementFormat",
    "StatementPayloadFormat",
    "apply_payload",
    "apply_payloads",
    "decode_payload",
    "encode",
    "encode_item_size",
]
