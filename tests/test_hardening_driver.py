"""Issue 14, the driver: what a hostile (or merely unlucky) user could do through proxy.connect to
make the leader diverge silently, and where the driver answered differently from Python's sqlite3.

- the statement analyzer's verdicts hold only for the schema they were made under (triggers,
  views, TEMP objects created or dropped by this or another connection, rolled back changes);
- every PRAGMA has a declared rule (proxy/driver/pragmas.py): refused, carried, or local;
- a connection pinned to a follower changes nothing there;
- last_insert_rowid(), changes(), total_changes() and cursor.lastrowid answer for the session's
  own connection, as sqlite3's;
- executescript commits what ran before a failing statement, as sqlite3's;
- a NUL in SQL and text that is not UTF-8 raise the DB-API errors sqlite3 raises.

Python's sqlite3 is used only on ':memory:' (never on a node file: two SQLite libraries in one
process do not see each other's locks).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from checks import assert_identical, node_rows, same_on_all
from helpers import run_python

import proxy
from proxy.driver import pragmas

TRAP_LOG = "CREATE TRIGGER trap AFTER INSERT ON t BEGIN DELETE FROM _replproxy_log; END"
TRAP_EPOCH = ("CREATE TRIGGER trap AFTER INSERT ON t BEGIN "
              "UPDATE _replproxy_meta SET value = '1' WHERE key = 'epoch'; END")


def setup(make_cluster: Callable[..., proxy.Cluster], **options: Any) -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(**options)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    conn.execute("INSERT INTO t(x) VALUES (1)")
    return cluster, conn


def log_rows(cluster: proxy.Cluster) -> int:
    return node_rows(cluster, cluster.leader, "SELECT count(*) FROM _replproxy_log")[0][0]


# -- 1. verdicts hold for one schema ----------------------------------------------------------------

@pytest.mark.parametrize("trap", [TRAP_LOG, TRAP_EPOCH], ids=["delete-log", "rewrite-epoch"])
def test_a_trigger_created_after_a_statement_was_seen_is_checked(make_cluster, trap):
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES (2)")  # seen, and judged, before the trigger exists
    entries = log_rows(cluster)
    conn.execute(trap)
    with pytest.raises(proxy.ProgrammingError, match="internal tables"):
        conn.execute("INSERT INTO t(x) VALUES (2)")
    assert log_rows(cluster) == entries + 1  # the CREATE TRIGGER only
    conn.execute("DROP TRIGGER trap")
    conn.execute("INSERT INTO t(x) VALUES (3)")
    assert same_on_all(cluster, "SELECT count(*) FROM t") == [(3,)]
    assert_identical(cluster)


def test_a_trigger_created_by_another_process_is_checked(make_cluster):
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES (2)")
    run_python("""
        import sys, proxy
        other = proxy.connect(sys.argv[1], autocommit=True)
        other.execute(sys.argv[2])
        other.close()
    """, cluster.directory, TRAP_LOG)
    with pytest.raises(proxy.ProgrammingError, match="internal tables"):
        conn.execute("INSERT INTO t(x) VALUES (2)")
    assert node_rows(cluster, cluster.leader, "SELECT min(lsn) FROM _replproxy_log") == [(1,)]


def test_a_trigger_created_between_the_check_and_the_write_lock_is_checked(make_cluster, monkeypatch):
    """The verdict is made before BEGIN IMMEDIATE; a write checks it again once it holds the lock."""
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES (2)")
    other = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    side = conn._leader_side
    real = type(side).begin_immediate
    armed = [True]

    def begin_after_a_rival(self):
        if armed:
            armed.clear()
            other.execute(TRAP_LOG)  # lands after this statement was judged
        return real(self)

    monkeypatch.setattr(type(side), "begin_immediate", begin_after_a_rival)
    with pytest.raises(proxy.ProgrammingError, match="internal tables"):
        conn.execute("INSERT INTO t(x) VALUES (2)")
    assert not conn.in_transaction
    assert node_rows(cluster, cluster.leader, "SELECT min(lsn) FROM _replproxy_log") == [(1,)]
    other.close()


def test_a_write_judged_before_another_connection_dropped_its_table_fails_as_sqlite_says(make_cluster):
    """A write's verdict is read from the cache without the leader's schema and confirmed once the
    write lock is held: a table dropped meanwhile gives SQLite's own error, and nothing is left open
    or logged."""
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES (2)")  # the verdict is cached
    logged = node_rows(cluster, cluster.leader, "SELECT max(lsn) FROM _replproxy_log")
    other = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    other.execute("DROP TABLE t")
    with pytest.raises(proxy.OperationalError, match="no such table: t"):
        conn.execute("INSERT INTO t(x) VALUES (2)")
    assert not conn.in_transaction
    assert node_rows(cluster, cluster.leader, "SELECT max(lsn) FROM _replproxy_log")[0][0] == logged[0][0] + 1
    other.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    conn.execute("INSERT INTO t(x) VALUES (3)")  # judged again, under the new table
    assert same_on_all(cluster, "SELECT x FROM t") == [(3,)]
    other.close()


def test_a_rolled_back_schema_does_not_vouch_for_a_new_one_with_the_same_number(make_cluster):
    cluster, conn = setup(make_cluster)
    version = node_rows(cluster, cluster.leader, "PRAGMA schema_version")[0][0]
    conn.execute("BEGIN")
    conn.execute("CREATE TRIGGER harmless AFTER INSERT ON t BEGIN SELECT 1; END")
    conn.execute("INSERT INTO t(x) VALUES (2)")  # judged under schema version+1
    conn.rollback()
    other = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    other.execute(TRAP_LOG)  # another schema, numbered version+1 too
    assert node_rows(cluster, cluster.leader, "PRAGMA schema_version") == [(version + 1,)]
    with pytest.raises(proxy.ProgrammingError, match="internal tables"):
        conn.execute("INSERT INTO t(x) VALUES (2)")
    other.close()


def test_rollback_to_a_savepoint_does_not_leave_a_verdict_behind(make_cluster):
    cluster, conn = setup(make_cluster)
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT a")
    conn.execute("CREATE TRIGGER harmless AFTER INSERT ON t BEGIN SELECT 1; END")
    conn.execute("INSERT INTO t(x) VALUES (2)")
    conn.execute("ROLLBACK TO a")
    conn.execute(TRAP_LOG)  # same schema version as the rolled-back one
    with pytest.raises(proxy.ProgrammingError, match="internal tables"):
        conn.execute("INSERT INTO t(x) VALUES (2)")
    conn.rollback()


@pytest.mark.parametrize("trap", [
    "CREATE TEMP TRIGGER trap AFTER INSERT ON main.t BEGIN DELETE FROM _replproxy_log; END",
    "CREATE VIEW v AS SELECT * FROM t",
], ids=["temp-trigger", "view-instead-of"])
def test_temp_triggers_and_views_made_after_the_verdict_are_checked(make_cluster, trap):
    cluster, conn = setup(make_cluster)
    target = "t" if "TEMP" in trap else "v"
    if target == "v":
        conn.execute(trap)
        conn.execute("CREATE TRIGGER vt INSTEAD OF INSERT ON v BEGIN INSERT INTO t(x) VALUES (NEW.x); END")
        conn.execute("INSERT INTO v(x) VALUES (5)")  # judged: it writes t
        conn.execute("DROP TRIGGER vt")
        conn.execute("CREATE TRIGGER vt INSTEAD OF INSERT ON v BEGIN DELETE FROM _replproxy_log; END")
        sql = "INSERT INTO v(x) VALUES (5)"
    else:
        conn.execute("INSERT INTO t(x) VALUES (5)")
        conn.execute(trap)
        sql = "INSERT INTO t(x) VALUES (5)"
    with pytest.raises(proxy.ProgrammingError, match="internal tables"):
        conn.execute(sql)
    assert node_rows(cluster, cluster.leader, "SELECT min(lsn) FROM _replproxy_log") == [(1,)]


@pytest.mark.parametrize("shadow", [
    "CREATE TEMP TABLE t(x); INSERT INTO temp.t VALUES ('temp')",
    "CREATE TEMP VIEW t AS SELECT 'temp' AS x",
], ids=["temp-table", "temp-view"])
def test_a_read_of_a_name_a_temp_object_shadows_reads_the_temp_object(make_cluster, shadow):
    cluster, conn = setup(make_cluster)
    cluster.wait_for_catchup(10)
    cur = conn.execute("SELECT x FROM t")
    assert cur.fetchall() == [(1,)] and cur.node != cluster.leader  # routed once, to a follower
    for sql in shadow.split("; "):
        conn.execute(sql)
    cur = conn.execute("SELECT x FROM t")
    assert (cur.fetchall(), cur.node) == ([("temp",)], cluster.leader)  # as sqlite3: temp first
    conn.execute(f"DROP {'TABLE' if 'TABLE' in shadow else 'VIEW'} temp.t")
    cur = conn.execute("SELECT x FROM t")
    assert cur.fetchall() == [(1,)] and cur.node != cluster.leader


@pytest.mark.parametrize("sql", [
    "CREATE TEMP TABLE _replproxy_log(lsn INTEGER PRIMARY KEY, epoch, format, payload, checksum, "
    "committed_at, origin)",
    "CREATE TEMP VIEW _replproxy_state AS SELECT 1 AS applied_lsn",
    "CREATE TEMP TRIGGER spy AFTER INSERT ON main._replproxy_log BEGIN SELECT 1; END",
])
def test_a_temp_object_never_stands_in_for_replproxys_tables(make_cluster, sql):
    """Names resolve to TEMP first: a TEMP _replproxy_log would take the log's entries."""
    cluster, conn = setup(make_cluster)
    with pytest.raises(proxy.ProgrammingError, match="internal tables"):
        conn.execute(sql)
    conn.execute("INSERT INTO t(x) VALUES (2)")
    assert same_on_all(cluster, "SELECT count(*) FROM t") == [(2,)]


