"""Why the statement format refuses a statement: the rules a plan is checked against.

A statement is refused when its parameters cannot be matched with SQLite's numbering, when it
needs rows in an order the schema does not fix (LIMIT, scalar subqueries, order-sensitive
functions, rowids handed out by INSERT ... SELECT), or when what SQLite's authorizer reports while
preparing it shows it depends on the node (application-defined or node-dependent functions, reads
of anything that is not replicated data of the main database, TEMP triggers, nondeterministic
triggers, RAISE(FAIL), ON CONFLICT FAIL, hidden rowids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from . import determinism
from .base import INTERNAL_PREFIX, StatementInfo
from .determinism import ColumnRef, QueryFacts, TextPlan
from .statement_schema import (
    ROWID_ALIASES,
    Schema,
    TableInfo,
    application_collations,
    builtin_function_names,
    fetch_rows,
    fetch_scalar,
)

_PHYSICAL_TABLES = frozenset({"dbstat", "sqlite_dbpage"})
_SUGGEST = "use --format mixed (row images for such statements) or --format row"


def unsafe_message(reason: str) -> str:
    return f"statement-based replication cannot replay this statement exactly: {reason}; {_SUGGEST}"


class Unsafe(Exception):
    """Raised while a plan is made; becomes StatementPlan.unsafe."""


@dataclass
class Actions:
    """What SQLite's authorizer reports while preparing the logged statement."""

    functions: list[tuple[str, str | None]] = field(default_factory=list)  # (name, trigger or view)
    written: set[str] = field(default_factory=set)
    trigger_inserts: set[str] = field(default_factory=set)
    trigger_writers: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)  # triggers and views the statement runs
    # (table, column, database); database None: no database holds it (a CTE, a table-valued function)
    reads: list[tuple[str, str, str | None]] = field(default_factory=list)
    bindings: int = 0


_WRITE_CODES = {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE}


def authorize(conn: apsw.Connection, sql: str) -> Actions:
    found = Actions()
    traced: dict[str, int] = {}

    def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
        if trigger is not None and str(trigger).lower().startswith(INTERNAL_PREFIX):
            return apsw.SQLITE_OK  # replproxy's own triggers (the leader's guards): not the statement's doing
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
    # SQLite names the database of a read only when the text does, for a table read without
    # reading a column (`count(*)`, `EXISTS`): look the name up as SQLite did.
    if "sqlite_master" in found.written:  # CREATE TABLE ... AS SELECT updating its own schema row
        found.reads = [r for r in found.reads if r[:2] != ("sqlite_master", "ROWID")]
    where: dict[str, str | None] = {}
    for i, (table, column, db) in enumerate(found.reads):
        if db is None:
            if table not in where:
                where[table] = database_of(conn, table)
            found.reads[i] = (table, column, where[table])
    return found


def database_of(conn: apsw.Connection, table: str) -> str | None:
    """The database an unqualified name is found in: temp first, then main, then attached ones, as
    SQLite searches; None when none holds it."""
    if table in ("sqlite_temp_master", "sqlite_temp_schema"):
        return "temp"
    if table in ("sqlite_master", "sqlite_schema"):
        return "main"
    names = [str(r[1]) for r in fetch_rows(conn, "PRAGMA database_list")]
    for db in sorted(names, key=lambda n: {"temp": 0, "main": 1}.get(n, 2)):
        quoted = '"' + db.replace('"', '""') + '"'
        if fetch_scalar(conn, f"SELECT 1 FROM {quoted}.sqlite_master WHERE type IN ('table', 'view') "
                        "AND name = ? COLLATE NOCASE", (table,)):
            return db
    return None


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
                                 or (info.rowid_table and ref.name.lower() in ROWID_ALIASES)):
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


def check_parameters(stmt: StatementInfo, text: TextPlan) -> None:
    # SQLite's numbering of the parameters must be ours, or the rewritten text would bind wrongly.
    names = tuple(stmt.param_names)
    if text.param_count != stmt.param_count or len(names) != stmt.param_count or any(
            names[p.index - 1] != p.name for p in text.params):
        raise Unsafe("its parameters could not be matched with SQLite's numbering of them")


