"""The follower lifecycle: replication settings, new followers from a snapshot, resync, retention.

- `configure` changes the mode and roles in cluster.toml (under a lock file, written atomically);
  every process notices the new mtime at its next commit or replicator round.
- `add_follower` / `resync`: SQLite's backup API copies the leader in one step (one read
  transaction, so a consistent snapshot); the snapshot's own last LSN is the exact position it
  holds. The copy's log is cleared, its `_replproxy_state.applied_lsn` set to that LSN, and the
  replicator catches it up from there: nothing is lost or applied twice.
- Retention (`truncate_log`, run by the replicator about once a second): entries stay until every
  registered follower has applied them (like replication slots), bounded by `retain_max_bytes`
  and `retain_max_age`; the last entry always stays so LSNs are never reused. A follower left
  behind is reported as `needs-snapshot` and re-seeded by `resync`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import apsw

from . import config as cfg
from . import modes, storage
from .errors import ClusterError

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger("replproxy.lifecycle")

HOLD_PREFIX = "retention_hold:"  # leader meta: a snapshot in progress keeps entries after it
HOLD_GRACE = 10.0  # seconds a hold outlives the registration of its follower (slow processes)
HOLD_ORPHAN = 3600.0  # seconds before a hold of a follower never registered (add killed) expires
RETENTION_INTERVAL = 1.0  # seconds between two retention passes of one replicator
SNAPSHOT_ATTEMPTS = 20


def _one(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The one row of an aggregate query."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return tuple(row)


# -- settings -------------------------------------------------------------------------------------


@contextmanager
def config_lock(directory: Path) -> Iterator[None]:
    """Serialize read-modify-write of cluster.toml between processes."""
    with open(directory / ".cluster.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _update_config(cluster: "Cluster", change: Any) -> cfg.ClusterConfig:
    with config_lock(cluster.directory):
        config = change(cfg.read(cluster.directory))
        cfg.check_replication(config)
        cfg.write(cluster.directory, config)
    cluster.refresh_config()
    return config


def configure(cluster: "Cluster", *, mode: str | None = None, sync_followers: list[str] | None = None,
              semi_sync_k: int | None = None, sync_timeout: float | None = None,
              retain_min_entries: int | None = None, retain_max_bytes: int | None = None,
              retain_max_age: float | None = None, auto_resync: bool | None = None,
              auto_failover: bool | None = None, failover_timeout: float | None = None,
              failover_cooldown: float | None = None, failover_key_gap: int | None = None
              ) -> cfg.ClusterConfig:
    """Change replication settings; `sync_followers`: the followers whose role becomes sync (the
    others become async)."""

    def change(config: cfg.ClusterConfig) -> cfg.ClusterConfig:
        values: dict[str, Any] = {}
        for key, value in (("mode", mode), ("semi_sync_k", semi_sync_k),
                           ("sync_timeout", sync_timeout), ("retain_min_entries", retain_min_entries),
                           ("retain_max_bytes", retain_max_bytes),
                           ("retain_max_age", retain_max_age), ("auto_resync", auto_resync),
                           ("auto_failover", auto_failover), ("failover_timeout", failover_timeout),
                           ("failover_cooldown", failover_cooldown),
                           ("failover_key_gap", failover_key_gap)):
            if value is not None:
                values[key] = value
        if sync_followers is not None:
            for name in sync_followers:
                if config.node(name).role != "follower":
                    raise ClusterError(f"{name} is the leader; only followers have a sync role")
            values["nodes"] = tuple(
                replace(n, replication="sync" if n.name in sync_followers else "async")
                if n.role == "follower" else n for n in config.nodes)
        new = replace(config, **values)
        if new.mode == "sync" and not new.sync_followers:
            raise ClusterError("sync mode needs at least one sync follower (--sync-followers)")
        return new

    return _update_config(cluster, change)


def replication_status(cluster: "Cluster") -> dict[str, Any]:
    cluster.refresh_config()
    config = cluster.config
    conn = cluster.open_node(cluster.leader)
    try:
        degraded = modes.read_degraded(conn)
        first, last, count, size = _one(conn, "SELECT min(lsn), max(lsn), count(*), "
                                        "coalesce(sum(length(payload)), 0) FROM _replproxy_log")
        holds = _holds(conn)
    finally:
        conn.close()
    return {
        "mode": config.mode,
        "semi_sync_k": config.semi_sync_k,
        "sync_timeout": config.sync_timeout,
        "sync_followers": list(config.sync_followers),
        "degraded": degraded is not None,
        "degraded_since": degraded[0] if degraded else None,
        "degraded_reason": degraded[1] if degraded else None,
        "retained_entries": count,
        "retained_bytes": size,
        "retained_from_lsn": first,
        "retained_to_lsn": last,
        "retain_min_entries": config.retain_min_entries,
        "retain_max_bytes": config.retain_max_bytes,
        "retain_max_age": config.retain_max_age,
        "auto_resync": config.auto_resync,
        "retention_holds": {name: lsn for name, (lsn, _) in holds.items()},
    }


# -- snapshots --------------------------------------------------------------------------------------


def _set_hold(cluster: "Cluster", name: str, lsn: int | None) -> None:
    conn = cluster.open_node(cluster.leader)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if lsn is None:
            conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (HOLD_PREFIX + name,))
        else:
            conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                         (HOLD_PREFIX + name, f"{lsn}@{time.time()}"))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _holds(conn: apsw.Connection) -> dict[str, tuple[int, float]]:
    out = {}
    for key, value in conn.execute("SELECT key, value FROM _replproxy_meta WHERE key LIKE ?",
                                   (HOLD_PREFIX + "%",)):
        lsn, _, at = str(value).partition("@")
        out[key[len(HOLD_PREFIX):]] = (int(lsn), float(at or 0))
    return out


def snapshot(cluster: "Cluster", path: Path, name: str) -> int:
    """Copy the leader into `path` (a new or unused file) as follower `name`; return the LSN the
    copy holds. The copy applies from there on."""
    for _ in range(SNAPSHOT_ATTEMPTS):
        lsn = _snapshot_once(cluster, path, name)
        if lsn is not None:
            return lsn
        cluster.log_outside_writes()  # outside writes were not yet logged: log them, copy again
    raise ClusterError(f"cannot take a consistent snapshot for {name}: writers outside the proxy keep "
                       "committing changes not yet in the log")


def _backup_into(source: apsw.Connection, path: Path, name: str) -> None:
    """Copy `source` whole into the file at `path` in one step: one read transaction of the source,
    so the copy is a consistent snapshot."""
    dest = storage.open_node(path, name=name, create=True, synchronous="full")
    try:
        with dest.backup("main", source, "main") as backup:
            backup.step(-1)
    finally:
        dest.close()


def _snapshot_once(cluster: "Cluster", path: Path, name: str) -> int | None:
    source = cluster.open_node(cluster.leader)
    try:
        _backup_into(source, path, name)
    finally:
        source.close()
    dest = storage.open_node(path, name=name, synchronous="full")
    try:
        dest.execute("PRAGMA journal_mode=wal").fetchall()
        dest.execute("BEGIN IMMEDIATE")
        try:
            objects = dest.execute(
                "SELECT type, name FROM sqlite_master WHERE name LIKE '\\_replproxy\\_%' ESCAPE '\\' "
                "AND type IN ('table', 'trigger')").fetchall()
            tables = {str(n) for t, n in objects if t == "table"}
            if "_replproxy_capture" in tables and dest.execute(
                    "SELECT 1 FROM _replproxy_capture LIMIT 1").fetchone():
                dest.execute("ROLLBACK")
                return None  # changes committed outside the proxy, not yet in the log
            lsn = storage.last_lsn(dest)
            last = dest.execute("SELECT epoch, committed_at FROM _replproxy_log WHERE lsn = ?",
                                (lsn,)).fetchone() or (0, None)
            # The leader's capture machinery (trigger format) stays on the leader.
            for kind, obj in objects:
                if kind == "trigger":
                    dest.execute(f'DROP TRIGGER "{obj}"')
            for obj in sorted(tables - {"_replproxy_log", "_replproxy_meta", "_replproxy_state",
                                        "_replproxy_users"}):
                dest.execute(f'DROP TABLE "{obj}"')
            dest.execute("DELETE FROM _replproxy_log")
            dest.execute(
                "UPDATE _replproxy_state SET applied_lsn=?, applied_epoch=?, applied_commit_time=?, "
                "applied_at=?, paused=0, error=NULL, error_lsn=NULL, error_at=NULL WHERE id=1",
                (lsn, last[0], last[1], time.time()))
            dest.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES ('node', ?)", (name,))
            dest.execute("DELETE FROM _replproxy_meta WHERE key LIKE ? OR key IN (?, ?)",
                         (HOLD_PREFIX + "%", modes.DEGRADED_KEY, modes.DEGRADED_REASON_KEY))
            dest.execute("COMMIT")
        except BaseException:
            if not dest.get_autocommit():
                dest.execute("ROLLBACK")
            raise
        return lsn
    finally:
        dest.close()


def _remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def add_follower(cluster: "Cluster", name: str, *, file: str | None = None,
                 replication: str = "async") -> int:
    """Add follower `name` while writes continue; return the LSN of its snapshot."""
    if replication not in cfg.FOLLOWER_ROLES:
        raise ClusterError(f"replication must be one of {', '.join(cfg.FOLLOWER_ROLES)}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ClusterError(f"bad node name {name!r}: use letters, digits, - and _")
    file = file or f"{name}.db"
    config = cfg.read(cluster.directory)
    if any(n.name == name for n in config.nodes):
        raise ClusterError(f"the cluster already has a node named {name!r}")
    path = cluster.directory / file
    if path.exists() or any(n.file == file for n in config.nodes):
        raise ClusterError(f"{path} already exists; refusing to overwrite it (if an interrupted "
                           f"add-follower left it, delete it and its -wal/-shm files)")
    # Keep every entry after the snapshot until all processes see the new follower.
    _set_hold(cluster, name, cluster.leader_lsn())
    try:
        lsn = snapshot(cluster, path, name)

        def change(config: cfg.ClusterConfig) -> cfg.ClusterConfig:
            if any(n.name == name for n in config.nodes):
                raise ClusterError(f"the cluster already has a node named {name!r}")
            node = cfg.NodeConfig(name=name, file=file, role="follower", replication=replication)
            return config.with_nodes(config.nodes + (node,))

        _update_config(cluster, change)
    except BaseException:
        _remove_files(path)
        _set_hold(cluster, name, None)
        raise
    log.info("added follower %s from a snapshot at LSN %d", name, lsn)
    return lsn


def remove_follower(cluster: "Cluster", name: str, *, delete_file: bool = False) -> None:
    """Unregister follower `name` (its retention slot goes with it); keep its file unless asked."""
    node = cfg.read(cluster.directory).node(name)
    if node.role != "follower":
        raise ClusterError(f"{name} is the leader; only followers can be removed")

    def change(config: cfg.ClusterConfig) -> cfg.ClusterConfig:
        config.node(name)
        new = config.with_nodes(tuple(n for n in config.nodes if n.name != name))
        if new.mode == "sync" and not new.sync_followers:
            raise ClusterError(f"{name} is the last sync follower of a sync-mode cluster; "
                               "change the mode or the sync followers first")
        return new

    _update_config(cluster, change)
    _set_hold(cluster, name, None)
    if delete_file:
        _remove_files(cluster.directory / node.file)


def resync(cluster: "Cluster", name: str) -> int:
    """Re-seed follower `name` from a new snapshot of the leader (its file is replaced in one
    transaction, so its readers see the old or the new copy); return the snapshot's LSN."""
    node = cluster.config.node(name)
    if node.role != "follower":
        raise ClusterError(f"{name} is the leader; only followers can be re-seeded")
    target = cluster.directory / node.file
    temp = cluster.directory / f".{node.file}.resync-{os.getpid()}-{time.monotonic_ns()}"
    _remove_files(temp)
    _set_hold(cluster, name, cluster.leader_lsn())
    try:
        lsn = snapshot(cluster, temp, name)
        source = storage.open_node(temp, name=name)
        try:
            _backup_into(source, target, name)
        finally:
            source.close()
    finally:
        _remove_files(temp)
        _set_hold(cluster, name, None)
    if cluster._replicator is not None:
        cluster._replicator.reload()
    log.info("re-seeded follower %s from a snapshot at LSN %d", name, lsn)
    return lsn


