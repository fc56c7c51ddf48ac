"""`replproxy bench --breakdown`: where the time of one single-row autocommit INSERT goes, per log
format, against plain apsw in the same run (docs/performance.md, "Where a commit's time goes").

Three runs of the same commits on a cluster with one follower replicating as in real use:
- plain: the time per commit, and plain apsw's for the same rows;
- SQLite: each statement's own time on the leader connection (sqlite3_trace_v2's profile event,
  nanoseconds measured by SQLite), grouped by statement;
- Python: cProfile's own time per function, grouped by the part of replproxy it belongs to. The
  profiler slows Python down, so the parts are given as shares of what is not SQLite's time.
"""

from __future__ import annotations

import cProfile
import pstats
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import apsw

from ...cluster import Cluster
from ...driver import connect
from .common import INSERT, SCHEMA, bench_rows, plain_single, remove_tree, settle

FORMATS = ("row", "statement", "trigger", "mixed")
TRACED_COMMITS = 10_000

# Where a Python function belongs, by the file it is defined in (first match).
PARTS = (
    ("analysis (driver/analyze.py)", "proxy/driver/analyze.py"),
    ("capture (logformats)", "logformats/"),
    ("outside-writer guard (cluster/watch.py)", "proxy/cluster/watch.py"),
    ("commit and log append (driver/leader.py, store/log.py)", "proxy/driver/leader.py|proxy/store/log.py"),
    ("cursor and transaction (driver/cursor.py, connection.py, local.py)",
     "proxy/driver/cursor.py|proxy/driver/connection.py|proxy/driver/local.py|proxy/driver/surface.py"),
    ("replication mode and wake-up (cluster/)", "proxy/cluster/"),
    ("the rest of replproxy", "proxy/"),
)


def _statement_kind(sql: str) -> str:
    words = " ".join(sql.split())
    if words.startswith("INSERT INTO _replproxy_log"):
        return "INSERT INTO _replproxy_log (the log entry)"
    if words.startswith("INSERT INTO bench"):
        return "INSERT INTO bench (the user's statement)"
    if "schema_version" in words or "pragma_" in words or words.startswith("PRAGMA"):
        return "PRAGMA reads (schema versions, data_version, header)"
    if words.startswith(("SAVEPOINT", "RELEASE")):
        return "SAVEPOINT/RELEASE"
    return re.sub(r"\s.*", "", words)  # BEGIN, COMMIT, ...


def _part(filename: str) -> str:
    path = filename.replace("\\", "/")
    for name, pattern in PARTS:
        if re.search(pattern, path):
            return name
    if path.startswith("~") or "<built-in" in path or "{" in path:
        return "apsw and builtins (outside SQLite's own time)"
    return "Python library"


def _cluster(base: Path, fmt: str, synchronous: str, warm: list[tuple]) -> tuple[Cluster, Any]:
    cluster = Cluster.init(base / fmt, followers=1, format=fmt, synchronous=synchronous)
    conn = connect(cluster.directory, cluster=cluster, autocommit=True)
    conn.execute(SCHEMA)
    for row in warm:
        conn.execute(INSERT, row)
    cluster.wait_for_catchup(300.0)
    return cluster, conn


def _per_commit(conn: Any, rows: list[tuple]) -> float:
    start = time.perf_counter()
    for row in rows:
        conn.execute(INSERT, row)
    return (time.perf_counter() - start) / len(rows) * 1e6


def measure(base: Path, fmt: str, synchronous: str, commits: int) -> dict[str, Any]:
    warm = bench_rows(200, offset=10_000_000)
    rows = bench_rows(commits)
    settle()
    plain = plain_single(base / f"plain-{fmt}.db", synchronous, rows, warm)
    cluster, conn = _cluster(base, fmt, synchronous, warm)
    try:
        settle()
        total = _per_commit(conn, bench_rows(commits, offset=1_000_000))
        sqlite_ns: dict[str, int] = defaultdict(int)

        def profile(event: dict) -> None:
            if event["code"] == apsw.SQLITE_TRACE_PROFILE and not event.get("trigger"):
                sqlite_ns[_statement_kind(event["sql"])] += event["nanoseconds"]

        leader = conn._leader  # the session's own leader connection
        leader.trace_v2(apsw.SQLITE_TRACE_PROFILE, profile, id="breakdown")
        # SQLite's clock for this event ticks in milliseconds: many commits make the average fine.
        traced = bench_rows(max(commits, TRACED_COMMITS), offset=2_000_000)
        _per_commit(conn, traced)
        leader.trace_v2(0, None, id="breakdown")
        sqlite_us = {kind: ns / 1000 / len(traced) for kind, ns in sqlite_ns.items()}
        profiler = cProfile.Profile()
        profiled = bench_rows(commits, offset=3_000_000)
        profiler.enable()
        _per_commit(conn, profiled)
        profiler.disable()
        parts: dict[str, float] = defaultdict(float)
        for (filename, _line, _name), (_cc, _nc, own, _cum, _callers) in pstats.Stats(profiler).stats.items():
            parts[_part(filename)] += own
        outside = sum(v for k, v in parts.items() if k.startswith("apsw"))
        python = sum(parts.values()) - outside
    finally:
        conn.close()
        cluster.close()
    in_sqlite = sum(sqlite_us.values())
    rest = max(0.0, total - in_sqlite)
    shares = {k: v / python for k, v in parts.items() if not k.startswith("apsw") and python}
    return {"format": fmt, "plain_us": plain, "total_us": total, "sqlite_us": sqlite_us, "rest_us": rest,
            "python_shares": shares}


def report(workdir: Path | None, synchronous: str = "normal", commits: int = 2000,
           formats: tuple[str, ...] = FORMATS) -> list[str]:
    base = Path(tempfile.mkdtemp(prefix="replproxy-breakdown-", dir=workdir))
    lines = [f"Where one single-row autocommit INSERT's time goes (synchronous={synchronous}, one follower "
             f"replicating, {commits} commits per run; SQLite's own time per statement from sqlite3_trace_v2 "
             f"over {max(commits, TRACED_COMMITS):,} commits (its clock ticks in ms: about ±1 µs), the rest split "
             "by cProfile):"]
    try:
        for fmt in formats:
            result = measure(base, fmt, synchronous, commits)
            total, plain = result["total_us"], result["plain_us"]
            lines.append(f"  {fmt}: {total:.1f} µs per commit = {total / plain:.1f}x plain apsw ({plain:.1f} µs)")
            for kind, us in sorted(result["sqlite_us"].items(), key=lambda kv: -kv[1]):
                if us >= 0.05:
                    lines.append(f"    SQLite  {us:6.1f} µs  {kind}")
            lines.append(f"    Python  {result['rest_us']:6.1f} µs  everything else, of which:")
            for part, share in sorted(result["python_shares"].items(), key=lambda kv: -kv[1]):
                if share >= 0.02:
                    lines.append(f"            {share * result['rest_us']:6.1f} µs  {part} ({share:.0%})")
    finally:
        remove_tree(base)
    return lines
