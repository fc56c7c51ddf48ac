"""Helpers shared by the tests: waiting on a condition, clocks a test moves, running code in the
background, the `replproxy` CLI and Python snippets as real subprocesses, and reading node files.

Nothing here sleeps to let time pass: a wait polls a condition (or a cluster's progress) and its
timeout only bounds a hang, so it is generous (`HANG`): a busy machine makes a test slower, never
failing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import apsw

import proxy
from proxy.store import node as store_node

T = TypeVar("T")

HANG = 60.0  # seconds: the bound of a wait that only guards against a hang


# -- waiting --------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], timeout: float = HANG, *, message: str = "",
               cluster: proxy.Cluster | None = None, poll: float = 0.005) -> T:
    """Return the first true value of `predicate()`; fail after `timeout` seconds. With `cluster`,
    sleep on its replicator's progress between two checks (woken as soon as a follower moves)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s: {message or predicate}")
        if cluster is not None:
            cluster.wait_progress(poll)
        else:
            time.sleep(poll)


def in_background(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """Run `fn(*args, **kwargs)` in a daemon thread (one stuck by a failed test never holds the
    interpreter at exit); `.result(timeout)` returns its value or raises its exception."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the test through the future
            future.set_exception(exc)

    threading.Thread(target=run, name=f"test-{getattr(fn, '__name__', 'background')}", daemon=True).start()
    return future


class ManualClock:
    """A clock that only moves when the test moves it: inject it as `cluster.clock` (timeouts) or
    `cluster.wall_clock` (ages). `reads` counts the calls, so a test can wait until the code under
    test is measuring time (it is waiting) before moving it."""

    def __init__(self, start: float | None = None):
        self._now = time.monotonic() if start is None else start
        self._reads = 0
        self._changed = threading.Condition()

    def __call__(self) -> float:
        with self._changed:
            self._reads += 1
            self._changed.notify_all()
            return self._now

    @property
    def reads(self) -> int:
        with self._changed:
            return self._reads

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._now += seconds

    def wait_for_reads(self, count: int, timeout: float = HANG) -> None:
        """Wait until the clock has been read `count` times in all."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._reads >= count, timeout):
                raise AssertionError(f"the clock was read {self._reads} times, not {count}, "
                                     f"within {timeout:g}s")


# -- subprocesses ---------------------------------------------------------------------------------


def replproxy_command() -> list[str]:
    """The installed `replproxy` executable, else the CLI module run by this interpreter."""
    exe = shutil.which("replproxy")
    return [exe] if exe else [sys.executable, "-m", "proxy.tools.cli"]


def run_replproxy(*args: Any, check: bool = True, timeout: float = HANG,
                  **options: Any) -> subprocess.CompletedProcess[str]:
    """`replproxy ARGS` as a real subprocess; never a traceback; check=True: exit code 0."""
    done = subprocess.run([*replproxy_command(), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **options)
    assert "Traceback" not in done.stderr, done.stderr
    if check:
        assert done.returncode == 0, f"replproxy {' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done


def python_command(code: str, *args: Any) -> list[str]:
    """The command line running the snippet `code` (dedented) with this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]


def run_python(code: str, *args: Any, check: bool = True, timeout: float = HANG) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a subprocess; check=True: it must exit 0."""
    done = subprocess.run(python_command(code, *args), capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"subprocess failed:\n{done.stdout}\n{done.stderr}"
    return done


def spawn_python(code: str, *args: Any, **popen: Any) -> subprocess.Popen[str]:
    """Start a Python snippet in a subprocess, text mode, stdin and stdout as pipes (unless given)."""
    popen.setdefault("stdin", subprocess.PIPE)
    popen.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(python_command(code, *args), text=True, **popen)


# -- node files -----------------------------------------------------------------------------------


def node_state(path: str | Path) -> store_node.NodeState:
    """A node's own state (applied LSN, paused, error), read from its file with a read-only apsw
    connection (never Python's sqlite3 in the same process as apsw)."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(10_000)
    try:
        return store_node.read_state(conn)
    finally:
        conn.close()


def applied(cluster: proxy.Cluster, node: str) -> int:
    """The LSN follower `node` has applied, read from its file at this moment."""
    return node_state(cluster.path_of(node)).applied_lsn


# -- hypothesis -----------------------------------------------------------------------------------

CI_EXAMPLES = 100  # max_examples of the `ci` hypothesis profile (tests/conftest.py)


def examples(under_ci: int) -> int:
    """A test's max_examples: `under_ci` under the `ci` profile, scaled like the selected profile's
    max_examples (REPLPROXY_HYPOTHESIS=thorough: ten times as many)."""
    from hypothesis import settings

    return max(1, round(under_ci * settings.default.max_examples / CI_EXAMPLES))


def suppressed(*checks: Any) -> list[Any]:
    """The health checks the selected profile suppresses, and `checks` (a test's own
    suppress_health_check replaces the profile's list instead of adding to it)."""
    from hypothesis import settings

    return [*settings.default.suppress_health_check, *checks]
