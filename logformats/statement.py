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

The format is split into: statement_payload.py (the payload encoding), statement_apply.py (replay
on followers, decoding), statement_schema.py (schema facts), statement_rules.py (why a statement
is refused), statement_plan.py (plans: rewriting and checks). This module holds the capture, which
plans each statement before the leader runs it, and the format.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import apsw

from . import determinism
from .base import INTERNAL_PREFIX, Capture, CaptureError, StatementInfo, UnsafeStatementError, pop_savepoint
from .statement_apply import StatementPayloadFormat, apply_payload, apply_payloads, decode_payload
from .statement_payload import (
    FLAG_CASE_SENSITIVE_LIKE,
    FLAG_FOREIGN_KEYS,
    FLAG_IGNORE_CHECK,
    FLAG_RECURSIVE_TRIGGERS,
    FLAG_REVERSE_ORDER,
    encode,
    encode_item_size,
    iter_payload,
    payload_items,
)
from .statement_plan import StatementPlan, build_plan
from .statement_rules import unsafe_message
from .statement_schema import (
    Schema,
    application_collations,
    application_functions,
    application_modules,
    fetch_rows,
    fetch_scalar,
)

MAX_ROWID = 2**63 - 1
# Past this rowid SQLite is (or may within one statement get) out of room for max(rowid)+1 and
# picks rowids at random.
ROWID_DANGER = MAX_ROWID - 2**32


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The connection settings a plan's row order depends on beyond the schema, data and statistics:
# automatic indexes change plans; the sorter's memory (cache_size) and threads decide where a big
# sort spills, which orders rows that tie on its ORDER BY.
_PLAN_SETTINGS = ("automatic_index", "cache_size", "threads")


@lru_cache(maxsize=1)
def _default_plan_settings() -> tuple[Any, ...]:
    fresh = apsw.Connection(":memory:")
    try:
        return tuple(fetch_scalar(fresh, f"PRAGMA {name}") for name in _PLAN_SETTINGS)
    finally:
        fresh.close()


def _check_plan_settings(conn: apsw.Connection) -> None:
    """Followers replay with SQLite's defaults: a statement whose rows are numbered in the order
    its plan visits them needs them on the leader too."""
    for name, default in zip(_PLAN_SETTINGS, _default_plan_settings(), strict=True):
        value = fetch_scalar(conn, f"PRAGMA {name}")
        if value != default:
            raise UnsafeStatementError(unsafe_message(
                f"it numbers rows in the order its plan visits them, and this connection has {name}={value} "
                f"(followers use {default}), which may change that order"))


class UnsafeSchemaChange(UnsafeStatementError):
    """A schema change followers cannot make; no row images replace it (mixed refuses it too)."""


def _check_schema_change(conn: apsw.Connection, sql: str) -> None:
    """Tables and indexes are checked and filled when created: a function, collation or virtual
    table module the application registered on the leader connection only would stop every follower. Views and
    triggers only name them; the statements that run them are checked."""
    functions, collations = application_functions(conn), application_collations(conn)
    modules = application_modules(conn)
    if not functions and not collations and not modules:
        return
    words = [w for _t, w in determinism.table_tokens(sql)]
    if words[:3] == ["CREATE", "VIRTUAL", "TABLE"] and "USING" in words:
        module = words[words.index("USING") + 1:][:1]
        if module and module[0].lower() in modules:
            raise UnsafeSchemaChange(
                f"this schema change uses the virtual table module {module[0].lower()!r}, which the application "
                "registered on the leader connection only: followers could not make it")
    if words[:1] == ["CREATE"] and any(w in ("VIEW", "TRIGGER") for w in words[1:4]):
        return
    for i, word in enumerate(words):
        name = word.lower()
        called = i + 1 < len(words) and words[i + 1] == "("
        if (called and name in functions) or name in collations:
            what = "function" if called and name in functions else "collation"
            raise UnsafeSchemaChange(
                f"this schema change uses the {what} {name!r}, which the application registered on the "
                "leader connection only: followers could not make it")


# -- per connection ---------------------------------------------------------------------------


