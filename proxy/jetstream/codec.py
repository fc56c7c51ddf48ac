"""Log entries as stream messages: the payload is the body, the rest a JSON header.

The message id (`Nats-Msg-Id`: cluster id, epoch, LSN, checksum) makes a republished entry a duplicate the
stream drops; `Nats-Expected-Last-Sequence` (LSN - 1) makes the stream refuse an entry that does not
follow the last one it holds, so stream sequence == LSN and a deposed leader cannot append. An entry
published right after its predecessor also names it (`Nats-Expected-Last-Msg-Id`): when the
predecessor was refused because the stream holds another leader's entry there, the entries sent
after it in the same batch must not continue that other leader's log.
"""

from __future__ import annotations

import json
from typing import Any

from ..store.log import LogEntry

ENTRY_HEADER = "Replproxy-Entry"
OBJECT_HEADER = "Replproxy-Object"  # the payload is in the object store under this name
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_ID = "Nats-Expected-Last-Msg-Id"


def msg_id(cluster_id: str, entry: LogEntry) -> str:
    # The checksum too: a leader restored from an older backup may hold another entry under the
    # same epoch and LSN, and must not pass it for the one the stream holds.
    return f"{cluster_id}:{entry.epoch}:{entry.lsn}:{entry.checksum}"


def headers(cluster_id: str, entry: LogEntry, *, object_name: str | None = None,
            previous: LogEntry | None = None) -> dict[str, str]:
    """`previous`: the entry published just before this one (LSN - 1), if in the same batch."""
    meta = {"lsn": entry.lsn, "epoch": entry.epoch, "format": entry.format, "checksum": entry.checksum,
            "committed_at": entry.committed_at, "origin": entry.origin}
    out = {MSG_ID: msg_id(cluster_id, entry), EXPECTED_LAST: str(entry.lsn - 1),
           ENTRY_HEADER: json.dumps(meta, separators=(",", ":"))}
    if previous is not None:
        out[EXPECTED_LAST_ID] = msg_id(cluster_id, previous)
    if object_name is not None:
        out[OBJECT_HEADER] = object_name
    return out


def object_name(cluster_id: str, entry: LogEntry) -> str:
    return f"entry.{entry.epoch}.{entry.lsn}.{cluster_id}"


def decode(seq: int, hdrs: dict[str, str] | None, body: bytes) -> tuple[LogEntry, str | None]:
    """The entry of stream message `seq`, and the object holding its payload if it is not inline.
    A message that is not an entry (or whose LSN is not its sequence) raises ValueError."""
    raw = (hdrs or {}).get(ENTRY_HEADER)
    if raw is None:
        raise ValueError(f"stream message {seq} is not a replproxy log entry (no {ENTRY_HEADER} header)")
    meta: dict[str, Any] = json.loads(raw)
    if int(meta["lsn"]) != seq:
        raise ValueError(f"stream message {seq} holds log entry {meta['lsn']}: the stream does not "
                         "number entries by LSN")
    entry = LogEntry(lsn=seq, epoch=int(meta["epoch"]), format=str(meta["format"]), payload=bytes(body),
                     checksum=int(meta["checksum"]), committed_at=float(meta["committed_at"]),
                     origin=meta.get("origin"))
    return entry, (hdrs or {}).get(OBJECT_HEADER)
