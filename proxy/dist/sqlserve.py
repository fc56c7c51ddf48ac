"""The SQL a node's `serve` answers for clients on other machines (proxy/remote/protocol.py).

The leader keeps one driver connection per remote session: writes and interactive transactions
run there exactly as for a local client (capture, log, lease checks, sync waits). A session is
pinned to this process: if it dies, SQLite rolls the open transaction back; if it loses its
lease, its sessions are closed and rolled back; a session idle in a transaction past its idle
timeout is rolled back (it holds SQLite's write lock). Every node serves read-only statements on
its own file once it has applied the position the client's consistency level needs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import apsw.ext

from ..cluster import Cluster
from ..driver.connection import Connection, Cursor
from ..errors import Error, InternalError, OperationalError, ProgrammingError, translate
from ..jetstream.bridge import Bridge
from ..jetstream.names import Names
from ..remote import protocol
from ..store import log as entries_log
from ..store import node as store

log = logging.getLogger("replproxy.dist.sql")

DEFAULT_IDLE_TIMEOUT = 30.0  # seconds a remote transaction may stay idle before it is rolled back
MAX_IDLE_TIMEOUT = 3600.0
SESSION_IDLE = 600.0  # seconds an idle session outside a transaction is kept
READ_CURSOR_IDLE = 60.0  # seconds a partly fetched follower read keeps its snapshot
MAX_CURSORS = 16  # partly fetched results kept per session (the oldest go first)
WORKERS = 32
REAP_EVERY = 0.25  # seconds between two looks for idle sessions


@dataclass
class _Session:
    id: str
    conn: Connection
    epoch: int
    idle_timeout: float
    last_used: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    cursors: OrderedDict[str, Cursor] = field(default_factory=OrderedDict)


@dataclass
class _Read:
    conn: apsw.Connection
    cursor: Any
    description: Any
    last_used: float


class SqlService:
    """Answers `replproxy.<cluster>.sql.<node>` for one node."""

    def __init__(self, name: str, path: Path, bridge: Bridge, names: Names, *,
                 role: Callable[[], str], cluster: Callable[[], Cluster | None],
                 clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.path = path
        self.bridge = bridge
        self.names = names
        self.role = role
        self.cluster = cluster
        self.clock = clock
        self.sessions: dict[str, _Session] = {}
        self.reads: dict[str, _Read] = {}
        self._readers: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._infos: OrderedDict[str, Any] = OrderedDict()
        self._ended: OrderedDict[str, str] = OrderedDict()  # session id -> why the node ended it
        self._running: dict[str, apsw.Connection] = {}  # reads being run, by the client's request id
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"replproxy-sql-{name}")
        self._subscription: Any = None
        self._stopped = threading.Event()
        self._budget = protocol.chunk_budget(bridge.max_payload)

    def start(self) -> None:
        self._subscription = self.bridge.serve(self.names.request_subject("sql", self.name), self.handle,
                                               executor=self._executor)
        threading.Thread(target=self._reaper, name=f"replproxy-sql-reaper-{self.name}", daemon=True).start()

    def _reaper(self) -> None:
        while not self._stopped.wait(REAP_EVERY):
            try:
                self.reap()
            except Exception:  # never let the reaper die: idle transactions would hold the lock
                log.exception("%s: reaping remote sessions", self.name)

    def close(self) -> None:
        self._stopped.set()
        if self._subscription is not None:
            self.bridge.unsubscribe(self._subscription)
            self._subscription = None
        self.close_sessions("the node is stopping")
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

    # -- requests -------------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        try:
            if op == "ping":  # a client waiting for a long answer checks we are still here
                return self._reply({})
            if op == "read":
                return self._read(request)
            if op == "fetch":
                return self._fetch(request)
            if op == "open":
                return self._open(request)
            if op == "interrupt" and request.get("read"):
                return self._interrupt_read(str(request["read"]))
            if op in ("execute", "script", "commit", "rollback", "close", "interrupt"):
                return self._session_op(op, request)
            raise ProgrammingError(f"unknown request {op!r}")
        except Error as exc:
            return protocol.fail(exc)
        except apsw.Error as exc:
            return protocol.fail(translate(exc))
        except Exception as exc:  # a bug of ours: the client gets it, the node goes on serving
            log.exception("%s: remote request %s failed", self.name, op)
            return protocol.fail(InternalError(f"{self.name}: {type(exc).__name__}: {exc}"))

    def _reply(self, reply: dict[str, Any]) -> dict[str, Any]:
        reply["node"] = self.name
        return reply

    # -- sessions on the leader -----------------------------------------------------------------

    def _not_leader(self) -> dict[str, Any] | None:
        if self.role() != "leader" or self.cluster() is None:
            return self._reply({"not_leader": True})
        return None

    def _open(self, request: dict[str, Any]) -> dict[str, Any]:
        refused = self._not_leader()
        if refused is not None:
            return refused
        cluster = self.cluster()
        assert cluster is not None
        idle = float(request.get("idle_timeout") or DEFAULT_IDLE_TIMEOUT)
        if not 0 < idle <= MAX_IDLE_TIMEOUT:
            raise ProgrammingError(f"idle_timeout must be between 0 and {MAX_IDLE_TIMEOUT:g} seconds, not {idle!r}")
        conn = Connection(cluster, autocommit=bool(request.get("autocommit")), consistency="strong",
                          user=request.get("user"))
        with store.opened(self.path, name=self.name) as own:
            epoch = store.read_fence(own).epoch
        session = _Session(uuid.uuid4().hex, conn, epoch, idle, self.clock())
        with self._lock:
            self.sessions[session.id] = session
        log.debug("%s: remote session %s opened", self.name, session.id)
        return self._reply({"session": session.id, "e": epoch, "pid": os.getpid()})

    def _session_op(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            session = self.sessions.get(str(request.get("session")))
        if session is None:
            return self._reply({"gone": True, "why": self._ended.get(str(request.get("session"))),
                                "not_leader": self.role() != "leader"})
        if op == "interrupt":  # from another thread of the client, while a statement runs
            session.conn.interrupt()
            return self._reply({})
        with session.lock:
            if self.sessions.get(session.id) is not session:  # closed while we waited for it
                return self._reply({"gone": True})
            session.last_used = self.clock()
            conn = session.conn
            reply: dict[str, Any] = {}
            try:
                for cid in request.get("drop") or ():
                    session.cursors.pop(str(cid), None)
                if op == "execute":
                    cursor = conn.cursor()
                    sql = str(request["sql"])
                    if "many" in request:
                        cursor.executemany(sql, [protocol.decode_params(p) for p in request["many"]])
                    else:
                        cursor.execute(sql, protocol.decode_params(request.get("params")))
                    reply = self._result(session, cursor)
                elif op == "script":
                    cursor = conn.executescript(str(request["sql"]))
                    reply = self._result(session, cursor)
                elif op == "commit":
                    conn.commit()
                elif op == "rollback":
                    conn.rollback()
                elif op == "close":
                    self._drop(session)
                    return self._reply({"closed": True})
            except Error as exc:
                reply = protocol.fail(exc)
            finally:
                session.last_used = self.clock()
            if not conn.closed:
                reply.update(tx=conn.in_transaction, w=conn.last_write_lsn, r=conn.session.last_read_lsn,
                             e=session.epoch)
            return self._reply(reply)

    def _result(self, session: _Session, cursor: Cursor) -> dict[str, Any]:
        reply: dict[str, Any] = {"rc": cursor.rowcount, "lr": cursor.lastrowid,
                                 "d": [list(d) for d in cursor.description] if cursor.description else None}
        if cursor.description is not None:
            rows, done = protocol.take_chunk(cursor.fetchmany, self._budget)
            reply["rows"] = rows
            if not done:
                cid = uuid.uuid4().hex[:12]
                session.cursors[cid] = cursor
                while len(session.cursors) > MAX_CURSORS:
                    session.cursors.popitem(last=False)
                reply["more"] = cid
        return reply

    def _drop(self, session: _Session, why: str | None = None) -> None:
        with self._lock:
            self.sessions.pop(session.id, None)
            if why is not None:  # told to the client when it comes back
                self._ended[session.id] = why
                while len(self._ended) > 1024:
                    self._ended.popitem(last=False)
        session.cursors.clear()
        try:
            if not session.conn.closed:
                session.conn.close()  # rolls an open transaction back
        except Error as exc:
            log.debug("%s: closing remote session %s: %s", self.name, session.id, exc)

    def close_sessions(self, reason: str) -> None:
        """Roll back and close every remote session (the node stops leading or serving)."""
        with self._lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            session.conn.interrupt()
            with session.lock:
                if session.conn.in_transaction:
                    log.warning("%s: remote transaction of session %s rolled back: %s", self.name,
                                session.id, reason)
                self._drop(session, reason)

    def reap(self) -> None:
        """Roll back transactions idle past their session's timeout; drop idle sessions and reads."""
        now = self.clock()
        with self._lock:
            sessions = list(self.sessions.values())
            reads = list(self.reads.items())
        for session in sessions:
            if not session.lock.acquire(blocking=False):
                continue  # a statement is running: it is not idle
            try:
                idle = now - session.last_used
                if session.conn.in_transaction and idle > session.idle_timeout:
                    why = (f"it was idle in a transaction for {idle:.1f}s, past its idle timeout "
                           f"({session.idle_timeout:g}s)")
                    log.warning("%s: remote transaction of session %s rolled back: %s", self.name, session.id, why)
                    self._drop(session, why)
                elif idle > SESSION_IDLE:
                    self._drop(session)
            finally:
                session.lock.release()
        for cid, read in reads:
            if now - read.last_used > READ_CURSOR_IDLE:
                self._end_read(cid)

    # -- reads on this node's file --------------------------------------------------------------

    def _reader(self) -> apsw.Connection:
        with self._lock:
            if self._readers:
                return self._readers.pop()
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.set_busy_timeout(5000)
        return conn

    def _release(self, conn: apsw.Connection) -> None:
        try:
            if not conn.get_autocommit():
                conn.execute("COMMIT")
        except apsw.Error:
            conn.close()
            return
        with self._lock:
            self._readers.append(conn)

    def _info(self, conn: apsw.Connection, sql: str) -> Any:
        info = self._infos.get(sql)
        if info is None:
            info = apsw.ext.query_info(conn, sql)
            with self._lock:
                self._infos[sql] = info
                while len(self._infos) > 512:
                    self._infos.popitem(last=False)
        return info

    def _interrupt_read(self, rid: str) -> dict[str, Any]:
        with self._lock:
            conn = self._running.get(rid)
        if conn is not None:
            conn.interrupt()
        return self._reply({"interrupted": conn is not None})

    def _read(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.role() == "leader":
            return self._reply({"redirect": True})  # the leader reads in the client's session
        sql = str(request["sql"])
        min_lsn = int(request.get("min_lsn") or 0)
        deadline = self.clock() + max(0.0, float(request.get("wait") or 0.0))
        conn = self._reader()
        kept = False  # a partly fetched result keeps its connection (and snapshot)
        rid = str(request.get("rid") or "")
        if rid:
            with self._lock:
                self._running[rid] = conn  # the client's interrupt() reaches it
        try:
            while True:
                conn.execute("BEGIN")
                state = store.read_state(conn)
                lsn, epoch = entries_log.position(conn, state)
                if lsn >= min_lsn:
                    break
                conn.execute("COMMIT")
                if state.error or self.clock() >= deadline:
                    return self._reply({"stale": lsn, "e": epoch, "why": state.error})
                time.sleep(0.002)  # the applier is moving this node to min_lsn
            # Checked once the node has what the session needs (its tables may come with it).
            info = self._info(conn, sql)
            if not info.is_readonly or (info.query_remaining or "").strip(" \t\r\n;"):
                return self._reply({"redirect": True})  # writes and scripts: the leader's session
            cursor = conn.cursor()
            cursor.execute(sql, protocol.decode_params(request.get("params")))
            try:
                desc = cursor.get_description()
            except apsw.ExecutionCompleteError:
                desc = info.description or ()
            description = [[name, decl, None, None, None, None, None] for name, decl in desc] or None
            rows, done = protocol.take_chunk(lambda n: list(itertools.islice(cursor, n)), self._budget)
            reply = {"d": description, "rows": rows, "lsn": lsn, "e": epoch, "rc": -1}
            if not done:
                cid = uuid.uuid4().hex[:12]
                with self._lock:
                    self.reads[cid] = _Read(conn, cursor, description, self.clock())
                kept = True
                reply["more"] = cid
            return self._reply(reply)
        except apsw.Error as exc:
            raise translate(exc) from exc
        finally:
            if rid:
                with self._lock:
                    self._running.pop(rid, None)
            if not kept:
                self._release(conn)

    def _fetch(self, request: dict[str, Any]) -> dict[str, Any]:
        cid = str(request.get("cursor"))
        session_id = request.get("session")
        if session_id:
            with self._lock:
                session = self.sessions.get(str(session_id))
            if session is None:
                return self._reply({"gone": True})
            with session.lock:
                session.last_used = self.clock()
                cursor = session.cursors.pop(cid, None)
                if cursor is None:
                    raise OperationalError("this result is no longer available (the session ran too many other "
                                           "statements since): execute the statement again")
                rows, done = protocol.take_chunk(cursor.fetchmany, self._budget)
                if not done:
                    session.cursors[cid] = cursor
                return self._reply({"rows": rows, "more": None if done else cid})
        with self._lock:
            read = self.reads.get(cid)
        if read is None:
            raise OperationalError("this result is no longer available on the node (it was left unread for "
                                   f"{READ_CURSOR_IDLE:g}s, or the node restarted): execute the statement again")
        read.last_used = self.clock()
        try:
            rows, done = protocol.take_chunk(lambda n: list(itertools.islice(read.cursor, n)), self._budget)
        except apsw.Error as exc:
            self._end_read(cid)
            raise translate(exc) from exc
        if done:
            self._end_read(cid)
        return self._reply({"rows": rows, "more": None if done else cid})

    def _end_read(self, cid: str) -> None:
        with self._lock:
            read = self.reads.pop(cid, None)
        if read is not None:
            self._release(read.conn)
