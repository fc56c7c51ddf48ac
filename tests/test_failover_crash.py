"""A process killed (SIGKILL) in the middle of a failover: the cluster ends writable, identical on
every node, with every acknowledged write on the leader or recorded as lost."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from checks import file_rows
from helpers import HANG, spawn_python

import proxy
from proxy import verify
from proxy.store import config as cfg

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

SEED = 20261126
ROUNDS = 8

FAILOVER = textwrap.dedent("""
    import sys, proxy
    cluster = proxy.Cluster(sys.argv[1], replicate=False)
    print("go", flush=True)
    cluster.failover(force=True)
    print("done", flush=True)
""")


def _settle(cluster: proxy.Cluster) -> None:
    for node in cfg.read(cluster.directory).nodes:
        if node.stopped:
            cluster.start_node(node.name)
    for status in cluster.status():
        if status.role == "follower" and status.state in ("needs-snapshot", "error"):
            cluster.resync(status.name)
        elif status.role == "follower" and status.state == "paused":
            cluster.resume(status.name)
    cluster.wait_for_catchup(20)


def _lost_tags(directory: Path) -> set[str]:
    tags = set()
    for path in directory.glob("lost-writes-epoch*.jsonl"):
        for line in path.read_text().splitlines():
            for event in json.loads(line)["events"]:
                if event["kind"] == "INSERT" and event.get("table") == "w":
                    tags.add(event["new"]["tag"])
    return tags


def test_failover_killed_at_random_points_is_finished_or_undone(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    for round_ in range(ROUNDS):
        context = f"seed {SEED}, round {round_}"
        cluster = proxy.Cluster.init(tmp_path / f"c{round_}")
        cluster.configure(failover_timeout=0.3, failover_cooldown=0.0)
        conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
        conn.execute("CREATE TABLE w(id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT UNIQUE)")
        acked = []
        for i in range(5):
            conn.execute("INSERT INTO w(tag) VALUES (?)", (f"a{i}",))
            acked.append(f"a{i}")
        cluster.wait_for_catchup()
        cluster.pause(rng.choice(["node2", "node3"]))  # the failover may have to force a loss
        for i in range(3):
            conn.execute("INSERT INTO w(tag) VALUES (?)", (f"b{i}",))
            acked.append(f"b{i}")
        child = spawn_python(FAILOVER, cluster.directory, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == "go", child.stderr.read()
            time.sleep(rng.uniform(0.0, 0.04))  # the kill point, inside or after the failover
            child.send_signal(signal.SIGKILL)
            child.wait(HANG)
        finally:
            child.kill()
        # Writable again: the failover finished, never started, or is finished by this process's
        # health check (a leader fenced by a dead failover counts as failed).
        deadline = time.monotonic() + HANG
        while True:
            try:
                conn.execute("INSERT INTO w(tag) VALUES ('after')")
                acked.append("after")
                break
            except proxy.OperationalError as exc:
                assert time.monotonic() < deadline, f"{context}: never writable again: {exc}"
                cluster.wait_progress(0.05)
        _settle(cluster)
        report = verify(cluster)
        assert report.identical, (context, report.differences)
        on_leader = {r[0] for r in file_rows(cluster.path_of(cluster.leader), "SELECT tag FROM w")}
        missing = set(acked) - on_leader - _lost_tags(cluster.directory)
        assert not missing, f"{context}: acknowledged writes vanished unrecorded: {missing}"
        conn.close()
        cluster.close()
