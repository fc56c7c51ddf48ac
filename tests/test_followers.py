"""Followers end to end: LSN order, pause and resume across processes, catching up after a stop,
corrupt entries, apply conflicts, read-only followers and several writer processes.

Writes go through the DB-API (`proxy.connect`); positions are awaited with
`cluster.wait_for_catchup` (never a sleep), and follower files are read directly.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from checks import assert_identical
from helpers import HANG, applied, run_python, spawn_python

import proxy
from proxy.store import node as store_node

MakeCluster = Callable[..., proxy.Cluster]


# -- helpers ------------------------------------------------------------------------------------


def query_node(cluster: proxy.Cluster, node: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    conn = cluster.open_node(node)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def behind_replproxy(cluster: proxy.Cluster, node: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a node file through a plain apsw connection, behind replproxy's back."""
    conn = apsw.Connection(str(cluster.path_of(node)))
    conn.set_busy_timeout(30_000)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def status_of(cluster: proxy.Cluster, node: str) -> proxy.NodeStatus:
    return {s.name: s for s in cluster.status()}[node]


def assert_stopped_before(cluster: proxy.Cluster, node: str, bad: int, reason: str, lag: int | None = None) -> None:
    """`node` is in error at log entry `bad`, which it did not apply, and the error says why."""
    status = status_of(cluster, node)
    assert status.state == "error"
    assert status.error_lsn == bad
    assert f"log entry {bad}" in status.error and reason in status.error
    assert status.applied_lsn == bad - 1
    if lag is not None:
        assert status.lag_entries == lag


def setup_accounts(conn: proxy.Connection, rows: int = 20) -> None:
    conn.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)")
    conn.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(i, f"owner{i}", 100 * i) for i in range(1, rows + 1)])
    conn.commit()


# -- LSN order ------------------------------------------------------------------------------------


def test_followers_apply_strictly_in_lsn_order_and_end_identical_after_200_transactions(cluster):
    setup = proxy.connect(cluster.directory, cluster=cluster)
    setup.execute("CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER)")
    setup.execute("CREATE TABLE moves(id INTEGER PRIMARY KEY, writer INTEGER, seq INTEGER, counter_at INTEGER)")
    setup.execute("INSERT INTO counter VALUES (1, 0)")
    setup.commit()
    base_lsn = cluster.wait_for_catchup(10)

    writers, per_writer = 4, 50
    committed: dict[int, list[int]] = {}  # LSN -> ids of the rows that transaction inserted
    lock = threading.Lock()
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        conn = proxy.connect(cluster.directory, cluster=cluster)
        try:
            for seq in range(per_writer):
                # Every transaction reads and bumps the shared counter: applying out of order would
                # give followers other values (and, with full images, a conflict).
                conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                (n,) = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
                ids = []
                for part in range(2):
                    cur = conn.execute("INSERT INTO moves(writer, seq, counter_at) VALUES (?, ?, ?)",
                                       (writer, seq * 2 + part, n))
                    ids.append(cur.lastrowid)
                conn.commit()
                with lock:
                    committed[conn.last_write_lsn] = ids
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    # Meanwhile, look at a follower at consistent points: what it holds is always exactly the
    # prefix of the log up to its applied LSN.
    snapshots: list[tuple[int, set[int], int]] = []
    follower = cluster.open_node("node2")
    try:
        while any(t.is_alive() for t in threads) or len(snapshots) < 5:
            follower.execute("BEGIN")
            lsn = store_node.read_state(follower).applied_lsn
            ids = {r[0] for r in follower.execute("SELECT id FROM moves")}
            row = follower.execute("SELECT n FROM counter WHERE id = 1").fetchone()
            follower.execute("COMMIT")
            snapshots.append((lsn, ids, row[0] if row else -1))
            try:  # let node2 move at least one entry before the next look
                cluster.wait_for_catchup(1, nodes=["node2"], lsn=min(lsn + 1, cluster.leader_lsn()))
            except proxy.ReplicationTimeout:
                pass  # the writers had not committed the next entry yet
    finally:
        follower.close()
    for thread in threads:
        thread.join()
    assert not failures, failures

    total = writers * per_writer
    assert sorted(committed) == list(range(base_lsn + 1, base_lsn + total + 1)), "one gapless LSN per commit"
    assert [e.lsn for e in cluster.entries()] == list(range(1, base_lsn + total + 1))
    for lsn, ids, n in snapshots:
        if lsn < base_lsn:
            continue
        expected = {i for entry_lsn, new in committed.items() if entry_lsn <= lsn for i in new}
        assert ids == expected, f"follower at LSN {lsn} does not hold exactly the log's prefix"
        assert n == lsn - base_lsn
    assert len({lsn for lsn, _, _ in snapshots}) > 1

    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert query_node(cluster, node, "SELECT n FROM counter") == [(total,)]
        assert query_node(cluster, node, "SELECT count(*), count(DISTINCT counter_at) FROM moves") == [
            (2 * total, total)]
        assert query_node(cluster, node, "SELECT id, writer, seq, counter_at FROM moves ORDER BY id") == \
            query_node(cluster, cluster.leader, "SELECT id, writer, seq, counter_at FROM moves ORDER BY id")
    setup.close()
    assert_identical(cluster)


