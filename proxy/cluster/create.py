"""Creating a cluster: cluster.toml and one node file per node, optionally seeded from a database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import apsw

import logformats

from ..errors import ClusterError
from ..store import config as cfg
from ..store import node as store


def create_cluster(directory: str | os.PathLike[str], *, followers: int = 2, format: str = "row",
                   row_image: str = "full", from_db: str | os.PathLike[str] | None = None,
                   synchronous: str = "full", follower_synchronous: str = "normal",
                   options: dict[str, Any] | None = None, leader_name: str = "node1") -> cfg.ClusterConfig:
    """Create DIR/cluster.toml and one database file per node; refuse to touch an existing cluster.
    The leader is `leader_name`, the followers node2, node3..."""
    directory = Path(directory)
    if cfg.config_path(directory).exists():
        raise ClusterError(f"{directory} already holds a cluster ({cfg.config_path(directory)}); "
                           "refusing to overwrite it")
    if followers < 0:
        raise ClusterError("the number of followers cannot be negative")
    options = dict(options or {})
    reserved = {"format", "row_image", "synchronous", "follower_synchronous", *cfg.REPLICATION_KEYS} & set(options)
    if reserved:
        raise ClusterError(f"{', '.join(sorted(reserved))} cannot be given as a format option")
    try:  # unknown format or option values: fail before touching files
        log_format = logformats.get(format, row_image=row_image, **options)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    if row_image not in cfg.ROW_IMAGES:
        raise ClusterError(f"row image must be one of {', '.join(cfg.ROW_IMAGES)}")
    for level in (synchronous, follower_synchronous):
        if level not in cfg.SYNCHRONOUS_LEVELS:
            raise ClusterError(f"synchronous must be one of {', '.join(cfg.SYNCHRONOUS_LEVELS)}")
    names = [leader_name] + [f"node{i + 2}" for i in range(followers)]
    if len(set(names)) != len(names):
        raise ClusterError(f"the leader cannot be named {leader_name!r}: a follower has that name")
    nodes = tuple(
        cfg.NodeConfig(name=name, file=f"{name}.db", role="leader" if i == 0 else "follower")
        for i, name in enumerate(names)
    )
    for node in nodes:
        path = directory / node.file
        if path.exists():
            raise ClusterError(f"{path} already exists; refusing to overwrite it")
    source = None
    if from_db is not None:
        source_path = Path(from_db)
        if not source_path.is_file():
            raise ClusterError(f"cannot seed from {from_db}: no such file")
        source = _open_seed(source_path)
    directory.mkdir(parents=True, exist_ok=True)
    cluster_id = store.new_cluster_id()
    created: list[Path] = []
    try:
        for node in nodes:
            path = directory / node.file
            created.append(path)
            conn = store.open_node(path, synchronous=synchronous, name=node.name, create=True)
            try:
                if source is not None:
                    with conn.backup("main", source, "main") as backup:
                        backup.step()
                    conn.execute("PRAGMA journal_mode=wal").fetchall()
                store.install(conn, node_name=node.name, cluster_id=cluster_id)
                if node.role == "leader":
                    log_format.install(conn)  # capture tables and triggers (trigger format)
            finally:
                conn.close()
        config = cfg.ClusterConfig(format=format, row_image=row_image, synchronous=synchronous,
                                   follower_synchronous=follower_synchronous, nodes=nodes,
                                   options=options)
        cfg.write(directory, config)
    except BaseException:
        for path in created:
            store.remove_files(path)
        raise
    finally:
        if source is not None:
            source.close()
    return config


def _open_seed(path: Path) -> apsw.Connection:
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except apsw.Error as exc:
        raise ClusterError(f"cannot seed from {path}: {exc}") from None
    bad = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '\\_replproxy\\_%' ESCAPE '\\'")]
    if bad:
        conn.close()
        raise ClusterError(f"cannot seed from {path}: it is already a replproxy node ({bad[0]})")
    return conn
