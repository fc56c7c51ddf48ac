"""Writers outside the proxy (trigger format): another process writes to the leader's file with
Python's plain sqlite3 module, interleaved with writes through the proxy. Its transactions must
enter the log in commit order, whole (never split, never mixed with a proxy transaction), with
nothing lost or applied twice, and the followers must end identical.

The outside writer is always a separate process: two copies of SQLite in one process (Python's
sqlite3 and apsw) break each other's POSIX locks and can corrupt the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from checks import same_on_all
from helpers import HANG, spawn_python, wait_until

import proxy
from logformats import trigger as trig

MakeCluster = Callable[..., proxy.Cluster]

# A plain sqlite3 program: each input line is a JSON list of statements run as one transaction
# (BEGIN IMMEDIATE ... COMMIT); it answers "ok" or "error: ...". {"loop": n, "sql": [...]} runs
# the statements as n transactions in a row.
WRITER = r"""
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
for line in sys.stdin:
    request = json.loads(line)
    if isinstance(request, dict):
        repeat, statements = request["loop"], request["sql"]
    else:
        repeat, statements = 1, request
    try:
        for _ in range(repeat):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql in statements:
                    conn.execute(sql)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        print("ok", flush=True)
    except sqlite3.Error as exc:
        print("error: " + str(exc), flush=True)
