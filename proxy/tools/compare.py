"""`replproxy compare`: every sample workload (proxy/tools/workloads.py) under every log format.

For each workload and format a fresh cluster (leader + 2 followers) is created in a temporary
directory with its background replicator stopped; the workload runs through `proxy.connect` (the
leader's time); then each follower replays the log from LSN 0 with `Applier.catch_up` in a
loop, as `replproxy bench` measures apply (the follower apply time is the first follower's); then
`verify` compares every node with the leader. The same workload also runs on plain SQLite (apsw,
WAL, the same `PRAGMA synchronous`) in a fresh file: the no-replication baseline of the ratios.

All of it is repeated `repeat` times, the repetitions interleaved (repetition 1 of everything, then
repetition 2, ...) so that a slow moment of the machine spreads over all pairs. Every measured
figure is reported as the median of its samples with their spread (`Stat`); the overhead of a run is
its leader time over the plain SQLite time of the same repetition.

A statement the format refuses (`UnsafeStatementError`) makes that run "refused", with the error;
refusals and errors are not repeated (they do not change).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw
import click

from ..cluster import Cluster
from ..cluster.verify import verify
from ..driver import connect
from ..errors import UnsafeStatementError
from ..store import config as cfg
from ..store import node as store
from ..store.source import LeaderFileSource
from . import compare_report as out
from . import workloads as wl

# name -> (format, row_image, options)
FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "row-full": ("row", "full", {}),
    "row-minimal": ("row", "minimal", {}),
    "statement": ("statement", "full", {}),
    "statement-no-rewrite": ("statement", "full", {"no_rewrite": True}),
    "mixed": ("mixed", "full", {}),
    "trigger": ("trigger", "full", {}),
}
FOLLOWERS = 2
# Five runs: the median ignores a slow run (often the first: a cold process, imports such as sqlglot's)
# and five samples have quartiles. A default run takes about 10 s on 2 vCPUs (2 s a repetition).
DEFAULT_REPEAT = 5


@dataclass(frozen=True)
class Stat:
    """A measured figure over the repetitions: the median, the spread (min, max and the quartiles)
    and every sample in the order the runs were made."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float], digits: int = 6) -> Stat | None:
        if not samples:
            return None
        ordered = sorted(samples)
        q1, q3 = ((statistics.quantiles(ordered, n=4, method="inclusive")[0::2]) if len(ordered) > 1
                  else (ordered[0], ordered[0]))
        return cls(round(statistics.median(ordered), digits), round(ordered[0], digits),
                   round(ordered[-1], digits), round(q1, digits), round(q3, digits),
                   tuple(round(s, digits) for s in samples))


@dataclass
class Run:
    """One repetition of one workload under one format, as it is measured."""

    status: str = "ok"  # ok | refused | error
    error: str | None = None
    transactions: int = 0
    log_bytes: int = 0
    leader_seconds: float = 0.0
    apply_seconds: float | None = None
    converged: bool | None = None
    differing_tables: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """One workload under one format over every repetition: medians, and `stats` with the spread
    and every sample of each measured figure."""

    workload: str
    format: str
    status: str  # ok | refused | error (a refusal or an error ends the repetitions of the pair)
    error: str | None
    runs: int
    transactions: int
    log_bytes: int  # median (statement entries hold random() results as text: a few bytes vary)
    bytes_per_txn: float
    leader_seconds: float  # median
    baseline_seconds: float  # median of plain SQLite
    overhead: float | None  # median of the per-run ratios leader / plain SQLite of the same repetition
    apply_seconds: float | None  # median
    converged: bool | None  # False when any run diverged, None when a run could not be compared
    differing_tables: list[str]
    converged_runs: list[bool | None]
    # leader_seconds, baseline_seconds, overhead, added_us_per_txn, apply_seconds, apply_us_per_txn, log_bytes
    stats: dict[str, Stat | None]


