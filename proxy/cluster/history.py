"""Writes a failover cut off the history: recording them (lost-writes files) and undoing them (rewind).

Both a forced failover (the old leader's entries the new one never got) and the rejoin of an old
leader (`start-node`) use these: the lost entries are decoded into DIR/lost-writes-epoch<N>.jsonl
with the keys the new leader has since reused, then undone in place by applying their inverted row
images in reverse order, or left for a snapshot when a format cannot invert them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import apsw

import logformats

from ..store import node as store
from ..store.decode import DecodedEntry
from ..store.log import LogEntry
from .core import ClusterCore


def write_lost(cluster: ClusterCore, epoch: int, old: str, lost: list[LogEntry],
               leader: apsw.Connection | None = None, *, source: apsw.Connection) -> Path:
    """DIR/lost-writes-epoch<N>.jsonl: each lost entry decoded (with the column names of
    `source`, the node they come from: their tables may exist nowhere else), with its LSN and raw
    payload. With `leader` (the current leader), rows the lost entries inserted whose primary
    key the leader has since given to another row are listed under `keys_reused`."""
    path = cluster.directory / f"lost-writes-epoch{epoch}.jsonl"
    n = 1
    while path.exists():  # never overwrite a record of lost writes
        n += 1
        path = cluster.directory / f"lost-writes-epoch{epoch}-{n}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for decoded in cluster.decode(lost, store.table_columns(source)):
            handle.write(json.dumps(_record(decoded, old, leader), sort_keys=True) + "\n")
    return path


def _record(decoded: DecodedEntry, old: str, leader: apsw.Connection | None) -> dict[str, Any]:
    record = decoded.as_dict()
    record["node"] = old
    record["origin"] = decoded.entry.origin
    record["payload_base64"] = base64.b64encode(decoded.entry.payload).decode("ascii")
    if leader is not None:
        reused = _reused_keys(leader, decoded.events)
        if reused:
            record["keys_reused"] = reused
    return record


def _reused_keys(leader: apsw.Connection, events: Any) -> list[dict[str, Any]]:
    out = []
    for event in events:
        if event.kind != "INSERT" or not event.table or not event.new:
            continue
        try:
            info = leader.execute("SELECT name, pk FROM pragma_table_info(?)", (event.table,)).fetchall()
        except apsw.Error:
            continue
        keys = [name for name, pk in sorted(info, key=lambda r: r[1]) if pk]
        if not keys or any(k not in event.new for k in keys):
            continue
        where = " AND ".join(f'"{k}" IS ?' for k in keys)
        table = event.table.replace('"', '""')
        try:
            cur = leader.execute(f'SELECT * FROM "{table}" WHERE {where}', [event.new[k] for k in keys])
            row = cur.fetchone()
            names = [d[0] for d in cur.getdescription()] if row is not None else []
        except apsw.Error:
            continue
        if row is not None:
            now = dict(zip(names, row, strict=True))
            if now != event.new:
                out.append({"table": event.table, "key": {k: event.new[k] for k in keys}, "now": now})
    return out


def count_reused(path: Path) -> int:
    """How many keys a lost-writes file lists as reused."""
    return sum(len(json.loads(line).get("keys_reused", []))
               for line in path.read_text(encoding="utf-8").splitlines())


def rewind(conn: apsw.Connection, node: str, lost: list[LogEntry], fork: int, epoch: int,
           format_options: dict[str, Any], base: int | None = None) -> str:
    """Undo `lost` (the node's entries after `fork`, in LSN order) by applying their inverses in
    reverse order, drop them from its log and make it a follower at `fork`, all in one
    transaction; return "inverted". Raises NotInvertibleError or ApplyError with nothing changed.
    `base`: where the current epoch starts (default `fork`)."""
    formats: dict[str, logformats.LogFormat] = {}

    def fmt(name: str) -> logformats.LogFormat:
        if name not in formats:
            formats[name] = logformats.get(name, **format_options)
        return formats[name]

    inverses = [(e, fmt(e.format).invert(e.payload)) for e in reversed(lost)]
    fk = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    conn.execute("PRAGMA foreign_keys=OFF")  # images already hold what cascades did
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
    try:
        with store.write_transaction(conn):
            for entry, inverse in inverses:
                try:
                    fmt(entry.format).apply(conn, inverse)
                except logformats.ApplyError as exc:
                    raise logformats.ApplyError(
                        f"{node}: cannot undo LSN {entry.lsn}: {exc}", table=exc.table,
                        reason=exc.reason) from exc
            conn.execute("DELETE FROM _replproxy_log WHERE lsn > ?", (fork,))
            store.set_applied_at(conn, fork)
            store.fence(conn, epoch)
            store.set_epoch(conn, epoch, fork if base is None else base)
    finally:
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        conn.execute(f"PRAGMA foreign_keys={'ON' if fk else 'OFF'}")
    return "inverted"


def lost_writes(cluster: ClusterCore) -> list[dict[str, Any]]:
    """Every lost-writes file in the cluster directory: its entries' count and LSN range."""
    out = []
    for path in sorted(cluster.directory.glob("lost-writes-epoch*.jsonl")):
        lsns = []
        try:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        lsns.append(int(json.loads(line)["lsn"]))
        except (OSError, ValueError, KeyError) as exc:
            out.append({"file": str(path), "entries": None, "error": str(exc)})
            continue
        out.append({"file": str(path), "entries": len(lsns),
                    "first_lsn": min(lsns) if lsns else None, "last_lsn": max(lsns) if lsns else None})
    return out
