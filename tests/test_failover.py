"""Leader failover: LSN continuity on a promoted node, fencing, manual failover, lost writes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import apsw
import pytest
from checks import file_meta, file_rows
from click.testing import CliRunner
from helpers import HANG

import proxy
import proxy.driver.leader as dbapi_module
from proxy import verify
from proxy.cluster import failover
from proxy.store import log as store_log
from proxy.tools.cli import main


def test_promoted_node_continues_lsns_after_its_applied_position(cluster, conn):
    cur = conn.cursor()
    cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    for i in range(3):
        cur.execute("INSERT INTO t(v) VALUES (?)", (i,))
    conn.commit()
    last = cluster.wait_for_catchup()
    follower = cluster.open_node(cluster.followers[0])
    try:
        # It keeps the entries it applied, to serve them once promoted.
        assert follower.execute("SELECT count(*), max(lsn) FROM _replproxy_log").fetchone() == (last, last)
        follower.execute("DELETE FROM _replproxy_log")  # even without them it continues after them
        assert store_log.last_lsn(follower) == last
        follower.execute("BEGIN IMMEDIATE")
        lsn = store_log.append(follower, epoch=2, format="row", payload=b"x")
        follower.execute("ROLLBACK")
    finally:
        follower.close()
    assert lsn == last + 1


def _rows(path, sql="SELECT id, v FROM t ORDER BY id"):
    return file_rows(path, sql)


def _meta(path, key):
    return file_meta(path).get(key)


def test_manual_failover_one_connection_never_reopened(cluster):
    conn = proxy.connect(cluster.directory, autocommit=True)
    try:
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        for i in range(5):
            conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
        before = conn.last_write_lsn
        old = cluster.leader
        result = cluster.failover()
        assert result.old_leader == old and result.new_leader != old
        assert result.lsn == before and result.lost_lsns is None
        assert cluster.leader == result.new_leader
        for i in range(5, 8):
            conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
        lsns = [e.lsn for e in cluster.entries()]
        assert lsns == list(range(1, before + 4))  # gapless across the failover
        assert [e.epoch for e in cluster.entries()][-1] == result.epoch == 2
        cluster.wait_for_catchup()
        expected = [(i + 1, i) for i in range(8)]
        for node in cluster.config.nodes:
            assert _rows(cluster.directory / node.file) == expected, node.name
            assert _meta(cluster.directory / node.file, "epoch") == 2
        # The old leader is fenced and now a follower.
        assert _meta(cluster.path_of(old), "deposed_by_epoch") == 2
        assert old in cluster.followers
        assert verify(cluster).identical
    finally:
        conn.close()


STALE_WRITER = r'''
import sys
import proxy
conn = proxy.connect(sys.argv[1], autocommit=True)
conn.execute("INSERT INTO t(v) VALUES ('before')")
print("ready", conn.cluster.leader, flush=True)
sys.stdin.readline()  # the parent fails over meanwhile
try:
    cur = conn.execute("INSERT INTO t(v) VALUES ('after')")
    print("wrote", cur.node, conn.last_write_lsn, conn.cluster.epoch, flush=True)
except proxy.Error as exc:
    print("error", type(exc).__name__, exc, flush=True)
'''


def test_stale_process_is_fenced_then_redirected(cluster, conn):
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.commit()
    old = cluster.leader
    child = subprocess.Popen([sys.executable, "-c", STALE_WRITER, str(cluster.directory)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == ["ready", old]
        result = cluster.failover()
        out, _ = child.communicate("go\n", timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
    words = out.split()
    assert words[0] == "wrote", out
    assert words[1] == result.new_leader and int(words[3]) == result.epoch
    assert int(words[2]) == result.lsn + 1
    # Never a write on the old leader after the fence: past where the failover took it, its log
    # holds only what it applied as a follower of the new leader (entries of the new epoch).
    old_conn = apsw.Connection(str(cluster.path_of(old)), flags=apsw.SQLITE_OPEN_READONLY)
    old_conn.set_busy_timeout(10_000)
    try:
        assert old_conn.execute("SELECT count(*) FROM _replproxy_log WHERE lsn > ? AND epoch < ?",
                                (result.lsn, result.epoch)).fetchone() == (0,)
    finally:
        old_conn.close()
    cluster.wait_for_catchup()
    assert [r[1] for r in _rows(cluster.path_of(result.new_leader))] == ["before", "after"]
    assert verify(cluster).identical


def test_fence_stops_a_writer_that_still_sees_the_old_config(cluster, conn, monkeypatch):
    """A deposed leader refuses writes even before cluster.toml names the new leader."""
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.commit()
    leader = cluster.open_node(cluster.leader)
    try:
        leader.execute("INSERT INTO _replproxy_meta(key, value) VALUES ('deposed_by_epoch', 9)")
    finally:
        leader.close()
    conn.execute("SELECT 1")  # nothing to fence on reads
    before = cluster.leader_lsn()
    # No cluster.toml will name a new leader: the wait can only run out, however slow the machine.
    monkeypatch.setattr(dbapi_module, "FAILOVER_WAIT", 0.2)
    with pytest.raises(proxy.OperationalError, match="deposed by the failover to epoch 9"):
        conn.execute("INSERT INTO t(v) VALUES (1)")
    assert cluster.leader_lsn() == before
    assert not conn.in_transaction


def _setup_keys(conn):
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    for i in range(3):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"kept{i}",))


def test_refuses_a_target_that_is_behind_and_says_what_would_be_lost(cluster):
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _setup_keys(conn)
    cluster.wait_for_catchup(lsn=conn.last_write_lsn)
    behind = cluster.followers[1]
    cluster.pause(behind)
    for i in range(2):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"new{i}",))
    last = conn.last_write_lsn
    with pytest.raises(failover.FailoverRefused) as info:
        cluster.failover(behind)  # paused: it cannot catch up, the refusal comes at once
    message = str(info.value)
    assert f"would lose LSN {last - 1}..{last} (2 entries" in message and "--force" in message
    # Nothing changed: same leader, fence lifted, writes continue on it.
    assert cluster.leader == "node1"
    assert _meta(cluster.path_of("node1"), "deposed_by_epoch") is None
    conn.execute("INSERT INTO t(v) VALUES ('still')")
    assert conn.cursor().execute("SELECT 1").fetchone() == (1,)
    assert _meta(cluster.path_of("node1"), "epoch") == 1
    conn.close()


def test_forced_failover_records_lost_writes_and_does_not_reuse_keys(cluster):
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _setup_keys(conn)
    kept_lsn = cluster.wait_for_catchup(lsn=conn.last_write_lsn)
    target = cluster.followers[1]
    cluster.pause(target)
    for i in range(2):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"lost{i}",))  # ids 4 and 5 on node1 only
    cluster.wait_for_catchup(nodes=[cluster.followers[0]], lsn=conn.last_write_lsn)
    result = cluster.failover(target, force=True)  # paused: promoted as it is
    assert result.lost_lsns == (kept_lsn + 1, kept_lsn + 2) and result.lost_count == 2
    assert result.raised_sequences == {"t": 5}
    lines = (cluster.directory / f"lost-writes-epoch{result.epoch}.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["lsn"] for r in records] == [kept_lsn + 1, kept_lsn + 2]
    assert records[0]["events"][0]["new"] == {"id": 4, "v": "lost0"}
    assert any("LOST 2 entries" in line for line in result.lines())
    # The new leader hands out keys after the old leader's.
    cur = conn.execute("INSERT INTO t(v) VALUES ('after')")
    assert cur.node == target
    assert _rows(cluster.path_of(target))[-1] == (6, "after")
    # The old leader's lost transactions were undone (inverted row images): it follows the new
    # leader; the follower that had applied them needs a resync, and status says so.
    assert result.rewound == "inverted"
    states = {s.name: s.state for s in cluster.status()}
    assert states["node2"] == "needs-snapshot"
    cluster.wait_for_catchup(nodes=["node1"])
    assert _rows(cluster.path_of("node1")) == _rows(cluster.path_of(target))
    cluster.resync("node2")
    cluster.wait_for_catchup()
    assert verify(cluster).identical
    conn.close()


def test_sync_follower_promoted_loses_no_acknowledged_write(cluster):
    cluster.configure(mode="sync", sync_followers=["node3"], sync_timeout=HANG)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.pause("node2")  # an async follower left behind
    acked = []
    for i in range(5):
        conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
        acked.append((conn.last_write_lsn, i))
    # The old leader is gone (its file is unreachable): the sync follower is promoted as it is.
    old = cluster.path_of("node1")
    for suffix in ("", "-wal", "-shm"):
        if Path(str(old) + suffix).exists():
            Path(str(old) + suffix).rename(str(old) + suffix + ".crashed")
    result = cluster.failover()
    assert result.new_leader == "node3" and not result.old_leader_reachable
    assert [r[1] for r in _rows(cluster.path_of("node3"))] == [i for _, i in acked]
    assert cluster.leader_lsn() == acked[-1][0]
    cur = conn.execute("INSERT INTO t(v) VALUES ('next')")
    assert cur.node == "node3" and conn.last_write_lsn == acked[-1][0] + 1
    conn.close()


def test_write_in_flight_commits_before_the_fence_and_is_carried_over(cluster):
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.commit()
    conn.execute("INSERT INTO t(v) VALUES ('in flight')")  # holds node1's write lock
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(result=cluster.failover(timeout=10)))
    worker.start()
    conn.commit()  # the fence waits for this lock: the commit lands before it, on node1
    worker.join(HANG)
    result = done["result"]
    assert result.lsn == conn.last_write_lsn and result.lost_lsns is None
    assert _rows(cluster.path_of(result.new_leader)) == [(1, "in flight")]
    conn.execute("INSERT INTO t(v) VALUES ('next')")
    conn.commit()
    assert conn.last_write_lsn == result.lsn + 1
    assert verify(cluster).identical
    conn.close()


def test_cli_failover_refuses_then_forces(cluster):
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _setup_keys(conn)
    cluster.wait_for_catchup(lsn=conn.last_write_lsn)
    cluster.pause("node3")
    conn.execute("INSERT INTO t(v) VALUES ('x')")
    runner = CliRunner()
    refused = runner.invoke(main, ["failover", str(cluster.directory), "--to", "node3"])
    assert refused.exit_code == 1 and "would lose LSN 5..5 (1 entries" in refused.output
    forced = runner.invoke(main, ["failover", str(cluster.directory), "--to", "node3", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "node3 is the leader at epoch 2" in forced.output
    assert "LOST 1 entries of node1, LSN 5..5" in forced.output
    conn.close()
