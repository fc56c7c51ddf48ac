"""Node database files: replproxy's internal tables, opening a node, and appending to the log.

Every node file holds the same internal tables, so any follower can later be promoted:
`_replproxy_log` (the replication log; filled on the leader), `_replproxy_meta` (cluster id,
epoch) and `_replproxy_state` (this node's applied position, pause flag and apply error).
"""

from __future__ import annotations

import contextlib

import os
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import apsw

from .errors import ClusterError

BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS _replproxy_log(
    lsn INTEGER PRIMARY KEY,          -- gapless, strictly increasing, never reused
    epoch INTEGER NOT NULL,           -- leadership term of the leader that wrote it
    format TEXT NOT NULL,             -- log format of the payload
    payload BLOB NOT NULL,
    checksum INTEGER NOT NULL,        -- crc32 of the payload
    committed_at REAL NOT NULL,       -- leader commit time, seconds since the epoch
    origin TEXT                       -- the user (connect(user=...)) whose session wrote it
);
CREATE TABLE IF NOT EXISTS _replproxy_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _replproxy_state(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    applied_lsn INTEGER NOT NULL DEFAULT 0,
    applied_epoch INTEGER NOT NULL DEFAULT 0,
    applied_commit_time REAL,         -- leader commit time of the last applied entry
    applied_at REAL,                  -- when this node applied it
    paused INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_lsn INTEGER,
    error_at REAL
);
INSERT OR IGNORE INTO _replproxy_state(id) VALUES (1);
-- Last write position of each named user (cross-device read-your-writes); kept on every node:
-- the leader writes it with the entry, followers when they apply the entry.
CREATE TABLE IF NOT EXISTS _replproxy_users(
    user TEXT PRIMARY KEY,
    last_write_lsn INTEGER NOT NULL
) WITHOUT ROWID;
"""

@contextlib.contextmanager
def write_transaction(conn: apsw.Connection) -> "Iterator[apsw.Connection]":
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        raise


def table_columns(conn: apsw.Connection) -> dict[str, list[str]]:
    """Column names of every table of a node, for decoding row images."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {t: [r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (t,))]
            for t in tables}


NEEDS_SNAPSHOT = "needs a new snapshot"  # in a follower's error: its data cannot be continued


def set_error(conn: apsw.Connection, message: str, lsn: int) -> None:
    """Stop a follower at entry `lsn` with `message` (its appliers skip it until cleared)."""
    conn.execute("UPDATE _replproxy_state SET error=?, error_lsn=?, error_at=? WHERE id=1",
                 (message, lsn, time.time()))


def needs_snapshot(state: "NodeState") -> bool:
    """A follower whose data is off the current history (or behind retention): it must not serve
    reads nor be promoted until re-seeded."""
    return bool(state.error) and NEEDS_SNAPSHOT in str(state.error)


# `_replproxy_meta` key: the LSN the node's current epoch starts after (see failover._set_epoch).
EPOCH_BASE_KEY = "epoch_base"


# A follower keeps a copy of the entries it applied (in the apply transaction), so that once
# promoted it can serve them to the followers behind it even if the old leader is gone.
COPY_SQL = ("INSERT OR REPLACE INTO _replproxy_log(lsn, epoch, format, payload, checksum, "
            "committed_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?)")


def copy_entries(conn: apsw.Connection, entries: "list[LogEntry]") -> None:
    conn.executemany(COPY_SQL, [(e.lsn, e.epoch, e.format, e.payload, e.checksum, e.committed_at,
                                 e.origin) for e in entries])


APPEND_SQL = (
    "INSERT INTO _replproxy_log(lsn, epoch, format, payload, checksum, committed_at, origin) "
    "SELECT max(coalesce(max(lsn), 0), "
    "coalesce((SELECT applied_lsn FROM _replproxy_state WHERE id = 1), 0)) + 1, "
    "?, ?, ?, ?, ?, ? FROM _replproxy_log"
)
# A promoted follower's log may be empty or end before its applied position: its next LSN
# continues after what it has applied, so LSNs stay gapless across a failover.
USER_SQL = (
    "INSERT INTO _replproxy_users(user, last_write_lsn) VALUES (?, ?) "
    "ON CONFLICT(user) DO UPDATE SET last_write_lsn = max(last_write_lsn, excluded.last_write_lsn)"
)


@dataclass(frozen=True)
class LogEntry:
    """One committed write transaction of the leader, as stored in the log."""

    lsn: int
    epoch: int
    format: str
    payload: bytes
    checksum: int
    committed_at: float
    origin: str | None = None

    @property
    def checksum_ok(self) -> bool:
        # A payload damaged into another type (TEXT) is corrupt too, not a crash of the applier.
        return isinstance(self.payload, bytes) and checksum(self.payload) == self.checksum


