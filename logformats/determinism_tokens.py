"""A statement's text as sqlglot's SQLite tokens, for the determinism analysis (determinism.py).

What the tokens alone say: the words that make a statement nondeterministic, how SQLite numbers
the parameters, where parentheses and call arguments are, whether a CREATE TABLE copies rows
(AS SELECT), and how an identifier is written. The parsed tree is in determinism_tree.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokens import Token, TokenType

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


class Unsafe(Exception):
    """Raised inside the analysis; becomes TextPlan.unsafe."""


@dataclass(frozen=True)
class Param:
    """One parameter token: its place in the text and the number SQLite gives it."""

    start: int
    end: int  # exclusive
    index: int
    name: str | None  # as SQLite reports it, without its prefix; None for an anonymous '?'


def tokenize(sql: str) -> list[Token]:
    try:
        return list(_DIALECT.tokenize(sql))
    except Exception as exc:  # sqlglot raises its own TokenError and, on odd input, others
        raise Unsafe(f"sqlglot cannot tokenize it ({exc})") from None


def number_params(sql: str, tokens: list[Token]) -> tuple[list[Param], list[tuple[int, int, str]]]:
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


def matching(tokens: list[Token], open_index: int) -> int:
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


def depth0(tokens: list[Token], start: int = 0) -> Iterator[int]:
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


def call_args(tokens: list[Token], name_index: int) -> tuple[list[tuple[int, int]], int]:
    """Token index ranges (inclusive) of a call's arguments, and the index of its ')'."""
    open_index = name_index + 1
    close = matching(tokens, open_index)
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


def is_create_as(sql: str) -> bool:
    """True for CREATE TABLE ... AS SELECT (AS followed by a query at parenthesis depth 0); a plain
    CREATE TABLE has its AS (generated columns) inside the column list."""
    try:
        tokens = tokenize(sql)
    except Unsafe:
        return True  # cannot tell: analyze() will refuse it
    positions = list(depth0(tokens))
    for k, j in enumerate(positions[:-1]):
        if tokens[j].token_type == TokenType.ALIAS and tokens[positions[k + 1]].token_type in (
                TokenType.SELECT, TokenType.WITH, TokenType.VALUES):
            return True
    return False


def table_tokens(sql: str) -> list[tuple[str, str]]:
    """(token type name, upper text) of a CREATE TABLE statement, for CHECK / ON CONFLICT lookups."""
    try:
        return [(t.token_type.name, t.text.upper()) for t in tokenize(sql)]
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
