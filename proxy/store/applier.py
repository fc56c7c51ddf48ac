"""The apply path: followers replay log entries strictly in LSN order, exactly once.

An `Applier` owns one follower file. Each step takes the follower's write lock (BEGIN IMMEDIATE),
re-reads the follower's own applied position inside that transaction, applies the next entries,
and advances the position in the same transaction. Two processes applying the same follower
therefore serialize on SQLite's lock and can never apply an entry twice, and a crash at any point
leaves data and position in agreement.
"""

from __future__ import annotations

import logging
import time

import apsw

import logformats

from ..errors import ChecksumError, ReplicationError
from . import log as entries_log
from . import node as store
from .log import LogEntry
from .source import LogSource

log = logging.getLogger("replproxy.replication")

BATCH_ENTRIES = 512
TRIM_EVERY = 1024


class Applier:
    """Applies entries from a log source to one follower database file."""

    def __init__(self, name: str, path: str, source: LogSource, *, synchronous: str = "full",
                 format_options: dict | None = None, keep_entries: int = 100_000):
        self.name = name
        # How many applied entries the follower keeps in its own log (a promoted follower
        # serves them to the others); trimmed in steps of TRIM_EVERY.
        self.keep_entries = keep_entries
        self.path = path
        self.source = source
        self.conn = store.open_node(path, name=name, synchronous=synchronous)
        self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        self._triggers_on = False
        self._format_options = dict(format_options or {})
        self._formats: dict[str, logformats.LogFormat] = {}
        self.applied_lsn = store.read_state(self.conn).applied_lsn
        # (data_version, epoch, epoch base) of the follower's meta, re-read when another
        # connection committed on the follower (a failover records a new epoch there).
        self._fence: tuple[int, int, int] | None = None
        # Why the last step stopped before a deposed leader's entries, if it did.
        self.held: str | None = None

    def close(self) -> None:
        self.conn.close()

    def _format(self, name: str) -> logformats.LogFormat:
        fmt = self._formats.get(name)
        if fmt is None:
            fmt = self._formats[name] = logformats.get(name, **self._format_options)
        return fmt

    def _set_triggers(self, on: bool) -> None:
        # Row images already hold what the leader's triggers did; statement replay needs them.
        if on != self._triggers_on:
            self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1 if on else 0)
            self._triggers_on = on

    def step(self, leader_lsn: int | None = None) -> int:
        """Apply the next batch of entries; return how many were applied (0 when idle or held)."""
        state = store.read_state(self.conn)
        self.applied_lsn = state.applied_lsn
        if state.paused or state.error:
            return 0
        if leader_lsn is not None and leader_lsn <= state.applied_lsn:
            return 0
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have moved this follower while we waited for its lock.
            state = store.read_state(conn)
            if state.paused or state.error:
                conn.execute("ROLLBACK")
                self.applied_lsn = state.applied_lsn
                return 0
            applied, count, last = self._apply_entries(conn, state.applied_lsn)
            conn.execute("COMMIT")
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise
        self.applied_lsn = applied
        return count

    def catch_up(self, lsn: int, *, timeout: float | None = None, idle: float = 0.005) -> int:
        """Step until the follower has applied `lsn`; return the position reached. It stops early
        when the follower is paused or stopped (its state says why), when the source has nothing
        more and no `timeout` was given, or after `timeout` seconds of trying (another process
        may hold the follower meanwhile)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.applied_lsn < lsn:
            try:
                if self.step(lsn):
                    continue
            except apsw.BusyError:
                pass  # another process's applier holds the follower: it moves it
            state = store.read_state(self.conn)
            self.applied_lsn = state.applied_lsn
            if state.paused or state.error or deadline is None or time.monotonic() >= deadline:
                break
            time.sleep(idle)
        return self.applied_lsn

    def apply_next(self, applied: int) -> tuple[int, int]:
        """Apply the entries after `applied` (one batch, as far as the source gives them) inside
        the caller's write transaction on `self.conn`; return (position reached, entries applied).
        A failure stops the follower in that transaction, as `step` would."""
        reached, count, _last = self._apply_entries(self.conn, applied)
        self.applied_lsn = reached
        return reached, count

    def _epoch_fence(self, conn: apsw.Connection) -> tuple[int, int]:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if self._fence is None or self._fence[0] != version:
            fence = store.read_fence(conn)
            self._fence = (version, fence.epoch, fence.base)
        return self._fence[1], self._fence[2]

    def _fork(self, conn: apsw.Connection, applied: int) -> str | None:
        """Why the source no longer continues what this follower applied (its entry at `applied`
        has another epoch or checksum there), or None. Applying on would diverge silently."""
        theirs = self.source.identity(applied) if applied > 0 else None
        if theirs is None:
            return None
        row = conn.execute("SELECT epoch, checksum FROM _replproxy_log WHERE lsn = ?", (applied,)).fetchone()
        if row is not None:
            if (int(row[0]), int(row[1])) == theirs:
                return None
            mine = f"epoch {row[0]}, checksum {row[1]}"
        else:  # no copy (a fresh snapshot): the epoch it recorded is all there is
            (epoch,) = conn.execute("SELECT applied_epoch FROM _replproxy_state WHERE id = 1").fetchone()
            if not epoch or epoch == theirs[0]:
                return None
            mine = f"epoch {epoch}"
        return (f"{self.name}: the entry {applied} it applied ({mine}) is not the leader's entry "
                f"{applied} (epoch {theirs[0]}, checksum {theirs[1]}): the leader's log no longer "
                "continues what it applied (a leader restored from an older backup?); this "
                "follower needs a new snapshot (replproxy resync)")

    def _apply_entries(self, conn: apsw.Connection, applied: int) -> tuple[int, int, LogEntry | None]:
        fork = self._fork(conn, applied)
        if fork is not None:
            log.error("%s", fork)
            store.set_error(conn, store.StopKind.DIVERGED, fork, applied + 1)
            return applied, 0, None
        entries = self.source.read(applied, BATCH_ENTRIES)
        epoch, base = self._epoch_fence(conn)
        self.held = None
        for index, entry in enumerate(entries):
            if entry.lsn > base >= 0 and entry.epoch < epoch:
                # Past the start of this follower's epoch, an entry of an older one comes from a
                # deposed leader (a source not yet switched after a failover): never apply it.
                self.held = (f"{self.name}: entry {entry.lsn} is of epoch {entry.epoch}, after the "
                             f"start of epoch {epoch} at LSN {base}: not from the current leader")
                entries = entries[:index]
                break
        valid, failure = self._validate(entries, applied)
        count, last = 0, None
        if valid and self._apply_fast(conn, valid):
            count, last = len(valid), valid[-1]
        elif valid:
            count, last, apply_failure = self._apply_one_by_one(conn, valid)
            failure = apply_failure or failure
        if last is not None:
            applied = last.lsn
            store.set_applied(conn, last.lsn, last.epoch, last.committed_at)
            # Users' last-write positions travel with the entries they wrote.
            entries_log.copy_entries(conn, valid[:count])
            if applied // TRIM_EVERY != (applied - count) // TRIM_EVERY:
                entries_log.truncate(conn, applied - max(self.keep_entries, 1))
        if failure is not None:
            log.error("%s", failure)
            store.set_error(conn, store.StopKind(failure.kind), str(failure), failure.lsn)
        return applied, count, last

    def _validate(self, entries: list[LogEntry], applied: int
                  ) -> tuple[list[LogEntry], ReplicationError | None]:
        """The entries that follow `applied` without a gap and pass their checksum."""
        valid: list[LogEntry] = []
        for entry in entries:
            expected = applied + len(valid) + 1
            if entry.lsn != expected:
                return valid, ReplicationError(
                    f"{self.name}: log entry {expected} is no longer in the log (next held is "
                    f"{entry.lsn}); this follower needs a new snapshot", node=self.name, lsn=expected,
                    kind=store.StopKind.BEHIND.value)
            if not entry.checksum_ok:
                return valid, ChecksumError(
                    f"{self.name}: log entry {entry.lsn} is corrupt (checksum mismatch); nothing of it "
                    f"was applied", node=self.name, lsn=entry.lsn)
            valid.append(entry)
        return valid, None

    def _apply_fast(self, conn: apsw.Connection, entries: list[LogEntry]) -> bool:
        """Apply a batch in one go (formats may merge row images); False if anything failed, with
        nothing of the batch kept, so the slow path can find the entry at fault."""
        conn.execute("SAVEPOINT replproxy_batch")
        try:
            start = 0
            while start < len(entries):
                name = entries[start].format
                end = start
                while end < len(entries) and entries[end].format == name:
                    end += 1
                fmt = self._format(name)
                self._set_triggers(fmt.follower_triggers)
                fmt.apply_many(conn, [e.payload for e in entries[start:end]])
                start = end
        except (logformats.ApplyError, apsw.Error, ValueError):
            conn.execute("ROLLBACK TO replproxy_batch")
            conn.execute("RELEASE replproxy_batch")
            return False
        conn.execute("RELEASE replproxy_batch")
        return True

    def _apply_one_by_one(self, conn: apsw.Connection, entries: list[LogEntry]
                          ) -> tuple[int, LogEntry | None, ReplicationError | None]:
        """Apply entry by entry, each under its own savepoint, stopping at the first that fails."""
        count, last = 0, None
        for entry in entries:
            try:
                fmt = self._format(entry.format)
                self._set_triggers(fmt.follower_triggers)
                conn.execute("SAVEPOINT replproxy_entry")
                try:
                    fmt.apply(conn, entry.payload)
                except BaseException:
                    conn.execute("ROLLBACK TO replproxy_entry")
                    conn.execute("RELEASE replproxy_entry")
                    raise
                conn.execute("RELEASE replproxy_entry")
            except (logformats.ApplyError, apsw.Error, ValueError) as exc:
                table = getattr(exc, "table", None)
                where = f" on table {table!r}" if table else ""
                return count, last, ReplicationError(
                    f"{self.name}: cannot apply log entry {entry.lsn}{where}: {exc}",
                    node=self.name, lsn=entry.lsn, table=table)
            count, last = count + 1, entry
        return count, last, None
