"""Undoing log entries (`LogFormat.invert`): what a deposed leader needs to take back the
transactions the new leader never got, last first.

Workloads run through the DB-API (`proxy.connect`); the undo runs on an in-memory copy of the
leader file, as a follower applies (inside a transaction, triggers disabled), and every state it
walks back through is compared with the leader's state recorded at that LSN (`verify.fingerprint`:
schema, values with their storage classes, rowids of rowid-keyed tables) and, at the end, with a
follower held at the starting position.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import pytest
from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import logformats
import proxy
from logformats import ApplyError, NotInvertibleError, codec
from logformats.row import TAG_CHANGESET
from logformats.statement import payload_items
from proxy.cluster.verify import fingerprint
from proxy.store import node as store_node

MakeCluster = Callable[..., proxy.Cluster]

SCHEMA = [
    "CREATE TABLE customers(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT NOT NULL, "
    "score REAL, photo BLOB)",
    "CREATE TABLE orders(id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "customer INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE, total REAL, note)",
    "CREATE TABLE notes(body TEXT, n)",  # no PRIMARY KEY: identified by rowid
    "CREATE TABLE pairs(a TEXT NOT NULL, b INTEGER NOT NULL, v, PRIMARY KEY(a, b))",
    "CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID",
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, customer INTEGER, old_score REAL, new_score REAL)",
    "CREATE TRIGGER score_audit AFTER UPDATE OF score ON customers BEGIN "
    "INSERT INTO audit(customer, old_score, new_score) VALUES (OLD.id, OLD.score, NEW.score); END",
]


# -- helpers ----------------------------------------------------------------------------------------


def user_state(conn: apsw.Connection) -> tuple[Any, ...]:
    """What must come back exactly: schema, header pragmas, every user table (not the counters)."""
    fp = fingerprint(conn)
    return fp.schema, fp.pragmas, fp.tables


def sequence(conn: apsw.Connection) -> dict[str, int]:
    return dict(fingerprint(conn).sequence)


def leader_copy(cluster: proxy.Cluster) -> apsw.Connection:
    """An in-memory copy of the leader file, set up as an applier connection."""
    source = cluster.open_node(cluster.leader)
    try:
        copy = apsw.Connection(":memory:")
        with copy.backup("main", source, "main") as backup:
            backup.step()
    finally:
        source.close()
    copy.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    return copy


def undo(conn: apsw.Connection, fmt: logformats.LogFormat, payload: bytes) -> None:
    """Undo one entry in its own transaction; nothing of it stays if it fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        fmt.apply(conn, fmt.invert(payload))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def assert_not_lowered(now: dict[str, int], before: dict[str, int]) -> None:
    for table, seq in before.items():
        assert now.get(table, 0) >= seq, f"sqlite_sequence of {table} went down: {now} < {before}"


def chunk_tags(payload: bytes) -> list[bytes]:
    return [tag for tag, _data in codec.iter_chunks(payload)]


@dataclass
class Workload:
    cluster: proxy.Cluster
    follower: str
    start: int  # the LSN the follower is held at
    states: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # leader user state per LSN
    sequences: dict[int, dict[str, int]] = field(default_factory=dict)
    savepoint_lsn: int = 0

    def lost(self) -> list[proxy.LogEntry]:
        return self.cluster.entries(self.start + 1)


