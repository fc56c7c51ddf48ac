"""Replication modes: what a commit waits for once the leader has committed it.

- `async`: nothing; the commit returns once the leader committed.
- `sync`: every follower whose role is `sync` has *applied* the entry (PostgreSQL's
  `synchronous_commit = remote_apply`); after `sync_timeout` seconds the commit fails with
  `SyncReplicationTimeout` naming the followers that held it. The transaction is committed on the
  leader all the same (see docs/replication.md: AFTER_COMMIT).
- `semi-sync`: `semi_sync_k` followers (any role) have applied it; after `sync_timeout` the cluster
  degrades to async — a flag in the leader's `_replproxy_meta`, so every process agrees — and the
  replicator restores semi-sync once k followers have caught up with the leader.

The wait happens after COMMIT, on this process's replicator: the committer wakes it urgently and
sleeps on its progress condition, which the replicator signals after every step of a follower.
The deadline is measured on `cluster.clock` (time.monotonic unless replaced, e.g. by a test).
"""

from __future__ import annotations

import logging
import time

import apsw

from ..errors import SyncReplicationTimeout
from ..store import node as store
from ..store.node import DEGRADED_KEY, DEGRADED_REASON_KEY
from .core import ClusterCore

log = logging.getLogger("replproxy.modes")

SLICE = 0.05  # the committer re-checks positions at least this often


def read_degraded(conn: apsw.Connection) -> tuple[float, str] | None:
    """(since, reason) when semi-sync has degraded to async, else None."""
    rows = dict(conn.execute("SELECT key, value FROM _replproxy_meta WHERE key IN (?, ?)",
                             (DEGRADED_KEY, DEGRADED_REASON_KEY)))
    since = rows.get(DEGRADED_KEY)
    if not since:
        return None
    return float(since), str(rows.get(DEGRADED_REASON_KEY) or "")


def set_degraded(conn: apsw.Connection, reason: str | None) -> None:
    """Record (reason given) or clear (None) the degraded state in the leader's meta table."""
    with store.write_transaction(conn):
        conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?), (?, ?)",
                     (DEGRADED_KEY, time.time() if reason is not None else None,
                      DEGRADED_REASON_KEY, reason))


def await_acks(cluster: ClusterCore, lsn: int, leader: apsw.Connection) -> None:
    """Return once the cluster's mode is satisfied for the entry `lsn` (already committed). The
    committer re-read cluster.toml just before its COMMIT."""
    config = cluster.config
    if config.mode == "async":
        return
    remote = store.remote_positions(leader)
    if remote:
        _await_remote(cluster, lsn, leader, remote)
        return
    if config.mode == "sync":
        names = list(config.sync_followers)
        need = len(names)
        if not need:
            return
    else:
        if read_degraded(leader) is not None:
            return  # degraded: async until the replicator restores semi-sync
        names = list(cluster.followers)
        need = config.semi_sync_k
    timeout = config.sync_timeout
    if _wait(cluster, names, need, lsn, timeout):
        return
    behind = _describe_behind(cluster, names, lsn)
    if len(names) - len(behind) >= need:
        return  # they made it just after the deadline
    if config.mode == "sync":
        held = tuple(name for name, _ in behind)
        details = "; ".join(f"{name} {text}" for name, text in behind)
        raise SyncReplicationTimeout(
            f"sync replication: synchronous follower{'s' if len(held) > 1 else ''} "
            f"{', '.join(held)} did not apply LSN {lsn} within {timeout:g}s ({details}). "
            f"The transaction IS committed on the leader and visible to other sessions; it will "
            f"reach the followers when they catch up, so do not simply retry it",
            lsn=lsn, nodes=held)
    details = "; ".join(f"{name} {text}" for name, text in behind)
    reason = (f"LSN {lsn} was applied by fewer than {need} follower(s) within {timeout:g}s "
              f"({details})")
    try:
        set_degraded(leader, reason)
    except apsw.Error as exc:  # the commit itself succeeded; the flag is retried by the next one
        log.warning("semi-sync: cannot record the degraded state: %s", exc)
    log.warning("semi-sync degraded to async: %s", reason)


