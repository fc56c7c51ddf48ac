"""`status` and `verify` of a distributed cluster, from any node's directory: every node's
published position, the lease, the stream; fingerprints requested from every node's `serve`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..cluster.verify import Difference, VerifyReport, compare
from ..errors import ClusterError, TransportError
from ..jetstream.kv import ClusterKV
from ..jetstream.names import EPOCHS_KEY, LEASE_KEY, check_name, node_key
from ..jetstream.stream import LogStream
from ..store.decode import DecodedEntry, decode_entries
from . import local
from .shared import HEARTBEAT, fingerprint_from, load_settings

T = TypeVar("T")

# A node whose position is older than this many heartbeats is reported unreachable.
STALE_HEARTBEATS = 10


RETRY_FOR = 15.0  # seconds status and verify retry while NATS elects new stream leaders (a server died)


def _retrying(run: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return run()
        except TransportError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


def where(target: str | os.PathLike[str]) -> local.DistConfig:
    """A node's directory, or a cluster URL (nats://HOST:PORT[,HOST:PORT]/CLUSTER) from a machine
    with no node: where the cluster's NATS servers are and what it is called."""
    from ..remote.protocol import is_url, parse_url

    if is_url(target):
        servers, cluster, creds = parse_url(str(target))
        return local.DistConfig(cluster=check_name("cluster", cluster), node="", nats=tuple(servers), creds=creds)
    return local.read(target)


def status(target: str | os.PathLike[str], *, now: float | None = None) -> dict[str, Any]:
    """The cluster as its nodes last reported it; `target` a node's directory or a cluster URL."""
    return _retrying(lambda: _status(target, now), RETRY_FOR)


def _status(target: str | os.PathLike[str], now: float | None) -> dict[str, Any]:
    config = where(target)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        settings, record = load_settings(kv, config.cluster)
        stream = LogStream(bridge, config.names, str(record["cluster_id"])).state()
        lease = kv.get(LEASE_KEY)
        epochs = kv.get(EPOCHS_KEY)
        positions = kv.nodes()
    now = time.time() if now is None else now
    holder = lease.value if lease is not None and isinstance(lease.value, dict) else None
    nodes = []
    for name, pos in sorted(positions.items()):
        lsn = int(pos.get("lsn") or 0)
        age = now - float(pos.get("at") or 0)
        state = pos.get("state", "?")
        if age > HEARTBEAT * STALE_HEARTBEATS:
            state = "unreachable"
        committed = pos.get("committed_at")
        role = pos.get("role", "?")
        nodes.append({
            "name": name, "role": role, "lsn": lsn, "epoch": pos.get("epoch"),
            "lag_entries": None if role == "leader" else max(0, stream.last_seq - lsn),
            "published": pos.get("published"), "state": state, "error": pos.get("error"),
            "host": pos.get("host"), "pid": pos.get("pid"), "heard_s_ago": round(age, 1),
            "leader_commit_of_applied": committed})
    return {"cluster": config.cluster, "node": config.node or None, "format": settings.format, "mode": settings.mode,
            "leader": holder.get("node") if holder else None, "epoch": holder.get("epoch") if holder else None,
            "lease_ttl": holder.get("ttl") if holder else None,
            "stream": {"name": config.names.stream, "last_lsn": stream.last_seq, "first_lsn": stream.first_seq,
                       "messages": stream.messages, "bytes": stream.bytes, "replicas": stream.replicas},
            "epochs": epochs.value if epochs is not None else [], "nodes": nodes}


def verify(target: str | os.PathLike[str], *, timeout: float = 10.0) -> VerifyReport:
    """Every node compared with the leader at one LSN: followers hold where they are, the leader
    gives its fingerprint at its last LSN, each follower applies exactly to it and gives its own."""
    return _retrying(lambda: _verify(target, timeout), max(timeout, RETRY_FOR))


