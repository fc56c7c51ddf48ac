"""Helpers shared by the tests: waiting on a condition, clocks a test moves, running code in the
background, the `replproxy` CLI and Python snippets as real subprocesses, and reading node files.

Nothing here sleeps to let time pass: a wait polls a condition (or a cluster's progress) and its
timeout only bounds a hang, so it is generous (`HANG`): a busy machine makes a test slower, never
failing.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import apsw

import proxy
from proxy.store import node as store_node

T = TypeVar("T")

HANG = 60.0  # seconds: the bound of a wait that only guards against a hang


# -- waiting --------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], timeout: float = HANG, *, message: str = "",
               cluster: proxy.Cluster | None = None, poll: float = 0.005) -> T:
    """Return the first true value of `predicate()`; fail after `timeout` seconds. With `cluster`,
    sleep on its replicator's progress between two checks (woken as soon as a follower moves)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s: {message or predicate}")
        if cluster is not None:
            cluster.wait_progress(poll)
        else:
            time.sleep(poll)


def in_background(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """Run `fn(*args, **kwargs)` in a daemon thread (one stuck by a failed test never holds the
    interpreter at exit); `.result(timeout)` returns its value or raises its exception."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the test through the future
            future.set_exception(exc)

    threading.Thread(target=run, name=f"test-{getattr(fn, '__name__', 'background')}", daemon=True).start()
    return future


class ManualClock:
    """A clock that only moves when the test moves it (`advance`, or `advance_on_read`: by that
    much at every reading, so every timeout runs out at its first re-check): inject it as
    `cluster.clock` (timeouts) or `cluster.wall_clock` (ages). `reads` counts the readings, so a
    test can wait until the code under test is measuring time (it is waiting) before moving it."""

    def __init__(self, start: float | None = None):
        self._now = time.monotonic() if start is None else start
        self._reads = 0
        self._changed = threading.Condition()
        self.advance_on_read = 0.0  # > 0: each reading moves the clock on by that much first

    def __call__(self) -> float:
        with self._changed:
            self._reads += 1
            self._now += self.advance_on_read
            self._changed.notify_all()
            return self._now

    @property
    def reads(self) -> int:
        with self._changed:
            return self._reads

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._now += seconds

    def wait_for_reads(self, count: int, timeout: float = HANG) -> None:
        """Wait until the clock has been read `count` times in all."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._reads >= count, timeout):
                raise AssertionError(f"the clock was read {self._reads} times, not {count}, "
                                     f"within {timeout:g}s")


# -- subprocesses ---------------------------------------------------------------------------------


def replproxy_command() -> list[str]:
    """The installed `replproxy` executable, else the CLI module run by this interpreter."""
    exe = shutil.which("replproxy")
    return [exe] if exe else [sys.executable, "-m", "proxy.tools.cli"]


def run_replproxy(*args: Any, check: bool = True, timeout: float = HANG,
                  **options: Any) -> subprocess.CompletedProcess[str]:
    """`replproxy ARGS` as a real subprocess; never a traceback; check=True: exit code 0."""
    done = subprocess.run([*replproxy_command(), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **options)
    assert "Traceback" not in done.stderr, done.stderr
    if check:
        assert done.returncode == 0, f"replproxy {' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done


def python_command(code: str, *args: Any) -> list[str]:
    """The command line running the snippet `code` (dedented) with this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def run_python(code: str, *args: Any, check: bool = True, timeout: float = HANG) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a subprocess; check=True: it must exit 0."""
    done = subprocess.run(python_command(code, *args), capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"subprocess failed:\n{done.stdout}\n{done.stderr}"
    return done


def spawn_python(code: str, *args: Any, **popen: Any) -> subprocess.Popen[str]:
    """Start a Python snippet in a subprocess, text mode, stdin and stdout as pipes (unless given)."""
    popen.setdefault("stdin", subprocess.PIPE)
    popen.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(python_command(code, *args), text=True, **popen)


# -- node files -----------------------------------------------------------------------------------


def node_state(path: str | Path) -> store_node.NodeState:
    """A node's own state (applied LSN, paused, error), read from its file with a read-only apsw
    connection (never Python's sqlite3 in the same process as apsw)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(10_000)
    try:
        return store_node.read_state(conn)
    finally:
        conn.close()


def applied(cluster: proxy.Cluster, node: str) -> int:
    """The LSN follower `node` has applied, read from its file at this moment."""
    return node_state(cluster.path_of(node)).applied_lsn


# -- crash tests (test_crash.py, test_crash_sync.py) ----------------------------------------------
# A workload of transactions numbered by `seq` in table t (payload "first/size/k/filler": the k-th
# row of a transaction of `size` rows starting at `first`) and a counter incremented once per row,
# so that a half-applied or twice-applied transaction shows.

CRASH_SEED = int(os.environ.get("REPLPROXY_CRASH_SEED", "20240611"))  # printed in every failure

APPLIER_SCRIPT = r'''
import sys
import time

import proxy

cluster = proxy.Cluster(sys.argv[1])  # starts the background replicator
sys.stdout.write("ready\n")
sys.stdout.flush()
time.sleep(600)  # until the test kills it; never outlives a test that lost track of it
'''


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
    return node_state(path).applied_lsn


def state_error(path: Path) -> str | None:
    return node_state(path).error


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
        state = store_node.read_state(conn)  # in the same read transaction as the data below
        lsn = state.applied_lsn
        assert state.error is None, f"{context}: {path.name} stopped: {state.error}"
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


# -- hypothesis -----------------------------------------------------------------------------------

CI_EXAMPLES = 100  # max_examples of the `ci` hypothesis profile (tests/conftest.py)


def examples(under_ci: int) -> int:
    """A test's max_examples: `under_ci` under the `ci` profile, scaled like the selected profile's
    max_examples (REPLPROXY_HYPOTHESIS=thorough: ten times as many)."""
    from hypothesis import settings

    return max(1, round(under_ci * settings.default.max_examples / CI_EXAMPLES))


def suppressed(*checks: Any) -> list[Any]:
    """The health checks the selected profile suppresses, and `checks` (a test's own
    suppress_health_check replaces the profile's list instead of adding to it)."""
    from hypothesis import settings

    return [*settings.default.suppress_health_check, *checks]
