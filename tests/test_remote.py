"""Clients on other machines: the DB-API driver over NATS against nodes served by their own
`replproxy serve` processes (docs/remote.md). The test process has no node directory of its own:
it reaches the cluster by URL only, as an application server or a laptop would."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from distnodes import Cluster, Node
from helpers import HANG, python_command, run_replproxy, wait_until

import proxy
from proxy.dist import local
from proxy.jetstream.kv import ClusterKV
from proxy.jetstream.names import LEASE_KEY
from proxy.store import node as store

TTL = "2"  # lease seconds: failover tests wait about this long



def _url(dist: Cluster) -> str:
    return f"{dist.nats}/{dist.name}"


def _three(dist: Cluster, *options: str) -> tuple[Node, Node, Node]:
    a = dist.init("a", *options).serve()
    dist.wait_serving(a)
    b = dist.join("b").serve()
    c = dist.join("c").serve()
    dist.wait_reporting(a, b, c)
    return a, b, c


def test_writes_and_a_transaction_with_reads_inside_it(dist: Cluster) -> None:
    a, b, c = _three(dist)
    # A follower waits for the session's write as long as it takes (a busy machine), not 0.5 s.
    conn = proxy.connect(_url(dist), wait_timeout=HANG)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
    conn.execute("INSERT INTO t(v, b) VALUES (?, ?)", ("one", b"\x00\x01"))
    assert conn.in_transaction  # DML opens a transaction, as in sqlite3
    cur = conn.execute("SELECT v, b FROM t")  # inside it: the transaction's own snapshot
    assert cur.fetchall() == [("one", b"\x00\x01")]
    conn.commit()
    assert not conn.in_transaction
    lsn = conn.last_write_lsn
    assert lsn > 0
    cur = conn.execute("SELECT count(*) FROM t")
    assert cur.fetchone() == (1,)
    assert cur.node in ("b", "c")  # a follower served it, having applied the write first
    assert cur.lsn >= lsn
    conn.close()
    dist.wait_caught_up(a, b, c)
    dist.verify(a)


def _hold(dist: Cluster, *nodes: Node, seconds: float = 120.0) -> None:
    """Followers stop applying where they are (as `verify` holds them) for `seconds`."""
    config = local.read(next(iter(dist.nodes.values())).directory)
    with config.bridge() as bridge:
        for node in nodes:
            bridge.request(config.names.request_subject("hold", node.name), {"seconds": seconds}, 10.0)


def test_read_your_writes_monotonic_reads_and_a_session_token_across_clients(dist: Cluster) -> None:
    a, b, c = _three(dist)
    writer = proxy.connect(_url(dist), autocommit=True)
    writer.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    writer.execute("INSERT INTO t VALUES (1, 'before')")
    dist.wait_caught_up(a, b, c)
    _hold(dist, b, c)  # neither follower gets what comes next
    writer.execute("INSERT INTO t VALUES (2, 'after')")
    cur = writer.execute("SELECT v FROM t ORDER BY id")
    assert cur.fetchall() == [("before",), ("after",)]  # read-your-writes: no follower has it ...
    assert cur.node == "a"  # ... so the leader served it, after the followers were given wait_timeout
    # Another client continuing the session by token sees the write too.
    reader = proxy.connect(_url(dist), session_token=writer.session_token, wait_timeout=0.05)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (2,)
    # Without the token, an eventual read may come from a follower that lacks it: allowed, and said.
    stranger = proxy.connect(_url(dist), consistency="eventual")
    cur = stranger.execute("SELECT count(*) FROM t")
    assert cur.fetchone() == (1,) and cur.node in ("b", "c") and cur.lsn < writer.last_write_lsn
    # A follower the session cannot read from, pinned with on_stale="error": a clear error.
    pinned = proxy.connect(_url(dist), node="b", on_stale="error", session_token=writer.session_token)
    with pytest.raises(proxy.OperationalError, match=f"LSN {writer.last_write_lsn}"):
        pinned.execute("SELECT count(*) FROM t")
    for conn in (writer, reader, stranger, pinned):
        conn.close()


def test_monotonic_reads_never_go_back_to_a_follower_behind_what_was_read(dist: Cluster) -> None:
    a, b, c = _three(dist)
    writer = proxy.connect(_url(dist), autocommit=True)
    writer.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    dist.wait_caught_up(a, b, c)
    _hold(dist, b)
    writer.execute("INSERT INTO t VALUES (1)")
    dist.wait_caught_up(a, c)
    reader = proxy.connect(_url(dist), consistency="monotonic", node="c")
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
    # The same session now on b, which is behind what it read: b waits, then the leader serves.
    reader.pinned_node = None
    for _ in range(6):
        cur = reader.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (1,), cur.node
        assert cur.node != "b"
    reader.close()
    writer.close()


def test_errors_keep_sqlite_message_and_dbapi_class(dist: Cluster) -> None:
    _three(dist)
    conn = proxy.connect(_url(dist), autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")
    conn.execute("INSERT INTO t VALUES (1, 'x')")
    with pytest.raises(proxy.IntegrityError, match="UNIQUE constraint failed: t.v") as caught:
        conn.execute("INSERT INTO t VALUES (2, 'x')")
    assert (caught.value.sqlite_errorcode, caught.value.sqlite_errorname) == (2067, "SQLITE_CONSTRAINT_UNIQUE")
    with pytest.raises(proxy.OperationalError, match="no such table: nope"):
        conn.execute("SELECT * FROM nope")
    with pytest.raises(proxy.OperationalError, match='near "SELEC": syntax error'):
        conn.execute("SELEC 1")
    with pytest.raises(proxy.ProgrammingError):
        conn.execute("SELECT 1; SELECT 2")
    assert conn.execute("SELECT v FROM t").fetchall() == [("x",)]  # the connection goes on
    conn.close()
    with pytest.raises(proxy.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


def test_a_100000_row_read_comes_in_chunks(dist: Cluster) -> None:
    a, b, c = _three(dist)
    conn = proxy.connect(_url(dist), wait_timeout=HANG)  # a follower serves it, however busy the machine
    conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
    conn.executemany("INSERT INTO big VALUES (?, ?, ?)",
                     ((i, f"row {i} " + "x" * 40, bytes([i % 256]) * 8) for i in range(100_000)))
    conn.commit()
    assert conn.last_write_lsn > 0
    cur = conn.execute("SELECT id, v, b FROM big ORDER BY id")  # on a follower
    assert cur.node in ("b", "c")
    first = cur.fetchmany(10)
    assert [r[0] for r in first] == list(range(10))
    rest = cur.fetchall()
    assert len(rest) == 99_990 and rest[-1] == (99_999, "row 99999 " + "x" * 40, bytes([99_999 % 256]) * 8)
    # The same inside a transaction, on the leader.
    conn.execute("BEGIN")
    count = sum(1 for _ in conn.execute("SELECT id, v, b FROM big"))
    conn.rollback()
    assert count == 100_000
    conn.close()


def _new_leader(dist: Cluster, *candidates: Node) -> Node:
    def found() -> Node | None:
        holder = dist.holder() or {}
        for node in candidates:
            if holder.get("node") == node.name and node.role() == "leader":
                return node
        return None

    return dist.eventually(found, "a follower takes over\n" + "\n".join(n.logs() for n in candidates))


def test_the_leaders_process_killed_in_the_middle_of_a_transaction(dist: Cluster) -> None:
    # The default lease (5 s): with 2 s, a machine busy enough can starve a's renewals and fail over
    # before the kill, which is another test's case (an unpublished async write reported lost).
    a, b, c = _three(dist)
    conn = proxy.connect(_url(dist), failover_wait=HANG)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'committed')")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (2, 'in the transaction')")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    dist.wait_caught_up(a, b, c)
    assert dist.holder()["epoch"] == 1, "a kept its lease up to the kill"
    a.kill()
    with pytest.raises(proxy.OperationalError, match="rolled back"):
        conn.execute("INSERT INTO t VALUES (3, 'after the kill')")
    assert not conn.in_transaction
    # Outside a transaction the connection goes on with the new leader, once there is one.
    new = _new_leader(dist, b, c)
    conn.execute("INSERT INTO t VALUES (4, 'on the new leader')")
    conn.commit()
    assert conn.leader == new.name
    assert conn.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (4,)]  # never half-applied
    conn.close()


def test_a_client_killed_in_the_middle_of_a_transaction_is_rolled_back_after_the_idle_timeout(
        dist: Cluster) -> None:
    a, b, c = _three(dist)
    setup = proxy.connect(_url(dist), autocommit=True)
    setup.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    client = subprocess.Popen(python_command("""
        import sys, proxy
        conn = proxy.connect(sys.argv[1], idle_timeout=1.0)
        conn.execute("INSERT INTO t VALUES (1, 'never committed')")
        print("in transaction", flush=True)
        sys.stdin.read()  # until killed
    """, _url(dist)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "in transaction"
        client.kill()
        client.wait()
    finally:
        if client.poll() is None:
            client.kill()
    # The dead client's transaction held the leader's write lock: once the leader rolls it back,
    # another client writes, and the dead client's row never existed.
    other = proxy.connect(_url(dist), autocommit=True, timeout=HANG)
    wait_until(lambda: _try_insert(other), HANG, poll=0.1, message=a.logs())
    assert other.execute("SELECT id, v FROM t").fetchall() == [(2, "second client")]
    assert "idle in a transaction for" in a.logs()
    other.close()
    setup.close()


def _try_insert(conn: proxy.Connection) -> bool:
    try:
        conn.execute("INSERT INTO t VALUES (2, 'second client')")
    except proxy.OperationalError as exc:
        assert "locked" in str(exc) or "busy" in str(exc), exc
        return False
    return True


def test_a_follower_directory_reads_there_and_forwards_writes_to_the_leader(dist: Cluster) -> None:
    a, b, c = _three(dist)
    conn = proxy.connect(b.directory, wait_timeout=HANG)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    assert conn.leader == "a"
    cur = conn.execute("SELECT count(*) FROM t")
    assert cur.fetchone() == (1,) and cur.node == "b"  # its own node, once it applied the write
    conn.close()


def test_a_session_token_reports_a_write_lost_in_a_failover(dist: Cluster) -> None:
    a, b, c = _three(dist, "--lease-ttl", TTL)
    setup = proxy.connect(_url(dist), autocommit=True)
    setup.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    setup.execute("INSERT INTO t VALUES (1, 'published')")
    dist.wait_caught_up(a, b, c)
    a.pause()
    # A write that committed in the last moment of a's lease, before its relay published it
    # (a's `serve` is stopped; its writers are shown a longer lease).
    with store.opened(a.path, name="a") as db:
        store.set_lease(db, 4102444800.0)
    local_conn = proxy.connect(a.directory)
    local_conn.execute("INSERT INTO t VALUES (2, 'lost')")
    local_conn.commit()
    token = local_conn.session_token
    local_conn.close()
    new = _new_leader(dist, b, c)
    a.kill()
    later = proxy.connect(_url(dist), session_token=token)
    with pytest.raises(proxy.ReplicationError, match=r"LSN \d+ \(epoch 1\) was lost in the failover to epoch 2"):
        later.execute("SELECT v FROM t ORDER BY id")
    # Reported once: the session goes on with what the cluster has.
    assert later.execute("SELECT v FROM t ORDER BY id").fetchall() == [("published",)]
    assert new.name in (b.name, c.name)
    later.close()
    setup.close()


def test_exec_status_verify_and_log_against_the_url(dist: Cluster, tmp_path: Path) -> None:
    a, b, c = _three(dist)
    url = _url(dist)
    run_replproxy("exec", url, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    done = run_replproxy("exec", url, "INSERT INTO t VALUES (?, ?)", "-p", "1", "-p", '"one"')
    assert "1 row(s) changed" in done.stderr and "served by a" in done.stderr
    done = run_replproxy("exec", url, "SELECT v FROM t", "--mode", "csv")
    assert done.stdout.splitlines() == ["v", "one"]
    assert "served by" in done.stderr
    done = run_replproxy("exec", url, "INSERT INTO t VALUES (1, 'again')", check=False)
    assert done.returncode == 1 and "UNIQUE constraint failed: t.id" in done.stderr
    dist.wait_caught_up(a, b, c)
    report = json.loads(run_replproxy("status", url, "--json").stdout)
    assert report["leader"] == "a" and {n["name"] for n in report["nodes"]} == {"a", "b", "c"}
    assert "3 nodes identical" in run_replproxy("verify", url).stdout
    lines = [json.loads(line) for line in run_replproxy("log", url, "--json").stdout.splitlines()]
    assert any("one" in json.dumps(entry) for entry in lines)
    done = run_replproxy("exec", f"{dist.nats}/nosuchcluster", "SELECT 1", check=False)
    assert done.returncode == 1 and "nosuchcluster" in done.stderr


def test_a_leader_that_loses_its_lease_rolls_remote_transactions_back(dist: Cluster) -> None:
    a = dist.init("a").serve()
    dist.wait_serving(a)
    dist.wait_reporting(a)
    conn = proxy.connect(_url(dist))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    # Another node takes the lease (as after a partition): a's next renewal is refused.
    config = local.read(a.directory)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        found = kv.get(LEASE_KEY)
        assert kv.update(LEASE_KEY, {"node": "z", "epoch": int(found.value["epoch"]) + 1, "ttl": 600.0},
                         found.revision) is not None
    wait_until(lambda: a.role() == "follower", HANG, poll=0.05, message=a.logs())
    with pytest.raises(proxy.OperationalError, match="rolled back"):
        conn.execute("INSERT INTO t VALUES (2)")
    assert not conn.in_transaction
    with store.opened(a.path, name="a") as db:
        assert db.execute("SELECT count(*) FROM t").fetchall() == [(0,)]  # never half-applied
    assert "remote transaction of session" in a.logs()
    conn.close()


def test_a_transaction_left_idle_is_rolled_back_and_its_client_told_why(dist: Cluster) -> None:
    a = dist.init("a").serve()
    dist.wait_serving(a)
    conn = proxy.connect(_url(dist), idle_timeout=0.5)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    wait_until(lambda: "idle in a transaction" in a.logs(), HANG, poll=0.05, message=a.logs())
    with pytest.raises(proxy.OperationalError, match=r"rolled back: a ended this session: it was idle in a "
                                                     r"transaction for [\d.]+s, past its idle timeout \(0.5s\)"):
        conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("INSERT INTO t VALUES (3)")  # a new session, a new transaction
    conn.commit()
    assert conn.cursor().execute("SELECT id FROM t", consistency="strong").fetchall() == [(3,)]
    conn.close()


def test_a_statement_waiting_on_a_leader_that_dies_ends_when_it_dies_not_at_the_timeout(dist: Cluster) -> None:
    a = dist.init("a").serve()
    dist.wait_serving(a)
    conn = proxy.connect(_url(dist), timeout=HANG * 10)  # a wait to its end would fail the test
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")
    a.pause()  # the next statement is sent and not answered ...
    failures: list[BaseException] = []

    def statement() -> None:
        try:
            conn.execute("INSERT INTO t VALUES (2)")
        except BaseException as exc:  # handed to the test thread
            failures.append(exc)

    worker = threading.Thread(target=statement)
    worker.start()
    a.kill()  # ... then its process dies: the client's probes find nobody there
    worker.join(HANG)
    assert not worker.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], proxy.OperationalError), failures
    assert "rolled back" in str(failures[0]) and "gone" in str(failures[0])
    with store.opened(a.path, name="a") as db:
        assert db.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    conn.close()


def test_autocommit_changed_on_an_open_connection_takes_effect(dist: Cluster) -> None:
    a = dist.init("a").serve()
    dist.wait_serving(a)
    conn = proxy.connect(_url(dist))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction
    conn.autocommit = True  # commits the open transaction, as sqlite3 does
    assert not conn.in_transaction
    conn.execute("INSERT INTO t VALUES (2)")
    assert not conn.in_transaction  # committed by itself
    other = proxy.connect(_url(dist), consistency="strong")
    assert other.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (2,)]
    conn.autocommit = False
    conn.execute("INSERT INTO t VALUES (3)")
    assert conn.in_transaction
    conn.rollback()
    assert other.execute("SELECT count(*) FROM t").fetchone() == (2,)
    conn.close()
    other.close()
