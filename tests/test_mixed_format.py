"""The mixed log format end to end: statements by default, row images for the statements the
statement format refuses, so every statement is accepted and replicates exactly.

The unsafe corpus is test_statement_format.py's: there each statement is refused, here each one
runs and the followers must be identical to the leader, with the statement logged as row images.
Entries holding both kinds replay statements with follower triggers firing and row images with
triggers off; the applier's trigger setting is put back as found.
"""

from __future__ import annotations

import itertools
from typing import Any

import apsw
import pytest
from helpers import examples, suppressed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_statement_format import (
    BASE_SCHEMA,
    REWRITTEN,
    UNSAFE,
    Case,
    assert_identical,
    events,
    open_cluster,
    rows_everywhere,
    run_all,
    run_generated,
    write_statements,
)

import logformats
import proxy
from logformats import statement

ROW_KINDS = {"INSERT", "UPDATE", "DELETE"}


@pytest.mark.parametrize("case", UNSAFE, ids=[c.name for c in UNSAFE])
def test_unsafe_statement_is_logged_as_row_images_and_replicates_exactly(make_cluster, case):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA + list(case.setup))
    before = cluster.leader_lsn()
    run_all(conn, case.statements)
    if cluster.leader_lsn() > before:  # a statement that changed nothing (random) logs nothing
        logged = events(cluster, cluster.leader_lsn())
        assert {e.kind for e in logged} & ROW_KINDS or "CREATE TABLE" in logged[0].sql, logged
    assert_identical(cluster)


@pytest.mark.parametrize("case", REWRITTEN[:12], ids=[c.name for c in REWRITTEN[:12]])
def test_safe_statement_stays_a_statement(make_cluster, case):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA + list(case.setup))
    run_all(conn, case.statements)
    assert {e.kind for e in events(cluster, cluster.leader_lsn())} == {"SQL"}
    assert_identical(cluster)


def test_application_defined_function_runs_once_on_the_leader(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA)
    conn._leader.create_scalar_function("shout", lambda s: str(s).upper() + "!", 1)
    conn.execute("UPDATE t SET v = shout(v) WHERE id <= 2")
    assert rows_everywhere(cluster, "SELECT v FROM t WHERE id <= 2 ORDER BY id") == {
        n: [("A!",), ("B!",)] for n in [cluster.leader, *cluster.followers]}
    assert_identical(cluster)


def test_largest_rowid_then_automatic_rowid_replicates_the_leaders_rowid(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA)
    conn.execute("INSERT INTO t2(id, v) VALUES (9223372036854775807, 'top')")
    conn.execute("INSERT INTO t2(v) VALUES ('random rowid')")  # SQLite picks the rowid at random
    (event,) = events(cluster, cluster.leader_lsn())
    assert event.kind == "INSERT"
    assert_identical(cluster)


def test_one_entry_mixes_statements_and_row_images_in_order(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA)
    # A deterministic trigger: it must fire on followers for statements, never for row images
    # (which already hold its rows), or the audit table would differ or the apply conflict.
    conn.execute("CREATE TABLE audit(id INTEGER PRIMARY KEY, tid, what)")
    conn.execute("CREATE TRIGGER a_ins AFTER INSERT ON t2 BEGIN INSERT INTO audit(tid, what) VALUES "
                 "(NEW.id, 'ins'); END")
    conn.execute("CREATE TRIGGER a_upd AFTER UPDATE ON t2 BEGIN INSERT INTO audit(tid, what) VALUES "
                 "(NEW.id, 'upd'); END")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t2(v) VALUES ('statement 1')")
    conn.execute("INSERT INTO t2(v) SELECT v FROM t ORDER BY random()")  # unordered: row images
    conn.execute("UPDATE t2 SET v = random() WHERE id = 1")  # pinned: a statement
    conn.execute("UPDATE t2 SET v = v || random()")  # random per row, fires a_upd per row: row images
    conn.execute("INSERT INTO t2(v) VALUES ('statement 2')")
    conn.execute("COMMIT")
    kinds = [e.kind if e.kind == "SQL" else "ROWS" for e in events(cluster, cluster.leader_lsn())]
    collapsed = [k for k, _ in itertools.groupby(kinds)]
    assert collapsed == ["SQL", "ROWS", "SQL", "ROWS", "SQL"]
    assert_identical(cluster)
    assert rows_everywhere(cluster, "SELECT count(*) FROM audit")[cluster.followers[0]] == [(1 + 4 + 1 + 5 + 1,)]


