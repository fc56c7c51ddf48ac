"""`replproxy bench` reports every target, PASS or MISS, in the table that ends the run. Quick runs
(the fewest transactions, one repetition): what is checked is the report, never a timing."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import HANG, run_replproxy

FORMATS = ("row", "statement", "trigger", "mixed")
WRITES = ("single-row autocommit INSERT", "10-row transaction")


ROW = re.compile(r"(?P<label>.+?)\s+(?:\d+\.\d+x|-)\s+[<>]=[\d.]+x\s+(?P<result>\S+)\s")


def _targets(output: str) -> dict[str, str]:
    """The targets table at the end of the output: label (spaces squeezed) -> result."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("targets ("))
    rows = {}
    for line in lines[start + 3:]:  # title, header, rule
        if line.endswith("targets met"):
            break
        match = ROW.match(line)
        assert match, line
        rows[" ".join(match["label"].split())] = match["result"]
    return rows


def _quick_bench(tmp_path: Path, *options: str) -> str:
    done = run_replproxy("bench", "-n", 100, "--repetitions", 1, "--dir", tmp_path, *options, timeout=5 * HANG)
    assert "ERROR" not in done.stdout, done.stdout
    assert not list(tmp_path.iterdir()), "the benchmark left files behind"
    return done.stdout


def test_default_run_reports_every_target(tmp_path: Path) -> None:
    output = _quick_bench(tmp_path)
    rows = _targets(output)
    expected = [f"normal {fmt} {kind}, proxy / apsw" for kind in WRITES for fmt in FORMATS]
    expected += [f"full row {kind}, proxy / apsw" for kind in WRITES]
    expected += ["reads point SELECT by primary key, proxy / sqlite3", "reads 100-row range SELECT, proxy / sqlite3",
                 "full row follower apply rate / leader commit rate",
                 "normal row follower apply rate / leader commit rate"]
    assert sorted(rows) == sorted(expected), output
    assert set(rows.values()) <= {"PASS", "MISS"}, rows
    assert output.rstrip().endswith(f"of {len(expected)} targets met")
    # the sections kept beside the targets
    for section in ("same, follower replicator stopped", "log bytes per transaction", "replication modes",
                    "start-up cost"):
        assert section in output


def test_one_format_at_one_level(tmp_path: Path) -> None:
    output = _quick_bench(tmp_path, "--format", "trigger", "--synchronous", "normal")
    rows = _targets(output)
    assert sorted(rows) == sorted([
        "normal trigger single-row autocommit INSERT, proxy / apsw",
        "normal trigger 10-row transaction, proxy / apsw",
        "reads point SELECT by primary key, proxy / sqlite3", "reads 100-row range SELECT, proxy / sqlite3",
        "normal trigger follower apply rate / leader commit rate"]), output
    assert set(rows.values()) <= {"PASS", "MISS"}, rows
    # --format trigger adds the breakdown of a commit, with its own verdict
    breakdown = [line for line in output.splitlines() if "trigger: proxy, replicator running" in line]
    assert len(breakdown) == 1 and ("PASS" in breakdown[0] or "MISS" in breakdown[0]), output