def run_workload(make_cluster: MakeCluster, format: str = "row", row_image: str = "full") -> Workload:
    """Schema and seed (the follower is held there), then seven transactions the follower never gets."""
    cluster = make_cluster(format=format, row_image=row_image, followers=1)
    conn = proxy.connect(cluster.directory, cluster=cluster, consistency="strong")
    work = Workload(cluster, cluster.followers[0], 0)

    def commit() -> None:
        conn.commit()
        lsn = cluster.leader_lsn()
        leader = cluster.open_node(cluster.leader)
        try:
            work.states[lsn] = user_state(leader)
            work.sequences[lsn] = sequence(leader)
        finally:
            leader.close()

    for sql in SCHEMA:
        conn.execute(sql)
    commit()
    conn.executemany("INSERT INTO customers(id, email, name, score, photo) VALUES (?, ?, ?, ?, ?)",
                     [(i, f"c{i}@x", f"cust {i}", i * 1.25, bytes([i, 0, 255])) for i in range(1, 9)])
    conn.executemany("INSERT INTO orders(customer, total, note) VALUES (?, ?, ?)",
                     [(1 + i % 4, 10.5 * i, None if i % 3 else f"n{i}") for i in range(12)])
    conn.executemany("INSERT INTO notes(body, n) VALUES (?, ?)", [(f"note {i}", i) for i in range(6)])
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)",
                     [(a, b, f"{a}{b}") for a in ("x", "y") for b in range(3)])
    conn.executemany("INSERT INTO kv VALUES (?, ?)", [("a", 1), ("b", 2.5), ("c", b"\x00\x01"), ("d", None)])
    commit()
    work.start = cluster.wait_for_catchup(10)
    cluster.pause(work.follower)

    # 1. inserts of every storage class, across tables
    conn.execute("INSERT INTO customers(id, email, name, score, photo) VALUES (20, NULL, 'no email', NULL, X'')")
    conn.executemany("INSERT INTO orders(customer, total, note) VALUES (?, ?, ?)",
                     [(20, 1e300, "big"), (2, -0.0, b"\xff"), (3, 7, 7)])
    conn.execute("INSERT INTO notes(body, n) VALUES ('late', 3.5)")
    conn.execute("INSERT INTO kv VALUES ('e', 'text'), ('f', 9223372036854775807)")
    commit()
    # 2. a user trigger fires: audit rows are images too (randomblob() per row: row images in mixed)
    conn.execute("UPDATE customers SET score = score * 1.5, photo = randomblob(2) WHERE id % 2 = 0")
    commit()
    # 3. key-changing updates, a rowid move, storage-class changes
    conn.execute("UPDATE customers SET id = 103 WHERE id = 3")
    conn.execute("UPDATE kv SET k = 'b-moved' WHERE k = 'b'")
    conn.execute("UPDATE pairs SET b = b + 10 WHERE a = 'x' AND b = 1")
    conn.execute("UPDATE notes SET rowid = rowid + 1000 WHERE n = 2")
    conn.execute("UPDATE kv SET v = CAST(v AS REAL) WHERE k = 'a'")
    conn.execute("UPDATE pairs SET v = 7 WHERE a = 'y'")
    commit()
    # 4. ON DELETE CASCADE
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("DELETE FROM customers WHERE id = 1")
    conn.execute("DELETE FROM notes WHERE n IN (0, 4)")
    commit()
    # 5. savepoints split the session: customer 50 is inserted in one chunk, changed in later ones
    conn.execute("INSERT INTO customers(id, email, name, score) VALUES (50, 'c50@x', 'fifty', 5.0)")
    conn.execute("SAVEPOINT a")
    conn.execute("UPDATE customers SET name = 'fifty renamed' WHERE id = 50")
    conn.execute("INSERT INTO kv VALUES ('g', 'in savepoint')")
    conn.execute("SAVEPOINT b")
    conn.execute("DELETE FROM notes")
    conn.execute("ROLLBACK TO b")
    conn.execute("UPDATE customers SET score = NULL WHERE id = 50")
    conn.execute("RELEASE a")
    conn.execute("DELETE FROM customers WHERE id = 50 - 45")
    conn.execute("INSERT INTO notes(body, n) VALUES ('after savepoints', NULL)")
    commit()
    work.savepoint_lsn = cluster.leader_lsn()
    # 6. AUTOINCREMENT: the highest keys are deleted, the counter stays above them
    conn.executemany("INSERT INTO orders(customer, total) VALUES (?, ?)", [(2, 1.0), (2, 2.0), (4, 3.0)])
    conn.execute("DELETE FROM orders WHERE id >= (SELECT max(id) - 1 FROM orders)")
    commit()
    # 7. REPLACE deletes the row in its way; two UNIQUE values swapped through a temporary one
    conn.execute("INSERT OR REPLACE INTO customers(id, email, name) VALUES (60, 'c6@x', 'usurper')")
    conn.execute("UPDATE customers SET email = 'tmp' WHERE id = 7")
    conn.execute("UPDATE customers SET email = 'c7@x' WHERE id = 8")
    conn.execute("UPDATE customers SET email = 'c8@x' WHERE id = 7")
    commit()
    conn.close()
    return work


def held_follower(work: Workload) -> apsw.Connection:
    conn = work.cluster.open_node(work.follower)
    assert store_node.read_state(conn).applied_lsn == work.start, "the follower must be held at the start"
    return conn


# -- row format, full images --------------------------------------------------------------------------


