"""Writers outside the proxy in the formats that cannot log them (row, statement, mixed): a program
that opens the leader file and commits there must never leave the followers silently different.
The leader's guard triggers and recorded header (proxy/cluster/watch.py) detect it; `status` says
so within a poll interval; with the "refuse" policy the write fails instead.

The outside writer is a plain apsw connection (never Python's sqlite3 in this process)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest
from checks import assert_identical
from helpers import run_python, wait_until

import proxy
from proxy.cluster import watch
from proxy.store import node as store

MakeCluster = Callable[..., proxy.Cluster]

FORMATS = [
    pytest.param({"format": "row"}, id="row-full"),
    pytest.param({"format": "row", "row_image": "minimal"}, id="row-minimal"),
    pytest.param({"format": "statement"}, id="statement"),
    pytest.param({"format": "mixed"}, id="mixed"),
]

# Each is one outside transaction on a leader holding t(id, v) with rows 1..3 (and u, empty).
OUTSIDE_WRITES = {
    "insert": ["INSERT INTO t(id, v) VALUES (100, 'outside')"],
    "update": ["UPDATE t SET v = 'changed' WHERE id = 2"],
    "delete": ["DELETE FROM t WHERE id = 3"],
    "insert-other-table": ["INSERT INTO u(k) VALUES ('x')"],
    "create-table": ["CREATE TABLE extra(a)"],
    "create-index": ["CREATE INDEX t_v ON t(v)"],
    "create-trigger": ["CREATE TRIGGER t_log AFTER INSERT ON t BEGIN SELECT 1; END"],
    "drop-table": ["DROP TABLE u"],
    "user-version": ["PRAGMA user_version = 42"],
    # Dropping a guard to write unseen is a schema change of its own.
    "drop-guard-then-insert": [
        "SELECT 'DROP TRIGGER ' || name FROM sqlite_master WHERE name LIKE '\\_replproxy\\_guard\\_i%' "
        "ESCAPE '\\' AND tbl_name = 't'",
        "INSERT INTO t(id, v) VALUES (101, 'unseen')"],
}


def outside(cluster: proxy.Cluster) -> apsw.Connection:
    """A plain apsw connection to the leader file, as another program would open it."""
    conn = apsw.Connection(str(cluster.path_of(cluster.leader)))
    conn.set_busy_timeout(30_000)
    return conn


def leader_state(cluster: proxy.Cluster) -> proxy.NodeStatus:
    return next(n for n in cluster.status() if n.role == "leader")


def wait_alarm(cluster: proxy.Cluster) -> proxy.NodeStatus:
    """Wait until the leader's status reports writes outside the proxy, recorded by the watcher."""
    def recorded() -> bool:
        with cluster.node(cluster.leader) as conn:
            return store.read_meta(conn, "leader").get(store.OUTSIDE_KEY) is not None
    wait_until(recorded, message="the watcher records the outside write")
    return leader_state(cluster)


@pytest.fixture
def setup(make_cluster: MakeCluster) -> Iterator[Callable[..., tuple[proxy.Cluster, proxy.Connection]]]:
    conns: list[proxy.Connection] = []

    def make(**options: Any) -> tuple[proxy.Cluster, proxy.Connection]:
        cluster = make_cluster(**options)
        conn = proxy.connect(cluster.directory, cluster=cluster)
        conns.append(conn)
        conn.executescript("""
            CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
            CREATE TABLE u(k TEXT PRIMARY KEY) WITHOUT ROWID;
            INSERT INTO t(id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c');
        """)
        conn.commit()
        cluster.wait_for_catchup()
        return cluster, conn

    yield make
    for conn in conns:
        if not conn.closed:
            conn.close()


# -- detected, in every format that cannot log them ----------------------------------------------


