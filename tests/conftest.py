"""Fixtures: clusters built in tmp_path, closed (background replicators stopped) after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import proxy
from proxy.driver.connection import close_shared_clusters


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., proxy.Cluster]]:
    """Create clusters under tmp_path: make_cluster(name="c", followers=2, format="row", ...)."""
    made: list[proxy.Cluster] = []

    def make(name: str = "cluster", **options: Any) -> proxy.Cluster:
        cluster = proxy.Cluster.init(tmp_path / name, **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    close_shared_clusters(tmp_path)


@pytest.fixture
def cluster(make_cluster: Callable[..., proxy.Cluster]) -> proxy.Cluster:
    """A leader and two followers, row format, full row images."""
    return make_cluster()


@pytest.fixture
def conn(cluster: proxy.Cluster) -> Iterator[proxy.Connection]:
    """A DB-API connection to `cluster`."""
    connection = proxy.connect(cluster.directory, cluster=cluster)
    yield connection
    if not connection.closed:
        connection.close()