def test_row_undo_walks_back_through_every_state_to_the_held_follower(make_cluster):
    work = run_workload(make_cluster)
    fmt = work.cluster.format
    lost = work.lost()
    assert len(lost) == 7 and all(e.format == "row" for e in lost)
    copy = leader_copy(work.cluster)
    final_sequence = sequence(copy)
    for entry in reversed(lost):
        undo(copy, fmt, entry.payload)
        assert user_state(copy) == work.states[entry.lsn - 1], f"undoing entry {entry.lsn}"
        # Counters never go down: keys an undone transaction handed out are not handed out again.
        assert_not_lowered(sequence(copy), final_sequence)
    assert final_sequence["orders"] > work.sequences[work.start]["orders"]
    assert sequence(copy) == final_sequence  # no undo here re-inserts a key above its counter
    follower = held_follower(work)
    try:
        assert user_state(copy) == user_state(follower)
    finally:
        follower.close()


def test_row_inverses_merged_by_apply_many_give_the_same_start(make_cluster):
    # A follower applies batches merged into one changegroup; inverses must survive that too.
    work = run_workload(make_cluster)
    fmt = work.cluster.format
    copy = leader_copy(work.cluster)
    copy.execute("BEGIN IMMEDIATE")
    fmt.apply_many(copy, [fmt.invert(e.payload) for e in reversed(work.lost())])
    copy.execute("COMMIT")
    assert user_state(copy) == work.states[work.start]


def test_entry_with_several_changeset_chunks_is_undone_last_chunk_first(make_cluster):
    work = run_workload(make_cluster)
    fmt = work.cluster.format
    entries = {e.lsn: e for e in work.lost()}
    payload = entries[work.savepoint_lsn].payload
    assert chunk_tags(payload).count(TAG_CHANGESET) >= 3, "savepoints must have split the session"
    inverse = fmt.invert(payload)
    assert set(chunk_tags(inverse)) == {TAG_CHANGESET}, "counters are dropped"

    # Undone chunk by chunk in the original order, the insert of customer 50 would be undone while
    # the row still holds the later values: a conflict. Last chunk first is the only exact order.
    wrong_order = codec.pack_chunks([(TAG_CHANGESET, apsw.Changeset.invert(data))
                                     for tag, data in codec.iter_chunks(payload) if tag == TAG_CHANGESET])
    copy = leader_copy(work.cluster)
    for later in sorted(entries, reverse=True):
        if later > work.savepoint_lsn:
            undo(copy, fmt, entries[later].payload)
    copy.execute("BEGIN IMMEDIATE")
    with pytest.raises(ApplyError, match="customers"):
        fmt.apply(copy, wrong_order)
    copy.execute("ROLLBACK")
    undo(copy, fmt, payload)
    assert user_state(copy) == work.states[work.savepoint_lsn - 1]


def test_inverse_on_a_database_not_in_the_entry_state_raises_apply_error(make_cluster):
    work = run_workload(make_cluster)
    fmt = work.cluster.format
    lost = work.lost()
    copy = leader_copy(work.cluster)
    before = user_state(copy)
    # Out of order: entry 2 raised customer 6's score, but entry 7 has since replaced customer 6.
    with pytest.raises(ApplyError, match="conflict on table 'customers' at key 6"):
        undo(copy, fmt, lost[1].payload)
    assert user_state(copy) == before, "a failed undo keeps nothing"
    undo(copy, fmt, lost[-1].payload)
    # Twice: the rows it would put back are already back.
    with pytest.raises(ApplyError, match="conflict on table"):
        undo(copy, fmt, lost[-1].payload)
    # On the held follower none of the lost rows exist.
    follower = held_follower(work)
    try:
        follower.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        with pytest.raises(ApplyError):
            undo(follower, fmt, lost[-1].payload)
    finally:
        follower.close()


def test_inverse_of_the_inverse_redoes_the_entry_without_its_counters(make_cluster):
    work = run_workload(make_cluster)
    fmt = work.cluster.format
    copy = leader_copy(work.cluster)
    for entry in reversed(work.lost()):
        undo(copy, fmt, entry.payload)
    for entry in work.lost():
        undo(copy, fmt, fmt.invert(entry.payload))
        assert user_state(copy) == work.states[entry.lsn]


