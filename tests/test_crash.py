"""Crash safety: processes that write or apply are killed with SIGKILL at random points.

A writer subprocess commits transactions through the proxy and prints ("acknowledges") each one
after commit() returned; it is killed at a random moment drawn from a seeded RNG. Afterwards every
acknowledged write must be on the leader, no transaction may be half there, and once the cluster
is reopened every follower must hold exactly the leader's data, each entry applied once.

A second test kills a process that only runs the replicator while it is catching a follower up on a
large backlog, and checks the follower's data always matches its own applied LSN.

The seed comes from REPLPROXY_CRASH_SEED (default fixed) and is printed in every failure message.
Kill timing still varies from run to run: the seed fixes the plan, not the machine's speed.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest

import proxy

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

SEED = int(os.environ.get("REPLPROXY_CRASH_SEED", "20240611"))
# More for a soak run: REPLPROXY_CRASH_ITERATIONS=500.
WRITER_ITERATIONS = int(os.environ.get("REPLPROXY_CRASH_ITERATIONS", "24"))
APPLIER_ROUNDS = 5

WRITER_SCRIPT = r'''
import random
import sys
import time

import proxy

directory, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
conn = proxy.connect(directory)  # the process-wide cluster: its replicator moves the followers too
cur = conn.cursor()
cur.execute("BEGIN")  # inside a transaction reads go to the leader
cur.execute("SELECT coalesce(max(seq), 0) FROM t")
(last,) = cur.fetchone()
conn.rollback()
fillers = ["", "x", "héllo wörld ", "日本語テキスト", "\N{SNOWMAN}" * 3, "z" * 300]
started = time.monotonic()
i = 0
while time.monotonic() - started < 60:  # never outlive a test that lost track of it
    size = 5 if i % 5 == 4 else 1  # every 5th transaction is multi-row: checks atomicity
    first = last + 1
    for k in range(size):
        payload = f"{first}/{size}/{k}/" + rng.choice(fillers) * rng.randint(0, 3)
        cur.execute("INSERT INTO t(seq, payload) VALUES (?, ?)", (first + k, payload))
        cur.execute("UPDATE counter SET n = n + 1")
    conn.commit()
    last = first + size - 1
    sys.stdout.write(f"{first} {last}\n")  # acknowledged: commit() has returned
    sys.stdout.flush()
    i += 1
'''

APPLIER_SCRIPT = r'''
import sys
import time

import proxy

cluster = proxy.Cluster(sys.argv[1])  # starts the background replicator
sys.stdout.write("ready\n")
sys.stdout.flush()
time.sleep(60)
'''


# -- helpers --------------------------------------------------------------------------------------


class Child:
    """A subprocess whose stdout is read line by line with timeouts."""

    def __init__(self, script: Path, *args: str, stderr_path: Path):
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                                     stderr=self._stderr, stdin=subprocess.DEVNULL)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._buffer = b""
        self._eof = False

    def read_lines(self, timeout: float) -> list[str]:
        """Complete lines available within `timeout` (at least one unless it timed out or hit EOF)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer and not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._selector.select(remaining):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self._eof = True
                self._buffer += chunk
        return self._take_lines()

    def _take_lines(self) -> list[str]:
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode() for line in lines]

    def kill_and_drain(self) -> list[str]:
        """SIGKILL the child; return the complete lines it had written before it died."""
        assert self.proc.poll() is None, f"child exited by itself: {self.stderr()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        assert self.proc.returncode == -signal.SIGKILL, self.stderr()
        while not self._eof:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self._eof = True
            self._buffer += chunk
        lines = self._take_lines()  # a torn last line (no newline) was never acknowledged
        self.close()
        return lines

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._selector.close()
        self.proc.stdout.close()
        self._stderr.close()


def open_plain(path: Path) -> apsw.Connection:
    """A plain connection for checking a node file, bypassing the proxy. (Not Python's sqlite3: a
    second copy of SQLite in one process would break the POSIX locks of the proxy's connections.)"""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    conn.set_busy_timeout(30_000)
    return conn


