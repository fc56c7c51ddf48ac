"""The NATS JetStream transport (proxy/jetstream) against real nats-server processes: the log as a
stream (sequence == LSN, idempotent and fenced publishing, big entries in the object store), a
follower applying from it through the ordinary apply path, the key-value buckets, a server of a
three-server cluster dying, and servers that cannot be reached or stop answering.

No test sleeps to let something happen: reads wait on positions, retries are bounded by HANG.
"""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import HANG, node_state, open_plain

import proxy
from proxy.errors import LeaseLost, TransportError
from proxy.jetstream import codec
from proxy.jetstream.bridge import Bridge, split_urls
from proxy.jetstream.kv import ClusterKV
from proxy.jetstream.names import Names
from proxy.jetstream.stream import HEADER_ROOM, JetStreamSource, LogStream
from proxy.store.log import LogEntry, checksum

CLUSTER_ID = "3b1f0c2e-test"


def entry(lsn: int, epoch: int = 1, payload: bytes | None = None, fmt: str = "row",
          origin: str | None = None) -> LogEntry:
    body = f"entry {lsn} of epoch {epoch}".encode() if payload is None else payload
    return LogEntry(lsn, epoch, fmt, body, checksum(body), 1_700_000_000.0 + lsn / 7, origin)


def varied_entries(first: int, last: int, seed: int = 7) -> list[LogEntry]:
    """Entries with every field varying: payload sizes (empty too) and bytes, formats, an epoch
    change half way, origins (None, ASCII, non-ASCII), fractional commit times."""
    rng = random.Random(seed)
    out = []
    for lsn in range(first, last + 1):
        body = rng.randbytes(rng.choice([0, 1, 17, 300, 5000]))
        origin = rng.choice([None, "alice", "b\u00f6b \u2603"])
        epoch = 1 if lsn <= (first + last) // 2 else 2
        out.append(LogEntry(lsn, epoch, rng.choice(["row", "statement", "trigger", "mixed"]), body,
                            checksum(body), 1_700_000_000.123456 + lsn * 0.0137, origin))
    return out


def read_through(source: JetStreamSource, last: int, after: int = 0, *, retry: bool = False,
                 deadline: float | None = None) -> list[LogEntry]:
    """Every entry after `after` up to `last`, through the source as an applier reads it (each read
    starts after the last entry received); with `retry`, TransportError is retried until `deadline`."""
    deadline = time.monotonic() + HANG if deadline is None else deadline
    out: list[LogEntry] = []
    while after < last:
        assert time.monotonic() < deadline, f"the source gave entries up to {after} of {last} within HANG"
        try:
            got = source.read(after, 1000)
            if not got:
                source.fill(after, 0.5)
                continue
        except TransportError:
            if not retry:
                raise
            time.sleep(RETRY_POLL)
            continue
        assert got[0].lsn == after + 1, f"read after {after} started at {got[0].lsn}"
        out.extend(got)
        after = got[-1].lsn
    return out


@pytest.fixture
def bridge(nats_server: Any) -> Iterator[Bridge]:
    with Bridge(nats_server.url) as b:
        yield b


@pytest.fixture
def stream(bridge: Bridge) -> LogStream:
    s = LogStream(bridge, Names("jstest"), CLUSTER_ID)
    s.ensure()
    return s


# -- publishing and reading ---------------------------------------------------------------------


def test_published_entries_are_the_stream_and_read_back_identical(stream: LogStream) -> None:
    entries = varied_entries(1, 300)
    assert stream.publish(entries) == (300, None)
    state = stream.state()
    assert (state.first_seq, state.last_seq, state.messages) == (1, 300, 300)

    source = JetStreamSource(stream)
    try:
        got = read_through(source, 300)
        assert [e.lsn for e in got] == list(range(1, 301))
        assert got == entries  # lsn, epoch, format, payload, checksum, committed_at, origin
        assert all(e.checksum_ok for e in got)
        assert source.last_lsn() == 300
        assert source.identity(200) == (entries[199].epoch, entries[199].checksum)
        assert source.commit_time(123) == entries[122].committed_at
    finally:
        source.close()
    assert stream.get(77) == entries[76]
    assert stream.get(301) is None


