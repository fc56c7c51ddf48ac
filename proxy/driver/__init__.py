"""The driver layer: PEP 249 (DB-API 2.0), the proxy as applications see it.

analyze.py classifies statements with SQLite; consistency.py holds sessions and levels;
connection.py the connection and its transactions, leader.py its leader side (fence, failover,
COMMIT with the log entry), routing.py its read routing, cursor.py the cursor; types.py the type objects.
surface.py holds the rest of Python's sqlite3 connection surface: functions.py (create_function and
the like), rows.py (row_factory, Row), copies.py (iterdump, backup, serialize), blob.py (blobopen).
"""

from __future__ import annotations

from .connection import (
    Connection,
    Cursor,
    apilevel,
    connect,
    paramstyle,
    sqlite_version,
    sqlite_version_info,
    threadsafety,
)
from .rows import Row
from .surface import LEGACY_TRANSACTION_CONTROL

__all__ = ["LEGACY_TRANSACTION_CONTROL", "Connection", "Cursor", "Row", "apilevel", "connect", "paramstyle",
           "sqlite_version", "sqlite_version_info", "threadsafety"]
