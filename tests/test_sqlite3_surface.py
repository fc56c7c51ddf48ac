"""Python's sqlite3 connection surface on `proxy.connect` (docs/dbapi.md, "Python's sqlite3 against
replproxy"): row and text factories, functions and collations defined on the connection (usable in
reads served by followers, replicated by their results, still refused by the statement format),
iterdump, backup and serialize without replproxy's objects, read-only blobs, transaction control
(isolation_level, autocommit), the trace callback, total_changes, and what raises
NotSupportedError."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from checks import assert_identical, node_rows, same_on_all

import proxy
from proxy.remote.client import RemoteConnection, RemoteCursor

MakeCluster = Callable[..., proxy.Cluster]
FORMATS = ["row", "statement", "trigger", "mixed"]
SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)"


@pytest.fixture
def plain() -> Iterator[sqlite3.Connection]:
    """Python's sqlite3 on a database of its own (never a node file: one SQLite library per file)."""
    db = sqlite3.connect(":memory:")
    yield db
    db.close()


def open_conn(make_cluster: MakeCluster, fmt: str = "row", **options: Any) -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(format=fmt)
    return cluster, proxy.connect(cluster.directory, cluster=cluster, **options)


def fill(conn: Any, rows: int = 3) -> None:
    conn.execute(SCHEMA)
    conn.executemany("INSERT INTO t(v, n) VALUES (?, ?)", [(f"v{i}", i) for i in range(1, rows + 1)])
    conn.commit()


def follower_read(cluster: proxy.Cluster, conn: proxy.Connection, sql: str, params: Any = ()) -> proxy.Cursor:
    """`sql` read by a follower: once every follower has applied the session's writes, a read at the
    default (session) level goes to one."""
    cluster.wait_for_catchup(10)
    cur = conn.execute(sql, params)
    assert cur.node in cluster.followers, f"served by {cur.node}"
    return cur


def shout(value: Any) -> str:
    return f"{str(value).upper()}!"


# -- row_factory and text_factory ---------------------------------------------------------------


def test_sqlite3_row_as_row_factory_gives_proxy_rows_by_index_and_name(cluster, conn, plain) -> None:
    for db in (conn, plain):
        fill(db)
        db.row_factory = sqlite3.Row
    assert conn.row_factory is sqlite3.Row  # kept as set; proxy.Row answers it
    sql = "SELECT id AS Id, v, n * 2 AS Double FROM t ORDER BY id"
    cluster.wait_for_catchup(10)
    cur = conn.execute(sql)
    rows, expected = cur.fetchall(), plain.execute(sql).fetchall()
    assert cur.node in cluster.followers
    assert all(isinstance(row, proxy.Row) for row in rows)
    for row, want in zip(rows, expected, strict=True):
        assert row.keys() == want.keys() == ["Id", "v", "Double"]
        assert tuple(row) == tuple(want)
        for key in ("id", "ID", "Id", "V", "double"):
            assert row[key] == want[key]
        assert row[0] == want[0] and row[-1] == want[-1] and row[0:2] == want[0:2]
    again = conn.execute(sql).fetchall()
    assert rows == again and hash(rows[0]) == hash(again[0]) and rows[0] != rows[1]


def test_proxy_row_follows_sqlite3_row(plain) -> None:
    plain.row_factory = sqlite3.Row
    cursor = type("C", (), {"description": (("a", None) + (None,) * 5, ("É", None) + (None,) * 5)})()
    row, want = proxy.Row(cursor, (1, "x")), plain.execute('SELECT 1 AS a, \'x\' AS "É"').fetchone()
    assert len(row) == len(want) == 2 and list(row) == list(want) and ("x" in row) == ("x" in want)
    assert row["A"] == want["A"] == 1 and row[::-1] == want[::-1] == ("x", 1)
    for key in ("é", "b"):  # only ASCII letters match without case, as in sqlite3
        with pytest.raises(IndexError, match="No item with that key"):
            row[key]
        with pytest.raises(IndexError, match="No item with that key"):
            want[key]
    other = type("D", (), {"description": (("b", None) + (None,) * 5, ("É", None) + (None,) * 5)})()
    assert row != proxy.Row(other, (1, "x")) and row == proxy.Row(cursor, (1, "x")) and row != (1, "x")
    with pytest.raises(TypeError):
        proxy.Row(cursor, [1, "x"])


