"""PEP 249 (DB-API 2.0) driver: the proxy as applications see it.

Writes and write transactions go to the leader, where the cluster's log format captures them and
the log entry is appended in the same SQLite transaction. Reads outside a write transaction go to a
follower that has applied this connection's last write, otherwise to the leader.
Transactions follow Python's sqlite3 module: a DML statement opens a transaction that lasts until
commit() or rollback(); DDL outside a transaction commits by itself; `autocommit=True` commits
every statement (sqlite3's isolation_level=None); the `isolation_level` and `autocommit` attributes
take sqlite3's values (3.12's included).

This module holds the Connection and its transaction state; leader.py the leader side (fence,
failover, COMMIT with the log entry), routing.py the read routing, cursor.py the Cursor;
surface.py the rest of sqlite3's connection surface.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import apsw

import logformats
from logformats import StatementInfo

from ..cluster import Cluster
from ..errors import (
    Error,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    ReadOnlyNodeError,
    translate,
)
from ..store import node as store
from .consistency import DEFAULT_LEVEL, DEFAULT_POLICY, DEFAULT_WAIT, Session, check_level, check_policy
from .cursor import Cursor
from .dbapi import DBAPIConnection
from .leader import LeaderSide
from .local import LocalState
from .routing import Followers, Router
from .surface import LEGACY_TRANSACTION_CONTROL, Sqlite3Surface, check_autocommit, check_isolation_level

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"  # named (:name) parameters work too
# As Python's sqlite3 module: the SQLite library replproxy runs on (apsw's).
sqlite_version = apsw.sqlite_lib_version()
sqlite_version_info = tuple(int(part) for part in sqlite_version.split("."))

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


def connect(directory: str | os.PathLike[str], *, autocommit: bool | int = False, node: str | None = None,
            consistency: str = DEFAULT_LEVEL, max_lag: int | None = None,
            max_staleness: float | None = None, on_stale: str = DEFAULT_POLICY,
            wait_timeout: float = DEFAULT_WAIT, session_token: str | None = None,
            user: str | None = None, cluster: Cluster | None = None,
            isolation_level: str | None = "") -> Connection:
    """Open a DB-API connection to the cluster in `directory`.

    `autocommit`: True commits every statement outside an explicit BEGIN by itself (sqlite3's
    isolation_level=None); False (the default) or LEGACY_TRANSACTION_CONTROL: DML opens a
    transaction that lasts until commit() or rollback(), as in Python's sqlite3. sqlite3 3.12's
    autocommit=True/False modes are set with the `autocommit` attribute (docs/dbapi.md).
    `isolation_level`: as sqlite3's ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE" or None).
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
                      user=user, isolation_level=isolation_level)


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