def _verify(target: str | os.PathLike[str], timeout: float) -> VerifyReport:
    config = where(target)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        lease = kv.get(LEASE_KEY)
        if lease is None or not isinstance(lease.value, dict):
            raise TransportError(f"cluster {config.cluster} has no leader (no lease): nothing to compare with")
        leader = str(lease.value["node"])
        positions = kv.nodes()
        followers = sorted(n for n in positions if n != leader)
        differences: list[Difference] = []
        held = []
        for name in followers:  # every node the cluster knows: none is silently left out
            try:
                bridge.request(config.names.request_subject("hold", name), {"seconds": timeout * 2}, timeout)
                held.append(name)
            except TransportError as exc:
                age = time.time() - float(positions[name].get("at") or 0)
                differences.append(Difference(
                    name, "position", f"unreachable: {exc} (last heard {age:.0f} s ago; "
                    f"`replproxy remove-follower DIR {name}`, DIR any node's directory, forgets a node gone "
                    "for good)", "not-compared"))
        ref = bridge.request(config.names.request_subject("fingerprint", leader), {}, timeout)
        lsn = int(ref["lsn"])
        reference = fingerprint_from(ref["fingerprint"])
        for name in held:
            try:
                reply = bridge.request(config.names.request_subject("fingerprint", name),
                                       {"lsn": lsn, "timeout": timeout}, timeout + 2)
            except TransportError as exc:
                differences.append(Difference(name, "position", f"not compared: {exc}", "not-compared"))
                continue
            if "fingerprint" in reply:
                differences.extend(compare(name, reference, fingerprint_from(reply["fingerprint"])))
            elif reply.get("past"):
                differences.append(Difference(name, "position", f"applied LSN {reply['lsn']}, past the leader's "
                                              f"{lsn}", "ahead-of-leader"))
            else:
                why = reply.get("stopped") or f"did not reach LSN {lsn} in {timeout:g}s (at {reply.get('lsn')})"
                differences.append(Difference(name, "position", why, "not-compared"))
    return VerifyReport(lsn=lsn, leader=leader, nodes=(leader, *followers), tables=len(reference.tables),
                        differences=tuple(differences))


def forget(directory: str | os.PathLike[str], name: str) -> None:
    """Remove a node gone for good from the cluster's positions (status, verify, sync commits)."""
    config = local.read(directory)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        lease = kv.get(LEASE_KEY)
        if lease is not None and isinstance(lease.value, dict) and lease.value.get("node") == name:
            raise ClusterError(f"{name} holds the leader lease: it cannot be removed")
        if kv.node(name) is None:
            raise ClusterError(f"cluster {config.cluster} has no node named {name!r}")
        kv.delete(node_key(name))


def log_entries(target: str | os.PathLike[str], from_lsn: int = 1, limit: int | None = None
                ) -> tuple[list[DecodedEntry], int]:
    """The stream's entries from `from_lsn` on, decoded with the column names a follower reports
    (over NATS: nothing local is needed); and the stream's first LSN (retention removed the ones
    before it)."""
    from ..remote.client import RemoteConnection

    config = where(target)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        settings, record = load_settings(kv, config.cluster)
        stream = LogStream(bridge, config.names, str(record["cluster_id"]))
        state = stream.state()
        first = max(from_lsn, state.first_seq, 1)
        last = state.last_seq if limit is None else min(state.last_seq, first + limit - 1)
        entries = [entry for seq in range(first, last + 1) if (entry := stream.get(seq)) is not None]
    columns: dict[str, list[str]] = {}
    if entries:
        conn = RemoteConnection(list(config.nats), config.cluster, creds=config.creds, consistency="eventual")
        try:
            for table, column in conn.execute(
                    "SELECT m.name, p.name FROM sqlite_schema AS m, pragma_table_info(m.name) AS p "
                    "WHERE m.type = 'table' ORDER BY m.name, p.cid").fetchall():
                columns.setdefault(table, []).append(column)
        finally:
            conn.close()
    return decode_entries(entries, columns, settings.format_options()), state.first_seq
