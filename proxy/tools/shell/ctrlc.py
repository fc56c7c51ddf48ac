"""Ctrl-C while a statement runs: sqlite3_interrupt from a watcher thread (the shell's terminal front end)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class CtrlC:
    """Ctrl-C while a statement runs asks SQLite to stop it (sqlite3_interrupt); it then fails with
    "interrupted" and the shell carries on.

    The main thread is inside SQLite then, where no Python signal handler can run. The C-level
    handler still writes the signal number to the wakeup fd, and a watcher thread reading it makes
    the call (SQLite allows it from any thread). A second Ctrl-C raises KeyboardInterrupt, for a
    wait during which no statement is running.
    """

    def __init__(self, interrupt: Callable[[], None]):
        self._interrupt = interrupt
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # set_wakeup_fd needs it
        self._armed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="replproxy-shell-ctrl-c", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return  # closed
            # Repeat until the statement is over: a read interrupted on a follower may be retried
            # on the leader by the driver.
            while signal.SIGINT in data and self._armed.is_set():
                self._interrupt()
                time.sleep(0.02)

    @contextmanager
    def armed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        pressed = 0

        def on_sigint(signum: int, frame: Any) -> None:
            nonlocal pressed
            pressed += 1
            if pressed > 1:
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._armed.set()
        try:
            yield
        finally:
            self._armed.clear()
            signal.set_wakeup_fd(previous_fd)
            signal.signal(signal.SIGINT, previous)

    def close(self) -> None:
        self._writer.close()
        self._thread.join(1.0)
        self._reader.close()
