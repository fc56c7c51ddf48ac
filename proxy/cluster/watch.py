"""Writers outside the proxy in the formats that cannot log them (row, statement, mixed): detect.

A program that opens the leader file and commits there changes what the followers never receive:
they diverge. These formats have no way to log such writes (the trigger format does: outside.py),
so replproxy detects them, records it once and reports it in `status`, within a poll interval:

- rows: every user table of the leader carries three guard triggers (AFTER INSERT, UPDATE,
  DELETE) that count, in `_replproxy_outside`, the rows changed by any writer but replproxy's own
  connections (only those answer `sqlite_compileoption_used('REPLPROXY_WRITER')` with 1, see
  store/node.mark_proxy; every other connection gets SQLite's 0, so no writer breaks). A proxy
  transaction that creates a table guards it before it commits (`GuardedCapture`), so no table
  made through the proxy is ever unguarded; the watcher guards the others (older files, a new
  leader after a failover).
- schema and header PRAGMAs: the leader's meta holds "epoch:schema_version:user_version:
  application_id:checksum of the schema" as the proxy left it; a proxy transaction that changes
  the header records the new value in the same transaction. A committed header that differs, with
  a different schema, user_version or application_id, was written by someone else (schema_version
  alone moves with a VACUUM, which the proxy runs on the leader only).

`OutsideGuard.poll` (replicator thread, every 10 ms, only when the leader's data_version moved)
records what it finds in the leader's meta (once, and in the log); `report` is what `status` shows.
With the policy "refuse" the guard triggers abort outside writes instead of counting them (schema
changes cannot be refused: they are detected).
"""

from __future__ import annotations

import logging
import uuid
import weakref
import zlib
from dataclasses import dataclass
from typing import Any

import apsw

from logformats import Capture, is_internal_table
from logformats.base import altered_tables

from ..errors import ClusterError
from ..store import node as store
from .core import ClusterCore, LeaderPoller

log = logging.getLogger("replproxy.replication")

GUARD_PREFIX = "_replproxy_guard_"
POLICIES = ("detect", "refuse")
OUTSIDE_TABLE = """CREATE TABLE IF NOT EXISTS _replproxy_outside(
    tbl TEXT PRIMARY KEY, writes INTEGER NOT NULL, first_at REAL NOT NULL) WITHOUT ROWID"""
_WHEN = f"NOT sqlite_compileoption_used('{store.PROXY_WRITER_OPTION}')"
_NOW = "(julianday('now') - 2440587.5) * 86400.0"
_KINDS = ("INSERT", "UPDATE", "DELETE")
REFUSED = ("replproxy: writes outside the proxy are refused on this leader (its followers would "
           "diverge); write through replproxy")
ADVICE = ("the followers may differ from the leader: re-seed each with `replproxy resync DIR NAME`, "
          "then clear this with Cluster.clear_outside_writes() (or use the trigger format, which "
          "logs such writers)")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def header(conn: apsw.Connection) -> str:
    """schema_version:user_version:application_id of `conn`'s main database."""
    # One statement: it runs twice in every proxy write transaction.
    row = conn.execute("SELECT * FROM pragma_schema_version, pragma_user_version, "
                       "pragma_application_id").fetchone()
    return f"{row[0]}:{row[1]}:{row[2]}"


