"""Leader failover: fence the old leader, promote a follower, record what could be lost.

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

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import apsw

from logformats import codec
from logformats.row import TAG_SEQUENCE, autoincrement_tables

from ..errors import ClusterError, OperationalError
from ..store import config as cfg
from ..store import log as entries_log
from ..store import node as store
from ..store.applier import Applier
from ..store.log import LogEntry
from ..store.source import LeaderFileSource
from . import history
from .core import ClusterCore

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


@dataclass
class _Old:
    """The leader being deposed, as the promotion sees it."""

    name: str
    path: Path
    conn: apsw.Connection | None  # None: not reachable
    fenced_lsn: int | None = None
    entries: list[LogEntry] = field(default_factory=list)
    sequences: dict[str, int] = field(default_factory=dict)


def _open(cluster: ClusterCore, config: cfg.ClusterConfig, name: str) -> apsw.Connection:
    if config.node(name).stopped:
        raise ClusterError(f"{name} is stopped (replproxy start-node DIR {name})")
    return store.open_node(cluster.directory / config.node(name).file, name=name,
                           synchronous=config.synchronous_of(name))


@contextmanager
def _opened(cluster: ClusterCore, config: cfg.ClusterConfig, name: str) -> Iterator[apsw.Connection]:
    conn = _open(cluster, config, name)
    try:
        yield conn
    finally:
        conn.close()


def failover(cluster: ClusterCore, to: str | None = None, *, force: bool = False,
             timeout: float = 10.0, lock: bool = True, reason: str | None = None) -> FailoverResult:
    """`lock=False`: the caller holds cluster.toml's lock. `reason`: an automatic failover's."""
    if lock:
        with cfg.lock(cluster.directory):
            return failover(cluster, to, force=force, timeout=timeout, lock=False, reason=reason)
    config = cfg.read(cluster.directory)
    old_name = config.leader.name
    if to is not None:
        config.node(to)  # unknown names fail here
        if to == old_name:
            raise ClusterError(f"{to} is already the leader")
    if not config.followers:
        raise ClusterError("this cluster has no follower to promote")
    states, diverged = _follower_states(cluster, config)
    target = _choose_target(to, states, diverged)
    old = _Old(old_name, cluster.directory / config.node(old_name).file, _open_old(cluster, config, old_name))
    try:
        epoch = _next_epoch(cluster, config, old, states)
        result = _promote(cluster, config, old, target, epoch, force, timeout)
        if reason is not None:
            result.automatic, result.reason = True, reason
        return result
    finally:
        if old.conn is not None:
            old.conn.close()


def _follower_states(cluster: ClusterCore, config: cfg.ClusterConfig
                     ) -> tuple[dict[str, store.NodeState], dict[str, str]]:
    """The state of every reachable follower, and why those off the current history are."""
    states: dict[str, store.NodeState] = {}
    diverged: dict[str, str] = {}
    for follower in config.followers:
        name = follower.name
        try:
            conn = _open(cluster, config, name)
        except ClusterError:
            continue
        try:
            states[name] = state = store.read_state(conn)
            lsn, epoch = entries_log.position(conn, state)
            if state.needs_snapshot or config.diverged(lsn, epoch):
                diverged[name] = (f"{name} is off the current history (its LSN {lsn} is of epoch "
                                  f"{epoch}, whose leader was replaced before it, or it needs a "
                                  f"snapshot): re-seed it with `replproxy resync DIR {name}` first")
        except (ClusterError, apsw.Error):
            states.pop(name, None)
        finally:
            conn.close()
    return states, diverged


def _choose_target(to: str | None, states: dict[str, store.NodeState], diverged: dict[str, str]) -> str:
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
    return to


def _open_old(cluster: ClusterCore, config: cfg.ClusterConfig, name: str) -> apsw.Connection | None:
    conn: apsw.Connection | None = None
    try:
        conn = _open(cluster, config, name)
        store.read_meta(conn, name)
        return conn
    except (ClusterError, apsw.Error):
        if conn is not None:
            conn.close()
        return None


def _next_epoch(cluster: ClusterCore, config: cfg.ClusterConfig, old: _Old,
                states: dict[str, store.NodeState]) -> int:
    """One more than any epoch cluster.toml or a reachable node has recorded."""
    epochs = [config.epoch]
    for name in [old.name, *states]:
        if name == old.name and old.conn is None:
            continue
        try:
            with store.opened(cluster.directory / config.node(name).file, name=name) as conn:
                epochs.append(store.meta_epoch(conn))
        except ClusterError:
            continue
    return max(epochs, default=1) + 1


def _promote(cluster: ClusterCore, config: cfg.ClusterConfig, old: _Old, target: str, epoch: int,
             force: bool, timeout: float) -> FailoverResult:
    if old.conn is not None:
        _fence_old(cluster, config, old, target, epoch, timeout)
    # Hold the target, then read its position: no applier (of any process, still following the
    # old leader) moves it past what the promotion decides from here on.
    target_lsn, was_paused = _hold(cluster, config, target, timeout)
    if old.conn is not None:
        assert old.fenced_lsn is not None
        if target_lsn < old.fenced_lsn and not force:
            _release(cluster, config, target, was_paused)
            _refuse(old, target, target_lsn)
        old.entries = entries_log.read_entries(old.conn, 0, -1)
        old.sequences = _sequences(old.conn)
    lost = [e for e in old.entries if e.lsn > target_lsn]
    result = FailoverResult(old.name, target, epoch, target_lsn, old.conn is not None)
    if lost:
        result.lost_lsns = (lost[0].lsn, lost[-1].lsn)
        result.lost_count = len(lost)
        result.lost_file = str(history.write_lost(cluster, epoch, old.name, lost, source=old.conn))
    _make_leader(cluster, config, old, target, target_lsn, epoch, timeout, result)
    if old.conn is not None:
        _demote_old(config, old, lost, target, target_lsn, epoch, result)
    _record_epoch(cluster, config, old.name, target, target_lsn, epoch, timeout)
    _write_roles(cluster, config, old, target, target_lsn, epoch)
    return result


def _fence_old(cluster: ClusterCore, config: cfg.ClusterConfig, old: _Old, target: str, epoch: int,
               timeout: float) -> None:
    """Fence the old leader, then let the target apply its log up to the fence."""
    assert old.conn is not None
    old.conn.set_busy_timeout(int(timeout * 1000))
    # The fence: waits for a write in flight to commit or roll back, then admits no other.
    with store.write_transaction(old.conn):
        store.fence(old.conn, epoch)
        old.fenced_lsn = entries_log.last_lsn(old.conn)
    source = LeaderFileSource(old.path, name=old.name)
    applier = Applier(target, str(cluster.directory / config.node(target).file), source,
                      synchronous="full", format_options=config.format_options())
    try:
        applier.catch_up(old.fenced_lsn, timeout=timeout)
    finally:
        applier.close()
        source.close()


def _refuse(old: _Old, target: str, reached: int) -> None:
    """Lift the fence and say what promoting `target` would lose."""
    assert old.conn is not None and old.fenced_lsn is not None
    store.unfence(old.conn)
    fenced = old.fenced_lsn
    count = old.conn.execute("SELECT count(*) FROM _replproxy_log WHERE lsn > ?", (reached,)).fetchone()[0]
    raise FailoverRefused(
        f"{target} is behind {old.name}: it has applied LSN {reached} of {fenced}; promoting it "
        f"would lose LSN {reached + 1}..{fenced} ({fenced - reached} entries, "
        f"{count} still in {old.name}'s log). Resume or wait for it, choose another follower "
        f"with --to, or use --force to promote it and record the lost writes")


def _make_leader(cluster: ClusterCore, config: cfg.ClusterConfig, old: _Old, target: str,
                 target_lsn: int, epoch: int, timeout: float, result: FailoverResult) -> None:
    """The new leader: the log it continues, its epoch, its counters."""
    kept = [e for e in old.entries if e.lsn <= target_lsn]
    with store.opened(cluster.directory / config.node(target).file, name=target,
                      synchronous=config.synchronous_of(target)) as tconn:
        tconn.set_busy_timeout(int(timeout * 1000))
        with store.write_transaction(tconn):
            entries_log.copy_entries(tconn, kept)
            tconn.execute("DELETE FROM _replproxy_log WHERE lsn > ?", (target_lsn,))
            store.set_epoch(tconn, epoch, target_lsn)
            tconn.execute("DELETE FROM _replproxy_meta WHERE key IN (?, ?, ?)",
                          (store.DEPOSED_KEY, store.DEGRADED_KEY, store.DEGRADED_REASON_KEY))
            # A leader's own state stays held: an applier that still takes it for a follower of
            # the old leader (another process, before it re-reads cluster.toml) must not apply
            # the old leader's entries onto it. Demotion releases it.
            store.clear_error(tconn, paused=True)
            sequences = old.sequences
            if old.conn is None and config.failover_key_gap:
                # The old leader's counters are unknown: move past anything it can have issued
                # in writes that never arrived here (docs/failover.md, "Key reuse").
                sequences = {name: seq + config.failover_key_gap
                             for name, seq in _autoincrement_counters(tconn).items()}
            result.raised_sequences = _raise_sequences(tconn, sequences)
            if result.raised_sequences:
                # First entry of the epoch: every follower (and the old leader when it rejoins)
                # takes the same counters, so they stay identical and a later promotion keeps them.
                flat = [v for pair in sorted(result.raised_sequences.items()) for v in pair]
                entries_log.append(tconn, epoch=epoch, format="row",
                                   payload=codec.pack_chunks([(TAG_SEQUENCE, codec.pack_values(flat))]))


def _demote_old(config: cfg.ClusterConfig, old: _Old, lost: list[LogEntry], target: str, target_lsn: int,
                epoch: int, result: FailoverResult) -> None:
    """The old leader becomes a follower at its last LSN, or one that needs a resync."""
    assert old.conn is not None
    if not lost:
        store.set_applied_at(old.conn, old.fenced_lsn or 0)
        return
    try:
        result.rewound = history.rewind(old.conn, old.name, lost, target_lsn, epoch, config.format_options())
    except Exception as exc:  # not invertible or not in the expected state: re-seed
        log.warning("%s: lost writes cannot be undone in place (%s); it needs a resync", old.name, exc)
    if result.rewound is None:
        store.set_error(
            old.conn, store.StopKind.DIVERGED,
            f"{old.name}: deposed at epoch {epoch} with LSN {lost[0].lsn}..{lost[-1].lsn} "
            f"not on {target} (lost writes in {result.lost_file}); it needs a new snapshot "
            f"(replproxy resync DIR {old.name})", lost[0].lsn)


def _record_epoch(cluster: ClusterCore, config: cfg.ClusterConfig, old: str, target: str,
                  target_lsn: int, epoch: int, timeout: float) -> None:
    """The epoch on every reachable node; a follower past the new leader is off the history."""
    for node in config.nodes:
        try:
            conn = _open(cluster, config, node.name)
        except ClusterError:
            continue
        try:
            conn.set_busy_timeout(int(timeout * 1000))
            with store.write_transaction(conn):
                store.set_epoch(conn, epoch, target_lsn)
                state = store.read_state(conn)
                if node.name not in (old, target) and state.applied_lsn > target_lsn:
                    # Applied entries the new leader does not have: diverged, like the old leader.
                    store.set_error(
                        conn, store.StopKind.DIVERGED,
                        f"{node.name}: applied LSN {state.applied_lsn}, past the new leader "
                        f"{target} (LSN {target_lsn}) after the forced failover to epoch {epoch}; "
                        f"it needs a new snapshot (replproxy resync DIR {node.name})", target_lsn + 1)
        finally:
            conn.close()


def _write_roles(cluster: ClusterCore, config: cfg.ClusterConfig, old: _Old, target: str,
                 target_lsn: int, epoch: int) -> None:
    nodes = []
    for node in config.nodes:
        if node.name == target:
            nodes.append(cfg.NodeConfig(name=node.name, file=node.file, role="leader"))
        elif node.name == old.name:
            # Not reachable now: it stays out (stopped) until `start-node` fences it and undoes
            # what it has that the new leader lacks; used as it is it would diverge.
            stopped = node.stopped_at if old.conn is not None else (node.stopped_at or time.time())
            nodes.append(replace(node, role="follower", replication="async", stopped_at=stopped))
        else:
            nodes.append(node)
    record = cfg.EpochRecord(epoch=epoch, leader=target, base_lsn=target_lsn, at=time.time())
    cfg.write(cluster.directory, replace(config, nodes=tuple(nodes), epochs=(*config.epochs, record)))
    cluster.refresh_config()


def _hold(cluster: ClusterCore, config: cfg.ClusterConfig, name: str, timeout: float) -> tuple[int, bool]:
    """Pause `name` under its write lock; return its applied LSN and whether it was paused."""
    with _opened(cluster, config, name) as conn:
        conn.set_busy_timeout(int(timeout * 1000))
        with store.write_transaction(conn):
            state = store.read_state(conn)
            store.set_paused(conn, True)
        return state.applied_lsn, state.paused


def _release(cluster: ClusterCore, config: cfg.ClusterConfig, name: str, paused: bool) -> None:
    with _opened(cluster, config, name) as conn:
        store.set_paused(conn, paused)


def key_gap_payload(conn: apsw.Connection, gap: int) -> bytes:
    """A row-format payload moving every AUTOINCREMENT counter of `conn` `gap` past its value
    (no chunk at all when `gap` is 0 or no table has one): the first entry of an epoch whose old
    leader could not be read (a distributed takeover, docs/distributed.md)."""
    counters = _autoincrement_counters(conn) if gap else {}
    flat = [value for name, seq in sorted(counters.items()) for value in (name, seq + gap)]
    return codec.pack_chunks([(TAG_SEQUENCE, codec.pack_values(flat))] if flat else [])


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
