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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokens import Token, TokenType

# sqlglot logs a warning when it falls back to a Command; that is our "unparseable", said otherwise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_DIALECT = SQLite()

RANDOM_FUNCS = frozenset({"random", "randomblob"})
TIME_FUNCS = frozenset({"date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff"})
CURRENT_KEYWORDS = {
    TokenType.CURRENT_TIMESTAMP: "CURRENT_TIMESTAMP",
    TokenType.CURRENT_DATE: "CURRENT_DATE",
    TokenType.CURRENT_TIME: "CURRENT_TIME",
}
# Time values SQLite reads as "the current time" (sqlite3StrICmp, so any case) and modifiers that
# depend on the node's time zone.
NOW_WORDS = frozenset({"now", "subsec", "subsecond"})
TZ_MODIFIERS = frozenset({"localtime", "utc"})
# Functions whose result depends on the node or on the connection's history, never on the data.
ALWAYS_UNSAFE = {
    "changes": "changes() counts rows changed by the previous statement of this connection",
    "total_changes": "total_changes() counts rows changed by this connection since it opened",
    "last_insert_rowid": "last_insert_rowid() depends on this connection's previous inserts",
    "sqlite_version": "sqlite_version() can differ between nodes",
    "sqlite_source_id": "sqlite_source_id() can differ between nodes",
    "sqlite_compileoption_get": "compile options can differ between nodes",
    "sqlite_compileoption_used": "compile options can differ between nodes",
    "sqlite_offset": "sqlite_offset() is a position in this node's file",
    "load_extension": "load_extension() loads code on this node only",
}
# Results that depend on the order rows are visited when it is not fixed by ORDER BY.
ORDER_SENSITIVE = frozenset({
    "row_number", "ntile", "lag", "lead", "first_value", "last_value", "nth_value",
    "group_concat", "string_agg", "json_group_array", "json_group_object",
    "jsonb_group_array", "jsonb_group_object",
    "groupconcat",  # sqlglot's node for group_concat and string_agg, which carries no position
})
# Table-valued functions whose rows come in an order fixed by their arguments.
ORDERED_TABLE_FUNCS = frozenset({"json_each", "json_tree", "jsonb_each", "jsonb_tree", "generate_series"})
CONFLICT_ACTIONS = frozenset({"ROLLBACK", "ABORT", "FAIL", "IGNORE", "REPLACE"})

# Where the time value(s) sit in each time function's arguments; the others are modifiers.
_TIME_VALUE_ARGS = {"strftime": (1,), "timediff": (0, 1)}
_CLAUSE_STOP = frozenset({
    TokenType.FROM, TokenType.WHERE, TokenType.GROUP_BY, TokenType.HAVING, TokenType.WINDOW,
    TokenType.ORDER_BY, TokenType.LIMIT, TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT,
    TokenType.ON, TokenType.RETURNING, TokenType.SEMICOLON,
})
_SET_OPS = frozenset({TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT})
_LITERAL_TOKENS = frozenset({TokenType.STRING, TokenType.NUMBER})


# sqlglot renamed these over versions (Union became a SetOperation; "from" became "from_").
_SET_OPERATION = getattr(exp, "SetOperation", exp.Union)


def _from(select: exp.Expr) -> exp.Expr | None:
    return select.args.get("from_", select.args.get("from"))


class Unsafe(Exception):
    """Raised inside the analysis; becomes TextPlan.unsafe."""


# -- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter token: its place in the text and the number SQLite gives it."""

    start: int
    end: int  # exclusive
    index: int
    name: str | None  # as SQLite reports it, without its prefix; None for an anonymous '?'


@dataclass(frozen=True)
class Computed:
    """A span of text replaced by a parameter whose value the leader computes before it runs.

    `expr` is the SQL the leader evaluates (a span of the text, or `literal` when it is not one).
    `needs_pinned`: random() in UPDATE ... SET runs once per row; it becomes one value only when
    the UPDATE can touch at most one row, which the schema decides."""

    start: int
    end: int
    literal: str | None = None
    needs_pinned: bool = False
    what: str = ""


@dataclass(frozen=True)
class Guard:
    """A time value that is not a constant (a column may hold the text 'now'): wrapped so that
    'now' becomes the leader's time, `CASE WHEN lower(x) IN (...) THEN ?now ELSE x END`."""

    start: int
    end: int


@dataclass(frozen=True)
class ColumnRef:
    qualifier: str | None
    name: str