def _meta(conn: apsw.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM _replproxy_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def refusing(conn: apsw.Connection) -> bool:
    return _meta(conn, store.GUARD_POLICY_KEY) == "refuse"


def unguarded(conn: apsw.Connection) -> list[str]:
    """User tables of the leader without their three guard triggers."""
    have: dict[str, int] = {}
    for table, sql in conn.execute("SELECT tbl_name, sql FROM main.sqlite_master WHERE type = 'trigger' "
                                   "AND name LIKE '\\_replproxy\\_guard\\_%' ESCAPE '\\'"):
        # A counting guard names its table: after ALTER TABLE ... RENAME it names the old one.
        if "RAISE(ABORT" in sql or f"VALUES ({_text(table)}, 1," in sql:
            have[table.lower()] = have.get(table.lower(), 0) + 1
    tables = conn.execute("SELECT name FROM pragma_table_list WHERE schema = 'main' "
                          "AND type = 'table'").fetchall()
    return [t for (t,) in tables if not is_internal_table(t) and have.get(t.lower(), 0) < len(_KINDS)]


def _drop_guards(conn: apsw.Connection, table: str | None = None) -> None:
    rows = conn.execute("SELECT name, tbl_name FROM main.sqlite_master WHERE type = 'trigger' "
                        "AND name LIKE '\\_replproxy\\_guard\\_%' ESCAPE '\\'").fetchall()
    for name, tbl in rows:
        if table is None or tbl.lower() == table.lower():
            conn.execute(f"DROP TRIGGER {_ident(name)}")


def install_guards(conn: apsw.Connection) -> int:
    """Inside a write transaction on the leader: guard every unguarded user table; return how many."""
    conn.execute(OUTSIDE_TABLE)
    refuse = refusing(conn)
    tables = unguarded(conn)
    for table in tables:
        _drop_guards(conn, table)  # a partial set (an older file): start again
        if refuse:
            body = f"SELECT RAISE(ABORT, {_text(REFUSED)});"
        else:
            body = (f"INSERT INTO _replproxy_outside(tbl, writes, first_at) VALUES ({_text(table)}, 1, "
                    f"{_NOW}) ON CONFLICT(tbl) DO UPDATE SET writes = writes + 1;")
        for kind in _KINDS:
            name = f"{GUARD_PREFIX}{kind[0].lower()}_{uuid.uuid4().hex[:12]}"
            conn.execute(f"CREATE TRIGGER {_ident(name)} AFTER {kind} ON {_ident(table)} "
                         f"FOR EACH ROW WHEN {_WHEN} BEGIN {body} END")
    return len(tables)


def fingerprint(conn: apsw.Connection) -> str:
    """A checksum of the user's schema and the guards (root pages left out: VACUUM moves them and
    bumps schema_version without changing the schema); a guard dropped outside is a change."""
    rows = [r for r in conn.execute("SELECT type, name, tbl_name, sql FROM main.sqlite_master "
                                    "ORDER BY type, name")
            if (not is_internal_table(r[1]) and not is_internal_table(r[2]))
            or r[1].lower().startswith(GUARD_PREFIX)]
    return f"{zlib.crc32(repr(rows).encode()):08x}"


def record_header(conn: apsw.Connection, epoch: int) -> str:
    """Inside a write transaction: the header and schema as they stand are what the log accounts
    for; return the header."""
    now = header(conn)
    store.set_meta(conn, store.GUARD_KEY, f"{epoch}:{now}:{fingerprint(conn)}")
    return now


def baseline(conn: apsw.Connection) -> None:
    """Inside a write transaction on a leader not guarded for its epoch yet (a new cluster, an older
    file, a new leader after a failover): guard it and take its header as the log's. An alarm of an
    earlier epoch is about the followers of another leader: it is dropped."""
    epoch = store.meta_epoch(conn)
    expected = _meta(conn, store.GUARD_KEY)
    if expected is not None and str(expected).startswith(f"{epoch}:"):
        return
    conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (store.OUTSIDE_KEY,))
    install_guards(conn)
    record_header(conn, epoch)


@dataclass(frozen=True)
class Findings:
    """What the leader's file says about writers outside the proxy (one read snapshot)."""

    epoch: int
    expected: str | None  # "epoch:header:fingerprint" the log accounts for; None: never recorded
    header: str
    rows: list[tuple[str, int]]  # (table, rows changed outside the proxy)
    alarm: str | None  # recorded once detected
    moved: bool = False  # the header is not the recorded one
    changed: bool = False  # ... and the schema, user_version or application_id differ too

    @property
    def needs_baseline(self) -> bool:
        return self.expected is None or not self.expected.startswith(f"{self.epoch}:")

    @property
    def problem(self) -> str | None:
        """What was written outside the proxy, in words, or None."""
        if self.needs_baseline:
            return None
        parts = []
        if self.rows:
            parts.append(f"{sum(n for _, n in self.rows)} row change(s) to "
                         + ", ".join(t for t, _ in self.rows))
        if self.changed:
            parts.append("a schema or header (user_version, application_id) change")
        return " and ".join(parts) or None


