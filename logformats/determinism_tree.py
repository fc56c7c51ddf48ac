"""A write statement parsed by sqlglot (dialect sqlite), and what its tree says about row order.

`Analysis` holds the tokens and the tree of one statement (parsed from a same-length normalized
text, so token positions are those of the original). From the tree come "facts" about the order
rows are visited in (LIMIT, ORDER BY, WHERE equalities, row sources), for the statement format to
judge against the schema, and how often a call is evaluated (once per statement, or per row).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from .determinism_tokens import RANDOM_FUNCS, Param, Unsafe, depth0, number_params, tokenize

# sqlglot logs a warning when it falls back to a Command; that is our "unparseable", said otherwise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

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
_LITERAL_TOKENS = frozenset({TokenType.STRING, TokenType.NUMBER})


# sqlglot renamed these over versions (Union became a SetOperation; "from" became "from_").
SET_OPERATION = getattr(exp, "SetOperation", exp.Union)


def from_clause(select: exp.Expr) -> exp.Expr | None:
    return select.args.get("from_", select.args.get("from"))


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


# -- the tree -------------------------------------------------------------------------------------


def _columns(node: exp.Expr) -> list[exp.Column]:
    return list(node.find_all(exp.Column))


def _has_query(node: exp.Expr) -> bool:
    return any(True for _ in node.find_all(exp.Select, exp.Subquery, exp.Exists))


def is_constant(node: exp.Expr) -> bool:
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


def equalities(where: exp.Expr | None) -> tuple[tuple[ColumnRef, tuple[ColumnRef, ...]], ...]:
    """WHERE conjuncts `column = expression`, with the columns the expression reads."""
    out = []
    for term in _conjuncts(where):
        if not isinstance(term, exp.EQ):
            continue
        for col, other in ((term.this, term.expression), (term.expression, term.this)):
            if isinstance(col, exp.Column) and not _has_query(other):
                out.append((_ref(col), tuple(_ref(c) for c in _columns(other))))
    return tuple(out)


def order_refs(order: exp.Expr | None) -> tuple[ColumnRef, ...] | None:
    if order is None:
        return None
    refs = []
    for term in order.expressions:
        inner = term.this if isinstance(term, exp.Ordered) else term
        if not isinstance(inner, exp.Column):
            return None  # an expression, a collation or a result-column number: not a key
        refs.append(_ref(inner))
    return tuple(refs)


# SQLite aggregates sqlglot does not know (it parses them as anonymous functions).
_ANONYMOUS_AGGREGATES = frozenset({"total", "percentile", "percentile_cont", "percentile_disc"})


def _is_aggregate(node: exp.Expr) -> bool:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower() in _ANONYMOUS_AGGREGATES
    return isinstance(node, exp.AggFunc) and not isinstance(node, (exp.Greatest, exp.Least))


def _enclosing(node: exp.Expr, kinds: tuple[type, ...]) -> exp.Expr | None:
    parent = node.parent
    while parent is not None and not isinstance(parent, kinds):
        parent = parent.parent
    return parent


class Analysis:
    """One statement's tokens and tree; see determinism.analyze()."""

    def __init__(self, sql: str):
        self.sql = sql
        self.tokens = tokenize(sql)
        if not self.tokens:
            raise Unsafe("it is empty")
        self.params, replacements = number_params(sql, self.tokens)
        self.conflict: str | None = None
        parse_text = self._normalize(list(replacements))
        # sqlglot tokenizes `REPLACE ...` as a command followed by one string: the tokens of the
        # normalized text (same positions) are the ones that describe the statement.
        self.tokens = tokenize(parse_text)
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
        for j in depth0(tokens):
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
        if isinstance(query, SET_OPERATION):
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
        from_ = from_clause(select)
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
                name = self.func_name(inner)
                return name in ORDERED_TABLE_FUNCS and is_constant(inner)
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
            for node in query.find_all(exp.AggFunc, exp.Anonymous))
        return QueryFacts(
            table_free=free,
            single_row=single,
            sources=self._base_sources(query),
            order=order_refs(order if order is not None else query.args.get("order")),
            eq=equalities(query.args.get("where")),
            pin_ok=pin_ok,
        )

    # -- calls ------------------------------------------------------------------------------

    def func_name(self, node: exp.Expr) -> str:
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
    while isinstance(node.parent, SET_OPERATION):
        node = node.parent
    return node.parent is root and node.arg_key == "expression"


def context(node: exp.Expr, root: exp.Expr, single_values_row: bool) -> str:
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
            if from_clause(parent) is None and _insert_arm(parent, root):
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


def _first_pos(node: exp.Expr) -> int:
    for sub in node.walk():
        if sub._meta and "start" in sub.meta:
            return sub.meta["start"]
    return -1


def order_needs(a: Analysis, in_returning: Callable[[int], bool]) -> list[OrderNeed]:
    """ORDER BY random() and friends (refused), then the queries whose row order must be fixed:
    LIMIT anywhere, scalar subqueries, order-sensitive functions."""
    root = a.root
    needs: list[OrderNeed] = []
    for node in root.walk():
        if isinstance(node, exp.Ordered):
            for call in node.walk():
                if isinstance(call, exp.Func) and a.func_name(call) in RANDOM_FUNCS:
                    raise Unsafe(f"ORDER BY {a.func_name(call)}() orders rows differently on every node")
        if isinstance(node, (exp.Select, SET_OPERATION)) and node is not root \
                and not isinstance(node.parent, exp.Exists):  # EXISTS only counts the rows
            if node.args.get("limit") is not None or node.args.get("offset") is not None:
                # pin_ok: a WHERE selecting one row by a unique key leaves nothing to choose
                needs.append(OrderNeed(a.facts(node, pin_ok=True), "limit", "LIMIT in a query of a write"))
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select):
            parent = node.parent
            if not isinstance(parent, (exp.In, exp.Exists, exp.From, exp.Join, exp.CTE)) \
                    and not in_returning(_first_pos(node)):
                needs.append(OrderNeed(a.facts(node.this, pin_ok=True), "scalar",
                                       "a scalar subquery that may return several rows"))
        if isinstance(node, exp.Func):
            name = a.func_name(node)
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
    return needs
