"""The runnable examples of docs/consistency.md run, and show what the text says they show."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "consistency.md"


def _examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return [block for block in blocks if "cluster.close()" in block]


def _run(block: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(DOC), "exec"), {"__name__": "doc_example"})
    return out.getvalue()


def test_consistency_doc_has_its_two_anomalies() -> None:
    assert len(_examples()) == 2


def test_missing_comment_example_shows_read_your_writes_and_the_stale_read() -> None:
    output = _run(_examples()[0])
    assert re.search(r"^session:  1 comment\(s\), served by node1$", output, re.M), output
    assert re.search(r"^eventual: 0 comment\(s\), served by node[23]$", output, re.M), output


def test_time_backwards_example_goes_back_only_without_monotonic_reads() -> None:
    output = _run(_examples()[1])
    eventual = re.search(r"^eventual:  (.*)$", output, re.M)
    monotonic = re.search(r"^monotonic: (.*)$", output, re.M)
    assert eventual and monotonic, output
    seen_eventual = eval(eventual.group(1))  # noqa: S307 - our own printed list
    seen_monotonic = eval(monotonic.group(1))  # noqa: S307
    counts = [count for count, _node in seen_eventual]
    assert 0 in counts[counts.index(1):], f"eventual never went back in time: {seen_eventual}"
    counts = [count for count, _node in seen_monotonic]
    assert counts == sorted(counts) and counts[-1] == 1, f"monotonic went back: {seen_monotonic}"


if __name__ == "__main__":
    pytest.main([__file__])
