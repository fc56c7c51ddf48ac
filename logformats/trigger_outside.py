"""Changes committed to the leader file by programs that bypass the proxy (trigger format).

Their triggers fire all the same, so their row images wait in the capture table; schema changes
they made are found by comparing the schema with the one stored as replicated. `catch_up` turns
all of it into log entries (one per outside transaction when the writer marks its boundaries),
and `needs_work` says, cheaply, whether there is anything to do.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import apsw

from . import codec
from .base import OutsideLog, is_internal_table
from .row import TAG_SEQUENCE, read_sequence
from .trigger_images import TAG_ORIGIN, captured_chunks, snapshot, sql_chunk
from .trigger_install import (
    CAPTURE_TABLE,
    TriggerPlan,
    apply_plan,
    current_schema,
    install_capture,
    plan_triggers,
    quote,
    store_schema,
    stored_schema,
    table_specs,
)

_STATUS_SQL = (
    "SELECT (SELECT schema_version FROM pragma_schema_version), "
    "(SELECT user_version FROM pragma_user_version), "
    "(SELECT application_id FROM pragma_application_id), "
    f"(SELECT max(seq) FROM main.{CAPTURE_TABLE})"
)


def _schema_diff(conn: apsw.Connection, plan: TriggerPlan) -> list[tuple[bytes, bytes]]:
    """SQL and images that bring a follower from the stored schema to the current one, for schema
    changes made outside the proxy (whose statements were never seen). A table whose definition
    changed is dropped and re-created with all its rows; a table whose capture triggers were
    missing or out of date has its rows replaced, since changes to it may not have been captured."""
    stored = stored_schema(conn)
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
            chunks.append(sql_chunk(f"DROP {t.upper()} IF EXISTS main.{quote(n)}"))
    for t, n, _tb, _sql in stored:
        if t == "table" and n.lower() in dropped_with_table and kinds.get(n.lower()) != "shadow":
            chunks.append(sql_chunk(f"DROP TABLE IF EXISTS main.{quote(n)}"))
    for t, n, tb, sql in current:
        key = (t, n.lower())
        if t == "pragma":
            if stored_map.get(key) != (tb, sql):
                chunks.append(sql_chunk(f"PRAGMA {n} = {int(sql or 0)}"))
        elif t == "table":
            name = n.lower()
            if name in recreated and sql:
                chunks.append(sql_chunk(sql))
            if name in new_tables or name in changed_tables:
                if kinds.get(name) == "shadow":
                    chunks.append(sql_chunk(f"DELETE FROM main.{quote(n)}"))
                if name in specs:
                    chunks.extend(snapshot(conn, specs[name]))
            elif name in plan.damaged and name in specs:
                chunks.append(sql_chunk(f"DELETE FROM main.{quote(n)}"))
                chunks.extend(snapshot(conn, specs[name]))
        elif sql and (stored_map.get(key) != (tb, sql) or (tb or "").lower() in recreated):
            chunks.append(sql_chunk(sql))
    return chunks


def _outside_groups(conn: apsw.Connection) -> list[list[tuple[bytes, bytes]]]:
    """Inside a write transaction: the payload chunks of everything committed on this leader
    outside the proxy since it was last logged, one group per log entry, in commit order; the
    capture rows are deleted and the triggers and the stored schema brought up to date."""
    groups, last = captured_chunks(conn, 0, split_marks=True)
    plan = plan_triggers(conn)
    diff = _schema_diff(conn, plan)
    if diff:
        if not groups:
            groups.append([])
        groups[-1].extend(diff)
    if last:
        conn.execute(f"DELETE FROM main.{CAPTURE_TABLE}")
    apply_plan(conn, plan)
    store_schema(conn)
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


def conn_state(conn: apsw.Connection) -> _ConnState:
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


def needs_work(conn: apsw.Connection, state: _ConnState) -> bool:
    """True when the capture holds rows committed outside the proxy, is not installed, or the
    schema changed in a way the capture does not match yet."""
    status = _status(conn)
    if status is None or status[3] is not None:
        return True
    if status[:3] == state.in_sync:
        return False
    if plan_triggers(conn).clean and stored_schema(conn) == current_schema(conn):
        state.in_sync = status[:3]
        return False
    return True


def catch_up(conn: apsw.Connection, append: OutsideLog | None) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Install the capture if needed, then log outside changes: (entries appended through
    `append`, chunks left for the caller to log at the head of its own entry when `append` is
    None)."""
    if install_capture(conn):
        return 0, []
    groups = _outside_groups(conn)
    if append is None:
        return 0, [chunk for group in groups for chunk in group]
    for group in groups:
        append(conn, codec.pack_chunks(group))
    return len(groups), []
