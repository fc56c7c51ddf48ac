"""An open cluster on the embedded default: one directory, a cluster.toml and one SQLite file per node.

`ClusterCore` is what every cluster operation works on: the settings (re-read when another process
changes them), the nodes and their files, the epoch, positions, and this process's replicator. The
operations (modes, snapshots, failover, ...) are modules above it; the `Cluster` facade (facade.py)
gathers them and registers the replicator's per-round work as hooks.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw

import logformats

from ..errors import ClusterError, ReplicationTimeout
from ..store import config as cfg
from ..store import log, node
from ..store.applier import Applier
from ..store.child import ReplicatorProcess
from ..store.decode import DecodedEntry, decode_entries
from ..store.log import LogEntry
from ..store.replicator import Replicator, Watcher
from ..store.source import DownSource, LeaderFileSource, LogSource

RoundHook = Callable[[int, dict[str, int]], None]
logger = logging.getLogger("replproxy.replication")

_live: weakref.WeakSet[ClusterCore] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Let background appliers finish their current transaction before the interpreter goes.
    for cluster in list(_live):
        cluster.close()


class ClusterCore:
    """A cluster opened from its directory (see the module docstring).

    Replication does not start here: the facade starts it once it has registered its hooks.
    """

    def __init__(self, directory: str | os.PathLike[str], *, poll_interval: float = 0.01,
                 require_leader: bool = True):
        self.directory = Path(directory).resolve()
        self._config_file = str(cfg.config_path(self.directory))  # stat on every write: a plain str
        self._config_key = self._stat_config()
        self.config = cfg.read(self.directory)
        self._follower_names: tuple[cfg.ClusterConfig, list[str]] | None = None
        self.format = logformats.get(self.config.format, **self.config.format_options())
        # Run on every new format object (`replproxy config --format`): the facade's guards.
        self.format_hooks: list[Callable[[], None]] = []
        try:
            self._check_leader()
            self._epoch = self._read_epoch()
        except ClusterError:
            # `require_leader=False` (failover, start-node): a crashed leader must not prevent
            # promoting a follower; the cluster id is on every node.
            if require_leader:
                raise
            self._identify_from_followers()
        self.replicator: Replicator | ReplicatorProcess | None = None
        self._poll_interval = poll_interval
        # The clocks the cluster operations compare with (replaceable, e.g. by tests): `clock`
        # measures timeouts (monotonic seconds); `wall_clock` is compared with the times stored
        # in the node files (an entry's committed_at, a retention hold's time).
        self.clock: Callable[[], float] = time.monotonic
        self.wall_clock: Callable[[], float] = time.time
        # Registered by the facade: run by the replicator thread after every round, and polled
        # before it (writers outside the proxy).
        self.round_hooks: list[RoundHook] = []
        self.watcher_factory: Callable[[], Watcher | None] = lambda: None
        self._on_close: list[Callable[[], None]] = []
        # Bumped when this process pauses or resumes a follower, so connections re-read states.
        self.state_generation = 0
        self._closed = False
        _live.add(self)

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

    @property
    def closed(self) -> bool:
        return self._closed

    def open_node(self, name: str) -> apsw.Connection:
        """A new connection to a node's file, with the cluster's pragmas."""
        return node.open_node(self.path_of(name), name=name, synchronous=self.config.synchronous_of(name))

    @contextmanager
    def node(self, name: str) -> Iterator[apsw.Connection]:
        """`open_node` for the length of a `with` block."""
        conn = self.open_node(name)
        try:
            yield conn
        finally:
            conn.close()

    def _check_leader(self) -> None:
        with self.node(self.leader) as conn:
            meta = node.read_meta(conn, f"leader {self.leader} ({self.path_of(self.leader)})")
            self.cluster_id = str(meta.get(node.CLUSTER_ID_KEY, ""))

    def _identify_from_followers(self) -> None:
        for follower in self.config.followers:
            try:
                with self.node(follower.name) as conn:
                    meta = node.read_meta(conn, follower.name)
            except (ClusterError, apsw.Error):
                continue
            self.cluster_id = str(meta.get(node.CLUSTER_ID_KEY, ""))
            self._epoch = max(self.config.epoch, int(meta.get(node.EPOCH_KEY, 1)))
            return
        raise ClusterError(f"neither the leader {self.leader} nor any follower of {self.directory} "
                           "can be opened")

    def _read_epoch(self) -> int:
        with self.node(self.leader) as conn:
            return int(node.read_meta(conn, self.leader).get(node.EPOCH_KEY, 1))

    def log_source(self) -> LogSource:
        """Where followers of this cluster read entries from."""
        if self.leader_down:
            return DownSource(self.leader)
        return LeaderFileSource(self.path_of(self.leader), name=self.leader)

    def applier(self, name: str, source: LogSource, synchronous: str | None = None) -> Applier:
        """An applier for follower `name` reading from `source`, with the cluster's settings."""
        return Applier(name, str(self.path_of(name)), source,
                       synchronous=synchronous or self.config.applier_synchronous(name),
                       format_options=self.config.format_options(),
                       keep_entries=self.config.retain_min_entries)

    # -- background replication ---------------------------------------------------------------

    def start_replication(self, where: str = "thread") -> None:
        """Move the followers in the background: in a thread of this process, or ("process") in
        a process of its own (store/child.py), falling back to a thread where none can start."""
        if self.replicator is not None and self.replicator.is_alive():
            return
        if where == "process":
            child = ReplicatorProcess(self.directory)
            try:
                child.start()
            except OSError as exc:
                logger.warning("cannot start a replicator process (%s): replicating in a thread", exc)
            else:
                self.replicator = child
                return
        self.replicator = Replicator(self.log_source, self._make_appliers,
                                     poll_interval=self._poll_interval, watcher=self.watcher_factory(),
                                     after_round=self._after_round)
        self.replicator.start()

    def _make_appliers(self, source: LogSource) -> list[Applier]:
        appliers: list[Applier] = []
        if isinstance(source, DownSource):
            return appliers
        if self.replicator is not None:
            self.replicator.forget([f.name for f in self.config.running_followers])
        for follower in self.config.running_followers:
            try:
                appliers.append(self.applier(follower.name, source))
            except (ClusterError, apsw.Error) as exc:  # a damaged file: retried, logged once (replicator.py)
                if self.replicator is not None:
                    self.replicator.failed(follower.name, str(exc))
        return appliers

    def _after_round(self, leader_lsn: int, positions: dict[str, int]) -> None:
        self.refresh_config()  # a stop, a start or a failover made by another process
        for hook in self.round_hooks:
            hook(leader_lsn, positions)

    def reload_replication(self, wait: float = 0.0) -> None:
        """The nodes changed: this process's replicator reopens its followers (`wait`: seconds to
        wait until it has, so nothing is applied from the old view afterwards)."""
        if self.replicator is not None:
            self.replicator.reload(wait=wait)

    def wait_progress(self, seconds: float) -> None:
        """Wait up to `seconds` for this process's replicator to move a follower (or just wait,
        when another process moves them)."""
        replicator = self.replicator
        if replicator is not None and replicator.is_alive():
            replicator.notify(urgent=True)
            with replicator.progress:
                replicator.progress.wait(seconds)
        else:
            time.sleep(seconds)  # another process moves the followers; poll their positions

    def notify_commit(self) -> None:
        """Tell this process's replicator that the leader's log grew."""
        if self.replicator is not None:
            self.replicator.notify()

    # -- settings -----------------------------------------------------------------------------

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
        if config.format != self.format.name:
            self.use_format(config.format)
        leader_changed = old.leader.name != config.leader.name
        if leader_changed:
            # A failover: new writes and the followers' log source follow the new leader.
            try:
                self._epoch = max(self._epoch, self._read_epoch())
            except ClusterError:
                pass

        def appliers(c: cfg.ClusterConfig) -> list[tuple[cfg.NodeConfig, str]]:
            return [(n, c.applier_synchronous(n.name)) for n in c.running_followers]

        if leader_changed or appliers(old) != appliers(config) or old.leader.stopped != config.leader.stopped:
            self.reload_replication()
        return True

    def change_config(self, change: Callable[[cfg.ClusterConfig], cfg.ClusterConfig]) -> cfg.ClusterConfig:
        """Read-modify-write cluster.toml under its lock; this process picks the result up at once."""
        with cfg.lock(self.directory):
            config = change(cfg.read(self.directory))
            cfg.check_replication(config)
            cfg.write(self.directory, config)
        self.refresh_config()
        return config

    def use_format(self, name: str) -> None:
        """Capture in the log format `name` from now on (the cluster's format was switched)."""
        self.format = logformats.get(name, **self.config.format_options())
        for hook in self.format_hooks:
            hook()

    def note_epoch(self, epoch: int) -> None:
        """The leader's file says the epoch is `epoch` (read by a writer inside its transaction)."""
        if epoch > self._epoch:
            self._epoch = epoch

    def on_close(self, action: Callable[[], None]) -> None:
        """Run `action` when the cluster is closed, after the replicator has stopped."""
        self._on_close.append(action)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.replicator is not None:
            self.replicator.stop()
            self.replicator = None
        for action in self._on_close:
            action()

    def __enter__(self) -> ClusterCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- positions ----------------------------------------------------------------------------

    def leader_lsn(self) -> int:
        with self.node(self.leader) as conn:
            return log.last_lsn(conn)

    def positions(self) -> dict[str, int]:
        """Applied LSN of every follower that can be read (the leader's is its last LSN)."""
        out = {self.leader: self.leader_lsn()}
        for name in self.followers:
            try:
                with self.node(name) as conn:
                    out[name] = node.read_state(conn).applied_lsn
            except ClusterError:
                continue
        return out

    def wait_for_catchup(self, timeout: float = 10.0, nodes: Iterable[str] | None = None,
                         lsn: int | None = None) -> int:
        """Wait until the followers (all, or `nodes`) have applied `lsn` (default: the leader's
        last LSN). Return that LSN; raise ReplicationTimeout naming the followers still behind."""
        target = self.leader_lsn() if lsn is None else lsn
        names = list(nodes) if nodes is not None else self.followers
        deadline = time.monotonic() + timeout
        conns: dict[str, apsw.Connection] = {}
        try:
            while True:
                behind = {}
                for name in names:
                    if name not in conns:
                        conns[name] = self.open_node(name)
                    state = node.read_state(conns[name])
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
                self.wait_progress(min(remaining, 0.02))
        finally:
            for conn in conns.values():
                conn.close()

    # -- holding a follower -------------------------------------------------------------------

    def _change_state(self, name: str, change: Callable[[apsw.Connection, node.NodeState], None]) -> None:
        if name == self.leader:
            raise ClusterError(f"{name} is the leader; only followers can be paused or resumed")
        self.config.node(name)
        with self.node(name) as conn:
            node.read_state(conn)  # a file that is not a replproxy node fails here, naming it
            with node.write_transaction(conn):
                change(conn, node.read_state(conn))
        self.state_generation += 1
        self.notify_commit()

    def pause(self, name: str) -> None:
        """Hold a follower at its current position, for every process, until `resume`."""
        self._change_state(name, lambda conn, state: node.set_paused(conn, True))

    def resume(self, name: str) -> None:
        """Let a paused or stopped follower apply again (an apply error is retried). A follower
        that needs a new snapshot (off the current history, or behind retention) is refused:
        applying on top of its data would diverge; `resync` it."""

        def change(conn: apsw.Connection, state: node.NodeState) -> None:
            if state.needs_snapshot:
                raise ClusterError(f"{name} cannot simply resume: {state.error}")
            node.clear_error(conn)

        self._change_state(name, change)

    # -- log ----------------------------------------------------------------------------------

    def entries(self, from_lsn: int = 1, limit: int | None = None) -> list[LogEntry]:
        """Log entries from `from_lsn` on, in order."""
        with self.node(self.leader) as conn:
            return log.read_entries(conn, from_lsn - 1, limit if limit is not None else -1)

    def table_columns(self) -> dict[str, list[str]]:
        """Column names of every table on the leader, for decoding row images."""
        with self.node(self.leader) as conn:
            return node.table_columns(conn)

    def decode(self, entries: Iterable[LogEntry], columns: dict[str, list[str]] | None = None
               ) -> list[DecodedEntry]:
        """Entries decoded with the leader's column names, or with `columns` (the schema of the
        node they come from: their tables may exist nowhere else)."""
        entries = list(entries)
        if not entries:
            return []
        return decode_entries(entries, columns if columns is not None else self.table_columns(),
                              self.config.format_options())


class LeaderPoller:
    """Something the replicator thread runs every `interval` seconds on the leader, only when another
    connection committed there (PRAGMA data_version moved); never waits for the write lock."""

    def __init__(self, cluster: ClusterCore, interval: float = 0.01):
        self.cluster = cluster
        self.interval = interval
        self._conn: apsw.Connection | None = None
        self._data_version: int | None = None
        self._next = 0.0

    def check(self, conn: apsw.Connection) -> int:
        """Look at the leader after another connection committed; return what was done (a count)."""
        raise NotImplementedError

    def poll(self) -> int:
        now = time.monotonic()
        if now < self._next or self.cluster.leader_down:
            return 0
        self._next = now + self.interval
        conn = self._connection()
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version == self._data_version:
                return 0
            done = self.check(conn)
        except apsw.BusyError:
            return 0  # the write lock is taken; look again at the next poll
        self._data_version = version
        return done

    def _connection(self) -> apsw.Connection:
        if self._conn is None:
            self._conn = self.cluster.open_node(self.cluster.leader)
            self._conn.set_busy_timeout(0)
            self._data_version = None
        return self._conn

    def close(self) -> None:
        """Forget the leader connection (the leader may have changed); the next poll reopens it."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
