"""`cluster.toml`: the cluster's settings and its nodes, read with tomllib, written atomically."""

from __future__ import annotations

import fcntl
import os
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ClusterError

CONFIG_NAME = "cluster.toml"
SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")
ROW_IMAGES = ("full", "minimal")
MODES = ("async", "sync", "semi-sync")
FOLLOWER_ROLES = ("async", "sync")
# Replication settings kept in [cluster] beside the format's own options (see docs/replication.md).
REPLICATION_KEYS = ("mode", "semi_sync_k", "sync_timeout", "retain_min_entries", "retain_max_bytes",
                    "retain_max_age", "auto_resync", "auto_failover", "failover_timeout",
                    "failover_cooldown", "failover_key_gap")


@dataclass(frozen=True)
class NodeConfig:
    """One node: its name, its database file (relative to the cluster directory) and its role."""

    name: str
    file: str
    role: str  # "leader" or "follower"
    # A follower's replication role: "sync" followers are waited for in `sync` mode.
    replication: str = "async"
    # When `replproxy stop-node` stopped it (wall-clock seconds): a stopped node is unreachable to
    # every process, as if it had crashed, until `start-node`.
    stopped_at: float | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None


@dataclass(frozen=True)
class EpochRecord:
    """One failover: from `epoch` on, `leader` writes; it had applied `base_lsn` when promoted, so
    a node that was at an earlier epoch and holds entries after `base_lsn` has diverged."""

    epoch: int
    leader: str
    base_lsn: int
    at: float


@dataclass(frozen=True)
class ClusterConfig:
    """Everything cluster.toml holds."""

    format: str = "row"
    row_image: str = "full"
    synchronous: str = "full"
    # Followers replay from their own position after a power loss, so they need not fsync each
    # apply; synchronous modes (acknowledged = applied on a follower) raise this to "full".
    follower_synchronous: str = "normal"
    nodes: tuple[NodeConfig, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    # Replication mode: "async" (commit returns once the leader committed), "sync" (once every
    # sync follower applied it) or "semi-sync" (once `semi_sync_k` followers applied it).
    mode: str = "async"
    semi_sync_k: int = 1
    sync_timeout: float = 10.0  # seconds a commit waits for acknowledgements
    # Log retention: entries are kept until every follower applied them, and the last
    # `retain_min_entries` are kept anyway (history for `replproxy log`, a follower briefly away),
    # but the log never holds more than `retain_max_bytes` payload bytes nor entries older than
    # `retain_max_age` seconds (0: no limit). The last entry always stays: LSNs are never reused.
    retain_min_entries: int = 100_000
    retain_max_bytes: int = 64 * 1024 * 1024
    retain_max_age: float = 0.0
    # Re-seed a follower left behind by retention from a new snapshot without being asked.
    auto_resync: bool = False
    # Failover (docs/failover.md): every process with a replicator probes the leader; after
    # `failover_timeout` seconds without a good probe it promotes the most up-to-date follower,
    # but not within `failover_cooldown` seconds of the previous failover (anti-flapping). A
    # promotion that could not read the old leader moves every AUTOINCREMENT counter up by
    # `failover_key_gap`, past keys the old leader may have handed out in writes never replicated.
    auto_failover: bool = True
    failover_timeout: float = 5.0
    failover_cooldown: float = 60.0
    failover_key_gap: int = 1_000_000
    epochs: tuple[EpochRecord, ...] = ()

    @property
    def leader(self) -> NodeConfig:
        for node in self.nodes:
            if node.role == "leader":
                return node
        raise ClusterError("cluster.toml names no leader node")

    @property
    def followers(self) -> tuple[NodeConfig, ...]:
        return tuple(node for node in self.nodes if node.role == "follower")

    @property
    def running_followers(self) -> tuple[NodeConfig, ...]:
        return tuple(node for node in self.followers if not node.stopped)

    @property
    def epoch(self) -> int:
        """The epoch of the current leader as cluster.toml records it (1 before any failover)."""
        return self.epochs[-1].epoch if self.epochs else 1

    @property
    def last_failover_at(self) -> float | None:
        return self.epochs[-1].at if self.epochs else None

    def diverged(self, lsn: int, epoch: int) -> bool:
        """Whether a node whose last entry is `lsn`, written in `epoch`, holds entries that are not
        in the current history: epoch `epoch`'s leader was replaced at a lower LSN."""
        end = self.fork_lsn(epoch)
        return end is not None and lsn > end

    def fork_lsn(self, node_epoch: int) -> int | None:
        """For a node last in epoch `node_epoch`: the LSN after which its entries are not in the
        current history, or None when it missed no failover. Every later failover may have
        promoted a node that was further behind, so it is the lowest base of the later epochs."""
        bases = [record.base_lsn for record in self.epochs if record.epoch > node_epoch]
        return min(bases) if bases else None

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"no node named {name!r} in this cluster (nodes: {known})")

    def synchronous_of(self, name: str) -> str:
        """PRAGMA synchronous for a node, by its role."""
        return self.synchronous if self.node(name).role == "leader" else self.follower_synchronous

    @property
    def sync_followers(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.followers if n.replication == "sync")

    def acknowledging(self, name: str) -> bool:
        """Whether a follower's applies can acknowledge commits in the current mode: then it
        applies with synchronous=full, since an acknowledgement must survive a power loss."""
        if self.mode == "semi-sync":
            return True
        return self.mode == "sync" and self.node(name).replication == "sync"

    def applier_synchronous(self, name: str) -> str:
        """PRAGMA synchronous of the applier of follower `name`."""
        if self.acknowledging(name) and SYNCHRONOUS_LEVELS.index(self.follower_synchronous) < 2:
            return "full"
        return self.follower_synchronous

    def format_options(self) -> dict[str, Any]:
        return {"row_image": self.row_image, **self.options}

    def with_nodes(self, nodes: tuple[NodeConfig, ...]) -> ClusterConfig:
        return replace(self, nodes=nodes)


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot write {type(value).__name__} to cluster.toml")