@dataclass(frozen=True)
class QueryFacts:
    """What decides the row order of one query, for the schema to judge.

    The order is fixed when the query reads no table (`table_free`), returns one row
    (`single_row`), is ordered by a unique key of every table it reads (`order`, `sources`), or,
    where allowed (`pin_ok`), selects one row by equality on a unique key (`eq`)."""

    table_free: bool = False
    single_row: bool = False
    sources: tuple[tuple[str, str | None], ...] | None = None  # (table, alias); None: not all tables
    order: tuple[ColumnRef, ...] | None = None
    eq: tuple[tuple[ColumnRef, tuple[ColumnRef, ...]], ...] = ()
    pin_ok: bool = False


@dataclass(frozen=True)
class OrderNeed:
    """A query whose row order must be fixed for the statement to be deterministic."""

    facts: QueryFacts
    kind: str  # "limit", "scalar", "window", "aggregate", "insert_select", "ctas"
    what: str  # for the error message


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


# -- tokens ---------------------------------------------------------------------------------------


def _tokens(sql: str) -> list[Token]:
    try:
        return list(_DIALECT.tokenize(sql))
    except Exception as exc:  # sqlglot raises its own TokenError and, on odd input, others
        raise Unsafe(f"sqlglot cannot tokenize it ({exc})") from None


def _params(sql: str, tokens: list[Token]) -> tuple[list[Param], list[tuple[int, int, str]]]:
    """Parameter tokens numbered as SQLite numbers them, and same-length replacements that let
    sqlglot parse `?NNN` (which it cannot) as a named parameter."""
    params: list[Param] = []
    replacements: list[tuple[int, int, str]] = []
    named: dict[str, int] = {}
    highest = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        adjacent = nxt is not None and nxt.start == tok.end + 1
        if tok.token_type == TokenType.PLACEHOLDER and tok.text == "?":
            if adjacent and nxt is not None and nxt.token_type == TokenType.NUMBER and nxt.text.isdigit():
                index = int(nxt.text)
                if index < 1:
                    raise Unsafe("parameter ?0 is not valid")
                highest = max(highest, index)
                params.append(Param(tok.start, nxt.end + 1, index, nxt.text))
                replacements.append((tok.start, nxt.end + 1, ":" + "p" * len(nxt.text)))
                i += 2
                continue
            highest += 1
            params.append(Param(tok.start, tok.end + 1, highest, None))
        elif tok.token_type in (TokenType.COLON, TokenType.PARAMETER) and adjacent and nxt is not None \
                and nxt.token_type in (TokenType.VAR, TokenType.NUMBER):
            text = sql[tok.start:nxt.end + 1]
            if text not in named:
                highest += 1
                named[text] = highest
            params.append(Param(tok.start, nxt.end + 1, named[text], nxt.text))
            i += 2
            continue
        elif tok.token_type == TokenType.VAR and tok.text.startswith("$"):
            text = tok.text
            if text not in named:
                highest += 1
                named[text] = highest
            params.append(Param(tok.start, tok.end + 1, named[text], text[1:]))
        i += 1
    return params, replacements


def _matching(tokens: list[Token], open_index: int) -> int:
    """Index of the R_PAREN that closes the L_PAREN at `open_index`."""
    depth = 0
    for j in range(open_index, len(tokens)):
        kind = tokens[j].token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return j
    raise Unsafe("unbalanced parentheses")


def _depth0(tokens: list[Token], start: int = 0) -> Iterator[int]:
    """Indexes of tokens at parenthesis depth 0 from `start` on."""
    depth = 0
    for j in range(start, len(tokens)):
        kind = tokens[j].token_type
        if kind == TokenType.L_PAREN:
            if depth == 0:
                yield j
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                yield j
        elif depth == 0:
            yield j


def _call_args(tokens: list[Token], name_index: int) -> tuple[list[tuple[int, int]], int]:
    """Token index ranges (inclusive) of a call's arguments, and the index of its ')'."""
    open_index = name_index + 1
    close = _matching(tokens, open_index)
    args: list[tuple[int, int]] = []
    depth, first = 0, open_index + 1
    for j in range(open_index + 1, close):
        kind = tokens[j].token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
        elif kind == TokenType.COMMA and depth == 0:
            args.append((first, j - 1))
            first = j + 1
    if first <= close - 1:
        args.append((first, close - 1))
    return args, close


# -- the tree -------------------------------------------------------------------------------------


def _columns(node: exp.Expr) -> list[exp.Column]:
    return list(node.find_all(exp.Column))


def _has_query(node: exp.Expr) -> bool:
    return any(True for _ in node.find_all(exp.Select, exp.Subquery, exp.Exists))


def _is_constant(node: exp.Expr) -> bool:
    """No column, subquery, aggregate or window anywhere below: the same value on every row."""
    for sub in node.walk():
        if isinstance(sub, (exp.Column, exp.Select, exp.Subquery, exp.Exists, exp.Star, exp.Window)):
            return False
        if isinstance(sub, exp.AggFunc) and not isinstance(sub, (exp.Greatest, exp.Least)):
            return False
    return True


