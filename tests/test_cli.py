"""The `replproxy` command line: click's CliRunner for most commands, plus real subprocess runs of
the installed executable."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import apsw
import pytest
from checks import file_rows as query
from click.testing import CliRunner, Result
from helpers import HANG, replproxy_command, run_replproxy, wait_until

import proxy
from proxy.tools.cli import main

COMMANDS_WITH_DIR = [
    ["status"], ["status", "--json"], ["verify", "--timeout", "1"], ["log"], ["log", "--json"],
    ["exec", "--settle", "0", "SELECT 1"], ["pause", "node2"], ["resume", "node2"],
]


# -- helpers ------------------------------------------------------------------------------------

def run(*args: Any, ok: bool | None = True) -> Result:
    """Run `replproxy ARGS` in-process; ok=True expects exit 0, ok=False a clean failure."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    # never a Python traceback: failures are SystemExit with a message
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"replproxy {' '.join(map(str, args))} raised {result.exception!r}\n{result.output}")
    assert "Traceback" not in result.output
    if ok is True:
        assert result.exit_code == 0, f"replproxy {' '.join(map(str, args))}:\n{result.output}"
    elif ok is False:
        assert result.exit_code != 0, f"replproxy {' '.join(map(str, args))} succeeded:\n{result.output}"
    return result


def init(directory: Path, *options: Any) -> Path:
    run("init", directory, *options)
    return directory


