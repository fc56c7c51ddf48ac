"""Where the text of a write statement is rewritten, found in its tokens and tree.

Rewriting splices the original text at token positions (see determinism.py): the calls whose value
differs per node (random(), the clock) become parameters the leader computes (`Computed`), time
values that may be 'now' are wrapped (`Guard`), the RETURNING clause is left out of the log, and
the INSERT's column list, VALUES rows or SELECT arms get the values of omitted columns' DEFAULTs.
Anything that cannot be located this way raises Unsafe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.tokens import TokenType

from .determinism_tokens import (
    CURRENT_KEYWORDS,
    NOW_WORDS,
    RANDOM_FUNCS,
    TIME_FUNCS,
    TZ_MODIFIERS,
    Unsafe,
    call_args,
    depth0,
    matching,
)
from .determinism_tree import SET_OPERATION, Analysis, context, is_constant

# Where the time value(s) sit in each time function's arguments; the others are modifiers.
_TIME_VALUE_ARGS = {"strftime": (1,), "timediff": (0, 1)}
_CLAUSE_STOP = frozenset({
    TokenType.FROM, TokenType.WHERE, TokenType.GROUP_BY, TokenType.HAVING, TokenType.WINDOW,
    TokenType.ORDER_BY, TokenType.LIMIT, TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT,
    TokenType.ON, TokenType.RETURNING, TokenType.SEMICOLON,
})
_SET_OPS = frozenset({TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT})


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


def returning_span(a: Analysis) -> tuple[int, int] | None:
    if a.root.args.get("returning") is None:
        return None
    found = [j for j in depth0(a.tokens) if a.tokens[j].token_type == TokenType.RETURNING]
    if len(found) != 1:
        raise Unsafe("its RETURNING clause cannot be located")
    last = len(a.tokens) - 1
    while last > found[0] and a.tokens[last].token_type == TokenType.SEMICOLON:
        last -= 1
    return a.tokens[found[0]].start, a.tokens[last].end + 1


def insert_layout(a: Analysis, root: exp.Insert) -> dict:
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
    for j in depth0(tokens):
        if tokens[j].token_type in (TokenType.INSERT, TokenType.REPLACE):
            start_index = j
            break
    source = root.expression
    if root.args.get("default"):
        layout["source"] = "default"
        for j in depth0(tokens, start_index):
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


def _values_rows(a: Analysis, start_index: int, expected: int) -> tuple[int, ...]:
    tokens = a.tokens
    for j in depth0(tokens, start_index):
        if tokens[j].token_type == TokenType.VALUES:
            break
    else:
        raise Unsafe("its VALUES cannot be located")
    ends = []
    k = j + 1
    while k < len(tokens) and tokens[k].token_type == TokenType.L_PAREN:
        close = matching(tokens, k)
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
    if isinstance(query, SET_OPERATION):
        return _arms(query.this) + _arms(query.expression)
    return [query]


def _arm_ends(a: Analysis, start_index: int, source: exp.Expr) -> tuple[int, ...] | None:
    """Where each SELECT arm's result columns end (None when they cannot be located)."""
    tokens = a.tokens
    arms = _arms(source)
    ends: list[int] = []
    positions = list(depth0(tokens, start_index + 1))
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


def nondeterministic_calls(a: Analysis, in_returning: Callable[[int], bool], single_values_row: bool
                           ) -> tuple[list[Computed], list[Guard], list[int]]:
    """The calls the leader evaluates before it runs the statement, the time values it guards,
    and the parameters used as date/time modifiers: located by token, confirmed by sqlglot's tree."""
    root = a.root
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
        args, close = call_args(tokens, i)
        call_span = (tok.start, tokens[close].end + 1)
        if name in RANDOM_FUNCS:
            where = context(node, root, single_values_row)
            if where == "returning":
                continue
            if where == "per-row":
                raise Unsafe(f"{name}() is evaluated once per row here; statement-based replication "
                             "can only fix values computed once per statement (in VALUES, or in an UPDATE "
                             "of one row selected by a unique key)")
            if not is_constant(node):
                raise Unsafe(f"the argument of {name}() is not a constant")
            computed.append(Computed(*call_span, needs_pinned=where == "pinned", what=f"{name}()"))
            covered.append(call_span)
            continue
        # date/time functions
        if is_constant(node):
            if static_time(a, name, args):
                continue
            pinned = False
            if any(isinstance(f, exp.Func) and a.func_name(f) in RANDOM_FUNCS for f in node.walk()):
                where = context(node, root, single_values_row)  # random() inside: once per row?
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
    return computed, guards, modifier_params


def static_time(a: Analysis, name: str, args: list[tuple[int, int]]) -> bool:
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