def test_each_new_cursor_takes_the_connections_row_factory(cluster, conn) -> None:
    fill(conn)

    def as_dict(cursor: Any, row: tuple[Any, ...]) -> dict[str, Any]:
        return {d[0]: value for d, value in zip(cursor.description, row, strict=True)}

    before = conn.cursor()
    conn.row_factory = as_dict
    after = conn.cursor()
    assert before.row_factory is None and after.row_factory is as_dict
    assert before.execute("SELECT n FROM t WHERE id = 1").fetchone() == (1,)
    cur = follower_read(cluster, conn, "SELECT id, n FROM t ORDER BY id")
    assert cur.fetchone() == {"id": 1, "n": 1}
    assert cur.fetchmany(1) == [{"id": 2, "n": 2}]
    assert list(cur) == [{"id": 3, "n": 3}]
    assert conn.execute("SELECT n FROM t ORDER BY id").fetchall() == [{"n": 1}, {"n": 2}, {"n": 3}]
    # rows returned by a write (RETURNING) too, and a factory set on one cursor only
    assert conn.execute("UPDATE t SET n = n + 10 WHERE id = 1 RETURNING n").fetchall() == [{"n": 11}]
    conn.commit()
    after.row_factory = None
    assert after.execute("SELECT n FROM t WHERE id = 1").fetchall() == [(11,)]
    conn.row_factory = None
    assert conn.execute("SELECT n FROM t WHERE id = 2").fetchall() == [(2,)]


def test_text_factory_shapes_text_values_like_sqlite3(conn, plain) -> None:
    for db in (conn, plain):
        db.execute(SCHEMA)
        db.execute("INSERT INTO t(v, n) VALUES ('héllo', 7)")
        db.commit()
    sql = "SELECT v, n, x'00' FROM t"
    for factory in (bytes, lambda raw: raw.decode("utf-8").upper(), str):
        conn.text_factory = plain.text_factory = factory
        assert conn.execute(sql).fetchall() == plain.execute(sql).fetchall()


# -- functions, aggregates, window functions, collations ----------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_function_defined_on_the_connection_serves_reads_on_followers(make_cluster, fmt) -> None:
    cluster, conn = open_conn(make_cluster, fmt)
    fill(conn)
    conn.create_function("shout", 1, shout, deterministic=True)
    cur = follower_read(cluster, conn, "SELECT shout(v) FROM t ORDER BY id")
    assert cur.fetchall() == [("V1!",), ("V2!",), ("V3!",)]
    # A view naming it is replicated (it only names it) and read on a follower with it.
    conn.execute("CREATE VIEW loud AS SELECT id, shout(v) AS s FROM t")
    assert follower_read(cluster, conn, "SELECT s FROM loud WHERE id = 2").fetchall() == [("V2!",)]
    assert_identical(cluster)
    conn.close()


@pytest.mark.parametrize("fmt", ["row", "trigger", "mixed"])
def test_a_function_in_a_write_is_replicated_by_what_it_computed(make_cluster, fmt) -> None:
    cluster, conn = open_conn(make_cluster, fmt)
    calls: list[Any] = []

    def counted(value: Any) -> str:
        calls.append(value)
        return shout(value)

    fill(conn)
    conn.create_function("shout", 1, counted)
    conn.execute("INSERT INTO t(v, n) VALUES (shout(?), 4)", ("new",))
    conn.execute("UPDATE t SET v = shout(v) WHERE n <= 2")
    conn.commit()
    assert sorted(calls) == ["new", "v1", "v2"]  # on the leader only: followers replay the results
    assert same_on_all(cluster, "SELECT v FROM t ORDER BY id") == [("V1!",), ("V2!",), ("v3",), ("NEW!",)]
    assert_identical(cluster)
    conn.close()