def test_a_reader_starts_at_its_position_and_follows_new_entries(stream: LogStream) -> None:
    entries = varied_entries(1, 40)
    stream.publish(entries[:20])
    source = JetStreamSource(stream)
    try:
        assert read_through(source, 20, after=12) == entries[12:20]
        stream.publish(entries[20:])
        assert read_through(source, 40, after=20) == entries[20:]
        # Asked again from an earlier position (an applier restarted from an older copy): it rewinds.
        assert read_through(source, 40, after=5) == entries[5:]
    finally:
        source.close()


def test_republishing_an_overlapping_range_stores_nothing_twice(stream: LogStream) -> None:
    entries = varied_entries(1, 300)
    assert stream.publish(entries) == (300, None)
    before = stream.state()

    assert stream.publish(entries[250:]) == (300, None)  # a retry of the last ones
    assert stream.publish(entries) == (300, None)  # everything again
    assert stream.state() == before

    more = varied_entries(301, 320, seed=8)
    assert stream.publish(entries[280:] + more) == (320, None)  # a retry that goes on past the end
    state = stream.state()
    assert (state.last_seq, state.messages) == (320, 320)
    source = JetStreamSource(stream)
    try:
        assert read_through(source, 320) == entries + more
    finally:
        source.close()


def test_another_leaders_entry_is_refused_as_lease_lost_and_a_gap_as_transport_error(stream: LogStream) -> None:
    mine = [entry(lsn, epoch=1) for lsn in range(1, 21)]
    assert stream.publish(mine) == (20, None)
    before = stream.state()

    # A deposed leader (epoch 1) and a new one (epoch 2) both wrote an entry at LSN 20 and 10.
    reached, error = stream.publish([entry(20, epoch=2)])
    assert reached is None and isinstance(error, LeaseLost), error
    assert f"{CLUSTER_ID}:1:20" in str(error)  # it names the entry the stream holds
    reached, error = stream.publish([entry(10, epoch=2)])
    assert reached is None and isinstance(error, LeaseLost), error
    # Its own entries still count up to where another leader's begin, and the entries sent after
    # the refused one (the batch is in flight at once) do not continue the other leader's log.
    reached, error = stream.publish([mine[18], entry(20, epoch=2), entry(21, epoch=2), entry(22, epoch=2)])
    assert reached == 19 and isinstance(error, LeaseLost), error
    assert stream.state() == before, "entries of epoch 2 were appended after epoch 1's entry 20"

    reached, error = stream.publish([entry(22, epoch=1)])  # entry 21 missing
    assert reached is None and isinstance(error, TransportError) and not isinstance(error, LeaseLost), error
    assert "22" in str(error)
    assert stream.state() == before
    assert stream.msg_id(20) == codec.msg_id(CLUSTER_ID, mine[19])

    # The new leader continues the stream; from then on the old one is the one refused.
    assert stream.publish([entry(21, epoch=2)]) == (21, None)
    reached, error = stream.publish([entry(21, epoch=1)])
    assert reached is None and isinstance(error, LeaseLost), error
    assert stream.get(21) == entry(21, epoch=2)


def test_an_entry_over_the_message_limit_goes_through_the_object_store(bridge: Bridge, stream: LogStream) -> None:
    limit = bridge.max_payload
    assert limit >= 1 << 20
    rng = random.Random(4)
    entries = [
        entry(1),
        entry(2, payload=rng.randbytes(limit * 2 + 12345)),  # several object chunks
        entry(3, payload=rng.randbytes(limit - HEADER_ROOM)),  # the largest kept inline
        entry(4, payload=rng.randbytes(limit - HEADER_ROOM + 1), fmt="statement", origin="carol"),
        entry(5),
    ]
    assert stream.publish(entries) == (5, None)
    assert stream.state().last_seq == 5

    def object_of(seq: int) -> str | None:
        msg = bridge.call(bridge.js.get_msg(stream.names.stream, seq=seq))
        return (msg.headers or {}).get(codec.OBJECT_HEADER)

    assert [object_of(seq) is not None for seq in range(1, 6)] == [False, True, False, True, False]
    for e in entries:
        assert stream.get(e.lsn) == e
    source = JetStreamSource(stream)
    try:
        got = read_through(source, 5)
        assert got == entries
        assert got[1].checksum_ok and got[3].checksum_ok
    finally:
        source.close()


# -- a follower applying from the stream --------------------------------------------------------


