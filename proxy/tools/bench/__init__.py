"""`replproxy bench`: measured costs against plain SQLite in the same run (docs/performance.md).

- writes.py: the leader's commit cost per log format and the follower apply rate (the main table), and
  the run itself;
- reads.py: point and range reads through the driver against Python's sqlite3;
- targets.py: the targets and the summary table that ends every run;
- formats.py: the trigger format's breakdown and log bytes per transaction;
- modes.py: the cost of sync and semi-sync commits, and a new follower's catch-up rate;
- common.py: what they share.
"""

from __future__ import annotations

from .writes import run_bench

__all__ = ["run_bench"]
