"""replproxy: a SQL replication proxy over SQLite.

`connect(DIR)` gives a PEP 249 connection to a cluster; `Cluster(DIR)` manages one.
"""

from __future__ import annotations

import os
from typing import Any

from .cluster import Cluster, NodeStatus, create_cluster
from .cluster.verify import VerifyReport, verify
from .driver import (
    LEGACY_TRANSACTION_CONTROL,
    Connection,
    Cursor,
    Row,
    apilevel,
    paramstyle,
    sqlite_version,
    sqlite_version_info,
    threadsafety,
)
from .driver import connect as _connect_local
from .driver.consistency import LEVELS as CONSISTENCY_LEVELS
from .driver.consistency import POLICIES as STALE_POLICIES
from .driver.types import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)
from .errors import (
    ChecksumError,
    ClusterError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    ReadOnlyNodeError,
    ReplicationError,
    ReplicationTimeout,
    SyncReplicationTimeout,
    UnsafeStatementError,
    Warning,
)
from .store.log import LogEntry


def connect(target: str | os.PathLike[str], **options: Any) -> Any:
    """Open a DB-API connection to a cluster.

    `target` is a cluster directory (embedded, or a distributed node's directory), or the URL
    of a distributed cluster, `nats://HOST:PORT[,HOST:PORT]/CLUSTER`, from a machine with no node.
    On a distributed follower's directory, reads go to that follower first and writes to the
    leader, over NATS. Options: see `proxy.driver.connect` (directories) and
    `proxy.remote.client.connect` (URLs: also `timeout`, `idle_timeout`, `failover_wait`, `creds`).
    """
    from .dist import local
    from .remote.protocol import is_url

    if is_url(target) or (options.get("cluster") is None and local.is_remote(target)):
        return local.connect_remote(target, **options)
    return _connect_local(target, **options)


__version__ = "0.1.0"

__all__ = [
    "BINARY",
    "Binary",
    "CONSISTENCY_LEVELS",
    "ChecksumError",
    "Cluster",
    "ClusterError",
    "Connection",
    "Cursor",
    "DATETIME",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "LEGACY_TRANSACTION_CONTROL",
    "LogEntry",
    "NUMBER",
    "NodeStatus",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "ROWID",
    "ReadOnlyNodeError",
    "ReplicationError",
    "ReplicationTimeout",
    "Row",
    "STALE_POLICIES",
    "STRING",
    "SyncReplicationTimeout",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "UnsafeStatementError",
    "VerifyReport",
    "Warning",
    "apilevel",
    "connect",
    "create_cluster",
    "paramstyle",
    "sqlite_version",
    "sqlite_version_info",
    "threadsafety",
    "verify",
]
