"""distributed.toml: what makes a node directory part of a distributed cluster."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError
from ..jetstream.names import Names, check_name

if TYPE_CHECKING:
    from ..jetstream.bridge import Bridge

FILE_NAME = "distributed.toml"
DEFAULT_LEASE_TTL = 5.0


@dataclass(frozen=True)
class DistConfig:
    cluster: str
    node: str
    nats: tuple[str, ...]
    role: str = "follower"  # what this node last was: "leader" or "follower" (serve checks it)
    creds: str | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL

    @property
    def names(self) -> Names:
        return Names(self.cluster)

    def bridge(self, *, timeout: float = 5.0) -> Bridge:
        from ..jetstream.bridge import Bridge  # asyncio and nats load only when NATS is used

        return Bridge(self.nats, creds=self.creds, name=f"replproxy {self.cluster}/{self.node}", timeout=timeout)


def path_of(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / FILE_NAME


def is_distributed(directory: str | os.PathLike[str]) -> bool:
    return path_of(directory).is_file()


def read(directory: str | os.PathLike[str]) -> DistConfig:
    from ..jetstream.bridge import split_urls

    path = path_of(directory)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClusterError(f"{directory} is not a node of a distributed cluster (no {FILE_NAME})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    try:
        return DistConfig(cluster=check_name("cluster", str(data["cluster"])),
                          node=check_name("node", str(data["node"])),
                          nats=tuple(split_urls(data["nats"])), role=str(data.get("role", "follower")),
                          creds=data.get("creds"), lease_ttl=float(data.get("lease_ttl", DEFAULT_LEASE_TTL)))
    except KeyError as exc:
        raise ClusterError(f"{path} lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ClusterError(f"{path} is damaged: {exc}") from None


def write(directory: str | os.PathLike[str], config: DistConfig) -> None:
    def q(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["# A node of a distributed replproxy cluster (docs/distributed.md).",
             f"cluster = {q(config.cluster)}", f"node = {q(config.node)}",
             "nats = [" + ", ".join(q(u) for u in config.nats) + "]", f"role = {q(config.role)}",
             f"lease_ttl = {config.lease_ttl!r}"]
    if config.creds:
        lines.append(f"creds = {q(config.creds)}")
    path = path_of(directory)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_remote(target: str | os.PathLike[str]) -> bool:
    """A cluster URL, or a distributed follower's directory: a cluster reached over NATS (a
    distributed leader's directory opens its own file, as an embedded cluster's does)."""
    from ..remote.protocol import is_url

    return is_url(target) or (is_distributed(target) and read(target).role != "leader")


def connect_remote(target: str | os.PathLike[str], **options: Any) -> Any:
    """A DB-API connection over NATS (proxy/remote/client.py) to the cluster at a URL, or from a
    follower's directory: its reads on that follower first, its writes on the leader."""
    from ..remote.client import RemoteConnection, connect
    from ..remote.protocol import is_url

    if is_url(target):
        return connect(str(target), **options)
    config = read(target)
    options.setdefault("prefer", config.node)
    return RemoteConnection(list(config.nats), config.cluster, creds=config.creds, **options)
