"""The read side of `replproxy bench`: a primary-key point SELECT and a 100-row range SELECT routed to
a follower by the proxy (consistency="session"), against the same queries with Python's sqlite3
module on that follower's file, in one run, interleaved, paired per repetition; bare apsw on the same
file beside them, since sqlite3 and apsw differ in their own cost per row."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from ...cluster import Cluster
from ...driver import connect
from . import targets
from .common import INSERT, SCHEMA, Samples, bench_rows, ratios, verdict
from .targets import Outcome, bound_text

ROWS = 10_000
POINT = "SELECT name, value FROM bench WHERE id = ?"
RANGE = "SELECT id, name, value, note FROM bench WHERE id BETWEEN ? AND ?"
RANGE_ROWS = 100
REPETITIONS = 5
OPERATIONS = 20_000  # point reads per repetition; a tenth as many range reads
WARMUP = 200
SLICES = 12  # per repetition and side, taking turns

POINT_LABEL = "reads   point SELECT by primary key, proxy / sqlite3"
RANGE_LABEL = f"reads   {RANGE_ROWS}-row range SELECT, proxy / sqlite3"


def _interleaved(sides: list[Callable[[int, int], None]], operations: int) -> list[float]:
    """µs per operation of each side over `operations`, run in slices taking turns: a burst of load
    from elsewhere on the machine then lands on every side alike."""
    size = max(1, operations // SLICES)
    spent = [0.0] * len(sides)
    for index in range(SLICES):
        turn = index % len(sides)
        for side in [*range(turn, len(sides)), *range(turn)]:
            start = time.perf_counter()
            sides[side](index * size, size)
            spent[side] += time.perf_counter() - start
    return [seconds / (size * SLICES) * 1e6 for seconds in spent]


def _readers(execute: Callable) -> tuple[Callable[[int, int], None], Callable[[int, int], None]]:
    """The point and range loops over one `execute` (a proxy cursor's or sqlite3's): `count` reads
    from the `first`th, cycling over the table."""

    def point(first: int, count: int) -> None:
        for i in range(first, first + count):
            execute(POINT, (i % ROWS + 1,)).fetchone()

    def ranged(first: int, count: int) -> None:
        span = ROWS - RANGE_ROWS + 1
        for i in range(first, first + count):
            low = i * 37 % span + 1
            if len(execute(RANGE, (low, low + RANGE_ROWS - 1)).fetchall()) != RANGE_ROWS:
                raise RuntimeError(f"range read from {low} did not return {RANGE_ROWS} rows")

    return point, ranged


def measure(base: Path, operations: int, repetitions: int) -> tuple[dict[str, list[Samples]], str]:
    """Per query ("point", "range"): [sqlite3 µs, proxy µs, bare apsw µs] per repetition; and the
    node that served."""
    cluster = Cluster.init(base / "reads", followers=2)
    plain_db = bare_db = None
    try:
        conn = connect(base / "reads", cluster=cluster, consistency="session")
        conn.execute(SCHEMA)
        conn.executemany(INSERT, bench_rows(ROWS))
        conn.commit()
        cluster.wait_for_catchup(60)
        cursor = conn.cursor()
        proxy_point, proxy_range = _readers(cursor.execute)
        nodes = set()
        for proxied in (proxy_point, proxy_range):
            proxied(0, WARMUP)
            nodes.add(cursor.node)
        node = nodes.pop()
        if nodes or node is None or node == cluster.leader:
            raise RuntimeError(f"the reads were served by {node, *nodes}, not by one follower")
        plain_db = sqlite3.connect(str(cluster.path_of(node)))
        plain_point, plain_range = _readers(plain_db.cursor().execute)
        # bare apsw on the same file: not a target, it shows how much of the gap is the library
        bare_db = apsw.Connection(str(cluster.path_of(node)), flags=apsw.SQLITE_OPEN_READONLY)
        bare_point, bare_range = _readers(bare_db.execute)
        counts = {"point": operations, "range": max(1, operations // 10)}
        runs = {"point": [plain_point, proxy_point, bare_point], "range": [plain_range, proxy_range, bare_range]}
        for run in (plain_point, plain_range, bare_point, bare_range):
            run(0, WARMUP)
        times = {key: [Samples(), Samples(), Samples()] for key in runs}
        # Nothing writes while this runs: the sqlite3 module and apsw are two SQLite libraries in
        # one process, which do not see each other's locks, so they must only read side by side.
        for _ in range(repetitions):
            for key, sides in runs.items():
                for samples, us in zip(times[key], _interleaved(sides, counts[key]), strict=True):
                    samples.add(us)
        conn.close()
        return times, node
    finally:
        for db in (plain_db, bare_db):
            if db is not None:
                db.close()
        cluster.close()


def missing() -> list[Outcome]:
    return [targets.missing(POINT_LABEL, targets.POINT_READ), targets.missing(RANGE_LABEL, targets.RANGE_READ)]


def report(workdir: Path | None, operations: int = OPERATIONS,
           repetitions: int = REPETITIONS) -> tuple[list[str], list[Outcome]]:
    """Lines for the bench report, and the two read targets."""
    with tempfile.TemporaryDirectory(prefix="replproxy-bench-reads-", dir=workdir) as tmp:
        times, node = measure(Path(tmp), operations, repetitions)
    lines = [
        "",
        f"reads: {ROWS:,}-row bench table; proxy (consistency=\"session\") routed to follower {node}, sqlite3 "
        f"on that follower's file;\n  {operations} point / {max(1, operations // 10)} range reads per side "
        f"per repetition, in {SLICES} slices taking turns; {repetitions} repetitions, median;\n  ratio: median "
        "of the per-repetition ratios, noise: their (max - min) / median; bare apsw (read-only, same file):\n"
        "  not a target, it shows the share of the gap that is the library rather than the proxy",
        f"{'query':40} {'sqlite3 µs/query':>16} {'proxy µs/query':>14} {'ratio':>7} {'target':>7} "
        f"{'result':>6} {'noise':>6} {'bare apsw µs/query':>18}",
    ]
    outcomes = []
    for key, label, name, bound in (
        ("point", POINT_LABEL, "primary-key point SELECT (fetchone)", targets.POINT_READ),
        ("range", RANGE_LABEL, f"{RANGE_ROWS}-row range SELECT (fetchall)", targets.RANGE_READ),
    ):
        plain, proxied, bare = times[key]
        pairs = ratios(proxied, plain)
        outcomes.append(Outcome(label, pairs, bound))
        lines.append(f"{name:40} {plain.median:16.2f} {proxied.median:14.2f} {pairs.median:6.2f}x "
                     f"{bound_text(bound):>7} {verdict(pairs.median, bound, False):>6} {pairs.spread:5.0%} "
                     f"{bare.median:18.2f}")
    lines.append(f"  point: {POINT}; range: {RANGE}")
    return lines, outcomes