def findings(conn: apsw.Connection) -> Findings:
    """Read the leader's guard state (call it in a transaction for one consistent snapshot)."""
    try:
        rows = [(str(t), int(n)) for t, n in conn.execute(
            "SELECT tbl, writes FROM _replproxy_outside ORDER BY first_at, tbl")]
    except apsw.SQLError:
        rows = []  # not guarded yet
    value = _meta(conn, store.GUARD_KEY)
    expected = None if value is None else str(value)
    alarm = _meta(conn, store.OUTSIDE_KEY)
    now = header(conn)
    moved = changed = False
    if expected is not None:
        recorded = expected.split(":")
        current = now.split(":")
        moved = recorded[1:4] != current
        # Only schema_version moved (a VACUUM): the same schema is no change.
        changed = moved and (recorded[2:4] != current[1:] or recorded[4:] != [fingerprint(conn)])
    return Findings(store.meta_epoch(conn), expected, now, rows, None if alarm is None else str(alarm),
                    moved, changed)


def alarm_text(problem: str) -> str:
    return f"writes outside the proxy were committed to the leader file ({problem}): {ADVICE}"


def report(conn: apsw.Connection) -> str | None:
    """For `status`: why the followers may differ from the leader `conn`, or None."""
    conn.execute("BEGIN")
    try:
        found = findings(conn)
    finally:
        conn.execute("COMMIT")
    if found.alarm is not None:
        return found.alarm
    problem = found.problem
    return None if problem is None else alarm_text(problem)


def clear(conn: apsw.Connection) -> None:
    """Forget what was detected (the followers were re-seeded): count and compare from now on."""
    with store.write_transaction(conn):
        conn.execute(OUTSIDE_TABLE)
        conn.execute("DELETE FROM _replproxy_outside")
        conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (store.OUTSIDE_KEY,))
        install_guards(conn)
        record_header(conn, store.meta_epoch(conn))


def set_policy(conn: apsw.Connection, policy: str) -> None:
    """"detect" (count and report outside writes) or "refuse" (abort them)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
    with store.write_transaction(conn):
        before = findings(conn)
        store.set_meta(conn, store.GUARD_POLICY_KEY, policy)
        _drop_guards(conn)
        install_guards(conn)
        if not before.changed:
            record_header(conn, before.epoch)  # else leave the outside change visible


# -- inside the proxy's write transactions ---------------------------------------------------------

# (PRAGMA data_version, header) each proxy connection last left or checked: while no other
# connection has committed since (its data_version is the same), the header is the one it left;
# while the header is unchanged at BEGIN, nothing else changed the schema (that moves
# schema_version) or the header PRAGMAs: nothing to compare.
_seen: weakref.WeakKeyDictionary[apsw.Connection, tuple[int, str]] = weakref.WeakKeyDictionary()


def _data_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA data_version").fetchone()[0]


class GuardedCapture(Capture):
    """A format's capture that also keeps the guards in step with the proxy's own schema changes:
    before COMMIT, if the transaction changed the header, it guards the new tables and records the
    new header (after checking that the header it started from was the recorded one)."""

    def __init__(self, conn: apsw.Connection, make_inner: Any):
        # The start check may change the schema (guards): the inner capture starts after it.
        self.conn = conn
        self._version = _data_version(conn)
        # Only a statement other than a row change can move the header (a schema change, a
        # header PRAGMA): without one the header at COMMIT is the one at BEGIN.
        self._may_move = False
        seen = _seen.get(conn)
        if seen is not None and seen[0] == self._version:
            self._start = seen[1]
        else:
            self._start = header(conn)
            if seen is None or seen[1] != self._start:
                self._check_start()
            else:
                _seen[conn] = (self._version, self._start)
        self.inner = make_inner(conn)
        super().__init__(conn, self.inner.options)

    def _check_start(self) -> None:
        """The header is not the last one this connection left or checked: compare with the record
        before this transaction changes anything."""
        conn = self.conn
        found = findings(conn)
        wrote = True
        if found.needs_baseline:
            baseline(conn)
        elif found.changed and found.alarm is None:
            # Changed outside before this transaction began: recording over it would hide it.
            message = alarm_text(found.problem or "a schema change")
            store.set_meta(conn, store.OUTSIDE_KEY, message)
            log.error("leader %s: %s", conn.filename, message)
        elif found.moved and not found.changed:
            record_header(conn, found.epoch)  # a VACUUM: same schema
        else:
            wrote = False
        self._start = header(conn)
        if wrote:
            _seen.pop(conn, None)  # this transaction may still be rolled back: check again next time
        else:
            _seen[conn] = (self._version, self._start)

    def prepare(self, stmt: Any, sql: str, params: Any) -> tuple[str, Any]:
        kind = getattr(stmt, "kind", None)
        if kind != "dml":
            self._may_move = True
        if kind == "ddl":
            # ALTER TABLE checks every trigger on the table again, and fails on the guards when a
            # TEMP table of the same name hides it: they step aside, and finish() puts them back.
            for table in altered_tables(self.conn, sql, params):
                _drop_guards(self.conn, table)
        return self.inner.prepare(stmt, sql, params)

    def executed(self, stmt: Any, sql: str, params: Any) -> None:
        self.inner.executed(stmt, sql, params)

    def savepoint(self, name: str) -> None:
        self.inner.savepoint(name)

    def release(self, name: str) -> None:
        self.inner.release(name)

    def rollback_to(self, name: str) -> None:
        self.inner.rollback_to(name)

    def finish(self) -> bytes | None:
        payload = self.inner.finish()
        conn = self.conn
        if not self._may_move:
            return payload
        end = header(conn)
        if end != self._start:
            install_guards(conn)  # the tables it created, before anyone else can write to them
            end = record_header(conn, store.meta_epoch(conn))
        # Read again next time: this transaction may still be rolled back.
        _seen.pop(conn, None)
        return payload

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)  # not made yet
        return getattr(self.inner, name)


def guard_captures(cluster: ClusterCore) -> None:
    """Make every capture of the cluster's format a GuardedCapture."""
    fmt = cluster.format
    if getattr(fmt, "_replproxy_guarded", False):
        return
    plain = fmt.capture

    def capture(conn: apsw.Connection) -> Capture:
        return GuardedCapture(conn, plain)

    fmt.capture = capture  # type: ignore[method-assign]
    fmt._replproxy_guarded = True  # type: ignore[attr-defined]