class RecordingSource(JetStreamSource):
    """Records the position of every read the applier makes."""

    def __init__(self, stream: LogStream):
        super().__init__(stream)
        self.reads: list[int] = []

    def read(self, after: int, limit: int) -> list[LogEntry]:
        self.reads.append(after)
        return super().read(after, limit)


SCHEMA = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n REAL, b BLOB)",
    "CREATE TABLE audit(tid INTEGER, what TEXT)",  # rowid table: a twice-applied insert shows
    "CREATE TABLE counter(id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)",
    "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN INSERT INTO audit(tid, what) VALUES (new.id, 'ins'); END",
    "INSERT INTO counter(id, n) VALUES (1, 0)",
]


def write_round(conn: proxy.Connection, first: int) -> int:
    """A few transactions of inserts (trigger firing), updates and deletes; each increments the
    counter once. Return how many transactions."""
    done = 0
    for k in range(first, first + 6):
        conn.execute("INSERT INTO t(id, v, n, b) VALUES (?, ?, ?, ?)", (k, f"v{k}", k / 3, bytes([k % 256]) * k))
        conn.execute("INSERT INTO t(id, v, n, b) VALUES (?, ?, ?, NULL)", (k + 1000, "pair", -k))
        conn.execute("UPDATE counter SET n = n + 1")
        conn.commit()
        done += 1
    conn.execute("UPDATE t SET v = v || '!' WHERE id % 2 = 0")
    conn.execute("DELETE FROM t WHERE id = ?", (first + 1000,))
    conn.execute("UPDATE counter SET n = n + 1")
    conn.commit()
    return done + 1


def table_rows(path: Any) -> dict[str, list[tuple[Any, ...]]]:
    conn = open_plain(path)
    try:
        return {table: conn.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid").fetchall()
                for table in ("t", "audit", "counter")}
    finally:
        conn.close()


@pytest.mark.parametrize("fmt", ["row", "statement", "trigger", "mixed"])
def test_a_follower_applies_the_stream_and_a_restarted_applier_resumes_at_its_position(
        make_cluster: Any, stream: LogStream, fmt: str) -> None:
    cluster = make_cluster(f"c-{fmt}", followers=1, format=fmt, replicate=False)
    follower = cluster.followers[0]
    conn = proxy.connect(cluster.directory, cluster=cluster)
    try:
        for sql in SCHEMA:
            conn.execute(sql)
        conn.commit()
        transactions = write_round(conn, 1)
        if fmt == "mixed":  # statement entries and row images in one log
            conn.execute("UPDATE t SET n = random() WHERE id < 4")
            conn.commit()
        mid = cluster.leader_lsn()
        assert stream.publish(cluster.entries()) == (mid, None)

        first = cluster.applier(follower, RecordingSource(stream))
        try:
            assert first.catch_up(mid, timeout=HANG) == mid
        finally:
            first.close()
            first.source.close()
        assert node_state(cluster.path_of(follower)).applied_lsn == mid

        transactions += write_round(conn, 50)
        last = cluster.leader_lsn()
        assert last > mid
        assert stream.publish(cluster.entries()) == (last, None)  # the first half again: deduplicated
        assert stream.state().messages == last
    finally:
        conn.close()

    source = RecordingSource(stream)
    second = cluster.applier(follower, source)
    try:
        assert second.catch_up(last, timeout=HANG) == last
    finally:
        second.close()
        source.close()
    assert source.reads[0] == mid  # resumed at its position, not from the start
    state = node_state(cluster.path_of(follower))
    assert (state.applied_lsn, state.error) == (last, None)
    leader_rows = table_rows(cluster.path_of(cluster.leader))
    assert table_rows(cluster.path_of(follower)) == leader_rows
    assert leader_rows["counter"] == [(1, 1, transactions)]  # nothing applied twice, nothing missed
    report = proxy.verify(cluster)  # schema and data, at the position both hold
    assert report.identical, report.differences


# -- key-value buckets --------------------------------------------------------------------------