def _conjuncts(node: exp.Expr | None) -> Iterator[exp.Expr]:
    if node is None:
        return
    if isinstance(node, exp.Where):
        node = node.this
    if isinstance(node, exp.Paren):
        yield from _conjuncts(node.this)
    elif isinstance(node, exp.And):
        yield from _conjuncts(node.this)
        yield from _conjuncts(node.expression)
    else:
        yield node


def _ref(col: exp.Column) -> ColumnRef:
    return ColumnRef(col.table or None, col.name)


def _equalities(where: exp.Expr | None) -> tuple[tuple[ColumnRef, tuple[ColumnRef, ...]], ...]:
    """WHERE conjuncts `column = expression`, with the columns the expression reads."""
    out = []
    for term in _conjuncts(where):
        if not isinstance(term, exp.EQ):
            continue
        for col, other in ((term.this, term.expression), (term.expression, term.this)):
            if isinstance(col, exp.Column) and not _has_query(other):
                out.append((_ref(col), tuple(_ref(c) for c in _columns(other))))
    return tuple(out)


def _order_refs(order: exp.Expr | None) -> tuple[ColumnRef, ...] | None:
    if order is None:
        return None
    refs = []
    for term in order.expressions:
        inner = term.this if isinstance(term, exp.Ordered) else term
        if not isinstance(inner, exp.Column):
            return None  # an expression, a collation or a result-column number: not a key
        refs.append(_ref(inner))
    return tuple(refs)


def _is_aggregate(node: exp.Expr) -> bool:
    return isinstance(node, exp.AggFunc) and not isinstance(node, (exp.Greatest, exp.Least))


def _enclosing(node: exp.Expr, kinds: tuple[type, ...]) -> exp.Expr | None:
    parent = node.parent
    while parent is not None and not isinstance(parent, kinds):
        parent = parent.parent
    return parent


