"""What row images can and cannot identify: keys and tables as SQLite itself defines them.

The session extension identifies a row by its PRIMARY KEY (or its rowid), compared as bytes; SQLite
compares keys with their collation and affinity. Where the two disagree, or where a follower's apply
would hit a limit the leader never met, the row format must either apply exactly or refuse before
commit. Everything is read from SQLite's own catalog (index lists, column metadata), never from
the text of a declaration, and cached per connection and PRAGMA schema_version.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import apsw

from .base import CaptureError, is_internal_table

# SQLite's own collations: every follower has them (a collation registered by the application
# on the leader connection exists nowhere else).
BUILTIN_COLLATIONS = frozenset({"binary", "nocase", "rtrim"})


@dataclass(frozen=True)
class KeyInfo:
    """Per schema: the tables whose keys the session extension cannot be trusted with."""

    # rowid tables whose PRIMARY KEY is not the rowid and may hold NULL (a SQLite legacy quirk)
    nullable: tuple[tuple[str, tuple[str, ...]], ...]
    # tables with a key column of BLOB affinity, where 0 and 0.0 are different values but one key
    untyped: frozenset[str]
    # tables (lower-cased) whose key compares under a collation other than BINARY ('abc' and 'ABC'
    # one key) -> {column position: collation (lower-cased)} of their key columns
    collated: dict[str, dict[int, str]]
    # table (lower-cased) -> columns of its row images (the rowid is one for a table without key)
    image_columns: dict[str, int]


# connection -> (schema_version, KeyInfo); keyed by the connection, not the file name: a file
# recreated at the same path starts its schema version over and must not inherit the answer.
_KEY_INFO: weakref.WeakKeyDictionary[apsw.Connection, tuple[int, KeyInfo]] = weakref.WeakKeyDictionary()


def _schema_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA main.schema_version").fetchone()[0]


def affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type (https://sqlite.org/datatype3.html)."""
    upper = declared.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not upper or "BLOB" in upper:
        return "BLOB"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def key_index(conn: apsw.Connection, table: str) -> str | None:
    """The index SQLite keeps for the PRIMARY KEY of `table` (origin 'pk'), or None when there is
    none: the table has no PRIMARY KEY, or its key is the rowid itself."""
    row = conn.execute("SELECT name FROM pragma_index_list(?) WHERE origin = 'pk'", (table,)).fetchone()
    return None if row is None else row[0]


def is_rowid_alias(conn: apsw.Connection, table: str, without_rowid: bool) -> bool:
    """True when the PRIMARY KEY of rowid table `table` is an alias of its rowid. SQLite decides
    that from the exact declaration (`INTEGER PRIMARY KEY` yes; `INTEGER PRIMARY KEY DESC`,
    `INT PRIMARY KEY`, `INTEGER(8) PRIMARY KEY` no) and shows it by keeping no separate index for
    the key, so that is what is asked here, never the declared text."""
    if without_rowid:
        return False
    keys = conn.execute("SELECT count(*) FROM pragma_table_info(?) WHERE pk > 0", (table,)).fetchone()[0]
    return keys == 1 and key_index(conn, table) is None


def key_info(conn: apsw.Connection, schema_version: int | None = None, cache: bool = True) -> KeyInfo:
    """The KeyInfo of conn's main schema. `cache=False` inside a transaction that changed the
    schema (its schema_version may come round again with another schema after a rollback)."""
    version = _schema_version(conn) if schema_version is None else schema_version
    cached = _KEY_INFO.get(conn) if cache else None
    if cached is not None and cached[0] == version:
        return cached[1]
    nullable: list[tuple[str, tuple[str, ...]]] = []
    untyped: set[str] = set()
    collated: dict[str, dict[int, str]] = {}
    width: dict[str, int] = {}
    for name, without_rowid in conn.execute(
        "SELECT name, wr FROM pragma_table_list WHERE schema='main' AND type='table'"
    ).fetchall():
        if is_internal_table(name):
            continue
        info = conn.execute('SELECT name, type, "notnull", pk, hidden FROM pragma_table_xinfo(?)',
                            (name,)).fetchall()
        keys = sorted((pk, col, decl, nn) for col, decl, nn, pk, hidden in info if pk)
        columns = sum(1 for *_x, hidden in info if hidden != 1)
        width[name.lower()] = columns + (0 if keys else 1)
        if not keys or is_rowid_alias(conn, name, bool(without_rowid)):
            continue
        if any(affinity(decl) == "BLOB" for _pk, _col, decl, _nn in keys):
            untyped.add(name)
        index = key_index(conn, name)
        if index is not None:
            colls = {cid: (coll or "binary").lower() for cid, coll in conn.execute(
                "SELECT cid, coll FROM pragma_index_xinfo(?) WHERE key = 1", (index,))}
            if any(coll != "binary" for coll in colls.values()):
                collated[name.lower()] = colls
        null_ok = tuple(col for _pk, col, _decl, nn in keys if not nn)
        if null_ok and not without_rowid:
            nullable.append((name, null_ok))
    found = KeyInfo(tuple(nullable), frozenset(untyped), collated, width)
    if cache:
        _KEY_INFO[conn] = (version, found)
    return found


