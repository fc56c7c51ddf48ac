"""What sqlite3 answers from a session's own connection, kept by the session itself.

A session runs on several SQLite connections: the leader's, which replproxy also writes its log
through, and one per follower it reads. sqlite3 answers `last_insert_rowid()`, `changes()` and
`total_changes()`, and applies the PRAGMA settings, for one connection. This module keeps those
values and settings for the session and puts them on each of its connections:

- the counters are read from the leader right after each of the session's own statements (never
  after replproxy's log writes) and answered by `changes()`, `total_changes()` (on every connection)
  and `last_insert_rowid()` (on followers; the leader's own value is put back before each of the
  session's statements, so it is SQLite's inside triggers too);
- the PRAGMA settings (pragmas.py) are replayed on a new leader connection after a failover and,
  when they change what a read returns, on each follower connection the session reads;
- the functions, aggregates and collations the application defined (functions.py) are made on
  each of its connections before it serves the session.
"""

from __future__ import annotations

import weakref

import apsw

from .functions import Definitions
from .pragmas import mirrored


class LocalState:
    """One session's connection-level values: its counters and its PRAGMA settings."""

    def __init__(self) -> None:
        self.last_rowid = 0
        self.changes = 0
        self.total_changes = 0
        # name -> (the statement that set it, replayed as written; its value), in the order set
        self.settings: dict[str, tuple[str, str]] = {}
        self.version = 0  # bumped when a setting changes: connections catch up before their next read
        self.definitions = Definitions()  # create_function() and the like
        self._applied: weakref.WeakKeyDictionary[apsw.Connection, int] = weakref.WeakKeyDictionary()
        self._total_before = 0
        self._internal = 0

    # -- the counters --------------------------------------------------------------------------

    def install(self, conn: apsw.Connection, *, leader: bool) -> None:
        """Answer the session's counters on `conn`, and apply its settings there."""
        flags = apsw.SQLITE_INNOCUOUS
        conn.create_scalar_function("changes", lambda: self.changes, 0, flags=flags)
        conn.create_scalar_function("total_changes", lambda: self.total_changes, 0, flags=flags)
        if not leader:
            conn.create_scalar_function("last_insert_rowid", lambda: self.last_rowid, 0, flags=flags)
        self.apply_settings(conn, leader=leader)

    def before(self, conn: apsw.Connection, count_internal: bool) -> None:
        """Just before one of the session's statements runs on the leader connection `conn`.
        `count_internal`: replproxy's own triggers write as it runs (trigger format)."""
        conn.set_last_insert_rowid(self.last_rowid)
        self._total_before = conn.total_changes()
        self._internal = 0
        if count_internal:
            conn.set_update_hook(self._count_internal)

    def _count_internal(self, op: int, dbname: str, table: str, rowid: int) -> None:
        if table.startswith("_replproxy_"):
            self._internal += 1

    def after(self, conn: apsw.Connection, counts_changes: bool) -> None:
        """Right after that statement ran (or failed): what SQLite now says of it.
        `counts_changes`: it was an INSERT, UPDATE or DELETE (SQLite sets changes() for those)."""
        conn.set_update_hook(None)
        self.last_rowid = conn.last_insert_rowid()
        if counts_changes:
            self.changes = conn.changes()
        self.total_changes += max(conn.total_changes() - self._total_before - self._internal, 0)

    # -- the settings --------------------------------------------------------------------------

    def remember(self, name: str, value: str, sql: str) -> None:
        """A setting the session changed (already applied on the leader connection)."""
        name = name.lower()
        self.settings.pop(name, None)
        self.settings[name] = (sql, value)
        self.version += 1

    def apply_settings(self, conn: apsw.Connection, *, leader: bool) -> None:
        """Bring `conn` to the session's settings (on a follower, those that change what a read
        returns), and to the application's definitions. Raises apsw.Error when SQLite refuses now
        (a statement of `conn` still active)."""
        self.definitions.apply(conn)
        if self._applied.get(conn) == self.version:
            return
        for name, (sql, value) in self.settings.items():
            if leader or mirrored(name, value):
                for _ in conn.execute(sql):
                    pass
        self._applied[conn] = self.version