class _Analysis:
    """One statement's analysis; see analyze()."""

    def __init__(self, sql: str):
        self.sql = sql
        self.tokens = _tokens(sql)
        if not self.tokens:
            raise Unsafe("it is empty")
        self.params, replacements = _params(sql, self.tokens)
        self.conflict: str | None = None
        parse_text = self._normalize(list(replacements))
        # sqlglot tokenizes `REPLACE ...` as a command followed by one string: the tokens of the
        # normalized text (same positions) are the ones that describe the statement.
        self.tokens = _tokens(parse_text)
        try:
            trees = [t for t in sqlglot.parse(parse_text, read="sqlite") if t is not None]
        except Exception as exc:  # ParseError, and anything else sqlglot may raise on odd input
            raise Unsafe(f"sqlglot cannot parse it ({str(exc).splitlines()[0]})") from None
        if len(trees) != 1:
            raise Unsafe("sqlglot did not read exactly one statement from it")
        self.root = trees[0]
        if isinstance(self.root, exp.Command):
            raise Unsafe("sqlglot does not understand this statement (it read it as an opaque command)")
        self.by_start = {t.start: i for i, t in enumerate(self.tokens)}
        self.funcs: dict[int, exp.Expr] = {}
        self.idents: set[int] = set()
        for node in self.root.walk():
            start = node.meta.get("start") if node._meta else None
            if start is None:
                continue
            if isinstance(node, exp.Func):
                self.funcs.setdefault(start, node)
            elif isinstance(node, exp.Identifier):
                self.idents.add(start)
        self.ctes: dict[str, exp.Expr] = {}
        for cte in self.root.find_all(exp.CTE):
            self.ctes[cte.alias_or_name.lower()] = cte.this
        self._table_free_memo: dict[str, bool] = {}

    def _normalize(self, replacements: list[tuple[int, int, str]]) -> str:
        """Same-length edits so sqlglot can parse what it does not know: REPLACE INTO (an alias of
        INSERT OR REPLACE) and UPDATE OR <action>. Positions stay those of the original text."""
        tokens = self.tokens
        for j in _depth0(tokens):
            kind = tokens[j].token_type
            if kind == TokenType.REPLACE:
                replacements.append((tokens[j].start, tokens[j].end + 1, "INSERT "))
                self.conflict = "REPLACE"
                break
            if kind == TokenType.UPDATE:
                if j + 2 < len(tokens) and tokens[j + 1].token_type == TokenType.OR:
                    action = tokens[j + 2].text.upper()
                    if action not in CONFLICT_ACTIONS:
                        raise Unsafe(f"unknown conflict clause OR {action}")
                    self.conflict = action
                    span = (tokens[j + 1].start, tokens[j + 2].end + 1)
                    replacements.append((span[0], span[1], " " * (span[1] - span[0])))
                break
            if kind in (TokenType.INSERT, TokenType.DELETE, TokenType.CREATE, TokenType.SELECT):
                break
        text = self.sql
        for start, end, new in sorted(replacements, reverse=True):
            text = text[:start] + new + text[end:]
        return text

    # -- row sources ------------------------------------------------------------------------

    def table_free(self, query: exp.Expr | None, seen: frozenset[str] = frozenset()) -> bool:
        """True when the query's rows come from no table, so their order is fixed by the text."""
        if query is None:
            return True
        if isinstance(query, exp.Subquery):
            return self.table_free(query.this, seen)
        if isinstance(query, _SET_OPERATION):
            return self.table_free(query.this, seen) and self.table_free(query.expression, seen)
        if isinstance(query, exp.Values):
            return True
        if not isinstance(query, exp.Select):
            return False
        for source in self._sources(query):
            if not self._source_table_free(source, seen):
                return False
        return True

    def _sources(self, select: exp.Select) -> list[exp.Expr]:
        out = []
        from_ = _from(select)
        if from_ is not None:
            out.append(from_.this)
        for join in select.args.get("joins") or []:
            out.append(join.this)
        return out

    def _source_table_free(self, source: exp.Expr, seen: frozenset[str]) -> bool:
        if isinstance(source, (exp.Subquery, exp.Values)):
            return self.table_free(source, seen)
        if isinstance(source, exp.Table):
            inner = source.this
            if isinstance(inner, exp.Func):
                name = self._func_name(inner)
                return name in ORDERED_TABLE_FUNCS and _is_constant(inner)
            name = source.name.lower()
            if source.args.get("db") is None and name in self.ctes:
                if name in seen:
                    return True  # the recursive reference of a recursive CTE
                if name not in self._table_free_memo:
                    self._table_free_memo[name] = self.table_free(self.ctes[name], seen | {name})
                return self._table_free_memo[name]
        return False

    def _base_sources(self, select: exp.Select) -> tuple[tuple[str, str | None], ...] | None:
        out = []
        for source in self._sources(select):
            if not isinstance(source, exp.Table) or isinstance(source.this, exp.Func):
                return None
            name = source.name
            if source.args.get("db") is None and name.lower() in self.ctes:
                return None
            out.append((name, source.alias or None))
        return tuple(out)

    def facts(self, query: exp.Expr, pin_ok: bool = False,
              order: exp.Expr | None = None) -> QueryFacts:
        if isinstance(query, exp.Subquery):
            query = query.this
        free = self.table_free(query)
        if not isinstance(query, exp.Select):
            return QueryFacts(table_free=free)
        single = query.args.get("group") is None and any(
            _is_aggregate(node) and _enclosing(node, (exp.Select,)) is query
            and _enclosing(node, (exp.Window,)) is None
            for node in query.find_all(exp.AggFunc))
        return QueryFacts(
            table_free=free,
            single_row=single,
            sources=self._base_sources(query),
            order=_order_refs(order if order is not None else query.args.get("order")),
            eq=_equalities(query.args.get("where")),
            pin_ok=pin_ok,
        )

    # -- calls ------------------------------------------------------------------------------

    def _func_name(self, node: exp.Expr) -> str:
        start = node.meta.get("start") if node._meta else None
        if start is not None and start in self.by_start:
            return self.tokens[self.by_start[start]].text.lower()
        if isinstance(node, exp.Anonymous):
            return str(node.this).lower()
        return node.key.lower()

    def span(self, first: int, last: int) -> tuple[int, int]:
        return self.tokens[first].start, self.tokens[last].end + 1

    def single_literal(self, first: int, last: int) -> Token | None:
        if first == last and self.tokens[first].token_type in _LITERAL_TOKENS:
            return self.tokens[first]
        return None

    def single_param(self, first: int, last: int) -> Param | None:
        start, end = self.span(first, last)
        for param in self.params:
            if param.start == start and param.end == end:
                return param
        return None


# -- contexts -------------------------------------------------------------------------------------


def _insert_arm(select: exp.Expr, root: exp.Expr) -> bool:
    """True when `select` is (an arm of) the row source of the root INSERT or CREATE ... AS."""
    node = select
    while isinstance(node.parent, _SET_OPERATION):
        node = node.parent
    return node.parent is root and node.arg_key == "expression"