def test_undo_never_lowers_a_counter_and_raises_it_only_for_a_key_moved_above_it(make_cluster):
    cluster = make_cluster(followers=0)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [("a",), ("b",), ("c",)])
    conn.commit()
    start = cluster.leader_lsn()
    copy = leader_copy(cluster)
    before = user_state(copy)
    copy.close()
    conn.execute("INSERT INTO t(v) VALUES ('d')")
    conn.commit()
    conn.execute("UPDATE t SET id = 10 WHERE id = 1")  # an UPDATE leaves the counter at 4
    conn.commit()
    conn.execute("DELETE FROM t WHERE id = 10")
    conn.commit()
    copy = leader_copy(cluster)
    assert sequence(copy) == {"t": 4}
    for entry in reversed(cluster.entries(start + 1)):
        undo(copy, cluster.format, entry.payload)
    assert user_state(copy) == before
    # Key 4 stays handed out. Putting row 10 back is an insert above the counter, which SQLite
    # raises as for any insert: higher than the leader's 4, never lower.
    assert sequence(copy) == {"t": 10}


# -- formats and entries that cannot be undone ------------------------------------------------------


@pytest.mark.parametrize("format, row_image, reason", [
    ("row", "minimal", "row_image=minimal"),
    ("trigger", "full", "images of table"),
])
def test_formats_without_before_images_refuse_every_entry_of_the_workload(make_cluster, format, row_image,
                                                                            reason):
    work = run_workload(make_cluster, format, row_image)
    fmt = work.cluster.format
    lost = work.lost()
    assert len(lost) == 7
    for entry in lost:
        with pytest.raises(NotInvertibleError, match=reason) as info:
            fmt.invert(entry.payload)
        assert str(info.value).startswith(f"{format} entries cannot be undone: ")
        assert info.value.format == format


def test_mixed_workload_undoes_only_the_entries_made_of_row_images(make_cluster):
    work = run_workload(make_cluster, "mixed")
    fmt = work.cluster.format
    undoable = []
    for entry in work.lost():
        kinds = {kind for kind, _item in payload_items(entry.payload)}
        if "stmt" in kinds:
            with pytest.raises(NotInvertibleError, match="a statement does not carry the rows it changed"):
                fmt.invert(entry.payload)
        else:
            assert {kind for kind, _item in payload_items(fmt.invert(entry.payload))} <= {"rows"}
            undoable.append(entry.lsn)
    # The multi-row UPDATE computing randomblob() per row is unsafe as a statement.
    assert undoable == [work.start + 2]


def test_statement_entries_are_not_invertible(make_cluster):
    cluster = make_cluster(format="statement", followers=0)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.commit()
    start = cluster.leader_lsn()
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(i,) for i in range(5)])
    conn.commit()
    conn.execute("UPDATE t SET v = v * 2 WHERE id > 2")
    conn.execute("DELETE FROM t WHERE id = 1")
    conn.commit()
    entries = cluster.entries(start + 1)
    assert len(entries) == 2
    for entry in entries:
        with pytest.raises(NotInvertibleError) as info:
            cluster.format.invert(entry.payload)
        assert str(info.value) == ("statement entries cannot be undone: "
                                   "a statement does not carry the rows it changed")


def test_trigger_images_lack_old_values_and_replaced_rows(make_cluster):
    cluster = make_cluster(format="trigger", followers=0)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT UNIQUE, v)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, "a", 1), (2, "b", 2)])
    conn.commit()
    start = cluster.leader_lsn()
    conn.execute("UPDATE t SET v = 10 WHERE id = 1")
    conn.commit()
    conn.execute("DELETE FROM t WHERE id = 1")
    conn.commit()
    # Replaces row 2 (same email): no delete trigger fires, the entry is one INSERT image, so
    # deleting the inserted row would not bring row 2 back.
    conn.execute("INSERT OR REPLACE INTO t VALUES (3, 'b', 3)")
    conn.commit()
    update, delete, replace = cluster.entries(start + 1)
    assert [e.kind for e in cluster.format.decode(replace.payload)] == ["INSERT"]
    for entry, words in ((update, "UPDATE images of table 't' hold the old key"),
                         (delete, "DELETE images of table 't' hold the key"),
                         (replace, "INSERT images of table 't' cannot show whether the insert replaced")):
        with pytest.raises(NotInvertibleError, match=words):
            cluster.format.invert(entry.payload)