@pytest.mark.parametrize("options", FORMATS)
@pytest.mark.parametrize("kind", list(OUTSIDE_WRITES))
def test_an_outside_write_is_reported_by_status(setup, options, kind):
    cluster, conn = setup(**options)
    assert leader_state(cluster).state == "ok"
    other = outside(cluster)
    with other:
        for sql in OUTSIDE_WRITES[kind]:
            for row in other.execute(sql).fetchall():  # a row is a statement to run (drop-guard)
                other.execute(row[0])
    other.close()
    leader = wait_alarm(cluster)
    assert leader.state == "outside-writes"
    assert "resync" in (leader.error or "")
    # It stays reported after more proxy writes, schema changes included.
    conn.execute("CREATE TABLE later(a)")
    conn.execute("INSERT INTO t(id, v) VALUES (50, 'proxy')")
    conn.commit()
    assert leader_state(cluster).state == "outside-writes"
    # And the status JSON (the CLI's) says it too.
    assert leader_state(cluster).as_dict()["state"] == "outside-writes"


@pytest.mark.parametrize("options", FORMATS)
def test_status_reports_it_without_any_watcher(setup, options, make_cluster):
    cluster, conn = setup(**options)
    conn.close()
    cluster.close()  # no replicator, no watcher: status reads the leader's file itself
    with proxy.Cluster(cluster.directory, replicate=False) as inspect:
        other = outside(inspect)
        other.execute("UPDATE t SET v = 'quiet' WHERE id = 1")
        other.close()
        leader = leader_state(inspect)
        assert leader.state == "outside-writes"
        assert "1 row change(s) to t" in (leader.error or "")


def test_an_outside_write_between_proxy_writes_is_reported(setup):
    cluster, conn = setup(format="row")
    other = outside(cluster)
    for i in range(10, 20):
        conn.execute("INSERT INTO t(id, v) VALUES (?, 'proxy')", (i,))
        conn.commit()
        if i == 14:
            other.execute("INSERT INTO t(id, v) VALUES (1000, 'outside')")
    other.close()
    leader = wait_alarm(cluster)
    assert "1 row change(s) to t" in (leader.error or "")


def test_an_outside_write_to_a_table_the_proxy_just_created_is_reported(setup):
    # The proxy guards a new table in the transaction that creates it: no window for the watcher.
    cluster, conn = setup(format="statement")
    if cluster.replicator is not None:
        cluster.replicator.stop()  # nothing polls: only the guard can tell
    conn.execute("CREATE TABLE fresh(a)")
    conn.commit()
    other = outside(cluster)
    other.execute("INSERT INTO fresh VALUES (1)")
    other.close()
    leader = leader_state(cluster)
    assert leader.state == "outside-writes"
    assert "fresh" in (leader.error or "")


def test_outside_schema_change_is_not_hidden_by_a_later_proxy_schema_change(setup):
    cluster, conn = setup(format="row")
    if cluster.replicator is not None:
        cluster.replicator.stop()  # the proxy's own transaction must notice, not the watcher
    other = outside(cluster)
    other.execute("CREATE INDEX t_v ON t(v)")
    other.close()
    conn.execute("CREATE TABLE after_it(a)")
    conn.commit()
    assert leader_state(cluster).state == "outside-writes"


def test_the_alarm_is_logged_once(setup, caplog):
    cluster, _conn = setup(format="row")
    with caplog.at_level(logging.ERROR, logger="replproxy.replication"):
        other = outside(cluster)
        other.execute("DELETE FROM t WHERE id = 1")
        wait_alarm(cluster)
        other.execute("DELETE FROM t WHERE id = 2")
        other.close()
        wait_until(lambda: cluster.status() and _outside_rows(cluster) == 2)
    messages = [r.getMessage() for r in caplog.records if "outside the proxy" in r.getMessage()]
    assert len(messages) == 1, messages


def _outside_rows(cluster: proxy.Cluster) -> int:
    with cluster.node(cluster.leader) as conn:
        return sum(n for _, n in watch.findings(conn).rows)


def test_another_process_writing_with_sqlite3_is_reported(setup):
    cluster, _conn = setup(format="mixed")
    run_python("import sqlite3, sys\n"
               "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
               "c.execute(\"UPDATE t SET v = 'other process' WHERE id = 1\")\n",
               cluster.path_of(cluster.leader))
    assert wait_alarm(cluster).state == "outside-writes"