def catch_up(directory: Path) -> None:
    with proxy.Cluster(directory) as cluster:
        cluster.wait_for_catchup(10)


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    """A cluster made by `replproxy init`, with a table t."""
    directory = init(tmp_path / "c")
    run("exec", directory, "--settle", "0", "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
    return directory


# -- init ---------------------------------------------------------------------------------------

def test_init_defaults(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    result = run("init", directory)
    assert "node1" in result.output and "leader" in result.output
    assert (directory / "cluster.toml").is_file()
    assert sorted(p.name for p in directory.glob("node*.db")) == ["node1.db", "node2.db", "node3.db"]
    for name in ("node1.db", "node2.db", "node3.db"):
        assert query(directory / name, "PRAGMA journal_mode") == [("wal",)]
    config = (directory / "cluster.toml").read_text()
    assert 'format = "row"' in config and 'row_image = "full"' in config
    with proxy.Cluster(directory, replicate=False) as cluster:
        assert cluster.leader == "node1"
        assert cluster.followers == ["node2", "node3"]


@pytest.mark.parametrize("followers", [0, 1, 4])
def test_init_followers(tmp_path: Path, followers: int) -> None:
    directory = init(tmp_path / "c", "--followers", followers)
    names = sorted(p.name for p in directory.glob("node*.db"))
    assert names == [f"node{i}.db" for i in range(1, followers + 2)]
    with proxy.Cluster(directory, replicate=False) as cluster:
        assert len(cluster.followers) == followers
    run("exec", directory, "CREATE TABLE f(id INTEGER PRIMARY KEY)")
    run("verify", directory)


def test_init_row_image_minimal(tmp_path: Path) -> None:
    directory = init(tmp_path / "c", "--row-image", "minimal")
    assert 'row_image = "minimal"' in (directory / "cluster.toml").read_text()
    status = json.loads(run("status", directory, "--json").stdout)
    assert status["row_image"] == "minimal"
    run("exec", directory, "--settle", "0", "CREATE TABLE m(id INTEGER PRIMARY KEY, a, b)")
    run("exec", directory, "--settle", "0", "INSERT INTO m VALUES (1, 'x', 'y')")
    run("exec", directory, "UPDATE m SET b = 'z' WHERE id = 1")
    assert run("verify", directory).exit_code == 0
    for name in ("node2.db", "node3.db"):
        assert query(directory / name, "SELECT * FROM m") == [(1, "x", "z")]
    events = [json.loads(line)["events"] for line in run("log", directory, "--json").stdout.splitlines()]
    update = events[-1][0]
    assert update["kind"] == "UPDATE" and update["table"] == "m"
    assert update["new"]["b"] == "z"


def test_init_bad_row_image(tmp_path: Path) -> None:
    result = run("init", tmp_path / "c", "--row-image", "huge", ok=False)
    assert "huge" in result.output
    assert not (tmp_path / "c" / "cluster.toml").exists()


def test_init_from_existing_database(tmp_path: Path) -> None:
    seed = tmp_path / "app.db"
    db = sqlite3.connect(seed)
    db.executescript("""
        CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE events(user_id INTEGER, what TEXT);  -- no primary key
        CREATE INDEX events_user ON events(user_id);
        INSERT INTO users(name) VALUES ('ann'), ('bob');
        INSERT INTO events VALUES (1, 'login'), (2, 'login'), (1, 'logout');
        PRAGMA user_version = 7;
    """)
    db.commit()
    db.close()
    before = hashlib.sha256(seed.read_bytes()).hexdigest()
    directory = init(tmp_path / "c", "--from", seed)
    assert hashlib.sha256(seed.read_bytes()).hexdigest() == before  # the seed is only read
    for name in ("node1.db", "node2.db", "node3.db"):
        path = directory / name
        assert query(path, "PRAGMA journal_mode") == [("wal",)]
        assert query(path, "PRAGMA user_version") == [(7,)]
        assert query(path, "SELECT name FROM users ORDER BY id") == [("ann",), ("bob",)]
        assert query(path, "SELECT user_id, what FROM events ORDER BY rowid") == [
            (1, "login"), (2, "login"), (1, "logout")]
    assert run("verify", directory).exit_code == 0
    # later writes, to both kinds of table, replicate
    run("exec", directory, "--settle", "0", "INSERT INTO users(name) VALUES ('cy')")
    run("exec", directory, "--settle", "0", "INSERT INTO events VALUES (3, 'signup')")
    run("exec", directory, "--settle", "0", "UPDATE events SET what = 'bye' WHERE what = 'logout'")
    run("exec", directory, "DELETE FROM events WHERE user_id = 2")
    catch_up(directory)
    for name in ("node2.db", "node3.db"):
        assert query(directory / name, "SELECT name FROM users ORDER BY id") == [("ann",), ("bob",), ("cy",)]
        assert query(directory / name, "SELECT rowid, user_id, what FROM events ORDER BY rowid") == [
            (1, 1, "login"), (3, 1, "bye"), (4, 3, "signup")]
    assert "OK" in run("verify", directory).output


def test_init_from_missing_file(tmp_path: Path) -> None:
    result = run("init", tmp_path / "c", "--from", tmp_path / "nope.db", ok=False)
    assert "nope.db" in result.output
    assert not (tmp_path / "c" / "cluster.toml").exists()


def test_init_refuses_existing_cluster(cdir: Path) -> None:
    run("exec", cdir, "INSERT INTO t(a) VALUES (1)")
    before = digest(cdir)
    result = run("init", cdir, ok=False)
    assert result.exit_code == 1
    assert "already" in result.stderr and "cluster.toml" in result.stderr
    assert digest(cdir) == before
    result = run("init", cdir, "--followers", "5", "--row-image", "minimal", ok=False)
    assert digest(cdir) == before
    assert not (cdir / "node6.db").exists()
    assert run("verify", cdir).exit_code == 0


def test_init_refuses_existing_node_file(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    sqlite3.connect(directory / "node2.db").execute("CREATE TABLE precious(x)").connection.close()
    before = digest(directory)
    result = run("init", directory, ok=False)
    assert "node2.db" in result.stderr
    assert digest(directory) == before
    assert not (directory / "cluster.toml").exists()


# -- exec ---------------------------------------------------------------------------------------

def test_exec_prints_rows_as_table(cdir: Path) -> None:
    # (the default --settle lets the followers apply it: the next exec is a new session)
    run("exec", cdir, "INSERT INTO t(a, b) VALUES (1, 'one'), (2, NULL)")
    result = run("exec", cdir, "SELECT id, a, b AS label FROM t ORDER BY id")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("+") and lines[-1].startswith("+")
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header == ["id", "a", "label"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[3:-1]]
    assert rows == [["1", "1", "one"], ["2", "2", "NULL"]]
    assert "served by" in result.stderr


def test_exec_write_reports_changes_and_replicates(cdir: Path) -> None:
    result = run("exec", cdir, "INSERT INTO t(a, b) VALUES (1, 'x'), (2, 'y')")
    assert "2 row(s) changed" in result.stderr
    assert "served by node1" in result.stderr and "LSN 2" in result.stderr
    assert result.stdout == ""
    catch_up(cdir)
    for name in ("node1.db", "node2.db", "node3.db"):
        assert query(cdir / name, "SELECT a, b FROM t ORDER BY id") == [(1, "x"), (2, "y")]
    result = run("exec", cdir, "--mode", "csv", "SELECT count(*) AS n FROM t")
    assert result.stdout == "n\n2\n"
    assert "served by node" in result.stderr


def test_exec_params(cdir: Path) -> None:
    values = [("5", 5, "integer"), ("-1.5", -1.5, "real"), ("hello world", "hello world", "text"),
              ('"5"', "5", "text"), ("x'00ff10'", b"\x00\xff\x10", "blob"), ("null", None, "null"),
              ("X'CAFE'", b"\xca\xfe", "blob")]
    for text, _value, _type in values:
        run("exec", cdir, "--settle", "0", "INSERT INTO t(a, b) VALUES (?, typeof(?))", "--param", text,
            "-p", text)
    catch_up(cdir)
    for name in ("node1.db", "node2.db"):
        assert query(cdir / name, "SELECT a, b FROM t ORDER BY id") == [(v, t) for _s, v, t in values]
    result = run("exec", cdir, "--mode", "json", "SELECT ? AS n, ? AS s, ? AS b", "-p", "42", "-p", "abc",
                 "-p", "x'0102'")
    assert json.loads(result.stdout) == [{"n": 42, "s": "abc", "b": {"blob": "0102"}}]


def test_exec_wrong_param_count(cdir: Path) -> None:
    result = run("exec", cdir, "INSERT INTO t(a, b) VALUES (?, ?)", "-p", "1", ok=False)
    assert "bindings" in result.stderr.lower()
    assert query(cdir / "node1.db", "SELECT count(*) FROM t") == [(0,)]


def test_exec_modes(cdir: Path) -> None:
    run("exec", cdir, "INSERT INTO t(a, b) VALUES (1, 'plain'), (2.5, 'with, comma'), "
        "(NULL, x'ab')")
    result = run("exec", cdir, "--mode", "json", "SELECT a, b FROM t ORDER BY id")
    assert json.loads(result.stdout) == [{"a": 1, "b": "plain"}, {"a": 2.5, "b": "with, comma"},
                                         {"a": None, "b": {"blob": "ab"}}]
    result = run("exec", cdir, "--mode", "csv", "SELECT a, b FROM t ORDER BY id")
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        ["a", "b"], ["1", "plain"], ["2.5", "with, comma"], ["", "x'ab'"]]
    assert json.loads(run("exec", cdir, "--mode", "json", "SELECT * FROM t WHERE 0").stdout) == []
    result = run("exec", cdir, "--mode", "line", "SELECT a, b FROM t WHERE id = 1")
    assert result.stdout.split() == ["a", "=", "1", "b", "=", "plain"]
    result = run("exec", cdir, "--mode", "box", "SELECT a FROM t WHERE id = 1")
    assert "│" in result.stdout and "a" in result.stdout
    run("exec", cdir, "--mode", "xml", "SELECT 1", ok=False)


def test_exec_errors(cdir: Path) -> None:
    result = run("exec", cdir, "SELECT * FROM nosuch", ok=False)
    assert result.exit_code == 1
    assert "no such table: nosuch" in result.stderr
    result = run("exec", cdir, "SELEC 1", ok=False)
    assert 'near "SELEC": syntax error' in result.stderr
    run("exec", cdir, "--settle", "0", "CREATE UNIQUE INDEX t_a ON t(a)")
    run("exec", cdir, "--settle", "0", "INSERT INTO t(a) VALUES (1)")
    result = run("exec", cdir, "INSERT INTO t(a) VALUES (1)", ok=False)
    assert "UNIQUE constraint failed: t.a" in result.stderr
    result = run("exec", cdir, "ATTACH 'x.db' AS x", ok=False)
    assert "ATTACH" in result.stderr


def test_a_write_lock_held_too_long_is_explained(cdir: Path) -> None:
    import apsw

    holder = apsw.Connection(str(cdir / "node1.db"))
    holder.execute("BEGIN IMMEDIATE")  # another program's open write transaction
    try:
        result = run("exec", cdir, "PRAGMA busy_timeout = 20; INSERT INTO t(a) VALUES (1)", ok=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 1
    assert "database is locked: another connection held the write lock" in result.stderr
    assert "retry once that transaction ends" in result.stderr


def test_exec_runs_several_statements_as_sqlite3_does(cdir: Path) -> None:
    result = run("exec", cdir, "--mode", "csv", "INSERT INTO t(a) VALUES (1), (2); SELECT 'x;y' AS s; "
                 "SELECT count(*) AS n FROM t -- the end;")
    assert result.stdout == "s\nx;y\nn\n2\n"
    assert "2 row(s) changed" in result.stderr
    # The first error stops the run; what came before stays committed, and it says so.
    result = run("exec", cdir, "INSERT INTO t(a) VALUES (3); INSERT INTO nosuch VALUES (1); "
                 "INSERT INTO t(a) VALUES (4)", ok=False)
    assert result.exit_code == 1
    assert "no such table: nosuch (statement 2 of 3" in result.stderr and "committed" in result.stderr
    assert query(cdir / "node1.db", "SELECT a FROM t ORDER BY id") == [(1,), (2,), (3,)]
    # A transaction the SQL opens and commits is one log entry; one it leaves open is rolled back.
    run("exec", cdir, "BEGIN; INSERT INTO t(a) VALUES (5); INSERT INTO t(a) VALUES (6); COMMIT")
    result = run("exec", cdir, "BEGIN; INSERT INTO t(a) VALUES (7)", ok=False)
    assert "not committed: it was rolled back" in result.stderr
    assert query(cdir / "node1.db", "SELECT a FROM t ORDER BY id") == [(1,), (2,), (3,), (5,), (6,)]
    result = run("exec", cdir, "SELECT 1; SELECT 2", "-p", "1", ok=False)
    assert result.exit_code == 2 and "one statement" in result.stderr


def test_exec_reads_sql_from_standard_input(cdir: Path) -> None:
    script = "".join(f"INSERT INTO t(a, b) VALUES ({i}, 'row;{i}');\n" for i in range(200)) + "SELECT count(*) FROM t;"
    result = CliRunner().invoke(main, ["exec", str(cdir), "--mode", "csv", "-"], input=script)
    assert result.exit_code == 0, result.output
    assert result.stdout == "count(*)\n200\n"
    catch_up(cdir)
    assert query(cdir / "node2.db", "SELECT count(*) FROM t WHERE b LIKE 'row;%'") == [(200,)]


def _has_open_db(pid: int) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".db"):
                return True
        except OSError:  # closed since listed
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the process open its cluster")
def test_ctrl_c_stops_a_running_exec(cdir: Path) -> None:
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    process = subprocess.Popen([*replproxy_command(), "exec", str(cdir), forever], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        # Ctrl-C is handled from before the cluster is opened: once a node file is open, it counts.
        wait_until(lambda: _has_open_db(process.pid), HANG, poll=0.01)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=HANG)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and "interrupted" in err, (out, err)


def test_exec_on_a_follower(cdir: Path) -> None:
    run("exec", cdir, "INSERT INTO t(a) VALUES ('kept')")
    catch_up(cdir)
    result = run("exec", cdir, "--node", "node2", "--mode", "csv", "SELECT a FROM t")
    assert result.stdout == "a\nkept\n"
    assert "served by node2" in result.stderr
    result = run("exec", cdir, "--node", "node2", "INSERT INTO t(a) VALUES ('refused')", ok=False)
    assert "read-only" in result.stderr and "node2" in result.stderr
    result = run("exec", cdir, "--node", "node3", "DELETE FROM t", ok=False)
    assert "read-only" in result.stderr
    assert query(cdir / "node1.db", "SELECT a FROM t") == [("kept",)]
    # the leader can be named, and then accepts writes
    run("exec", cdir, "--node", "node1", "INSERT INTO t(a) VALUES ('leader')")
    result = run("exec", cdir, "--node", "node9", "SELECT 1", ok=False)
    assert "node9" in result.stderr


# -- status, pause, resume ----------------------------------------------------------------------

def test_status(cdir: Path) -> None:
    result = run("status", cdir)
    for word in ("node1", "node2", "node3", "leader", "follower", "ok", "node1.db"):
        assert word in result.stdout
    data = json.loads(run("status", cdir, "--json").stdout)
    assert data["format"] == "row" and data["row_image"] == "full"
    nodes = {n["name"]: n for n in data["nodes"]}
    assert list(nodes) == ["node1", "node2", "node3"]
    for name, node in nodes.items():
        assert {"name", "role", "file", "applied_lsn", "lag_entries", "lag_seconds", "state"} <= set(node)
        assert node["role"] == ("leader" if name == "node1" else "follower")
        assert Path(node["file"]).name == f"{name}.db"
        assert Path(node["file"]).is_file()
        assert node["state"] == "ok"
    catch_up(cdir)
    data = json.loads(run("status", cdir, "--json").stdout)
    assert {n["applied_lsn"] for n in data["nodes"]} == {1}
    assert {n["lag_entries"] for n in data["nodes"]} == {0}


def test_pause_and_resume(cdir: Path) -> None:
    catch_up(cdir)
    assert "paused" in run("pause", cdir, "node3").output
    run("exec", cdir, "--settle", "0.5", "INSERT INTO t(a) VALUES (1)")
    run("exec", cdir, "--settle", "0.5", "INSERT INTO t(a) VALUES (2)")
    data = json.loads(run("status", cdir, "--json").stdout)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert nodes["node3"]["state"] == "paused"
    assert nodes["node3"]["applied_lsn"] == 1
    assert nodes["node3"]["lag_entries"] == 2
    assert nodes["node3"]["lag_seconds"] >= 0
    assert nodes["node2"]["state"] == "ok" and nodes["node2"]["lag_entries"] == 0
    assert nodes["node1"]["applied_lsn"] == 3
    text = run("status", cdir).stdout
    assert any("node3" in line and "paused" in line for line in text.splitlines())
    # verify reports the paused follower as behind
    result = run("verify", cdir, "--timeout", "0.2", ok=False)
    assert "node3" in result.output and "paused" in result.output
    assert query(cdir / "node3.db", "SELECT count(*) FROM t") == [(0,)]
    assert "resumed" in run("resume", cdir, "node3").output
    catch_up(cdir)
    nodes = {n["name"]: n for n in json.loads(run("status", cdir, "--json").stdout)["nodes"]}
    assert nodes["node3"]["state"] == "ok" and nodes["node3"]["applied_lsn"] == 3
    assert query(cdir / "node3.db", "SELECT a FROM t ORDER BY id") == [(1,), (2,)]
    assert run("verify", cdir).exit_code == 0


def test_pause_errors(cdir: Path) -> None:
    result = run("pause", cdir, "node1", ok=False)
    assert "leader" in result.stderr
    result = run("pause", cdir, "node7", ok=False)
    assert "node7" in result.stderr
    result = run("resume", cdir, "node7", ok=False)
    assert "node7" in result.stderr


# -- verify -------------------------------------------------------------------------------------

def test_verify_identical(cdir: Path) -> None:
    run("exec", cdir, "INSERT INTO t(a, b) VALUES (1, 2)")
    result = run("verify", cdir)
    assert result.exit_code == 0
    assert "OK" in result.stdout and "3 nodes identical" in result.stdout
    report = json.loads(run("verify", cdir, "--json").stdout)
    assert report["identical"] is True and report["differences"] == []


def test_verify_detects_direct_change_to_follower(cdir: Path) -> None:
    run("exec", cdir, "--settle", "0", "CREATE TABLE other(id INTEGER PRIMARY KEY, x)")
    run("exec", cdir, "INSERT INTO t(a, b) VALUES (1, 'same'), (2, 'same')")
    catch_up(cdir)
    db = apsw.Connection(str(cdir / "node2.db"))
    db.execute("UPDATE t SET b = 'tampered' WHERE id = 2")
    db.close()
    result = run("verify", cdir, ok=False)
    assert result.exit_code == 1
    assert "DIFFERENT" in result.stdout
    assert "node2: t: same row count (2), different content" in result.stdout
    assert "node3" not in result.stdout and "other" not in result.stdout
    report = json.loads(run("verify", cdir, "--json", ok=False).stdout)
    assert report["identical"] is False
    assert [(d["node"], d["object"]) for d in report["differences"]] == [("node2", "t")]
    # a row count difference is reported too
    db = apsw.Connection(str(cdir / "node3.db"))
    db.execute("DELETE FROM t WHERE id = 1")
    db.close()
    result = run("verify", cdir, ok=False)
    assert "node3: t: 1 rows (leader 2)" in result.stdout


# -- log ----------------------------------------------------------------------------------------

def test_log(cdir: Path) -> None:
    run("exec", cdir, "--settle", "0", "INSERT INTO t(a, b) VALUES (1, 'one')")
    run("exec", cdir, "--settle", "0", "UPDATE t SET b = 'uno' WHERE id = 1")
    run("exec", cdir, "--settle", "0", "INSERT INTO t(a, b) VALUES (2, x'beef')")
    run("exec", cdir, "--settle", "0", "DELETE FROM t WHERE a = 2")
    text = run("log", cdir).stdout
    headers = [line for line in text.splitlines() if line.startswith("# LSN")]
    assert [h.split()[2] for h in headers] == ["1", "2", "3", "4", "5"]
    assert all("epoch 1" in h and "format row" in h and h.endswith("ok") for h in headers)
    assert "CREATE TABLE t" in text
    assert "INSERT t: id=1 a=1 b='one'" in text
    assert "UPDATE t:" in text and "'uno'" in text
    assert "INSERT t: id=2 a=2 b=x'beef'" in text
    assert "DELETE t:" in text

    text = run("log", cdir, "--from", "3").stdout
    assert [line.split()[2] for line in text.splitlines() if line.startswith("# LSN")] == ["3", "4", "5"]
    text = run("log", cdir, "--from", "2", "--limit", "2").stdout
    assert [line.split()[2] for line in text.splitlines() if line.startswith("# LSN")] == ["2", "3"]
    assert run("log", cdir, "--from", "99").stdout == ""
    run("log", cdir, "--from", "0", ok=False)

    lines = run("log", cdir, "--json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["lsn"] for r in records] == [1, 2, 3, 4, 5]
    for record in records:
        assert {"lsn", "epoch", "committed_at", "format", "checksum_ok", "events"} <= set(record)
        assert record["epoch"] == 1 and record["format"] == "row" and record["checksum_ok"] is True
        assert isinstance(record["committed_at"], str) and record["committed_at"][:2] == "20"
    assert records[0]["events"][0]["kind"] == "SQL"
    insert = records[1]["events"]
    assert insert == [{"kind": "INSERT", "table": "t", "new": {"id": 1, "a": 1, "b": "one"}}]
    update = records[2]["events"][0]
    assert update["kind"] == "UPDATE" and update["table"] == "t"
    assert update["old"]["b"] == "one" and update["new"]["b"] == "uno"
    assert records[3]["events"][0]["new"]["b"] == {"blob": "beef"}
    delete = records[4]["events"][0]
    assert delete["kind"] == "DELETE" and delete["old"]["id"] == 2
    limited = run("log", cdir, "--json", "--from", "4", "--limit", "1").stdout.splitlines()
    assert [json.loads(line)["lsn"] for line in limited] == [4]


# -- broken clusters ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS_WITH_DIR, ids=lambda c: " ".join(c))
def test_missing_cluster_toml(tmp_path: Path, command: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(command[0], empty, *command[1:], ok=False)
    assert "cluster.toml" in result.stderr and str(empty) in result.stderr
    assert "replproxy init" in result.stderr
    result = run(command[0], tmp_path / "nowhere", *command[1:], ok=False)
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


@pytest.mark.parametrize("command", COMMANDS_WITH_DIR, ids=lambda c: " ".join(c))
def test_damaged_cluster_toml(cdir: Path, command: list[str]) -> None:
    (cdir / "cluster.toml").write_text("this is [[ not toml at all = = \n\x01garbage\n")
    result = run(command[0], cdir, *command[1:], ok=False)
    assert "cluster.toml" in result.stderr and "damaged" in result.stderr


def test_cluster_toml_without_nodes(cdir: Path) -> None:
    (cdir / "cluster.toml").write_text('[cluster]\nformat = "row"\n')
    result = run("status", cdir, ok=False)
    assert "cluster.toml" in result.stderr and "node" in result.stderr


def test_binary_garbage_cluster_toml(cdir: Path) -> None:
    (cdir / "cluster.toml").write_bytes(os.urandom(64) + b"\xff\xfe")
    result = run("status", cdir, ok=False)
    assert "cluster.toml" in result.stderr


@pytest.mark.parametrize("command", COMMANDS_WITH_DIR, ids=lambda c: " ".join(c))
def test_missing_leader_file(cdir: Path, command: list[str]) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cdir / 'node1.db'}{suffix}").unlink(missing_ok=True)
    result = run(command[0], cdir, *command[1:], ok=False)
    assert "node1.db" in result.stderr and "missing" in result.stderr


@pytest.mark.parametrize("command", COMMANDS_WITH_DIR, ids=lambda c: " ".join(c))
def test_leader_file_not_a_database(cdir: Path, command: list[str]) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cdir / 'node1.db'}{suffix}").unlink(missing_ok=True)
    (cdir / "node1.db").write_bytes(b"this is not a database, only text. " * 200)
    result = run(command[0], cdir, *command[1:], ok=False)
    assert "node1.db" in result.stderr and "not a database" in result.stderr


@pytest.mark.parametrize("damage", ["missing", "not a database", "plain sqlite"])
def test_broken_follower_file(cdir: Path, damage: str) -> None:
    path = cdir / "node2.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if damage == "not a database":
        path.write_bytes(b"\x00garbage that is no SQLite header " * 300)
    elif damage == "plain sqlite":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b)")
        db.commit()
        db.close()
    # verify and pause fail, naming the file
    result = run("verify", cdir, "--timeout", "1", ok=False)
    assert "node2.db" in result.output and "node2" in result.output
    result = run("pause", cdir, "node2", ok=False)
    assert "node2.db" in result.stderr
    # status shows the node's trouble and the file at fault, and still reports the others
    nodes = {n["name"]: n for n in json.loads(run("status", cdir, "--json").stdout)["nodes"]}
    assert nodes["node2"]["state"] in ("missing", "damaged")  # issue 14: a damaged file says so
    assert "node2.db" in nodes["node2"]["error"]
    assert nodes["node3"]["state"] == "ok"
    text = run("status", cdir).stdout
    assert "node2.db" in text
    # reads and writes through the proxy still work: the other nodes are fine
    run("exec", cdir, "INSERT INTO t(a) VALUES (1)", "--settle", "0.2")
    result = run("exec", cdir, "--node", "node1", "--mode", "csv", "SELECT count(*) FROM t")
    assert result.stdout.splitlines()[-1] == "1"


# -- demo, help, subprocess ---------------------------------------------------------------------

def test_demo(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    result = run("demo", directory)
    assert "OK: 3 nodes identical" in result.output
    assert "committed on node2 (epoch 2)" in result.output  # after the automatic failover
    assert "node1 rejoined as a follower" in result.output
    assert (directory / "cluster.toml").is_file()
    # run again: the demo reuses its cluster
    result = run("demo", directory)
    assert "Reusing" in result.output
    assert run("verify", directory).exit_code == 0


@pytest.mark.parametrize("command", [[]] + [[name] for name in sorted(main.commands)],
                         ids=lambda c: " ".join(c) or "main")
def test_help(command: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = run(*command, flag)
        assert result.stdout.startswith("Usage:")
        assert "--help" in result.stdout
    if command:
        assert command[0] in result.stdout


def test_help_lists_commands() -> None:
    text = run("--help").stdout
    for name in ("init", "exec", "status", "verify", "log", "pause", "resume", "demo"):
        assert name in text


def test_installed_executable(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    sh = run_replproxy

    assert "Usage:" in sh("--help").stdout
    sh("init", directory, "--followers", "1")
    sh("exec", directory, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    done = sh("exec", directory, "INSERT INTO t(v) VALUES (?)", "--param", "x'0a0b'")
    assert "served by node1" in done.stderr
    done = sh("exec", directory, "--mode", "json", "SELECT id, v FROM t")
    assert json.loads(done.stdout) == [{"id": 1, "v": {"blob": "0a0b"}}]
    assert query(directory / "node2.db", "SELECT v FROM t") == [(b"\x0a\x0b",)]
    nodes = json.loads(sh("status", directory, "--json").stdout)["nodes"]
    assert [(n["name"], n["applied_lsn"], n["state"]) for n in nodes] == [("node1", 2, "ok"), ("node2", 2, "ok")]
    assert sh("verify", directory).returncode == 0
    assert len(sh("log", directory, "--json").stdout.splitlines()) == 2
    done = sh("exec", directory, "SELECT * FROM nope", check=False)
    assert done.returncode == 1
    assert "no such table: nope" in done.stderr
    done = sh("init", directory, check=False)
    assert done.returncode != 0 and "already" in done.stderr
    (directory / "cluster.toml").write_text("garbage [[[")
    done = sh("status", directory, check=False)
    assert done.returncode == 1 and "cluster.toml" in done.stderr


def test_config_json(cdir: Path) -> None:
    data = json.loads(run("config", cdir, "--mode", "semi-sync", "--semi-sync-k", "1", "--json").stdout)
    assert data["format"] == "row"
    assert data["replication"]["mode"] == "semi-sync" and data["replication"]["semi_sync_k"] == 1
    assert data["failover"]["auto_failover"] is True
    assert json.loads(run("config", cdir, "--json").stdout)["replication"]["mode"] == "semi-sync"
