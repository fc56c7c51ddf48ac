"""The leader side of a connection: its SQLite connection to the leader, BEGIN IMMEDIATE behind the
failover fence, following cluster.toml to a new leader, and COMMIT with the log entry.

A leader deposed by a failover (cluster/failover.py) is fenced: its `_replproxy_meta` holds
`deposed_by_epoch`, checked under its write lock before anything is written, so no write lands on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import apsw

import logformats

from ..cluster import Cluster
from ..errors import LeaseLost, OperationalError, translate
from ..store import log as entries_log
from ..store import node as store
from ..store.decode import iso_time
from .analyze import Analyzer
from .local import LocalState

# How long a writer fenced off a deposed leader waits for cluster.toml to name the new one.
FAILOVER_WAIT = 10.0
# How much longer than failover_timeout a write waits for a stopped leader to be replaced.
FAILOVER_GRACE = 2.0


class LeaderSide:
    """One connection's link to the current leader.

    `conn` and `name` change when cluster.toml names another leader; `on_move(name)` is then called
    (the connection's follower links drop the new leader and forget what they knew). Every leader
    connection answers the session's counters and takes its settings (`local`).
    """

    def __init__(self, cluster: Cluster, on_move: Callable[[str], None], local: LocalState):
        self.cluster = cluster
        self.format = cluster.format
        # replproxy's own triggers write as the session's statements run (trigger format): what
        # they change is not the session's (total_changes()).
        self.internal_triggers = self.format.name == "trigger"
        self.local = local
        self.conn = cluster.open_node(cluster.leader)
        self.name = cluster.leader
        local.install(self.conn, leader=True)
        self.analyze = Analyzer(self.conn)
        self._on_move = on_move
        self._fence_version: int | None = None  # leader data_version at the last fence check
        self._lease_until: float | None = None  # a distributed leader's lease (store.node.set_lease)

    def last_lsn(self) -> int:
        return entries_log.last_lsn(self.conn)

    # -- following a failover -----------------------------------------------------------------

    def follow(self) -> bool:
        """Reopen the leader connection if cluster.toml names another leader; True if it did."""
        self.cluster.refresh_config()
        name = self.cluster.leader
        if name == self.name:
            return False
        new = self.cluster.open_node(name)
        try:
            self.local.install(new, leader=True)
        except apsw.Error as exc:
            new.close()
            raise translate(exc) from exc
        old, self.conn = self.conn, new
        self.name = name
        self._fence_version = None
        self.analyze = Analyzer(new)
        try:
            old.close()
        except apsw.Error:
            pass
        self._on_move(name)
        return True

    def ensure_up(self) -> None:
        """Follow a failover another process made; if the leader is stopped, wait for its replacement."""
        self.follow()  # one stat of cluster.toml
        if self.cluster.leader_down:
            self.await_failover()

    def await_failover(self) -> None:
        """The leader is stopped: with automatic failover on, wait until a new leader is named
        (the failover timeout plus a grace period), else raise; nothing is written meanwhile."""
        config = self.cluster.config
        name = self.name
        if config.auto_failover and config.running_followers:
            since = config.leader.stopped_at or time.time()
            deadline = max(time.time(), since + config.failover_timeout) + FAILOVER_GRACE
            while time.time() < deadline:
                self.cluster.wait_progress(0.01)
                self.follow()
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

    # -- writing ------------------------------------------------------------------------------

    def begin_immediate(self) -> None:
        """BEGIN IMMEDIATE on the current leader, past the fence: a deposed leader is left for the
        one cluster.toml names (waiting up to FAILOVER_WAIT for it to name one)."""
        deadline = None
        self.ensure_up()
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                deposed = self.fence_check()
            except apsw.Error as exc:
                if not self.conn.get_autocommit():
                    self.conn.execute("ROLLBACK")
                raise translate(exc) from exc
            if deposed is None:
                try:
                    self.check_lease()
                except LeaseLost:
                    self.conn.execute("ROLLBACK")
                    raise
                return
            self.conn.execute("ROLLBACK")
            if deadline is None:
                deadline = time.monotonic() + FAILOVER_WAIT
            if not self.follow():
                if time.monotonic() >= deadline:
                    raise OperationalError(
                        f"{self.name} was deposed by the failover to epoch {deposed} and "
                        f"cluster.toml does not name a new leader yet; nothing was written, retry")
                time.sleep(0.01)

    def fence_check(self) -> int | None:
        """Inside the leader's transaction: the epoch that deposed it, or None (and note its epoch)."""
        # The fence is written by another connection, which changes this connection's
        # data_version; while it has not changed since the last check, nothing new can be there.
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._fence_version:
            return None
        # Another connection wrote: maybe `config --format`, which changes cluster.toml while it
        # holds this write lock. From here on, this transaction captures in the format it set.
        self.cluster.refresh_config()
        self.format = self.cluster.format
        fence = store.read_fence(self.conn)
        self.cluster.note_epoch(fence.epoch)
        self._lease_until = fence.lease_until
        if fence.deposed_by is None:
            self._fence_version = version
        return fence.deposed_by

    def check_lease(self) -> None:
        """A distributed leader writes only while its lease is surely its own (its `replproxy
        serve` renews it); the embedded default has no lease."""
        until = self._lease_until
        if until is not None and time.time() >= until:
            # Cached at the last fence check: it may have been renewed since, in the node's file
            # or, while a transaction held the write lock, in the lease file beside it.
            until = store.read_fence(self.conn).lease_until
            if until is not None:
                until = max(until, store.read_lease_file(self.conn.filename) or until)
            self._lease_until = until
        if until is not None and time.time() >= until:
            raise LeaseLost(
                f"{self.name} cannot write: its leader lease lapsed at "
                f"{iso_time(until)} (is `replproxy serve` "
                "running for this node, and can it reach NATS?); nothing was written")

    def capture(self) -> logformats.Capture:
        """Start capturing the write transaction open on the leader."""
        return self.format.capture(self.conn)

    def begin(self) -> logformats.Capture:
        """Open a write transaction on the leader and start capturing it."""
        self.begin_immediate()
        try:
            return self.capture()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def commit(self, payload: bytes | None, origin: str | None) -> int:
        """COMMIT the open transaction with a log entry for `payload` (none when it is None); return
        the entry's LSN, or with nothing to log the leader's last LSN (what the transaction read).

        If COMMIT is refused (deferred foreign keys) the entry is rolled back and the transaction
        stays open; apsw errors are raised as they are, for the caller to translate.
        """
        leader = self.conn
        # A refused COMMIT must take the entry back. Its row alone is deleted by LSN; a user's
        # last-write position (origin) has no such undo, so then a savepoint holds both.
        savepoint = origin is not None
        if savepoint:
            leader.execute("SAVEPOINT replproxy_commit")
        appended = None
        try:
            if payload is not None:
                lsn = appended = entries_log.append(leader, epoch=self.cluster.epoch,
                                                    format=self.format.name, payload=payload, origin=origin)
            else:
                lsn = entries_log.last_lsn(leader)
            # A leader stopped (or replaced by an automatic failover, which cannot fence a
            # stopped leader) while this transaction ran is gone: like a crash before COMMIT,
            # nothing of it is kept. One stat of cluster.toml, also used by the replication mode.
            self.cluster.refresh_config()
            if self.cluster.leader_down or self.cluster.leader != self.name:
                raise OperationalError(
                    f"the leader {self.name} went down before this transaction committed; "
                    f"it was rolled back and nothing was written: retry it")
            self.check_lease()
            # A savepoint stays open through COMMIT, so that a refused COMMIT can drop the entry.
            leader.execute("COMMIT")
        except apsw.Error:
            if not leader.get_autocommit():
                if savepoint:
                    leader.execute("ROLLBACK TO replproxy_commit")
                    leader.execute("RELEASE replproxy_commit")
                elif appended is not None:
                    entries_log.remove(leader, appended)
            raise
        return lsn

    def replicate(self, lsn: int) -> None:
        """After COMMIT of entry `lsn`: wake this process's replicator and, in sync / semi-sync mode,
        wait for the followers' acknowledgements (a SyncReplicationTimeout leaves it committed)."""
        self.cluster.notify_commit()
        self.cluster.await_acks(lsn, self.conn)