def test_the_statement_format_still_refuses_a_function_defined_on_the_connection(make_cluster) -> None:
    cluster, conn = open_conn(make_cluster, "statement", autocommit=True)
    fill(conn)
    before = cluster.leader_lsn()
    # As before: the application's function, registered on the leader connection by hand...
    old = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    old._leader.create_scalar_function("shout", shout, 1)
    conn.create_function("shout", 1, shout)  # ... and through create_function
    statements = ["UPDATE t SET v = shout(v)", "INSERT INTO t(v) VALUES (shout('x'))",
                  "CREATE TABLE c(v TEXT CHECK (shout(v) <> ''))"]
    for sql in statements:
        errors = []
        for db in (old, conn):
            with pytest.raises(proxy.UnsafeStatementError) as caught:
                db.execute(sql)
            errors.append(str(caught.value))
            assert not db.in_transaction
        assert errors[0] == errors[1]  # the same refusal, word for word
        assert "shout" in errors[1]
    with pytest.raises(proxy.UnsafeStatementError, match=r"shout\(\), an application-defined function"):
        conn.execute("UPDATE t SET v = shout(v)")
    assert cluster.leader_lsn() == before  # nothing logged
    # Reads may call it: they are not logged.
    assert follower_read(cluster, conn, "SELECT shout(v) FROM t WHERE id = 1").fetchall() == [("V1!",)]
    assert_identical(cluster)
    old.close()
    conn.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_schema_change_calling_a_defined_function_or_collation_is_refused(make_cluster, fmt) -> None:
    """Followers replay schema changes in appliers that have none of the connection's definitions:
    every format refuses them (the statement and mixed formats in their own words, as before)."""
    cluster, conn = open_conn(make_cluster, fmt, autocommit=True)
    fill(conn)
    conn.create_function("shout", 1, shout, deterministic=True)
    conn.create_collation("backwards", lambda a, b: (a < b) - (a > b))
    before = cluster.leader_lsn()
    for sql in ["CREATE TABLE c(v TEXT CHECK (shout(v) <> 'X'))", "CREATE INDEX i ON t(shout(v))",
                "CREATE TABLE g(v TEXT, s TEXT AS (shout(v)))"]:
        with pytest.raises(proxy.UnsafeStatementError, match=r"shout.*followers"):
            conn.execute(sql)
    for sql in ["CREATE TABLE c(v TEXT COLLATE backwards)", "CREATE INDEX i ON t(v COLLATE backwards)"]:
        with pytest.raises((proxy.UnsafeStatementError, proxy.IntegrityError), match="'backwards'"):
            conn.execute(sql)
    assert cluster.leader_lsn() == before and not conn.in_transaction
    conn.execute("INSERT INTO t(v, n) VALUES ('ok', 9)")  # followers keep applying
    assert same_on_all(cluster, "SELECT v FROM t WHERE n = 9") == [("ok",)]
    assert_identical(cluster)
    conn.close()


@pytest.mark.parametrize("fmt", ["row", "statement"])
def test_aggregates_window_functions_and_collations_serve_reads_on_followers(make_cluster, fmt, plain) -> None:
    cluster, conn = open_conn(make_cluster, fmt)

    class Product:
        def __init__(self) -> None:
            self.value = 1

        def step(self, n: int) -> None:
            self.value *= n

        def finalize(self) -> int:
            return self.value

    class Moving:
        def __init__(self) -> None:
            self.total = 0

        def step(self, n: int) -> None:
            self.total += n

        def inverse(self, n: int) -> None:
            self.total -= n

        def value(self) -> int:
            return self.total

        def finalize(self) -> int:
            return self.total

    def backwards(a: str, b: str) -> int:
        return (a < b) - (a > b)

    sql = ("SELECT product(n), group_concat(v, ',') FROM (SELECT n, v FROM t ORDER BY v COLLATE backwards)",
           "SELECT moving(n) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t ORDER BY id")
    for db in (conn, plain):
        fill(db, 4)
        db.create_aggregate("product", 1, Product)
        db.create_window_function("moving", 1, Moving)
        db.create_collation("backwards", backwards)
    for query in sql:
        assert follower_read(cluster, conn, query).fetchall() == plain.execute(query).fetchall()
    conn.close()


def test_errors_in_the_applications_code_read_as_sqlite3s(cluster, conn, plain) -> None:
    calls: list[int] = []

    def fails(n: int) -> int:
        calls.append(n)
        return 1 // 0

    class BadStep:
        def step(self, n: int) -> None:
            raise ValueError(n)

        def finalize(self) -> int:
            return 0

    class BadResult:
        def step(self, n: int) -> None:
            pass

        def finalize(self) -> list[int]:
            return [1]

    for db in (conn, plain):
        fill(db)
        db.create_function("fails", 1, fails)
        db.create_function("listy", 0, lambda: [1])
        db.create_aggregate("badstep", 1, BadStep)
        db.create_aggregate("badresult", 1, BadResult)
    cluster.wait_for_catchup(10)
    for sql in ("SELECT fails(n) FROM t", "SELECT listy()", "SELECT badstep(n) FROM t", "SELECT badresult(n) FROM t"):
        with pytest.raises(sqlite3.OperationalError) as want:
            plain.execute(sql).fetchall()
        calls.clear()
        with pytest.raises(proxy.OperationalError) as got:
            conn.execute(sql).fetchall()
        assert str(got.value) == str(want.value)
        assert len(calls) <= 1  # a follower's failure is not run again on the leader
    with pytest.raises(proxy.OperationalError) as got:
        conn.execute("SELECT fails(1)")
    assert isinstance(got.value.__cause__.__cause__, ZeroDivisionError)  # the application's exception