@pytest.mark.parametrize("fmt", ["statement", "mixed", "row"])
def test_ddl_on_temp_objects_stays_on_the_leader_connection(make_cluster, fmt):
    """SQLite reports some TEMP DDL with main codes (ALTER TABLE, CREATE INDEX ...): never logged."""
    cluster, conn = setup(make_cluster, format=fmt)
    entries = log_rows(cluster)
    for sql in ("CREATE TEMP TABLE x(a)", "ALTER TABLE temp.x RENAME TO y", "ALTER TABLE y ADD COLUMN b",
                "CREATE INDEX temp.iy ON y(a)", "ALTER TABLE y RENAME COLUMN b TO c",
                "CREATE TABLE temp.z AS SELECT 1 AS q", "DROP INDEX temp.iy"):
        assert conn.execute(sql).node == cluster.leader
    assert log_rows(cluster) == entries
    conn.execute("INSERT INTO t(x) VALUES (2)")
    assert same_on_all(cluster, "SELECT count(*) FROM t") == [(2,)]
    assert_identical(cluster)


# -- 9. PRAGMAs: a declared rule each -----------------------------------------------------------------

def test_every_pragma_sqlite_knows_has_a_rule():
    assert pragmas.known_to_sqlite() <= set(pragmas.PRAGMAS), (
        "PRAGMAs without a rule in proxy/driver/pragmas.py: "
        f"{sorted(pragmas.known_to_sqlite() - set(pragmas.PRAGMAS))}")
    for name, rule in pragmas.PRAGMAS.items():
        assert rule.kind in (pragmas.QUERY, pragmas.SETTING, pragmas.TRANSACTION, pragmas.HEADER,
                             pragmas.LEADER_FILE, pragmas.REFUSED), name


