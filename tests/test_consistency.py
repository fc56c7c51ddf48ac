"""Read consistency (issue 3): each level's guarantee with lag injected, and the anomaly where a level
does not promise it; read-only transactions on one follower snapshot; stickiness and load balancing;
the policies when no follower qualifies; bounded staleness; overrides; sessions that continue in
other connections and processes (tokens, `user=`); threads with their own connections.

Lag is injected with `cluster.pause(node)`, which holds a follower for every process. Nothing here
sleeps to hope for replication: positions are awaited with `cluster.wait_for_catchup`. Follower
files are read directly with apsw, never with Python's sqlite3 module (two SQLite libraries in one
process ignore each other's locks).

The examples follow the replication chapter: a user posts a comment and reloads the page; a user
reads a thread twice, from replicas at different positions; a question and its answer are written
by one transaction and must never be seen apart.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import apsw
import pytest
from checks import node_rows
from helpers import run_python

import proxy
import proxy.driver.routing
from proxy.driver.consistency import TOKEN_PREFIX

THREAD_SCHEMA = "CREATE TABLE comments(id INTEGER PRIMARY KEY, author TEXT NOT NULL, body TEXT NOT NULL)"
ALL_COMMENTS = "SELECT author, body FROM comments ORDER BY id"


# -- helpers ------------------------------------------------------------------------------------


def connect(cluster: proxy.Cluster, **options: Any) -> proxy.Connection:
    return proxy.connect(cluster.directory, cluster=cluster, **options)


def post(conn: proxy.Connection, author: str, body: str) -> int:
    """Post one comment in its own transaction; return the LSN of its log entry."""
    conn.execute("INSERT INTO comments(author, body) VALUES (?, ?)", (author, body))
    conn.commit()
    return conn.last_write_lsn


def start_thread(conn: proxy.Connection, cluster: proxy.Cluster, comments: int = 3) -> int:
    """The comments table with `comments` comments by bob, applied on every follower."""
    conn.execute(THREAD_SCHEMA)
    for i in range(comments):
        post(conn, "bob", f"bob's comment {i + 1}")
    return cluster.wait_for_catchup(10)


def count(cursor: proxy.Cursor) -> int:
    return cursor.fetchone()[0]


def read(conn: proxy.Connection, sql: str = ALL_COMMENTS, params: Any = (), **kw: Any
         ) -> tuple[list[tuple[Any, ...]], str, int | None]:
    cur = conn.cursor()
    cur.execute(sql, params, **kw)
    return cur.fetchall(), cur.node, cur.lsn


# A client in another process: connects with the given options, runs reads and writes, and
# prints what it saw and its session token as JSON.
CLIENT = r"""
import json, sys
import proxy

args = json.loads(sys.argv[1])
cluster = proxy.Cluster(args["dir"], replicate=args.get("replicate", True))
conn = proxy.connect(args["dir"], cluster=cluster, **args["connect"])
out = []
for op, sql, params in args["ops"]:
    cur = conn.cursor()
    cur.execute(sql, params)
    if op == "write":
        conn.commit()
        out.append({"node": cur.node, "lsn": conn.last_write_lsn})
    else:
        out.append({"node": cur.node, "lsn": cur.lsn, "rows": [list(r) for r in cur.fetchall()]})
print(json.dumps({"results": out, "token": conn.session_token,
                  "last_write_lsn": conn.last_write_lsn, "last_read_lsn": conn.last_read_lsn}))
conn.close()
cluster.close()
"""


def run_client(cluster: proxy.Cluster, ops: list[tuple[str, str, list[Any]]], *,
               replicate: bool = True, **connect_options: Any) -> dict[str, Any]:
    args = {"dir": str(cluster.directory), "connect": connect_options, "ops": ops, "replicate": replicate}
    result = run_python(CLIENT, json.dumps(args))
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_positions(cluster: proxy.Cluster, conn: proxy.Connection) -> Iterator[proxy.Cluster]:
    """A thread of comments held at two positions: node2 shows 3 comments, node3 (and the leader)
    6. Both followers are healthy (not paused) and stay where they are, because nothing replicates:
    the returned Cluster is opened with replicate=False after the fixture's replicator stopped."""
    start_thread(conn, cluster, comments=3)
    cluster.pause("node2")
    for i in range(3, 6):
        post(conn, "bob", f"bob's comment {i + 1}")
    cluster.wait_for_catchup(10, nodes=["node3"])
    conn.close()
    cluster.close()  # this process's replicator stops; no other process replicates this cluster
    held = proxy.Cluster(cluster.directory, replicate=False)
    held.resume("node2")  # only clears the flag: node2 is healthy and stays behind
    positions = held.positions()
    assert positions["node1"] == positions["node3"] == positions["node2"] + 3
    assert node_rows(held, "node2", "SELECT count(*) FROM comments") == [(3,)]
    assert node_rows(held, "node3", "SELECT count(*) FROM comments") == [(6,)]
    try:
        yield held
    finally:
        held.close()


# -- each level with lag injected ---------------------------------------------------------------


@pytest.mark.parametrize("on_stale", proxy.STALE_POLICIES)
def test_eventual_reload_after_posting_can_miss_the_users_own_comment(cluster, conn, on_stale):
    start_thread(conn, cluster)
    for node in cluster.followers:
        cluster.pause(node)
    written = post(conn, "alice", "first!")

    # The anomaly eventual does not protect against: the reload is served by a follower that has not
    # applied the comment. The policy plays no part: a follower always qualifies for eventual.
    reader = connect(cluster, consistency="eventual", on_stale=on_stale, session_token=conn.session_token)
    rows, node, lsn = read(reader, "SELECT body FROM comments WHERE author = 'alice'")
    assert rows == []
    assert node in cluster.followers
    assert lsn is not None and lsn < written
    # The comment is committed: the leader has it, and session consistency shows it.
    rows, node, _ = read(reader, "SELECT body FROM comments WHERE author = 'alice'", consistency="strong")
    assert (rows, node) == ([("first!",)], cluster.leader)