def _context(node: exp.Expr, root: exp.Expr, single_values_row: bool) -> str:
    """How often a call runs: "once" per statement, "pinned" (once per row of an UPDATE's SET),
    "per-row", or "returning" (only shapes the result, and is not logged)."""
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.Returning):
            return "returning"
        if isinstance(parent, (exp.Subquery, exp.CTE, exp.Where, exp.Order, exp.Group, exp.Having,
                               exp.Window, exp.Join, exp.From, exp.Exists)):
            return "per-row"
        if isinstance(parent, exp.Values) and parent.parent is root and parent.arg_key == "expression":
            return "once"  # each VALUES row is evaluated once
        if isinstance(parent, exp.Select):
            if _from(parent) is None and _insert_arm(parent, root):
                return "once"
            return "per-row"
        if isinstance(parent, exp.OnConflict):
            return "once" if single_values_row else "per-row"
        if parent is root:
            if isinstance(root, exp.Update) and child.arg_key == "expressions":
                return "pinned"
            return "per-row"
        child, parent = parent, parent.parent
    return "per-row"


# -- the analysis ---------------------------------------------------------------------------------


def _target(table: exp.Expr) -> tuple[str, str | None]:
    if isinstance(table, exp.Schema):
        table = table.this
    if not isinstance(table, exp.Table) or isinstance(table.this, exp.Func):
        raise Unsafe("its target is not a plain table")
    db = table.args.get("db")
    if db is not None and db.name.lower() not in ("main",):
        raise Unsafe(f"it writes to schema {db.name!r}, which is not replicated")
    return table.name, (table.alias or None)


def _returning_span(a: _Analysis) -> tuple[int, int] | None:
    if a.root.args.get("returning") is None:
        return None
    found = [j for j in _depth0(a.tokens) if a.tokens[j].token_type == TokenType.RETURNING]
    if len(found) != 1:
        raise Unsafe("its RETURNING clause cannot be located")
    last = len(a.tokens) - 1
    while last > found[0] and a.tokens[last].token_type == TokenType.SEMICOLON:
        last -= 1
    return a.tokens[found[0]].start, a.tokens[last].end + 1


def _insert_layout(a: _Analysis, root: exp.Insert) -> dict:
    """Where things go when the defaults of omitted columns must be made explicit."""
    tokens = a.tokens
    layout: dict = {}
    schema = root.this
    columns = None
    if isinstance(schema, exp.Schema):
        idents = [e for e in schema.expressions if isinstance(e, exp.Identifier)]
        if len(idents) != len(schema.expressions) or not idents:
            raise Unsafe("its column list cannot be read")
        columns = tuple(i.name for i in idents)
        last = idents[-1].meta.get("start")
        j = a.by_start.get(last) if last is not None else None
        if j is None:
            raise Unsafe("its column list cannot be located")
        while j < len(tokens) and tokens[j].token_type != TokenType.R_PAREN:
            j += 1
        if j >= len(tokens):
            raise Unsafe("its column list cannot be located")
        layout["column_list_end"] = tokens[j].start
    layout["insert_columns"] = columns
    # The token after the target (and its column list) starts the row source.
    start_index = 0
    for j in _depth0(tokens):
        if tokens[j].token_type in (TokenType.INSERT, TokenType.REPLACE):
            start_index = j
            break
    source = root.expression
    if root.args.get("default"):
        layout["source"] = "default"
        for j in _depth0(tokens, start_index):
            if tokens[j].token_type == TokenType.DEFAULT and j + 1 < len(tokens) \
                    and tokens[j + 1].token_type == TokenType.VALUES:
                layout["default_values"] = (tokens[j].start, tokens[j + 1].end + 1)
                break
        else:
            raise Unsafe("its DEFAULT VALUES cannot be located")
    elif isinstance(source, exp.Values):
        layout["source"] = "values"
        layout["values_row_ends"] = _values_rows(a, start_index, len(source.expressions))
    elif source is not None:
        layout["source"] = "select"
        layout["arm_ends"] = _arm_ends(a, start_index, source)
    else:
        raise Unsafe("its row source cannot be read")
    return layout


def _values_rows(a: _Analysis, start_index: int, expected: int) -> tuple[int, ...]:
    tokens = a.tokens
    for j in _depth0(tokens, start_index):
        if tokens[j].token_type == TokenType.VALUES:
            break
    else:
        raise Unsafe("its VALUES cannot be located")
    ends = []
    k = j + 1
    while k < len(tokens) and tokens[k].token_type == TokenType.L_PAREN:
        close = _matching(tokens, k)
        ends.append(tokens[close].start)
        k = close + 1
        if k < len(tokens) and tokens[k].token_type == TokenType.COMMA:
            k += 1
        else:
            break
    if len(ends) != expected:
        raise Unsafe("its VALUES rows cannot be located")
    return tuple(ends)


def _arms(query: exp.Expr) -> list[exp.Expr]:
    if isinstance(query, _SET_OPERATION):
        return _arms(query.this) + _arms(query.expression)
    return [query]


