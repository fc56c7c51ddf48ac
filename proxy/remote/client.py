"""The PEP 249 driver on a machine with no node: `connect("nats://host:4222/CLUSTER")`.

Writes, and every statement of a transaction, run in a session on the leader's `serve` process
(proxy/dist/sqlserve.py), which keeps a driver connection for it: transactions are real SQLite
transactions there. Reads outside a transaction go to a follower that has applied what the
consistency level needs (the follower waits for it up to `wait_timeout`), otherwise to the leader.
The session's positions carry the epoch of its last write, so a write lost in a failover is
reported instead of silently missing. docs/remote.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ..driver.consistency import DEFAULT_LEVEL, DEFAULT_POLICY, DEFAULT_WAIT, Session, check_level, check_policy
from ..driver.dbapi import DBAPIConnection, DBAPICursor
from ..driver.rows import shaper
from ..errors import (
    DataError,
    InterfaceError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    ReadOnlyNodeError,
    ReplicationError,
    TransportError,
)
from ..jetstream.bridge import Bridge, NoReply, NoResponders, PeerGone
from ..jetstream.kv import ClusterKV
from ..jetstream.names import EPOCHS_KEY, LEASE_KEY, SETTINGS_KEY, Names
from . import protocol

DEFAULT_TIMEOUT = 30.0  # seconds a statement may run on a node before the client gives up on it
DEFAULT_FAILOVER_WAIT = 20.0  # seconds a statement outside a transaction waits for a new leader
NODES_TTL = 1.0  # seconds the nodes' published positions are reused for routing
AVOID_FOR = 5.0  # seconds a node that did not answer is left out of read routing

_READ_START = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/|\()*(SELECT|WITH|VALUES)\b", re.I | re.S)
_TEMP = re.compile(r"^\s*CREATE\s+(TEMP|TEMPORARY)\b", re.I)

_links: dict[tuple[tuple[str, ...], str | None], tuple[Bridge, int]] = {}
_links_lock = threading.Lock()


def _link(servers: list[str], creds: str | None) -> Bridge:
    """One NATS connection per process and server list, shared by its remote connections."""
    key = (tuple(servers), creds)
    with _links_lock:
        found = _links.get(key)
        if found is not None and found[0].connected:
            _links[key] = (found[0], found[1] + 1)
            return found[0]
        bridge = Bridge(servers, creds=creds, name="replproxy client")
        _links[key] = (bridge, 1)
        return bridge


def _unlink(bridge: Bridge) -> None:
    with _links_lock:
        for key, (found, count) in list(_links.items()):
            if found is bridge:
                if count > 1:
                    _links[key] = (found, count - 1)
                    return
                del _links[key]
    bridge.close()


def connect(url: str, *, autocommit: bool = False, node: str | None = None, consistency: str = DEFAULT_LEVEL,
            max_lag: int | None = None, max_staleness: float | None = None, on_stale: str = DEFAULT_POLICY,
            wait_timeout: float = DEFAULT_WAIT, session_token: str | None = None, user: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, idle_timeout: float | None = None,
            failover_wait: float = DEFAULT_FAILOVER_WAIT, creds: str | None = None,
            prefer: str | None = None) -> RemoteConnection:
    """A DB-API connection to the distributed cluster at `url` (nats://HOST:PORT[,HOST:PORT]/CLUSTER).
    The arguments of `proxy.connect`, and: `timeout` (seconds a statement may take on a node),
    `idle_timeout` (seconds an open transaction may stay idle before the leader rolls it back;
    default 30), `failover_wait` (seconds a statement outside a transaction waits for a leader),
    `creds` (a NATS credentials file), `prefer` (the node reads go to first)."""
    servers, cluster, url_creds = protocol.parse_url(url)
    return RemoteConnection(servers, cluster, creds=creds or url_creds, autocommit=autocommit, node=node,
                            consistency=consistency, max_lag=max_lag, max_staleness=max_staleness,
                            on_stale=on_stale, wait_timeout=wait_timeout, session_token=session_token, user=user,
                            timeout=timeout, idle_timeout=idle_timeout, failover_wait=failover_wait, prefer=prefer)


# What only a node's process could do: the sqlite3 surface the remote driver refuses, and why.
_ON_THE_NODES = (
    "{name}() is not supported by the remote driver: statements run in the node processes (serve), "
    "where {what}; use proxy.connect(DIR) on a machine with a node")
_REFUSED = {
    "create_function": "a function would have to be defined in every node process",
    "create_aggregate": "an aggregate would have to be defined in every node process",
    "create_window_function": "a window function would have to be defined in every node process",
    "create_collation": "a collation would have to be defined in every node process",
    "iterdump": "the leader's file is read",
    "backup": "the leader's file is read",
    "serialize": "the leader's file is read",
    "deserialize": "the leader's file would be replaced behind the log (the embedded driver refuses it too)",
    "blobopen": "a blob handle would hold a read transaction open in a node process",
    "enable_load_extension": "an extension would have to be loaded in every node process (the embedded driver "
                             "refuses it too)",
    "load_extension": "an extension would have to be loaded in every node process",
    "set_authorizer": "replproxy's own authorizers guard the node connections",
    "set_progress_handler": "the handler would run in a node process; interrupt() stops a statement",
    "getlimit": "the limits are the leader connection's",
    "setlimit": "the limits are the leader connection's",
    "getconfig": "the options are the leader connection's",
    "setconfig": "the options are the leader connection's",
}


def _refuse(name: str) -> Any:
    def refused(self: RemoteConnection, *args: Any, **kwargs: Any) -> Any:
        raise NotSupportedError(_ON_THE_NODES.format(name=name, what=_REFUSED[name]))

    refused.__name__ = name
    refused.__doc__ = f"Not supported over NATS (NotSupportedError): {_REFUSED[name]}."
    return refused


class RemoteConnection(DBAPIConnection):
    """A PEP 249 connection to a distributed cluster over NATS (see the module docstring)."""

    def __init__(self, servers: list[str], cluster: str, *, creds: str | None = None, autocommit: bool = False,
                 node: str | None = None, consistency: str = DEFAULT_LEVEL, max_lag: int | None = None,
                 max_staleness: float | None = None, on_stale: str = DEFAULT_POLICY,
                 wait_timeout: float = DEFAULT_WAIT, session_token: str | None = None, user: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, idle_timeout: float | None = None,
                 failover_wait: float = DEFAULT_FAILOVER_WAIT, prefer: str | None = None):
        self.names = Names(cluster)
        self.cluster_name = cluster
        self._autocommit = autocommit
        self.pinned_node = node
        self.prefer = prefer
        self._consistency = check_level(consistency)
        self._on_stale = check_policy(on_stale)
        self.max_lag = max_lag
        self.max_staleness = max_staleness
        self.wait_timeout = wait_timeout
        self.user = user
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.failover_wait = failover_wait
        self.bridge = _link(servers, creds)
        self._closed = False
        try:
            self.kv = ClusterKV(self.bridge, self.names)
            found = self.kv.get(SETTINGS_KEY)
            if found is None or not isinstance(found.value, dict):
                raise InterfaceError(f"no replproxy cluster named {cluster!r} on {', '.join(servers)}")
            self.cluster_id = str(found.value["cluster_id"])
        except BaseException:
            self._closed = True
            _unlink(self.bridge)
            raise
        self.session = Session(self.cluster_id)
        if session_token is not None:
            self.session.merge_token(session_token)
        self._sid: str | None = None  # the session on the leader
        self._leader: str | None = None
        self._epoch = 0  # the highest epoch seen
        self._tx = False
        self._temp = False  # TEMP objects live in the leader session: reads of them go there
        self._nodes: tuple[float, dict[str, dict[str, Any]]] = (float("-inf"), {})
        self._avoid: dict[str, float] = {}
        self._turn = itertools.count()
        self.last_node: str | None = None
        self._reading: tuple[str, str] | None = None  # (node, request id) of a read under way
        self.row_factory: Any = None  # applied by the cursors, on this machine (as sqlite3's)
        self.text_factory: Any = str
        self._trace_callback: Any = None

    # -- settings -------------------------------------------------------------------------------

    @property
    def autocommit(self) -> bool:
        """Commit every statement by itself (True), or let DML open a transaction (False)."""
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        value = bool(value)
        if value == self._autocommit:
            return
        if self._tx:
            self.commit()  # as sqlite3 does when its transaction control changes
        if self._sid is not None:  # the leader's session was opened in the other mode
            with contextlib.suppress(TransportError):
                self._request(self._leader or "", {"op": "close", "session": self._sid}, timeout=5.0)
            self._sid = None
        self._autocommit = value

    @property
    def leader(self) -> str | None:
        """The node this connection's session runs on (None before its first write)."""
        return self._leader

    # -- sqlite3's surface --------------------------------------------------------------------

    create_function = _refuse("create_function")
    create_aggregate = _refuse("create_aggregate")
    create_window_function = _refuse("create_window_function")
    create_collation = _refuse("create_collation")
    iterdump = _refuse("iterdump")
    backup = _refuse("backup")
    serialize = _refuse("serialize")
    deserialize = _refuse("deserialize")
    blobopen = _refuse("blobopen")
    enable_load_extension = _refuse("enable_load_extension")
    load_extension = _refuse("load_extension")
    set_authorizer = _refuse("set_authorizer")
    set_progress_handler = _refuse("set_progress_handler")
    getlimit = _refuse("getlimit")
    setlimit = _refuse("setlimit")
    getconfig = _refuse("getconfig")
    setconfig = _refuse("setconfig")

    @property
    def isolation_level(self) -> str | None:
        """sqlite3's view of `autocommit`: None with autocommit=True, else ""."""
        return None if self.autocommit else ""

    @isolation_level.setter
    def isolation_level(self, level: str | None) -> None:
        if (level is None) != bool(self.autocommit):
            raise NotSupportedError("the remote driver's transaction control is set once, by "
                                    "connect(autocommit=...): the leader's session is opened with it")

    @property
    def total_changes(self) -> int:
        """Rows this session's statements changed (asked of its session on the leader)."""
        self._check_open()
        if self._sid is None:
            return 0
        reply = self._leader_call({"op": "execute", "sql": "SELECT total_changes()", "params": []}, what="statement")
        return int(protocol.decode_rows(reply.get("rows") or [[0]])[0][0])

    def set_trace_callback(self, trace_callback: Any, /) -> None:
        """Call `trace_callback(sql)` with the text of each statement this connection sends."""
        self._check_open()
        self._trace_callback = trace_callback

    def _trace(self, sql: str) -> None:
        if self._trace_callback is not None:
            with contextlib.suppress(Exception):
                self._trace_callback(sql)

    # -- PEP 249 --------------------------------------------------------------------------------

    def cursor(self) -> RemoteCursor:
        self._check_open()
        cursor = RemoteCursor(self)
        cursor.row_factory = self.row_factory
        return cursor

    def commit(self) -> None:
        self._check_open()
        if self._sid is not None and self._tx:
            self._leader_call({"op": "commit"}, what="COMMIT")

    def rollback(self) -> None:
        self._check_open()
        if self._sid is not None and self._tx:
            try:
                self._leader_call({"op": "rollback"}, what="ROLLBACK")
            except OperationalError as exc:
                if self._tx:  # still open there: say so
                    raise
                if "rolled back" not in str(exc):
                    raise

    def close(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot close a closed connection.")
        self._closed = True
        try:
            if self._sid is not None:
                try:  # rolls an open transaction back, as closing a sqlite3 connection does
                    self._request(self._leader or "", {"op": "close", "session": self._sid}, timeout=5.0)
                except TransportError:
                    pass  # the leader's process is gone: so is the transaction
        finally:
            self._sid = None
            self._tx = False
            _unlink(self.bridge)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_transaction(self) -> bool:
        return self._tx

    def interrupt(self) -> None:
        """Stop the statement this connection runs, on the leader or a follower (safe from another
        thread); it fails with OperationalError "interrupted"."""
        reading = self._reading
        if reading is not None:
            with contextlib.suppress(TransportError):
                self._request(reading[0], {"op": "interrupt", "read": reading[1]}, timeout=5.0)
        if self._sid is not None and self._leader is not None:
            with contextlib.suppress(TransportError):
                self._request(self._leader, {"op": "interrupt", "session": self._sid}, timeout=5.0)

    # -- transport ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed connection.")

    def _request(self, node: str, payload: dict[str, Any], timeout: float | None = None, *,
                 probe: bool = True) -> dict[str, Any]:
        if "params" in payload or "many" in payload or len(payload.get("sql", "")) > 4096:
            size = len(json.dumps(payload))
            if size > self.bridge.max_payload - 1024:
                raise DataError(f"this statement and its parameters take {size:,} bytes, over the NATS server's "
                                f"message limit ({self.bridge.max_payload:,} bytes): send fewer or smaller values "
                                "at a time")
        return self.bridge.request(self.names.request_subject("sql", node), payload,
                                   self.timeout if timeout is None else timeout,
                                   probe={"op": "ping"} if probe else None)

    def _find_leader(self) -> str | None:
        try:
            found = self.kv.get(LEASE_KEY)
        except TransportError:
            return None
        if found is None or not isinstance(found.value, dict):
            return None
        return str(found.value.get("node"))

    def _open_session(self, deadline: float) -> None:
        last_problem = "no node holds the leader lease"
        while True:
            leader = self._find_leader()
            if leader is not None:
                try:
                    reply = self._request(leader, {"op": "open", "autocommit": self._autocommit, "user": self.user,
                                                   "idle_timeout": self.idle_timeout}, timeout=min(self.timeout, 10.0))
                    if not reply.get("not_leader"):
                        protocol.raise_failure(reply, leader)
                        self._sid, self._leader = str(reply["session"]), leader
                        self._tx = False
                        self._saw_epoch(int(reply.get("e") or 0))
                        return
                    last_problem = f"{leader} holds the lease but is not leading yet"
                except (NoResponders, NoReply) as exc:
                    last_problem = f"the lease holder {leader} does not answer ({exc})"
                except TransportError as exc:
                    last_problem = str(exc)
            if time.monotonic() >= deadline:
                raise OperationalError(f"cluster {self.cluster_name} has no leader to write to after "
                                       f"{self.failover_wait:g}s: {last_problem}")
            time.sleep(0.05)  # a failover is under way: look at the lease again

    def _lost_session(self, reason: str) -> None:
        """The leader's session is gone (its process died or stopped leading). Outside a
        transaction the next request opens a new one; inside, the transaction is lost."""
        was_tx = self._tx
        self._sid, self._tx = None, False
        if was_tx:
            raise OperationalError(f"the transaction was rolled back: {reason}; nothing of it was committed, "
                                   "retry it")

    def _leader_call(self, payload: dict[str, Any], *, what: str) -> dict[str, Any]:
        """A request in the leader session, opening (or, outside a transaction, re-opening on a
        new leader) the session as needed."""
        deadline = time.monotonic() + self.failover_wait
        while True:
            if self._sid is None:
                self._open_session(deadline)
            leader = self._leader or ""
            payload["session"] = self._sid
            try:
                reply = self._request(leader, payload)
            except NoResponders:
                self._lost_session(f"the leader's process ({leader}) is gone")
                continue
            except NoReply as exc:
                session, was_tx = self._sid, self._tx
                self._sid, self._tx = None, False
                if was_tx and payload["op"] != "commit":
                    if not isinstance(exc, PeerGone):  # alive but not answering: let it roll back
                        with contextlib.suppress(TransportError):
                            self.bridge.request(self.names.request_subject("sql", leader),
                                                {"op": "close", "session": session}, 1.0)
                    raise OperationalError(
                        f"the transaction was rolled back: {exc}; nothing of it was committed, retry it") from exc
                raise OperationalError(
                    f"{what}: no answer from the leader {leader} ({exc}); whether it took effect is unknown") from exc
            if reply.get("gone"):
                self._lost_session(f"{leader} ended this session: {reply['why']}" if reply.get("why") else
                                   f"{leader} no longer has this session (it stopped leading or restarted)")
                continue
            if "tx" in reply:
                self._tx = bool(reply["tx"])
            self._saw_epoch(int(reply.get("e") or 0))
            if reply.get("w"):
                self.session.wrote(int(reply["w"]), int(reply.get("e") or 0))
            if reply.get("r"):
                self.session.read(int(reply["r"]))
            protocol.raise_failure(reply, leader)
            self.last_node = leader
            return reply

    def _saw_epoch(self, epoch: int) -> None:
        """A newer epoch: was this session's last write lost in the failover that started it?"""
        if epoch <= self._epoch:
            return
        self._epoch = epoch
        written, write_epoch = self.session.last_write_lsn, self.session.write_epoch
        if not written or not write_epoch or epoch <= write_epoch:
            return
        try:
            found = self.kv.get(EPOCHS_KEY)
        except TransportError:
            self._epoch = 0  # look again at the next reply
            return
        records = found.value if found is not None and isinstance(found.value, list) else []
        for record in sorted(records, key=lambda r: int(r.get("epoch", 0))):
            later, base = int(record.get("epoch", 0)), int(record.get("base_lsn", 0))
            if write_epoch < later <= epoch and base < written:
                self.session.last_write_lsn = base  # reported once; reads no longer wait for it
                self.session.write_epoch = later
                raise ReplicationError(
                    f"this session's write at LSN {written} (epoch {write_epoch}) was lost in the failover to "
                    f"epoch {later}: the new leader {record.get('leader')} continues the log from LSN {base}. "
                    f"The old leader recorded it in its lost-writes-epoch{later}.jsonl file", lsn=written)
        self.session.write_epoch = epoch

    # -- reads ----------------------------------------------------------------------------------

    def _routable(self, sql: str, level: str) -> bool:
        return (not self._tx and not self._temp and level != "strong" and _READ_START.match(sql) is not None
                and (self.pinned_node is None or self.pinned_node != self._leader))

    def _positions(self) -> dict[str, dict[str, Any]]:
        at, nodes = self._nodes
        if time.monotonic() - at > NODES_TTL:
            try:
                nodes = self.kv.nodes()
            except TransportError:
                nodes = {}
            self._nodes = (time.monotonic(), nodes)
        return nodes

    def _candidates(self, needed: int) -> list[str]:
        if self.pinned_node is not None:
            return [self.pinned_node]
        nodes = self._positions()
        leader_lsn = max([int(p.get("lsn") or 0) for p in nodes.values() if p.get("role") == "leader"] or [0])
        now = time.monotonic()
        usable = []
        for name, pos in nodes.items():
            if pos.get("role") != "follower" or pos.get("state") != "running" or self._avoid.get(name, 0) > now:
                continue
            lsn = int(pos.get("lsn") or 0)
            if self.max_lag is not None and leader_lsn - lsn > self.max_lag:
                continue
            if (self.max_staleness is not None and lsn < leader_lsn
                    and time.time() - float(pos.get("committed_at") or 0) > self.max_staleness):
                continue
            usable.append((lsn < needed, name != self.prefer, name))
        turn = next(self._turn)
        usable.sort(key=lambda u: (u[0], u[1], (hash(u[2]) + turn) % 997))
        return [name for _behind, _other, name in usable][:2]

    def _read(self, sql: str, params: Any, level: str) -> dict[str, Any] | None:
        """A read on a follower, or None when the leader must serve it."""
        needed = self.session.needed(level)
        wait = 0.0 if self._on_stale in ("leader", "error") else self.wait_timeout
        stale: list[str] = []
        for node in self._candidates(needed):
            rid = uuid.uuid4().hex[:16]
            self._reading = (node, rid)
            try:
                reply = self._request(node, {"op": "read", "sql": sql, "params": params, "min_lsn": needed,
                                             "wait": wait, "rid": rid}, timeout=self.timeout + wait)
            except TransportError:
                if self.pinned_node is not None:
                    raise
                self._avoid[node] = time.monotonic() + AVOID_FOR
                continue
            finally:
                self._reading = None
            if reply.get("redirect"):
                if self.pinned_node is not None and self.pinned_node != self._find_leader():
                    raise ReadOnlyNodeError(f"{self.pinned_node} is a follower and is read-only; writes go to the "
                                            "leader. Connect without node= to write.")
                return None
            if "stale" in reply:
                stale.append(f"{node} at LSN {reply['stale']}" + (f" ({reply['why']})" if reply.get("why") else ""))
                continue
            self._saw_epoch(int(reply.get("e") or 0))
            protocol.raise_failure(reply, node)
            self.session.read(int(reply["lsn"]))
            self.last_node = node
            return reply
        if stale and (self._on_stale == "error" or self.pinned_node is not None):
            raise OperationalError(f"no follower has applied LSN {needed} that a {level!r} read of this session "
                                   f"needs: {', '.join(stale)}")
        return None


class RemoteCursor(DBAPICursor):
    """A PEP 249 cursor of a RemoteConnection. `node` names the node that served the last statement."""

    def __init__(self, connection: RemoteConnection):
        self.connection = connection
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.node: str | None = None
        self.lsn: int | None = None
        self.consistency: str | None = None
        self.row_factory: Any = None
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0
        self._more: tuple[str, str | None, str] | None = None  # (node, session, cursor id)
        self._closed = False

    # -- PEP 249 --------------------------------------------------------------------------------

    def close(self) -> None:
        self._reset()
        self._closed = True

    def execute(self, operation: str, parameters: Any = (), *, consistency: str | None = None) -> RemoteCursor:
        self._check_open()
        conn = self.connection
        if not isinstance(operation, str):
            raise ProgrammingError("operation must be a string")
        level = check_level(consistency or self.consistency or conn.consistency)
        params = protocol.encode_params(parameters)
        self._reset()
        conn._trace(operation)
        if conn._routable(operation, level):
            reply = conn._read(operation, params, level)
            if reply is not None:
                self._take(reply, reply["node"], None)
                self.lsn = int(reply["lsn"])
                return self
        if _TEMP.match(operation):
            conn._temp = True
        reply = conn._leader_call({"op": "execute", "sql": operation, "params": params}, what="statement")
        self._take(reply, conn._leader or "", conn._sid)
        self.lsn = None
        return self

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> RemoteCursor:
        self._check_open()
        conn = self.connection
        self._reset()
        budget = conn.bridge.max_payload // 2
        total, batch, size = 0, [], 0

        def send() -> None:
            nonlocal total
            reply = conn._leader_call({"op": "execute", "sql": operation, "many": batch}, what="executemany")
            total += max(int(reply.get("rc") or 0), 0)
            self.node = reply.get("node")

        for parameters in seq_of_parameters:
            conn._trace(operation)
            encoded = protocol.encode_params(parameters)
            batch.append(encoded)
            size += len(repr(encoded))
            if size >= budget:
                send()
                batch, size = [], 0
        if batch or total == 0:
            send()
        self.rowcount = total
        self.description = None
        return self

    def executescript(self, script: str) -> RemoteCursor:
        self._check_open()
        if not isinstance(script, str):
            raise ValueError("script argument must be unicode.")
        self._reset()
        if _TEMP.search(script) or re.search(r"\bCREATE\s+TEMP", script, re.I):
            self.connection._temp = True
        self.connection._trace(script)
        reply = self.connection._leader_call({"op": "script", "sql": script}, what="script")
        self.node = reply.get("node")
        return self

    def fetchone(self) -> Any:
        self._check_open()
        self._check_result()
        if self._pos >= len(self._rows) and not self._fill():
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return self._shaped([row])[0]

    def _shaped(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        shape = shaper(self, self.row_factory, self.connection.text_factory)
        return rows if shape is None else [shape(row) for row in rows]

    def fetchmany(self, size: int | None = None) -> list[Any]:
        self._check_open()
        self._check_result()
        count = self.arraysize if size is None else size
        out: list[tuple[Any, ...]] = []
        while len(out) < count:
            if self._pos >= len(self._rows) and not self._fill():
                break
            take = self._rows[self._pos:self._pos + count - len(out)]
            self._pos += len(take)
            out.extend(take)
        return self._shaped(out)

    def fetchall(self) -> list[Any]:
        self._check_open()
        self._check_result()
        out = self._rows[self._pos:]
        self._pos = len(self._rows)
        while self._fill():
            out.extend(self._rows)
            self._pos = len(self._rows)
        return self._shaped(out)

    def __next__(self) -> Any:
        self._check_open()
        self._check_result()
        if self._pos >= len(self._rows) and not self._fill():
            raise StopIteration
        return self.fetchone()

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check_open()

    def _reset(self) -> None:
        self._rows, self._pos, self._more = [], 0, None
        self.description = None
        self.rowcount = -1

    def _take(self, reply: dict[str, Any], node: str, session: str | None) -> None:
        self.node = node
        desc = reply.get("d")
        self.description = tuple(tuple(d) for d in desc) if desc else None
        self.rowcount = int(reply.get("rc", -1) if reply.get("rc") is not None else -1)
        if "lr" in reply:
            self.lastrowid = reply["lr"]
        self._rows = protocol.decode_rows(reply.get("rows") or [])
        self._pos = 0
        self._more = (node, session, str(reply["more"])) if reply.get("more") else None

    def _fill(self) -> bool:
        """The next chunk of a large result; False once it is exhausted."""
        if self._more is None:
            return False
        node, session, cid = self._more
        conn = self.connection
        payload: dict[str, Any] = {"op": "fetch", "cursor": cid}
        if session is not None:
            payload["session"] = session
        try:
            reply = conn._request(node, payload)
        except TransportError as exc:
            self._more = None
            raise OperationalError(f"the rest of this result is lost: {node} did not answer ({exc})") from exc
        if reply.get("gone"):
            self._more = None
            raise OperationalError(f"the rest of this result is lost: {node} no longer has the session")
        protocol.raise_failure(reply, node)
        self._rows = protocol.decode_rows(reply.get("rows") or [])
        self._pos = 0
        self._more = (node, session, str(reply["more"])) if reply.get("more") else None
        return bool(self._rows) or self._more is not None and self._fill()


__all__ = ["RemoteConnection", "RemoteCursor", "connect"]
