"""Plans of the statement format: how one statement text runs on the leader and is logged.

A plan is made once per statement text, schema version and connection settings (statement.py
caches it): the text analysis (determinism.py) is checked against the schema (statement_rules.py),
the nondeterministic calls and the DEFAULTs of omitted columns become parameters the leader
computes, and SQLite's authorizer reports what the statement does once prepared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from . import determinism
from .base import StatementInfo
from .determinism import TextPlan, quote_identifier
from .statement_rules import (
    Actions,
    Unsafe,
    authorize,
    check_actions,
    check_collations,
    check_parameters,
    check_row_order,
    database_of,
)
from .statement_schema import ROWID_ALIASES, Schema, TableInfo, builtin_function_names


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
    plan_order: bool = False  # rows are numbered in the order the plan visits them
    # False for a statement SQLite could not prepare, planned unchecked to let it fail: registering a
    # function or collation later makes it preparable without changing the schema version
    cacheable: bool = True

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


def build_plan(conn: apsw.Connection, schema: Schema, stmt: StatementInfo, sql: str,
               app_functions: frozenset[str]) -> StatementPlan:
    """The plan of one statement text; reasons to refuse it come back in `unsafe`."""
    text = determinism.analyze(sql)
    if text.unsafe:
        return StatementPlan.refused(text.unsafe)
    try:
        return _build(conn, schema, stmt, text, app_functions)
    except Unsafe as exc:
        return StatementPlan.refused(str(exc))


def _build(conn: apsw.Connection, schema: Schema, stmt: StatementInfo, text: TextPlan,
           app_functions: frozenset[str]) -> StatementPlan:
    sql = text.sql
    check_parameters(stmt, text)
    info = schema.table(text.target) if text.target else None
    if text.target and info is None:
        where = database_of(conn, text.target.lower())
        if where is not None:
            # A TEMP table or view whose TEMP triggers change replicated tables.
            raise Unsafe(f"it writes {text.target!r} of the {where} database, whose triggers change "
                         "replicated tables on the leader only")
        # No such table: let SQLite report it; nothing runs, nothing is logged.
        return StatementPlan(leader_sql=sql, log_sql=sql, cacheable=False)
    pinned, numbering = check_row_order(schema, text, info)
    texts = _rewrite(text, info, app_functions)
    try:
        actions = authorize(conn, texts.log_sql)
    except apsw.Error as exc:
        try:
            authorize(conn, sql)
        except apsw.Error:
            # SQLite cannot prepare it (a missing column...): it fails on the leader, unlogged.
            return StatementPlan(leader_sql=sql, log_sql=sql, cacheable=False)
        raise Unsafe(f"its rewritten form could not be prepared ({exc})") from None
    plan_order = check_actions(actions, schema, info, text, pinned, numbering, app_functions)
    check_collations(conn, actions, text)
    rowid_checks, post_checks = _rowid_checks(schema, text, info, actions)
    triggers = schema.triggers()
    written_infos = [schema.table(t) for t in actions.written]
    fk_relevant = bool(actions.written & schema.fk_parents())
    return StatementPlan(
        leader_sql=texts.leader_sql,
        log_sql=texts.log_sql,
        convert=texts.convert,
        log_convert=texts.log_convert,
        param_count=text.param_count,
        param_names=tuple(stmt.param_names),
        referenced=frozenset(p.index for p in text.params),
        log_count=actions.bindings,
        eval_sql=texts.eval_sql,
        modifier_params=text.modifier_params,
        rowid_checks=rowid_checks,
        post_checks=post_checks,
        fk_relevant=fk_relevant,
        order_relevant=bool(actions.reads) or bool(set(triggers.values()) & actions.written),
        like_relevant=any(name == "like" for name, _ in actions.functions),
        check_relevant=any(i is not None and i.has_check for i in written_infos),
        plan_order=plan_order,
    )


@dataclass(frozen=True)
class _Texts:
    """The texts of a plan: what the leader runs, what the log holds, and the SELECT that computes
    the values of the parameters the rewrite added."""

    leader_sql: str
    log_sql: str
    eval_sql: str | None
    convert: bool  # the leader's parameters become one list bound to ?1..?N
    log_convert: bool  # ... and the logged statement's


def _rewrite(text: TextPlan, info: TableInfo | None, app_functions: frozenset[str]) -> _Texts:
    """The texts with the analysis' edits applied: nondeterministic calls and the DEFAULTs of
    omitted columns become parameters, and RETURNING is left out of the logged statement."""
    sql = text.sql
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
    return _Texts(leader_sql, log_sql, eval_sql, leader_convert, log_convert)


def _rowid_checks(schema: Schema, text: TextPlan, info: TableInfo | None, actions: Actions
                  ) -> tuple[tuple[str, ...], tuple[tuple[str, bool], ...]]:
    """Rowid tables that may receive automatic rowids (their largest rowid is checked before the
    statement runs), and those of them that may also get explicit rowids (checked after)."""
    rowid_checks: list[str] = []
    post_checks: list[tuple[str, bool]] = []
    if text.kind == "insert" and info is not None and info.rowid_table:
        rowid_checks.append(info.name)
        given = {c.lower() for c in text.insert_columns} if text.insert_columns is not None else None
        if given is None and text.source != "default" or (
                given is not None and given & ({*(ROWID_ALIASES), (info.ipk or "").lower()} - {""})):
            post_checks.append((info.name, False))
    for table in sorted(actions.trigger_inserts):
        target = schema.table(table)
        if target is not None and target.rowid_table and target.name not in rowid_checks:
            rowid_checks.append(target.name)
            post_checks.append((target.name, True))
    return tuple(rowid_checks), tuple(post_checks)


def _default_edits(text: TextPlan, info: TableInfo, new_param: Any,
                   app_functions: frozenset[str]) -> list[_Edit]:
    """Nondeterministic DEFAULTs of columns the INSERT omits, made explicit."""
    if text.source == "default":
        given: set[str] = set()
    elif text.insert_columns is None:
        return []  # every column is given
    else:
        given = {c.lower() for c in text.insert_columns}
        if info.ipk is not None and given & set(ROWID_ALIASES):
            given.add(info.ipk.lower())
    omitted = [(col, dflt, kind) for col, dflt, kind in info.defaults if col.lower() not in given]
    if not omitted:
        return []
    builtins = builtin_function_names()
    for col, dflt, kind in omitted:
        foreign = (kind.functions - builtins) | (kind.functions & app_functions)
        if kind.kind == "unsafe" or foreign:
            why = kind.reason or f"it calls {', '.join(sorted(foreign))}(), which followers do not have"
            raise Unsafe(f"column {col!r} of {info.name!r} has DEFAULT {dflt}: {why}")
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
        raise Unsafe(f"INSERT ... SELECT omits column {random_cols[0]!r} of {info.name!r}, whose DEFAULT "
                     "is random per row; name the column and give it a value")
    if text.arm_ends is None:
        raise Unsafe(f"INSERT ... SELECT omits columns of {info.name!r} with nondeterministic DEFAULTs, and "
                     "their values cannot be added to this SELECT; name the columns and give them values")
    numbers = [new_param(dflt) for _c, dflt, _k in omitted]
    for end in text.arm_ends:
        edits.append(_Edit(end, end, "insert", "".join(f", ?{n}" for n in numbers)))
    return edits
