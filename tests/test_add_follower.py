"""A new follower from a snapshot while writes continue; removing a follower; resync."""

from __future__ import annotations

import subprocess
import threading

import apsw
import pytest
from checks import file_rows
from click.testing import CliRunner
from helpers import HANG, applied, run_replproxy, spawn_python, wait_until

import proxy
from proxy import verify
from proxy.store import config as cfg
from proxy.tools.cli import main

# Writes until the file argv[2] exists (checked between two transactions), then prints how many.
WRITER = r'''
import os, sys
import proxy
conn = proxy.connect(sys.argv[1], autocommit=True)
i = 0
while not os.path.exists(sys.argv[2]):
    conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
    conn.execute("UPDATE c SET n = n + 1")
    i += 1
print(i)
'''


def _content(path) -> list:
    return file_rows(path, "SELECT id, v FROM t ORDER BY id")


def _setup(make_cluster, **options):
    cluster = make_cluster(**options)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("CREATE TABLE c(n)")
    conn.execute("INSERT INTO c VALUES (0)")
    return cluster, conn


def test_add_follower_while_a_thread_writes_loses_and_repeats_nothing(make_cluster):
    cluster, conn = _setup(make_cluster, followers=1)
    stop = threading.Event()
    written = []

    def write() -> None:
        writer = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
        i = 0
        while not stop.is_set():
            writer.execute("INSERT INTO t(v) VALUES (?)", (i,))
            writer.execute("UPDATE c SET n = n + 1")
            written.append(i)
            i += 1
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        wait_until(lambda: len(written) >= 50 or not thread.is_alive(), message="50 writes")
        lsn = cluster.add_follower("node9")
        before = len(written)
        wait_until(lambda: len(written) >= before + 50 or not thread.is_alive(), message="50 more writes")
    finally:
        stop.set()
        thread.join(HANG)
    assert not thread.is_alive() and len(written) >= before + 50
    assert lsn > 1
    assert "node9" in cluster.followers
    assert cfg.read(cluster.directory).node("node9").role == "follower"
    cluster.wait_for_catchup(20)
    report = verify(cluster, timeout=20)
    assert report.identical, report.differences
    rows = _content(cluster.path_of("node9"))
    assert len(rows) == len(written) and [v for _, v in rows] == list(range(len(written)))
    # The counter was incremented once per write: nothing applied twice.
    follower = apsw.Connection(str(cluster.path_of("node9")), flags=apsw.SQLITE_OPEN_READONLY)
    assert follower.execute("SELECT n FROM c").fetchone()[0] == len(written)
    # Its log holds the entries it applied after the snapshot (the snapshot's copy was cleared).
    assert follower.execute("SELECT min(lsn), max(lsn) FROM _replproxy_log").fetchone() == (
        lsn + 1, cluster.leader_lsn())
    assert follower.execute("SELECT value FROM _replproxy_meta WHERE key='node'").fetchone()[0] == "node9"
    follower.close()


def test_add_follower_cli_while_another_process_writes(make_cluster):
    cluster, conn = _setup(make_cluster, followers=1)
    cluster.close()
    stop = cluster.directory.parent / "stop-writer"
    writer = spawn_python(WRITER, cluster.directory, stop, stdin=subprocess.DEVNULL)
    try:
        # A backlog written while the snapshot is taken.
        wait_until(lambda: cluster.leader_lsn() >= 100 or writer.poll() is not None, message="a backlog")
        result = CliRunner().invoke(main, ["add-follower", str(cluster.directory), "late"])
        assert result.exit_code == 0, result.output
        assert "snapshot at LSN" in result.output and "caught up" in result.output
        added = cluster.leader_lsn()
        # The writer goes on after the new follower caught up: it follows those writes too.
        wait_until(lambda: cluster.leader_lsn() >= added + 20 or writer.poll() is not None,
                   message="writes after the add")
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=HANG)
    assert writer.returncode == 0
    count = int(out.strip())
    reopened = proxy.Cluster(cluster.directory)
    try:
        reopened.wait_for_catchup(HANG)
        assert verify(reopened, timeout=HANG).identical
        assert len(_content(reopened.path_of("late"))) == count
    finally:
        reopened.close()


