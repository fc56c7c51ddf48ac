"""`replproxy compare` at a tiny scale: every format x workload, convergence, JSON, HTML, exit code."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from proxy.tools import compare, workloads
from proxy.tools.cli import main as cli

# The naive statement mode (no_rewrite) diverges by design on nondeterministic functions (the
# workload made for it), and nowhere else: connection settings travel even in that mode.
EXPECTED_DIVERGENT = {("statement-no-rewrite", "nondeterministic")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    json_file, html_file = out / "report.json", out / "report.html"
    result = CliRunner().invoke(cli, ["compare", "--scale", "1", "--synchronous", "normal",
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
                                 workdir=str(tmp_path))
    by = {r["format"]: r for r in report["results"]}
    assert by["statement"]["status"] == "refused" and "random" in by["statement"]["error"]
    assert by["statement"]["converged"] is None
    assert by["mixed"]["status"] == "ok" and by["mixed"]["converged"] is True
    assert by["row-full"]["converged"] is True
    assert "refused" in compare.markdown_table(report)


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
