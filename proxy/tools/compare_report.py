"""The output of `replproxy compare`: the table (terminal and Markdown) and the HTML report.

Everything here reads the report dict that `compare.run_compare` returns (the JSON), so a saved
JSON file can be rendered again. Times are medians of the runs with their spread: the table shows
`median ±r%` (r: half the interquartile range, relative to the median: robust to the one slow first
run a cold process often makes), the HTML report the min-max range and every sample, and charts with
the interquartile range as a box and the min-max as whiskers. The charts are inline SVG: no script,
no network.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

HEADERS = ["workload", "format", "txns", "log bytes", "bytes/txn", "time ms", "overhead", "added µs/txn",
           "apply ms", "converged"]
_LEFT = {0, 1, 9}  # the columns aligned left: names and the convergence


# -- numbers --------------------------------------------------------------------------------------


def number(value: float, digits: int = 0) -> str:
    """With thousands separators: 1,234,567 / 1,234.5."""
    return f"{value:,.{digits}f}"


def _spread(stat: dict[str, Any] | None) -> str:
    """' ±r%': half the interquartile range relative to the median ('' for one run)."""
    if not stat or len(stat["samples"]) < 2 or not stat["median"]:
        return ""
    relative = (stat["q3"] - stat["q1"]) / 2 / abs(stat["median"]) * 100
    return " ±<1%" if relative < 0.5 else f" ±{relative:.0f}%"


def _stat(r: dict[str, Any], key: str) -> dict[str, Any] | None:
    return (r.get("stats") or {}).get(key)


def diverged(r: dict[str, Any]) -> bool:
    """A run whose followers did not converge on the leader (a result, not an error)."""
    return r["status"] == "ok" and r["converged"] is False


def _convergence(r: dict[str, Any]) -> str:
    if r["status"] in ("refused", "error"):
        return r["status"]
    if r["converged"]:
        return "yes"
    if r["converged"] is None:
        return "unknown: " + (r["error"] or "?")
    runs = r.get("converged_runs") or [False]
    bad = sum(1 for c in runs if c is False)
    some = f" ({bad} of {len(runs)} runs)" if bad < len(runs) else ""
    return f"NO{some}: " + ", ".join(r["differing_tables"] or [r["error"] or "?"])


def _groups(report: dict[str, Any]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for workload in report["workloads"]:
        yield workload, [r for r in report["results"] if r["workload"] == workload]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Per workload a `plain SQLite` row (the baseline, 1.00x), then one row per format."""
    rows = []
    for workload, results in _groups(report):
        plain = report["baseline"].get(workload)
        if plain is not None:
            time = "-" if plain["error"] else number(plain["seconds"] * 1000, 1) + _spread(plain.get("stats"))
            rows.append([workload, "plain SQLite", number(plain["transactions"]), "-", "-", time,
                         "error" if plain["error"] else "1.00x", "-", "-", "-"])
        for r in results:
            added, apply = _stat(r, "added_us_per_txn"), _stat(r, "apply_seconds")
            rows.append([
                r["workload"], r["format"], number(r["transactions"]), number(r["log_bytes"]),
                number(r["bytes_per_txn"]), number(r["leader_seconds"] * 1000, 1) + _spread(_stat(r, "leader_seconds")),
                "-" if r["overhead"] is None else f"{r['overhead']:.2f}x" + _spread(_stat(r, "overhead")),
                "-" if r["overhead"] is None or not added else number(added["median"]),
                "-" if r["apply_seconds"] is None else number(r["apply_seconds"] * 1000, 1) + _spread(apply),
                _convergence(r)])
    return rows


def legend(report: dict[str, Any]) -> str:
    runs = report.get("repeat", 1)
    what = (f"medians of {runs} runs; ±: half the interquartile range, in % of the median" if runs > 1
            else "one run: no spread (use --repeat)")
    return (f"{what}. overhead: time through the proxy over plain SQLite in the same run; added µs/txn: "
            "the time it adds per transaction; apply: one follower replaying the whole log.")


