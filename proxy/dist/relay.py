"""The leader's relay: its committed log entries, published to the cluster's stream in LSN order.

The log table in the leader's file is the outbox: an entry is committed with its data, then
published. A crash between the two loses nothing (the relay starts again from the stream's last
sequence) and publishes nothing twice (message ids); a deposed leader's publish is refused by the
stream itself (expected last sequence), which the relay reports as `LeaseLost`.
"""

from __future__ import annotations

import logging
import time

import apsw

from ..errors import LeaseLost
from ..jetstream import codec
from ..jetstream.stream import LogStream
from ..store import log as entries_log
from ..store import node as store

log = logging.getLogger("replproxy.nats")

BATCH = 1024
HOLD_HOLDER = "relay"  # the retention hold that keeps unpublished entries in the leader's log
HOLD_REFRESH = 1.0  # seconds between two refreshes of that hold


class Relay:
    """Publishes the entries of one leader file (see the module docstring). Not thread-safe: one
    thread steps it."""

    def __init__(self, path: str, name: str, stream: LogStream):
        self.name = name
        self.stream = stream
        self.conn = store.open_node(path, name=name)
        self.published = 0
        self._version: int | None = None
        self._hold_at = (-1, 0.0)

    def close(self) -> None:
        self.conn.close()

    def sync(self) -> int:
        """Start from the stream's last sequence, after checking that it holds this leader's own
        entry there (not another leader's); return it."""
        last = self.stream.state().last_seq
        mine = entries_log.last_lsn(self.conn)
        if last > mine:
            raise LeaseLost(f"{self.name}: the stream holds entries up to LSN {last}, past this node's log "
                            f"({mine}): another leader wrote them; this node is deposed")
        if last > 0:
            ours = self._entry(last)
            theirs = self.stream.msg_id(last)
            if ours is not None and theirs != codec.msg_id(self.stream.cluster_id, ours):
                raise LeaseLost(f"{self.name}: the stream's entry {last} ({theirs}) is not this node's: "
                                "another leader wrote it; this node is deposed")
        self.published = last
        self._hold(force=True)
        return last

    def _entry(self, lsn: int) -> entries_log.LogEntry | None:
        found = entries_log.read_entries(self.conn, lsn - 1, 1)
        return found[0] if found and found[0].lsn == lsn else None

    def pending(self) -> int:
        """Committed entries not yet published."""
        return max(0, entries_log.last_lsn(self.conn) - self.published)

    def changed(self) -> bool:
        """Whether anything committed on the leader file since the last call (cheap: no scan)."""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        moved, self._version = version != self._version, version
        return moved

    def step(self) -> int:
        """Publish the next entries; return how many went out. Raises LeaseLost when the stream
        holds another leader's entries, TransportError when NATS cannot take them now (what went
        through before the error counts as published)."""
        entries = entries_log.read_entries(self.conn, self.published, BATCH)
        if not entries:
            self._hold()
            return 0
        if entries[0].lsn != self.published + 1:
            raise LeaseLost(f"{self.name}: entry {self.published + 1} is no longer in this node's log "
                            "(it was removed before it was published); the stream cannot be continued")
        reached, error = self.stream.publish(entries)
        before = self.published
        if reached is not None:
            self.published = reached
        self._hold()
        if error is not None:
            raise error
        return self.published - before

    def _hold(self, force: bool = False) -> None:
        """Keep the entries after `published` in the leader's log (retention would remove them).
        An older hold keeps more, so it is moved about once a second, not per publish."""
        lsn, at = self._hold_at
        now = time.monotonic()
        if not force and (lsn == self.published or now - at < HOLD_REFRESH):
            return
        try:
            with store.without_waiting(self.conn):  # a client's transaction must not stop publishing
                store.set_hold(self.conn, HOLD_HOLDER, self.published)
        except apsw.BusyError:
            return  # a writer holds the lock: next time
        self._hold_at = (self.published, now)

    def fork(self) -> int:
        """The last LSN where the stream and this node's log agree (entries published though the
        relay did not hear back count as published). The stream only ever continued what it
        held, so the highest LSN where both hold the same entry is the fork."""
        lsn = min(self.stream.state().last_seq, entries_log.last_lsn(self.conn))
        while lsn > self.published:
            ours = self._entry(lsn)
            if ours is None or self.stream.msg_id(lsn) == codec.msg_id(self.stream.cluster_id, ours):
                return lsn  # None: removed from our log, which only happens once published
            lsn -= 1
        return lsn
