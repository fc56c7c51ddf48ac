"""One node file: replproxy's internal tables, every meta key, opening a node, its own state.

Every node file holds the same internal tables, so any follower can later be promoted:
`_replproxy_log` (the replication log; see log.py), `_replproxy_meta` (cluster id, epoch, fences,
holds) and `_replproxy_state` (this node's applied position, pause flag and why it stopped).
Nothing here knows about a cluster: callers pass paths and connections.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from ..errors import ClusterError

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
    error_at REAL,
    error_kind TEXT                   -- a StopKind: why it stopped, for programs (error is for people)
);
INSERT OR IGNORE INTO _replproxy_state(id) VALUES (1);
-- Last write position of each named user (cross-device read-your-writes); kept on every node:
-- the leader writes it with the entry, followers when they apply the entry.
CREATE TABLE IF NOT EXISTS _replproxy_users(
    user TEXT PRIMARY KEY,
    last_write_lsn INTEGER NOT NULL
) WITHOUT ROWID;
"""

# The tables every node keeps; anything else named _replproxy_* belongs to a log format.
NODE_TABLES = frozenset({"_replproxy_log", "_replproxy_meta", "_replproxy_state", "_replproxy_users"})

# -- `_replproxy_meta` keys ------------------------------------------------------------------------
NODE_KEY = "node"  # the node's name
CLUSTER_ID_KEY = "cluster_id"
EPOCH_KEY = "epoch"  # the leadership term this node last recorded
EPOCH_BASE_KEY = "epoch_base"  # the LSN the node's current epoch starts after (see set_epoch)
DEPOSED_KEY = "deposed_by_epoch"  # the fence: a failover to this epoch deposed the node as leader
# A distributed leader (docs/distributed.md): wall-clock time until which its lease is surely its
# own; writers refuse to write after it. Absent on the embedded default.
LEASE_UNTIL_KEY = "lease_until"
FORMAT_SWITCH_KEY = "format_switch"  # leader: "OLD>NEW@LSN" of the last `config --format`
DEGRADED_KEY = "semi_sync_degraded"  # leader: when semi-sync degraded to async (absent: it did not)
DEGRADED_REASON_KEY = "semi_sync_degraded_reason"
HOLD_PREFIX = "retention_hold:"  # leader: a snapshot in progress keeps the entries after an LSN
# leader, formats that do not capture outside writers (see cluster/watch.py): the header as the
# log left it, "epoch:schema_version:user_version:application_id", and, once writes outside the
# proxy were detected, why the followers may differ.
GUARD_KEY = "outside_guard"
OUTSIDE_KEY = "outside_writes"
GUARD_POLICY_KEY = "outside_policy"  # leader: "detect" (the default) or "refuse" outside writes

# Only replproxy's own connections answer 1 to sqlite_compileoption_used('REPLPROXY_WRITER'):
# the leader's guard triggers (cluster/watch.py) fire for every other writer and for no proxy one.
PROXY_WRITER_OPTION = "REPLPROXY_WRITER"
_OPTIONS = frozenset(apsw.compile_options)


def _compileoption_used(name: object) -> int:
    if name == PROXY_WRITER_OPTION:  # the guard triggers' call, once per row the proxy writes
        return 1
    option = str(name).upper().removeprefix("SQLITE_")
    if option == PROXY_WRITER_OPTION:
        return 1
    return int(any(o == option or o.startswith(option + "=") for o in _OPTIONS))


def mark_proxy(conn: apsw.Connection) -> None:
    """Make `conn` a proxy writer for the guard triggers (other options answer as SQLite does)."""
    conn.create_scalar_function("sqlite_compileoption_used", _compileoption_used, 1,
                                deterministic=True, flags=apsw.SQLITE_INNOCUOUS)


class StopKind(enum.StrEnum):
    """Why a follower stopped applying, stored in `_replproxy_state.error_kind`."""

    APPLY = "apply"  # an entry cannot be applied here (a conflict); `resume` retries it
    CHECKSUM = "checksum"  # an entry arrived corrupt; `resume` retries it
    BEHIND = "behind-retention"  # the next entry is no longer in the log: needs a snapshot
    DIVERGED = "diverged"  # its data is off the current history (failover, rejoin): needs a snapshot

    @property
    def needs_snapshot(self) -> bool:
        return self in (StopKind.BEHIND, StopKind.DIVERGED)


@dataclass(frozen=True)
class NodeState:
    """A node's own record of how far it has applied the log, and why it stopped if it did."""

    applied_lsn: int
    applied_epoch: int
    applied_commit_time: float | None
    applied_at: float | None
    paused: bool
    error: str | None
    error_lsn: int | None
    kind: StopKind | None = None

    @property
    def needs_snapshot(self) -> bool:
        """Its data is off the current history or behind retention: it must not serve reads nor be
        promoted nor resume until re-seeded."""
        return self.kind is not None and self.kind.needs_snapshot