# -- no false alarm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [*FORMATS, pytest.param({"format": "trigger"}, id="trigger")])
def test_no_false_alarm_for_the_proxy_and_its_appliers(setup, options):
    cluster, conn = setup(**options)
    conn.executescript("""
        CREATE TABLE w(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
        CREATE INDEX w_v ON w(v);
        CREATE TRIGGER w_t AFTER INSERT ON w BEGIN UPDATE t SET v = new.v WHERE id = 1; END;
        INSERT INTO w(v) VALUES ('x'), ('y');
        UPDATE t SET v = 'z' WHERE id = 2;
        DELETE FROM t WHERE id = 3;
        ALTER TABLE u ADD COLUMN extra;
        DROP INDEX w_v;
        PRAGMA user_version = 7;
    """)
    conn.commit()
    conn.execute("PRAGMA application_id = 99")
    conn.commit()
    cluster.wait_for_catchup()
    # The watcher has looked at every commit (it runs before each replicator round).
    cluster.wait_for_catchup()
    assert [n.state for n in cluster.status()] == ["ok"] * 3
    with cluster.node(cluster.leader) as leader:
        assert store.read_meta(leader, "leader").get(store.OUTSIDE_KEY) is None
    assert_identical(cluster)


def test_the_trigger_format_logs_outside_writes_instead(setup):
    cluster, _conn = setup(format="trigger")
    other = outside(cluster)
    other.execute("INSERT INTO t(id, v) VALUES (100, 'outside')")
    other.close()
    wait_until(lambda: _on_follower(cluster), message="the outside row reaches a follower")
    cluster.wait_for_catchup()
    assert leader_state(cluster).state == "ok"
    assert_identical(cluster)


def _on_follower(cluster: proxy.Cluster) -> bool:
    with cluster.node(cluster.followers[0]) as conn:
        return conn.execute("SELECT count(*) FROM t WHERE id = 100").fetchone()[0] == 1


def test_no_false_alarm_after_a_failover(setup):
    cluster, conn = setup(format="row")
    cluster.failover()
    conn.execute("INSERT INTO t(id, v) VALUES (9, 'new leader')")
    conn.execute("CREATE TABLE after_failover(a)")
    conn.commit()
    cluster.wait_for_catchup()
    cluster.wait_for_catchup()
    assert leader_state(cluster).state == "ok"
    # The new leader is guarded too.
    other = outside(cluster)
    other.execute("INSERT INTO after_failover VALUES (1)")
    other.close()
    assert wait_alarm(cluster).state == "outside-writes"


# -- clearing and refusing ---------------------------------------------------------------------------


def test_resync_then_clear(setup):
    cluster, _conn = setup(format="row")
    other = outside(cluster)
    other.execute("INSERT INTO t(id, v) VALUES (100, 'outside')")
    other.close()
    wait_alarm(cluster)
    for name in cluster.followers:
        cluster.resync(name)
    cluster.clear_outside_writes()
    assert leader_state(cluster).state == "ok"
    cluster.wait_for_catchup()
    assert_identical(cluster)


@pytest.mark.parametrize("options", FORMATS)
def test_refuse_policy_aborts_outside_writes(setup, options):
    cluster, conn = setup(**options)
    cluster.outside_writes_policy("refuse")
    other = outside(cluster)
    with pytest.raises(apsw.ConstraintError, match="refused"):
        other.execute("UPDATE t SET v = 'no' WHERE id = 1")
    # Tables the proxy creates later are refused too; the proxy itself still writes.
    conn.execute("CREATE TABLE later(a)")
    conn.execute("INSERT INTO later VALUES (1)")
    conn.execute("UPDATE t SET v = 'yes' WHERE id = 1")
    conn.commit()
    with pytest.raises(apsw.ConstraintError, match="refused"):
        other.execute("INSERT INTO later VALUES (2)")
    other.close()
    cluster.wait_for_catchup()
    assert leader_state(cluster).state == "ok"
    assert_identical(cluster)


# -- where people see it -------------------------------------------------------------------------------


def test_cli_status_and_shell_show_it(setup):
    import io
    import json

    from click.testing import CliRunner

    from proxy.tools.cli import main
    from proxy.tools.shell.repl import Shell

    cluster, _conn = setup(format="statement")
    other = outside(cluster)
    other.execute("INSERT INTO u(k) VALUES ('outside')")
    other.close()
    wait_alarm(cluster)
    result = CliRunner().invoke(main, ["status", str(cluster.directory), "--json"])
    assert result.exit_code == 0, result.output
    leader = next(n for n in json.loads(result.output)["nodes"] if n["role"] == "leader")
    assert leader["state"] == "outside-writes" and "1 row change(s) to u" in leader["error"]
    out = io.StringIO()
    shell = Shell(cluster, stdout=out, stderr=io.StringIO())
    try:
        shell.run_script(io.StringIO(".nodes\n.schema t\n"))
    finally:
        shell.close()
    assert "outside-writes" in out.getvalue()
    # The guard triggers are replproxy's, not the user's schema.
    assert "_replproxy_guard" not in out.getvalue()


