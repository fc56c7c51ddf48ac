"""The replication log table of one node: entries, appending, reading, positions.

The leader appends one entry per committed write transaction, in that transaction. A follower
keeps a copy of the entries it applied (in the apply transaction), so that once promoted it can
serve them to the followers behind it even if the old leader is gone.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import apsw

from .node import NodeState


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


def checksum(payload: bytes) -> int:
    return zlib.crc32(payload)


_COLUMNS = "lsn, epoch, format, payload, checksum, committed_at, origin"

# A promoted follower's log may be empty or end before its applied position: its next LSN
# continues after what it has applied, so LSNs stay gapless across a failover.
_NEXT_LSN = ("max(coalesce(max(lsn), 0), "
             "coalesce((SELECT applied_lsn FROM _replproxy_state WHERE id = 1), 0))")
# VALUES with a scalar subquery, not INSERT ... SELECT FROM the same table: that form makes SQLite
# copy the row through a temporary table first (about 2 µs of every commit).
APPEND_SQL = (f"INSERT INTO _replproxy_log({_COLUMNS}) VALUES ((SELECT {_NEXT_LSN} FROM _replproxy_log) + 1, "
              "?, ?, ?, ?, ?, ?)")
COPY_SQL = f"INSERT OR REPLACE INTO _replproxy_log({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
USER_SQL = (
    "INSERT INTO _replproxy_users(user, last_write_lsn) VALUES (?, ?) "
    "ON CONFLICT(user) DO UPDATE SET last_write_lsn = max(last_write_lsn, excluded.last_write_lsn)"
)
_LAST_LSN_SQL = f"SELECT {_NEXT_LSN} FROM _replproxy_log"


def append(conn: apsw.Connection, *, epoch: int, format: str, payload: bytes,
           origin: str | None = None) -> int:
    """Append one entry inside the caller's transaction; return its LSN."""
    conn.execute(APPEND_SQL, (epoch, format, payload, checksum(payload), time.time(), origin))
    lsn = conn.last_insert_rowid()
    if origin is not None:
        conn.execute(USER_SQL, (origin, lsn))
    return lsn


def remove(conn: apsw.Connection, lsn: int) -> None:
    """Take back the entry `lsn` appended in the caller's transaction (its COMMIT was refused)."""
    conn.execute("DELETE FROM _replproxy_log WHERE lsn = ?", (lsn,))


def copy_entries(conn: apsw.Connection, entries: list[LogEntry]) -> None:
    """Keep `entries` in this node's log, with the users' last-write positions they carry."""
    conn.executemany(COPY_SQL, [(e.lsn, e.epoch, e.format, e.payload, e.checksum, e.committed_at,
                                 e.origin) for e in entries])
    conn.executemany(USER_SQL, [(e.origin, e.lsn) for e in entries if e.origin is not None])


def user_write_lsn(conn: apsw.Connection, user: str) -> int:
    """The LSN of the last write any session of `user` committed (0 if none)."""
    row = conn.execute("SELECT last_write_lsn FROM _replproxy_users WHERE user = ?", (user,)).fetchone()
    return row[0] if row else 0


def last_lsn(conn: apsw.Connection) -> int:
    """The last LSN of a leader: its log's, or for a promoted node whose log does not reach its
    position (the old leader was unreachable), the position it had applied."""
    return conn.execute(_LAST_LSN_SQL).fetchone()[0]


def read_entries(conn: apsw.Connection, after: int, limit: int) -> list[LogEntry]:
    return [
        LogEntry(*row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM _replproxy_log WHERE lsn > ? ORDER BY lsn LIMIT ?",
            (after, limit),
        )
    ]


def commit_time(conn: apsw.Connection, lsn: int) -> float | None:
    row = conn.execute("SELECT committed_at FROM _replproxy_log WHERE lsn = ?", (lsn,)).fetchone()
    return row[0] if row else None


def first_missing_gone(conn: apsw.Connection, applied_lsn: int) -> bool:
    """Whether the entry after `applied_lsn` was removed from this log (retention)."""
    row = conn.execute("SELECT min(lsn) FROM _replproxy_log").fetchone()
    return row is not None and row[0] is not None and row[0] > applied_lsn + 1


def position(conn: apsw.Connection, state: NodeState) -> tuple[int, int]:
    """A node's last LSN and the epoch of the entry there: what it applied, or for a node that
    wrote as a leader, its own log's last entry."""
    row = conn.execute("SELECT lsn, epoch FROM _replproxy_log ORDER BY lsn DESC LIMIT 1").fetchone()
    if row is not None and row[0] > state.applied_lsn:
        return int(row[0]), int(row[1])
    return state.applied_lsn, state.applied_epoch


def truncate(conn: apsw.Connection, upto: int) -> int:
    """Remove the entries up to LSN `upto`; return how many."""
    conn.execute("DELETE FROM _replproxy_log WHERE lsn <= ?", (upto,))
    return conn.changes()