def rows_of(path: Path) -> list[tuple[int, str]]:
    conn = open_plain(path)
    try:
        return conn.execute("SELECT seq, payload FROM t ORDER BY seq").fetchall()
    finally:
        conn.close()


def counter_of(path: Path) -> int:
    conn = open_plain(path)
    try:
        ((n,),) = conn.execute("SELECT n FROM counter").fetchall()
        return n
    finally:
        conn.close()


def applied_lsn(path: Path) -> int:
    conn = open_plain(path)
    try:
        return conn.execute("SELECT applied_lsn FROM _replproxy_state WHERE id=1").fetchone()[0]
    finally:
        conn.close()


def state_error(path: Path) -> str | None:
    conn = open_plain(path)
    try:
        return conn.execute("SELECT error FROM _replproxy_state WHERE id=1").fetchone()[0]
    finally:
        conn.close()


def check_log(path: Path, context: str) -> int:
    """The leader's log: LSNs 1..N without gaps, every checksum intact. Return N."""
    conn = open_plain(path)
    try:
        lsns = [r[0] for r in conn.execute("SELECT lsn FROM _replproxy_log ORDER BY lsn")]
        assert lsns == list(range(1, len(lsns) + 1)), f"{context}: log LSNs have gaps"
    finally:
        conn.close()
    cluster = proxy.Cluster(path.parent, replicate=False)
    try:
        bad = [e.lsn for e in cluster.entries() if not e.checksum_ok]
        assert not bad, f"{context}: log entries with a bad checksum: {bad}"
    finally:
        cluster.close()
    return len(lsns)


def rows_inserted_by_lsn(directory: Path) -> list[int]:
    """How many rows of t the leader's log has inserted by each LSN (index = LSN)."""
    cluster = proxy.Cluster(directory, replicate=False)
    try:
        totals = [0]
        for entry in cluster.entries():
            events = cluster.format.decode(entry.payload)
            totals.append(totals[-1] + sum(1 for e in events if e.kind == "INSERT" and e.table == "t"))
        return totals
    finally:
        cluster.close()


def check_groups(rows: list[tuple[int, str]], context: str) -> None:
    """Every transaction is wholly there or wholly missing, and seqs are 1..N."""
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1)), f"{context}: seq gaps"
    groups: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for seq, payload in rows:
        first, size, k, _ = payload.split("/", 3)
        assert seq == int(first) + int(k), f"{context}: row {seq} has payload {payload!r}"
        groups.setdefault(int(first), []).append(int(k))
        sizes[int(first)] = int(size)
    for first, ks in groups.items():
        assert sorted(ks) == list(range(sizes[first])), (
            f"{context}: transaction starting at seq {first} is half there: parts {sorted(ks)} "
            f"of {sizes[first]}")


def create_tables(directory: Path, cluster: proxy.Cluster) -> int:
    conn = proxy.connect(directory, cluster=cluster)
    try:
        conn.execute("CREATE TABLE t(seq INTEGER PRIMARY KEY, payload TEXT)")
        conn.execute("CREATE TABLE counter(id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter(id, n) VALUES (1, 0)")
        conn.commit()
        return conn.last_write_lsn
    finally:
        conn.close()


def check_cluster(directory: Path, context: str) -> proxy.VerifyReport:
    """Reopen the cluster, let it catch up, and check every follower holds exactly the leader's data."""
    cluster = proxy.Cluster(directory)
    try:
        leader_path = cluster.path_of(cluster.leader)
        target = cluster.wait_for_catchup(60)
        assert target == cluster.leader_lsn()
        report = proxy.verify(cluster)
        assert report.identical, f"{context}: {report.differences}"
        leader_rows = rows_of(leader_path)
        leader_counter = counter_of(leader_path)
        for name in cluster.followers:
            path = cluster.path_of(name)
            assert state_error(path) is None, f"{context}: {name} stopped: {state_error(path)}"
            assert applied_lsn(path) == target, f"{context}: {name} at {applied_lsn(path)} of {target}"
            rows = rows_of(path)
            assert len(rows) == len(leader_rows), f"{context}: {name} has {len(rows)} rows"
            assert rows == leader_rows, f"{context}: {name} rows differ from the leader's"
            assert counter_of(path) == leader_counter == len(rows), (
                f"{context}: {name} counter {counter_of(path)}, leader {leader_counter}, "
                f"{len(rows)} rows: something was applied twice or not at all")
        return report
    finally:
        cluster.close()