# -- pause and resume -----------------------------------------------------------------------------


PAUSED_WRITER = """
import sys
import proxy

directory, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cluster = proxy.Cluster(directory)
conn = proxy.connect(directory, cluster=cluster)
for i in range(start, start + count):
    conn.execute("INSERT INTO accounts(id, owner, balance) VALUES (?, ?, ?)", (i, f"sub{i}", i))
    conn.commit()
conn.close()
cluster.wait_for_catchup(10, nodes=["node3"])
print(cluster.leader_lsn())
cluster.close()
"""


def test_paused_follower_holds_its_position_for_every_process_and_catches_up_after_resume(cluster, conn):
    setup_accounts(conn)
    held_at = cluster.wait_for_catchup(10)

    cluster.pause("node2")
    for i in range(30):
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (i % 20 + 1,))
        conn.commit()
    cluster.wait_for_catchup(10, nodes=["node3"])
    leader_lsn = cluster.leader_lsn()
    assert leader_lsn == held_at + 30
    status = status_of(cluster, "node2")
    assert status.state == "paused"
    assert status.applied_lsn == held_at
    assert status.lag_entries == leader_lsn - held_at > 0
    assert status_of(cluster, "node3").state == "ok"
    assert status_of(cluster, "node3").applied_lsn == leader_lsn
    with pytest.raises(proxy.ReplicationTimeout, match="node2"):
        cluster.wait_for_catchup(0.3)

    # Another process has its own replicator; the pause lives in node2's file, so it holds there too.
    result = run_python(PAUSED_WRITER, str(cluster.directory), "1000", "25")
    sub_lsn = int(result.stdout.strip().splitlines()[-1])
    assert sub_lsn == leader_lsn + 25
    assert applied(cluster, "node2") == held_at, "the subprocess must not move a paused follower"
    assert applied(cluster, "node3") == sub_lsn
    assert query_node(cluster, "node2", "SELECT count(*) FROM accounts WHERE id >= 1000") == [(0,)]
    assert query_node(cluster, "node2", "SELECT sum(balance) FROM accounts") == \
        [(sum(100 * i for i in range(1, 21)),)]
    status = status_of(cluster, "node2")
    assert status.state == "paused" and status.lag_entries == sub_lsn - held_at

    cluster.resume("node2")
    assert cluster.wait_for_catchup(10) == sub_lsn
    assert status_of(cluster, "node2").state == "ok"
    assert status_of(cluster, "node2").lag_entries == 0
    assert query_node(cluster, "node2", "SELECT count(*) FROM accounts WHERE id >= 1000") == [(25,)]
    assert_identical(cluster)


# -- a stopped follower catches up from its own position ----------------------------------------


