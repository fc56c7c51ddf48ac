"""`replproxy compare`: every sample workload (proxy/workloads.py) under every log format.

For each workload and format a fresh cluster (leader + 2 followers) is created in a temporary
directory with its background replicator stopped; the workload runs through `proxy.connect` (the
leader's time); then each follower replays the log from LSN 0 with `Applier.catch_up` in a
loop, as `replproxy bench` measures apply (the follower apply time is the first follower's); then
`verify` compares every node with the leader. The same workload also runs on plain SQLite (apsw,
WAL, the same `PRAGMA synchronous`) in a fresh file: the no-replication baseline of the ratios.

A statement the format refuses (`UnsafeStatementError`) makes that run "refused", with the error.
"""

from __future__ import annotations

import html
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
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


@dataclass
class Result:
    workload: str
    format: str
    status: str = "ok"  # ok | refused | error
    error: str | None = None
    transactions: int = 0
    log_bytes: int = 0
    bytes_per_txn: float = 0.0
    leader_seconds: float = 0.0
    baseline_seconds: float = 0.0
    overhead: float | None = None  # leader time / baseline time
    apply_seconds: float | None = None
    converged: bool | None = None
    differing_tables: list[str] = field(default_factory=list)


def _baseline(base: Path, workload: str, scale: int, synchronous: str) -> dict[str, Any]:
    path = base / f"plain-{workload}.db"
    conn = wl.PlainConnection(str(path), synchronous)
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


def run_one(base: Path, workload: str, fmt: str, scale: int, synchronous: str) -> Result:
    log_format, row_image, options = FORMATS[fmt]
    result = Result(workload=workload, format=fmt)
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
        result.bytes_per_txn = round(size / count, 1) if count else 0.0
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


def run_compare(workload_names: list[str], format_names: list[str], scale: int = 1,
                synchronous: str = "full", workdir: str | None = None,
                on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every workload under every format and the baseline; the report as a dict (the JSON)."""
    base = Path(tempfile.mkdtemp(prefix="replproxy-compare-", dir=workdir))
    results: list[Result] = []
    baselines: dict[str, dict[str, float]] = {}
    try:
        for workload in workload_names:
            if on_step:
                on_step(f"{workload}: plain SQLite")
            baselines[workload] = _baseline(base, workload, scale, synchronous)
            seconds = baselines[workload]["seconds"] if not baselines[workload]["error"] else 0.0
            for fmt in format_names:
                if on_step:
                    on_step(f"{workload}: {fmt}")
                result = run_one(base, workload, fmt, scale, synchronous)
                result.baseline_seconds = seconds
                if result.status == "ok" and seconds > 0:
                    result.overhead = round(result.leader_seconds / seconds, 2)
                results.append(result)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {
        "command": "replproxy compare",
        "scale": scale,
        "synchronous": synchronous,
        "followers": FOLLOWERS,
        "sqlite": apsw.sqlite_lib_version(),
        "apsw": apsw.apsw_version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "workloads": {name: wl.describe(name) for name in workload_names},
        "formats": format_names,
        "baseline": baselines,
        "results": [asdict(r) for r in results],
    }


# -- output ---------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in report["results"]:
        if r["status"] == "refused":
            conv = "refused"
        elif r["status"] == "error":
            conv = "error"
        elif r["converged"]:
            conv = "yes"
        else:
            conv = "NO: " + ", ".join(r["differing_tables"] or [r["error"] or "?"])
        rows.append([r["workload"], r["format"], str(r["transactions"]), str(r["log_bytes"]),
                     f"{r['bytes_per_txn']:.0f}", _ms(r["leader_seconds"]), _ms(r["baseline_seconds"]),
                     "-" if r["overhead"] is None else f"{r['overhead']:.2f}x",
                     _ms(r["apply_seconds"]), conv])
    return rows


HEADERS = ["workload", "format", "txns", "log bytes", "bytes/txn", "leader ms", "plain ms",
           "overhead", "apply ms", "converged"]


def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "| " + " | ".join("---" if i < 2 or i == 9 else "---:" for i in range(len(HEADERS))) + " |"]
    for row in table_rows(report):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


_COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]


def _bar_chart(title: str, report: dict[str, Any], key: str, unit: str, per_group: bool = False) -> str:
    """Grouped horizontal bars: one group per workload, one bar per format, inline SVG.
    `per_group`: each workload's bars are scaled to its own largest value (sizes differ by orders
    of magnitude between workloads; the labels carry the values)."""
    formats = report["formats"]
    workloads = list(report["workloads"])
    by = {(r["workload"], r["format"]): r for r in report["results"]}
    values = [by[(w, f)][key] for w in workloads for f in formats
              if (w, f) in by and by[(w, f)][key] is not None]
    top = max(values, default=1) or 1
    bar_h, gap, left, width = 14, 12, 150, 420
    height = 40 + len(workloads) * (len(formats) * bar_h + gap) + 20 * ((len(formats) + 2) // 3)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<text x="4" y="16" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    y = 30
    for w in workloads:
        if per_group:
            top = max((by[(w, f)][key] for f in formats
                       if (w, f) in by and by[(w, f)][key] is not None), default=1) or 1
        out.append(f'<text x="4" y="{y + bar_h}" font-size="12">{html.escape(w)}</text>')
        for i, f in enumerate(formats):
            r = by.get((w, f))
            value = r[key] if r else None
            color = _COLORS[i % len(_COLORS)]
            if value is None:
                label = r["status"] if r else "-"
                out.append(f'<text x="{left + 2}" y="{y + bar_h - 3}" font-size="10" fill="#a00">'
                           f'{html.escape(label)}</text>')
            else:
                bw = max(1.0, width * value / top)
                shown = f"{value:,.0f}" if unit == "B" else f"{value:.2f}x"
                out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h - 2}" fill="{color}">'
                           f'<title>{html.escape(f)}: {shown}</title></rect>')
                out.append(f'<text x="{left + bw + 4:.1f}" y="{y + bar_h - 3}" font-size="10">{shown}</text>')
            y += bar_h
        y += gap
    for i, f in enumerate(formats):  # legend
        lx, ly = 4 + (i % 3) * 190, y + 12 + (i // 3) * 20
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{_COLORS[i % len(_COLORS)]}"/>'
                   f'<text x="{lx + 16}" y="{ly}" font-size="12">{html.escape(f)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def html_report(report: dict[str, Any]) -> str:
    rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                     for row in table_rows(report))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    described = "\n".join(f"<li><b>{html.escape(n)}</b>: {html.escape(d)}</li>"
                          for n, d in report["workloads"].items())
    refused = "\n".join(f"<li>{html.escape(r['workload'])} / {html.escape(r['format'])}: "
                        f"{html.escape(r['error'] or '')}</li>"
                        for r in report["results"] if r["status"] != "ok" or r["error"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>replproxy compare</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:nth-child(1), td:nth-child(2), td:nth-child(10) {{ text-align: left; }}
th {{ background: #eee; }}
</style></head><body>
<h1>replproxy compare</h1>
<p>scale {report['scale']}, PRAGMA synchronous={html.escape(report['synchronous'])}, {report['followers']}
followers, SQLite {html.escape(report['sqlite'])}, apsw {html.escape(report['apsw'])}, Python
{html.escape(report['python'])} ({html.escape(report['machine'])}). Leader time is the workload through
the proxy; overhead is leader time over the same workload on plain SQLite; apply is one follower
replaying the log from LSN 0; converged is <code>verify</code> after every follower caught up.</p>
{_bar_chart("Log bytes per workload and format (bars scaled per workload)", report, "log_bytes", "B",
            per_group=True)}
{_bar_chart("Leader time over plain SQLite (overhead)", report, "overhead", "x")}
<h2>Results</h2>
<table><tr>{head}</tr>
{rows}
</table>
<h2>Workloads</h2><ul>{described}</ul>
<h2>Refusals and errors</h2><ul>{refused or '<li>none</li>'}</ul>
</body></html>
"""


