"""`Cluster`: the public face of a cluster, gathering the operations of this package.

It registers the replicator's per-round work as hooks on the core (writers outside the proxy before
a round; the health monitor and maintenance after it), so the modules below never import upward.
"""

from __future__ import annotations

import os
from typing import Any

import apsw

from ..errors import ClusterError
from ..store import config as cfg
from ..store.log import append
from . import health, modes, nodes, outside, settings, snapshots, watch
from .core import ClusterCore
from .create import create_cluster
from .failover import FailoverResult, failover
from .retention import Maintenance, truncate_log
from .status import NodeStatus, status

# Where `replicate=True` moves the followers: "process" (the default: the application's writers do
# not share the interpreter lock with the followers' work) or "thread".
REPLICATOR_ENV = "REPLPROXY_REPLICATOR"
REPLICATORS = ("process", "thread")


def replicator_kind(replicate: bool | str) -> str | None:
    """Where the followers are moved for `Cluster(replicate=...)`: "process", "thread" or None."""
    if replicate is False or replicate is None:
        return None
    if replicate is True:
        replicate = os.environ.get(REPLICATOR_ENV) or "process"
    if replicate not in REPLICATORS:
        raise ValueError(f"replicate must be True, False, 'process' or 'thread', not {replicate!r}"
                         + (f" (from {REPLICATOR_ENV})" if os.environ.get(REPLICATOR_ENV) else ""))
    return str(replicate)


class Cluster(ClusterCore):
    """A replproxy cluster opened from its directory.

    Opening a cluster starts a replicator that moves its followers forward: in a process of its
    own by default (store/child.py), `replicate="thread"` in a thread of this one, or none with
    `replicate=False` (to only inspect it). `pause` and `resume` act on the follower's own file, so they
    hold a follower's position for every process that has the cluster open.
    """

    def __init__(self, directory: str | os.PathLike[str], *, replicate: bool | str = True,
                 poll_interval: float = 0.01, require_leader: bool = True):
        super().__init__(directory, poll_interval=poll_interval, require_leader=require_leader)
        if self.format.captures_outside_writers:
            # Transactions committed on the leader outside the proxy become entries of their own.
            self.format.bind_outside_log(self._append_outside)
            self.watcher_factory = lambda: outside.OutsideWatcher(self)
        else:
            # Other formats cannot log such writes: they detect and report them (watch.py).
            watch.guard_captures(self)
            self.format_hooks.append(lambda: watch.guard_captures(self))
            watch.ensure_guarded(self)
            self.watcher_factory = lambda: watch.OutsideGuard(self)
        self.monitor = health.HealthMonitor(self)
        self._maintenance = Maintenance(self)
        self.round_hooks.append(self._after_round_hook)
        self.on_close(self._maintenance.close)
        where = replicator_kind(replicate)
        if where is not None:
            self.start_replication(where)

    @classmethod
    def init(cls, directory: str | os.PathLike[str], *, followers: int = 2, format: str = "row",
             row_image: str = "full", from_db: str | os.PathLike[str] | None = None,
             synchronous: str = "full", follower_synchronous: str = "normal",
             replicate: bool | str = True, options: dict[str, Any] | None = None) -> Cluster:
        """Create a new cluster in `directory` and open it. `options`: format options kept in
        cluster.toml's [cluster] table (e.g. no_rewrite=True for the statement format)."""
        create_cluster(directory, followers=followers, format=format, row_image=row_image,
                       from_db=from_db, synchronous=synchronous,
                       follower_synchronous=follower_synchronous, options=options)
        return cls(directory, replicate=replicate)

    def _after_round_hook(self, leader_lsn: int, positions: dict[str, int]) -> None:
        self.monitor.tick()
        if not self.leader_down:  # nothing to maintain on a leader that cannot be reached
            self._maintenance.after_round(leader_lsn, positions)

    # -- writers outside the proxy (trigger format) ---------------------------------------------

    def _append_outside(self, conn: apsw.Connection, payload: bytes) -> int:
        return append(conn, epoch=self.epoch, format=self.format.name, payload=payload)

    def log_outside_writes(self) -> int:
        """Log now what programs outside the proxy committed on the leader (trigger format; the
        background watcher does it every poll interval); return the number of entries added."""
        return outside.log_outside_writes(self)

    def clear_outside_writes(self) -> None:
        """Forget writes outside the proxy detected on the leader (row, statement and mixed
        formats), once every follower was re-seeded (`resync`) or found identical (`verify`)."""
        with self.node(self.leader) as conn:
            watch.clear(conn)

    def outside_writes_policy(self, policy: str) -> None:
        """"detect" (the default: report writes outside the proxy in `status`) or "refuse" (the
        leader's guard triggers abort them); row, statement and mixed formats."""
        if self.format.captures_outside_writers:
            raise ClusterError("the trigger format logs writes outside the proxy: nothing to refuse")
        with self.node(self.leader) as conn:
            watch.set_policy(conn, policy)

    # -- replication modes and settings ---------------------------------------------------------

    def await_acks(self, lsn: int, leader: apsw.Connection) -> None:
        """After COMMIT of entry `lsn`: wait for what the replication mode requires."""
        modes.await_acks(self, lsn, leader)

    def replication_status(self) -> dict[str, Any]:
        """Mode, semi-sync degraded state, sync followers, retained log."""
        return settings.replication_status(self)

    def configure(self, **values: Any) -> cfg.ClusterConfig:
        """Change replication and failover settings in cluster.toml (every process picks them
        up): mode, sync_followers, semi_sync_k, sync_timeout, retain_*, auto_resync,
        auto_failover, failover_timeout, failover_cooldown, failover_key_gap."""
        return settings.configure(self, **values)

    def switch_format(self, name: str) -> int:
        """Capture in log format `name` from the next transaction on, in every process; the LSN it
        takes effect after (settings.switch_format)."""
        return settings.switch_format(self, name)

    def truncate_log(self) -> int:
        """Apply the retention policy now; return the number of entries removed."""
        return truncate_log(self)

    # -- followers ------------------------------------------------------------------------------

    def add_follower(self, name: str, file: str | None = None, replication: str = "async") -> int:
        """Add follower `name` online from a snapshot of the leader; return the snapshot's LSN."""
        return snapshots.add_follower(self, name, file=file, replication=replication)

    def remove_follower(self, name: str, delete_file: bool = False) -> None:
        snapshots.remove_follower(self, name, delete_file=delete_file)

    def resync(self, name: str) -> int:
        """Re-seed follower `name` from a new snapshot of the leader; return its LSN."""
        return snapshots.resync(self, name)

    def status(self) -> list[NodeStatus]:
        """Role, file, applied LSN, lag and state of every node."""
        return status(self)

    # -- failover -------------------------------------------------------------------------------

    def failover(self, to: str | None = None, *, force: bool = False, timeout: float = 10.0) -> FailoverResult:
        """Make follower `to` (default: the most up-to-date one) the leader. Refuses a target that
        cannot catch up unless `force`."""
        return failover(self, to, force=force, timeout=timeout)

    def stop_node(self, node: str) -> None:
        """Make `node` unreachable to every process, as if it had crashed (see nodes.py)."""
        nodes.stop_node(self, node)

    def start_node(self, node: str, timeout: float = 10.0) -> nodes.StartResult:
        """Bring a stopped node back; a node that missed a failover rejoins as a follower, its
        writes that never reached the new leader undone and recorded."""
        return nodes.start_node(self, node, timeout=timeout)

    def health(self) -> dict[str, Any]:
        """The leader's health as this process's monitor sees it, and the failover settings."""
        return health.health(self, self.monitor)