def check_row_order(schema: Schema, text: TextPlan, info: TableInfo | None
                    ) -> tuple[bool, list[determinism.OrderNeed]]:
    """Refuse what depends on the order rows are visited in. Returns whether the UPDATE or DELETE
    is pinned to one row (equality on a unique key), and the row orders that only number rows
    (rowids of INSERT ... SELECT, CREATE TABLE ... AS SELECT) and that the text does not fix: the
    plan may fix them (check_actions decides, once SQLite said what the statement reads)."""
    pinned = False
    if text.kind in ("update", "delete") and text.target:
        pinned = _pinned((text.target, text.target_alias), text.pin_eq, schema)
    if text.kind == "update" and text.conflict in ("IGNORE", "REPLACE") and not pinned:
        raise Unsafe(f"UPDATE OR {text.conflict} of several rows resolves conflicts in the order rows "
                     "are visited, which no ORDER BY fixes")
    for site in text.computed:
        if site.needs_pinned and not pinned:
            raise Unsafe(f"{site.what} in UPDATE ... SET is evaluated once per row, and this UPDATE "
                         "is not limited to one row by equality on a unique key")
    # Row order: LIMIT, scalar subqueries, order-sensitive functions, rowids of INSERT ... SELECT.
    numbering: list[determinism.OrderNeed] = []
    for need in text.needs:
        conflicts = False
        if need.kind == "insert_select":
            conflicts = text.conflict in ("IGNORE", "REPLACE") or text.upsert
            if not conflicts and not (info is not None and info.rowid_table):
                continue
        if not _ordered(need.facts, schema):
            if need.kind in ("insert_select", "ctas") and not conflicts:
                numbering.append(need)
                continue
            raise Unsafe(_order_message(need, info, conflicts))
    return pinned, numbering


def plan_fixes_order(actions: Actions, schema: Schema, text: TextPlan) -> bool:
    """The order SQLite visits rows in is fixed by the plan: the statement reads only tables and
    views of the main database (rowid or index order, sorted through temporary B-trees), its own
    CTEs and table-valued functions of SQLite that return rows in a fixed order (json_each...).
    A plan depends on the schema, the data and the statistics, the same on every node (the format
    assumes the same SQLite library); virtual tables order rows as their module does."""
    for table, _column, db in actions.reads:
        if db is None or (db == "main" and schema.table(table) is None):
            if table in text.ctes or table in determinism.ORDERED_TABLE_FUNCS:
                continue
            return False
        read = schema.table(table) if db == "main" else None
        if read is None or read.kind not in ("table", "view"):
            return False
    return True


def _order_message(need: determinism.OrderNeed, info: TableInfo | None, conflicts: bool = False) -> str:
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
        return ("CREATE TABLE ... AS SELECT assigns rowids in the order the SELECT returns rows, which "
                "neither its ORDER BY (a unique key of every table it reads) nor its plan fixes (it reads "
                "a virtual table)")
    target = info.name if info is not None else "the table"
    if conflicts:
        return (f"INSERT ... SELECT into {target}: the rows it resolves conflicts for come in an order that "
                "is not fixed (ORDER BY a unique key of every table it reads)")
    return (f"INSERT ... SELECT into {target}: the rows it assigns rowids to come in an order that neither "
            "its ORDER BY (a unique key of every table it reads) nor its plan fixes (it reads a virtual table)")


