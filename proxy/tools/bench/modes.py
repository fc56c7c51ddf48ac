"""Replication modes in `replproxy bench`: the per-commit cost of sync and semi-sync against async
(ratios from one run, interleaved), and the catch-up rate of a follower added from a snapshot."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ...cluster import Cluster
from ...driver import connect

MODES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("async", {}), ("sync", {"sync_followers": ["node2"]}), ("semi-sync", {"semi_sync_k": 1}))
REPETITIONS = 3
WARMUP = 30


def _commit_costs(base: Path, commits: int, repetitions: int) -> dict[str, list[float]]:
    """µs per single-row autocommit INSERT in each mode, modes interleaved in every repetition."""
    cluster = Cluster.init(base / "modes", followers=2)
    times: dict[str, list[float]] = {name: [] for name, _ in MODES}
    try:
        conn = connect(base / "modes", cluster=cluster, autocommit=True)
        conn.execute("CREATE TABLE bench(id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER)")
        execute = conn.cursor().execute
        row = 0
        for _ in range(repetitions):
            for name, settings in MODES:
                cluster.configure(mode=name, sync_timeout=30, **settings)
                for _ in range(WARMUP):  # appliers reopened with the mode's synchronous level
                    row += 1
                    execute("INSERT INTO bench(name, value) VALUES (?, ?)", (f"n{row}", row))
                cluster.wait_for_catchup(60)
                start = time.perf_counter()
                for _ in range(commits):
                    row += 1
                    execute("INSERT INTO bench(name, value) VALUES (?, ?)", (f"n{row}", row))
                times[name].append((time.perf_counter() - start) / commits * 1e6)
                cluster.wait_for_catchup(60)
        conn.close()
    finally:
        cluster.close()
    return times


def _catch_up_rate(base: Path, entries: int) -> tuple[float, float, int]:
    """(entries per second a new follower applies catching up, snapshot seconds, snapshot LSN)."""
    cluster = Cluster.init(base / "catchup", followers=1, replicate=False)
    try:
        conn = connect(base / "catchup", cluster=cluster, autocommit=True)
        conn.execute("CREATE TABLE bench(id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER)")
        conn.executemany("INSERT INTO bench(name, value) VALUES (?, ?)",
                         [(f"seed{i}", i) for i in range(10_000)])
        start = time.perf_counter()
        lsn = cluster.add_follower("fresh")
        snapshot_s = time.perf_counter() - start
        for i in range(entries):  # written after the snapshot: the backlog it catches up on
            conn.execute("INSERT INTO bench(name, value) VALUES (?, ?)", (f"n{i}", i))
        conn.close()
        source = cluster.log_source()
        applier = cluster.applier("fresh", source)
        target = cluster.leader_lsn()
        start = time.perf_counter()
        if applier.catch_up(target) < target:
            raise RuntimeError(f"follower fresh stopped at LSN {applier.applied_lsn}")
        elapsed = time.perf_counter() - start
        applier.close()
        source.close()
        return entries / elapsed, snapshot_s, lsn
    finally:
        cluster.close()


def report(workdir: Path | None, transactions: int = 2000, repetitions: int = REPETITIONS) -> list[str]:
    """Lines for the bench report."""
    commits = max(100, min(transactions, 500))
    entries = max(1000, transactions * 2)
    with tempfile.TemporaryDirectory(prefix="replproxy-bench-modes-", dir=workdir) as tmp:
        times = _commit_costs(Path(tmp), commits, repetitions)
        rate, snapshot_s, lsn = _catch_up_rate(Path(tmp), entries)
    base = times["async"]
    lines = [
        "",
        f"replication modes: single-row autocommit INSERT, leader synchronous=full, 2 followers; "
        f"{commits} commits per mode, modes interleaved, median of {repetitions}",
        "  (sync waits for node2 to apply each commit; semi-sync for any 1 follower; acknowledging "
        "followers apply with synchronous=full)",
        f"{'mode':>10} {'µs/commit':>10} {'vs async':>9}",
    ]
    for name, _ in MODES:
        ratios = [t / b for t, b in zip(times[name], base, strict=True)]
        lines.append(f"{name:>10} {statistics.median(times[name]):10.1f} {statistics.median(ratios):8.2f}x")
    lines.append(f"new follower: snapshot of a 10,000-row leader (backup API) in {snapshot_s * 1000:.0f} ms "
                 f"at LSN {lsn}; catch-up of {entries} entries at {rate:,.0f} entries/s")
    return lines
