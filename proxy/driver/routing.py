"""Read routing: which node serves a read outside a transaction.

`Followers` holds one connection's links to the followers (their SQLite connections and last known
positions); `Router` chooses among them for a consistency level, waits for one to catch up, and keeps
the session's read position (monotonic reads, read-your-writes) up to date.
"""

from __future__ import annotations

import itertools
import os
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

from logformats import StatementInfo

from .. import errors
from ..cluster import Cluster
from ..errors import OperationalError
from ..store import log as entries_log
from ..store import node as store
from .leader import LeaderSide
from .local import LocalState
from .pragmas import read_only_authorizer

if TYPE_CHECKING:
    from .connection import Connection

# A cached follower state older than this is read again before it decides a read (another
# process may have paused or stopped the follower).
STATE_MAX_AGE = 0.1

# One turn counter for the process, so that new sessions spread over the followers.
_TURNS = itertools.count()
_STATE_SQL = "SELECT applied_lsn, paused OR error IS NOT NULL FROM _replproxy_state WHERE id = 1"


@dataclass
class FollowerState:
    applied_lsn: int
    healthy: bool  # neither paused nor stopped by an error
    seen_at: float
    generation: int


class Followers:
    """A connection's links to the followers: a read-only SQLite connection to each follower it
    has read, and what it last saw of each follower's position and health.

    Nothing through the proxy changes a follower but the applier, which has connections of its
    own: these are opened with `PRAGMA query_only=1` and an authorizer that lets SQLite run only
    reads and the PRAGMAs that report or set what a read returns (pragmas.py). They answer the
    session's last_insert_rowid(), changes() and total_changes(), and take its settings (local.py).
    """

    def __init__(self, cluster: Cluster, local: LocalState):
        self.cluster = cluster
        self.local = local
        self.conns: dict[str, apsw.Connection] = {}
        self.states: dict[str, FollowerState] = {}
        # name -> (settings version, definitions) its connection was brought to: one comparison
        # per read instead of two weak-dictionary lookups
        self._stamps: dict[str, tuple[int, int]] = {}

    def open(self, name: str) -> apsw.Connection:
        conn = self.conns.get(name)
        if conn is None:
            return self._open(name)
        local = self.local
        stamp = (local.version, local.definitions.seq)
        if self._stamps.get(name) == stamp:
            return conn
        try:
            self.local.apply_settings(conn, leader=False)
        except apsw.Error:
            if not conn.get_autocommit():
                raise
            # A statement still active on it keeps SQLite from changing a setting now (LIKE):
            # reads go on through a new connection; the old one closes with its last cursor.
            del self.conns[name]
            return self._open(name)
        self._stamps[name] = stamp
        return conn

    def _open(self, name: str) -> apsw.Connection:
        self._stamps.pop(name, None)
        conn = self.cluster.open_node(name)
        try:
            conn.execute("PRAGMA query_only=1")
            self.local.install(conn, leader=False)
            conn.authorizer = read_only_authorizer
        except BaseException:
            conn.close()
            raise
        self.conns[name] = conn
        return conn

    def refresh(self, name: str) -> FollowerState | None:
        """Read a follower's own position and health; None when it cannot be read."""
        self.cluster.refresh_config()
        if name not in self.cluster.followers:  # stopped, removed or promoted
            self.drop(name)
            return None
        try:
            if name in self.conns and not os.path.exists(self.cluster.path_of(name)):
                # Removed under an open connection the old file still reads: stale, never moving.
                raise errors.ClusterError(f"node file of {name} is missing")
            state = store.read_state(self.open(name))
            if state.needs_snapshot:
                raise errors.ClusterError(f"{name} needs a new snapshot")  # off the history
        except (apsw.Error, errors.ClusterError):
            self.drop(name)
            return None
        known = self.states.get(name)
        applied = max(state.applied_lsn, known.applied_lsn if known else 0)
        fresh = FollowerState(applied, not state.paused and not state.error, time.monotonic(),
                              self.cluster.state_generation)
        self.states[name] = fresh
        return fresh

    def state(self, name: str, needed: int) -> FollowerState | None:
        """The known state of a follower, read again when it may be out of date."""
        known = self.states.get(name)
        if (known is None or known.applied_lsn < needed
                or known.generation != self.cluster.state_generation
                or time.monotonic() - known.seen_at > STATE_MAX_AGE):
            return self.refresh(name)
        return known

    def drop(self, name: str) -> None:
        self._stamps.pop(name, None)
        conn = self.conns.pop(name, None)
        self.states.pop(name, None)
        if conn is not None:
            try:
                conn.close()
            except apsw.Error:
                pass

    def leader_moved(self, name: str) -> None:
        """A failover made `name` the leader: positions known of the old history no longer hold."""
        self.drop(name)
        self.states.clear()

    def interrupt(self) -> None:
        for conn in list(self.conns.values()):
            conn.interrupt()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
        self._stamps.clear()


