"""Where followers get log entries from.

On the embedded default the followers read the leader's `_replproxy_log` table directly
(`LeaderFileSource`). A follower on another machine would use another source (for example a
NATS JetStream consumer) with the same three methods; the apply path does not change.
"""

from __future__ import annotations

import abc
import os

import apsw

from . import log, node
from .log import LogEntry


class LogSource(abc.ABC):
    """A readable, ordered stream of log entries addressed by LSN."""

    @abc.abstractmethod
    def last_lsn(self) -> int:
        """The highest LSN the source holds (0 when empty)."""

    @abc.abstractmethod
    def read(self, after: int, limit: int) -> list[LogEntry]:
        """Up to `limit` entries with LSN greater than `after`, in LSN order."""

    @abc.abstractmethod
    def commit_time(self, lsn: int) -> float | None:
        """The leader commit time of entry `lsn`, if the source still holds it."""

    def identity(self, lsn: int) -> tuple[int, int] | None:
        """(epoch, checksum) of entry `lsn` if the source holds it: a follower checks with it that
        the source still continues what it applied."""
        entries = self.read(lsn - 1, 1)
        return (entries[0].epoch, entries[0].checksum) if entries and entries[0].lsn == lsn else None

    def close(self) -> None:
        """Release the source."""


class LeaderFileSource(LogSource):
    """Reads the log table in the leader's own database file."""

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None):
        self.conn: apsw.Connection = node.open_node(path, name=name)
        self.conn.execute("PRAGMA query_only=1")

    def last_lsn(self) -> int:
        return log.last_lsn(self.conn)

    def read(self, after: int, limit: int) -> list[LogEntry]:
        return log.read_entries(self.conn, after, limit)

    def commit_time(self, lsn: int) -> float | None:
        return log.commit_time(self.conn, lsn)

    def identity(self, lsn: int) -> tuple[int, int] | None:
        row = self.conn.execute("SELECT epoch, checksum FROM _replproxy_log WHERE lsn = ?", (lsn,)).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def close(self) -> None:
        self.conn.close()


class DownSource(LogSource):
    """The log of a leader that is stopped: nothing can be read from it."""

    def __init__(self, name: str):
        self.name = name

    def last_lsn(self) -> int:
        return 0

    def read(self, after: int, limit: int) -> list[LogEntry]:
        return []

    def commit_time(self, lsn: int) -> float | None:
        return None