def test_stopped_followers_catch_up_from_their_own_positions_when_the_cluster_is_opened_again(make_cluster):
    cluster = make_cluster()
    directory = cluster.directory
    conn = proxy.connect(directory, cluster=cluster)
    conn.execute("CREATE TABLE log_lines(line TEXT)")  # no primary key: a re-applied insert would duplicate
    conn.execute("CREATE TABLE totals(id INTEGER PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT INTO totals VALUES (1, 0)")
    conn.commit()
    cluster.wait_for_catchup(10)
    cluster.pause("node3")  # node3 stops earlier than node2
    for i in range(10):
        conn.execute("INSERT INTO log_lines VALUES (?)", (f"first {i}",))
        conn.execute("UPDATE totals SET n = n + 1")
        conn.commit()
    cluster.wait_for_catchup(10, nodes=["node2"])
    conn.close()
    cluster.close()  # no replicator runs anywhere now

    writer_cluster = proxy.Cluster(directory, replicate=False)
    try:
        writer_cluster.resume("node3")  # only clears the flag: nothing applies without a replicator
        positions_before = writer_cluster.positions()
        writer = proxy.connect(directory, cluster=writer_cluster)
        for i in range(40):
            writer.execute("INSERT INTO log_lines VALUES (?)", (f"second {i}",))
            writer.execute("UPDATE totals SET n = n + 1")
            writer.commit()
        writer.close()
        positions = writer_cluster.positions()
        leader_lsn = positions["node1"]
        assert positions["node2"] == positions_before["node2"] < leader_lsn
        assert positions["node3"] == positions_before["node3"] < positions["node2"]
        for s in writer_cluster.status()[1:]:
            assert s.state == "ok" and s.lag_entries == leader_lsn - positions[s.name] > 0
        assert query_node(writer_cluster, "node2", "SELECT n FROM totals") == [(10,)]
        assert query_node(writer_cluster, "node3", "SELECT n FROM totals") == [(0,)]
    finally:
        writer_cluster.close()

    reopened = proxy.Cluster(directory)
    try:
        assert reopened.wait_for_catchup(10) == leader_lsn
        for node in reopened.followers:
            assert query_node(reopened, node, "SELECT n FROM totals") == [(50,)]
            assert query_node(reopened, node, "SELECT count(*), count(DISTINCT line) FROM log_lines") == [(50, 50)]
            assert query_node(reopened, node, "SELECT rowid, line FROM log_lines ORDER BY rowid") == \
                query_node(reopened, "node1", "SELECT rowid, line FROM log_lines ORDER BY rowid")
        assert_identical(reopened)
    finally:
        reopened.close()