def test_a_reads_rows_are_stepped_as_sqlite3_steps_them(cluster, conn, plain) -> None:
    """execute() steps the first row and every fetch the one after the row it hands out (so the
    last row handed out leaves no statement open): an error in row N surfaces at the same call
    as with sqlite3, and the rows before it are handed out."""
    def fails_on(bad: int) -> Callable[[int], int]:
        def check(n: int) -> int:
            if n == bad:
                raise ValueError(n)
            return n
        return check

    def where_it_fails(db: Any, bad: int, fetch: str) -> list[Any]:
        """What each call gave, up to the error's type: ["executed", (1,), ..., "OperationalError"]."""
        seen: list[Any] = []
        try:
            cur = db.execute(f"SELECT fails_{bad}(n) FROM t")
            seen.append("executed")
            while True:
                got = cur.fetchone() if fetch == "one" else next(iter(cur.fetchmany(1)), None)
                if got is None:
                    return seen
                seen.append(tuple(got))
        except Exception as exc:
            return [*seen, type(exc).__name__]

    for db in (conn, plain):
        fill(db, rows=4)
        for bad in (1, 2, 4, 5):
            db.create_function(f"fails_{bad}", 1, fails_on(bad))
    cluster.wait_for_catchup(10)
    for bad in (1, 2, 4, 5):
        for fetch in ("one", "many"):
            assert where_it_fails(conn, bad, fetch) == where_it_fails(plain, bad, fetch), (bad, fetch)
    assert conn.execute("SELECT fails_5(n) FROM t").fetchall() == [(1,), (2,), (3,), (4,)]
    assert where_it_fails(conn, 4, "one")[:4] == ["executed", (1,), (2,), "OperationalError"]


def test_a_definition_is_removed_with_none_everywhere(cluster, conn) -> None:
    fill(conn)
    conn.create_function("shout", 1, shout)
    conn.create_collation("backwards", lambda a, b: (a < b) - (a > b))
    assert follower_read(cluster, conn, "SELECT shout('a')").fetchall() == [("A!",)]
    conn.create_function("shout", 1, None)
    conn.create_collation("backwards", None)
    for sql in ("SELECT shout('a')", "SELECT v FROM t ORDER BY v COLLATE backwards"):
        with pytest.raises(proxy.OperationalError, match="no such (function|collation)"):
            conn.execute(sql)
    with pytest.raises(TypeError):
        conn.create_collation("x", 42)


def test_definitions_follow_the_session_to_a_new_leader(make_cluster) -> None:
    cluster, conn = open_conn(make_cluster, "row", autocommit=True)
    fill(conn)
    conn.create_function("shout", 1, shout)
    old = cluster.leader
    cluster.wait_for_catchup(10)
    cluster.failover()
    conn.execute("INSERT INTO t(v, n) VALUES (shout('after'), 5)")
    assert conn._leader_name != old
    assert same_on_all(cluster, "SELECT v FROM t WHERE n = 5") == [("AFTER!",)]
    conn.close()


# -- the user's database: iterdump, backup, serialize -------------------------------------------

DATABASE = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n REAL)",
    "CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, \"odd \"\"name\" TEXT)",
    "CREATE INDEX t_v ON t(v)",
    "CREATE VIEW big AS SELECT * FROM t WHERE n > 1",
    "CREATE TRIGGER t_seq AFTER INSERT ON t BEGIN INSERT INTO seq(\"odd \"\"name\") VALUES (new.v); END",
    "INSERT INTO t(v, n) VALUES ('it''s', 1.5), (NULL, 2), ('x', -3)",
    "UPDATE t SET v = x'00ff' WHERE n = 2",
    "DELETE FROM seq WHERE id = 3",
    "PRAGMA user_version = 7",
]


def build(db: Any) -> None:
    for sql in DATABASE:
        db.execute(sql)
    db.commit()


