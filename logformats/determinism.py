"""What the text of a write statement says about determinism, found with sqlglot (dialect sqlite).

The statement format runs this once per distinct SQL text (parsing costs hundreds of µs) and keeps
the result, a `TextPlan`, which holds no schema knowledge: where the nondeterministic calls are and
how to replace them, which parameters the text has and how SQLite numbers them, and "facts" about
row order (LIMIT, ORDER BY, WHERE equalities, row sources) that the statement format later checks
against the schema (unique keys, rowid tables, defaults, triggers).

Rewriting splices the original text by token positions instead of regenerating SQL from sqlglot's
tree: the generator normalizes functions and types (strftime becomes TIME_TO_STR of a timestamp,
NULLS LAST disappears), and the text that runs on the leader must mean exactly what the user wrote.
Anything this module cannot locate or understand makes the statement unsafe; it never guesses.

The work is split by what it reads: determinism_tokens.py (the tokens: parameters, the words that
make a statement nondeterministic, identifiers), determinism_tree.py (sqlglot's tree: row-order
facts, how often a call runs) and determinism_rewrite.py (the spans the rewrite replaces or
extends). This module puts them together into a TextPlan, and classifies column DEFAULTs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from sqlglot import exp
from sqlglot.tokens import TokenType

from .determinism_rewrite import (
    Computed,
    Guard,
    insert_layout,
    nondeterministic_calls,
    returning_span,
    static_time,
)
from .determinism_tokens import (
    ALWAYS_UNSAFE,
    CURRENT_KEYWORDS,
    NOW_WORDS,
    RANDOM_FUNCS,
    TIME_FUNCS,
    TZ_MODIFIERS,
    Param,
    Unsafe,
    call_args,
    is_create_as,
    quote_identifier,
    table_tokens,
    tokenize,
)
from .determinism_tree import (
    CONFLICT_ACTIONS,
    ORDER_SENSITIVE,
    ORDERED_TABLE_FUNCS,
    SET_OPERATION,
    Analysis,
    ColumnRef,
    OrderNeed,
    QueryFacts,
    equalities,
    from_clause,
    order_needs,
    order_refs,
)


@dataclass(frozen=True)
class TextPlan:
    """The schema-independent analysis of one statement text."""

    sql: str
    kind: str  # "insert", "update", "delete", "ctas", "other"
    unsafe: str | None = None
    params: tuple[Param, ...] = ()
    param_count: int = 0
    computed: tuple[Computed, ...] = ()
    guards: tuple[Guard, ...] = ()
    modifier_params: tuple[int, ...] = ()  # parameters used as date/time modifiers
    returning: tuple[int, int] | None = None  # span removed from the logged statement
    target: str | None = None
    target_alias: str | None = None
    conflict: str | None = None  # OR IGNORE / REPLACE / FAIL / ABORT / ROLLBACK
    upsert: bool = False
    insert_columns: tuple[str, ...] | None = None
    column_list_end: int | None = None  # where ', col' goes in the column list
    source: str | None = None  # "values", "select", "default"
    values_row_ends: tuple[int, ...] = ()  # where ', ?K' goes in each VALUES row
    default_values: tuple[int, int] | None = None  # span of DEFAULT VALUES
    arm_ends: tuple[int, ...] | None = None  # where ', ?K' goes in each SELECT arm of the source
    source_facts: QueryFacts | None = None
    needs: tuple[OrderNeed, ...] = ()
    pin_eq: tuple[tuple[ColumnRef, tuple[ColumnRef, ...]], ...] = ()  # root UPDATE/DELETE WHERE
    ctes: frozenset[str] = frozenset()  # names of its common table expressions (lowercase)


@lru_cache(maxsize=4096)
def analyze(sql: str) -> TextPlan:
    """The analysis of one write statement's text (cached: sqlglot parsing is slow)."""
    try:
        return _analyze(sql)
    except Unsafe as exc:
        return TextPlan(sql=sql, kind="other", unsafe=str(exc))
    except RecursionError:
        return TextPlan(sql=sql, kind="other", unsafe="it is nested too deeply to analyze")


def _analyze(sql: str) -> TextPlan:
    a = Analysis(sql)
    root = a.root
    kind = _statement_kind(root)
    fields: dict = {"kind": kind, "params": tuple(a.params),
                    "param_count": max((p.index for p in a.params), default=0),
                    "ctes": frozenset(c.alias.lower() for c in root.find_all(exp.CTE) if c.alias)}
    fields.update(_conflict(a, root))
    returning = returning_span(a)
    fields["returning"] = returning

    def in_returning(pos: int) -> bool:
        return returning is not None and returning[0] <= pos < returning[1]

    needs, single_values_row = _row_source(a, root, kind, fields)
    needs.extend(order_needs(a, in_returning))
    computed, guards, modifier_params = nondeterministic_calls(a, in_returning, single_values_row)
    fields.update(computed=tuple(computed), guards=tuple(guards), modifier_params=tuple(modifier_params),
                  needs=tuple(needs))
    return TextPlan(sql=sql, **fields)


