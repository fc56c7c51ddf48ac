"""Replication log formats: how changes are captured on the leader and replayed on followers.

Each format is one module registered here by name; the proxy only ever uses `get(name, **options)`.
This package never imports `proxy`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import (
    INTERNAL_PREFIX,
    ApplyError,
    Capture,
    CaptureError,
    DecodeError,
    Event,
    LogFormat,
    NotInvertibleError,
    StatementInfo,
    UnsafeStatementError,
    is_internal_table,
)

_REGISTRY: dict[str, Callable[[dict[str, Any]], LogFormat]] = {}


def register(name: str, factory: Callable[[dict[str, Any]], LogFormat]) -> None:
    """Make a format available under `name`."""
    _REGISTRY[name] = factory


def get(name: str, **options: Any) -> LogFormat:
    """The format registered as `name`, configured with `options`."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown log format {name!r} (known: {known})") from None
    return factory(options)


def names() -> list[str]:
    """Registered format names, sorted."""
    return sorted(_REGISTRY)


def _register_builtin() -> None:
    from .mixed import MixedFormat
    from .row import RowFormat
    from .statement import StatementFormat
    from .trigger import TriggerFormat

    register("row", RowFormat)
    register("statement", StatementFormat)
    register("mixed", MixedFormat)
    register("trigger", TriggerFormat)


_register_builtin()

__all__ = [
    "INTERNAL_PREFIX",
    "ApplyError",
    "Capture",
    "CaptureError",
    "DecodeError",
    "Event",
    "LogFormat",
    "NotInvertibleError",
    "StatementInfo",
    "UnsafeStatementError",
    "get",
    "is_internal_table",
    "names",
    "register",
]