def test_rows_a_failing_statement_keeps_reach_followers(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA)
    conn.execute("INSERT INTO t2(id, v) VALUES (1, 'one')")
    conn.execute("CREATE TRIGGER no_bad BEFORE INSERT ON kv WHEN NEW.v = 'bad' BEGIN "
                 "SELECT RAISE(FAIL, 'bad value'); END")
    conn.execute("BEGIN")
    # OR FAIL and RAISE(FAIL) end the statement with an error but keep the rows it changed first.
    with pytest.raises(proxy.IntegrityError):
        conn.execute("INSERT OR FAIL INTO t2(id, v) VALUES (10, 'kept'), (1, 'duplicate'), (11, 'never')")
    with pytest.raises(proxy.IntegrityError):
        conn.execute("INSERT INTO kv(k, v) VALUES ('a', 'kept'), ('b', 'bad'), ('c', 'never')")
    conn.execute("INSERT INTO t2(id, v) VALUES (12, 'after')")
    conn.execute("COMMIT")
    assert rows_everywhere(cluster, "SELECT id FROM t2 ORDER BY id")[cluster.leader] == [(1,), (10,), (12,)]
    assert rows_everywhere(cluster, "SELECT k FROM kv")[cluster.leader] == [("a",)]
    assert_identical(cluster)


def test_apply_puts_the_trigger_setting_back_as_found(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t2(v) VALUES (1)")
    conn.execute("INSERT INTO t2(v) SELECT v FROM t")
    conn.execute("COMMIT")
    (entry,) = cluster.entries(cluster.leader_lsn(), 1)
    fmt = logformats.get("mixed")
    for found in (0, 1):
        target = apsw.Connection(":memory:")
        for sql in BASE_SCHEMA:
            target.execute(sql)
        target.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, found)
        target.execute("BEGIN")
        fmt.apply(target, entry.payload)
        target.execute("COMMIT")
        assert target.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, -1) == found
        assert target.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1) == 0
        assert target.execute("SELECT count(*) FROM t2").fetchone() == (5,)


def test_foreign_key_cascade_in_row_images_is_applied_once(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    conn.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY, n)")
    conn.execute("CREATE TABLE child(id INTEGER PRIMARY KEY, pid REFERENCES parent(id) ON DELETE CASCADE)")
    conn.execute("INSERT INTO parent VALUES (1, 1), (2, 2), (3, 3)")
    conn.execute("INSERT INTO child VALUES (10, 1), (11, 2), (12, 3)")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    conn.execute("DELETE FROM parent WHERE id = 1")  # a statement, replayed with foreign_keys on
    conn.execute("DELETE FROM parent WHERE random() % 2 = 0 OR id = 2")  # row images, cascade included
    conn.execute("COMMIT")
    assert_identical(cluster)


def test_autoincrement_counter_after_row_images_keeps_later_statements_exact(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA)
    conn.execute("CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    conn.execute("CREATE TABLE hold(v)")
    conn.execute("CREATE TRIGGER drop_big AFTER INSERT ON seq WHEN NEW.v = 'drop' BEGIN "
                 "DELETE FROM seq WHERE id = NEW.id; END")
    conn.execute("BEGIN")
    # Row images: the counter moves to 5, but the rows that took 4 and 5 are gone again.
    conn.execute("INSERT INTO seq(v) SELECT v FROM t")
    conn.execute("INSERT INTO seq(v) VALUES ('drop')")
    conn.execute("INSERT INTO seq(v) SELECT 'drop' FROM t WHERE id = 1")
    conn.execute("INSERT INTO seq(v) VALUES ('after')")  # a statement: takes 7 everywhere
    conn.execute("COMMIT")
    assert rows_everywhere(cluster, "SELECT max(id) FROM seq")[cluster.followers[0]] == [(7,)]
    assert_identical(cluster)


def test_smallest_policy_keeps_the_smaller_representation(make_cluster):
    logged: dict[str, list[int]] = {}
    for policy in ("statement", "smallest"):
        cluster, conn = open_cluster(make_cluster, "mixed", name=policy, mixed_policy=policy)
        run_all(conn, BASE_SCHEMA)
        conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, body)")
        conn.executemany("INSERT INTO big(body) VALUES (?)", [("x" * 10,)] * 50)
        before = cluster.leader_lsn()
        # One statement touching many rows: a statement is far smaller than 50 row images.
        conn.execute("UPDATE big SET body = body || 'y'")
        # One row with a long statement text and a short row: the image is smaller.
        conn.execute("INSERT INTO t2(v) VALUES (1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 + 11 + 12 + 13 + 14 + "
                     "15 + 16 + 17 + 18 + 19 + 20 + 21 + 22 + 23 + 24 + 25 + 26 + 27 + 28 + 29 + 30)")
        logged[policy] = [len(e.payload) for e in cluster.entries(before + 1)]
        kinds = [{e.kind for e in events(cluster, lsn)} for lsn in range(before + 1, cluster.leader_lsn() + 1)]
        assert kinds[0] == {"SQL"}
        assert kinds[1] == ({"SQL"} if policy == "statement" else {"INSERT"})
        assert_identical(cluster)
    assert logged["smallest"][0] == logged["statement"][0]
    assert logged["smallest"][1] < logged["statement"][1]


