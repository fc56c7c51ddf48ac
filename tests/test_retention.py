"""Log retention: entries stay until every follower applied them, within size and age limits."""

from __future__ import annotations

import json
import os

import apsw
from click.testing import CliRunner
from helpers import wait_until

import proxy
from proxy import verify
from proxy.cluster import retention
from proxy.tools.cli import main


def _log_span(cluster: proxy.Cluster) -> tuple[int | None, int | None, int]:
    """(first LSN, last LSN, number of entries) of the leader's retained log."""
    lsns = [e.lsn for e in cluster.entries()]
    return (lsns[0], lsns[-1], len(lsns)) if lsns else (None, None, 0)


def _status(cluster: proxy.Cluster, node: str) -> proxy.NodeStatus:
    return {s.name: s for s in cluster.status()}[node]


def _no_history(cluster: proxy.Cluster) -> proxy.Cluster:
    cluster.configure(retain_min_entries=0)
    return cluster


def _writes(cluster: proxy.Cluster, count: int, size: int = 100) -> proxy.Connection:
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v)")
    for _ in range(count):
        conn.execute("INSERT INTO t(v) VALUES (?)", ("x" * size,))
    return conn


def test_entries_every_follower_applied_are_removed_but_the_last_stays(make_cluster):
    cluster = _no_history(make_cluster(followers=2))
    conn = _writes(cluster, 30)
    cluster.wait_for_catchup(10)
    removed = cluster.truncate_log()
    first, last, count = _log_span(cluster)
    assert removed >= 1 and first == last == conn.last_write_lsn and count == 1
    # LSNs are never reused: the next entry follows the last one.
    conn.execute("INSERT INTO t(v) VALUES ('next')")
    assert conn.last_write_lsn == last + 1
    assert cluster.truncate_log() == 0 or _log_span(cluster)[0] <= conn.last_write_lsn


def test_a_paused_follower_holds_its_slot(make_cluster):
    cluster = _no_history(make_cluster(followers=2))
    conn = _writes(cluster, 5)
    cluster.wait_for_catchup(10)
    cluster.pause("node3")
    held = conn.last_write_lsn
    _writes(cluster, 20)
    cluster.wait_for_catchup(10, nodes=["node2"])
    cluster.truncate_log()
    first, last, _ = _log_span(cluster)
    assert first == held + 1  # everything node3 still needs is there
    cluster.resume("node3")
    cluster.wait_for_catchup(10)
    assert verify(cluster, timeout=10).identical


def test_size_limit_leaves_a_follower_behind_which_status_reports_and_resync_repairs(make_cluster):
    cluster = _no_history(make_cluster(followers=2))
    cluster.configure(retain_max_bytes=2000)
    conn = _writes(cluster, 2)
    cluster.wait_for_catchup(10)
    cluster.pause("node3")
    _writes(cluster, 60, size=200)
    cluster.wait_for_catchup(10, nodes=["node2"])
    cluster.truncate_log()
    state = cluster.replication_status()
    assert state["retained_bytes"] <= 2000 + 400
    node3 = {s.name: s for s in cluster.status()}["node3"]
    assert node3.state == "needs-snapshot" and "resync" in node3.error
    out = json.loads(CliRunner().invoke(main, ["status", str(cluster.directory), "--json"]).output)
    assert [n["state"] for n in out["nodes"] if n["name"] == "node3"] == ["needs-snapshot"]
    # Resumed, it stops with the applier's own error instead of diverging.
    cluster.resume("node3")
    wait_until(lambda: "new snapshot" in (_status(cluster, "node3").error or ""), cluster=cluster,
               message="node3 stops with the applier's error")
    result = CliRunner().invoke(main, ["resync", str(cluster.directory), "node3"])
    assert result.exit_code == 0, result.output
    conn.execute("INSERT INTO t(v) VALUES ('after resync')")
    cluster.wait_for_catchup(10)
    assert verify(cluster, timeout=10).identical
    assert {s.name: s for s in cluster.status()}["node3"].state == "ok"


