"""`replproxy shell`: the interactive SQL shell (repl.py), its dot-command registry (registry.py) and
the dot-commands, registered on import: the cluster's (dotcommands.py) and the sqlite3 shell's
(sqlitecommands.py, with csvimport.py and dump.py)."""

from __future__ import annotations

from . import dotcommands, sqlitecommands  # noqa: F401  (register the dot-commands)
from .repl import run_shell

__all__ = ["run_shell"]