def new_cluster_id() -> str:
    return uuid.uuid4().hex


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
        mark_proxy(conn)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if create:
            conn.execute("PRAGMA journal_mode=wal").fetchall()
        else:
            conn.execute("SELECT count(*) FROM main.sqlite_master").fetchall()
    except apsw.Error as exc:
        raise ClusterError(f"node file {label} cannot be opened: {exc}") from None
    return conn


@contextlib.contextmanager
def opened(path: str | os.PathLike[str], **options: Any) -> Iterator[apsw.Connection]:
    """`open_node` for the length of a `with` block."""
    conn = open_node(path, **options)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def write_transaction(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def without_waiting(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """Within the block a write that finds the lock taken raises BusyError at once, instead of
    waiting up to BUSY_TIMEOUT_MS: for background work that a client's long transaction must not
    hold up (it tries again later)."""
    conn.set_busy_timeout(0)
    try:
        yield conn
    finally:
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)


def remove_files(path: str | os.PathLike[str]) -> None:
    """Delete a database file with its WAL and shared-memory files, and the lease and
    acknowledgements files beside it."""
    for suffix in ("", "-wal", "-shm", LEASE_FILE_SUFFIX, ACKS_FILE_SUFFIX):
        Path(str(path) + suffix).unlink(missing_ok=True)


def install(conn: apsw.Connection, *, node_name: str, cluster_id: str) -> None:
    """Create the internal tables on a node file (idempotent)."""
    with conn:
        for _ in conn.execute(SCHEMA):
            pass
        upgrade(conn)
        conn.execute(
            "INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES "
            "(?, ?), (?, ?), (?, coalesce((SELECT value FROM _replproxy_meta WHERE key=?), 1))",
            (NODE_KEY, node_name, CLUSTER_ID_KEY, cluster_id, EPOCH_KEY, EPOCH_KEY),
        )


def upgrade(conn: apsw.Connection) -> bool:
    """Bring a node file made by an older replproxy to the current schema; True if it changed."""
    columns = {r[1] for r in conn.execute("SELECT * FROM pragma_table_info('_replproxy_state')")}
    if not columns or "error_kind" in columns:
        return False
    conn.execute("ALTER TABLE _replproxy_state ADD COLUMN error_kind TEXT")
    # Older files said why only in the message.
    conn.execute("UPDATE _replproxy_state SET error_kind = CASE "
                 "WHEN error IS NULL THEN NULL "
                 "WHEN error LIKE '%needs a new snapshot%' THEN ? "
                 "WHEN error LIKE '%checksum%' THEN ? ELSE ? END",
                 (StopKind.DIVERGED.value, StopKind.CHECKSUM.value, StopKind.APPLY.value))
    return True


def table_columns(conn: apsw.Connection) -> dict[str, list[str]]:
    """Column names of every table of a node, for decoding row images."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {t: [r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (t,))]
            for t in tables}


# -- meta ----------------------------------------------------------------------------------------


def read_meta(conn: apsw.Connection, label: str) -> dict[str, Any]:
    try:
        return dict(conn.execute("SELECT key, value FROM _replproxy_meta"))
    except apsw.SQLError:
        raise ClusterError(f"{label} is not a replproxy node (no _replproxy_meta table)") from None


def meta_epoch(conn: apsw.Connection) -> int:
    row = conn.execute("SELECT value FROM _replproxy_meta WHERE key = ?", (EPOCH_KEY,)).fetchone()
    return int(row[0]) if row else 1


def set_meta(conn: apsw.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)", (key, value))


def set_epoch(conn: apsw.Connection, epoch: int, base: int) -> None:
    """Record the epoch on a node, with the LSN it starts after: its appliers refuse entries of an
    older epoch past that LSN (a deposed leader's branch, see applier.Applier)."""
    conn.executemany("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                     [(EPOCH_KEY, epoch), (EPOCH_BASE_KEY, base)])


def fence(conn: apsw.Connection, epoch: int) -> None:
    """Depose the node as a leader: every proxy writer checks this right after BEGIN IMMEDIATE."""
    set_meta(conn, DEPOSED_KEY, epoch)


def unfence(conn: apsw.Connection) -> None:
    conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (DEPOSED_KEY,))


def deposed_by(conn: apsw.Connection) -> int | None:
    """The epoch of the failover that fenced this node, or None."""
    return read_fence(conn).deposed_by


@dataclass(frozen=True)
class Fence:
    """What a node records of leadership: its epoch, the LSN that epoch starts after (-1: not
    recorded), and the epoch of the failover that deposed it as a leader, if one did."""

    epoch: int
    base: int
    deposed_by: int | None
    lease_until: float | None = None


_FENCE_SQL = ("SELECT key, value FROM _replproxy_meta WHERE key IN "
              f"('{EPOCH_KEY}', '{EPOCH_BASE_KEY}', '{DEPOSED_KEY}', '{LEASE_UNTIL_KEY}')")


def read_fence(conn: apsw.Connection) -> Fence:
    meta = dict(conn.execute(_FENCE_SQL))
    deposed = meta.get(DEPOSED_KEY)
    lease = meta.get(LEASE_UNTIL_KEY)
    return Fence(int(meta.get(EPOCH_KEY, 1)), int(meta.get(EPOCH_BASE_KEY, -1)),
                 None if deposed is None else int(deposed), None if lease is None else float(lease))


def set_lease(conn: apsw.Connection, until: float | None) -> None:
    """A distributed leader's lease, renewed until `until` (wall clock); None: not leased."""
    with write_transaction(conn):
        if until is None:
            conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (LEASE_UNTIL_KEY,))
        else:
            set_meta(conn, LEASE_UNTIL_KEY, until)


# A renewal cannot wait for the write lock (a client's transaction may hold it longer than the
# lease lasts): it goes to a file beside the node's, which writers read when the lease recorded
# in the node's file has lapsed. Only a node whose file records a lease reads it.
LEASE_FILE_SUFFIX = ".lease"


def lease_file(path: str | os.PathLike[str]) -> Path:
    return Path(str(path) + LEASE_FILE_SUFFIX)


def write_lease_file(path: str | os.PathLike[str], until: float | None) -> None:
    """Record a renewal (until `until`, wall clock) beside the node file at `path`, atomically;
    None removes it (a leader stepping down removes it before anything else)."""
    _write_beside(lease_file(path), None if until is None else repr(float(until)))


def _write_beside(target: Path, text: str | None) -> None:
    """Replace `target` with `text` atomically; None removes it."""
    if text is None:
        target.unlink(missing_ok=True)
        return
    temp = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    temp.write_text(text)
    os.replace(temp, target)


def read_lease_file(path: str | os.PathLike[str]) -> float | None:
    try:
        return float(lease_file(path).read_text())
    except (OSError, ValueError):
        return None  # none, or being replaced: the lease in the node file stands


# Followers' acknowledgements cannot wait for the write lock either: a sync committer waits for
# them after its COMMIT, while the next client's transaction may hold the lock. They go to a file
# beside the node's as well; a committer takes, for each follower the node's file names (the set
# of followers changes under the lock only), the higher of the two positions.
ACKS_FILE_SUFFIX = ".acks"


def acks_file(path: str | os.PathLike[str]) -> Path:
    return Path(str(path) + ACKS_FILE_SUFFIX)


def write_acks_file(path: str | os.PathLike[str], positions: dict[str, int] | None) -> None:
    """Record followers' applied LSNs beside the node file at `path`, atomically; None removes
    the file (a leader stepping down)."""
    _write_beside(acks_file(path), None if positions is None else json.dumps(positions))


def read_acks_file(path: str | os.PathLike[str]) -> dict[str, int]:
    try:
        data = json.loads(acks_file(path).read_text())
        return {str(name): int(lsn) for name, lsn in data.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}  # none (yet), or damaged: the positions in the node file stand


def set_hold(conn: apsw.Connection, holder: str, lsn: int | None) -> None:
    """Leader: keep the entries after `lsn` for `holder` (a snapshot in progress); None: release."""
    with write_transaction(conn):
        if lsn is None:
            conn.execute("DELETE FROM _replproxy_meta WHERE key = ?", (HOLD_PREFIX + holder,))
        else:
            set_meta(conn, HOLD_PREFIX + holder, f"{lsn}@{time.time()}")


HOLD_GRACE = 10.0  # seconds a hold outlives the registration of its follower (slow processes)
HOLD_ORPHAN = 3600.0  # seconds before a hold of a follower never registered (add killed) expires


def hold_expired(at: float, registered: bool, now: float) -> bool:
    """Whether a retention hold set at `at` is over: its follower is registered (every process
    has had time to see it) or its `add-follower` was killed long ago. An expired hold pins
    nothing and is not shown, whether or not a retention pass has deleted it yet."""
    return now - at > (HOLD_GRACE if registered else HOLD_ORPHAN)


def retention_holds(conn: apsw.Connection) -> dict[str, tuple[int, float]]:
    """Leader: every retention hold, holder -> (LSN, when it was set)."""
    out = {}
    for key, value in conn.execute("SELECT key, value FROM _replproxy_meta WHERE key LIKE ?",
                                   (HOLD_PREFIX + "%",)):
        lsn, _, at = str(value).partition("@")
        out[key[len(HOLD_PREFIX):]] = (int(lsn), float(at or 0))
    return out


REMOTE_PREFIX = "remote_follower:"  # a distributed leader: a follower on another machine, its applied LSN


def remote_positions(conn: apsw.Connection) -> dict[str, int]:
    """A distributed leader: the applied LSN of every follower on another machine, as its
    `replproxy serve` recorded in the node's file (docs/distributed.md); empty on the embedded
    default. Newer positions may be in the acknowledgements file (read_acks_file)."""
    return {key[len(REMOTE_PREFIX):]: int(value) for key, value in conn.execute(
        "SELECT key, value FROM _replproxy_meta WHERE key LIKE ?", (REMOTE_PREFIX + "%",))}


def set_remote_positions(conn: apsw.Connection, positions: dict[str, int], *, replace: bool = False) -> None:
    """Record followers' positions (`replace`: these are all the remote followers there are)."""
    with write_transaction(conn):
        if replace:
            conn.execute("DELETE FROM _replproxy_meta WHERE key LIKE ?", (REMOTE_PREFIX + "%",))
        conn.executemany("INSERT OR REPLACE INTO _replproxy_meta(key, value) VALUES (?, ?)",
                         [(REMOTE_PREFIX + name, lsn) for name, lsn in positions.items()])


# -- state ---------------------------------------------------------------------------------------

_STATE_SQL = ("SELECT applied_lsn, applied_epoch, applied_commit_time, applied_at, paused, error, "
              "error_lsn, error_kind FROM _replproxy_state WHERE id = 1")


def read_state(conn: apsw.Connection) -> NodeState:
    try:
        row = conn.execute(_STATE_SQL).fetchone()
    except apsw.SQLError as exc:
        if "error_kind" in str(exc) and _upgraded(conn):
            return read_state(conn)
        # A plain SQLite file where a node file should be: name the file, not the missing table.
        raise ClusterError(f"node file {conn.filename} is not a replproxy node ({exc})") from None
    if row is None:
        return NodeState(0, 0, None, None, False, None, None)
    kind = None
    if row[5] is not None:
        try:
            kind = StopKind(row[7])
        except ValueError:
            kind = StopKind.APPLY
    return NodeState(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], kind)


