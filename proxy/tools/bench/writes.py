"""`replproxy bench`: the leader's cost against plain apsw, and the follower apply rate.

Every figure comes from one run on one machine: plain apsw is measured in the same run, with the
same pragmas (journal_mode=WAL, the same PRAGMA synchronous), the same table and the same rows, in
a fresh database file for every measurement, in a directory on the same disk (default: a temporary
directory under the current directory, or under the system temporary directory when the current one
is in memory; `--dir` to choose). Each measurement is repeated, interleaved, and medians are
reported; every proxy figure is paired with the plain apsw figure measured just before it, and a
ratio is the median of the per-repetition ratios. A discarded warm-up round runs first, every
measurement warms its own statement caches and flushes the page cache's dirty pages (os.sync)
before its clock starts, and a 4 KiB write + fsync probe per repetition shows how fast the disk was.

Measurements, for each synchronous level, for every log format at normal (the formats take turns
going first) and for the row format at the other levels (or only the format of `--format`):

1. single-row autocommit INSERTs: plain `conn.execute(INSERT, params)` in autocommit against
   `proxy.connect(dir, cluster=..., autocommit=True)` + `cursor.execute`, with the cluster's
   background replicator running (leader + 2 followers, as `replproxy init` creates); for the
   first format also with the replicator stopped (`replicate=False`), the background thread's share;
2. 10-row transactions: BEGIN, 10 INSERTs, COMMIT against 10 `cursor.execute` + `commit()`;
3. follower apply rate (first format): the entries written by (1) with replication off are applied
   by one follower from LSN 0 with `Applier.catch_up`; compared with the leader's commit rate from
   (1) with the replicator stopped (the leader's own speed).

The run ends with the targets (targets.py), each PASS or MISS. It is a report, not a test: the exit
code is 0 even when a target is missed."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from ...cluster import Cluster
from ...cluster.facade import REPLICATOR_ENV, replicator_kind
from ...driver import connect
from ...store.source import LeaderFileSource
from . import targets
from .common import (
    CATCHUP_TIMEOUT,
    FOLLOWERS,
    INSERT,
    LEVEL_BUDGET_SECONDS,
    MIN_REPETITIONS,
    REPETITIONS,
    ROWS_PER_TXN,
    SCHEMA,
    WARMUP_OPS,
    WARMUP_ROUND,
    Samples,
    bench_rows,
    plain_multi,
    plain_single,
    ratios,
    remove_tree,
    settle,
    verdict,
)
from .targets import bound_text

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


def _new_cluster(directory: Path, synchronous: str, log_format: str, replicate: bool) -> Cluster:
    return Cluster.init(directory, followers=FOLLOWERS, synchronous=synchronous, replicate=replicate,
                        format=log_format)


def _check_replicated(cluster: Cluster, expected_rows: int) -> None:
    """The benchmark must have replicated what it wrote: every follower holds every row."""
    cluster.wait_for_catchup(timeout=CATCHUP_TIMEOUT)
    for name in cluster.followers:
        with cluster.node(name) as conn:
            (count,) = conn.execute("SELECT count(*) FROM bench").fetchone()
        if count != expected_rows:
            raise RuntimeError(f"follower {name} holds {count} rows, expected {expected_rows}")


def _proxy_single(directory: Path, synchronous: str, log_format: str, rows: list[tuple], warm: list[tuple],
                  replicate: bool) -> tuple[float, Cluster]:
    """µs per autocommit INSERT through the proxy; the cluster is returned open (caller closes)."""
    cluster = _new_cluster(directory, synchronous, log_format, replicate)
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


def _proxy_multi(directory: Path, synchronous: str, log_format: str, batches: list[list[tuple]],
                 warm: list[list[tuple]], replicate: bool) -> float:
    cluster = _new_cluster(directory, synchronous, log_format, replicate)
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
class FormatResult:
    """One log format at one level; each proxy figure is paired with the plain one measured just before."""

    plain_single: Samples = field(default_factory=Samples)
    single: Samples = field(default_factory=Samples)
    plain_multi: Samples = field(default_factory=Samples)
    multi: Samples = field(default_factory=Samples)


@dataclass
class LevelResult:
    synchronous: str
    formats: tuple[str, ...]  # the first one also gets the diagnostics below
    by_format: dict[str, FormatResult] = field(default_factory=dict)
    single_norepl: Samples = field(default_factory=Samples)
    multi_norepl: Samples = field(default_factory=Samples)
    apply: Samples = field(default_factory=Samples)
    fsync: Samples = field(default_factory=Samples)
    repetitions: int = 0

    def __post_init__(self) -> None:
        self.by_format = {fmt: FormatResult() for fmt in self.formats}

    @property
    def main(self) -> str:
        return self.formats[0]


def _one_round(base: Path, result: LevelResult, transactions: int, keep: bool, tag: str,
               rotate: int = 0) -> None:
    """One repetition of every measurement at one level (keep False: warm-up, discarded). The formats
    take turns going first (`rotate`), so that none is always measured right after a slow neighbour."""
    synchronous = result.synchronous
    if keep:
        result.fsync.add(_fsync_probe(base))
    single_rows = bench_rows(transactions, WARMUP_OPS)
    single_warm = bench_rows(WARMUP_OPS)
    warm_groups = max(1, WARMUP_OPS // ROWS_PER_TXN)
    multi_all = bench_rows(ROWS_PER_TXN * (transactions + warm_groups))
    groups = [multi_all[i:i + ROWS_PER_TXN] for i in range(0, len(multi_all), ROWS_PER_TXN)]
    multi_warm, multi_rows = groups[:warm_groups], groups[warm_groups:]

    def measure(samples: Samples, name: str, run: Callable[[Path], float]) -> None:
        path = base / f"{tag}-{synchronous}-{name}"
        remove_tree(path)
        path.mkdir(parents=True)
        try:
            value = run(path)
        finally:
            remove_tree(path)
        if keep:
            samples.add(value)

    def single_and_apply(path: Path) -> float:
        us, cluster = _proxy_single(path, synchronous, result.main, single_rows, single_warm, replicate=False)
        try:
            # the entries just written with replication off: one follower applies them from 0
            value = _apply_rate(cluster)
            if keep:
                result.apply.add(value)
        finally:
            cluster.close()
        return us

    def single_replicated(path: Path, fmt: str) -> float:
        us, cluster = _proxy_single(path, synchronous, fmt, single_rows, single_warm, replicate=True)
        cluster.close()
        return us

    turn = rotate % len(result.formats)
    for fmt in result.formats[turn:] + result.formats[:turn]:
        res = result.by_format[fmt]
        # 1. single-row autocommit INSERTs
        measure(res.plain_single, f"{fmt}-plain1",
                lambda p: plain_single(p / "plain.db", synchronous, single_rows, single_warm))
        measure(res.single, f"{fmt}-proxy1", lambda p, fmt=fmt: single_replicated(p, fmt))
        if fmt == result.main:
            measure(result.single_norepl, f"{fmt}-proxy1-norepl", single_and_apply)
        # 2. 10-row transactions
        measure(res.plain_multi, f"{fmt}-plain10",
                lambda p: plain_multi(p / "plain.db", synchronous, multi_rows, multi_warm))
        measure(res.multi, f"{fmt}-proxy10",
                lambda p, fmt=fmt: _proxy_multi(p, synchronous, fmt, multi_rows, multi_warm, replicate=True))
        if fmt == result.main:
            measure(result.multi_norepl, f"{fmt}-proxy10-norepl",
                    lambda p: _proxy_multi(p, synchronous, result.main, multi_rows, multi_warm, replicate=False))


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
    header = (f"{'sync':7} {'format':10} {'measurement':46} {'plain apsw µs/op':>16} {'proxy µs/op':>12} "
              f"{'ratio':>7} {'target':>7} {'result':>6} {'noise':>6}")
    lines = [header, "-" * len(header)]

    def row(level: str, fmt: str, name: str, base: Samples, proxied: Samples, pairs: Samples,
            bound: float | None, at_least: bool = False) -> None:
        result = verdict(pairs.median, bound, at_least) if bound is not None else ""
        lines.append(f"{level:7} {fmt:10} {name:46} {base.median:16.1f} {proxied.median:12.1f} "
                     f"{pairs.median:6.2f}x {bound_text(bound, at_least):>7} {result:>6} {pairs.spread:5.0%}")

    for res in results:
        lvl, main = res.synchronous, res.main
        for fmt, fr in res.by_format.items():
            row(lvl, fmt, "single-row INSERT, autocommit (µs/commit)", fr.plain_single, fr.single,
                ratios(fr.single, fr.plain_single), targets.SINGLE.get((lvl, fmt)))
            if fmt == main:
                row(lvl, fmt, "  same, follower replicator stopped", fr.plain_single, res.single_norepl,
                    ratios(res.single_norepl, fr.plain_single), None)
        for fmt, fr in res.by_format.items():
            row(lvl, fmt, f"{ROWS_PER_TXN}-row transaction (µs/transaction)", fr.plain_multi, fr.multi,
                ratios(fr.multi, fr.plain_multi), targets.MULTI.get((lvl, fmt)))
            if fmt == main:
                row(lvl, fmt, "  same, follower replicator stopped", fr.plain_multi, res.multi_norepl,
                    ratios(res.multi_norepl, fr.plain_multi), None)
        row(lvl, main, "follower apply µs/entry vs leader µs/commit *", res.single_norepl, res.apply,
            ratios(res.single_norepl, res.apply), targets.APPLY, at_least=True)
        lines.append("")
    lines.append(
        "* apply row: the 'plain apsw' column holds the proxy leader's µs per single-row commit with the "
        "replicator\n  stopped (the leader's own speed), the 'proxy' column one follower's µs per entry "
        "catching up from LSN 0\n  with Applier.catch_up; ratio = apply rate / leader commit rate (higher "
        "is better).")
    reps = ", ".join(f"{res.repetitions} at {res.synchronous}" for res in results)
    lines.append(
        f"ratio = proxy / plain apsw (lower is better) for the other rows. µs: medians over repetitions of "
        f"{transactions}\ntransactions ({reps}), each in fresh files; every proxy figure is paired with "
        "the plain apsw one measured\njust before it; ratio: median of the per-repetition ratios; noise = "
        "(max - min) / median of those ratios.")
    for res in results:
        rounds = ", ".join(f"{value:.0f}" for value in res.fsync.values)
        lines.append(f"fsync probe at {res.synchronous} (4 KiB write + fsync, median µs per repetition): "
                     f"{rounds}")
    return lines


def _outcomes(results: list[LevelResult], levels: tuple[str, ...], formats: tuple[str, ...]) -> list[targets.Outcome]:
    """Every write target of the levels asked for, measured or not (a level that failed is listed as ERROR)."""
    done = {res.synchronous: res for res in results if res.repetitions}
    outcomes = []
    for lvl in levels:
        res = done.get(lvl)
        for kind, table, label in (("single", targets.SINGLE, "single-row autocommit INSERT"),
                                   ("multi", targets.MULTI, f"{ROWS_PER_TXN}-row transaction")):
            for fmt in formats:
                bound = table.get((lvl, fmt))
                if bound is None:
                    continue
                name = f"{lvl:7} {fmt:10} {label}, proxy / apsw"
                if res is None or fmt not in res.by_format:
                    outcomes.append(targets.missing(name, bound))
                    continue
                fr = res.by_format[fmt]
                pairs = (ratios(fr.single, fr.plain_single) if kind == "single"
                         else ratios(fr.multi, fr.plain_multi))
                outcomes.append(targets.Outcome(name, pairs, bound))
    return outcomes


def _apply_outcomes(results: list[LevelResult], levels: tuple[str, ...], main: str) -> list[targets.Outcome]:
    done = {res.synchronous: res for res in results if res.repetitions}
    outcomes = []
    for lvl in levels:
        name = f"{lvl:7} {main:10} follower apply rate / leader commit rate"
        res = done.get(lvl)
        outcomes.append(targets.Outcome(name, ratios(res.single_norepl, res.apply), targets.APPLY, True)
                        if res else targets.missing(name, targets.APPLY, True))
    return outcomes


def _level_formats(level: str, formats: tuple[str, ...]) -> tuple[str, ...]:
    """Every format at normal, where each has its own targets; the first one elsewhere."""
    return formats if level == "normal" else formats[:1]


def run_bench(transactions: int = 2000, sync_levels: tuple[str, ...] = ("full", "normal"),
              workdir: str | None = None, repetitions: int = REPETITIONS, log_format: str | None = None) -> int:
    """Run every measurement, print the tables and the targets, return 0 (a report, not a test).

    `log_format`: measure only that format (default: every format at normal, row elsewhere).
    `repetitions`: at most this many repetitions of every measurement (fewer: a quick run)."""
    sync_levels = tuple(dict.fromkeys(sync_levels or ("full", "normal")))
    formats = (log_format,) if log_format else targets.formats()
    min_repetitions = min(MIN_REPETITIONS, repetitions)
    base_parent = _choose_base(workdir)
    base = Path(tempfile.mkdtemp(prefix="replproxy-bench-", dir=base_parent))
    out = sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    fstype = _mount_of(base)[2]
    measured = (f"{formats[0]} format" if len(formats) == 1
                else f"{formats[0]} format, and every log format at synchronous=normal")
    say(f"replproxy bench: proxy (leader + {FOLLOWERS} followers; {measured}) against plain apsw, same run, "
        "same pragmas")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    say(f"  machine: {os.cpu_count()} CPUs (nproc {usable}), {_cpu_model()}")
    say(f"  disk: {base} on {_disk_description(base)}")
    if fstype in _MEMORY_FS:
        say(f"  WARNING: {base} is on {fstype} (memory): fsync costs nothing here, the figures do not "
            "show a real disk")
    say(f"  python {platform.python_version()}, apsw {apsw.apsw_version()}, "
        f"SQLite {apsw.sqlite_lib_version()}")
    say(f"  replicator running: in a {replicator_kind(True)} of its own, as Cluster(dir) opens it "
        f"({REPLICATOR_ENV}=process|thread)")
    say(f"  journal_mode=WAL, synchronous in {', '.join(sync_levels)}; {transactions} transactions per "
        f"measurement, {min_repetitions} to {repetitions} repetitions (time budget), median")
    say("")

    started = time.perf_counter()
    results: list[LevelResult] = []
    failure = None
    try:
        for level in sync_levels:
            result = LevelResult(level, _level_formats(level, formats))
            results.append(result)
            progress(f"[bench] synchronous={level}: warm-up round")
            _one_round(base, result, min(WARMUP_ROUND, transactions), False, "warmup")
            level_start = time.perf_counter()
            for rep in range(repetitions):
                spent = time.perf_counter() - level_start
                if rep >= min_repetitions and spent + spent / rep > LEVEL_BUDGET_SECONDS:
                    break
                progress(f"[bench] synchronous={level}: repetition {rep + 1}/{repetitions}")
                _one_round(base, result, transactions, True, f"rep{rep}", rotate=rep)
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
    outcomes = _outcomes(complete, sync_levels, formats)

    progress("[bench] reads")
    from . import reads

    try:
        lines, read_outcomes = reads.report(base_parent, repetitions=min(repetitions, reads.REPETITIONS))
        for line in lines:
            say(line)
    except Exception:  # a report, not a test
        say("\nERROR: the read measurement stopped:\n" + traceback.format_exc().rstrip())
        read_outcomes = reads.missing()
    outcomes += read_outcomes + _apply_outcomes(complete, sync_levels, formats[0])

    from . import formats as bench_formats

    extra = Path(tempfile.mkdtemp(prefix="replproxy-bench-", dir=base_parent))
    try:
        if log_format == "trigger":
            progress("[bench] trigger format breakdown")
            for line in bench_formats.report(extra, transactions, sync_levels, repetitions):
                say(line)
        progress("[bench] log bytes per transaction")
        for line in bench_formats.log_bytes(extra):
            say(line)
    finally:
        remove_tree(extra)
    progress("[bench] replication modes")
    from . import modes

    try:
        for line in modes.report(base_parent, transactions, min(repetitions, modes.REPETITIONS)):
            say(line)
    except Exception:  # a report, not a test
        say("\nERROR: the replication modes measurement stopped:\n" + traceback.format_exc().rstrip())
    progress("[bench] start-up cost")
    from . import imports

    for line in imports.report(imports.RUNS if repetitions >= REPETITIONS else repetitions):
        say(line)
    say(f"\n(total {time.perf_counter() - started:.0f} s)")
    for line in targets.summary(outcomes):
        say(line)
    return 0