def _baseline(base: Path, workload: str, scale: int, synchronous: str) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"plain-{workload}-", dir=base))
    conn = wl.PlainConnection(str(directory / "plain.db"), synchronous)
    error = None
    try:
        start = time.perf_counter()
        try:
            wl.WORKLOADS[workload](conn, scale)
        except Exception as exc:  # reported; the formats still run
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
        shutil.rmtree(directory, ignore_errors=True)
    return {"seconds": elapsed, "transactions": conn.transactions, "error": error}


def _replay(cluster: Cluster) -> tuple[float, str | None]:
    """Every follower catches up from LSN 0 with Applier.step; (first follower's seconds, error)."""
    leader_lsn = cluster.leader_lsn()
    first: float | None = None
    error = None
    for follower in cluster.followers:
        source = LeaderFileSource(cluster.path_of(cluster.leader), name=cluster.leader)
        applier = cluster.applier(follower, source, synchronous=cluster.config.follower_synchronous)
        try:
            start = time.perf_counter()
            if applier.catch_up(leader_lsn) < leader_lsn:
                state = store.read_state(applier.conn)
                error = f"{follower} stopped at LSN {applier.applied_lsn}: {state.error or '?'}"
            elapsed = time.perf_counter() - start
        finally:
            applier.close()
            source.close()
        if first is None:
            first = elapsed
    return first or 0.0, error


def run_one(base: Path, workload: str, fmt: str, scale: int, synchronous: str) -> Run:
    log_format, row_image, options = FORMATS[fmt]
    result = Run()
    directory = base / f"{fmt}-{workload}"
    cluster = Cluster.init(directory, followers=FOLLOWERS, format=log_format, row_image=row_image,
                           options=dict(options), synchronous=synchronous, replicate=False)
    try:
        conn = connect(directory, cluster=cluster, autocommit=False, consistency="strong")
        try:
            start = time.perf_counter()
            try:
                wl.WORKLOADS[workload](conn, scale)
            except UnsafeStatementError as exc:
                result.status, result.error = "refused", str(exc)
            except Exception as exc:  # a workload that fails is reported, not fatal to the run
                result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
            result.leader_seconds = time.perf_counter() - start
        finally:
            try:
                conn.close()
            except Exception:
                pass
        with cluster.node(cluster.leader) as leader:
            count, size = leader.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM _replproxy_log").fetchone()
        result.transactions, result.log_bytes = count, size
        if result.status != "ok":
            return result
        result.apply_seconds, apply_error = _replay(cluster)
        if apply_error:
            result.converged = False
            result.error = apply_error
        report = verify(cluster, timeout=1.0) if not apply_error else None
        if report is not None and report.outcome == "could-not-compare":
            result.converged = None  # not known: say why rather than "diverged"
            result.error = "; ".join(f"{n}: {why}" for n, why in report.not_compared.items())
        elif report is not None:
            result.converged = report.identical
            result.differing_tables = sorted(report.differing_tables)
    finally:
        cluster.close()
        shutil.rmtree(directory, ignore_errors=True)
    return result


