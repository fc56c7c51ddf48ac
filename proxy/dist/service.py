"""`replproxy serve DIR`: one node of a distributed cluster, until it is stopped.

A leader renews its lease, writes how long it is surely valid into its own file (its writers
refuse to write after that), and relays its committed entries to the stream. A follower applies
the stream and, when the leader's lease has expired and it has the whole stream, takes the lease
by compare-and-set and becomes the leader. A leader that finds the lease or the stream taken by
another node is deposed: it fences its file, records the writes it never published in a
lost-writes file, undoes them and goes on as a follower. Every node publishes its position and
answers the requests of `join` (snapshot) and `verify` (fingerprints). docs/distributed.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import apsw

from ..cluster import Cluster, failover, history, modes, snapshots
from ..cluster import verify as verifying
from ..errors import ClusterError, LeaseLost, TransportError
from ..jetstream.kv import ClusterKV
from ..jetstream.names import EPOCHS_KEY, SETTINGS_KEY, check_name, node_key
from ..jetstream.stream import JetStreamSource, LogStream, already_there
from ..store import config as cfg
from ..store import log as entries_log
from ..store import node as store
from ..store.applier import Applier
from ..store.log import LogEntry, checksum
from ..store.source import LogSource
from . import local
from .shared import HEARTBEAT, fingerprint_json, load_settings
from .lease import Lease
from .relay import Relay
from .sqlserve import SqlService

log = logging.getLogger("replproxy.dist")

STREAM_RETENTION_INTERVAL = 1.0  # seconds between two retention passes over the stream
FORGET_CHECK = 2.0  # seconds between two looks at which followers the cluster still has
JOIN_HOLD = "join:"  # the leader's retention hold for a join downloading its snapshot (no node name has ':')
ACK_EVERY = 1.0  # seconds: a follower acknowledges its position at least this often


def stream_floor(published: int, nodes: dict[str, dict[str, Any]], holds: dict[str, tuple[int, float]],
                 *, me: str, keep: int, now: float) -> int:
    """The last LSN stream retention may remove: below every other node's position (followers,
    and a deposed leader until it comes back as one) and every join's snapshot hold (node ->
    (LSN, when set)) whose node is not yet registered, keeping the last `keep` entries published."""
    positions = [int(p.get("lsn") or 0) for n, p in nodes.items()
                 if n != me and p.get("role") in ("follower", "leader")]
    positions += [lsn for n, (lsn, at) in holds.items()
                  if n not in nodes and not store.hold_expired(at, False, now)]
    return min([published, *positions]) - max(1, keep)


class _Capped(LogSource):
    """The stream up to the LSN `verify` asked this follower to stop at."""

    def __init__(self, inner: JetStreamSource):
        self.inner = inner
        self.cap: int | None = None

    def last_lsn(self) -> int:
        last = self.inner.last_lsn()
        return last if self.cap is None else min(last, self.cap)

    def read(self, after: int, limit: int) -> list[LogEntry]:
        entries = self.inner.read(after, limit)
        return entries if self.cap is None else [e for e in entries if e.lsn <= self.cap]

    def commit_time(self, lsn: int) -> float | None:
        return self.inner.commit_time(lsn)

    def identity(self, lsn: int) -> tuple[int, int] | None:
        return self.inner.identity(lsn)

    def close(self) -> None:
        self.inner.close()


class NodeService:
    """One node of a distributed cluster (see the module docstring). `run` blocks until `stop`."""

    def __init__(self, directory: str | os.PathLike[str], *, lease_ttl: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        self.directory = Path(directory).resolve()
        self.local = local.read(self.directory)
        self.name = self.local.node
        self.path = self.directory / f"{self.name}.db"
        if not self.path.is_file():
            raise ClusterError(f"{self.path} is missing: this node has no database file")
        self.ttl = float(lease_ttl or self.local.lease_ttl)
        self.clock, self.wall_clock = clock, wall_clock
        self.bridge = self.local.bridge()
        try:
            self.names = self.local.names
            self.kv = ClusterKV(self.bridge, self.names)
            self.settings, record = load_settings(self.kv, self.local.cluster)
            self.cluster_id = str(record["cluster_id"])
            with store.opened(self.path, name=self.name) as conn:
                mine = str(store.read_meta(conn, self.name).get(store.CLUSTER_ID_KEY, ""))
            if mine != self.cluster_id:
                raise ClusterError(f"{self.path} belongs to another cluster (id {mine}, cluster "
                                   f"{self.local.cluster} is {self.cluster_id}): it cannot serve as {self.name}")
            self.stream = LogStream(self.bridge, self.names, self.cluster_id)
            self.lease = Lease(self.kv, self.name, self.ttl, clock=clock, wall_clock=wall_clock)
        except BaseException:
            self.bridge.close()
            raise
        self.role = "leader" if self.local.role == "leader" else "follower"
        self.stopping = threading.Event()
        self._deposed = threading.Event()
        self._lock = threading.Lock()
        self.cluster: Cluster | None = None
        self.relay: Relay | None = None
        self.source: _Capped | None = None
        self.applier: Applier | None = None
        self._position: dict[str, Any] = {}
        self._published_at = (0.0, "")
        self._transport_warned = False
        self._acked_at = float("-inf")
        self._next_trim = 0.0
        self._retention: tuple[float, int] | None = None  # (when, the stream's first LSN after) of the last pass
        self.promotions = 0
        self.demotions = 0
        self.sql = SqlService(self.name, self.path, self.bridge, self.names, role=lambda: self.role,
                              cluster=lambda: self.cluster, clock=clock)

    # -- running --------------------------------------------------------------------------------

    def run(self) -> None:
        for what, handler in (("snapshot", self._serve_snapshot), ("fingerprint", self._serve_fingerprint),
                              ("hold", self._serve_hold)):
            self.bridge.serve(self.names.request_subject(what, self.name), handler)
        self.sql.start()
        log.info("%s serving cluster %s as %s (lease TTL %gs)", self.name, self.local.cluster, self.role, self.ttl)
        try:
            while not self.stopping.is_set():
                try:
                    if self.role == "leader":
                        self._lead()
                    else:
                        self._follow()
                except TransportError as exc:  # NATS unavailable for a while: start the role again
                    self._close_roles()
                    self._transport_trouble(exc)
        finally:
            self._close_roles()
            self.sql.close()
            self.bridge.close()

    def stop(self) -> None:
        self.stopping.set()

    def _close_roles(self) -> None:
        self.sql.close_sessions(f"{self.name} stopped leading")
        with self._lock:
            relay, self.relay = self.relay, None
            cluster, self.cluster = self.cluster, None
            source, self.source = self.source, None
            applier, self.applier = self.applier, None
        for thing in (relay, applier, source, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception as exc:  # closing what is already broken
                    log.debug("closing %s: %s", type(thing).__name__, exc)

    def _transport_trouble(self, exc: BaseException) -> None:
        if not self._transport_warned:
            log.warning("%s: %s (retrying)", self.name, exc)
            self._transport_warned = True
        self.stopping.wait(0.25)

    # -- leader ---------------------------------------------------------------------------------

    def _lead(self) -> None:
        with store.opened(self.path, name=self.name) as conn:
            epoch = store.read_fence(conn).epoch
        try:
            holder = self.lease.holder()
            if holder is None:
                ok = self.lease.acquire(epoch)
            elif holder.node == self.name and holder.epoch == epoch:
                ok = self.lease.take(holder, epoch)  # our own lease, from before a restart
            else:
                ok = False
        except TransportError as exc:
            self._transport_trouble(exc)
            return
        if not ok:
            holder = self.lease.holder()
            self._demote(holder.epoch if holder else epoch + 1,
                         f"the lease is held by {holder.node} at epoch {holder.epoch}" if holder else "lease refused")
            return
        self.cluster = Cluster(self.directory)
        self.relay = Relay(str(self.path), self.name, self.stream)
        self._deposed.clear()
        try:
            self.relay.sync()
        except LeaseLost as exc:
            self._demote(self._current_epoch(epoch + 1), str(exc))
            return
        renewer = threading.Thread(target=self._renew, name=f"replproxy-lease-{self.name}", daemon=True)
        self._write_lease(self.lease.valid_until_wall)
        renewer.start()
        acks = threading.Thread(target=self._record_acks, name=f"replproxy-acks-{self.name}", daemon=True)
        acks.start()
        log.info("%s leads cluster %s at epoch %d from LSN %d", self.name, self.local.cluster, epoch,
                 self.relay.published)
        try:
            self._relay_loop()
        finally:
            self._deposed.set()  # stops the renewer and the acknowledgements if we leave for another reason
            renewer.join(timeout=self.ttl)
            acks.join(timeout=self.ttl)
        if not self.stopping.is_set():
            self._demote(self._current_epoch(epoch + 1), self._deposed_reason or "deposed")

    _deposed_reason: str | None = None

    def _relay_loop(self) -> None:
        relay = self.relay
        assert relay is not None
        idle = 0.0
        while not self.stopping.is_set() and not self._deposed.is_set():
            moved = 0
            if self.lease.held:
                try:
                    if relay.changed() or relay.pending():
                        moved = relay.step()
                    self._transport_warned = False
                except LeaseLost as exc:
                    self._deposed_reason = str(exc)
                    self._deposed.set()
                    break
                except TransportError as exc:
                    self._transport_trouble(exc)
                except apsw.BusyError:
                    pass
            self._heartbeat()
            if self.clock() >= self._next_trim:
                self._next_trim = self.clock() + STREAM_RETENTION_INTERVAL
                try:
                    self._trim_stream()
                except TransportError as exc:
                    log.debug("%s: stream retention postponed: %s", self.name, exc)
            if moved:
                idle = 0.0
            else:
                idle = min(0.001 if idle == 0 else idle * 1.5, 0.005)  # lag vs. wakeups when idle
                self.stopping.wait(idle)

    def _trim_stream(self) -> int:
        """Stream retention, as the embedded log's: entries every other node applied go, but the
        last `retain_min_entries` published stay. A node that is down holds them (its last
        position counts, a deposed leader's too) until `remove-follower` forgets it, and a join in
        progress holds the entries after its snapshot until its node is registered."""
        relay, cluster = self.relay, self.cluster
        if relay is None or cluster is None:
            return 0
        cluster.refresh_config()
        nodes = self.kv.nodes()
        with cluster.node(cluster.leader) as conn:
            holds = {holder[len(JOIN_HOLD):]: hold for holder, hold in store.retention_holds(conn).items()
                     if holder.startswith(JOIN_HOLD)}
            try:
                with store.without_waiting(conn):  # the relay loop runs this
                    for name in holds.keys() & nodes.keys():  # registered: its own position holds now
                        store.set_hold(conn, JOIN_HOLD + name, None)
            except apsw.BusyError:
                pass  # their own positions hold the stream anyway; dropped at a later pass
        upto = stream_floor(relay.published, nodes, holds, me=self.name,
                            keep=cluster.config.retain_min_entries, now=time.time())
        state = self.stream.state()
        if upto < max(state.first_seq, 1):
            self._retention = (self.wall_clock(), state.first_seq)
            return 0
        self.bridge.call(self.bridge.js.purge_stream(self.names.stream, seq=upto + 1),
                         what="purging the stream")
        self._retention = (self.wall_clock(), upto + 1)
        log.info("%s: stream retention removed entries up to LSN %d", self.name, upto)
        return upto - state.first_seq + 1

    def _renew(self) -> None:
        """Renew the lease every TTL/4 and tell the leader's writers until when it holds."""
        interval = self.ttl / 4
        while not self._deposed.wait(interval) and not self.stopping.is_set():
            try:
                renewed = self.lease.renew()
            except TransportError as exc:
                if interval == self.ttl / 4:
                    log.warning("%s: cannot renew its lease (%s); writes stop when it lapses", self.name, exc)
                interval = min(0.1, self.ttl / 20)  # renew as soon as NATS is back, before any candidate
                continue
            if renewed and interval != self.ttl / 4:
                log.warning("%s: lease renewed again", self.name)
            interval = self.ttl / 4
            if not renewed:
                holder = self._safe_holder()
                self._deposed_reason = (f"another node took the lease ({holder.node}, epoch {holder.epoch})"
                                        if holder else "the lease was taken")
                log.error("%s: %s: it stops writing", self.name, self._deposed_reason)
                self._deposed.set()
                return
            self._write_lease(self.lease.valid_until_wall)

    def _record_acks(self) -> None:
        """Followers' acknowledgements, written into the leader's file where its committers wait
        for them (cluster/modes.py); semi-sync restored once k followers caught up."""
        positions: dict[str, int] = {}
        changed = threading.Event()
        try:
            for name, pos in self.kv.nodes().items():
                if name != self.name and pos.get("role") == "follower" and pos.get("state") != "stopped":
                    positions[name] = int(pos.get("lsn") or 0)
        except TransportError as exc:
            log.warning("%s: follower positions unknown (%s): sync commits wait for their acknowledgements",
                        self.name, exc)

        async def on_ack(msg: Any) -> None:
            try:
                data = json.loads(msg.data)
                name, lsn = str(data["node"]), int(data["lsn"])
            except (ValueError, KeyError, TypeError):
                return
            if name != self.name and lsn > positions.get(name, -1):
                positions[name] = lsn
                changed.set()

        sub = self.bridge.call(self.bridge.nc.subscribe(self.names.request_subject("ack"), cb=on_ack),
                               what="subscribing to acknowledgements")
        try:
            with store.opened(self.path, name=self.name) as conn:
                heard = dict(positions)
                store.write_acks_file(self.path, heard)
                store.set_remote_positions(conn, heard, replace=True)
                written = checked = self.clock()
                forgotten = False  # a forgotten follower not yet dropped from the node's file
                while not self._deposed.is_set() and not self.stopping.is_set():
                    if self.clock() - checked >= FORGET_CHECK:
                        checked = self.clock()
                        try:  # a follower `remove-follower` forgot is waited for no more
                            gone = set(positions) - set(self.kv.nodes())
                        except TransportError:
                            gone = set()
                        if gone:
                            for name in gone:
                                positions.pop(name, None)
                            forgotten = True
                            changed.set()
                    if not changed.wait(0.1):
                        continue
                    cluster = self.cluster
                    if cluster is not None:
                        cluster.refresh_config()
                    # Async commits wait for nobody: record positions once a second only (each
                    # record is a write transaction on the leader's file, taken from its writers).
                    wait = ACK_EVERY - (self.clock() - written)
                    if (cluster is None or cluster.config.mode == "async") and wait > 0:
                        self._deposed.wait(min(wait, 0.1))
                        continue
                    changed.clear()
                    heard = dict(positions)
                    # At once in the acknowledgements file, where committers read them; in the
                    # node's file when its write lock is free (never waiting behind a client).
                    store.write_acks_file(self.path, heard)
                    try:
                        with store.without_waiting(conn):
                            store.set_remote_positions(conn, heard, replace=forgotten)
                            self._maybe_restore(conn, heard)
                        written = self.clock()
                        forgotten = False
                    except apsw.BusyError:
                        changed.set()
                        self._deposed.wait(0.01)  # then try the lock again
        finally:
            try:
                self.bridge.call(sub.unsubscribe(), timeout=2.0, what="unsubscribing")
            except TransportError:
                pass

    def _maybe_restore(self, conn: apsw.Connection, positions: dict[str, int]) -> None:
        if modes.read_degraded(conn) is None:
            return
        config = cfg.read(self.directory)  # `replproxy config` changes it while we run
        last = entries_log.last_lsn(conn)
        caught_up = sorted(n for n, lsn in positions.items() if lsn >= last)
        if config.mode == "semi-sync" and len(caught_up) >= config.semi_sync_k:
            modes.set_degraded(conn, None)
            log.warning("semi-sync restored: %s caught up with LSN %d", ", ".join(caught_up), last)

    def _write_lease(self, until: float | None) -> None:
        """Tell the leader's writers until when the lease surely holds: in the lease file at once,
        in the node's file if its write lock is free now. Never waits for the lock: a renewal
        stuck behind a client's long transaction would let the lease lapse (and fail over)."""
        store.write_lease_file(self.path, until)
        with store.opened(self.path, name=self.name) as conn:
            try:
                with store.without_waiting(conn):
                    store.set_lease(conn, until)
            except apsw.BusyError:
                log.debug("%s: lease renewed in %s only (a transaction holds the write lock)",
                          self.name, store.lease_file(self.path).name)

    def _safe_holder(self) -> Any:
        try:
            return self.lease.holder()
        except TransportError:
            return None

    def _current_epoch(self, default: int) -> int:
        holder = self._safe_holder()
        return holder.epoch if holder is not None else default

    def _demote(self, epoch: int, reason: str) -> None:
        """Stop leading: fence the file, record and undo what the stream does not have."""
        self.demotions += 1
        self.sql.close_sessions(f"{self.name} is no longer the leader ({reason})")  # they hold its write lock
        log.error("%s is no longer the leader (%s): fenced at epoch %d", self.name, reason, epoch)
        store.write_lease_file(self.path, None)  # first: writers find the lease lapsed from here on
        store.write_acks_file(self.path, None)
        with store.opened(self.path, name=self.name) as conn:
            with store.write_transaction(conn):
                store.fence(conn, epoch)
            store.set_lease(conn, None)
        relay = self.relay or Relay(str(self.path), self.name, self.stream)
        fork = None
        while fork is None and not self.stopping.is_set():
            try:
                fork = relay.fork()
            except TransportError as exc:
                self._transport_trouble(exc)
        if fork is None:
            relay.close()
            return  # stopped before the stream could be read: the next serve demotes again
        cluster = self.cluster or Cluster(self.directory, replicate=False)
        try:
            with store.opened(self.path, name=self.name) as conn:
                lost = entries_log.read_entries(conn, fork, 1 << 62)
                base = self._epoch_base(epoch, fork)
                if lost:
                    path = history.write_lost(cluster, epoch, self.name, lost, source=conn)
                    log.error("%s: %d write(s) it committed were never published (LSN %d..%d): recorded in %s",
                              self.name, len(lost), lost[0].lsn, lost[-1].lsn, path)
                    try:
                        history.rewind(conn, self.name, lost, fork, epoch, self.settings.format_options(),
                                       base=base)
                    except Exception as exc:  # not invertible: re-seed
                        with store.write_transaction(conn):
                            store.set_error(conn, store.StopKind.DIVERGED,
                                            f"{self.name}: deposed at epoch {epoch} with unpublished writes "
                                            f"that cannot be undone ({exc}); it needs a new snapshot: remove "
                                            f"its directory and `replproxy join` again", fork + 1)
                else:
                    with store.write_transaction(conn):
                        store.set_applied_at(conn, fork)
                        store.set_epoch(conn, epoch, base)
        finally:
            self._close_roles()
            if relay is not self.relay:
                relay.close()
            if cluster is not self.cluster:
                cluster.close()
        self._become("follower")

    def _epoch_base(self, epoch: int, default: int) -> int:
        try:
            found = self.kv.get(EPOCHS_KEY)
        except TransportError:
            return default
        for record in (found.value if found is not None and isinstance(found.value, list) else []):
            if int(record.get("epoch", 0)) == epoch:
                return int(record.get("base_lsn", default))
        return default

    def _become(self, role: str) -> None:
        self.role = role
        # The role first: a crash before cluster.toml goes leaves a follower whose file is fenced.
        local.write(self.directory, local.DistConfig(
            cluster=self.local.cluster, node=self.name, nats=self.local.nats, role=role, creds=self.local.creds,
            lease_ttl=self.local.lease_ttl))
        if role == "follower":
            cfg.config_path(self.directory).unlink(missing_ok=True)
            store.write_lease_file(self.path, None)
            store.write_acks_file(self.path, None)
        self._published_at = (0.0, "")

    # -- follower -------------------------------------------------------------------------------

    def _follow(self) -> None:
        self.source = _Capped(JetStreamSource(self.stream))
        self.applier = Applier(self.name, str(self.path), self.source,
                               synchronous=self.settings.follower_synchronous,
                               format_options=self.settings.format_options())
        next_check = 0.0
        try:
            while not self.stopping.is_set():
                self._apply_some()
                self._heartbeat()
                now = self.clock()
                if now >= next_check:
                    next_check = now + self.ttl / 8
                    try:
                        if self._try_promote():
                            return
                    except TransportError as exc:
                        self._transport_trouble(exc)
        finally:
            if self.role == "follower":
                self._close_roles()

    def _apply_some(self, wait: float | None = None) -> int:
        applier, source = self.applier, self.source
        assert applier is not None and source is not None
        try:
            state = store.read_state(applier.conn)
            applied = state.applied_lsn
            if state.paused or state.error or (source.cap is not None and applied >= source.cap):
                self.stopping.wait(0.05)
                return 0
            if not source.inner.buffered_after(applied):
                source.inner.fill(applied, wait=min(0.25, self.ttl / 8) if wait is None else wait)
            count = applier.step()
            self._transport_warned = False
            now = self.clock()
            if count or now - self._acked_at >= ACK_EVERY:  # also a keepalive: the leader learns of us
                self._acked_at = now
                self._ack(applier.applied_lsn)
            return count
        except TransportError as exc:
            self._transport_trouble(exc)
        except apsw.BusyError:
            self.stopping.wait(0.01)
        return 0

    def _ack(self, lsn: int) -> None:
        """Tell the leader what this follower applied (sync and semi-sync commits wait on it)."""
        data = json.dumps({"node": self.name, "lsn": lsn}).encode()
        try:
            self.bridge.call(self.bridge.nc.publish(self.names.request_subject("ack"), data), what="acknowledging")
        except TransportError as exc:
            log.debug("%s: acknowledgement of LSN %d not sent: %s", self.name, lsn, exc)

    def _try_promote(self) -> bool:
        holder = self.lease.holder()
        if not self.lease.expired(holder):
            return False
        applier = self.applier
        assert applier is not None
        state = store.read_state(applier.conn)
        last = self.stream.state().last_seq
        if state.paused or state.error or state.applied_lsn < last:
            return False  # not the whole stream (yet): a node that has it is the better leader
        found = self.kv.get(EPOCHS_KEY)
        epochs = found.value if found is not None and isinstance(found.value, list) else []
        epoch = max([int(r.get("epoch", 0)) for r in epochs] + [holder.epoch if holder else 0, 1]) + 1
        if not self.lease.take(holder, epoch):
            return False
        log.warning("%s: the lease of %s expired; %s takes it at epoch %d", self.name,
                    holder.node if holder else "nobody", self.name, epoch)
        try:
            self._promote(epoch)
        except Exception as exc:
            log.error("%s: promotion to epoch %d failed: %s", self.name, epoch, exc)
            self.lease.lose()
            raise
        return True

    def _promote(self, epoch: int) -> None:
        applier, source = self.applier, self.source
        assert applier is not None and source is not None
        source.cap = None
        self.settings, _record = load_settings(self.kv, self.local.cluster)  # as `config` last left them
        while True:
            if not self.lease.held:
                raise LeaseLost(f"{self.name} lost the lease while taking over")
            last = self.stream.state().last_seq
            while applier.applied_lsn < last:
                if self.stopping.is_set():
                    raise LeaseLost(f"{self.name} was stopped while taking over")
                state = store.read_state(applier.conn)
                if state.error:
                    raise ClusterError(f"{self.name} cannot take over: {state.error}")
                self._apply_some(wait=0.1)
            # The old leader may have handed out AUTOINCREMENT keys in writes it never published:
            # the epoch's first entry moves every counter past them (docs/failover.md, "Key reuse").
            payload = failover.key_gap_payload(applier.conn, self.settings.failover_key_gap)
            marker = LogEntry(lsn=last + 1, epoch=epoch, format="row", payload=payload,
                              checksum=checksum(payload), committed_at=self.wall_clock(), origin=None)
            reached, error = self.stream.publish([marker])
            if error is None or already_there(error):
                break
            if not isinstance(error, LeaseLost):
                raise error
            # A late entry of the old leader got in first: apply it too, then try again.
        found = self.kv.get(EPOCHS_KEY)
        while True:
            records = list(found.value) if found is not None and isinstance(found.value, list) else []
            records.append({"epoch": epoch, "leader": self.name, "base_lsn": last, "at": self.wall_clock()})
            if found is None:
                done = self.kv.create(EPOCHS_KEY, records) is not None
            else:
                done = self.kv.update(EPOCHS_KEY, records, found.revision) is not None
            if done:
                break
            found = self.kv.get(EPOCHS_KEY)
        while applier.applied_lsn < marker.lsn:  # applied here as on every follower
            if self.stopping.is_set():
                raise LeaseLost(f"{self.name} was stopped while taking over")
            state = store.read_state(applier.conn)
            if state.error:
                raise ClusterError(f"{self.name} cannot take over: {state.error}")
            self._apply_some(wait=0.1)
        self._close_roles()
        with store.opened(self.path, name=self.name) as conn:
            with store.write_transaction(conn):
                store.set_epoch(conn, epoch, last)
                store.unfence(conn)
                store.clear_error(conn, paused=True)  # no applier moves a leader's file
            store.set_lease(conn, self.lease.valid_until_wall)
        config = self.settings.with_nodes((cfg.NodeConfig(name=self.name, file=self.path.name, role="leader"),))
        history_records = tuple(cfg.EpochRecord(epoch=int(r["epoch"]), leader=str(r["leader"]),
                                                base_lsn=int(r["base_lsn"]), at=float(r["at"]))
                                for r in records if int(r["epoch"]) > 1)
        cfg.write(self.directory, replace(config, epochs=history_records))
        self.promotions += 1
        self._become("leader")
        log.warning("%s is the leader of cluster %s at epoch %d (from LSN %d)", self.name, self.local.cluster,
                    epoch, last + 1)

    # -- position -------------------------------------------------------------------------------

    def position(self) -> dict[str, Any]:
        with store.opened(self.path, name=self.name) as conn:
            state = store.read_state(conn)
            fence = store.read_fence(conn)
            lsn, _epoch = entries_log.position(conn, state)
            if self.role == "leader":
                lsn = entries_log.last_lsn(conn)
            committed = entries_log.commit_time(conn, lsn) if self.role == "leader" else state.applied_commit_time
        relay, retention = self.relay, self._retention
        return {"role": self.role, "lsn": lsn, "epoch": fence.epoch, "committed_at": committed,
                "published": relay.published if relay is not None else None,
                "retention": None if retention is None or self.role != "leader" else
                {"at": retention[0], "first_lsn": retention[1]},
                "state": "stopped" if state.error else ("paused" if state.paused and self.role != "leader"
                                                         else "running"),
                "error": state.error, "host": socket.gethostname(), "pid": os.getpid(), "at": self.wall_clock()}

    def _heartbeat(self) -> None:
        now = self.clock()
        last, digest = self._published_at
        if now - last < HEARTBEAT:
            return
        try:
            position = self.position()
            key = repr({k: v for k, v in position.items() if k != "at"})
            if key == digest and now - last < HEARTBEAT * 4:
                return
            self.kv.put(node_key(self.name), position)
            self._published_at = (now, key)
        except (TransportError, apsw.Error) as exc:
            if isinstance(exc, TransportError):
                self.lease.reset()
            log.debug("%s: position not published: %s", self.name, exc)

    # -- requests -------------------------------------------------------------------------------

    def _serve_snapshot(self, request: dict[str, Any]) -> dict[str, Any]:
        cluster = self.cluster
        if self.role != "leader" or cluster is None:
            raise ClusterError(f"{self.name} is not the leader")
        node = check_name("node", str(request.get("node", "")))
        tmp = self.directory / f".snapshot-{node}-{os.getpid()}-{threading.get_ident()}.db"
        # The stream keeps the entries after the snapshot while `join` downloads it: the hold
        # goes once the node is registered (its position holds them) or, join killed, in an hour.
        with cluster.node(cluster.leader) as conn:
            store.set_hold(conn, JOIN_HOLD + node, cluster.leader_lsn())
        try:
            lsn = snapshots.snapshot(cluster, tmp, node)
            with store.opened(tmp, name=node) as conn:
                conn.execute("DELETE FROM _replproxy_meta WHERE key IN (?, ?)", (store.LEASE_UNTIL_KEY,
                                                                                 store.DEPOSED_KEY))
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            name = f"snapshot.{node}.{lsn}"

            async def upload() -> None:
                objects = await self.stream.objects()
                with open(tmp, "rb") as handle:
                    await objects.put(name, handle)

            self.bridge.call(upload(), timeout=600, what=f"uploading snapshot {name}")
        except BaseException:
            with cluster.node(cluster.leader) as conn:
                store.set_hold(conn, JOIN_HOLD + node, None)
            raise
        finally:
            store.remove_files(tmp)
        log.info("%s: snapshot at LSN %d for new follower %s", self.name, lsn, node)
        return {"object": name, "lsn": lsn}

    def _serve_fingerprint(self, request: dict[str, Any]) -> dict[str, Any]:
        """The leader: its fingerprint at its last LSN. A follower: at exactly `lsn` (it applies up
        to it and holds there while it computes)."""
        timeout = float(request.get("timeout", 10.0))
        if self.role == "leader":
            with store.opened(self.path, name=self.name) as conn:
                conn.execute("BEGIN")  # one read transaction: the LSN and the data agree
                try:
                    lsn = entries_log.last_lsn(conn)
                    return {"lsn": lsn, "fingerprint": fingerprint_json(conn)}
                finally:
                    conn.execute("COMMIT")
        lsn = int(request["lsn"])
        source = self.source
        if source is None:
            raise ClusterError(f"{self.name} is between roles; try again")
        source.cap = lsn
        try:
            deadline = self.clock() + timeout
            with store.opened(self.path, name=self.name) as conn:
                while True:
                    conn.execute("BEGIN")
                    try:
                        state = store.read_state(conn)
                        if state.applied_lsn == lsn:
                            return {"lsn": lsn, "fingerprint": fingerprint_json(conn)}
                    finally:
                        conn.execute("COMMIT")
                    if state.applied_lsn > lsn:
                        return {"lsn": state.applied_lsn, "past": True}
                    if state.error:
                        return {"lsn": state.applied_lsn, "stopped": state.error}
                    if self.clock() >= deadline:
                        return {"lsn": state.applied_lsn, "timeout": True}
                    self.stopping.wait(0.01)
        finally:
            source.cap = None

    def _serve_hold(self, request: dict[str, Any]) -> dict[str, Any]:
        """A follower stops applying where it is (for `seconds`, or until a fingerprint request)."""
        source = self.source
        if self.role == "leader" or source is None:
            raise ClusterError(f"{self.name} is not a follower")
        with store.opened(self.path, name=self.name) as conn:
            applied = store.read_state(conn).applied_lsn
        source.cap = applied
        seconds = float(request.get("seconds", 10.0))
        timer = threading.Timer(seconds, lambda: setattr(source, "cap", None) if source.cap == applied else None)
        timer.daemon = True
        timer.start()
        return {"lsn": applied}