@pytest.mark.parametrize("level", ["session", "read-your-writes"])
def test_own_comment_is_never_missing_after_posting_and_reloading(cluster, conn, level):
    lagging, live = cluster.followers
    start_thread(conn, cluster)
    cluster.pause(lagging)
    conn.consistency = level
    expected = [("bob", f"bob's comment {i + 1}") for i in range(3)]
    for i in range(8):
        written = post(conn, "alice", f"alice's comment {i}")
        expected.append(("alice", f"alice's comment {i}"))
        rows, node, lsn = read(conn)
        assert rows == expected, "the reload right after posting must show the comment"
        assert node in (live, cluster.leader), f"{lagging} is paused and behind; it must not serve"
        if node == live:
            assert lsn is not None and lsn >= written
    # The paused follower really is behind: without the guarantee the comments would be missing.
    assert node_rows(cluster, lagging, "SELECT count(*) FROM comments WHERE author = 'alice'") == [(0,)]
    # An up-to-date follower serves the session.
    cluster.wait_for_catchup(10, nodes=[live])
    rows, node, lsn = read(conn)
    assert (rows, node) == (expected, live) and lsn >= conn.last_write_lsn

    # No follower has the next comment: the leader serves it (policy "leader": at once).
    cluster.pause(live)
    conn.on_stale = "leader"
    post(conn, "alice", "one more")
    expected.append(("alice", "one more"))
    rows, node, _ = read(conn)
    assert (rows, node) == (expected, cluster.leader)


def test_strong_reads_always_come_from_the_leader(cluster, conn):
    start_thread(conn, cluster)
    reader = connect(cluster, consistency="strong")
    writer = connect(cluster)
    cluster.pause("node2")
    for i in range(5):
        post(writer, "carol", f"carol's comment {i}")
        rows, node, lsn = read(reader, "SELECT count(*) FROM comments")
        # Followers may be up to date or not: a strong read never asks them.
        assert (rows, node, lsn) == ([(4 + i,)], cluster.leader, cluster.leader_lsn())
    cluster.resume("node2")
    cluster.wait_for_catchup(10)
    rows, node, _ = read(reader, "SELECT count(*) FROM comments")
    assert (rows, node) == ([(8,)], cluster.leader)
    # Also inside a read-only transaction.
    cur = reader.cursor()
    cur.execute("BEGIN")
    cur.execute("SELECT count(*) FROM comments")
    assert (cur.fetchall(), cur.node) == ([(8,)], cluster.leader)
    reader.commit()


@pytest.mark.parametrize("level, backwards", [("eventual", True), ("read-your-writes", True),
                                              ("monotonic", False), ("session", False)])
def test_reading_a_thread_twice_from_different_replicas(two_positions, level, backwards):
    """Two followers at different positions. The session first reads the one with less lag; then
    that replica is taken out of rotation. Without monotonic reads the session is moved to the
    replica with more lag and three comments disappear: time went backwards. With monotonic reads
    (and session) the older replica never serves it again."""
    held = two_positions
    reader = connect(held, consistency=level, on_stale="error")
    reader.last_node = "node3"  # the load balancer sent the session to node3 first
    rows, node, _ = read(reader, "SELECT count(*) FROM comments")
    assert (rows, node) == ([(6,)], "node3")
    held.pause("node3")
    for _ in range(3):
        rows, node, _ = read(reader, "SELECT count(*) FROM comments")
        if backwards:
            assert (rows, node) == ([(3,)], "node2"), "without monotonic reads time goes backwards"
        else:
            # node3 is paused but still covers what the session read; node2 does not.
            assert (rows, node) == ([(6,)], "node3")

    # The session continues in another connection with its token: the same holds there.
    later = connect(held, consistency=level, on_stale="error", session_token=reader.session_token)
    rows, node, _ = read(later, "SELECT count(*) FROM comments")
    assert (rows, node) == (([(3,)], "node2") if backwards else ([(6,)], "node3"))

    if not backwards:
        # The newer replica fails too: the session goes to the leader (or refuses, by policy)
        # rather than back in time.
        held.pause("node3")
        os.rename(held.path_of("node3"), str(held.path_of("node3")) + ".gone")
        fresh = connect(held, consistency=level, on_stale="leader", session_token=reader.session_token)
        rows, node, _ = read(fresh, "SELECT count(*) FROM comments")
        assert (rows, node) == ([(6,)], held.leader)
        refusing = connect(held, consistency=level, on_stale="error", session_token=reader.session_token)
        with pytest.raises(proxy.OperationalError, match=r"node2 at LSN \d+ \(3 behind\)"):
            refusing.execute("SELECT count(*) FROM comments")


def test_monotonic_reads_hold_when_the_session_moves_to_another_process(two_positions):
    held = two_positions
    held.pause("node3")  # node2 (3 comments) is the only healthy follower; node3 (6) is paused
    reader = connect(held, consistency="strong")
    rows, node, _ = read(reader, "SELECT count(*) FROM comments")
    assert (rows, node) == ([(6,)], held.leader)
    token = reader.session_token
    query = [("read", "SELECT count(*) FROM comments", [])]

    # Another process continues the session: it never reads the older follower.
    out = run_client(held, query, replicate=False, consistency="monotonic", on_stale="error",
                     session_token=token)
    assert out["results"][0]["rows"] == [[6]] and out["results"][0]["node"] == "node3"
    assert out["last_read_lsn"] >= reader.last_read_lsn
    # A fresh session there, or the same session under eventual, is sent to the healthy node2.
    out = run_client(held, query, replicate=False, consistency="eventual")
    assert (out["results"][0]["rows"], out["results"][0]["node"]) == ([[3]], "node2")
    out = run_client(held, query, replicate=False, consistency="eventual", session_token=token)
    assert (out["results"][0]["rows"], out["results"][0]["node"]) == ([[3]], "node2")


