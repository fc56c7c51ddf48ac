"""Functions, aggregates, window functions and collations an application defines on a connection,
as with Python's sqlite3 (`create_function`, `create_aggregate`, `create_window_function`,
`create_collation`).

A session runs on several SQLite connections: each definition is made on the leader connection at
once (where the session's writes run and its statements are judged), and on every other connection
of the session (a follower it reads, a new leader after a failover) before it next serves a
statement (local.py applies them). Nothing else changes: the log formats see an application
function on the leader connection as they always did (the statement format refuses a statement
that calls one, since the followers' appliers do not have it; the row and trigger formats log what
it computed).

Errors raised by the application's code come out as sqlite3 words them, e.g. OperationalError
"user-defined function raised exception", the Python exception as its cause.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw


class UserCodeError(apsw.SQLError):
    """The application's function, aggregate or collation raised an exception (its __cause__)."""


def raised_by_user_code(exc: BaseException) -> bool:
    """True when `exc` (a translated error) comes from the application's own code: running it
    again on another node would run that code again."""
    seen = exc
    while seen is not None:
        if isinstance(seen, UserCodeError):
            return True
        seen = seen.__cause__  # type: ignore[assignment]
    return False


# What a function may return (sqlite3 refuses anything else as if the function had raised).
_RESULT_TYPES = (type(None), int, float, str, bytes, bytearray, memoryview)


def _result(value: Any, failure: str) -> Any:
    if not isinstance(value, _RESULT_TYPES):
        raise UserCodeError(failure) from TypeError(f"unsupported result type {type(value).__name__}")
    return value


def scalar(func: Callable[..., Any]) -> Callable[..., Any]:
    failure = "user-defined function raised exception"

    def call(*args: Any) -> Any:
        try:
            value = func(*args)
        except Exception as exc:
            raise UserCodeError(failure) from exc
        return _result(value, failure)

    return call


def collation(func: Callable[[str, str], Any]) -> Callable[[str, str], int]:
    def compare(a: str, b: str) -> int:
        try:
            result = func(a, b)
        except Exception as exc:
            raise UserCodeError("user-defined collation raised exception") from exc
        if not isinstance(result, int):
            return 0  # sqlite3 reads anything but an int as "equal"
        return (result > 0) - (result < 0)

    return compare


def _method(obj: Any, name: str, *args: Any) -> Any:
    failure = f"user-defined aggregate's '{name}' method raised error"
    try:
        value = getattr(obj, name)(*args)
    except Exception as exc:
        raise UserCodeError(failure) from exc
    return _result(value, failure)


class _Aggregate:
    """One group of an application aggregate: sqlite3's class protocol (step, finalize) on apsw's."""

    __slots__ = ("instance",)

    def __init__(self, cls: Callable[[], Any]):
        try:
            self.instance = cls()
        except Exception as exc:
            raise UserCodeError("user-defined aggregate's '__init__' method raised error") from exc

    def step(self, *args: Any) -> None:
        _method(self.instance, "step", *args)

    def final(self) -> Any:
        return _method(self.instance, "finalize")


class _Window(_Aggregate):
    """One window of an application window function: step, inverse, value, finalize."""

    __slots__ = ()

    def inverse(self, *args: Any) -> None:
        _method(self.instance, "inverse", *args)

    def value(self) -> Any:
        return _method(self.instance, "value")


def aggregate_factory(cls: Any, window: bool = False) -> Callable[[], Any]:
    kind = _Window if window else _Aggregate

    def start() -> Any:
        return kind(cls)

    return start


@dataclass(frozen=True)
class Definition:
    """One definition made by the application: `target` None removes the name."""

    kind: str  # "function", "aggregate", "window" or "collation"
    name: str
    narg: int
    target: Any
    deterministic: bool = False

    @property
    def key(self) -> tuple[str, str, int]:
        # Scalar, aggregate and window functions share SQLite's namespace (name, argument count).
        family = "collation" if self.kind == "collation" else "function"
        return family, self.name.lower(), self.narg

    def apply(self, conn: apsw.Connection) -> None:
        if self.kind == "function":
            conn.create_scalar_function(self.name, self.target, self.narg, deterministic=self.deterministic)
        elif self.kind == "aggregate":
            conn.create_aggregate_function(self.name, self.target, self.narg)
        elif self.kind == "window":
            conn.create_window_function(self.name, self.target, self.narg)
        else:
            conn.create_collation(self.name, self.target)


class Definitions:
    """A session's definitions, in the order made, and how far each connection has them."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, int], tuple[int, Definition]] = {}
        self.seq = 0  # bumped by every definition: a connection that has seen it has them all
        self._applied: weakref.WeakKeyDictionary[apsw.Connection, int] = weakref.WeakKeyDictionary()

    def define(self, definition: Definition, leader: apsw.Connection) -> None:
        """Make `definition` on the leader connection now (apsw.Error if SQLite refuses: then it is
        made nowhere), and on the session's other connections before they next serve it."""
        self.apply(leader)
        definition.apply(leader)
        self.seq += 1
        self._entries[definition.key] = (self.seq, definition)
        self._applied[leader] = self.seq

    def function_names(self) -> frozenset[str]:
        """The (lower-case) names of the functions, aggregates and window functions defined."""
        return frozenset(name for (family, name, _narg), (_seq, definition) in self._entries.items()
                         if family == "function" and definition.target is not None)

    def apply(self, conn: apsw.Connection) -> None:
        """Bring `conn` up to the session's definitions (apsw.Error when SQLite refuses to replace
        one while a statement of `conn` is active; the next call tries again)."""
        seen = self._applied.get(conn, 0)
        if seen == self.seq:
            return
        for seq, definition in sorted(self._entries.values(), key=lambda entry: entry[0]):
            if seq > seen:
                definition.apply(conn)
        self._applied[conn] = self.seq
