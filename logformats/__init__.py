"""Replication log formats: how changes are captured on the leader and replayed on followers.

Each format is registered here by name; the proxy only ever uses `get(name, **options)`. The
built-in formats are imported on their first `get`, not by `import logformats`: the statement and
mixed formats need sqlglot, which the row and trigger formats never load.
This package never imports `proxy`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from . import codec
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


# Built-in formats: name -> (module of this package, class), imported on first use.
_BUILTIN = {
    "row": ("row", "RowFormat"),
    "statement": ("statement", "StatementFormat"),
    "mixed": ("mixed", "MixedFormat"),
    "trigger": ("trigger", "TriggerFormat"),
}


def _lazy(module: str, cls: str) -> Callable[[dict[str, Any]], LogFormat]:
    """A factory that imports `logformats.<module>` when it is first called."""

    def factory(options: dict[str, Any]) -> LogFormat:
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(options)

    return factory


def _register_builtin() -> None:
    for name, (module, cls) in _BUILTIN.items():
        register(name, _lazy(module, cls))


_register_builtin()


# Modules that `import logformats` used to import on the way, as attributes of the package.
_SUBMODULES = frozenset({"determinism", "mixed", "row", "statement", "trigger"})


def __getattr__(name: str) -> Any:
    # `logformats.row`, `logformats.statement`...: imported when first named (PEP 562).
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "codec",
    "get",
    "is_internal_table",
    "names",
    "register",
]
