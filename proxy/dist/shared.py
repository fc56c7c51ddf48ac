"""What the distributed modules share: the cluster's settings as stored in NATS, fingerprints as
JSON (verify across machines), and how often a node reports its position."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import apsw

from ..cluster import verify as verifying
from ..errors import ClusterError
from ..jetstream.kv import ClusterKV
from ..jetstream.names import SETTINGS_KEY
from ..store import config as cfg

HEARTBEAT = 0.5  # seconds between two position updates of a node (when it moved, else 4x that)


def load_settings(kv: ClusterKV, cluster: str) -> tuple[cfg.ClusterConfig, dict[str, Any]]:
    """The cluster's shared settings (cluster.toml's [cluster] table) and their record."""
    found = kv.get(SETTINGS_KEY)
    if found is None or not isinstance(found.value, dict):
        raise ClusterError(f"no cluster named {cluster!r} on these NATS servers (no settings in bucket "
                           f"{kv.names.bucket}): create it with `replproxy init DIR --nats URL --cluster {cluster}`")
    return cfg.loads(str(found.value["config"]), source=f"the settings of cluster {cluster}"), found.value


def fingerprint_json(conn: apsw.Connection) -> dict[str, Any]:
    return asdict(verifying.fingerprint(conn))


def fingerprint_from(data: dict[str, Any]) -> verifying.Fingerprint:
    return verifying.Fingerprint(
        schema=[tuple(r) for r in data["schema"]], pragmas=dict(data["pragmas"]),
        sequence=[tuple(r) for r in data["sequence"]],
        tables={k: (int(v[0]), str(v[1])) for k, v in data["tables"].items()})
