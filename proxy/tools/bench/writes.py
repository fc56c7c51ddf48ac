"""`replproxy bench`: the leader's cost against plain apsw, and the follower apply rate.

Every figure comes from one run on one machine: plain apsw is measured in the same run, with the
same pragmas (journal_mode=WAL, the same PRAGMA synchronous), the same table and the same rows, in
a fresh database file for every measurement, in a directory on the same disk (default: a temporary
directory under the current directory, or under the system temporary directory when the current one
is in memory; `--dir` to choose). Each measurement is repeated, interleaved (plain, proxy, proxy,
...), and medians are reported; a ratio is the median of the per-repetition ratios. A discarded
warm-up round runs first, every measurement warms its own statement caches and flushes the page
cache's dirty pages (os.sync) before its clock starts, and a 4 KiB write + fsync probe per
repetition shows how fast the disk was at the time.

Measurements, for each synchronous level:

1. single-row autocommit INSERTs: plain `conn.execute(INSERT, params)` in autocommit against
   `proxy.connect(dir, cluster=..., autocommit=True)` + `cursor.execute`, with the cluster's
   background replicator running (leader + 2 followers, as `replproxy init` creates), and again
   with the replicator stopped (`Cluster(dir, replicate=False)`) to show the background thread's
   share;
2. 10-row transactions: BEGIN, 10 INSERTs, COMMIT against 10 `cursor.execute` + `commit()`;
3. follower apply rate: the entries written by (1) with replication off are applied by one
   follower from LSN 0 with `Applier.catch_up`; compared with the leader's
   commit rate from (1) with the replicator stopped (the leader's own speed).

It is a report, not a test: the exit code is 0 even when a target is missed.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from ...cluster import Cluster
from ...driver import connect
from ...store.source import LeaderFileSource
from .common import (
    CATCHUP_TIMEOUT,
    FOLLOWERS,
    INSERT,
    LEVEL_BUDGET_SECONDS,
    MIN_REPETITIONS,
    REPETITIONS,
    ROWS_PER_TXN,
    SCHEMA,
    TARGET_APPLY,
    TARGET_MULTI,
    TARGET_SINGLE,
    TARGET_SINGLE_BY_FORMAT,
    WARMUP_OPS,
    WARMUP_ROUND,
    Samples,
    bench_rows,
    paired_ratio,
    plain_multi,
    plain_single,
    remove_tree,
    settle,
    verdict,
)

_MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(device, mount point, filesystem type) holding `path`, from /proc/mounts."""
    real = os.path.realpath(path)
    best = ("?", "/", "unknown")
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                device, mount, fstype = parts[0], parts[1].replace("\\040", " "), parts[2]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[1]):
                    best = (device, mount, fstype)
    except OSError:
        pass
    return best


def _disk_description(path: Path) -> str:
    device, mount, fstype = _mount_of(path)
    text = f"{device} on {mount} ({fstype})"
    name = os.path.basename(os.path.realpath(device)) if device.startswith("/dev/") else ""
    if name:
        base = name
        while base and not os.path.exists(f"/sys/block/{base}") and base[-1].isdigit():
            base = base[:-1]
        if base.endswith("p") and not os.path.exists(f"/sys/block/{base}"):
            base = base[:-1]  # nvme0n1p1 -> nvme0n1
        try:
            rotational = Path(f"/sys/block/{base}/queue/rotational").read_text().strip()
            text += f", /sys/block/{base}/queue/rotational={rotational}"
        except OSError:
            pass
    return text


def _choose_base(workdir: str | None) -> Path:
    """Where to create the benchmark's own temporary directory: --dir, else the current directory,
    else the system temporary directory, whichever is on a real disk (tmpfs would hide fsync)."""
    if workdir is not None:
        base = Path(workdir)
        base.mkdir(parents=True, exist_ok=True)
        return base
    cwd = Path.cwd()
    if _mount_of(cwd)[2] not in _MEMORY_FS:
        return cwd
    tmp = Path(tempfile.gettempdir())
    if _mount_of(tmp)[2] not in _MEMORY_FS:
        return tmp
    return cwd


# -- measurements ---------------------------------------------------------------------------------


# The log format of the proxy's clusters in this run (`replproxy bench --format`).
_LOG_FORMAT = "row"


def _new_cluster(directory: Path, synchronous: str, replicate: bool) -> Cluster:
    return Cluster.init(directory, followers=FOLLOWERS, synchronous=synchronous, replicate=replicate,
                        format=_LOG_FORMAT)


