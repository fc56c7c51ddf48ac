"""Log entries decoded for people and machines: `replproxy log`, the shell's `.log`, lost-writes files.

Pure: it takes entries, the column names of the node they come from and the format options.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import logformats

from .log import LogEntry


def show(value: Any) -> str:
    """A value as the sqlite3 shell would show it."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "x'" + value.hex() + "'"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Why a value cannot be shown: SQLite text that is not valid UTF-8."""
    return (f"a value is text that is not valid UTF-8 ({exc.reason} at byte {exc.start}: "
            f"{exc.object[max(0, exc.start - 8):exc.end + 8]!r}); select CAST(value AS BLOB) "
            "or hex(value) to see its bytes")


def bad_input(exc: UnicodeEncodeError) -> str:
    """Why text given to SQLite was refused: bytes that are not UTF-8 (Python keeps them from
    arguments and input as surrogates)."""
    bad = exc.object[exc.start:exc.end].encode("utf-8", "surrogateescape")
    return (f"input is not valid UTF-8 (byte 0x{bad.hex()} in {exc.object[:60]!r}): SQL text, "
            "values and file names must be UTF-8; write a BLOB as x'hex'")


def jsonable(value: Any) -> Any:
    """A value JSON can carry; BLOBs become hex strings."""
    if isinstance(value, bytes):
        return {"blob": value.hex()}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def iso_time(t: float) -> str:
    """A moment for messages: ISO 8601, local time with its UTC offset, to the second."""
    return _dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class DecodedEntry:
    """One log entry with its changes decoded, or why they could not be."""

    entry: LogEntry
    events: tuple[logformats.Event, ...]
    problem: str | None = None

    @property
    def committed_at(self) -> str:
        """Leader commit time, ISO 8601 in UTC with milliseconds."""
        when = _dt.datetime.fromtimestamp(self.entry.committed_at, _dt.UTC)
        return when.isoformat(timespec="milliseconds")

    def lines(self) -> list[str]:
        """A header like mysqlbinlog's, then one line per change."""
        entry = self.entry
        ok = "ok" if entry.checksum_ok else "MISMATCH"
        out = [f"# LSN {entry.lsn}  epoch {entry.epoch}  {self.committed_at}  format {entry.format}  "
               f"{len(entry.payload)} bytes  checksum {entry.checksum:08x} {ok}"]
        if self.problem:
            out.append(f"  !! {self.problem}")
        out.extend(format_event(event) for event in self.events)
        return out

    def as_dict(self) -> dict[str, Any]:
        """One JSON-ready record, as `replproxy log --json` prints it."""
        entry = self.entry
        record: dict[str, Any] = {
            "lsn": entry.lsn, "epoch": entry.epoch, "committed_at": self.committed_at,
            "format": entry.format, "bytes": len(entry.payload), "checksum": entry.checksum,
            "checksum_ok": entry.checksum_ok, "events": jsonable([e.as_dict() for e in self.events]),
        }
        if self.problem:
            record["error"] = self.problem
        return record


def decode_entries(entries: Iterable[LogEntry], columns: dict[str, list[str]],
                   format_options: dict[str, Any]) -> list[DecodedEntry]:
    """Decode entries with `columns`, the column names of the node they come from (row images
    carry positions only), and the cluster's format options."""
    formats: dict[str, logformats.LogFormat] = {}
    out = []
    for entry in entries:
        fmt = formats.get(entry.format)
        if fmt is None:
            fmt = formats[entry.format] = logformats.get(entry.format, **format_options)
        if not entry.checksum_ok:
            out.append(DecodedEntry(entry, (), "checksum mismatch: payload is corrupt"))
            continue
        try:
            out.append(DecodedEntry(entry, tuple(fmt.decode(entry.payload, columns.get))))
        except logformats.DecodeError as exc:
            out.append(DecodedEntry(entry, (), f"cannot decode: {exc}"))
        except UnicodeDecodeError as exc:
            # SQLite holds text that is not UTF-8 (upper(X'80')); the entry applies as it is.
            out.append(DecodedEntry(entry, (), f"cannot show its changes: {not_utf8(exc)}"))
    return out


def format_event(event: logformats.Event) -> str:
    """One change on one line: `INSERT t: id=1 body='x'`, `UPDATE t: old -> new`, `SQL ...`."""
    def values(image: dict[str, Any] | None) -> str:
        return " ".join(f"{k}={show(v) if not isinstance(v, str) else repr(v)}" for k, v in (image or {}).items())

    if event.kind == "SQL":
        params = f"  -- params {event.params!r}" if event.params else ""
        return f"  SQL {event.sql}{params}"
    if event.kind == "SEQUENCE":
        return f"  SEQUENCE {event.table} seq={event.new['seq'] if event.new else ''}"
    if event.kind == "INSERT":
        return f"  INSERT {event.table}: {values(event.new)}"
    if event.kind == "DELETE":
        return f"  DELETE {event.table}: {values(event.old)}"
    if event.kind == "UPDATE":
        return f"  UPDATE {event.table}: {values(event.old)} -> {values(event.new)}"
    return f"  {event.kind} {event.table or ''} {values(event.new)}"