# -- the writer is killed -------------------------------------------------------------------------


def test_writer_killed_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    directory = tmp_path / "cluster"
    cluster = proxy.Cluster.init(directory, followers=2)
    create_tables(directory, cluster)
    cluster.wait_for_catchup(10)
    cluster.close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    leader_path = directory / "node1.db"

    acknowledged: set[int] = set()
    for iteration in range(WRITER_ITERATIONS):
        context = f"seed {SEED}, iteration {iteration}"
        child = Child(script, str(directory), str(rng.randrange(2**32)),
                      stderr_path=tmp_path / f"writer{iteration}.err")
        try:
            wanted = rng.randint(1, 25)
            if rng.random() < 0.5:
                mode, extra_acks, delay = "acks", rng.randint(0, 8), 0.0
            else:
                mode, extra_acks, delay = "delay", 0, rng.choice([rng.uniform(0.0001, 0.001),
                                                                  rng.uniform(0.001, 0.03)])
            lines: list[str] = []
            deadline = time.monotonic() + 30
            while len(lines) < wanted + extra_acks:
                assert time.monotonic() < deadline, f"{context}: writer stalled: {child.stderr()}"
                got = child.read_lines(1.0)
                assert got or child.proc.poll() is None, f"{context}: writer died: {child.stderr()}"
                lines += got
            if delay:
                time.sleep(delay)
            lines += child.kill_and_drain()
        finally:
            child.close()
        for line in lines:
            first, last = map(int, line.split())
            acknowledged.update(range(first, last + 1))

        # The leader right after the crash, before anything reopens the cluster.
        rows = rows_of(leader_path)
        seqs = {seq for seq, _ in rows}
        missing = sorted(acknowledged - seqs)
        assert not missing, f"{context} ({mode}): acknowledged writes lost: {missing[:20]}"
        assert counter_of(leader_path) == len(rows), (
            f"{context}: counter {counter_of(leader_path)} but {len(rows)} rows: half a transaction")
        check_groups(rows, context)
        check_log(leader_path, context)
        # The writer's replicator was applying too: each follower holds whole transactions, a
        # prefix of the leader's, as far as its own applied LSN says.
        inserted = rows_inserted_by_lsn(directory)
        assert inserted[-1] == len(rows), f"{context}: the log inserts {inserted[-1]} rows, t has {len(rows)}"
        for name in ("node2", "node3"):
            path = directory / f"{name}.db"
            conn = open_plain(path)
            try:
                conn.execute("BEGIN")
                lsn = conn.execute("SELECT applied_lsn FROM _replproxy_state").fetchone()[0]
                (count,) = conn.execute("SELECT count(*) FROM t").fetchone()
                conn.execute("COMMIT")
            finally:
                conn.close()
            assert count == inserted[lsn], f"{context}: {name} at LSN {lsn} has {count} rows, not {inserted[lsn]}"
            follower_rows = rows_of(path)
            assert follower_rows == rows[:len(follower_rows)], f"{context}: {name} is not a prefix"
            assert counter_of(path) == len(follower_rows), f"{context}: {name} half applied"
            check_groups(follower_rows, f"{context}, {name}")

        report = check_cluster(directory, context)
        # Shown on failure: how far each kill got (rows committed but never acknowledged are fine).
        print(f"{context}: {mode} kill after {len(lines)} acks; {len(rows)} rows, "
              f"{len(seqs - acknowledged)} committed unacknowledged, LSN {report.lsn}")
    assert len(acknowledged) > WRITER_ITERATIONS


# -- the applier is killed ------------------------------------------------------------------------