def _statement_kind(root: exp.Expr) -> str:
    """"insert", "update", "delete" or "ctas"; any other statement is refused."""
    kinds: dict[type, str] = {exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete"}
    kind = kinds.get(type(root))
    if kind is None:
        if isinstance(root, exp.Create) and isinstance(root.expression, (exp.Select, SET_OPERATION)):
            kind = "ctas"
        else:
            raise Unsafe("it is not a plain INSERT, UPDATE, DELETE or CREATE TABLE ... AS SELECT")
    return kind


def _conflict(a: Analysis, root: exp.Expr) -> dict:
    """The conflict action (OR IGNORE, REPLACE...) and whether an INSERT is an upsert; OR FAIL is
    refused."""
    fields: dict = {}
    conflict = a.conflict
    if isinstance(root, exp.Insert):
        alternative = root.args.get("alternative")
        if alternative:
            conflict = str(alternative).upper()
        fields["upsert"] = root.args.get("conflict") is not None
    fields["conflict"] = conflict
    if conflict == "FAIL":
        raise Unsafe("OR FAIL keeps the rows a statement changed before it failed; a statement-based log "
                     "only records statements that succeeded")
    return fields


def _row_source(a: Analysis, root: exp.Expr, kind: str, fields: dict) -> tuple[list[OrderNeed], bool]:
    """The written table and where its rows come from, set in `fields`. Returns the row orders
    that must be fixed for them (INSERT ... SELECT, UPDATE/DELETE ... LIMIT, CREATE TABLE ... AS
    SELECT), and whether the statement is an INSERT of a single VALUES row."""
    needs: list[OrderNeed] = []
    single_values_row = False
    if isinstance(root, exp.Insert):
        fields["target"], fields["target_alias"] = _target(root.this)
        fields.update(insert_layout(a, root))
        source = root.expression
        single_values_row = isinstance(source, exp.Values) and len(source.expressions) == 1
        if fields["source"] == "select":
            fields["source_facts"] = a.facts(source)
            needs.append(OrderNeed(fields["source_facts"], "insert_select", "INSERT ... SELECT"))
    elif isinstance(root, (exp.Update, exp.Delete)):
        fields["target"], fields["target_alias"] = _target(root.this)
        if from_clause(root) is not None:
            raise Unsafe("UPDATE ... FROM uses one arbitrary row of the join when several match a row "
                         "to update")
        fields["pin_eq"] = equalities(root.args.get("where"))
        if root.args.get("limit") is not None or root.args.get("offset") is not None:
            needs.append(OrderNeed(
                QueryFacts(sources=((fields["target"], fields["target_alias"]),),
                           order=order_refs(root.args.get("order"))),
                "limit", f"{kind.upper()} with LIMIT"))
    else:  # CREATE TABLE ... AS SELECT: the new table assigns rowids in the SELECT's row order
        fields["source_facts"] = a.facts(root.expression)
        needs.append(OrderNeed(fields["source_facts"], "ctas", "CREATE TABLE ... AS SELECT"))
    return needs, single_values_row


def _target(table: exp.Expr) -> tuple[str, str | None]:
    if isinstance(table, exp.Schema):
        table = table.this
    if not isinstance(table, exp.Table) or isinstance(table.this, exp.Func):
        raise Unsafe("its target is not a plain table")
    db = table.args.get("db")
    if db is not None and db.name.lower() not in ("main",):
        raise Unsafe(f"it writes to schema {db.name!r}, which is not replicated")
    return table.name, (table.alias or None)


# -- column defaults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DefaultKind:
    """What a column DEFAULT does: "time" (the same value for every row of a statement),
    "random" (a new value per row), "unsafe" (cannot be fixed), or None (deterministic)."""

    kind: str | None
    reason: str = ""
    functions: frozenset[str] = field(default_factory=frozenset)


@lru_cache(maxsize=1024)
def classify_default(text: str) -> DefaultKind:
    """Classify a column's DEFAULT expression as PRAGMA table_info reports it."""
    try:
        tokens = tokenize(text)
    except Unsafe as exc:
        return DefaultKind("unsafe", str(exc))
    kind: str | None = None
    names = set()
    for i, tok in enumerate(tokens):
        if tok.token_type in CURRENT_KEYWORDS:
            kind = kind or "time"
            continue
        if i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.L_PAREN:
            name = tok.text.lower()
            names.add(name)
            if name in ALWAYS_UNSAFE:
                return DefaultKind("unsafe", ALWAYS_UNSAFE[name])
            if name in RANDOM_FUNCS:
                kind = "random"
            elif name in TIME_FUNCS and kind is None:
                try:
                    sub = Analysis("SELECT " + text)
                except Unsafe:
                    kind = "time"
                    continue
                offset = len("SELECT ")
                j = sub.by_start.get(tok.start + offset)
                if j is None:
                    kind = "time"
                    continue
                args, _ = call_args(sub.tokens, j)
                if not static_time(sub, name, args):
                    kind = "time"
    return DefaultKind(kind, functions=frozenset(names))


__all__ = [
    "ALWAYS_UNSAFE",
    "CONFLICT_ACTIONS",
    "CURRENT_KEYWORDS",
    "NOW_WORDS",
    "ORDERED_TABLE_FUNCS",
    "ORDER_SENSITIVE",
    "RANDOM_FUNCS",
    "TIME_FUNCS",
    "TZ_MODIFIERS",
    "ColumnRef",
    "Computed",
    "DefaultKind",
    "Guard",
    "OrderNeed",
    "Param",
    "QueryFacts",
    "TextPlan",
    "Unsafe",
    "analyze",
    "classify_default",
    "is_create_as",
    "quote_identifier",
    "table_tokens",
]
