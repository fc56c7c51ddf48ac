"""The background thread that keeps every follower of a cluster moving, in one process.

Each round it reads the source's last LSN, steps every applier, then runs the hooks its owner
registered (outside-writer polling before the round; health checks, retention and semi-sync
recovery after it). The hooks come from above (the cluster layer): this module knows none of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import apsw

from .applier import Applier
from .source import LogSource

log = logging.getLogger("replproxy.replication")


class Replicator(threading.Thread):
    """Background thread moving every follower of a cluster forward, in this process."""

    def __init__(self, make_source: Callable[[], LogSource],
                 make_appliers: Callable[[LogSource], list[Applier]], *, poll_interval: float = 0.01,
                 linger: float = 0.002, watcher: Watcher | None = None,
                 after_round: Callable[[int, dict[str, int]], None] | None = None):
        super().__init__(name="replproxy-replicator", daemon=True)
        # Called after every round with the leader's LSN and the followers' positions (modes.py:
        # semi-sync recovery, config changes, log retention); its errors never stop the thread.
        self._after_round = after_round
        # Applied LSN of every follower as of its last step (a lower bound), under `progress`:
        # committers waiting in sync modes watch it.
        self.applied: dict[str, int] = {}
        self._make_source = make_source
        self._make_appliers = make_appliers
        # Logs changes committed on the leader outside the proxy (trigger format); see outside.py.
        self._watcher = watcher
        self.poll_interval = poll_interval
        # After applying, wait this long before the next batch so that a busy leader's entries are
        # applied many per follower transaction instead of one by one (group apply): it bounds the
        # thread's share of the process at the cost of up to `linger` seconds of extra lag.
        self.linger = linger
        self._urgent = threading.Event()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self.progress = threading.Condition()
        # Why a follower (or "maintenance", "outside", "*") is failing, while it is: logged once
        # when it starts failing and once when it recovers, not on every round.
        self.errors: dict[str, str] = {}
        # A follower failing for another reason than an entry (its file damaged, replaced): its
        # applier is reopened this often, so a file re-seeded by another process is picked up.
        self.reopen_interval = 1.0
        self._reopen_at = 0.0
        self._reload = threading.Event()
        self._reloaded = threading.Event()

    def failed(self, key: str, message: str) -> None:
        """`key` fails with `message`: logged when it starts failing or the reason changes."""
        if self.errors.get(key) != message:
            log.warning("%s: %s", _label(key), message)
        self.errors[key] = message

    def recovered(self, key: str) -> None:
        """`key` works again: logged once if it was failing."""
        if self.errors.pop(key, None) is not None:
            log.warning("%s: working again", _label(key))

    def forget(self, keep: list[str]) -> None:
        """Drop the failures of followers no longer in `keep` (removed, stopped)."""
        for key in [k for k in self.errors if k not in _NOT_FOLLOWERS and k not in keep]:
            del self.errors[key]

    def notify(self, urgent: bool = False) -> None:
        """A commit happened in this process: look at the log now rather than at the next poll.
        `urgent`: someone waits for the followers; skip the linger."""
        if urgent:
            self._urgent.set()
        self._wake.set()

    def reload(self, wait: float = 0.0) -> None:
        """The cluster's nodes changed: reopen the followers. `wait`: seconds to wait until the
        thread has done it (from another thread), so nothing is applied from the old view after."""
        self._reloaded.clear()
        self._reload.set()
        self._wake.set()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self._reloaded.wait(wait)

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        source: LogSource | None = None
        appliers: list[Applier] = []
        while not self._halt.is_set():
            try:
                if source is None or self._reload.is_set():
                    self._reload.clear()
                    for applier in appliers:
                        applier.close()
                    if source is not None:
                        source.close()
                    source = self._make_source()
                    appliers = self._make_appliers(source)
                    self._reopen_at = time.monotonic() + self.reopen_interval
                    with self.progress:
                        self.applied = {a.name: a.applied_lsn for a in appliers}
                    self._reloaded.set()
                    if self._watcher is not None:
                        self._watcher.close()
                if self._watcher is not None:
                    self._poll_watcher()
                progressed = False
                leader_lsn = source.last_lsn()
                for applier in appliers:
                    if self._halt.is_set():
                        break
                    try:
                        if applier.step(leader_lsn):
                            progressed = True
                            with self.progress:
                                self.applied[applier.name] = applier.applied_lsn
                                self.progress.notify_all()
                        elif self.applied.get(applier.name) != applier.applied_lsn:
                            with self.progress:  # moved by another process
                                self.applied[applier.name] = applier.applied_lsn
                        self.recovered(applier.name)
                    except apsw.BusyError:
                        progressed = True  # someone else holds the follower; try again soon
                    except Exception as exc:  # keep the other followers moving
                        self.failed(applier.name, str(exc))
                names = {a.name for a in appliers}
                if any(k not in _NOT_FOLLOWERS and k not in names for k in self.errors) or any(
                        a.name in self.errors for a in appliers):
                    if time.monotonic() >= self._reopen_at:
                        self._reload.set()  # reopen the failing followers' files next round
                with self.progress:
                    self.progress.notify_all()
                if self._after_round is not None:
                    try:
                        self._after_round(leader_lsn, dict(self.applied))
                        self.recovered("maintenance")
                    except Exception as exc:  # keep the followers moving
                        self.failed("maintenance", str(exc))
                if not progressed:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
                elif self.linger and not self._urgent.is_set():
                    self._urgent.wait(self.linger)
                self._urgent.clear()
            except Exception as exc:
                self.failed("*", str(exc))
                source = None
                self._halt.wait(0.2)
        for applier in appliers:
            applier.close()
        if source is not None:
            source.close()
        if self._watcher is not None:
            self._watcher.close()

    def _poll_watcher(self) -> None:
        assert self._watcher is not None
        try:
            self._watcher.poll()
            self.recovered("outside")
        except Exception as exc:  # keep the followers moving
            self.failed("outside", str(exc))


_NOT_FOLLOWERS = frozenset({"maintenance", "outside", "*"})


def _label(key: str) -> str:
    return {"maintenance": "replicator maintenance", "outside": "outside writers",
            "*": "replicator"}.get(key, f"follower {key}")


class Watcher(Protocol):
    """Something the replicator thread polls on every round (outside.OutsideWatcher)."""

    def poll(self) -> int: ...

    def close(self) -> None: ...
