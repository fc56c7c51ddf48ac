"""Issue 14, row format gaps: what the row images cannot see or a follower cannot apply is either
replicated exactly or refused on the leader before it commits; followers never halt or diverge.

4. DROP TABLE with foreign_keys on (its implicit DELETE's ON DELETE actions change other tables);
5. the NULL-key guard follows SQLite's own rowid-alias rule, not the declared text;
6. keys under a collation (NOCASE, RTRIM) and tables too wide for the changeset apply.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw
import pytest
from checks import assert_identical, node_rows, same_on_all

import logformats
import proxy
from logformats import codec
from logformats.row import TAG_CHANGESET, TAG_PATCHSET

MakeCluster = Callable[..., proxy.Cluster]

ALL_FORMATS = pytest.mark.parametrize("fmt, image", [
    ("row", "full"), ("row", "minimal"), ("trigger", "full"), ("mixed", "full"), ("mixed", "minimal")])
ROW_FORMATS = pytest.mark.parametrize("fmt, image", [("row", "full"), ("row", "minimal")])


def open_cluster(make_cluster: MakeCluster, fmt: str, image: str) -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(format=fmt, row_image=image)
    return cluster, proxy.connect(cluster.directory, cluster=cluster)


def run(conn: proxy.Connection, *statements: str) -> None:
    for sql in statements:
        conn.execute(sql)
    conn.commit()


def still_replicating(cluster: proxy.Cluster, conn: proxy.Connection, verify: bool = True) -> None:
    """A write after the case under test reaches every follower (none halted), and all is equal
    (`verify=False` for tables wider than proxy.verify reads, two result columns per column)."""
    run(conn, "CREATE TABLE IF NOT EXISTS after_marker(x)", "INSERT INTO after_marker VALUES (1)")
    assert same_on_all(cluster, "SELECT count(*) FROM after_marker") != []
    if verify:
        assert_identical(cluster)


# -- 4. DROP TABLE with foreign_keys on ---------------------------------------------------------

PARENT = "CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT)"
FILL_PARENT = "INSERT INTO parent VALUES (1, 'a'), (2, 'b'), (3, 'c')"

DROP_CASES = {
    "cascade": [
        "CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent ON DELETE CASCADE)",
        "INSERT INTO child VALUES (1, 1), (2, 2), (3, NULL), (4, 3)"],
    "set null": [
        "CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent ON DELETE SET NULL)",
        "INSERT INTO child VALUES (1, 1), (2, 2), (3, NULL)"],
    "set default": [
        "CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER DEFAULT NULL REFERENCES parent "
        "ON DELETE SET DEFAULT)",
        "INSERT INTO child VALUES (1, 1), (2, 2)"],
    # two levels, a child keyed by text and one without PRIMARY KEY (captured by rowid)
    "grandchild": [
        "CREATE TABLE child(code TEXT PRIMARY KEY NOT NULL, pid INTEGER REFERENCES parent ON DELETE CASCADE)",
        "CREATE TABLE grandchild(code TEXT REFERENCES child ON DELETE CASCADE, n)",
        "INSERT INTO child VALUES ('x', 1), ('y', 2), ('z', NULL)",
        "INSERT INTO grandchild VALUES ('x', 1), ('y', 2), ('z', 3), (NULL, 4)"],
    # SQLite's implicit DELETE fires no trigger, but the cascaded deletes do, the child's triggers
    # and (through a self reference) the dropped table's own
    "triggers": [
        "CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent ON DELETE CASCADE)",
        "CREATE TABLE audit(id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT)",
        "CREATE TRIGGER child_gone AFTER DELETE ON child BEGIN "
        "INSERT INTO audit(what) VALUES ('child ' || old.id); END",
        "CREATE TRIGGER parent_gone AFTER DELETE ON parent BEGIN "
        "INSERT INTO audit(what) VALUES ('parent ' || old.id); END",
        "INSERT INTO child VALUES (1, 1), (2, 3)"],
    "self reference": [
        "ALTER TABLE parent ADD COLUMN up INTEGER REFERENCES parent ON DELETE CASCADE",
        "UPDATE parent SET up = 1 WHERE id > 1",
        "CREATE TABLE audit(what TEXT)",
        "CREATE TRIGGER parent_gone AFTER DELETE ON parent BEGIN INSERT INTO audit VALUES ('parent ' || old.id); END",
        "CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent ON DELETE SET NULL)",
        "INSERT INTO child VALUES (1, 2)"],
}


@ALL_FORMATS
@pytest.mark.parametrize("case", sorted(DROP_CASES))
def test_drop_table_replicates_what_its_foreign_key_actions_did(make_cluster, fmt, image, case):
    cluster, conn = open_cluster(make_cluster, fmt, image)
    conn.execute("PRAGMA foreign_keys = ON")
    run(conn, PARENT, FILL_PARENT, *DROP_CASES[case], "CREATE TABLE other(x)")
    before = same_on_all(cluster, "SELECT * FROM child ORDER BY 1")
    # DML before and after the DROP in the same transaction keep their order.
    run(conn, "INSERT INTO parent(id, name) VALUES (9, 'late')", "INSERT INTO other VALUES (1)",
        "DROP TABLE parent", "UPDATE other SET x = 2")
    assert same_on_all(cluster, "SELECT count(*) FROM sqlite_master WHERE name = 'parent'") == [(0,)]
    after = same_on_all(cluster, "SELECT * FROM child ORDER BY 1")
    assert after != before or case in ("set null", "set default")
    if case == "triggers":
        assert same_on_all(cluster, "SELECT what FROM audit ORDER BY id") == [("child 1",), ("child 2",)]
    still_replicating(cluster, conn)


@ALL_FORMATS
@pytest.mark.parametrize("undo", [True, False])
def test_drop_table_cascade_inside_a_savepoint(make_cluster, fmt, image, undo):
    cluster, conn = open_cluster(make_cluster, fmt, image)
    conn.execute("PRAGMA foreign_keys = ON")
    run(conn, PARENT, FILL_PARENT, *DROP_CASES["cascade"])
    conn.execute("DELETE FROM child WHERE id = 4")
    conn.execute("SAVEPOINT s")
    conn.execute("DROP TABLE parent")
    conn.execute("ROLLBACK TO s" if undo else "RELEASE s")
    if undo:
        conn.execute("RELEASE s")
    conn.commit()
    assert same_on_all(cluster, "SELECT * FROM child ORDER BY 1") == (
        [(1, 1), (2, 2), (3, None)] if undo else [(3, None)])
    still_replicating(cluster, conn)


@ALL_FORMATS
def test_drop_table_refused_by_a_foreign_key_leaves_later_writes_replicated(make_cluster, fmt, image):
    # A DROP TABLE that fails (a child row with no ON DELETE action) undoes its implicit DELETE;
    # the writes after it, to the same table, must still reach followers.
    cluster, conn = open_cluster(make_cluster, fmt, image)
    conn.execute("PRAGMA foreign_keys = ON")
    run(conn, PARENT, FILL_PARENT, "CREATE TABLE child(id INTEGER PRIMARY KEY, pid REFERENCES parent)",
        "INSERT INTO child VALUES (1, 1)")
    conn.execute("INSERT INTO parent VALUES (4, 'd')")
    with pytest.raises(proxy.IntegrityError):
        conn.execute("DROP TABLE parent")
    conn.execute("INSERT INTO parent VALUES (5, 'e')")
    conn.execute("UPDATE child SET pid = 2")
    conn.commit()
    assert same_on_all(cluster, "SELECT id FROM parent ORDER BY id") == [(1,), (2,), (3,), (4,), (5,)]
    assert same_on_all(cluster, "SELECT * FROM child") == [(1, 2)]
    still_replicating(cluster, conn)


# -- 5. NULL keys: what SQLite calls a rowid alias -------------------------------------------------

NOT_ALIASES = [
    "id INTEGER PRIMARY KEY DESC, v",
    "id INT PRIMARY KEY, v",
    "id INTEGER(8) PRIMARY KEY, v",
    "id BIGINT PRIMARY KEY, v",
    "id integer primary key desc, v",
    "v, id INTEGER CONSTRAINT k PRIMARY KEY DESC",
]
ALIASES = [
    "id INTEGER PRIMARY KEY, v",
    "id integer primary key, v",
    "id INTEGER PRIMARY KEY ASC, v",
    "id INTEGER, v, PRIMARY KEY(id DESC)",  # the table-constraint form stays an alias
    '"id" "INTEGER" PRIMARY KEY, v',
]


@ALL_FORMATS
@pytest.mark.parametrize("columns", NOT_ALIASES)
def test_null_key_in_a_key_that_is_not_the_rowid_never_goes_missing(make_cluster, fmt, image, columns):
    cluster, conn = open_cluster(make_cluster, fmt, image)
    run(conn, f"CREATE TABLE t({columns})", "INSERT INTO t(id, v) VALUES (1, 'one')")
    if fmt == "mixed":
        run(conn, "INSERT INTO t(v) VALUES ('null key')")  # a statement: replayed as it ran
    else:
        with pytest.raises(proxy.IntegrityError, match="NULL in its PRIMARY KEY"):
            run(conn, "INSERT INTO t(v) VALUES ('null key')")
        conn.rollback()
    assert same_on_all(cluster, "SELECT count(*) FROM t") == [(2 if fmt == "mixed" else 1,)]
    still_replicating(cluster, conn)


@ALL_FORMATS
@pytest.mark.parametrize("columns", ALIASES)
def test_null_key_of_a_rowid_alias_is_assigned_and_replicated(make_cluster, fmt, image, columns):
    cluster, conn = open_cluster(make_cluster, fmt, image)
    run(conn, f"CREATE TABLE t({columns})", "INSERT INTO t(v) VALUES ('a')", "INSERT INTO t(id, v) VALUES (NULL, 'b')")
    assert same_on_all(cluster, "SELECT id, v FROM t ORDER BY id") == [(1, "a"), (2, "b")]
    still_replicating(cluster, conn)


@pytest.mark.parametrize("fmt, image", [("row", "full"), ("row", "minimal"), ("trigger", "full")])
def test_without_rowid_key_declared_integer_primary_key_desc(make_cluster, fmt, image):
    # WITHOUT ROWID keys are never NULL: SQLite itself refuses, nothing reaches the log.
    cluster, conn = open_cluster(make_cluster, fmt, image)
    run(conn, "CREATE TABLE t(id INTEGER PRIMARY KEY DESC, v) WITHOUT ROWID", "INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(proxy.IntegrityError):
        run(conn, "INSERT INTO t(v) VALUES ('b')")
    conn.rollback()
    assert same_on_all(cluster, "SELECT * FROM t") == [(1, "a")]
    still_replicating(cluster, conn)


# -- 6. keys under a collation ------------------------------------------------------------------

COLLATED = {
    "nocase update": ("k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v", ["UPDATE t SET k = upper(k) WHERE k = 'abc'"]),
    "nocase delete insert": ("k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v",
                             ["DELETE FROM t WHERE k = 'abc'", "INSERT INTO t VALUES ('ABC', 9)"]),
    "nocase replace": ("k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v", ["INSERT OR REPLACE INTO t VALUES ('aBc', 9)"]),
    "nocase round trip": ("k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v",
                          ["UPDATE t SET k = 'ABC' WHERE k = 'abc'", "UPDATE t SET k = 'abc' WHERE k = 'ABC'"]),
    "rtrim": ("k TEXT COLLATE RTRIM PRIMARY KEY NOT NULL, v", ["UPDATE t SET k = k || '  ' WHERE k = 'abc'"]),
    "key clause collation": ("k TEXT NOT NULL, v, PRIMARY KEY(k COLLATE NOCASE)",
                             ["UPDATE t SET k = 'Abc' WHERE k = 'abc'"]),
    "composite": ("g INTEGER NOT NULL, k TEXT COLLATE NOCASE NOT NULL, v, PRIMARY KEY(g, k)",
                  ["UPDATE t SET k = 'ABC' WHERE k = 'abc'"]),
    "without rowid": ("k TEXT COLLATE NOCASE PRIMARY KEY, v) WITHOUT ROWID --",
                      ["UPDATE t SET k = 'ABC' WHERE k = 'abc'"]),
    # a user trigger renames the key back within the statement
    "trigger round trip": ("k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v", [
        "CREATE TRIGGER back AFTER UPDATE OF k ON t WHEN new.k <> lower(new.k) BEGIN "
        "UPDATE t SET k = lower(new.k) WHERE k = new.k; END",
        "UPDATE t SET k = 'ABC' WHERE k = 'abc'"]),
    # NOCASE folds ASCII letters only: 'é' and 'É' are two keys, and that change replicates
    "nocase non-ascii": ("k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v",
                         ["INSERT INTO t VALUES ('é', 3)", "UPDATE t SET k = 'É' WHERE k = 'é'"]),
}
# What the row format applies exactly; it refuses the other cases.
ROW_APPLIES = {"nocase delete insert", "nocase non-ascii"}


def _fill(columns: str) -> list[str]:
    if columns.startswith("g "):
        return ["INSERT INTO t VALUES (1, 'abc', 1), (1, 'x', 2), (2, 'abc', 3)"]
    return ["INSERT INTO t VALUES ('abc', 1), ('x', 2)"]


@ALL_FORMATS
@pytest.mark.parametrize("case", sorted(COLLATED))
def test_key_changed_only_as_its_collation_sees_it(make_cluster, fmt, image, case):
    columns, statements = COLLATED[case]
    cluster, conn = open_cluster(make_cluster, fmt, image)
    run(conn, f"CREATE TABLE t({columns})", *_fill(columns))
    expected = same_on_all(cluster, "SELECT * FROM t ORDER BY 1, 2")
    try:
        run(conn, *statements)
    except proxy.IntegrityError as exc:
        # The row format cannot tell such keys apart in one statement's images: refused, and
        # nothing committed.
        assert fmt == "row", exc
        assert "collation" in str(exc)
        conn.rollback()
        assert same_on_all(cluster, "SELECT * FROM t ORDER BY 1, 2") == expected
    else:
        # Statement by statement, a DELETE then an INSERT of equal keys applies in order.
        assert fmt != "row" or case in ROW_APPLIES
        leader = node_rows(cluster, cluster.leader, "SELECT * FROM t ORDER BY 1, 2")
        assert same_on_all(cluster, "SELECT * FROM t ORDER BY 1, 2") == leader
    # The other keys of the table still replicate, in separate transactions too.
    run(conn, "DELETE FROM t WHERE v = 2")
    run(conn, "INSERT INTO t VALUES (3, 'X', 5)" if columns.startswith("g ") else "INSERT INTO t VALUES ('X', 5)")
    still_replicating(cluster, conn)


def _entry(conn: apsw.Connection, sql: str, patch: bool) -> bytes:
    session = apsw.Session(conn, "main")
    session.attach()
    conn.execute(sql)
    data = session.patchset() if patch else session.changeset()
    session.close()
    return codec.pack_chunks([(TAG_PATCHSET if patch else TAG_CHANGESET, data)])


@pytest.mark.parametrize("patch", [False, True])
@pytest.mark.parametrize("collation, renamed", [("NOCASE", "{}"), ("RTRIM", "{} ")])
def test_followers_merge_entries_that_reuse_a_key_under_its_collation(patch, collation, renamed):
    # Entries that delete 'abc' and insert 'ABC', separately fine, are merged by a follower into one
    # changeset, where the session extension sees two keys and SQLite one: deletes go first.
    schema = f"CREATE TABLE t(k TEXT COLLATE {collation} PRIMARY KEY NOT NULL, v)"
    keys = [f"key{i}" for i in range(40)]
    leader, follower = apsw.Connection(":memory:"), apsw.Connection(":memory:")
    for conn in (leader, follower):
        conn.execute(schema)
        conn.executemany("INSERT INTO t VALUES (?, 1)", [(k,) for k in keys])
    new_keys = [renamed.format(k.upper() if collation == "NOCASE" else k) for k in keys]
    payloads = [_entry(leader, "DELETE FROM t", patch)]
    for key in new_keys:
        payloads.append(_entry(leader, f"INSERT INTO t VALUES ('{key}', 2)", patch))
    logformats.get("row").apply_many(follower, payloads)
    assert follower.execute("SELECT * FROM t ORDER BY k").fetchall() == leader.execute(
        "SELECT * FROM t ORDER BY k").fetchall()


# (The mixed format logs schema changes as statements: the statement format's part.)
@pytest.mark.parametrize("fmt, image", [("row", "full"), ("row", "minimal"), ("trigger", "full")])
@pytest.mark.parametrize("ddl", [
    "CREATE TABLE t2(k TEXT COLLATE backwards PRIMARY KEY NOT NULL, v)",
    "CREATE TABLE t2(k, v TEXT COLLATE Backwards)",
    "CREATE INDEX t_v ON t(v COLLATE backwards)",
    "ALTER TABLE t ADD COLUMN w TEXT COLLATE backwards",
])
def test_schema_using_a_collation_only_the_leader_has_is_refused(make_cluster, fmt, image, ddl):
    cluster, conn = open_cluster(make_cluster, fmt, image)
    run(conn, "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t VALUES (1, 'a')")
    conn._leader.create_collation("backwards", lambda a, b: (a < b) - (a > b))
    with pytest.raises(proxy.IntegrityError, match="collation 'backwards'"):
        run(conn, "INSERT INTO t VALUES (2, 'b')", ddl)
    conn.rollback()
    assert same_on_all(cluster, "SELECT * FROM t") == [(1, "a")]
    still_replicating(cluster, conn)


# -- 6. tables too wide for the changeset apply -----------------------------------------------------


def _wide(columns: int, shape: str) -> str:
    names = ", ".join(f"c{i}" for i in range(columns))
    if shape == "integer key":
        return f"CREATE TABLE w(id INTEGER PRIMARY KEY, {names})"
    if shape == "no key":
        return f"CREATE TABLE w(id, {names})"
    return f"CREATE TABLE w(id INTEGER NOT NULL, id2 INTEGER NOT NULL, {names}, PRIMARY KEY(id, id2)) WITHOUT ROWID"


# Row-image columns (with the rowid of a table without key) besides the `id` column(s) per shape.
_BESIDE = {"integer key": 1, "no key": 2, "without rowid": 2}


@ROW_FORMATS
@pytest.mark.parametrize("shape", sorted(_BESIDE))
@pytest.mark.parametrize("extra", [0, 1, 500])
def test_table_too_wide_for_followers_is_refused_on_the_leader(make_cluster, fmt, image, shape, extra):
    cluster, conn = open_cluster(make_cluster, fmt, image)
    columns = conn._leader.limit(apsw.SQLITE_LIMIT_EXPR_DEPTH, -1) - 2 - _BESIDE[shape] + extra
    run(conn, _wide(columns, shape))
    insert = "INSERT INTO w(id, c0) VALUES (1, 1)" if shape != "without rowid" else \
        "INSERT INTO w(id, id2, c0) VALUES (1, 1, 1)"
    if extra:
        with pytest.raises(proxy.IntegrityError, match="SQLITE_LIMIT_EXPR_DEPTH"):
            run(conn, insert)
        conn.rollback()
    else:  # the widest table that applies is not refused
        run(conn, insert, "UPDATE w SET c5 = 'x'", "DELETE FROM w", insert)
    assert same_on_all(cluster, "SELECT id, c0, c5 FROM w") == ([] if extra else [(1, 1, None)])
    still_replicating(cluster, conn, verify=extra < 2)


@ROW_FORMATS
def test_wide_table_created_from_a_query_is_refused(make_cluster, fmt, image):
    cluster, conn = open_cluster(make_cluster, fmt, image)
    # random(): the copied rows travel as images, not as the query
    columns = ", ".join(f"{i} AS c{i}" for i in range(1000)) + ", random() AS r"
    with pytest.raises(proxy.IntegrityError, match="SQLITE_LIMIT_EXPR_DEPTH"):
        run(conn, f"CREATE TABLE w AS SELECT {columns}")
    conn.rollback()
    assert same_on_all(cluster, "SELECT count(*) FROM sqlite_master WHERE name = 'w'") == [(0,)]
    still_replicating(cluster, conn)


@pytest.mark.parametrize("fmt", ["trigger", "mixed"])
def test_wide_table_replicates_in_the_formats_that_can(make_cluster, fmt):
    cluster, conn = open_cluster(make_cluster, fmt, "full")
    run(conn, _wide(1100, "integer key"))
    run(conn, "INSERT INTO w(id, c0, c1099) VALUES (1, 1, 'end')", "UPDATE w SET c5 = 'x'")
    assert same_on_all(cluster, "SELECT id, c0, c5, c1099 FROM w") == [(1, 1, "x", "end")]
