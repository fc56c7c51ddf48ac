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
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw

from logformats import codec
from logformats.row import TAG_SEQUENCE, autoincrement_tables

from . import config as cfg
from . import modes, storage
from .errors import ClusterError, OperationalError
from .replication import Applier
from .logsource import LeaderFileSource

if TYPE_CHECKING:
    from .cluster import Cluster

DEPOSED_KEY = "deposed_by_epoch"
log = logging.getLogger("replproxy.failover")


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
    # How the old leader's lost transactions were undone: "inverted" (row images in reverse
    # order), or None when it still needs a snapshot (`resync`) or was not reachable.
    rewound: str | None = None
    automatic: bool = False
    reason: str | None = None  # why an automatic failover happened

    def lines(self) -> list[str]:
        out = [f"{self.new_leader} is the leader at epoch {self.epoch} (LSN {self.lsn}); "
               f"{self.old_leader} was deposed"
               + ("" if self.old_leader_reachable else
                  " (it was not reachable: it is fenced when it starts again, and its writes that "
                  "never reached the new leader are undone and recorded then)")]
        if self.automatic:
            out.append(f"automatic failover: {self.reason}")
        if self.lost_lsns is not None:
            first, last = self.lost_lsns
            fate = (f"undone on {self.old_leader}, which follows {self.new_leader}"
                    if self.rewound else f"{self.old_leader} needs a resync "
                    f"(replproxy resync DIR {self.old_leader})")
            out.append(f"LOST {self.lost_count} entries of {self.old_leader}, LSN {first}..{last}: "
                       f"written to {self.lost_file}; {fate}")
        for table, seq in sorted(self.raised_sequences.items()):
            why = ("keys the old leader issued" if self.old_leader_reachable else
                   "past keys the unreachable old leader may have issued")
            out.append(f"AUTOINCREMENT counter of {table} raised to {seq} ({why})")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"old_leader": self.old_leader, "new_leader": self.new_leader, "epoch": self.epoch,
                "lsn": self.lsn, "old_leader_reachable": self.old_leader_reachable,
                "lost_lsns": list(self.lost_lsns) if self.lost_lsns else None,
                "lost_count": self.lost_count, "lost_file": self.lost_file,
                "raised_sequences": self.raised_sequences, "rewound": self.rewound,
                "automatic": self.automatic, "reason": self.reason}


def _open(cluster: "Cluster", config: cfg.ClusterConfig, name: str) -> apsw.Connection:
    if config.node(name).stopped:
        raise ClusterError(f"{name} is stopped (replproxy start-node DIR {name})")
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
             timeout: float = 10.0, lock: bool = True, reason: str | None = None) -> FailoverResult:
    """`lock=False`: the caller holds cluster.toml's lock. `reason`: an automatic failover's."""
    from .lifecycle import config_lock

    if lock:
        with config_lock(cluster.directory):
            return failover(cluster, to, force=force, timeout=timeout, lock=False,
                            reason=reason)
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
    diverged: dict[str, str] = {}
    for name in followers:
        try:
            conn = _open(cluster, config, name)
        except ClusterError:
            continue
        try:
            states[name] = state = storage.read_state(conn)
            lsn, epoch = _position(conn, state)
            if storage.needs_snapshot(state) or config.diverged(lsn, epoch):
                diverged[name] = (f"{name} is off the current history (its LSN {lsn} is of epoch "
                                  f"{epoch}, whose leader was replaced before it, or it needs a "
                                  f"snapshot): re-seed it with `replproxy resync DIR {name}` first")
        except (ClusterError, apsw.Error):
            states.pop(name, None)
        finally:
            conn.close()
    if to is None:
        candidates = [n for n in states if n not in diverged]
        if not candidates:
            raise ClusterError("no follower is reachable and on the current history; nothing to "
                               "promote" + (f" ({'; '.join(diverged.values())})" if diverged else ""))
        to = min(candidates, key=lambda n: (states[n].error is not None, -states[n].applied_lsn, n))
    if to not in states:
        raise ClusterError(f"{to} is not reachable; cannot promote it")
    if to in diverged:
        raise ClusterError(f"cannot promote {diverged[to]}")
    target = to
    old_path = cluster.directory / config.node(old).file
    old_conn: apsw.Connection | None = None
    try:
        old_conn = _open(cluster, config, old)
        storage.read_meta(old_conn, old)
    except (ClusterError, apsw.Error):
        if old_conn is not None:
            old_conn.close()
        old_conn = None
    epochs = [config.epoch]
    for name in [old, *states]:
        if name == old and old_conn is None:
            continue
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
        result = _promote(cluster, config, old, old_conn, old_path, target,
                          epoch, force, timeout)
        if reason is not None:
            result.automatic, result.reason = True, reason
        return result
    finally:
        if old_conn is not None:
            old_conn.close()