def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "| " + " | ".join("---" if i in _LEFT else "---:" for i in range(len(HEADERS))) + " |"]
    for row in table_rows(report):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def print_table(report: dict[str, Any], stderr: bool = False) -> None:
    """The rich table, on standard error when standard output carries the JSON or the HTML."""
    from rich.console import Console
    from rich.table import Table

    runs = report.get("repeat", 1)
    table = Table(title=f"replproxy compare (scale {report['scale']}, {runs} run{'s' if runs != 1 else ''}, "
                        f"synchronous={report['synchronous']})", caption=legend(report), caption_justify="left")
    rows = table_rows(report)
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(HEADERS)]
    for i, name in enumerate(HEADERS):
        # numbers and names never wrap nor shrink; only the convergence column folds
        table.add_column(name, justify="left" if i in _LEFT else "right", no_wrap=i != 9,
                         min_width=widths[i] if i != 9 else 9, overflow="fold")
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            table.add_section()
        previous = row[0]
        style = "bold red" if row[9].startswith("NO") else "dim" if row[1] == "plain SQLite" else None
        table.add_row(*row, style=style)
    console = Console(stderr=stderr)
    needed = sum(widths) + 3 * len(widths) + 1  # cells, padding and borders
    if needed > console.width:  # a narrow terminal or a pipe: let long lines wrap rather than crop
        console = Console(width=needed, stderr=stderr)
    console.print(table, crop=False)


# -- charts ---------------------------------------------------------------------------------------

# Colour-blind-safe, and no red: red marks divergence.
_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#9c755f", "#edc948"]
_DIVERGED, _DIVERGED_BAND = "#c0392b", "#fde2e0"


@dataclass(frozen=True)
class Point:
    """One bar or dot: the median, its interquartile box and min-max whisker (None: no value, `text`
    says why)."""

    median: float | None
    low: float | None
    high: float | None
    text: str
    diverged: bool = False
    q1: float | None = None
    q3: float | None = None