@pytest.mark.parametrize("format", ["row", "trigger", "mixed"])
@pytest.mark.parametrize("sql, named", [
    ("CREATE TABLE extra(x)", "CREATE TABLE extra"),
    ("CREATE TABLE copied AS SELECT id, random() AS r FROM t", "CREATE TABLE"),
    ("ALTER TABLE t ADD COLUMN w", "ALTER TABLE t ADD COLUMN w"),
    ("CREATE INDEX t_v ON t(v)", "CREATE INDEX t_v"),
    ("PRAGMA user_version = 7", "user_version"),
])
def test_entries_with_schema_changes_are_not_invertible(make_cluster, format, sql, named):
    cluster = make_cluster(format=format, followers=0)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(i,) for i in range(3)])
    conn.commit()
    start = cluster.leader_lsn()
    # Row images before the schema change (in every format: random() per row is unsafe as a statement).
    conn.execute("UPDATE t SET v = random() WHERE id <= 2")
    conn.execute(sql)
    conn.commit()
    (entry,) = cluster.entries(start + 1)
    with pytest.raises(NotInvertibleError, match=named) as info:
        cluster.format.invert(entry.payload)
    assert info.value.format == format


def test_mixed_entries_of_row_images_are_undone_and_statement_entries_refused(make_cluster):
    cluster = make_cluster(format="mixed", followers=0)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("CREATE TABLE n(body, x)")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [(i,) for i in range(6)])
    states: dict[int, tuple[Any, ...]] = {}

    def commit() -> None:
        conn.commit()
        leader = cluster.open_node(cluster.leader)
        try:
            states[cluster.leader_lsn()] = user_state(leader)
        finally:
            leader.close()

    commit()
    start = cluster.leader_lsn()
    # random() per row, INSERT ... SELECT in a random order and LIMIT without ORDER BY are unsafe as
    # statements: the mixed format logs their row images.
    conn.execute("UPDATE t SET v = 'statement' WHERE id = 4")
    conn.execute("UPDATE t SET v = random() WHERE id >= 5")
    commit()
    conn.execute("UPDATE t SET v = random() WHERE id <= 3")
    conn.execute("INSERT INTO n(body, x) SELECT v, id FROM t ORDER BY random()")
    commit()
    conn.execute("DELETE FROM n WHERE rowid IN (SELECT rowid FROM n LIMIT 2)")
    conn.execute("UPDATE t SET id = id + 100 WHERE id IN (SELECT id FROM t WHERE id > 4 LIMIT 2)")
    commit()

    entries = cluster.entries(start + 1)
    kinds = [[kind for kind, _item in payload_items(e.payload)] for e in entries]
    assert kinds == [["stmt", "rows"], ["rows", "rows"], ["rows", "rows"]]
    copy = leader_copy(cluster)
    for entry in reversed(entries[1:]):
        undo(copy, cluster.format, entry.payload)
        assert user_state(copy) == states[entry.lsn - 1]
    with pytest.raises(NotInvertibleError, match="UPDATE t SET v = 'statement' WHERE id = 4"):
        cluster.format.invert(entries[0].payload)


# -- property: random DML, undone entry by entry, comes back to the start -----------------------------

PROPERTY_SCHEMA = [
    "CREATE TABLE ip(id INTEGER PRIMARY KEY, v)",
    "CREATE TABLE nopk(a, b)",
    "CREATE TABLE comp(a TEXT NOT NULL, b INTEGER NOT NULL, v, PRIMARY KEY(a, b))",
    "CREATE TABLE wr(k TEXT PRIMARY KEY, v) WITHOUT ROWID",
    "CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
]
# Rows to collide with: random keys hit existing rows as often as not.
PROPERTY_SEED = [
    ("INSERT INTO ip(id, v) VALUES (1, 1), (2, 2.5), (3, 'three'), (4, X'04')", ()),
    ("INSERT INTO nopk(a, b) VALUES (1, NULL), ('x', 2), (3.0, X''), (NULL, 4)", ()),
    ("INSERT INTO comp VALUES ('a', 1, 1), ('b', 1, NULL), ('b', 2, 'v'), ('c', 3, 0.5)", ()),
    ("INSERT INTO wr VALUES ('a', 1), ('b', 'b'), ('c', NULL)", ()),
    ("INSERT INTO auto(v) VALUES (1), (2), (3)", ()),
]

VALUES = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),  # NaN is bound as NULL
    st.text(max_size=6),
    st.binary(max_size=6),
)
KEYS = st.integers(1, 5)
TEXT_KEYS = st.sampled_from(["a", "b", "c", "d"])


