"""Crash safety of the replication modes and of new followers.

- A writer in sync mode is SIGKILLed at random points: every write it acknowledged (commit()
  returned) is already on the synchronous follower's file — checked with apsw on the file itself,
  while the writer runs and after it died — and the cluster ends identical.
- A process catching up a follower added from a snapshot is SIGKILLed mid catch-up: the follower's
  data always matches its own applied LSN, and it ends identical.
- A corrupted entry stops the follower that meets it (a sync follower, a new follower) with a clear
  error; nothing of it is applied, and a sync commit waiting for it fails naming that follower.

The workload and its checks are test_crash.py's (tests/helpers.py; same seed variable,
REPLPROXY_CRASH_SEED).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import apsw
import pytest
from helpers import (
    APPLIER_SCRIPT,
    CRASH_SEED,
    HANG,
    Child,
    ManualClock,
    applied_lsn,
    check_cluster,
    check_follower_at_its_position,
    check_groups,
    counter_of,
    create_tables,
    open_plain,
    rows_of,
    state_error,
    wait_until,
    write_backlog,
)

import proxy

SEED = CRASH_SEED

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

ITERATIONS = 20

# The writer of test_crash, with a fast path: it prints its acknowledgement after commit() returned.
SYNC_WRITER = r'''
import sys, time
import proxy

directory = sys.argv[1]
conn = proxy.connect(directory, consistency="strong")  # max(seq) from the leader
cur = conn.cursor()
cur.execute("BEGIN")
cur.execute("SELECT coalesce(max(seq), 0) FROM t")
(last,) = cur.fetchone()
conn.rollback()
started = time.monotonic()
i = 0
while time.monotonic() - started < 60:
    size = 3 if i % 4 == 3 else 1
    first = last + 1
    for k in range(size):
        cur.execute("INSERT INTO t(seq, payload) VALUES (?, ?)", (first + k, f"{first}/{size}/{k}/s"))
        cur.execute("UPDATE counter SET n = n + 1")
    conn.commit()
    last = first + size - 1
    sys.stdout.write(f"{first} {last}\n")
    sys.stdout.flush()
    i += 1
'''


def _seqs(path: Path) -> set[int]:
    conn = open_plain(path)
    try:
        return {r[0] for r in conn.execute("SELECT seq FROM t")}
    finally:
        conn.close()


def test_sync_writer_killed_every_acknowledged_write_is_on_the_sync_follower(tmp_path: Path) -> None:
    rng = random.Random(SEED + 7)
    directory = tmp_path / "cluster"
    cluster = proxy.Cluster.init(directory, followers=2)
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=20)
    create_tables(directory, cluster)
    cluster.wait_for_catchup(10)
    cluster.close()
    script = tmp_path / "writer.py"
    script.write_text(SYNC_WRITER)
    leader_path, sync_path = directory / "node1.db", directory / "node2.db"
    acknowledged: set[int] = set()
    for iteration in range(ITERATIONS):
        context = f"seed {SEED + 7}, iteration {iteration}"
        child = Child(script, str(directory), stderr_path=tmp_path / f"w{iteration}.err")
        try:
            wanted = rng.randint(1, 12)
            lines: list[str] = []
            deadline = time.monotonic() + HANG
            while len(lines) < wanted:
                assert time.monotonic() < deadline, f"{context}: writer stalled: {child.stderr()}"
                got = child.read_lines(1.0)
                assert got or child.proc.poll() is None, f"{context}: writer died: {child.stderr()}"
                lines += got
                # While it runs: what it acknowledged is already on the sync follower's file.
                for line in got:
                    first, last = map(int, line.split())
                    on_follower = _seqs(sync_path)
                    assert set(range(first, last + 1)) <= on_follower, (
                        f"{context}: acknowledged {first}..{last} not yet on node2")
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 0.02))
            lines += child.kill_and_drain()
        finally:
            child.close()
        for line in lines:
            first, last = map(int, line.split())
            acknowledged.update(range(first, last + 1))
        missing = sorted(acknowledged - _seqs(sync_path))
        assert not missing, f"{context}: acknowledged writes missing on sync follower: {missing[:20]}"
        assert not sorted(acknowledged - _seqs(leader_path)), f"{context}: lost on the leader"
        leader_rows, follower_rows = rows_of(leader_path), rows_of(sync_path)
        assert follower_rows == leader_rows[:len(follower_rows)], f"{context}: node2 is not a prefix"
        assert counter_of(sync_path) == len(follower_rows), f"{context}: node2 half applied"
        check_groups(leader_rows, context)
        assert state_error(sync_path) is None
    assert len(acknowledged) >= ITERATIONS
    check_cluster(directory, f"seed {SEED + 7}, final")


def test_new_follower_catch_up_killed_mid_apply(tmp_path: Path) -> None:
    rng = random.Random(SEED + 8)
    directory = tmp_path / "cluster"
    cluster = proxy.Cluster.init(directory, followers=1, replicate=False)
    base = create_tables(directory, cluster)
    write_backlog(directory, cluster, 1, 300)
    snapshot_lsn = cluster.add_follower("node9")
    assert snapshot_lsn == base + 300
    path = cluster.path_of("node9")
    assert len(rows_of(path)) == 300 and applied_lsn(path) == snapshot_lsn
    write_backlog(directory, cluster, 301, 1500)
    leader_lsn = cluster.leader_lsn()
    script = tmp_path / "applier.py"
    script.write_text(APPLIER_SCRIPT)
    try:
        for round_ in range(3):
            context = f"seed {SEED + 8}, round {round_}"
            start = applied_lsn(path)
            if start >= leader_lsn:
                break
            child = Child(script, str(directory), stderr_path=tmp_path / f"a{round_}.err")
            try:
                deadline = time.monotonic() + HANG
                while applied_lsn(path) == start:
                    assert time.monotonic() < deadline, f"{context}: no progress: {child.stderr()}"
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 0.005))
                child.kill_and_drain()
            finally:
                child.close()
            check_follower_at_its_position(path, base, context)
    finally:
        cluster.close()
    report = check_cluster(directory, f"seed {SEED + 8}, final")
    assert report.lsn == leader_lsn and len(rows_of(path)) == 1800


def _corrupt(leader_path: Path, lsn: int, torn: bool = True) -> None:
    """torn: the payload loses its last byte; otherwise it is damaged into TEXT."""
    change = "substr(payload, 1, length(payload) - 1)" if torn else "payload || x'00'"
    conn = open_plain(leader_path)
    try:
        conn.execute(f"UPDATE _replproxy_log SET payload = {change} WHERE lsn = ?", (lsn,))
    finally:
        conn.close()


def test_corrupt_entry_stops_a_sync_follower_and_the_waiting_commit_names_it(make_cluster):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=HANG)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    good = conn.last_write_lsn
    cluster.pause("node2")
    # Every timeout runs out at once: the cluster's clock jumps past it on each reading.
    cluster.clock = clock = ManualClock()
    clock.advance_on_read = 2 * HANG
    with pytest.raises(proxy.SyncReplicationTimeout):
        conn.execute("INSERT INTO t(v) VALUES ('torn')")
    bad = conn.last_write_lsn
    _corrupt(cluster.path_of("node1"), bad)
    cluster.resume("node2")
    path = cluster.path_of("node2")
    wait_until(lambda: state_error(path), cluster=cluster, message="node2 meets the corrupt entry")
    with pytest.raises(proxy.SyncReplicationTimeout) as info:
        conn.execute("INSERT INTO t(v) VALUES ('next')")
    assert "node2" in str(info.value) and "corrupt" in str(info.value)
    assert applied_lsn(path) == good
    assert f"log entry {bad} is corrupt" in state_error(path)
    follower = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    assert follower.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # nothing wrong applied
    follower.close()


def test_corrupt_entry_stops_a_follower_catching_up_from_a_snapshot(make_cluster):
    cluster = make_cluster(followers=1)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t(v) VALUES (1)")
    cluster.close()
    offline = proxy.Cluster(cluster.directory, replicate=False)
    try:
        lsn = offline.add_follower("node9")
        writer = proxy.connect(cluster.directory, cluster=offline, autocommit=True)
        writer.execute("INSERT INTO t(v) VALUES (2)")
        writer.execute("INSERT INTO t(v) VALUES (3)")
        _corrupt(offline.path_of("node1"), lsn + 2, torn=False)
        writer.close()
    finally:
        offline.close()
    reopened = proxy.Cluster(cluster.directory)
    try:
        with pytest.raises(proxy.ReplicationTimeout, match="corrupt"):
            reopened.wait_for_catchup(HANG, nodes=["node9"])  # returns early once node9 stopped
        path = reopened.path_of("node9")
        assert applied_lsn(path) == lsn + 1
        assert f"log entry {lsn + 2} is corrupt" in state_error(path)
        assert [r[0] for r in apsw.Connection(str(path)).execute("SELECT v FROM t ORDER BY id")] == [1, 2]
        status = {s.name: s for s in reopened.status()}["node9"]
        assert status.state == "error" and "corrupt" in status.error
    finally:
        reopened.close()
