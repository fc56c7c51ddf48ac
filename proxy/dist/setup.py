"""Creating a distributed cluster (`init --nats`) and adding a follower on another machine (`join`)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from ..cluster.create import create_cluster
from ..errors import ClusterError, TransportError
from ..jetstream.bridge import NoResponders, split_urls
from ..jetstream.kv import ClusterKV
from ..jetstream.names import EPOCHS_KEY, LEASE_KEY, SETTINGS_KEY, check_name, node_key
from ..jetstream.stream import LogStream
from ..store import config as cfg
from ..store import node as store
from . import local
from .shared import load_settings

log = logging.getLogger("replproxy.dist")

SNAPSHOT_TIMEOUT = 600.0
SERVE_START_WAIT = 30.0  # how long `join` asks again a lease holder whose `serve` has not subscribed yet
T = TypeVar("T")


def default_replicas(urls: list[str]) -> int:
    """R3 when three or more servers are named, else R1 (JetStream refuses more replicas than servers)."""
    return 3 if len(urls) >= 3 else 1


JETSTREAM_READY_TIMEOUT = 30.0


def wait_jetstream(bridge: Any, timeout: float = JETSTREAM_READY_TIMEOUT) -> None:
    """Wait until JetStream answers: a NATS cluster that just started elects its JetStream
    leader first (seconds), and every request fails until then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            bridge.call(bridge.js.account_info(), timeout=2.0, what="JetStream account info")
            return
        except TransportError as exc:
            if time.monotonic() >= deadline:
                raise TransportError(f"JetStream is not ready on {', '.join(bridge.urls)} after {timeout:g}s: "
                                     f"{exc}") from exc
            time.sleep(0.2)


