"""Leader health, automatic failover, and stopping and starting nodes (docs/failover.md).

- `stop_node` / `start_node` simulate a crash on the embedded default: a stopped node is marked in
  cluster.toml, which every process looks at before each write and on every replicator round, so
  no process reads its log, applies to it, routes reads to it or writes to it.
- `HealthMonitor` runs in every process's replicator thread: it probes the leader (opens its file
  and reads its last LSN) every `failover_timeout / 5` seconds, at most every second; once no
  probe has succeeded for `failover_timeout` seconds it promotes the most up-to-date follower,
  unless the last failover is less than `failover_cooldown` seconds old (anti-flapping). The
  monitors of several processes agree through cluster.toml's lock: the first one past the timeout
  fails over; the others find a new leader named when they take the lock.
- `start_node` brings a node back. One that missed a failover rejoins as a follower: its
  transactions that never reached the new leader (its log after the fork LSN recorded in
  cluster.toml's epoch history) are written to a lost-writes file, then undone by applying their
  inverted row images in reverse order (`rewind`), or, when a format cannot invert them, the node
  is re-seeded from a snapshot of the new leader.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import apsw

import logformats

from . import config as cfg
from . import storage
from .errors import ClusterError

if TYPE_CHECKING:
    from .cluster import Cluster
    from .failover import FailoverResult

log = logging.getLogger("replproxy.health")

PROBE_BUSY_MS = 1000


def probe(cluster: "Cluster", config: cfg.ClusterConfig) -> str | None:
    """None when the leader answers; otherwise why it does not."""
    node = config.leader
    if node.stopped:
        return f"{node.name} is stopped (replproxy stop-node)"
    path = cluster.directory / node.file
    try:
        conn = storage.open_node(path, name=node.name)
    except ClusterError as exc:
        return str(exc)
    try:
        conn.set_busy_timeout(PROBE_BUSY_MS)
        meta = storage.read_meta(conn, node.name)
        storage.last_lsn(conn)
        if "deposed_by_epoch" in meta:
            # A failover fenced it and stopped before naming the new leader (its process died):
            # finishing that failover is the way back to a writable cluster.
            return f"{node.name} is fenced by an unfinished failover to epoch {meta['deposed_by_epoch']}"
        return None
    except (apsw.Error, ClusterError) as exc:
        return f"{node.name} does not answer: {exc}"
    finally:
        conn.close()


class HealthMonitor:
    """Declares the leader failed after `failover_timeout` seconds of failed probes (replicator
    thread of every process) and fails over; see the module docstring."""

    def __init__(self, cluster: "Cluster"):
        self.cluster = cluster
        self.failing_since: float | None = None  # wall clock: comparable with stopped_at
        self.reason: str | None = None
        self.leader: str | None = None
        self.last_error: str | None = None
        self.last_failover: "FailoverResult | None" = None  # the last one this monitor made
        self._next_probe = 0.0
        self._held_warned = False

    def tick(self) -> "FailoverResult | None":
        config = self.cluster.config
        now = time.time()
        if not config.auto_failover or not config.running_followers:
            self.failing_since = None
            return None
        if now < self._next_probe:
            return None
        self._next_probe = now + min(1.0, config.failover_timeout / 5)
        reason = probe(self.cluster, config)
        leader = config.leader
        if reason is None:
            self.failing_since, self.reason, self._held_warned = None, None, False
            return None
        if self.failing_since is None or self.leader != leader.name:
            # A stop made by another process counts from when it was made.
            self.failing_since = min(now, leader.stopped_at) if leader.stopped_at else now
            self.leader = leader.name
        self.reason = reason
        if now - self.failing_since < config.failover_timeout:
            return None
        held = held_until(config, now)
        if held is not None:
            if not self._held_warned:
                log.warning("leader %s failed (%s) but the last failover was less than %gs ago: "
                            "no automatic failover before %s (failover_cooldown)", leader.name,
                            reason, config.failover_cooldown, time.ctime(held))
                self._held_warned = True
            return None
        try:
            result = auto_failover(self.cluster, leader.name, reason)
            self.last_error = None
            if result is not None:
                self.last_failover = result
            return result
        except Exception as exc:  # e.g. no follower reachable: try again later
            self.last_error = str(exc)
            log.warning("automatic failover of %s failed: %s", leader.name, exc)
            self._next_probe = now + 1.0
            return None


def held_until(config: cfg.ClusterConfig, now: float) -> float | None:
    """When the anti-flapping window after the last failover ends, if it has not yet."""
    last = config.last_failover_at
    if last is None or now - last >= config.failover_cooldown:
        return None
    return last + config.failover_cooldown


def auto_failover(cluster: "Cluster", leader: str, reason: str) -> "FailoverResult | None":
    """Fail over from `leader`, unless, under cluster.toml's lock, someone already did, it
    answers again, or the anti-flapping window holds it."""
    from .failover import failover
    from .lifecycle import config_lock

    with config_lock(cluster.directory):
        config = cfg.read(cluster.directory)
        if config.leader.name != leader or not config.auto_failover:
            return None
        if probe(cluster, config) is None or held_until(config, time.time()) is not None:
            return None
        # The failed leader's file is used if it can be opened (to fence it and carry its log
        # over); a stopped one, or one that cannot be read, is left for `start-node`.
        result = failover(cluster, None, force=True, timeout=config.failover_timeout, lock=False,
                          reason=f"{reason}; no answer for {config.failover_timeout:g}s")
    for line in result.lines():
        log.warning("%s", line)
    cluster.refresh_config()
    return result


# -- stop and start ---------------------------------------------------------------------------


def stop_node(cluster: "Cluster", name: str) -> None:
    from .lifecycle import config_lock

    with config_lock(cluster.directory):
        config = cfg.read(cluster.directory)
        node = config.node(name)
        if node.stopped:
            raise ClusterError(f"{name} is already stopped (since {time.ctime(node.stopped_at)})")
        nodes = tuple(replace(n, stopped_at=time.time()) if n.name == name else n
                      for n in config.nodes)
        cfg.write(cluster.directory, replace(config, nodes=nodes))
    cluster.refresh_config()
    cluster.state_generation += 1
    if cluster._replicator is not None:
        # Nothing is read from or applied to the node by this process once this returns (other
        # processes stop at their next round; the failover guards against their last steps).
        cluster._replicator.reload(wait=5.0)


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


def start_node(cluster: "Cluster", name: str, timeout: float = 10.0) -> StartResult:
    from .lifecycle import config_lock, resync

    with config_lock(cluster.directory):
        config = cfg.read(cluster.directory)
        node = config.node(name)
        if not node.stopped:
            raise ClusterError(f"{name} is not stopped")
        result = StartResult(name, node.role)
        conn = storage.open_node(cluster.directory / node.file, name=name,
                                 synchronous=config.synchronous_of(name))
        try:
            conn.set_busy_timeout(int(timeout * 1000))
            node_epoch = int(storage.read_meta(conn, name).get("epoch", 1))
            fork = config.fork_lsn(node_epoch)
            if node.role == "follower" and fork is not None:
                _rejoin(cluster, config, name, conn, node_epoch, fork, result)
        finally:
            conn.close()
        nodes = tuple(replace(n, stopped_at=None) if n.name == name else n for n in config.nodes)
        cfg.write(cluster.directory, replace(config, nodes=nodes))
    cluster.refresh_config()
    cluster.state_generation += 1
    if result.method == "snapshot":
        resync(cluster, name)
        _fence(cluster, name, cluster.config.epoch)  # the copy came from the new leader: unfenced
    elif cluster._replicator is not None:
        cluster._replicator.reload()
    return result


def _fence(cluster: "Cluster", name: str, epoch: int) -> None:
    from .failover import DEPOSED_KEY

    conn = cluster.open_node(name)
    try:
        conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                     (DEPOSED_KEY, epoch))
    finally:
        conn.close()


def _rejoin(cluster: "Cluster", config: cfg.ClusterConfig, name: str, conn: apsw.Connection,
            node_epoch: int, fork: int, result: StartResult) -> None:
    """A node last at `node_epoch` comes back after a failover whose new leader started from
    `fork`: fence it, record and undo what it holds past `fork`, make it follow from `fork`."""
    from .failover import DEPOSED_KEY, _set_epoch, _write_lost

    result.rejoined, result.fork_lsn = True, fork
    epoch = config.epoch
    with storage.write_transaction(conn):
        # The fence first, under the node's write lock: no proxy writes here from now on.
        conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                     (DEPOSED_KEY, epoch))
        _log_pending_outside_writes(conn, config, node_epoch)
        _set_epoch(conn, epoch, config.epochs[-1].base_lsn)
        position = storage.last_lsn(conn)
        lost = storage.read_entries(conn, fork, -1)
    if position <= fork:
        # Nothing past the fork: it follows from where it is.
        conn.execute("UPDATE _replproxy_state SET applied_lsn=?, paused=0, error=NULL, "
                     "error_lsn=NULL, error_at=NULL WHERE id=1", (position,))
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
        leader = storage.open_node(cluster.directory / config.leader.file, name=config.leader.name)
        leader.execute("PRAGMA query_only=1")
    except ClusterError:
        pass  # the lost writes are recorded all the same, without the key check
    try:
        path = _write_lost(cluster, record_epoch, name, lost, leader, source=conn)
    finally:
        if leader is not None:
            leader.close()
    result.lost_file = str(path)
    result.keys_reused = sum(len(json.loads(line).get("keys_reused", []))
                             for line in path.read_text(encoding="utf-8").splitlines())
    try:
        result.method = rewind(conn, name, lost, fork, epoch, config.format_options(),
                               base=config.epochs[-1].base_lsn)
    except (logformats.NotInvertibleError, logformats.ApplyError, apsw.Error) as exc:
        result.method, result.reason = "snapshot", str(exc)
    if result.method == "snapshot":
        _hold_for_snapshot(conn, name, fork, result.reason or "")
    log.warning("%s", " ".join(result.lines()))


def _hold_for_snapshot(conn: apsw.Connection, name: str, fork: int, reason: str) -> None:
    """Until `resync` replaces it, no applier may touch the node (its data is past the fork)."""
    storage.set_error(conn, f"{name}: rejoining after a failover, it needs a new snapshot ({reason})",
                      fork + 1)


def _log_pending_outside_writes(conn: apsw.Connection, config: cfg.ClusterConfig,
                                node_epoch: int) -> None:
    """Trigger format: changes other programs committed on the node after the proxy last logged
    them become entries of its own epoch first, so they are recorded and undone with the rest."""
    fmt = logformats.get(config.format, **config.format_options())
    if not getattr(fmt, "captures_outside_writers", False):
        return
    try:
        if conn.execute("SELECT 1 FROM _replproxy_capture LIMIT 1").fetchone() is None:
            return
    except apsw.SQLError:
        return  # no capture table: nothing was captured here
    fmt.bind_outside_log(lambda c, payload: storage.append(c, epoch=node_epoch, format=fmt.name,
                                                           payload=payload))
    fmt.log_outside(conn)  # type: ignore[attr-defined]


def rewind(conn: apsw.Connection, node: str, lost: list[storage.LogEntry], fork: int, epoch: int,
           format_options: dict[str, Any], base: int | None = None) -> str:
    """Undo `lost` (the node's entries after `fork`, in LSN order) by applying their inverses in
    reverse order, drop them from its log and make it a follower at `fork`, all in one
    transaction; return "inverted". Raises NotInvertibleError or ApplyError with nothing changed.
    `base`: where the current epoch starts (default `fork`)."""
    from .failover import DEPOSED_KEY, _set_epoch

    formats: dict[str, logformats.LogFormat] = {}

    def fmt(name: str) -> logformats.LogFormat:
        if name not in formats:
            formats[name] = logformats.get(name, **format_options)
        return formats[name]

    inverses = [(e, fmt(e.format).invert(e.payload)) for e in reversed(lost)]
    fk = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    conn.execute("PRAGMA foreign_keys=OFF")  # images already hold what cascades did
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    try:
        with storage.write_transaction(conn):
            for entry, inverse in inverses:
                try:
                    fmt(entry.format).apply(conn, inverse)
                except logformats.ApplyError as exc:
                    raise logformats.ApplyError(
                        f"{node}: cannot undo LSN {entry.lsn}: {exc}", table=exc.table,
                        reason=exc.reason) from exc
            conn.execute("DELETE FROM _replproxy_log WHERE lsn > ?", (fork,))
            row = conn.execute("SELECT epoch, committed_at FROM _replproxy_log WHERE lsn = ?",
                               (fork,)).fetchone()
            conn.execute(
                "UPDATE _replproxy_state SET applied_lsn=?, applied_epoch=?, applied_commit_time=?, "
                "applied_at=?, paused=0, error=NULL, error_lsn=NULL, error_at=NULL WHERE id=1",
                (fork, row[0] if row else 0, row[1] if row else None, time.time()))
            conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                         (DEPOSED_KEY, epoch))
            _set_epoch(conn, epoch, fork if base is None else base)
    finally:
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        conn.execute(f"PRAGMA foreign_keys={'ON' if fk else 'OFF'}")
    return "inverted"


# -- reporting --------------------------------------------------------------------------------


def lost_writes(cluster: "Cluster") -> list[dict[str, Any]]:
    """Every lost-writes file in the cluster directory: its entries' count and LSN range."""
    out = []
    for path in sorted(cluster.directory.glob("lost-writes-epoch*.jsonl")):
        lsns = []
        try:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        lsns.append(int(json.loads(line)["lsn"]))
        except (OSError, ValueError, KeyError) as exc:
            out.append({"file": str(path), "entries": None, "error": str(exc)})
            continue
        out.append({"file": str(path), "entries": len(lsns),
                    "first_lsn": min(lsns) if lsns else None, "last_lsn": max(lsns) if lsns else None})
    return out


def health(cluster: "Cluster") -> dict[str, Any]:
    cluster.refresh_config()
    config = cluster.config
    now = time.time()
    reason = probe(cluster, config)
    monitor = cluster._monitor
    failing_since = monitor.failing_since if monitor is not None and reason else None
    if reason and failing_since is None and config.leader.stopped_at:
        failing_since = config.leader.stopped_at
    due = failing_since + config.failover_timeout if failing_since is not None else None
    return {
        "leader": config.leader.name,
        "leader_ok": reason is None,
        "leader_problem": reason,
        "failing_since": failing_since,
        "epoch": config.epoch,
        "auto_failover": config.auto_failover,
        "failover_timeout": config.failover_timeout,
        "failover_cooldown": config.failover_cooldown,
        "failover_key_gap": config.failover_key_gap,
        "last_failover_at": config.last_failover_at,
        "failover_due_at": due if config.auto_failover else None,
        "held_until": held_until(config, now) if reason else None,
        "monitor_error": monitor.last_error if monitor is not None else None,
        "stopped": [n.name for n in config.nodes if n.stopped],
        "lost_writes": lost_writes(cluster),
    }