def _arm_ends(a: _Analysis, start_index: int, source: exp.Expr) -> tuple[int, ...] | None:
    """Where each SELECT arm's result columns end (None when they cannot be located)."""
    tokens = a.tokens
    arms = _arms(source)
    ends: list[int] = []
    positions = list(_depth0(tokens, start_index + 1))
    k = 0
    # skip to the first SELECT of the source at depth 0 (a WITH of the SELECT is in parentheses)
    while k < len(positions) and tokens[positions[k]].token_type not in (TokenType.SELECT, TokenType.VALUES):
        k += 1
    while k < len(positions):
        tok = tokens[positions[k]]
        if tok.token_type == TokenType.VALUES:
            return None  # a VALUES arm inside a compound: not handled
        if tok.token_type != TokenType.SELECT:
            return None
        k += 1
        while k < len(positions) and tokens[positions[k]].token_type not in _CLAUSE_STOP:
            k += 1
        ends.append(tokens[positions[k - 1]].end + 1)
        while k < len(positions) and tokens[positions[k]].token_type not in _SET_OPS:
            k += 1
        if k >= len(positions) or tokens[positions[k]].token_type not in _SET_OPS:
            break
        k += 1
        if k < len(positions) and tokens[positions[k]].token_type == TokenType.ALL:
            k += 1
    if len(ends) != len(arms) or not all(isinstance(arm, exp.Select) for arm in arms):
        return None
    return tuple(ends)


