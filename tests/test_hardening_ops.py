"""Issue 14 ("Never diverge silently"), operations side: `verify` compares at exactly one LSN or
says it could not, `status` calls out followers whose position cannot be trusted, `resync`
replaces a damaged follower file, and no traceback reaches a CLI user."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest
from checks import assert_identical, node_rows
from helpers import HANG, in_background, open_plain, run_replproxy, wait_until

import proxy
from proxy.cluster import verify as verify_mod

FORMATS = ["row", "statement", "mixed", "trigger"]


# -- helpers ------------------------------------------------------------------------------------


def write(cluster: proxy.Cluster, *statements: str) -> int:
    """Run statements through the proxy, one transaction; return its LSN."""
    conn = proxy.connect(cluster.directory, cluster=cluster)
    try:
        for sql in statements:
            conn.execute(sql)
        conn.commit()
        return conn.last_write_lsn
    finally:
        conn.close()


def tamper(cluster: proxy.Cluster, node: str, *statements: str) -> None:
    """Change a node file behind replproxy's back."""
    db = open_plain(cluster.path_of(node))
    try:
        for sql in statements:
            db.execute(sql)
    finally:
        db.close()


def states(cluster: proxy.Cluster) -> dict[str, str]:
    return {n.name: n.state for n in cluster.status()}


@pytest.fixture
def writer() -> Iterator[Callable[[proxy.Cluster], None]]:
    """Start a thread committing to a cluster until the test ends (ongoing writes)."""
    stop = threading.Event()
    futures = []

    def start(cluster: proxy.Cluster) -> None:
        def loop() -> int:
            conn = proxy.connect(cluster.directory, cluster=cluster)
            count = 0
            try:
                while not stop.is_set():
                    conn.execute("INSERT INTO busy(v) VALUES (?)", (count,))
                    conn.commit()
                    count += 1
            finally:
                conn.close()
            return count

        write(cluster, "CREATE TABLE busy(id INTEGER PRIMARY KEY, v)")
        futures.append(in_background(loop))
        first = cluster.leader_lsn()
        wait_until(lambda: cluster.leader_lsn() > first + 5, message="the writer commits")

    yield start
    stop.set()
    for future in futures:
        assert future.result(HANG) > 0


def restore_leader(cluster: proxy.Cluster, backup: Path) -> None:
    """Replace the (closed) cluster's leader file with an older copy, as a restore from backup."""
    src = apsw.Connection(str(backup))
    dest = apsw.Connection(str(cluster.path_of(cluster.leader)))
    with dest.backup("main", src, "main") as b:
        b.step(-1)
    src.close()
    dest.close()


def backup_leader(cluster: proxy.Cluster, to: Path) -> None:
    src = apsw.Connection(str(cluster.path_of(cluster.leader)))
    dest = apsw.Connection(str(to))
    with dest.backup("main", src, "main") as b:
        b.step(-1)
    src.close()
    dest.close()


# -- class 2: verify compares at exactly one LSN ---------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_under_ongoing_writes_compares_and_finds_a_difference(make_cluster, writer, fmt):
    cluster = make_cluster(format=fmt)
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)", "INSERT INTO t VALUES (1, 'a')")
    cluster.wait_for_catchup(HANG)
    writer(cluster)
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "identical", report.differences
    tamper(cluster, "node3", "UPDATE t SET v = 'x' WHERE id = 1")
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "different"
    assert [(d.node, d.object) for d in report.differences] == [("node3", "t")]


