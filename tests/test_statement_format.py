"""The statement log format end to end: writes go through the DB-API (`proxy.connect`) on clusters
made with `make_cluster(format="statement")`, followers replay the logged statements, and
`proxy.verify` compares every node with the leader.

A corpus of nondeterministic statements that the format rewrites (they must leave every follower
identical to the leader), a corpus of unsafe statements it refuses before they run (shared with
test_mixed_format.py, where the same statements must replicate exactly as row images), the naive
mode's divergence, connection settings that travel with statements, the decoder, and property
tests over generated statements.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import apsw
import pytest
from click.testing import CliRunner
from helpers import examples, suppressed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logformats
import proxy
from logformats import determinism, statement
from logformats.base import StatementInfo
from proxy.tools.cli import main as cli

MakeCluster = Callable[..., proxy.Cluster]


# -- helpers ------------------------------------------------------------------------------------


def open_cluster(make_cluster: MakeCluster, fmt: str = "statement", name: str = "cluster", **options: Any
                 ) -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(name, format=fmt, options=options or None)
    return cluster, proxy.connect(cluster.directory, cluster=cluster, autocommit=True)


def assert_identical(cluster: proxy.Cluster) -> proxy.VerifyReport:
    cluster.wait_for_catchup(10)
    report = proxy.verify(cluster)
    differences = "\n".join(f"  {d.node} {d.object}: {d.detail}" for d in report.differences)
    assert report.identical, f"nodes differ at LSN {report.lsn}:\n{differences}"
    assert cluster.status()[1].state == "ok", cluster.status()[1].error
    return report


def rows_everywhere(cluster: proxy.Cluster, sql: str) -> dict[str, list[tuple[Any, ...]]]:
    cluster.wait_for_catchup(10)
    out = {}
    for name in [cluster.leader, *cluster.followers]:
        conn = cluster.open_node(name)
        try:
            out[name] = conn.execute(sql).fetchall()
        finally:
            conn.close()
    return out


def events(cluster: proxy.Cluster, lsn: int) -> list[logformats.Event]:
    (entry,) = cluster.entries(lsn, 1)
    return cluster.format.decode(entry.payload, cluster.table_columns().get)


def run_all(conn: proxy.Connection, statements: Sequence[str | tuple[str, Any]]) -> None:
    for item in statements:
        sql, params = (item, ()) if isinstance(item, str) else item
        conn.execute(sql, params)


# The schema every corpus entry starts from.
BASE_SCHEMA = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v, g INTEGER, ts TEXT)",
    "CREATE TABLE t2(id INTEGER PRIMARY KEY, v)",
    "CREATE TABLE kv(k TEXT PRIMARY KEY NOT NULL, v) WITHOUT ROWID",
    "CREATE TABLE tk(k TEXT PRIMARY KEY, v)",
    "CREATE TABLE d(id INTEGER PRIMARY KEY, a, ts DEFAULT CURRENT_TIMESTAMP, r DEFAULT (random()), "
    "day DEFAULT (date('now', 'localtime')), blob DEFAULT (randomblob(4)))",
    "INSERT INTO t(id, v, g, ts) VALUES (1, 'a', 1, '2024-01-01 10:00:00'), (2, 'b', 1, 'now'), "
    "(3, 'c', 2, '2024-03-01'), (4, 'd', 2, NULL)",
    "INSERT INTO tk(k, v) VALUES ('x', 1), ('y', 2)",
]


@dataclass(frozen=True)
class Case:
    name: str
    statements: tuple[Any, ...]  # the last one is the statement under test
    setup: tuple[str, ...] = ()
    expect: str = ""  # for unsafe cases: a word of the refusal message


# A virtual table: its module, not SQLite's plan, decides the order of its rows.
FTS_SETUP = ("CREATE VIRTUAL TABLE ft USING fts5(body)", "INSERT INTO ft(body) VALUES ('a'), ('c'), ('b')")


# -- the corpus of nondeterministic statements the format makes deterministic --------------------

REWRITTEN = [
    Case("random in VALUES", ("INSERT INTO t2(v) VALUES (random())",)),
    Case("randomblob literal and parameter", (("INSERT INTO t2(v) VALUES (randomblob(8)), (hex(randomblob(?)))",
                                               (4,)),)),
    Case("random in several VALUES rows and columns", ("INSERT INTO t(v, g) VALUES (random(), random()), "
                                                       "(random(), 1)",)),
    Case("clock functions with now", ("INSERT INTO t(v, g, ts) VALUES (datetime('now'), julianday(), "
                                      "strftime('%s', 'now'))",)),
    Case("clock functions without a time value", ("INSERT INTO t2(v) VALUES (date() || time() || unixepoch() "
                                                  "|| strftime('%Y %j'))",)),
    Case("subsec and timediff", ("INSERT INTO t2(v) VALUES (unixepoch('now', 'subsec') || timediff('now', "
                                 "'2000-01-01'))",)),
    Case("CURRENT_TIMESTAMP, CURRENT_DATE, CURRENT_TIME", ("INSERT INTO t(v, g, ts) VALUES (CURRENT_DATE, "
                                                          "length(CURRENT_TIME), CURRENT_TIMESTAMP)",)),
    Case("localtime and utc on constants", ("INSERT INTO t2(v) VALUES (datetime('now', 'localtime') || "
                                            "datetime('2024-06-01 12:00', 'utc'))",)),
    Case("now and localtime as parameters", (("INSERT INTO t2(v) VALUES (datetime(?, ?))",
                                              ("now", "localtime")),)),
    Case("DEFAULT CURRENT_TIMESTAMP, random(), localtime, randomblob: one row", ("INSERT INTO d(a) VALUES (1)",)),
    Case("nondeterministic DEFAULTs: several rows", ("INSERT INTO d(a) VALUES (1), (2), (3)",)),
    Case("nondeterministic DEFAULTs: DEFAULT VALUES", ("INSERT INTO d DEFAULT VALUES",)),
    Case("nondeterministic time DEFAULT in ordered INSERT ... SELECT",
         ("INSERT INTO d(a, r, blob) SELECT v, g, g FROM t ORDER BY id",)),
    Case("randomblob in an UPDATE of one row by key", (("UPDATE t SET v = randomblob(16) WHERE id = ?", (2,)),)),
    Case("random in an UPDATE of one row by a TEXT key", ("UPDATE tk SET v = random() WHERE k = 'x'",)),
    Case("a column holding the text 'now' as a time value", ("UPDATE t SET ts = date(ts, '+1 day')",)),
    Case("parameter as modifier", (("UPDATE t SET ts = datetime(ts, ?)", ("+2 hours",)),)),
    Case("UPSERT with random in DO UPDATE", ("INSERT INTO t2(id, v) VALUES (1, 1) ON CONFLICT(id) DO UPDATE "
                                             "SET v = random()",
                                             "INSERT INTO t2(id, v) VALUES (1, 1) ON CONFLICT(id) DO UPDATE "
                                             "SET v = random()")),
    Case("REPLACE INTO with random", ("REPLACE INTO t2(id, v) VALUES (1, random())",)),
    Case("INSERT OR REPLACE with the clock", ("INSERT OR REPLACE INTO kv(k, v) VALUES ('a', CURRENT_TIMESTAMP)",)),
    Case("RETURNING random() and changes() (not logged)", ("INSERT INTO t2(v) VALUES (1) RETURNING id, "
                                                           "random(), changes()",)),
    Case("recursive CTE reading no table", ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                                            "WHERE x < 20) INSERT INTO t2(v) SELECT x FROM c",)),
    Case("INSERT ... SELECT ordered by the key", ("INSERT INTO t2(v) SELECT v FROM t ORDER BY id DESC",)),
    Case("subquery with LIMIT ordered by the key", ("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id "
                                                    "LIMIT 2)",)),
    Case("scalar subquery pinned by a key", ("UPDATE t SET v = (SELECT v FROM t2 WHERE t2.id = t.id)",),
         setup=("INSERT INTO t2(id, v) VALUES (1, 'one'), (2, 'two')",)),
    Case("aggregate subquery", ("UPDATE t SET g = (SELECT count(*) FROM t2)",)),
    Case("window function ordered by the key", ("INSERT INTO t2(id, v) SELECT id + 10, row_number() OVER "
                                                "(ORDER BY id) FROM t ORDER BY id",)),
    Case("CREATE TABLE AS SELECT with the clock, ordered", ("CREATE TABLE snap AS SELECT id, v, "
                                                            "datetime('now') AS at FROM t ORDER BY id",)),
    Case("named, numbered and repeated parameters", (("INSERT INTO t(v, g, ts) VALUES (:a || random(), ?5, "
                                                      "@a)", {"a": "x", "5": 7}),)),
    Case("numbered parameters out of order", (("INSERT INTO t(v, g) VALUES (?2 || random(), ?1)", (1, "z")),)),
    Case("UPDATE OR REPLACE of one row", ("UPDATE OR REPLACE t SET id = 3 WHERE id = 1",)),
    Case("DELETE and AUTOINCREMENT reuse", ("INSERT INTO seq(v) VALUES (1), (2), (3)", "DELETE FROM seq "
                                            "WHERE id = 3", "INSERT INTO seq(v) VALUES (random())"),
         setup=("CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, v)",)),
    Case("deterministic trigger fired by a single-row write", ("INSERT INTO t(v) VALUES ('new')",),
         setup=("CREATE TABLE audit(id INTEGER PRIMARY KEY, tid, what)",
                "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN INSERT INTO audit(tid, what) VALUES (NEW.id, "
                "'ins ' || NEW.v); END")),
    Case("deterministic trigger fired by a multi-row UPDATE without inserts", ("UPDATE t SET g = g + 1",),
         setup=("CREATE TABLE total(n INTEGER)", "INSERT INTO total VALUES (0)",
                "CREATE TRIGGER t_upd AFTER UPDATE ON t BEGIN UPDATE total SET n = n + NEW.g; END")),
]


@pytest.mark.parametrize("case", REWRITTEN, ids=[c.name for c in REWRITTEN])
def test_nondeterministic_statement_is_rewritten_and_followers_stay_identical(make_cluster, case):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA + list(case.setup))
    before = cluster.leader_lsn()
    run_all(conn, case.statements)
    assert cluster.leader_lsn() > before
    assert_identical(cluster)
    # What the log holds is deterministic: no random() or clock left outside RETURNING.
    for lsn in range(before + 1, cluster.leader_lsn() + 1):
        for event in events(cluster, lsn):
            assert event.kind == "SQL"
            sql = event.sql.lower()
            assert "random()" not in sql and "current_timestamp" not in sql.split("default")[0]
            assert "returning" not in sql


def test_rewritten_values_are_the_leaders_values(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    cur = conn.execute("INSERT INTO t2(v) VALUES (random()) RETURNING v")
    (value,) = cur.fetchone()
    lsn = cluster.leader_lsn()
    (event,) = events(cluster, lsn)
    assert event.sql == "INSERT INTO t2(v) VALUES (?1) "
    assert event.params == [value]
    assert {rows[0] for rows in rows_everywhere(cluster, "SELECT v FROM t2").values()} == {(value,)}


def test_omitted_defaults_become_columns_with_leader_values(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("INSERT INTO d(a) VALUES (1), (2)")
    (event,) = events(cluster, cluster.leader_lsn())
    assert event.sql.startswith("INSERT INTO d(a, ts, r, day, blob) VALUES (")
    rows = rows_everywhere(cluster, "SELECT ts, r, day, blob FROM d ORDER BY id")
    leader = rows[cluster.leader]
    assert leader[0][0] == leader[1][0]  # CURRENT_TIMESTAMP: one value per statement
    assert leader[0][1] != leader[1][1]  # random(): one value per row
    assert all(r == leader for r in rows.values())


def test_repeated_parameterized_statement_hits_the_plan_cache(make_cluster, monkeypatch):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("INSERT INTO t2(v) VALUES (?)", (0,))
    calls = []
    real = statement.build_plan
    monkeypatch.setattr(statement, "build_plan", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    for i in range(20):
        conn.execute("INSERT INTO t2(v) VALUES (?)", (i,))
        conn.execute("INSERT INTO t(v, ts) VALUES (?, datetime('now'))", (i,))
    assert calls == ["INSERT INTO t(v, ts) VALUES (?, datetime('now'))"]
    assert_identical(cluster)


# -- the corpus of unsafe statements, refused here and replicated as row images in mixed ---------

UNSAFE = [
    Case("random per row in UPDATE", ("UPDATE t SET v = random()",), expect="random()"),
    Case("random in WHERE", ("DELETE FROM t WHERE random() % 2 = 0",), expect="random()"),
    Case("random per row in INSERT ... SELECT", ("INSERT INTO t2(v) SELECT random() FROM t ORDER BY id",),
         expect="random()"),
    Case("changes() in a write", ("INSERT INTO t2(v) VALUES (changes())",),
         expect="changes() counts rows changed by the previous statement"),
    Case("total_changes() in a write", ("UPDATE t SET g = total_changes() WHERE id = 1",),
         expect="total_changes() counts rows changed by this connection"),
    Case("last_insert_rowid() in a write", ("INSERT INTO t2(v) VALUES (last_insert_rowid())",),
         expect="last_insert_rowid()"),
    Case("sqlite_version()", ("INSERT INTO t2(v) VALUES (sqlite_version())",), expect="sqlite_version()"),
    Case("LIMIT without ORDER BY", ("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 2)",), expect="LIMIT"),
    Case("LIMIT ordered by a non-unique column", ("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY g "
                                                  "LIMIT 1)",), expect="LIMIT"),
    Case("INSERT ... SELECT with LIMIT", ("INSERT INTO kv(k, v) SELECT v, g FROM t LIMIT 2",), expect="LIMIT"),
    Case("ORDER BY random() in a write", ("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() "
                                          "LIMIT 1)",), expect="ORDER BY random()"),
    Case("INSERT ... SELECT assigning rowids in an order only a virtual table fixes",
         ("INSERT INTO t2(v) SELECT body FROM ft",), setup=FTS_SETUP, expect="INSERT ... SELECT"),
    Case("INSERT OR IGNORE ... SELECT in no fixed order", ("INSERT OR IGNORE INTO kv(k, v) SELECT g, v FROM t",),
         expect="INSERT ... SELECT"),
    Case("CREATE TABLE AS SELECT in an order only a virtual table fixes", ("CREATE TABLE snap AS SELECT body "
                                                                           "FROM ft",),
         setup=FTS_SETUP, expect="CREATE TABLE ... AS SELECT"),
    Case("scalar subquery with several rows", ("UPDATE t2 SET v = (SELECT v FROM t WHERE t.g = t2.id)",),
         setup=("INSERT INTO t2(id, v) VALUES (1, 'x'), (2, 'y')",), expect="scalar subquery"),
    Case("group_concat over rows in no fixed order", ("INSERT INTO t2(v) SELECT group_concat(v) FROM t",),
         expect="group_concat()"),
    Case("row_number() without a total order", ("INSERT INTO kv(k, v) SELECT v, row_number() OVER () FROM t",),
         expect="row_number()"),
    Case("UPDATE ... FROM", ("UPDATE t2 SET v = t.v FROM t WHERE t.g = t2.id",),
         setup=("INSERT INTO t2(id, v) VALUES (1, 'x')",), expect="UPDATE ... FROM"),
    Case("UPDATE OR REPLACE of several rows", ("UPDATE OR REPLACE t SET g = 9 WHERE g = 1",),
         setup=("CREATE UNIQUE INDEX t_g ON t(g, v)",), expect="UPDATE OR REPLACE"),
    Case("OR FAIL", ("INSERT OR FAIL INTO t2(id, v) VALUES (1, 2)",), expect="OR FAIL"),
    Case("ON CONFLICT FAIL in the schema", ("INSERT INTO f(k) VALUES (2)",),
         setup=("CREATE TABLE f(k UNIQUE ON CONFLICT FAIL)",), expect="ON CONFLICT FAIL"),
    Case("trigger with RAISE(FAIL)", ("INSERT INTO t2(v) VALUES ('ok')",),
         setup=("CREATE TRIGGER no_bad BEFORE INSERT ON t2 WHEN NEW.v = 'bad' BEGIN SELECT RAISE(FAIL, 'bad'); "
                "END",), expect="RAISE(FAIL)"),
    Case("modifier localtime on a column value", ("UPDATE t SET ts = datetime(ts, 'localtime')",),
         expect="localtime"),
    Case("localtime given as a parameter modifier", (("UPDATE t SET ts = datetime(ts, ?)", ("localtime",)),),
         expect="localtime"),
    Case("trigger calling datetime('now')", ("INSERT INTO t(v) VALUES ('x')",),
         setup=("CREATE TABLE log(id INTEGER PRIMARY KEY, at)",
                "CREATE TRIGGER t_at AFTER INSERT ON t BEGIN INSERT INTO log(at) VALUES (datetime('now')); END"),
         expect="trigger 't_at'"),
    Case("trigger inserting a row with a random DEFAULT", ("UPDATE t SET v = 'y' WHERE id = 1",),
         setup=("CREATE TRIGGER t_d AFTER UPDATE ON t BEGIN INSERT INTO d(a) VALUES (NEW.v); END",),
         expect="trigger 't_d'"),
    Case("deterministic trigger inserting rows for an UPDATE driven by a virtual table",
         ("UPDATE t SET g = g + 1 WHERE v IN (SELECT body FROM ft)",),
         setup=("CREATE TABLE audit(id INTEGER PRIMARY KEY, tid)",
                "CREATE TRIGGER t_aud AFTER UPDATE ON t BEGIN INSERT INTO audit(tid) VALUES (NEW.id); END",
                *FTS_SETUP),
         expect="order rows are visited"),
    Case("view calling random()", ("INSERT INTO kv(k, v) SELECT id, r FROM rv",),
         setup=("CREATE VIEW rv AS SELECT id, random() AS r FROM t",), expect="view 'rv'"),
    Case("random DEFAULT omitted by INSERT ... SELECT", ("INSERT INTO d(a) SELECT v FROM t ORDER BY id",),
         expect="DEFAULT"),
    Case("hidden rowid of a table with a TEXT key", ("UPDATE tk SET v = rowid",), expect="hidden rowid"),
    Case("statement sqlglot cannot parse", ("INSERT INTO t2(id, v) VALUES (1, 2) ON CONFLICT(id) DO NOTHING "
                                            "ON CONFLICT DO NOTHING",), expect="sqlglot"),
]


def refuse(conn: proxy.Connection, case: Case) -> proxy.UnsafeStatementError:
    with pytest.raises(proxy.UnsafeStatementError) as caught:
        run_all(conn, case.statements)
    return caught.value


@pytest.mark.parametrize("case", UNSAFE, ids=[c.name for c in UNSAFE])
def test_unsafe_statement_is_refused_before_it_runs(make_cluster, case):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA + list(case.setup))
    before = cluster.leader_lsn()
    leader_before = rows_everywhere(cluster, "SELECT * FROM t ORDER BY id")[cluster.leader]
    error = refuse(conn, case)
    message = str(error)
    assert case.expect in message
    assert "--format mixed" in message and "--format row" in message
    assert isinstance(error, proxy.ProgrammingError)
    assert cluster.leader_lsn() == before  # nothing logged
    assert not conn.in_transaction  # the transaction opened for it is closed again
    assert rows_everywhere(cluster, "SELECT * FROM t ORDER BY id")[cluster.leader] == leader_before
    assert_identical(cluster)


def test_application_defined_function_is_refused(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn._leader.create_scalar_function("shout", lambda s: str(s).upper(), 1)
    with pytest.raises(proxy.UnsafeStatementError, match=r"shout\(\).*application-defined"):
        conn.execute("UPDATE t SET v = shout(v)")
    # A built-in replaced by the application is just as unknown to followers.
    conn._leader.create_scalar_function("upper", lambda s: "!", 1)
    with pytest.raises(proxy.UnsafeStatementError, match=r"upper\(\)"):
        conn.execute("UPDATE t SET v = upper(v) WHERE id = 1")
    assert_identical(cluster)


def test_temp_objects_on_the_leader_connection_are_refused(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("CREATE TEMP TABLE scratch(x)")
    conn.execute("INSERT INTO scratch VALUES (1)")
    with pytest.raises(proxy.UnsafeStatementError, match="TEMP table"):
        conn.execute("INSERT INTO kv(k, v) SELECT x, x FROM scratch")
    conn.execute("CREATE TEMP TRIGGER tt AFTER INSERT ON t2 BEGIN UPDATE t SET g = 0; END")
    with pytest.raises(proxy.UnsafeStatementError, match="TEMP trigger"):
        conn.execute("INSERT INTO t2(v) VALUES (1)")
    assert_identical(cluster)


def _plan(sql: str, setup: Sequence[str]) -> statement.StatementPlan:
    conn = apsw.Connection(":memory:")
    for s in setup:
        conn.execute(s)
    info = StatementInfo(sql=sql, readonly=False, kind="dml")
    return statement.build_plan(conn, statement.Schema(conn), info, sql, frozenset())


def test_update_and_delete_limit_need_an_order_on_a_unique_key():
    # apsw's SQLite is built without SQLITE_ENABLE_UPDATE_DELETE_LIMIT (the statements do not even
    # prepare there), so the plan is checked directly.
    setup = ["CREATE TABLE t(id INTEGER PRIMARY KEY, g)"]
    assert "LIMIT" in (_plan("DELETE FROM t LIMIT 1", setup).unsafe or "")
    assert "LIMIT" in (_plan("UPDATE t SET g = 1 ORDER BY g LIMIT 1", setup).unsafe or "")
    assert _plan("DELETE FROM t ORDER BY id LIMIT 1", setup).unsafe is None


def test_largest_rowid_taken_then_automatic_rowid_is_refused(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    # An explicit rowid, even the largest, is deterministic...
    conn.execute("INSERT INTO t2(id, v) VALUES (9223372036854775807, 'top')")
    # ... but after it SQLite picks automatic rowids at random.
    with pytest.raises(proxy.UnsafeStatementError, match="rowid"):
        conn.execute("INSERT INTO t2(v) VALUES ('next')")
    # Taking the largest rowid and then inserting more rows in the same statement: found after it
    # ran, so the transaction is rolled back at commit.
    conn.execute("CREATE TABLE t3(id INTEGER PRIMARY KEY, v)")
    with pytest.raises(proxy.IntegrityError, match="largest rowid"):
        conn.execute("INSERT INTO t3 VALUES (9223372036854775807, 'a'), (NULL, 'b')")
    assert rows_everywhere(cluster, "SELECT count(*) FROM t3")[cluster.leader] == [(0,)]
    assert_identical(cluster)


def test_savepoint_rollback_drops_its_statements(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t2(v) VALUES ('kept')")
    conn.execute("SAVEPOINT s")
    conn.execute("INSERT INTO t2(v) VALUES ('undone')")
    conn.execute("UPDATE t SET v = random() WHERE id = 1")
    conn.execute("ROLLBACK TO s")
    conn.execute("INSERT INTO t2(v) VALUES ('after')")
    conn.execute("COMMIT")
    sqls = [e.sql for e in events(cluster, cluster.leader_lsn())]
    assert sqls == ["INSERT INTO t2(v) VALUES ('kept')", "INSERT INTO t2(v) VALUES ('after')"]
    assert_identical(cluster)


def test_statement_format_follower_triggers_fire_on_followers(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("CREATE TABLE audit(id INTEGER PRIMARY KEY, what)")
    conn.execute("CREATE TRIGGER a AFTER INSERT ON t2 BEGIN INSERT INTO audit(what) VALUES (NEW.v); END")
    conn.execute("INSERT INTO t2(v) VALUES ('x')")
    # The log holds the statement only: the audit row on followers comes from their own trigger.
    assert [e.kind for e in events(cluster, cluster.leader_lsn())] == ["SQL"]
    assert rows_everywhere(cluster, "SELECT what FROM audit") == {
        n: [("x",)] for n in [cluster.leader, *cluster.followers]}
    assert_identical(cluster)


def test_vacuum_cannot_make_followers_diverge(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    # Tables without any PRIMARY KEY are identified by their rowid: VACUUM is refused outright.
    conn.execute("CREATE TABLE nokey(v)")
    with pytest.raises(proxy.NotSupportedError, match="VACUUM"):
        conn.execute("VACUUM")
    conn.execute("DROP TABLE nokey")
    # Otherwise it runs on the leader alone and may renumber hidden rowids (a TEXT key's table):
    # statements reading them are refused from then on, before and after.
    conn.execute("DELETE FROM tk WHERE k = 'x'")
    conn.execute("VACUUM")
    with pytest.raises(proxy.UnsafeStatementError, match="hidden rowid"):
        conn.execute("UPDATE tk SET v = rowid WHERE k = 'y'")
    conn.execute("INSERT INTO tk(k, v) VALUES ('z', 3)")
    assert_identical(cluster)


def test_follower_added_from_a_snapshot_applies_later_entries(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("INSERT INTO d(a) VALUES (1)")
    cluster.add_follower("late")
    conn.execute("INSERT INTO d(a) VALUES (2)")
    conn.execute("UPDATE t SET v = randomblob(2) WHERE id = 3")
    assert "late" in cluster.followers
    assert_identical(cluster)


# -- connection settings that travel with statements -------------------------------------------


def test_foreign_key_cascade_on_the_leader_connection_replays_on_followers(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    conn.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child(id INTEGER PRIMARY KEY, pid REFERENCES parent(id) ON DELETE CASCADE "
                 "ON UPDATE SET NULL)")
    conn.execute("INSERT INTO parent VALUES (1), (2)")
    conn.execute("INSERT INTO child VALUES (10, 1), (11, 1), (12, 2)")
    conn.execute("PRAGMA foreign_keys = ON")  # on the leader connection only
    conn.execute("DELETE FROM parent WHERE id = 1")
    (event,) = events(cluster, cluster.leader_lsn())
    assert "foreign_keys=1" in event.sql
    conn.execute("UPDATE parent SET id = 3 WHERE id = 2")
    assert rows_everywhere(cluster, "SELECT * FROM child") == {
        n: [(12, None)] for n in [cluster.leader, *cluster.followers]}
    assert_identical(cluster)


def test_recursive_triggers_on_the_leader_connection_replay_on_followers(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    conn.execute("CREATE TABLE n(id INTEGER PRIMARY KEY, depth)")
    conn.execute("CREATE TRIGGER deeper AFTER INSERT ON n WHEN NEW.depth < 5 BEGIN "
                 "INSERT INTO n(id, depth) VALUES (NEW.id + 1, NEW.depth + 1); END")
    conn.execute("PRAGMA recursive_triggers = ON")
    conn.execute("INSERT INTO n(id, depth) VALUES (1, 1)")
    counts = rows_everywhere(cluster, "SELECT count(*) FROM n")
    assert set(map(tuple, counts.values())) == {((5,),)}
    assert_identical(cluster)


def test_reverse_unordered_selects_on_the_leader_replays_on_followers(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("CREATE TABLE last(v)")
    conn.execute("INSERT INTO last VALUES (0)")
    conn.execute("CREATE TRIGGER remember AFTER INSERT ON kv BEGIN UPDATE last SET v = NEW.k; END")
    conn.execute("PRAGMA reverse_unordered_selects = ON")
    # The last row the SELECT returns wins; the scan is reversed on the leader connection.
    conn.execute("INSERT INTO kv(k, v) SELECT id, v FROM t")
    (event,) = events(cluster, cluster.leader_lsn())
    assert "reverse_unordered_selects=1" in event.sql
    assert rows_everywhere(cluster, "SELECT v FROM last")[cluster.leader] == [("1",)]
    assert_identical(cluster)


def test_case_sensitive_like_and_ignored_checks_replay_on_followers(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    run_all(conn, BASE_SCHEMA)
    conn.execute("PRAGMA case_sensitive_like = ON")
    conn.execute("UPDATE t SET g = 100 WHERE v LIKE 'A%'")  # matches nothing when case-sensitive
    conn.execute("PRAGMA case_sensitive_like = OFF")
    conn.execute("CREATE TABLE c(x CHECK (x > 0))")
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute("INSERT INTO c VALUES (-1)")
    conn.execute("PRAGMA ignore_check_constraints = OFF")
    assert rows_everywhere(cluster, "SELECT count(*) FROM t WHERE g = 100")[cluster.leader] == [(0,)]
    assert_identical(cluster)


# -- the naive mode -----------------------------------------------------------------------------


def test_naive_mode_diverges_and_verify_names_the_table(make_cluster):
    cluster, conn = open_cluster(make_cluster, no_rewrite=True)
    run_all(conn, BASE_SCHEMA)
    assert_identical(cluster)
    conn.execute("UPDATE t SET v = random()")  # accepted as is
    (event,) = events(cluster, cluster.leader_lsn())
    assert event.sql == "UPDATE t SET v = random()"
    cluster.wait_for_catchup(10)
    report = proxy.verify(cluster)
    assert not report.identical
    assert set(report.differing_tables) == {"t"}
    assert set(report.differing_tables["t"]) == set(cluster.followers)
    # The command line says the same, with a failing exit code.
    result = CliRunner().invoke(cli, ["verify", str(cluster.directory)])
    assert result.exit_code == 1
    assert "t:" in result.output


NAIVE_DIVERGES = [
    Case("random() per row", ("UPDATE t SET v = random()",), expect="t"),
    Case("the leader's clock", ("INSERT INTO t2(v) VALUES (strftime('%f', 'now'))",
                                "INSERT INTO t2(v) VALUES (strftime('%f', 'now'))"), expect="t2"),
    Case("reverse scan order on the leader connection", ("PRAGMA reverse_unordered_selects = ON",
                                                         "INSERT INTO kv(k, v) SELECT id, v FROM t"),
         setup=("CREATE TABLE last(v)", "INSERT INTO last VALUES (0)",
                "CREATE TRIGGER remember AFTER INSERT ON kv BEGIN UPDATE last SET v = NEW.k; END"),
         expect="last"),
    Case("case-sensitive LIKE on the leader connection", ("PRAGMA case_sensitive_like = ON",
                                                          "UPDATE t SET g = 100 WHERE v LIKE 'A%'"),
         expect="t"),
]


@pytest.mark.parametrize("case", NAIVE_DIVERGES, ids=[c.name for c in NAIVE_DIVERGES])
def test_naive_mode_diverges_where_the_statement_format_replays_or_refuses(make_cluster, case):
    naive, naive_conn = open_cluster(make_cluster, name="naive", no_rewrite=True)
    exact, exact_conn = open_cluster(make_cluster, name="exact")
    run_all(naive_conn, BASE_SCHEMA + list(case.setup) + list(case.statements))
    run_all(exact_conn, BASE_SCHEMA + list(case.setup))
    for item in case.statements:
        try:
            run_all(exact_conn, [item])
        except proxy.UnsafeStatementError:
            pass
    naive.wait_for_catchup(10)
    assert case.expect in proxy.verify(naive).differing_tables
    assert_identical(exact)


def test_init_no_rewrite_is_kept_in_cluster_toml(tmp_path):
    directory = tmp_path / "naive"
    result = CliRunner().invoke(cli, ["init", str(directory), "--format", "statement", "--no-rewrite"])
    assert result.exit_code == 0, result.output
    assert "no_rewrite = true" in (directory / "cluster.toml").read_text()
    with proxy.Cluster(directory, replicate=False) as cluster:
        assert cluster.format.options["no_rewrite"] is True
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "x"), "--format", "row", "--no-rewrite"])
    assert result.exit_code != 0 and "--no-rewrite" in result.output


# -- decoding -----------------------------------------------------------------------------------


def test_log_shows_statements_with_their_parameters(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v, at)")
    conn.execute("INSERT INTO t(v, at) VALUES (?, datetime('now'))", ("hello",))
    result = CliRunner().invoke(cli, ["log", str(cluster.directory)])
    assert result.exit_code == 0, result.output
    assert "SQL CREATE TABLE t(id INTEGER PRIMARY KEY, v, at)" in result.output
    assert "SQL INSERT INTO t(v, at) VALUES (?1, ?2)" in result.output
    assert "'hello'" in result.output
    result = CliRunner().invoke(cli, ["log", str(cluster.directory), "--from", "2", "--json"])
    (record,) = [json.loads(line) for line in result.output.splitlines()]
    (event,) = record["events"]
    assert event["kind"] == "SQL" and event["params"][0] == "hello"


def test_an_entry_decodes_alone(make_cluster):
    # Texts travel inside each entry: a decoder that never saw earlier entries (a follower set up
    # from a snapshot, another transport, `replproxy log --from N`) still reads it.
    cluster, conn = open_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    for i in range(3):
        conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
    (entry,) = cluster.entries(cluster.leader_lsn(), 1)
    fresh = logformats.get("statement")
    assert [e.as_dict() for e in fresh.decode(entry.payload)] == [
        {"kind": "SQL", "sql": "INSERT INTO t(v) VALUES (?)", "params": [2]}]
    # Applied on a bare copy of the data, it gives the leader's result.
    target = apsw.Connection(":memory:")
    target.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    fresh.apply(target, entry.payload)
    assert target.execute("SELECT v FROM t").fetchall() == [(2,)]


def test_a_transaction_stores_each_text_once(make_cluster):
    cluster, conn = open_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("BEGIN")
    for i in range(10):
        conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
    conn.execute("COMMIT")
    (entry,) = cluster.entries(cluster.leader_lsn(), 1)
    assert entry.payload.count(b"INSERT INTO t(v) VALUES (?)") == 1
    assert len(events(cluster, entry.lsn)) == 10


# -- the text analysis --------------------------------------------------------------------------


def test_parameters_are_numbered_as_sqlite_numbers_them():
    plan = determinism.analyze("INSERT INTO t VALUES (?, :a, @b, $c, ?7, :a, ?)")
    assert [(p.index, p.name) for p in plan.params] == [
        (1, None), (2, "a"), (3, "b"), (4, "c"), (7, "7"), (2, "a"), (8, None)]
    assert plan.param_count == 8


def test_unparseable_statements_are_refused_not_guessed():
    assert determinism.analyze("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING ON CONFLICT DO NOTHING").unsafe
    assert determinism.analyze("REPLACE INTO t VALUES (random())").unsafe is None  # an alias, not a guess
    assert determinism.analyze("UPDATE OR IGNORE t SET a = 1").conflict == "IGNORE"


# -- property tests -----------------------------------------------------------------------------

EXPRESSIONS = st.sampled_from([
    "1", "'x'", "?", "random()", "randomblob(2)", "hex(randomblob(3))", "datetime('now')", "date()",
    "CURRENT_TIMESTAMP", "julianday('now')", "abs(random()) % 10", "date('2024-01-01', '+1 day')",
    "strftime('%s', 'now', 'localtime')", "changes()", "last_insert_rowid()", "upper('a')",
    "v || 'z'", "g + 1", "(SELECT count(*) FROM t)", "(SELECT max(id) FROM t)", "(SELECT v FROM t LIMIT 1)",
])
WHERES = st.sampled_from(["", " WHERE id = ?", " WHERE id > ?", " WHERE v IS NOT NULL",
                          " WHERE id IN (SELECT id FROM t ORDER BY id LIMIT 2)",
                          " WHERE id IN (SELECT id FROM t LIMIT 2)"])


@st.composite
def write_statements(draw: st.DrawFn) -> tuple[str, list[Any]]:
    kind = draw(st.sampled_from(["insert", "insert2", "update", "delete", "upsert"]))
    expr = draw(EXPRESSIONS)
    where = draw(WHERES)
    if kind == "insert":
        sql = f"INSERT INTO t(v, g) VALUES ({expr}, {draw(EXPRESSIONS)})"
    elif kind == "insert2":
        sql = f"INSERT INTO t(v) VALUES ({expr}), ({draw(EXPRESSIONS)})"
    elif kind == "update":
        sql = f"UPDATE t SET v = {expr}{where.replace('v IS', 'g IS')}"
    elif kind == "delete":
        sql = f"DELETE FROM t{where}"
    else:
        sql = f"INSERT INTO t(id, v) VALUES (?, {expr}) ON CONFLICT(id) DO UPDATE SET v = {draw(EXPRESSIONS)}"
    count = sql.count("?")
    params = [draw(st.one_of(st.integers(-5, 5), st.text(max_size=3), st.just("now"))) for _ in range(count)]
    return sql, params


def run_generated(conn: proxy.Connection, statements: list[tuple[str, list[Any]]], allow_refusal: bool) -> int:
    refused = 0
    for sql, params in statements:
        try:
            conn.execute(sql, params)
        except proxy.UnsafeStatementError:
            assert allow_refusal, sql
            refused += 1
        except (proxy.IntegrityError, proxy.OperationalError, proxy.ProgrammingError):
            pass  # a constraint, a type error: the leader refused it, nothing was logged
    return refused


@settings(max_examples=examples(25), suppress_health_check=suppressed(HealthCheck.function_scoped_fixture))
@given(statements=st.lists(write_statements(), min_size=1, max_size=6))
def test_generated_statements_are_refused_or_replicate_exactly(make_cluster, statements):
    cluster, conn = open_cluster(make_cluster, name=f"gen{next(_EXAMPLES)}")
    try:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v, g)")
        conn.execute("INSERT INTO t(v, g) VALUES ('a', 1), ('b', 2), ('c', 2)")
        run_generated(conn, statements, allow_refusal=True)
        assert_identical(cluster)
    finally:
        conn.close()
        cluster.close()


_EXAMPLES = itertools.count()