def test_running_processes_pick_up_a_new_follower(make_cluster):
    cluster, conn = _setup(make_cluster, followers=1)
    # Another process adds the follower; this process's replicator must start moving it.
    run_replproxy("add-follower", cluster.directory, "extra", "--wait", "0")
    conn.execute("INSERT INTO t(v) VALUES ('after')")

    def added() -> bool:
        cluster.refresh_config()
        return "extra" in cluster.followers

    wait_until(added, message="this process sees the new follower")
    cluster.wait_for_catchup(HANG, nodes=["extra"])
    assert _content(cluster.path_of("extra"))[-1][1] == "after"


def test_add_follower_refuses_existing_names_and_files(make_cluster):
    cluster, _ = _setup(make_cluster, followers=1)
    with pytest.raises(proxy.ClusterError, match="already has a node"):
        cluster.add_follower("node2")
    (cluster.directory / "busy.db").write_bytes(b"")
    with pytest.raises(proxy.ClusterError, match="already exists"):
        cluster.add_follower("busy")


def test_remove_follower(make_cluster):
    cluster, conn = _setup(make_cluster, followers=2)
    result = CliRunner().invoke(main, ["remove-follower", str(cluster.directory), "node3"])
    assert result.exit_code == 0, result.output
    assert [n.name for n in cfg.read(cluster.directory).followers] == ["node2"]
    cluster.refresh_config()
    assert cluster.followers == ["node2"]
    assert cluster.path_of("node2").exists() and (cluster.directory / "node3.db").exists()
    conn.execute("INSERT INTO t(v) VALUES (1)")
    cluster.wait_for_catchup(10)
    bad = CliRunner().invoke(main, ["remove-follower", str(cluster.directory), "node1"])
    assert bad.exit_code == 1 and "leader" in bad.output


def test_sync_follower_added_with_sync_role(make_cluster):
    cluster, conn = _setup(make_cluster, followers=1)
    cluster.add_follower("s1", replication="sync")
    cluster.configure(mode="sync", sync_timeout=HANG)
    conn.execute("INSERT INTO t(v) VALUES (1)")
    assert applied(cluster, "s1") == conn.last_write_lsn  # on its file when the commit returned


def test_trigger_format_snapshot_leaves_capture_machinery_on_the_leader(make_cluster):
    cluster, conn = _setup(make_cluster, followers=1, format="trigger")
    conn.execute("INSERT INTO t(v) VALUES (1)")
    cluster.add_follower("node9")
    conn.execute("INSERT INTO t(v) VALUES (2)")
    cluster.wait_for_catchup(10)
    follower = apsw.Connection(str(cluster.path_of("node9")), flags=apsw.SQLITE_OPEN_READONLY)
    leftovers = follower.execute("SELECT name FROM sqlite_master WHERE name LIKE '_replproxy_capture%' "
                                 "OR type = 'trigger'").fetchall()
    follower.close()
    assert leftovers == []
    assert verify(cluster, timeout=10).identical


def test_retention_hold_pins_entries_during_add_and_is_dropped_after(make_cluster, monkeypatch):
    from proxy.store import node as store

    cluster, conn = _setup(make_cluster, followers=1)
    cluster.configure(retain_min_entries=0)
    lsn = cluster.add_follower("node9")
    assert cluster.replication_status()["retention_holds"] == {"node9": lsn}
    cluster.pause("node9")
    for i in range(5):
        conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
    cluster.wait_for_catchup(10, nodes=["node2"])
    cluster.truncate_log()
    assert cluster.entries(1)[0].lsn == lsn + 1  # pinned for the paused new follower
    # Once its grace is over the hold is gone from status at once (no retention pass needed:
    # nothing may run one, e.g. no `serve`), and the next pass deletes it.
    monkeypatch.setattr(store, "HOLD_GRACE", 0.0)
    assert cluster.replication_status()["retention_holds"] == {}
    cluster.truncate_log()
    assert cluster.replication_status()["retention_holds"] == {}
    with cluster.node(cluster.leader) as leader:
        assert store.retention_holds(leader) == {}
    # A failed add leaves no hold behind.
    (cluster.directory / "x.db").write_bytes(b"")
    with pytest.raises(proxy.ClusterError):
        cluster.add_follower("y", file="x.db")
    assert cluster.replication_status()["retention_holds"] == {}