class Router:
    """Where one connection's reads go, under its consistency settings."""

    def __init__(self, connection: Connection, leader: LeaderSide, followers: Followers):
        # Weak: the connection owns the router; a strong reference back would be a cycle, keeping a
        # connection dropped without close() (and its node connections) alive until a gc pass.
        self.connection = weakref.proxy(connection)
        # The hot paths take the connection itself once per call: every attribute read through a
        # proxy costs a lookup more.
        self._connection = weakref.ref(connection)
        self.cluster = connection.cluster
        self.leader = leader
        self.followers = followers
        self.unsettled: str | None = None  # follower read since the session's read LSN was exact

    def staying(self, conn: Connection, stmt: StatementInfo, level: str
                ) -> tuple[str, apsw.Connection, int] | None:
        """The common read of `conn` (this router's connection), decided without the general path:
        the session stays on the follower it read last, which is known (within STATE_MAX_AGE) to
        be healthy and far enough, and nothing else (pin, strong, user, freshness bounds) has a
        say. Returns (node, its connection, its applied LSN), None otherwise; once the read ran,
        the caller notes it in `unsettled` as `served` would. It decides exactly as `route` does,
        in the one case where route stays on the last node."""
        node = conn.last_node
        if node is None or level == "strong" or not conn._reads_by_position:
            return None
        if stmt.leader_only:
            return None
        followers = self.followers
        state = followers.states.get(node)
        if state is None or not state.healthy:
            return None
        unsettled = self.unsettled
        if unsettled is not None and unsettled != node:
            return None
        session = conn.session
        if level == "session":
            needed = session.last_write_lsn
            if session.last_read_lsn > needed:
                needed = session.last_read_lsn
        elif level == "monotonic":
            needed = session.last_read_lsn
        elif level == "read-your-writes":
            needed = session.last_write_lsn
        else:
            needed = 0
        cluster = self.cluster
        if (state.applied_lsn < needed or state.generation != cluster.state_generation
                or time.monotonic() - state.seen_at > STATE_MAX_AGE):
            return None
        target = followers.conns.get(node)
        local = followers.local
        if target is None or followers._stamps.get(node) != (local.version, local.definitions.seq):
            return None
        return node, target, state.applied_lsn

    def connection_for(self, name: str) -> apsw.Connection:
        return self.leader.conn if name == self.leader.name else self.followers.open(name)

    def target(self, stmt: StatementInfo, level: str) -> str:
        """The node a read outside a transaction runs on, checked to be reachable."""
        node = self.route(stmt, level)
        if node == self.leader.name or node == self._connection().pinned_node:
            node = self.reachable(node)
        return node

    def route(self, stmt: StatementInfo, level: str) -> str:
        """Where a read outside a transaction goes."""
        conn = self._connection()
        if conn.pinned_node is not None:
            return conn.pinned_node
        if level == "strong":
            return self.leader.name
        # Decided from the verdict of this statement under the current schema, never from an
        # earlier one of its text.
        if stmt.leader_only or not self.cluster.followers:
            return self.leader.name
        needed = self.needed(level)
        last = conn.last_node
        if last is not None:
            # Stay on the follower used last while it is healthy and qualifies.
            state = self.followers.state(last, needed)
            if state is not None and state.healthy and state.applied_lsn >= needed:
                return last
        if self.unsettled is not None:
            self.settle()
            needed = self.needed(level)
        node = self.pick_follower(needed)
        if node is not None:
            return node
        if conn.on_stale == "leader":
            return self.leader.name
        if conn.on_stale == "error":
            raise OperationalError(self.behind_message(needed, level))
        return self.wait_for_follower(needed) or self.leader.name

    def reachable(self, node: str) -> str:
        """The node a leader or pinned read goes to, unless it is stopped: a stopped leader is
        waited for (failover), a stopped pinned node refused."""
        if node == self.leader.name:
            self.leader.ensure_up()
            return self.leader.name
        self.cluster.refresh_config()
        if self.cluster.config.node(node).stopped:
            raise OperationalError(f"{node} is stopped (replproxy start-node DIR {node})")
        return node

    # -- positions ----------------------------------------------------------------------------

    def needed(self, level: str) -> int:
        """The lowest applied LSN a follower needs to serve this session a read at `level`."""
        conn = self._connection()
        user_lsn = 0
        if conn.user is not None and level in ("session", "read-your-writes"):
            user_lsn = entries_log.user_write_lsn(self.leader.conn, conn.user)
        needed = conn.session.needed(level, user_lsn)
        if conn.max_lag is not None or conn.max_staleness is not None:
            needed = max(needed, self.freshness_floor())
        return needed

    def freshness_floor(self) -> int:
        """The lowest applied LSN within `max_lag` entries and `max_staleness` seconds of the leader."""
        max_lag, max_staleness = self.connection.max_lag, self.connection.max_staleness
        leader_lsn = self.leader.last_lsn()
        floor = 0
        if max_lag is not None:
            floor = max(floor, leader_lsn - max_lag)
        if max_staleness is not None:
            # Entries committed longer ago than that must all be applied.
            row = self.leader.conn.execute(
                "SELECT lsn FROM _replproxy_log WHERE committed_at <= ? ORDER BY lsn DESC LIMIT 1",
                (time.time() - max_staleness,)).fetchone()
            floor = max(floor, row[0] if row else 0)
        return floor

    def pick_follower(self, needed: int) -> str | None:
        """A follower that qualifies, round-robin: among the healthy ones if any, else among those
        paused or stopped (still correct to read, just not moving)."""
        healthy: list[str] = []
        held: list[str] = []
        for name in self.cluster.followers:
            state = self.followers.state(name, needed)
            if state is not None and state.applied_lsn >= needed:
                (healthy if state.healthy else held).append(name)
        choices = healthy or held
        if not choices:
            return None
        return choices[next(_TURNS) % len(choices)]

    def wait_for_follower(self, needed: int) -> str | None:
        deadline = time.monotonic() + self.connection.wait_timeout
        while True:
            for name in self.cluster.followers:
                state = self.followers.refresh(name)
                if state is not None and state.healthy and state.applied_lsn >= needed:
                    return name
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.cluster.wait_progress(min(remaining, 0.005))

    def behind_message(self, needed: int, level: str) -> str:
        parts = []
        for name in self.cluster.followers:
            state = self.followers.refresh(name)
            if state is None:
                parts.append(f"{name} unreachable")
            else:
                parts.append(f"{name} at LSN {state.applied_lsn} ({needed - state.applied_lsn} behind"
                             f"{'' if state.healthy else ', paused or stopped'})")
        return (f"no follower can serve a {level} read: it needs LSN {needed}; "
                + "; ".join(parts))

    # -- session bookkeeping ------------------------------------------------------------------

    def settle(self) -> None:
        """Record exactly how far the session has read. Reads that stay on one follower need no
        bookkeeping (a follower only moves forward); before the session reads elsewhere, the
        follower's current position is an upper bound of everything it showed."""
        node, self.unsettled = self.unsettled, None
        if node is None:
            return
        try:
            lsn = self.followers.open(node).execute(_STATE_SQL).fetchone()[0]
        except (apsw.Error, errors.ClusterError):
            lsn = self.leader.last_lsn()  # no follower can have shown more than the leader
        self.connection.session.read(lsn)

    def served(self, node: str, conn: apsw.Connection) -> int | None:
        """A read outside a transaction ran on `node` (its statement still active): note it in the
        session; return the log position it read, None when not known."""
        if node == self.leader.name:
            # The leader is ahead of every follower: its position covers what they showed.
            lsn = self.observed(node, conn)
            self.unsettled = None
            return lsn
        if self.unsettled not in (None, node):
            self.settle()
        self.unsettled = node
        self._connection().last_node = node
        state = self.followers.states.get(node)
        return state.applied_lsn if state is not None else None

    def observed(self, node: str, conn: apsw.Connection) -> int:
        """The log position a read on `node` just saw. Read while the statement is still active it
        is the statement's own snapshot; read after it, an upper bound (safe for monotonic reads)."""
        states = self.followers.states
        if node == self.leader.name:
            lsn = entries_log.last_lsn(conn)
        else:
            try:
                row = conn.execute(_STATE_SQL).fetchone()
            except apsw.Error:
                known = states.get(node)
                return known.applied_lsn if known else 0
            lsn = row[0]
            known = states.get(node)
            if known is None:
                states[node] = FollowerState(lsn, not row[1], time.monotonic(), self.cluster.state_generation)
            else:
                known.applied_lsn, known.healthy, known.seen_at = lsn, not row[1], time.monotonic()
        session = self.connection.session
        if lsn > session.last_read_lsn:
            session.last_read_lsn = lsn
        return lsn