# -- corrupt entries -----------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["paused", "stopped"])
def test_checksum_mismatch_stops_the_follower_before_the_corrupt_entry(cluster, conn, other):
    setup_accounts(conn)
    good = cluster.wait_for_catchup(10)
    cluster.pause("node2")
    cluster.pause("node3")

    conn.execute("UPDATE accounts SET balance = -1 WHERE id <= 10")
    conn.execute("INSERT INTO accounts VALUES (500, 'corrupted', 500)")
    conn.commit()
    bad = conn.last_write_lsn
    conn.execute("INSERT INTO accounts VALUES (501, 'after', 501)")
    conn.commit()
    assert bad == good + 1

    [(payload,)] = behind_replproxy(cluster, cluster.leader, "SELECT payload FROM _replproxy_log WHERE lsn = ?", (bad,))
    damaged = bytearray(payload)
    damaged[len(damaged) // 2] ^= 0x5A  # one byte; the stored checksum is left as it was
    behind_replproxy(cluster, cluster.leader, "UPDATE _replproxy_log SET payload = ? WHERE lsn = ?",
                     (bytes(damaged), bad))
    assert not cluster.entries(bad, 1)[0].checksum_ok

    cluster.resume("node2")
    if other == "stopped":
        cluster.resume("node3")
    with pytest.raises(proxy.ReplicationTimeout) as raised:
        cluster.wait_for_catchup(10)
    assert "node2" in str(raised.value) and f"log entry {bad}" in str(raised.value)

    stopped = ["node2", "node3"] if other == "stopped" else ["node2"]
    for node in stopped:
        assert_stopped_before(cluster, node, bad, "checksum", lag=2)
    if other == "paused":
        assert status_of(cluster, "node3").state == "paused"
        assert applied(cluster, "node3") == good
    for node in cluster.followers:
        assert query_node(cluster, node, "SELECT count(*) FROM accounts WHERE balance = -1 OR id >= 500") == [(0,)]

    report = proxy.verify(cluster, timeout=0.5)
    assert not report.identical
    assert {d.node for d in report.differences if d.object == "position"} == {"node2", "node3"}

    # Repairing the entry and resuming lets the followers apply it (and nothing was skipped).
    behind_replproxy(cluster, cluster.leader, "UPDATE _replproxy_log SET payload = ? WHERE lsn = ?", (payload, bad))
    for node in cluster.followers:
        cluster.resume(node)
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert query_node(cluster, node, "SELECT count(*) FROM accounts WHERE balance = -1 OR id >= 500") == [(12,)]
    assert_identical(cluster)


# -- apply conflicts -----------------------------------------------------------------------------


@pytest.mark.parametrize("row_image", ["full", "minimal"])
def test_apply_conflict_on_a_diverged_follower_stops_it_with_lsn_and_table(make_cluster, row_image):
    cluster = make_cluster(row_image=row_image)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    setup_accounts(conn)
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    cluster.wait_for_catchup(10)

    behind_replproxy(cluster, "node2", "DELETE FROM accounts WHERE id = 7")

    conn.execute("INSERT INTO notes(body) VALUES ('before the conflict')")
    conn.execute("UPDATE accounts SET balance = balance + 5 WHERE id IN (3, 7, 11)")
    conn.commit()
    bad = conn.last_write_lsn
    conn.executemany("INSERT INTO notes(body) VALUES (?)", [(f"later {i}",) for i in range(10)])
    conn.commit()
    last = conn.last_write_lsn

    with pytest.raises(proxy.ReplicationTimeout) as raised:
        cluster.wait_for_catchup(10)
    assert "node2" in str(raised.value) and "node3" not in str(raised.value)
    assert applied(cluster, "node3") == last

    def check_stopped() -> None:
        assert_stopped_before(cluster, "node2", bad, "'accounts'", lag=last - bad + 1)
        # Nothing of the failed entry, and nothing after it, was applied on node2.
        assert query_node(cluster, "node2", "SELECT id, balance FROM accounts WHERE id IN (3, 7, 11)") == [
            (3, 300), (11, 1100)]
        assert query_node(cluster, "node2", "SELECT count(*) FROM notes") == [(0,)]

    check_stopped()
    # resume retries the entry, which fails again while the divergence remains.
    cluster.resume("node2")
    with pytest.raises(proxy.ReplicationTimeout, match="node2"):
        cluster.wait_for_catchup(10)
    check_stopped()

    report = proxy.verify(cluster, timeout=0.5)
    assert [(d.node, d.object) for d in report.differences] == [("node2", "position")]

    # Repair the follower by hand; then resume applies everything from the failed entry on.
    behind_replproxy(cluster, "node2", "INSERT INTO accounts VALUES (7, 'owner7', 700)")
    cluster.resume("node2")
    assert cluster.wait_for_catchup(10) == last
    assert query_node(cluster, "node2", "SELECT id, balance FROM accounts WHERE id IN (3, 7, 11)") == [
        (3, 305), (7, 705), (11, 1105)]
    conn.close()
    assert_identical(cluster)


def test_full_images_detect_a_changed_value_on_a_follower(cluster, conn):
    setup_accounts(conn)
    cluster.wait_for_catchup(10)
    behind_replproxy(cluster, "node3", "UPDATE accounts SET balance = 0 WHERE id = 4")
    conn.execute("UPDATE accounts SET balance = balance * 2 WHERE id BETWEEN 1 AND 5")
    conn.commit()
    bad = conn.last_write_lsn
    with pytest.raises(proxy.ReplicationTimeout, match="node3"):
        cluster.wait_for_catchup(10)
    assert_stopped_before(cluster, "node3", bad, "'accounts'")
    assert query_node(cluster, "node3", "SELECT balance FROM accounts WHERE id BETWEEN 1 AND 5 ORDER BY id") == [
        (100,), (200,), (300,), (0,), (500,)]
    assert applied(cluster, "node2") == bad


# -- followers are read-only ---------------------------------------------------------------------


def test_followers_are_never_writable_through_the_proxy(cluster, conn):
    setup_accounts(conn)
    lsn = cluster.wait_for_catchup(10)

    pinned = proxy.connect(cluster.directory, cluster=cluster, node="node2")
    try:
        cur = pinned.execute("SELECT count(*) FROM accounts")
        assert cur.fetchone() == (20,) and cur.node == "node2"
        for sql in ["INSERT INTO accounts VALUES (99, 'x', 1)",
                    "UPDATE accounts SET balance = 0",
                    "DELETE FROM accounts",
                    "CREATE TABLE sneaky(x)",
                    "DROP TABLE accounts",
                    "PRAGMA user_version = 5",
                    "BEGIN IMMEDIATE",
                    "SAVEPOINT s"]:
            with pytest.raises(proxy.ReadOnlyNodeError):
                pinned.execute(sql)
            assert not pinned.in_transaction
        # A deferred BEGIN is a read-only transaction on the follower: reads work, writes do not.
        pinned.execute("BEGIN")
        assert pinned.execute("SELECT count(*) FROM accounts").fetchone() == (20,)
        with pytest.raises(proxy.ReadOnlyNodeError):
            pinned.execute("DELETE FROM accounts")
        pinned.execute("ROLLBACK")
        assert not pinned.in_transaction
        with pytest.raises(proxy.ReadOnlyNodeError):
            pinned.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(98, "y", 1)])
        assert isinstance(proxy.ReadOnlyNodeError("x"), proxy.OperationalError)
    finally:
        pinned.close()

    # The follower connections the proxy reads through are query_only at the SQLite level too,
    # and their authorizer refuses any write first (tests/test_hardening_driver.py).
    reader = proxy.connect(cluster.directory, cluster=cluster)
    try:
        cur = reader.execute("SELECT sum(balance) FROM accounts")
        assert cur.fetchone() == (sum(100 * i for i in range(1, 21)),)
        assert cur.node in cluster.followers
        follower_conn = reader._follower(cur.node)
        assert follower_conn.execute("PRAGMA query_only").fetchone() == (1,)
        with pytest.raises((apsw.AuthError, apsw.ReadOnlyError)):
            follower_conn.execute("INSERT INTO accounts VALUES (99, 'x', 1)")
        with pytest.raises((apsw.AuthError, apsw.ReadOnlyError)):
            follower_conn.execute("CREATE TABLE sneaky(x)")
    finally:
        reader.close()

    assert cluster.leader_lsn() == lsn
    for node in cluster.followers:
        assert query_node(cluster, node, "SELECT count(*) FROM accounts") == [(20,)]
        assert query_node(cluster, node, "SELECT count(*) FROM sqlite_master WHERE name = 'sneaky'") == [(0,)]
    assert_identical(cluster)