def contents(db: Any) -> dict[str, Any]:
    """A database's schema, rows and header fields, through any DB-API connection."""
    user = "name NOT LIKE '\\_replproxy%' ESCAPE '\\'"
    names = [r[0] for r in db.execute(f"SELECT name FROM sqlite_master WHERE type = 'table' AND {user} ORDER BY name")]
    out: dict[str, Any] = {
        "schema": db.execute(f"SELECT type, name, tbl_name, sql FROM sqlite_master WHERE {user} ORDER BY name"
                             ).fetchall(),
        "user_version": db.execute("PRAGMA user_version").fetchall(),
    }
    for name in names:
        out[name] = db.execute(f'SELECT * FROM "{name}" ORDER BY 1').fetchall()
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_iterdump_is_the_users_database_as_sqlite3_dumps_it(make_cluster, fmt, plain) -> None:
    cluster, conn = open_conn(make_cluster, fmt)
    build(conn)
    build(plain)
    dump = list(conn.iterdump())
    assert not [line for line in dump if "_replproxy" in line]
    assert dump == list(plain.iterdump())  # the same text as sqlite3's for the same database
    fresh = sqlite3.connect(":memory:")
    fresh.executescript("\n".join(dump))
    user = contents(conn)
    del user["user_version"]  # not part of a dump, in sqlite3 either
    loaded = contents(fresh)
    del loaded["user_version"]
    assert loaded == user
    # 3.13's filter: tables named like the pattern, and the indexes, triggers and views on them
    others = ("CREATE TABLE seq", 'INSERT INTO "seq"', 'DELETE FROM "sqlite_sequence"',
              'INSERT INTO "sqlite_sequence"', "CREATE VIEW")
    assert list(conn.iterdump(filter="t")) == [line for line in dump if not line.startswith(others)]
    fresh.close()
    conn.close()


def test_iterdump_inside_a_transaction_sees_what_it_wrote(cluster, conn, plain) -> None:
    for db in (conn, plain):
        db.execute(SCHEMA)
        db.commit()
        db.execute("INSERT INTO t(v, n) VALUES ('pending', 1)")
        assert db.in_transaction
    assert list(conn.iterdump()) == list(plain.iterdump())
    conn.rollback()
    assert "pending" not in "".join(conn.iterdump())


def test_backup_copies_the_users_database_into_sqlite3_and_apsw(make_cluster, tmp_path: Path) -> None:
    cluster, conn = open_conn(make_cluster, "trigger")
    build(conn)
    user = contents(conn)
    # into Python's sqlite3, in steps of one page, reporting progress as sqlite3 does
    into = sqlite3.connect(tmp_path / "copy.db")
    seen: list[tuple[int, int, int]] = []
    conn.backup(into, pages=1, progress=lambda *step: seen.append(step))
    assert contents(into) == user
    assert seen[-1] == (sqlite3.SQLITE_DONE, 0, seen[-1][2]) and len(seen) == seen[-1][2]
    assert into.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert into.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    into.close()
    # into apsw, all at once
    other = apsw.Connection(str(tmp_path / "apsw.db"))
    steps: list[tuple[int, int, int]] = []
    conn.backup(other, progress=lambda *step: steps.append(step))
    assert steps == [(apsw.SQLITE_DONE, 0, steps[0][2])]
    assert contents(other.cursor()) == user
    other.close()
    conn.close()


def test_backup_refuses_what_sqlite3_refuses_and_replproxy_targets(cluster, conn, tmp_path: Path) -> None:
    fill(conn)
    into = sqlite3.connect(":memory:")
    with pytest.raises(ValueError, match="same connection"):
        conn.backup(conn)
    with pytest.raises(TypeError):
        conn.backup(42)
    with pytest.raises(TypeError, match="progress"):
        conn.backup(into, progress=42)
    with pytest.raises(proxy.NotSupportedError, match="behind the replication log"):
        conn.backup(proxy.connect(cluster.directory, cluster=cluster))
    with pytest.raises(proxy.NotSupportedError, match="TEMP"):
        conn.backup(into, name="temp")
    with pytest.raises(proxy.OperationalError, match="unknown database"):
        conn.backup(into, name="other")
    node_file = apsw.Connection(str(cluster.path_of(cluster.followers[0])))
    with pytest.raises(proxy.ProgrammingError, match="node file of this cluster"):
        conn.backup(node_file)
    node_file.close()
    busy = apsw.Connection(str(tmp_path / "busy.db"))
    busy.execute("BEGIN")
    with pytest.raises(proxy.OperationalError, match="target is in transaction"):
        conn.backup(busy)
    busy.close()
    into.close()