def test_kv_compare_and_set_and_node_positions(bridge: Bridge) -> None:
    kv = ClusterKV(bridge, Names("kvtest"))
    kv.ensure()
    kv.ensure()  # existing buckets are kept
    first = kv.create("settings", {"format": "row"})
    assert first is not None
    assert kv.create("settings", {"format": "statement"}) is None
    assert kv.get("settings").value == {"format": "row"}

    second = kv.update("settings", {"format": "mixed"}, first)
    assert second is not None and second > first
    assert kv.update("settings", {"format": "trigger"}, first) is None  # stale revision
    found = kv.get("settings")
    assert (found.value, found.revision) == ({"format": "mixed"}, second)

    kv.put("epochs", [[1, 0], [2, 40]])
    kv.put("node.a", {"lsn": 3})
    kv.put("node.b", {"lsn": 5})
    kv.put("node.b", {"lsn": 9})
    kv.put("node.c", {"lsn": 1})
    kv.delete("node.c")
    kv.put("nodes", {"not": "a node"})
    assert kv.create("leader", {"node": "a", "epoch": 1, "ttl": 5.0}) is not None  # the lease bucket
    assert kv.nodes() == {"a": {"lsn": 3}, "b": {"lsn": 9}}
    assert kv.node("b") == {"lsn": 9}
    assert kv.node("c") is None
    assert kv.get("epochs").value == [[1, 0], [2, 40]]
    assert kv.get("missing") is None
    empty = ClusterKV(bridge, Names("empty"))
    empty.ensure()
    assert empty.nodes() == {}


