"""Log retention: entries stay until every follower applied them, within size and age limits."""

from __future__ import annotations

import json
import os
import time

import apsw
from click.testing import CliRunner

import proxy
from proxy import verify
from proxy.tools.cli import main


def _log_span(cluster: proxy.Cluster) -> tuple[int | None, int | None, int]:
    conn = apsw.Connection(str(cluster.path_of(cluster.leader)), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT min(lsn), max(lsn), count(*) FROM _replproxy_log").fetchone()
    finally:
        conn.close()


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
    deadline = time.monotonic() + 10
    while {s.name: s for s in cluster.status()}["node3"].error is None or \
            "new snapshot" not in {s.name: s for s in cluster.status()}["node3"].error:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    result = CliRunner().invoke(main, ["resync", str(cluster.directory), "node3"])
    assert result.exit_code == 0, result.output
    conn.execute("INSERT INTO t(v) VALUES ('after resync')")
    cluster.wait_for_catchup(10)
    assert verify(cluster, timeout=10).identical
    assert {s.name: s for s in cluster.status()}["node3"].state == "ok"


def test_age_limit(make_cluster):
    cluster = _no_history(make_cluster(followers=1))
    cluster.configure(retain_max_age=0.05)
    cluster.pause("node2")
    conn = _writes(cluster, 10)
    deadline = time.monotonic() + 5
    while time.time() - cluster.entries(1, 1)[0].committed_at < 0.1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cluster.truncate_log()
    first, last, count = _log_span(cluster)
    assert count == 1 and last == conn.last_write_lsn


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
    from proxy.cluster import retention

    monkeypatch.setattr(retention, "RETENTION_INTERVAL", 0.02)
    cluster = _no_history(make_cluster(followers=1))
    conn = _writes(cluster, 40)
    cluster.wait_for_catchup(10)
    conn.execute("INSERT INTO t(v) VALUES ('wake')")
    deadline = time.monotonic() + 10
    while _log_span(cluster)[2] > 2:
        cluster.notify_commit()
        assert time.monotonic() < deadline
        time.sleep(0.02)


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
    from proxy.cluster import retention

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
    deadline = time.monotonic() + 15
    while (node3 := {s.name: s for s in cluster.status()}["node3"]).applied_lsn < conn.last_write_lsn:
        assert time.monotonic() < deadline, node3
        time.sleep(0.02)
    assert verify(cluster, timeout=10).identical
    assert {s.name: s for s in cluster.status()}["node3"].state == "ok"
