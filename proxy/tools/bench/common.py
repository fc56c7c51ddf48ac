"""What every `replproxy bench` section shares: the table and rows, timing plain apsw, samples, verdicts."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apsw

SCHEMA = "CREATE TABLE bench(id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL, note TEXT)"
INSERT = "INSERT INTO bench(name, value, note) VALUES (?, ?, ?)"
ROWS_PER_TXN = 10
FOLLOWERS = 2
REPETITIONS = 7  # at most, per synchronous level
MIN_REPETITIONS = 3
# Stop repeating a level (after MIN_REPETITIONS) once this is spent: keeps the default run under
# about 90 s on two vCPUs; slow disks get fewer repetitions.
LEVEL_BUDGET_SECONDS = 36.0
WARMUP_OPS = 50  # per measurement, before the clock starts
WARMUP_ROUND = 100  # transactions per measurement in the discarded warm-up round
CATCHUP_TIMEOUT = 300.0


def bench_rows(count: int, offset: int = 0) -> list[tuple[str, int, str]]:
    """The same rows for plain apsw and the proxy: a short text, an integer and a 32-byte text."""
    note = "note " + "x" * 27
    return [(f"name-{i}", i * 7919 % 1_000_003, note) for i in range(offset, offset + count)]


# -- the machine ----------------------------------------------------------------------------------


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median, as a rough noise figure."""
        if len(self.values) < 2 or not self.median:
            return 0.0
        return (max(self.values) - min(self.values)) / self.median


def fresh_plain(path: Path, synchronous: str) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(SCHEMA)
    return conn


def settle() -> None:
    """Flush dirty pages left by earlier measurements, so that their write-back does not land in
    this one's timing (every measurement, plain or proxy, gets the same treatment)."""
    if hasattr(os, "sync"):
        os.sync()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def timed_plain(path: Path, synchronous: str, run: Callable[[apsw.Connection, list], None],
                 warm: list, measured: list, setup: Callable[[apsw.Connection], None] | None = None
                 ) -> float:
    """µs per item of `run(conn, measured)` on a fresh plain database, after `run(conn, warm)`."""
    conn = fresh_plain(path, synchronous)
    try:
        if setup is not None:
            setup(conn)
        run(conn, warm)
        settle()
        start = time.perf_counter()
        run(conn, measured)
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return elapsed / len(measured) * 1e6


def insert_each(conn: apsw.Connection, rows: list[tuple]) -> None:
    execute = conn.execute
    for params in rows:
        execute(INSERT, params)


def insert_batches(conn: apsw.Connection, groups: list[list[tuple]]) -> None:
    execute = conn.execute
    for group in groups:
        execute("BEGIN")
        for params in group:
            execute(INSERT, params)
        execute("COMMIT")


def plain_single(path: Path, synchronous: str, rows: list[tuple], warm: list[tuple]) -> float:
    return timed_plain(path, synchronous, insert_each, warm, rows)


def plain_multi(path: Path, synchronous: str, batches: list[list[tuple]], warm: list[list[tuple]]) -> float:
    return timed_plain(path, synchronous, insert_batches, warm, batches)


def ratios(numerator: Samples, denominator: Samples) -> Samples:
    """The per-repetition ratios: both sides of a pair ran seconds apart, so a disk that slows down
    for a while moves both and the ratio stays honest."""
    return Samples([a / b for a, b in zip(numerator.values, denominator.values, strict=False) if b])


def paired_ratio(numerator: Samples, denominator: Samples) -> float:
    """Median of the per-repetition ratios."""
    return ratios(numerator, denominator).median


def verdict(ratio: float, target: float, at_least: bool) -> str:
    ok = ratio >= target if at_least else ratio <= target
    return "PASS" if ok else "MISS"
