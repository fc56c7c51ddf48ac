"""The trigger format's part of `replproxy bench --format trigger`: where a single-row commit's time
goes (capture, log append, the proxy layer), against plain apsw in the same run; and the log bytes
per transaction of every registered format (printed by every `replproxy bench`).

Measured per single-row autocommit INSERT, in fresh files, interleaved and repeated like the main
table (medians; ratios are medians of per-repetition ratios):

- plain apsw: `conn.execute(INSERT)` in autocommit;
- capture only: bare apsw on a file holding the capture tables and triggers: `BEGIN IMMEDIATE`,
  `format.capture(conn)`, the INSERT (its trigger writes the image), `capture.finish()` (reads and
  deletes the capture row, builds the payload), `COMMIT` — no log entry;
- capture + log append: the same plus `storage.append` of the payload before COMMIT: what the
  proxy's SQLite does, without the proxy's Python;
- proxy: `proxy.connect(..., autocommit=True)` on a trigger-format cluster (leader + 2 followers),
  replicator stopped, then running.

The row format's capture-only and capture + append lines are measured the same way for comparison.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import apsw

import logformats

from ...cluster import Cluster
from ...driver import connect
from ...store import log as entries_log
from ...store import node as store
from . import targets
from .common import (
    FOLLOWERS,
    INSERT,
    MIN_REPETITIONS,
    ROWS_PER_TXN,
    SCHEMA,
    WARMUP_OPS,
    Samples,
    bench_rows,
    paired_ratio,
    plain_single,
    ratios,
    settle,
    timed_plain,
    verdict,
)
from .targets import bound_text

LEVEL_BUDGET_SECONDS = 20.0


def _bare(path: Path, synchronous: str, fmt_name: str, rows: list[tuple], warm: list[tuple],
          append: bool) -> float:
    """µs per commit of the format's capture on bare apsw, with or without the log append."""
    fmt = logformats.get(fmt_name)

    def setup(conn: apsw.Connection) -> None:
        store.install(conn, node_name="bench", cluster_id="bench")
        fmt.install(conn)

    def run(conn: apsw.Connection, batch: list[tuple]) -> None:
        execute = conn.execute
        for params in batch:
            execute("BEGIN IMMEDIATE")
            capture = fmt.capture(conn)
            execute(INSERT, params)
            payload = capture.finish()
            capture.close()
            if append and payload is not None:
                entries_log.append(conn, epoch=1, format=fmt_name, payload=payload)
            execute("COMMIT")

    return timed_plain(path, synchronous, run, warm, rows, setup)


def _proxy(directory: Path, synchronous: str, fmt_name: str, rows: list[tuple], warm: list[tuple],
           replicate: bool) -> float:
    cluster = Cluster.init(directory, followers=FOLLOWERS, format=fmt_name, synchronous=synchronous,
                           replicate=replicate)
    try:
        conn = connect(directory, cluster=cluster, autocommit=True)
        try:
            cursor = conn.cursor()
            cursor.execute(SCHEMA)
            execute = cursor.execute
            for params in warm:
                execute(INSERT, params)
            if replicate:
                cluster.wait_for_catchup(timeout=300)
            settle()
            start = time.perf_counter()
            for params in rows:
                execute(INSERT, params)
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        if replicate:
            cluster.wait_for_catchup(timeout=300)
        return elapsed / len(rows) * 1e6
    finally:
        cluster.close()


_LINES = (
    ("plain", "plain apsw, autocommit INSERT"),
    ("trigger_capture", "trigger: capture only (bare apsw, no log)"),
    ("trigger_append", "trigger: capture + log append (bare apsw)"),
    ("trigger_proxy_norepl", "trigger: proxy, replicator stopped"),
    ("trigger_proxy", "trigger: proxy, replicator running"),
    ("row_capture", "row: capture only (bare apsw, no log)"),
    ("row_append", "row: capture + log append (bare apsw)"),
)


