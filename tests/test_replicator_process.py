"""The embedded default moves its followers in a process of its own (store/child.py): the
application's writers do not share the interpreter lock with the followers' work. These tests open
clusters with `replicate="process"` explicitly (the suite's other tests use the thread, see
conftest.py): replication, sync acknowledgements, reloads, and the child's life tied to the
application's."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from checks import assert_identical
from helpers import HANG, spawn_python, wait_until

import proxy
from proxy.cluster.facade import REPLICATOR_ENV, replicator_kind
from proxy.store.child import ReplicatorProcess
from proxy.tools.workloads import WORKLOADS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a child of this process that exited is a zombie until reaped
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not ours: it exists
    return done == 0


@pytest.mark.parametrize("fmt", ["row", "statement", "trigger", "mixed"])
def test_a_real_workload_leaves_every_follower_identical(make_cluster, fmt: str) -> None:
    cluster = make_cluster(format=fmt, synchronous="normal", replicate="process")
    assert isinstance(cluster.replicator, ReplicatorProcess)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    WORKLOADS["oltp"](conn, 1)
    WORKLOADS["nondeterministic"](conn, 1)
    conn.close()
    lsn = cluster.wait_for_catchup(timeout=HANG)
    # The files have it; the child's report of it crosses a pipe after its rounds.
    wanted = {name: lsn for name in cluster.followers}
    wait_until(lambda: cluster.replicator.applied == wanted, HANG, poll=0.01,
               message=f"the child reports every follower at LSN {lsn}")
    assert_identical(cluster)


def test_sync_commits_are_acknowledged_by_the_child(make_cluster) -> None:
    cluster = make_cluster(replicate="process")
    cluster.configure(mode="sync", sync_followers=["node2"])
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(20):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"v{i}",))
        # Returned: node2 has applied it, in its file, without waiting here.
        assert cluster.positions()["node2"] == conn.last_write_lsn
    conn.close()


def test_a_follower_added_later_is_replicated_by_the_child(make_cluster) -> None:
    cluster = make_cluster(followers=1, replicate="process")
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t(v) VALUES ('before')")
    cluster.add_follower("node9")
    conn.execute("INSERT INTO t(v) VALUES ('after')")
    conn.close()
    lsn = cluster.wait_for_catchup(timeout=HANG)
    # node9's file has it; the child's report of it crosses a pipe after its rounds.
    wait_until(lambda: cluster.replicator.applied.get("node9") == lsn, HANG, poll=0.01,
               message=f"the child reports node9 at LSN {lsn}")
    assert_identical(cluster)


def test_the_child_ends_with_the_cluster(make_cluster) -> None:
    cluster = make_cluster(replicate="process")
    pid = cluster.replicator._proc.pid
    assert _alive(pid)
    cluster.close()
    assert not _alive(pid)


def test_the_child_ends_when_the_application_is_killed(tmp_path: Path) -> None:
    proxy.Cluster.init(tmp_path / "c", replicate=False).close()
    app = spawn_python(
        "import sys, proxy\n"
        "cluster = proxy.Cluster(sys.argv[1], replicate='process')\n"
        "print(cluster.replicator._proc.pid, flush=True)\n"
        "sys.stdin.read()\n", tmp_path / "c")
    try:
        child = int(app.stdout.readline())
        assert _alive(child)
        app.send_signal(signal.SIGKILL)
        app.wait(HANG)
        wait_until(lambda: not _alive(child), HANG, message="the replicator process outlived its application")
    finally:
        if app.poll() is None:
            app.kill()
        app.stdout.close()
        app.stdin.close()


def test_a_child_that_dies_is_started_again(make_cluster) -> None:
    cluster = make_cluster(replicate="process")
    conn = proxy.connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    first = cluster.replicator._proc.pid
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not cluster.replicator.is_alive(), HANG, message="the kill is noticed")

    def replicated_again() -> bool:
        conn.execute("INSERT INTO t(v) VALUES ('x')")  # a commit starts it again
        return cluster.replicator.is_alive()

    wait_until(replicated_again, HANG, poll=0.2, message="a new replicator process starts")
    assert cluster.replicator._proc.pid != first
    cluster.wait_for_catchup(timeout=HANG)
    conn.close()
    assert_identical(cluster)


def test_where_replicate_true_replicates(monkeypatch) -> None:
    assert replicator_kind(False) is None
    assert replicator_kind("thread") == "thread"
    with pytest.raises(ValueError, match="'elsewhere'"):
        replicator_kind("elsewhere")
    monkeypatch.delenv(REPLICATOR_ENV, raising=False)
    assert replicator_kind(True) == "process"  # the default when nothing says otherwise
    monkeypatch.setenv(REPLICATOR_ENV, "thread")
    assert replicator_kind(True) == "thread"
