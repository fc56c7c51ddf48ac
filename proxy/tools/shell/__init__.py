"""`replproxy shell`: the interactive SQL shell (repl.py), its dot-command registry (registry.py) and
the dot-commands (dotcommands.py, registered on import)."""

from __future__ import annotations

from . import dotcommands  # noqa: F401  (registers the dot-commands)
from .repl import run_shell

__all__ = ["run_shell"]
