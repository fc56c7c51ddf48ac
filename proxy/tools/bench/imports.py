"""Start-up cost: `import proxy` and `replproxy --help` against a bare interpreter, in fresh processes."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 15


def _median_ms(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def report(runs: int = RUNS) -> list[str]:
    """Lines for the bench report: median wall time of each command over `runs` fresh processes."""
    python = sys.executable
    script = shutil.which("replproxy", path=str(Path(python).parent)) or shutil.which("replproxy")
    cli = [script] if script else [python, "-m", "proxy.tools.cli"]
    commands = [
        ("python -c pass (the interpreter alone)", [python, "-c", "pass"]),
        ("python -c 'import logformats'", [python, "-c", "import logformats"]),
        ("python -c 'import proxy'", [python, "-c", "import proxy"]),
        ("replproxy --help", [*cli, "--help"]),
        ("python -c 'logformats.get(\"statement\")' (loads sqlglot)",
         [python, "-c", "import logformats; logformats.get('statement')"]),
    ]
    base = None
    lines = ["", f"start-up cost (median of {runs} fresh processes; 'over python' subtracts the bare interpreter)"]
    for label, command in commands:
        ms = _median_ms(command, runs)
        base = ms if base is None else base
        extra = "" if ms is base else f"  ({ms - base:6.1f} ms over python)"
        lines.append(f"  {label:58} {ms:7.1f} ms{extra}")
    return lines