def _round(base: Path, synchronous: str, transactions: int, samples: dict[str, Samples] | None,
           tag: str) -> None:
    rows, warm = bench_rows(transactions, WARMUP_OPS), bench_rows(WARMUP_OPS)
    measures: dict[str, Callable[[Path], float]] = {
        "plain": lambda p: plain_single(p / "plain.db", synchronous, rows, warm),
        "trigger_capture": lambda p: _bare(p / "t.db", synchronous, "trigger", rows, warm, False),
        "trigger_append": lambda p: _bare(p / "t.db", synchronous, "trigger", rows, warm, True),
        "trigger_proxy_norepl": lambda p: _proxy(p / "c", synchronous, "trigger", rows, warm, False),
        "trigger_proxy": lambda p: _proxy(p / "c", synchronous, "trigger", rows, warm, True),
        "row_capture": lambda p: _bare(p / "r.db", synchronous, "row", rows, warm, False),
        "row_append": lambda p: _bare(p / "r.db", synchronous, "row", rows, warm, True),
    }
    for key, measure in measures.items():
        path = base / f"trigger-{tag}-{synchronous}-{key}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        try:
            value = measure(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        if samples is not None:
            samples[key].add(value)


def report(base: Path, transactions: int, sync_levels: tuple[str, ...], repetitions: int = 5) -> list[str]:
    """The trigger format's breakdown table, as lines."""
    lines = ["", "trigger format: where a single-row commit goes (µs per commit, same run, same pragmas)"]
    header = f"{'sync':7} {'measurement':44} {'µs/commit':>10} {'vs plain':>9} {'target':>7} {'result':>6} {'noise':>6}"
    lines += [header, "-" * len(header)]
    for level in sync_levels:
        samples = {key: Samples() for key, _ in _LINES}
        _round(base, level, min(100, transactions), None, "warmup")
        started = time.perf_counter()
        done = 0
        for rep in range(repetitions):
            spent = time.perf_counter() - started
            if rep >= MIN_REPETITIONS and spent + spent / rep > LEVEL_BUDGET_SECONDS:
                break
            _round(base, level, transactions, samples, f"rep{rep}")
            done += 1
        plain = samples["plain"]
        for key, name in _LINES:
            ratio = paired_ratio(samples[key], plain)
            target = result = ""
            bound = targets.SINGLE.get((level, "trigger"))
            if key == "trigger_proxy" and bound is not None:
                target, result = bound_text(bound), verdict(ratio, bound, at_least=False)
            noise = ratios(samples[key], plain).spread
            lines.append(f"{level:7} {name:44} {samples[key].median:10.1f} {ratio:8.2f}x {target:>7} "
                         f"{result:>6} {noise:5.0%}")
        med = {key: samples[key].median for key, _ in _LINES}
        lines.append(
            f"{level:7}   trigger capture overhead {med['trigger_capture'] - med['plain']:.1f} µs, log append "
            f"{med['trigger_append'] - med['trigger_capture']:.1f} µs, proxy layer "
            f"{med['trigger_proxy_norepl'] - med['trigger_append']:.1f} µs, in-process replicator "
            f"{med['trigger_proxy'] - med['trigger_proxy_norepl']:.1f} µs ({done} repetitions)")
        lines.append(
            f"{level:7}   row capture overhead {med['row_capture'] - med['plain']:.1f} µs, log append "
            f"{med['row_append'] - med['row_capture']:.1f} µs")
        lines.append("")
    lines.append("overheads are differences of medians: capture = capture only - plain, log append = "
                 "capture + append - capture only,\nproxy layer = proxy (replicator stopped) - capture + "
                 "append; the target applies to the proxy with its replicator running.")
    return lines


# -- log bytes per transaction --------------------------------------------------------------------

_BYTES_WORKLOAD: tuple[tuple[str, Callable[[int], list[tuple[str, tuple]]]], ...] = (
    ("single-row INSERT", lambda i: [(INSERT, bench_rows(1, 10_000 + i)[0])]),
    (f"{ROWS_PER_TXN}-row INSERT transaction",
     lambda i: [(INSERT, row) for row in bench_rows(ROWS_PER_TXN, 20_000 + i * ROWS_PER_TXN)]),
    ("UPDATE of one column, one row", lambda i: [("UPDATE bench SET value = value + 1 WHERE id = ?", (i + 1,))]),
    ("DELETE of one row", lambda i: [("DELETE FROM bench WHERE id = ?", (i + 1,))]),
)


def log_bytes(base: Path, transactions: int = 50) -> list[str]:
    """Average payload bytes per log entry of every registered format, for a few transaction kinds."""
    formats = logformats.names()
    results: dict[str, dict[str, str]] = {}
    for fmt_name in formats:
        directory = base / f"bytes-{fmt_name}"
        shutil.rmtree(directory, ignore_errors=True)
        column: dict[str, str] = {}
        results[fmt_name] = column
        try:
            cluster = Cluster.init(directory, followers=0, format=fmt_name, synchronous="off",
                                   replicate=False)
        except Exception as exc:  # a format that cannot run here: say so, keep the others
            column.update({name: f"({type(exc).__name__})" for name, _ in _BYTES_WORKLOAD})
            continue
        try:
            conn = connect(directory, cluster=cluster)
            conn.execute(SCHEMA)
            conn.executemany(INSERT, bench_rows(transactions))
            conn.commit()
            for name, statements in _BYTES_WORKLOAD:
                before = cluster.leader_lsn()
                try:
                    for i in range(transactions):
                        for sql, params in statements(i):
                            conn.execute(sql, params)
                        conn.commit()
                except Exception as exc:
                    conn.rollback()
                    column[name] = f"({type(exc).__name__})"
                    continue
                sizes = [len(e.payload) for e in cluster.entries(before + 1)]
                column[name] = f"{statistics.mean(sizes):.0f}" if sizes else "-"
            conn.close()
        finally:
            cluster.close()
            shutil.rmtree(directory, ignore_errors=True)
    width = max(10, *(len(f) + 2 for f in formats))
    lines = ["", f"log bytes per transaction (payload bytes per entry, mean of {transactions} transactions)",
             f"{'transaction':36}" + "".join(f"{name:>{width}}" for name in formats)]
    lines.append("-" * len(lines[-1]))
    for name, _ in _BYTES_WORKLOAD:
        lines.append(f"{name:36}" + "".join(f"{results[f][name]:>{width}}" for f in formats))
    return lines
