"""Replication and failover settings in cluster.toml, and the replication status.

`configure` changes the mode and roles in cluster.toml (under its lock file, written atomically);
every process notices the new mtime at its next commit or replicator round.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import logformats

from ..errors import ClusterError
from ..store import config as cfg
from ..store import log as entries
from ..store import node as store
from . import modes
from .core import ClusterCore


def configure(cluster: ClusterCore, *, mode: str | None = None, sync_followers: list[str] | None = None,
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
        if distributed:  # followers on other machines: sync means all of them (docs/distributed.md)
            if semi_sync_k is not None and semi_sync_k > len(remote):
                raise ClusterError(f"semi_sync_k {semi_sync_k} is more than the {len(remote)} follower(s) of "
                                   "the cluster")
            return new
        if new.mode == "sync" and not new.sync_followers:
            raise ClusterError("sync mode needs at least one sync follower (--sync-followers)")
        cfg.check_semi_sync(new, semi_sync_k)
        cfg.check_semi_sync(new)
        return new

    with cluster.node(cluster.leader) as conn:
        remote = store.remote_positions(conn)
        distributed = bool(remote) or store.read_fence(conn).lease_until is not None

    return cluster.change_config(change)


def switch_format(cluster: ClusterCore, name: str) -> int:
    """Capture in log format `name` from the next transaction on, in every process (as MySQL's
    binlog_format can change). Returns the LSN it takes effect after: entries up to it keep their
    format, later ones have the new one; followers apply each entry by its own format.

    cluster.toml changes while this holds the leader's write lock, and the meta record written in
    that transaction moves every other connection's data_version: a writer that gets the lock
    after it reads cluster.toml again before it captures (driver/leader.py `fence_check`)."""
    if name not in logformats.names():
        raise ClusterError(f"unknown log format {name!r}; choose one of {', '.join(logformats.names())}")
    old = cluster.config.format
    if "trigger" in (old, name) and old != name:
        raise ClusterError(
            f"switching from {old} to {name} is not supported: the trigger format keeps capture tables and "
            "triggers on the leader that the other formats do not have. Seed a new cluster from this one "
            "instead: `replproxy init NEW --format " + name + " --from LEADER_FILE`")
    if cluster.leader_down:
        raise ClusterError(f"the leader {cluster.leader} is stopped: switch the format once it runs")
    with cfg.lock(cluster.directory), cluster.node(cluster.leader) as conn:
        config = cfg.read(cluster.directory)
        if config.format == name:
            return entries.last_lsn(conn)
        with store.write_transaction(conn):  # BEGIN IMMEDIATE: no writer is between two statements
            lsn = entries.last_lsn(conn)
            store.set_meta(conn, store.FORMAT_SWITCH_KEY, f"{config.format}>{name}@{lsn}")
            cfg.write(cluster.directory, replace(config, format=name))
    cluster.refresh_config()
    return lsn


def format_switch(conn: Any) -> dict[str, Any] | None:
    """The leader's record of the last format switch: from, to and the LSN it took effect after."""
    row = conn.execute("SELECT value FROM _replproxy_meta WHERE key = ?", (store.FORMAT_SWITCH_KEY,)).fetchone()
    if row is None:
        return None
    formats, _, lsn = str(row[0]).partition("@")
    before, _, after = formats.partition(">")
    return {"from": before, "to": after, "after_lsn": int(lsn or 0)}


def replication_status(cluster: ClusterCore) -> dict[str, Any]:
    cluster.refresh_config()
    config = cluster.config
    with cluster.node(cluster.leader) as conn:
        degraded = modes.read_degraded(conn)
        first, last, count, size = conn.execute(
            "SELECT min(lsn), max(lsn), count(*), coalesce(sum(length(payload)), 0) FROM _replproxy_log"
        ).fetchone()
        holds = store.retention_holds(conn)
        switched = format_switch(conn)
    now = cluster.wall_clock()
    followers = {node.name for node in config.followers}
    return {
        "format_switch": switched,
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
        "retention_holds": {name: lsn for name, (lsn, at) in holds.items()
                            if not store.hold_expired(at, name in followers, now)},
    }


