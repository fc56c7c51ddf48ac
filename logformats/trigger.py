"""Trigger-based log: AFTER INSERT/UPDATE/DELETE triggers write row images into a capture table.

The leader holds, beside the user's tables (all internal, never replicated or compared):

- `_replproxy_capture(seq INTEGER PRIMARY KEY, lay, c0, c1, ...)`: one row per changed row, written
  by replproxy's triggers in the same transaction as the change. The columns `c0...` have no type,
  so every value keeps its storage class exactly (INTEGER, REAL to the bit, TEXT even when it is
  not UTF-8, BLOB, NULL). `lay` names the row's layout.
- `_replproxy_capture_layout(id, tbl, op, keys, cols, nullable)`: what the values of a capture row
  are: the table, the operation, the identifying columns (the PRIMARY KEY, or the rowid for a
  table without one) and the columns of the image. The id is a hash of that content, so an id
  always means the same layout (a layout created by a transaction that was rolled back comes back
  with the same id, and caches never go stale).
- `_replproxy_capture_schema`: the user schema (and `user_version`/`application_id`) as the log
  has replicated it, to notice schema changes made by programs outside the proxy.

Triggers are named `_replproxy_ins_<table>`, `_replproxy_upd_<table>`, `_replproxy_del_<table>`.
An INSERT image holds the new row, an UPDATE image the old key then the new row, a DELETE image
the old key. Generated columns are never in an image (followers compute them). replproxy's
triggers are always the newest on their table: SQLite fires the newest trigger first, so each
image is taken before a user's AFTER trigger changes the row again, and images are in the order
the changes happened.

On commit through the proxy the capture's rows become one log entry and are deleted in the same
transaction. Rows left in the capture table by programs that write to the leader file without
the proxy are logged by `TriggerFormat.log_outside` (see docs/logformats.md for when).

Followers apply images by key with their triggers disabled: INSERT OR REPLACE for an insert (a
REPLACE on the leader deletes without firing delete triggers; the follower's REPLACE deletes the
same rows), UPDATE OR REPLACE ... WHERE key IS old key, DELETE ... WHERE key IS old key. An
update or delete that finds no row stops the follower with a conflict.
"""

from __future__ import annotations

import hashlib
import json
import struct
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from . import codec
from .base import (
    ApplyError,
    Capture,
    CaptureError,
    DecodeError,
    Event,
    LogFormat,
    OutsideLog,
    SchemaLookup,
    StatementInfo,
    UnsafeStatementError,
    is_internal_table,
    not_invertible,
    pop_savepoint,
)
from .row import (
    TAG_SEQUENCE,
    TAG_SQL,
    apply_sequence,
    read_sequence,
    read_sequence_at,
    sequence_chunk,
    sql_chunk_reason,
)

CAPTURE_TABLE = "_replproxy_capture"
LAYOUT_TABLE = "_replproxy_capture_layout"
SCHEMA_TABLE = "_replproxy_capture_schema"
TRIGGER_PREFIX = "_replproxy_"

# A capture row with this layout is a transaction boundary mark written by a cooperating outside
# program (`INSERT INTO _replproxy_capture(lay) VALUES (0)` before COMMIT).
MARK_LAYOUT = 0

TAG_ROWS = b"R"  # row images of one table and operation
TAG_RAW_ROWS = b"X"  # the same, for images holding TEXT that is not UTF-8
TAG_ORIGIN = b"O"  # transactions committed outside the proxy (informational)

INSERT, UPDATE, DELETE = "I", "U", "D"
_OPS = (INSERT, UPDATE, DELETE)
_EVENT = {INSERT: "INSERT", UPDATE: "UPDATE", DELETE: "DELETE"}
_NAME = {INSERT: "ins", UPDATE: "upd", DELETE: "del"}
_ROWID_ALIASES = ("rowid", "_rowid_", "oid")

_STATUS_SQL = (
    "SELECT (SELECT schema_version FROM pragma_schema_version), "
    "(SELECT user_version FROM pragma_user_version), "
    "(SELECT application_id FROM pragma_application_id), "
    f"(SELECT max(seq) FROM main.{CAPTURE_TABLE})"
)

_INSTALL_SQL = f"""
CREATE TABLE IF NOT EXISTS main.{CAPTURE_TABLE}(seq INTEGER PRIMARY KEY, lay INTEGER NOT NULL,
    c0, c1, c2, c3, c4, c5, c6, c7);
CREATE TABLE IF NOT EXISTS main.{LAYOUT_TABLE}(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL,
    op TEXT NOT NULL, keys TEXT NOT NULL, cols TEXT NOT NULL, nullable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS main.{SCHEMA_TABLE}(pos INTEGER PRIMARY KEY, type TEXT NOT NULL,
    name TEXT NOT NULL, tbl_name TEXT, sql TEXT);
"""


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class RawText(bytes):
    """A TEXT value whose bytes are not UTF-8: kept as its bytes, written back as TEXT."""