def ensure_guarded(cluster: ClusterCore) -> None:
    """Guard the leader now if it is not for its epoch (opening a cluster); a busy or stopped leader
    is left to the watcher, a leader that cannot be opened to whoever reports it."""
    if cluster.leader_down:
        return
    try:
        with cluster.node(cluster.leader) as conn:
            conn.set_busy_timeout(1000)
            if not findings(conn).needs_baseline:
                return
            with store.write_transaction(conn):
                baseline(conn)
    except (apsw.Error, ClusterError):
        pass


# -- in the replicator thread ----------------------------------------------------------------------


class OutsideGuard(LeaderPoller):
    """Polls the leader for writes outside the proxy and records them once (replicator thread);
    `poll` returns 1 when it recorded a new alarm."""

    def __init__(self, cluster: ClusterCore, interval: float = 0.01):
        super().__init__(cluster, interval)
        self._reported: str | None = None

    def check(self, conn: apsw.Connection) -> int:
        conn.execute("BEGIN")
        try:
            found = findings(conn)
            todo = (found.needs_baseline or (found.problem is not None and found.alarm is None)
                    or (found.moved and not found.changed) or bool(unguarded(conn)))
        finally:
            conn.execute("COMMIT")
        if not todo:
            return 0
        with store.write_transaction(conn):
            if store.deposed_by(conn) is not None:
                return 0  # fenced by a failover: the new leader is watched instead
            found = findings(conn)  # again, under the write lock
            if found.needs_baseline:
                baseline(conn)
                return 0
            problem = found.problem
            added = 0
            if problem is not None and found.alarm is None:
                message = alarm_text(problem)
                store.set_meta(conn, store.OUTSIDE_KEY, message)
                if message != self._reported:
                    log.error("leader %s: %s", self.cluster.leader, message)
                    self._reported = message
                added = 1
            if unguarded(conn):
                install_guards(conn)  # tables an older replproxy or another program created
            if not found.changed:
                record_header(conn, found.epoch)  # after a VACUUM or new guards
            return added