def _analyze(sql: str) -> TextPlan:
    a = _Analysis(sql)
    root = a.root
    kinds: dict[type, str] = {exp.Insert: "insert", exp.Update: "update", exp.Delete: "delete"}
    kind = kinds.get(type(root))
    if kind is None:
        if isinstance(root, exp.Create) and isinstance(root.expression, (exp.Select, _SET_OPERATION)):
            kind = "ctas"
        else:
            raise Unsafe("it is not a plain INSERT, UPDATE, DELETE or CREATE TABLE ... AS SELECT")
    fields: dict = {"kind": kind, "params": tuple(a.params),
                    "param_count": max((p.index for p in a.params), default=0)}
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
    returning = _returning_span(a)
    fields["returning"] = returning

    def in_returning(pos: int) -> bool:
        return returning is not None and returning[0] <= pos < returning[1]

    needs: list[OrderNeed] = []
    single_values_row = False
    if isinstance(root, exp.Insert):
        fields["target"], fields["target_alias"] = _target(root.this)
        fields.update(_insert_layout(a, root))
        source = root.expression
        single_values_row = isinstance(source, exp.Values) and len(source.expressions) == 1
        if fields["source"] == "select":
            fields["source_facts"] = a.facts(source)
            needs.append(OrderNeed(fields["source_facts"], "insert_select", "INSERT ... SELECT"))
    elif isinstance(root, (exp.Update, exp.Delete)):
        fields["target"], fields["target_alias"] = _target(root.this)
        if _from(root) is not None:
            raise Unsafe("UPDATE ... FROM uses one arbitrary row of the join when several match a row "
                         "to update")
        fields["pin_eq"] = _equalities(root.args.get("where"))
        if root.args.get("limit") is not None or root.args.get("offset") is not None:
            needs.append(OrderNeed(
                QueryFacts(sources=((fields["target"], fields["target_alias"]),),
                           order=_order_refs(root.args.get("order"))),
                "limit", f"{kind.upper()} with LIMIT"))
    else:  # CREATE TABLE ... AS SELECT: the new table assigns rowids in the SELECT's row order
        fields["source_facts"] = a.facts(root.expression)
        needs.append(OrderNeed(fields["source_facts"], "ctas", "CREATE TABLE ... AS SELECT"))

    # ORDER BY random() and friends, LIMIT anywhere, scalar subqueries, order-sensitive functions.
    for node in root.walk():
        if isinstance(node, exp.Ordered):
            for call in node.walk():
                if isinstance(call, exp.Func) and a._func_name(call) in RANDOM_FUNCS:
                    raise Unsafe(f"ORDER BY {a._func_name(call)}() orders rows differently on every node")
        if isinstance(node, (exp.Select, _SET_OPERATION)) and node is not root:
            if node.args.get("limit") is not None or node.args.get("offset") is not None:
                needs.append(OrderNeed(a.facts(node), "limit", "LIMIT in a query of a write"))
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select):
            parent = node.parent
            if not isinstance(parent, (exp.In, exp.Exists, exp.From, exp.Join, exp.CTE)) \
                    and not in_returning(_first_pos(node)):
                needs.append(OrderNeed(a.facts(node.this, pin_ok=True), "scalar",
                                       "a scalar subquery that may return several rows"))
        if isinstance(node, exp.Func):
            name = a._func_name(node)
            if name in ORDER_SENSITIVE and not in_returning(node.meta.get("start", -1) if node._meta else -1):
                select = _enclosing(node, (exp.Select,))
                window = node.parent if isinstance(node.parent, exp.Window) else None
                if select is not None:
                    order = window.args.get("order") if window is not None else None
                    if order is None and isinstance(node.this, exp.Order):
                        order = node.this  # group_concat(x ORDER BY y)
                    facts = a.facts(select, order=order) if order is not None else QueryFacts(
                        table_free=a.table_free(select))
                    needs.append(OrderNeed(facts, "window" if window is not None else "aggregate",
                                           f"{name}() over rows in no fixed order"))

    # Nondeterministic calls: located by token, confirmed by sqlglot's tree.
    computed: list[Computed] = []
    guards: list[Guard] = []
    modifier_params: list[int] = []
    covered: list[tuple[int, int]] = []

    def inside(pos: int) -> bool:
        return any(s <= pos < e for s, e in covered)

    tokens = a.tokens
    for i, tok in enumerate(tokens):
        if tok.token_type in CURRENT_KEYWORDS:
            if not in_returning(tok.start) and not inside(tok.start):
                computed.append(Computed(tok.start, tok.end + 1, CURRENT_KEYWORDS[tok.token_type],
                                         what=CURRENT_KEYWORDS[tok.token_type]))
            continue
        if i + 1 >= len(tokens) or tokens[i + 1].token_type != TokenType.L_PAREN:
            continue
        name = tok.text.lower()
        if name not in RANDOM_FUNCS and name not in TIME_FUNCS:
            continue
        if in_returning(tok.start) or inside(tok.start):
            continue
        found = a.funcs.get(tok.start)
        if found is None:
            if tok.start in a.idents:
                continue  # a table or column named like a function, e.g. INSERT INTO date(x)
            raise Unsafe(f"the call to {name}() cannot be analyzed")
        node = found
        args, close = _call_args(tokens, i)
        call_span = (tok.start, tokens[close].end + 1)
        if name in RANDOM_FUNCS:
            where = _context(node, root, single_values_row)
            if where == "returning":
                continue
            if where == "per-row":
                raise Unsafe(f"{name}() is evaluated once per row here; statement-based replication "
                             "can only fix values computed once per statement (in VALUES, or in an UPDATE "
                             "of one row selected by a unique key)")
            if not _is_constant(node):
                raise Unsafe(f"the argument of {name}() is not a constant")
            computed.append(Computed(*call_span, needs_pinned=where == "pinned", what=f"{name}()"))
            covered.append(call_span)
            continue
        # date/time functions
        if _is_constant(node):
            if _static_time(a, name, args):
                continue
            pinned = False
            if any(isinstance(f, exp.Func) and a._func_name(f) in RANDOM_FUNCS for f in node.walk()):
                where = _context(node, root, single_values_row)  # random() inside: once per row?
                if where == "per-row":
                    raise Unsafe(f"random() inside {name}() is evaluated once per row here")
                pinned = where == "pinned"
            computed.append(Computed(*call_span, needs_pinned=pinned, what=f"{name}()"))
            covered.append(call_span)
            continue
        value_args = _TIME_VALUE_ARGS.get(name, (0,))
        for position, (first, last) in enumerate(args):
            literal = a.single_literal(first, last)
            if position in value_args:
                if literal is not None and literal.text.lower() not in NOW_WORDS:
                    continue
                guards.append(Guard(*a.span(first, last)))
                continue
            if literal is not None and literal.token_type == TokenType.STRING:
                if literal.text.lower() in TZ_MODIFIERS:
                    raise Unsafe(f"modifier {literal.text!r} applied to a column value depends on each "
                                 "node's time zone")
                continue
            param = a.single_param(first, last)
            if param is not None:
                modifier_params.append(param.index)
                continue
            raise Unsafe(f"a modifier of {name}() is not a literal, so it may be 'localtime' or 'utc'")
    fields.update(computed=tuple(computed), guards=tuple(guards), modifier_params=tuple(modifier_params),
                  needs=tuple(needs))
    return TextPlan(sql=sql, **fields)


def _first_pos(node: exp.Expr) -> int:
    for sub in node.walk():
        if sub._meta and "start" in sub.meta:
            return sub.meta["start"]
    return -1


def _static_time(a: _Analysis, name: str, args: list[tuple[int, int]]) -> bool:
    """True when a date/time call with literal arguments gives the same value everywhere."""
    value_args = _TIME_VALUE_ARGS.get(name, (0,))
    if not any(position < len(args) for position in value_args):
        return False  # no time value: 'now'
    for position, (first, last) in enumerate(args):
        literal = a.single_literal(first, last)
        if literal is None:
            return False  # a parameter or an expression: evaluated on the leader
        word = literal.text.lower()
        if (position in value_args and word in NOW_WORDS) or word in TZ_MODIFIERS:
            return False
    return True