@pytest.mark.parametrize("sql, words", [
    ("PRAGMA legacy_alter_table=ON", "RENAME"),
    ("PRAGMA legacy_alter_table=1", "RENAME"),
    ("PRAGMA writable_schema=ON", "sqlite_schema"),
    ("PRAGMA writable_schema=yes", "sqlite_schema"),
    ("PRAGMA count_changes=1", "rowcount"),
    ("PRAGMA schema_version=99", "schema_version"),
    ("PRAGMA optimize", "ANALYZE mytable"),
    ("PRAGMA analysis_limit=100", "statistics"),
    ("PRAGMA locking_mode=EXCLUSIVE", "NORMAL"),
    ("PRAGMA journal_mode=DELETE", "WAL"),
    ("PRAGMA main.journal_mode=memory", "WAL"),
])
def test_pragmas_that_would_diverge_the_leader_are_refused_with_what_to_do(make_cluster, sql, words):
    cluster, conn = setup(make_cluster)
    entries = log_rows(cluster)
    with pytest.raises(proxy.NotSupportedError, match=words):
        conn.execute(sql)
    # nothing changed: a write goes through at once and every node agrees
    conn.execute("ALTER TABLE t RENAME TO t2")
    conn.execute("INSERT INTO t2(x) VALUES (2)")
    assert log_rows(cluster) == entries + 2
    assert node_rows(cluster, cluster.leader, "PRAGMA journal_mode") == [("wal",)]
    assert_identical(cluster)