# -- layouts and table specs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What the values of one capture row are."""

    table: str
    op: str
    keys: tuple[str, ...]
    cols: tuple[str, ...]
    nullable: bool = False  # a key column may hold NULL (rowid table, PRIMARY KEY not NOT NULL)

    @property
    def width(self) -> int:
        if self.op == INSERT:
            return len(self.cols)
        if self.op == UPDATE:
            return len(self.keys) + len(self.cols)
        return len(self.keys)

    @property
    def id(self) -> int:
        text = json.dumps([self.table, self.op, self.keys, self.cols, self.nullable])
        # 62 bits of a hash: positive, never 0 (MARK_LAYOUT), the same for the same content.
        return (int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2) or 1

    def key_of(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """The identifying values of an image (old key for UPDATE/DELETE, new key for INSERT)."""
        if self.op == INSERT:
            index = {c.lower(): i for i, c in enumerate(self.cols)}
            return tuple(values[index[k.lower()]] for k in self.keys)
        return tuple(values[: len(self.keys)])


# id -> Layout, for every file: ids are content hashes, so they can be shared.
_LAYOUTS: dict[int, Layout] = {}


def _layout(conn: apsw.Connection, layout_id: int) -> Layout:
    layout = _LAYOUTS.get(layout_id)
    if layout is None:
        row = conn.execute(f"SELECT tbl, op, keys, cols, nullable FROM main.{LAYOUT_TABLE} WHERE id=?",
                           (layout_id,)).fetchone()
        if row is None:
            raise CaptureError(f"capture row with unknown layout {layout_id}")
        layout = Layout(row[0], row[1], tuple(json.loads(row[2])), tuple(json.loads(row[3])), bool(row[4]))
        _LAYOUTS[layout_id] = layout
    return layout


@dataclass(frozen=True)
class TableSpec:
    """How one user table is captured: its identifying columns and the columns of an image."""

    name: str
    keys: tuple[str, ...]
    cols: tuple[str, ...]
    nullable: bool = False
    error: str | None = None  # set when the table cannot be captured: its triggers refuse writes

    def layout(self, op: str) -> Layout:
        return Layout(self.name, op, self.keys, self.cols, self.nullable)


def table_specs(conn: apsw.Connection, kind: str = "table") -> list[TableSpec]:
    """Every user table of the main database that gets capture triggers, in schema order; with
    kind="shadow", the shadow tables of virtual tables instead (never given triggers)."""
    limit = conn.limit(apsw.SQLITE_LIMIT_COLUMN) - 2  # seq and lay
    return [
        _spec(conn, name, bool(without_rowid), limit)
        for name, without_rowid in conn.execute(
            "SELECT l.name, l.wr FROM pragma_table_list AS l JOIN main.sqlite_master AS m "
            "ON m.name = l.name AND m.type = 'table' "
            "WHERE l.schema = 'main' AND l.type = ? ORDER BY m.rowid", (kind,)
        ).fetchall()
        if not is_internal_table(name)
    ]


def _spec(conn: apsw.Connection, name: str, without_rowid: bool, limit: int) -> TableSpec:
    info = conn.execute(
        'SELECT name, type, "notnull", pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid', (name,)
    ).fetchall()
    cols = [c for c, _t, _nn, _pk, hidden in info if hidden == 0]
    pk = sorted((pk, c, decl, nn) for c, decl, nn, pk, _h in info if pk)
    error = None
    nullable = False
    if pk:
        keys = [c for _pk, c, _d, _nn in pk]
        integer_pk = len(pk) == 1 and pk[0][2].upper() == "INTEGER" and not without_rowid
        nullable = not without_rowid and not integer_pk and any(not nn for *_x, nn in pk)
    else:
        taken = {c.lower() for c, *_rest in info}
        alias = next((a for a in _ROWID_ALIASES if a not in taken), None)
        if alias is None:
            keys = []
            error = (f"table {name!r} has no PRIMARY KEY and columns named rowid, _rowid_ and oid: "
                     "replproxy cannot identify its rows")
        else:
            keys = [alias]
            cols = [alias, *cols]
    if error is None and len(keys) + len(cols) > limit:
        error = f"table {name!r} has too many columns for the capture table ({len(cols)})"
    return TableSpec(name, tuple(keys), tuple(cols), nullable, error)


def virtual_tables(conn: apsw.Connection) -> dict[str, tuple[str, ...]]:
    """Virtual tables of the main database (lower-cased name) -> their shadow tables. SQLite names
    a shadow table <virtual table>_<suffix>."""
    rows = conn.execute("SELECT name, type FROM pragma_table_list WHERE schema='main' "
                        "AND type IN ('virtual', 'shadow')").fetchall()
    vtabs = {name.lower(): [] for name, kind in rows if kind == "virtual"}
    for name, kind in rows:
        if kind != "shadow":
            continue
        owners = [v for v in vtabs if name.lower().startswith(v + "_")]
        if owners:
            vtabs[max(owners, key=len)].append(name)
    return {v: tuple(shadows) for v, shadows in vtabs.items()}


def _written_tables(conn: apsw.Connection, sql: str, params: Any) -> set[str]:
    """Tables a statement writes, including through triggers, as SQLite's authorizer reports when
    preparing it (lower-cased)."""
    found: set[str] = set()

    def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
        if code in (apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE) and isinstance(arg1, str):
            found.add(arg1.lower())
        return apsw.SQLITE_OK

    _prepare_only(conn, sql, params, authorizer)
    return found


def _prepare_only(conn: apsw.Connection, sql: str, params: Any, authorizer: Callable[..., int]) -> bool:
    """Prepare `sql` with `authorizer` and stop before it runs; False if it cannot be prepared."""
    previous = conn.authorizer
    conn.authorizer = authorizer
    cursor = conn.cursor()
    cursor.exec_trace = lambda *_args: False  # prepared, never run
    try:
        cursor.execute(sql, params, can_cache=False)
    except apsw.ExecTraceAbort:
        pass
    except apsw.Error:
        return False  # it will fail again when run, and report it
    finally:
        conn.authorizer = previous
        cursor.exec_trace = None
    return True


def _trigger_name(table: str, op: str) -> str:
    return f"{TRIGGER_PREFIX}{_NAME[op]}_{table}"


def is_capture_trigger(name: str) -> bool:
    """True for the names of replproxy's own triggers (never replicated, never compared)."""
    return name.lower().startswith(TRIGGER_PREFIX)


def _trigger_sql(spec: TableSpec, op: str) -> str:
    """The CREATE TRIGGER text as SQLite stores it in sqlite_master (without the schema name)."""
    name = _q(_trigger_name(spec.name, op))
    head = f"CREATE TRIGGER {name} AFTER {_EVENT[op]} ON {_q(spec.name)} BEGIN "
    if spec.error is not None:
        message = ("replproxy: " + spec.error).replace("'", "''")
        return head + f"SELECT RAISE(ABORT, '{message}'); END"
    layout = spec.layout(op)
    if op == INSERT:
        values = [f"NEW.{_q(c)}" for c in spec.cols]
    elif op == UPDATE:
        values = [f"OLD.{_q(k)}" for k in spec.keys] + [f"NEW.{_q(c)}" for c in spec.cols]
    else:
        values = [f"OLD.{_q(k)}" for k in spec.keys]
    columns = "".join(f", c{i}" for i in range(len(values)))
    return (head + f"INSERT INTO {CAPTURE_TABLE}(lay{columns}) VALUES ({layout.id}"
            + "".join(", " + v for v in values) + "); END")


# -- the schema as replicated ---------------------------------------------------------------------


SchemaRow = tuple[str, str, "str | None", "str | None"]


def current_schema(conn: apsw.Connection) -> list[SchemaRow]:
    """The user schema in creation order, plus the header pragmas followers must share."""
    rows: list[SchemaRow] = [
        (t, n, tb, sql)
        for t, n, tb, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM main.sqlite_master ORDER BY rowid")
        if not is_internal_table(n) and not is_internal_table(tb or "")
    ]
    for pragma in ("user_version", "application_id"):
        (value,) = conn.execute(f"PRAGMA main.{pragma}").fetchone()
        rows.append(("pragma", pragma, None, str(int(value))))
    return rows


def _stored_schema(conn: apsw.Connection) -> list[SchemaRow]:
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        f"SELECT type, name, tbl_name, sql FROM main.{SCHEMA_TABLE} ORDER BY pos")]