def _await_remote(cluster: ClusterCore, lsn: int, leader: apsw.Connection, remote: dict[str, int]) -> None:
    """A distributed leader (docs/distributed.md): its followers on other machines acknowledge
    what they applied to its `replproxy serve`, which records their positions in the leader's
    file. sync waits for every one of them, semi-sync for `semi_sync_k`."""
    config = cluster.config
    if config.mode == "semi-sync" and read_degraded(leader) is not None:
        return
    need = len(remote) if config.mode == "sync" else config.semi_sync_k
    deadline = cluster.clock() + config.sync_timeout
    version = None
    while True:
        current = leader.execute("PRAGMA data_version").fetchone()[0]
        if current != version:
            version = current
            recorded = store.remote_positions(leader)
        # What `replproxy serve` heard while a transaction held the write lock is in its file.
        heard = store.read_acks_file(leader.filename)
        remote = {name: max(applied, heard.get(name, applied)) for name, applied in recorded.items()}
        if sum(1 for applied in remote.values() if applied >= lsn) >= need:
            return
        if cluster.clock() >= deadline:
            break
        time.sleep(0.0005)
    behind = {name: applied for name, applied in remote.items() if applied < lsn}
    details = "; ".join(f"{name} at LSN {applied}" for name, applied in sorted(behind.items()))
    if config.mode == "sync":
        raise SyncReplicationTimeout(
            f"sync replication: follower{'s' if len(behind) > 1 else ''} {', '.join(sorted(behind))} did not "
            f"apply LSN {lsn} within {config.sync_timeout:g}s ({details}). The transaction IS committed on "
            "the leader and visible to other sessions; it will reach the followers when they catch up, so "
            "do not simply retry it", lsn=lsn, nodes=tuple(sorted(behind)))
    reason = (f"LSN {lsn} was applied by fewer than {need} follower(s) within {config.sync_timeout:g}s "
              f"({details})")
    try:
        set_degraded(leader, reason)
    except apsw.Error as exc:
        log.warning("semi-sync: cannot record the degraded state: %s", exc)
    log.warning("semi-sync degraded to async: %s", reason)


def _wait(cluster: ClusterCore, names: list[str], need: int, lsn: int, timeout: float) -> bool:
    clock = cluster.clock
    deadline = clock() + timeout
    replicator = cluster.replicator
    if replicator is not None and replicator.is_alive():
        replicator.notify(urgent=True)
        with replicator.progress:
            while True:
                applied = replicator.applied
                if sum(1 for n in names if applied.get(n, 0) >= lsn) >= need:
                    return True
                remaining = deadline - clock()
                if remaining <= 0 or not replicator.is_alive():
                    break
                if not replicator.progress.wait(min(remaining, SLICE)):
                    replicator.notify(urgent=True)
        if not replicator.is_alive():
            return _poll_files(cluster, names, need, lsn, deadline)
        return False
    return _poll_files(cluster, names, need, lsn, deadline)


def _poll_files(cluster: ClusterCore, names: list[str], need: int, lsn: int, deadline: float) -> bool:
    """No replicator in this process: another process moves the followers; read their files."""
    while True:
        positions = cluster.positions()
        if sum(1 for n in names if positions.get(n, 0) >= lsn) >= need:
            return True
        if cluster.clock() >= deadline:
            return False
        time.sleep(0.005)


def _describe_behind(cluster: ClusterCore, names: list[str], lsn: int) -> list[tuple[str, str]]:
    out = []
    for name in names:
        try:
            conn = cluster.open_node(name)
        except Exception as exc:  # a missing file is the usual reason
            out.append((name, f"unavailable: {exc}"))
            continue
        try:
            state = store.read_state(conn)
        except Exception as exc:
            out.append((name, f"unreadable: {exc}"))
            continue
        finally:
            conn.close()
        if state.applied_lsn >= lsn:
            continue
        text = f"at LSN {state.applied_lsn}"
        if state.paused:
            text += ", paused"
        if state.error:
            text += f", stopped: {state.error}"
        out.append((name, text))
    return out


def maybe_restore(cluster: ClusterCore, conn: apsw.Connection, leader_lsn: int,
                  positions: dict[str, int]) -> bool:
    """In the replicator: clear the degraded state once k followers have reached `leader_lsn`
    (the leader's last LSN when this round began). True when it restored semi-sync."""
    config = cluster.config
    if config.mode != "semi-sync" or read_degraded(conn) is None:
        return False
    caught_up = [n for n in cluster.followers if positions.get(n, 0) >= leader_lsn]
    if len(caught_up) < config.semi_sync_k:
        return False
    set_degraded(conn, None)
    log.warning("semi-sync restored: %s caught up with LSN %d", ", ".join(caught_up), leader_lsn)
    return True
