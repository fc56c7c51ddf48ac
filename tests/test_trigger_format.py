"""The trigger log format end to end: writes go through the DB-API (`proxy.connect`), replproxy's
triggers on the leader write row images into the capture table, followers apply them by key, and
every test ends with `proxy.verify` plus a look at the follower files themselves.

Writers outside the proxy are tested in tests/test_outside_writers.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw
import pytest
from checks import assert_identical, same_on_all
from helpers import HANG

import proxy
from logformats import trigger as trig
from proxy.store import log as store_log

MakeCluster = Callable[..., proxy.Cluster]


# -- helpers ------------------------------------------------------------------------------------


def new_cluster(make_cluster: MakeCluster, **options: Any) -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(format="trigger", **options)
    return cluster, proxy.connect(cluster.directory, cluster=cluster)


def typed(cluster: proxy.Cluster, table: str, columns: str, order: str) -> list[tuple[Any, ...]]:
    """Values with their storage class, text as bytes (it may not be UTF-8), on every node."""
    exprs = ", ".join(f"typeof({c}), CASE typeof({c}) WHEN 'text' THEN CAST({c} AS BLOB) ELSE {c} END"
                      for c in columns.split(","))
    return same_on_all(cluster, f"SELECT {exprs} FROM {table} ORDER BY {order}")


def capture_triggers(cluster: proxy.Cluster, node: str) -> list[tuple[str, str]]:
    conn = cluster.open_node(node)
    try:
        return sorted(conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type='trigger' AND name LIKE '\\_replproxy\\_%' "
            "ESCAPE '\\'").fetchall())
    finally:
        conn.close()


def decoded(cluster: proxy.Cluster, lsn: int) -> list[Any]:
    (entry,) = cluster.entries(lsn, 1)
    assert entry.format == "trigger"
    return [e.as_dict() for e in cluster.format.decode(entry.payload)]


def capture_rows(cluster: proxy.Cluster) -> int:
    conn = cluster.open_node(cluster.leader)
    try:
        return conn.execute(f"SELECT count(*) FROM {trig.CAPTURE_TABLE}").fetchone()[0]
    finally:
        conn.close()


# -- installation ---------------------------------------------------------------------------------


def test_init_installs_capture_on_the_leader_only(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    assert capture_triggers(cluster, cluster.leader) == [
        ("_replproxy_del_t", "t"), ("_replproxy_ins_t", "t"), ("_replproxy_upd_t", "t")]
    for name in cluster.followers:
        assert capture_triggers(cluster, name) == []
        follower = cluster.open_node(name)
        try:
            assert not trig.is_installed(follower)
        finally:
            follower.close()
    assert_identical(cluster)


def test_cluster_seeded_from_a_file_gets_triggers_on_its_tables(make_cluster, tmp_path):
    seed = apsw.Connection(str(tmp_path / "seed.db"))
    seed.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO items VALUES (1, 'a')")
    seed.close()
    cluster, conn = new_cluster(make_cluster, from_db=str(tmp_path / "seed.db"))
    assert ("_replproxy_ins_items", "items") in capture_triggers(cluster, cluster.leader)
    conn.execute("UPDATE items SET name='b' WHERE id=1")
    conn.commit()
    assert same_on_all(cluster, "SELECT * FROM items") == [(1, "b")]
    assert_identical(cluster)


def test_missing_capture_is_installed_lazily_at_the_next_write(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    conn.commit()
    cluster.wait_for_catchup(10)
    # A leader without the capture, as a promoted follower would be.
    leader = cluster.open_node(cluster.leader)
    leader.execute("BEGIN IMMEDIATE")
    for name, in leader.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        leader.execute(f'DROP TRIGGER "{name}"')
    for table in (trig.CAPTURE_TABLE, trig.LAYOUT_TABLE, trig.SCHEMA_TABLE):
        leader.execute(f"DROP TABLE {table}")
    leader.execute("COMMIT")
    leader.close()
    conn2 = proxy.connect(cluster.directory, cluster=cluster)
    conn2.execute("INSERT INTO t VALUES (2, 'b')")
    conn2.commit()
    assert len(capture_triggers(cluster, cluster.leader)) == 3
    assert same_on_all(cluster, "SELECT * FROM t ORDER BY id") == [(1, "a"), (2, "b")]
    assert_identical(cluster)


# -- values and keys ------------------------------------------------------------------------------


def test_every_storage_class_round_trips_exactly(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE v(id INTEGER PRIMARY KEY, x)")
    values = [None, 0, -1, 2**63 - 1, -(2**63), 0.1, 1 / 3, 1e300, -2.5e-308, 5e-324, float("inf"),
              -float("inf"), -0.0, "", "héllo wörld ✓ 𝄞", "a\x00b", b"", b"\x00\xff\x01", "0.1", "1"]
    conn.executemany("INSERT INTO v(x) VALUES (?)", [(v,) for v in values])
    # TEXT that is not UTF-8, which Python cannot even decode.
    conn.execute("INSERT INTO v(x) VALUES (CAST(X'80FF41' AS TEXT))")
    conn.execute("INSERT INTO v(x) VALUES (CAST(X'C328' AS TEXT))")
    conn.commit()
    conn.execute("UPDATE v SET x = CAST(X'FE' AS TEXT) WHERE id = 1")
    conn.commit()
    rows = typed(cluster, "v", "x", "id")
    assert len(rows) == len(values) + 2
    assert rows[0] == ("text", b"\xfe")
    assert rows[len(values)] == ("text", b"\x80\xffA")
    leader_values = [r[1] for r in same_on_all(cluster, "SELECT id, x FROM v WHERE typeof(x) != 'text' ORDER BY id")]
    assert leader_values[:4] == [0, -1, 2**63 - 1, -(2**63)]  # row 1 became text
    assert 0.1 in leader_values and 5e-324 in leader_values
    assert_identical(cluster)


def test_tables_keyed_every_way_including_key_changing_updates(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.executescript("""
        CREATE TABLE plain(a, b);                                          -- rowid only
        CREATE TABLE ipk(id INTEGER PRIMARY KEY, v);
        CREATE TABLE textkey(k TEXT PRIMARY KEY NOT NULL, v);              -- rowid table, other key
        CREATE TABLE composite(a INTEGER NOT NULL, b TEXT NOT NULL, v, PRIMARY KEY(a, b));
        CREATE TABLE wr(a TEXT, b INTEGER, v, PRIMARY KEY(b, a)) WITHOUT ROWID;
        CREATE TABLE nocase(k TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, v);
    """)
    conn.execute("BEGIN")
    for i in range(5):
        conn.execute("INSERT INTO plain VALUES (?, ?)", (i, f"p{i}"))
        conn.execute("INSERT INTO ipk(v) VALUES (?)", (f"i{i}",))
        conn.execute("INSERT INTO textkey VALUES (?, ?)", (f"k{i}", i))
        conn.execute("INSERT INTO composite VALUES (?, ?, ?)", (i, f"b{i}", i * 1.5))
        conn.execute("INSERT INTO wr VALUES (?, ?, ?)", (f"a{i}", i, b"\x01" * i))
        conn.execute("INSERT INTO nocase VALUES (?, ?)", (f"Key{i}", i))
    conn.commit()
    # Updates that move keys, and the rowid of a table without a key.
    conn.execute("UPDATE plain SET rowid = rowid + 100 WHERE a >= 3")
    conn.execute("UPDATE ipk SET id = id + 10 WHERE id IN (1, 2)")
    conn.execute("UPDATE textkey SET k = 'moved' WHERE k = 'k1'")
    conn.execute("UPDATE composite SET b = 'z' WHERE a = 2")
    conn.execute("UPDATE wr SET a = 'A', v = NULL WHERE b = 3")
    conn.execute("UPDATE nocase SET v = -1 WHERE k = 'KEY2'")
    conn.execute("DELETE FROM plain WHERE a = 0")
    conn.execute("DELETE FROM wr WHERE b = 4")
    conn.execute("DELETE FROM nocase WHERE k = 'key4'")
    conn.commit()
    assert same_on_all(cluster, "SELECT rowid, a, b FROM plain ORDER BY rowid")[-1] == (105, 4, "p4")
    assert same_on_all(cluster, "SELECT id FROM ipk ORDER BY id") == [(3,), (4,), (5,), (11,), (12,)]
    assert ("moved", 1) in same_on_all(cluster, "SELECT k, v FROM textkey")
    assert same_on_all(cluster, "SELECT b FROM composite WHERE a = 2") == [("z",)]
    assert same_on_all(cluster, "SELECT a, v FROM wr WHERE b = 3") == [("A", None)]
    assert same_on_all(cluster, "SELECT v FROM nocase WHERE k = 'key2'") == [(-1,)]
    assert_identical(cluster)


def test_generated_columns_are_never_written_and_come_out_equal(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE g(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, "
                 "twice INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL, "
                 "label TEXT GENERATED ALWAYS AS (b || ':' || a) STORED)")
    conn.execute("INSERT INTO g(a, b) VALUES (1, 'x'), (2, 'y')")
    conn.execute("UPDATE g SET a = 10 WHERE id = 2")
    conn.commit()
    events = decoded(cluster, cluster.leader_lsn())
    assert events[0]["new"] == {"id": 1, "a": 1, "b": "x"}  # no generated column in an image
    assert same_on_all(cluster, "SELECT id, twice, label FROM g ORDER BY id") == [(1, 2, "x:1"), (2, 20, "y:10")]
    assert_identical(cluster)


def test_null_in_a_nullable_primary_key_is_refused_not_lost(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE n(k TEXT PRIMARY KEY, v)")  # SQLite lets such keys hold NULL
    before = cluster.leader_lsn()
    conn.execute("INSERT INTO n VALUES (NULL, 1)")
    with pytest.raises(proxy.IntegrityError, match="NULL in its PRIMARY KEY"):
        conn.commit()
    assert cluster.leader_lsn() == before
    assert capture_rows(cluster) == 0
    conn.execute("INSERT INTO n VALUES ('a', 1)")
    conn.commit()
    assert same_on_all(cluster, "SELECT * FROM n") == [("a", 1)]
    assert_identical(cluster)


# -- what the leader's own machinery does ---------------------------------------------------------


def test_user_triggers_effects_are_applied_exactly_once(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.executescript("""
        CREATE TABLE account(id INTEGER PRIMARY KEY, balance INTEGER, touched INTEGER DEFAULT 0);
        CREATE TABLE audit(id INTEGER PRIMARY KEY, account INTEGER, delta INTEGER);
        CREATE TRIGGER audit_update AFTER UPDATE OF balance ON account BEGIN
            INSERT INTO audit(account, delta) VALUES (NEW.id, NEW.balance - OLD.balance);
            UPDATE account SET touched = touched + 1 WHERE id = NEW.id;
        END;
    """)
    # Created after replproxy's triggers: replproxy re-creates its own so they stay the newest.
    conn.execute("CREATE TRIGGER stamp AFTER INSERT ON account BEGIN "
                 "UPDATE account SET touched = 100 WHERE id = NEW.id; END")
    conn.execute("INSERT INTO account(balance) VALUES (10), (20)")
    conn.execute("UPDATE account SET balance = balance + 5")
    conn.commit()
    assert same_on_all(cluster, "SELECT id, balance, touched FROM account ORDER BY id") == [
        (1, 15, 101), (2, 25, 101)]
    assert same_on_all(cluster, "SELECT account, delta FROM audit ORDER BY id") == [(1, 5), (2, 5)]
    # The follower applied images only: its own copy of the triggers did not fire again.
    assert_identical(cluster)


def test_statements_firing_temp_triggers_on_main_tables_are_refused(make_cluster):
    # SQLite fires a connection's TEMP triggers before the main schema's, replproxy's included. A
    # TEMP trigger that changed the row again was imaged before the change that fired it, and one
    # that ran RAISE(IGNORE) kept the change while replproxy's trigger never ran: either way the
    # followers silently kept the older row.
    cluster, conn = new_cluster(make_cluster)
    conn.autocommit = True
    conn.executescript("""
        CREATE TABLE m(id INTEGER PRIMARY KEY, x, y);
        CREATE TABLE other(v);
        INSERT INTO m VALUES (1, 0, 0);
        CREATE TEMP TABLE seen(v);
        CREATE TEMP TRIGGER again AFTER UPDATE OF x ON main.m BEGIN
            UPDATE main.m SET y = 2 WHERE id = NEW.id;
        END;
        CREATE TEMP TRIGGER quiet AFTER UPDATE OF y ON main.m BEGIN
            SELECT RAISE(IGNORE) WHERE NEW.y = 3;
        END;
        CREATE TEMP VIEW v AS SELECT 1 AS n;
        CREATE TEMP TRIGGER feed INSTEAD OF INSERT ON v BEGIN INSERT INTO main.other VALUES (NEW.n); END;
    """)
    with pytest.raises(proxy.UnsafeStatementError, match="TEMP trigger 'again'.*row or mixed format"):
        conn.execute("UPDATE m SET x = 1 WHERE id = 1")
    with pytest.raises(proxy.UnsafeStatementError, match="TEMP trigger 'quiet'.*RAISE\\(IGNORE\\)"):
        conn.execute("UPDATE m SET y = 3 WHERE id = 1")
    # A statement that fires none of them, or a TEMP trigger on a TEMP object, runs and replicates.
    conn.execute("INSERT INTO m VALUES (2, 5, 5)")
    conn.execute("INSERT INTO v VALUES (7)")
    conn.execute("INSERT INTO seen VALUES (1)")
    conn.execute("DROP TRIGGER temp.again")
    conn.execute("DROP TRIGGER temp.quiet")
    conn.execute("UPDATE m SET x = 1, y = 3 WHERE id = 1")
    assert same_on_all(cluster, "SELECT id, x, y FROM m ORDER BY id") == [(1, 1, 3), (2, 5, 5)]
    assert same_on_all(cluster, "SELECT v FROM other") == [(7,)]
    assert_identical(cluster)


def test_foreign_key_cascades_are_applied_exactly_once(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript("""
        CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE child(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id)
            ON DELETE CASCADE ON UPDATE CASCADE, note TEXT);
        CREATE TABLE weak(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id)
            ON DELETE SET NULL ON UPDATE CASCADE);
    """)
    conn.execute("INSERT INTO parent VALUES (1, 'a'), (2, 'b')")
    conn.execute("INSERT INTO child(parent, note) VALUES (1, 'x'), (1, 'y'), (2, 'z')")
    conn.execute("INSERT INTO weak(parent) VALUES (1), (2)")
    conn.commit()
    conn.execute("UPDATE parent SET id = 20 WHERE id = 2")
    conn.execute("DELETE FROM parent WHERE id = 1")
    conn.commit()
    assert same_on_all(cluster, "SELECT parent, note FROM child ORDER BY id") == [(20, "z")]
    assert same_on_all(cluster, "SELECT id, parent FROM weak ORDER BY id") == [(1, None), (2, 20)]
    events = [e["kind"] + " " + e["table"] for e in decoded(cluster, cluster.leader_lsn())]
    assert events.count("DELETE child") == 2 and events.count("UPDATE weak") == 2
    assert_identical(cluster)


def test_replace_and_upsert_delete_and_update_what_the_leader_did(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE u(id INTEGER PRIMARY KEY, code TEXT UNIQUE, n INTEGER)")
    conn.execute("INSERT INTO u VALUES (1, 'a', 0), (2, 'b', 0), (3, 'c', 0)")
    conn.commit()
    # REPLACE deletes the conflicting row without firing a delete trigger.
    conn.execute("INSERT OR REPLACE INTO u VALUES (4, 'b', 9)")
    conn.execute("UPDATE OR REPLACE u SET code = 'c' WHERE id = 1")
    conn.execute("INSERT INTO u VALUES (4, 'q', 0) ON CONFLICT(id) DO UPDATE SET n = n + 1")
    conn.commit()
    assert same_on_all(cluster, "SELECT * FROM u ORDER BY id") == [(1, "c", 0), (4, "b", 10)]
    assert_identical(cluster)


def test_autoincrement_counters_end_equal_even_after_deleting_the_highest_row(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    conn.execute("INSERT INTO a(v) VALUES ('x'), ('y'), ('z')")
    conn.commit()
    conn.execute("DELETE FROM a WHERE id = 3")
    conn.commit()
    conn.execute("INSERT INTO a(v) VALUES ('w')")
    conn.commit()
    assert same_on_all(cluster, "SELECT seq FROM sqlite_sequence WHERE name = 'a'") == [(4,)]
    assert same_on_all(cluster, "SELECT id FROM a ORDER BY id") == [(1,), (2,), (4,)]
    assert_identical(cluster)


# -- schema changes -------------------------------------------------------------------------------


def test_schema_changes_replicate_in_order_and_triggers_follow_them(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1, 'x', 1)")
    conn.execute("ALTER TABLE t ADD COLUMN c REAL DEFAULT 0.5")
    conn.execute("INSERT INTO t VALUES (2, 'y', 2, 2.5)")
    conn.execute("ALTER TABLE t RENAME COLUMN a TO name")
    conn.execute("UPDATE t SET name = 'renamed' WHERE id = 1")
    conn.execute("ALTER TABLE t DROP COLUMN b")  # would fail on a trigger naming b
    conn.execute("INSERT INTO t VALUES (3, 'z', 3.5)")
    conn.execute("ALTER TABLE t RENAME TO items")
    conn.execute("CREATE INDEX items_name ON items(name)")
    conn.execute("CREATE VIEW named AS SELECT name FROM items")
    conn.execute("DELETE FROM items WHERE id = 2")
    conn.commit()
    kinds = [e["kind"] for e in decoded(cluster, cluster.leader_lsn())]
    assert kinds == ["INSERT", "SQL", "INSERT", "SQL", "UPDATE", "SQL", "INSERT", "SQL", "SQL", "SQL", "DELETE"]
    assert same_on_all(cluster, "SELECT * FROM items ORDER BY id") == [(1, "renamed", 0.5), (3, "z", 3.5)]
    assert capture_triggers(cluster, cluster.leader) == [
        ("_replproxy_del_items", "items"), ("_replproxy_ins_items", "items"), ("_replproxy_upd_items", "items")]
    conn.execute("UPDATE items SET c = 9 WHERE id = 3")
    conn.execute("DROP TABLE items")
    conn.commit()
    assert capture_triggers(cluster, cluster.leader) == []
    assert same_on_all(cluster, "SELECT name FROM sqlite_master WHERE name NOT LIKE '\\_replproxy%' ESCAPE '\\' "
                       "ORDER BY name") == [("named",)]
    assert_identical(cluster)


def test_create_table_as_select_logs_the_definition_and_the_rows(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE src(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO src(v) VALUES (1), (2), (3)")
    conn.commit()
    conn.execute("CREATE TABLE copy AS SELECT id, v * 10 AS v, random() AS r FROM src")
    events = decoded(cluster, cluster.leader_lsn())
    assert events[0]["kind"] == "SQL" and events[0]["sql"].startswith('CREATE TABLE copy(')
    assert [e["kind"] for e in events[1:]] == ["INSERT"] * 3
    assert len(same_on_all(cluster, "SELECT * FROM copy ORDER BY rowid")) == 3
    conn.execute("UPDATE copy SET v = 0 WHERE id = 1")  # the copy is captured from now on
    conn.commit()
    assert same_on_all(cluster, "SELECT v FROM copy ORDER BY rowid") == [(0,), (20,), (30,)]
    assert_identical(cluster)


def test_failed_ddl_leaves_the_table_captured(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v UNIQUE)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    with pytest.raises(proxy.OperationalError):
        conn.execute("ALTER TABLE t DROP COLUMN v")  # a UNIQUE column cannot be dropped
    conn.execute("INSERT INTO t VALUES (2, 'b')")
    conn.commit()
    assert len(capture_triggers(cluster, cluster.leader)) == 3
    assert same_on_all(cluster, "SELECT * FROM t ORDER BY id") == [(1, "a"), (2, "b")]
    assert_identical(cluster)


def test_user_version_replicates(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("PRAGMA user_version = 7")
    assert same_on_all(cluster, "PRAGMA user_version") == [(7,)]
    assert_identical(cluster)


# -- transactions ---------------------------------------------------------------------------------


def test_rollback_to_savepoint_drops_rows_and_ddl_after_it(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1, 'keep')")
    conn.execute("SAVEPOINT s")
    conn.execute("INSERT INTO t VALUES (2, 'gone')")
    conn.execute("CREATE TABLE gone(x)")
    conn.execute("INSERT INTO gone VALUES (1)")
    conn.execute("ROLLBACK TO s")
    conn.execute("INSERT INTO t VALUES (3, 'keep too')")
    conn.execute("RELEASE s")
    conn.commit()
    assert [e["kind"] for e in decoded(cluster, cluster.leader_lsn())] == ["INSERT", "INSERT"]
    assert same_on_all(cluster, "SELECT id FROM t ORDER BY id") == [(1,), (3,)]
    assert capture_rows(cluster) == 0
    conn.execute("INSERT INTO t VALUES (4, 'x')")
    conn.rollback()
    assert capture_rows(cluster) == 0
    assert_identical(cluster)


def test_commit_refused_by_a_deferred_foreign_key_can_be_fixed_and_committed(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript("""
        CREATE TABLE p(id INTEGER PRIMARY KEY);
        CREATE TABLE c(id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);
    """)
    before = cluster.leader_lsn()
    conn.execute("INSERT INTO c VALUES (1, 7)")
    with pytest.raises(proxy.IntegrityError):
        conn.commit()
    assert conn.in_transaction and cluster.leader_lsn() == before
    conn.execute("INSERT INTO p VALUES (7)")
    conn.commit()
    assert [(e["kind"], e["table"]) for e in decoded(cluster, before + 1)] == [("INSERT", "c"), ("INSERT", "p")]
    assert same_on_all(cluster, "SELECT * FROM c") == [(1, 7)]
    assert capture_rows(cluster) == 0
    assert_identical(cluster)


def test_many_entries_are_applied_in_batches_after_a_pause(make_cluster):
    cluster, conn = new_cluster(make_cluster, followers=1)
    follower = cluster.followers[0]
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.pause(follower)
    for i in range(300):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, str(i)))
        if i % 3 == 0:
            conn.execute("UPDATE t SET v = v || '!' WHERE id = ?", (i // 2,))
        conn.commit()
    conn.execute("DELETE FROM t WHERE id % 7 = 0")
    conn.commit()
    cluster.resume(follower)
    assert same_on_all(cluster, "SELECT count(*), sum(length(v)) FROM t")[0][0] == 300 - 43
    assert_identical(cluster)


# -- followers ------------------------------------------------------------------------------------


def test_a_follower_missing_the_row_to_update_stops_with_a_conflict(make_cluster):
    cluster, conn = new_cluster(make_cluster, followers=1)
    follower = cluster.followers[0]
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    conn.commit()
    cluster.wait_for_catchup(10)
    cluster.pause(follower)
    side = cluster.open_node(follower)
    side.execute("DELETE FROM t")  # the follower diverges behind replproxy's back
    side.close()
    conn.execute("UPDATE t SET v = 'b' WHERE id = 1")
    conn.commit()
    cluster.resume(follower)
    with pytest.raises(proxy.ReplicationTimeout):
        cluster.wait_for_catchup(HANG)  # returns early once the follower stopped with its error
    (status,) = [s for s in cluster.status() if s.name == follower]
    assert status.state == "error" and "does not exist" in (status.error or "")
    assert status.error_lsn == cluster.leader_lsn()


def test_entries_decode_for_humans(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE t(k TEXT PRIMARY KEY NOT NULL, v)")
    conn.execute("INSERT INTO t VALUES ('a', 1)")
    conn.execute("UPDATE t SET k = 'b', v = 2")
    conn.execute("DELETE FROM t")
    conn.commit()
    assert decoded(cluster, cluster.leader_lsn()) == [
        {"kind": "INSERT", "table": "t", "new": {"k": "a", "v": 1}},
        {"kind": "UPDATE", "table": "t", "old": {"k": "a"}, "new": {"k": "b", "v": 2}},
        {"kind": "DELETE", "table": "t", "old": {"k": "b"}},
    ]
    # verify ignores the capture triggers, and followers never receive them.
    report = assert_identical(cluster)
    assert report.tables == 1
    entry = cluster.entries(cluster.leader_lsn(), 1)[0]
    assert not trig.is_outside_entry(entry.payload)
    assert store_log.checksum(entry.payload) == entry.checksum


def test_odd_names_wide_tables_and_a_rowid_column(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    wide = ", ".join(f"c{i} INTEGER" for i in range(30))
    conn.executescript(f"""
        CREATE TABLE "we""ird tåble"("key col" TEXT PRIMARY KEY NOT NULL, "v'al" BLOB);
        CREATE TABLE wide(id INTEGER PRIMARY KEY, {wide});
        CREATE TABLE shadowed(rowid TEXT, v);  -- no key, and a column hiding the name rowid
    """)
    conn.execute('INSERT INTO "we""ird tåble" VALUES (?, ?)', ("k ✓", b"\x00"))
    conn.execute(f"INSERT INTO wide VALUES (1, {', '.join(str(i) for i in range(30))})")
    conn.execute("UPDATE wide SET c29 = -1, id = 2")
    conn.execute("INSERT INTO shadowed VALUES ('not the rowid', 1), ('x', 2)")
    conn.execute("UPDATE shadowed SET _rowid_ = 10 WHERE v = 2")
    conn.execute("DELETE FROM shadowed WHERE v = 1")
    conn.commit()
    assert same_on_all(cluster, 'SELECT * FROM "we""ird tåble"') == [("k ✓", b"\x00")]
    assert same_on_all(cluster, "SELECT id, c0, c29 FROM wide") == [(2, 0, -1)]
    assert same_on_all(cluster, "SELECT _rowid_, rowid, v FROM shadowed") == [(10, "x", 2)]
    assert_identical(cluster)


def test_full_text_search_tables_replicate_through_their_shadow_tables(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE VIRTUAL TABLE docs USING fts5(title, body)")
    conn.execute("INSERT INTO docs VALUES ('one', 'the quick brown fox'), ('two', 'lazy dogs sleep')")
    conn.commit()
    conn.execute("UPDATE docs SET body = 'quick thinking' WHERE title = 'two'")
    conn.execute("DELETE FROM docs WHERE title = 'one'")
    conn.commit()
    assert same_on_all(cluster, "SELECT title FROM docs WHERE docs MATCH 'quick'") == [("two",)]
    # The usual pattern: an index kept up to date by triggers on an ordinary table.
    conn.executescript("""
        CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
        CREATE VIRTUAL TABLE notes_fts USING fts5(body, content='notes', content_rowid='id');
        CREATE TRIGGER notes_ai AFTER INSERT ON notes BEGIN
            INSERT INTO notes_fts(rowid, body) VALUES (new.id, new.body);
        END;
    """)
    conn.execute("INSERT INTO notes(body) VALUES ('replication by triggers'), ('a quick note')")
    conn.commit()
    assert same_on_all(cluster, "SELECT rowid FROM notes_fts WHERE notes_fts MATCH 'quick'") == [(2,)]
    for shadow in ("docs_data", "docs_idx", "docs_content", "docs_docsize", "docs_config", "notes_fts_data"):
        same_on_all(cluster, f"SELECT * FROM {shadow} ORDER BY 1")
    assert_identical(cluster)


# -- property: random schemas, writes, transactions ----------------------------------------------


def test_followers_identical_under_random_workloads(tmp_path_factory):
    """The row format's state machine (tests/test_property.py: random schemas, values, conflict
    clauses, transactions and savepoints), run on trigger-format clusters."""
    from unittest import mock

    from helpers import examples
    from hypothesis import settings
    from hypothesis.stateful import run_state_machine_as_test

    from tests import test_property
    from tests.test_property import ProxyMachine

    class TriggerMachine(ProxyMachine):
        pass

    TriggerMachine.base_dir = tmp_path_factory.mktemp("property-trigger")
    real_init = proxy.Cluster.init.__func__  # type: ignore[attr-defined]
    real_content = test_property.node_content

    def init_trigger(cls: type, directory: Any, **options: Any) -> proxy.Cluster:
        return real_init(cls, directory, **{**options, "format": "trigger"})

    def content_without_capture(path: Any) -> dict[str, Any]:
        # The leader's capture triggers are replproxy's own, as verify knows.
        content = real_content(path)
        content["schema"] = [r for r in content["schema"] if not trig.is_capture_trigger(r[1])]
        return content

    with mock.patch.object(proxy.Cluster, "init", classmethod(init_trigger)), \
            mock.patch.object(test_property, "node_content", content_without_capture):
        run_state_machine_as_test(
            TriggerMachine,
            settings=settings(max_examples=examples(40)),
        )