class _Axis:
    """From 0 (linear) or from a power of ten (log) to a round number at or above every value."""

    def __init__(self, values: list[float], log: bool, unit: Callable[[float], str], at_least: float = 0.0):
        self.log, self.unit = log, unit
        top = max([*values, at_least], default=1.0) or 1.0
        if log:
            low = min((v for v in values if v > 0), default=1.0)
            self.lo = 10.0 ** math.floor(math.log10(low))
            self.hi = max(10.0 ** math.ceil(math.log10(top)), self.lo * 10)
        else:
            self.step = _nice(top / 8)
            self.lo, self.hi = 0.0, self.step * math.ceil(top / self.step * 1.0001)

    def fraction(self, value: float) -> float:
        if self.log:
            value = max(value, self.lo)
            return (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (value - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[tuple[float, str | None]]:
        """(value, label); None: a minor gridline without a label."""
        if not self.log:
            count = round((self.hi - self.lo) / self.step)
            return [(self.lo + i * self.step, self.unit(self.lo + i * self.step)) for i in range(count + 1)]
        out: list[tuple[float, str | None]] = []
        few = self.hi / self.lo <= 100  # two decades or less: label the 2s and 5s too
        power = self.lo
        while power <= self.hi * 1.0001:
            out.append((power, self.unit(power)))
            out.extend((power * m, self.unit(power * m) if few else None) for m in (2, 5) if power * m < self.hi)
            power *= 10
        return out


def _nice(raw: float) -> float:
    power = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def chart(title: str, rows: list[tuple[str, str, Point]], formats: list[str], axis: _Axis,
          bars: bool = False, reference: tuple[float, str] | None = None) -> str:
    """Horizontal bars (from 0) or dots, grouped by workload, one row per format, with the
    interquartile box and the min-max whisker, an axis with ticks above and below, an optional
    dashed reference line, and divergent rows on a red band marked "diverged"."""
    name_w, fmt_w, plot_w, value_w = 130, 150, 520, 200
    row_h, gap, top = 16, 10, 34
    left, width = name_w + fmt_w, name_w + fmt_w + plot_w + value_w
    groups = len({w for w, _, _ in rows})
    bottom = top + len(rows) * row_h + max(groups - 1, 0) * gap
    height = bottom + 40

    def x(value: float) -> float:
        return left + plot_w * axis.fraction(value)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" '
           'font-family="system-ui, sans-serif" font-size="12">']
    for value, label in axis.ticks():
        tx = x(value)
        out.append(f'<line class="grid" x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{bottom + 2}" '
                   f'stroke="{"#ccc" if label else "#eee"}" stroke-width="1"/>')
        if label:
            for ty in (top - 8, bottom + 16):
                out.append(f'<text class="tick" x="{tx:.1f}" y="{ty}" text-anchor="middle" font-size="11" '
                           f'fill="#555">{html.escape(label)}</text>')
    out.append(f'<line x1="{left}" y1="{bottom + 2}" x2="{left + plot_w}" y2="{bottom + 2}" stroke="#555"/>')
    y, previous = top, None
    for workload, fmt, p in rows:
        if previous is not None and workload != previous:
            y += gap
        color = _COLORS[formats.index(fmt) % len(_COLORS)] if fmt in formats else "#888"
        mid = y + row_h / 2
        if p.diverged:
            out.append(f'<rect class="diverged" x="0" y="{y}" width="{width}" height="{row_h}" '
                       f'fill="{_DIVERGED_BAND}"/>')
        if workload != previous:
            out.append(f'<text x="4" y="{mid + 4:.1f}" font-weight="bold">{html.escape(workload)}</text>')
        out.append(f'<text x="{name_w}" y="{mid + 4:.1f}" fill="{_DIVERGED if p.diverged else "#222"}">'
                   f'{html.escape(fmt)}</text>')
        if p.median is None:
            out.append(f'<text x="{left + 4}" y="{mid + 4:.1f}" fill="#a00" font-style="italic">'
                       f'{html.escape(p.text)}</text>')
        else:
            stroke = f' stroke="{_DIVERGED}" stroke-width="2"' if p.diverged else ""
            tip = f"<title>{html.escape(f'{workload} / {fmt}: {p.text}')}</title>"
            start, end = x(p.median) - (0 if bars else 5), x(p.median) + (0 if bars else 5)
            spread: list[str] = []  # the whisker, then the interquartile box: above a bar, under a dot
            if p.low is not None and p.high is not None and p.high > p.low:
                lo, hi = x(p.low), x(p.high)
                spread.append(f'<path class="whisker" d="M{lo:.1f} {mid:.1f}H{hi:.1f}M{lo:.1f} {mid - 4:.1f}'
                              f'V{mid + 4:.1f}M{hi:.1f} {mid - 4:.1f}V{mid + 4:.1f}" stroke="#222" fill="none"/>')
                start, end = min(start, lo), max(end, hi)
            if p.q1 is not None and p.q3 is not None and p.q3 > p.q1:
                spread.append(f'<rect class="iqr" x="{x(p.q1):.1f}" y="{mid - 2.5:.1f}" '
                              f'width="{x(p.q3) - x(p.q1):.1f}" height="5" fill="#222" fill-opacity="0.55"/>')
            if bars:
                out.append(f'<rect class="mark" x="{left}" y="{y + 2}" width="{max(1.0, x(p.median) - left):.1f}" '
                           f'height="{row_h - 4}" fill="{color}"{stroke}>{tip}</rect>')
                out.extend(spread)
            else:
                out.append(f'<line x1="{left}" y1="{mid:.1f}" x2="{x(p.median):.1f}" y2="{mid:.1f}" '
                           'stroke="#ddd" stroke-dasharray="2 2"/>')
                out.extend(spread)
                out.append(f'<circle class="mark" cx="{x(p.median):.1f}" cy="{mid:.1f}" r="4.5" fill="{color}"'
                           f'{stroke}>{tip}</circle>')
            label = p.text + ("  ✗ diverged" if p.diverged else "")
            look = f'fill="{_DIVERGED}" font-weight="bold"' if p.diverged else 'fill="#333"'
            if end + 6 + len(label) * 7 > width and not bars:  # no room on the right: on the left
                look += ' text-anchor="end"'
                end = start - 12
            out.append(f'<text class="value" x="{end + 6:.1f}" y="{mid + 4:.1f}" font-size="11" {look}>'
                       f'{html.escape(label)}</text>')
        y += row_h
        previous = workload
    if reference is not None:
        rx = x(reference[0])
        out.append(f'<line class="reference" x1="{rx:.1f}" y1="{top - 4}" x2="{rx:.1f}" y2="{bottom + 2}" '
                   'stroke="#000" stroke-width="1.5" stroke-dasharray="5 3"/>')
        out.append(f'<text x="{rx + 4:.1f}" y="{height - 2}" font-size="11" font-weight="bold">'
                   f'{html.escape(reference[1])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _point(r: dict[str, Any], key: str, show: Callable[[float], str]) -> Point:
    stat = _stat(r, key)
    if r["status"] != "ok" or stat is None:
        return Point(None, None, None, r["status"] if r["status"] != "ok" else "-")
    median, low, high = stat["median"], stat["min"], stat["max"]
    text = show(median) + (f" ({show(low)}–{show(high)})" if high > low else "")
    return Point(median, low, high, text, diverged(r), stat["q1"], stat["q3"])


def _per_txn(r: dict[str, Any]) -> Point:
    if not r["transactions"]:
        return Point(None, None, None, "no entries")
    per = r["log_bytes"] / r["transactions"]
    return Point(per, None, None, _bytes(per) + ("" if r["status"] == "ok" else f" ({r['status']})"), diverged(r))


def _bytes(value: float) -> str:
    return f"{number(value)} B"


def _us(value: float) -> str:
    return f"{number(value, 0 if value >= 10 or value == int(value) else 1)} µs"


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def _times(value: float) -> str:
    return f"{value:g}x"


def _charts(report: dict[str, Any]) -> str:
    formats = report["formats"]
    results = [r for _, group in _groups(report) for r in group]
    runs = report.get("repeat", 1)
    whiskers = (f"the median of {runs} runs, the dark box their interquartile range and the whisker their "
                "min–max" if runs > 1 else "one run")

    def rows(key: str, show: Callable[[float], str]) -> list[tuple[str, str, Point]]:
        return [(r["workload"], r["format"], _point(r, key, show)) for r in results]

    sizes = [(r["workload"], r["format"], _per_txn(r)) for r in results]
    overhead = rows("overhead", _ratio)
    apply = rows("apply_us_per_txn", _us)

    def values(points: list[tuple[str, str, Point]]) -> list[float]:
        return [v for _, _, p in points for v in (p.median, p.high) if v is not None]

    return f"""
<figure id="chart-log-bytes">
<figcaption><b>Log bytes per transaction</b> (log scale). The log's payload bytes over its entries (one
per committed transaction), so workloads of different lengths compare; a log scale because entries
range from tens of bytes to tens of kilobytes.</figcaption>
{chart("Log bytes per transaction", sizes, formats, _Axis(values(sizes), True, _bytes))}
</figure>
<figure id="chart-overhead">
<figcaption><b>Leader time over plain SQLite (overhead)</b>. Each run's time through the proxy divided by
the same workload on plain SQLite in the same repetition; the bar is {whiskers}. A ratio has no unit,
so the workloads share one axis whatever their length; 1.0x (dashed) is plain SQLite. The time each
format adds per transaction, in microseconds, is in the table.</figcaption>
{chart("Leader time over plain SQLite", overhead, formats, _Axis(values(overhead), False, _times, 1.1),
       bars=True, reference=(1.0, "1.0x = plain SQLite"))}
</figure>
<figure id="chart-apply">
<figcaption><b>Follower apply time per transaction</b> (log scale). One follower replaying the whole log
from LSN 0, divided by the log's entries: the dot is {whiskers}. Per transaction because the
workloads commit from tens to hundreds of transactions; a log scale because an entry of a bulk
UPDATE holds hundreds of rows and one of <code>oltp</code> one.</figcaption>
{chart("Follower apply time per transaction", apply, formats, _Axis(values(apply), True, _us))}
</figure>"""


# -- the HTML report ------------------------------------------------------------------------------


def _cell(stat: dict[str, Any] | None, scale: float, digits: int, suffix: str = "") -> str:
    if not stat:
        return "-"
    main = f"{number(stat['median'] * scale, digits)}{suffix}"
    if len(stat["samples"]) < 2:
        return html.escape(main)
    samples = html.escape("samples, in run order: " + ", ".join(number(v * scale, digits) for v in stat["samples"]))
    if stat["max"] == stat["min"]:
        return f'<span title="{samples}">{html.escape(main)}</span>'
    rng = html.escape(f"{number(stat['min'] * scale, digits)}–{number(stat['max'] * scale, digits)}")
    return f'<span title="{samples}">{html.escape(main)}<br><span class="range">{rng}</span></span>'


HTML_HEADERS = ["workload", "format", "txns", "log bytes", "bytes/txn", "time ms", "overhead",
                 "added µs/txn", "apply ms", "apply µs/txn", "converged"]


def _html_rows(report: dict[str, Any]) -> str:
    rows = []
    for workload, results in _groups(report):
        plain = report["baseline"].get(workload)
        if plain is not None:
            cells = [workload, "plain SQLite", number(plain["transactions"]), "-", "-",
                     "error" if plain["error"] else _cell(plain.get("stats"), 1000, 1),
                     "error" if plain["error"] else "1.00x", "-", "-", "-", "-"]
            rows.append('<tr class="plain">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        for r in results:
            ok = r["status"] == "ok"
            cells = [html.escape(r["workload"]), html.escape(r["format"]), number(r["transactions"]),
                     _cell(_stat(r, "log_bytes"), 1, 0), number(r["bytes_per_txn"]),
                     _cell(_stat(r, "leader_seconds"), 1000, 1),
                     _cell(_stat(r, "overhead"), 1, 2, "x") if ok else "-",
                     _cell(_stat(r, "added_us_per_txn"), 1, 0) if ok else "-",
                     _cell(_stat(r, "apply_seconds"), 1000, 1), _cell(_stat(r, "apply_us_per_txn"), 1, 1),
                     html.escape(("✗ " if diverged(r) else "") + _convergence(r))]
            cls = "diverged" if diverged(r) else "" if ok and r["converged"] else "refused"
            rows.append(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


def _divergence_note(report: dict[str, Any]) -> str:
    bad = [r for r in report["results"] if diverged(r)]
    if not bad:
        return '<p class="ok">Every run that completed converged: every follower equals the leader.</p>'
    items = "\n".join(f"<li><b>{html.escape(r['format'])}</b> on <b>{html.escape(r['workload'])}</b>: "
                      f"{html.escape(_convergence(r))}</li>" for r in bad)
    return (f'<div class="alert"><b>Divergent runs</b> (followers that do not hold the leader\'s data, '
            f'by <code>verify</code>; marked in red below):<ul>{items}</ul></div>')


def html_report(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HTML_HEADERS)
    described = "\n".join(f"<li><b>{html.escape(n)}</b>: {html.escape(d)}</li>"
                          for n, d in report["workloads"].items())
    refused = "\n".join(f"<li>{html.escape(r['workload'])} / {html.escape(r['format'])}: "
                        f"{html.escape(r['error'] or '')}</li>"
                        for r in report["results"] if r["status"] != "ok" or r["error"])
    runs = report.get("repeat", 1)
    noise = (f"Every figure is the median of {runs} runs (interleaved: run 1 of everything, then run 2, ...) "
             "with the min–max range under it in the table (hover a cell for every sample), and in the "
             "charts the interquartile range as a dark box and the min–max as whiskers. Ranges that "
             "overlap do not tell two formats apart. The first run is often the slowest (a cold process: "
             "imports, caches); the median is not moved by it, the whisker shows it." if runs > 1 else
             "<b>One run</b> (<code>--repeat 1</code>): times of a few milliseconds move between runs; no "
             "spread is known.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>replproxy compare</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
figure {{ margin: 1.5em 0; }}
figcaption {{ max-width: 60em; margin-bottom: .5em; }}
table {{ border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; vertical-align: top; }}
td:nth-child(1), td:nth-child(2), td:nth-child(11) {{ text-align: left; }}
th {{ background: #eee; }}
th:nth-child(1), th:nth-child(2), th:nth-child(11) {{ text-align: left; }}
tr.plain td {{ background: #f6f6f6; color: #555; }}
tr.diverged td {{ background: {_DIVERGED_BAND}; color: {_DIVERGED}; font-weight: bold; }}
tr.refused td {{ color: #777; }}
.range {{ color: #777; font-size: 11px; }}
.alert {{ border: 2px solid {_DIVERGED}; background: {_DIVERGED_BAND}; padding: .5em 1em; }}
.ok {{ color: #276b2b; }}
</style></head><body>
<h1>replproxy compare</h1>
<p>scale {report['scale']}, {runs} run{"s" if runs != 1 else ""}, PRAGMA
synchronous={html.escape(report['synchronous'])}, {report['followers']} followers, SQLite
{html.escape(report['sqlite'])}, apsw {html.escape(report['apsw'])}, Python {html.escape(report['python'])}
({html.escape(report['machine'])}). Time is the workload through the proxy (the leader's time); overhead
is that time over the same workload on plain SQLite in the same run; apply is one follower replaying the
log from LSN 0; converged is <code>verify</code> after every follower caught up.</p>
<p>{noise}</p>
{_divergence_note(report)}
{_charts(report)}
<h2>Results</h2>
<table><thead><tr>{head}</tr></thead>
<tbody>
{_html_rows(report)}
</tbody></table>
<h2>Workloads</h2><ul>{described}</ul>
<h2>Refusals and errors</h2><ul>{refused or '<li>none</li>'}</ul>
</body></html>
"""