def test_consistent_prefix_question_and_answer_never_seen_apart(cluster, conn):
    """Each transaction writes a question and its answer. Reads racing with the replicator, on every
    follower, never see half a transaction, nor a later transaction without an earlier one."""
    conn.execute("CREATE TABLE questions(id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
    conn.execute("CREATE TABLE answers(id INTEGER PRIMARY KEY, question_id INTEGER NOT NULL, body TEXT NOT NULL)")
    conn.commit()
    base = cluster.wait_for_catchup(10)
    total = 150
    done, halfway, go_on = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            w = connect(cluster)
            for i in range(1, total + 1):
                w.execute("INSERT INTO questions VALUES (?, ?)", (i, f"How far does replica {i} lag?"))
                w.execute("INSERT INTO answers VALUES (?, ?, ?)", (i, i, f"answer to {i}"))
                w.commit()
                if i == total // 2:  # hold on once, so that a read surely sees a state in between
                    halfway.set()
                    go_on.wait(30)
            w.close()
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            done.set()

    state_sql = ("SELECT (SELECT count(*) FROM questions), (SELECT coalesce(max(id), 0) FROM questions), "
                 "(SELECT count(*) FROM answers), (SELECT coalesce(max(id), 0) FROM answers), "
                 "(SELECT count(*) FROM answers a JOIN questions q ON q.id = a.question_id)")
    readers = {
        "eventual": connect(cluster, consistency="eventual"),
        "session": connect(cluster, consistency="session", on_stale="leader"),
        "node2": connect(cluster, node="node2"),
        "node3": connect(cluster, node="node3"),
    }
    seen: Counter[str] = Counter()
    partial = 0
    reads = 0
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not done.is_set() or reads < 40:
            reads += 1
            if halfway.is_set() and not go_on.is_set():
                cluster.wait_for_catchup(10, nodes=["node3"], lsn=base + total // 2)
                assert readers["node3"].execute(state_sql).fetchone() == (total // 2,) * 5
                go_on.set()
            if reads % 7 == 0:  # vary the followers' positions while reading
                (cluster.resume if reads % 14 == 0 else cluster.pause)("node2")
            for name, reader in readers.items():
                cur = reader.execute(state_sql)
                questions, max_q, answers, max_a, pairs = cur.fetchone()
                assert questions == max_q == answers == max_a == pairs, (
                    f"{name} read on {cur.node} saw {questions} questions (max id {max_q}), "
                    f"{answers} answers (max id {max_a}), {pairs} matched: not a prefix of the log")
                if cur.node in cluster.followers:
                    seen[cur.node] += 1
                    if 0 < questions < total:
                        partial += 1
                    if cur.lsn is not None:  # the state the read saw is at least cursor.lsn
                        assert questions >= cur.lsn - base
            # A read-only transaction: two statements, one snapshot.
            tx = readers["eventual"].cursor()
            tx.execute("BEGIN")
            tx.execute("SELECT count(*) FROM questions")
            (questions,) = tx.fetchone()
            first_node = tx.node
            tx.execute("SELECT count(*) FROM answers")
            assert tx.fetchone() == (questions,) and tx.node == first_node
            tx.execute("COMMIT")
    finally:
        go_on.set()
        cluster.resume("node2")
        thread.join(60)
    assert not failures, failures
    assert set(seen) == set(cluster.followers), seen
    assert partial > 0, "no read raced with the replicator"
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT count(*) FROM answers") == [(total,)]


# -- read-only transactions -----------------------------------------------------------------------


def test_read_only_transaction_stays_on_one_follower_snapshot_while_everything_moves_on(cluster, conn):
    start_thread(conn, cluster)
    writer = connect(cluster)
    reader = connect(cluster)
    cur = reader.cursor()
    cur.execute("BEGIN")
    assert reader.in_transaction
    cur.execute("SELECT count(*) FROM comments")
    first, snapshot_node, snapshot_lsn = count(cur), cur.node, cur.lsn
    assert snapshot_node in cluster.followers and first == 3
    assert snapshot_lsn == cluster.leader_lsn()

    for i in range(4):
        post(writer, "dave", f"dave's comment {i}")
    # The follower keeps applying while the transaction holds its snapshot.
    cluster.wait_for_catchup(10, nodes=[snapshot_node])
    assert cluster.positions()[snapshot_node] == snapshot_lsn + 4
    assert node_rows(cluster, snapshot_node, "SELECT count(*) FROM comments") == [(7,)]

    other = reader.cursor()
    other.execute("SELECT count(*), max(id) FROM comments")
    assert other.fetchone() == (3, 3)
    assert (other.node, other.lsn) == (snapshot_node, snapshot_lsn)
    cur.execute("SELECT author, body FROM comments ORDER BY id")
    assert [a for a, _ in cur.fetchall()] == ["bob"] * 3
    assert (cur.node, cur.lsn) == (snapshot_node, snapshot_lsn)
    reader.commit()
    assert not reader.in_transaction
    assert reader.last_read_lsn >= snapshot_lsn
    rows, _, _ = read(reader, "SELECT count(*) FROM comments", consistency="strong")
    assert rows == [(7,)]


def test_write_in_read_only_transaction_goes_on_when_the_leader_has_not_moved(cluster, conn):
    start_thread(conn, cluster)
    reader = connect(cluster)
    cur = reader.cursor()
    cur.execute("BEGIN")
    cur.execute("SELECT count(*) FROM comments WHERE author = 'erin'")
    assert count(cur) == 0 and cur.node in cluster.followers
    snapshot = cur.lsn
    assert snapshot == cluster.leader_lsn()
    cur.execute("INSERT INTO comments(author, body) VALUES ('erin', 'no comment from erin yet, so here is one')")
    assert cur.node == cluster.leader
    cur.execute("SELECT count(*) FROM comments WHERE author = 'erin'")
    assert (count(cur), cur.node) == (1, cluster.leader)  # the transaction has written: the leader
    reader.commit()
    assert reader.last_write_lsn == snapshot + 1
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT count(*) FROM comments WHERE author = 'erin'") == [(1,)]


def test_write_in_read_only_transaction_is_refused_once_the_leader_moved_past_the_snapshot(cluster, conn):
    start_thread(conn, cluster)
    reader = connect(cluster)
    writer = connect(cluster)
    cur = reader.cursor()
    cur.execute("BEGIN")
    cur.execute("SELECT count(*) FROM comments WHERE author = 'erin'")
    assert count(cur) == 0
    node, snapshot = cur.node, cur.lsn
    assert node in cluster.followers
    moved = post(writer, "erin", "erin posted from her phone meanwhile")
    with pytest.raises(proxy.OperationalError) as raised:
        cur.execute("INSERT INTO comments(author, body) VALUES ('erin', 'no comment from erin yet')")
    message = str(raised.value)
    assert f"{node} at LSN {snapshot}" in message and f"LSN {moved}" in message
    assert "roll back and retry" in message and "BEGIN IMMEDIATE" in message
    reader.rollback()
    # Nothing was written, the leader's lock was released, and a retry works.
    rows, _, _ = read(reader, "SELECT body FROM comments WHERE author = 'erin'", consistency="strong")
    assert rows == [("erin posted from her phone meanwhile",)]
    cur.execute("BEGIN IMMEDIATE")
    assert cur.node == cluster.leader
    cur.execute("SELECT count(*) FROM comments WHERE author = 'erin'")
    assert (count(cur), cur.node) == (1, cluster.leader)
    cur.execute("INSERT INTO comments(author, body) VALUES ('erin', 'second try')")
    reader.commit()
    assert reader.last_write_lsn == moved + 1
    post(writer, "frank", "the writer is not blocked")


def test_begin_immediate_and_reads_after_a_write_go_to_the_leader(cluster, conn):
    start_thread(conn, cluster)
    session = connect(cluster, consistency="eventual")  # even the loosest level
    cur = session.cursor()
    cur.execute("BEGIN IMMEDIATE")
    assert cur.node == cluster.leader
    cur.execute("SELECT count(*) FROM comments")
    assert (count(cur), cur.node) == (3, cluster.leader)
    session.rollback()

    # A transaction opened by DML: its reads see its own uncommitted row, on the leader.
    cur.execute("INSERT INTO comments(author, body) VALUES ('gina', 'draft')")
    cur.execute("SELECT body FROM comments WHERE author = 'gina'")
    assert (cur.fetchall(), cur.node) == ([("draft",)], cluster.leader)
    cur.execute("SELECT count(*) FROM comments", consistency="eventual")
    assert (count(cur), cur.node) == (4, cluster.leader)
    session.rollback()

    # BEGIN, a read on a follower, a write (moves to the leader), then reads: the leader.
    cur.execute("BEGIN")
    cur.execute("SELECT count(*) FROM comments")
    assert cur.node in cluster.followers
    cur.execute("INSERT INTO comments(author, body) VALUES ('gina', 'posted')")
    for _ in range(3):
        cur.execute("SELECT body FROM comments WHERE author = 'gina'")
        assert (cur.fetchall(), cur.node) == ([("posted",)], cluster.leader)
    session.commit()


# -- stickiness and load balancing ----------------------------------------------------------------


@pytest.mark.parametrize("level", ["session", "eventual"])
def test_session_stays_on_the_follower_it_used_last_while_it_qualifies(cluster, conn, level):
    start_thread(conn, cluster)
    reader = connect(cluster, consistency=level)
    writer = connect(cluster)
    _, first, _ = read(reader)
    assert first in cluster.followers
    for i in range(15):
        post(writer, "hank", f"hank's comment {i}")
        _, node, _ = read(reader)
        assert node == first


def test_the_fast_path_for_staying_decides_as_the_general_routing_does(cluster, conn, monkeypatch):
    """Router.staying (the common read's shortcut) answers only when route() would stay on the
    same follower; every setting, position or state that has a say makes it step aside."""
    start_thread(conn, cluster)
    reader = connect(cluster)
    router = reader._router
    sql = ALL_COMMENTS
    _, first, _ = read(reader)
    stmt = reader._leader_side.analyze(sql)

    def agrees(level: str = "session") -> tuple[str, Any, int] | None:
        stay = router.staying(reader, stmt, level)
        if stay is not None:
            assert router.route(stmt, level) == stay[0] == first
        return stay

    assert agrees() is not None and agrees("eventual") is not None
    assert agrees("strong") is None
    state = router.followers.states[first]
    # Positions: a write the follower has not applied yet.
    reader.session.last_write_lsn = state.applied_lsn + 1
    assert agrees() is None and agrees("read-your-writes") is None
    assert agrees("monotonic") is not None and agrees("eventual") is not None
    reader.session.last_write_lsn = 0
    reader.session.last_read_lsn = state.applied_lsn + 1
    assert agrees() is None and agrees("monotonic") is None and agrees("read-your-writes") is not None
    reader.session.last_read_lsn = 0
    # Health, age and generation of what is known of the follower.
    state.healthy = False
    assert agrees() is None
    state.healthy = True
    clock = time.monotonic()
    monkeypatch.setattr(proxy.driver.routing.time, "monotonic",
                        lambda: clock + proxy.driver.routing.STATE_MAX_AGE + 1)
    assert agrees() is None
    monkeypatch.undo()
    cluster.state_generation += 1
    assert agrees() is None
    cluster.state_generation -= 1
    # Settings of the connection, set after it was made (each one is checked again).
    for name, value in (("max_lag", 5), ("max_staleness", 60.0), ("user", "ann"), ("pinned_node", first)):
        setattr(reader, name, value)
        assert agrees() is None, name
        setattr(reader, name, None)
        assert agrees() is not None, name
    # A function defined since the follower's connection last caught up with the session.
    reader.create_function("twice", 1, lambda x: 2 * x)
    assert agrees() is None
    # Another follower read since the position was last settled.
    assert read(reader)[1] == first  # brings the connection up to date
    assert agrees() is not None
    router.unsettled = next(n for n in cluster.followers if n != first)
    assert agrees() is None
    # Statements that run on the leader only.
    reader.execute("CREATE TEMP TABLE scratch(x)")
    assert router.staying(reader, reader._leader_side.analyze("SELECT * FROM scratch"), "session") is None
    assert router.staying(reader, reader._leader_side.analyze("SELECT * FROM _replproxy_log"), "session") is None


def test_a_bound_set_on_an_open_connection_applies_to_its_next_read(two_positions):
    held = two_positions
    held.pause("node3")
    reader = connect(held, consistency="eventual")
    for _ in range(3):
        assert read(reader, "SELECT count(*) FROM comments")[:2] == ([(3,)], "node2")
    reader.max_lag = 2  # node2 is 3 behind
    rows, node, _ = read(reader, "SELECT count(*) FROM comments")
    assert (rows, node) == ([(6,)], "node3")
    reader.max_lag = None
    reader.pinned_node = "node2"
    assert read(reader, "SELECT count(*) FROM comments")[:2] == ([(3,)], "node2")


def test_session_moves_when_its_follower_is_paused_and_stays_on_the_new_one(cluster, conn):
    start_thread(conn, cluster)
    reader = connect(cluster)
    _, first, _ = read(reader)
    (second,) = set(cluster.followers) - {first}
    cluster.pause(first)
    rows, node, _ = read(reader)
    assert node == second and len(rows) == 3
    cluster.resume(first)
    cluster.wait_for_catchup(10)
    for _ in range(5):
        assert read(reader)[1] == second  # the new follower qualifies: the session stays


def test_session_moves_when_its_follower_stops_on_an_apply_error(cluster, conn):
    start_thread(conn, cluster)
    session = connect(cluster, on_stale="error")
    _, stuck, _ = read(session)
    (other,) = set(cluster.followers) - {stuck}
    # The follower diverged behind the proxy's back: bob's first comment is gone from its file.
    diverged = apsw.Connection(str(cluster.path_of(stuck)))
    diverged.set_busy_timeout(30_000)
    diverged.execute("DELETE FROM comments WHERE id = 1")
    diverged.close()
    # The user edits that comment: the follower cannot apply the edit and stops.
    session.execute("UPDATE comments SET body = 'edited' WHERE id = 1")
    session.commit()
    cluster.wait_for_catchup(10, nodes=[other])
    with pytest.raises(proxy.ReplicationTimeout, match=stuck):
        cluster.wait_for_catchup(10, nodes=[stuck])
    assert {s.name: s.state for s in cluster.status()}[stuck] == "error"
    for _ in range(3):
        rows, node, _ = read(session, "SELECT body FROM comments WHERE id = 1")
        assert (rows, node) == ([("edited",)], other)
    # An eventual session that never used it would rather have the healthy follower too.
    rows, node, _ = read(connect(cluster, consistency="eventual"), "SELECT count(*) FROM comments")
    assert (rows, node) == ([(3,)], other)


def test_session_falls_back_cleanly_when_its_follower_file_is_removed(cluster, conn, monkeypatch):
    start_thread(conn, cluster)
    session = connect(cluster)
    _, failed, _ = read(session)
    (other,) = set(cluster.followers) - {failed}
    browsing = connect(cluster, consistency="eventual")
    browsing.last_node = failed
    assert read(browsing)[1] == failed
    path = str(cluster.path_of(failed))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    assert {s.name: s.state for s in cluster.status()}[failed] == "missing"
    # Connections re-read a follower's state once their cached copy is older than STATE_MAX_AGE;
    # make that at once rather than sleeping.
    monkeypatch.setattr(proxy.driver.routing, "STATE_MAX_AGE", 0.0)
    # The eventual session that used the failed follower moves too, though it asks for no position.
    for _ in range(3):
        rows, node, _ = read(browsing)
        assert (len(rows), node) == (3, other)
    expected = [("bob", f"bob's comment {i + 1}") for i in range(3)]
    for i in range(3):
        post(session, "ivan", f"ivan's comment {i}")
        expected.append(("ivan", f"ivan's comment {i}"))
        rows, node, _ = read(session)
        assert rows == expected
        assert node in (other, cluster.leader), f"{failed} is gone and must not serve"
    cluster.wait_for_catchup(10, nodes=[other])
    assert read(session)[1] == other
    # A new session, under any level, never picks the missing follower.
    for level in ("eventual", "monotonic"):
        rows, node, _ = read(connect(cluster, consistency=level))
        assert (rows, node) == (expected, other)


def test_distinct_sessions_spread_over_caught_up_followers(cluster, conn):
    start_thread(conn, cluster)
    served: Counter[str] = Counter()
    for i in range(8):
        session = connect(cluster, consistency="session" if i % 2 else "eventual")
        rows, node, _ = read(session, "SELECT count(*) FROM comments")
        assert rows == [(3,)]
        served[node] += 1
        session.close()
    assert set(served) == set(cluster.followers), f"reads are not balanced over followers: {served}"
    assert min(served.values()) >= 2, served


def test_a_read_fetched_to_its_last_row_holds_no_snapshot(cluster, conn):
    """A session reads one row (fetchone, as an application does) and then writes, or reads its own
    follower again: the finished read must not pin the connection to an old snapshot (on the leader
    that made the write fail with "database is locked"; on a follower it made the follower look
    behind, so the session was refused a follower that had its write)."""
    start_thread(conn, cluster)
    other = connect(cluster)
    strong = connect(cluster, consistency="strong")
    cur = strong.execute("SELECT count(*) FROM comments")
    assert (cur.fetchone(), cur.node) == ((3,), cluster.leader)
    post(other, "nina", "meanwhile")
    post(strong, "nina", "and now me")  # was: OperationalError: database is locked
    assert strong.execute("SELECT count(*) FROM comments").fetchone() == (5,)

    # A session that refuses to wait, on a follower.
    cluster.wait_for_catchup(10)
    single = connect(cluster, on_stale="error")
    cur = single.execute("SELECT count(*) FROM comments")
    assert cur.fetchone() == (5,)
    follower = cur.node
    assert follower in cluster.followers
    cluster.pause(({*cluster.followers} - {follower}).pop())
    written = post(single, "nina", "posted after reading")
    cluster.wait_for_catchup(10, nodes=[follower])
    rows, node, lsn = read(single, "SELECT count(*) FROM comments")
    assert (rows, node) == ([(6,)], follower) and lsn >= written


# -- when no follower qualifies -------------------------------------------------------------------


def test_policy_wait_is_served_by_the_follower_that_catches_up(cluster, conn, monkeypatch):
    start_thread(conn, cluster)
    for node in cluster.followers:
        cluster.pause(node)
    written = post(conn, "judy", "is this thing on?")
    conn.on_stale, conn.wait_timeout = "wait", 30
    waiting = threading.Event()
    real_wait = cluster.wait_progress

    def wait_progress(seconds: float) -> None:
        waiting.set()  # the read found no follower and is now waiting
        real_wait(seconds)

    monkeypatch.setattr(cluster, "wait_progress", wait_progress)

    def resume_when_waiting() -> None:
        assert waiting.wait(30)
        cluster.resume("node3")

    helper = threading.Thread(target=resume_when_waiting)
    helper.start()
    rows, node, lsn = read(conn, "SELECT body FROM comments WHERE author = 'judy'")
    helper.join(30)
    assert waiting.is_set()
    # Served by the follower that caught up, not by the leader after the 30 s timeout.
    assert (rows, node) == ([("is this thing on?",)], "node3")
    assert lsn >= written


def test_policy_wait_goes_to_the_leader_after_the_timeout(cluster, conn):
    start_thread(conn, cluster)
    for node in cluster.followers:
        cluster.pause(node)
    post(conn, "judy", "hello?")
    conn.wait_timeout = 0.3  # both followers are paused: it can only run out
    started = time.monotonic()
    rows, node, _ = read(conn, "SELECT count(*) FROM comments")
    assert time.monotonic() - started >= 0.3  # a lower bound: a busy machine only adds to it
    assert (rows, node) == ([(4,)], cluster.leader)


def test_policy_leader_goes_to_the_leader_at_once(cluster, conn, monkeypatch):
    start_thread(conn, cluster)
    for node in cluster.followers:
        cluster.pause(node)
    post(conn, "judy", "hello?")
    conn.on_stale, conn.wait_timeout = "leader", 30  # the timeout is not used
    waits: list[float] = []
    monkeypatch.setattr(cluster, "wait_progress", waits.append)  # how a read waits for a follower
    rows, node, _ = read(conn, "SELECT count(*) FROM comments")
    assert (rows, node) == ([(4,)], cluster.leader)
    assert waits == [], "the read waited for a follower before going to the leader"


def test_policy_error_says_how_far_behind_the_followers_are(cluster, conn):
    start_thread(conn, cluster)
    cluster.pause("node2")
    post(conn, "judy", "one")
    cluster.wait_for_catchup(10, nodes=["node3"])
    cluster.pause("node3")
    written = post(conn, "judy", "two")
    conn.on_stale = "error"
    cur = conn.cursor()
    with pytest.raises(proxy.OperationalError) as raised:
        cur.execute("SELECT count(*) FROM comments")
    message = str(raised.value)
    assert f"needs LSN {written}" in message and "session read" in message
    assert f"node2 at LSN {written - 2} (2 behind, paused or stopped)" in message
    assert f"node3 at LSN {written - 1} (1 behind, paused or stopped)" in message
    # An eventual read is not concerned: a follower serves it.
    cur.execute("SELECT count(*) FROM comments", consistency="eventual")
    assert cur.node in cluster.followers and count(cur) in (3, 4)


def test_a_follower_without_the_table_a_read_needs_leaves_the_read_to_the_leader(two_positions, monkeypatch):
    """A session that stays on its follower (the fast path) and reads a table that follower does
    not have yet: the leader answers, once, and the session goes on where it was."""
    held = two_positions
    reader = connect(held, consistency="eventual")
    _, first, _ = read(reader, "SELECT count(*) FROM comments")
    assert read(reader, "SELECT count(*) FROM comments")[1] == first  # it stays
    writer = connect(held, autocommit=True)
    writer.execute("CREATE TABLE votes(comment_id INTEGER, up INTEGER)")
    writer.execute("INSERT INTO votes VALUES (1, 1), (2, 1)")  # nothing replicates: no follower has it

    def no_general_routing(*args: Any) -> None:
        raise AssertionError("the read left the fast path")

    with monkeypatch.context() as patched:
        patched.setattr(proxy.driver.routing.Router, "target", no_general_routing)
        cur = reader.execute("SELECT count(*) FROM votes")
    assert (cur.fetchall(), cur.node) == ([(2,)], held.leader)
    with pytest.raises(proxy.OperationalError, match="no such table: ballots"):
        reader.execute("SELECT count(*) FROM ballots")  # the leader has none either: SQLite's words
    assert read(reader, "SELECT count(*) FROM comments")[1] in held.followers


# -- bounded staleness ----------------------------------------------------------------------------


def test_max_lag_keeps_a_follower_too_far_behind_away_even_for_eventual(two_positions):
    held = two_positions
    held.pause("node3")  # node2 is the healthy one, 3 entries behind; node3 is up to date
    rows, node, _ = read(connect(held, consistency="eventual"), "SELECT count(*) FROM comments")
    assert (rows, node) == ([(3,)], "node2")  # no bound: the stale follower serves
    rows, node, _ = read(connect(held, consistency="eventual", max_lag=3), "SELECT count(*) FROM comments")
    assert (rows, node) == ([(3,)], "node2")  # exactly at the bound
    rows, node, _ = read(connect(held, consistency="eventual", max_lag=2), "SELECT count(*) FROM comments")
    assert (rows, node) == ([(6,)], "node3")  # node2 is too far behind
    # The leader moves on (nothing replicates): no follower is within max_lag=0.
    post(connect(held), "kim", "a seventh comment")
    leader = connect(held, consistency="eventual", max_lag=0, on_stale="leader")
    rows, node, _ = read(leader, "SELECT count(*) FROM comments")
    assert (rows, node) == ([(7,)], held.leader)
    refusing = connect(held, consistency="eventual", max_lag=0, on_stale="error")
    with pytest.raises(proxy.OperationalError, match=r"node2 at LSN \d+ \(4 behind\).*node3 at LSN \d+ "
                                                     r"\(1 behind, paused or stopped\)"):
        refusing.execute("SELECT count(*) FROM comments")
    rows, node, _ = read(connect(held, consistency="monotonic", max_lag=1), "SELECT count(*) FROM comments")
    assert (rows, node) == ([(6,)], "node3")


def test_max_staleness_keeps_away_followers_missing_entries_older_than_the_bound(two_positions):
    held = two_positions
    held.pause("node3")
    positions = held.positions()
    missing = held.entries(positions["node2"] + 1)
    assert len(missing) == 3
    rows, node, _ = read(connect(held, consistency="eventual", max_staleness=3600),
                         "SELECT count(*) FROM comments")
    assert (rows, node) == ([(3,)], "node2")  # what node2 misses was committed less than an hour ago
    # Let the clock pass the bound (a wait on time, not on replication: nothing replicates here).
    bound = 0.2
    time.sleep(max(0.0, missing[-1].committed_at + bound + 0.05 - time.time()))
    for level in ("eventual", "session"):
        rows, node, _ = read(connect(held, consistency=level, max_staleness=bound),
                             "SELECT count(*) FROM comments")
        assert (rows, node) == ([(6,)], "node3")
    # Neither follower has an entry older than the bound: the policy decides.
    post(connect(held), "kim", "a seventh comment")
    time.sleep(bound + 0.05)
    rows, node, _ = read(connect(held, consistency="eventual", max_staleness=bound, on_stale="leader"),
                         "SELECT count(*) FROM comments")
    assert (rows, node) == ([(7,)], held.leader)


# -- overrides ------------------------------------------------------------------------------------


def test_cursor_and_statement_levels_take_precedence_over_the_connection(cluster, conn):
    start_thread(conn, cluster)
    for node in cluster.followers:
        cluster.pause(node)
    post(conn, "liz", "mine")
    conn.on_stale = "leader"
    conn.consistency = "eventual"
    mine = "SELECT count(*) FROM comments WHERE author = 'liz'"
    cur = conn.cursor()
    assert cur.consistency is None
    cur.execute(mine)
    assert (count(cur), cur.node in cluster.followers) == (0, True)  # the connection's eventual
    cur.consistency = "strong"
    cur.execute(mine)
    assert (count(cur), cur.node) == (1, cluster.leader)  # the cursor's strong
    cur.execute(mine, consistency="eventual")
    assert (count(cur), cur.node in cluster.followers) == (0, True)  # the statement's eventual
    cur.execute(mine)
    assert cur.node == cluster.leader  # the override was for that statement only
    other = conn.cursor()
    other.execute(mine)
    assert other.node in cluster.followers  # the other cursor has the connection's level
    other.execute(mine, consistency="read-your-writes")
    assert (count(other), other.node) == (1, cluster.leader)
    cur.consistency = None
    cur.execute(mine)
    assert cur.node in cluster.followers
    conn.consistency = "session"
    cur.execute(mine)
    assert (count(cur), cur.node) == (1, cluster.leader)

    with pytest.raises(proxy.ProgrammingError, match="unknown consistency level"):
        cur.execute(mine, consistency="linearizable")
    cur.consistency = "bogus"
    with pytest.raises(proxy.ProgrammingError, match="unknown consistency level"):
        cur.execute(mine)
    with pytest.raises(proxy.ProgrammingError, match="unknown consistency level"):
        conn.consistency = "bogus"
    with pytest.raises(proxy.ProgrammingError, match="unknown policy"):
        conn.on_stale = "retry"
    with pytest.raises(proxy.ProgrammingError, match="unknown consistency level"):
        connect(cluster, consistency="quorum")
    with pytest.raises(proxy.ProgrammingError, match="unknown policy"):
        connect(cluster, on_stale="hope")
    assert conn.consistency == "session" and conn.on_stale == "leader"


# -- sessions beyond one connection ---------------------------------------------------------------


def test_session_token_continues_the_session_in_another_connection_and_process(cluster, conn):
    start_thread(conn, cluster)
    for node in cluster.followers:
        cluster.pause(node)
    written = post(conn, "mia", "posted from the laptop")
    token = conn.session_token
    assert token.startswith(TOKEN_PREFIX)
    own = "SELECT body FROM comments WHERE author = 'mia' ORDER BY id"

    # Another connection with the token reads mia's write (no follower has it: the leader).
    phone = connect(cluster, session_token=token, on_stale="leader")
    assert phone.last_write_lsn == written
    rows, node, _ = read(phone, own)
    assert (rows, node) == ([("posted from the laptop",)], cluster.leader)
    # A fresh connection without the token is another session: it may read stale data.
    stranger = connect(cluster, consistency="read-your-writes")
    rows, node, _ = read(stranger, own)
    assert rows == [] and node in cluster.followers

    # Another process continues the session, reads the write, and writes one of its own.
    out = run_client(cluster, [("read", own, []),
                               ("write", "INSERT INTO comments(author, body) VALUES ('mia', ?)",
                                ["posted from the tablet"]),
                               ("read", own, [])],
                     session_token=phone.session_token, on_stale="leader")
    first, wrote, second = out["results"]
    assert first["rows"] == [["posted from the laptop"]] and first["node"] == cluster.leader
    assert wrote["node"] == cluster.leader and wrote["lsn"] == written + 1
    assert second["rows"] == [["posted from the laptop"], ["posted from the tablet"]]

    # Back here, the tablet's token carries its write: read-your-writes and monotonic reads hold.
    laptop = connect(cluster, session_token=out["token"], on_stale="error")
    assert laptop.last_write_lsn == written + 1 and laptop.last_read_lsn >= written + 1
    with pytest.raises(proxy.OperationalError, match=f"needs LSN {written + 1}"):
        laptop.execute(own)  # followers are paused: no follower may serve this session
    laptop.on_stale = "leader"
    rows, node, _ = read(laptop, own)
    assert (rows, node) == ([("posted from the laptop",), ("posted from the tablet",)], cluster.leader)
    # Once a follower has caught up it serves the session.
    cluster.resume("node3")
    cluster.wait_for_catchup(10, nodes=["node3"])
    rows, node, lsn = read(laptop, own)
    assert (len(rows), node) == (2, "node3") and lsn >= written + 1
    # Positions in a token only move forward: merging an older token changes nothing.
    merged = connect(cluster, session_token=laptop.session_token)
    merged.session.merge_token(token)
    assert merged.last_write_lsn == written + 1


def test_session_tokens_of_another_cluster_or_damaged_are_refused(make_cluster):
    ours = make_cluster("ours")
    theirs = make_cluster("theirs")
    foreign = connect(theirs)
    foreign.execute("CREATE TABLE t(x)")
    foreign.commit()
    with pytest.raises(proxy.ProgrammingError, match="another cluster"):
        connect(ours, session_token=foreign.session_token)
    good = connect(ours).session_token
    body = good[len(TOKEN_PREFIX):]
    damaged = [
        "", "hello", good[len(TOKEN_PREFIX):], "rp1.", "rp1.!!!!", good[:-3] + "@@@", good + "x" * 5,
        TOKEN_PREFIX + body[::-1],
        TOKEN_PREFIX + "W10",  # "[]" encoded
        TOKEN_PREFIX + "eyJjIjoiYSJ9",  # {"c":"a"}: fields missing
        TOKEN_PREFIX + "eyJjIjoiYSIsInciOiJ4IiwiciI6MX0",  # {"c":"a","w":"x","r":1}
    ]
    for token in damaged:
        with pytest.raises(proxy.ProgrammingError):
            connect(ours, session_token=token)
    with pytest.raises(proxy.ProgrammingError):
        connect(ours, session_token=12345)  # type: ignore[arg-type]


def test_user_reads_own_writes_on_every_device_and_process(cluster, conn):
    start_thread(conn, cluster)
    for node in cluster.followers:
        cluster.pause(node)
    laptop = connect(cluster, user="alice")
    written = post(laptop, "alice", "posted from alice's laptop")
    own = "SELECT body FROM comments WHERE author = 'alice' ORDER BY id"

    # A fresh connection of alice (another device, no token) reads her write...
    for level in ("read-your-writes", "session"):
        phone = connect(cluster, user="alice", consistency=level, on_stale="leader")
        rows, node, _ = read(phone, own)
        assert (rows, node) == ([("posted from alice's laptop",)], cluster.leader)
    # ...while bob, under read-your-writes, is served by a stale follower.
    bob = connect(cluster, user="bob", consistency="read-your-writes", on_stale="leader")
    rows, node, _ = read(bob, own)
    assert rows == [] and node in cluster.followers

    # In another process, a fresh connection of alice reads it and posts again.
    out = run_client(cluster, [("read", own, []),
                               ("write", "INSERT INTO comments(author, body) VALUES ('alice', ?)",
                                ["posted from alice's tablet"])],
                     user="alice", consistency="read-your-writes", on_stale="leader")
    first, wrote = out["results"]
    assert first["rows"] == [["posted from alice's laptop"]] and first["node"] == cluster.leader
    assert wrote["lsn"] == written + 1
    # Another fresh connection of alice here reads the tablet's write: no token was passed.
    desk = connect(cluster, user="alice", consistency="read-your-writes", on_stale="leader")
    rows, node, _ = read(desk, own)
    assert (rows, node) == ([("posted from alice's laptop",), ("posted from alice's tablet",)], cluster.leader)
    # A process of bob still may read stale; a process of alice may not.
    out = run_client(cluster, [("read", own, [])], user="bob", consistency="read-your-writes")
    assert out["results"][0]["rows"] == [] and out["results"][0]["node"] in cluster.followers
    strict = connect(cluster, user="alice", on_stale="error")
    with pytest.raises(proxy.OperationalError, match=f"needs LSN {written + 1}"):
        strict.execute(own)

    # Users' positions are replicated with the entries: every follower knows them after catch-up.
    for node in cluster.followers:
        cluster.resume(node)
    leader_lsn = cluster.wait_for_catchup(10)
    users = node_rows(cluster, cluster.leader, "SELECT user, last_write_lsn FROM _replproxy_users ORDER BY user")
    assert users == [("alice", written + 1)]
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT user, last_write_lsn FROM _replproxy_users ORDER BY user") == users
    assert leader_lsn == written + 1
    # Caught up, a follower serves alice's fresh connections.
    rows, node, _ = read(connect(cluster, user="alice", on_stale="error"), own)
    assert len(rows) == 2 and node in cluster.followers


# -- threads --------------------------------------------------------------------------------------


def test_threads_with_their_own_connections_keep_their_session_guarantees(cluster, conn):
    conn.execute("CREATE TABLE posts(id INTEGER PRIMARY KEY, author TEXT NOT NULL, seq INTEGER NOT NULL)")
    conn.commit()
    cluster.wait_for_catchup(10)
    rounds, workers = 25, 4
    failures: list[str] = []
    served: Counter[str] = Counter()
    lock = threading.Lock()
    halfway = threading.Event()
    start = threading.Barrier(workers)

    def worker(name: str) -> None:
        try:
            session = connect(cluster, consistency="session")
            start.wait(30)
            last_total = 0
            for seq in range(rounds):
                session.execute("INSERT INTO posts(author, seq) VALUES (?, ?)", (name, seq))
                session.commit()
                written = session.last_write_lsn
                cur = session.execute("SELECT count(*), max(seq) FROM posts WHERE author = ?", (name,))
                assert cur.fetchone() == (seq + 1, seq), f"{name} misses its own post {seq}"
                if cur.node != cluster.leader:
                    assert cur.lsn is not None and cur.lsn >= written
                with lock:
                    served[cur.node] += 1
                total = session.execute("SELECT count(*) FROM posts").fetchone()[0]
                assert total >= last_total, f"{name} saw {total} posts after {last_total}"
                last_total = total
                if seq == rounds // 2:
                    halfway.set()
            session.close()
        except BaseException as exc:
            with lock:
                failures.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(f"writer{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    halfway.wait(30)
    cluster.pause("node2")  # lag injected while the threads run
    for thread in threads:
        thread.join(60)
    cluster.resume("node2")
    assert not failures, failures
    assert sum(served.values()) == rounds * workers
    assert set(served) & set(cluster.followers), served
    cluster.wait_for_catchup(10)
    for node in cluster.followers:
        assert node_rows(cluster, node, "SELECT count(*) FROM posts") == [(rounds * workers,)]