def test_serialize_gives_the_users_database_and_deserialize_is_refused(cluster, conn) -> None:
    build(conn)
    data = conn.serialize()
    fresh = sqlite3.connect(":memory:")
    fresh.deserialize(data)
    assert contents(fresh) == contents(conn)
    fresh.close()
    with pytest.raises(proxy.NotSupportedError, match="behind the replication log"):
        conn.deserialize(data)


# -- blobs ----------------------------------------------------------------------------------------


def test_blobopen_reads_a_blob_on_a_follower_and_refuses_writes(cluster, conn, plain) -> None:
    for db in (conn, plain):
        db.execute("CREATE TABLE b(id INTEGER PRIMARY KEY, data BLOB)")
        db.execute("INSERT INTO b(data) VALUES (x'0102030405')")
        db.commit()
    cluster.wait_for_catchup(10)
    with pytest.raises(proxy.NotSupportedError, match="read-only"):
        conn.blobopen("b", "data", 1)  # sqlite3's default is a writable handle
    want = plain.blobopen("b", "data", 1, readonly=True)
    with conn.blobopen("b", "data", 1, readonly=True) as blob:
        assert blob.node in cluster.followers
        assert len(blob) == len(want) == 5
        assert (blob[0], blob[-1], blob[1:3], blob[::2]) == (want[0], want[-1], want[1:3], want[::2])
        assert blob.read(2) == want.read(2) and blob.tell() == want.tell() == 2
        blob.seek(-1, os.SEEK_END)
        assert blob.read() == b"\x05"
        for bad in (lambda b: b.seek(10), lambda b: b.seek(0, 7)):
            with pytest.raises(ValueError):
                bad(blob)
        with pytest.raises(IndexError):
            blob[5]
        with pytest.raises(proxy.NotSupportedError):
            blob.write(b"x")
        with pytest.raises(proxy.NotSupportedError):
            blob[0] = 1
    with pytest.raises(proxy.ProgrammingError, match="closed blob"):
        blob.read()
    want.close()
    with pytest.raises(proxy.OperationalError, match="no such rowid"):
        conn.blobopen("b", "data", 9, readonly=True)
    with pytest.raises(proxy.OperationalError, match="no such table"):
        conn.blobopen("nosuch", "data", 1, readonly=True)


# -- transaction control ------------------------------------------------------------------------


def test_isolation_level_and_autocommit_defaults_and_the_connect_mapping(cluster) -> None:
    default = proxy.connect(cluster.directory, cluster=cluster)
    auto = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    none = proxy.connect(cluster.directory, cluster=cluster, isolation_level=None)
    immediate = proxy.connect(cluster.directory, cluster=cluster, isolation_level="immediate")
    assert proxy.LEGACY_TRANSACTION_CONTROL == -1
    assert (default.isolation_level, default.autocommit) == ("", proxy.LEGACY_TRANSACTION_CONTROL)
    assert (auto.isolation_level, auto.autocommit) == (None, proxy.LEGACY_TRANSACTION_CONTROL)
    assert none.isolation_level is None and immediate.isolation_level == "IMMEDIATE"
    default.execute(SCHEMA)
    for db, opens in ((default, True), (auto, False), (none, False), (immediate, True)):
        db.execute("INSERT INTO t(v) VALUES ('x')")
        assert db.in_transaction == opens
        db.commit()
    plain = sqlite3.connect(":memory:")
    for value in (1, "serializable", "a\0b"):
        with pytest.raises((TypeError, ValueError)) as want:
            plain.isolation_level = value
        with pytest.raises(type(want.value), match=str(want.value)):
            default.isolation_level = value
    for value in (None, 1, 0, "yes", -2):
        with pytest.raises(ValueError, match="autocommit must be True, False, or sqlite3.LEGACY"):
            default.autocommit = value
    plain.close()
    for db in (default, auto, none, immediate):
        db.close()


def test_setting_isolation_level_to_none_commits_as_sqlite3_does(cluster, conn, plain) -> None:
    for db in (conn, plain):
        db.execute(SCHEMA)
        db.execute("INSERT INTO t(v) VALUES ('x')")
        db.isolation_level = "DEFERRED"  # another level: the transaction stays open
        assert db.in_transaction
        db.isolation_level = None
        assert not db.in_transaction and db.isolation_level is None
        db.execute("INSERT INTO t(v) VALUES ('y')")  # and every statement now commits by itself
        assert not db.in_transaction
    assert same_on_all(cluster, "SELECT v FROM t ORDER BY id") == [("x",), ("y",)]