def _promote(cluster: "Cluster", config: cfg.ClusterConfig, old: str,
             old_conn: apsw.Connection | None, old_path: Path, target: str,
             epoch: int, force: bool,
             timeout: float) -> FailoverResult:
    fenced_lsn: int | None = None
    entries: list[storage.LogEntry] = []
    sequences: dict[str, int] = {}
    if old_conn is not None:
        old_conn.set_busy_timeout(int(timeout * 1000))
        # The fence: waits for a write in flight to commit or roll back, then admits no other.
        with storage.write_transaction(old_conn):
            old_conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                             (DEPOSED_KEY, epoch))
            fenced_lsn = storage.last_lsn(old_conn)
        _catch_up(cluster, config, target, old_path, fenced_lsn, timeout)
    # Hold the target, then read its position: no applier (of any process, still following the
    # old leader) moves it past what the promotion decides from here on.
    reached, was_paused = _hold(cluster, config, target, timeout)
    if old_conn is not None:
        assert fenced_lsn is not None
        if reached < fenced_lsn and not force:
            _release(cluster, config, target, was_paused)
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
        target_lsn = reached
    lost = [e for e in entries if e.lsn > target_lsn]
    kept = [e for e in entries if e.lsn <= target_lsn]
    result = FailoverResult(old, target, epoch, target_lsn, old_conn is not None)
    if lost:
        result.lost_lsns = (lost[0].lsn, lost[-1].lsn)
        result.lost_count = len(lost)
        result.lost_file = str(_write_lost(cluster, epoch, old, lost, source=old_conn))

    # The new leader: the log it continues, its epoch, its counters.
    tconn = _open(cluster, config, target)
    try:
        tconn.set_busy_timeout(int(timeout * 1000))
        with storage.write_transaction(tconn):
            storage.copy_entries(tconn, kept)
            tconn.execute("DELETE FROM _replproxy_log WHERE lsn > ?", (target_lsn,))
            _set_epoch(tconn, epoch, target_lsn)
            tconn.execute("DELETE FROM _replproxy_meta WHERE key IN (?, ?, ?)",
                          (DEPOSED_KEY, modes.DEGRADED_KEY, modes.DEGRADED_REASON_KEY))
            # A leader's own state stays held: an applier that still takes it for a follower of
            # the old leader (another process, before it re-reads cluster.toml) must not apply
            # the old leader's entries onto it. Demotion releases it.
            tconn.execute("UPDATE _replproxy_state SET paused=1, error=NULL, error_lsn=NULL, "
                          "error_at=NULL WHERE id=1")
            if old_conn is None and config.failover_key_gap:
                # The old leader's counters are unknown: move past anything it can have issued
                # in writes that never arrived here (docs/failover.md, "Key reuse").
                sequences = {name: seq + config.failover_key_gap
                             for name, seq in _autoincrement_counters(tconn).items()}
            result.raised_sequences = _raise_sequences(tconn, sequences)
            if result.raised_sequences:
                # First entry of the epoch: every follower (and the old leader when it rejoins)
                # takes the same counters, so they stay identical and a later promotion keeps them.
                flat = [v for pair in sorted(result.raised_sequences.items()) for v in pair]
                storage.append(tconn, epoch=epoch, format="row",
                               payload=codec.pack_chunks([(TAG_SEQUENCE, codec.pack_values(flat))]))
    finally:
        tconn.close()

    # The old leader becomes a follower at its last LSN, or one that needs a resync.
    if old_conn is not None:
        last = entries[-1] if entries else None
        if lost:
            from .health import rewind

            try:
                result.rewound = rewind(old_conn, old, lost, target_lsn, epoch,
                                        config.format_options())
            except Exception as exc:  # not invertible or not in the expected state: re-seed
                log.warning("%s: lost writes cannot be undone in place (%s); it needs a resync",
                            old, exc)
        if lost and result.rewound is None:
            storage.set_error(
                old_conn, f"{old}: deposed at epoch {epoch} with LSN {lost[0].lsn}..{lost[-1].lsn} "
                f"not on {target} (lost writes in {result.lost_file}); it needs a new snapshot "
                f"(replproxy resync DIR {old})", lost[0].lsn)
        elif not lost:
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
            with storage.write_transaction(conn):
                _set_epoch(conn, epoch, target_lsn)
                state = storage.read_state(conn)
                if node.name not in (old, target) and state.applied_lsn > target_lsn:
                    # Applied entries the new leader does not have: diverged, like the old leader.
                    storage.set_error(
                        conn, f"{node.name}: applied LSN {state.applied_lsn}, past the new leader "
                        f"{target} (LSN {target_lsn}) after the forced failover to epoch {epoch}; "
                        f"it needs a new snapshot (replproxy resync DIR {node.name})", target_lsn + 1)
        finally:
            conn.close()

    nodes = []
    for node in config.nodes:
        if node.name == target:
            nodes.append(cfg.NodeConfig(name=node.name, file=node.file, role="leader"))
        elif node.name == old:
            # Not reachable now: it stays out (stopped) until `start-node` fences it and undoes
            # what it has that the new leader lacks; used as it is it would diverge.
            stopped = node.stopped_at if old_conn is not None else (node.stopped_at or time.time())
            nodes.append(replace(node, role="follower", replication="async", stopped_at=stopped))
        else:
            nodes.append(node)
    record = cfg.EpochRecord(epoch=epoch, leader=target, base_lsn=target_lsn, at=time.time())
    cfg.write(cluster.directory, replace(config, nodes=tuple(nodes),
                                         epochs=(*config.epochs, record)))
    cluster.refresh_config()
    return result


