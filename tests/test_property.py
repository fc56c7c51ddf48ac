"""Property: whatever a client does through the proxy, the followers end up identical to the leader.

A hypothesis state machine drives one proxy connection on a fresh cluster per example with random
schema changes (CREATE TABLE in many shapes, ALTER TABLE, DROP TABLE, CREATE/DROP INDEX), random
writes (INSERT, UPSERT, INSERT ... SELECT, UPDATE, DELETE, with conflict clauses) of random values
(integers up to 64 bits, floats incl. infinities and NaN, unicode text, blobs, NULL), inside
transactions that are committed or rolled back, with nested SAVEPOINTs released or rolled back to.
It keeps a model of the schema (restored on rollback) so that statements are valid against it;
errors SQLite raises for the data (constraints) are tolerated, as long as the proxy's idea of the
transaction matches the leader's. Between transactions and at the end, the followers must catch up
and be identical, both by `proxy.verify` and by comparing every table row by row here.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import pytest
from helpers import examples
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import proxy

TABLE_NAMES = ["t0", "t1", "t2", 'we"ird täble']
COLUMN_NAMES = ["a", "b", "c", "d", "sp ace", "ü", 'q"t', "e"]
TYPES = ["INTEGER", "INT", "REAL", "TEXT", "BLOB", "NUMERIC", "", "VARCHAR(5)", "DOUBLE"]
SAVEPOINTS = ["s1", "s2", "S1"]  # "S1" is "s1": savepoint names are case-insensitive

INTS = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 2**53 + 1]),
)
FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 0.1, 1e308, float("inf"), 5e-324]))
TEXTS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", "a", "A", "é", "日本語", "\x00", "a\x00b", "NULL", "1", "1.5", " 2 ", "🙂"]),
)
BLOBS = st.one_of(st.binary(max_size=10), st.sampled_from([b"", b"\x00", b"1"]))
VALUES = st.one_of(st.none(), INTS, FLOATS, TEXTS, BLOBS)
LITERALS = st.one_of(
    st.none().map(lambda _: "NULL"),
    st.integers(-1000, 1000).map(str),
    st.sampled_from(["1.5", "-0.25", "'x'", "'it''s'", "'ünï'", "X'00FF'", "''", "CURRENT_DATE"]),
)

# SQLite errors that depend on the data, not on the statement being wrong for the schema.
DATA_ERRORS = (proxy.IntegrityError, proxy.DataError)


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- the model ------------------------------------------------------------------------------------


@dataclass
class Table:
    name: str
    columns: list[str]
    pk: list[str]
    rowid: bool  # False: WITHOUT ROWID
    autoincrement: bool = False

    def has(self, column: str) -> bool:
        return column.lower() in (c.lower() for c in self.columns)


@dataclass
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)
    indexes: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)  # name -> table, columns

    def copy(self) -> Schema:
        return copy.deepcopy(self)

    def table_names_lower(self) -> set[str]:
        return {n.lower() for n in self.tables}


# -- comparing nodes directly (plain apsw connections, not the proxy) -----------------------------
# Not Python's sqlite3: a second copy of SQLite in one process breaks the other's POSIX locks.


def _canon(value: Any) -> tuple[str, Any]:
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def node_content(path: Path) -> dict[str, Any]:
    """Schema, AUTOINCREMENT counters and every user table's rows (sorted) of one node file."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    conn.set_busy_timeout(10_000)
    try:
        conn.execute("BEGIN")
        schema = sorted(
            r for r in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
            if not r[2].lower().startswith(("_replproxy_", "sqlite_"))
            and not r[1].lower().startswith("_replproxy_")  # replproxy's own triggers (leader only)
        )
        try:
            sequence = sorted(conn.execute("SELECT name, seq FROM sqlite_sequence"))
        except apsw.SQLError:
            sequence = []
        tables: dict[str, list[Any]] = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            if name.lower().startswith(("_replproxy_", "sqlite_")):
                continue
            info = conn.execute("SELECT pk FROM pragma_table_info(?)", (name,)).fetchall()
            (without_rowid,) = conn.execute("SELECT wr FROM pragma_table_list(?)", (name,)).fetchone()
            # Text is read as bytes: SQLite keeps text that is not UTF-8 (upper(X'80')) as it is.
            columns = [q(c) for (c,) in conn.execute("SELECT name FROM pragma_table_xinfo(?)", (name,))]
            values = [f"typeof({c}), CASE typeof({c}) WHEN 'text' THEN CAST({c} AS BLOB) ELSE {c} END"
                      for c in columns]
            # Tables without a PRIMARY KEY are replicated by rowid: their rowids must match too.
            if not without_rowid and not any(pk for (pk,) in info):
                values.insert(0, "'rowid', rowid")
            rows = [tuple(_canon(v) for v in row)
                    for row in conn.execute(f"SELECT {', '.join(values)} FROM {q(name)}")]
            tables[name] = sorted(rows, key=repr)
        conn.execute("COMMIT")
        return {"schema": schema, "sequence": sequence, "tables": tables}
    finally:
        conn.close()