@dataclass(frozen=True)
class NodeState:
    """A node's own record of how far it has applied the log."""

    applied_lsn: int
    applied_epoch: int
    applied_commit_time: float | None
    applied_at: float | None
    paused: bool
    error: str | None
    error_lsn: int | None


def checksum(payload: bytes) -> int:
    return zlib.crc32(payload)


def open_node(path: str | os.PathLike[str], *, synchronous: str = "full", name: str | None = None,
              create: bool = False) -> apsw.Connection:
    """Open a node file; a clear ClusterError names the file when it is missing or not a database."""
    label = f"{name} ({path})" if name else str(path)
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI
    if create:
        flags |= apsw.SQLITE_OPEN_CREATE
    elif not Path(path).exists():
        raise ClusterError(f"node file {label} is missing")
    try:
        conn = apsw.Connection(str(path), flags=flags)
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if create:
            conn.execute("PRAGMA journal_mode=wal").fetchall()
        else:
            conn.execute("SELECT count(*) FROM main.sqlite_master").fetchall()
    except apsw.Error as exc:
        raise ClusterError(f"node file {label} cannot be opened: {exc}") from None
    return conn


def install(conn: apsw.Connection, *, node_name: str, cluster_id: str) -> None:
    """Create the internal tables on a node file (idempotent)."""
    with conn:
        for _ in conn.execute(SCHEMA):
            pass
        conn.execute(
            "INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES "
            "('node', ?), ('cluster_id', ?), ('epoch', coalesce((SELECT value FROM _replproxy_meta "
            "WHERE key='epoch'), 1))",
            (node_name, cluster_id),
        )


def new_cluster_id() -> str:
    return uuid.uuid4().hex


def read_meta(conn: apsw.Connection, label: str) -> dict[str, Any]:
    try:
        return dict(conn.execute("SELECT key, value FROM _replproxy_meta"))
    except apsw.SQLError:
        raise ClusterError(f"{label} is not a replproxy node (no _replproxy_meta table)") from None


def read_state(conn: apsw.Connection) -> NodeState:
    try:
        row = conn.execute(
            "SELECT applied_lsn, applied_epoch, applied_commit_time, applied_at, paused, error, error_lsn "
            "FROM _replproxy_state WHERE id = 1"
        ).fetchone()
    except apsw.SQLError as exc:
        # A plain SQLite file where a node file should be: name the file, not the missing table.
        raise ClusterError(f"node file {conn.filename} is not a replproxy node ({exc})") from None
    if row is None:
        return NodeState(0, 0, None, None, False, None, None)
    return NodeState(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])


def append(conn: apsw.Connection, *, epoch: int, format: str, payload: bytes,
           origin: str | None = None) -> int:
    """Append one entry inside the caller's transaction; return its LSN."""
    conn.execute(APPEND_SQL, (epoch, format, payload, checksum(payload), time.time(), origin))
    lsn = conn.last_insert_rowid()
    if origin is not None:
        conn.execute(USER_SQL, (origin, lsn))
    return lsn


def user_write_lsn(conn: apsw.Connection, user: str) -> int:
    """The LSN of the last write any session of `user` committed (0 if none)."""
    row = conn.execute("SELECT last_write_lsn FROM _replproxy_users WHERE user = ?", (user,)).fetchone()
    return row[0] if row else 0


_LAST_LSN_SQL = (
    "SELECT max(coalesce(max(lsn), 0), "
    "coalesce((SELECT applied_lsn FROM _replproxy_state WHERE id = 1), 0)) FROM _replproxy_log"
)


def last_lsn(conn: apsw.Connection) -> int:
    """The last LSN of a leader: its log's, or for a promoted node whose log does not reach its
    position (the old leader was unreachable), the position it had applied."""
    return conn.execute(_LAST_LSN_SQL).fetchone()[0]


_ENTRY_COLUMNS = "lsn, epoch, format, payload, checksum, committed_at, origin"


def read_entries(conn: apsw.Connection, after: int, limit: int) -> list[LogEntry]:
    return [
        LogEntry(*row)
        for row in conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM _replproxy_log WHERE lsn > ? ORDER BY lsn LIMIT ?",
            (after, limit),
        )
    ]


def commit_time(conn: apsw.Connection, lsn: int) -> float | None:
    row = conn.execute("SELECT committed_at FROM _replproxy_log WHERE lsn = ?", (lsn,)).fetchone()
    return row[0] if row else None
