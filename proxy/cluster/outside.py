"""Writers outside the proxy: logging what other programs committed on the leader file.

With the trigger format, a program that writes to the leader with plain sqlite3 fires replproxy's
capture triggers too; its rows wait in the capture table until they are logged. That happens

- at the start of every write transaction made through the proxy, before the proxy's own entry
  (the format does it in `capture()`, under the proxy's `BEGIN IMMEDIATE`), and
- in the background, by `OutsideWatcher.poll`, which every process with the cluster open runs from
  its replicator thread every poll interval (10 ms), and `replproxy serve` runs too;
- on demand, with `Cluster.log_outside_writes()`, which `verify` calls when it finds the leader
  holding changes not logged yet.

Each run takes the leader's write lock, so what it logs is exactly what was committed before it,
in commit order, and nothing can be logged twice or lost: the capture rows are deleted in the
same transaction that appends their entries.
"""

from __future__ import annotations

import apsw

from ..store import node as store
from .core import ClusterCore, LeaderPoller


def pending(cluster: ClusterCore, conn: apsw.Connection) -> bool:
    """Whether the leader (`conn`, any transaction state) holds outside changes not logged yet."""
    return cluster.format.captures_outside_writers and cluster.format.outside_pending(conn)


def log_outside_writes(cluster: ClusterCore, conn: apsw.Connection | None = None) -> int:
    """Log what was committed on the leader outside the proxy; return the number of entries added."""
    if not cluster.format.captures_outside_writers:
        return 0
    if cluster.leader_down:
        return 0  # a stopped leader is not read; what waits there is handled when it starts
    own = conn is None
    if conn is None:
        conn = cluster.open_node(cluster.leader)
    try:
        with store.write_transaction(conn):
            # Fenced by a failover: nothing more is logged here. Outside writes made after the
            # fence stay in its capture table; `start-node` records them as lost writes.
            added = 0 if store.deposed_by(conn) is not None else cluster.format.log_outside(conn)
    finally:
        if own:
            conn.close()
    if added:
        cluster.notify_commit()
    return added


class OutsideWatcher(LeaderPoller):
    """Polls the leader for changes committed outside the proxy and logs them (replicator thread).
    It never waits for the leader's write lock: a proxy transaction holding it logs the outside
    changes itself when it begins, or the next poll does."""

    def check(self, conn: apsw.Connection) -> int:
        if not self.cluster.format.outside_pending(conn):
            return 0
        return log_outside_writes(self.cluster, conn)
