"""A cluster on the embedded default: one directory, a cluster.toml and one SQLite file per node."""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import apsw

import logformats

from . import config as cfg
from . import modes, outside, storage
from .errors import ClusterError, ReplicationTimeout
from .logsource import LeaderFileSource, LogSource
from .replication import Applier, Replicator


@dataclass(frozen=True)
class NodeStatus:
    """One node as `status()` reports it."""

    name: str
    role: str
    file: str
    applied_lsn: int
    lag_entries: int
    lag_seconds: float
    state: str  # "ok", "paused", "error", "missing"
    error: str | None = None
    error_lsn: int | None = None
    # A follower's replication role ("sync" or "async"); empty for the leader.
    replication: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_live: "weakref.WeakSet[Cluster]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Let background appliers finish their current transaction before the interpreter goes.
    for cluster in list(_live):
        cluster.close()


class Cluster:
    """A replproxy cluster opened from its directory.

    Opening a cluster starts a background thread that moves its followers forward (pass
    `replicate=False` to only inspect it). `pause` and `resume` act on the follower's own file, so they
    hold a follower's position for every process that has the cluster open.
    """

    def __init__(self, directory: str | os.PathLike[str], *, replicate: bool = True,
                 poll_interval: float = 0.01, require_leader: bool = True):
        self.directory = Path(directory).resolve()
        self._config_file = str(cfg.config_path(self.directory))  # stat on every write: a plain str
        self._config_key = self._stat_config()
        self.config = cfg.read(self.directory)
        self._maintenance: Any = None  # lifecycle.Maintenance, for the replicator thread
        self._monitor: Any = None  # health.HealthMonitor, for the replicator thread
        self._follower_names: tuple[cfg.ClusterConfig, list[str]] | None = None
        self.format = logformats.get(self.config.format, **self.config.format_options())
        self._lock = threading.Lock()
        try:
            self._check_leader()
            self._epoch = self._read_epoch()
        except ClusterError:
            # `require_leader=False` (failover, start-node): a crashed leader must not prevent
            # promoting a follower; the cluster id is on every node.
            if require_leader:
                raise
            self._identify_from_followers()
        if outside.captures_outside_writers(self):
            # Transactions committed on the leader outside the proxy become entries of their own.
            self.format.bind_outside_log(self._append_outside)  # type: ignore[attr-defined]
        self._replicator: Replicator | None = None
        self._poll_interval = poll_interval
        # Bumped when this process pauses or resumes a follower, so connections re-read states.
        self.state_generation = 0
        self._closed = False
        _live.add(self)
        if replicate:
            self.start_replication()

    # -- creation -----------------------------------------------------------------------------

    @classmethod
    def init(cls, directory: str | os.PathLike[str], *, followers: int = 2, format: str = "row",
             row_image: str = "full", from_db: str | os.PathLike[str] | None = None,
             synchronous: str = "full", follower_synchronous: str = "normal",
             replicate: bool = True, options: dict[str, Any] | None = None) -> "Cluster":
        """Create a new cluster in `directory` and open it. `options`: format options kept in
        cluster.toml's [cluster] table (e.g. no_rewrite=True for the statement format)."""
        create_cluster(directory, followers=followers, format=format, row_image=row_image,
                       from_db=from_db, synchronous=synchronous,
                       follower_synchronous=follower_synchronous, options=options)
        return cls(directory, replicate=replicate)

    # -- paths and connections ----------------------------------------------------------------

    def path_of(self, node: str) -> Path:
        return self.directory / self.config.node(node).file

    @property
    def leader(self) -> str:
        return self.config.leader.name

    @property
    def followers(self) -> list[str]:
        names = self._follower_names
        if names is None or names[0] is not self.config:
            names = self._follower_names = (self.config,
                                            [n.name for n in self.config.running_followers])
        return names[1]

    @property
    def leader_down(self) -> bool:
        """Whether the leader is stopped (`stop-node`): nothing can be written until a failover
        or `start-node`."""
        return self.config.leader.stopped

    @property
    def epoch(self) -> int:
        return self._epoch

    def open_node(self, node: str) -> apsw.Connection:
        """A new connection to a node's file, with the cluster's pragmas."""
        return storage.open_node(self.path_of(node), name=node,
                                 synchronous=self.config.synchronous_of(node))

    def _check_leader(self) -> None:
        conn = self.open_node(self.leader)
        try:
            meta = storage.read_meta(conn, f"leader {self.leader} ({self.path_of(self.leader)})")
            self.cluster_id = str(meta.get("cluster_id", ""))
        finally:
            conn.close()

    def _identify_from_followers(self) -> None:
        for node in self.config.followers:
            try:
                conn = self.open_node(node.name)
            except ClusterError:
                continue
            try:
                meta = storage.read_meta(conn, node.name)
            except (ClusterError, apsw.Error):
                continue
            finally:
                conn.close()
            self.cluster_id = str(meta.get("cluster_id", ""))
            self._epoch = max(self.config.epoch, int(meta.get("epoch", 1)))
            return
        raise ClusterError(f"neither the leader {self.leader} nor any follower of {self.directory} "
                           "can be opened")

    def _read_epoch(self) -> int:
        conn = self.open_node(self.leader)
        try:
            return int(storage.read_meta(conn, self.leader).get("epoch", 1))
        finally:
            conn.close()

    def log_source(self) -> LogSource:
        """Where followers of this cluster read entries from."""
        if self.leader_down:
            return DownSource(self.leader)
        return LeaderFileSource(self.path_of(self.leader), name=self.leader)

    # -- background replication ---------------------------------------------------------------

    def start_replication(self) -> None:
        if self._replicator is None or not self._replicator.is_alive():
            watcher = outside.OutsideWatcher(self) if outside.captures_outside_writers(self) else None
            self._replicator = Replicator(self.log_source, self._make_appliers,
                                          poll_interval=self._poll_interval, watcher=watcher,
                                          after_round=self._after_round)
            self._replicator.start()

    def _make_appliers(self, source: LogSource) -> list[Applier]:
        appliers: list[Applier] = []
        if isinstance(source, DownSource):
            return appliers
        for node in self.config.running_followers:
            try:
                appliers.append(Applier(node.name, str(self.directory / node.file), source,
                                        synchronous=self.config.applier_synchronous(node.name),
                                        format_options=self.config.format_options(),
                                        keep_entries=self.config.retain_min_entries))
            except ClusterError as exc:
                if self._replicator is not None:
                    self._replicator.errors[node.name] = str(exc)
        return appliers

    # -- writers outside the proxy (trigger format) ---------------------------------------------

    def _append_outside(self, conn: apsw.Connection, payload: bytes) -> int:
        return storage.append(conn, epoch=self.epoch, format=self.format.name, payload=payload)

    def log_outside_writes(self) -> int:
        """Log now what programs outside the proxy committed on the leader (trigger format; the
        background watcher does it every poll interval); return the number of entries added."""
        return outside.log_outside_writes(self)

    # -- replication modes and settings (modes.py, lifecycle.py) --------------------------------

    def _stat_config(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._config_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh_config(self) -> bool:
        """Re-read cluster.toml if another process changed it (one stat when it did not); reopen
        the followers when their list or their apply settings changed. True when it changed."""
        key = self._stat_config()
        if key is None or key == self._config_key:
            return False
        old = self.config
        try:
            config = cfg.read(self.directory)
        except ClusterError:
            return False  # keep the settings we have; a damaged file is reported by `status`
        self._config_key = key
        self.config = config
        leader_changed = old.leader.name != config.leader.name
        if leader_changed:
            # A failover (failover.py): new writes and the followers' log source follow the new leader.
            try:
                self._epoch = max(self._epoch, self._read_epoch())
            except ClusterError:
                pass
        appliers = lambda c: [(n, c.applier_synchronous(n.name)) for n in c.running_followers]  # noqa: E731
        if ((leader_changed or appliers(old) != appliers(config) or old.leader.stopped != config.leader.stopped)
                and self._replicator is not None):
            self._replicator.reload()
        return True

    def note_epoch(self, epoch: int) -> None:
        """The leader's file says the epoch is `epoch` (read by a writer inside its transaction)."""
        if epoch > self._epoch:
            self._epoch = epoch

    def await_acks(self, lsn: int, leader: apsw.Connection) -> None:
        """After COMMIT of entry `lsn`: wait for what the replication mode requires."""
        modes.await_acks(self, lsn, leader)

    def _after_round(self, leader_lsn: int, positions: dict[str, int]) -> None:
        self.refresh_config()  # a stop, a start or a failover made by another process
        if self._monitor is None:
            from .health import HealthMonitor

            self._monitor = HealthMonitor(self)
        self._monitor.tick()
        if self.leader_down:
            return  # nothing to maintain on a leader that cannot be reached
        if self._maintenance is None:
            from .lifecycle import Maintenance

            self._maintenance = Maintenance(self)
        self._maintenance.after_round(leader_lsn, positions)

    def replication_status(self) -> dict[str, Any]:
        """Mode, semi-sync degraded state, sync followers, retained log (see lifecycle.py)."""
        from .lifecycle import replication_status

        return replication_status(self)

    def add_follower(self, name: str, file: str | None = None, replication: str = "async") -> int:
        """Add follower `name` online from a snapshot of the leader; return the snapshot's LSN."""
        from .lifecycle import add_follower

        return add_follower(self, name, file=file, replication=replication)

    def remove_follower(self, name: str, delete_file: bool = False) -> None:
        from .lifecycle import remove_follower

        remove_follower(self, name, delete_file=delete_file)

    def resync(self, name: str) -> int:
        """Re-seed follower `name` from a new snapshot of the leader; return its LSN."""
        from .lifecycle import resync

        return resync(self, name)

    def failover(self, to: str | None = None, *, force: bool = False, timeout: float = 10.0) -> Any:
        """Make follower `to` (default: the most up-to-date one) the leader; return a
        failover.FailoverResult. Refuses a target that cannot catch up unless `force`."""
        from .failover import failover

        return failover(self, to, force=force, timeout=timeout)

    def stop_node(self, node: str) -> None:
        """Make `node` unreachable to every process, as if it had crashed (see health.py)."""
        from .health import stop_node

        stop_node(self, node)

    def start_node(self, node: str, timeout: float = 10.0) -> Any:
        """Bring a stopped node back; a node that missed a failover rejoins as a follower, its
        writes that never reached the new leader undone and recorded. Return a health.StartResult."""
        from .health import start_node

        return start_node(self, node, timeout=timeout)

    def health(self) -> dict[str, Any]:
        """The leader's health as this process's monitor sees it, and the failover settings."""
        from .health import health

        return health(self)

    def truncate_log(self) -> int:
        """Apply the retention policy now; return the number of entries removed."""
        from .lifecycle import truncate_log

        return truncate_log(self)

    def configure(self, **settings: Any) -> cfg.ClusterConfig:
        """Change replication and failover settings in cluster.toml (every process picks them
        up): mode, sync_followers, semi_sync_k, sync_timeout, retain_*, auto_resync,
        auto_failover, failover_timeout, failover_cooldown, failover_key_gap."""
        from .lifecycle import configure

        return configure(self, **settings)

    def notify_commit(self) -> None:
        """Tell this process's replicator that the leader's log grew."""
        if self._replicator is not None:
            self._replicator.notify()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._replicator is not None:
            self._replicator.stop()
            self._replicator = None
        if self._maintenance is not None:
            self._maintenance.close()
            self._maintenance = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- positions ----------------------------------------------------------------------------

    def leader_lsn(self) -> int:
        conn = self.open_node(self.leader)
        try:
            return storage.last_lsn(conn)
        finally:
            conn.close()

    def positions(self) -> dict[str, int]:
        """Applied LSN of every follower that can be read (the leader's is its last LSN)."""
        out = {self.leader: self.leader_lsn()}
        for name in self.followers:
            try:
                conn = self.open_node(name)
            except ClusterError:
                continue
            try:
                out[name] = storage.read_state(conn).applied_lsn
            finally:
                conn.close()
        return out

    def status(self) -> list[NodeStatus]:
        """Role, file, applied LSN, lag and state of every node."""
        self.refresh_config()
        leader_conn = self.open_node(self.leader)
        try:
            leader_lsn = storage.last_lsn(leader_conn)
            now = time.time()
            down = self.config.leader.stopped
            result = [NodeStatus(self.leader, "leader", str(self.path_of(self.leader)), leader_lsn,
                                 0, 0.0, "stopped" if down else "ok",
                                 "stopped with replproxy stop-node: no writes until a failover or "
                                 "start-node" if down else None)]
            for node in self.config.followers:
                status = self._follower_status(node.name, leader_conn, leader_lsn, now)
                if node.stopped:
                    # What its file holds: for a deposed leader, its own last LSN.
                    position = self._position_of(node.name, status.applied_lsn)
                    status = NodeStatus(node.name, "follower", status.file, position,
                                        max(0, leader_lsn - position), status.lag_seconds,
                                        "stopped", "stopped with replproxy stop-node", None,
                                        node.replication)
                result.append(status)
            return result
        finally:
            leader_conn.close()

    def _position_of(self, name: str, default: int) -> int:
        try:
            conn = self.open_node(name)
        except ClusterError:
            return default
        try:
            return storage.last_lsn(conn)
        except apsw.Error:
            return default
        finally:
            conn.close()

    def _follower_status(self, name: str, leader_conn: apsw.Connection, leader_lsn: int,
                         now: float) -> NodeStatus:
        path = str(self.path_of(name))
        try:
            conn = self.open_node(name)
        except ClusterError as exc:
            return NodeStatus(name, "follower", path, 0, leader_lsn, 0.0, "missing", str(exc))
        try:
            state = storage.read_state(conn)
        except (apsw.Error, ClusterError) as exc:
            return NodeStatus(name, "follower", path, 0, leader_lsn, 0.0, "error", str(exc))
        finally:
            conn.close()
        lag = max(0, leader_lsn - state.applied_lsn)
        lag_seconds = 0.0
        if lag:
            first_missing = storage.commit_time(leader_conn, state.applied_lsn + 1)
            if first_missing is not None:
                lag_seconds = max(0.0, now - first_missing)
        if state.error:
            node_state = "error"
        elif state.paused:
            node_state = "paused"
        else:
            node_state = "ok"
        error = state.error
        if error is None and self._replicator is not None:
            error = self._replicator.errors.get(name)
        if state.error and "needs a new snapshot" in state.error:
            node_state = "needs-snapshot"
        elif lag and first_missing_gone(leader_conn, state.applied_lsn):
            node_state = "needs-snapshot"
            error = error or (f"{name}: log entry {state.applied_lsn + 1} is no longer retained; "
                              f"re-seed it with `replproxy resync DIR {name}`")
        return NodeStatus(name, "follower", path, state.applied_lsn, lag, round(lag_seconds, 3),
                          node_state, error, state.error_lsn, self.config.node(name).replication)

    def wait_for_catchup(self, timeout: float = 10.0, nodes: Iterable[str] | None = None,
                         lsn: int | None = None) -> int:
        """Wait until the followers (all, or `nodes`) have applied `lsn` (default: the leader's
        last LSN). Return that LSN; raise ReplicationTimeout naming the followers still behind."""
        target = self.leader_lsn() if lsn is None else lsn
        names = list(nodes) if nodes is not None else self.followers
        deadline = time.monotonic() + timeout
        conns = {}
        try:
            while True:
                behind = {}
                for name in names:
                    if name not in conns:
                        conns[name] = self.open_node(name)
                    state = storage.read_state(conns[name])
                    if state.applied_lsn < target:
                        behind[name] = state
                if not behind:
                    return target
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    details = ", ".join(
                        f"{name} at {s.applied_lsn}"
                        + (" (paused)" if s.paused else "")
                        + (f" (stopped: {s.error})" if s.error else "")
                        for name, s in behind.items()
                    )
                    raise ReplicationTimeout(
                        f"followers did not reach LSN {target} within {timeout:g}s: {details}")
                if any(s.error for s in behind.values()) and all(s.error or s.paused for s in behind.values()):
                    # Nothing will move these by itself; fail now instead of at the deadline.
                    deadline = min(deadline, time.monotonic())
                self._wait_progress(min(remaining, 0.02))
        finally:
            for conn in conns.values():
                conn.close()

    def _wait_progress(self, seconds: float) -> None:
        replicator = self._replicator
        if replicator is not None and replicator.is_alive():
            replicator.notify(urgent=True)
            with replicator.progress:
                replicator.progress.wait(seconds)
        else:
            time.sleep(seconds)  # another process moves the followers; poll their positions

    # -- holding a follower -------------------------------------------------------------------

    def _set_state(self, node: str, refuse_snapshot_needed: bool = False, **values: Any) -> None:
        if node == self.leader:
            raise ClusterError(f"{node} is the leader; only followers can be paused or resumed")
        self.config.node(node)
        conn = self.open_node(node)
        try:
            storage.read_state(conn)  # a file that is not a replproxy node fails here, naming it
            with storage.write_transaction(conn):
                state = storage.read_state(conn)
                if refuse_snapshot_needed and storage.needs_snapshot(state):
                    raise ClusterError(f"{node} cannot simply resume: {state.error}")
                sets = ", ".join(f"{key}=?" for key in values)
                conn.execute(f"UPDATE _replproxy_state SET {sets} WHERE id=1", tuple(values.values()))
        finally:
            conn.close()
        self.state_generation += 1
        if self._replicator is not None:
            self._replicator.notify()

    def pause(self, node: str) -> None:
        """Hold a follower at its current position, for every process, until `resume`."""
        self._set_state(node, paused=1)

    def resume(self, node: str) -> None:
        """Let a paused or stopped follower apply again (an apply error is retried). A follower
        that needs a new snapshot (off the current history, or behind retention) is refused:
        applying on top of its data would diverge; `resync` it."""
        self._set_state(node, refuse_snapshot_needed=True, paused=0, error=None, error_lsn=None,
                        error_at=None)

    # -- log ----------------------------------------------------------------------------------

    def entries(self, from_lsn: int = 1, limit: int | None = None) -> list[storage.LogEntry]:
        """Log entries from `from_lsn` on, in order."""
        conn = self.open_node(self.leader)
        try:
            return storage.read_entries(conn, from_lsn - 1, limit if limit is not None else -1)
        finally:
            conn.close()

    def table_columns(self) -> dict[str, list[str]]:
        """Column names of every table on the leader, for decoding row images."""
        conn = self.open_node(self.leader)
        try:
            return storage.table_columns(conn)
        finally:
            conn.close()


class DownSource(LogSource):
    """The log of a leader that is stopped: nothing can be read from it."""

    def __init__(self, name: str):
        self.name = name

    def last_lsn(self) -> int:
        return 0

    def read(self, after: int, limit: int) -> list[storage.LogEntry]:
        return []

    def commit_time(self, lsn: int) -> float | None:
        return None


def first_missing_gone(leader_conn: apsw.Connection, applied_lsn: int) -> bool:
    """Whether the entry after `applied_lsn` was removed from the leader's log (retention)."""
    row = leader_conn.execute("SELECT min(lsn) FROM _replproxy_log").fetchone()
    return row is not None and row[0] is not None and row[0] > applied_lsn + 1


def create_cluster(directory: str | os.PathLike[str], *, followers: int = 2, format: str = "row",
                   row_image: str = "full", from_db: str | os.PathLike[str] | None = None,
                   synchronous: str = "full", follower_synchronous: str = "normal",
                   options: dict[str, Any] | None = None) -> cfg.ClusterConfig:
    """Create DIR/cluster.toml and one database file per node; refuse to touch an existing cluster."""
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
    nodes = tuple(
        cfg.NodeConfig(name=f"node{i + 1}", file=f"node{i + 1}.db", role="leader" if i == 0 else "follower")
        for i in range(followers + 1)
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
    cluster_id = storage.new_cluster_id()
    created: list[Path] = []
    try:
        for node in nodes:
            path = directory / node.file
            created.append(path)
            conn = storage.open_node(path, synchronous=synchronous, name=node.name, create=True)
            try:
                if source is not None:
                    with conn.backup("main", source, "main") as backup:
                        backup.step()
                    conn.execute("PRAGMA journal_mode=wal").fetchall()
                storage.install(conn, node_name=node.name, cluster_id=cluster_id)
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
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
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