# -- several writer processes --------------------------------------------------------------------


CONCURRENT_WRITER = """
import sys
import proxy

directory, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = proxy.connect(directory)
print("ready", flush=True)
sys.stdin.readline()  # start together with the others
for i in range(count):
    conn.execute("INSERT INTO writes(tag, n, note) VALUES (?, ?, ?)", (tag, i, f"{tag}:{i}"))
    if i % 10 == 0:
        conn.execute("UPDATE progress SET done = done + 1 WHERE tag = ?", (tag,))
    conn.commit()
conn.close()
print("done", flush=True)
"""


def test_two_writer_processes_and_this_one_each_row_exactly_once_on_every_node(cluster, conn):
    conn.execute("CREATE TABLE writes(id INTEGER PRIMARY KEY, tag TEXT, n INTEGER, note TEXT, UNIQUE(tag, n))")
    conn.execute("CREATE TABLE progress(tag TEXT PRIMARY KEY, done INTEGER)")
    conn.executemany("INSERT INTO progress VALUES (?, 0)", [("a",), ("b",), ("main",)])
    conn.commit()
    base = cluster.leader_lsn()
    count = 100

    procs = [
        spawn_python(CONCURRENT_WRITER, cluster.directory, tag, count, stderr=subprocess.PIPE)
        for tag in ("a", "b")
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for i in range(count):
            conn.execute("INSERT INTO writes(tag, n, note) VALUES ('main', ?, ?)", (i, f"main:{i}"))
            if i % 10 == 0:
                conn.execute("UPDATE progress SET done = done + 1 WHERE tag = 'main'")
            conn.commit()
        for proc in procs:
            out, err = proc.communicate(timeout=HANG)
            assert proc.returncode == 0, err
            assert out.strip().endswith("done")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    total = 3 * count
    entries = cluster.entries()
    assert [e.lsn for e in entries] == list(range(1, base + total + 1)), "LSNs are gapless"
    assert all(e.checksum_ok and e.epoch == 1 for e in entries)
    cluster.wait_for_catchup(10)
    expected = sorted((tag, n, f"{tag}:{n}") for tag in ("a", "b", "main") for n in range(count))
    for node in [cluster.leader, *cluster.followers]:
        rows = query_node(cluster, node, "SELECT tag, n, note FROM writes ORDER BY tag, n")
        assert rows == expected, f"{node} does not hold every row exactly once"
        assert query_node(cluster, node, "SELECT tag, done FROM progress ORDER BY tag") == [
            ("a", 10), ("b", 10), ("main", 10)]
    # The followers applied them in the leader's commit order: same ids everywhere.
    leader_ids = query_node(cluster, cluster.leader, "SELECT id, tag, n FROM writes ORDER BY id")
    for node in cluster.followers:
        assert query_node(cluster, node, "SELECT id, tag, n FROM writes ORDER BY id") == leader_ids
    assert_identical(cluster)