def _reused_keys(leader: apsw.Connection, events: Any) -> list[dict[str, Any]]:
    out = []
    for event in events:
        if event.kind != "INSERT" or not event.table or not event.new:
            continue
        try:
            info = leader.execute("SELECT name, pk FROM pragma_table_info(?)", (event.table,)).fetchall()
        except apsw.Error:
            continue
        keys = [name for name, pk in sorted(info, key=lambda r: r[1]) if pk]
        if not keys or any(k not in event.new for k in keys):
            continue
        where = " AND ".join(f'"{k}" IS ?' for k in keys)
        table = event.table.replace('"', '""')
        try:
            cur = leader.execute(f'SELECT * FROM "{table}" WHERE {where}', [event.new[k] for k in keys])
            row = cur.fetchone()
            names = [d[0] for d in cur.getdescription()] if row is not None else []
        except apsw.Error:
            continue
        if row is not None:
            now = dict(zip(names, row))
            if now != event.new:
                out.append({"table": event.table, "key": {k: event.new[k] for k in keys}, "now": now})
    return out


def _position(conn: apsw.Connection, state: storage.NodeState) -> tuple[int, int]:
    """A node's last LSN and the epoch of the entry there: what it applied, or for a node that
    wrote as a leader, its own log's last entry."""
    row = conn.execute("SELECT lsn, epoch FROM _replproxy_log ORDER BY lsn DESC LIMIT 1").fetchone()
    if row is not None and row[0] > state.applied_lsn:
        return int(row[0]), int(row[1])
    return state.applied_lsn, state.applied_epoch


def _set_epoch(conn: apsw.Connection, epoch: int, base: int) -> None:
    """Record the epoch on a node, with the LSN it starts after: its appliers refuse entries of an
    older epoch past that LSN (a deposed leader's branch, see replication.Applier)."""
    conn.executemany("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                     [("epoch", epoch), (storage.EPOCH_BASE_KEY, base)])


def _hold(cluster: "Cluster", config: cfg.ClusterConfig, name: str, timeout: float
          ) -> tuple[int, bool]:
    """Pause `name` under its write lock; return its applied LSN and whether it was paused."""
    conn = _open(cluster, config, name)
    try:
        conn.set_busy_timeout(int(timeout * 1000))
        with storage.write_transaction(conn):
            state = storage.read_state(conn)
            conn.execute("UPDATE _replproxy_state SET paused=1 WHERE id=1")
        return state.applied_lsn, state.paused
    finally:
        conn.close()


def _release(cluster: "Cluster", config: cfg.ClusterConfig, name: str, paused: bool) -> None:
    conn = _open(cluster, config, name)
    try:
        conn.execute("UPDATE _replproxy_state SET paused=? WHERE id=1", (int(paused),))
    finally:
        conn.close()


def _autoincrement_counters(conn: apsw.Connection) -> dict[str, int]:
    """Every AUTOINCREMENT table's counter, 0 for one that has not handed out a key here yet
    (sqlite_sequence gets its row at the first insert: the lost writes may have made it)."""
    counters = {name: 0 for name in autoincrement_tables(conn)}
    for name, seq in _sequences(conn).items():
        counters[name] = max(counters.get(name, 0), seq)
    return counters


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


def _write_lost(cluster: "Cluster", epoch: int, old: str, lost: list[storage.LogEntry],
                leader: apsw.Connection | None = None, *, source: apsw.Connection) -> Path:
    """DIR/lost-writes-epoch<N>.jsonl: each lost entry decoded (with the column names of
    `source`, the node they come from: their tables may exist nowhere else), with its LSN and raw
    payload. With `leader` (the current leader), rows the lost entries inserted whose primary
    key the leader has since given to another row are listed under `keys_reused`."""
    from .logview import decode_entries

    path = cluster.directory / f"lost-writes-epoch{epoch}.jsonl"
    n = 1
    while path.exists():  # never overwrite a record of lost writes
        n += 1
        path = cluster.directory / f"lost-writes-epoch{epoch}-{n}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for decoded in decode_entries(cluster, lost, storage.table_columns(source)):
            record = decoded.as_dict()
            record["node"] = old
            record["origin"] = decoded.entry.origin
            record["payload_base64"] = base64.b64encode(decoded.entry.payload).decode("ascii")
            if leader is not None:
                reused = _reused_keys(leader, decoded.events)
                if reused:
                    record["keys_reused"] = reused
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    return path