def refuse_ambiguous_keys(changesets: Iterable[bytes], info: KeyInfo) -> None:
    """Refuse a transaction whose images name one key twice, as happens when a row keyed 0.0 is
    replaced by one keyed 0 in a BLOB-affinity key: equal to SQLite, two rows to the session
    extension, and no follower could apply the result."""
    untyped = info.untyped
    if not untyped:
        return
    for data in changesets:
        seen: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]] = {}
        for change in apsw.Changeset.iter(data):
            if change.name not in untyped:
                continue
            image = change.old if change.old is not None else change.new
            key = tuple(image[i] for i in sorted(change.pk_columns))
            loose = (change.name, tuple(float(v) if isinstance(v, int) else v for v in key))
            if loose in seen:
                raise CaptureError(
                    f"table {change.name!r}: key {key!r} appears twice in the row images (a row "
                    "replaced by one whose key is equal but of another type, such as 0.0 and 0, in a "
                    "key column without type affinity); followers could not apply it, so the "
                    "transaction was not committed. Give the key column a type (INTEGER, REAL or TEXT)")
            seen[loose] = key


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _collated(value: Any, collation: str) -> Any:
    """A value such that two key values SQLite finds equal under `collation` are equal here."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # 1 and 1.0 are one key
    if not isinstance(value, str):
        return value
    if collation == "nocase":
        return value.translate(_ASCII_LOWER)  # SQLite's NOCASE folds ASCII letters only
    if collation == "rtrim":
        return value.rstrip(" ")
    return value


def refuse_collated_keys(changesets: Iterable[bytes], info: KeyInfo) -> None:
    """Refuse a transaction that changes a key only as its collation sees it ('abc' -> 'ABC' under
    NOCASE, 'a' -> 'a ' under RTRIM). The session extension compares keys as bytes but finds rows
    with the key's collation, so it logs such a row twice (an INSERT, and an UPDATE of the key or a
    DELETE) and no follower could apply that. Keys under a collation the application registered
    are refused outright: followers do not have it."""
    collated = info.collated
    if not collated:
        return
    for data in changesets:
        seen: set[tuple[str, tuple[Any, ...]]] = set()
        for change in apsw.Changeset.iter(data):
            colls = collated.get(change.name.lower())
            if colls is None:
                continue
            foreign = sorted({c for c in colls.values() if c not in BUILTIN_COLLATIONS})
            if foreign:
                raise CaptureError(
                    f"table {change.name!r}: its PRIMARY KEY compares with collation "
                    f"{', '.join(foreign)}, which only this connection has; followers could not "
                    "apply its rows, so the transaction was not committed")
            old = change.old if change.old is not None else change.new
            positions = sorted(change.pk_columns)
            key = tuple(old[i] for i in positions)
            moved = change.op == "UPDATE" and any(
                change.new[i] is not apsw.no_change and change.new[i] != old[i] for i in positions)
            loose = (change.name.lower(),
                     tuple(_collated(old[i], colls.get(i, "binary")) for i in positions))
            if moved or loose in seen:
                raise CaptureError(
                    f"table {change.name!r}: key {key[0] if len(key) == 1 else key!r} was changed "
                    "into a key its collation finds equal (such as 'abc' and 'ABC' under NOCASE); row "
                    "images cannot tell the two apart, so the transaction was not committed. Delete "
                    "and insert the row in separate statements, or use the statement or trigger format")
            seen.add(loose)


def refuse_null_keys(conn: apsw.Connection, info: KeyInfo, tables: set[str] | None = None) -> None:
    """The session extension skips rows whose PRIMARY KEY holds NULL: refuse rather than lose them.
    `info`: key_info of conn's schema as it is now. `tables`: check only these tables (default:
    every table)."""
    for table, columns in info.nullable:
        if tables is not None and table not in tables:
            continue
        quoted = '"' + table.replace('"', '""') + '"'
        test = " OR ".join('"' + c.replace('"', '""') + '" IS NULL' for c in columns)
        if conn.execute(f"SELECT 1 FROM main.{quoted} WHERE {test} LIMIT 1").fetchone():
            raise CaptureError(
                f"table {table!r} has rows with NULL in its PRIMARY KEY ({', '.join(columns)}); "
                "row images cannot identify them, so the transaction was not committed. "
                "Give those rows a key, or declare the key columns NOT NULL")


def apply_column_limit(conn: apsw.Connection) -> int:
    """The most columns a table's row images may have for SQLite's changeset apply to work: it
    prepares statements whose WHERE clause nests one expression per column (`... AND (? OR c IS ?)`),
    so wider tables hit SQLITE_LIMIT_EXPR_DEPTH on every follower. Measured on SQLite 3.54: a rowid
    table applies with depth - 2 columns and fails with one more; tables with long keys allow a little
    more (not counted on)."""
    return conn.limit(apsw.SQLITE_LIMIT_EXPR_DEPTH, -1) - 2


def refuse_wide_tables(conn: apsw.Connection, tables: Iterable[str], info: KeyInfo) -> None:
    """Refuse row images of a table too wide for a follower to apply (see apply_column_limit)."""
    limit = apply_column_limit(conn)
    width = info.image_columns
    for table in sorted(tables):
        count = width.get(table.lower())
        if count is not None and count > limit:
            raise CaptureError(
                f"table {table!r} has {count} columns in its row images; followers apply them with "
                f"statements nesting one expression per column, which SQLite allows for {limit} "
                "columns at most (SQLITE_LIMIT_EXPR_DEPTH), so the transaction was not committed. "
                "Split the table, or use the statement or trigger format")


def application_collations(conn: apsw.Connection) -> frozenset[str]:
    """Collations registered on `conn` beyond SQLite's own (lower-cased)."""
    return frozenset(name.lower() for (name,) in conn.execute("SELECT name FROM pragma_collation_list")
                     if name.lower() not in BUILTIN_COLLATIONS)