def test_autocommit_true_leaves_transactions_to_sql_as_sqlite3_312(cluster, conn) -> None:
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO t(v) VALUES ('pending')")
    conn.autocommit = True  # commits what was pending
    assert not conn.in_transaction and conn.autocommit is True
    conn.execute("INSERT INTO t(v) VALUES ('alone')")
    assert not conn.in_transaction
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t(v) VALUES ('explicit')")
    conn.commit()  # does nothing with autocommit=True
    conn.rollback()
    assert conn.in_transaction
    conn.execute("COMMIT")
    assert same_on_all(cluster, "SELECT v FROM t ORDER BY id") == [("pending",), ("alone",), ("explicit",)]


def test_autocommit_false_keeps_a_transaction_open_as_sqlite3_312(cluster, conn) -> None:
    conn.execute(SCHEMA)
    conn.commit()
    conn.autocommit = False
    assert conn.in_transaction  # opened at once
    conn.execute("INSERT INTO t(v) VALUES ('one')")
    conn.commit()
    assert conn.in_transaction  # and again after commit()
    conn.execute("CREATE TABLE u(x)")  # DDL does not commit by itself either
    conn.execute("INSERT INTO t(v) VALUES ('two')")
    conn.rollback()
    assert conn.in_transaction
    assert same_on_all(cluster, "SELECT v FROM t") == [("one",)]
    assert not node_rows(cluster, cluster.leader, "SELECT 1 FROM sqlite_master WHERE name = 'u'")
    conn.execute("INSERT INTO t(v) VALUES ('three')")
    conn.autocommit = proxy.LEGACY_TRANSACTION_CONTROL  # back to isolation_level: nothing happens
    assert conn.in_transaction
    conn.commit()
    assert not conn.in_transaction
    assert same_on_all(cluster, "SELECT v FROM t ORDER BY id") == [("one",), ("three",)]


def test_connect_autocommit_true_keeps_its_meaning(cluster) -> None:
    """connect(autocommit=True) is sqlite3's isolation_level=None: commit() ends an explicit BEGIN,
    and executescript() does not commit it (the shell relies on both)."""
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute(SCHEMA)
    conn.execute("BEGIN")
    conn.executescript("INSERT INTO t(v) VALUES ('a'); INSERT INTO t(v) VALUES ('b');")
    assert conn.in_transaction
    conn.commit()
    assert not conn.in_transaction
    assert same_on_all(cluster, "SELECT count(*) FROM t") == [(2,)]
    conn.close()


# -- the trace callback and the counters ----------------------------------------------------------


def _traced_steps(db: Any) -> None:
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("INSERT INTO t(v) VALUES (?)", ("a",))
    db.executemany("INSERT INTO t(v) VALUES (?)", [("b",), ("it's",)])
    db.commit()
    db.rollback()
    db.execute("SELECT v FROM t WHERE id = :id", {"id": 1}).fetchall()
    db.execute("UPDATE t SET v = ? WHERE id = ?", (None, 2))
    db.rollback()
    db.executescript("INSERT INTO t(v) VALUES (1); DELETE FROM t WHERE id = 1;")
    db.execute("INSERT INTO t(v) VALUES (x'00ff')")
    db.commit()


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_trace_callback_sees_the_sessions_statements_as_sqlite3_traces_them(make_cluster, fmt, plain) -> None:
    cluster, conn = open_conn(make_cluster, fmt)
    got: list[str] = []
    want: list[str] = []
    conn.set_trace_callback(got.append)
    plain.set_trace_callback(want.append)
    _traced_steps(conn)
    _traced_steps(plain)
    assert got == want  # none of replproxy's own statements (log, capture, fence) among them
    conn.set_trace_callback(None)
    conn.execute("SELECT 1")
    assert got == want
    conn.set_trace_callback(lambda sql: 1 / 0)  # a failing callback is ignored, as in sqlite3
    assert conn.execute("SELECT 2").fetchone() == (2,)
    conn.close()


def test_total_changes_counts_the_sessions_changes_as_sqlite3(cluster, conn, plain) -> None:
    for db in (conn, plain):
        fill(db)
        db.execute("UPDATE t SET n = 0")
        db.execute("DELETE FROM t WHERE id = 1")
        db.commit()
    assert conn.total_changes == plain.total_changes == 7
    conn.close()
    with pytest.raises(proxy.ProgrammingError):
        conn.total_changes  # noqa: B018 - the property is what is tested