def check_replicated(cluster: proxy.Cluster) -> None:
    """Followers caught up, `verify` finds nothing, and every table matches row by row."""
    try:
        cluster.wait_for_catchup(20)
    except proxy.ReplicationTimeout as exc:
        status = "\n".join(f"  {s.name}: {s.state} at {s.applied_lsn} {s.error or ''}" for s in cluster.status())
        raise AssertionError(f"followers did not catch up: {exc}\n{status}") from None
    report = proxy.verify(cluster)
    assert report.identical, "verify found differences:\n" + "\n".join(
        f"  {d.node} {d.object}: {d.detail}" for d in report.differences)
    leader = node_content(cluster.path_of(cluster.leader))
    for name in cluster.followers:
        follower = node_content(cluster.path_of(name))
        assert follower["schema"] == leader["schema"], f"{name} schema differs"
        assert follower["sequence"] == leader["sequence"], (
            f"{name} sqlite_sequence {follower['sequence']} (leader {leader['sequence']})")
        assert set(follower["tables"]) == set(leader["tables"]), f"{name} tables differ"
        for table, rows in leader["tables"].items():
            assert follower["tables"][table] == rows, (
                f"{name} table {table!r} differs:\n  leader   {rows}\n  follower {follower['tables'][table]}")


# -- the state machine ----------------------------------------------------------------------------


