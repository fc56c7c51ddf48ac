"""The targets of `replproxy bench` and the table that ends every run: each target's ratio from this
run, PASS or MISS, and how much the per-repetition ratios moved."""

from __future__ import annotations

from dataclasses import dataclass

import logformats

from .common import Samples, verdict

# The report's order; formats registered later follow, without targets.
FORMATS = ("row", "statement", "trigger", "mixed")

# proxy / plain apsw, at most, by (PRAGMA synchronous, log format). At normal there is no fsync to
# hide the proxy's CPU; the statement-based and trigger captures write more per commit than row.
SINGLE = {("normal", "row"): 3.0, ("normal", "statement"): 3.0, ("normal", "trigger"): 4.0,
          ("normal", "mixed"): 4.0, ("full", "row"): 1.3}
MULTI = {**{("normal", fmt): 2.0 for fmt in FORMATS}, ("full", "row"): 1.3}
APPLY = 10.0  # follower apply rate / leader commit rate, at least
POINT_READ = 1.5  # proxy / sqlite3 on the follower's file, at most
RANGE_READ = 1.2


def formats() -> tuple[str, ...]:
    registered = logformats.names()
    return tuple(f for f in FORMATS if f in registered) + tuple(f for f in registered if f not in FORMATS)


def bound_text(bound: float | None, at_least: bool = False) -> str:
    if bound is None:
        return "-"
    return f"{'>=' if at_least else '<='}{bound:g}x"


@dataclass
class Outcome:
    """One target: its per-repetition ratios from this run and its bound."""

    label: str
    ratios: Samples
    bound: float
    at_least: bool = False

    @property
    def ratio(self) -> float:
        return self.ratios.median

    @property
    def result(self) -> str:
        return verdict(self.ratio, self.bound, self.at_least) if self.ratios.values else "ERROR"


def missing(label: str, bound: float, at_least: bool = False) -> Outcome:
    """A target whose measurement did not complete: listed anyway, as ERROR."""
    return Outcome(label, Samples(), bound, at_least)


def summary(outcomes: list[Outcome]) -> list[str]:
    """The targets table: every target of the run in one place."""
    width = max([46, *(len(o.label) for o in outcomes)])
    header = (f"{'target':{width}} {'ratio':>8} {'target':>7} {'result':>6} {'noise':>6} "
              f"{'per-repetition ratios':>22}")
    lines = ["", "targets (ratio: median of the per-repetition ratios of this run; noise: their (max - min) / "
             "median)", header, "-" * len(header)]
    for o in outcomes:
        values = o.ratios.values
        spread = f"{min(values):.2f}x to {max(values):.2f}x" if values else "-"
        ratio = f"{o.ratio:7.2f}x" if values else f"{'-':>8}"
        noise = f"{o.ratios.spread:5.0%}" if values else "-"
        lines.append(f"{o.label:{width}} {ratio} {bound_text(o.bound, o.at_least):>7} {o.result:>6} "
                     f"{noise:>6} {spread:>22}")
    met = sum(o.result == "PASS" for o in outcomes)
    lines.append(f"{met} of {len(outcomes)} targets met")
    return lines
