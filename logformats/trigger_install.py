"""The trigger format's objects in the leader database: capture tables, layouts, triggers.

`_replproxy_capture` receives the row images the triggers write, `_replproxy_capture_layout` says
what the values of each capture row are (`Layout`), `_replproxy_capture_schema` holds the user
schema as the log has replicated it. `sync` makes the triggers match the schema (replproxy's are
always the newest on their table) and `install_capture` creates all of it (see trigger.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from .base import CaptureError, is_internal_table
from .row_keys import is_rowid_alias

CAPTURE_TABLE = "_replproxy_capture"
LAYOUT_TABLE = "_replproxy_capture_layout"
SCHEMA_TABLE = "_replproxy_capture_schema"
TRIGGER_PREFIX = "_replproxy_"

# A capture row with this layout is a transaction boundary mark written by a cooperating outside
# program (`INSERT INTO _replproxy_capture(lay) VALUES (0)` before COMMIT).
MARK_LAYOUT = 0

# Operations of a layout (and of a trigger).
INSERT, UPDATE, DELETE = "I", "U", "D"
OPS = (INSERT, UPDATE, DELETE)
_EVENT = {INSERT: "INSERT", UPDATE: "UPDATE", DELETE: "DELETE"}
_NAME = {INSERT: "ins", UPDATE: "upd", DELETE: "del"}
_ROWID_ALIASES = ("rowid", "_rowid_", "oid")

_INSTALL_SQL = f"""
CREATE TABLE IF NOT EXISTS main.{CAPTURE_TABLE}(seq INTEGER PRIMARY KEY, lay INTEGER NOT NULL,
    c0, c1, c2, c3, c4, c5, c6, c7);
CREATE TABLE IF NOT EXISTS main.{LAYOUT_TABLE}(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL,
    op TEXT NOT NULL, keys TEXT NOT NULL, cols TEXT NOT NULL, nullable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS main.{SCHEMA_TABLE}(pos INTEGER PRIMARY KEY, type TEXT NOT NULL,
    name TEXT NOT NULL, tbl_name TEXT, sql TEXT);
"""


def quote(name: str) -> str:
    """An identifier as SQL text, always quoted."""
    return '"' + name.replace('"', '""') + '"'


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


def stored_layout(conn: apsw.Connection, layout_id: int) -> Layout:
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
        # What SQLite says, not the declared text: INTEGER PRIMARY KEY DESC is no rowid alias.
        alias = is_rowid_alias(conn, name, without_rowid)
        nullable = not without_rowid and not alias and any(not nn for *_x, nn in pk)
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


def trigger_name(table: str, op: str) -> str:
    return f"{TRIGGER_PREFIX}{_NAME[op]}_{table}"


def is_capture_trigger(name: str) -> bool:
    """True for the names of replproxy's own triggers (never replicated, never compared)."""
    return name.lower().startswith(TRIGGER_PREFIX)


def _trigger_sql(spec: TableSpec, op: str) -> str:
    """The CREATE TRIGGER text as SQLite stores it in sqlite_master (without the schema name)."""
    name = quote(trigger_name(spec.name, op))
    head = f"CREATE TRIGGER {name} AFTER {_EVENT[op]} ON {quote(spec.name)} BEGIN "
    if spec.error is not None:
        message = ("replproxy: " + spec.error).replace("'", "''")
        return head + f"SELECT RAISE(ABORT, '{message}'); END"
    layout = spec.layout(op)
    if op == INSERT:
        values = [f"NEW.{quote(c)}" for c in spec.cols]
    elif op == UPDATE:
        values = [f"OLD.{quote(k)}" for k in spec.keys] + [f"NEW.{quote(c)}" for c in spec.cols]
    else:
        values = [f"OLD.{quote(k)}" for k in spec.keys]
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


def stored_schema(conn: apsw.Connection) -> list[SchemaRow]:
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        f"SELECT type, name, tbl_name, sql FROM main.{SCHEMA_TABLE} ORDER BY pos")]


def store_schema(conn: apsw.Connection, rows: Iterable[SchemaRow] | None = None) -> None:
    conn.execute(f"DELETE FROM main.{SCHEMA_TABLE}")
    conn.executemany(f"INSERT INTO main.{SCHEMA_TABLE}(type, name, tbl_name, sql) VALUES (?, ?, ?, ?)",
                     list(current_schema(conn) if rows is None else rows))


# -- triggers: what should exist, and making it so ------------------------------------------------


@dataclass
class TriggerPlan:
    specs: list[TableSpec]
    damaged: set[str] = field(default_factory=set)  # lower-cased names of tables whose triggers are off
    extra: list[str] = field(default_factory=list)  # our triggers on no current table
    width: int = 0  # capture columns needed
    have_width: int = 0

    @property
    def clean(self) -> bool:
        return not self.damaged and not self.extra and self.width <= self.have_width


def capture_width(conn: apsw.Connection) -> int:
    return sum(1 for (name,) in conn.execute(f"SELECT name FROM pragma_table_info('{CAPTURE_TABLE}')")
               if name.startswith("c") and name[1:].isdigit())


def plan_triggers(conn: apsw.Connection) -> TriggerPlan:
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
    plan = TriggerPlan(specs, have_width=capture_width(conn))
    expected: set[str] = set()
    for spec in specs:
        for op in OPS:
            name = trigger_name(spec.name, op).lower()
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


def apply_plan(conn: apsw.Connection, plan: TriggerPlan) -> None:
    for name in plan.extra:
        conn.execute(f"DROP TRIGGER IF EXISTS main.{quote(name)}")
    if plan.width > plan.have_width:
        for i in range(plan.have_width, plan.width):
            conn.execute(f"ALTER TABLE main.{CAPTURE_TABLE} ADD COLUMN c{i}")
    for spec in plan.specs:
        if spec.name.lower() not in plan.damaged:
            continue
        for op in OPS:
            conn.execute(f"DROP TRIGGER IF EXISTS main.{quote(trigger_name(spec.name, op))}")
        for op in OPS:
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
    apply_plan(conn, plan_triggers(conn))
    store_schema(conn)


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


