"""PEP 249 (DB-API 2.0) driver: the proxy as applications see it.

Writes and write transactions go to the leader, where the cluster's log format captures them and
the log entry is appended in the same SQLite transaction. Reads outside a write transaction go to a
follower that has applied this connection's last write, otherwise to the leader.
Transactions follow Python's sqlite3 module: a DML statement opens a transaction that lasts until
commit() or rollback(); DDL outside a transaction commits by itself; `autocommit=True` commits
every statement.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apsw

import logformats
from logformats import StatementInfo

from .. import errors
from ..cluster import Cluster
from ..errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    ReadOnlyNodeError,
    Warning,
    translate,
)
from ..store import log as entries_log
from ..store import node as store
from .analyze import Analyzer
from .consistency import DEFAULT_LEVEL, DEFAULT_POLICY, DEFAULT_WAIT, Session, check_level, check_policy
from .types import adapt_params

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"  # named (:name) parameters work too

_clusters: dict[str, Cluster] = {}
_clusters_lock = threading.Lock()


def close_shared_clusters(under: str | os.PathLike[str]) -> None:
    """Close the process-wide clusters of `connect` whose directory lies under `under`."""
    prefix = os.path.realpath(under)
    with _clusters_lock:
        for key in [k for k in _clusters if k == prefix or k.startswith(prefix + os.sep)]:
            _clusters.pop(key).close()


def shared_cluster(directory: str | os.PathLike[str]) -> Cluster:
    """The process-wide Cluster for a directory: one background replicator per cluster."""
    key = os.path.realpath(directory)
    with _clusters_lock:
        cluster = _clusters.get(key)
        if cluster is None or cluster.closed:
            cluster = _clusters[key] = Cluster(directory)
        return cluster


def connect(directory: str | os.PathLike[str], *, autocommit: bool = False, node: str | None = None,
            consistency: str = DEFAULT_LEVEL, max_lag: int | None = None,
            max_staleness: float | None = None, on_stale: str = DEFAULT_POLICY,
            wait_timeout: float = DEFAULT_WAIT, session_token: str | None = None,
            user: str | None = None, cluster: Cluster | None = None) -> Connection:
    """Open a DB-API connection to the cluster in `directory`.

    `autocommit`: commit every statement by itself (default False: DML opens a transaction that
    lasts until commit() or rollback(), as in Python's sqlite3).
    `node`: read from this node only; writes are then refused unless it is the leader.
    `consistency`: "strong", "session" (default), "read-your-writes", "monotonic" or "eventual".
    `max_lag` (entries) and `max_staleness` (seconds): a follower further behind the leader than
    this does not serve reads, whatever the level.
    `on_stale`: when no follower qualifies, "wait" up to `wait_timeout` seconds then read from the
    leader (default), read from the "leader" at once, or raise an "error".
    `session_token`: continue a session exported by `Connection.session_token`.
    `user`: share read-your-writes across every connection and device of this user.
    """
    return Connection(cluster or shared_cluster(directory), autocommit=autocommit, node=node,
                      consistency=consistency, max_lag=max_lag, max_staleness=max_staleness,
                      on_stale=on_stale, wait_timeout=wait_timeout, session_token=session_token,
                      user=user)


class _Transaction:
    """An open transaction: where it runs and, once it has written, its capture."""

    __slots__ = ("node", "capture", "explicit", "savepoints", "by_savepoint", "snapshot_lsn")

    def __init__(self, node: str | None, capture: logformats.Capture | None, explicit: bool):
        self.node = node  # None: BEGIN seen, no statement yet
        self.capture = capture
        self.explicit = explicit
        self.savepoints: list[str] = []
        self.by_savepoint = False
        self.snapshot_lsn: int | None = None  # for a read-only transaction on a follower


@dataclass
class _FollowerState:
    applied_lsn: int
    healthy: bool  # neither paused nor stopped by an error
    seen_at: float
    generation: int


_TURNS = itertools.count()
# How long a writer fenced off a deposed leader waits for cluster.toml to name the new one.
FAILOVER_WAIT = 10.0
# How much longer than failover_timeout a write waits for a stopped leader to be replaced.
FAILOVER_GRACE = 2.0
_STATE_SQL = "SELECT applied_lsn, paused OR error IS NOT NULL FROM _replproxy_state WHERE id = 1"

# A cached follower state older than this is read again before it decides a read (another
# process may have paused or stopped the follower).
STATE_MAX_AGE = 0.1


class Connection:
    """A PEP 249 connection to a replproxy cluster."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, cluster: Cluster, *, autocommit: bool = False, node: str | None = None,
                 consistency: str = DEFAULT_LEVEL, max_lag: int | None = None,
                 max_staleness: float | None = None, on_stale: str = DEFAULT_POLICY,
                 wait_timeout: float = DEFAULT_WAIT, session_token: str | None = None,
                 user: str | None = None):
        self.cluster = cluster
        self.autocommit = autocommit
        if node is not None:
            cluster.config.node(node)
        self.pinned_node = node
        self._consistency = check_level(consistency)
        self.max_lag = max_lag
        self.max_staleness = max_staleness
        self._on_stale = check_policy(on_stale)
        self.wait_timeout = wait_timeout
        self.user = user
        self.session = Session(cluster.cluster_id)
        if session_token is not None:
            self.session.merge_token(session_token)
        self._leader = cluster.open_node(cluster.leader)
        self._leader_name = cluster.leader
        self._fence_version: int | None = None  # leader data_version at the last fence check
        self._analyze = Analyzer(self._leader)
        self._format = cluster.format
        self._followers: dict[str, apsw.Connection] = {}
        self._states: dict[str, _FollowerState] = {}
        self._leader_only: dict[str, bool] = {}
        self._txn: _Transaction | None = None
        self._closed = False
        self._unsettled: str | None = None  # follower read since the session's read LSN was exact
        self.last_node: str | None = None

    # -- consistency --------------------------------------------------------------------------

    @property
    def consistency(self) -> str:
        """The read consistency level of this connection (cursors may override it)."""
        return self._consistency

    @consistency.setter
    def consistency(self, level: str) -> None:
        self._consistency = check_level(level)

    @property
    def on_stale(self) -> str:
        """What a read does when no follower qualifies: "wait", "leader" or "error"."""
        return self._on_stale

    @on_stale.setter
    def on_stale(self, policy: str) -> None:
        self._on_stale = check_policy(policy)

    @property
    def session_token(self) -> str:
        """An opaque string holding what this session has written and read; pass it to
        `connect(..., session_token=...)` to continue the session elsewhere."""
        self._settle()
        return self.session.token()

    @property
    def last_write_lsn(self) -> int:
        """LSN of the last write this session committed (0 if none)."""
        return self.session.last_write_lsn

    @property
    def last_read_lsn(self) -> int:
        """Highest log position this session has read (an upper bound once it has read followers)."""
        self._settle()
        return self.session.last_read_lsn

    # -- PEP 249 ------------------------------------------------------------------------------

    def cursor(self) -> Cursor:
        self._check_open()
        return Cursor(self)

    def commit(self) -> None:
        self._check_open()
        if self._txn is not None:
            self._finish_txn(commit=True)

    def rollback(self) -> None:
        self._check_open()
        if self._txn is not None:
            self._finish_txn(commit=False)

    def close(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot close a closed connection.")
        try:
            if self._txn is not None:
                self._finish_txn(commit=False)
        finally:
            self._closed = True
            for conn in self._followers.values():
                conn.close()
            self._followers.clear()
            self._leader.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (BEGIN, or DML not yet committed)."""
        return self._txn is not None

    def __enter__(self) -> Connection:
        self._check_open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Like sqlite3: commit on success, roll back on error; the connection stays open.
        if self._closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def interrupt(self) -> None:
        """Stop the statements running on this connection, on any node (sqlite3_interrupt); they
        fail with OperationalError "interrupted". Safe to call from another thread."""
        self._leader.interrupt()
        for follower in list(self._followers.values()):
            follower.interrupt()

    # sqlite3-style shortcuts
    def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, script: str) -> Cursor:
        return self.cursor().executescript(script)

    # -- transactions -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed connection.")

    def _check_writable(self, stmt: StatementInfo) -> None:
        if self.pinned_node is not None and self.pinned_node != self._leader_name:
            raise ReadOnlyNodeError(
                f"{self.pinned_node} is a follower and is read-only; writes go to the leader "
                f"({self._leader_name}). Connect without node= to write.")

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE on the current leader. A leader deposed by a failover (failover.py) is
        fenced: its `_replproxy_meta` holds `deposed_by_epoch`, checked here under its write lock, so
        no write lands on it; the connection then follows cluster.toml to the new leader."""
        deadline = None
        self._follow_leader()  # one stat of cluster.toml: a failover another process made
        if self.cluster.leader_down:
            self._await_failover()
        while True:
            try:
                self._leader.execute("BEGIN IMMEDIATE")
                deposed = self._fence_check()
            except apsw.Error as exc:
                if not self._leader.get_autocommit():
                    self._leader.execute("ROLLBACK")
                raise translate(exc) from exc
            if deposed is None:
                return
            self._leader.execute("ROLLBACK")
            if deadline is None:
                deadline = time.monotonic() + FAILOVER_WAIT
            if not self._follow_leader():
                if time.monotonic() >= deadline:
                    raise OperationalError(
                        f"{self._leader_name} was deposed by the failover to epoch {deposed} and "
                        f"cluster.toml does not name a new leader yet; nothing was written, retry")
                time.sleep(0.01)

    def _await_failover(self) -> None:
        """The leader is stopped: with automatic failover on, wait until a new leader is named
        (the failover timeout plus a grace period), else raise; nothing is written meanwhile."""
        config = self.cluster.config
        name = self._leader_name
        if config.auto_failover and config.running_followers:
            since = config.leader.stopped_at or time.time()
            deadline = max(time.time(), since + config.failover_timeout) + FAILOVER_GRACE
            while time.time() < deadline:
                self.cluster.wait_progress(0.01)
                self._follow_leader()
                if not self.cluster.leader_down:
                    return
            why = (f"no failover took place within {config.failover_timeout:g}s "
                   f"(failover_timeout) plus {FAILOVER_GRACE:g}s; see `replproxy status`")
        elif config.auto_failover:
            why = "no running follower can take over"
        else:
            why = (f"automatic failover is off: run `replproxy failover DIR` or "
                   f"`replproxy start-node DIR {name}`")
        raise OperationalError(f"the leader {name} is down (stopped); {why}. Nothing was written")

    def _fence_check(self) -> int | None:
        """Inside the leader's transaction: the epoch that deposed it, or None (and note its epoch)."""
        # The fence is written by another connection, which changes this connection's
        # data_version; while it has not changed since the last check, nothing new can be there.
        version = self._leader.execute("PRAGMA data_version").fetchone()[0]
        if version == self._fence_version:
            return None
        fence = store.read_fence(self._leader)
        self.cluster.note_epoch(fence.epoch)
        if fence.deposed_by is None:
            self._fence_version = version
        return fence.deposed_by

    def _follow_leader(self) -> bool:
        """Reopen the leader connection if cluster.toml names another leader; True if it did."""
        self.cluster.refresh_config()
        name = self.cluster.leader
        if name == self._leader_name:
            return False
        new = self.cluster.open_node(name)
        old, self._leader = self._leader, new
        self._leader_name = name
        self._fence_version = None
        self._analyze = Analyzer(new)
        try:
            old.close()
        except apsw.Error:
            pass
        self._drop_follower(name)
        self._states.clear()
        return True

    def _begin(self, explicit: bool) -> _Transaction:
        """Open a write transaction on the leader."""
        self._begin_immediate()
        try:
            capture = self._format.capture(self._leader)
        except BaseException:
            self._leader.execute("ROLLBACK")
            raise
        self._txn = _Transaction(self._leader_name, capture, explicit)
        return self._txn

    def _writable_txn(self) -> _Transaction:
        """The open transaction, made able to write on the leader."""
        txn = self._txn
        assert txn is not None
        if txn.capture is not None:
            return txn
        if txn.node is None:
            explicit, by_savepoint = txn.explicit, txn.by_savepoint
            self._txn = None
            txn = self._begin(explicit)
            txn.by_savepoint = by_savepoint
            return txn
        if txn.node != self._leader_name:
            self._move_to_leader(txn)
        # A read-only transaction on the leader: its first write upgrades the lock. Its snapshot
        # shows a fence committed before it; one committed after it makes the upgrade fail (busy
        # snapshot), so the check in the snapshot is enough.
        deposed = self._fence_check()
        if deposed is not None:
            self._abort()
            self._follow_leader()
            raise OperationalError(
                f"the leader was deposed by the failover to epoch {deposed} while this transaction "
                f"was reading it; the transaction was rolled back, retry it")
        txn.capture = self._format.capture(self._leader)
        for name in txn.savepoints:
            txn.capture.savepoint(name)
        return txn

    def _move_to_leader(self, txn: _Transaction) -> None:
        """A transaction that read on a follower now writes: it may go on only if the leader has
        not moved past the snapshot it read (SQLite's own rule for a deferred transaction)."""
        self._begin_immediate()
        leader_lsn = entries_log.last_lsn(self._leader)
        if leader_lsn != txn.snapshot_lsn:
            self._leader.execute("ROLLBACK")
            raise OperationalError(
                f"this transaction read {txn.node} at LSN {txn.snapshot_lsn} and the leader has "
                f"moved on to LSN {leader_lsn}; roll back and retry (begin with BEGIN IMMEDIATE, or "
                f"use consistency='strong', to read and write on the leader)")
        follower = self._followers.get(txn.node or "")
        if follower is not None and not follower.get_autocommit():
            follower.execute("COMMIT")
        self.session.read(leader_lsn)
        txn.node = self._leader_name

    def _finish_txn(self, commit: bool) -> None:
        txn = self._txn
        assert txn is not None
        if txn.capture is not None:
            if commit:
                self._commit()
            else:
                self._rollback()
            return
        # Read-only: nothing to log.
        try:
            if txn.node == self._leader_name:
                if not self._leader.get_autocommit():
                    lsn = entries_log.last_lsn(self._leader)
                    self._leader.execute("COMMIT" if commit else "ROLLBACK")
                    self.session.read(lsn)
            elif txn.node is not None:
                follower = self._followers.get(txn.node)
                if follower is not None and not follower.get_autocommit():
                    follower.execute("COMMIT" if commit else "ROLLBACK")
                if txn.snapshot_lsn is not None:
                    self.session.read(txn.snapshot_lsn)
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self._txn = None

    def _commit(self) -> None:
        txn = self._txn
        assert txn is not None and txn.capture is not None
        leader = self._leader
        lsn = None
        savepoint = False
        try:
            payload = txn.capture.finish()
            leader.execute("SAVEPOINT replproxy_commit")
            savepoint = True
            if payload is not None:
                lsn = entries_log.append(leader, epoch=self.cluster.epoch, format=self._format.name,
                                     payload=payload, origin=self.user)
            else:
                # Nothing to log, but what this transaction read is now part of the session.
                lsn_read = entries_log.last_lsn(leader)
            # A leader stopped (or replaced by an automatic failover, which cannot fence a
            # stopped leader) while this transaction ran is gone: like a crash before COMMIT,
            # nothing of it is kept. One stat of cluster.toml, also used by the replication mode.
            self.cluster.refresh_config()
            if self.cluster.leader_down or self.cluster.leader != self._leader_name:
                raise OperationalError(
                    f"the leader {self._leader_name} went down before this transaction committed; "
                    f"it was rolled back and nothing was written: retry it")
            # The savepoint stays open through COMMIT: if COMMIT is refused (deferred foreign keys)
            # the log entry is rolled back to it below while the transaction stays open.
            leader.execute("COMMIT")
        except apsw.Error as exc:
            if leader.get_autocommit():
                self._end_txn()
            elif savepoint:
                # COMMIT refused (deferred foreign keys): the transaction stays open, without the entry.
                leader.execute("ROLLBACK TO replproxy_commit")
                leader.execute("RELEASE replproxy_commit")
            raise translate(exc) from exc
        except logformats.CaptureError as exc:
            self._abort()
            raise IntegrityError(f"{exc} (rolled back)") from exc
        except BaseException:
            self._abort()
            raise
        self._end_txn()
        if lsn is not None:
            self.session.wrote(lsn)
            self.session.read(lsn)
            self.cluster.notify_commit()
            # sync / semi-sync: wait, after COMMIT, for the followers' acknowledgements (modes.py);
            # a SyncReplicationTimeout leaves the transaction committed on the leader.
            self.cluster.await_acks(lsn, leader)
        else:
            self.session.read(lsn_read)

    def _rollback(self) -> None:
        try:
            if not self._leader.get_autocommit():
                # What the transaction read is at most what the leader holds now.
                self.session.read(entries_log.last_lsn(self._leader))
                self._leader.execute("ROLLBACK")
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self._end_txn()

    def _abort(self) -> None:
        try:
            if not self._leader.get_autocommit():
                self._leader.execute("ROLLBACK")
        finally:
            self._end_txn()

    def _end_txn(self) -> None:
        if self._txn is not None:
            if self._txn.capture is not None:
                self._txn.capture.close()
            self._txn = None

    def _sync_txn_state(self) -> None:
        # SQLite ends a transaction by itself on some errors (ON CONFLICT ROLLBACK, disk full).
        txn = self._txn
        if txn is not None and txn.node == self._leader_name and self._leader.get_autocommit():
            self._end_txn()

    # -- read routing -------------------------------------------------------------------------

    def _follower(self, name: str) -> apsw.Connection:
        conn = self._followers.get(name)
        if conn is None:
            conn = self.cluster.open_node(name)
            conn.execute("PRAGMA query_only=1")
            self._followers[name] = conn
        return conn

    def _refresh(self, name: str) -> _FollowerState | None:
        """Read a follower's own position and health; None when it cannot be read."""
        self.cluster.refresh_config()
        if name not in self.cluster.followers:  # stopped, removed or promoted
            self._drop_follower(name)
            self._states.pop(name, None)
            return None
        try:
            if name in self._followers and not os.path.exists(self.cluster.path_of(name)):
                # Removed under an open connection the old file still reads: stale, never moving.
                raise errors.ClusterError(f"node file of {name} is missing")
            state = store.read_state(self._follower(name))
            if state.needs_snapshot:
                raise errors.ClusterError(f"{name} needs a new snapshot")  # off the history
        except (apsw.Error, errors.ClusterError):
            self._drop_follower(name)
            return None
        known = self._states.get(name)
        applied = max(state.applied_lsn, known.applied_lsn if known else 0)
        fresh = _FollowerState(applied, not state.paused and not state.error, time.monotonic(),
                               self.cluster.state_generation)
        self._states[name] = fresh
        return fresh

    def _state(self, name: str, needed: int) -> _FollowerState | None:
        known = self._states.get(name)
        if (known is None or known.applied_lsn < needed
                or known.generation != self.cluster.state_generation
                or time.monotonic() - known.seen_at > STATE_MAX_AGE):
            return self._refresh(name)
        return known

    def _needed(self, level: str) -> int:
        user_lsn = 0
        if self.user is not None and level in ("session", "read-your-writes"):
            user_lsn = entries_log.user_write_lsn(self._leader, self.user)
        needed = self.session.needed(level, user_lsn)
        if self.max_lag is not None or self.max_staleness is not None:
            needed = max(needed, self._freshness_floor())
        return needed

    def _freshness_floor(self) -> int:
        """The lowest applied LSN within `max_lag` entries and `max_staleness` seconds of the leader."""
        leader_lsn = entries_log.last_lsn(self._leader)
        floor = 0
        if self.max_lag is not None:
            floor = max(floor, leader_lsn - self.max_lag)
        if self.max_staleness is not None:
            # Entries committed longer ago than that must all be applied.
            row = self._leader.execute(
                "SELECT lsn FROM _replproxy_log WHERE committed_at <= ? ORDER BY lsn DESC LIMIT 1",
                (time.time() - self.max_staleness,)).fetchone()
            floor = max(floor, row[0] if row else 0)
        return floor

    def _pick_follower(self, needed: int) -> str | None:
        """A follower that qualifies, round-robin: among the healthy ones if any, else among those
        paused or stopped (still correct to read, just not moving)."""
        healthy: list[str] = []
        held: list[str] = []
        for name in self.cluster.followers:
            state = self._state(name, needed)
            if state is not None and state.applied_lsn >= needed:
                (healthy if state.healthy else held).append(name)
        choices = healthy or held
        if not choices:
            return None
        # One turn counter for the process, so that new sessions spread over the followers.
        return choices[next(_TURNS) % len(choices)]

    def _settle(self) -> None:
        """Record exactly how far the session has read. Reads that stay on one follower need no
        bookkeeping (a follower only moves forward); before the session reads elsewhere, the
        follower's current position is an upper bound of everything it showed."""
        node, self._unsettled = self._unsettled, None
        if node is None:
            return
        try:
            lsn = self._follower(node).execute(_STATE_SQL).fetchone()[0]
        except (apsw.Error, errors.ClusterError):
            lsn = entries_log.last_lsn(self._leader)  # no follower can have shown more than the leader
        self.session.read(lsn)

    def _route_read(self, stmt: StatementInfo, level: str) -> str:
        """Where a read outside a transaction goes."""
        if self.pinned_node is not None:
            return self.pinned_node
        if level == "strong":
            return self._leader_name
        leader_only = self._leader_only.get(stmt.sql)
        if leader_only is None:
            # TEMP objects and replproxy's own tables live on the leader connection or file only.
            if len(self._leader_only) > 4096:
                self._leader_only.clear()
            leader_only = self._leader_only[stmt.sql] = (
                stmt.uses_temp or stmt.kind != "read"
                or any(t.lower().startswith(logformats.INTERNAL_PREFIX) for t in stmt.tables_read))
        if leader_only or not self.cluster.followers:
            return self._leader_name
        needed = self._needed(level)
        last = self.last_node
        if last is not None:
            # Stay on the follower used last while it is healthy and qualifies.
            state = self._state(last, needed)
            if state is not None and state.healthy and state.applied_lsn >= needed:
                return last
        if self._unsettled is not None:
            self._settle()
            needed = self._needed(level)
        node = self._pick_follower(needed)
        if node is not None:
            return node
        if self._on_stale == "leader":
            return self._leader_name
        if self._on_stale == "error":
            raise OperationalError(self._behind_message(needed, level))
        return self._wait_for_follower(needed) or self._leader_name

    def _wait_for_follower(self, needed: int) -> str | None:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            for name in self.cluster.followers:
                state = self._refresh(name)
                if state is not None and state.healthy and state.applied_lsn >= needed:
                    return name
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.cluster.wait_progress(min(remaining, 0.005))

    def _behind_message(self, needed: int, level: str) -> str:
        parts = []
        for name in self.cluster.followers:
            state = self._refresh(name)
            if state is None:
                parts.append(f"{name} unreachable")
            else:
                parts.append(f"{name} at LSN {state.applied_lsn} ({needed - state.applied_lsn} behind"
                             f"{'' if state.healthy else ', paused or stopped'})")
        return (f"no follower can serve a {level} read: it needs LSN {needed}; "
                + "; ".join(parts))

    def _observed(self, node: str, conn: apsw.Connection) -> int:
        """The log position a read on `node` just saw. Read while the statement is still active it
        is the statement's own snapshot; read after it, an upper bound (safe for monotonic reads)."""
        if node == self._leader_name:
            lsn = entries_log.last_lsn(conn)
        else:
            try:
                row = conn.execute(_STATE_SQL).fetchone()
            except apsw.Error:
                known = self._states.get(node)
                return known.applied_lsn if known else 0
            lsn = row[0]
            known = self._states.get(node)
            if known is None:
                self._states[node] = _FollowerState(lsn, not row[1], time.monotonic(),
                                                    self.cluster.state_generation)
            else:
                known.applied_lsn, known.healthy, known.seen_at = lsn, not row[1], time.monotonic()
        session = self.session
        if lsn > session.last_read_lsn:
            session.last_read_lsn = lsn
        return lsn

    def _bind_read_txn(self, txn: _Transaction, level: str, stmt: StatementInfo) -> None:
        """The first statement of BEGIN ... is a read: run the transaction on one snapshot, on a
        follower when the level allows it."""
        node = self._route_read(stmt, level)
        conn = self._connection_for(node)
        try:
            conn.execute("BEGIN")
            if node != self._leader_name:
                txn.snapshot_lsn = store.read_state(conn).applied_lsn
        except apsw.Error as exc:
            raise translate(exc) from exc
        txn.node = node
        if node != self._leader_name:
            self.last_node = node

    def _check_reachable(self, node: str) -> str:
        """The node a leader or pinned read goes to, unless it is stopped: a stopped leader is
        waited for (failover), a stopped pinned node refused."""
        if node == self._leader_name:
            self._follow_leader()
            if self.cluster.leader_down:
                self._await_failover()
            return self._leader_name
        self.cluster.refresh_config()
        if self.cluster.config.node(node).stopped:
            raise OperationalError(f"{node} is stopped (replproxy start-node DIR {node})")
        return node

    def _drop_follower(self, name: str) -> None:
        conn = self._followers.pop(name, None)
        self._states.pop(name, None)
        if conn is not None:
            try:
                conn.close()
            except apsw.Error:
                pass

    def _connection_for(self, name: str) -> apsw.Connection:
        return self._leader if name == self._leader_name else self._follower(name)


class Cursor:
    """A PEP 249 cursor. `node` names the node that served the last statement."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.node: str | None = None
        self.lsn: int | None = None
        # Read consistency for this cursor's statements; None: the connection's.
        self.consistency: str | None = None
        self._rows: Iterator[tuple[Any, ...]] | None = None
        self._closed = False

    # -- PEP 249 ------------------------------------------------------------------------------

    def close(self) -> None:
        self._rows = None
        self._closed = True

    def setinputsizes(self, sizes: Any) -> None:
        self._check_open()

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        self._check_open()

    def execute(self, operation: str, parameters: Any = (), *, consistency: str | None = None
                ) -> Cursor:
        """Run one statement. `consistency` overrides the cursor's and connection's level for it."""
        self._check_open()
        conn = self.connection
        stmt = conn._analyze(operation)
        self._reset()
        level = consistency or self.consistency or conn._consistency
        if consistency is not None or self.consistency is not None:
            check_level(level)
        self._run(stmt, operation, _params(parameters), level=level)
        return self

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        self._check_open()
        conn = self.connection
        stmt = conn._analyze(operation)
        if stmt.kind not in ("dml", "empty"):
            raise ProgrammingError("executemany() can only execute DML statements.")
        self._reset()
        total = 0
        for parameters in seq_of_parameters:
            self._run(stmt, operation, _params(parameters), many=True)
            total += max(self.rowcount, 0)
        self.rowcount = total
        self._rows = None
        self.description = None
        return self

    def executescript(self, script: str) -> Cursor:
        """Run several statements; a transaction left open by DML is committed first, as sqlite3 does."""
        self._check_open()
        conn = self.connection
        if not isinstance(script, str):
            raise ValueError("script argument must be unicode.")
        if conn._txn is not None and not conn._txn.explicit:
            conn.commit()
        for sql in _split_statements(conn._leader, script):
            self.execute(sql)
            if self._rows is not None:
                for _ in self._rows:
                    pass
        if conn._txn is not None and not conn._txn.explicit and not conn.autocommit:
            conn.commit()
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        self._check_open()
        self._check_result()
        if self._rows is None:
            return None
        try:
            return next(self._rows)
        except StopIteration:
            self._rows = None
            return None
        except apsw.Error as exc:
            self._rows = None
            raise translate(exc) from exc

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        self._check_open()
        self._check_result()
        count = self.arraysize if size is None else size
        rows = []
        for _ in range(max(count, 0)):
            row = self.fetchone()
            if row is None:
                break
            rows.append(row)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._check_open()
        self._check_result()
        if self._rows is None:
            return []
        try:
            rows = list(self._rows)
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self._rows = None
        return rows

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> tuple[Any, ...]:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check_open()

    def _check_result(self) -> None:
        # PEP 249: fetching is an error when the last statement produced no result set.
        if self.description is None:
            raise ProgrammingError("no result set to fetch from: execute a statement that returns "
                                   "rows (a SELECT, or a write with RETURNING) first")

    def _reset(self) -> None:
        self._rows = None
        self.description = None
        self.rowcount = -1

    def _run(self, stmt: StatementInfo, sql: str, params: Any, many: bool = False,
             level: str | None = None) -> None:
        kind = stmt.kind
        if kind == "empty":
            return
        if kind == "transaction":
            self._transaction(stmt)
        elif kind == "savepoint":
            self._savepoint(stmt, sql)
        elif kind == "read" or (kind == "pragma" and not stmt.replicated_pragma):
            self._read(stmt, sql, params, level or self.connection._consistency)
        elif kind == "temp":
            self._local(stmt, sql, params)
        elif kind == "vacuum":
            self._vacuum(stmt, sql)
        else:
            self._write(stmt, sql, params)

    def _execute_on(self, conn: apsw.Connection, sql: str, params: Any,
                    returns_rows: bool = True) -> apsw.Cursor:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
        except apsw.Error as exc:
            raise translate(exc) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise translate(exc) from exc
        except KeyError as exc:
            # apsw looks named parameters up in the mapping; a missing one is the caller's mistake.
            raise ProgrammingError(
                f"You did not supply a value for binding parameter :{exc.args[0]}.") from exc
        if not returns_rows:
            self.description = None
            return cursor
        try:
            desc = cursor.get_description()  # while the statement has a row to give
        except apsw.ExecutionCompleteError:
            desc = _prepared_description(conn, sql)  # no row: ask the prepared statement
        self.description = _describe(desc)
        return cursor

    def _read(self, stmt: StatementInfo, sql: str, params: Any, level: str) -> None:
        conn = self.connection
        txn = conn._txn
        if txn is not None:
            # Inside a transaction every read runs on the transaction's own snapshot.
            if txn.node is None:
                conn._bind_read_txn(txn, level, stmt)
            node = txn.node or conn._leader_name
            cursor = self._execute_on(conn._connection_for(node), sql, params)
            self.lsn = txn.snapshot_lsn if node != conn._leader_name else None
        else:
            node = conn._route_read(stmt, level)
            if node == conn._leader_name or node == conn.pinned_node:
                node = conn._check_reachable(node)
            target = conn._connection_for(node)
            try:
                cursor = self._execute_on(target, sql, params)
            except OperationalError as exc:
                if (node == conn._leader_name or node == conn.pinned_node
                        or exc.sqlite_errorcode == apsw.SQLITE_INTERRUPT):
                    raise
                # The follower may not have the schema this statement needs yet: the leader has it.
                node, target = conn._leader_name, conn._leader
                cursor = self._execute_on(target, sql, params)
            if node == conn._leader_name:
                # The leader is ahead of every follower: its position covers what they showed.
                self.lsn = conn._observed(node, target)
                conn._unsettled = None
            else:
                if conn._unsettled not in (None, node):
                    conn._settle()
                conn._unsettled = node
                conn.last_node = node
                state = conn._states.get(node)
                self.lsn = state.applied_lsn if state is not None else None
        self.node = node
        self.rowcount = -1
        self._rows = _rows_ahead(cursor) if self.description else None
        if self._rows is None:
            # Statements that return nothing still run to completion now.
            for _ in cursor:
                pass

    def _local(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        """TEMP objects live on the leader connection only and are not replicated."""
        conn = self.connection
        cursor = self._execute_on(conn._leader, sql, params)
        rows = list(cursor)
        self.node = conn._leader_name
        writes_rows = not stmt.readonly and stmt.operation != "DDL"
        self.rowcount = conn._leader.changes() if writes_rows else -1
        self._rows = iter(rows) if self.description else None

    def _vacuum(self, stmt: StatementInfo, sql: str) -> None:
        conn = self.connection
        conn._check_writable(stmt)
        if conn._txn is not None:
            raise OperationalError("cannot VACUUM from within a transaction")
        keyed_by_rowid = _rowid_keyed_tables(conn._leader)
        if keyed_by_rowid:
            raise NotSupportedError(
                "VACUUM may renumber the rowids of tables without a PRIMARY KEY "
                f"({', '.join(keyed_by_rowid)}), which are replicated by rowid; it would make "
                "followers diverge, so it is refused")
        # VACUUM only rewrites the leader's file: content, and so the followers, are unchanged.
        self._execute_on(conn._leader, sql, None)
        self.node = conn._leader_name

    def _write(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        conn = self.connection
        conn._check_writable(stmt)
        try:
            conn._format.check_statement(stmt)
        except logformats.UnsafeStatementError as exc:
            raise errors.UnsafeStatementError(str(exc)) from exc
        txn = conn._txn
        own_txn = False
        opened_here = txn is None
        if txn is None:
            txn = conn._begin(explicit=False)
            # sqlite3 semantics: DML opens a transaction; DDL outside one commits by itself.
            own_txn = conn.autocommit or stmt.kind != "dml"
        else:
            txn = conn._writable_txn()
        assert txn.capture is not None
        try:
            run_sql, run_params = txn.capture.prepare(stmt, sql, params)
        except (logformats.UnsafeStatementError, logformats.CaptureError) as exc:
            # Refused before it ran: a transaction opened for it alone is closed again.
            if opened_here and conn._txn is not None:
                conn._abort()
            if isinstance(exc, logformats.UnsafeStatementError):
                raise errors.UnsafeStatementError(str(exc)) from exc
            raise IntegrityError(str(exc)) from exc
        cursor = None
        try:
            # No result columns (most writes): no exec tracer needed to learn the description.
            cursor = self._execute_on(conn._leader, run_sql, run_params,
                                      stmt.returns_rows or run_sql is not sql)
            rows = list(cursor)
        except BaseException as exc:
            if cursor is not None:
                # Stopped half way (RETURNING a text that is not UTF-8): a statement left active
                # would make the commit fail with "database is locked".
                cursor.close(True)
            conn._sync_txn_state()
            if own_txn and conn._txn is not None:
                conn._abort()
            if isinstance(exc, (apsw.Error, UnicodeDecodeError)):
                raise translate(exc) from exc
            raise
        leader = conn._leader
        if stmt.kind == "dml":
            self.rowcount = leader.changes()
            if stmt.is_insert:
                self.lastrowid = leader.last_insert_rowid()
        else:
            self.rowcount = -1
        try:
            txn.capture.executed(stmt, run_sql, run_params)
        except logformats.CaptureError as exc:
            # The statement ran but cannot be replicated exactly: the transaction is rolled back.
            conn._abort()
            raise IntegrityError(f"{exc} (rolled back)") from exc
        except logformats.UnsafeStatementError as exc:
            conn._abort()
            raise errors.UnsafeStatementError(f"{exc} (rolled back)") from exc
        except BaseException:
            conn._abort()
            raise
        self.node = conn._leader_name
        self._rows = iter(rows) if self.description else None
        if own_txn:
            conn._commit()
            self.lsn = conn.last_write_lsn

    def _transaction(self, stmt: StatementInfo) -> None:
        conn = self.connection
        op = stmt.operation or ""
        if op.startswith("BEGIN"):
            if conn._txn is not None:
                raise OperationalError("cannot start a transaction within a transaction")
            if op == "BEGIN":
                # Deferred: the first statement decides where the transaction runs.
                conn._txn = _Transaction(None, None, explicit=True)
            else:
                conn._check_writable(stmt)
                conn._begin(explicit=True)
            self.node = conn._txn.node if conn._txn else None
            return
        txn = conn._txn
        self.node = txn.node if txn is not None else conn._leader_name
        if op == "COMMIT":
            if txn is None:
                raise OperationalError("cannot commit - no transaction is active")
            conn._finish_txn(commit=True)
            self.lsn = conn.last_write_lsn
        else:
            if txn is None:
                raise OperationalError("cannot rollback - no transaction is active")
            conn._finish_txn(commit=False)

    def _savepoint(self, stmt: StatementInfo, sql: str) -> None:
        conn = self.connection
        op, name = stmt.operation, stmt.savepoint or ""
        self.node = conn._leader_name
        if op == "BEGIN":
            txn = conn._txn
            conn._check_writable(stmt)
            if txn is None:
                txn = conn._begin(explicit=True)
                txn.by_savepoint = True
            else:
                txn = conn._writable_txn()
            assert txn.capture is not None
            self._execute_on(conn._leader, sql, None)
            txn.savepoints.append(name.lower())
            txn.capture.savepoint(name)
            return
        txn = conn._txn
        if txn is None or name.lower() not in txn.savepoints:
            raise OperationalError(f"no such savepoint: {name}")
        if op == "RELEASE":
            index = len(txn.savepoints) - 1 - txn.savepoints[::-1].index(name.lower())
            if index == 0 and txn.by_savepoint:
                # Releasing the outermost savepoint that began the transaction commits it.
                del txn.savepoints[index:]
                conn._commit()
                self.lsn = conn.last_write_lsn
                return
            self._execute_on(conn._leader, sql, None)
            del txn.savepoints[index:]
            txn.capture.release(name)
        else:  # ROLLBACK TO
            self._execute_on(conn._leader, sql, None)
            index = len(txn.savepoints) - 1 - txn.savepoints[::-1].index(name.lower())
            del txn.savepoints[index + 1:]
            txn.capture.rollback_to(name)


_DESCRIPTIONS: dict[tuple[tuple[str, str | None], ...], tuple[tuple[Any, ...], ...] | None] = {}


def _describe(desc: tuple[tuple[str, str | None], ...]) -> tuple[tuple[Any, ...], ...] | None:
    """PEP 249 7-item column descriptions (name, declared type, ...), shared between cursors."""
    out = _DESCRIPTIONS.get(desc)
    if out is None and desc not in _DESCRIPTIONS:
        out = tuple((name, decl, None, None, None, None, None) for name, decl in desc) or None
        if len(_DESCRIPTIONS) > 4096:
            _DESCRIPTIONS.clear()
        _DESCRIPTIONS[desc] = out
    return out


def _prepared_description(conn: apsw.Connection, sql: str) -> tuple[tuple[str, str | None], ...]:
    """The result columns of `sql`, from preparing it without running it."""
    found: list[Any] = []

    def trace(cur: apsw.Cursor, statement: str, bindings: Any) -> bool:
        found.append(cur.get_description())
        return False

    cursor = conn.cursor()
    cursor.exec_trace = trace
    try:
        cursor.execute(sql, getattr(apsw, "_null_bindings", None))
    except apsw.ExecTraceAbort:
        pass
    except apsw.Error:
        return ()
    return found[0] if found else ()


def _rows_ahead(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """A read's rows, stepped one ahead as Python's sqlite3 steps: once the last row is handed out
    the statement is done and releases its read snapshot. Held, that snapshot made the connection's
    next write fail with "database is locked" (SQLITE_BUSY_SNAPSHOT) and its follower's position
    look older than it is (a session then refused a follower that had its writes)."""
    row = next(rows, None)
    if row is None:
        return
    for following in rows:
        yield row
        row = following
    yield row


def _params(parameters: Any) -> Any:
    if parameters is None:
        return ()
    if isinstance(parameters, (str, bytes)):
        raise ProgrammingError("parameters must be a sequence or a mapping, not a string")
    return adapt_params(parameters)


def _rowid_keyed_tables(conn: apsw.Connection) -> list[str]:
    """User tables replicated by rowid: rowid tables without an INTEGER PRIMARY KEY or any PRIMARY KEY."""
    out = []
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ).fetchall():
        if logformats.is_internal_table(name):
            continue
        info = conn.execute("SELECT pk FROM pragma_table_info(?)", (name,)).fetchall()
        if not any(pk for (pk,) in info):
            wr = conn.execute("SELECT wr FROM pragma_table_list(?)", (name,)).fetchone()
            if wr is None or not wr[0]:
                out.append(name)
    return out


def _split_statements(conn: apsw.Connection, script: str) -> list[str]:
    """Split a script into statements the way SQLite's parser does (sqlite3_complete)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if apsw.complete(current):
            statements.extend(_split_complete(current))
            current = ""
    if current.strip():
        statements.extend(_split_complete(current))
    return [s for s in statements if s.strip()]


def _split_complete(text: str) -> list[str]:
    out, current = [], ""
    for char in text:
        current += char
        if char == ";" and apsw.complete(current):
            out.append(current)
            current = ""
    if current.strip():
        out.append(current)
    return out


__all__ = [
    "Connection",
    "Cursor",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
