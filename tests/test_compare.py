"""`replproxy compare` at a tiny scale and two runs: every format x workload, convergence, medians with
their spread, JSON and HTML (to files and to standard output), exit code, and the HTML report rendered in
a real headless Chromium (tests/chromium.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import chromium
import pytest
from click.testing import CliRunner
from helpers import HANG, replproxy_command

from proxy.tools import compare, compare_report, workloads
from proxy.tools.cli import main as cli

# The naive statement mode (no_rewrite) diverges by design on nondeterministic functions (the
# workload made for it), and nowhere else: connection settings travel even in that mode.
EXPECTED_DIVERGENT = {("statement-no-rewrite", "nondeterministic")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    json_file, html_file = out / "report.json", out / "report.html"
    result = CliRunner().invoke(cli, ["compare", "--scale", "1", "--repeat", "2", "--synchronous", "normal",
                                      "--json", str(json_file), "--html", str(html_file)])
    return result, json_file, html_file


def test_exit_code_and_table(run):
    result, _, _ = run
    assert result.exit_code == 0, result.output
    assert "nondeterministic" in result.output and "statement-no-rewrite" in result.output


def test_json_holds_every_format_and_workload(run):
    _, json_file, _ = run
    report = json.loads(json_file.read_text())
    pairs = {(r["format"], r["workload"]) for r in report["results"]}
    assert pairs == {(f, w) for f in compare.FORMATS for w in workloads.names()}
    assert set(report["baseline"]) == set(workloads.names())
    for r in report["results"]:
        assert r["status"] == "ok", r
        assert r["transactions"] > 0 and r["log_bytes"] > 0
        assert r["leader_seconds"] > 0 and r["apply_seconds"] is not None and r["overhead"] > 0


def test_convergence(run):
    _, json_file, _ = run
    report = json.loads(json_file.read_text())
    for r in report["results"]:
        key = (r["format"], r["workload"])
        if key in EXPECTED_DIVERGENT:
            assert r["converged"] is False, r
            assert r["differing_tables"], r
        else:
            assert r["converged"] is True, r
    naive = next(r for r in report["results"]
                 if (r["format"], r["workload"]) == ("statement-no-rewrite", "nondeterministic"))
    assert naive["differing_tables"] == ["sessions"]


def test_html_report_has_charts(run):
    _, _, html_file = run
    text = html_file.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") >= 2
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text


def test_refused_statement_is_recorded_not_fatal(tmp_path, monkeypatch):
    def unsafe(conn, scale):
        cur = conn.cursor()
        cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        cur.executemany("INSERT INTO t VALUES (?, 0)", [(i,) for i in range(10)])
        conn.commit()
        cur.execute("UPDATE t SET v = random()")  # one value per row: unsafe for statements
        conn.commit()

    monkeypatch.setitem(workloads.WORKLOADS, "unsafe", unsafe)
    report = compare.run_compare(["unsafe"], ["statement", "mixed", "row-full"], synchronous="normal",
                                 workdir=str(tmp_path), repeat=2)
    by = {r["format"]: r for r in report["results"]}
    assert by["statement"]["status"] == "refused" and "random" in by["statement"]["error"]
    assert by["statement"]["converged"] is None and by["statement"]["overhead"] is None
    assert by["statement"]["runs"] == 1  # a refusal does not change: it is not repeated
    assert by["mixed"]["status"] == "ok" and by["mixed"]["converged"] is True and by["mixed"]["runs"] == 2
    assert by["row-full"]["converged"] is True
    assert "refused" in compare_report.markdown_table(report)
    assert "refused" in compare_report.html_report(report)


def test_unknown_workload_is_a_usage_error():
    result = CliRunner().invoke(cli, ["compare", "--workload", "nope"])
    assert result.exit_code == 2


def test_unexpected_workload_error_exits_1(tmp_path, monkeypatch):
    def broken(conn, scale):
        conn.cursor().execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        conn.commit()
        raise RuntimeError("workload bug")

    monkeypatch.setitem(workloads.WORKLOADS, "oltp", broken)
    json_file = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["compare", "--workload", "oltp", "--format", "row-full", "-q",
                                      "--synchronous", "normal", "--json", str(json_file)])
    assert result.exit_code == 1, result.output
    report = json.loads(json_file.read_text())
    assert report["results"][0]["status"] == "error" and "workload bug" in report["results"][0]["error"]
    assert "workload bug" in report["baseline"]["oltp"]["error"]


# -- repetitions: medians, spread, samples --------------------------------------------------------


def test_every_time_is_the_median_of_its_samples_with_the_spread(run):
    _, json_file, _ = run
    report = json.loads(json_file.read_text())
    assert report["repeat"] == 2
    for r in report["results"]:
        assert r["runs"] == 2 and len(r["converged_runs"]) == 2
        for key in ("leader_seconds", "baseline_seconds", "overhead", "added_us_per_txn", "apply_seconds",
                    "apply_us_per_txn", "log_bytes"):
            stat = r["stats"][key]
            assert len(stat["samples"]) == 2, (key, r)
            assert stat["min"] == min(stat["samples"]) and stat["max"] == max(stat["samples"])
            assert stat["min"] <= stat["q1"] <= stat["median"] <= stat["q3"] <= stat["max"]
        assert r["leader_seconds"] == r["stats"]["leader_seconds"]["median"]
        assert r["apply_seconds"] == r["stats"]["apply_seconds"]["median"]
        assert r["overhead"] == round(r["stats"]["overhead"]["median"], 2)
    for baseline in report["baseline"].values():
        assert len(baseline["stats"]["samples"]) == 2 and baseline["seconds"] == baseline["stats"]["median"]


def test_overhead_pairs_each_run_with_plain_sqlite_of_the_same_repetition():
    runs = [compare.Run(transactions=10, log_bytes=100, leader_seconds=s, apply_seconds=0.001, converged=True)
            for s in (0.020, 0.060, 0.030)]
    result = compare.aggregate("w", "row-full", runs, [0.010, 0.020, 0.030])
    assert result.stats["overhead"].samples == (2.0, 3.0, 1.0)  # not a ratio of medians (0.030 / 0.020)
    assert result.overhead == 2.0 and result.stats["overhead"].min == 1.0 and result.stats["overhead"].max == 3.0
    assert result.stats["added_us_per_txn"].samples == (1000.0, 4000.0, 0.0)
    assert result.stats["apply_us_per_txn"].median == 100.0
    assert result.leader_seconds == 0.030 and result.converged is True


def test_one_divergent_run_of_several_makes_the_pair_divergent():
    runs = [compare.Run(transactions=1, leader_seconds=0.01, apply_seconds=0.001, converged=c,
                        differing_tables=[] if c else ["t"]) for c in (True, False, True)]
    result = compare.aggregate("w", "statement", runs, [0.01, 0.01, 0.01])
    assert result.converged is False and result.converged_runs == [True, False, True]
    assert result.differing_tables == ["t"]
    row = compare_report.table_rows({"workloads": {"w": ""}, "baseline": {}, "repeat": 3,
                                     "results": [dataclasses.asdict(result)]})[0]
    assert row[-1] == "NO (1 of 3 runs): t"


def test_stat_quartiles_and_a_single_sample():
    stat = compare.Stat.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stat.median, stat.min, stat.max, stat.q1, stat.q3) == (3.0, 1.0, 5.0, 2.0, 4.0)
    assert stat.samples == (5.0, 1.0, 3.0, 2.0, 4.0)  # in the order of the runs
    one = compare.Stat.of([0.25])
    assert (one.median, one.min, one.max, one.q1, one.q3) == (0.25,) * 5
    assert compare.Stat.of([]) is None


def test_table_shows_medians_with_spread_plain_rows_and_thousands_separators(run):
    result, json_file, _ = run
    report = json.loads(json_file.read_text())
    rows = compare_report.table_rows(report)
    plain = [row for row in rows if row[1] == "plain SQLite"]
    assert len(plain) == len(workloads.names()) and all(row[6] == "1.00x" for row in plain)
    formatted = {(row[0], row[1]): row for row in rows}
    for r in report["results"]:
        row = formatted[(r["workload"], r["format"])]
        assert row[3] == f"{r['log_bytes']:,}"
        assert "±" in row[5] or r["stats"]["leader_seconds"]["min"] == r["stats"]["leader_seconds"]["max"]
    big = next(r for r in report["results"] if r["log_bytes"] >= 1000)
    assert "," in formatted[(big["workload"], big["format"])][3]
    assert "medians of 2 runs" in result.output and "±" in result.output and "plain SQLite" in result.output


# -- output to standard output --------------------------------------------------------------------


def _compare(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*replproxy_command(), "compare", "--workload", "oltp", "--format", "row-full",
                           "--format", "statement", "--repeat", "2", "--synchronous", "normal", *args],
                          capture_output=True, text=True, timeout=HANG)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_json_dash_writes_json_to_stdout_and_the_table_to_stderr(tmp_path):
    done = _compare("--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # nothing else on standard output
    assert [r["format"] for r in report["results"]] == ["row-full", "statement"]
    assert "plain SQLite" in done.stderr and "row-full" in done.stderr  # the table, for the human
    assert not (tmp_path / "-").exists()


def test_html_dash_writes_the_page_to_stdout(tmp_path):
    json_file = tmp_path / "r.json"
    done = _compare("-q", "--html", "-", "--json", str(json_file))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<!DOCTYPE html>") and done.stdout.rstrip().endswith("</html>")
    assert done.stderr == "" and json.loads(json_file.read_text())["repeat"] == 2


def test_json_and_html_cannot_both_go_to_stdout():
    result = CliRunner().invoke(cli, ["compare", "-q", "--json", "-", "--html", "-"])
    assert result.exit_code == 2 and "standard output" in result.output


# -- the HTML report ------------------------------------------------------------------------------


def test_html_marks_divergent_runs_and_draws_axes(run):
    _, _, html_file = run
    text = html_file.read_text()
    assert 'class="alert"><b>Divergent runs</b>' in text
    assert text.count('<tr class="diverged">') == 1
    assert text.count('<rect class="diverged"') == 3  # one band per chart
    assert text.count("✗ diverged") == 3
    assert text.count('class="reference"') == 1 and "1.0x = plain SQLite" in text
    assert text.count('class="tick"') >= 3 * 2 * 3  # three labelled ticks at least, above and below
    for figure in ("chart-log-bytes", "chart-overhead", "chart-apply"):
        assert f'<figure id="{figure}">' in text


@pytest.fixture(scope="module")
def browser():
    exe = chromium.find()
    if exe is None:
        pytest.skip("no Chromium binary found (chromium, chromium-browser or google-chrome on PATH, "
                    "/usr/bin/chromium, or $REPLPROXY_CHROMIUM): .ci/run installs Debian's chromium")
    return exe


# Palette colours of the first formats and the red band of a divergent row, as the screenshot has them.
_FORMAT_COLORS = [(0x4E, 0x79, 0xA7), (0xF2, 0x8E, 0x2B), (0x59, 0xA1, 0x4F), (0xB0, 0x7A, 0xA1)]
_DIVERGED_BAND = (0xFD, 0xE2, 0xE0)


def _pixels_near(image, color, tolerance: int = 10) -> int:
    return sum(count for count, c in image.getcolors(maxcolors=1 << 24)
               if all(abs(a - b) <= tolerance for a, b in zip(c, color, strict=True)))


def test_html_report_renders_in_headless_chromium(browser, run, tmp_path):
    """The page loads without a console message or script error; the three SVG charts are laid out
    one under the other, each under its caption, fully inside the 1280 px window, with every mark
    drawn, every label visible inside its chart and no two labels overlapping; the divergent run is
    on a red band; and a screenshot of the whole page shows the charts' colours where the DOM put them."""
    from PIL import Image

    _, json_file, html_file = run
    report = json.loads(json_file.read_text())
    measured, console = chromium.probe(browser, html_file, tmp_path)
    assert console == [] and measured["errors"] == []
    charts = {c["id"]: c for c in measured["charts"]}
    assert list(charts) == ["chart-log-bytes", "chart-overhead", "chart-apply"]
    pairs = len(report["results"])
    for name, c in charts.items():
        assert c["svg"], name
        assert c["box"]["width"] >= 900 and c["box"]["height"] >= pairs * 15, (name, c["box"])
        assert c["box"]["right"] <= measured["viewport"], (name, c["box"])
        assert c["caption"]["bottom"] <= c["box"]["top"] + 1, name  # the caption, then its chart
        assert c["marks"] == c["drawn"] == pairs, (name, c["marks"], c["drawn"])
        assert c["hidden"] == [] and c["outside"] == [] and c["overlaps"] == [], (name, c)
        assert c["texts"] > 2 * pairs and c["ticks"] >= 6, name  # names, formats, values; the axis
        assert c["diverged"] == 1, name
    assert charts["chart-overhead"]["reference"] == 1
    boxes = [c["box"] for c in charts.values()]
    assert all(a["bottom"] <= b["top"] for a, b in zip(boxes, boxes[1:], strict=False))  # stacked
    assert measured["scrollWidth"] <= measured["viewport"]  # no horizontal scrolling
    text = measured["text"]
    for needle in ["Divergent runs", "Results", "1.0x = plain SQLite", "plain SQLite", *workloads.names(),
                   *compare.FORMATS]:
        assert needle in text, needle
    assert measured["color"] != measured["background"]
    assert measured["divergedRowBackgrounds"] == ["rgb(253, 226, 224)"] * len(compare_report.HTML_HEADERS)

    png = tmp_path / "report.png"
    height = int(measured["height"]) + 10
    assert chromium.screenshot(browser, html_file, png, 1280, height) == []
    with Image.open(png) as shot:
        image = shot.convert("RGB")
    assert image.size == (1280, height)
    colors = image.getcolors(maxcolors=1 << 24)
    background = max(colors)[1]
    assert background == (255, 255, 255)
    assert len(colors) > 200  # text anti-aliasing, the palette: not a blank or flat page
    assert sum(n for n, c in colors if c != background) > 0.05 * 1280 * height
    for name, c in charts.items():  # the pixels where the DOM says each chart is
        b = c["box"]
        crop = image.crop((int(b["left"]), int(b["top"]), int(b["right"]), int(b["bottom"])))
        assert _pixels_near(crop, _DIVERGED_BAND) > 500, name
        for color in _FORMAT_COLORS:
            assert _pixels_near(crop, color) >= (200 if name == "chart-overhead" else 20), (name, color)
    print(f"screenshot: {png}")


def test_the_browser_check_sees_script_errors_and_bad_layout(browser, tmp_path):
    """The check above would fail on a page whose script fails, or whose chart labels overlap, stick
    out of the chart or are hidden: the probe reports each."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head></head><body><figure id="f"><figcaption>c</figcaption>'
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="60">'
        '<text x="10" y="20">first label</text><text x="14" y="22">second label</text>'
        '<text x="180" y="40">sticks out</text><text x="10" y="50" visibility="hidden">hidden</text></svg>'
        "</figure><script>undefinedFunction();</script></body></html>")
    measured, console = chromium.probe(browser, page, tmp_path)
    assert any("undefinedFunction" in m for m in console), console
    assert any("undefinedFunction" in m for m in measured["errors"])
    chart = measured["charts"][0]
    assert chart["overlaps"] == ["first label / second label"]
    assert chart["outside"] == ["sticks out"] and chart["hidden"] == ["hidden"]
