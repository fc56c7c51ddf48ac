"""Mixed log: statements by default, row images for what statements cannot replay exactly.

Like MySQL's MIXED binlog format. Each write statement is planned as in the statement format
(statement.py); a statement that format would refuse runs unchanged on the leader under a session
of the row format (row.py's RowCapture, one per such statement) and is logged as its row images,
AUTOINCREMENT counters included. Every statement is therefore accepted and replicates exactly.
One entry may hold both kinds, in execution order: followers replay statements with their
triggers firing and apply row images with triggers off (the images already hold what the leader's
triggers did), and put the trigger setting back as they found it.

Policies (`mixed_policy` in cluster.toml):
- "statement" (default): statements unless unsafe;
- "smallest": a safe statement is captured both ways and the smaller representation is logged
  (a statement touching many rows stays a statement; a single-row INSERT with a long text may
  become its row image). It costs a session per statement; docs/performance.md has the figures.
"""

from __future__ import annotations

from typing import Any

import apsw

from . import codec
from .base import (
    Capture,
    CaptureError,
    StatementInfo,
    UnsafeStatementError,
    not_invertible,
    sql_excerpt,
)
from .row import RowCapture, invert_chunks
from .statement import StatementCapture, UnsafeSchemaChange
from .statement_apply import StatementPayloadFormat
from .statement_payload import encode, encode_item_size, payload_items

POLICIES = ("statement", "smallest")


class MixedCapture(StatementCapture):
    """Statements, and row images for the statements that are unsafe."""

    def __init__(self, conn: apsw.Connection, options: dict[str, Any]):
        super().__init__(conn, {k: v for k, v in options.items() if k != "no_rewrite"})
        self._row_options = {"row_image": options.get("row_image", "full")}
        self._smallest = options.get("mixed_policy", "statement") == "smallest"
        self._rows: RowCapture | None = None
        self._both = False  # the statement runs as a statement, images are kept for comparison
        self._texts: set[str] = set()

    def _settle(self) -> None:
        """A statement that failed left its session behind. Most failures undo the statement and
        the session then holds nothing; OR FAIL and RAISE(FAIL) keep the rows changed before the
        error, and those must reach followers: keep what the session saw."""
        rows, self._rows = self._rows, None
        if rows is None:
            return
        try:
            payload = rows.finish()
        except CaptureError as exc:
            self._errors.append((len(self._items), str(exc)))
            payload = None
        finally:
            rows.close()
        self._keep(payload)

    def _keep(self, payload: bytes | None) -> None:
        if payload is not None and any(data for _tag, data in codec.iter_chunks(payload)):
            # (an UPDATE that rewrote values with themselves leaves an empty changeset)
            self._items.append(("rows", payload))

    def prepare(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        self._settle()
        self._both = False
        try:
            run = super().prepare(stmt, sql, params)
        except UnsafeSchemaChange:
            raise  # row images hold no schema change: the row session would log the same text
        except UnsafeStatementError:
            self._pending = None
            self._rows = RowCapture(self.conn, self._row_options, only_touched=True)
            return self._rows.prepare(stmt, sql, params)
        if self._smallest and stmt.kind == "dml":
            self._rows = RowCapture(self.conn, self._row_options, only_touched=True)
            self._rows.prepare(stmt, *run)
            self._both = True
        return run

    def executed(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        rows, self._rows = self._rows, None
        if rows is None:
            super().executed(stmt, sql, params)
            return
        try:
            rows.executed(stmt, sql, params)
            try:
                payload = rows.finish()
            except CaptureError as exc:
                if self._both:  # the statement itself is exact: keep it
                    super().executed(stmt, sql, params)
                    return
                self._errors.append((len(self._items), str(exc)))
                return
        finally:
            rows.close()
        if self._both:
            pending = self._pending
            super().executed(stmt, sql, params)
            if pending is None or payload is None or not self._items:
                return
            statement = self._items[-1]
            cost = encode_item_size(statement, statement[1] in self._texts)
            if len(payload) < cost:
                self._items[-1] = ("rows", payload)
            else:
                self._texts.add(statement[1])
            return
        self._keep(payload)
        if stmt.kind == "ddl" or stmt.replicated_pragma:
            self._schema_changed()

    def savepoint(self, name: str) -> None:
        self._settle()
        super().savepoint(name)

    def release(self, name: str) -> None:
        self._settle()
        super().release(name)

    def rollback_to(self, name: str) -> None:
        self._settle()
        super().rollback_to(name)
        self._texts = {item[1] for item in self._items if item[0] == "stmt"}

    def finish(self) -> bytes | None:
        self._settle()
        return super().finish()

    def close(self) -> None:
        rows, self._rows = self._rows, None
        if rows is not None:
            rows.close()
        super().close()


class MixedFormat(StatementPayloadFormat):
    """Statement-based by default, row-based for unsafe statements."""

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options=dict(options or {}))
        self.name = "mixed"
        policy = self.options.get("mixed_policy", "statement")
        if policy not in POLICIES:
            raise ValueError(f"mixed_policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if self.options.get("no_rewrite"):
            raise ValueError("no_rewrite is for the statement format; the mixed format always rewrites")

    def capture(self, conn: apsw.Connection) -> Capture:
        return MixedCapture(conn, self.options)

    def invert(self, payload: bytes) -> bytes:
        # Only entries made of row images (statements the statement format found unsafe) can be
        # undone: their items inverted as row payloads, the last first.
        items = payload_items(payload)
        for kind, item in items:
            if kind == "stmt":
                raise not_invertible(self.name, f"it holds the statement {sql_excerpt(item[0])}, and a "
                                     "statement does not carry the rows it changed")
        inverted: list[tuple[str, bytes]] = []
        for _kind, item in reversed(items):
            chunks = invert_chunks(item, self.name)
            if chunks:
                inverted.append(("rows", codec.pack_chunks(chunks)))
        return encode(inverted)
