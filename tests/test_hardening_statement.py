"""Issue 14, statement and mixed formats: a write that depends on anything not replicated is refused
(statement) or logged as row images (mixed); deterministic SQL is accepted and replicates exactly.

Class 7: TEMP tables, views and triggers, the temp schema, replproxy's own tables, per-connection
table-valued functions, read by a write (found with SQLite's authorizer, not the text).
Class 8: a corpus of ordinary deterministic SQL that the statement format must accept, and one of
truly nondeterministic SQL it must rewrite exactly or refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import proxy

MakeCluster = Callable[..., proxy.Cluster]

BASE = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
    "CREATE TABLE u(id INTEGER PRIMARY KEY, w)",
    "INSERT INTO t VALUES (1, 'main'), (2, 'main2')",
    "INSERT INTO u VALUES (1, 0), (2, 0)",
]


def _open(make_cluster: MakeCluster, fmt: str, setup: list[str] = BASE) -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(format=fmt)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    for sql in setup:
        conn.execute(sql)
    return cluster, conn


def _identical(cluster: proxy.Cluster) -> None:
    cluster.wait_for_catchup(10)
    report = proxy.verify(cluster)
    differences = "\n".join(f"  {d.node} {d.object}: {d.detail}" for d in report.differences)
    assert report.identical, f"nodes differ at LSN {report.lsn}:\n{differences}"
    for status in cluster.status()[1:]:
        assert status.state == "ok", status.error


def _write(conn: proxy.Connection, fmt: str, sql: str, params: Any = ()) -> None:
    """Statement format: refused before it runs, nothing logged; mixed: accepted."""
    if fmt == "statement":
        with pytest.raises(proxy.UnsafeStatementError):
            conn.execute(sql, params)
    else:
        conn.execute(sql, params)


# -- class 7: writes reading what is not replicated ------------------------------------------

# (local setup on the leader connection, the write that reads it)
LOCAL_READS = [
    pytest.param(["CREATE TEMP TABLE s(x)", "INSERT INTO s VALUES (1), (2)"],
                 "UPDATE u SET w = (SELECT count(*) FROM s)", id="temp-count"),
    pytest.param(["CREATE TEMP TABLE s(x)", "INSERT INTO s VALUES (1)"],
                 "DELETE FROM u WHERE EXISTS (SELECT 1 FROM s)", id="temp-exists"),
    pytest.param(["CREATE TEMP TABLE s(x)", "INSERT INTO s VALUES (7)"],
                 "UPDATE u SET w = (SELECT max(x) FROM s)", id="temp-column"),
    pytest.param(["CREATE TEMP TABLE s(x)", "INSERT INTO s VALUES (7)"],
                 "INSERT INTO u(id, w) SELECT 10 + x, x FROM s", id="temp-insert-select"),
    pytest.param(["CREATE TEMP TABLE s(x)"],
                 "UPDATE u SET w = (SELECT count(*) FROM temp.s)", id="temp-qualified"),
    pytest.param(["CREATE TEMP TABLE t(id INTEGER PRIMARY KEY, v)", "INSERT INTO temp.t VALUES (1, 'temp')"],
                 "UPDATE u SET w = (SELECT v FROM t WHERE id = 1)", id="temp-shadows-main"),
    pytest.param(["CREATE TEMP TABLE t(id INTEGER PRIMARY KEY, v)", "INSERT INTO temp.t VALUES (5, 'temp')"],
                 "INSERT INTO main.t(id, v) SELECT id, v FROM t", id="temp-shadow-copy"),
    pytest.param(["CREATE TEMP TABLE t(id INTEGER PRIMARY KEY, v)"],
                 "UPDATE u SET w = (SELECT count(*) FROM t)", id="temp-shadow-count"),
    pytest.param(["CREATE TEMP VIEW tv AS SELECT 42 AS x"],
                 "UPDATE u SET w = (SELECT count(*) FROM tv)", id="temp-view-count"),
    pytest.param(["CREATE TEMP VIEW tv AS SELECT id * 7 AS x FROM main.t"],
                 "UPDATE u SET w = (SELECT sum(x) FROM tv)", id="temp-view-of-main"),
    pytest.param(["CREATE TEMP TABLE s(x)"],
                 "UPDATE u SET w = (SELECT count(*) FROM sqlite_temp_master)", id="temp-master"),
    pytest.param(["CREATE TEMP TABLE s(x)"],
                 "UPDATE u SET w = (SELECT count(*) FROM temp.sqlite_schema)", id="temp-schema"),
    pytest.param([], "UPDATE u SET w = (SELECT count(*) FROM _replproxy_log)", id="internal-log"),
    pytest.param([], "UPDATE u SET w = (SELECT max(lsn) FROM _replproxy_log)", id="internal-log-column"),
    pytest.param([], "INSERT INTO u(id, w) SELECT 9, applied_lsn FROM _replproxy_state", id="internal-state"),
    pytest.param([], "DELETE FROM u WHERE EXISTS (SELECT 1 FROM _replproxy_users)", id="internal-users"),
    pytest.param([], "UPDATE u SET w = (SELECT count(*) FROM main._replproxy_meta)", id="internal-meta"),
    pytest.param(["CREATE TEMP TABLE s(x)"],
                 "UPDATE u SET w = (SELECT count(*) FROM pragma_table_list)", id="pragma-table-list"),
    pytest.param([], "UPDATE u SET w = (SELECT max(seq) FROM pragma_database_list)", id="pragma-database-list"),
    pytest.param([], "UPDATE u SET w = (SELECT count(*) FROM sqlite_schema)", id="schema-lists-internal"),
]


@pytest.mark.parametrize("fmt", ["statement", "mixed"])
@pytest.mark.parametrize(("local", "write"), LOCAL_READS)
def test_write_reading_what_is_not_replicated(make_cluster, fmt, local, write):
    cluster, conn = _open(make_cluster, fmt)
    for sql in local:
        conn.execute(sql)
    before = cluster.leader_lsn()
    _write(conn, fmt, write)
    if fmt == "statement":
        assert cluster.leader_lsn() == before
    _identical(cluster)


@pytest.mark.parametrize("fmt", ["statement", "mixed"])
def test_temp_object_created_after_the_plan_was_cached(make_cluster, fmt):
    # The first run caches a plan reading main.t; a TEMP t created later must not reuse it.
    cluster, conn = _open(make_cluster, fmt)
    sql = "UPDATE u SET w = (SELECT count(*) FROM t)"
    conn.execute(sql)
    conn.execute("CREATE TEMP TABLE t(x)")
    conn.execute("INSERT INTO temp.t VALUES (1), (2), (3), (4), (5)")
    _write(conn, fmt, sql)
    conn.execute("DROP TABLE temp.t")
    conn.execute(sql)  # main.t again: a statement
    _identical(cluster)


@pytest.mark.parametrize("fmt", ["statement", "mixed"])
def test_temp_object_created_inside_a_transaction(make_cluster, fmt):
    cluster, conn = _open(make_cluster, fmt)
    sql = "UPDATE u SET w = (SELECT count(*) FROM t) WHERE id = 1"
    conn.execute("BEGIN")
    conn.execute(sql)
    conn.execute("CREATE TEMP TABLE t(x)")
    conn.execute("INSERT INTO temp.t VALUES (1), (2), (3)")
    if fmt == "statement":
        with pytest.raises(proxy.UnsafeStatementError):
            conn.execute(sql)
    else:
        conn.execute(sql)
    conn.execute("COMMIT")
    _identical(cluster)


@pytest.mark.parametrize("fmt", ["statement", "mixed"])
@pytest.mark.parametrize("body", [
    "SELECT RAISE(IGNORE)",  # the leader skips the row; followers have no such trigger
    "INSERT INTO s VALUES (NEW.id)",  # writes only TEMP, but fires on a main table
    "UPDATE t SET v = 'by temp trigger'",
])
def test_temp_trigger_firing_on_a_main_table(make_cluster, fmt, body):
    cluster, conn = _open(make_cluster, fmt)
    conn.execute("CREATE TEMP TABLE s(x)")
    conn.execute(f"CREATE TEMP TRIGGER tt BEFORE UPDATE ON main.u BEGIN {body}; END")
    _write(conn, fmt, "UPDATE u SET w = w + 1")
    _identical(cluster)


def test_rolled_back_temp_objects_do_not_leave_a_stale_plan(make_cluster):
    # TEMP's schema version goes back with a rollback and comes round again with other objects.
    cluster, conn = _open(make_cluster, "statement")
    sql = "UPDATE u SET w = (SELECT count(*) FROM t)"
    conn.execute("BEGIN")
    conn.execute("CREATE TEMP TABLE other(x)")
    conn.execute(sql)
    conn.execute("ROLLBACK")
    conn.execute("CREATE TEMP TABLE t(x)")  # the same TEMP schema version as `other` had
    with pytest.raises(proxy.UnsafeStatementError, match="TEMP"):
        conn.execute(sql)
    _identical(cluster)


@pytest.mark.parametrize("sql", [
    "UPDATE u SET w = (SELECT count(*) FROM json_each('[1, 2, 3]'))",
    "WITH c AS (SELECT 1 AS x UNION ALL SELECT 2) UPDATE u SET w = (SELECT count(*) FROM c)",
    "WITH c(n) AS (SELECT id FROM t) DELETE FROM u WHERE NOT EXISTS (SELECT 1 FROM c)",
    "UPDATE u SET w = (SELECT count(*) FROM t)",
    "UPDATE u SET w = (SELECT count(*) FROM main.t)",
    "UPDATE u SET w = (SELECT max(value) FROM json_each('[4, 5]'))",
    "UPDATE u SET w = (SELECT max(seq) FROM sqlite_sequence WHERE name = 'a')",
])
def test_reads_of_replicated_data_stay_statements(make_cluster, sql):
    cluster, conn = _open(make_cluster, "statement", [*BASE, "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT)",
                                                       "INSERT INTO a VALUES (3)"])
    conn.execute("CREATE TEMP TABLE unrelated(x)")  # TEMP in use, but not read
    conn.execute(sql)
    _identical(cluster)
