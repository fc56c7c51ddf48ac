"""Nodes of a distributed cluster for the tests: each "machine" is a directory of its own served by
a real `replproxy serve` process; they share nothing but the NATS URLs. Waits are on positions
(read from the node files and the cluster's buckets), bounded by HANG."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

from helpers import HANG, node_state, replproxy_command, run_replproxy, wait_until

from proxy.dist import local
from proxy.errors import TransportError
from proxy.jetstream.kv import ClusterKV
from proxy.jetstream.names import LEASE_KEY
from proxy.jetstream.stream import LogStream
from proxy.store import log as entries_log
from proxy.store import node as store


class Node:
    """One node directory and its `replproxy serve` process."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory.parent / f"serve-{name}.log"

    @property
    def path(self) -> Path:
        return self.directory / f"{self.name}.db"

    def serve(self, *args: Any) -> Node:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([*replproxy_command(), "serve", str(self.directory), *map(str, args)],
                                            stdout=out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
        self.process = None

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(HANG)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def role(self) -> str:
        return local.read(self.directory).role

    def applied(self) -> int:
        return node_state(self.path).applied_lsn

    def last_lsn(self) -> int:
        """The leader's last LSN (its log), read from its file."""
        with store.opened(self.path, name=self.name) as conn:
            return entries_log.last_lsn(conn)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Cluster:
    """A distributed cluster's nodes on this machine, plus a view of its NATS side."""

    def __init__(self, root: Path, nats: str, name: str = "test"):
        self.root = root
        self.nats = nats
        self.name = name
        self.nodes: dict[str, Node] = {}

    def init(self, leader: str = "a", *options: Any) -> Node:
        node = Node(self.root / leader, leader)
        run_replproxy("init", node.directory, "--nats", self.nats, "--cluster", self.name, "--name", leader,
                      *options)
        self.nodes[leader] = node
        return node

    def join(self, name: str) -> Node:
        node = Node(self.root / name, name)
        run_replproxy("join", node.directory, "--nats", self.nats, "--cluster", self.name, "--name", name)
        self.nodes[name] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()

    def bridge(self) -> Any:
        return local.read(next(iter(self.nodes.values())).directory).bridge()

    def holder(self) -> dict[str, Any] | None:
        with self.bridge() as bridge:
            found = ClusterKV(bridge, local.read(next(iter(self.nodes.values())).directory).names).get(LEASE_KEY)
        return found.value if found is not None else None

    def stream_last(self) -> int:
        config = local.read(next(iter(self.nodes.values())).directory)
        with config.bridge() as bridge:
            return LogStream(bridge, config.names, "").state().last_seq

    def eventually(self, predicate: Any, message: str) -> Any:
        """wait_until, where NATS being briefly unavailable (a server killed) counts as not yet."""
        def attempt() -> Any:
            try:
                return predicate()
            except TransportError:
                return False

        return wait_until(attempt, HANG, poll=0.02, message=message)

    def wait_serving(self, leader: Node) -> None:
        """The leader holds the lease and its followers report positions."""
        self.eventually(lambda: (self.holder() or {}).get("node") == leader.name,
                        f"{leader.name} holds the lease\n{leader.logs()}")

    def wait_reporting(self, *nodes: Node) -> None:
        """Each node's `serve` runs: it has published its position (`join` registers a node
        without a process)."""
        config = local.read(next(iter(self.nodes.values())).directory)
        for node in nodes:
            def reported(node: Node = node) -> bool:
                with config.bridge() as bridge:
                    return bool((ClusterKV(bridge, config.names).node(node.name) or {}).get("pid"))

            self.eventually(reported, f"{node.name} reports its position\n{node.logs()}")

    def wait_fresh(self, nodes: list[Node], since: float) -> None:
        """Each node's `serve` has reported its position after `since` (time.time(): the nodes
        run on this machine): a lease or role read after that is not a dead node's last word."""
        config = local.read(next(iter(self.nodes.values())).directory)

        def fresh() -> bool:
            with config.bridge() as bridge:
                kv = ClusterKV(bridge, config.names)
                return all(float((kv.node(n.name) or {}).get("at") or 0) > since for n in nodes)

        self.eventually(fresh, "every node reports again\n" + "\n".join(n.logs() for n in nodes))

    def wait_caught_up(self, leader: Node, *followers: Node) -> int:
        """Every follower has applied the leader's last LSN (published first); return it."""
        lsn = leader.last_lsn()
        self.eventually(lambda: self.stream_last() >= lsn, f"the relay publishes LSN {lsn}\n{leader.logs()}")
        for follower in followers:
            wait_until(lambda f=follower: f.applied() >= lsn, HANG, poll=0.02,
                       message=f"{follower.name} applies LSN {lsn}\n{follower.logs()}")
        return lsn

    def verify(self, node: Node) -> str:
        """`replproxy verify` from `node`'s directory, once every node with a running `serve` has
        reported from it (a node that joined and was just started may not answer yet)."""
        self.wait_reporting(*[n for n in self.nodes.values() if n.process is not None and n.process.poll() is None])
        done = run_replproxy("verify", node.directory, check=False)
        assert done.returncode == 0, (f"verify from {node.name}: {done.stdout}{done.stderr}\n"
                                      + "\n".join(n.logs() for n in self.nodes.values()))
        return done.stdout