def _retrying(run: Callable[[], T], timeout: float = JETSTREAM_READY_TIMEOUT) -> T:
    """Creating replicated streams and buckets can time out while a new NATS cluster settles;
    creating what exists returns it, so trying again is safe."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return run()
        except TransportError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def init_distributed(directory: str | os.PathLike[str], *, nats: str, cluster: str, name: str = "node1",
                     creds: str | None = None, replicas: int | None = None,
                     lease_ttl: float = local.DEFAULT_LEASE_TTL, **create: Any) -> cfg.ClusterConfig:
    """Create a cluster whose leader lives in `directory` and whose log, settings and lease live in
    NATS JetStream; refuse if a cluster of that name exists there."""
    check_name("cluster", cluster)
    check_name("node", name)
    urls = split_urls(nats)
    if lease_ttl <= 0:
        raise ClusterError("the lease TTL must be positive")
    directory = Path(directory)
    if local.is_distributed(directory):
        raise ClusterError(f"{directory} is already a node of a distributed cluster ({local.path_of(directory)})")
    config = local.DistConfig(cluster=cluster, node=name, nats=tuple(urls), role="leader", creds=creds,
                              lease_ttl=lease_ttl)
    with config.bridge() as bridge:
        names = config.names
        wait_jetstream(bridge)
        kv = ClusterKV(bridge, names)
        r = replicas or default_replicas(urls)
        _retrying(lambda: kv.ensure(replicas=r))
        if kv.get(SETTINGS_KEY) is not None:
            raise ClusterError(f"a cluster named {cluster!r} already exists on these NATS servers; choose "
                               "another --cluster name, or `replproxy join` it")
        created = create_cluster(directory, followers=0, leader_name=name, **create)
        try:
            with store.opened(directory / f"{name}.db", name=name) as conn:
                cluster_id = str(store.read_meta(conn, name)[store.CLUSTER_ID_KEY])
            _retrying(lambda: LogStream(bridge, names, cluster_id).ensure(replicas=r))
            settings = {"cluster_id": cluster_id, "config": cfg.dumps(created), "lease_ttl": lease_ttl,
                        "created_at": time.time(), "replicas": r}
            if _retrying(lambda: kv.create(SETTINGS_KEY, settings)) is None:
                found = _retrying(lambda: kv.get(SETTINGS_KEY))  # our own try that timed out, or another's?
                if found is None or not isinstance(found.value, dict) or found.value.get("cluster_id") != cluster_id:
                    raise ClusterError(f"a cluster named {cluster!r} was just created on these NATS servers by "
                                       "someone else")
            epochs = [{"epoch": 1, "leader": name, "base_lsn": 0, "at": time.time()}]
            _retrying(lambda: kv.create(EPOCHS_KEY, epochs))
        except BaseException:
            store.remove_files(directory / f"{name}.db")
            cfg.config_path(directory).unlink(missing_ok=True)
            raise
    local.write(directory, config)
    return created


def _request_snapshot(bridge: Any, kv: ClusterKV, config: local.DistConfig, cluster: str, name: str,
                      timeout: float) -> tuple[str, dict[str, Any]]:
    """Ask the lease holder for a snapshot. A holder whose `serve` is starting (or restarting
    within its lease) has not subscribed yet: asked again until `timeout`, as the request was not
    delivered."""
    start = time.monotonic()
    deadline, starting = start + timeout, start + min(timeout, SERVE_START_WAIT)
    while True:
        lease = kv.get(LEASE_KEY)
        if lease is None or not isinstance(lease.value, dict):
            raise ClusterError(f"cluster {cluster!r} has no leader serving (no lease): start `replproxy serve` "
                               "on the leader's directory first")
        leader = str(lease.value["node"])
        try:
            return leader, bridge.request(config.names.request_subject("snapshot", leader), {"node": name},
                                          timeout=max(0.1, deadline - time.monotonic()))
        except NoResponders:
            if time.monotonic() >= starting:
                raise
            time.sleep(0.1)


def join(directory: str | os.PathLike[str], *, nats: str, cluster: str, name: str,
         creds: str | None = None, timeout: float = SNAPSHOT_TIMEOUT) -> int:
    """Create follower `name` of `cluster` in `directory` from a snapshot the leader puts in the
    object store; return the LSN of the snapshot (the follower applies the stream from there)."""
    check_name("cluster", cluster)
    check_name("node", name)
    directory = Path(directory)
    path = directory / f"{name}.db"
    for existing in (local.path_of(directory), cfg.config_path(directory), path):
        if existing.exists():
            raise ClusterError(f"{existing} already exists; refusing to overwrite it")
    config = local.DistConfig(cluster=cluster, node=name, nats=tuple(split_urls(nats)), role="follower",
                              creds=creds)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        _settings, record = load_settings(kv, cluster)
        if kv.node(name) is not None:
            raise ClusterError(f"cluster {cluster!r} already has a node named {name!r}")
        leader, reply = _request_snapshot(bridge, kv, config, cluster, name, timeout)
        directory.mkdir(parents=True, exist_ok=True)
        stream = LogStream(bridge, config.names, str(record["cluster_id"]))

        async def download() -> None:
            objects = await stream.objects()
            with open(path, "wb") as handle:
                await objects.get(reply["object"], writeinto=handle)
            await objects.delete(reply["object"])

        try:
            bridge.call(download(), timeout=timeout, what=f"downloading snapshot {reply['object']}")
            with store.opened(path, name=name) as conn:
                state = store.read_state(conn)
                if state.applied_lsn != int(reply["lsn"]):
                    raise ClusterError(f"the snapshot from {leader} holds LSN {state.applied_lsn}, not the "
                                       f"{reply['lsn']} announced")
        except BaseException:
            store.remove_files(path)
            raise
    local.write(directory, config.__class__(**{**config.__dict__, "lease_ttl": float(record.get("lease_ttl", 5.0))}))
    with config.bridge() as bridge:  # known from now on: status and verify report it even before it serves
        ClusterKV(bridge, config.names).put(node_key(name), {
            "role": "follower", "lsn": int(reply["lsn"]), "state": "joined", "at": time.time(),
            "host": socket.gethostname(), "pid": None, "epoch": None, "committed_at": None, "published": None,
            "error": None})
    log.info("%s joined cluster %s from a snapshot of %s at LSN %s", name, cluster, leader, reply["lsn"])
    return int(reply["lsn"])


def publish_settings(directory: str | os.PathLike[str]) -> None:
    """After `replproxy config` on a distributed leader: its cluster.toml's settings become the
    cluster's (a node promoted later takes them), by compare-and-set."""
    config = local.read(directory)
    settings = cfg.read(directory)
    with config.bridge() as bridge:
        kv = ClusterKV(bridge, config.names)
        while True:
            found = kv.get(SETTINGS_KEY)
            if found is None or not isinstance(found.value, dict):
                raise ClusterError(f"cluster {config.cluster!r} has no settings on its NATS servers")
            value = dict(found.value)
            value["config"] = cfg.dumps(settings)
            if kv.update(SETTINGS_KEY, value, found.revision) is not None:
                return
