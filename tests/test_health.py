"""Stopping and starting nodes, automatic failover, anti-flapping, rejoin without silent loss."""

from __future__ import annotations

import datetime
import json
import os
import textwrap
from pathlib import Path

import apsw
import pytest
from checks import file_meta, file_rows, same_on_all
from click.testing import CliRunner
from helpers import HANG, run_replproxy, spawn_python, wait_until

import proxy
import proxy.driver.leader
from proxy import verify
from proxy.store import config as cfg
from proxy.store import log as store_log
from proxy.store import node as store_node
from proxy.tools.cli import main

# Fails over soon after the leader stops (a test waits for it, so how soon does not matter).
FAST = dict(failover_timeout=0.3, failover_cooldown=0.0)


@pytest.fixture(autouse=True)
def patient_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write made while the leader is stopped waits for the automatic failover for
    failover_timeout plus FAILOVER_GRACE (2 s) before it gives up; here that grace only bounds a
    hang: the tests wait for a failover that does happen, however busy the machine."""
    monkeypatch.setattr(proxy.driver.leader, "FAILOVER_GRACE", HANG)


def _leader_of(directory: Path) -> str:
    return cfg.read(directory).leader.name


def _wait_leader_change(cluster: proxy.Cluster, old: str) -> str:
    name = wait_until(lambda: (leader := _leader_of(cluster.directory)) != old and leader, cluster=cluster,
                      poll=0.02, message=f"a failover from {old}")
    cluster.refresh_config()
    return name


def _stop_leader_then_resume(cluster: proxy.Cluster, paused: list[str]) -> None:
    """Stop the leader, then resume the `paused` followers, and only then turn on the automatic
    failover (FAST): otherwise, on a slow machine, it could promote a follower still paused."""
    cluster.configure(auto_failover=False)
    cluster.stop_node(cluster.leader)
    for name in paused:
        cluster.resume(name)
    cluster.configure(auto_failover=True, **FAST)


def _rows(path: Path, sql: str = "SELECT * FROM t ORDER BY id") -> list[tuple]:
    return file_rows(path, sql)


def _workload(conn: proxy.Connection, start: int, count: int, tag: str) -> None:
    """Several tables, updates and deletes: more than one row per transaction."""
    for i in range(start, start + count):
        conn.execute("INSERT INTO t(v, b) VALUES (?, ?)", (f"{tag}{i}", os.urandom(8)))
        conn.execute("INSERT INTO kv(k, n) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET n = n + 1",
                     (f"k{i % 3}", i))
        if i % 4 == 0:
            conn.execute("DELETE FROM t WHERE id = (SELECT min(id) FROM t)")
        conn.execute("UPDATE kv SET note = ? WHERE k = 'k0'", (f"{tag} at {i}",))


def _schema(conn: proxy.Connection) -> None:
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT, b BLOB)")
    conn.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, n INTEGER, note TEXT) WITHOUT ROWID")


# -- stop and start ---------------------------------------------------------------------------


def test_stopped_follower_serves_no_reads_applies_nothing_then_catches_up(cluster):
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _schema(conn)
    _workload(conn, 0, 5, "a")
    cluster.wait_for_catchup()
    cluster.stop_node("node2")
    held = store_node.read_state(cluster.open_node("node2")).applied_lsn
    _workload(conn, 5, 5, "b")
    cluster.wait_for_catchup(nodes=["node3"])
    assert store_node.read_state(cluster.open_node("node2")).applied_lsn == held
    for _ in range(6):
        cur = conn.cursor().execute("SELECT count(*) FROM t", consistency="eventual")
        assert cur.node != "node2"
    states = {s.name: s.state for s in cluster.status()}
    assert states["node2"] == "stopped"
    result = cluster.start_node("node2")
    assert not result.rejoined
    cluster.wait_for_catchup()
    assert verify(cluster).identical
    with pytest.raises(proxy.ClusterError, match="not stopped"):
        cluster.start_node("node2")
    conn.close()


def test_stopped_leader_without_auto_failover_refuses_writes_and_loses_nothing(cluster):
    cluster.configure(auto_failover=False)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _schema(conn)
    _workload(conn, 0, 3, "a")
    before = cluster.leader_lsn()
    cluster.stop_node("node1")
    with pytest.raises(proxy.OperationalError, match="node1 is down.*automatic failover is off"):
        conn.execute("INSERT INTO t(v) VALUES ('refused')")
    assert cluster.leader_lsn() == before
    cluster.start_node("node1")
    conn.execute("INSERT INTO t(v) VALUES ('after restart')")
    assert conn.last_write_lsn == before + 1
    cluster.wait_for_catchup()
    assert verify(cluster).identical
    conn.close()


def test_transaction_open_when_the_leader_stops_is_rolled_back_not_half_kept(cluster):
    cluster.configure(auto_failover=False)
    conn = proxy.connect(cluster.directory, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.commit()
    conn.execute("INSERT INTO t(v) VALUES ('in flight')")
    cluster.stop_node("node1")
    with pytest.raises(proxy.OperationalError, match="went down before this transaction committed"):
        conn.commit()
    assert _rows(cluster.path_of("node1"), "SELECT * FROM t") == []
    assert not conn.in_transaction
    conn.close()


# -- automatic failover ---------------------------------------------------------------------------


def test_automatic_failover_promotes_most_up_to_date_and_redirects_the_next_write(cluster):
    cluster.configure(**FAST)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _schema(conn)
    _workload(conn, 0, 4, "a")
    cluster.wait_for_catchup()
    cluster.pause("node2")  # node3 ends up ahead: it must be the one promoted
    _workload(conn, 4, 3, "b")
    last = conn.last_write_lsn
    cluster.wait_for_catchup(nodes=["node3"])
    cluster.stop_node("node1")
    # The same connection, never reopened: the write waits for the failover, then lands on node3.
    cur = conn.execute("INSERT INTO t(v) VALUES ('after failover')")
    assert cur.node == "node3"
    assert conn.last_write_lsn == last + 2  # the promotion entry (raised counters) is last + 1
    config = cfg.read(cluster.directory)
    assert config.leader.name == "node3" and config.epoch == 2
    assert config.epochs[-1].base_lsn == last and config.epochs[-1].leader == "node3"
    # The epoch is recorded on every reachable node.
    for name in ("node2", "node3"):
        assert int(file_meta(cluster.path_of(name))["epoch"]) == 2
    assert int(file_meta(cluster.path_of("node1")).get("epoch", 1)) == 1  # stopped: not reachable
    cluster.resume("node2")
    cluster.wait_for_catchup()
    entries = cluster.entries()
    assert [e.lsn for e in entries] == list(range(1, conn.last_write_lsn + 1))
    conn.close()


def test_ties_are_broken_by_name(cluster):
    cluster.configure(**FAST)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _schema(conn)
    cluster.wait_for_catchup()
    cluster.stop_node("node1")
    assert _wait_leader_change(cluster, "node1") == "node2"
    conn.close()


def test_anti_flapping_window_holds_a_second_failover(cluster, caplog):
    cluster.configure(failover_timeout=0.3, failover_cooldown=3600)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _schema(conn)
    cluster.wait_for_catchup()
    cluster.stop_node("node1")
    first = _wait_leader_change(cluster, "node1")
    conn.execute("INSERT INTO t(v) VALUES ('x')")
    cluster.wait_for_catchup()
    with caplog.at_level("WARNING", logger="replproxy.health"):
        cluster.stop_node(first)
        # The monitor reaches its decision (the leader failed for longer than the timeout) and
        # holds the failover back: the window keeps the leader in place and status says why.
        wait_until(lambda: "(failover_cooldown)" in caplog.text, cluster=cluster,
                   message="the monitor holds the failover back")
    assert f"leader {first} failed" in caplog.text
    assert _leader_of(cluster.directory) == first
    health = cluster.health()
    assert not health["leader_ok"] and health["held_until"] is not None
    status = CliRunner().invoke(main, ["status", str(cluster.directory)])
    assert "LEADER DOWN" in status.output and "anti-flapping" in status.output
    cluster.configure(failover_cooldown=0)
    second = _wait_leader_change(cluster, first)
    assert second not in ("node1", first)
    conn.close()


def test_sync_follower_promoted_automatically_keeps_every_acknowledged_write(cluster):
    cluster.configure(mode="sync", sync_followers=["node3"], sync_timeout=HANG, **FAST)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.pause("node2")
    acked = []
    for i in range(20):
        conn.execute("INSERT INTO t(v) VALUES (?)", (i,))
        acked.append(i)
    cluster.stop_node("node1")
    assert _wait_leader_change(cluster, "node1") == "node3"
    assert [r[1] for r in _rows(cluster.path_of("node3"))] == acked
    conn.close()


# -- rejoin without silent loss ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt, options, method", [
    ("row", {}, "inverted"),
    ("trigger", {}, "snapshot"),  # its UPDATE images lack the old values
    ("row", {"row_image": "minimal"}, "snapshot"),
    ("statement", {}, "snapshot"),
])
def test_old_leader_rejoins_its_lost_writes_recorded_and_undone(make_cluster, fmt, options, method):
    cluster = make_cluster(format=fmt, **options)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _schema(conn)
    _workload(conn, 0, 6, "kept")
    kept = cluster.wait_for_catchup()
    ids_before = {r[0] for r in _rows(cluster.path_of("node1"))}
    for name in ("node2", "node3"):
        cluster.pause(name)
    _workload(conn, 6, 4, "lost")  # only on node1
    lost_last = conn.last_write_lsn
    lost_ids = {r[0] for r in _rows(cluster.path_of("node1"))} - ids_before
    assert lost_ids
    _stop_leader_then_resume(cluster, ["node2", "node3"])  # crashed before they got the last entries
    new = _wait_leader_change(cluster, "node1")
    _workload(conn, 10, 3, "new")  # the new leader moves on
    # Key reuse: the new leader hands out none of the keys the old leader issued.
    new_ids = {r[0] for r in _rows(cluster.path_of(new))} - ids_before
    assert new_ids and not (new_ids & lost_ids)

    result = cluster.start_node("node1")
    assert result.rejoined and result.fork_lsn == kept
    assert result.lost_lsns == (kept + 1, lost_last) and result.method == method
    records = [json.loads(line) for line in Path(result.lost_file).read_text().splitlines()]
    assert [r["lsn"] for r in records] == list(range(kept + 1, lost_last + 1))
    assert all(r["node"] == "node1" and r["payload_base64"] for r in records)
    text = json.dumps(records)
    assert all(f"lost{i}" in text for i in range(6, 10))  # full content, not just positions
    cluster.wait_for_catchup()
    report = verify(cluster)
    assert report.identical, report.differences
    assert not {r[0] for r in _rows(cluster.path_of("node1"))} & lost_ids
    assert int(file_meta(cluster.path_of("node1"))["deposed_by_epoch"]) == cfg.read(cluster.directory).epoch
    # status and the CLI report the lost writes.
    assert cluster.health()["lost_writes"][0]["entries"] == lost_last - kept
    out = CliRunner().invoke(main, ["status", str(cluster.directory)]).output
    assert f"LOST WRITES: {lost_last - kept} entries (LSN {kept + 1}..{lost_last})" in out
    conn.close()


def test_rejoined_old_leader_can_be_promoted_again(cluster):
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    _schema(conn)
    _workload(conn, 0, 3, "a")
    cluster.wait_for_catchup()
    cluster.pause("node2")
    cluster.pause("node3")
    _workload(conn, 3, 2, "lost")
    _stop_leader_then_resume(cluster, ["node2", "node3"])
    _wait_leader_change(cluster, "node1")
    cluster.start_node("node1")
    _workload(conn, 5, 2, "b")
    cluster.wait_for_catchup()
    result = cluster.failover("node1")
    assert result.lost_lsns is None and cluster.leader == "node1"
    _workload(conn, 7, 2, "c")
    assert conn.execute("SELECT 1").node is not None
    cluster.wait_for_catchup()
    assert verify(cluster).identical
    conn.close()


# -- processes ------------------------------------------------------------------------------------


def test_another_process_follows_the_automatic_failover_and_the_old_leader_is_fenced(cluster):
    cluster.configure(**FAST)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t(v) VALUES ('before')")
    cluster.wait_for_catchup()
    script = textwrap.dedent(f"""
        import sys, proxy, proxy.driver.leader
        proxy.driver.leader.FAILOVER_GRACE = {HANG}  # as in this process: see patient_writers
        conn = proxy.connect({str(cluster.directory)!r}, autocommit=True)
        conn.execute("INSERT INTO t(v) VALUES ('child 1')")
        print("ready", flush=True)
        sys.stdin.readline()  # the parent stops the leader meanwhile
        cur = conn.execute("INSERT INTO t(v) VALUES ('child 2')")
        print(cur.node, flush=True)
    """)
    child = spawn_python(script)
    try:
        assert child.stdout.readline().strip() == "ready"
        cluster.wait_for_catchup()  # 'child 1' reached the followers: it survives the failover
        cluster.stop_node("node1")
        child.stdin.write("go\n")
        child.stdin.flush()
        node = child.stdout.readline().strip()
        assert child.wait(HANG) == 0
    finally:
        child.kill()
    new = _leader_of(cluster.directory)
    assert node == new != "node1"
    cluster.start_node("node1")
    # node1 now holds the fence: a writer that still takes it for the leader is refused there.
    stale = apsw.Connection(str(cluster.path_of("node1")))
    try:
        assert stale.execute("SELECT value FROM _replproxy_meta WHERE key='deposed_by_epoch'").fetchone()
    finally:
        stale.close()
    cluster.wait_for_catchup()
    assert [r[1] for r in _rows(cluster.path_of("node1"))] == ["before", "child 1", "child 2"]
    assert verify(cluster).identical
    conn.close()


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_stop_start_and_config(cluster):
    runner = CliRunner()
    d = str(cluster.directory)
    out = runner.invoke(main, ["config", d, "--no-auto-failover", "--failover-timeout", "2",
                               "--failover-cooldown", "30", "--failover-key-gap", "500"])
    assert out.exit_code == 0, out.output
    assert "manual only" in out.output
    config = cfg.read(cluster.directory)
    assert (config.auto_failover, config.failover_timeout, config.failover_cooldown,
            config.failover_key_gap) == (False, 2.0, 30.0, 500)
    out = runner.invoke(main, ["stop-node", d, "node1"])
    assert out.exit_code == 0 and "automatic failover is off" in out.output
    out = runner.invoke(main, ["status", d, "--json"])
    status = json.loads(out.output)
    assert {n["name"]: n["state"] for n in status["nodes"]}["node1"] == "stopped"
    assert status["failover"]["leader_ok"] is False
    again = runner.invoke(main, ["stop-node", d, "node1"])
    assert again.exit_code == 1 and "already stopped" in again.output
    out = runner.invoke(main, ["failover", d])
    assert out.exit_code == 0 and "node2 is the leader at epoch 2" in out.output
    out = runner.invoke(main, ["start-node", d, "node1"])
    assert out.exit_code == 0 and "node1 rejoined as a follower" in out.output
    unknown = runner.invoke(main, ["stop-node", d, "node9"])
    assert unknown.exit_code == 1 and "no node named 'node9'" in unknown.output


def test_shell_stop_start_and_the_next_write_goes_to_the_new_leader(cluster):
    import io

    from proxy.tools.shell.repl import Shell

    cluster.configure(**FAST)
    out = io.StringIO()
    script = io.StringIO(textwrap.dedent("""\
        CREATE TABLE t(id INTEGER PRIMARY KEY, v);
        INSERT INTO t(v) VALUES ('one');
        .wait
        .stop node1
        INSERT INTO t(v) VALUES ('two');
        .start node1
        .wait
        SELECT v FROM t ORDER BY id;
    """))
    shell = Shell(cluster, stdout=out, stderr=out)
    try:
        shell.run_script(script)
    finally:
        shell.close()
    text = out.getvalue()
    assert shell.errors == 0, text
    assert "node1 stopped; automatic failover in 0.3s" in text
    assert "node1 rejoined as a follower" in text
    assert cfg.read(cluster.directory).leader.name == "node2"
    assert [r[1] for r in _rows(cluster.path_of("node1"))] == ["one", "two"]


def test_rejoin_names_plain_rowid_keys_the_new_leader_gave_to_other_rows(cluster):
    # Without AUTOINCREMENT SQLite hands out max(rowid) + 1, so the new leader reuses the keys of
    # rows lost with the old leader; they cannot be avoided, but they are never silent.
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO p(v) VALUES ('kept')")
    cluster.wait_for_catchup()
    cluster.pause("node2")
    cluster.pause("node3")
    conn.execute("INSERT INTO p(v) VALUES ('lost')")  # id 2 on node1 only
    _stop_leader_then_resume(cluster, ["node2", "node3"])
    _wait_leader_change(cluster, "node1")
    conn.execute("INSERT INTO p(v) VALUES ('new')")  # id 2 again, on the new leader
    result = cluster.start_node("node1")
    assert result.keys_reused == 1 and any("now belong to other rows" in line for line in result.lines())
    record = json.loads(Path(result.lost_file).read_text().splitlines()[0])
    assert record["keys_reused"] == [{"table": "p", "key": {"id": 2}, "now": {"id": 2, "v": "new"}}]
    cluster.wait_for_catchup()
    assert verify(cluster).identical


def test_writes_racing_an_automatic_failover_either_commit_or_fail_never_both(cluster):
    """Writer threads keep inserting while the leader is stopped: every write that returned is on
    the new leader or recorded as a lost write; every write that raised is nowhere."""
    import threading

    cluster.configure(**FAST)
    setup = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    setup.execute("CREATE TABLE w(id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT UNIQUE)")
    setup.close()
    ok: list[str] = []
    failed: list[str] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        conn = proxy.connect(cluster.directory, cluster=cluster)
        i = 0
        while not stop.is_set():
            tag = f"w{n}-{i}"
            i += 1
            try:
                conn.execute("INSERT INTO w(tag) VALUES (?)", (tag,))
                conn.commit()
                ok.append(tag)
            except proxy.OperationalError:
                failed.append(tag)
                if conn.in_transaction:
                    conn.rollback()
        conn.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(ok) >= 60, message="60 writes before the stop")
        cluster.stop_node("node1")
        new = _wait_leader_change(cluster, "node1")
        settled = len(ok)
        wait_until(lambda: len(ok) >= settled + 60, message="60 writes after the failover")
    finally:
        stop.set()
        for t in threads:
            t.join(HANG)
    assert not any(t.is_alive() for t in threads)
    result = cluster.start_node("node1")
    lost_tags: set[str] = set()
    if result.lost_file:
        for line in Path(result.lost_file).read_text().splitlines():
            for event in json.loads(line)["events"]:
                if event["kind"] == "INSERT" and event.get("table") == "w":
                    lost_tags.add(event["new"]["tag"])
    cluster.wait_for_catchup()
    on_leader = {r[0] for r in _rows(cluster.path_of(new), "SELECT tag FROM w")}
    assert set(ok) <= on_leader | lost_tags
    assert not (set(failed) & (on_leader | lost_tags))
    assert not (on_leader & lost_tags)
    assert verify(cluster).identical


def test_a_leader_file_that_disappears_is_detected_and_replaced(cluster):
    cluster.configure(**FAST)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t(v) VALUES ('kept')")
    cluster.wait_for_catchup()
    old = cluster.path_of("node1")
    for suffix in ("", "-wal", "-shm"):  # the disk holding it is gone
        if Path(f"{old}{suffix}").exists():
            Path(f"{old}{suffix}").rename(f"{old}{suffix}.gone")
    new = _wait_leader_change(cluster, "node1")
    # The monitor records it just after rewriting cluster.toml.
    made = wait_until(lambda: cluster.monitor.last_failover, cluster=cluster,
                      message="the monitor records its failover")
    assert made.automatic and "node1.db) is missing" in made.reason and not made.old_leader_reachable
    cur = conn.execute("INSERT INTO t(v) VALUES ('after')")
    assert cur.node == new
    assert [r[1] for r in _rows(cluster.path_of(new))] == ["kept", "after"]


def test_monitors_in_several_processes_make_exactly_one_failover(cluster):
    cluster.configure(**FAST)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.wait_for_catchup()
    # Each child reports, once told, after its own monitor has seen the new leader answer (none
    # may fail over again from then on): a probe that succeeds clears `failing_since`.
    script = textwrap.dedent(f"""
        import sys, time, proxy
        c = proxy.Cluster({str(cluster.directory)!r})
        m = c.monitor
        ticks = []
        real_tick = m.tick
        def tick():
            result = real_tick()
            ticks.append((c.config.leader.name, m.failing_since))
            return result
        m.tick = tick
        print("ready", flush=True)
        sys.stdin.readline()
        deadline = time.monotonic() + {HANG}
        while not any(leader != "node1" and since is None for leader, since in ticks[-5:]):
            assert time.monotonic() < deadline, ticks[-5:]
            c.wait_progress(0.02)
        c.close()
        print(m.last_failover.epoch if m.last_failover else 0, flush=True)
    """)
    children = [spawn_python(script) for _ in range(3)]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        cluster.stop_node("node1")
        _wait_leader_change(cluster, "node1")
        made = []
        for child in children:
            child.stdin.write("done\n")
            child.stdin.flush()
            made.append(int(child.stdout.readline()))
            assert child.wait(HANG) == 0
    finally:
        for child in children:
            child.kill()
    mine = cluster.monitor.last_failover
    made.append(mine.epoch if mine else 0)
    config = cfg.read(cluster.directory)
    assert len(config.epochs) == 1 and config.epoch == 2
    assert sorted(made) == [0, 0, 0, 2]  # one monitor, among four processes, failed over


def test_a_failover_made_by_another_process_is_seen_without_writing(cluster):
    cluster.configure(auto_failover=False)
    cluster.stop_node("node1")
    run_replproxy("failover", cluster.directory)
    # The replicator re-reads cluster.toml every round; nothing is written here.
    wait_until(lambda: cluster.leader != "node1", cluster=cluster, message="this process sees the failover")
    assert cluster.leader == "node2"


def _diverge(cluster: proxy.Cluster, ddl: bool = True) -> proxy.Connection:
    """node1 leads with entries node2 lacks (paused); node3 holds them too."""
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    conn.execute("CREATE TABLE other(x)")
    cluster.wait_for_catchup()
    cluster.pause("node2")
    if ddl:
        conn.execute("CREATE TABLE only_old(x)")  # a table the lost writes create
        conn.execute("INSERT INTO only_old VALUES ('x1')")
    else:
        conn.execute("INSERT INTO other VALUES ('x1')")
    conn.execute("INSERT INTO t(v) VALUES ('old')")
    cluster.wait_for_catchup(nodes=["node3"])
    return conn


def test_fork_point_is_the_lowest_base_of_the_failovers_a_node_missed(cluster):
    cluster.configure(auto_failover=False)
    conn = _diverge(cluster)
    base = cluster.leader_lsn()
    cluster.stop_node("node1")
    assert cluster.failover().new_leader == "node3"  # has everything node1 had
    conn.execute("INSERT INTO t(v) VALUES ('on node3')")
    # Then node2, far behind, is forced in: node1's entries after LSN 1 are off the history now,
    # although the failover node1 itself missed started at its own last LSN.
    result = cluster.failover("node2", force=True)  # node2 is paused: it cannot catch up
    assert result.lsn == 2 and cfg.read(cluster.directory).fork_lsn(1) == 2
    started = cluster.start_node("node1")
    assert started.fork_lsn == 2 and started.lost_lsns == (3, base)
    records = [json.loads(line) for line in Path(started.lost_file).read_text().splitlines()]
    # Decoded with node1's own schema: only_old exists nowhere else.
    assert {"kind": "INSERT", "table": "only_old", "new": {"rowid": 1, "x": "x1"}} in [
        e for r in records for e in r["events"]]
    cluster.resync("node3")  # it applied past node2's position: marked by the forced failover
    cluster.wait_for_catchup()
    assert verify(cluster).identical
    conn.close()


def test_a_follower_off_the_history_is_neither_promoted_nor_resumed_nor_read(cluster):
    cluster.configure(auto_failover=False)
    conn = _diverge(cluster, ddl=False)
    cluster.failover("node2", force=True)  # paused node2 is promoted; node3 applied past it: diverged
    status = {s.name: s for s in cluster.status()}
    assert status["node3"].state == "needs-snapshot"
    with pytest.raises(proxy.ClusterError, match="cannot simply resume"):
        cluster.resume("node3")
    with pytest.raises(proxy.ClusterError, match="off the current history"):
        cluster.failover("node3")
    for _ in range(6):
        cur = conn.cursor().execute("SELECT count(*) FROM t", consistency="eventual")
        assert cur.node != "node3"
    assert cluster.failover().new_leader == "node1"  # node3 is skipped by the automatic choice
    conn.close()


def test_unreachable_old_leader_moves_counters_of_tables_without_a_counter_row_yet(cluster):
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    cluster.wait_for_catchup()
    cluster.pause("node2")
    cluster.pause("node3")
    conn.execute("INSERT INTO t(v) VALUES ('lost')")  # id 1: the followers never had a counter row
    _stop_leader_then_resume(cluster, ["node2", "node3"])
    _wait_leader_change(cluster, "node1")
    cur = conn.execute("INSERT INTO t(v) VALUES ('new')")
    assert cur.lastrowid == 1 + 1_000_000
    cluster.start_node("node1")
    cluster.wait_for_catchup()
    assert verify(cluster).identical
    conn.close()


def test_an_applier_still_reading_the_old_leader_never_applies_its_later_entries(cluster):
    from proxy.store.applier import Applier
    from proxy.store.source import LeaderFileSource

    cluster.configure(auto_failover=False)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.wait_for_catchup()
    cluster.pause("node3")
    result = cluster.failover("node2")
    # A write the old leader took anyway (as if fenced too late): the dead branch at base + 1.
    old = apsw.Connection(str(cluster.path_of("node1")))
    with store_node.write_transaction(old):
        old.execute("INSERT INTO t(v) VALUES ('dead branch')")
        dead = store_log.append(old, epoch=1, format="sql-free", payload=b"never applied")
    old.close()
    assert dead == result.lsn + 1
    # node3's applier as another process would have it before re-reading cluster.toml.
    stale = Applier("node3", str(cluster.path_of("node3")), LeaderFileSource(cluster.path_of("node1")))
    try:
        cluster.resume("node3")
        assert stale.step() == 0 and stale.applied_lsn == result.lsn
        assert "epoch 1" in stale.held and f"LSN {result.lsn}" in stale.held
    finally:
        stale.close()
    conn.execute("INSERT INTO t(v) VALUES ('new leader')")
    cluster.wait_for_catchup(nodes=["node3"])  # the real replicator follows node2
    assert [r[1] for r in _rows(cluster.path_of("node3"))] == ["new leader"]
    conn.close()


def test_reads_pinned_to_a_stopped_node_fail_and_strong_reads_follow_the_failover(cluster):
    cluster.configure(**FAST)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    conn.execute("INSERT INTO t(v) VALUES ('x')")
    cluster.wait_for_catchup()
    pinned = proxy.connect(cluster.directory, node="node3", cluster=cluster)
    cluster.stop_node("node3")
    with pytest.raises(proxy.OperationalError, match="node3 is stopped"):
        pinned.execute("SELECT count(*) FROM t")
    pinned.close()
    cluster.stop_node("node1")
    cur = conn.cursor().execute("SELECT v FROM t", consistency="strong")
    assert cur.fetchall() == [("x",)] and cur.node == "node2"
    conn.close()


def test_a_follower_marked_for_a_snapshot_then_stopped_is_reseeded_when_it_starts(cluster):
    """A forced failover marks node3 (past the new leader) for a snapshot; node3 is stopped and misses
    a later failover. Starting it must not resume it on its diverged data: it is re-seeded."""
    cluster.configure(auto_failover=False)
    conn = proxy.connect(cluster.directory, autocommit=True, cluster=cluster)
    conn.execute("CREATE TABLE w(id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT)")
    cluster.wait_for_catchup()
    cluster.pause("node2")
    conn.execute("INSERT INTO w(tag) VALUES ('lost')")  # on node1 and node3 only
    cluster.wait_for_catchup(nodes=["node3"])
    cluster.failover("node2", force=True)
    assert {s.name: s.state for s in cluster.status()}["node3"] == "needs-snapshot"
    cluster.stop_node("node3")
    conn.execute("INSERT INTO w(tag) VALUES ('new')")
    cluster.wait_for_catchup(nodes=["node1"])
    cluster.failover("node1")  # a failover node3 misses while stopped
    started = cluster.start_node("node3")
    assert started.method == "snapshot" and "needed a new snapshot before it stopped" in started.reason
    cluster.wait_for_catchup()
    assert {s.name: s.state for s in cluster.status()}["node3"] == "ok"
    report = verify(cluster)
    assert report.identical, report.differences
    assert same_on_all(cluster, "SELECT tag FROM w ORDER BY id") == [("new",)]
    conn.close()


def test_stop_node_of_a_leader_says_when_the_cooldown_holds_the_failover(cluster):
    runner = CliRunner()
    d = str(cluster.directory)
    assert runner.invoke(main, ["config", d, "--failover-timeout", "2", "--failover-cooldown", "3600"]).exit_code == 0
    out = runner.invoke(main, ["stop-node", d, "node1"])
    assert out.exit_code == 0 and "automatic failover after 2s" in out.output  # no failover yet: none held
    assert runner.invoke(main, ["failover", d]).exit_code == 0
    last = cfg.read(cluster.directory).last_failover_at
    out = runner.invoke(main, ["stop-node", d, "node2"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    held = datetime.datetime.fromtimestamp(last + 3600).astimezone().isoformat(timespec="seconds")
    assert f"automatic failover held until {held}" in text and "writes fail" in text
    assert "automatic failover after" not in text
    status = runner.invoke(main, ["status", d]).output
    assert all(len(line) <= 80 for line in status.splitlines()), status
    assert "held until" in " ".join(status.split())