def foreign_collations(conn: apsw.Connection) -> frozenset[tuple[str, str]]:
    """(table or index, collation) for each column or index of the main schema that uses a
    collation only this connection has: followers cannot even create such a table."""
    if not application_collations(conn):
        return frozenset()  # the schema cannot name one: SQLite would not have accepted it
    found: set[tuple[str, str]] = set()
    for name, in conn.execute("SELECT name FROM pragma_table_list WHERE schema='main' AND type='table'"):
        if is_internal_table(name):
            continue
        for (column,) in conn.execute("SELECT name FROM pragma_table_xinfo(?)", (name,)).fetchall():
            collation = conn.column_metadata("main", name, column)[1] or "binary"
            if collation.lower() not in BUILTIN_COLLATIONS:
                found.add((name, collation.lower()))
    for (index,) in conn.execute("SELECT name FROM main.sqlite_master WHERE type='index'").fetchall():
        for (collation,) in conn.execute("SELECT coll FROM pragma_index_xinfo(?)", (index,)).fetchall():
            if collation and collation.lower() not in BUILTIN_COLLATIONS:
                found.add((index, collation.lower()))
    return frozenset(found)


def refuse_foreign_collations(conn: apsw.Connection, before: frozenset[tuple[str, str]]) -> None:
    """Refuse a schema change that made a table or index use a collation only this connection
    has (`before`: foreign_collations before the change)."""
    new = sorted(foreign_collations(conn) - before)
    if new:
        name, collation = new[0]
        raise CaptureError(
            f"{name!r} uses collation {collation!r}, which the application registered on this "
            "connection only; followers could not create it, so the schema change was not committed")