def test_a_vacuum_through_the_proxy_is_no_false_alarm(setup):
    # VACUUM bumps schema_version without changing the schema; the proxy runs it on the leader only.
    cluster, conn = setup(format="row")
    conn.execute("VACUUM")
    conn.execute("CREATE TABLE after_vacuum(a INTEGER PRIMARY KEY)")  # a proxy transaction after it
    conn.commit()
    cluster.wait_for_catchup()
    cluster.wait_for_catchup()
    assert leader_state(cluster).state == "ok"
    conn.execute("VACUUM")
    wait_until(lambda: _header_recorded(cluster), message="the watcher re-records the header")
    assert leader_state(cluster).state == "ok"


def _header_recorded(cluster: proxy.Cluster) -> bool:
    with cluster.node(cluster.leader) as conn:
        conn.execute("BEGIN")
        try:
            return not watch.findings(conn).moved
        finally:
            conn.execute("COMMIT")


def test_an_outside_write_to_a_table_renamed_through_the_proxy_names_it(setup):
    cluster, conn = setup(format="row")
    conn.execute("ALTER TABLE t RENAME TO t_renamed")
    conn.commit()
    other = outside(cluster)
    other.execute("DELETE FROM t_renamed WHERE id = 1")
    other.close()
    assert "1 row change(s) to t_renamed" in (leader_state(cluster).error or "")


@pytest.mark.parametrize("options", FORMATS)
def test_a_table_hidden_by_a_temp_table_is_renamed_and_stays_guarded(setup, options):
    # SQLite checks every trigger on a table it renames, and failed on the guards ("error in
    # trigger _replproxy_guard_... after rename: no such table: main.t") while a TEMP table of
    # the same name hid it; plain SQLite renames it. The guards step aside and come back.
    cluster, conn = setup(**options)
    conn.execute("CREATE TEMP TABLE t(z)")
    conn.execute("ALTER TABLE main.t RENAME TO t_renamed")
    conn.execute("INSERT INTO t_renamed(id, v) VALUES (4, 'd')")
    conn.commit()
    assert_identical(cluster)
    assert leader_state(cluster).state != "outside-writes"
    other = outside(cluster)
    other.execute("DELETE FROM t_renamed WHERE id = 1")
    other.close()
    assert "1 row change(s) to t_renamed" in (leader_state(cluster).error or "")


# A proxy writer in another process: schema changes and rows, while this process's watcher polls.
PROXY_WRITER = """
import sys
import proxy
conn = proxy.connect(sys.argv[1])
for i in range(int(sys.argv[2])):
    conn.execute(f"CREATE TABLE p{i}(id INTEGER PRIMARY KEY, v)")
    conn.execute(f"INSERT INTO p{i}(v) VALUES (?)", (i,))
    conn.execute("UPDATE t SET v = ? WHERE id = 1", (str(i),))
    conn.commit()
    conn.execute(f"PRAGMA user_version = {i}")
    conn.commit()
conn.close()
"""


@pytest.mark.parametrize("options", FORMATS)
def test_no_false_alarm_for_a_proxy_in_another_process_then_the_outside_write_is_seen(setup, options):
    cluster, conn = setup(**options)
    run_python(PROXY_WRITER, cluster.directory, 15)
    cluster.wait_for_catchup()
    cluster.wait_for_catchup()  # the watcher ran on every commit it saw
    assert leader_state(cluster).state == "ok"
    conn.execute("INSERT INTO p3(v) VALUES ('here')")  # a table made by the other process
    conn.commit()
    assert leader_state(cluster).state == "ok"
    # Tables created by the other process are guarded too.
    other = outside(cluster)
    other.execute("UPDATE p14 SET v = 'outside'")
    other.close()
    assert "p14" in (wait_alarm(cluster).error or "")
