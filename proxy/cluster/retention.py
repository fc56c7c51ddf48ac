"""Log retention: entries stay until every registered follower has applied them (like replication
slots), bounded by `retain_max_bytes` and `retain_max_age`; the last entry always stays so LSNs are
never reused. A follower left behind is reported as `needs-snapshot` and re-seeded by `resync`
(automatically with `auto_resync`).

`Maintenance` is the replicator's per-round housekeeping (registered as a hook by the facade):
semi-sync recovery, automatic resync, retention about once a second.
"""

from __future__ import annotations

import logging
import time

import apsw

from ..errors import ClusterError
from ..store import config as cfg
from ..store import log as entries
from ..store import node as store
from . import modes
from .core import ClusterCore
from .snapshots import resync

log = logging.getLogger("replproxy.lifecycle")

RETENTION_INTERVAL = 1.0  # seconds between two retention passes of one replicator


def _one(conn: apsw.Connection, sql: str, params: tuple = ()) -> tuple:
    """The one row of an aggregate query."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return tuple(row)


def truncate_log(cluster: ClusterCore, positions: dict[str, int] | None = None,
                 conn: apsw.Connection | None = None, now: float | None = None) -> int:
    """Remove the entries every follower has applied, and those beyond the size and age limits;
    return how many were removed. `positions`: known lower bounds of follower positions. `now`:
    the wall-clock time the age limit and retention holds are measured against (default
    `cluster.wall_clock()`)."""
    config = cluster.config
    own = conn is None
    if conn is None:
        conn = cluster.open_node(cluster.leader)
    try:
        slots = {}
        for node in config.followers:
            known = (positions or {}).get(node.name)
            slots[node.name] = known if known is not None else _read_position(cluster, node.name)
        # Decide from a read snapshot (WAL: writers are not held up by the scans of the limits),
        # then delete under the write lock. A retention hold set meanwhile pins entries after the
        # leader's LSN at that time, which is above everything the slots allow removing here.
        last = entries.last_lsn(conn)
        first = _one(conn, "SELECT min(lsn) FROM _replproxy_log")[0]
        if now is None:
            now = cluster.wall_clock()
        bounds = list(slots.values())
        expired = []
        for holder, (lsn, at) in store.retention_holds(conn).items():
            if store.hold_expired(at, holder in slots, now):
                expired.append(holder)
            else:
                bounds.append(lsn)
        upto, removed = 0, 0
        if first is not None and first < last:
            upto = min(bounds + [last - max(1, config.retain_min_entries)])
            upto = max(upto, _limit_cut(conn, config, upto, last, now))
        if not expired and (first is None or upto < first):
            return 0
        with store.write_transaction(conn):
            for holder in expired:
                conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (store.HOLD_PREFIX + holder,))
            if first is not None and upto >= first:
                removed = entries.truncate(conn, upto)
    finally:
        if own:
            conn.close()
    for holder, lsn in slots.items():
        if removed and lsn < upto:
            log.warning("log retention removed entries up to LSN %d that follower %s (at %d) has not "
                        "applied: it needs a new snapshot (replproxy resync DIR %s)", upto, holder, lsn,
                        holder)
    return removed


def _limit_cut(conn: apsw.Connection, config: cfg.ClusterConfig, upto: int, last: int,
               now: float) -> int:
    """The highest LSN the size and age limits require removing (never the last entry)."""
    cut = 0
    if config.retain_max_age > 0:
        row = _one(conn, "SELECT max(lsn) FROM _replproxy_log WHERE committed_at < ? AND lsn < ?",
                   (now - config.retain_max_age, last))
        cut = max(cut, row[0] or 0)
    if config.retain_max_bytes > 0:
        total = _one(conn, "SELECT coalesce(sum(length(payload)), 0) FROM _replproxy_log WHERE lsn > ?",
                     (max(upto, cut),))[0]
        if total > config.retain_max_bytes:
            kept = 0
            for lsn, size in conn.execute("SELECT lsn, length(payload) FROM _replproxy_log "
                                          "ORDER BY lsn DESC"):
                kept += size
                if kept > config.retain_max_bytes and lsn < last:
                    cut = max(cut, lsn)
                    break
    return cut


def _read_position(cluster: ClusterCore, name: str) -> int:
    try:
        with cluster.node(name) as conn:
            return store.read_state(conn).applied_lsn
    except ClusterError:
        return 0  # missing: keep its entries (within the limits) until it is resynced or removed


class Maintenance:
    """What the replicator thread does between rounds: notice config changes, restore semi-sync,
    apply the retention policy about once a second."""

    def __init__(self, cluster: ClusterCore):
        self.cluster = cluster
        self._conn: apsw.Connection | None = None
        self._conn_node = ""
        self._next_retention = time.monotonic() + RETENTION_INTERVAL
        self._next_degraded_check = 0.0
        self._truncated_at = 0
        self._next_resync_check = time.monotonic() + RETENTION_INTERVAL

    def _leader(self) -> apsw.Connection:
        if self._conn is not None and self._conn_node != self.cluster.leader:
            self._conn.close()  # a failover moved the leader
            self._conn = None
        if self._conn is None:
            self._conn_node = self.cluster.leader
            self._conn = self.cluster.open_node(self.cluster.leader)
            # Housekeeping never holds the replicator up behind a long write transaction.
            self._conn.set_busy_timeout(100)
        return self._conn

    def after_round(self, leader_lsn: int, positions: dict[str, int]) -> None:
        try:
            self._after_round(leader_lsn, positions)
        except apsw.BusyError:
            pass  # the leader is busy writing: next time

    def _after_round(self, leader_lsn: int, positions: dict[str, int]) -> None:
        cluster = self.cluster  # Cluster._after_round has just re-read cluster.toml
        now = time.monotonic()
        if cluster.config.mode == "semi-sync" and now >= self._next_degraded_check:
            self._next_degraded_check = now + 0.05
            modes.maybe_restore(cluster, self._leader(), leader_lsn, positions)
        if cluster.config.auto_resync and now >= self._next_resync_check:
            self._next_resync_check = now + RETENTION_INTERVAL
            self._auto_resync()
        if now >= self._next_retention and leader_lsn > self._truncated_at:
            self._next_retention = now + RETENTION_INTERVAL
            self._truncated_at = leader_lsn
            known = {n: p for n, p in positions.items() if n in cluster.followers}
            truncate_log(cluster, known, self._leader())

    def _auto_resync(self) -> None:
        """Re-seed the followers that cannot continue from the retained log (not paused ones)."""
        leader = self._leader()
        for name in list(self.cluster.followers):
            try:
                with self.cluster.node(name) as conn:
                    state = store.read_state(conn)
            except ClusterError:
                continue
            if state.paused:
                continue
            if state.needs_snapshot or (not state.error and entries.first_missing_gone(leader, state.applied_lsn)):
                lsn = resync(self.cluster, name)
                log.warning("follower %s fell behind the retained log at LSN %d: re-seeded "
                            "automatically from a snapshot at LSN %d", name, state.applied_lsn, lsn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