# -- retention --------------------------------------------------------------------------------------


def truncate_log(cluster: "Cluster", positions: dict[str, int] | None = None,
                 conn: apsw.Connection | None = None) -> int:
    """Remove the entries every follower has applied, and those beyond the size and age limits;
    return how many were removed. `positions`: known lower bounds of follower positions."""
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
        last = storage.last_lsn(conn)
        first = _one(conn, "SELECT min(lsn) FROM _replproxy_log")[0]
        now = time.time()
        bounds = list(slots.values())
        expired = []
        for holder, (lsn, at) in _holds(conn).items():
            if now - at > (HOLD_GRACE if holder in slots else HOLD_ORPHAN):
                expired.append(holder)
            else:
                bounds.append(lsn)
        upto, removed = 0, 0
        if first is not None and first < last:
            upto = min(bounds + [last - max(1, config.retain_min_entries)])
            upto = max(upto, _limit_cut(conn, config, upto, last, now))
        if not expired and (first is None or upto < first):
            return 0
        with storage.write_transaction(conn):
            for holder in expired:
                conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (HOLD_PREFIX + holder,))
            if first is not None and upto >= first:
                conn.execute("DELETE FROM _replproxy_log WHERE lsn <= ?", (upto,))
                removed = conn.changes()
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


def _read_position(cluster: "Cluster", name: str) -> int:
    try:
        conn = cluster.open_node(name)
    except ClusterError:
        return 0  # missing: keep its entries (within the limits) until it is resynced or removed
    try:
        return storage.read_state(conn).applied_lsn
    except ClusterError:
        return 0
    finally:
        conn.close()


class Maintenance:
    """What the replicator thread does between rounds: notice config changes, restore semi-sync,
    apply the retention policy about once a second."""

    def __init__(self, cluster: "Cluster"):
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
        from .cluster import first_missing_gone

        leader = self._leader()
        for name in list(self.cluster.followers):
            try:
                conn = self.cluster.open_node(name)
            except ClusterError:
                continue
            try:
                state = storage.read_state(conn)
            finally:
                conn.close()
            if state.paused:
                continue
            if (state.error and "needs a new snapshot" in state.error) or (
                    not state.error and first_missing_gone(leader, state.applied_lsn)):
                lsn = resync(self.cluster, name)
                log.warning("follower %s fell behind the retained log at LSN %d: re-seeded "
                            "automatically from a snapshot at LSN %d", name, state.applied_lsn, lsn)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