def check_actions(actions: Actions, schema: Schema, info: TableInfo | None, text: TextPlan,
                  pinned: bool, numbering: Sequence[determinism.OrderNeed], app_functions: frozenset[str]
                  ) -> bool:
    """What the prepared statement does beyond its text: triggers, views, defaults, reads. Returns
    whether its result relies on the order its plan visits rows in (see plan_fixes_order)."""
    builtins = builtin_function_names()
    triggers = schema.triggers()
    nondeterministic = determinism.RANDOM_FUNCS | determinism.TIME_FUNCS | {
        "current_timestamp", "current_date", "current_time"}
    for name, owner in actions.functions:
        # First: the proxy answers changes() and total_changes() itself, as application functions.
        if name in determinism.ALWAYS_UNSAFE:
            where = f" in {_owner(owner, triggers)}" if owner else ""
            raise Unsafe(f"{name}(){where}: {determinism.ALWAYS_UNSAFE[name]}")
        if name in app_functions or name not in builtins:
            where = f" (in {_owner(owner, triggers)})" if owner else ""
            raise Unsafe(f"it calls {name}(){where}, an application-defined function that followers "
                         "do not have")
        if owner is not None and name in nondeterministic:
            raise Unsafe(f"it runs {_owner(owner, triggers)}, which calls {name}(): the values it computes "
                         "would differ on each node")
        # Top-level random() and the clock were rewritten in the text, and the DEFAULTs of omitted
        # columns made explicit; SQLite also reports DEFAULTs an UPDATE never evaluates.
    for table, column, db in actions.reads:
        _check_read(table, db, text, schema)
        if column.upper() == "ROWID":
            read = schema.table(table)
            if read is not None and read.rowid_table and read.has_pk and read.ipk is None:
                raise Unsafe(f"it reads the hidden rowid of {table!r}, whose PRIMARY KEY is not an INTEGER "
                             "PRIMARY KEY: VACUUM renumbers such rowids on the leader alone")
    temp_triggers = schema.temp_triggers()
    for owner in sorted(actions.owners):
        if owner in temp_triggers:
            raise Unsafe(f"it fires the TEMP trigger {owner!r}, which exists on the leader connection only")
        if owner in triggers and schema.raises_fail(owner):
            raise Unsafe(f"trigger {owner!r} uses RAISE(FAIL), which keeps the rows a failing statement "
                         "changed before it failed; the log only holds statements that succeeded")
    for trigger in actions.trigger_writers:
        if trigger not in triggers and not _is_view(schema, trigger):
            raise Unsafe(f"the TEMP trigger {trigger!r} changes tables on the leader only")
    for table in actions.written:
        written = schema.table(table)
        if written is not None and written.conflict_fail:
            raise Unsafe(f"table {written.name!r} declares ON CONFLICT FAIL, which keeps the rows a "
                         "failing statement changed before it failed")
    by_plan = False
    if numbering:
        if not plan_fixes_order(actions, schema, text):
            raise Unsafe(_order_message(numbering[0], info))
        by_plan = True
    if actions.trigger_inserts:
        rowid_targets = [t for t in sorted(actions.trigger_inserts)
                         if (ti := schema.table(t)) is not None and ti.rowid_table]
        if rowid_targets and not _rows_in_order(text, pinned, schema):
            if not plan_fixes_order(actions, schema, text):
                raise Unsafe(f"it fires triggers that insert into {rowid_targets[0]!r} once per changed row, "
                             "and the rowids they get depend on the order rows are visited, which its plan "
                             "does not fix (it reads a virtual table)")
            by_plan = True
    return by_plan


def check_collations(conn: apsw.Connection, actions: Actions, text: TextPlan) -> None:
    """Refuse a collation the application registered on this connection (followers would stop on
    "no such collation sequence"), named in the statement or in the schema of what it touches. The
    authorizer does not report collations: their names are looked for among the words."""
    registered = application_collations(conn)
    if not registered:
        return
    names = sorted(actions.written | {t for t, _c, _d in actions.reads} | actions.owners)
    listed = ", ".join("?" * len(names)) or "NULL"
    texts = [text.sql] + [str(sql) for (sql,) in fetch_rows(
        conn, f"SELECT sql FROM main.sqlite_master WHERE sql IS NOT NULL AND (lower(name) IN ({listed}) "
        f"OR lower(tbl_name) IN ({listed}))", names * 2)]
    for sql in texts:
        for _type, word in determinism.table_tokens(sql):
            if word.lower() in registered:
                raise Unsafe(f"it uses the collation {word.lower()!r}, which the application registered on "
                             "this connection: followers do not have it")


def _check_read(table: str, db: str | None, text: TextPlan, schema: Schema) -> None:
    """A write may read replicated data only: the user's tables and views of the main database,
    its own CTEs and SQLite's table-valued functions of their arguments (json_each...)."""
    if db == "main" and table not in ("sqlite_master", "sqlite_schema") and schema.table(table) is None:
        db = None  # SQLite names main for the columns of an eponymous virtual table (pragma_...)
    if table in _PHYSICAL_TABLES:
        raise Unsafe(f"it reads {table}, the layout of this node's file")
    if db == "temp":
        raise Unsafe(f"it reads the TEMP table or view {table!r}, which exists on the leader connection only")
    if db is None:
        if table in text.ctes or table in determinism.ORDERED_TABLE_FUNCS:
            return
        raise Unsafe(f"it reads {table}, which reports the state of this connection or node, not "
                     "replicated data")
    if db != "main":
        raise Unsafe(f"it reads {table!r} of the attached database {db!r}, which is not replicated")
    if table.startswith(INTERNAL_PREFIX):
        raise Unsafe(f"it reads {table!r}, one of replproxy's own tables, which hold each node's own values")
    if table in ("sqlite_master", "sqlite_schema"):
        raise Unsafe("it reads sqlite_schema, which lists replproxy's own objects and the pages of this "
                     "node's file")


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