def test_node_positions_never_depend_on_a_key_watcher(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    """nats-py's `KeyValue.keys()` ends its listing on a pending count that races with delivery: on
    a busy machine it answered with no key (NoKeysError), and stream retention then forgot a
    follower that was down. Here it loses that race every time; every node must still be listed,
    deleted ones excepted, and no listing may leave a consumer behind on the bucket."""
    from nats.js.errors import NoKeysError
    from nats.js.kv import KeyValue

    kv = ClusterKV(bridge, Names("watchless"))
    kv.ensure()
    for name, lsn in (("a", 151), ("b", 151), ("c", 51), ("gone", 7)):
        kv.put(f"node.{name}", {"role": "follower", "lsn": lsn})
    kv.delete("node.gone")  # `remove-follower`
    kv.put("settings", {"config": ""})

    async def lost_race(self: Any, *args: Any, **kwargs: Any) -> list[str]:
        raise NoKeysError

    monkeypatch.setattr(KeyValue, "keys", lost_race)
    for _ in range(3):
        assert {n: p["lsn"] for n, p in kv.nodes().items()} == {"a": 151, "b": 151, "c": 51}

    async def consumers() -> int:
        return (await bridge.js.stream_info(f"KV_{kv.names.bucket}")).state.consumer_count

    assert bridge.call(consumers(), what="stream info") == 0


def test_stream_retention_keeps_what_any_other_node_or_a_join_in_progress_needs() -> None:
    """The leader (a) may purge up to the lowest position of any other node, a deposed leader's
    included, and of a snapshot a join is still downloading, keeping the last `keep` entries."""
    from proxy.dist.service import stream_floor
    from proxy.store.node import HOLD_ORPHAN

    now = 1_000_000.0
    nodes = {"a": {"role": "leader", "lsn": 500}, "b": {"role": "follower", "lsn": 400}}
    assert stream_floor(500, nodes, {}, me="a", keep=10, now=now) == 390
    assert stream_floor(500, nodes, {}, me="a", keep=0, now=now) == 399  # the last entry always stays
    assert stream_floor(300, nodes, {}, me="a", keep=10, now=now) == 290  # not past what is published
    # A leader deposed while down: its record still says leader, and it holds the stream.
    deposed = {**nodes, "a": {"role": "follower", "lsn": 500}, "old": {"role": "leader", "lsn": 120}}
    assert stream_floor(500, deposed, {}, me="a", keep=10, now=now) == 110
    # A join downloading its snapshot at 200 is not registered yet: its hold counts...
    holds = {"new": (200, now - 300.0)}
    assert stream_floor(500, nodes, holds, me="a", keep=10, now=now) == 190
    # ...until its node is registered (its own position counts from then on)...
    registered = {**nodes, "new": {"role": "follower", "lsn": 200, "state": "joined"}}
    assert stream_floor(500, registered, holds, me="a", keep=10, now=now) == 190
    registered["new"]["lsn"] = 450
    assert stream_floor(500, registered, holds, me="a", keep=10, now=now) == 390
    # ...or, its join killed, for HOLD_ORPHAN seconds.
    assert stream_floor(500, nodes, {"new": (200, now - HOLD_ORPHAN - 1)}, me="a", keep=10, now=now) == 390


def test_the_relay_never_waits_behind_a_transaction_for_its_hold(stream: LogStream, make_cluster: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's retention hold is a write to the leader's file; a client's transaction may hold
    that file's write lock for long. The relay (its loop also publishes and heartbeats) must not
    wait for it: it tries again at its next pass."""
    from proxy.dist.relay import HOLD_HOLDER, Relay
    from proxy.store import node as store

    cluster = make_cluster(followers=0)
    path = cluster.path_of(cluster.leader)
    # Waiting would outlast the test's bound, whatever the busy timeout is.
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", int(HANG * 1000 * 10))
    relay = Relay(str(path), cluster.leader, stream)
    relay.published = 5
    client = open_plain(path)
    client.execute("BEGIN IMMEDIATE")
    done = threading.Event()
    worker = threading.Thread(target=lambda: (relay._hold(force=True), done.set()), daemon=True)
    worker.start()
    try:
        assert done.wait(HANG), "the relay waited for the client's write lock"
        assert HOLD_HOLDER not in store.retention_holds(relay.conn)  # not moved: next time
    finally:
        client.execute("ROLLBACK")
        client.close()
    worker.join(HANG)
    relay._hold(force=True)  # the lock is free: the hold moves
    assert store.retention_holds(relay.conn)[HOLD_HOLDER][0] == 5
    relay.close()


# -- server failures ----------------------------------------------------------------------------

RETRY_POLL = 0.05  # seconds between two tries while a cluster recovers (the wait is bounded by HANG)


def _retry(deadline: float, action: Any) -> Any:
    while True:
        try:
            return action()
        except TransportError as exc:
            assert time.monotonic() < deadline, f"NATS did not recover within HANG: {exc}"
            time.sleep(RETRY_POLL)


def publish_retrying(stream: LogStream, entries: list[LogEntry], deadline: float) -> None:
    """Publish `entries`, retrying what did not go through while the cluster recovers: a
    transport error only, never LeaseLost (a retried entry that did go through is ours)."""
    while entries:
        reached, error = _retry(deadline, lambda batch=entries: stream.publish(batch, timeout=2.0))
        if reached is not None:
            entries = [e for e in entries if e.lsn > reached]
        if error is None:
            assert not entries
            return
        assert isinstance(error, TransportError), error
        assert time.monotonic() < deadline, f"publishing did not recover within HANG: {error}"
        time.sleep(RETRY_POLL)


def test_a_three_server_cluster_survives_losing_a_server(nats_cluster: Any) -> None:
    deadline = time.monotonic() + HANG
    servers = nats_cluster.servers
    with Bridge(nats_cluster.url, timeout=2.0) as admin:
        names = Names("ha")
        _retry(deadline, lambda: LogStream(admin, names, CLUSTER_ID).ensure(replicas=3))
        info = _retry(deadline, lambda: admin.call(admin.js.stream_info(names.stream)))
        assert info.config.num_replicas == 3
        leader = next(s for s in servers if s.name == info.cluster.leader)

    # A client given the stream leader's address only: it learns the others from the server.
    with Bridge(leader.url, timeout=2.0) as b:
        assert b.nc.connected_url.port == leader.port
        stream = LogStream(b, names, CLUSTER_ID)
        entries = varied_entries(1, 150)
        publish_retrying(stream, entries[:50], deadline)
        source = JetStreamSource(stream)
        try:
            assert read_through(source, 50, retry=True, deadline=deadline) == entries[:50]
            # The server the client is connected to and the stream's leader dies: the client
            # reconnects to another, the stream elects another leader, nothing is lost or doubled.
            leader.kill()
            publish_retrying(stream, entries[50:100], deadline)
            assert read_through(source, 100, after=50, retry=True, deadline=deadline) == entries[50:100]
            assert b.nc.connected_url.port != leader.port
            nats_cluster.restart(leader)
            # Another server dies: the stream's quorum now needs the restarted one, caught up.
            new_leader = _retry(deadline, lambda: b.call(b.js.stream_info(names.stream))).cluster.leader
            other = next(s for s in servers if s is not leader and s.name != new_leader)
            other.kill()
            publish_retrying(stream, entries[100:], deadline)
            assert read_through(source, 150, after=100, retry=True, deadline=deadline) == entries[100:]
            nats_cluster.restart(other)
            state = _retry(deadline, stream.state)
            assert (state.last_seq, state.messages) == (150, 150)
        finally:
            source.close()
        fresh = JetStreamSource(stream)  # a new reader gets the whole log
        try:
            assert read_through(fresh, 150, retry=True, deadline=deadline) == entries
        finally:
            fresh.close()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bridge_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "replproxy-nats")


def test_an_unreachable_server_is_a_transport_error_naming_it(tmp_path: Any) -> None:
    url = f"nats://127.0.0.1:{_unused_port()}"
    threads = _bridge_threads()
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        Bridge(url, timeout=0.5)
    assert time.monotonic() - started < 10  # bounded by the timeout, never a hang
    message = str(caught.value)
    assert url in message and "cannot reach" in message, message
    assert _bridge_threads() == threads  # its event loop thread is gone

    with pytest.raises(TransportError, match="no NATS server URL"):
        split_urls(" , ")
    assert split_urls("127.0.0.1:4222, nats://h:1") == ["nats://127.0.0.1:4222", "nats://h:1"]


def test_a_server_that_stops_answering_is_a_timeout_not_a_hang(nats_server: Any) -> None:
    with Bridge(nats_server.url, timeout=0.5) as b:
        stream = LogStream(b, Names("paused"), CLUSTER_ID)
        stream.ensure()
        assert stream.publish([entry(1)]) == (1, None)
        server = nats_server.servers[0]
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(TransportError, match="timed out") as caught:
                stream.state()
            waited = time.monotonic() - started
            message = str(caught.value)
            assert f"reading stream {stream.names.stream}" in message
            claimed = re.search(r"after ([0-9.]+)s", message)
            assert claimed is None or float(claimed.group(1)) <= waited, f"{message}, after {waited:.2f}s"
            # A server that does not answer is reachable: a timeout, as a TransportError.
            reached, error = stream.publish([entry(2)], timeout=0.5)
            assert reached is None and isinstance(error, TransportError), error
            assert "timed out" in str(error) and "entry 2" in str(error), error
        finally:
            server.cont()
        # The same connection works again once the server answers.
        publish_retrying(stream, [entry(2)], time.monotonic() + HANG)
        assert stream.get(2) == entry(2)


def test_entry_codec_rejects_what_is_not_an_entry_at_its_sequence() -> None:
    e = entry(5, payload=os.urandom(10), origin="d\u00e9")
    hdrs = codec.headers(CLUSTER_ID, e)
    assert hdrs[codec.EXPECTED_LAST] == "4" and hdrs[codec.MSG_ID] == f"{CLUSTER_ID}:1:5:{e.checksum}"
    # Another entry at the same epoch and LSN (a leader restored from an older backup) has another id.
    other = entry(5, payload=e.payload + b"!")
    assert codec.msg_id(CLUSTER_ID, other) != codec.msg_id(CLUSTER_ID, e)
    assert codec.decode(5, hdrs, e.payload) == (e, None)
    with pytest.raises(ValueError, match="not a replproxy log entry"):
        codec.decode(5, {}, b"x")
    with pytest.raises(ValueError, match="holds log entry 5"):
        codec.decode(6, hdrs, e.payload)


def test_a_reader_whose_consumer_starts_over_continues_at_its_position(stream: LogStream) -> None:
    """A server that restarts recreates an ephemeral consumer from its stored config, so it
    delivers from its original start again (seen with three servers): the reader must notice and
    go on from its own position, neither re-reading nor reporting a gap."""
    from nats.js import api

    entries = varied_entries(1, 60)
    assert stream.publish(entries[:30]) == (30, None)
    source = JetStreamSource(stream)
    try:
        assert read_through(source, 30) == entries[:30]
        # The consumer, as the restarted server brings it back: at its first start sequence.
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=2,
                                    ack_policy=api.AckPolicy.NONE, mem_storage=True, inactive_threshold=60.0)
        source._sub = stream.bridge.call(stream.bridge.js.pull_subscribe(  # noqa: PLC2701
            stream.names.log_subject, stream=stream.names.stream, config=config))
        assert stream.publish(entries[30:]) == (60, None)
        assert read_through(source, 60, after=30) == entries[30:]
    finally:
        source.close()
