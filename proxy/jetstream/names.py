"""Where a distributed cluster lives in NATS: one stream, two key-value buckets, one object store."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ClusterError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name or ""):
        raise ClusterError(f"invalid {kind} name {name!r}: use 1 to 64 letters, digits, '_' or '-' "
                           "(it names NATS streams, buckets and subjects)")
    return name


@dataclass(frozen=True)
class Names:
    """The NATS names of cluster `cluster`."""

    cluster: str

    def __post_init__(self) -> None:
        check_name("cluster", self.cluster)

    @property
    def stream(self) -> str:
        return f"REPLPROXY_{self.cluster}"

    @property
    def log_subject(self) -> str:
        return f"replproxy.{self.cluster}.log"

    @property
    def bucket(self) -> str:
        """Settings, epoch history and every node's position."""
        return f"replproxy_{self.cluster}"

    @property
    def lease_bucket(self) -> str:
        return f"replproxy_{self.cluster}_lease"

    @property
    def objects(self) -> str:
        """Entries over the message limit, and snapshots for new followers."""
        return f"replproxy_{self.cluster}"

    def request_subject(self, what: str, node: str | None = None) -> str:
        """Requests served by `replproxy serve`: to one node, or to every node (`node` None)."""
        return f"replproxy.{self.cluster}.{what}" + (f".{node}" if node else "")


SETTINGS_KEY = "settings"
EPOCHS_KEY = "epochs"
LEASE_KEY = "leader"


def node_key(name: str) -> str:
    return f"node.{name}"
