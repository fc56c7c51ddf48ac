"""`python -m proxy.cluster DIR [LEVEL]`: the replicator process an application's cluster starts
(store/child.py says why and how the two talk). Not a command for users: `replproxy serve` is."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from .facade import Cluster


def main(argv: list[str]) -> int:
    directory = argv[1]
    logging.basicConfig(level=argv[2] if len(argv) > 2 else "WARNING", stream=sys.stderr,
                        format="replproxy replicator %(process)d: %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the application's Ctrl-C is not for us
    out = sys.stdout.buffer
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock:
            try:
                out.write(json.dumps(message).encode() + b"\n")
                out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the application is gone: the end of our input follows

    cluster = Cluster(directory, replicate="thread")
    replicator = cluster.replicator
    assert replicator is not None
    done = threading.Event()

    def report() -> None:
        last = None
        while not done.is_set():
            with replicator.progress:
                replicator.progress.wait(0.5)
                state = {"applied": dict(replicator.applied), "errors": dict(replicator.errors)}
            if state != last:
                send(state)
                last = state

    threading.Thread(target=report, daemon=True, name="replproxy-reports").start()
    reloads = 0
    try:
        while True:
            data = os.read(0, 4096)
            if not data:
                break  # closed by the application, or it died
            for _ in range(data.count(b"r")):
                replicator.reload(wait=10.0)
                reloads += 1
                send({"reloaded": reloads})
            replicator.notify(urgent=b"u" in data)
    finally:
        done.set()
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