def _check_replicated(cluster: Cluster, expected_rows: int) -> None:
    """The benchmark must have replicated what it wrote: every follower holds every row."""
    cluster.wait_for_catchup(timeout=CATCHUP_TIMEOUT)
    for name in cluster.followers:
        with cluster.node(name) as conn:
            (count,) = conn.execute("SELECT count(*) FROM bench").fetchone()
        if count != expected_rows:
            raise RuntimeError(f"follower {name} holds {count} rows, expected {expected_rows}")


def _proxy_single(directory: Path, synchronous: str, rows: list[tuple], warm: list[tuple],
                  replicate: bool) -> tuple[float, Cluster]:
    """µs per autocommit INSERT through the proxy; the cluster is returned open (caller closes)."""
    cluster = _new_cluster(directory, synchronous, replicate)
    conn = connect(directory, cluster=cluster, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(SCHEMA)
        execute = cur.execute
        for params in warm:
            execute(INSERT, params)
        if replicate:
            cluster.wait_for_catchup(timeout=CATCHUP_TIMEOUT)
        settle()
        start = time.perf_counter()
        for params in rows:
            execute(INSERT, params)
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    if replicate:
        _check_replicated(cluster, len(warm) + len(rows))
    return elapsed / len(rows) * 1e6, cluster


def _proxy_multi(directory: Path, synchronous: str, batches: list[list[tuple]], warm: list[list[tuple]],
                 replicate: bool) -> float:
    cluster = _new_cluster(directory, synchronous, replicate)
    try:
        conn = connect(directory, cluster=cluster, autocommit=False)
        try:
            cur = conn.cursor()
            cur.execute(SCHEMA)
            execute, commit = cur.execute, conn.commit

            def run(groups: list[list[tuple]]) -> None:
                for group in groups:
                    for params in group:
                        execute(INSERT, params)
                    commit()

            run(warm)
            if replicate:
                cluster.wait_for_catchup(timeout=CATCHUP_TIMEOUT)
            settle()
            start = time.perf_counter()
            run(batches)
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        if replicate:
            _check_replicated(cluster, ROWS_PER_TXN * (len(warm) + len(batches)))
        return elapsed / len(batches) * 1e6
    finally:
        cluster.close()


def _apply_rate(cluster: Cluster) -> float:
    """µs per entry for one follower catching up from LSN 0 with Applier.catch_up."""
    follower = cluster.followers[0]
    leader_lsn = cluster.leader_lsn()
    source = LeaderFileSource(cluster.path_of(cluster.leader), name=cluster.leader)
    applier = cluster.applier(follower, source, synchronous=cluster.config.follower_synchronous)
    try:
        if applier.applied_lsn != 0:
            raise RuntimeError(f"follower {follower} is not at LSN 0")
        start = time.perf_counter()
        if applier.catch_up(leader_lsn) < leader_lsn:
            raise RuntimeError(f"follower {follower} stopped at LSN {applier.applied_lsn}")
        elapsed = time.perf_counter() - start
    finally:
        applier.close()
        source.close()
    return elapsed / leader_lsn * 1e6


# -- the run --------------------------------------------------------------------------------------


@dataclass
class LevelResult:
    synchronous: str
    plain_single: Samples = field(default_factory=Samples)
    proxy_single: Samples = field(default_factory=Samples)
    proxy_single_norepl: Samples = field(default_factory=Samples)
    plain_multi: Samples = field(default_factory=Samples)
    proxy_multi: Samples = field(default_factory=Samples)
    proxy_multi_norepl: Samples = field(default_factory=Samples)
    apply: Samples = field(default_factory=Samples)
    fsync: Samples = field(default_factory=Samples)
    repetitions: int = 0


def _one_round(base: Path, synchronous: str, transactions: int, result: LevelResult | None,
               tag: str) -> None:
    """One repetition of every measurement at one level (result None: warm-up, discarded)."""
    if result is not None:
        result.fsync.add(_fsync_probe(base))
    single_rows = bench_rows(transactions, WARMUP_OPS)
    single_warm = bench_rows(WARMUP_OPS)
    warm_groups = max(1, WARMUP_OPS // ROWS_PER_TXN)
    multi_all = bench_rows(ROWS_PER_TXN * (transactions + warm_groups))
    groups = [multi_all[i:i + ROWS_PER_TXN] for i in range(0, len(multi_all), ROWS_PER_TXN)]
    multi_warm, multi_rows = groups[:warm_groups], groups[warm_groups:]

    def place(name: str) -> Path:
        path = base / f"{tag}-{synchronous}-{name}"
        remove_tree(path)
        path.mkdir(parents=True)
        return path

    def keep(samples: Samples, value: float) -> None:
        if result is not None:
            samples.add(value)

    # 1. single-row autocommit INSERTs
    path = place("plain1")
    keep(result.plain_single if result else Samples(),
         plain_single(path / "plain.db", synchronous, single_rows, single_warm))
    remove_tree(path)

    path = place("proxy1")
    us, cluster = _proxy_single(path, synchronous, single_rows, single_warm, replicate=True)
    cluster.close()
    keep(result.proxy_single if result else Samples(), us)
    remove_tree(path)

    path = place("proxy1-norepl")
    us, cluster = _proxy_single(path, synchronous, single_rows, single_warm, replicate=False)
    try:
        keep(result.proxy_single_norepl if result else Samples(), us)
        # 3. the entries just written with replication off: one follower applies them from 0
        keep(result.apply if result else Samples(), _apply_rate(cluster))
    finally:
        cluster.close()
    remove_tree(path)

    # 2. 10-row transactions
    path = place("plain10")
    keep(result.plain_multi if result else Samples(),
         plain_multi(path / "plain.db", synchronous, multi_rows, multi_warm))
    remove_tree(path)

    path = place("proxy10")
    keep(result.proxy_multi if result else Samples(),
         _proxy_multi(path, synchronous, multi_rows, multi_warm, replicate=True))
    remove_tree(path)

    path = place("proxy10-norepl")
    keep(result.proxy_multi_norepl if result else Samples(),
         _proxy_multi(path, synchronous, multi_rows, multi_warm, replicate=False))
    remove_tree(path)


def _fsync_probe(directory: Path, count: int = 20) -> float:
    """Median µs of a 4 KiB write + fsync in `directory`: how fast the disk syncs right now."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 4096
        for i in range(count):
            start = time.perf_counter()
            os.pwrite(fd, block, i * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(times) * 1e6


def _table(results: list[LevelResult], transactions: int) -> list[str]:
    header = (f"{'sync':7} {'measurement':46} {'plain apsw µs/op':>16} {'proxy µs/op':>12} "
              f"{'ratio':>7} {'target':>8} {'result':>6} {'noise':>6}")
    lines = [header, "-" * len(header)]

    def row(level: str, name: str, base: Samples, proxied: Samples, ratio: float, target: str,
            verdict: str) -> None:
        noise = max(base.spread, proxied.spread)
        lines.append(f"{level:7} {name:46} {base.median:16.1f} {proxied.median:12.1f} "
                     f"{ratio:6.2f}x {target:>8} {verdict:>6} {noise:5.0%}")

    for res in results:
        lvl = res.synchronous
        for name, plain, prox in (
            ("single-row INSERT, autocommit (µs/commit)", res.plain_single, res.proxy_single),
            ("  same, follower replicator stopped", res.plain_single, res.proxy_single_norepl),
        ):
            ratio = paired_ratio(prox, plain)
            target = TARGET_SINGLE_BY_FORMAT.get(_LOG_FORMAT, TARGET_SINGLE)
            row(lvl, name, plain, prox, ratio, f"<={target:.1f}x", verdict(ratio, target, at_least=False))
        for name, plain, prox in (
            (f"{ROWS_PER_TXN}-row transaction (µs/transaction)", res.plain_multi, res.proxy_multi),
            ("  same, follower replicator stopped", res.plain_multi, res.proxy_multi_norepl),
        ):
            ratio = paired_ratio(prox, plain)
            row(lvl, name, plain, prox, ratio, f"<={TARGET_MULTI:.1f}x",
                verdict(ratio, TARGET_MULTI, at_least=False))
        ratio = paired_ratio(res.proxy_single_norepl, res.apply)
        row(lvl, "follower apply µs/entry vs leader µs/commit *", res.proxy_single_norepl, res.apply,
            ratio, f">={TARGET_APPLY:.1f}x", verdict(ratio, TARGET_APPLY, at_least=True))
        lines.append("")
    lines.append(
        "* apply row: the 'plain apsw' column holds the proxy leader's µs per single-row commit with "
        "the replicator\n  stopped (the leader's own speed), the 'proxy' column one follower's µs per "
        "entry catching up from LSN 0\n  with Applier.catch_up; ratio = apply rate / leader commit rate "
        "(higher is better).")
    reps = ", ".join(f"{res.repetitions} at {res.synchronous}" for res in results)
    lines.append(
        f"ratio = proxy / plain apsw (lower is better) for the other rows. µs: medians over repetitions "
        f"of {transactions}\ntransactions ({reps}), each in fresh files; ratio: median of the "
        "per-repetition ratios (both sides\nrun in the same repetition, seconds apart); noise = "
        "(max - min) / median of the noisier side.")
    for res in results:
        rounds = ", ".join(f"{value:.0f}" for value in res.fsync.values)
        lines.append(f"fsync probe at {res.synchronous} (4 KiB write + fsync, median µs per repetition): "
                     f"{rounds}")
    return lines


def run_bench(transactions: int = 2000, sync_levels: tuple[str, ...] = ("full", "normal"),
              workdir: str | None = None, repetitions: int = REPETITIONS, log_format: str = "row") -> int:
    """Run every measurement, print the table, return 0 (a report, not a test)."""
    global _LOG_FORMAT
    _LOG_FORMAT = log_format
    sync_levels = tuple(dict.fromkeys(sync_levels or ("full", "normal")))
    base_parent = _choose_base(workdir)
    base = Path(tempfile.mkdtemp(prefix="replproxy-bench-", dir=base_parent))
    out = sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    fstype = _mount_of(base)[2]
    say(f"replproxy bench: proxy ({log_format} format, leader + "
        f"{FOLLOWERS} followers) against plain apsw, same run, same pragmas")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    say(f"  machine: {os.cpu_count()} CPUs (nproc {usable}), {_cpu_model()}")
    say(f"  disk: {base} on {_disk_description(base)}")
    if fstype in _MEMORY_FS:
        say(f"  WARNING: {base} is on {fstype} (memory): fsync costs nothing here, the figures do not "
            "show a real disk")
    say(f"  python {platform.python_version()}, apsw {apsw.apsw_version()}, "
        f"SQLite {apsw.sqlite_lib_version()}")
    say(f"  journal_mode=WAL, synchronous in {', '.join(sync_levels)}; {transactions} transactions per "
        f"measurement, {MIN_REPETITIONS} to {repetitions} repetitions (time budget), median")
    say("")

    started = time.perf_counter()
    results: list[LevelResult] = []
    failure = None
    try:
        for level in sync_levels:
            result = LevelResult(level)
            results.append(result)
            progress(f"[bench] synchronous={level}: warm-up round")
            _one_round(base, level, min(WARMUP_ROUND, transactions), None, "warmup")
            level_start = time.perf_counter()
            for rep in range(repetitions):
                spent = time.perf_counter() - level_start
                if rep >= MIN_REPETITIONS and spent + spent / rep > LEVEL_BUDGET_SECONDS:
                    break  # keep the default run near a minute; slow disks get fewer repetitions
                progress(f"[bench] synchronous={level}: repetition {rep + 1}/{repetitions}")
                _one_round(base, level, transactions, result, f"rep{rep}")
                result.repetitions += 1
    except Exception:  # a report, not a test: show what was measured, and why it stopped
        failure = traceback.format_exc()
    finally:
        remove_tree(base)
    complete = [res for res in results if res.repetitions]
    if complete:
        for line in _table(complete, transactions):
            say(line)
    if failure is not None:
        say("\nERROR: the benchmark stopped early; the table holds what was measured before:")
        say(failure.rstrip())
    progress("[bench] reads")
    from .reads import report as read_report

    for line in read_report(base_parent):
        say(line)
    from . import formats as bench_trigger

    extra = Path(tempfile.mkdtemp(prefix="replproxy-bench-", dir=base_parent))
    try:
        if log_format == "trigger":
            progress("[bench] trigger format breakdown")
            for line in bench_trigger.report(extra, transactions, sync_levels, repetitions):
                say(line)
        progress("[bench] log bytes per transaction")
        for line in bench_trigger.log_bytes(extra):
            say(line)
    finally:
        remove_tree(extra)
    progress("[bench] replication modes")
    from .modes import report as modes_report

    try:
        for line in modes_report(base_parent, transactions):
            say(line)
    except Exception:  # a report, not a test
        say("\nERROR: the replication modes measurement stopped:\n" + traceback.format_exc().rstrip())
    progress("[bench] start-up cost")
    from .imports import report as imports_report

    for line in imports_report():
        say(line)
    say(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0