def dumps(config: ClusterConfig) -> str:
    lines = [
        "# replproxy cluster: edit with `replproxy` commands while clients may be running.",
        "[cluster]",
        f"format = {_quote(config.format)}",
        f"row_image = {_quote(config.row_image)}",
        f"synchronous = {_quote(config.synchronous)}",
        f"follower_synchronous = {_quote(config.follower_synchronous)}",
    ]
    for key in REPLICATION_KEYS:
        lines.append(f"{key} = {_toml_value(getattr(config, key))}")
    for key in sorted(config.options):
        lines.append(f"{key} = {_toml_value(config.options[key])}")
    for node in config.nodes:
        lines += ["", "[[node]]", f"name = {_quote(node.name)}", f"file = {_quote(node.file)}",
                  f"role = {_quote(node.role)}"]
        if node.role == "follower":
            lines.append(f"replication = {_quote(node.replication)}")
        if node.stopped_at is not None:
            lines.append(f"stopped_at = {node.stopped_at!r}")
    for record in config.epochs:
        lines += ["", "[[epoch]]", f"epoch = {record.epoch}", f"leader = {_quote(record.leader)}",
                  f"base_lsn = {record.base_lsn}", f"at = {record.at!r}"]
    return "\n".join(lines) + "\n"


def loads(text: str, source: str = CONFIG_NAME) -> ClusterConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterError(f"{source} is damaged: {exc}") from None
    cluster = data.get("cluster")
    if not isinstance(cluster, dict):
        raise ClusterError(f"{source} is damaged: it has no [cluster] table")
    nodes = []
    for index, raw in enumerate(data.get("node", [])):
        try:
            stopped = raw.get("stopped_at")
            nodes.append(NodeConfig(name=str(raw["name"]), file=str(raw["file"]), role=str(raw["role"]),
                                    replication=str(raw.get("replication", "async")),
                                    stopped_at=None if stopped is None else float(stopped)))
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ClusterError(f"{source} is damaged: node #{index + 1} needs name, file and role") from None
    epochs = []
    for index, raw in enumerate(data.get("epoch", [])):
        try:
            epochs.append(EpochRecord(epoch=int(raw["epoch"]), leader=str(raw["leader"]),
                                      base_lsn=int(raw["base_lsn"]), at=float(raw["at"])))
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ClusterError(f"{source} is damaged: epoch record #{index + 1} needs epoch, leader, "
                               "base_lsn and at") from None
    if not nodes:
        raise ClusterError(f"{source} is damaged: it lists no [[node]]")
    roles = [n.role for n in nodes]
    if roles.count("leader") != 1 or any(r not in ("leader", "follower") for r in roles):
        raise ClusterError(f"{source} is damaged: it needs exactly one leader, the other nodes followers")
    if len({n.name for n in nodes}) != len(nodes):
        raise ClusterError(f"{source} is damaged: node names must be unique")
    if any(n.replication not in FOLLOWER_ROLES for n in nodes):
        raise ClusterError(f"{source} is damaged: a node's replication must be one of "
                           f"{', '.join(FOLLOWER_ROLES)}")
    known = {"format", "row_image", "synchronous", "follower_synchronous", *REPLICATION_KEYS}
    try:
        replication = dict(
            mode=str(cluster.get("mode", "async")),
            semi_sync_k=int(cluster.get("semi_sync_k", 1)),
            sync_timeout=float(cluster.get("sync_timeout", 10.0)),
            retain_min_entries=int(cluster.get("retain_min_entries", 100_000)),
            retain_max_bytes=int(cluster.get("retain_max_bytes", 64 * 1024 * 1024)),
            retain_max_age=float(cluster.get("retain_max_age", 0.0)),
            auto_resync=bool(cluster.get("auto_resync", False)),
            auto_failover=bool(cluster.get("auto_failover", True)),
            failover_timeout=float(cluster.get("failover_timeout", 5.0)),
            failover_cooldown=float(cluster.get("failover_cooldown", 60.0)),
            failover_key_gap=int(cluster.get("failover_key_gap", 1_000_000)),
        )
    except (TypeError, ValueError) as exc:
        raise ClusterError(f"{source} is damaged: {exc}") from None
    config = ClusterConfig(
        format=str(cluster.get("format", "row")),
        row_image=str(cluster.get("row_image", "full")),
        synchronous=str(cluster.get("synchronous", "full")),
        follower_synchronous=str(cluster.get("follower_synchronous", "normal")),
        nodes=tuple(nodes),
        options={k: v for k, v in cluster.items() if k not in known},
        epochs=tuple(epochs),
        **replication,  # type: ignore[arg-type]
    )
    check_replication(config, source)
    if config.row_image not in ROW_IMAGES:
        raise ClusterError(f"{source}: row_image must be one of {', '.join(ROW_IMAGES)}")
    for key in ("synchronous", "follower_synchronous"):
        if getattr(config, key) not in SYNCHRONOUS_LEVELS:
            raise ClusterError(f"{source}: {key} must be one of {', '.join(SYNCHRONOUS_LEVELS)}")
    return config


