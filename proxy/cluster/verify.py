"""`verify`: are the followers exactly the leader? Schema, header pragmas, AUTOINCREMENT counters and
the content of every user table, compared at exactly one log position on every node (or a clear
reason why a node could not be compared)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import apsw

from logformats import INTERNAL_PREFIX, codec, is_internal_table

from ..errors import ClusterError
from ..store import log as entries_log
from ..store import node as store
from ..store.applier import Applier
from ..store.log import LogEntry
from ..store.source import LogSource
from . import divergence, outside
from .core import ClusterCore

IDENTICAL = "identical"
DIFFERENT = "different"
NOT_COMPARED = "could-not-compare"


@dataclass(frozen=True)
class Difference:
    """One thing on one node that is not as on the leader, or why the node could not be compared."""

    node: str
    object: str  # a table name, "schema", "pragma user_version", "sqlite_sequence" or "position"
    detail: str
    # "content" (it differs), "diverged" or "ahead-of-leader" (its position cannot be trusted,
    # see divergence.py): the node is different; "not-compared": verify could not compare it.
    kind: str = "content"

    @property
    def compared(self) -> bool:
        return self.kind != "not-compared"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of comparing every node with the leader at one LSN: `outcome` is "identical"
    (every node compared, no difference), "different" (some node differs, diverged or is ahead of
    the leader) or "could-not-compare" (some node could not be brought to the LSN: lagging,
    stopped, timed out); `differences` says which node and why."""

    lsn: int
    leader: str
    nodes: tuple[str, ...]
    tables: int
    differences: tuple[Difference, ...] = field(default_factory=tuple)

    @property
    def outcome(self) -> str:
        if any(d.compared for d in self.differences):
            return DIFFERENT
        return NOT_COMPARED if self.differences else IDENTICAL

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def not_compared(self) -> dict[str, str]:
        """Node -> why it could not be compared."""
        return {d.node: d.detail for d in self.differences if not d.compared}

    @property
    def differing_tables(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for diff in self.differences:
            if diff.compared:
                out.setdefault(diff.object, []).append(diff.node)
        return out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["identical"] = self.identical
        data["outcome"] = self.outcome
        return data


def _tables(conn: apsw.Connection) -> list[tuple[str, bool, list[str], bool]]:
    """(name, without_rowid, pk columns, keyed by rowid) for each user table."""
    out = []
    rows = conn.execute("SELECT name, type, wr FROM pragma_table_list WHERE schema='main' "
                        "AND type IN ('table') ORDER BY name").fetchall()
    for name, _type, without_rowid in rows:
        if is_internal_table(name):
            continue
        info = conn.execute("SELECT name, pk FROM pragma_table_info(?)", (name,)).fetchall()
        pk = [col for col, pos in sorted(((c, p) for c, p in info if p), key=lambda x: x[1])]
        # Rows are identified by their primary key when they have one: a rowid that is not an
        # alias of it (INTEGER PRIMARY KEY DESC, a TEXT key) may differ between nodes.
        out.append((name, bool(without_rowid), pk, not without_rowid and not pk))
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Result columns per query: SQLite allows 2000 by default and a table may have as many.
_COLUMNS_PER_QUERY = 500


def table_digest(conn: apsw.Connection, name: str, pk: list[str], by_rowid: bool) -> tuple[int, str]:
    """Row count and a digest of a table's rows in key order, with SQLite types kept."""
    # Text is read as the hex of its bytes (the only str values), so text that is not UTF-8
    # (upper(X'80'), 'a' || X'FF') neither fails to decode nor looks like a BLOB.
    columns = [c for (c,) in conn.execute(
        "SELECT name FROM pragma_table_xinfo(?) WHERE hidden != 1 ORDER BY cid", (name,))]
    order = "rowid" if by_rowid else ", ".join(_quote(c) for c in pk)
    digest = hashlib.sha256()
    count = 0
    for start in range(0, max(len(columns), 1), _COLUMNS_PER_QUERY):
        chunk = columns[start:start + _COLUMNS_PER_QUERY]
        values = ", ".join(f"CASE typeof({q}) WHEN 'text' THEN hex({q}) ELSE {q} END"
                           for q in map(_quote, chunk)) or "NULL"
        key = "rowid, " if by_rowid and start == 0 else ""
        part = hashlib.sha256()
        rows = 0
        for row in conn.execute(f"SELECT {key}{values} FROM main.{_quote(name)} ORDER BY {order}"):
            part.update(codec.pack_values(row))
            rows += 1
        digest.update(part.digest())
        count = rows
    return count, digest.hexdigest()


@dataclass
class Fingerprint:
    schema: list[tuple[Any, ...]]
    pragmas: dict[str, int]
    sequence: list[tuple[Any, ...]]
    tables: dict[str, tuple[int, str]]


def fingerprint(conn: apsw.Connection) -> Fingerprint:
    """Everything `verify` compares about one node, read inside the caller's read transaction."""
    schema = sorted(
        (t, n, tb, sql)
        for t, n, tb, sql in conn.execute("SELECT type, name, tbl_name, sql FROM main.sqlite_master")
        if (not is_internal_table(tb) or tb.lower() == "sqlite_sequence")
        and not n.lower().startswith(INTERNAL_PREFIX)  # the trigger format's capture triggers
    )
    pragmas = {
        name: conn.execute(f"PRAGMA main.{name}").fetchone()[0] for name in ("user_version", "application_id")
    }
    try:
        sequence = sorted(r for r in conn.execute("SELECT name, seq FROM main.sqlite_sequence")
                          if not is_internal_table(r[0]))
    except apsw.SQLError:
        sequence = []
    tables = {name: table_digest(conn, name, pk, by_rowid) for name, _wr, pk, by_rowid in _tables(conn)}
    return Fingerprint(schema, pragmas, sequence, tables)


def compare(node: str, ref: Fingerprint, other: Fingerprint) -> list[Difference]:
    diffs = []
    if ref.schema != other.schema:
        ref_set, other_set = set(ref.schema), set(other.schema)
        missing = sorted(f"{t} {n}" for t, n, _tb, _s in ref_set - other_set)
        extra = sorted(f"{t} {n}" for t, n, _tb, _s in other_set - ref_set)
        parts = []
        if missing:
            parts.append("differs or missing: " + ", ".join(missing))
        if extra:
            parts.append("not on the leader: " + ", ".join(extra))
        diffs.append(Difference(node, "schema", "; ".join(parts)))
    for name, value in ref.pragmas.items():
        if other.pragmas.get(name) != value:
            diffs.append(Difference(node, f"pragma {name}", f"{other.pragmas.get(name)} (leader {value})"))
    if ref.sequence != other.sequence:
        diffs.append(Difference(node, "sqlite_sequence", f"{other.sequence} (leader {ref.sequence})"))
    for table in sorted(set(ref.tables) | set(other.tables)):
        a, b = ref.tables.get(table), other.tables.get(table)
        if a == b:
            continue
        if a is None:
            detail = "table exists only on this node"
        elif b is None:
            detail = "table is missing"
        elif a[0] != b[0]:
            detail = f"{b[0]} rows (leader {a[0]})"
        else:
            detail = f"same row count ({a[0]}), different content"
        diffs.append(Difference(node, table, detail))
    return diffs


class _CappedSource(LogSource):
    """The leader's log up to `cap`: verify brings a follower to exactly that LSN, never past it."""

    def __init__(self, inner: LogSource):
        self.inner = inner
        self.cap = 0

    def last_lsn(self) -> int:
        return min(self.inner.last_lsn(), self.cap)

    def read(self, after: int, limit: int) -> list[LogEntry]:
        return [e for e in self.inner.read(after, limit) if e.lsn <= self.cap]

    def commit_time(self, lsn: int) -> float | None:
        return self.inner.commit_time(lsn)

    def identity(self, lsn: int) -> tuple[int, int] | None:
        return self.inner.identity(lsn)

    def close(self) -> None:
        self.inner.close()


def _not_compared(node: str, detail: str) -> Difference:
    return Difference(node, "position", detail, "not-compared")


def verify(cluster: ClusterCore, timeout: float = 10.0) -> VerifyReport:
    """Compare every follower with the leader at exactly one LSN, or say why a node could not be.

    Every follower is held under its write lock (no applier moves it meanwhile), then the leader
    is read in one read transaction at its last LSN; each follower is brought to exactly that LSN
    under its lock (verify applies the missing entries itself), compared and released. A
    follower whose position its own log copy or the leader's log contradicts, or that is past the
    leader's last LSN, is reported as such (divergence.py). `timeout`: seconds to wait for a
    follower's write lock, and for writers outside the proxy (trigger format) to be logged."""
    deadline = time.monotonic() + timeout
    cluster.refresh_config()
    leader = cluster.leader
    diffs: list[Difference] = [
        _not_compared(n.name, "stopped with replproxy stop-node; start-node brings it back")
        for n in cluster.config.followers if n.stopped]
    if cluster.leader_down:
        diffs.append(_not_compared(leader, "the leader is stopped with replproxy stop-node"))
        return VerifyReport(lsn=0, leader=leader, nodes=(leader, *cluster.followers), tables=0,
                            differences=tuple(diffs))
    source = _CappedSource(cluster.log_source())
    held: dict[str, Applier] = {}
    leader_conn: apsw.Connection | None = None
    try:
        for name in sorted(cluster.followers):
            problem = _hold(cluster, name, source, deadline, timeout, held)
            if problem is not None:
                diffs.append(_not_compared(name, problem))
        leader_conn = cluster.open_node(leader)
        while True:
            leader_conn.execute("BEGIN")
            lsn = entries_log.last_lsn(leader_conn)
            # Trigger format: changes committed outside the proxy and not logged yet are in the
            # leader's content but not at this LSN; log them, then read again.
            if not outside.pending(cluster, leader_conn):
                break
            leader_conn.execute("COMMIT")
            if time.monotonic() >= deadline:
                raise ClusterError("the leader keeps holding changes committed outside the proxy "
                                   f"that could not be logged within {timeout:g}s")
            outside.log_outside_writes(cluster)
        source.cap = lsn
        prints: dict[str, Fingerprint] = {}
        for name in list(held):
            applier = held.pop(name)
            try:
                result = _bring_to(cluster, name, applier, leader_conn, lsn)
                if isinstance(result, Difference):
                    diffs.append(result)
                else:
                    prints[name] = result
                applier.conn.execute("COMMIT")
            except apsw.Error as exc:
                diffs.append(_not_compared(name, f"{name}: {exc}"))
            finally:
                _release(applier)
        ref = fingerprint(leader_conn)
        leader_conn.execute("COMMIT")
    finally:
        for applier in held.values():
            _release(applier)
        if leader_conn is not None:
            leader_conn.close()
        source.close()
    for name, other in prints.items():
        diffs.extend(compare(name, ref, other))
    order = {n: i for i, n in enumerate((leader, *cluster.followers))}
    diffs.sort(key=lambda d: order.get(d.node, len(order)))
    return VerifyReport(lsn=lsn, leader=leader, nodes=(leader, *cluster.followers),
                        tables=len(ref.tables), differences=tuple(diffs))


def _hold(cluster: ClusterCore, name: str, source: LogSource, deadline: float, timeout: float,
          held: dict[str, Applier]) -> str | None:
    """Take follower `name`'s write lock (kept in `held`); why not, if it cannot be had."""
    try:
        applier = cluster.applier(name, source)
    except (ClusterError, apsw.Error) as exc:
        if not cluster.path_of(name).exists():
            return str(exc)
        return f"{exc}; `replproxy resync {cluster.directory} {name}` replaces its file"
    try:
        applier.conn.set_busy_timeout(max(0, int((deadline - time.monotonic()) * 1000)))
        applier.conn.execute("BEGIN IMMEDIATE")
    except apsw.BusyError:
        applier.close()
        return f"{name}: its write lock stayed taken for {timeout:g}s (timed out)"
    except apsw.Error as exc:
        applier.close()
        return f"{name} ({cluster.path_of(name)}): {exc}"
    held[name] = applier
    return None


def _release(applier: Applier) -> None:
    try:
        if not applier.conn.get_autocommit():
            applier.conn.execute("ROLLBACK")
    finally:
        applier.close()


def _bring_to(cluster: ClusterCore, name: str, applier: Applier, leader_conn: apsw.Connection,
              lsn: int) -> Difference | Fingerprint:
    """Follower `name` (under its write lock) at exactly `lsn`: its fingerprint, or why not."""
    conn = applier.conn
    state = store.read_state(conn)
    hint = f"re-seed it with `replproxy resync {cluster.directory} {name}`"
    problem = divergence.check(name, conn, state, leader_conn, hint)
    if problem is not None:
        return Difference(name, "position", problem.message, problem.kind)
    if state.needs_snapshot:
        kind = divergence.DIVERGED if state.kind == store.StopKind.DIVERGED else "not-compared"
        return Difference(name, "position", f"{state.error}; {hint}", kind)
    applied = state.applied_lsn
    if applied < lsn and not (state.paused or state.error):
        while applied < lsn:
            applied, count = applier.apply_next(applied)
            if not count:
                break
        state = store.read_state(conn)
    if state.applied_lsn < lsn:
        why = (" (paused; `replproxy resume` lets it apply)" if state.paused
               else f" (stopped: {state.error})" if state.error
               else f" ({applier.held})" if applier.held else "")
        detail = f"behind: applied LSN {state.applied_lsn} of {lsn}{why}"
        if state.needs_snapshot:  # found while verify applied: said as when found before
            kind = divergence.DIVERGED if state.kind == store.StopKind.DIVERGED else "not-compared"
            return Difference(name, "position", f"{detail}; {hint}", kind)
        return _not_compared(name, detail)
    return fingerprint(conn)
