"""`verify`: are the followers exactly the leader? Schema, header pragmas, AUTOINCREMENT counters and
the content of every user table, compared at one log position."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import apsw

from logformats import INTERNAL_PREFIX, codec, is_internal_table

from ..errors import ClusterError, ReplicationTimeout
from ..store import log as entries_log
from ..store import node as store
from . import outside
from .core import ClusterCore


@dataclass(frozen=True)
class Difference:
    """One thing on one node that is not as on the leader."""

    node: str
    object: str  # a table name, "schema", "pragma user_version", "sqlite_sequence" or "position"
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of comparing every node with the leader at one LSN."""

    lsn: int
    leader: str
    nodes: tuple[str, ...]
    tables: int
    differences: tuple[Difference, ...] = field(default_factory=tuple)

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def differing_tables(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for diff in self.differences:
            out.setdefault(diff.object, []).append(diff.node)
        return out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["identical"] = self.identical
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
        integer_pk = False
        if len(pk) == 1 and not without_rowid:
            decl = conn.execute("SELECT type FROM pragma_table_info(?) WHERE name=?", (name, pk[0])).fetchone()
            integer_pk = decl is not None and decl[0].upper() == "INTEGER"
        by_rowid = not without_rowid and (not pk or integer_pk)
        out.append((name, bool(without_rowid), pk, by_rowid))
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_digest(conn: apsw.Connection, name: str, pk: list[str], by_rowid: bool) -> tuple[int, str]:
    """Row count and a digest of a table's rows in key order, with SQLite types kept."""
    # Text is read as its bytes, its storage class beside it: SQLite can hold text that is not
    # UTF-8 (upper(X'80'), 'a' || X'FF'), which Python would fail to decode.
    columns = [c for (c,) in conn.execute(
        "SELECT name FROM pragma_table_xinfo(?) WHERE hidden != 1 ORDER BY cid", (name,))]
    values = ", ".join(
        f"typeof({q}), CASE typeof({q}) WHEN 'text' THEN CAST({q} AS BLOB) ELSE {q} END"
        for q in map(_quote, columns))
    if by_rowid:
        sql = f"SELECT rowid, {values} FROM main.{_quote(name)} ORDER BY rowid"
    else:
        order = ", ".join(_quote(c) for c in pk)
        sql = f"SELECT {values} FROM main.{_quote(name)} ORDER BY {order}"
    digest = hashlib.sha256()
    count = 0
    for row in conn.execute(sql):
        digest.update(codec.pack_values(row))
        count += 1
    return count, digest.hexdigest()


@dataclass
class _Fingerprint:
    schema: list[tuple[Any, ...]]
    pragmas: dict[str, int]
    sequence: list[tuple[Any, ...]]
    tables: dict[str, tuple[int, str]]


def fingerprint(conn: apsw.Connection) -> _Fingerprint:
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
    return _Fingerprint(schema, pragmas, sequence, tables)


def _compare(node: str, ref: _Fingerprint, other: _Fingerprint) -> list[Difference]:
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


def verify(cluster: ClusterCore, timeout: float = 10.0) -> VerifyReport:
    """Wait up to `timeout` for the followers to catch up, then compare every node with the leader."""
    deadline = time.monotonic() + timeout
    leader = cluster.leader
    while True:
        with cluster.node(leader) as leader_conn:
            leader_conn.execute("BEGIN")
            lsn = entries_log.last_lsn(leader_conn)
            ref = fingerprint(leader_conn)
            # Trigger format: changes committed outside the proxy and not logged yet are in the
            # leader's content but not at this LSN; log them, then compare.
            unlogged = outside.pending(cluster, leader_conn)
            leader_conn.execute("COMMIT")
        if unlogged and time.monotonic() < deadline:
            outside.log_outside_writes(cluster)
            continue
        try:
            cluster.wait_for_catchup(max(0.0, deadline - time.monotonic()), lsn=lsn)
        except ReplicationTimeout:
            pass
        diffs: list[Difference] = []
        moved_on = False
        for name in cluster.followers:
            try:
                conn = cluster.open_node(name)
            except ClusterError as exc:
                diffs.append(Difference(name, "position", str(exc)))
                continue
            try:
                conn.execute("BEGIN")
                state = store.read_state(conn)
                if state.applied_lsn > lsn:
                    moved_on = True  # the leader moved on meanwhile; compare again at a newer LSN
                    break
                if state.applied_lsn < lsn:
                    why = " (paused)" if state.paused else f" (stopped: {state.error})" if state.error else ""
                    diffs.append(Difference(name, "position",
                                            f"behind: applied LSN {state.applied_lsn} of {lsn}{why}"))
                else:
                    diffs.extend(_compare(name, ref, fingerprint(conn)))
                conn.execute("COMMIT")
            finally:
                conn.close()
        if moved_on and time.monotonic() < deadline:
            continue
        return VerifyReport(lsn=lsn, leader=leader, nodes=(leader, *cluster.followers),
                            tables=len(ref.tables), differences=tuple(diffs))
