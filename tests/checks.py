"""Checks shared by the format tests: every node identical, and queries run on each node's own file."""

from __future__ import annotations

from typing import Any

import proxy


def assert_identical(cluster: proxy.Cluster) -> proxy.VerifyReport:
    """`proxy.verify` says every node is identical; the differences are printed when not."""
    report = proxy.verify(cluster)
    differences = "\n".join(f"  {d.node} {d.object}: {d.detail}" for d in report.differences)
    assert report.identical, f"nodes differ at LSN {report.lsn}:\n{differences}"
    return report


def nodes(cluster: proxy.Cluster) -> list[str]:
    return [cluster.leader, *cluster.followers]


def query_all(cluster: proxy.Cluster, sql: str, params: Any = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Run a query on every node's own file, after the followers caught up."""
    cluster.wait_for_catchup(10)
    out = {}
    for name in nodes(cluster):
        conn = cluster.open_node(name)
        try:
            out[name] = conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    return out


def same_on_all(cluster: proxy.Cluster, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """The rows a query returns on the leader, asserting every follower file returns the same."""
    results = query_all(cluster, sql, params)
    for name in cluster.followers:
        assert results[name] == results[cluster.leader], f"{name} differs from the leader for {sql!r}"
    return results[cluster.leader]


def file_rows(path: Any, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Rows of `sql` read straight from a node file, bypassing the proxy (apsw, read-only: never
    Python's sqlite3 in the same process as apsw: two SQLite libraries in one process do not see
    each other's locks on the same file)."""
    import apsw

    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(10_000)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def node_rows(cluster: proxy.Cluster, node: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """`file_rows` on the file of `node`."""
    return file_rows(cluster.path_of(node), sql, params)


def file_meta(path: Any) -> dict[str, Any]:
    """A node file's `_replproxy_meta` as a dict."""
    return dict(file_rows(path, "SELECT key, value FROM _replproxy_meta"))