class ProxyMachine(RuleBasedStateMachine):
    base_dir: Path = Path(tempfile.gettempdir())
    row_image = "full"

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="prop-", dir=self.base_dir))
        self.cluster = proxy.Cluster.init(self.directory / "c", followers=2, row_image=self.row_image,
                                          synchronous="off")  # fsync proves nothing here
        self.conn = proxy.connect(self.cluster.directory, cluster=self.cluster)
        self.schema = Schema()
        self.txn: Schema | None = None  # the schema when the open transaction began
        self.by_savepoint = False
        self.savepoints: list[tuple[str, Schema]] = []
        self.next_index = 0
        self.statements = 0

    def teardown(self) -> None:
        event(f"statements per example: {self.statements // 10 * 10}+")
        try:
            if self.conn.in_transaction:
                note("conn.commit()  -- end of example")
                try:
                    self.conn.commit()
                except proxy.IntegrityError as exc:  # refused and rolled back: see _ended
                    note(f"    -> {type(exc).__name__}: {exc}")
                assert not self.conn.in_transaction
            check_replicated(self.cluster)
        finally:
            self.conn.close()
            self.cluster.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- running statements and keeping the model's transaction in step ---------------------------

    def run(self, sql: str, params: Any = (), *, many: bool = False,
            tolerate: tuple[type[BaseException], ...] = DATA_ERRORS, control: bool = False) -> bool:
        """Run one statement; True when it succeeded. Data errors are tolerated.

        `control`: a transaction-control statement, whose caller updates the model's transaction."""
        was = self.txn is not None
        assert was == self.conn.in_transaction
        before = self.schema.copy()
        shown = list(params) if many else params
        note(f"{'executemany' if many else 'execute'}({sql!r}, {shown!r})")
        self.statements += 1
        try:
            if many:
                self.conn.executemany(sql, params)
            else:
                cur = self.conn.execute(sql, params)
                if cur.description is not None:
                    cur.fetchall()
            ok = True
        except proxy.Error as exc:
            # SQLITE_FULL: AUTOINCREMENT found no rowid left above 2**63-1 ("database or disk is full").
            # RETURNING a text that is not UTF-8 is an OperationalError, as in sqlite3: a data error.
            undecodable = isinstance(exc, proxy.OperationalError) and str(exc).startswith("Could not decode")
            if (not isinstance(exc, tolerate) and getattr(exc, "sqlite_errorname", None) != "SQLITE_FULL"
                    and not (undecodable and proxy.DataError in tolerate)):
                raise
            note(f"    -> {type(exc).__name__}: {exc}")
            event(f"statement failed: {type(exc).__name__}")
            ok = False
        event(f"statement {sql.split()[0]} {'ok' if ok else 'failed'}")
        now = self.conn.in_transaction
        if now and not was:
            self.txn = before  # DML opened a transaction, as in Python's sqlite3
            self.by_savepoint = False
        elif was and not now and not control:
            # Only an error can end the transaction by itself (INSERT OR ROLLBACK): it was rolled back.
            assert not ok, f"{sql!r} ended the transaction although it succeeded"
            self._rolled_back()
        return ok

    def _rolled_back(self) -> None:
        assert self.txn is not None
        self.schema = self.txn
        self.txn = None
        self.savepoints = []

    def _committed(self) -> None:
        self.txn = None
        self.savepoints = []

    @invariant()
    def transaction_state_agrees(self) -> None:
        # A deferred BEGIN followed by reads runs on a follower's snapshot, not on the leader.
        leader_in_txn = not self.conn._leader.get_autocommit()
        assert self.conn.in_transaction == (self.txn is not None), (
            f"proxy in_transaction={self.conn.in_transaction}, model={self.txn is not None}")
        assert not leader_in_txn or self.conn.in_transaction, "leader in a transaction the proxy lost"

    @invariant()
    def schema_as_modelled(self) -> None:
        # Read through the proxy: outside a transaction this goes to a follower that has our writes.
        cur = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                "AND name NOT LIKE 'sqlite%' AND name NOT LIKE '\\_replproxy%' ESCAPE '\\'")
        assert sorted(r[0] for r in cur.fetchall()) == sorted(self.schema.tables)
        for table in self.schema.tables.values():
            cur = self.conn.execute("SELECT name FROM pragma_table_info(?)", (table.name,))
            assert [r[0] for r in cur.fetchall()] == table.columns, f"columns of {table.name}"

    # -- drawing pieces of statements -------------------------------------------------------------

    def _table(self, data: st.DataObject) -> Table:
        return data.draw(st.sampled_from(sorted(self.schema.tables.values(), key=lambda t: t.name)))

    def _where(self, data: st.DataObject, table: Table) -> tuple[str, list[Any]]:
        kinds = ["all", "is", "cmp", "offset", "typeof", "in"]
        if table.rowid:
            kinds.append("rowid")
        kind = data.draw(st.sampled_from(kinds))
        column = q(data.draw(st.sampled_from(table.columns)))
        if kind == "all":
            return "", []
        if kind == "is":
            return f" WHERE {column} IS ?", [data.draw(VALUES)]
        if kind == "cmp":
            op = data.draw(st.sampled_from(["<", ">", "<=", ">=", "<>"]))
            return f" WHERE {column} {op} ?", [data.draw(VALUES)]
        if kind == "offset":  # hit a row that exists
            return (f" WHERE {column} IS (SELECT {column} FROM {q(table.name)} LIMIT 1 OFFSET ?)",
                    [data.draw(st.integers(0, 5))])
        if kind == "typeof":
            return (f" WHERE typeof({column}) = ?",
                    [data.draw(st.sampled_from(["null", "integer", "real", "text", "blob"]))])
        if kind == "in":
            return f" WHERE {column} IN (?, ?)", [data.draw(VALUES), data.draw(VALUES)]
        return " WHERE rowid % ? = ?", [data.draw(st.integers(1, 4)), data.draw(st.integers(0, 3))]

    def _returning(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(["", "", "", " RETURNING *"]))

    # -- schema changes ---------------------------------------------------------------------------

    @initialize(data=st.data())
    def first_table(self, data: st.DataObject) -> None:
        self.create_table(data)

    @precondition(lambda self: len(self.schema.tables) < len(TABLE_NAMES))
    @rule(data=st.data())
    def create_table(self, data: st.DataObject) -> None:
        taken = self.schema.table_names_lower()
        name = data.draw(st.sampled_from([n for n in TABLE_NAMES if n.lower() not in taken]))
        if self.schema.tables and data.draw(st.integers(0, 5)) == 0:
            # CREATE TABLE ... AS SELECT: the copied rows are captured as row images.
            source = self._table(data)
            sql = f"CREATE TABLE {q(name)} AS SELECT * FROM {q(source.name)}"
            if data.draw(st.booleans()):
                sql += f" WHERE {q(source.columns[0])} IS NOT NULL"
            if self.run(sql):
                self.schema.tables[name] = Table(name, list(source.columns), [], rowid=True)
            return
        columns = data.draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=1, max_size=4,
                                     unique_by=str.lower))
        types = [data.draw(st.sampled_from(TYPES)) for _ in columns]
        pk_kind = data.draw(st.sampled_from(["none", "ipk", "single", "composite"]))
        if pk_kind == "composite" and len(columns) < 2:
            pk_kind = "single"
        without_rowid = pk_kind != "none" and data.draw(st.booleans())
        autoincrement = pk_kind == "ipk" and not without_rowid and data.draw(st.booleans())
        pk_at = data.draw(st.integers(0, len(columns) - 1))
        if pk_kind == "ipk":
            types[pk_at] = "INTEGER"
        pk: list[str] = []
        defs = []
        for index, (column, type_) in enumerate(zip(columns, types, strict=True)):
            text = f"{q(column)} {type_}".rstrip()
            if pk_kind in ("ipk", "single") and index == pk_at:
                text += " PRIMARY KEY" + (" AUTOINCREMENT" if autoincrement else "")
                if pk_kind == "single" and data.draw(st.booleans()):
                    text += " NOT NULL"
                pk = [column]
            else:
                option = data.draw(st.sampled_from(["", "", "", "notnull", "default", "unique", "nocase"]))
                if option == "notnull":
                    text += " NOT NULL DEFAULT " + data.draw(LITERALS.filter(lambda v: v != "NULL"))
                elif option == "default":
                    text += " DEFAULT " + data.draw(LITERALS)
                elif option == "unique":
                    text += " UNIQUE"
                elif option == "nocase":
                    text += " COLLATE NOCASE"
            defs.append(text)
        if pk_kind == "composite":
            pk = data.draw(st.lists(st.sampled_from(columns), min_size=2, max_size=min(3, len(columns)),
                                    unique=True))
            if data.draw(st.booleans()):
                # Rowid tables accept NULL in key columns (a SQLite quirk) unless declared NOT NULL.
                defs = [d + " NOT NULL" if c in pk else d for c, d in zip(columns, defs, strict=True)]
            defs.append(f"PRIMARY KEY({', '.join(q(c) for c in pk)})")
        sql = f"CREATE TABLE {q(name)}({', '.join(defs)})" + (" WITHOUT ROWID" if without_rowid else "")
        assert self.run(sql, tolerate=())
        self.schema.tables[name] = Table(name, columns, pk, rowid=not without_rowid,
                                         autoincrement=autoincrement)

    @precondition(lambda self: self.schema.tables)
    @rule(data=st.data())
    def drop_table(self, data: st.DataObject) -> None:
        table = self._table(data)
        assert self.run(f"DROP TABLE {q(table.name)}", tolerate=())
        del self.schema.tables[table.name]
        for index, (owner, _cols) in list(self.schema.indexes.items()):
            if owner == table.name:
                del self.schema.indexes[index]

    @precondition(lambda self: self.schema.tables)
    @rule(data=st.data())
    def alter_table(self, data: st.DataObject) -> None:
        table = self._table(data)
        action = data.draw(st.sampled_from(["add", "add", "add", "drop", "rename_column", "rename"]))
        free = [c for c in COLUMN_NAMES + ["x1", "x2"] if not table.has(c)]
        if action == "add" and free:
            column = data.draw(st.sampled_from(free))
            text = f"{q(column)} {data.draw(st.sampled_from(TYPES))}".rstrip()
            option = data.draw(st.sampled_from(["", "default", "notnull", "nocase"]))
            if option == "default":
                text += " DEFAULT " + data.draw(LITERALS.filter(lambda v: v != "CURRENT_DATE"))
            elif option == "notnull":
                text += " NOT NULL DEFAULT " + data.draw(st.sampled_from(["0", "'z'", "2.5", "X'01'"]))
            elif option == "nocase":
                text += " COLLATE NOCASE"
            if self.run(f"ALTER TABLE {q(table.name)} ADD COLUMN {text}", tolerate=()):
                table.columns.append(column)
        elif action == "drop" and len(table.columns) > 1:
            column = data.draw(st.sampled_from(table.columns))
            indexed = any(owner == table.name and column.lower() in cols
                          for owner, cols in self.schema.indexes.values())
            # SQLite refuses to drop key, UNIQUE and indexed columns: an OperationalError is expected.
            expect_refusal = column in table.pk or indexed
            ok = self.run(f"ALTER TABLE {q(table.name)} DROP COLUMN {q(column)}",
                          tolerate=(proxy.OperationalError,))
            if ok:
                assert not expect_refusal
                table.columns.remove(column)
        elif action == "rename_column" and free:
            column = data.draw(st.sampled_from(table.columns))
            new = data.draw(st.sampled_from(free))
            assert self.run(f"ALTER TABLE {q(table.name)} RENAME COLUMN {q(column)} TO {q(new)}", tolerate=())
            table.columns[table.columns.index(column)] = new
            table.pk = [new if c == column else c for c in table.pk]
            for index, (owner, cols) in list(self.schema.indexes.items()):
                if owner == table.name and column.lower() in cols:
                    self.schema.indexes[index] = (owner, (cols - {column.lower()}) | {new.lower()})
        elif action == "rename":
            taken = self.schema.table_names_lower()
            free_names = [n for n in TABLE_NAMES if n.lower() not in taken]
            if free_names:
                new = data.draw(st.sampled_from(free_names))
                assert self.run(f"ALTER TABLE {q(table.name)} RENAME TO {q(new)}", tolerate=())
                del self.schema.tables[table.name]
                for index, (owner, cols) in list(self.schema.indexes.items()):
                    if owner == table.name:
                        self.schema.indexes[index] = (new, cols)
                table.name = new
                self.schema.tables[new] = table

    @precondition(lambda self: self.schema.tables)
    @rule(data=st.data())
    def index(self, data: st.DataObject) -> None:
        if self.schema.indexes and data.draw(st.integers(0, 3)) == 0:
            name = data.draw(st.sampled_from(sorted(self.schema.indexes)))
            assert self.run(f"DROP INDEX {q(name)}", tolerate=())
            del self.schema.indexes[name]
            return
        table = self._table(data)
        columns = data.draw(st.lists(st.sampled_from(table.columns), min_size=1, max_size=3, unique=True))
        parts = []
        for column in columns:
            shape = data.draw(st.sampled_from(["{}", "{} DESC", "{} COLLATE NOCASE", "lower({})"]))
            parts.append(shape.format(q(column)))
        unique = data.draw(st.booleans())
        name = f"ix {self.next_index}"
        self.next_index += 1
        sql = f"CREATE {'UNIQUE ' if unique else ''}INDEX {q(name)} ON {q(table.name)}({', '.join(parts)})"
        if data.draw(st.booleans()):
            sql += f" WHERE {q(columns[0])} IS NOT NULL"
        if self.run(sql):  # a UNIQUE index over duplicates fails: tolerated
            self.schema.indexes[name] = (table.name, frozenset(c.lower() for c in columns))

    # -- writes -----------------------------------------------------------------------------------

    @precondition(lambda self: self.schema.tables)
    @rule(data=st.data())
    def insert(self, data: st.DataObject) -> None:
        table = self._table(data)
        verb = data.draw(st.sampled_from(["INSERT", "INSERT", "INSERT OR IGNORE", "INSERT OR REPLACE",
                                          "REPLACE", "INSERT OR ABORT", "INSERT OR FAIL",
                                          "INSERT OR ROLLBACK"]))
        choices = list(table.columns) + (["rowid"] if table.rowid and not table.pk else [])
        columns = data.draw(st.lists(st.sampled_from(choices), max_size=len(choices), unique=True))
        if not columns:
            self.run(f"{verb} INTO {q(table.name)} DEFAULT VALUES")
            return
        target = f"{q(table.name)}({', '.join(q(c) if c != 'rowid' else c for c in columns)})"
        shape = data.draw(st.sampled_from(["values", "values", "many", "select", "upsert"]))
        width = len(columns)
        if shape == "many":
            rows = data.draw(st.lists(st.tuples(*[VALUES] * width), min_size=1, max_size=4))
            self.run(f"{verb} INTO {target} VALUES ({', '.join('?' * width)})", rows, many=True)
        elif shape == "select":
            source = self._table(data)
            picked = [q(data.draw(st.sampled_from(source.columns))) for _ in range(width)]
            self.run(f"{verb} INTO {target} SELECT {', '.join(picked)} FROM {q(source.name)} LIMIT ?",
                     [data.draw(st.integers(0, 4))])
        else:
            rows = data.draw(st.lists(st.tuples(*[VALUES] * width), min_size=1, max_size=3))
            values = ", ".join("(" + ", ".join("?" * width) + ")" for _ in rows)
            params = [v for row in rows for v in row]
            sql = f"{verb} INTO {target} VALUES {values}"
            if shape == "upsert" and verb == "INSERT":
                real = [c for c in columns if c != "rowid"]
                if real and data.draw(st.booleans()):
                    sets = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in real)
                    sql += f" ON CONFLICT DO UPDATE SET {sets}"
                else:
                    sql += " ON CONFLICT DO NOTHING"
            self.run(sql + self._returning(data), params)

    @precondition(lambda self: self.schema.tables)
    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        table = self._table(data)
        verb = data.draw(st.sampled_from(["UPDATE", "UPDATE", "UPDATE OR IGNORE", "UPDATE OR REPLACE",
                                          "UPDATE OR ROLLBACK"]))
        sets, params = [], []
        if table.rowid and not table.pk and data.draw(st.integers(0, 4)) == 0:
            sets.append("rowid = rowid + ?")  # renumber rows replicated by rowid
            params.append(data.draw(st.integers(-3, 10)))
        for column in data.draw(st.lists(st.sampled_from(table.columns), min_size=1, max_size=2,
                                         unique=True)):
            shape = data.draw(st.sampled_from(["?", "?", "{} || ?", "{} + ?", "{} + 1", "{} + 10", "NULL",
                                               "-{}", "upper({})"]))
            sets.append(f"{q(column)} = " + shape.format(q(column)))
            if "?" in shape:
                params.append(data.draw(VALUES))
        where, where_params = self._where(data, table)
        self.run(f"{verb} {q(table.name)} SET {', '.join(sets)}{where}{self._returning(data)}",
                 params + where_params)

    @precondition(lambda self: self.schema.tables)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        table = self._table(data)
        where, params = self._where(data, table)
        self.run(f"DELETE FROM {q(table.name)}{where}{self._returning(data)}", params)

    # -- transactions -----------------------------------------------------------------------------

    @precondition(lambda self: self.txn is None)
    @rule(sql=st.sampled_from(["BEGIN", "BEGIN DEFERRED", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE",
                               "BEGIN TRANSACTION"]))
    def begin(self, sql: str) -> None:
        before = self.schema.copy()
        assert self.run(sql, tolerate=())
        assert self.conn.in_transaction
        self.txn, self.by_savepoint = before, False

    @precondition(lambda self: self.txn is not None)
    @rule(how=st.sampled_from(["commit()", "COMMIT", "END"]))
    def commit(self, how: str) -> None:
        if how == "commit()":
            note("conn.commit()")
            try:
                self.conn.commit()
                ok = True
            except proxy.IntegrityError as exc:
                note(f"    -> {type(exc).__name__}: {exc}")
                ok = False
        else:
            ok = self.run(how, tolerate=(proxy.IntegrityError,), control=True)
        self._ended(ok)

    def _ended(self, committed: bool) -> None:
        """A commit was asked for: it happened, or the format refused the transaction (rows with a
        NULL PRIMARY KEY cannot be captured) and it was rolled back whole."""
        assert not self.conn.in_transaction
        if committed:
            self._committed()
        else:
            self._rolled_back()

    @precondition(lambda self: self.txn is not None)
    @rule(how=st.sampled_from(["rollback()", "ROLLBACK", "ROLLBACK TRANSACTION"]))
    def rollback(self, how: str) -> None:
        if how == "rollback()":
            note("conn.rollback()")
            self.conn.rollback()
        else:
            self.run(how, tolerate=(), control=True)
        self._rolled_back()

    @rule(name=st.sampled_from(SAVEPOINTS))
    def savepoint(self, name: str) -> None:
        started = self.txn is None
        before = self.schema.copy()
        self.run(f"SAVEPOINT {name}", tolerate=())
        if started:
            self.txn, self.by_savepoint = before, True
        self.savepoints.append((name.lower(), before))

    def _latest(self, name: str) -> int:
        return max(i for i, (n, _) in enumerate(self.savepoints) if n == name)

    @precondition(lambda self: self.savepoints)
    @rule(data=st.data(), keyword=st.sampled_from(["RELEASE", "RELEASE SAVEPOINT"]))
    def release(self, data: st.DataObject, keyword: str) -> None:
        name = data.draw(st.sampled_from(sorted({n for n, _ in self.savepoints})))
        index = self._latest(name)
        ok = self.run(f"{keyword} {name}", tolerate=(proxy.IntegrityError,), control=True)
        if index == 0 and self.by_savepoint:
            self._ended(ok)  # releasing the savepoint that began the transaction commits it
        else:
            del self.savepoints[index:]

    @precondition(lambda self: self.savepoints)
    @rule(data=st.data(), keyword=st.sampled_from(["ROLLBACK TO", "ROLLBACK TRANSACTION TO SAVEPOINT"]))
    def rollback_to(self, data: st.DataObject, keyword: str) -> None:
        name = data.draw(st.sampled_from(sorted({n for n, _ in self.savepoints})))
        index = self._latest(name)
        self.run(f"{keyword} {name}", tolerate=(), control=True)
        self.schema = self.savepoints[index][1].copy()
        del self.savepoints[index + 1:]

    # -- checking ---------------------------------------------------------------------------------

    @precondition(lambda self: self.txn is None)
    @rule()
    def followers_identical(self) -> None:
        note("-- check: followers identical")
        check_replicated(self.cluster)


def _run(tmp_path_factory: pytest.TempPathFactory, row_image: str, max_examples: int) -> None:
    class Machine(ProxyMachine):
        pass

    Machine.base_dir = tmp_path_factory.mktemp(f"property-{row_image}")
    Machine.row_image = row_image
    Machine.__name__ = f"ProxyMachine_{row_image}"
    run_state_machine_as_test(
        Machine,
        settings=settings(max_examples=examples(max_examples)),
    )


def test_followers_identical_full_row_images(tmp_path_factory: pytest.TempPathFactory) -> None:
    _run(tmp_path_factory, "full", max_examples=100)


def test_followers_identical_minimal_row_images(tmp_path_factory: pytest.TempPathFactory) -> None:
    _run(tmp_path_factory, "minimal", max_examples=100)