def _upgraded(conn: apsw.Connection) -> bool:
    try:
        return upgrade(conn)
    except apsw.Error:
        return False


def set_error(conn: apsw.Connection, kind: StopKind, message: str, lsn: int) -> None:
    """Stop a follower at entry `lsn` (its appliers skip it until cleared)."""
    conn.execute("UPDATE _replproxy_state SET error=?, error_lsn=?, error_at=?, error_kind=? WHERE id=1",
                 (message, lsn, time.time(), kind.value))


_CLEAR = ", paused=0, error=NULL, error_lsn=NULL, error_at=NULL, error_kind=NULL"


def clear_error(conn: apsw.Connection, *, paused: bool = False) -> None:
    conn.execute("UPDATE _replproxy_state SET paused=?, error=NULL, error_lsn=NULL, error_at=NULL, "
                 "error_kind=NULL WHERE id=1", (int(paused),))


def set_paused(conn: apsw.Connection, paused: bool) -> None:
    conn.execute("UPDATE _replproxy_state SET paused=? WHERE id=1", (int(paused),))


def set_applied(conn: apsw.Connection, lsn: int, epoch: int, commit_time: float | None, *,
                resume: bool = False) -> None:
    """Record that the node holds everything up to entry `lsn` (of `epoch`, committed on the leader
    at `commit_time`); `resume`: also clear its pause flag and error."""
    conn.execute("UPDATE _replproxy_state SET applied_lsn=?, applied_epoch=?, applied_commit_time=?, "
                 "applied_at=?" + (_CLEAR if resume else "") + " WHERE id=1",
                 (lsn, epoch, commit_time, time.time()))


def set_applied_at(conn: apsw.Connection, lsn: int) -> None:
    """`set_applied` at `lsn`, with the epoch and commit time its own log holds for that entry, and
    resumed: for a node whose data was just made to end at `lsn` (snapshot, rewind, rejoin)."""
    row = conn.execute("SELECT epoch, committed_at FROM _replproxy_log WHERE lsn = ?", (lsn,)).fetchone()
    set_applied(conn, lsn, row[0] if row else 0, row[1] if row else None, resume=True)
