"""New followers from a snapshot, re-seeding a follower, removing one.

`add_follower` / `resync`: SQLite's backup API copies the leader in one step (one read transaction,
so a consistent snapshot); the snapshot's own last LSN is the exact position it holds. The copy's
log is cleared, its applied position set to that LSN, and the replicator catches it up from there:
nothing is lost or applied twice. A retention hold on the leader keeps the entries after the
snapshot until every process sees the new follower.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import apsw

from ..errors import ClusterError
from ..store import config as cfg
from ..store import log as entries
from ..store import node as store
from . import outside
from .core import ClusterCore

log = logging.getLogger("replproxy.lifecycle")

SNAPSHOT_ATTEMPTS = 20


def _set_hold(cluster: ClusterCore, name: str, lsn: int | None) -> None:
    with cluster.node(cluster.leader) as conn:
        store.set_hold(conn, name, lsn)


def snapshot(cluster: ClusterCore, path: Path, name: str) -> int:
    """Copy the leader into `path` (a new or unused file) as follower `name`; return the LSN the
    copy holds. The copy applies from there on."""
    for _ in range(SNAPSHOT_ATTEMPTS):
        lsn = _snapshot_once(cluster, path, name)
        if lsn is not None:
            return lsn
        outside.log_outside_writes(cluster)  # outside writes were not yet logged: log them, copy again
    raise ClusterError(f"cannot take a consistent snapshot for {name}: writers outside the proxy keep "
                       "committing changes not yet in the log")


def _backup_into(source: apsw.Connection, path: Path, name: str) -> None:
    """Copy `source` whole into the file at `path` in one step: one read transaction of the source,
    so the copy is a consistent snapshot."""
    with store.opened(path, name=name, create=True, synchronous="full") as dest:
        with dest.backup("main", source, "main") as backup:
            backup.step(-1)


def _snapshot_once(cluster: ClusterCore, path: Path, name: str) -> int | None:
    with cluster.node(cluster.leader) as source:
        _backup_into(source, path, name)
    with store.opened(path, name=name, synchronous="full") as dest:
        dest.execute("PRAGMA journal_mode=wal").fetchall()
        with store.write_transaction(dest):
            objects = dest.execute(
                "SELECT type, name FROM sqlite_master WHERE name LIKE '\\_replproxy\\_%' ESCAPE '\\' "
                "AND type IN ('table', 'trigger')").fetchall()
            tables = {str(n) for t, n in objects if t == "table"}
            if "_replproxy_capture" in tables and dest.execute(
                    "SELECT 1 FROM _replproxy_capture LIMIT 1").fetchone():
                return None  # changes committed outside the proxy, not yet in the log (nothing changed yet)
            lsn = entries.last_lsn(dest)
            # The leader's capture machinery (trigger format) stays on the leader.
            for kind, obj in objects:
                if kind == "trigger":
                    dest.execute(f'DROP TRIGGER "{obj}"')
            for obj in sorted(tables - store.NODE_TABLES):
                dest.execute(f'DROP TABLE "{obj}"')
            store.set_applied_at(dest, lsn)
            dest.execute("DELETE FROM _replproxy_log")
            store.set_meta(dest, store.NODE_KEY, name)
            dest.execute("DELETE FROM _replproxy_meta WHERE key LIKE ? OR key IN (?, ?)",
                         (store.HOLD_PREFIX + "%", store.DEGRADED_KEY, store.DEGRADED_REASON_KEY))
        return lsn


def add_follower(cluster: ClusterCore, name: str, *, file: str | None = None,
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

        cluster.change_config(change)
    except BaseException:
        store.remove_files(path)
        _set_hold(cluster, name, None)
        raise
    log.info("added follower %s from a snapshot at LSN %d", name, lsn)
    return lsn


def remove_follower(cluster: ClusterCore, name: str, *, delete_file: bool = False) -> None:
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
        cfg.check_semi_sync(new)
        return new

    cluster.change_config(change)
    _set_hold(cluster, name, None)
    if delete_file:
        store.remove_files(cluster.directory / node.file)


def _set_aside(path: Path) -> Path:
    """Rename a damaged node file (with its -wal and -shm) out of the way; return its new name."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        old = Path(str(path) + suffix)
        if old.exists():
            old.rename(Path(str(aside) + suffix))
    return aside


def resync(cluster: ClusterCore, name: str) -> int:
    """Re-seed follower `name` from a new snapshot of the leader (its file is replaced in one
    transaction, so its readers see the old or the new copy); return the snapshot's LSN."""
    node = cluster.config.node(name)
    if node.role != "follower":
        raise ClusterError(f"{name} is the leader; only followers can be re-seeded")
    target = cluster.directory / node.file
    temp = cluster.directory / f".{node.file}.resync-{os.getpid()}-{time.monotonic_ns()}"
    store.remove_files(temp)
    _set_hold(cluster, name, cluster.leader_lsn())
    try:
        lsn = snapshot(cluster, temp, name)
        try:
            with store.opened(temp, name=name) as source:
                _backup_into(source, target, name)
        except (ClusterError, apsw.Error) as exc:
            # Its file is damaged (not a database, a bad header): keep it aside and put the
            # snapshot in its place in one rename (no process sees a half-made file).
            aside = _set_aside(target)
            log.warning("%s: its file cannot be written in place (%s); moved to %s, replaced "
                        "from the snapshot", name, exc, aside)
            for suffix in ("", "-wal"):
                if Path(str(temp) + suffix).exists():
                    os.replace(str(temp) + suffix, str(target) + suffix)
    finally:
        store.remove_files(temp)
        _set_hold(cluster, name, None)
    cluster.reload_replication()
    log.info("re-seeded follower %s from a snapshot at LSN %d", name, lsn)
    return lsn


