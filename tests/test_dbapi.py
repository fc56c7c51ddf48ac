"""The PEP 249 surface of `proxy.connect`, compared with Python's sqlite3 where PEP 249 leaves room,
and the routing of statements to nodes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import apsw
import pytest
from checks import node_rows

import proxy

PEP249_ERRORS = (
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
)

SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, v REAL CHECK (v >= 0))"


# -- helpers ------------------------------------------------------------------------------------

@pytest.fixture
def plain(tmp_path: Path):
    """A plain sqlite3 database to compare with."""
    db = sqlite3.connect(tmp_path / "plain.db")
    yield db
    db.close()


def node_tables(cluster: proxy.Cluster, node: str) -> set[str]:
    return {r[0] for r in node_rows(cluster, node, "SELECT name FROM sqlite_master WHERE type='table'")}


def outcome(connection: Any, sql: str, params: Any = ()) -> tuple[Any, ...]:
    """What a statement does on a connection: result columns, rowcount and rows, or the error."""
    try:
        cur = connection.execute(sql, params)
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return ("error", type(exc).__name__, str(exc), getattr(exc, "sqlite_errorcode", None),
                getattr(exc, "sqlite_errorname", None))
    names = None if cur.description is None else [d[0] for d in cur.description]
    # PEP 249 (and the compliance suite) make fetching without a result set an error, where
    # sqlite3 returns nothing: compare the rows only where there is a result set.
    rows = cur.fetchall() if cur.description is not None else []
    # read after fetching: sqlite3 counts the rows of INSERT ... RETURNING as they are fetched
    return ("ok", names, cur.rowcount, rows)


# -- module globals and exceptions --------------------------------------------------------------

def test_module_globals() -> None:
    assert proxy.apilevel == "2.0"
    assert proxy.threadsafety in (0, 1, 2, 3)
    assert proxy.threadsafety == 1  # documented: share the module, not connections
    assert proxy.paramstyle == "qmark"
    assert callable(proxy.connect)


def test_exception_hierarchy(conn: proxy.Connection) -> None:
    classes = {name: getattr(proxy, name) for name in PEP249_ERRORS}
    for name, cls in classes.items():
        assert isinstance(cls, type) and issubclass(cls, Exception), name
        assert getattr(conn, name) is cls, f"Connection.{name}"
        assert getattr(proxy.Connection, name) is cls
    assert issubclass(proxy.Warning, Exception) and not issubclass(proxy.Warning, proxy.Error)
    assert not issubclass(proxy.Error, proxy.Warning)
    assert issubclass(proxy.InterfaceError, proxy.Error)
    assert issubclass(proxy.DatabaseError, proxy.Error)
    assert not issubclass(proxy.InterfaceError, proxy.DatabaseError)
    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError"):
        assert issubclass(classes[name], proxy.DatabaseError), name
    # replproxy's own errors hang off the PEP 249 tree
    assert issubclass(proxy.ClusterError, proxy.OperationalError)
    assert issubclass(proxy.ReadOnlyNodeError, proxy.OperationalError)
    assert issubclass(proxy.UnsafeStatementError, proxy.ProgrammingError)
    assert issubclass(proxy.ReplicationError, proxy.DatabaseError)


# -- errors, compared with sqlite3 ---------------------------------------------------------------

ERROR_CASES = [
    ("INSERT INTO t(name, v) VALUES ('a', 1)", (), "IntegrityError", "SQLITE_CONSTRAINT_UNIQUE"),
    ("INSERT INTO t(name, v) VALUES (NULL, 1)", (), "IntegrityError", "SQLITE_CONSTRAINT_NOTNULL"),
    ("INSERT INTO t(name, v) VALUES ('z', -1)", (), "IntegrityError", "SQLITE_CONSTRAINT_CHECK"),
    ("INSERT INTO t(id, name) VALUES (1, 'z')", (), "IntegrityError", "SQLITE_CONSTRAINT_PRIMARYKEY"),
    ("SELEC * FROM t", (), "OperationalError", "SQLITE_ERROR"),
    ("SELECT * FROM nope", (), "OperationalError", "SQLITE_ERROR"),
    ("INSERT INTO nope VALUES (1)", (), "OperationalError", "SQLITE_ERROR"),
    ("SELECT nocolumn FROM t", (), "OperationalError", "SQLITE_ERROR"),
    ("CREATE TABLE t(x)", (), "OperationalError", "SQLITE_ERROR"),
]


@pytest.mark.parametrize("sql,params,cls,errname", ERROR_CASES)
def test_errors_like_sqlite3(conn: proxy.Connection, plain: sqlite3.Connection, sql: str, params: Any,
                             cls: str, errname: str) -> None:
    for db in (conn, plain):
        db.execute(SCHEMA)
        db.execute("INSERT INTO t(name, v) VALUES ('a', 1)")
        db.commit()
    ours, theirs = outcome(conn, sql, params), outcome(plain, sql, params)
    assert ours == theirs
    assert ours[:2] == ("error", cls)
    assert ours[4] == errname
    with pytest.raises(getattr(proxy, cls)) as info:
        conn.execute(sql, params)
    assert isinstance(info.value, proxy.DatabaseError)


def test_unique_error_details(conn: proxy.Connection) -> None:
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(name) VALUES ('a')")
    with pytest.raises(proxy.IntegrityError) as info:
        conn.execute("INSERT INTO t(name) VALUES ('a')")
    assert str(info.value) == "UNIQUE constraint failed: t.name"
    assert info.value.sqlite_errorcode == 2067 == sqlite3.SQLITE_CONSTRAINT_UNIQUE
    assert info.value.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
    # like sqlite3, the failed statement leaves the transaction its DML opened
    assert conn.in_transaction
    conn.commit()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_syntax_error_and_missing_table_messages(conn: proxy.Connection) -> None:
    with pytest.raises(proxy.OperationalError, match='near "SELEC": syntax error') as info:
        conn.execute("SELEC 1")
    assert info.value.sqlite_errorcode == 1
    assert info.value.sqlite_errorname == "SQLITE_ERROR"
    with pytest.raises(proxy.OperationalError, match="no such table: missing"):
        conn.execute("SELECT * FROM missing")


@pytest.mark.parametrize("sql,params", [
    ("INSERT INTO t(name, v) VALUES (?, ?)", ("x",)),
    ("INSERT INTO t(name, v) VALUES (?, ?)", ("x", 1, 2)),
    ("SELECT ?", ()),
    ("SELECT ?, ?", (1,)),
    ("SELECT :a, :b", {"a": 1}),
])
def test_bad_parameters_are_programming_errors(conn: proxy.Connection, plain: sqlite3.Connection,
                                               sql: str, params: Any) -> None:
    conn.execute(SCHEMA)
    plain.execute(SCHEMA)
    with pytest.raises(sqlite3.ProgrammingError):
        plain.execute(sql, params)
    with pytest.raises(proxy.ProgrammingError):
        conn.execute(sql, params)
    # the connection is still usable
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_multiple_statements_refused(conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE a(x INTEGER PRIMARY KEY)")
    lsn = conn.cluster.leader_lsn()
    with pytest.raises(proxy.ProgrammingError, match="executescript"):
        conn.execute("INSERT INTO a VALUES (1); INSERT INTO a VALUES (2)")
    with pytest.raises(proxy.ProgrammingError, match="one statement"):
        conn.cursor().execute("SELECT 1; SELECT 2")
    assert conn.execute("SELECT count(*) FROM a").fetchone() == (0,)
    assert conn.cluster.leader_lsn() == lsn
    # a trailing semicolon or comment is one statement, as in sqlite3
    assert conn.execute("SELECT 1;").fetchone() == (1,)
    assert conn.execute("SELECT 2; -- trailing comment").fetchone() == (2,)


def test_executescript(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    cur = conn.executescript("""
        CREATE TABLE s(id INTEGER PRIMARY KEY, txt TEXT);
        INSERT INTO s(txt) VALUES ('one; with a semicolon');
        INSERT INTO s(txt) VALUES ('two');
        -- a comment
        UPDATE s SET txt = upper(txt) WHERE id = 2;
    """)
    assert isinstance(cur, proxy.Cursor)
    assert not conn.in_transaction  # committed, like sqlite3
    assert conn.execute("SELECT txt FROM s ORDER BY id").fetchall() == [("one; with a semicolon",), ("TWO",)]
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT txt FROM s ORDER BY id") == [
            ("one; with a semicolon",), ("TWO",)]
    # executescript commits a pending implicit transaction first, as sqlite3 does
    conn.execute("INSERT INTO s(txt) VALUES ('pending')")
    conn.executescript("INSERT INTO s(txt) VALUES ('script');")
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM s").fetchone() == (4,)


# -- parameters ---------------------------------------------------------------------------------

def test_qmark_and_named_parameters(conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, a, b)")
    conn.execute("INSERT INTO p(a, b) VALUES (?, ?)", (1, "x"))
    conn.execute("INSERT INTO p(a, b) VALUES (?, ?)", [2.5, b"\x00\xff"])
    conn.execute("INSERT INTO p(a, b) VALUES (:a, :b)", {"a": None, "b": "named"})
    conn.commit()
    rows = conn.execute("SELECT a, b FROM p ORDER BY id").fetchall()
    assert rows == [(1, "x"), (2.5, b"\x00\xff"), (None, "named")]
    assert conn.execute("SELECT b FROM p WHERE a = :a", {"a": 1}).fetchall() == [("x",)]
    assert conn.execute("SELECT ? + ?", (2, 3)).fetchone() == (5,)


# -- cursor attributes compared with sqlite3 ----------------------------------------------------

def test_description_rowcount_lastrowid_like_sqlite3(conn: proxy.Connection,
                                                     plain: sqlite3.Connection) -> None:
    statements = [
        (SCHEMA, ()),
        ("INSERT INTO t(name, v) VALUES (?, ?)", ("a", 1.5)),
        ("INSERT INTO t(name, v) VALUES (:n, :v)", {"n": "b", "v": 2}),
        ("INSERT INTO t(name, v) VALUES ('c', 3), ('d', 4), ('e', 5)", ()),
        ("SELECT id, name AS label, v * 2, count(*) OVER () FROM t ORDER BY id", ()),
        ("SELECT * FROM t WHERE 0", ()),
        ("SELECT name FROM t WHERE v > ?", (100,)),
        ("UPDATE t SET v = v + 1 WHERE v > 2", ()),
        ("UPDATE t SET v = 0 WHERE name = 'nobody'", ()),
        ("DELETE FROM t WHERE name IN ('a', 'b')", ()),
        ("REPLACE INTO t(id, name, v) VALUES (3, 'c2', 9)", ()),
        ("INSERT INTO t(name) VALUES ('f') RETURNING id, name", ()),
        ("SELECT * FROM t ORDER BY id", ()),
    ]
    for sql, params in statements:
        ours, theirs = outcome(conn, sql, params), outcome(plain, sql, params)
        assert ours == theirs, sql
    conn.commit()


def test_description(conn: proxy.Connection) -> None:
    conn.execute(SCHEMA)
    cur = conn.cursor()
    assert cur.description is None
    cur.execute("SELECT id, name AS label, v FROM t")  # zero rows
    assert cur.fetchall() == []
    assert [d[0] for d in cur.description] == ["id", "label", "v"]
    assert all(len(d) == 7 for d in cur.description)
    cur.execute("INSERT INTO t(name) VALUES ('x')")
    assert cur.description is None
    cur.execute("UPDATE t SET v = 1")
    assert cur.description is None
    cur.execute("SELECT count(*) AS n FROM t")
    assert cur.description[0][0] == "n"
    assert cur.fetchone() == (1,)


def test_rowcount_and_lastrowid(conn: proxy.Connection) -> None:
    conn.execute(SCHEMA)
    cur = conn.cursor()
    assert cur.rowcount == -1
    cur.execute("INSERT INTO t(name) VALUES ('a')")
    assert (cur.rowcount, cur.lastrowid) == (1, 1)
    cur.execute("INSERT INTO t(id, name) VALUES (10, 'b')")
    assert (cur.rowcount, cur.lastrowid) == (1, 10)
    cur.execute("INSERT INTO t(name) VALUES ('c'), ('d')")
    assert (cur.rowcount, cur.lastrowid) == (2, 12)
    cur.execute("UPDATE t SET v = 1")
    assert cur.rowcount == 4
    cur.execute("SELECT * FROM t")
    assert cur.rowcount == -1
    cur.execute("DELETE FROM t WHERE id > 10")
    assert cur.rowcount == 2
    cur.execute("CREATE TABLE other(x INTEGER PRIMARY KEY)")
    assert cur.rowcount == -1


def test_executemany(conn: proxy.Connection, plain: sqlite3.Connection) -> None:
    results = []
    for db in (conn, plain):
        db.execute(SCHEMA)
        cur = db.cursor()
        cur.executemany("INSERT INTO t(name, v) VALUES (?, ?)", [(f"n{i}", i) for i in range(5)])
        first = cur.rowcount
        cur.executemany("UPDATE t SET v = v + 10 WHERE v >= :low", ({"low": 3}, {"low": 14}, {"low": 99}))
        second = cur.rowcount
        cur.executemany("INSERT INTO t(name) VALUES (?)", iter([("g1",), ("g2",)]))  # a generator
        third = cur.rowcount
        db.commit()
        results.append((first, second, third, db.execute("SELECT name, v FROM t ORDER BY id").fetchall()))
    assert results[0] == results[1]
    assert results[0][:3] == (5, 3, 2)
    assert conn.cluster.entries()  # it reached the log
    with pytest.raises(proxy.ProgrammingError):
        conn.executemany("SELECT ?", [(1,), (2,)])


def test_fetch_methods_and_iteration(conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE n(i INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO n VALUES (?)", [(i,) for i in range(10)])
    conn.commit()
    cur = conn.cursor()
    assert cur.arraysize == 1
    with pytest.raises(proxy.ProgrammingError, match="no result set"):
        cur.fetchone()  # nothing executed yet: PEP 249 makes it an error (sqlite3 returns None)
    cur.execute("SELECT i FROM n ORDER BY i")
    assert cur.fetchone() == (0,)
    assert cur.fetchmany() == [(1,)]
    cur.arraysize = 3
    assert cur.fetchmany() == [(2,), (3,), (4,)]
    assert cur.fetchmany(2) == [(5,), (6,)]
    assert cur.fetchall() == [(7,), (8,), (9,)]
    assert cur.fetchone() is None
    assert cur.fetchmany(5) == []
    assert cur.fetchall() == []
    assert [r[0] for r in cur.execute("SELECT i FROM n WHERE i < 4 ORDER BY i")] == [0, 1, 2, 3]
    assert iter(cur) is cur
    cur.execute("SELECT i FROM n ORDER BY i DESC LIMIT 2")
    assert next(cur) == (9,)
    assert list(cur) == [(8,)]
    cur.execute("UPDATE n SET i = i")
    assert cur.description is None
    with pytest.raises(proxy.ProgrammingError, match="no result set"):
        cur.fetchall()
    cur.setinputsizes([None])
    cur.setoutputsize(10)
    conn.rollback()


# -- transactions -------------------------------------------------------------------------------

def test_dml_opens_transaction_and_rollback_discards(cluster: proxy.Cluster,
                                                     conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE r(id INTEGER PRIMARY KEY, x)")
    assert not conn.in_transaction  # DDL committed by itself
    cluster.wait_for_catchup(10)
    lsn = cluster.leader_lsn()
    conn.execute("INSERT INTO r(x) VALUES ('gone')")
    assert conn.in_transaction
    conn.execute("UPDATE r SET x = 'still gone'")
    conn.rollback()
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM r").fetchone() == (0,)
    assert cluster.leader_lsn() == lsn
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT count(*) FROM r") == [(0,)]
    # another connection never saw it either
    other = proxy.connect(cluster.directory, cluster=cluster)
    try:
        assert other.execute("SELECT count(*) FROM r").fetchone() == (0,)
    finally:
        other.close()


def test_commit_makes_one_log_entry_that_replicates(cluster: proxy.Cluster,
                                                    conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE r(id INTEGER PRIMARY KEY, x)")
    lsn = cluster.leader_lsn()
    cur = conn.cursor()
    cur.execute("INSERT INTO r(x) VALUES (1)")
    cur.execute("INSERT INTO r(x) VALUES (2)")
    # not visible to another connection before commit
    other = proxy.connect(cluster.directory, cluster=cluster)
    try:
        assert other.execute("SELECT count(*) FROM r").fetchone() == (0,)
        conn.commit()
        assert not conn.in_transaction
        assert cluster.leader_lsn() == lsn + 1
        assert conn.last_write_lsn == lsn + 1
        cluster.wait_for_catchup(10)
        for node in cluster.followers:
            assert node_rows(cluster, node, "SELECT x FROM r ORDER BY id") == [(1,), (2,)]
        assert other.execute("SELECT count(*) FROM r").fetchone() == (2,)
    finally:
        other.close()
    conn.commit()  # nothing pending: a no-op
    conn.rollback()
    assert cluster.leader_lsn() == lsn + 1


def test_ddl_outside_transaction_commits_by_itself(cluster: proxy.Cluster,
                                                   conn: proxy.Connection) -> None:
    lsn = cluster.leader_lsn()
    cur = conn.execute("CREATE TABLE d(id INTEGER PRIMARY KEY)")
    assert not conn.in_transaction
    assert cur.node == cluster.leader
    assert cur.lsn == lsn + 1 == cluster.leader_lsn()
    conn.rollback()
    assert "d" in node_tables(cluster, cluster.leader)
    # DDL inside a transaction that DML opened is part of it
    conn.execute("INSERT INTO d VALUES (1)")
    conn.execute("CREATE TABLE d2(id INTEGER PRIMARY KEY)")
    assert conn.in_transaction
    conn.rollback()
    assert "d2" not in node_tables(cluster, cluster.leader)
    assert cluster.leader_lsn() == lsn + 1


def test_autocommit_commits_each_statement(cluster: proxy.Cluster) -> None:
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    try:
        conn.execute("CREATE TABLE a(id INTEGER PRIMARY KEY, x)")
        lsn = cluster.leader_lsn()
        cur = conn.execute("INSERT INTO a(x) VALUES (1)")
        assert not conn.in_transaction
        assert cur.lsn == lsn + 1 == cluster.leader_lsn()
        conn.execute("INSERT INTO a(x) VALUES (2)")
        conn.rollback()  # nothing to roll back
        assert cluster.leader_lsn() == lsn + 2
        # an explicit transaction still groups statements
        conn.execute("BEGIN")
        conn.execute("INSERT INTO a(x) VALUES (3)")
        conn.execute("INSERT INTO a(x) VALUES (4)")
        assert conn.in_transaction
        conn.execute("COMMIT")
        assert cluster.leader_lsn() == lsn + 3
        conn.execute("BEGIN")
        conn.execute("INSERT INTO a(x) VALUES (5)")
        conn.execute("ROLLBACK")
        assert cluster.leader_lsn() == lsn + 3
        assert conn.execute("SELECT x FROM a ORDER BY id").fetchall() == [(1,), (2,), (3,), (4,)]
    finally:
        conn.close()


def test_explicit_begin_commit_rollback(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE e(id INTEGER PRIMARY KEY, x)")
    lsn = cluster.leader_lsn()
    cur = conn.cursor()
    cur.execute("BEGIN")
    assert conn.in_transaction
    cur.execute("INSERT INTO e(x) VALUES ('a')")
    cur.execute("INSERT INTO e(x) VALUES ('b')")
    cur.execute("COMMIT")
    assert not conn.in_transaction
    assert cur.lsn == lsn + 1 == cluster.leader_lsn()
    cur.execute("BEGIN IMMEDIATE")
    cur.execute("DELETE FROM e")
    cur.execute("ROLLBACK")
    assert cluster.leader_lsn() == lsn + 1
    assert cur.execute("SELECT x FROM e ORDER BY id").fetchall() == [("a",), ("b",)]
    with pytest.raises(proxy.OperationalError):
        cur.execute("COMMIT")  # no transaction is active
    cur.execute("BEGIN")
    with pytest.raises(proxy.OperationalError):
        cur.execute("BEGIN")  # nested
    cur.execute("END")
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT x FROM e ORDER BY id") == [("a",), ("b",)]


def test_close_rolls_back_pending_transaction(cluster: proxy.Cluster) -> None:
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE c(id INTEGER PRIMARY KEY)")
    lsn = cluster.leader_lsn()
    conn.execute("INSERT INTO c VALUES (1)")
    conn.close()
    assert conn.closed
    with pytest.raises(proxy.ProgrammingError):
        conn.close()  # PEP 249 compliance suite: a second close is an error (sqlite3 allows it)
    assert cluster.leader_lsn() == lsn
    assert node_rows(cluster, cluster.leader, "SELECT count(*) FROM c") == [(0,)]


def test_connection_context_manager(cluster: proxy.Cluster, conn: proxy.Connection,
                                    plain: sqlite3.Connection) -> None:
    for db in (conn, plain):
        db.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, x)")
        with db as entered:
            assert entered is db
            db.execute("INSERT INTO w(x) VALUES ('kept')")
        assert not db.in_transaction
        with pytest.raises(ZeroDivisionError):
            with db:
                db.execute("INSERT INTO w(x) VALUES ('dropped')")
                raise ZeroDivisionError
        assert not db.in_transaction
        with pytest.raises(db.IntegrityError):
            with db:
                db.execute("INSERT INTO w(id, x) VALUES (100, 'dropped too')")
                db.execute("INSERT INTO w(id, x) VALUES (100, 'duplicate')")
        # the connection stays open and usable
        assert db.execute("SELECT x FROM w").fetchall() == [("kept",)]
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT x FROM w") == [("kept",)]


def test_cursor_context_manager(conn: proxy.Connection) -> None:
    with conn.cursor() as cur:
        assert cur.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(proxy.ProgrammingError):
        cur.execute("SELECT 1")
    assert conn.execute("SELECT 2").fetchone() == (2,)


def test_use_after_close(cluster: proxy.Cluster, plain: sqlite3.Connection) -> None:
    conn = proxy.connect(cluster.directory, cluster=cluster)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    closed_cursor = conn.cursor()
    closed_cursor.close()
    for method, args in (("execute", ("SELECT 1",)), ("executemany", ("SELECT 1", [])),
                         ("fetchone", ()), ("fetchmany", ()), ("fetchall", ())):
        with pytest.raises(proxy.ProgrammingError):
            getattr(closed_cursor, method)(*args)
    closed_cursor.close()  # closing twice is fine
    conn.close()
    for call in (conn.cursor, conn.commit, conn.rollback, lambda: conn.execute("SELECT 1"),
                 lambda: conn.executescript("SELECT 1;"), lambda: cur.execute("SELECT 1"),
                 cur.fetchone, cur.fetchall):
        with pytest.raises(proxy.ProgrammingError):
            call()
    with pytest.raises(proxy.ProgrammingError):
        with conn:
            pass
    # sqlite3 agrees
    plain.close()
    with pytest.raises(sqlite3.ProgrammingError):
        plain.cursor()


# -- routing ------------------------------------------------------------------------------------

def test_writes_go_to_leader_reads_to_followers(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE rt(id INTEGER PRIMARY KEY, x)")
    assert cur.node == cluster.leader
    cur.execute("INSERT INTO rt(x) VALUES (1)")
    assert cur.node == cluster.leader
    cur.execute("UPDATE rt SET x = 2")
    assert cur.node == cluster.leader
    conn.commit()
    cluster.wait_for_catchup(10)
    cur.execute("SELECT x FROM rt")
    assert cur.fetchall() == [(2,)]
    assert cur.node in cluster.followers
    assert cur.lsn is not None and cur.lsn >= conn.last_write_lsn
    cur.execute("DELETE FROM rt")
    assert cur.node == cluster.leader
    conn.rollback()


def test_read_your_writes_with_a_paused_follower(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    lagging, live = cluster.followers
    conn.execute("CREATE TABLE ryw(id INTEGER PRIMARY KEY, x)")
    cluster.wait_for_catchup(10)
    cluster.pause(lagging)
    for i in range(5):
        cur = conn.cursor()
        cur.execute("INSERT INTO ryw(x) VALUES (?)", (i,))
        assert cur.node == cluster.leader
        conn.commit()
        written = conn.last_write_lsn
        cur.execute("SELECT x FROM ryw WHERE id = ?", (cur.lastrowid,))
        assert cur.fetchall() == [(i,)], "a read right after a commit must see the write"
        assert cur.node in (live, cluster.leader)
        if cur.node == live:
            assert cur.lsn >= written
    # the paused follower really is behind: a reader pinned to it does not see the rows
    assert node_rows(cluster, lagging, "SELECT count(*) FROM ryw") == [(0,)]
    status = {s.name: s for s in cluster.status()}
    assert status[lagging].state == "paused"
    # once the live follower has caught up it serves the reads
    cluster.wait_for_catchup(10, nodes=[live])
    cur = conn.execute("SELECT count(*) FROM ryw")
    assert cur.fetchone() == (5,)
    assert cur.node == live
    cluster.resume(lagging)
    cluster.wait_for_catchup(10)
    assert node_rows(cluster, lagging, "SELECT count(*) FROM ryw") == [(5,)]


def test_all_followers_paused_reads_go_to_leader(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE lp(id INTEGER PRIMARY KEY)")
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        cluster.pause(node)
    conn.execute("INSERT INTO lp VALUES (1)")
    conn.commit()
    cur = conn.execute("SELECT count(*) FROM lp")
    assert cur.fetchone() == (1,)
    assert cur.node == cluster.leader


def test_reads_inside_write_transaction_go_to_leader(cluster: proxy.Cluster,
                                                     conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE it(id INTEGER PRIMARY KEY, x)")
    conn.execute("INSERT INTO it(x) VALUES ('committed')")
    conn.commit()
    cluster.wait_for_catchup(10)
    cur = conn.cursor()
    cur.execute("INSERT INTO it(x) VALUES ('uncommitted')")
    cur.execute("SELECT x FROM it ORDER BY id")
    assert cur.node == cluster.leader
    assert cur.fetchall() == [("committed",), ("uncommitted",)]
    conn.rollback()
    cur.execute("SELECT x FROM it ORDER BY id")
    assert cur.fetchall() == [("committed",)]
    assert cur.node in cluster.followers


def test_pinned_node_reads_and_refuses_writes(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE pn(id INTEGER PRIMARY KEY)")
    cluster.wait_for_catchup(10)
    follower = cluster.followers[0]
    pinned = proxy.connect(cluster.directory, cluster=cluster, node=follower)
    try:
        cur = pinned.execute("SELECT count(*) FROM pn")
        assert cur.node == follower and cur.fetchone() == (0,)
        with pytest.raises(proxy.ReadOnlyNodeError):
            pinned.execute("INSERT INTO pn VALUES (1)")
        with pytest.raises(proxy.OperationalError):
            pinned.execute("INSERT INTO pn VALUES (1)")
    finally:
        pinned.close()
    with pytest.raises(proxy.ClusterError, match="nodeX"):
        proxy.connect(cluster.directory, cluster=cluster, node="nodeX")


# -- statements handled specially ----------------------------------------------------------------

def test_temp_tables_on_leader_not_replicated(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE base(id INTEGER PRIMARY KEY, x)")
    conn.execute("INSERT INTO base(x) VALUES ('b')")
    conn.commit()
    cluster.wait_for_catchup(10)
    lsn = cluster.leader_lsn()
    cur = conn.cursor()
    cur.execute("CREATE TEMP TABLE scratch(x)")
    assert cur.node == cluster.leader
    cur.execute("INSERT INTO scratch VALUES (1), (2)")
    assert cur.node == cluster.leader
    assert cur.rowcount == 2
    cur.execute("INSERT INTO scratch SELECT x FROM base")
    cur.execute("SELECT x FROM scratch ORDER BY rowid")
    assert cur.node == cluster.leader
    assert cur.fetchall() == [(1,), (2,), ("b",)]
    cur.execute("SELECT count(*) FROM temp.scratch")
    assert cur.fetchone() == (3,)
    conn.commit()
    assert cluster.leader_lsn() == lsn  # nothing logged
    cluster.wait_for_catchup(10)
    for node in [cluster.leader, *cluster.followers]:
        assert "scratch" not in node_tables(cluster, node)
    # another connection does not see it
    other = proxy.connect(cluster.directory, cluster=cluster)
    try:
        with pytest.raises(proxy.OperationalError, match="no such table"):
            other.execute("SELECT * FROM scratch")
    finally:
        other.close()
    assert proxy.verify(cluster).identical


def test_attach_refused(tmp_path: Path, conn: proxy.Connection) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(proxy.NotSupportedError, match="ATTACH"):
        conn.execute("ATTACH DATABASE ? AS other", (str(other),))
    with pytest.raises(proxy.NotSupportedError):
        conn.execute("DETACH DATABASE other")


def test_vacuum(cluster: proxy.Cluster, conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE k(id INTEGER PRIMARY KEY, x)")
    conn.execute("CREATE TABLE kw(a TEXT PRIMARY KEY, b) WITHOUT ROWID")
    conn.executemany("INSERT INTO k(x) VALUES (?)", [(i,) for i in range(20)])
    conn.execute("DELETE FROM k WHERE id % 2 = 0")
    conn.execute("INSERT INTO kw VALUES ('a', 1)")
    conn.commit()
    lsn = cluster.leader_lsn()
    cur = conn.execute("VACUUM")
    assert cur.node == cluster.leader
    assert cluster.leader_lsn() == lsn
    assert conn.execute("SELECT count(*) FROM k").fetchone() == (10,)
    assert proxy.verify(cluster).identical
    # not inside a transaction, as in SQLite
    conn.execute("INSERT INTO k(x) VALUES (99)")
    with pytest.raises(proxy.OperationalError, match="transaction"):
        conn.execute("VACUUM")
    conn.rollback()


def test_vacuum_refused_with_table_without_primary_key(cluster: proxy.Cluster,
                                                       conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE haspk(id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE nopk(x, y)")
    conn.executemany("INSERT INTO nopk VALUES (?, ?)", [(i, i) for i in range(5)])
    conn.commit()
    lsn = cluster.leader_lsn()
    with pytest.raises(proxy.NotSupportedError) as info:
        conn.execute("VACUUM")
    message = str(info.value)
    assert "nopk" in message and "PRIMARY KEY" in message
    assert "haspk" not in message
    assert cluster.leader_lsn() == lsn
    assert proxy.verify(cluster).identical


# The entry of a refused COMMIT is taken back: by its LSN, or with a user's last-write position
# (user=) by a savepoint around both.
@pytest.mark.parametrize("user", [None, "alice"])
def test_deferred_foreign_key_violation_at_commit(cluster: proxy.Cluster, user: str | None) -> None:
    conn = proxy.connect(cluster.directory, cluster=cluster, user=user)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child(id INTEGER PRIMARY KEY, "
                 "parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    lsn = cluster.leader_lsn()
    conn.execute("INSERT INTO child VALUES (1, 42)")  # fine until COMMIT
    with pytest.raises(proxy.IntegrityError, match="FOREIGN KEY constraint failed") as info:
        conn.commit()
    assert info.value.sqlite_errorname == "SQLITE_CONSTRAINT_FOREIGNKEY"
    assert conn.in_transaction  # the transaction stays open, as in SQLite
    assert cluster.leader_lsn() == lsn  # and nothing was logged
    with pytest.raises(proxy.IntegrityError):
        conn.execute("COMMIT")
    assert conn.in_transaction and cluster.leader_lsn() == lsn
    # fix it and commit: exactly one entry, carrying both rows
    conn.execute("INSERT INTO parent VALUES (42)")
    conn.commit()
    assert not conn.in_transaction
    assert cluster.leader_lsn() == lsn + 1
    assert len(cluster.entries(lsn + 1)) == 1
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT * FROM parent") == [(42,)]
        assert node_rows(cluster, node, "SELECT * FROM child") == [(1, 42)]
    assert proxy.verify(cluster).identical
    if user is not None:
        with cluster.node(cluster.leader) as leader:
            assert leader.execute("SELECT last_write_lsn FROM _replproxy_users WHERE user = ?",
                                  (user,)).fetchall() == [(lsn + 1,)]
    conn.close()


def test_deferred_foreign_key_violation_then_rollback(cluster: proxy.Cluster,
                                                      conn: proxy.Connection) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child(id INTEGER PRIMARY KEY, "
                 "parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    lsn = cluster.leader_lsn()
    conn.execute("INSERT INTO child VALUES (1, 42)")
    with pytest.raises(proxy.IntegrityError):
        conn.commit()
    conn.rollback()
    assert not conn.in_transaction
    assert cluster.leader_lsn() == lsn
    assert conn.execute("SELECT count(*) FROM child").fetchone() == (0,)
    conn.execute("INSERT INTO parent VALUES (1)")
    conn.commit()
    assert cluster.leader_lsn() == lsn + 1
    assert proxy.verify(cluster).identical


@pytest.mark.parametrize(("sql", "operation"), [
    ("BEGIN", "BEGIN"),
    ("begin deferred transaction", "BEGIN"),
    ("BEGIN IMMEDIATE", "BEGIN IMMEDIATE"),
    ("  /* why */ begin -- the mode\n  exclusive transaction", "BEGIN EXCLUSIVE"),
    ("BEGIN/**/IMMEDIATE", "BEGIN IMMEDIATE"),
    ("-- a note\nBEGIN TRANSACTION", "BEGIN"),
])
def test_begin_mode_is_read_past_blanks_and_comments(sql: str, operation: str) -> None:
    from proxy.driver.analyze import Analyzer

    conn = apsw.Connection(":memory:")
    try:
        assert Analyzer(conn)(sql).operation == operation
    finally:
        conn.close()


def test_a_commented_begin_immediate_takes_the_leader_write_lock(cluster: proxy.Cluster,
                                                                 conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE lock_probe(id INTEGER PRIMARY KEY)")
    conn.commit()
    cur = conn.cursor()
    cur.execute("/* reserve */ BEGIN -- now\n IMMEDIATE")
    other = cluster.open_node(cluster.leader)
    try:
        other.set_busy_timeout(0)
        with pytest.raises(apsw.BusyError):
            other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
    cur.execute("ROLLBACK")
