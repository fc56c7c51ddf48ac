"""Property: any sequence of writes, pauses, node stops and starts and failovers ends with every
node identical, and every acknowledged write either on the leader or in a lost-writes file."""

from __future__ import annotations

import json

import pytest
from checks import file_rows
from helpers import examples, suppressed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import proxy
from proxy import verify
from proxy.store import config as cfg

OPS = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 3)),
    st.tuples(st.sampled_from(["pause", "resume", "stop", "start"]), st.integers(0, 2)),
    st.tuples(st.just("failover"), st.integers(0, 2)),
)


class Run:
    def __init__(self, cluster: proxy.Cluster):
        self.cluster = cluster
        self.conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
        self.conn.execute("CREATE TABLE w(id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT UNIQUE)")
        self.conn.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.count = 0

    def do(self, op: str, arg: int) -> None:
        cluster = self.cluster
        config = cfg.read(cluster.directory)
        node = config.nodes[arg % len(config.nodes)]
        name = node.name
        if op == "write":
            for _ in range(arg):
                tag = f"t{self.count}"
                self.count += 1
                try:
                    self.conn.execute("INSERT INTO w(tag) VALUES (?)", (tag,))
                    self.acked.append(tag)
                except proxy.OperationalError:
                    self.failed.append(tag)
                try:
                    self.conn.execute("INSERT INTO kv VALUES ('k', 1) "
                                      "ON CONFLICT(k) DO UPDATE SET n = n + 1")
                except proxy.OperationalError:
                    pass
        elif op in ("pause", "resume"):
            if node.role == "follower" and not node.stopped:
                try:
                    getattr(cluster, op)(name)
                except proxy.ClusterError as exc:
                    assert "resync" in str(exc)  # resume refused: it needs a snapshot
        elif op == "stop":
            if not node.stopped:
                cluster.stop_node(name)
        elif op == "start":
            if node.stopped:
                cluster.start_node(name)
        elif op == "failover":
            try:
                cluster.failover(None, force=True)
            except proxy.ClusterError:
                pass  # no reachable follower

    def settle(self) -> None:
        cluster = self.cluster
        for node in cfg.read(cluster.directory).nodes:
            if node.stopped:
                cluster.start_node(node.name)
        cluster.refresh_config()
        for status in cluster.status():
            if status.role != "follower":
                continue
            if status.state in ("needs-snapshot", "error"):
                cluster.resync(status.name)
            elif status.state == "paused":
                cluster.resume(status.name)
        cluster.wait_for_catchup(15)


@settings(max_examples=examples(25), suppress_health_check=suppressed(HealthCheck.function_scoped_fixture))
@given(ops=st.lists(OPS, min_size=3, max_size=20))
@pytest.mark.parametrize("fmt", ["row", "statement", "mixed", "trigger"])
def test_any_history_of_failures_converges_and_loses_nothing_silently(make_cluster, fmt, ops):
    cluster = make_cluster(f"c{next(_names)}", format=fmt)
    cluster.configure(auto_failover=False)  # failovers come from the generated operations
    run = Run(cluster)
    try:
        for op, arg in ops:
            run.do(op, arg)
        run.settle()
        report = verify(cluster)
        assert report.identical, report.differences
        leader = cluster.path_of(cluster.leader)
        tables = {r[0] for r in file_rows(leader, "SELECT name FROM sqlite_master")}
        on_leader = ([r[0] for r in file_rows(leader, "SELECT tag FROM w")] if "w" in tables
                     else [])  # its CREATE TABLE can itself be a lost write
        lost: set[str] = set()
        for path in cluster.directory.glob("lost-writes-epoch*.jsonl"):
            for line in path.read_text().splitlines():
                for event in json.loads(line)["events"]:
                    if event["kind"] == "INSERT" and event.get("table") == "w":
                        lost.add(event["new"]["tag"])
                    if event["kind"] == "SQL" and "INSERT INTO w" in event.get("sql", ""):
                        lost.add(event["params"][0])
        assert len(on_leader) == len(set(on_leader))
        assert set(run.acked) <= set(on_leader) | lost, "an acknowledged write vanished unrecorded"
        assert not set(run.failed) & set(on_leader), "a write that raised was kept"
    finally:
        run.conn.close()
        cluster.close()


def _counter():
    n = 0
    while True:
        n += 1
        yield n


_names = _counter()
