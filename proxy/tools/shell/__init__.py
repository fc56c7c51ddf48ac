"""`replproxy shell`: the interactive SQL shell (repl.py) and its dot-commands (dotcommands.py)."""

from __future__ import annotations

from .repl import run_shell

__all__ = ["run_shell"]