def test_verify_applies_a_lagging_follower_to_the_lsn_itself_never_past_it(cluster):
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.replicator.stop()  # nobody else moves the followers
    for i in range(5):
        write(cluster, f"INSERT INTO t VALUES ({i}, 'v')")
    report = proxy.verify(cluster, timeout=HANG)
    assert report.identical and report.lsn == cluster.leader_lsn()
    assert cluster.positions() == dict.fromkeys([cluster.leader, *cluster.followers], report.lsn)


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_says_ahead_when_the_leader_was_restored_from_an_older_backup(make_cluster, tmp_path, fmt):
    cluster = make_cluster(format=fmt)
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    backup_leader(cluster, tmp_path / "backup.db")
    write(cluster, "INSERT INTO t VALUES (1, 'later')")
    cluster.wait_for_catchup(HANG)
    cluster.close()
    restore_leader(cluster, tmp_path / "backup.db")
    with proxy.Cluster(cluster.directory, replicate=False) as reopened:
        report = proxy.verify(reopened, timeout=HANG)
        assert report.outcome == "different"
        assert {d.node: d.kind for d in report.differences} == {"node2": "ahead-of-leader",
                                                                 "node3": "ahead-of-leader"}
        assert "older backup" in report.differences[0].detail
        assert "resync" in report.differences[0].detail
    done = run_replproxy("verify", cluster.directory, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ahead" in done.stdout or "older" in done.stdout


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_and_status_see_a_fork_when_the_restored_leader_writes_on(make_cluster, tmp_path, fmt):
    cluster = make_cluster(format=fmt)
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    backup_leader(cluster, tmp_path / "backup.db")
    write(cluster, "INSERT INTO t VALUES (1, 'old history')")
    write(cluster, "INSERT INTO t VALUES (2, 'old history')")
    cluster.wait_for_catchup(HANG)
    cluster.close()
    restore_leader(cluster, tmp_path / "backup.db")
    with proxy.Cluster(cluster.directory) as reopened:
        for i in range(2):  # up to the followers' position: other entries at the same LSNs
            write(reopened, f"INSERT INTO t VALUES ({10 + i}, 'new history')")
        nodes = {n.name: n for n in reopened.status()}
        for name in ("node2", "node3"):
            assert nodes[name].state == "diverged", nodes[name]
            assert "no longer continues" in nodes[name].error and "resync" in nodes[name].error
        report = proxy.verify(reopened, timeout=HANG)
        assert report.outcome == "different"
        assert {d.node for d in report.differences} == {"node2", "node3"}
        # Past their position: the appliers refuse to apply the new history on top of the old.
        write(reopened, "INSERT INTO t VALUES (12, 'new history')")
        wait_until(lambda: {n.name: n.state for n in reopened.status()}["node3"] == "needs-snapshot"
                   and {n.name: n.state for n in reopened.status()}["node2"] == "needs-snapshot",
                   cluster=reopened, message="the followers stop at the fork")
        for name in ("node2", "node3"):
            assert node_rows(reopened, name, "SELECT id FROM t WHERE v = 'new history'") == []
            assert "no longer continues" in {n.name: n for n in reopened.status()}[name].error
        report = proxy.verify(reopened, timeout=HANG)
        assert report.outcome == "different"
        assert {d.node for d in report.differences} == {"node2", "node3"}
        reopened.resync("node2")
        reopened.resync("node3")
        assert states(reopened) == dict.fromkeys(["node1", "node2", "node3"], "ok")
        assert_identical(reopened)


@pytest.mark.parametrize("change", ["down", "up", "skip"])
def test_verify_and_status_catch_an_outside_edit_of_the_applied_position(cluster, change):
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    for i in range(3):
        write(cluster, f"INSERT INTO t VALUES ({i}, 'v')")
    cluster.wait_for_catchup(HANG)
    if change == "skip":  # the position jumps over an entry not applied yet
        cluster.pause("node2")
        write(cluster, "INSERT INTO t VALUES (10, 'skipped')")
        write(cluster, "INSERT INTO t VALUES (11, 'applied')")
        tamper(cluster, "node2", "UPDATE _replproxy_state SET applied_lsn = applied_lsn + 1")
        cluster.resume("node2")
        cluster.wait_for_catchup(HANG)
    else:
        delta = -1 if change == "down" else 1
        tamper(cluster, "node2", f"UPDATE _replproxy_state SET applied_lsn = applied_lsn + {delta}")
    node2 = next(n for n in cluster.status() if n.name == "node2")
    assert node2.state == "diverged", node2
    assert "changed outside replproxy" in node2.error and "resync" in node2.error
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "different"
    assert {d.node for d in report.differences} == {"node2"}
    cluster.resync("node2")
    assert_identical(cluster)


def test_verify_catches_an_edited_position_on_a_follower_without_log_copies(cluster):
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cluster.wait_for_catchup(HANG)
    cluster.pause("node2")
    write(cluster, "INSERT INTO t VALUES (1, 'never applied on node2')")
    write(cluster, "INSERT INTO t VALUES (2, 'v')")
    tamper(cluster, "node2", "DELETE FROM _replproxy_log",
           "UPDATE _replproxy_state SET applied_lsn = applied_lsn + 1")
    cluster.resume("node2")
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "different"
    assert [(d.node, d.object) for d in report.differences] == [("node2", "t")]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("table", [
    "CREATE TABLE k(id INTEGER PRIMARY KEY DESC, v)",
    "CREATE TABLE k(id TEXT PRIMARY KEY, v)",
    "CREATE TABLE k(a INT DEFAULT 0, id INT, v, PRIMARY KEY (id, a))",
])
def test_verify_does_not_report_rowids_that_are_not_the_key(make_cluster, fmt, table):
    cluster = make_cluster(format=fmt)
    write(cluster, table)
    key = "'k' || x" if "TEXT" in table else "x"
    rows = [5, 3, 9, 1, 7, 2, 8]
    write(cluster, *(f"INSERT INTO k(id, v) SELECT {key}, 'v' FROM (SELECT {r} AS x)" for r in rows))
    gone = "'k3', 'k9'" if "TEXT" in table else "3, 9"
    write(cluster, f"DELETE FROM k WHERE id IN ({gone})",
          "INSERT INTO k(id, v) SELECT " + key.replace("x", "100") + ", 'w'")
    report = assert_identical(cluster)
    assert report.outcome == "identical"


def test_verify_wide_tables_and_exact_types(make_cluster):
    # Statement format: the row format cannot apply a changeset of a 1000-column table yet
    # ("SQL logic error", logformats), which is not what this test is about.
    cluster = make_cluster(format="statement")
    columns = ", ".join(f"c{i}" for i in range(1000))
    write(cluster, f"CREATE TABLE wide(id INTEGER PRIMARY KEY, {columns})",
          "INSERT INTO wide(id, c0, c999) VALUES (1, 'a', X'FF')",
          f"CREATE TABLE nokey({columns})", "INSERT INTO nokey(c0, c999) VALUES (1, 2)",
          "CREATE TABLE typed(id INTEGER PRIMARY KEY, v)",
          "INSERT INTO typed VALUES (1, 'ab'), (2, 'a' || X'FF')")
    assert_identical(cluster)
    tamper(cluster, "node2", "UPDATE typed SET v = CAST(v AS BLOB) WHERE id = 1")  # same bytes
    tamper(cluster, "node3", "UPDATE wide SET c999 = X'FE'")
    report = proxy.verify(cluster, timeout=HANG)
    assert {(d.node, d.object) for d in report.differences} == {("node2", "typed"), ("node3", "wide")}


def test_verify_could_not_compare_paused_and_stopped_followers(cluster):
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    cluster.wait_for_catchup(HANG)
    cluster.pause("node2")
    cluster.stop_node("node3")
    write(cluster, "INSERT INTO t VALUES (1)")
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "could-not-compare" and not report.identical
    assert set(report.not_compared) == {"node2", "node3"}
    assert "paused" in report.not_compared["node2"] and "stop-node" in report.not_compared["node3"]
    # A difference found on another node wins: the answer is "different".
    cluster.start_node("node3")
    cluster.wait_for_catchup(HANG, nodes=["node3"])
    tamper(cluster, "node3", "DELETE FROM t")
    assert proxy.verify(cluster, timeout=HANG).outcome == "different"


def test_verify_times_out_on_a_held_follower_lock(cluster):
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    cluster.wait_for_catchup(HANG)
    holder = open_plain(cluster.path_of("node2"))
    holder.execute("BEGIN IMMEDIATE")
    try:
        report = proxy.verify(cluster, timeout=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert report.outcome == "could-not-compare"
    assert "timed out" in report.not_compared["node2"]


def test_verify_cli_exit_codes(tmp_path):
    directory = tmp_path / "c"
    run_replproxy("init", directory)
    run_replproxy("exec", directory, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    run_replproxy("exec", directory, "INSERT INTO t VALUES (1, 'a')")
    done = run_replproxy("verify", directory)
    assert done.stdout.startswith("OK: 3 nodes identical")
    assert json.loads(run_replproxy("verify", directory, "--json").stdout)["outcome"] == "identical"
    run_replproxy("pause", directory, "node2")
    run_replproxy("exec", directory, "INSERT INTO t VALUES (2, 'b')")
    done = run_replproxy("verify", directory, check=False)
    assert done.returncode == 2 and "COULD NOT COMPARE" in done.stdout and "paused" in done.stdout
    run_replproxy("resume", directory, "node2")
    run_replproxy("verify", directory)
    db = apsw.Connection(str(directory / "node3.db"))
    db.execute("UPDATE t SET v = 'tampered'")
    db.close()
    done = run_replproxy("verify", directory, check=False)
    assert done.returncode == 1 and "DIFFERENT" in done.stdout and "resync" in done.stdout
    for args in (["verify", tmp_path / "nothing"], ["verify", directory, "--bogus"],
                 ["verify", directory, "--timeout", "x"]):
        done = run_replproxy(*args, check=False)
        assert done.returncode == 3, (args, done.stdout, done.stderr)


def test_verify_report_keeps_its_api(cluster):
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    report = proxy.verify(cluster)
    assert report.identical and report.as_dict()["outcome"] == "identical"
    assert isinstance(report, verify_mod.VerifyReport)


# -- class 3: status calls out positions it cannot trust ------------------------------------------


def test_status_calls_out_a_leader_restored_from_an_older_backup(cluster, tmp_path):
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    backup_leader(cluster, tmp_path / "backup.db")
    write(cluster, "INSERT INTO t VALUES (1, 'x')")
    cluster.wait_for_catchup(HANG)
    cluster.close()
    restore_leader(cluster, tmp_path / "backup.db")
    with proxy.Cluster(cluster.directory, replicate=False) as reopened:
        nodes = {n.name: n for n in reopened.status()}
    assert nodes["node1"].state == "behind-followers" and "older backup" in nodes["node1"].error
    for name in ("node2", "node3"):
        assert nodes[name].state == "ahead-of-leader" and "resync" in nodes[name].error
    data = json.loads(run_replproxy("status", cluster.directory, "--json").stdout)
    assert {n["name"]: n["state"] for n in data["nodes"]} == {
        "node1": "behind-followers", "node2": "ahead-of-leader", "node3": "ahead-of-leader"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_status_stays_ok_through_resync_failover_and_retention(make_cluster, fmt):
    cluster = make_cluster(format=fmt)
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    for i in range(5):
        write(cluster, f"INSERT INTO t VALUES ({i}, 'v')")
    cluster.wait_for_catchup(HANG)
    assert set(states(cluster).values()) == {"ok"}
    cluster.resync("node2")
    write(cluster, "INSERT INTO t VALUES (10, 'v')")
    cluster.wait_for_catchup(HANG)
    assert set(states(cluster).values()) == {"ok"}
    cluster.failover("node3")
    write(cluster, "INSERT INTO t VALUES (11, 'v')")
    cluster.wait_for_catchup(HANG)
    assert set(states(cluster).values()) == {"ok"}, cluster.status()
    cluster.configure(retain_min_entries=1)
    cluster.truncate_log()
    write(cluster, "INSERT INTO t VALUES (12, 'v')")
    cluster.wait_for_catchup(HANG)
    assert set(states(cluster).values()) == {"ok"}, cluster.status()
    assert_identical(cluster)


# -- class 16: resync replaces a damaged follower; a failing follower is logged once ---------------


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    Path(str(path) + "-wal").unlink(missing_ok=True)
    Path(str(path) + "-shm").unlink(missing_ok=True)
    if how == "header":
        with open(path, "r+b") as f:
            f.write(b"this is no longer a SQLite file")
    elif how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(size // 3)
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    elif how == "empty":
        path.write_bytes(b"")


def filled(make_cluster, fmt: str = "row") -> proxy.Cluster:
    cluster = make_cluster(format=fmt)
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    write(cluster, *(f"INSERT INTO t VALUES ({i}, '{'x' * 500}')" for i in range(200)))
    cluster.wait_for_catchup(HANG)
    return cluster


@pytest.mark.parametrize("how", ["header", "truncated", "garbage", "empty"])
def test_resync_replaces_a_damaged_follower_file(make_cluster, how):
    cluster = filled(make_cluster)
    directory = cluster.directory
    cluster.close()
    damage(directory / "node2.db", how)
    with proxy.Cluster(directory) as reopened:
        write(reopened, "INSERT INTO t VALUES (1000, 'after the damage')")
        assert reopened.resync("node2") > 0
        reopened.wait_for_catchup(HANG)
        assert_identical(reopened)
        assert {n.name: n.state for n in reopened.status()}["node2"] == "ok"
    if how != "empty":  # what was there is kept for inspection, never deleted
        assert list(directory.glob("node2.db.damaged-*"))


def test_resync_cli_replaces_a_damaged_follower_file(make_cluster):
    cluster = filled(make_cluster)
    directory = cluster.directory
    cluster.close()
    damage(directory / "node3.db", "header")
    done = run_replproxy("resync", directory, "node3")
    assert "re-seeded" in done.stdout and "caught up" in done.stdout
    run_replproxy("verify", directory)


@pytest.mark.parametrize("how", ["header", "state-table"])
def test_a_damaged_follower_is_logged_once_and_its_recovery_once(make_cluster, caplog, how):
    cluster = filled(make_cluster)
    directory = cluster.directory
    caplog.set_level("WARNING", logger="replproxy")
    if how == "header":  # damaged before the process opens the cluster
        cluster.close()
        damage(directory / "node2.db", "header")
        watching = proxy.Cluster(directory)  # its replicator keeps trying node2
    else:  # damaged under an open applier: every step fails
        watching = cluster
        tamper(cluster, "node2", "DROP TABLE _replproxy_state")
        write(cluster, "INSERT INTO t VALUES (999, 'v')")
    rounds = []
    watching.round_hooks.append(lambda lsn, positions: rounds.append(lsn))
    try:
        watching.replicator.reopen_interval = 0.0  # reopen node2 on every round: the worst case
        wait_until(lambda: len(rounds) > 50, message="replicator rounds")
        about_node2 = [r for r in caplog.records
                       if "node2" in r.getMessage() and r.name == "replproxy.replication"]
        assert len(about_node2) == 1, [r.getMessage() for r in about_node2]
        # Another process re-seeds it: this one picks the new file up and says so once.
        with proxy.Cluster(directory, replicate=False) as other:
            other.resync("node2")
        write(watching, "INSERT INTO t VALUES (1000, 'v')")
        watching.wait_for_catchup(HANG, nodes=["node2"])
        wait_until(lambda: "node2" not in watching.replicator.errors, message="node2 recovered")
        count = len(rounds)
        wait_until(lambda: len(rounds) > count + 20, message="more rounds")
        about_node2 = [r.getMessage() for r in caplog.records
                       if "node2" in r.getMessage() and r.name == "replproxy.replication"]
        assert len(about_node2) == 2 and "working again" in about_node2[1], about_node2
    finally:
        watching.close()


# -- class 17: no traceback reaches a CLI user ----------------------------------------------------


def replproxy_bytes(*args: str | bytes | Path, stdin: bytes | None = None):
    """`replproxy ARGS` as a subprocess, arguments and input as raw bytes (not UTF-8 allowed)."""
    import subprocess

    from helpers import replproxy_command

    done = subprocess.run([*replproxy_command(), *(a if isinstance(a, bytes) else str(a) for a in args)],
                          input=stdin, capture_output=True, timeout=HANG)
    err = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    return done.returncode, done.stdout.decode("utf-8", "replace"), err


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "c"
    run_replproxy("init", directory)
    run_replproxy("exec", directory, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    run_replproxy("exec", directory, "INSERT INTO t VALUES (1, 'a' || X'FF')")  # text, not UTF-8
    return directory


NOT_UTF8 = "not valid UTF-8"
HOSTILE = [
    # (arguments with {dir} for the cluster, expected exit code, expected in stderr)
    (["exec", "{dir}", "SELECT * FROM t"], 1, NOT_UTF8),
    (["exec", "{dir}", "SELECT v FROM t", "--mode", "json"], 1, NOT_UTF8),
    (["exec", "{dir}", b"SELECT '\xff'"], 1, NOT_UTF8),
    (["exec", "{dir}", "SELECT ?", "-p", b"\xfe"], 1, NOT_UTF8),
    (["exec", "{dir}", "SELEC"], 1, "syntax error"),
    (["log", "{dir}", "--from", "99999999999999999999999"], 2, "--from"),
    (["init", "/proc/replproxy-cannot-be-here"], 1, "cannot create a cluster"),
    (["init", "{dir}/cluster.toml/sub"], 1, "cannot create a cluster"),
    (["init", b"/proc/\xff"], 1, "replproxy: "),
    (["config", "{dir}", "--semi-sync-k", "3"], 1, "semi_sync_k 3 is more than the 2 follower"),
    (["config", "{dir}", "--mode", "semi-sync", "--semi-sync-k", "5"], 1, "semi_sync_k 5"),
    (["compare", "-q", "--json", "/nonexistent-dir/r.json"], 2, "--json /nonexistent-dir/r.json"),
    (["compare", "-q", "--html", "{dir}/cluster.toml/r.html"], 2, "--html"),
    (["resume", "{dir}", b"n\xff"], 1, "replproxy: "),
    (["add-follower", "{dir}", b"n\xff"], 1, "bad node name"),
    (["exec", "{dir}", "--settle", "nan", "SELECT 1"], 2, "finite"),
    (["add-follower", "{dir}", "n4", "--wait", "inf"], 2, "finite"),
    (["config", "{dir}", "--timeout", "nan"], 2, "finite"),
    (["config", "{dir}", "--retain-max-age", "inf"], 2, "finite"),
    (["verify", "{dir}", "--timeout", "nan"], 3, "finite"),
]


@pytest.mark.parametrize("args, code, expected", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_cli_hostile_inputs_end_in_one_line_not_a_traceback(hostile_dir, args, code, expected):
    args = [a.replace("{dir}", str(hostile_dir)) if isinstance(a, str) else a for a in args]
    returncode, _out, err = replproxy_bytes(*args)
    assert returncode == code, err
    assert expected in err, err
    assert err.strip().splitlines()[-1].startswith(("replproxy: ", "Error: ")), err


@pytest.mark.parametrize("as_json", [False, True])
def test_log_shows_entries_holding_text_that_is_not_utf8(hostile_dir, as_json):
    returncode, out, err = replproxy_bytes("log", hostile_dir, *(["--json"] if as_json else []))
    assert returncode == 0, err
    if as_json:
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["lsn"] for r in records] == [1, 2] and NOT_UTF8 in records[1]["error"]
    else:
        assert "# LSN 2" in out and NOT_UTF8 in out


def test_shell_reports_text_that_is_not_utf8_and_goes_on(hostile_dir):
    script = b"SELECT v FROM t;\nSELECT '\xff';\nSELECT 40 + 2;\n.log 2\n"
    returncode, out, err = replproxy_bytes("shell", hostile_dir, stdin=script)
    assert returncode == 1  # a script with errors
    # The driver raises what sqlite3 raises for undecodable text (OperationalError naming the column).
    assert "Error in stdin line 1: Could not decode to UTF-8 column 'v'" in err
    assert "Error in stdin line 2: input is not valid UTF-8" in err
    assert "42" in out and "# LSN 2" in out


def test_compare_refuses_an_unwritable_output_before_running(tmp_path):
    existing = tmp_path / "keep.json"
    existing.write_text("mine")
    returncode, out, err = replproxy_bytes("compare", "-q", "--workload", "oltp", "--format", "row-full",
                                           "--json", existing, "--html", tmp_path / "no" / "r.html")
    assert returncode == 2 and "--html" in err and out == ""
    assert existing.read_text() == "mine"  # the probe neither truncates nor removes it
    assert not (tmp_path / "no").exists()


def test_semi_sync_k_cannot_exceed_the_followers(cluster):
    with pytest.raises(proxy.ClusterError, match="semi_sync_k 3 is more than the 2 follower"):
        cluster.configure(semi_sync_k=3)
    cluster.configure(mode="semi-sync", semi_sync_k=2)
    with pytest.raises(proxy.ClusterError, match="semi_sync_k 2"):
        cluster.remove_follower("node3")
    assert cluster.config.semi_sync_k == 2 and len(cluster.followers) == 2
    cluster.configure(semi_sync_k=1)
    cluster.remove_follower("node3")


@pytest.mark.parametrize("how", ["header", "garbage"])
def test_status_and_verify_name_a_damaged_follower_and_suggest_resync(make_cluster, how):
    cluster = filled(make_cluster)
    directory = cluster.directory
    cluster.close()
    damage(directory / "node2.db", how)
    with proxy.Cluster(directory, replicate=False) as reopened:
        node2 = {n.name: n for n in reopened.status()}["node2"]
        assert node2.state == "damaged" and "resync" in node2.error and "node2.db" in node2.error
        report = proxy.verify(reopened, timeout=HANG)
        assert report.outcome == "could-not-compare" and "resync" in report.not_compared["node2"]


def test_shell_dot_commands_with_hostile_arguments_go_on(hostile_dir):
    script = (b".log 99999999999999999999999\n.wait nan\n.wait -1\n.read /proc/nope\n"
              b".output /proc/nope/x\n.pause nope\nSELECT 40 + 2;\n")
    returncode, out, err = replproxy_bytes("shell", hostile_dir, stdin=script)
    assert returncode == 1 and "42" in out and "# LSN 1" in out
    for line in (2, 3, 4, 5, 6):
        assert f"Error in stdin line {line}: " in err, err


def test_verify_outcomes_for_other_cluster_states(make_cluster):
    lone = make_cluster("lone", followers=0)
    write(lone, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    assert proxy.verify(lone).outcome == "identical"
    cluster = make_cluster()
    write(cluster, "CREATE TABLE t(id INTEGER PRIMARY KEY)")
    cluster.wait_for_catchup(HANG)
    # Behind retention: its data is a prefix, not a fork; it cannot be brought to the LSN.
    cluster.configure(retain_min_entries=0, retain_max_bytes=200)
    cluster.pause("node2")
    for i in range(20):
        write(cluster, f"INSERT INTO t VALUES ({i})")
    cluster.wait_for_catchup(HANG, nodes=["node3"])
    cluster.truncate_log()
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "could-not-compare" and "paused" in report.not_compared["node2"]
    cluster.resume("node2")
    wait_until(lambda: states(cluster)["node2"] == "needs-snapshot", cluster=cluster, timeout=HANG)
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "could-not-compare", report.differences
    assert "resync" in report.not_compared["node2"]
    cluster.resync("node2")
    assert proxy.verify(cluster, timeout=HANG).outcome == "identical"
    cluster.configure(auto_failover=False)
    cluster.stop_node(cluster.leader)
    report = proxy.verify(cluster, timeout=HANG)
    assert report.outcome == "could-not-compare" and "node1" in report.not_compared
