"""The read side of `replproxy bench`: a primary-key point SELECT routed to a follower by the proxy,
against the same query with Python's sqlite3 module on the same follower file, in one run."""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ...cluster import Cluster
from ...driver import connect

ROWS = 10_000
QUERY = "SELECT name, value FROM bench WHERE id = ?"
TARGET = 2.0


def _timed(run: Callable[[int], None], operations: int) -> float:
    """µs per operation of `run(operations)`."""
    start = time.perf_counter()
    run(operations)
    return (time.perf_counter() - start) / operations * 1e6


def measure(base: Path, operations: int, repetitions: int = 5) -> tuple[float, float, str]:
    """Median µs per point SELECT for sqlite3 and for the proxy, and the node that served it."""
    cluster = Cluster.init(base / "reads", followers=2)
    try:
        conn = connect(base / "reads", cluster=cluster)
        conn.execute("CREATE TABLE bench(id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER)")
        conn.executemany("INSERT INTO bench(name, value) VALUES (?, ?)",
                         [(f"name-{i}", i * 7919 % 1_000_003) for i in range(ROWS)])
        conn.commit()
        cluster.wait_for_catchup(60)
        cursor = conn.cursor()

        def proxied(count: int) -> None:
            execute = cursor.execute
            for i in range(count):
                execute(QUERY, (i % ROWS + 1,)).fetchone()

        proxied(200)
        node = cursor.node or "?"
        plain_db = sqlite3.connect(str(cluster.path_of(node)) if node != "?" else ":memory:")
        plain_cursor = plain_db.cursor()

        def plain(count: int) -> None:
            execute = plain_cursor.execute
            for i in range(count):
                execute(QUERY, (i % ROWS + 1,)).fetchone()

        plain(200)
        plain_times, proxy_times = [], []
        # Nothing writes while this runs: the sqlite3 module and apsw are two SQLite libraries in
        # one process, which do not see each other's locks, so they must only read side by side.
        for _ in range(repetitions):
            plain_times.append(_timed(plain, operations))
            proxy_times.append(_timed(proxied, operations))
        conn.close()
        cluster.close()
        plain_db.close()
        return statistics.median(plain_times), statistics.median(proxy_times), node
    finally:
        cluster.close()


def report(workdir: Path | None, operations: int = 20_000) -> list[str]:
    """Lines for the bench report."""
    with tempfile.TemporaryDirectory(prefix="replproxy-bench-reads-", dir=workdir) as tmp:
        plain_us, proxy_us, node = measure(Path(tmp), operations)
    ratio = proxy_us / plain_us
    verdict = "PASS" if ratio <= TARGET else "MISS"
    return [
        "",
        f"reads: primary-key point SELECT, {operations} per repetition, median of 5; proxy routed to "
        f"follower {node}, sqlite3 on that follower's file",
        f"{'sqlite3 µs/query':>18} {'proxy µs/query':>16} {'ratio':>7} {'target':>8} result",
        f"{plain_us:18.2f} {proxy_us:16.2f} {ratio:6.2f}x {'<=' + str(TARGET) + 'x':>8} {verdict}",
    ]