def check_replication(config: ClusterConfig, source: str = CONFIG_NAME) -> None:
    """Refuse replication settings that cannot work, naming the setting."""
    if config.mode not in MODES:
        raise ClusterError(f"{source}: mode must be one of {', '.join(MODES)}")
    if config.semi_sync_k < 1:
        raise ClusterError(f"{source}: semi_sync_k must be at least 1")
    if config.sync_timeout <= 0:
        raise ClusterError(f"{source}: sync_timeout must be positive")
    if config.failover_timeout <= 0:
        raise ClusterError(f"{source}: failover_timeout must be positive")
    if config.failover_cooldown < 0 or config.failover_key_gap < 0:
        raise ClusterError(f"{source}: failover_cooldown and failover_key_gap cannot be negative")
    if config.retain_max_bytes < 0 or config.retain_max_age < 0 or config.retain_min_entries < 0:
        raise ClusterError(f"{source}: retain_min_entries, retain_max_bytes and retain_max_age cannot "
                           "be negative")


def check_semi_sync(config: ClusterConfig, k: int | None = None) -> None:
    """Refuse a semi-sync k (`k`, or the configured one in semi-sync mode) larger than the number
    of followers: no commit could ever be acknowledged by that many (checked when settings or
    followers change, not when reading, so a cluster stays readable)."""
    k = config.semi_sync_k if k is None and config.mode == "semi-sync" else k
    count = len(config.followers)
    if k is not None and k > count:
        raise ClusterError(f"semi_sync_k {k} is more than the {count} follower(s) of the cluster: "
                           "no commit could be acknowledged by that many; add followers first or "
                           "lower semi_sync_k")


def config_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / CONFIG_NAME


def read(directory: str | os.PathLike[str]) -> ClusterConfig:
    """Read DIR/cluster.toml; a clear ClusterError names the file when it is missing or damaged."""
    path = config_path(directory)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not Path(directory).exists():
            raise ClusterError(f"no cluster at {directory}: the directory does not exist "
                               f"(create one with `replproxy init {directory}`)") from None
        if (Path(directory) / "distributed.toml").is_file():  # dist/local.py
            raise ClusterError(
                f"{directory} is a follower of a distributed cluster (docs/distributed.md): this command "
                "works on the leader's directory only; from here, `proxy.connect(DIR)` and `replproxy "
                "exec|shell|status|verify|log DIR` reach the cluster over NATS") from None
        raise ClusterError(f"no cluster at {directory}: {path} is missing "
                           f"(create one with `replproxy init {directory}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    return loads(text, str(path))


def write(directory: str | os.PathLike[str], config: ClusterConfig) -> None:
    """Replace DIR/cluster.toml atomically, so readers never see half a file."""
    path = config_path(directory)
    fd, tmp = tempfile.mkstemp(prefix=".cluster.", suffix=".toml", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumps(config))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def lock(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Serialize read-modify-write of cluster.toml between processes."""
    with open(Path(directory) / ".cluster.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
