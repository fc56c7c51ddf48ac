"""Why the statement format refuses a statement: the rules a plan is checked against.

A statement is refused when its parameters cannot be matched with SQLite's numbering, when it
needs rows in an order the schema does not fix (LIMIT, scalar subqueries, order-sensitive
functions, rowids handed out by INSERT ... SELECT), or when what SQLite's authorizer reports while
preparing it shows it depends on the node (application-defined or node-dependent functions, TEMP
tables and triggers, nondeterministic triggers, RAISE(FAIL), ON CONFLICT FAIL, hidden rowids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from . import determinism
from .base import INTERNAL_PREFIX, StatementInfo
from .determinism import ColumnRef, QueryFacts, TextPlan
from .statement_schema import ROWID_ALIASES, Schema, TableInfo, builtin_function_names

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
    reads: list[tuple[str, str, str | None]] = field(default_factory=list)  # (table, column, db)
    bindings: int = 0


_WRITE_CODES = {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE}


def authorize(conn: apsw.Connection, sql: str) -> Actions:
    found = Actions()
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


def check_row_order(schema: Schema, text: TextPlan, info: TableInfo | None) -> bool:
    """Refuse what depends on the order rows are visited in; True when the UPDATE or DELETE is
    pinned to one row (equality on a unique key)."""
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
    for need in text.needs:
        if need.kind == "insert_select":
            applies = (info is not None and info.rowid_table) or text.conflict in ("IGNORE", "REPLACE") \
                or text.upsert
            if not applies:
                continue
        if not _ordered(need.facts, schema):
            raise Unsafe(_order_message(need, info))
    return pinned


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


def check_actions(actions: Actions, schema: Schema, info: TableInfo | None, text: TextPlan,
                  pinned: bool, app_functions: frozenset[str]) -> None:
    """What the prepared statement does beyond its text: triggers, views, defaults, reads."""
    builtins = builtin_function_names()
    triggers = schema.triggers()
    nondeterministic = determinism.RANDOM_FUNCS | determinism.TIME_FUNCS | {
        "current_timestamp", "current_date", "current_time"}
    for name, owner in actions.functions:
        if owner is not None and owner.lower().startswith(INTERNAL_PREFIX):
            continue  # replproxy's guard triggers: on the leader only, silent for the proxy's writes
        if name in app_functions or name not in builtins:
            where = f" (in {_owner(owner, triggers)})" if owner else ""
            raise Unsafe(f"it calls {name}(){where}, an application-defined function that followers "
                         "do not have")
        if name in determinism.ALWAYS_UNSAFE:
            where = f" in {_owner(owner, triggers)}" if owner else ""
            raise Unsafe(f"{name}(){where}: {determinism.ALWAYS_UNSAFE[name]}")
        if owner is not None and name in nondeterministic:
            raise Unsafe(f"it runs {_owner(owner, triggers)}, which calls {name}(): the values it computes "
                         "would differ on each node")
        # Top-level random() and the clock were rewritten in the text, and the DEFAULTs of omitted
        # columns made explicit; SQLite also reports DEFAULTs an UPDATE never evaluates.
    for table, column, db in actions.reads:
        if db == "temp":
            raise Unsafe(f"it reads the TEMP table {table!r}, which exists on the leader connection only")
        if table in _PHYSICAL_TABLES:
            raise Unsafe(f"it reads {table}, the layout of this node's file")
        if column.upper() == "ROWID":
            read = schema.table(table)
            if read is not None and read.rowid_table and read.has_pk and read.ipk is None:
                raise Unsafe(f"it reads the hidden rowid of {table!r}, whose PRIMARY KEY is not an INTEGER "
                             "PRIMARY KEY: VACUUM renumbers such rowids on the leader alone")
    for owner in actions.owners:
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
    if actions.trigger_inserts:
        rowid_targets = [t for t in sorted(actions.trigger_inserts)
                         if (ti := schema.table(t)) is not None and ti.rowid_table]
        if rowid_targets and not _rows_in_order(text, pinned, schema):
            raise Unsafe(f"it fires triggers that insert into {rowid_targets[0]!r} once per changed row, "
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