def test_mixed_refuses_no_rewrite_and_unknown_policy(tmp_path):
    with pytest.raises(ValueError):
        logformats.get("mixed", no_rewrite=True)
    with pytest.raises(proxy.errors.ClusterError, match="mixed_policy"):
        proxy.Cluster.init(tmp_path / "x", format="mixed", options={"mixed_policy": "largest"})


def test_statement_refused_after_it_ran_rolls_the_transaction_back(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    conn.execute("CREATE TABLE t3(id INTEGER PRIMARY KEY, v)")
    with pytest.raises(proxy.IntegrityError, match="largest rowid"):
        conn.execute("INSERT INTO t3 VALUES (9223372036854775807, 'a'), (NULL, 'b')")
    assert rows_everywhere(cluster, "SELECT count(*) FROM t3")[cluster.leader] == [(0,)]
    assert_identical(cluster)


def test_row_images_of_a_statement_with_a_null_key_elsewhere_are_still_taken(make_cluster):
    cluster, conn = open_cluster(make_cluster, "mixed")
    run_all(conn, BASE_SCHEMA)
    # Statements replicate rows whose (non-INTEGER) key is NULL; row images could not, so only a
    # row-image statement touching such a table is refused, not every one.
    conn.execute("CREATE TABLE nk(k TEXT PRIMARY KEY, v)")
    conn.execute("INSERT INTO nk VALUES (NULL, 1)")
    conn.execute("UPDATE t SET v = random()")  # row images of t only
    with pytest.raises(proxy.IntegrityError, match="NULL"):
        conn.execute("UPDATE nk SET v = random()")
    assert_identical(cluster)


# -- property tests -----------------------------------------------------------------------------

_EXAMPLES = itertools.count()


@settings(max_examples=examples(25), suppress_health_check=suppressed(HealthCheck.function_scoped_fixture))
@given(statements=st.lists(write_statements(), min_size=1, max_size=6), in_transaction=st.booleans())
def test_generated_statements_are_all_accepted_and_replicate_exactly(make_cluster, statements, in_transaction):
    cluster, conn = open_cluster(make_cluster, "mixed", name=f"gen{next(_EXAMPLES)}")
    try:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v, g)")
        conn.execute("INSERT INTO t(v, g) VALUES ('a', 1), ('b', 2), ('c', 2)")
        if in_transaction:
            conn.execute("BEGIN")
        run_generated(conn, statements, allow_refusal=False)
        if in_transaction and conn.in_transaction:
            conn.execute("COMMIT")
        assert_identical(cluster)
    finally:
        conn.close()
        cluster.close()


def test_payload_round_trip_keeps_order_and_values():
    items: list[Any] = [
        ("stmt", "INSERT INTO t VALUES (?1, ?2)", 0, [1, "x"]),
        ("rows", b"\x01rows"),
        ("stmt", "INSERT INTO t VALUES (?1, ?2)", statement.FLAG_FOREIGN_KEYS, [2**63 - 1, b"\x00"]),
        ("stmt", "UPDATE t SET v = :v", 0, {"v": -1.5}),
        ("stmt", "DELETE FROM t", 0, None),
    ]
    payload = statement.encode(items)
    assert payload.count(b"INSERT INTO t VALUES (?1, ?2)") == 1
    decoded = list(statement.iter_payload(payload))
    assert decoded == [
        ("stmt", ("INSERT INTO t VALUES (?1, ?2)", 0, [1, "x"])),
        ("rows", b"\x01rows"),
        ("stmt", ("INSERT INTO t VALUES (?1, ?2)", statement.FLAG_FOREIGN_KEYS, [2**63 - 1, b"\x00"])),
        ("stmt", ("UPDATE t SET v = :v", 0, {"v": -1.5})),
        ("stmt", ("DELETE FROM t", 0, None)),
    ]
    with pytest.raises(logformats.DecodeError):
        list(statement.iter_payload(payload[:-3]))


def test_case_list_is_shared_with_the_statement_tests():
    assert all(isinstance(c, Case) and c.expect for c in UNSAFE)
