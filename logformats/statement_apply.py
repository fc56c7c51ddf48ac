"""Statement payloads on followers: replayed in order with the leader's settings, and decoded.

Statements run with the follower's own triggers firing (as the leader's did) and the connection
settings each statement was logged with; row payloads of the mixed format are applied with
triggers off (their images already hold what the leader's triggers did). The follower connection
is left as it was found.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apsw

from . import row
from .base import ApplyError, Event, LogFormat, SchemaLookup
from .statement_payload import (
    FLAG_CASE_SENSITIVE_LIKE,
    FLAG_FOREIGN_KEYS,
    FLAG_NAMES,
    FLAG_REVERSE_ORDER,
    iter_payload,
)


def _scalar(conn: apsw.Connection, sql: str, params: Any = ()) -> Any:
    # (as statement_schema.fetch_scalar; followers do not need the schema module, nor sqlglot)
    found = conn.execute(sql, params).fetchone()
    return None if found is None else found[0]


class _Settings:
    """The follower connection's settings while an entry is applied; put back as found at the end."""

    def __init__(self, conn: apsw.Connection):
        self.conn = conn
        self.found: dict[int, int] = {}
        self.current: dict[int, int] = {}
        self.found_triggers: int | None = None

    def _read(self, flag: int) -> int:
        conn = self.conn
        if flag == FLAG_FOREIGN_KEYS:
            return conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, -1)
        if flag == FLAG_REVERSE_ORDER:
            return conn.config(apsw.SQLITE_DBCONFIG_REVERSE_SCANORDER, -1)
        if flag == FLAG_CASE_SENSITIVE_LIKE:
            return 0 if _scalar(conn, "SELECT 'a' LIKE 'A'") else 1
        return int(_scalar(conn, f"PRAGMA {FLAG_NAMES[flag]}"))

    def _write(self, flag: int, value: int) -> None:
        conn = self.conn
        if flag == FLAG_FOREIGN_KEYS:
            # PRAGMA foreign_keys is a no-op inside a transaction; the connection flag is not.
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, value)
        elif flag == FLAG_REVERSE_ORDER:
            conn.config(apsw.SQLITE_DBCONFIG_REVERSE_SCANORDER, value)
        else:
            conn.execute(f"PRAGMA {FLAG_NAMES[flag]}={value}")

    def apply(self, flags: int) -> None:
        for flag in FLAG_NAMES:
            want = 1 if flags & flag else 0
            have = self.current.get(flag)
            if have is None:
                if not want and flag not in self.found:
                    continue  # never touched and not wanted: whatever the connection has
                have = self.found[flag] = self._read(flag)
                self.current[flag] = have
            if want != have:
                self._write(flag, want)
                self.current[flag] = want

    def defaults(self) -> None:
        """As found: row images are applied with the follower's own settings."""
        for flag, value in self.found.items():
            if self.current.get(flag) != value:
                self._write(flag, value)
                self.current[flag] = value

    def triggers(self, on: bool) -> None:
        state = self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, -1)
        if self.found_triggers is None:
            self.found_triggers = state
        if bool(state) != on:
            self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1 if on else 0)

    def restore(self) -> None:
        self.defaults()
        if self.found_triggers is not None:
            if self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, -1) != self.found_triggers:
                self.conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, self.found_triggers)


def apply_payload(conn: apsw.Connection, payload: bytes) -> None:
    """Replay a statement (or mixed) payload on a follower: statements with triggers on and the
    leader's settings, row images with triggers off. The connection is left as it was found."""
    apply_payloads(conn, (payload,))


def apply_payloads(conn: apsw.Connection, payloads: Iterable[bytes]) -> None:
    """Replay consecutive payloads in order, switching settings only when they change."""
    settings = _Settings(conn)
    triggers_on: bool | None = None
    execute = conn.execute
    try:
        for payload in payloads:
            for kind, item in iter_payload(payload):
                if kind == "stmt":
                    sql, flags, params = item
                    if triggers_on is not True:
                        settings.triggers(True)
                        triggers_on = True
                    if flags or settings.current:
                        settings.apply(flags)
                    try:
                        for _ in execute(sql, params):
                            pass
                    except apsw.Error as exc:
                        raise ApplyError(f"{sql!r} failed: {exc}", reason=str(exc)) from exc
                else:
                    settings.defaults()
                    settings.triggers(False)
                    triggers_on = False
                    row.apply_chunks(conn, item)
    finally:
        settings.restore()


def decode_payload(payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
    events: list[Event] = []
    for kind, item in iter_payload(payload):
        if kind == "stmt":
            sql, flags, params = item
            if flags:
                settings = ", ".join(f"{name}=1" for flag, name in FLAG_NAMES.items() if flags & flag)
                sql = f"/* {settings} */ {sql}"
            events.append(Event("SQL", sql=sql, params=params))
        else:
            events.extend(row.decode_chunks(item, schema))
    return events


class StatementPayloadFormat(LogFormat):
    """Formats whose entries are statement payloads (statement, mixed): replayed with the
    follower's own triggers firing."""

    follower_triggers = True

    def apply(self, conn: apsw.Connection, payload: bytes) -> None:
        apply_payload(conn, payload)

    def apply_many(self, conn: apsw.Connection, payloads: Sequence[bytes]) -> None:
        apply_payloads(conn, payloads)

    def decode(self, payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
        return decode_payload(payload, schema)