def test_cursor_factory_as_sqlite3(conn) -> None:
    class Mine(proxy.Cursor):
        pass

    conn.row_factory = sqlite3.Row
    cur = conn.cursor(factory=Mine)
    assert isinstance(cur, Mine) and cur.row_factory is sqlite3.Row
    assert cur.execute("SELECT 1 AS one").fetchone()["ONE"] == 1
    with pytest.raises(TypeError, match="factory must return a cursor"):
        conn.cursor(factory=lambda c: 42)


# -- what raises NotSupportedError --------------------------------------------------------------

REFUSED = [
    ("enable_load_extension", (True,), "followers' appliers"),
    ("load_extension", ("./ext.so",), "followers' appliers"),
    ("set_authorizer", (lambda *a: 0,), "authorizer of its own"),
    ("set_progress_handler", (lambda: 0, 10), "interrupt()"),
    ("setlimit", (sqlite3.SQLITE_LIMIT_LENGTH, 1000), "followers"),
    ("setconfig", (1002, False), "leader connection alone"),  # SQLITE_DBCONFIG_ENABLE_FKEY
    ("deserialize", (b"",), "behind the replication log"),
]


@pytest.mark.parametrize(("method", "args", "why"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_cannot_be_supported_says_why(conn, method, args, why) -> None:
    with pytest.raises(proxy.NotSupportedError, match=why):
        getattr(conn, method)(*args)


def test_the_harmless_forms_of_refused_calls_are_accepted(conn, plain) -> None:
    conn.enable_load_extension(False)
    conn.set_authorizer(None)
    conn.set_progress_handler(None, 10)
    for category in (sqlite3.SQLITE_LIMIT_LENGTH, sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER):
        assert conn.setlimit(category, -1) == conn.getlimit(category) > 0
    with pytest.raises(proxy.ProgrammingError, match="out of bounds"):
        conn.getlimit(99)
    assert conn.getconfig(1002) in (True, False)  # SQLITE_DBCONFIG_ENABLE_FKEY


# -- the remote driver -------------------------------------------------------------------------


def test_the_remote_driver_refuses_what_only_a_node_process_could_do() -> None:
    for name in ("create_function", "create_aggregate", "create_window_function", "create_collation",
                 "iterdump", "backup", "serialize", "deserialize", "blobopen", "load_extension",
                 "enable_load_extension", "set_authorizer", "set_progress_handler", "getlimit", "setlimit",
                 "getconfig", "setconfig"):
        with pytest.raises(proxy.NotSupportedError, match=rf"{name}\(\) is not supported by the remote driver"):
            getattr(RemoteConnection, name)(object(), "x", 1, len)


def test_the_remote_cursor_applies_row_and_text_factories() -> None:
    class Link:
        row_factory = None
        text_factory: Any = str

        def _check_open(self) -> None:
            pass

    link = Link()
    cur = RemoteCursor(link)  # type: ignore[arg-type]
    cur.row_factory = sqlite3.Row
    cur.description = (("Name", None, None, None, None, None, None),)
    cur._rows = [("a",), ("b",), ("c",)]
    first = cur.fetchone()
    assert isinstance(first, proxy.Row) and first["name"] == "a"
    link.text_factory = bytes
    assert [row["NAME"] for row in cur.fetchall()] == [b"b", b"c"]


def test_the_remote_driver_over_nats_honours_row_factory_and_refuses_create_function(tmp_path: Path,
                                                                                      nats_server) -> None:
    from distnodes import Cluster as DistCluster

    dist = DistCluster(tmp_path, nats_server.url)
    try:
        a = dist.init("a").serve()
        dist.wait_serving(a)
        b = dist.join("b").serve()
        dist.wait_reporting(a, b)
        conn = proxy.connect(f"{dist.nats}/{dist.name}")
        traced: list[str] = []
        conn.set_trace_callback(traced.append)
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO t(v, n) VALUES (?, ?)", ("x", 1))
        conn.commit()
        assert conn.total_changes == 1 and conn.isolation_level == ""
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT v AS Value, n FROM t").fetchone()
        assert isinstance(row, proxy.Row) and row["value"] == "x" and row.keys() == ["Value", "n"]
        assert traced == [SCHEMA, "INSERT INTO t(v, n) VALUES (?, ?)", "SELECT v AS Value, n FROM t"]
        with pytest.raises(proxy.NotSupportedError, match="every node process"):
            conn.create_function("shout", 1, shout)
        conn.close()
    finally:
        dist.stop()
