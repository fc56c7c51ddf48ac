"""Replication modes: async, sync (remote apply) and semi-sync with degradation and recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import apsw
import pytest
from click.testing import CliRunner

import proxy
from proxy.cluster import modes
from proxy.store import config as cfg
from proxy.tools.cli import main


def _applied(cluster: proxy.Cluster, node: str) -> int:
    conn = apsw.Connection(str(cluster.path_of(node)), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT applied_lsn FROM _replproxy_state").fetchone()[0]
    finally:
        conn.close()


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_default_mode_is_async_and_written_to_cluster_toml(make_cluster):
    cluster = make_cluster()
    assert cluster.config.mode == "async"
    text = cfg.config_path(cluster.directory).read_text()
    assert 'mode = "async"' in text and 'replication = "async"' in text
    assert cluster.config.applier_synchronous("node2") == "normal"


def test_sync_commit_returns_only_once_every_sync_follower_applied_it(make_cluster):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="sync", sync_followers=["node2", "node3"], sync_timeout=5)
    assert cluster.config.applier_synchronous("node2") == "full"
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    for i in range(20):
        conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
        lsn = conn.last_write_lsn
        # Checked on the follower files directly, at the moment the commit returned.
        assert _applied(cluster, "node2") >= lsn and _applied(cluster, "node3") >= lsn
    conn.close()


def test_sync_follower_unavailable_fails_after_timeout_naming_it_but_write_is_committed(make_cluster):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=0.3)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.pause("node2")
    started = time.monotonic()
    with pytest.raises(proxy.SyncReplicationTimeout) as info:
        conn.execute("INSERT INTO t(v) VALUES ('held')")
    assert time.monotonic() - started >= 0.3
    message = str(info.value)
    assert "node2" in message and "paused" in message and "IS committed on the leader" in message
    assert info.value.nodes == ("node2",)
    # Committed on the leader: other sessions see it.
    other = proxy.connect(cluster.directory, cluster=cluster, consistency="strong")
    assert other.execute("SELECT v FROM t").fetchall() == [("held",)]
    cluster.resume("node2")
    cluster.wait_for_catchup(5)
    conn.execute("INSERT INTO t(v) VALUES ('after')")  # the connection stays usable
    assert _applied(cluster, "node2") == conn.last_write_lsn


def test_async_follower_does_not_hold_sync_commits(make_cluster):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=5)
    cluster.pause("node3")
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(a)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert _applied(cluster, "node2") == conn.last_write_lsn
    assert _applied(cluster, "node3") == 0


def test_semi_sync_waits_for_k_then_degrades_and_recovers(make_cluster, caplog):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="semi-sync", semi_sync_k=2, sync_timeout=0.3)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(a)")
    assert min(_applied(cluster, "node2"), _applied(cluster, "node3")) >= conn.last_write_lsn
    cluster.pause("node3")
    with caplog.at_level("WARNING", logger="replproxy.modes"):
        conn.execute("INSERT INTO t VALUES (1)")  # waits 0.3 s, then degrades: no error
    assert "degraded to async" in caplog.text
    state = cluster.replication_status()
    assert state["degraded"] and "node3" in state["degraded_reason"]
    started = time.monotonic()
    conn.execute("INSERT INTO t VALUES (2)")  # degraded: async, no wait
    assert time.monotonic() - started < 0.25
    # Another process agrees: the state lives in the leader's file.
    out = CliRunner().invoke(main, ["status", str(cluster.directory), "--json"])
    assert json.loads(out.output)["replication"]["degraded"] is True
    assert "DEGRADED" in CliRunner().invoke(main, ["status", str(cluster.directory)]).output
    cluster.resume("node3")
    _wait_until(lambda: not cluster.replication_status()["degraded"])
    conn.execute("INSERT INTO t VALUES (3)")
    assert min(_applied(cluster, "node2"), _applied(cluster, "node3")) >= conn.last_write_lsn


def test_mode_change_in_another_process_is_picked_up_without_reconnecting(make_cluster):
    cluster = make_cluster(followers=1)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(a)")
    cluster.pause("node2")
    conn.execute("INSERT INTO t VALUES (1)")  # async: returns at once
    result = subprocess.run([sys.executable, "-m", "proxy.tools.cli", "config", str(cluster.directory),
                             "--mode", "sync", "--sync-followers", "node2", "--timeout", "0.2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "mode sync" in result.stdout
    with pytest.raises(proxy.SyncReplicationTimeout):
        conn.execute("INSERT INTO t VALUES (2)")
    assert cluster.config.mode == "sync"
    assert modes.read_degraded(cluster.open_node("node1")) is None


def test_config_command_validates(make_cluster):
    cluster = make_cluster(followers=1)
    runner = CliRunner()
    bad = runner.invoke(main, ["config", str(cluster.directory), "--mode", "sync"])
    assert bad.exit_code == 1 and "at least one sync follower" in bad.output
    bad = runner.invoke(main, ["config", str(cluster.directory), "--sync-followers", "nodeX"])
    assert bad.exit_code == 1 and "nodeX" in bad.output
    ok = runner.invoke(main, ["config", str(cluster.directory), "--mode", "semi-sync", "--semi-sync-k", "1"])
    assert ok.exit_code == 0 and "semi-sync (k=1" in ok.output
    status = runner.invoke(main, ["status", str(cluster.directory)])
    assert "mode semi-sync" in status.output and "sync" in status.output


def test_sync_waits_on_another_process_replicator(make_cluster):
    """With no replicator in the committing process, the wait reads the follower files."""
    cluster = make_cluster(followers=1)
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=10)
    cluster.close()
    writer = proxy.Cluster(cluster.directory, replicate=False)
    mover = subprocess.Popen([sys.executable, "-m", "proxy.tools.cli", "serve", str(cluster.directory)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        conn = proxy.connect(cluster.directory, cluster=writer, autocommit=True)
        conn.execute("CREATE TABLE t(a)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert _applied(writer, "node2") == conn.last_write_lsn
    finally:
        mover.terminate()
        mover.wait(10)
        writer.close()


def test_concurrent_sync_committers_each_see_their_write_on_the_sync_follower(make_cluster):
    import threading

    cluster = make_cluster(followers=2)
    cluster.configure(mode="semi-sync", semi_sync_k=2, sync_timeout=10)
    setup = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    setup.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, who, i)")
    failures: list[str] = []

    def committer(who: int) -> None:
        conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
        for i in range(15):
            conn.execute("INSERT INTO t(who, i) VALUES (?, ?)", (who, i))
            lsn = conn.last_write_lsn
            low = min(_applied(cluster, "node2"), _applied(cluster, "node3"))
            if low < lsn:
                failures.append(f"thread {who}: LSN {lsn} acknowledged with a follower at {low}")
        conn.close()

    threads = [threading.Thread(target=committer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    assert not cluster.replication_status()["degraded"]
