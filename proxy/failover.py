"""Manual leader failover: fence the old leader, promote a follower, record what could be lost.

See docs/failover.md. The steps, in order (under cluster.toml's lock file):

1. choose the target: `to`, or the most up-to-date follower (highest applied LSN, ties by name);
2. fence the old leader if its file is reachable: under its write lock, `_replproxy_meta` gets
   `deposed_by_epoch`; every proxy writer checks it right after its BEGIN IMMEDIATE, so nothing is
   written there afterwards, by any process;
3. let the target apply the fenced log up to its last LSN; if it cannot (paused, stopped, timeout)
   the fence is lifted and the failover refused, naming what would be lost, unless `force`;
4. copy the old leader's retained log entries up to the target's position into the target's log,
   record the new epoch on the target, raise its AUTOINCREMENT counters to the old leader's;
5. record the epoch on every reachable node, rewrite cluster.toml atomically with the new roles.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw

from . import config as cfg
from . import modes, storage
from .errors import ClusterError, OperationalError
from .replication import Applier
from .logsource import LeaderFileSource

if TYPE_CHECKING:
    from .cluster import Cluster

DEPOSED_KEY = "deposed_by_epoch"


class FailoverRefused(OperationalError):
    """The target is behind the old leader and `force` was not given; nothing changed."""


@dataclass
class FailoverResult:
    old_leader: str
    new_leader: str
    epoch: int
    lsn: int  # the new leader's last LSN at promotion
    old_leader_reachable: bool
    lost_lsns: tuple[int, int] | None = None  # first and last LSN lost (forced failover)
    lost_count: int = 0
    lost_file: str | None = None
    raised_sequences: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.new_leader} is the leader at epoch {self.epoch} (LSN {self.lsn}); "
               f"{self.old_leader} was deposed"
               + ("" if self.old_leader_reachable else " (its file was not reachable: not fenced)")]
        if self.lost_lsns is not None:
            first, last = self.lost_lsns
            out.append(f"LOST {self.lost_count} entries of {self.old_leader}, LSN {first}..{last}: "
                       f"written to {self.lost_file}; {self.old_leader} needs a resync "
                       f"(replproxy resync DIR {self.old_leader})")
        for table, seq in sorted(self.raised_sequences.items()):
            out.append(f"AUTOINCREMENT counter of {table} raised to {seq} (keys the old leader issued)")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"old_leader": self.old_leader, "new_leader": self.new_leader, "epoch": self.epoch,
                "lsn": self.lsn, "old_leader_reachable": self.old_leader_reachable,
                "lost_lsns": list(self.lost_lsns) if self.lost_lsns else None,
                "lost_count": self.lost_count, "lost_file": self.lost_file,
                "raised_sequences": self.raised_sequences}


def _open(cluster: "Cluster", config: cfg.ClusterConfig, name: str) -> apsw.Connection:
    return storage.open_node(cluster.directory / config.node(name).file, name=name,
                             synchronous=config.synchronous_of(name))


def _meta_epoch(conn: apsw.Connection) -> int:
    row = conn.execute("SELECT value FROM _replproxy_meta WHERE key = 'epoch'").fetchone()
    return int(row[0]) if row else 1


def _catch_up(cluster: "Cluster", config: cfg.ClusterConfig, target: str, old_path: Path,
              lsn: int, timeout: float) -> int:
    """Apply the fenced log to `target` up to `lsn` (its last); return the position reached."""
    source = LeaderFileSource(old_path, name=config.leader.name)
    applier = Applier(target, str(cluster.directory / config.node(target).file), source,
                      synchronous="full", format_options=config.format_options())
    try:
        deadline = time.monotonic() + timeout
        while applier.applied_lsn < lsn and time.monotonic() < deadline:
            try:
                moved = applier.step(lsn)
            except apsw.BusyError:
                moved = 0  # another process's replicator holds the target: it moves it
            state = storage.read_state(applier.conn)
            applier.applied_lsn = state.applied_lsn
            if not moved and (state.paused or state.error):
                break
            if not moved:
                time.sleep(0.005)
        return applier.applied_lsn
    finally:
        applier.close()
        source.close()


def failover(cluster: "Cluster", to: str | None = None, *, force: bool = False,
             timeout: float = 10.0) -> FailoverResult:
    from .lifecycle import config_lock

    with config_lock(cluster.directory):
        config = cfg.read(cluster.directory)
        old = config.leader.name
        followers = [n.name for n in config.followers]
        if to is not None:
            config.node(to)  # unknown names fail here
            if to == old:
                raise ClusterError(f"{to} is already the leader")
        if not followers:
            raise ClusterError("this cluster has no follower to promote")
        states: dict[str, storage.NodeState] = {}
        for name in followers:
            try:
                conn = _open(cluster, config, name)
            except ClusterError:
                continue
            try:
                states[name] = storage.read_state(conn)
            except ClusterError:
                pass
            finally:
                conn.close()
        if to is None:
            if not states:
                raise ClusterError("no follower is reachable; nothing to promote")
            to = min(states, key=lambda n: (states[n].error is not None, -states[n].applied_lsn, n))
        if to not in states:
            raise ClusterError(f"{to} is not reachable; cannot promote it")
        target = to
        old_path = cluster.directory / config.node(old).file
        try:
            old_conn: apsw.Connection | None = _open(cluster, config, old)
        except ClusterError:
            old_conn = None
        epochs = []
        for name in [old, *states]:
            try:
                conn = _open(cluster, config, name)
            except ClusterError:
                continue
            try:
                epochs.append(_meta_epoch(conn))
            finally:
                conn.close()
        epoch = max(epochs, default=1) + 1
        try:
            return _promote(cluster, config, old, old_conn, old_path, target, states[target],
                            epoch, force, timeout)
        finally:
            if old_conn is not None:
                old_conn.close()


def _promote(cluster: "Cluster", config: cfg.ClusterConfig, old: str,
             old_conn: apsw.Connection | None, old_path: Path, target: str,
             target_state: storage.NodeState, epoch: int, force: bool,
             timeout: float) -> FailoverResult:
    fenced_lsn: int | None = None
    entries: list[storage.LogEntry] = []
    sequences: dict[str, int] = {}
    if old_conn is not None:
        old_conn.set_busy_timeout(int(timeout * 1000))
        # The fence: waits for a write in flight to commit or roll back, then admits no other.
        old_conn.execute("BEGIN IMMEDIATE")
        try:
            old_conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                             (DEPOSED_KEY, epoch))
            fenced_lsn = storage.last_lsn(old_conn)
            old_conn.execute("COMMIT")
        except BaseException:
            if not old_conn.get_autocommit():
                old_conn.execute("ROLLBACK")
            raise
        reached = _catch_up(cluster, config, target, old_path, fenced_lsn, timeout)
        if reached < fenced_lsn and not force:
            old_conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (DEPOSED_KEY,))
            count = old_conn.execute("SELECT count(*) FROM _replproxy_log WHERE lsn > ?",
                                     (reached,)).fetchone()[0]
            raise FailoverRefused(
                f"{target} is behind {old}: it has applied LSN {reached} of {fenced_lsn}; promoting it "
                f"would lose LSN {reached + 1}..{fenced_lsn} ({fenced_lsn - reached} entries, "
                f"{count} still in {old}'s log). Resume or wait for it, choose another follower "
                f"with --to, or use --force to promote it and record the lost writes")
        target_lsn = reached
        entries = storage.read_entries(old_conn, 0, -1)
        sequences = _sequences(old_conn)
    else:
        target_lsn = target_state.applied_lsn
    lost = [e for e in entries if e.lsn > target_lsn]
    kept = [e for e in entries if e.lsn <= target_lsn]
    result = FailoverResult(old, target, epoch, target_lsn, old_conn is not None)
    if lost:
        result.lost_lsns = (lost[0].lsn, lost[-1].lsn)
        result.lost_count = len(lost)
        result.lost_file = str(_write_lost(cluster, epoch, old, lost))

    # The new leader: the log it continues, its epoch, its counters.
    tconn = _open(cluster, config, target)
    try:
        tconn.set_busy_timeout(int(timeout * 1000))
        tconn.execute("BEGIN IMMEDIATE")
        try:
            tconn.executemany(
                "INSERT OR REPLACE INTO _replproxy_log(lsn, epoch, format, payload, checksum, "
                "committed_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.lsn, e.epoch, e.format, e.payload, e.checksum, e.committed_at, e.origin)
                 for e in kept])
            tconn.execute("DELETE FROM _replproxy_log WHERE lsn > ?", (target_lsn,))
            tconn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES ('epoch', ?)",
                          (epoch,))
            tconn.execute("DELETE FROM _replproxy_meta WHERE key IN (?, ?, ?)",
                          (DEPOSED_KEY, modes.DEGRADED_KEY, modes.DEGRADED_REASON_KEY))
            tconn.execute("UPDATE _replproxy_state SET paused=0, error=NULL, error_lsn=NULL, "
                          "error_at=NULL WHERE id=1")
            result.raised_sequences = _raise_sequences(tconn, sequences)
            tconn.execute("COMMIT")
        except BaseException:
            if not tconn.get_autocommit():
                tconn.execute("ROLLBACK")
            raise
    finally:
        tconn.close()

    # The old leader becomes a follower at its last LSN, or one that needs a resync.
    if old_conn is not None:
        last = entries[-1] if entries else None
        if lost:
            old_conn.execute(
                "UPDATE _replproxy_state SET error=?, error_lsn=?, error_at=? WHERE id=1",
                (f"{old}: deposed at epoch {epoch} with LSN {lost[0].lsn}..{lost[-1].lsn} not on "
                 f"{target} (lost writes in {result.lost_file}); it needs a new snapshot "
                 f"(replproxy resync DIR {old})", lost[0].lsn, time.time()))
        else:
            old_conn.execute(
                "UPDATE _replproxy_state SET applied_lsn=?, applied_epoch=?, applied_commit_time=?, "
                "applied_at=?, paused=0, error=NULL, error_lsn=NULL, error_at=NULL WHERE id=1",
                (fenced_lsn or 0, last.epoch if last else 0, last.committed_at if last else None,
                 time.time()))
    for node in config.nodes:
        try:
            conn = _open(cluster, config, node.name)
        except ClusterError:
            continue
        try:
            conn.set_busy_timeout(int(timeout * 1000))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES ('epoch', ?)",
                         (epoch,))
            state = storage.read_state(conn)
            if node.name not in (old, target) and state.applied_lsn > target_lsn:
                # Applied entries the new leader does not have: diverged, like the old leader.
                conn.execute(
                    "UPDATE _replproxy_state SET error=?, error_lsn=?, error_at=? WHERE id=1",
                    (f"{node.name}: applied LSN {state.applied_lsn}, past the new leader {target} "
                     f"(LSN {target_lsn}) after the forced failover to epoch {epoch}; it needs a "
                     f"new snapshot (replproxy resync DIR {node.name})", target_lsn + 1, time.time()))
            conn.execute("COMMIT")
        finally:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            conn.close()

    nodes = []
    for node in config.nodes:
        if node.name == target:
            nodes.append(cfg.NodeConfig(name=node.name, file=node.file, role="leader"))
        elif node.name == old:
            nodes.append(cfg.NodeConfig(name=node.name, file=node.file, role="follower",
                                        replication="async"))
        else:
            nodes.append(node)
    cfg.write(cluster.directory, config.with_nodes(tuple(nodes)))
    cluster.refresh_config()
    return result


def _sequences(conn: apsw.Connection) -> dict[str, int]:
    try:
        return {name: int(seq) for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence")}
    except apsw.SQLError:
        return {}  # no AUTOINCREMENT table


def _raise_sequences(conn: apsw.Connection, sequences: dict[str, int]) -> dict[str, int]:
    """Raise the target's AUTOINCREMENT counters to at least the old leader's; return the raised."""
    mine = _sequences(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    raised = {}
    for name, seq in sequences.items():
        if name not in tables or mine.get(name, 0) >= seq:
            continue
        if name in mine:
            conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (seq, name))
        else:
            conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (name, seq))
        raised[name] = seq
    return raised


def _write_lost(cluster: "Cluster", epoch: int, old: str, lost: list[storage.LogEntry]) -> Path:
    """DIR/lost-writes-epoch<N>.jsonl: each lost entry decoded, with its LSN and raw payload."""
    from .logview import decode_entries

    path = cluster.directory / f"lost-writes-epoch{epoch}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for decoded in decode_entries(cluster, lost):
            record = decoded.as_dict()
            record["node"] = old
            record["origin"] = decoded.entry.origin
            record["payload_base64"] = base64.b64encode(decoded.entry.payload).decode("ascii")
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    return path
