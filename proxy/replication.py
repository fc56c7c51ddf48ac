"""The apply path: followers replay log entries strictly in LSN order, exactly once.

An `Applier` owns one follower file. Each step takes the follower's write lock (BEGIN IMMEDIATE),
re-reads the follower's own applied position inside that transaction, applies the next entries,
and advances the position in the same transaction. Two processes applying the same follower
therefore serialize on SQLite's lock and can never apply an entry twice, and a crash at any point
leaves data and position in agreement.

A `Replicator` is the background thread that keeps every follower of a cluster moving in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

import apsw

import logformats

from . import storage
from .errors import ChecksumError, ReplicationError
from .logsource import LogSource

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
        self.conn = storage.open_node(path, name=name, synchronous=synchronous)
        self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        self._triggers_on = False
        self._format_options = dict(format_options or {})
        self._formats: dict[str, logformats.LogFormat] = {}
        self.applied_lsn = storage.read_state(self.conn).applied_lsn
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
        state = storage.read_state(self.conn)
        self.applied_lsn = state.applied_lsn
        if state.paused or state.error:
            return 0
        if leader_lsn is not None and leader_lsn <= state.applied_lsn:
            return 0
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have moved this follower while we waited for its lock.
            state = storage.read_state(conn)
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

    def _epoch_fence(self, conn: apsw.Connection) -> tuple[int, int]:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if self._fence is None or self._fence[0] != version:
            meta = dict(conn.execute("SELECT key, value FROM _replproxy_meta WHERE key IN "
                                     "('epoch', ?)", (storage.EPOCH_BASE_KEY,)))
            self._fence = (version, int(meta.get("epoch", 1)),
                           int(meta.get(storage.EPOCH_BASE_KEY, -1)))
        return self._fence[1], self._fence[2]

    def _apply_entries(self, conn: apsw.Connection, applied: int) -> tuple[int, int, storage.LogEntry | None]:
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
            conn.execute(
                "UPDATE _replproxy_state SET applied_lsn=?, applied_epoch=?, applied_commit_time=?, "
                "applied_at=? WHERE id=1",
                (last.lsn, last.epoch, last.committed_at, time.time()),
            )
            storage.copy_entries(conn, valid[:count])
            if applied // TRIM_EVERY != (applied - count) // TRIM_EVERY:
                conn.execute("DELETE FROM _replproxy_log WHERE lsn <= ?",
                             (applied - max(self.keep_entries, 1),))
            # Users' last-write positions travel with the entries they wrote.
            for entry in valid[:count]:
                if entry.origin is not None:
                    conn.execute(storage.USER_SQL, (entry.origin, entry.lsn))
        if failure is not None:
            log.error("%s", failure)
            storage.set_error(conn, str(failure), failure.lsn)
        return applied, count, last

    def _validate(self, entries: list[storage.LogEntry], applied: int
                  ) -> tuple[list[storage.LogEntry], ReplicationError | None]:
        """The entries that follow `applied` without a gap and pass their checksum."""
        valid: list[storage.LogEntry] = []
        for entry in entries:
            expected = applied + len(valid) + 1
            if entry.lsn != expected:
                return valid, ReplicationError(
                    f"{self.name}: log entry {expected} is no longer in the log (next held is "
                    f"{entry.lsn}); this follower needs a new snapshot", node=self.name, lsn=expected)
            if not entry.checksum_ok:
                return valid, ChecksumError(
                    f"{self.name}: log entry {entry.lsn} is corrupt (checksum mismatch); nothing of it "
                    f"was applied", node=self.name, lsn=entry.lsn)
            valid.append(entry)
        return valid, None

    def _apply_fast(self, conn: apsw.Connection, entries: list[storage.LogEntry]) -> bool:
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
                self._set_triggers(getattr(fmt, "follower_triggers", False))
                fmt.apply_many(conn, [e.payload for e in entries[start:end]])
                start = end
        except (logformats.ApplyError, apsw.Error, ValueError):
            conn.execute("ROLLBACK TO replproxy_batch")
            conn.execute("RELEASE replproxy_batch")
            return False
        conn.execute("RELEASE replproxy_batch")
        return True

    def _apply_one_by_one(self, conn: apsw.Connection, entries: list[storage.LogEntry]
                          ) -> tuple[int, storage.LogEntry | None, ReplicationError | None]:
        """Apply entry by entry, each under its own savepoint, stopping at the first that fails."""
        count, last = 0, None
        for entry in entries:
            try:
                fmt = self._format(entry.format)
                self._set_triggers(getattr(fmt, "follower_triggers", False))
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


class Replicator(threading.Thread):
    """Background thread moving every follower of a cluster forward, in this process."""

    def __init__(self, make_source: Callable[[], LogSource],
                 make_appliers: Callable[[LogSource], list[Applier]], *, poll_interval: float = 0.01,
                 linger: float = 0.002, watcher: "Watcher | None" = None,
                 after_round: "Callable[[int, dict[str, int]], None] | None" = None):
        super().__init__(name="replproxy-replicator", daemon=True)
        # Called after every round with the leader's LSN and the followers' positions (modes.py:
        # semi-sync recovery, config changes, log retention); its errors never stop the thread.
        self._after_round = after_round
        # Applied LSN of every follower as of its last step (a lower bound), under `progress`:
        # committers waiting in sync modes watch it.
        self.applied: dict[str, int] = {}
        self._make_source = make_source
        self._make_appliers = make_appliers
        # Logs changes committed on the leader outside the proxy (trigger format); see outside.py.
        self._watcher = watcher
        self.poll_interval = poll_interval
        # After applying, wait this long before the next batch so that a busy leader's entries are
        # applied many per follower transaction instead of one by one (group apply): it bounds the
        # thread's share of the process at the cost of up to `linger` seconds of extra lag.
        self.linger = linger
        self._urgent = threading.Event()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self.progress = threading.Condition()
        self.errors: dict[str, str] = {}
        self._reload = threading.Event()
        self._reloaded = threading.Event()

    def notify(self, urgent: bool = False) -> None:
        """A commit happened in this process: look at the log now rather than at the next poll.
        `urgent`: someone waits for the followers; skip the linger."""
        if urgent:
            self._urgent.set()
        self._wake.set()

    def reload(self, wait: float = 0.0) -> None:
        """The cluster's nodes changed: reopen the followers. `wait`: seconds to wait until the
        thread has done it (from another thread), so nothing is applied from the old view after."""
        self._reloaded.clear()
        self._reload.set()
        self._wake.set()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self._reloaded.wait(wait)

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        source: LogSource | None = None
        appliers: list[Applier] = []
        while not self._halt.is_set():
            try:
                if source is None or self._reload.is_set():
                    self._reload.clear()
                    for applier in appliers:
                        applier.close()
                    if source is not None:
                        source.close()
                    source = self._make_source()
                    appliers = self._make_appliers(source)
                    with self.progress:
                        self.applied = {a.name: a.applied_lsn for a in appliers}
                    self._reloaded.set()
                    if self._watcher is not None:
                        self._watcher.close()
                if self._watcher is not None:
                    self._poll_watcher()
                progressed = False
                leader_lsn = source.last_lsn()
                for applier in appliers:
                    if self._halt.is_set():
                        break
                    try:
                        if applier.step(leader_lsn):
                            progressed = True
                            with self.progress:
                                self.applied[applier.name] = applier.applied_lsn
                                self.progress.notify_all()
                        elif self.applied.get(applier.name) != applier.applied_lsn:
                            with self.progress:  # moved by another process
                                self.applied[applier.name] = applier.applied_lsn
                        self.errors.pop(applier.name, None)
                    except apsw.BusyError:
                        progressed = True  # someone else holds the follower; try again soon
                    except Exception as exc:  # keep the other followers moving
                        self.errors[applier.name] = str(exc)
                        log.warning("follower %s: %s", applier.name, exc)
                with self.progress:
                    self.progress.notify_all()
                if self._after_round is not None:
                    try:
                        self._after_round(leader_lsn, dict(self.applied))
                        self.errors.pop("maintenance", None)
                    except Exception as exc:  # keep the followers moving
                        self.errors["maintenance"] = str(exc)
                        log.warning("replicator maintenance: %s", exc)
                if not progressed:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
                elif self.linger and not self._urgent.is_set():
                    self._urgent.wait(self.linger)
                self._urgent.clear()
            except Exception as exc:
                log.warning("replicator: %s", exc)
                self.errors["*"] = str(exc)
                source = None
                self._halt.wait(0.2)
        for applier in appliers:
            applier.close()
        if source is not None:
            source.close()
        if self._watcher is not None:
            self._watcher.close()

    def _poll_watcher(self) -> None:
        assert self._watcher is not None
        try:
            self._watcher.poll()
            self.errors.pop("outside", None)
        except Exception as exc:  # keep the followers moving
            self.errors["outside"] = str(exc)
            log.warning("outside writers: %s", exc)


class Watcher(Protocol):
    """Something the replicator thread polls on every round (outside.OutsideWatcher)."""

    def poll(self) -> int: ...

    def close(self) -> None: ...