class _ConnState:
    """Plans and schema facts of one connection at one schema version."""

    def __init__(self, conn: apsw.Connection, version: int, temp: Any = ()):
        self.version = version
        self.temp = temp  # the TEMP objects the plans were made with
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
        return int(fetch_scalar(self.conn, "PRAGMA main.schema_version"))

    def _temp(self) -> Any:
        """What the connection's TEMP objects are: they shadow main tables and fire triggers, so a
        plan is only valid for them. Read for every statement: TEMP DDL does not pass through the
        capture, and a TEMP schema version may come round again after a rollback, so the objects
        themselves are the key (nothing to read when TEMP was never used)."""
        if not fetch_scalar(self.conn, "PRAGMA temp.schema_version"):
            return ()
        return tuple(tuple(r) for r in fetch_rows(
            self.conn, "SELECT type, name, tbl_name, sql FROM temp.sqlite_master ORDER BY type, name"))

    def _state(self) -> _ConnState:
        # A schema version reached inside a transaction may come round again with another schema
        # once it rolls back: after DDL here, plans live in a cache of this transaction only.
        temp = self._temp()
        if self._local is not None:
            version = self._version()
            if self._local.version != version or self._local.temp != temp:
                self._local = _ConnState(self.conn, version, temp)
            return self._local
        if self._shared is None or self._shared.temp != temp:
            version = self._version() if self._shared is None else self._shared.version
            state = _STATES.get(self.conn)
            if state is None or state.version != version or state.temp != temp:
                state = _STATES[self.conn] = _ConnState(self.conn, version, temp)
            self._shared = state
        return self._shared

    def _plan(self, state: _ConnState, stmt: StatementInfo, sql: str, fk: int, rt: int) -> StatementPlan:
        key = (sql, fk, rt)
        plan = state.plans.get(key)
        if plan is None:
            # Read for every new plan: the application may register functions at any time.
            # (build_plan is looked up in this module: tests replace statement.build_plan.)
            plan = build_plan(self.conn, state.schema, stmt, sql, application_functions(self.conn))
            if len(state.plans) >= _PLAN_LIMIT:
                state.plans.clear()
            if plan.cacheable:
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
            if fetch_scalar(conn, "PRAGMA recursive_triggers"):
                flags |= FLAG_RECURSIVE_TRIGGERS
            self._pending = _Pending(sql, flags, params)
            return sql, params
        if stmt.kind != "dml" and not _is_create_table_as(stmt, sql):
            # Schema changes and replicated PRAGMAs are deterministic as written; with
            # foreign_keys on, DROP TABLE deletes rows first and may cascade.
            if stmt.kind == "ddl":
                _check_schema_change(conn, sql)
            fk = conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1)
            self._pending = _Pending(sql, FLAG_FOREIGN_KEYS if fk else 0, params)
            return sql, params
        state = self._state()
        fk = conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1)
        if state.has_triggers is None:
            # replproxy's own (the leader's guards) fire for other writers only: whether triggers
            # recurse changes nothing the statement does.
            state.has_triggers = any(not name.startswith(INTERNAL_PREFIX) for name in state.schema.triggers())
        rt = 0
        if state.has_triggers:
            rt = int(fetch_scalar(conn, "PRAGMA recursive_triggers"))
        plan = self._plan(state, stmt, sql, fk, rt)
        if plan.unsafe:
            raise UnsafeStatementError(unsafe_message(plan.unsafe))
        flags = (FLAG_FOREIGN_KEYS if fk and plan.fk_relevant else 0) | (
            FLAG_RECURSIVE_TRIGGERS if rt else 0)
        if plan.order_relevant and conn.config(apsw.SQLITE_DBCONFIG_REVERSE_SCANORDER, -1):
            flags |= FLAG_REVERSE_ORDER
        if plan.plan_order:
            _check_plan_settings(conn)
        if plan.like_relevant and not fetch_scalar(conn, "SELECT 'a' LIKE 'A'"):
            flags |= FLAG_CASE_SENSITIVE_LIKE
        if plan.check_relevant and fetch_scalar(conn, "PRAGMA ignore_check_constraints"):
            flags |= FLAG_IGNORE_CHECK
        before: dict[str, int | None] = {}
        for table in plan.rowid_checks:
            top = fetch_scalar(conn, f"SELECT max(rowid) FROM main.{_quoted(table)}")
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
                    computed = list(fetch_rows(conn, plan.eval_sql, base)[0])
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
            # Taking the largest rowid is itself exact; an automatic rowid after it in the same
            # statement is not, and only a statement that inserted several rows can have one.
            if not (by_trigger or self.conn.changes() > 1):
                continue
            top = fetch_scalar(self.conn, f"SELECT max(rowid) FROM main.{_quoted(table)}")
            if top == MAX_ROWID and pending.before.get(table) != MAX_ROWID:
                self._errors.append((len(self._items), (
                    f"the statement gave table {table!r} the largest rowid ({MAX_ROWID}); SQLite picks "
                    "any later automatic rowid at random, which a statement-based log cannot reproduce, "
                    "so the transaction was not committed")))
        self._items.append(("stmt", pending.sql, pending.flags, pending.params))
        if stmt.kind == "ddl" or stmt.replicated_pragma:
            self._schema_changed()

    def _schema_changed(self) -> None:
        """This transaction changed the schema: plans from now on are cached for it alone."""
        self._local = _ConnState(self.conn, -1, None)

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
    "FLAG_CASE_SENSITIVE_LIKE",
    "FLAG_FOREIGN_KEYS",
    "FLAG_IGNORE_CHECK",
    "FLAG_RECURSIVE_TRIGGERS",
    "FLAG_REVERSE_ORDER",
    "Schema",
    "StatementCapture",
    "StatementFormat",
    "StatementPayloadFormat",
    "StatementPlan",
    "UnsafeSchemaChange",
    "apply_payload",
    "apply_payloads",
    "build_plan",
    "decode_payload",
    "encode",
    "encode_item_size",
    "iter_payload",
    "payload_items",
    "unsafe_message",
]