def _op(sql: str, *params: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, tuple[Any, ...]]]:
    return st.tuples(st.just(sql), st.tuples(*params))


DML = st.one_of(
    _op("INSERT OR REPLACE INTO ip(id, v) VALUES (?, ?)", KEYS, VALUES),
    _op("INSERT INTO ip(v) VALUES (?)", VALUES),
    _op("UPDATE ip SET v = ? WHERE id = ?", VALUES, KEYS),
    _op("UPDATE ip SET v = ? WHERE id >= ?", VALUES, KEYS),
    _op("UPDATE OR REPLACE ip SET id = ? WHERE id = ?", KEYS, KEYS),
    _op("DELETE FROM ip WHERE id = ?", KEYS),
    _op("INSERT INTO nopk(a, b) VALUES (?, ?)", VALUES, VALUES),
    _op("UPDATE nopk SET b = ? WHERE rowid = ?", VALUES, KEYS),
    _op("UPDATE OR REPLACE nopk SET rowid = ? WHERE rowid = ?", KEYS, KEYS),
    _op("DELETE FROM nopk WHERE rowid = ?", KEYS),
    _op("INSERT OR REPLACE INTO comp VALUES (?, ?, ?)", TEXT_KEYS, KEYS, VALUES),
    _op("UPDATE OR REPLACE comp SET b = ?, v = ? WHERE a = ?", KEYS, VALUES, TEXT_KEYS),
    _op("DELETE FROM comp WHERE b = ?", KEYS),
    _op("INSERT OR REPLACE INTO wr VALUES (?, ?)", TEXT_KEYS, VALUES),
    _op("UPDATE OR REPLACE wr SET k = ? WHERE k = ?", TEXT_KEYS, TEXT_KEYS),
    _op("DELETE FROM wr WHERE k = ?", TEXT_KEYS),
    _op("INSERT INTO auto(v) VALUES (?)", VALUES),
    _op("DELETE FROM auto WHERE id = (SELECT max(id) FROM auto)"),
    _op("UPDATE OR REPLACE auto SET id = id + ? WHERE id = ?", st.integers(1, 12), KEYS),
)
SAVEPOINT_OPS = st.sampled_from([("SAVEPOINT sp", ()), ("ROLLBACK TO sp", ()), ("RELEASE sp", ())])
# One step in three is a savepoint operation: they split the row images into several chunks.
TRANSACTIONS = st.lists(st.lists(st.one_of(DML, DML, SAVEPOINT_OPS), min_size=1, max_size=10),
                        min_size=1, max_size=6)


@settings(max_examples=examples(40))
@given(transactions=TRANSACTIONS)
def test_property_row_undo_of_random_dml_returns_to_every_earlier_state(transactions):
    with tempfile.TemporaryDirectory() as tmp:
        cluster = proxy.Cluster.init(Path(tmp) / "c", followers=0, replicate=False, synchronous="off")
        conn = proxy.connect(cluster.directory, cluster=cluster)
        try:
            for sql in PROPERTY_SCHEMA:
                conn.execute(sql)
            for sql, params in PROPERTY_SEED:
                conn.execute(sql, params)
            conn.commit()
            start = cluster.leader_lsn()
            states = {start: _leader_state(cluster)}
            for ops in transactions:
                conn.execute("BEGIN")
                for sql, params in ops:
                    _run(conn, sql, params)
                conn.commit()
                states[cluster.leader_lsn()] = _leader_state(cluster)
            final_sequence = _leader_sequence(cluster)
            copy = leader_copy(cluster)
            for entry in reversed(cluster.entries(start + 1)):
                undo(copy, cluster.format, entry.payload)
                assert user_state(copy) == states[entry.lsn - 1]
            assert_not_lowered(sequence(copy), final_sequence)
        finally:
            conn.close()
            cluster.close()


def _run(conn: proxy.Connection, sql: str, params: Sequence[Any]) -> None:
    try:
        conn.execute(sql, params)
    except proxy.OperationalError as exc:
        if "no such savepoint" not in str(exc):
            raise


def _leader_state(cluster: proxy.Cluster) -> tuple[Any, ...]:
    leader = cluster.open_node(cluster.leader)
    try:
        return user_state(leader)
    finally:
        leader.close()


def _leader_sequence(cluster: proxy.Cluster) -> dict[str, int]:
    leader = cluster.open_node(cluster.leader)
    try:
        return sequence(leader)
    finally:
        leader.close()
