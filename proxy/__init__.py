"""replproxy: a SQL replication proxy over SQLite.

`connect(DIR)` gives a PEP 249 connection to a cluster; `Cluster(DIR)` manages one.
"""

from __future__ import annotations

from .cluster import Cluster, NodeStatus, create_cluster
from .cluster.verify import VerifyReport, verify
from .driver import Connection, Cursor, apilevel, connect, paramstyle, threadsafety
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
    "threadsafety",
    "verify",
]