@pytest.mark.parametrize("sql", [
    "PRAGMA legacy_alter_table=OFF", "PRAGMA writable_schema=0", "PRAGMA locking_mode=NORMAL",
    "PRAGMA journal_mode=WAL", "PRAGMA journal_mode", "PRAGMA schema_version", "PRAGMA count_changes=0",
    "PRAGMA locking_mode", "PRAGMA ignore_check_constraints=OFF", "PRAGMA analysis_limit=0",
])
def test_the_same_pragmas_are_accepted_when_they_change_nothing(make_cluster, sql):
    cluster, conn = setup(make_cluster)
    conn.execute(sql)
    conn.execute("INSERT INTO t(x) VALUES (2)")
    assert_identical(cluster)


def test_editing_the_schema_table_is_refused_even_if_writable(make_cluster):
    cluster, conn = setup(make_cluster)
    with pytest.raises(proxy.OperationalError, match="may not be modified"):  # SQLite's own refusal
        conn.execute("UPDATE sqlite_master SET sql = sql WHERE name = 't'")
    conn._leader.execute("PRAGMA writable_schema=ON")  # as if it had got there some other way
    with pytest.raises(proxy.ProgrammingError, match="schema table"):
        conn.execute("UPDATE sqlite_master SET sql = sql WHERE name = 't'")
    conn._leader.execute("PRAGMA writable_schema=OFF")
    assert_identical(cluster)


@pytest.mark.parametrize("fmt", ["row", "trigger", "mixed", "statement"])
def test_ignore_check_constraints_is_refused_unless_the_format_carries_it(make_cluster, fmt):
    cluster, conn = setup(make_cluster, format=fmt)
    conn.execute("CREATE TABLE c(id INTEGER PRIMARY KEY, v INTEGER CHECK (v > 0))")
    if fmt != "statement":
        with pytest.raises(proxy.NotSupportedError, match="CHECK"):
            conn.execute("PRAGMA ignore_check_constraints=ON")
        with pytest.raises(proxy.IntegrityError):
            conn.execute("INSERT INTO c VALUES (1, -1)")
    else:
        conn.execute("PRAGMA ignore_check_constraints=ON")
        conn.execute("INSERT INTO c VALUES (1, -1)")  # carried with the statement
        assert same_on_all(cluster, "SELECT * FROM c") == [(1, -1)]
    assert_identical(cluster)


def test_a_bare_analyze_says_to_name_the_table_and_a_named_one_is_replicated(make_cluster):
    cluster, conn = setup(make_cluster)
    conn.execute("CREATE INDEX tx ON t(x)")
    for sql in ("ANALYZE", "ANALYZE main"):
        with pytest.raises(proxy.ProgrammingError, match=r"ANALYZE mytable"):
            conn.execute(sql)
    conn.execute("ANALYZE t")
    stats = same_on_all(cluster, "SELECT tbl, idx, stat FROM sqlite_stat1 ORDER BY tbl, idx")
    assert stats and all(row[0] == "t" for row in stats)


