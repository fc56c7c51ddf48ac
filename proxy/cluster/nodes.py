"""Stopping and starting nodes: a crash simulated on the embedded default, and the rejoin after it.

- `stop_node` marks a node stopped in cluster.toml, which every process looks at before each write
  and on every replicator round, so no process reads its log, applies to it, routes reads to it or
  writes to it.
- `start_node` brings it back. One that missed a failover rejoins as a follower: its transactions
  that never reached the new leader (its log after the fork LSN recorded in cluster.toml's epoch
  history) are written to a lost-writes file, then undone by applying their inverted row images in
  reverse order (`history.rewind`), or, when a format cannot invert them, the node is re-seeded
  from a snapshot of the new leader.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import apsw

import logformats

from ..errors import ClusterError
from ..store import config as cfg
from ..store import log as entries_log
from ..store import node as store
from ..store.decode import iso_time
from . import history
from .core import ClusterCore
from .snapshots import resync

log = logging.getLogger("replproxy.health")


def stop_node(cluster: ClusterCore, name: str) -> None:
    with cfg.lock(cluster.directory):
        config = cfg.read(cluster.directory)
        node = config.node(name)
        if node.stopped:
            raise ClusterError(f"{name} is already stopped (since {iso_time(node.stopped_at)})")
        nodes = tuple(replace(n, stopped_at=time.time()) if n.name == name else n
                      for n in config.nodes)
        cfg.write(cluster.directory, replace(config, nodes=nodes))
    cluster.refresh_config()
    cluster.state_generation += 1
    # Nothing is read from or applied to the node by this process once this returns (other
    # processes stop at their next round; the failover guards against their last steps).
    cluster.reload_replication(wait=5.0)


@dataclass
class StartResult:
    node: str
    role: str
    rejoined: bool = False  # it missed a failover and now follows the new leader
    fork_lsn: int | None = None
    lost_lsns: tuple[int, int] | None = None
    lost_count: int = 0
    lost_file: str | None = None
    method: str | None = None  # "inverted" or "snapshot" when writes were undone
    reason: str | None = None  # why a snapshot was needed
    # Rows the lost writes inserted whose key the new leader has since given to another row
    # (plain rowid tables: SQLite hands out max(rowid) + 1); listed in the lost-writes file.
    keys_reused: int = 0

    def lines(self) -> list[str]:
        if not self.rejoined:
            return [f"{self.node} started as {self.role}"]
        out = [f"{self.node} rejoined as a follower of the current leader from LSN {self.fork_lsn}"]
        if self.lost_lsns is not None:
            first, last = self.lost_lsns
            how = ("undone by inverting its row images in reverse order" if self.method == "inverted"
                   else f"discarded by re-seeding it from a snapshot ({self.reason})")
            out.append(f"LOST {self.lost_count} entries of {self.node}, LSN {first}..{last}, never "
                       f"reached the new leader: written to {self.lost_file}; {how}")
            if self.keys_reused:
                out.append(f"WARNING: {self.keys_reused} keys of those lost rows now belong to other "
                           "rows on the new leader (`keys_reused` in the file)")
        elif self.method == "snapshot":
            out.append(f"re-seeded from a snapshot: {self.reason}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "role": self.role, "rejoined": self.rejoined,
                "fork_lsn": self.fork_lsn, "lost_lsns": list(self.lost_lsns) if self.lost_lsns else None,
                "lost_count": self.lost_count, "lost_file": self.lost_file, "method": self.method,
                "reason": self.reason, "keys_reused": self.keys_reused}


def start_node(cluster: ClusterCore, name: str, timeout: float = 10.0) -> StartResult:
    with cfg.lock(cluster.directory):
        config = cfg.read(cluster.directory)
        node = config.node(name)
        if not node.stopped:
            raise ClusterError(f"{name} is not stopped")
        result = StartResult(name, node.role)
        with store.opened(cluster.directory / node.file, name=name,
                          synchronous=config.synchronous_of(name)) as conn:
            conn.set_busy_timeout(int(timeout * 1000))
            node_epoch = int(store.read_meta(conn, name).get(store.EPOCH_KEY, 1))
            fork = config.fork_lsn(node_epoch)
            if node.role == "follower" and fork is not None:
                _rejoin(cluster, config, name, conn, node_epoch, fork, result)
        nodes = tuple(replace(n, stopped_at=None) if n.name == name else n for n in config.nodes)
        cfg.write(cluster.directory, replace(config, nodes=nodes))
    cluster.refresh_config()
    cluster.state_generation += 1
    if result.method == "snapshot":
        resync(cluster, name)
        with cluster.node(name) as conn:  # the copy came from the new leader: unfenced
            store.fence(conn, cluster.config.epoch)
    else:
        cluster.reload_replication()
    return result


def _rejoin(cluster: ClusterCore, config: cfg.ClusterConfig, name: str, conn: apsw.Connection,
            node_epoch: int, fork: int, result: StartResult) -> None:
    """A node last at `node_epoch` comes back after a failover whose new leader started from
    `fork`: fence it, record and undo what it holds past `fork`, make it follow from `fork`."""
    result.rejoined, result.fork_lsn = True, fork
    epoch = config.epoch
    with store.write_transaction(conn):
        # The fence first, under the node's write lock: no proxy writes here from now on.
        store.fence(conn, epoch)
        _log_pending_outside_writes(conn, config, node_epoch)
        store.set_epoch(conn, epoch, config.epochs[-1].base_lsn)
        position = entries_log.last_lsn(conn)
        lost = entries_log.read_entries(conn, fork, -1)
        state = store.read_state(conn)
    if state.needs_snapshot:
        # Already off the history before it stopped (an earlier forced failover, retention): its
        # epoch says where it stopped following, not where its data left the history.
        result.method = "snapshot"
        result.reason = f"it needed a new snapshot before it stopped: {state.error}"
        return
    if position <= fork:
        # Nothing past the fork: it follows from where it is.
        store.set_applied_at(conn, position)
        return
    if [e.lsn for e in lost] != list(range(fork + 1, position + 1)):
        # A follower that applied entries the new leader lacks: they are not in its own file.
        result.method = "snapshot"
        result.reason = (f"it had applied up to LSN {position}, past the new leader's start "
                         f"{fork}, and does not hold those entries to undo them")
        _hold_for_snapshot(conn, name, fork, result.reason)
        return
    # The failover that cut its branch: the later epoch with the lowest base.
    record_epoch = min((r for r in config.epochs if r.epoch > node_epoch),
                       key=lambda r: (r.base_lsn, r.epoch)).epoch
    result.lost_lsns, result.lost_count = (lost[0].lsn, lost[-1].lsn), len(lost)
    leader = None
    try:
        leader = store.open_node(cluster.directory / config.leader.file, name=config.leader.name)
        leader.execute("PRAGMA query_only=1")
    except ClusterError:
        pass  # the lost writes are recorded all the same, without the key check
    try:
        path = history.write_lost(cluster, record_epoch, name, lost, leader, source=conn)
    finally:
        if leader is not None:
            leader.close()
    result.lost_file = str(path)
    result.keys_reused = history.count_reused(path)
    try:
        result.method = history.rewind(conn, name, lost, fork, epoch, config.format_options(),
                               base=config.epochs[-1].base_lsn)
    except (logformats.NotInvertibleError, logformats.ApplyError, apsw.Error) as exc:
        result.method, result.reason = "snapshot", str(exc)
    if result.method == "snapshot":
        _hold_for_snapshot(conn, name, fork, result.reason or "")
    log.warning("%s", " ".join(result.lines()))


def _hold_for_snapshot(conn: apsw.Connection, name: str, fork: int, reason: str) -> None:
    """Until `resync` replaces it, no applier may touch the node (its data is past the fork)."""
    store.set_error(conn, store.StopKind.DIVERGED,
                    f"{name}: rejoining after a failover, it needs a new snapshot ({reason})", fork + 1)


def _log_pending_outside_writes(conn: apsw.Connection, config: cfg.ClusterConfig,
                                node_epoch: int) -> None:
    """Trigger format: changes other programs committed on the node after the proxy last logged
    them become entries of its own epoch first, so they are recorded and undone with the rest."""
    fmt = logformats.get(config.format, **config.format_options())
    if not fmt.captures_outside_writers:
        return
    try:
        if conn.execute("SELECT 1 FROM _replproxy_capture LIMIT 1").fetchone() is None:
            return
    except apsw.SQLError:
        return  # no capture table: nothing was captured here
    fmt.bind_outside_log(lambda c, payload: entries_log.append(c, epoch=node_epoch, format=fmt.name,
                                                               payload=payload))
    fmt.log_outside(conn)