def write_backlog(directory: Path, cluster: proxy.Cluster, first: int, count: int) -> None:
    conn = proxy.connect(directory, cluster=cluster)
    try:
        for seq in range(first, first + count):
            conn.execute("INSERT INTO t(seq, payload) VALUES (?, ?)", (seq, f"{seq}/1/0/backlog"))
            conn.execute("UPDATE counter SET n = n + 1")
            conn.commit()
    finally:
        conn.close()


def check_follower_at_its_position(path: Path, base: int, context: str) -> int:
    """A follower's data is exactly the first (applied LSN - base) transactions, each once."""
    conn = open_plain(path)
    try:
        conn.execute("BEGIN")
        lsn = conn.execute("SELECT applied_lsn FROM _replproxy_state WHERE id=1").fetchone()[0]
        error = conn.execute("SELECT error FROM _replproxy_state WHERE id=1").fetchone()[0]
        assert error is None, f"{context}: {path.name} stopped: {error}"
        if lsn >= base:
            count, top = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM t").fetchone()
            (n,) = conn.execute("SELECT n FROM counter").fetchone()
            expected = lsn - base
            assert (count, top, n) == (expected, expected, expected), (
                f"{context}: {path.name} at LSN {lsn} holds {count} rows (max seq {top}), counter "
                f"{n}; expected {expected} of each")
        conn.execute("COMMIT")
        return lsn
    finally:
        conn.close()


def test_applier_killed_mid_catch_up(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    directory = tmp_path / "cluster"
    cluster = proxy.Cluster.init(directory, followers=2, replicate=False)
    base = create_tables(directory, cluster)
    follower_paths = [cluster.path_of(name) for name in cluster.followers]
    script = tmp_path / "applier.py"
    script.write_text(APPLIER_SCRIPT)
    written = 0
    mid_catch_up = 0
    try:
        for round_ in range(APPLIER_ROUNDS):
            context = f"seed {SEED + 1}, round {round_}"
            leader_lsn = cluster.leader_lsn()
            behind = leader_lsn - min(applied_lsn(p) for p in follower_paths)
            if behind < 1000:
                count = 2000 if written == 0 else 1200
                write_backlog(directory, cluster, written + 1, count)
                written += count
                leader_lsn = cluster.leader_lsn()
            assert leader_lsn == base + written
            start = {p: applied_lsn(p) for p in follower_paths}
            child = Child(script, str(directory), stderr_path=tmp_path / f"applier{round_}.err")
            try:
                deadline = time.monotonic() + 30
                while not any(start[p] < applied_lsn(p) < leader_lsn for p in follower_paths):
                    assert time.monotonic() < deadline, f"{context}: no progress: {child.stderr()}"
                    assert child.proc.poll() is None, f"{context}: applier died: {child.stderr()}"
                    if all(applied_lsn(p) >= leader_lsn for p in follower_paths):
                        break  # too fast to catch in the middle this time
                    time.sleep(0.0005)
                # A random extra moment, cut short once a follower is done (the kill must land
                # while the applier still has work).
                until = time.monotonic() + rng.choice([0.0, rng.uniform(0.0, 0.01), rng.uniform(0.01, 0.08)])
                while time.monotonic() < until and all(applied_lsn(p) < leader_lsn for p in follower_paths):
                    time.sleep(0.0005)
                child.kill_and_drain()
            finally:
                child.close()
            positions = [check_follower_at_its_position(p, base, context) for p in follower_paths]
            progressed = any(lsn > start[p] for p, lsn in zip(follower_paths, positions, strict=True))
            if progressed and any(lsn < leader_lsn for lsn in positions):
                mid_catch_up += 1  # killed with work done and work left
            print(f"{context}: killed with followers at {positions} of {leader_lsn}")
    finally:
        cluster.close()
    # Timing decides whether a kill lands mid catch-up; most rounds must.
    assert mid_catch_up >= APPLIER_ROUNDS - 2, f"only {mid_catch_up} kills landed mid catch-up"

    report = check_cluster(directory, f"seed {SEED + 1}, final")
    assert report.lsn == base + written
    for path in follower_paths:
        assert check_follower_at_its_position(path, base, "final") == base + written
        assert len(rows_of(path)) == written