def test_locking_mode_exclusive_never_stalls_later_writes(make_cluster):
    cluster, conn = setup(make_cluster)
    with pytest.raises(proxy.NotSupportedError):
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    other = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    other.execute("INSERT INTO t(x) VALUES (7)")  # would wait 30 s, then fail
    conn.execute("INSERT INTO t(x) VALUES (8)")
    assert same_on_all(cluster, "SELECT count(*) FROM t") == [(3,)]
    other.close()


def test_a_setting_that_changes_what_a_read_returns_holds_on_the_followers_too(make_cluster):
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES ('Apple'), ('apple')")
    cluster.wait_for_catchup(10)
    plain = sqlite3.connect(":memory:")
    plain.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    plain.execute("INSERT INTO t(x) VALUES (1), ('Apple'), ('apple')")
    query = "SELECT count(*) FROM t WHERE x LIKE 'a%'"
    cur = conn.execute(query)
    assert cur.fetchall() == plain.execute(query).fetchall() == [(2,)]
    for sql in ("PRAGMA case_sensitive_like=ON", "PRAGMA reverse_unordered_selects=1"):
        conn.execute(sql)
        plain.execute(sql)
    cur = conn.execute(query)
    assert cur.node != cluster.leader
    assert cur.fetchall() == plain.execute(query).fetchall() == [(1,)]
    unordered = "SELECT x FROM t"
    cur = conn.execute(unordered)
    assert cur.node != cluster.leader
    assert cur.fetchall() == plain.execute(unordered).fetchall()
    # the session's setting is what a query of it answers, wherever the session reads
    assert conn.execute("PRAGMA reverse_unordered_selects").fetchall() == [(1,)]
    plain.close()


def test_settings_follow_the_session_to_a_new_leader(make_cluster):
    cluster, conn = setup(make_cluster)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE child(id INTEGER PRIMARY KEY, t INTEGER REFERENCES t(id))")
    cluster.wait_for_catchup(10)
    cluster.failover()
    with pytest.raises(proxy.IntegrityError, match="FOREIGN KEY"):
        conn.execute("INSERT INTO child(t) VALUES (99)")
    assert conn._leader_name == cluster.leader
    assert conn.execute("PRAGMA foreign_keys").fetchall() == [(1,)]


# -- 10. a follower is changed by replication only ---------------------------------------------------

def test_a_connection_pinned_to_a_follower_changes_nothing_there(make_cluster):
    cluster, conn = setup(make_cluster)
    cluster.wait_for_catchup(10)
    follower = cluster.followers[0]
    header = node_rows(cluster, follower, "PRAGMA schema_version")
    pinned = proxy.connect(cluster.directory, cluster=cluster, node=follower)
    pinned.execute("PRAGMA query_only=0")  # a setting of the session, never of the follower
    for sql in ("PRAGMA optimize", "PRAGMA schema_version=77"):
        with pytest.raises(proxy.NotSupportedError):
            pinned.execute(sql)
    for sql in ("PRAGMA wal_checkpoint", "PRAGMA incremental_vacuum"):
        with pytest.raises(proxy.ReadOnlyNodeError):
            pinned.execute(sql)
    with pytest.raises(proxy.ReadOnlyNodeError):
        pinned.execute("ANALYZE t")
    with pytest.raises(proxy.ReadOnlyNodeError):
        pinned.execute("INSERT INTO t(x) VALUES (3)")
    # reports still run on the pinned node
    cur = pinned.execute("PRAGMA table_info(t)")
    assert [r[1] for r in cur.fetchall()] == ["id", "x"] and cur.node == follower
    assert pinned.execute("PRAGMA page_size").node == follower
    assert node_rows(cluster, follower, "PRAGMA schema_version") == header
    assert node_rows(cluster, follower, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'sqlite_stat%'") == [(0,)]
    assert_identical(cluster)
    pinned.close()


def test_sqlite_itself_refuses_a_write_on_a_follower_connection(make_cluster):
    """The second guard: whatever reaches a follower connection, its authorizer lets only reads
    and the PRAGMAs that report or set what a read returns run."""
    cluster, conn = setup(make_cluster)
    cluster.wait_for_catchup(10)
    follower = conn._follower(cluster.followers[0])
    for sql in ("PRAGMA query_only=0", "PRAGMA schema_version=5", "PRAGMA optimize",
                "PRAGMA wal_checkpoint", "DELETE FROM t", "CREATE TEMP TABLE x(a)", "ANALYZE t",
                "PRAGMA writable_schema=ON"):
        with pytest.raises(apsw.AuthError):
            follower.execute(sql).fetchall()
    assert follower.execute("PRAGMA query_only").fetchall() == [(1,)]
    assert follower.execute("SELECT count(*) FROM t").fetchall() == [(1,)]
    follower.execute("PRAGMA cache_size=100")


# -- 12, 13. what the session's own connection answers ------------------------------------------------

COUNTERS = "SELECT last_insert_rowid(), changes(), total_changes()"

STEPS = [
    "CREATE TABLE s(id INTEGER PRIMARY KEY, v)",
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, note)",
    "INSERT INTO s(v) VALUES (1), (2), (3)",
    "UPDATE s SET v = v + 1",
    "INSERT INTO s(id, v) SELECT 100, 1 WHERE 0",  # inserts nothing
    "CREATE TRIGGER note AFTER INSERT ON s BEGIN INSERT INTO audit(note) VALUES ('n'); END",
    "INSERT INTO s(id, v) VALUES (40, 4)",
    "DELETE FROM s WHERE id < 3",
    "CREATE TEMP TABLE tmp(a)",
    "INSERT INTO tmp VALUES (1), (2)",
    "CREATE TABLE other(a)",
    "INSERT INTO s(id, v) VALUES (40, 5)",  # fails: UNIQUE
    "SELECT * FROM s",
]