def _store_schema(conn: apsw.Connection, rows: Iterable[SchemaRow] | None = None) -> None:
    conn.execute(f"DELETE FROM main.{SCHEMA_TABLE}")
    conn.executemany(f"INSERT INTO main.{SCHEMA_TABLE}(type, name, tbl_name, sql) VALUES (?, ?, ?, ?)",
                     list(current_schema(conn) if rows is None else rows))


# -- triggers: what should exist, and making it so ------------------------------------------------


@dataclass
class _Plan:
    specs: list[TableSpec]
    damaged: set[str] = field(default_factory=set)  # lower-cased names of tables whose triggers are off
    extra: list[str] = field(default_factory=list)  # our triggers on no current table
    width: int = 0  # capture columns needed
    have_width: int = 0

    @property
    def clean(self) -> bool:
        return not self.damaged and not self.extra and self.width <= self.have_width


def _capture_width(conn: apsw.Connection) -> int:
    return sum(1 for (name,) in conn.execute(f"SELECT name FROM pragma_table_info('{CAPTURE_TABLE}')")
               if name.startswith("c") and name[1:].isdigit())


def _plan(conn: apsw.Connection) -> _Plan:
    specs = table_specs(conn)
    ours: dict[str, tuple[str, str, int]] = {}
    newest_user: dict[str, int] = {}
    for rowid, name, tbl, sql in conn.execute(
        "SELECT rowid, name, tbl_name, sql FROM main.sqlite_master WHERE type='trigger'"
    ):
        if is_capture_trigger(name):
            ours[name.lower()] = (tbl, sql, rowid)
        else:
            newest_user[tbl.lower()] = max(rowid, newest_user.get(tbl.lower(), 0))
    plan = _Plan(specs, have_width=_capture_width(conn))
    expected: set[str] = set()
    for spec in specs:
        for op in _OPS:
            name = _trigger_name(spec.name, op).lower()
            expected.add(name)
            have = ours.get(name)
            # Ours must be newer than every user trigger on the table: SQLite fires newest first.
            if (have is None or have[1] != _trigger_sql(spec, op)
                    or newest_user.get(spec.name.lower(), 0) > have[2]):
                plan.damaged.add(spec.name.lower())
            if spec.error is None:
                plan.width = max(plan.width, spec.layout(op).width)
    plan.extra = [name for name in ours if name not in expected]
    return plan


def _apply_plan(conn: apsw.Connection, plan: _Plan) -> None:
    for name in plan.extra:
        conn.execute(f"DROP TRIGGER IF EXISTS main.{_q(name)}")
    if plan.width > plan.have_width:
        for i in range(plan.have_width, plan.width):
            conn.execute(f"ALTER TABLE main.{CAPTURE_TABLE} ADD COLUMN c{i}")
    for spec in plan.specs:
        if spec.name.lower() not in plan.damaged:
            continue
        for op in _OPS:
            conn.execute(f"DROP TRIGGER IF EXISTS main.{_q(_trigger_name(spec.name, op))}")
        for op in _OPS:
            if spec.error is None:
                layout = spec.layout(op)
                conn.execute(
                    f"INSERT OR IGNORE INTO main.{LAYOUT_TABLE}(id, tbl, op, keys, cols, nullable) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (layout.id, layout.table, op, json.dumps(layout.keys), json.dumps(layout.cols),
                     int(layout.nullable)))
            conn.execute("CREATE TRIGGER main." + _trigger_sql(spec, op)[len("CREATE TRIGGER "):])


def sync(conn: apsw.Connection) -> None:
    """Make the capture triggers match the schema and remember the schema as replicated.
    Runs inside the caller's write transaction."""
    _apply_plan(conn, _plan(conn))
    _store_schema(conn)


def is_installed(conn: apsw.Connection) -> bool:
    return conn.execute("SELECT 1 FROM main.sqlite_master WHERE type='table' AND name=?",
                        (CAPTURE_TABLE,)).fetchone() is not None


def install_capture(conn: apsw.Connection) -> bool:
    """Create the capture tables and triggers if they are missing (inside the caller's write
    transaction); True when it installed them. The schema found is taken as already replicated,
    which holds for a new leader seeded from a file and for a promoted follower."""
    if is_installed(conn):
        return False
    for _ in conn.execute(_INSTALL_SQL):
        pass
    sync(conn)
    return True


# -- reading captured rows ------------------------------------------------------------------------


