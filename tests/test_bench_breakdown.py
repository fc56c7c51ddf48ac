"""`replproxy bench --breakdown`: one commit's time split into SQLite's statements and the parts of
replproxy, against plain apsw measured in the same run."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.tools.bench import breakdown


@pytest.mark.parametrize("fmt", ["row", "trigger"])
def test_a_commit_is_split_into_sqlites_statements_and_replproxys_parts(tmp_path: Path, fmt: str) -> None:
    result = breakdown.measure(tmp_path, fmt, "normal", 200)
    assert result["plain_us"] > 0 and result["total_us"] > result["plain_us"]
    kinds = set(result["sqlite_us"])
    assert {"COMMIT", "INSERT INTO bench (the user's statement)", "INSERT INTO _replproxy_log (the log entry)"} <= kinds
    assert sum(result["sqlite_us"].values()) < result["total_us"] * 1.5  # ms ticks: an estimate, not above it
    shares = result["python_shares"]
    assert abs(sum(shares.values()) - 1.0) < 1e-6
    assert shares["capture (logformats)"] > 0 and shares["analysis (driver/analyze.py)"] > 0


def test_the_report_names_every_format(tmp_path: Path) -> None:
    lines = breakdown.report(tmp_path, "normal", 100, formats=("row", "statement"))
    text = "\n".join(lines)
    assert "row:" in text and "statement:" in text and "x plain apsw" in text and "Python" in text