def _run_steps(connection: Any, commit: Callable[[], None]) -> list[Any]:
    seen = []
    cursor = connection.cursor()
    for sql in STEPS:
        try:
            cursor.execute(sql)
            if cursor.description is not None:
                cursor.fetchall()
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - the class is the outcome
            outcome = type(exc).__name__
        commit()
        seen.append((sql, outcome, cursor.lastrowid, tuple(connection.execute(COUNTERS).fetchone())))
    fresh = connection.cursor()
    fresh.executemany("INSERT INTO s(v) VALUES (?)", [(7,), (8,)])
    seen.append(("executemany", fresh.lastrowid, tuple(connection.execute(COUNTERS).fetchone())))
    fresh.execute("SELECT 1")
    seen.append(("select", fresh.lastrowid))
    fresh.executescript("INSERT INTO s(v) VALUES (9);")
    seen.append(("executescript", fresh.lastrowid, tuple(connection.execute(COUNTERS).fetchone())))
    return seen


@pytest.mark.parametrize("fmt", ["row", "statement", "trigger", "mixed"])
@pytest.mark.parametrize("autocommit", [False, True])
def test_counters_and_lastrowid_answer_as_sqlite3(make_cluster, fmt, autocommit):
    cluster = make_cluster(format=fmt)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=autocommit)
    plain = sqlite3.connect(":memory:", isolation_level=None if autocommit else "")
    expected = _run_steps(plain, plain.commit)
    cluster.wait_for_catchup(10)
    got = _run_steps(conn, conn.commit)
    for want, have in zip(expected, got, strict=True):
        assert have == want
    plain.close()


def test_counters_are_answered_by_a_follower_for_the_session(make_cluster):
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES (5), (6)")
    cluster.wait_for_catchup(10)
    cur = conn.execute(COUNTERS)
    assert cur.fetchone() == (3, 2, 3) and cur.node != cluster.leader
    conn.execute("BEGIN")
    cur = conn.execute("SELECT count(*) FROM t")
    assert cur.node != cluster.leader  # a read transaction on a follower's snapshot
    assert conn.execute(COUNTERS).fetchone() == (3, 2, 3)
    conn.rollback()


# -- 14. executescript -----------------------------------------------------------------------------

SCRIPT = "INSERT INTO t(x) VALUES (10); INSERT INTO nosuch VALUES (1); INSERT INTO t(x) VALUES (11);"