def test_age_limit(make_cluster):
    cluster = _no_history(make_cluster(followers=1))
    cluster.configure(retain_max_age=60)
    cluster.pause("node2")  # its slot would keep every entry: only the age limit removes any
    conn = _writes(cluster, 10)
    committed = [e.committed_at for e in cluster.entries()]
    # The limit is measured against the cluster's wall clock, moved here instead of waiting.
    assert retention.truncate_log(cluster, now=max(committed) + 59) == 0
    assert _log_span(cluster)[2] == len(committed)
    cluster.wall_clock = lambda: max(committed) + 61
    assert cluster.truncate_log() == len(committed) - 1
    first, last, count = _log_span(cluster)
    assert count == 1 and last == conn.last_write_lsn  # the last entry always stays


def test_leader_file_does_not_grow_under_a_steady_workload(make_cluster):
    cluster = _no_history(make_cluster(followers=2))
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t VALUES (1, '')")
    leader = cluster.path_of(cluster.leader)
    sizes = []
    for _ in range(5):
        for i in range(300):  # rewrites one row: the data does not grow, only the log would
            conn.execute("UPDATE t SET v = ? WHERE id = 1", ("y" * 500 + str(i),))
        cluster.wait_for_catchup(10)
        cluster.truncate_log()
        ckpt = apsw.Connection(str(leader))
        ckpt.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        ckpt.close()
        sizes.append(os.path.getsize(leader))
    assert _log_span(cluster)[2] <= 2
    # Freed log pages are reused: after the first rounds the file stops growing.
    assert sizes[-1] <= sizes[1] * 1.1, sizes


def test_replicator_truncates_by_itself(make_cluster, monkeypatch):
    monkeypatch.setattr(retention, "RETENTION_INTERVAL", 0.02)
    cluster = _no_history(make_cluster(followers=1))
    conn = _writes(cluster, 40)
    cluster.wait_for_catchup(10)
    conn.execute("INSERT INTO t(v) VALUES ('wake')")

    def truncated() -> bool:
        cluster.notify_commit()  # a round of the replicator, where retention runs
        return _log_span(cluster)[2] <= 2

    wait_until(truncated, cluster=cluster, poll=0.02, message="the replicator truncates the log")


def test_the_last_entries_are_kept_as_history_by_default(make_cluster):
    cluster = make_cluster(followers=1)
    assert cluster.config.retain_min_entries == 100_000
    conn = _writes(cluster, 20)
    cluster.wait_for_catchup(10)
    assert cluster.truncate_log() == 0
    cluster.configure(retain_min_entries=5)
    cluster.truncate_log()
    first, last, count = _log_span(cluster)
    assert count == 5 and last == conn.last_write_lsn


def test_auto_resync_reseeds_a_follower_left_behind(make_cluster, monkeypatch):
    monkeypatch.setattr(retention, "RETENTION_INTERVAL", 0.05)
    cluster = _no_history(make_cluster(followers=2))
    result = CliRunner().invoke(main, ["config", str(cluster.directory), "--retain-max-bytes", "1500",
                                       "--auto-resync"])
    assert result.exit_code == 0 and "auto-resync" in result.output
    conn = _writes(cluster, 2)
    cluster.wait_for_catchup(10)
    cluster.pause("node3")
    _writes(cluster, 40, size=200)
    cluster.wait_for_catchup(10, nodes=["node2"])
    cluster.truncate_log()
    assert {s.name: s for s in cluster.status()}["node3"].state == "needs-snapshot"
    cluster.resume("node3")  # paused followers are left alone; resumed, it is re-seeded
    conn.execute("INSERT INTO t(v) VALUES ('last')")
    wait_until(lambda: _status(cluster, "node3").applied_lsn >= conn.last_write_lsn, cluster=cluster,
               poll=0.02, message="node3 re-seeded and caught up")
    assert verify(cluster, timeout=10).identical
    assert {s.name: s for s in cluster.status()}["node3"].state == "ok"
