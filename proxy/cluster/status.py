"""`status`: role, file, applied LSN, lag and state of every node."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import apsw

from ..errors import ClusterError
from ..store import log, node
from . import divergence, watch
from .core import ClusterCore

STOPPED_LEADER = "stopped with replproxy stop-node: no writes until a failover or start-node"


@dataclass(frozen=True)
class NodeStatus:
    """One node as `status()` reports it."""

    name: str
    role: str
    file: str
    applied_lsn: int
    lag_entries: int
    lag_seconds: float
    # "ok", "paused", "error", "needs-snapshot", "missing", "damaged" (its file cannot be read as a
    # node), "stopped"; a follower whose position its content or the leader's log contradicts:
    # "diverged" or "ahead-of-leader" (divergence.py); a leader whose log ends before what its
    # followers applied: "behind-followers"; a leader written by programs outside the proxy (row,
    # statement and mixed formats, watch.py): "outside-writes".
    state: str
    error: str | None = None
    error_lsn: int | None = None
    # A follower's replication role ("sync" or "async"); empty for the leader.
    replication: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(cluster: ClusterCore) -> list[NodeStatus]:
    cluster.refresh_config()
    with cluster.node(cluster.leader) as leader_conn:
        leader_lsn = log.last_lsn(leader_conn)
        now = time.time()
        down = cluster.config.leader.stopped
        # Writes committed on the leader file outside the proxy that no follower will see.
        outside = None if down or cluster.format.captures_outside_writers else watch.report(leader_conn)
        result = [NodeStatus(cluster.leader, "leader", str(cluster.path_of(cluster.leader)), leader_lsn,
                             0, 0.0, "stopped" if down else "outside-writes" if outside else "ok",
                             STOPPED_LEADER if down else outside)]
        for follower in cluster.config.followers:
            row = _follower_status(cluster, follower.name, leader_conn, leader_lsn, now)
            if follower.stopped:
                # What its file holds: for a deposed leader, its own last LSN.
                position = _position_of(cluster, follower.name, row.applied_lsn)
                row = NodeStatus(follower.name, "follower", row.file, position,
                                 max(0, leader_lsn - position), _lag_seconds(leader_conn, position, leader_lsn, now),
                                 "stopped", "stopped with replproxy stop-node", None,
                                 follower.replication)
            result.append(row)
        ahead = [r for r in result if r.state == divergence.AHEAD]
        if ahead and not down:
            top = max(r.applied_lsn for r in ahead)
            result[0] = NodeStatus(
                cluster.leader, "leader", result[0].file, leader_lsn, 0, 0.0, "behind-followers",
                f"{cluster.leader}: its log ends at LSN {leader_lsn} but "
                f"{', '.join(r.name for r in ahead)} applied up to LSN {top}: the leader's file is "
                "older than what its followers applied (restored from an older backup?); writes made "
                "since are on a fork: resync the followers from it, or fail over to the most "
                "up-to-date follower")
        return result


def _lag_seconds(leader_conn: apsw.Connection, position: int, leader_lsn: int, now: float) -> float:
    """How long ago the oldest entry past `position` was committed (0 when there is none): the
    lag in seconds of a node at `position`, from the same position as its lag in entries."""
    if position >= leader_lsn:
        return 0.0
    first_missing = log.commit_time(leader_conn, position + 1)
    return round(max(0.0, now - first_missing), 3) if first_missing is not None else 0.0


def _position_of(cluster: ClusterCore, name: str, default: int) -> int:
    try:
        with cluster.node(name) as conn:
            return log.last_lsn(conn)
    except (ClusterError, apsw.Error):
        return default


def _follower_status(cluster: ClusterCore, name: str, leader_conn: apsw.Connection, leader_lsn: int,
                     now: float) -> NodeStatus:
    path = str(cluster.path_of(name))
    try:
        conn = cluster.open_node(name)
    except ClusterError as exc:
        if not cluster.path_of(name).exists():
            return NodeStatus(name, "follower", path, 0, leader_lsn, 0.0, "missing", str(exc))
        return NodeStatus(name, "follower", path, 0, leader_lsn, 0.0, "damaged",
                          f"{exc}; `replproxy resync {cluster.directory} {name}` replaces it")
    try:
        conn.execute("BEGIN")  # its state and its log copy as of one moment
        state = node.read_state(conn)
        hint = f"re-seed it with `replproxy resync {cluster.directory} {name}`"
        problem = divergence.check(name, conn, state, leader_conn, hint)
    except (apsw.Error, ClusterError) as exc:
        return NodeStatus(name, "follower", path, 0, leader_lsn, 0.0, "damaged",
                          f"{exc}; `replproxy resync {cluster.directory} {name}` replaces it")
    finally:
        conn.close()
    lag = max(0, leader_lsn - state.applied_lsn)
    lag_seconds = _lag_seconds(leader_conn, state.applied_lsn, leader_lsn, now)
    if state.error:
        node_state = "error"
    elif state.paused:
        node_state = "paused"
    else:
        node_state = "ok"
    error = state.error
    if error is None and cluster.replicator is not None:
        error = cluster.replicator.errors.get(name)
    if state.needs_snapshot:
        node_state = "needs-snapshot"
    elif problem is not None:
        node_state, error = problem.kind, problem.message
    elif lag and log.first_missing_gone(leader_conn, state.applied_lsn):
        node_state = "needs-snapshot"
        error = error or (f"{name}: log entry {state.applied_lsn + 1} is no longer retained; "
                          f"re-seed it with `replproxy resync DIR {name}`")
    return NodeStatus(name, "follower", path, state.applied_lsn, lag, lag_seconds,
                      node_state, error, state.error_lsn, cluster.config.node(name).replication)