@pytest.mark.parametrize("prefix", ["", "BEGIN; "], ids=["autocommit-statements", "script-begins"])
def test_executescript_that_fails_midway_keeps_what_sqlite3_keeps(make_cluster, prefix):
    cluster = make_cluster()
    conn = proxy.connect(cluster.directory, cluster=cluster)
    plain = sqlite3.connect(":memory:")
    for db in (conn, plain):
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
        db.commit()
        db.execute("INSERT INTO t(x) VALUES (1)")  # pending: executescript commits it first
        with pytest.raises(db.OperationalError, match="no such table"):
            db.executescript(prefix + SCRIPT)
    assert conn.in_transaction == plain.in_transaction == bool(prefix)
    conn.rollback()
    plain.rollback()
    rows = plain.execute("SELECT x FROM t ORDER BY id").fetchall()
    assert rows == ([(1,)] if prefix else [(1,), (10,)])
    assert same_on_all(cluster, "SELECT x FROM t ORDER BY id") == rows
    plain.close()


# -- 15. the DB-API errors sqlite3 raises ---------------------------------------------------------------

def _error_of(fn: Callable[..., Any], *args: Any) -> tuple[str, str]:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return type(exc).__name__, str(exc)
    return "no error", ""


def test_a_nul_character_in_sql_is_a_programming_error_as_in_sqlite3(make_cluster):
    cluster, conn = setup(make_cluster)
    plain = sqlite3.connect(":memory:")
    for call in (lambda db: db.execute("SELECT 1\0"),
                 lambda db: db.execute("SELECT 'a\0b'"),
                 lambda db: db.executemany("INSERT INTO t VALUES (?)\0", [(1,)])):
        assert _error_of(call, conn) == _error_of(call, plain)
        assert _error_of(call, conn)[0] == "ProgrammingError"
    with pytest.raises(proxy.ProgrammingError, match="null character"):
        conn.executescript("SELECT 1;\0")
    assert conn.execute("SELECT ?", ("a\0b",)).fetchone() == ("a\0b",)  # in a parameter it is data
    plain.close()


@pytest.mark.parametrize("consistency", ["strong", "eventual"])
def test_text_that_is_not_utf8_is_an_operational_error_as_in_sqlite3(make_cluster, consistency):
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES (CAST(x'ff' AS TEXT))")
    cluster.wait_for_catchup(10)
    plain = sqlite3.connect(":memory:")
    plain.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    plain.execute("INSERT INTO t(x) VALUES (1), (CAST(x'ff' AS TEXT))")
    cur = conn.cursor()
    cur.consistency = consistency
    for fetch in (lambda c: c.execute("SELECT x FROM t ORDER BY id").fetchall(),
                  lambda c: c.execute("SELECT x FROM t WHERE id = 2").fetchone(),
                  lambda c: list(c.execute("SELECT x FROM t ORDER BY id"))):
        assert _error_of(fetch, cur) == _error_of(fetch, plain.cursor())
    name, message = _error_of(lambda: cur.execute("SELECT id, x FROM t ORDER BY id").fetchall())
    assert name == "OperationalError" and "Could not decode to UTF-8" in message
    # RETURNING such text: the write is refused as a whole and the connection goes on
    name, _ = _error_of(lambda: conn.execute("INSERT INTO t(x) VALUES (CAST(x'fe' AS TEXT)) RETURNING x"
                                             ).fetchall())
    assert name == "OperationalError"
    conn.execute("INSERT INTO t(x) VALUES (3)")
    assert_identical(cluster)
    plain.close()


def test_text_a_capture_cannot_read_never_escapes_as_a_raw_decode_error(make_cluster):
    """CREATE TABLE ... AS SELECT copying text that is not UTF-8: replicated exactly, or refused
    with a DB-API error and nothing kept (never a UnicodeDecodeError, never a leader-only table)."""
    cluster, conn = setup(make_cluster)
    conn.execute("INSERT INTO t(x) VALUES (CAST(x'80' AS TEXT))")
    try:
        conn.execute("CREATE TABLE copy AS SELECT * FROM t")
    except proxy.Error:
        assert not conn.in_transaction
    assert_identical(cluster)