def _fetch(conn: apsw.Connection, columns: Sequence[str], rest: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """SELECT columns; TEXT that is not UTF-8 (which Python cannot decode) comes back as RawText."""
    try:
        return conn.execute(f"SELECT {', '.join(columns)} {rest}", params).fetchall()
    except UnicodeDecodeError:
        pass
    exprs = ", ".join(f"typeof({c}), CASE typeof({c}) WHEN 'text' THEN CAST({c} AS BLOB) ELSE {c} END"
                      for c in columns)
    out = []
    for row in conn.execute(f"SELECT {exprs} {rest}", params):
        values = []
        for kind, value in zip(row[0::2], row[1::2], strict=False):
            if kind == "text":
                try:
                    value = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    value = RawText(value)
            values.append(value)
        out.append(tuple(values))
    return out


# Layout -> the encoded header of its rows chunks (built once per layout).
_HEADERS: dict[Layout, bytes] = {}


def _rows_chunk(header: Layout, images: list[Sequence[Any]]) -> tuple[bytes, bytes]:
    head = _HEADERS.get(header)
    if head is None:
        values = codec.pack_values([header.table, header.op, len(header.keys), *header.keys, *header.cols])
        # Length first, so a follower can look a header it has seen up without decoding it.
        head = _HEADERS[header] = struct.pack("<I", len(values)) + values
    raw = any(type(v) is RawText for image in images for v in image)
    parts = [head]
    for image in images:
        if raw:
            parts.append(codec.pack_values([bytes(v) if isinstance(v, RawText) else v for v in image]))
            parts.append(codec.pack_values([i for i, v in enumerate(image) if isinstance(v, RawText)]))
        else:
            parts.append(codec.pack_values(image))
    return (TAG_RAW_ROWS if raw else TAG_ROWS), b"".join(parts)


def _captured_chunks(conn: apsw.Connection, after: int, null_keys: list[str] | None = None,
                     touched: set[str] | None = None, split_marks: bool = False
                     ) -> tuple[list[list[tuple[bytes, bytes]]], int]:
    """Chunks of the capture rows with seq > after, in order, one run per layout; with
    `split_marks`, a new group starts after each boundary mark. Returns (groups, last seq).
    Tables with an image whose key holds NULL are added to `null_keys`."""
    rest = f"FROM main.{CAPTURE_TABLE} WHERE seq > ? ORDER BY seq"
    try:
        rows = conn.execute(f"SELECT * {rest}", (after,)).fetchall()
    except UnicodeDecodeError:  # TEXT that is not UTF-8: read value by value
        columns = ["seq", "lay"] + [f"c{i}" for i in range(_capture_width(conn))]
        rows = _fetch(conn, columns, rest, (after,))
    groups: list[list[tuple[bytes, bytes]]] = [[]]
    last = after
    run_layout: Layout | None = None
    run_id = -1
    run: list[Sequence[Any]] = []

    def close_run() -> None:
        if run_layout is not None and run:
            groups[-1].append(_rows_chunk(run_layout, list(run)))
        run.clear()

    for row in rows:
        last = row[0]
        layout_id = row[1]
        if layout_id == MARK_LAYOUT:
            if split_marks:
                close_run()
                run_layout, run_id = None, -1
                if groups[-1]:
                    groups.append([])
            continue
        if layout_id != run_id:
            close_run()
            run_layout, run_id = _layout(conn, layout_id), layout_id
        assert run_layout is not None
        image = row[2: 2 + run_layout.width]
        if (null_keys is not None and run_layout.nullable
                and any(v is None for v in run_layout.key_of(image))):
            null_keys.append(f"{run_layout.table!r} ({', '.join(run_layout.keys)})")
        if touched is not None:
            touched.add(run_layout.table)
        run.append(image)
    close_run()
    return [g for g in groups if g], last


def _snapshot(conn: apsw.Connection, spec: TableSpec) -> list[tuple[bytes, bytes]]:
    """INSERT images of every row of a table (for tables created or changed outside the proxy, or
    whose capture was off, and for CREATE TABLE ... AS SELECT)."""
    if spec.error is not None:
        return []
    rows = _fetch(conn, [_q(c) for c in spec.cols], f"FROM main.{_q(spec.name)}")
    if not rows:
        return []
    return [_rows_chunk(spec.layout(INSERT), rows)]


# -- changes made outside the proxy ---------------------------------------------------------------


def _sql_chunk(sql: str, params: Any = None) -> tuple[bytes, bytes]:
    return TAG_SQL, codec.pack_sql(sql, params)


def _schema_diff(conn: apsw.Connection, plan: _Plan) -> list[tuple[bytes, bytes]]:
    """SQL and images that bring a follower from the stored schema to the current one, for schema
    changes made outside the proxy (whose statements were never seen). A table whose definition
    changed is dropped and re-created with all its rows; a table whose capture triggers were
    missing or out of date has its rows replaced, since changes to it may not have been captured."""
    stored = _stored_schema(conn)
    current = current_schema(conn)
    stored_map = {(t, n.lower()): (tb, sql) for t, n, tb, sql in stored}
    current_map = {(t, n.lower()): (tb, sql) for t, n, tb, sql in current}
    kinds = {n.lower(): t for n, t in conn.execute(
        "SELECT name, type FROM pragma_table_list WHERE schema='main'")}
    specs = {s.name.lower(): s for s in plan.specs}
    if "shadow" in kinds.values():
        specs.update((s.name.lower(), s) for s in table_specs(conn, "shadow"))
    chunks: list[tuple[bytes, bytes]] = []
    new_tables = {n for (t, n) in current_map if t == "table" and (t, n) not in stored_map}
    gone_tables = {n for (t, n) in stored_map if t == "table" and (t, n) not in current_map}
    changed_tables = {n for (t, n), v in current_map.items()
                      if t == "table" and (t, n) in stored_map and stored_map[(t, n)] != v}
    # Shadow tables of a virtual table are created and dropped by it; their content is copied.
    recreated = {n for n in new_tables | changed_tables if kinds.get(n) != "shadow"}
    dropped_with_table = gone_tables | changed_tables
    for (t, n), (tb, _sql) in stored_map.items():
        if t in ("table", "pragma"):
            continue
        if (tb or "").lower() in dropped_with_table:
            continue  # dropped on the follower with its table
        if current_map.get((t, n)) != (tb, _sql):
            chunks.append(_sql_chunk(f"DROP {t.upper()} IF EXISTS main.{_q(n)}"))
    for t, n, _tb, _sql in stored:
        if t == "table" and n.lower() in dropped_with_table and kinds.get(n.lower()) != "shadow":
            chunks.append(_sql_chunk(f"DROP TABLE IF EXISTS main.{_q(n)}"))
    for t, n, tb, sql in current:
        key = (t, n.lower())
        if t == "pragma":
            if stored_map.get(key) != (tb, sql):
                chunks.append(_sql_chunk(f"PRAGMA {n} = {int(sql or 0)}"))
        elif t == "table":
            name = n.lower()
            if name in recreated and sql:
                chunks.append(_sql_chunk(sql))
            if name in new_tables or name in changed_tables:
                if kinds.get(name) == "shadow":
                    chunks.append(_sql_chunk(f"DELETE FROM main.{_q(n)}"))
                if name in specs:
                    chunks.extend(_snapshot(conn, specs[name]))
            elif name in plan.damaged and name in specs:
                chunks.append(_sql_chunk(f"DELETE FROM main.{_q(n)}"))
                chunks.extend(_snapshot(conn, specs[name]))
        elif sql and (stored_map.get(key) != (tb, sql) or (tb or "").lower() in recreated):
            chunks.append(_sql_chunk(sql))
    return chunks


def _outside_groups(conn: apsw.Connection) -> list[list[tuple[bytes, bytes]]]:
    """Inside a write transaction: the payload chunks of everything committed on this leader
    outside the proxy since it was last logged, one group per log entry, in commit order; the
    capture rows are deleted and the triggers and the stored schema brought up to date."""
    groups, last = _captured_chunks(conn, 0, split_marks=True)
    plan = _plan(conn)
    diff = _schema_diff(conn, plan)
    if diff:
        if not groups:
            groups.append([])
        groups[-1].extend(diff)
    if last:
        conn.execute(f"DELETE FROM main.{CAPTURE_TABLE}")
    _apply_plan(conn, plan)
    _store_schema(conn)
    if groups:
        sequence = read_sequence(conn)
        if sequence:
            # Counters as they are now: a follower applying the last group matches the leader.
            flat = [v for name, seq in sequence.items() if not is_internal_table(name) for v in (name, seq)]
            if flat:
                groups[-1].append((TAG_SEQUENCE, codec.pack_values(flat)))
        for group in groups:
            group.insert(0, (TAG_ORIGIN, codec.pack_values(["outside"])))
    return groups


@dataclass
class _ConnState:
    """What one leader connection knows about its file, valid while nobody else commits."""

    data_version: int | None = None  # PRAGMA data_version when the capture was last found in order
    schema_version: int | None = None  # PRAGMA schema_version then, unless a transaction here changed it
    vtabs: tuple[int, dict[str, tuple[str, ...]]] | None = None  # (schema_version, virtual tables)
    in_sync: tuple[int, int, int] | None = None  # (schema_version, user_version, application_id) checked


_STATE: weakref.WeakKeyDictionary[apsw.Connection, _ConnState] = weakref.WeakKeyDictionary()


def _state(conn: apsw.Connection) -> _ConnState:
    state = _STATE.get(conn)
    if state is None:
        state = _STATE[conn] = _ConnState()
    return state


def _status(conn: apsw.Connection) -> tuple[int, int, int, int | None] | None:
    """(schema_version, user_version, application_id, highest capture seq), None if not installed."""
    try:
        row = conn.execute(_STATUS_SQL).fetchone()
    except apsw.SQLError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return row[0], row[1], row[2], row[3]


def _needs_work(conn: apsw.Connection, state: _ConnState) -> bool:
    """True when the capture holds rows committed outside the proxy, is not installed, or the
    schema changed in a way the capture does not match yet."""
    status = _status(conn)
    if status is None or status[3] is not None:
        return True
    if status[:3] == state.in_sync:
        return False
    if _plan(conn).clean and _stored_schema(conn) == current_schema(conn):
        state.in_sync = status[:3]
        return False
    return True


# -- the capture ----------------------------------------------------------------------------------


class TriggerCapture(Capture):
    """One proxy transaction: the capture rows its statements' triggers wrote, plus its DDL."""

    def __init__(self, conn: apsw.Connection, options: dict[str, Any], fmt: TriggerFormat):
        super().__init__(conn, options)
        self._chunks: list[tuple[bytes, bytes]] = []
        self._marks: list[tuple[str, int, int, bool]] = []
        self._flushed = 0  # capture rows with seq <= this are already in self._chunks
        self._resync = False  # capture triggers were dropped for a DDL that has not completed
        self._touched: set[str] = set()
        self._null_keys: list[tuple[int, str]] = []  # (chunk index, table): images keyed by NULL
        self._captured = False
        self._schema_changed = False  # by this transaction (DDL, PRAGMA, capture triggers)
        self._vtabs: dict[str, tuple[str, ...]] | None = None
        self._vtabs_written: set[str] = set()  # by the statement running now
        self._state = state = _state(conn)
        (data_version,) = conn.execute("PRAGMA data_version").fetchone()
        if data_version != state.data_version or state.schema_version is None:
            # Someone else committed since this connection last looked: an outside writer may
            # have left rows or changed the schema. Log that first, in its own entries.
            state.schema_version = None
            if _needs_work(conn, state):
                self._chunks.extend(fmt._catch_up(conn)[1])
                self._schema_changed = True
                data_version = None  # not in order until this transaction commits
            state.data_version = data_version
            version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
            if data_version is not None:
                state.schema_version = version
        else:
            version = state.schema_version  # nobody committed, and our transactions kept it
        self._start_version = version
        self._sequence = read_sequence_at(conn, self._start_version)
        self._schema_version = self._start_version

    # -- statements

    def prepare(self, stmt: StatementInfo, sql: str, params: Any) -> tuple[str, Any]:
        if self._resync:
            # The schema change before this statement failed after its triggers were dropped.
            self._sync()
        self._vtabs_written = set()
        if stmt.kind == "dml" and self._virtual_tables():
            self._check_virtual(sql, params)
        if stmt.kind == "ddl" or stmt.replicated_pragma:
            self._schema_changed = True
            # Images taken so far must be applied against the old schema.
            self._flush()
            self._schema_version = self._read_schema_version()
            if stmt.kind == "ddl":
                altered = _altered_tables(self.conn, sql, params)
                if altered:
                    # ALTER TABLE refuses to drop or rename what a trigger names: ours step aside.
                    self._resync = True
                    for table in altered:
                        for op in _OPS:
                            self.conn.execute(f"DROP TRIGGER IF EXISTS main.{_q(_trigger_name(table, op))}")
        return sql, params

    def _virtual_tables(self) -> dict[str, tuple[str, ...]]:
        """Virtual tables -> shadow tables, cached per connection while the schema stays."""
        if self._vtabs is None:
            cached = self._state.vtabs
            if not self._schema_changed and cached is not None and cached[0] == self._start_version:
                self._vtabs = cached[1]
            else:
                self._vtabs = virtual_tables(self.conn)
                if not self._schema_changed:
                    self._state.vtabs = (self._start_version, self._vtabs)
        return self._vtabs

    def _check_virtual(self, sql: str, params: Any) -> None:
        # SQLite runs no trigger on a virtual table, and triggers on FTS5's shadow tables crash
        # SQLite 3.54: a statement that writes a virtual table (itself or through a trigger) is
        # logged by copying the table's shadow tables after it.
        vtabs = self._virtual_tables()
        written = {t for t in _written_tables(self.conn, sql, params) if t in vtabs}
        for name in written:
            if not vtabs[name]:
                raise UnsafeStatementError(
                    f"virtual table {name!r} keeps no shadow tables, so the trigger format cannot "
                    "replicate writes to it")
        self._vtabs_written = written

    def _copy_virtual(self) -> None:
        self._flush()  # images of the statement's other writes come first
        # FTS5 keeps new terms in memory until a savepoint or commit: a savepoint writes them out.
        self.conn.execute("SAVEPOINT _replproxy_flush_virtual")
        self.conn.execute("RELEASE _replproxy_flush_virtual")
        vtabs = self._virtual_tables()
        specs = {s.name.lower(): s for s in table_specs(self.conn, "shadow")}
        for name in sorted(self._vtabs_written):
            for shadow in vtabs[name]:
                self._chunks.append(_sql_chunk(f"DELETE FROM main.{_q(shadow)}"))
                spec = specs.get(shadow.lower())
                if spec is not None:
                    self._chunks.extend(_snapshot(self.conn, spec))
        self._vtabs_written = set()

    def executed(self, stmt: StatementInfo, sql: str, params: Any) -> None:
        if self._vtabs_written:
            self._copy_virtual()
        if stmt.kind == "ddl":
            if self._read_schema_version() != self._schema_version or self._resync:
                created_rows = _is_create_table_as(stmt)
                if created_rows:
                    row = self.conn.execute(
                        "SELECT sql FROM main.sqlite_master WHERE type='table' AND name=?",
                        (stmt.tables_created[0],)).fetchone()
                    self._chunks.append(_sql_chunk(row[0]) if row else _sql_chunk(sql, params))
                elif self._read_schema_version() != self._schema_version:
                    self._chunks.append(_sql_chunk(sql, params))
                self._sync()
                if created_rows:
                    # CREATE TABLE ... AS SELECT fires no trigger: image the copied rows.
                    name = stmt.tables_created[0].lower()
                    for spec in table_specs(self.conn):
                        if spec.name.lower() == name:
                            self._chunks.extend(_snapshot(self.conn, spec))
                            self._touched.add(spec.name)
            self._vtabs = None
        elif stmt.replicated_pragma:
            name = (stmt.pragma or "").lower()
            (value,) = self.conn.execute(f"PRAGMA main.{name}").fetchone()
            self._chunks.append(_sql_chunk(f"PRAGMA {name} = {int(value)}"))
            _store_schema(self.conn)

    def _sync(self) -> None:
        sync(self.conn)
        self._resync = False
        self._schema_changed = True

    def _read_schema_version(self) -> int:
        return self.conn.execute("PRAGMA main.schema_version").fetchone()[0]

    def _flush(self) -> None:
        null_keys: list[str] = []
        groups, last = _captured_chunks(self.conn, self._flushed, null_keys, self._touched)
        # Refused at commit, as the row format does, unless a ROLLBACK TO takes the image away.
        self._null_keys.extend((len(self._chunks), table) for table in null_keys)
        for group in groups:
            self._chunks.extend(group)
        if last != self._flushed:
            self._captured = True
        self._flushed = last

    # -- savepoints: the capture rows are in the database and roll back with it

    def savepoint(self, name: str) -> None:
        self._marks.append((name.lower(), len(self._chunks), self._flushed, self._resync))

    def release(self, name: str) -> None:
        self._pop_to(name, keep=False)

    def rollback_to(self, name: str) -> None:
        mark = self._pop_to(name, keep=True)
        if mark is not None:
            _name, chunks, flushed, resync = mark
            del self._chunks[chunks:]
            self._null_keys = [(at, table) for at, table in self._null_keys if at < chunks]
            self._flushed, self._resync = flushed, resync
            self._vtabs = None  # a schema change may have been undone

    def _pop_to(self, name: str, keep: bool) -> tuple[str, int, int, bool] | None:
        return pop_savepoint(self._marks, name, keep)

    # -- commit

    def finish(self) -> bytes | None:
        if self._resync:
            self._sync()
        self._flush()
        if self._null_keys:
            raise CaptureError(
                f"table {self._null_keys[0][1]}: a row image has NULL in its PRIMARY KEY; followers "
                "could not identify the row, so the transaction was not committed. Give the row a "
                "key, or declare the key columns NOT NULL")
        if self._captured:
            # Logged with this entry: gone in the same transaction. If COMMIT is refused (deferred
            # foreign keys) the transaction goes on, later rows start over at seq 1, and finish()
            # runs again with the chunks kept.
            self.conn.execute(f"DELETE FROM main.{CAPTURE_TABLE}")
            self._flushed = 0
            self._captured = False
        chunks = list(self._chunks)
        schema_version = self._read_schema_version() if self._schema_changed else self._start_version
        if schema_version == self._start_version:
            sequence = read_sequence_at(self.conn, schema_version)
        else:
            sequence = read_sequence(self.conn)
        counters = sequence_chunk(self.conn, schema_version, sequence, self._sequence,
                                  self._touched, bool(chunks))
        if counters is not None:
            chunks.append(counters)
        if not chunks:
            return None
        return codec.pack_chunks(chunks)

    def close(self) -> None:
        if self._schema_changed:
            self._state.schema_version = None  # committed or rolled back: read it again


def _is_create_table_as(stmt: StatementInfo) -> bool:
    # As in the row format: a CREATE TABLE that reads a table or calls a function copied rows.
    return bool(stmt.tables_created) and (bool(stmt.tables_read) or bool(stmt.functions))


def _altered_tables(conn: apsw.Connection, sql: str, params: Any) -> list[str]:
    """Tables an ALTER TABLE statement changes, as SQLite's authorizer reports when preparing it."""
    found: list[str] = []

    def authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
        if code == apsw.SQLITE_ALTER_TABLE and arg1 == "main" and isinstance(arg2, str):
            found.append(arg2)
        return apsw.SQLITE_OK

    return found if _prepare_only(conn, sql, params, authorizer) else []


# -- the format -----------------------------------------------------------------------------------


class TriggerFormat(LogFormat):
    """Row images written by triggers into a capture table; captures writers outside the proxy."""

    # Followers apply images with their triggers disabled: the images hold what triggers did.
    follower_triggers = False
    captures_outside_writers = True

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options=dict(options or {}))
        self.name = "trigger"
        self._outside_log: OutsideLog | None = None
        self._apply_sql: dict[tuple[Any, ...], str] = {}

    def bind_outside_log(self, append: OutsideLog | None) -> None:
        """`append(conn, payload) -> lsn` adds one log entry inside the caller's transaction. With
        it, transactions committed outside the proxy are logged as entries of their own; without,
        they are logged at the head of the next transaction captured here."""
        self._outside_log = append

    def install(self, conn: apsw.Connection) -> None:
        own = conn.get_autocommit()
        if own:
            conn.execute("BEGIN IMMEDIATE")
        try:
            install_capture(conn)
        except BaseException:
            if own:
                conn.execute("ROLLBACK")
            raise
        if own:
            conn.execute("COMMIT")

    def capture(self, conn: apsw.Connection) -> Capture:
        return TriggerCapture(conn, self.options, self)

    # -- writers outside the proxy

    def outside_pending(self, conn: apsw.Connection) -> bool:
        """Whether the leader holds changes committed outside the proxy and not logged yet (or
        needs its capture installed). A read; call it outside a transaction."""
        return _needs_work(conn, _state(conn))

    def log_outside(self, conn: apsw.Connection) -> int:
        """Inside a write transaction on the leader: log what was committed outside the proxy
        through the bound appender (installing the capture if it is missing); return the number
        of entries added."""
        if self._outside_log is None:
            raise RuntimeError("no outside log bound to the trigger format")
        return self._catch_up(conn)[0]

    def _catch_up(self, conn: apsw.Connection) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Install the capture if needed, then log outside changes: (entries appended, chunks
        left for the caller to log at the head of its own entry when no appender is bound)."""
        if install_capture(conn):
            return 0, []
        groups = _outside_groups(conn)
        if self._outside_log is None:
            return 0, [chunk for group in groups for chunk in group]
        for group in groups:
            self._outside_log(conn, codec.pack_chunks(group))
        return len(groups), []

    # -- followers

    def apply(self, conn: apsw.Connection, payload: bytes) -> None:
        self.apply_many(conn, [payload])

    def apply_many(self, conn: apsw.Connection, payloads: Sequence[bytes]) -> None:
        # Consecutive INSERT images of one table, across entries, go to SQLite in one
        # executemany; everything else is applied in order as it comes.
        pending: list[Any] = []
        pending_layout: Layout | None = None

        def flush() -> None:
            nonlocal pending_layout
            if pending_layout is not None and pending:
                self._run_images(conn, pending_layout, pending, False)
            pending.clear()
            pending_layout = None

        for payload in payloads:
            for tag, data in codec.iter_chunks(payload):
                if tag == TAG_ROWS:
                    layout, images = decode_rows(data, False)
                    if layout.op == INSERT:
                        if layout != pending_layout:
                            flush()
                            pending_layout = layout
                        pending.extend(images)
                        continue
                    flush()
                    self._run_images(conn, layout, images, False)
                    continue
                flush()
                if tag == TAG_SQL:
                    sql, params, _ = codec.unpack_sql(data)
                    try:
                        for _ in conn.execute(sql, params):
                            pass
                    except apsw.Error as exc:
                        raise ApplyError(f"{sql!r} failed: {exc}", reason=str(exc)) from exc
                elif tag == TAG_RAW_ROWS:
                    layout, images = decode_rows(data, True)
                    self._run_images(conn, layout, images, True)
                elif tag == TAG_SEQUENCE:
                    apply_sequence(conn, data)
                elif tag != TAG_ORIGIN:
                    raise DecodeError(f"unknown chunk tag {tag!r}")
        flush()

    def _statement(self, layout: Layout, raw: tuple[int, ...] = ()) -> str:
        key = (layout, raw)
        sql = self._apply_sql.get(key)
        if sql is None:
            sql = self._apply_sql[key] = _apply_statement(layout, raw)
        return sql

    def _run_images(self, conn: apsw.Connection, layout: Layout, images: list[Any], raw: bool) -> None:
        try:
            if layout.op == INSERT and not raw:
                conn.executemany(self._statement(layout), images)
                return
            for image, raw_at in images if raw else ((i, ()) for i in images):
                values = list(image)
                if layout.op == UPDATE:
                    # The image is old key + new row; the statement binds new row, then old key.
                    count = len(layout.keys)
                    values = values[count:] + values[:count]
                    raw_at = tuple(i - count if i >= count else len(layout.cols) + i for i in raw_at)
                conn.execute(self._statement(layout, tuple(raw_at)), values)
                if layout.op != INSERT and conn.changes() != 1:
                    key = layout.key_of(image)
                    reason = ("the row to change does not exist" if conn.changes() == 0
                              else "the key matches several rows")
                    raise ApplyError(f"conflict on table {layout.table!r} at key "
                                     f"{key[0] if len(key) == 1 else key!r}: {reason}",
                                     table=layout.table, reason=reason)
        except apsw.Error as exc:
            raise ApplyError(f"row images of table {layout.table!r} could not be applied: {exc}",
                             table=layout.table, reason=str(exc)) from exc

    def invert(self, payload: bytes) -> bytes:
        # The images lack what an exact undo needs: UPDATE and DELETE images hold the old key
        # only, and an INSERT image may hide the rows its REPLACE deleted (no delete trigger fires
        # for those unless recursive_triggers is on). Only counters and marks carry no change.
        images: Layout | None = None
        for tag, data in codec.iter_chunks(payload):
            if tag in (TAG_ROWS, TAG_RAW_ROWS):
                layout = decode_rows(data, tag == TAG_RAW_ROWS)[0]
                if images is None or (images.op == INSERT and layout.op != INSERT):
                    images = layout  # name missing old values first: the plainer reason
            elif tag == TAG_SQL:
                sql, _params, _ = codec.unpack_sql(data)
                raise not_invertible(self.name, sql_chunk_reason(sql))
            elif tag not in (TAG_SEQUENCE, TAG_ORIGIN):
                raise DecodeError(f"unknown chunk tag {tag!r}")
        if images is not None:
            raise not_invertible(self.name, _not_invertible_images(images))
        return codec.pack_chunks([])

    def decode(self, payload: bytes, schema: SchemaLookup | None = None) -> list[Event]:
        events: list[Event] = []
        for tag, data in codec.iter_chunks(payload):
            if tag == TAG_SQL:
                sql, params, _ = codec.unpack_sql(data)
                events.append(Event("SQL", sql=sql, params=params))
            elif tag in (TAG_ROWS, TAG_RAW_ROWS):
                layout, images = decode_rows(data, tag == TAG_RAW_ROWS)
                for item in images:
                    image = item[0] if tag == TAG_RAW_ROWS else item
                    events.append(_event(layout, image))
            elif tag == TAG_SEQUENCE:
                flat, _ = codec.unpack_values(data)
                for name, seq in zip(flat[0::2], flat[1::2], strict=False):
                    events.append(Event("SEQUENCE", table=name, new={"seq": seq}))
            elif tag == TAG_ORIGIN:
                pass
            else:
                raise DecodeError(f"unknown chunk tag {tag!r}")
        return events


def _not_invertible_images(layout: Layout) -> str:
    table = repr(layout.table)
    if layout.op == UPDATE:
        return (f"its UPDATE images of table {table} hold the old key and the new row, not the old "
                "values the undo would have to write back")
    if layout.op == DELETE:
        return f"its DELETE images of table {table} hold the key of each deleted row, not its values"
    return (f"its INSERT images of table {table} cannot show whether the insert replaced a row "
            "(INSERT OR REPLACE deletes the rows in its way without a delete image), so deleting "
            "the inserted rows is not an exact undo")


def is_outside_entry(payload: bytes) -> bool:
    """True for an entry logging transactions committed outside the proxy."""
    return any(tag == TAG_ORIGIN for tag, _ in codec.iter_chunks(payload))


# Encoded header -> Layout, on followers.
_DECODED_HEADERS: dict[bytes, Layout] = {}


def decode_rows(data: bytes, raw: bool) -> tuple[Layout, list[Any]]:
    """(layout, images) of a rows chunk; with `raw`, each image is (values, raw text positions)."""
    try:
        (size,) = struct.unpack_from("<I", data, 0)
    except struct.error:
        raise DecodeError("truncated row images header") from None
    pos = 4 + size
    head_bytes = data[4:pos]
    layout = _DECODED_HEADERS.get(head_bytes)
    if layout is None:
        head, end = codec.unpack_values(head_bytes, 0)
        try:
            table, op, nkeys = head[0], head[1], int(head[2])
            keys, cols = tuple(head[3: 3 + nkeys]), tuple(head[3 + nkeys:])
        except (IndexError, TypeError, ValueError):
            raise DecodeError("corrupt row images header") from None
        if op not in _OPS or end != size:
            raise DecodeError(f"corrupt row images header (operation {op!r})")
        layout = Layout(table, op, keys, cols)
        if len(_DECODED_HEADERS) < 4096:
            _DECODED_HEADERS[head_bytes] = layout
    images: list[Any] = []
    end = len(data)
    while pos < end:
        values, pos = codec.unpack_values(data, pos)
        if len(values) != layout.width:
            raise DecodeError(f"row image of {table!r} has {len(values)} values, expected {layout.width}")
        if raw:
            positions, pos = codec.unpack_values(data, pos)
            images.append((values, tuple(positions)))
        else:
            images.append(values)
    return layout, images


def _apply_statement(layout: Layout, raw: tuple[int, ...]) -> str:
    def param(i: int) -> str:
        return "CAST(? AS TEXT)" if i in raw else "?"

    table = f"main.{_q(layout.table)}"
    if layout.op == INSERT:
        cols = ", ".join(_q(c) for c in layout.cols)
        marks = ", ".join(param(i) for i in range(len(layout.cols)))
        return f"INSERT OR REPLACE INTO {table}({cols}) VALUES ({marks})"
    if layout.op == UPDATE:
        sets = ", ".join(f"{_q(c)} = {param(i)}" for i, c in enumerate(layout.cols))
        where = " AND ".join(f"{_q(k)} IS {param(len(layout.cols) + i)}" for i, k in enumerate(layout.keys))
        return f"UPDATE OR REPLACE {table} SET {sets} WHERE {where}"
    where = " AND ".join(f"{_q(k)} IS {param(i)}" for i, k in enumerate(layout.keys))
    return f"DELETE FROM {table} WHERE {where}"


def _event(layout: Layout, image: Sequence[Any]) -> Event:
    def values(names: Sequence[str], vals: Sequence[Any]) -> dict[str, Any]:
        return dict(zip(names, vals, strict=False))

    if layout.op == INSERT:
        return Event("INSERT", table=layout.table, new=values(layout.cols, image))
    if layout.op == UPDATE:
        count = len(layout.keys)
        return Event("UPDATE", table=layout.table, old=values(layout.keys, image[:count]),
                     new=values(layout.cols, image[count:]))
    return Event("DELETE", table=layout.table, old=values(layout.keys, image))