class _RoutingSetting:
    """A connection setting that has a say in where reads go (node=, user=, max_lag=,
    max_staleness=): setting one recomputes `_reads_by_position`, true while none is set, the one
    flag the common read's fast path (Router.staying) checks instead of four."""

    NAMES = ("pinned_node", "user", "max_lag", "max_staleness")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else obj.__dict__[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        values = obj.__dict__
        values[self.name] = value
        values["_reads_by_position"] = all(values.get(name) is None for name in self.NAMES)


class Connection(Sqlite3Surface, DBAPIConnection):
    """A PEP 249 connection to a replproxy cluster, with Python's sqlite3 connection surface."""

    pinned_node = _RoutingSetting()
    user = _RoutingSetting()
    max_lag = _RoutingSetting()
    max_staleness = _RoutingSetting()

    def __init__(self, cluster: Cluster, *, autocommit: bool | int = False, node: str | None = None,
                 consistency: str = DEFAULT_LEVEL, max_lag: int | None = None,
                 max_staleness: float | None = None, on_stale: str = DEFAULT_POLICY,
                 wait_timeout: float = DEFAULT_WAIT, session_token: str | None = None,
                 user: str | None = None, isolation_level: str | None = ""):
        self.cluster = cluster
        # connect(autocommit=True) is sqlite3's isolation_level=None, under legacy control.
        legacy = type(autocommit) is int and autocommit == LEGACY_TRANSACTION_CONTROL
        self._autocommit_mode: bool | int = LEGACY_TRANSACTION_CONTROL
        self._isolation_level = None if (autocommit and not legacy) else check_isolation_level(isolation_level)
        self.row_factory: Any = None  # as sqlite3: each new cursor takes it
        self.text_factory: Any = str
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
        # What sqlite3 answers from one connection (last_insert_rowid(), changes(), settings).
        self._local = LocalState()
        followers = Followers(cluster, self._local)
        self._leader_side = LeaderSide(cluster, on_move=followers.leader_moved, local=self._local)
        self._router = Router(self, self._leader_side, followers)
        self._followers = followers
        self._txn: _Transaction | None = None
        self._closed = False
        self.last_node: str | None = None

    # The current leader's SQLite connection and name (the cursor and some tests reach them here).
    @property
    def _leader(self) -> apsw.Connection:
        return self._leader_side.conn

    @property
    def _leader_name(self) -> str:
        return self._leader_side.name

    def _follower(self, name: str) -> apsw.Connection:
        """This connection's read-only SQLite connection to a follower (opened on first use)."""
        return self._followers.open(name)

    # -- consistency --------------------------------------------------------------------------

    def _settle(self) -> None:
        self._router.settle()

    # -- PEP 249 ------------------------------------------------------------------------------

    def cursor(self, factory: Callable[[Connection], Cursor] | None = None) -> Cursor:
        """A new cursor (`factory(connection)` makes it, as in sqlite3), with the connection's
        row_factory."""
        self._check_open()
        cursor = Cursor(self) if factory is None else factory(self)
        if not isinstance(cursor, Cursor):
            raise TypeError(f"factory must return a cursor, not {type(cursor).__name__}")
        if self.row_factory is not None:
            cursor.row_factory = self.row_factory
        return cursor

    def commit(self) -> None:
        """Commit the open transaction (nothing with autocommit=True; with autocommit=False a new
        transaction opens, as in sqlite3 3.12)."""
        self._end_by_method(commit=True)

    def rollback(self) -> None:
        self._end_by_method(commit=False)

    def _end_by_method(self, commit: bool) -> None:
        self._check_open()
        if self._autocommit_mode is True:
            return
        if self._txn is not None:
            self._trace("COMMIT" if commit else "ROLLBACK")
            self._finish_txn(commit=commit)
        if self._autocommit_mode is False:
            self._begin_implicitly()

    def _begin_implicitly(self) -> None:
        """autocommit=False: a transaction is always open; the first statement decides its node."""
        self._trace("BEGIN")
        self._begin_deferred()

    # -- transaction control, as sqlite3 ------------------------------------------------------

    @property
    def isolation_level(self) -> str | None:
        """sqlite3's: "" (the default), "DEFERRED", "IMMEDIATE" or "EXCLUSIVE": DML outside a
        transaction opens one (on the leader, always with BEGIN IMMEDIATE); None: every statement
        outside an explicit BEGIN commits by itself (what connect(autocommit=True) gives). Setting
        None commits a pending transaction. Applies while `autocommit` is LEGACY_TRANSACTION_CONTROL."""
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, level: str | None) -> None:
        self._isolation_level = check_isolation_level(level)
        if self._isolation_level is None:
            self.commit()

    @property
    def autocommit(self) -> bool | int:
        """sqlite3 3.12's transaction control: LEGACY_TRANSACTION_CONTROL (-1, the default, also
        after connect(autocommit=True): see isolation_level); True: SQLite's autocommit, commit() and
        rollback() do nothing; False: a transaction is always open (PEP 249)."""
        return self._autocommit_mode

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        mode = check_autocommit(value)
        self._check_open()
        self._autocommit_mode = mode
        if mode is True and self._txn is not None:
            self._trace("COMMIT")
            self._finish_txn(commit=True)
        elif mode is False and self._txn is None:
            self._begin_implicitly()

    def close(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot close a closed connection.")
        try:
            if self._txn is not None:
                self._finish_txn(commit=False)
        finally:
            self._closed = True
            self._followers.close()
            self._leader.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (BEGIN, or DML not yet committed)."""
        return self._txn is not None

    def interrupt(self) -> None:
        """Stop the statements running on this connection, on any node (sqlite3_interrupt); they
        fail with OperationalError "interrupted". Safe to call from another thread."""
        self._leader.interrupt()
        self._followers.interrupt()

    # sqlite3-style shortcuts
    # -- transactions (used by the cursor) ----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed connection.")

    def _schema_rolled_back(self) -> None:
        """A ROLLBACK (or ROLLBACK TO) may have taken a schema change back: the analyzer must not
        keep verdicts made under it (the schema may come back to that number with other content)."""
        try:
            self._leader_side.analyze.observe()
        except Error:
            self._leader_side.analyze.clear()

    def _check_writable(self, stmt: StatementInfo) -> None:
        if self.pinned_node is not None and self.pinned_node != self._leader_name:
            raise ReadOnlyNodeError(
                f"{self.pinned_node} is a follower and is read-only; writes go to the leader "
                f"({self._leader_name}). Connect without node= to write.")

    def _begin_deferred(self) -> None:
        """BEGIN: the first statement decides where the transaction runs."""
        self._txn = _Transaction(None, None, explicit=True)

    def _begin(self, explicit: bool) -> _Transaction:
        """Open a write transaction on the leader."""
        capture = self._leader_side.begin()
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
        deposed = self._leader_side.fence_check()
        if deposed is not None:
            self._abort()
            self._leader_side.follow()
            raise OperationalError(
                f"the leader was deposed by the failover to epoch {deposed} while this transaction "
                f"was reading it; the transaction was rolled back, retry it")
        txn.capture = self._leader_side.capture()
        for name in txn.savepoints:
            txn.capture.savepoint(name)
        return txn

    def _move_to_leader(self, txn: _Transaction) -> None:
        """A transaction that read on a follower now writes: it may go on only if the leader has
        not moved past the snapshot it read (SQLite's own rule for a deferred transaction)."""
        self._leader_side.begin_immediate()
        leader_lsn = self._leader_side.last_lsn()
        if leader_lsn != txn.snapshot_lsn:
            self._leader.execute("ROLLBACK")
            raise OperationalError(
                f"this transaction read {txn.node} at LSN {txn.snapshot_lsn} and the leader has "
                f"moved on to LSN {leader_lsn}; roll back and retry (begin with BEGIN IMMEDIATE, or "
                f"use consistency='strong', to read and write on the leader)")
        follower = self._followers.conns.get(txn.node or "")
        if follower is not None and not follower.get_autocommit():
            follower.execute("COMMIT")
        self.session.read(leader_lsn)
        txn.node = self._leader_name

    def _bind_read_txn(self, txn: _Transaction, level: str, stmt: StatementInfo) -> None:
        """The first statement of BEGIN ... is a read: run the transaction on one snapshot, on a
        follower when the level allows it."""
        node = self._router.route(stmt, level)
        conn = self._router.connection_for(node)
        try:
            conn.execute("BEGIN")
            if node != self._leader_name:
                txn.snapshot_lsn = store.read_state(conn).applied_lsn
        except apsw.Error as exc:
            raise translate(exc) from exc
        txn.node = node
        if node != self._leader_name:
            self.last_node = node

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
                    lsn = self._leader_side.last_lsn()
                    self._leader.execute("COMMIT" if commit else "ROLLBACK")
                    self.session.read(lsn)
            elif txn.node is not None:
                follower = self._followers.conns.get(txn.node)
                if follower is not None and not follower.get_autocommit():
                    follower.execute("COMMIT" if commit else "ROLLBACK")
                if txn.snapshot_lsn is not None:
                    self.session.read(txn.snapshot_lsn)
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self._txn = None
            if not commit:
                self._schema_rolled_back()  # TEMP objects made in it are gone

    def _commit(self) -> None:
        txn = self._txn
        assert txn is not None and txn.capture is not None
        leader = self._leader_side
        try:
            payload = txn.capture.finish()
            lsn = leader.commit(payload, origin=self.user)
        except apsw.Error as exc:
            if leader.conn.get_autocommit():
                self._end_txn()
                self._schema_rolled_back()
            # Otherwise it stays open, without the log entry (COMMIT refused: deferred foreign keys).
            raise translate(exc) from exc
        except logformats.CaptureError as exc:
            self._abort()
            raise IntegrityError(f"{exc} (rolled back)") from exc
        except BaseException:
            self._abort()
            raise
        self._end_txn()
        if payload is None:
            # Nothing logged, but what this transaction read is now part of the session.
            self.session.read(lsn)
            return
        self.session.wrote(lsn, leader.cluster.epoch)
        self.session.read(lsn)
        leader.replicate(lsn)

    def _rollback(self) -> None:
        try:
            if not self._leader.get_autocommit():
                # What the transaction read is at most what the leader holds now.
                self.session.read(self._leader_side.last_lsn())
                self._leader.execute("ROLLBACK")
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            self._end_txn()
            self._schema_rolled_back()

    def _abort(self) -> None:
        try:
            if not self._leader.get_autocommit():
                self._leader.execute("ROLLBACK")
        finally:
            self._end_txn()
            self._schema_rolled_back()

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
            self._schema_rolled_back()


__all__ = [
    "Connection",
    "Cursor",
    "apilevel",
    "connect",
    "paramstyle",
    "sqlite_version",
    "sqlite_version_info",
    "threadsafety",
]