def _converged(runs: list[Run]) -> bool | None:
    values = [r.converged for r in runs if r.status == "ok"]
    if not values:
        return None
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def aggregate(workload: str, fmt: str, runs: list[Run], plain: list[float | None]) -> Result:
    """The runs of one pair; `plain[i]` is the plain SQLite time of repetition i (None: it failed)."""
    last = runs[-1]
    status = last.status
    transactions = int(statistics.median_low([r.transactions for r in runs]))
    log_bytes = int(statistics.median_low([r.log_bytes for r in runs]))
    ok = [r for r in runs if r.status == "ok"]
    paired = [(r, p) for r, p in zip(runs, plain, strict=False) if r.status == "ok" and p]
    overhead = Stat.of([r.leader_seconds / p for r, p in paired], 4)
    applied = [r.apply_seconds for r in ok if r.apply_seconds is not None]
    per_txn = 1e6 / transactions if transactions else None
    leader = Stat.of([r.leader_seconds for r in runs])
    assert leader is not None  # a pair has run once at least
    stats = {
        "leader_seconds": leader,
        "baseline_seconds": Stat.of([p for p in plain if p is not None]),
        "overhead": overhead,
        "added_us_per_txn": Stat.of([(r.leader_seconds - p) * per_txn for r, p in paired], 1) if per_txn else None,
        "apply_seconds": Stat.of(applied),
        "apply_us_per_txn": Stat.of([a * per_txn for a in applied], 1) if per_txn else None,
        "log_bytes": Stat.of([r.log_bytes for r in runs], 0),
    }
    errors = [r.error for r in runs if r.error]
    return Result(
        workload=workload, format=fmt, status=status,
        error=last.error if status != "ok" else (errors[0] if errors else None),
        runs=len(runs), transactions=transactions, log_bytes=log_bytes,
        bytes_per_txn=round(log_bytes / transactions, 1) if transactions else 0.0,
        leader_seconds=leader.median,
        baseline_seconds=stats["baseline_seconds"].median if stats["baseline_seconds"] else 0.0,
        overhead=round(overhead.median, 2) if overhead and status == "ok" else None,
        apply_seconds=stats["apply_seconds"].median if stats["apply_seconds"] else None,
        converged=_converged(runs) if status == "ok" else None,
        differing_tables=sorted({t for r in runs for t in r.differing_tables}),
        converged_runs=[r.converged for r in ok],
        stats=stats,
    )


def run_compare(workload_names: list[str], format_names: list[str], scale: int = 1,
                synchronous: str = "full", workdir: str | None = None,
                on_step: Callable[[str], None] | None = None, repeat: int = DEFAULT_REPEAT) -> dict[str, Any]:
    """Run every workload under every format and the baseline, `repeat` times; the report as a dict
    (the JSON). `on_step` is called before each run with what it is."""
    base = Path(tempfile.mkdtemp(prefix="replproxy-compare-", dir=workdir))
    runs: dict[tuple[str, str], list[Run]] = {(w, f): [] for w in workload_names for f in format_names}
    plain: dict[str, list[dict[str, Any]]] = {w: [] for w in workload_names}
    try:
        for rep in range(repeat):
            counter = f"run {rep + 1}/{repeat} " if repeat > 1 else ""
            for workload in workload_names:
                if not any(p["error"] for p in plain[workload]):  # a failing baseline is not repeated
                    if on_step:
                        on_step(f"{counter}{workload}: plain SQLite")
                    plain[workload].append(_baseline(base, workload, scale, synchronous))
                for fmt in format_names:
                    done = runs[(workload, fmt)]
                    if done and done[-1].status != "ok":  # a refusal or an error does not change
                        continue
                    if on_step:
                        on_step(f"{counter}{workload}: {fmt}")
                    done.append(run_one(base, workload, fmt, scale, synchronous))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = []
    baselines = {}
    for workload in workload_names:
        seconds = [None if p["error"] else p["seconds"] for p in plain[workload]]
        stat = Stat.of([s for s in seconds if s is not None])
        error = next((p["error"] for p in plain[workload] if p["error"]), None)
        baselines[workload] = {"seconds": stat.median if stat else 0.0, "error": error,
                               "transactions": plain[workload][0]["transactions"],
                               "stats": asdict(stat) if stat else None}
        for fmt in format_names:
            results.append(asdict(aggregate(workload, fmt, runs[(workload, fmt)], seconds)))
    return {
        "command": "replproxy compare",
        "scale": scale,
        "repeat": repeat,
        "synchronous": synchronous,
        "followers": FOLLOWERS,
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apsw_version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "workloads": {name: wl.describe(name) for name in workload_names},
        "formats": format_names,
        "baseline": baselines,
        "results": results,
    }


# -- the command ----------------------------------------------------------------------------------


