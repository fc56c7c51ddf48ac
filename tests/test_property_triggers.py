"""Property: users' triggers never make a follower differ, in any log format.

Hypothesis draws a small schema's triggers (of the main database and TEMP ones, BEFORE and AFTER,
on INSERT, UPDATE and DELETE, whose bodies change the same row again, change other tables,
cascade, or stop with RAISE(IGNORE)), `recursive_triggers` and `foreign_keys`, and a run of
writes with conflict clauses inside transactions and savepoints. Every statement goes through one
proxy connection; SQLite's errors and replproxy's refusals are allowed, a difference is not: at
the end `proxy.verify` and a row-by-row comparison (rowids included) must find every follower
identical to the leader. This found the trigger format imaging TEMP triggers' changes out of order
and missing changes that a TEMP trigger's RAISE(IGNORE) kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import pytest
from checks import assert_identical, nodes
from helpers import examples
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import proxy

FORMATS = ["row", "statement", "trigger", "mixed"]
SCHEMA = [
    "CREATE TABLE a(id INTEGER PRIMARY KEY, x INT, y TEXT UNIQUE)",
    "CREATE TABLE b(k TEXT PRIMARY KEY, n INT) WITHOUT ROWID",
    "CREATE TABLE c(v, w)",
]
# Trigger bodies per table; {r} is NEW or OLD.
BODIES = {
    "a": ["UPDATE a SET x = coalesce(x, 0) + 1 WHERE id = {r}.id", "INSERT INTO c VALUES ({r}.x, 'a')",
          "DELETE FROM b WHERE n = {r}.x", "INSERT OR REPLACE INTO b VALUES ('k' || {r}.x, {r}.id)",
          "UPDATE c SET w = 'u' || w WHERE v = {r}.x", "SELECT RAISE(IGNORE) WHERE {r}.x = 3"],
    "b": ["INSERT INTO c VALUES ({r}.n, {r}.k)", "UPDATE a SET y = {r}.k WHERE id = {r}.n",
          "DELETE FROM a WHERE id = {r}.n % 4", "UPDATE b SET n = n + 1000 WHERE k = {r}.k AND n < 1000",
          "SELECT RAISE(IGNORE) WHERE {r}.n % 5 = 0"],
    "c": ["UPDATE a SET x = -1 WHERE x = {r}.v", "INSERT OR IGNORE INTO b VALUES ({r}.w, {r}.v)",
          "DELETE FROM c WHERE rowid = (SELECT max(rowid) FROM c) AND {r}.v IS NULL"],
}
CONTROL = ["BEGIN", "COMMIT", "SAVEPOINT s", "ROLLBACK TO s", "RELEASE s", "ROLLBACK"]


@st.composite
def triggers(draw: st.DrawFn) -> list[str]:
    made = []
    for i in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(sorted(BODIES)))
        event = draw(st.sampled_from(["INSERT", "UPDATE", "DELETE"]))
        timing = draw(st.sampled_from(["AFTER", "BEFORE"]))
        ref = "OLD" if event == "DELETE" else "NEW"
        bodies = draw(st.lists(st.sampled_from(BODIES[table]), min_size=1, max_size=2, unique=True))
        body = "; ".join(b.format(r=ref) for b in bodies)
        temp = draw(st.booleans())
        target = f"main.{table}" if temp else table
        made.append(f"CREATE {'TEMP ' if temp else ''}TRIGGER tr{i} {timing} {event} ON {target} "
                    f"BEGIN {body}; END")
    return made


def writes() -> st.SearchStrategy[str]:
    small = st.integers(0, 8)
    return st.one_of(
        st.builds("INSERT OR {} INTO a(id, x, y) VALUES ({}, {}, 'y{}')".format,
                  st.sampled_from(["REPLACE", "IGNORE", "ABORT"]), small, small, small),
        st.builds("INSERT OR REPLACE INTO b VALUES ('k{}', {})".format, small, small),
        st.builds("INSERT INTO c VALUES ({}, 'w{}')".format, small, small),
        st.builds("UPDATE a SET x = x + {} WHERE id <= {}".format, st.integers(1, 3), small),
        st.builds("UPDATE b SET n = n * 2 WHERE k > 'k{}'".format, small),
        st.builds("DELETE FROM a WHERE id % 3 = {}".format, st.integers(0, 2)),
        st.builds("DELETE FROM b WHERE n % 3 = {}".format, st.integers(0, 2)),
        st.builds("DELETE FROM c WHERE rowid % 3 = {}".format, st.integers(0, 2)),
        st.sampled_from(CONTROL),
    )


WORKLOADS = st.tuples(
    triggers(),
    st.lists(st.sampled_from(["PRAGMA recursive_triggers = ON", "PRAGMA foreign_keys = ON"]), unique=True),
    st.lists(writes(), min_size=5, max_size=30),
)


def content(path: Path) -> dict[str, Any]:
    """Every user table's rows with their rowids (a rowid table's rowid is replicated), values
    with their storage class."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {
            "a": conn.execute("SELECT id, typeof(x), x, y FROM a ORDER BY id").fetchall(),
            "b": conn.execute("SELECT k, typeof(n), n FROM b ORDER BY k").fetchall(),
            "c": conn.execute("SELECT rowid, typeof(v), v, w FROM c ORDER BY rowid").fetchall(),
        }
    finally:
        conn.close()


@pytest.mark.parametrize("log_format", FORMATS)
def test_followers_identical_with_user_and_temp_triggers(log_format: str,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    @settings(max_examples=examples(100), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(WORKLOADS)
    def run(workload: tuple[list[str], list[str], list[str]]) -> None:
        made, pragmas, statements = workload
        directory = tmp_path_factory.mktemp(f"triggers-{log_format}")
        cluster = proxy.Cluster.init(directory, followers=2, format=log_format)
        conn = proxy.connect(directory, cluster=cluster, autocommit=True)
        try:
            for sql in [*SCHEMA, *pragmas, *made, *statements, "COMMIT"]:
                note(sql)
                try:
                    conn.execute(sql)
                except proxy.Error as exc:  # SQLite's errors and replproxy's refusals
                    note(f"  -> {type(exc).__name__}: {exc}")
            conn.close()
            assert_identical(cluster)
            leader = content(cluster.path_of(cluster.leader))
            for name in nodes(cluster)[1:]:
                assert content(cluster.path_of(name)) == leader, f"{name} differs from the leader"
        finally:
            if not conn.closed:
                conn.close()
            cluster.close()

    run()
