"""Replication modes: async, sync (remote apply) and semi-sync with degradation and recovery."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from click.testing import CliRunner
from helpers import HANG, ManualClock, in_background, replproxy_command, run_replproxy, wait_until
from helpers import applied as _applied

import proxy
from proxy.cluster import modes
from proxy.store import config as cfg
from proxy.tools.cli import main

# A sync_timeout no healthy follower reaches, even on a busy machine. The tests that need a wait
# to run out move the cluster's clock past it (`ManualClock`) rather than waiting.
PATIENT = HANG


def test_default_mode_is_async_and_written_to_cluster_toml(make_cluster):
    cluster = make_cluster()
    assert cluster.config.mode == "async"
    text = cfg.config_path(cluster.directory).read_text()
    assert 'mode = "async"' in text and 'replication = "async"' in text
    assert cluster.config.applier_synchronous("node2") == "normal"


def test_sync_commit_returns_only_once_every_sync_follower_applied_it(make_cluster):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="sync", sync_followers=["node2", "node3"], sync_timeout=PATIENT)
    assert cluster.config.applier_synchronous("node2") == "full"
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    for i in range(20):
        conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
        lsn = conn.last_write_lsn
        # Checked on the follower files directly, at the moment the commit returned.
        assert _applied(cluster, "node2") >= lsn and _applied(cluster, "node3") >= lsn
    conn.close()


def _commit_in_background(cluster: proxy.Cluster, sql: str):
    """Run `sql` on a connection of its own in another thread (a Connection is not shared)."""

    def commit() -> int:
        conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
        try:
            conn.execute(sql)
            return conn.last_write_lsn
        finally:
            conn.close()

    return in_background(commit)


def _held_until_the_deadline(cluster: proxy.Cluster, clock: ManualClock, sql: str):
    """Commit `sql` in another thread while `clock` stands still; check it is still waiting once it
    has read the clock a few times (deadline set, positions re-checked); then move the clock past
    `sync_timeout` and return the commit's future."""
    before = clock.reads
    commit = _commit_in_background(cluster, sql)
    try:
        clock.wait_for_reads(before + 3)
        assert not commit.done(), "the commit returned before its timeout"
    finally:
        clock.advance(cluster.config.sync_timeout + 1)  # also frees a waiter when the check failed
    return commit


def test_sync_follower_unavailable_fails_after_timeout_naming_it_but_write_is_committed(make_cluster):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=PATIENT)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.pause("node2")
    cluster.clock = clock = ManualClock()
    commit = _held_until_the_deadline(cluster, clock, "INSERT INTO t(v) VALUES ('held')")
    with pytest.raises(proxy.SyncReplicationTimeout) as info:
        commit.result(HANG)
    cluster.clock = time.monotonic
    message = str(info.value)
    assert "node2" in message and "paused" in message and "IS committed on the leader" in message
    assert info.value.nodes == ("node2",)
    # Committed on the leader: other sessions see it.
    other = proxy.connect(cluster.directory, cluster=cluster, consistency="strong")
    assert other.execute("SELECT v FROM t").fetchall() == [("held",)]
    cluster.resume("node2")
    cluster.wait_for_catchup(HANG)
    conn.execute("INSERT INTO t(v) VALUES ('after')")  # the connection stays usable
    assert _applied(cluster, "node2") == conn.last_write_lsn


def test_async_follower_does_not_hold_sync_commits(make_cluster):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=PATIENT)
    cluster.pause("node3")
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(a)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert _applied(cluster, "node2") == conn.last_write_lsn
    assert _applied(cluster, "node3") == 0


def test_semi_sync_waits_for_k_then_degrades_and_recovers(make_cluster, caplog):
    cluster = make_cluster(followers=2)
    cluster.configure(mode="semi-sync", semi_sync_k=2, sync_timeout=PATIENT)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(a)")
    assert min(_applied(cluster, "node2"), _applied(cluster, "node3")) >= conn.last_write_lsn
    cluster.pause("node3")
    cluster.clock = clock = ManualClock()
    with caplog.at_level("WARNING", logger="replproxy.modes"):
        # Only one follower can apply it: the commit waits for k=2 until the timeout, then
        # degrades the cluster instead of failing.
        commit = _held_until_the_deadline(cluster, clock, "INSERT INTO t VALUES (1)")
        assert commit.result(HANG) > conn.last_write_lsn
    assert "degraded to async" in caplog.text
    state = cluster.replication_status()
    assert state["degraded"] and "node3" in state["degraded_reason"]
    # Degraded: async. The clock stands still and node3 is paused, so a commit that waited for
    # k followers could never return: this one returns without waiting.
    reads = clock.reads
    _commit_in_background(cluster, "INSERT INTO t VALUES (2)").result(HANG)
    assert clock.reads == reads, "the degraded commit measured a timeout: it waited"
    cluster.clock = time.monotonic
    # Another process agrees: the state lives in the leader's file.
    out = CliRunner().invoke(main, ["status", str(cluster.directory), "--json"])
    assert json.loads(out.output)["replication"]["degraded"] is True
    assert "DEGRADED" in CliRunner().invoke(main, ["status", str(cluster.directory)]).output
    cluster.resume("node3")
    wait_until(lambda: not cluster.replication_status()["degraded"], cluster=cluster,
               message="the replicator restores semi-sync once k followers caught up")
    conn.execute("INSERT INTO t VALUES (3)")
    assert min(_applied(cluster, "node2"), _applied(cluster, "node3")) >= conn.last_write_lsn


def test_mode_change_in_another_process_is_picked_up_without_reconnecting(make_cluster):
    cluster = make_cluster(followers=1)
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(a)")
    cluster.pause("node2")
    conn.execute("INSERT INTO t VALUES (1)")  # async: returns at once
    # node2 is paused: the 0.2 s timeout can only run out, however slow the machine.
    result = run_replproxy("config", cluster.directory, "--mode", "sync", "--sync-followers", "node2",
                           "--timeout", "0.2")
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
    cluster.configure(mode="sync", sync_followers=["node2"], sync_timeout=PATIENT)
    cluster.close()
    writer = proxy.Cluster(cluster.directory, replicate=False)
    mover = subprocess.Popen([*replproxy_command(), "serve", str(cluster.directory)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = proxy.connect(cluster.directory, cluster=writer, autocommit=True)
        conn.execute("CREATE TABLE t(a)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert _applied(writer, "node2") == conn.last_write_lsn
    finally:
        mover.terminate()
        mover.wait(HANG)
        writer.close()


def test_concurrent_sync_committers_each_see_their_write_on_the_sync_follower(make_cluster):
    import threading

    cluster = make_cluster(followers=2)
    cluster.configure(mode="semi-sync", semi_sync_k=2, sync_timeout=PATIENT)
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
        thread.join(HANG)
        assert not thread.is_alive()
    assert not failures
    assert not cluster.replication_status()["degraded"]