"""


class OutsideWriter:
    """A second process writing to the leader file with Python's sqlite3 module."""

    def __init__(self, path: str):
        self.process = spawn_python(WRITER, path)

    def send(self, request: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def run(self, *statements: str) -> None:
        """One transaction; returns once it is committed."""
        self.send(list(statements))
        assert self.answer() == "ok"

    def fail(self, *statements: str) -> str:
        self.send(list(statements))
        answer = self.answer()
        assert answer.startswith("error: ")
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(HANG)


@pytest.fixture
def outside(make_cluster: MakeCluster):
    """outside(cluster) -> an OutsideWriter on that cluster's leader file (closed after the test)."""
    writers: list[OutsideWriter] = []

    def start(cluster: proxy.Cluster) -> OutsideWriter:
        writer = OutsideWriter(str(cluster.path_of(cluster.leader)))
        writers.append(writer)
        return writer

    yield start
    for writer in writers:
        writer.close()


def assert_identical(cluster: proxy.Cluster) -> proxy.VerifyReport:
    report = proxy.verify(cluster)
    differences = "\n".join(f"  {d.node} {d.object}: {d.detail}" for d in report.differences)
    assert report.identical, f"nodes differ at LSN {report.lsn}:\n{differences}"
    return report


def wait_for_lsn(cluster: proxy.Cluster, lsn: int) -> None:
    """Wait until the leader's log reaches `lsn` (the watcher logging outside commits)."""
    wait_until(lambda: cluster.leader_lsn() >= lsn, message=f"the leader's log reaches LSN {lsn}")


def entries_after(cluster: proxy.Cluster, lsn: int) -> list[tuple[bool, list[dict[str, Any]]]]:
    """(logged from outside?, events) of every entry after `lsn`."""
    return [(trig.is_outside_entry(e.payload), [ev.as_dict() for ev in cluster.format.decode(e.payload)])
            for e in cluster.entries(lsn + 1)]


def inserted(events: list[dict[str, Any]], table: str, column: str) -> list[Any]:
    return [e["new"][column] for e in events if e["kind"] == "INSERT" and e["table"] == table]


def new_cluster(make_cluster: MakeCluster, **options: Any) -> tuple[proxy.Cluster, proxy.Connection]:
    cluster = make_cluster(format="trigger", **options)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.executescript("""
        CREATE TABLE events(id INTEGER PRIMARY KEY, who TEXT NOT NULL, txn INTEGER NOT NULL);
        CREATE TABLE stock(item TEXT PRIMARY KEY NOT NULL, qty INTEGER NOT NULL, note BLOB);
    """)
    return cluster, conn


# -- order and boundaries -------------------------------------------------------------------------


def test_outside_and_proxy_transactions_are_logged_in_commit_order_and_whole(make_cluster, outside):
    cluster, conn = new_cluster(make_cluster)
    writer = outside(cluster)
    start = cluster.leader_lsn()
    txn = 0

    def outside_txn(*more: str) -> None:
        nonlocal txn
        txn += 1
        writer.run(f"INSERT INTO events(who, txn) VALUES ('outside', {txn})",
                   f"INSERT INTO events(who, txn) VALUES ('outside', {txn})", *more)

    def proxy_txn(*more: str) -> None:
        nonlocal txn
        txn += 1
        conn.execute("INSERT INTO events(who, txn) VALUES ('proxy', ?)", (txn,))
        conn.execute("INSERT INTO events(who, txn) VALUES ('proxy', ?)", (txn,))
        for sql in more:
            conn.execute(sql)
        conn.commit()

    outside_txn("INSERT INTO stock VALUES ('apple', 10, x'00ff')")
    proxy_txn("UPDATE stock SET qty = qty - 1 WHERE item = 'apple'")
    outside_txn("UPDATE stock SET qty = qty * 2 WHERE item = 'apple'")
    outside_txn("INSERT INTO stock VALUES ('pear', 1, NULL)", "DELETE FROM stock WHERE item = 'apple'")
    proxy_txn("INSERT INTO stock VALUES ('apple', 5, 'é')")
    outside_txn("UPDATE stock SET item = 'Pear' WHERE item = 'pear'")
    proxy_txn()
    outside_txn()
    cluster.log_outside_writes()  # whatever the watcher has not logged yet

    seen: list[int] = []
    for from_outside, events in entries_after(cluster, start):
        txns = inserted(events, "events", "txn")
        whos = set(inserted(events, "events", "who"))
        assert whos == {"outside" if from_outside else "proxy"}  # never mixed
        # Each transaction is whole: both of its rows, in this one entry.
        assert all(txns.count(t) == 2 for t in txns)
        seen.extend(dict.fromkeys(txns))
    assert seen == list(range(1, txn + 1))  # commit order, nothing lost, nothing twice
    assert same_on_all(cluster, "SELECT * FROM stock ORDER BY item") == [("Pear", 1, None), ("apple", 5, "é")]
    assert_identical(cluster)


def test_the_watcher_logs_outside_commits_without_any_proxy_write(make_cluster, outside):
    cluster, _conn = new_cluster(make_cluster)
    writer = outside(cluster)
    start = cluster.leader_lsn()
    writer.run("INSERT INTO stock VALUES ('a', 1, NULL)", "INSERT INTO events(who, txn) VALUES ('outside', 1)")
    wait_for_lsn(cluster, start + 1)
    writer.run("UPDATE stock SET qty = 2")
    wait_for_lsn(cluster, start + 2)
    logged = entries_after(cluster, start)
    # The watcher logged the first commit before the second happened: one entry each.
    assert [(o, [e["kind"] for e in events]) for o, events in logged] == [
        (True, ["INSERT", "INSERT"]), (True, ["UPDATE"])]
    assert same_on_all(cluster, "SELECT * FROM stock") == [("a", 2, None)]
    assert_identical(cluster)


def test_outside_commits_between_two_pickups_share_an_entry_and_marks_split_them(make_cluster, outside):
    # No replicator, so no watcher: outside changes wait for the next proxy write.
    cluster, conn = new_cluster(make_cluster, replicate=False)
    writer = outside(cluster)
    start = cluster.leader_lsn()
    writer.run("INSERT INTO events(who, txn) VALUES ('outside', 1)")
    writer.run("INSERT INTO events(who, txn) VALUES ('outside', 2)")
    # A cooperating writer ends each transaction with a boundary mark.
    mark = f"INSERT INTO {trig.CAPTURE_TABLE}(lay) VALUES ({trig.MARK_LAYOUT})"
    writer.run("INSERT INTO events(who, txn) VALUES ('outside', 3)", mark)
    writer.run("INSERT INTO events(who, txn) VALUES ('outside', 4)", mark)
    assert cluster.leader_lsn() == start  # nothing picked up yet
    conn.execute("INSERT INTO events(who, txn) VALUES ('proxy', 5)")
    conn.commit()
    logged = [(o, inserted(events, "events", "txn")) for o, events in entries_after(cluster, start)]
    # 1 and 2 committed with no pickup between them: one entry, never split. The marks keep 3 and 4
    # apart (the first group runs up to the first mark).
    assert logged == [(True, [1, 2, 3]), (True, [4]), (False, [5])]
    cluster.start_replication()
    assert_identical(cluster)


def test_concurrent_outside_writer_and_proxy_lose_nothing_and_keep_commit_order(make_cluster, outside):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    conn.execute("INSERT INTO counter VALUES (1, 0)")
    conn.commit()
    writer = outside(cluster)
    start = cluster.leader_lsn()
    step = ["UPDATE counter SET n = n + 1 WHERE id = 1",
            "INSERT INTO events(who, txn) SELECT 'outside', n FROM counter WHERE id = 1"]
    rounds = 150
    writer.send({"loop": rounds, "sql": step})
    for _ in range(rounds):
        conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        conn.execute("INSERT INTO events(who, txn) SELECT 'proxy', n FROM counter WHERE id = 1")
        conn.commit()
    assert writer.answer() == "ok"
    cluster.log_outside_writes()
    order: list[int] = []
    for from_outside, events in entries_after(cluster, start):
        counts = [e["new"]["n"] for e in events if e["kind"] == "UPDATE" and e["table"] == "counter"]
        assert counts == inserted(events, "events", "txn")  # each transaction whole in its entry
        assert set(inserted(events, "events", "who")) == {"outside" if from_outside else "proxy"}
        order.extend(counts)
    assert order == list(range(1, 2 * rounds + 1))
    assert same_on_all(cluster, "SELECT count(*), count(DISTINCT txn), max(txn) FROM events") == [
        (2 * rounds, 2 * rounds, 2 * rounds)]
    assert_identical(cluster)


def test_verify_logs_outside_changes_before_comparing(make_cluster, outside):
    cluster, _conn = new_cluster(make_cluster, replicate=False)
    writer = outside(cluster)
    start = cluster.leader_lsn()
    writer.run("INSERT INTO stock VALUES ('a', 1, NULL)")
    writer.run("CREATE TABLE later(x)", "INSERT INTO later VALUES (1)")
    cluster.start_replication()
    assert_identical(cluster)  # not "different": the leader's unlogged changes were logged first
    assert cluster.leader_lsn() == start + 1
    assert same_on_all(cluster, "SELECT * FROM later") == [(1,)]


# -- schema changes outside the proxy -------------------------------------------------------------


def test_outside_schema_changes_are_replicated_with_the_tables_content(make_cluster, outside):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("CREATE TABLE old(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO stock VALUES ('a', 1, NULL)")
    conn.commit()
    writer = outside(cluster)
    writer.run("CREATE TABLE fresh(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)",
               "INSERT INTO fresh(name) VALUES ('one'), ('two')")
    writer.run("ALTER TABLE stock ADD COLUMN price REAL DEFAULT 1.5",
               "UPDATE stock SET price = 0.1 WHERE item = 'a'",
               "INSERT INTO stock VALUES ('b', 2, NULL, 2.5)")
    writer.run("CREATE INDEX stock_qty ON stock(qty)",
               "CREATE VIEW cheap AS SELECT item FROM stock WHERE price < 1",
               "CREATE TRIGGER fresh_log AFTER INSERT ON fresh BEGIN "
               "INSERT INTO events(who, txn) VALUES ('trigger', NEW.id); END",
               "DROP TABLE old",
               "ALTER TABLE events RENAME TO happenings",
               "PRAGMA user_version = 3")
    writer.run("INSERT INTO fresh(name) VALUES ('three')", "DELETE FROM fresh WHERE name = 'one'")
    cluster.log_outside_writes()
    assert_identical(cluster)
    assert same_on_all(cluster, "SELECT * FROM fresh ORDER BY id") == [(2, "two"), (3, "three")]
    assert same_on_all(cluster, "SELECT who, txn FROM happenings") == [("trigger", 3)]
    assert same_on_all(cluster, "PRAGMA user_version") == [(3,)]
    assert same_on_all(cluster, "SELECT * FROM cheap") == [("a",)]
    # The new and changed tables are captured from now on, from outside and through the proxy.
    writer.run("INSERT INTO fresh(name) VALUES ('four')", "UPDATE stock SET price = 9 WHERE item = 'b'")
    conn.execute("INSERT INTO happenings(who, txn) VALUES ('proxy', 0)")
    conn.commit()
    assert same_on_all(cluster, "SELECT name FROM fresh ORDER BY id") == [("two",), ("three",), ("four",)]
    assert same_on_all(cluster, "SELECT seq FROM sqlite_sequence WHERE name = 'fresh'") == [(4,)]
    assert_identical(cluster)


def test_a_table_whose_capture_was_removed_outside_is_copied_whole(make_cluster, outside):
    cluster, conn = new_cluster(make_cluster)
    conn.execute("INSERT INTO stock VALUES ('a', 1, NULL)")
    conn.commit()
    writer = outside(cluster)
    writer.run('DROP TRIGGER "_replproxy_ins_stock"', "DROP TRIGGER \"_replproxy_upd_stock\"",
               "INSERT INTO stock VALUES ('b', 2, NULL)", "UPDATE stock SET qty = 7 WHERE item = 'a'")
    cluster.log_outside_writes()
    assert same_on_all(cluster, "SELECT item, qty FROM stock ORDER BY item") == [("a", 7), ("b", 2)]
    writer.run("INSERT INTO stock VALUES ('c', 3, NULL)")  # triggers are back
    cluster.log_outside_writes()
    assert same_on_all(cluster, "SELECT count(*) FROM stock") == [(3,)]
    assert_identical(cluster)


def test_an_outside_drop_column_is_refused_while_the_capture_trigger_names_it(make_cluster, outside):
    cluster, conn = new_cluster(make_cluster)
    writer = outside(cluster)
    answer = writer.fail("ALTER TABLE stock DROP COLUMN note")
    assert "_replproxy_" in answer  # documented: drop columns through the proxy
    conn.execute("ALTER TABLE stock DROP COLUMN note")  # through the proxy it works
    writer.run("INSERT INTO stock VALUES ('x', 1)")
    cluster.log_outside_writes()
    assert same_on_all(cluster, "SELECT * FROM stock") == [("x", 1)]
    assert_identical(cluster)


def test_a_proxy_transaction_waiting_for_the_lock_logs_the_outside_one_first(make_cluster, outside):
    cluster, conn = new_cluster(make_cluster, replicate=False)
    writer = outside(cluster)
    start = cluster.leader_lsn()
    # The outside transaction holds the write lock (a slow query) while the proxy's BEGIN
    # IMMEDIATE waits for it.
    writer.send({"loop": 1, "sql": ["INSERT INTO events(who, txn) VALUES ('outside', 1)",
                                    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                                    "WHERE i < 3000000) SELECT count(*) FROM r"]})
    probe = cluster.open_node(cluster.leader)
    probe.set_busy_timeout(0)

    def locked() -> bool:
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except apsw.BusyError:
            return True
        return False

    wait_until(locked, poll=0.001, message="the outside writer holds the write lock")
    probe.close()
    conn.execute("INSERT INTO events(who, txn) VALUES ('proxy', 2)")  # waits, then logs 1 first
    conn.commit()
    assert writer.answer() == "ok"
    logged = [(o, inserted(events, "events", "txn")) for o, events in entries_after(cluster, start)]
    assert logged == [(True, [1]), (False, [2])]
    cluster.start_replication()
    assert_identical(cluster)
