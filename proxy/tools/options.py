"""What several commands share: option types (seconds, --param values) and logging options."""

from __future__ import annotations

import json
import logging
import math
import sys
from typing import Any

import click


class _Seconds(click.FloatRange):
    """A number of seconds: finite and not negative (nan and inf would wait forever or crash)."""

    name = "seconds"

    def __init__(self, positive: bool = False) -> None:
        super().__init__(min=0, min_open=positive)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


SECONDS = _Seconds()
POSITIVE_SECONDS = _Seconds(positive=True)


LOG_LEVELS = ("debug", "info", "warning", "error")


def log_options(default: str) -> Any:
    """-v/--verbose and --log-level for a long-running command (what it logs on stderr)."""
    def decorate(command: Any) -> Any:
        command = click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None,
                               help=f"What to log on standard error [default: {default}; -v info, -vv debug]. "
                                    "Loggers: docs/cli.md#logging.")(command)
        return click.option("-v", "--verbose", count=True, help="Log more: -v info, -vv debug.")(command)
    return decorate


def set_log_level(log_level: str | None, verbose: int, default: str, timestamps: bool = False) -> str:
    """Set the level of replproxy's loggers; timestamped lines for a long-running node."""
    level = log_level or ("debug" if verbose >= 2 else "info" if verbose == 1 else default)
    root = logging.getLogger("replproxy")
    root.setLevel(getattr(logging, level.upper()))
    pattern = ("%(asctime)s %(levelname)s %(name)s: %(message)s" if timestamps or level == "debug"
               else "replproxy: %(message)s")
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(pattern))
    return level


def parse_param(text: str) -> Any:
    """`--param` values: JSON numbers, null, true/false and "quoted strings" keep their type;
    `x'ABCD'` is a BLOB; anything else is text."""
    if len(text) >= 3 and text[:2] in ("x'", "X'") and text.endswith("'"):
        try:
            return bytes.fromhex(text[2:-1])
        except ValueError:
            pass
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, (int, float, str)) or value is None:
        return value
    if isinstance(value, bool):
        return int(value)
    return text


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes (it may be replaced after setup)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass
