"""The driver layer: PEP 249 (DB-API 2.0), the proxy as applications see it.

analyze.py classifies statements with SQLite; consistency.py holds sessions and levels;
connection.py the connection (leader side, read routing) and its cursor; types.py the type objects.
"""

from __future__ import annotations

from .connection import Connection, Cursor, apilevel, connect, paramstyle, threadsafety

__all__ = ["Connection", "Cursor", "apilevel", "connect", "paramstyle", "threadsafety"]
