"""The row log format end to end: writes go through the DB-API (`proxy.connect`), followers replay
the row images, and every test ends with `proxy.verify` plus a look at the follower files themselves.

Each test name says the behaviour it proves. Tests that do not depend on the image kind run with
both `row_image="full"` (changesets) and `row_image="minimal"` (patchsets).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from checks import assert_identical, same_on_all

import proxy
from proxy.store import log as store_log
from proxy.store import node as store_node

IMAGES = pytest.mark.parametrize("row_image", ["full", "minimal"])

MakeCluster = Callable[..., proxy.Cluster]


# -- helpers ------------------------------------------------------------------------------------


def new_cluster(make_cluster: MakeCluster, row_image: str = "full") -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(row_image=row_image)
    return cluster, proxy.connect(cluster.directory, cluster=cluster)


def decode(cluster: proxy.Cluster, entry: proxy.LogEntry) -> list[Any]:
    return cluster.format.decode(entry.payload, cluster.table_columns().get)


def schema_of(cluster: proxy.Cluster, name: str) -> list[tuple[Any, ...]]:
    return same_on_all(cluster, "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name=?", (name,))


# -- DDL and DML in one transaction, in their original order -------------------------------------


@IMAGES
def test_create_table_then_insert_in_one_explicit_transaction_is_one_entry_in_order(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    before = cluster.leader_lsn()
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER)")
    conn.executemany("INSERT INTO items(name, qty) VALUES (?, ?)", [(f"item{i}", i * 3) for i in range(50)])
    conn.execute("UPDATE items SET qty = qty + 1 WHERE id % 5 = 0")
    conn.execute("COMMIT")

    entries = cluster.entries(before + 1)
    assert len(entries) == 1, "the whole transaction must be exactly one log entry"
    events = decode(cluster, entries[0])
    assert events[0].kind == "SQL" and events[0].sql.startswith("CREATE TABLE items")
    assert [e.kind for e in events[1:]] == ["INSERT"] * 50  # updates of new rows fold into the inserts
    rows = same_on_all(cluster, "SELECT id, name, qty FROM items ORDER BY id")
    assert len(rows) == 50
    assert rows[5] == (6, "item5", 15)
    assert rows[4] == (5, "item4", 13)
    assert_identical(cluster)


@IMAGES
def test_create_table_inside_an_implicit_dml_transaction_commits_with_it(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT)")  # DDL commits by itself
    before = cluster.leader_lsn()
    conn.executemany("INSERT INTO orders(customer) VALUES (?)", [(f"c{i}",) for i in range(20)])
    assert conn.in_transaction
    conn.execute("CREATE TABLE order_lines(order_id INTEGER, line INTEGER, sku TEXT, PRIMARY KEY(order_id, line))")
    assert conn.in_transaction, "DDL inside an open DML transaction joins it"
    conn.executemany("INSERT INTO order_lines VALUES (?, ?, ?)",
                     [(o, n, f"sku-{o}-{n}") for o in range(1, 21) for n in range(3)])
    assert cluster.leader_lsn() == before, "nothing is logged before commit()"
    conn.commit()

    entries = cluster.entries(before + 1)
    assert len(entries) == 1
    kinds = [(e.kind, e.table) for e in decode(cluster, entries[0])]
    create_at = kinds.index(("SQL", None))
    assert kinds[:create_at] == [("INSERT", "orders")] * 20, "rows written before the DDL come first"
    assert kinds[create_at + 1:] == [("INSERT", "order_lines")] * 60
    assert same_on_all(cluster, "SELECT count(*) FROM orders") == [(20,)]
    assert same_on_all(cluster, "SELECT count(*), max(sku) FROM order_lines") == [(60, "sku-9-2")]
    assert_identical(cluster)


@IMAGES
def test_alter_table_add_column_then_update_it_in_one_transaction(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO people(name) VALUES (?)", [(f"p{i}",) for i in range(30)])
    conn.commit()
    cluster.wait_for_catchup(10)

    before = cluster.leader_lsn()
    conn.execute("BEGIN")
    conn.execute("UPDATE people SET name = upper(name) WHERE id <= 10")  # image against the old schema
    conn.execute("ALTER TABLE people ADD COLUMN email TEXT DEFAULT 'none'")
    conn.execute("UPDATE people SET email = lower(name) || '@example.org' WHERE id % 2 = 0")
    conn.execute("INSERT INTO people(name, email) VALUES ('late', 'late@example.org')")
    conn.execute("COMMIT")

    assert len(cluster.entries(before + 1)) == 1
    columns = same_on_all(cluster, "SELECT name FROM pragma_table_info('people')")
    assert columns == [("id",), ("name",), ("email",)]
    rows = same_on_all(cluster, "SELECT id, name, email FROM people ORDER BY id")
    assert rows[0] == (1, "P0", "none")
    assert rows[1] == (2, "P1", "p1@example.org")
    assert rows[19] == (20, "p19", "p19@example.org")
    assert rows[-1] == (31, "late", "late@example.org")
    assert_identical(cluster)


@IMAGES
def test_drop_table_removes_table_and_rows_on_followers(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE scratch(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE keep(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO scratch(v) VALUES (?)", [(str(i),) for i in range(40)])
    conn.executemany("INSERT INTO keep(v) VALUES (?)", [(str(i),) for i in range(40)])
    conn.commit()
    assert same_on_all(cluster, "SELECT count(*) FROM scratch") == [(40,)]

    conn.execute("BEGIN")
    conn.execute("DELETE FROM keep WHERE id > 30")
    conn.execute("DROP TABLE scratch")
    conn.execute("COMMIT")
    assert schema_of(cluster, "scratch") == []
    assert same_on_all(cluster, "SELECT count(*) FROM keep") == [(30,)]
    assert_identical(cluster)


@IMAGES
def test_create_index_replicates_and_unique_index_holds_on_followers(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, email TEXT, city TEXT)")
    conn.executemany("INSERT INTO accounts(email, city) VALUES (?, ?)",
                     [(f"u{i}@x.org", f"city{i % 7}") for i in range(100)])
    conn.commit()
    conn.execute("CREATE UNIQUE INDEX accounts_email ON accounts(email)")
    conn.execute("CREATE INDEX accounts_city ON accounts(city) WHERE city <> 'city0'")

    for index in ("accounts_email", "accounts_city"):
        assert len(schema_of(cluster, index)) == 1
    # The index is real on the follower: it is used by the planner and enforces uniqueness.
    follower = cluster.open_node(cluster.followers[0])
    try:
        plan = " ".join(str(r) for r in follower.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM accounts WHERE email='u5@x.org'"))
        assert "accounts_email" in plan
        with pytest.raises(apsw.ConstraintError):
            follower.execute("INSERT INTO accounts(email) VALUES ('u5@x.org')")
        assert follower.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        follower.close()
    with pytest.raises(proxy.IntegrityError):
        conn.execute("INSERT INTO accounts(email) VALUES ('u7@x.org')")
    conn.rollback()
    assert_identical(cluster)


@IMAGES
def test_create_view_replicates_and_reads_the_same_on_followers(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE sales(id INTEGER PRIMARY KEY, region TEXT, amount REAL)")
    conn.executemany("INSERT INTO sales(region, amount) VALUES (?, ?)",
                     [(f"r{i % 4}", i * 1.25) for i in range(80)])
    conn.commit()
    conn.execute("CREATE VIEW sales_by_region AS SELECT region, count(*) AS n, sum(amount) AS total "
                 "FROM sales GROUP BY region")
    assert len(schema_of(cluster, "sales_by_region")) == 1
    rows = same_on_all(cluster, "SELECT * FROM sales_by_region ORDER BY region")
    assert [r[:2] for r in rows] == [("r0", 20), ("r1", 20), ("r2", 20), ("r3", 20)]
    assert_identical(cluster)


@IMAGES
def test_create_trigger_replicates_and_trigger_rows_are_applied_exactly_once(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE stock(id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER)")
    conn.execute("CREATE TABLE audit(id INTEGER PRIMARY KEY, sku TEXT, action TEXT, old_qty, new_qty)")
    conn.execute("CREATE TRIGGER stock_ins AFTER INSERT ON stock BEGIN "
                 "INSERT INTO audit(sku, action, new_qty) VALUES (new.sku, 'insert', new.qty); END")
    conn.execute("CREATE TRIGGER stock_upd AFTER UPDATE OF qty ON stock BEGIN "
                 "INSERT INTO audit(sku, action, old_qty, new_qty) VALUES (new.sku, 'update', old.qty, new.qty); END")
    conn.execute("CREATE TRIGGER stock_del AFTER DELETE ON stock BEGIN "
                 "INSERT INTO audit(sku, action, old_qty) VALUES (old.sku, 'delete', old.qty); END")
    for name in ("stock_ins", "stock_upd", "stock_del"):
        assert len(schema_of(cluster, name)) == 1

    conn.executemany("INSERT INTO stock(sku, qty) VALUES (?, ?)", [(f"s{i}", i) for i in range(25)])
    conn.commit()
    conn.execute("UPDATE stock SET qty = qty * 2 WHERE id <= 10")
    conn.commit()
    conn.execute("DELETE FROM stock WHERE id > 20")
    conn.commit()

    leader_count = same_on_all(cluster, "SELECT count(*) FROM audit")
    assert leader_count == [(25 + 10 + 5,)], "every follower has exactly the leader's audit rows"
    assert same_on_all(cluster, "SELECT action, count(*) FROM audit GROUP BY action ORDER BY action") == [
        ("delete", 5), ("insert", 25), ("update", 10)]
    assert_identical(cluster)


# -- keys: rowid tables, WITHOUT ROWID, AUTOINCREMENT, primary key updates ------------------------


@IMAGES
def test_table_without_primary_key_is_replicated_by_rowid_including_after_deletes(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE events(kind TEXT, payload TEXT)")  # no PRIMARY KEY at all
    # Duplicate rows: only the rowid tells them apart.
    conn.executemany("INSERT INTO events VALUES (?, ?)", [("dup", "same")] * 10 + [("k", str(i)) for i in range(40)])
    conn.commit()
    conn.execute("DELETE FROM events WHERE rowid IN (2, 5, 9, 50)")  # some of the duplicates, and the last
    conn.execute("UPDATE events SET payload = 'changed' WHERE rowid IN (3, 4)")
    conn.commit()
    conn.executemany("INSERT INTO events VALUES (?, ?)", [("after", str(i)) for i in range(5)])  # reuses 50
    conn.commit()
    conn.execute("DELETE FROM events WHERE kind = 'k' AND CAST(payload AS INTEGER) % 3 = 0")
    conn.commit()

    rows = same_on_all(cluster, "SELECT rowid, kind, payload FROM events ORDER BY rowid")
    rowids = [r[0] for r in rows]
    assert 2 not in rowids and 5 not in rowids
    assert rows[rowids.index(3)] == (3, "dup", "changed")
    assert rows[-5:] == [(50 + i, "after", str(i)) for i in range(5)]
    assert same_on_all(cluster, "SELECT count(*) FROM events WHERE kind='dup'") == [(7,)]
    assert_identical(cluster)


@IMAGES
def test_without_rowid_table_with_composite_key(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE grades(student TEXT, course TEXT, term INTEGER, grade REAL, "
                 "PRIMARY KEY(student, course, term)) WITHOUT ROWID")
    conn.executemany("INSERT INTO grades VALUES (?, ?, ?, ?)",
                     [(f"s{s}", f"c{c}", t, s + c / 10) for s in range(10) for c in range(4) for t in (1, 2)])
    conn.commit()
    conn.execute("UPDATE grades SET grade = grade + 1 WHERE course = 'c1'")
    conn.execute("DELETE FROM grades WHERE student = 's3'")
    conn.execute("UPDATE grades SET term = 3 WHERE student = 's4' AND term = 2")  # key change
    conn.commit()

    assert same_on_all(cluster, "SELECT wr FROM pragma_table_list('grades')") == [(1,)]
    rows = same_on_all(cluster, "SELECT * FROM grades ORDER BY student, course, term")
    assert len(rows) == 80 - 8
    assert ("s4", "c0", 3, 4.0) in rows and ("s4", "c0", 2, 4.0) not in rows
    assert ("s2", "c1", 1, 3.1) in rows
    assert_identical(cluster)


@IMAGES
def test_autoincrement_counter_is_equal_on_every_node_even_when_max_row_deleted_in_same_transaction(
        make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE tickets(id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT)")
    conn.executemany("INSERT INTO tickets(title) VALUES (?)", [(f"t{i}",) for i in range(10)])
    conn.commit()
    # Insert beyond the max and delete those rows in the same transaction: the rows vanish from the
    # row images, but the counter moved on the leader and must move on the followers too.
    conn.executemany("INSERT INTO tickets(title) VALUES (?)", [(f"gone{i}",) for i in range(5)])
    conn.execute("DELETE FROM tickets WHERE title LIKE 'gone%'")
    conn.execute("DELETE FROM tickets WHERE id = 10")
    conn.commit()
    assert same_on_all(cluster, "SELECT name, seq FROM sqlite_sequence") == [("tickets", 15)]
    assert same_on_all(cluster, "SELECT max(id), count(*) FROM tickets") == [(9, 9)]

    conn.execute("INSERT INTO tickets(title) VALUES ('next')")
    conn.commit()
    assert same_on_all(cluster, "SELECT id FROM tickets WHERE title='next'") == [(16,)]
    assert same_on_all(cluster, "SELECT name, seq FROM sqlite_sequence") == [("tickets", 16)]
    assert_identical(cluster)


@IMAGES
def test_update_that_changes_the_primary_key(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE products(code TEXT PRIMARY KEY, name TEXT, price REAL)")
    conn.execute("CREATE TABLE numbered(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO products VALUES (?, ?, ?)", [(f"P{i:03}", f"prod {i}", i * 0.5) for i in range(30)])
    conn.executemany("INSERT INTO numbered VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 31)])
    conn.commit()
    conn.execute("UPDATE products SET code = 'X' || substr(code, 2) WHERE price >= 10")
    conn.execute("UPDATE numbered SET id = id + 1000 WHERE id % 3 = 0")
    conn.commit()

    codes = [r[0] for r in same_on_all(cluster, "SELECT code FROM products ORDER BY code")]
    assert "P019" in codes and "X020" in codes and "P020" not in codes
    ids = [r[0] for r in same_on_all(cluster, "SELECT id FROM numbered ORDER BY id")]
    assert 3 not in ids and 1003 in ids and len(ids) == 30
    assert_identical(cluster)


# -- PRAGMAs in the database header ------------------------------------------------------------


@IMAGES
def test_pragma_user_version_and_application_id_replicate(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("PRAGMA user_version = 42")
    conn.execute("PRAGMA application_id = 1234567")
    assert same_on_all(cluster, "PRAGMA user_version") == [(42,)]
    assert same_on_all(cluster, "PRAGMA application_id") == [(1234567,)]

    # Inside a transaction, between DDL and DML, as a schema migration does.
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE migrations(version INTEGER PRIMARY KEY, applied TEXT)")
    conn.executemany("INSERT INTO migrations VALUES (?, ?)", [(v, f"m{v}") for v in range(1, 44)])
    conn.execute("PRAGMA user_version = 43")
    conn.execute("COMMIT")
    assert same_on_all(cluster, "PRAGMA user_version") == [(43,)]
    assert same_on_all(cluster, "SELECT count(*) FROM migrations") == [(43,)]

    # A rolled-back change of user_version does not reach the followers.
    conn.execute("BEGIN")
    conn.execute("PRAGMA user_version = 99")
    conn.execute("ROLLBACK")
    assert same_on_all(cluster, "PRAGMA user_version") == [(43,)]
    assert_identical(cluster)


# -- values ----------------------------------------------------------------------------------------


@IMAGES
def test_values_nulls_blobs_unicode_bounds_and_floats_survive_exactly(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE vals(id INTEGER PRIMARY KEY, label TEXT, v, t TEXT, b BLOB)")
    values = [
        ("null", None),
        ("empty blob", b""),
        ("nul blob", b"\x00"),
        ("nul inside blob", b"ab\x00\x00cd\x00"),
        ("all bytes", bytes(range(256))),
        ("empty text", ""),
        ("emoji", "🦀🚀 ok 👩‍👩‍👧‍👦"),
        ("cjk", "日本語のテキスト 中文 한국어"),
        ("rtl and combining", "שלום é e\u0301"),
        ("max int", 2**63 - 1),
        ("min int", -(2**63)),
        ("zero", 0),
        ("minus one", -1),
        ("float", 3.141592653589793),
        ("negative float", -2.5e-300),
        ("tiny float", 5e-324),
        ("big float", 1.7976931348623157e308),
        ("inf", float("inf")),
        ("-inf", float("-inf")),
        ("negative zero", -0.0),
        ("text that looks like a number", "0123"),
    ]
    conn.executemany("INSERT INTO vals(label, v) VALUES (?, ?)", values)
    conn.commit()
    conn.execute("UPDATE vals SET t = label || ' ✓', b = CAST(label AS BLOB) WHERE id % 2 = 0")
    conn.execute("UPDATE vals SET v = NULL WHERE label = 'zero'")
    conn.commit()

    rows = same_on_all(cluster, "SELECT id, label, v, typeof(v), t, b FROM vals ORDER BY id")
    got = {label: (v, kind) for _, label, v, kind, _, _ in rows}
    assert got["null"] == (None, "null")
    assert got["empty blob"] == (b"", "blob")
    assert got["nul inside blob"] == (b"ab\x00\x00cd\x00", "blob")
    assert got["all bytes"] == (bytes(range(256)), "blob")
    assert got["empty text"] == ("", "text")
    assert got["emoji"] == ("🦀🚀 ok 👩‍👩‍👧‍👦", "text")
    assert got["cjk"] == ("日本語のテキスト 中文 한국어", "text")
    assert got["max int"] == (2**63 - 1, "integer")
    assert got["min int"] == (-(2**63), "integer")
    assert got["zero"] == (None, "null")
    assert got["tiny float"] == (5e-324, "real")
    assert got["inf"] == (float("inf"), "real")
    assert got["text that looks like a number"] == ("0123", "text")
    for follower in cluster.followers:
        conn_f = cluster.open_node(follower)
        try:
            (neg_zero,) = conn_f.execute("SELECT v FROM vals WHERE label='negative zero'").fetchone()
        finally:
            conn_f.close()
        assert neg_zero == 0.0
    assert_identical(cluster)


@IMAGES
def test_large_values_5mb_blob_and_1mb_text(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    big_blob = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    big_blob = big_blob[:-3] + b"\x00\x01\x00"
    big_text = ("replproxy ✓ 数据 " * 70000)[: 1024 * 1024]
    conn.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, name TEXT, body TEXT, data BLOB)")
    conn.execute("INSERT INTO docs(name, body, data) VALUES ('big', ?, ?)", (big_text, big_blob))
    conn.executemany("INSERT INTO docs(name, body) VALUES (?, ?)", [(f"small{i}", "x" * i) for i in range(10)])
    conn.commit()
    # Change a small column of the big row: the row images must still carry the row correctly.
    conn.execute("UPDATE docs SET name = 'big, renamed' WHERE id = 1")
    conn.commit()

    cluster.wait_for_catchup(10)
    for name in cluster.followers:
        follower = cluster.open_node(name)
        try:
            row = follower.execute("SELECT name, body, data, length(data) FROM docs WHERE id = 1").fetchone()
        finally:
            follower.close()
        assert row[0] == "big, renamed"
        assert row[1] == big_text
        assert row[2] == big_blob and row[3] == 5 * 1024 * 1024
    assert_identical(cluster)


# -- triggers and foreign-key cascades are applied exactly once ----------------------------------


@IMAGES
def test_foreign_key_cascades_and_audit_triggers_apply_exactly_once(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("PRAGMA foreign_keys = ON")
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    conn.execute("CREATE TABLE authors(id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE books(id INTEGER PRIMARY KEY, "
                 "author_id INTEGER REFERENCES authors(id) ON DELETE CASCADE ON UPDATE CASCADE, title TEXT)")
    conn.execute("CREATE TABLE reviews(id INTEGER PRIMARY KEY, "
                 "book_id INTEGER REFERENCES books(id) ON DELETE CASCADE, stars INTEGER)")
    conn.execute("CREATE TABLE audit_log(id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT, ref INTEGER)")
    conn.execute("CREATE TRIGGER books_deleted AFTER DELETE ON books BEGIN "
                 "INSERT INTO audit_log(what, ref) VALUES ('book deleted', old.id); END")
    conn.execute("CREATE TRIGGER reviews_deleted AFTER DELETE ON reviews BEGIN "
                 "INSERT INTO audit_log(what, ref) VALUES ('review deleted', old.id); END")

    conn.executemany("INSERT INTO authors VALUES (?, ?)", [(a, f"author{a}") for a in range(1, 6)])
    conn.executemany("INSERT INTO books VALUES (?, ?, ?)", [(b, (b % 5) + 1, f"book{b}") for b in range(1, 31)])
    conn.executemany("INSERT INTO reviews(book_id, stars) VALUES (?, ?)",
                     [(b, s) for b in range(1, 31) for s in (1, 3, 5)])
    conn.commit()
    conn.execute("DELETE FROM authors WHERE id IN (1, 2)")  # cascades: 12 books, 36 reviews
    conn.commit()
    conn.execute("UPDATE authors SET id = 50 WHERE id = 5")  # ON UPDATE CASCADE
    conn.commit()

    assert same_on_all(cluster, "SELECT count(*) FROM authors") == [(3,)]
    assert same_on_all(cluster, "SELECT count(*) FROM books") == [(18,)]
    assert same_on_all(cluster, "SELECT count(*) FROM reviews") == [(54,)]
    assert same_on_all(cluster, "SELECT count(*) FROM books WHERE author_id = 50") == [(6,)]
    audit = same_on_all(cluster, "SELECT what, count(*) FROM audit_log GROUP BY what ORDER BY what")
    assert audit == [("book deleted", 12), ("review deleted", 36)], "not doubled on any follower"
    assert same_on_all(cluster, "SELECT seq FROM sqlite_sequence WHERE name='audit_log'") == [(48,)]
    for name in cluster.followers:
        follower = cluster.open_node(name)
        try:
            follower.execute("PRAGMA foreign_keys = ON")
            assert follower.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            follower.close()
    assert_identical(cluster)


# -- CREATE TABLE ... AS SELECT ------------------------------------------------------------------


@IMAGES
def test_create_table_as_select_replicates_its_rows(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE src(id INTEGER PRIMARY KEY, grp TEXT, amount INTEGER)")
    conn.executemany("INSERT INTO src(grp, amount) VALUES (?, ?)", [(f"g{i % 6}", i) for i in range(120)])
    conn.commit()
    conn.execute("CREATE TABLE totals AS SELECT grp, sum(amount) AS total, count(*) AS n FROM src GROUP BY grp")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE big_ones AS SELECT * FROM src WHERE amount >= 100")
    conn.execute("DELETE FROM big_ones WHERE amount % 2 = 0")
    conn.execute("COMMIT")

    assert same_on_all(cluster, "SELECT count(*), sum(total), sum(n) FROM totals") == [(6, sum(range(120)), 120)]
    assert same_on_all(cluster, "SELECT rowid, * FROM totals ORDER BY rowid")[0][1] == "g0"
    assert same_on_all(cluster, "SELECT count(*) FROM big_ones") == [(10,)]

    # The copied rows are logged as row images, not recomputed on the followers: values that a
    # replay would compute differently (random(), the clock) are the leader's.
    before = cluster.leader_lsn()
    conn.execute("CREATE TABLE draws AS SELECT random() AS r, strftime('%f', 'now') AS t, 'x' AS k "
                 "UNION ALL SELECT random(), strftime('%f', 'now'), 'y'")
    (entry,) = cluster.entries(before + 1)
    events = decode(cluster, entry)
    assert events[0].kind == "SQL" and events[0].sql.startswith("CREATE TABLE draws")
    assert [(e.kind, e.table) for e in events[1:]] == [("INSERT", "draws")] * 2
    assert len(same_on_all(cluster, "SELECT rowid, r, t, k FROM draws ORDER BY rowid")) == 2
    totals_entry = cluster.entries(3, 1)[0]
    assert [e.kind for e in decode(cluster, totals_entry)] == ["SQL"] + ["INSERT"] * 6
    assert_identical(cluster)


# -- savepoints ------------------------------------------------------------------------------------


@IMAGES
def test_rolled_back_savepoints_never_reach_followers(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE ledger(id INTEGER PRIMARY KEY, memo TEXT, amount INTEGER)")
    conn.executemany("INSERT INTO ledger(memo, amount) VALUES (?, ?)", [(f"base{i}", i) for i in range(10)])
    conn.commit()
    before = cluster.leader_lsn()

    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ledger(memo, amount) VALUES (?, ?)", [(f"kept{i}", 100 + i) for i in range(5)])
    conn.execute("SAVEPOINT risky")
    conn.execute("CREATE TABLE temp_work(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO temp_work(v) VALUES (?)", [(str(i),) for i in range(20)])
    conn.execute("UPDATE ledger SET amount = -1 WHERE memo LIKE 'base%'")
    conn.execute("INSERT INTO ledger(memo, amount) VALUES ('undone', 0)")
    conn.execute("SAVEPOINT inner_sp")
    conn.execute("DELETE FROM ledger WHERE id <= 5")
    conn.execute("RELEASE inner_sp")
    conn.execute("ROLLBACK TO risky")
    conn.execute("UPDATE ledger SET amount = amount * 10 WHERE id = 1")  # savepoint 'risky' still open
    conn.execute("SAVEPOINT again")
    conn.execute("INSERT INTO ledger(memo, amount) VALUES ('dropped again', 0)")
    conn.execute("ROLLBACK TO again")
    conn.execute("RELEASE again")
    conn.execute("SAVEPOINT keep_me")
    conn.execute("INSERT INTO ledger(memo, amount) VALUES ('released', 7)")
    conn.execute("RELEASE keep_me")
    conn.execute("RELEASE risky")
    conn.execute("COMMIT")

    entries = cluster.entries(before + 1)
    assert len(entries) == 1
    events = decode(cluster, entries[0])
    assert all(e.kind != "SQL" for e in events), "the rolled-back CREATE TABLE is not in the log"
    assert all(e.table == "ledger" for e in events)
    assert schema_of(cluster, "temp_work") == []
    memos = [r[0] for r in same_on_all(cluster, "SELECT memo FROM ledger ORDER BY id")]
    assert memos == [f"base{i}" for i in range(10)] + [f"kept{i}" for i in range(5)] + ["released"]
    assert same_on_all(cluster, "SELECT amount FROM ledger WHERE id = 1") == [(0,)]
    assert same_on_all(cluster, "SELECT amount FROM ledger WHERE id = 2") == [(1,)]

    # A SAVEPOINT outside a transaction starts one; releasing it commits one entry.
    before = cluster.leader_lsn()
    conn.execute("SAVEPOINT outer_sp")
    conn.execute("INSERT INTO ledger(memo, amount) VALUES ('via savepoint', 1)")
    conn.execute("SAVEPOINT nested")
    conn.execute("CREATE TABLE never(x)")
    conn.execute("ROLLBACK TO nested")
    conn.execute("RELEASE outer_sp")
    assert not conn.in_transaction
    assert len(cluster.entries(before + 1)) == 1
    assert schema_of(cluster, "never") == []
    assert same_on_all(cluster, "SELECT count(*) FROM ledger WHERE memo = 'via savepoint'") == [(1,)]
    assert_identical(cluster)


# -- the log itself ------------------------------------------------------------------------------


@IMAGES
def test_log_has_one_entry_per_committed_write_transaction_gapless_with_epoch_format_checksum_time(
        make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    started = time.time()
    conn.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER)")  # 1 entry
    committed = 1
    for batch in range(12):
        conn.executemany("INSERT INTO kv VALUES (?, ?)", [(f"k{batch}-{i}", i) for i in range(5)])
        if batch % 3 == 2:
            conn.rollback()  # leaves no entry
        else:
            conn.commit()
            committed += 1
    conn.execute("BEGIN")
    conn.execute("UPDATE kv SET v = v + 1")
    conn.execute("ROLLBACK")
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM kv").fetchall()
    conn.execute("COMMIT")  # read-only transaction: no entry
    conn.execute("BEGIN")
    conn.execute("DELETE FROM kv WHERE v = 0")
    conn.execute("COMMIT")
    committed += 1
    with pytest.raises(proxy.IntegrityError):
        conn.execute("INSERT INTO kv VALUES ('k0-1', 1)")
    conn.rollback()
    finished = time.time()

    entries = cluster.entries()
    assert [e.lsn for e in entries] == list(range(1, committed + 1))
    assert cluster.leader_lsn() == committed
    for entry in entries:
        assert entry.epoch == 1
        assert entry.format == "row"
        assert entry.checksum_ok and entry.checksum == store_log.checksum(entry.payload)
        assert started - 1 <= entry.committed_at <= finished + 1
    assert [e.committed_at for e in entries] == sorted(e.committed_at for e in entries)
    assert same_on_all(cluster, "SELECT count(*) FROM kv") == [(8 * 5 - 8,)]
    positions = cluster.positions()
    assert set(positions.values()) == {committed}
    assert_identical(cluster)


# -- replproxy's internal tables -----------------------------------------------------------------


def test_internal_tables_are_refused_through_the_proxy_not_replicated_and_ignored_by_verify(make_cluster):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(str(i),) for i in range(25)])
    conn.commit()
    lsn = cluster.wait_for_catchup(10)

    refused = [
        "INSERT INTO _replproxy_log(lsn, epoch, format, payload, checksum, committed_at) "
        "VALUES (99, 1, 'row', x'', 0, 0)",
        "UPDATE _replproxy_state SET applied_lsn = 0",
        "DELETE FROM _replproxy_meta",
        "UPDATE _replproxy_log SET payload = x'00'",
        "DROP TABLE _replproxy_log",
        "CREATE TABLE _replproxy_extra(x)",
        "CREATE INDEX _replproxy_idx ON t(v)",
        "CREATE INDEX t_log_idx ON _replproxy_log(epoch)",
        "ALTER TABLE _replproxy_state ADD COLUMN x",
    ]
    for sql in refused:
        with pytest.raises(proxy.ProgrammingError):
            conn.execute(sql)
        conn.rollback()
    assert cluster.leader_lsn() == lsn, "refused statements leave no entry"

    # A user trigger writing them is refused when it would fire (its body is a write too).
    conn.execute("CREATE TABLE meddle(x)")
    conn.execute("CREATE TRIGGER meddle_ins AFTER INSERT ON meddle BEGIN DELETE FROM _replproxy_log; END")
    lsn = cluster.leader_lsn()
    with pytest.raises(proxy.ProgrammingError):
        conn.execute("INSERT INTO meddle VALUES (1)")
    conn.rollback()
    assert [e.lsn for e in cluster.entries()] == list(range(1, lsn + 1)), "the log is intact"
    conn.execute("DROP TRIGGER meddle_ins")
    conn.executemany("INSERT INTO meddle VALUES (?)", [(i,) for i in range(3)])
    conn.commit()

    # Reads of the internal tables are allowed (and served by the leader).
    cur = conn.execute("SELECT count(*) FROM _replproxy_log")
    assert cur.fetchone() == (cluster.leader_lsn(),) and cur.node == cluster.leader

    # No entry carries internal tables, and followers hold only their own state.
    for entry in cluster.entries():
        for event in decode(cluster, entry):
            assert not (event.table or "").startswith("_replproxy_")
    cluster.wait_for_catchup(10)
    for name in cluster.followers:
        follower = cluster.open_node(name)
        try:
            # Its log is a copy of the leader's entries it applied, nothing else.
            mine = follower.execute("SELECT lsn, checksum FROM _replproxy_log ORDER BY lsn").fetchall()
            assert mine == [(e.lsn, e.checksum) for e in cluster.entries()]
            assert dict(follower.execute("SELECT key, value FROM _replproxy_meta"))["node"] == name
            assert store_node.read_state(follower).applied_lsn == cluster.leader_lsn()
            user_tables = [r[0] for r in follower.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE '\\_replproxy\\_%' ESCAPE '\\' "
                "ORDER BY name")]
            assert user_tables == ["meddle", "t"]
        finally:
            follower.close()

    # verify compares user data only: followers' internal tables differ from the leader's by design.
    follower = cluster.open_node(cluster.followers[0])
    try:
        follower.execute("INSERT INTO _replproxy_meta(key, value) VALUES ('note', 'local only')")
    finally:
        follower.close()
    report = assert_identical(cluster)
    assert report.tables == 2


# -- the decoder -----------------------------------------------------------------------------------


@IMAGES
def test_decoder_shows_tables_operations_and_row_values(make_cluster, row_image):
    cluster, conn = new_cluster(make_cluster, row_image)
    conn.execute("CREATE TABLE city(id INTEGER PRIMARY KEY, name TEXT, pop INTEGER)")
    conn.execute("CREATE TABLE tags(label TEXT, weight REAL)")  # captured by rowid
    conn.executemany("INSERT INTO city VALUES (?, ?, ?)",
                     [(1, "Oslo", 700000), (2, "東京", 14000000), (3, "Lima", None)])
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [("a", 0.5), ("b", 1.5)])
    conn.commit()
    conn.execute("UPDATE city SET pop = 710000 WHERE id = 1")
    conn.execute("DELETE FROM city WHERE id = 3")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()

    entries = cluster.entries()
    create_city, create_tags, inserts, changes = [decode(cluster, e) for e in entries]
    assert [(e.kind, e.sql) for e in create_city] == [
        ("SQL", "CREATE TABLE city(id INTEGER PRIMARY KEY, name TEXT, pop INTEGER)")]
    assert create_tags[0].sql.startswith("CREATE TABLE tags")
    assert [(e.kind, e.table, e.new) for e in inserts] == [
        ("INSERT", "city", {"id": 1, "name": "Oslo", "pop": 700000}),
        ("INSERT", "city", {"id": 2, "name": "東京", "pop": 14000000}),
        ("INSERT", "city", {"id": 3, "name": "Lima", "pop": None}),
        ("INSERT", "tags", {"rowid": 1, "label": "a", "weight": 0.5}),
        ("INSERT", "tags", {"rowid": 2, "label": "b", "weight": 1.5}),
    ]
    by_kind = {e.kind: e for e in changes}
    assert set(by_kind) == {"UPDATE", "DELETE", "SQL"}
    update, delete = by_kind["UPDATE"], by_kind["DELETE"]
    assert update.table == "city" and update.new == {"pop": 710000}
    assert delete.table == "city"
    if row_image == "full":
        assert update.old == {"id": 1, "pop": 700000}  # key and before image of what changed
        assert delete.old == {"id": 3, "name": "Lima", "pop": None}
    else:
        assert update.old == {"id": 1}  # patchsets carry the key only
        assert delete.old == {"id": 3}
    assert by_kind["SQL"].sql == "PRAGMA user_version = 3"
    assert update.as_dict()["table"] == "city"
    assert_identical(cluster)


@pytest.mark.parametrize("fmt, image", [("row", "full"), ("row", "minimal"), ("trigger", "full")])
def test_insert_or_fail_that_stops_midway_leaves_no_counter_on_followers_either(make_cluster, fmt, image):
    # SQLite keeps the rows inserted before the failing one but never writes the AUTOINCREMENT
    # counter; a follower applying those rows would write one, so the entry says there is none.
    cluster = make_cluster(format=fmt, row_image=image)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(a, b INTEGER PRIMARY KEY AUTOINCREMENT)")
    conn.commit()
    with pytest.raises(proxy.IntegrityError, match="UNIQUE"):
        conn.execute("INSERT OR FAIL INTO t(a, b) VALUES (1, 4), (2, 4)")
    conn.commit()
    rows = same_on_all(cluster, "SELECT a, b FROM t")
    assert rows == [(1, 4)]
    assert same_on_all(cluster, "SELECT count(*) FROM sqlite_sequence") == [(0,)]
    conn.execute("INSERT INTO t(a) VALUES (3)")
    conn.commit()
    assert same_on_all(cluster, "SELECT a, b FROM t ORDER BY b") == [(1, 4), (3, 5)]
    assert_identical(cluster)
    conn.close()
