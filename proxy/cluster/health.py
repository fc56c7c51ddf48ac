"""Leader health and automatic failover (docs/failover.md).

- `HealthMonitor` runs in every process's replicator thread: it probes the leader (opens its file
  and reads its last LSN) every `failover_timeout / 5` seconds, at most every second; once no
  probe has succeeded for `failover_timeout` seconds it promotes the most up-to-date follower,
  unless the last failover is less than `failover_cooldown` seconds old (anti-flapping). The
  monitors of several processes agree through cluster.toml's lock: the first one past the timeout
  fails over; the others find a new leader named when they take the lock.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import apsw

from ..errors import ClusterError
from ..store import config as cfg
from ..store import log as entries_log
from ..store import node as store
from ..store.decode import iso_time
from . import history
from .core import ClusterCore
from .failover import FailoverResult, failover

log = logging.getLogger("replproxy.health")

PROBE_BUSY_MS = 1000


def probe(cluster: ClusterCore, config: cfg.ClusterConfig) -> str | None:
    """None when the leader answers; otherwise why it does not."""
    node = config.leader
    if node.stopped:
        return f"{node.name} is stopped (replproxy stop-node)"
    path = cluster.directory / node.file
    try:
        conn = store.open_node(path, name=node.name)
    except ClusterError as exc:
        return str(exc)
    try:
        conn.set_busy_timeout(PROBE_BUSY_MS)
        meta = store.read_meta(conn, node.name)
        entries_log.last_lsn(conn)
        if store.DEPOSED_KEY in meta:
            # A failover fenced it and stopped before naming the new leader (its process died):
            # finishing that failover is the way back to a writable cluster.
            return f"{node.name} is fenced by an unfinished failover to epoch {meta[store.DEPOSED_KEY]}"
        return None
    except (apsw.Error, ClusterError) as exc:
        return f"{node.name} does not answer: {exc}"
    finally:
        conn.close()


class HealthMonitor:
    """Declares the leader failed after `failover_timeout` seconds of failed probes (replicator
    thread of every process) and fails over; see the module docstring."""

    def __init__(self, cluster: ClusterCore):
        self.cluster = cluster
        self.failing_since: float | None = None  # wall clock: comparable with stopped_at
        self.reason: str | None = None
        self.leader: str | None = None
        self.last_error: str | None = None
        self.last_failover: FailoverResult | None = None  # the last one this monitor made
        self._next_probe = 0.0
        self._held_warned = False

    def tick(self) -> FailoverResult | None:
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
                            reason, config.failover_cooldown, iso_time(held))
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


def auto_failover(cluster: ClusterCore, leader: str, reason: str) -> FailoverResult | None:
    """Fail over from `leader`, unless, under cluster.toml's lock, someone already did, it
    answers again, or the anti-flapping window holds it."""
    with cfg.lock(cluster.directory):
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


def health(cluster: ClusterCore, monitor: HealthMonitor | None) -> dict[str, Any]:
    """The leader's health as `monitor` (this process's) sees it, and the failover settings."""
    cluster.refresh_config()
    config = cluster.config
    now = time.time()
    reason = probe(cluster, config)
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
        "lost_writes": history.lost_writes(cluster),
    }