@lru_cache(maxsize=4096)
def analyze(sql: str) -> TextPlan:
    """The analysis of one write statement's text (cached: sqlglot parsing is slow)."""
    try:
        return _analyze(sql)
    except Unsafe as exc:
        return TextPlan(sql=sql, kind="other", unsafe=str(exc))
    except RecursionError:
        return TextPlan(sql=sql, kind="other", unsafe="it is nested too deeply to analyze")


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
        tokens = _tokens(text)
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
                    sub = _Analysis("SELECT " + text)
                except Unsafe:
                    kind = "time"
                    continue
                offset = len("SELECT ")
                j = sub.by_start.get(tok.start + offset)
                if j is None:
                    kind = "time"
                    continue
                args, _ = _call_args(sub.tokens, j)
                if not _static_time(sub, name, args):
                    kind = "time"
    return DefaultKind(kind, functions=frozenset(names))


def is_create_as(sql: str) -> bool:
    """True for CREATE TABLE ... AS SELECT (AS followed by a query at parenthesis depth 0); a plain
    CREATE TABLE has its AS (generated columns) inside the column list."""
    try:
        tokens = _tokens(sql)
    except Unsafe:
        return True  # cannot tell: analyze() will refuse it
    positions = list(_depth0(tokens))
    for k, j in enumerate(positions[:-1]):
        if tokens[j].token_type == TokenType.ALIAS and tokens[positions[k + 1]].token_type in (
                TokenType.SELECT, TokenType.WITH, TokenType.VALUES):
            return True
    return False


def table_tokens(sql: str) -> list[tuple[str, str]]:
    """(token type name, upper text) of a CREATE TABLE statement, for CHECK / ON CONFLICT lookups."""
    try:
        return [(t.token_type.name, t.text.upper()) for t in _tokens(sql)]
    except Unsafe:
        return []


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_identifier(name: str) -> str:
    """An identifier as SQL text, quoted only when needed."""
    if _IDENT.match(name) and name.upper() not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


_RESERVED = frozenset({
    "ABORT", "ACTION", "ADD", "AFTER", "ALL", "ALTER", "ALWAYS", "ANALYZE", "AND", "AS", "ASC", "ATTACH",
    "AUTOINCREMENT", "BEFORE", "BEGIN", "BETWEEN", "BY", "CASCADE", "CASE", "CAST", "CHECK", "COLLATE",
    "COLUMN", "COMMIT", "CONFLICT", "CONSTRAINT", "CREATE", "CROSS", "CURRENT", "CURRENT_DATE",
    "CURRENT_TIME", "CURRENT_TIMESTAMP", "DATABASE", "DEFAULT", "DEFERRABLE", "DEFERRED", "DELETE",
    "DESC", "DETACH", "DISTINCT", "DO", "DROP", "EACH", "ELSE", "END", "ESCAPE", "EXCEPT", "EXCLUDE",
    "EXCLUSIVE", "EXISTS", "EXPLAIN", "FAIL", "FILTER", "FIRST", "FOLLOWING", "FOR", "FOREIGN", "FROM",
    "FULL", "GENERATED", "GLOB", "GROUP", "GROUPS", "HAVING", "IF", "IGNORE", "IMMEDIATE", "IN",
    "INDEX", "INDEXED", "INITIALLY", "INNER", "INSERT", "INSTEAD", "INTERSECT", "INTO", "IS", "ISNULL",
    "JOIN", "KEY", "LAST", "LEFT", "LIKE", "LIMIT", "MATCH", "MATERIALIZED", "NATURAL", "NO", "NOT",
    "NOTHING", "NOTNULL", "NULL", "NULLS", "OF", "OFFSET", "ON", "OR", "ORDER", "OTHERS", "OUTER",
    "OVER", "PARTITION", "PLAN", "PRAGMA", "PRECEDING", "PRIMARY", "QUERY", "RAISE", "RANGE",
    "RECURSIVE", "REFERENCES", "REGEXP", "REINDEX", "RELEASE", "RENAME", "REPLACE", "RESTRICT",
    "RETURNING", "RIGHT", "ROLLBACK", "ROW", "ROWS", "SAVEPOINT", "SELECT", "SET", "TABLE", "TEMP",
    "TEMPORARY", "THEN", "TIES", "TO", "TRANSACTION", "TRIGGER", "UNBOUNDED", "UNION", "UNIQUE",
    "UPDATE", "USING", "VACUUM", "VALUES", "VIEW", "VIRTUAL", "WHEN", "WHERE", "WINDOW", "WITH",
    "WITHOUT",
})