def json_text(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def _write(text: str, path: str) -> None:
    if path == "-":
        stdout = click.get_binary_stream("stdout")
        stdout.write(text.encode("utf-8"))
        stdout.flush()
    else:
        Path(path).write_text(text, encoding="utf-8")


def _unwritable(path: str) -> str | None:
    """Why `path` cannot be written (a missing directory, a directory, no permission), or None:
    it is opened for appending, and removed again if it did not exist."""
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        return f"cannot be written: {exc.strerror or exc}"
    if not existed:
        os.unlink(path)
    return None


def _run_with_progress(workloads: list[str], formats: list[str], scale: int, synchronous: str,
                       workdir: str | None, repeat: int) -> dict[str, Any]:
    """The progress bar is on standard error: standard output stays for the table or `-`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<52}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task("compare", total=repeat * len(workloads) * (len(formats) + 1))
        first = [True]

        def step(text: str) -> None:
            if not first[0]:
                progress.advance(task)
            first[0] = False
            progress.update(task, description=text)

        report = run_compare(workloads, formats, scale, synchronous, workdir, on_step=step, repeat=repeat)
        progress.advance(task)
    return report


@click.command("compare")
@click.option("--workload", "workload_names", multiple=True, type=click.Choice(wl.names()),
              help="Workload to run (repeatable; default: all).")
@click.option("--format", "format_names", multiple=True, type=click.Choice(list(FORMATS)),
              help="Log format to compare (repeatable; default: all six).")
@click.option("--scale", default=1, show_default=True, type=click.IntRange(1),
              help="Workload size multiplier.")
@click.option("--repeat", default=DEFAULT_REPEAT, show_default=True, type=click.IntRange(1),
              help="Runs of everything; each time is reported as the median with its spread.")
@click.option("--synchronous", default="full", show_default=True,
              type=click.Choice(cfg.SYNCHRONOUS_LEVELS),
              help="PRAGMA synchronous of the leader and of the plain SQLite baseline.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the results as JSON (every sample, medians and spreads); - for standard output.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write a self-contained HTML report with charts; - for standard output.")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, exists=True),
              help="Where to create the temporary clusters (default: the system temporary directory).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
def compare_command(workload_names: tuple[str, ...], format_names: tuple[str, ...], scale: int, repeat: int,
                    synchronous: str, json_file: str | None, html_file: str | None,
                    workdir: str | None, quiet: bool) -> None:
    """Run sample workloads under every log format and compare log size, overhead, apply time and
    convergence against plain SQLite.

    Every run is repeated (--repeat) and each time reported as the median with its spread. With
    `--json -` or `--html -` the report goes to standard output and the table to standard error.
    Exit status 0 when every run completed (refusals and divergence are results, reported in the
    table), 1 when a workload failed with an unexpected error.
    """
    if json_file == "-" and html_file == "-":
        click.echo("replproxy: --json - and --html - cannot both write to standard output", err=True)
        sys.exit(2)
    for option, path in (("--json", json_file), ("--html", html_file)):
        if path and path != "-":
            problem = _unwritable(path)
            if problem:  # said now, not after a run that could take minutes
                click.echo(f"replproxy: {option} {path}: {problem}", err=True)
                sys.exit(2)
    to_stdout = "-" in (json_file, html_file)
    workloads = list(workload_names) or wl.names()
    formats = list(format_names) or list(FORMATS)
    if quiet:
        report = run_compare(workloads, formats, scale, synchronous, workdir, repeat=repeat)
    else:
        report = _run_with_progress(workloads, formats, scale, synchronous, workdir, repeat)
        out.print_table(report, stderr=to_stdout)
    for path, render in ((json_file, json_text), (html_file, out.html_report)):
        if path:
            try:
                _write(render(report), path)
            except BrokenPipeError:  # `| head`: the reader left; nothing more to say
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(1)
            except OSError as exc:  # it became unwritable during the run: the table was shown
                click.echo(f"replproxy: cannot write {path}: {exc.strerror or exc}", err=True)
                sys.exit(1)
    if not quiet:
        for path in (json_file, html_file):
            if path and path != "-":
                click.echo(f"wrote {path}", err=to_stdout)
    if (any(r["status"] == "error" for r in report["results"])
            or any(b["error"] for b in report["baseline"].values())):
        sys.exit(1)
