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

import time

import apsw

from ..store import node as store
from .core import ClusterCore

# The watcher never waits for the leader's write lock: a proxy transaction holding it will log
# the outside changes itself when it begins, or the next poll will.
WATCHER_BUSY_TIMEOUT_MS = 0


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


class OutsideWatcher:
    """Polls the leader for changes committed outside the proxy and logs them (replicator thread)."""

    def __init__(self, cluster: ClusterCore, interval: float = 0.01):
        self.cluster = cluster
        self.interval = interval
        self._conn: apsw.Connection | None = None
        self._data_version: int | None = None
        self._next = 0.0

    def poll(self) -> int:
        """Log pending outside changes if any; return the number of entries added."""
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.interval
        conn = self._connection()
        try:
            # Only another connection's commit can leave something to log.
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version == self._data_version:
                return 0
            if not self.cluster.format.outside_pending(conn):
                self._data_version = version
                return 0
            added = log_outside_writes(self.cluster, conn)
        except apsw.BusyError:
            return 0  # the write lock is taken; try again at the next poll
        self._data_version = version
        return added

    def _connection(self) -> apsw.Connection:
        if self._conn is None:
            self._conn = self.cluster.open_node(self.cluster.leader)
            self._conn.set_busy_timeout(WATCHER_BUSY_TIMEOUT_MS)
            self._data_version = None
        return self._conn

    def close(self) -> None:
        """Forget the leader connection (the leader may have changed); the next poll reopens it."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
