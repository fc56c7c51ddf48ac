"""The embedded cluster's replicator in a process of its own, seen from the process that started it.

A replicator thread shares the interpreter lock with the application: every time the writer's
SQLite call returns it may wait for the thread's Python, and a commit at synchronous=normal cost
several times more with followers replicating than without. In a child process (`python -m
proxy.cluster DIR`, cluster/__main__.py) the followers' work runs beside the writer instead.

The two talk over pipes. To the child, one byte per event: `c` a commit (look at the log now),
`u` someone waits for the followers (skip the linger), `r` the nodes changed (reopen them). From
the child, one JSON line per change: the followers' positions and failures, and the reloads done.
Closing the child's input stops it, and so does the death of this process (end of file).

`ReplicatorProcess` has the interface of `Replicator` that the cluster uses: `applied`, `errors`,
`progress`, `notify`, `reload`, `stop`, `is_alive`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("replproxy.replication")

# How long after an unexpected exit the child is started again (at the next commit).
RESTART_AFTER = 1.0
# The replicator's linger (store/replicator.py): ordinary wake-ups closer together add nothing.
WAKE_EVERY = 0.002


class ReplicatorProcess:
    """Starts and talks to the replicator process of the cluster in `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.progress = threading.Condition()
        self.applied: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._reloads_asked = 0
        self._reloads_done = 0
        self._stopped = False
        self._restart_at = 0.0
        self._woken_at = 0.0

    def start(self) -> None:
        """Start the child (raises OSError when this process cannot start one)."""
        level = logging.getLevelName(logging.getLogger("replproxy").getEffectiveLevel())
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cluster", str(self.directory), str(level)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            # Its own session: a Ctrl-C meant for the application does not kill it mid-apply;
            # it ends when the application closes the cluster or dies (end of its input).
            start_new_session=True, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True,
                                        name="replproxy-replicator-reports")
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self.progress:
                if "applied" in message:
                    self.applied = {str(k): int(v) for k, v in message["applied"].items()}
                    self.errors = {str(k): str(v) for k, v in message["errors"].items()}
                if "reloaded" in message:
                    self._reloads_done = int(message["reloaded"])
                self.progress.notify_all()
        code = proc.wait()
        if not self._stopped:
            log.warning("the replicator process of %s exited (code %s); it is started again at the "
                        "next commit", self.directory, code)
            self._restart_at = time.monotonic() + RESTART_AFTER
        with self.progress:
            self.progress.notify_all()

    def is_alive(self) -> bool:
        return (self._proc is not None and self._proc.poll() is None
                and self._reader is not None and self._reader.is_alive())

    def _send(self, byte: bytes) -> None:
        proc = self._proc
        if proc is None or self._stopped:
            return
        if proc.poll() is not None:
            if time.monotonic() >= self._restart_at:
                self._restart_at = time.monotonic() + RESTART_AFTER
                try:
                    self.start()
                except OSError as exc:
                    log.warning("cannot start the replicator process again: %s", exc)
            return
        assert proc.stdin is not None
        try:
            os.write(proc.stdin.fileno(), byte)
        except BlockingIOError:
            pass  # the pipe is full of wake-ups the child has not read yet: it is awake
        except OSError:
            pass  # it just exited: restarted at the next call

    def notify(self, urgent: bool = False) -> None:
        """A commit happened (`urgent`: someone waits for the followers)."""
        if urgent:
            self._send(b"u")
            return
        # One wake-up per linger at most: after a round that applied something the child waits
        # that long anyway and then takes every entry committed meanwhile. A byte per commit woke
        # it per commit, and cost a busy writer a third more per commit on two CPUs.
        now = time.monotonic()
        if now - self._woken_at >= WAKE_EVERY:
            self._woken_at = now
            self._send(b"c")

    def reload(self, wait: float = 0.0) -> None:
        """The cluster's nodes changed: the child reopens its followers; `wait` seconds at most
        for it to have done so."""
        with self.progress:
            self._reloads_asked += 1
            asked = self._reloads_asked
        self._send(b"r")
        if wait:
            with self.progress:
                self.progress.wait_for(lambda: self._reloads_done >= asked or not self.is_alive(), wait)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        if proc.stdout is not None:
            proc.stdout.close()