def write_json(report: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_html(report: dict[str, Any], path: str) -> None:
    Path(path).write_text(html_report(report), encoding="utf-8")


# -- the command ----------------------------------------------------------------------------------


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"replproxy compare (scale {report['scale']}, synchronous={report['synchronous']})")
    rows = table_rows(report)
    for i, name in enumerate(HEADERS):
        # numbers and names never wrap nor shrink; only the convergence column folds
        wide = max([len(name)] + [len(row[i]) for row in rows])
        table.add_column(name, justify="left" if i < 2 or i == 9 else "right", no_wrap=i != 9,
                         min_width=wide if i != 9 else 9, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console()
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(HEADERS)]
    needed = sum(widths) + 3 * len(widths) + 1  # cells, padding and borders
    if needed > console.width:  # a narrow terminal or a pipe: let long lines wrap rather than crop
        console = Console(width=needed)
    console.print(table, crop=False)


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


@click.command("compare")
@click.option("--workload", "workload_names", multiple=True, type=click.Choice(wl.names()),
              help="Workload to run (repeatable; default: all).")
@click.option("--format", "format_names", multiple=True, type=click.Choice(list(FORMATS)),
              help="Log format to compare (repeatable; default: all six).")
@click.option("--scale", default=1, show_default=True, type=click.IntRange(1),
              help="Workload size multiplier.")
@click.option("--synchronous", default="full", show_default=True,
              type=click.Choice(cfg.SYNCHRONOUS_LEVELS),
              help="PRAGMA synchronous of the leader and of the plain SQLite baseline.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report with charts.")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, exists=True),
              help="Where to create the temporary clusters (default: the system temporary directory).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
def compare_command(workload_names: tuple[str, ...], format_names: tuple[str, ...], scale: int,
                    synchronous: str, json_file: str | None, html_file: str | None,
                    workdir: str | None, quiet: bool) -> None:
    """Run sample workloads under every log format and compare log size, overhead, apply time and
    convergence against plain SQLite.

    Exit status 0 when every run completed (refusals and divergence are results, reported in the
    table), 1 when a workload failed with an unexpected error.
    """
    for option, path in (("--json", json_file), ("--html", html_file)):
        if path:
            problem = _unwritable(path)
            if problem:  # said now, not after a run that could take minutes
                click.echo(f"replproxy: {option} {path}: {problem}", err=True)
                sys.exit(2)
    workloads = list(workload_names) or wl.names()
    formats = list(format_names) or list(FORMATS)
    if quiet:
        report = run_compare(workloads, formats, scale, synchronous, workdir)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=True) as progress:
            task = progress.add_task("compare", total=len(workloads) * (len(formats) + 1))
            first = [True]

            def step(text: str) -> None:
                if not first[0]:
                    progress.advance(task)
                first[0] = False
                progress.update(task, description=text)

            report = run_compare(workloads, formats, scale, synchronous, workdir, on_step=step)
            progress.advance(task)
        _print_table(report)
    for path, write in ((json_file, write_json), (html_file, write_html)):
        if path:
            try:
                write(report, path)
            except OSError as exc:  # it became unwritable during the run: the table was shown
                click.echo(f"replproxy: cannot write {path}: {exc.strerror or exc}", err=True)
                sys.exit(1)
    if not quiet:
        for path in (json_file, html_file):
            if path:
                click.echo(f"wrote {path}")
    if (any(r["status"] == "error" for r in report["results"])
            or any(b["error"] for b in report["baseline"].values())):
        sys.exit(1)
