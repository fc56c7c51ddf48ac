"""The cluster layer: operations over many nodes, and the `Cluster` facade that gathers them.

Modules import only downward: core (the open cluster: config, nodes, positions, the replicator)
→ operations (create, modes, outside, status, verify, snapshots, settings, retention, history)
→ failover → nodes, health → facade.
"""

from __future__ import annotations

from .create import create_cluster
from .facade import Cluster
from .status import NodeStatus

__all__ = ["Cluster", "NodeStatus", "create_cluster"]
