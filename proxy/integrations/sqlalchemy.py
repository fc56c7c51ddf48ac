"""A SQLAlchemy dialect for replproxy: SQLAlchemy's SQLite dialect over the proxy's DB-API driver.

    create_engine("replproxy:///relative/dir")           # a cluster directory made by `replproxy init`
    create_engine("replproxy:////absolute/dir")
    create_engine("replproxy+nats://host:4222/CLUSTER")  # a distributed cluster, by URL

pyproject.toml registers it under the `sqlalchemy.dialects` entry points. The dialect keeps the
name "sqlite", so SQLAlchemy compiles SQLite's SQL, and Alembic and pandas treat the engine as
SQLite. Options, execution options, session tokens and limits: docs/sqlalchemy.md.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any
from urllib.parse import quote

from sqlalchemy import event, exc
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, Connection, Engine

import logformats
import proxy

from ..driver.consistency import Session, parse_token

# conn.execution_options(replproxy_consistency="strong"): the level of each statement it runs.
CONSISTENCY_OPTION = "replproxy_consistency"

# URL query parameters passed on to proxy.connect, and the type each is converted to.
OPTIONS: dict[str, type] = {
    "consistency": str, "on_stale": str, "wait_timeout": float, "max_lag": int,
    "max_staleness": float, "user": str, "session_token": str, "node": str,
}
NATS_OPTIONS: dict[str, type] = {
    "timeout": float, "idle_timeout": float, "failover_wait": float, "creds": str, "prefer": str,
}


class SharedSession:
    """The positions of every pooled connection of one engine, so that the engine reads as one
    session: a connection checked out of the pool has seen what the others wrote and read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: Session | None = None

    def token(self) -> str | None:
        with self._lock:
            return None if self._session is None else self._session.token()

    def add(self, token: str) -> None:
        with self._lock:
            if self._session is None:
                self._session = Session(parse_token(token)["c"])
            self._session.merge_token(token)

    def checkout(self, dbapi_connection: Any, record: Any, pooled: Any) -> None:
        token = self.token()
        if token is not None:
            dbapi_connection.session.merge_token(token)

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None and not dbapi_connection.closed:
            self.add(dbapi_connection.session_token)


class ReplproxyDialect(SQLiteDialect_pysqlite):
    """SQLite's dialect, on `proxy.connect`."""

    driver = "replproxy"
    supports_statement_cache = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shared_session = SharedSession()
        # A connection's `autocommit` before AUTOCOMMIT changed it.
        self._opened_with: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    @classmethod
    def import_dbapi(cls) -> Any:
        return proxy

    @classmethod
    def engine_created(cls, engine: Engine) -> None:
        shared = engine.dialect.shared_session  # type: ignore[attr-defined]
        event.listen(engine.pool, "checkout", shared.checkout)
        event.listen(engine.pool, "checkin", shared.checkin)

    def create_connect_args(self, url: URL) -> Any:
        driver = url.drivername.partition("+")[2]
        known = {**OPTIONS, **NATS_OPTIONS} if driver == "nats" else OPTIONS
        query = dict(url.query)
        servers = query.pop("server", ()) if driver == "nats" else ()
        # SQLAlchemy ends every transaction itself; its AUTOCOMMIT isolation level turns this on.
        options: dict[str, Any] = {"autocommit": False}
        for key, value in query.items():
            if key not in known:
                raise exc.ArgumentError(f"unknown option {key!r} in {url!r}; replproxy{'+nats' if driver else ''} "
                                        f"URLs take {', '.join(sorted(known))}")
            if isinstance(value, tuple):
                raise exc.ArgumentError(f"option {key!r} given more than once in {url!r}")
            try:
                options[key] = known[key](value)
            except ValueError:
                raise exc.ArgumentError(f"option {key}={value!r} in {url!r}: not a {known[key].__name__}") from None
        if driver == "nats":
            return [_nats_url(url, (servers,) if isinstance(servers, str) else servers)], options
        if url.username or url.password or url.host or url.port or not url.database:
            raise exc.ArgumentError(
                f"not a replproxy URL: {url!r}; expected replproxy:///relative/dir, replproxy:////absolute/dir "
                "(a directory made by `replproxy init`) or replproxy+nats://HOST:PORT/CLUSTER")
        return [os.path.abspath(url.database)], options

    # pysqlite registers regexp() and floor() as Python functions on each connection. None is
    # registered here: the remote driver runs statements in the node processes, which have no
    # application function, and the statement format refuses a write that calls one (followers
    # replay without it). SQLite has floor() of its own.
    def on_connect(self) -> Any:
        return None

    # SQLite's dialect reads and sets isolation through PRAGMA read_uncommitted, which only matters
    # with a shared cache (replproxy never uses one); pysqlite switches autocommit through sqlite3's
    # `isolation_level`, which the remote driver cannot set. `autocommit` is the one switch of both
    # drivers: AUTOCOMMIT sets it to True, the other level puts back the value it was opened with.
    def get_isolation_level_values(self, dbapi_connection: Any) -> list[Any]:
        return ["SERIALIZABLE", "AUTOCOMMIT"]

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return "AUTOCOMMIT" if dbapi_connection.autocommit is True else "SERIALIZABLE"

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        current = dbapi_connection.autocommit
        wanted = True if level == "AUTOCOMMIT" else self._opened_with.get(dbapi_connection, current)
        if wanted == current:
            return
        # A remote connection (the one with a `leader`) hands its mode to the leader when its
        # session opens; a later change would not reach it, and its writes would stay uncommitted.
        if getattr(dbapi_connection, "leader", None) is not None:
            raise proxy.NotSupportedError(
                "a replproxy+nats connection keeps the transaction mode its session opened with; choose "
                "AUTOCOMMIT for the whole engine: create_engine(url, isolation_level='AUTOCOMMIT')")
        if level == "AUTOCOMMIT":
            self._opened_with[dbapi_connection] = current
        else:
            del self._opened_with[dbapi_connection]
        dbapi_connection.autocommit = wanted

    def detect_autocommit_setting(self, dbapi_connection: Any) -> bool:
        return dbapi_connection.autocommit is True

    def do_savepoint(self, connection: Connection, name: str) -> None:
        # By SQLite's rule a SAVEPOINT outside a transaction begins one, and its RELEASE commits it;
        # SQLAlchemy's outer transaction would then no longer roll back what the savepoint kept.
        if not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            connection.exec_driver_sql("BEGIN")
        super().do_savepoint(connection, name)

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        cursor.execute(statement, parameters, **_statement_options(context))

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        cursor.execute(statement, (), **_statement_options(context))

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        return isinstance(e, proxy.ProgrammingError) and "closed connection" in str(e)

    def get_table_names(self, connection: Any, schema: str | None = None, sqlite_include_internal: bool = False,
                        **kw: Any) -> list[str]:
        names = super().get_table_names(connection, schema, sqlite_include_internal=sqlite_include_internal, **kw)
        return names if sqlite_include_internal else _user_names(names)

    def get_view_names(self, connection: Any, schema: str | None = None, sqlite_include_internal: bool = False,
                       **kw: Any) -> list[str]:
        names = super().get_view_names(connection, schema, sqlite_include_internal=sqlite_include_internal, **kw)
        return names if sqlite_include_internal else _user_names(names)


def session_token(bind: Engine | Connection | Any) -> str | None:
    """The session token of an engine (what its connections returned to the pool wrote and read),
    of a Connection, or of an ORM Session's connection; pass it as `session_token` to continue the
    session elsewhere. None for an engine that has not returned a connection yet."""
    if isinstance(bind, Engine):
        return bind.dialect.shared_session.token()  # type: ignore[attr-defined]
    if not isinstance(bind, Connection):
        bind = bind.connection()  # an ORM Session: the connection of its transaction
    return bind.connection.driver_connection.session_token  # type: ignore[union-attr]


def _statement_options(context: Any) -> dict[str, Any]:
    level = context.execution_options.get(CONSISTENCY_OPTION) if context is not None else None
    return {} if level is None else {"consistency": level}


def _user_names(names: list[str]) -> list[str]:
    return [name for name in names if not name.lower().startswith(logformats.INTERNAL_PREFIX)]


def _nats_url(url: URL, servers: tuple[str, ...]) -> str:
    """nats://HOST:PORT[,HOST:PORT]/CLUSTER for proxy.connect. SQLAlchemy's URL has one port, so
    `h1,h2:4222` puts every host on it; `?server=HOST:PORT` (repeatable) adds any other server."""
    if not url.host or not url.database:
        raise exc.ArgumentError(f"not a replproxy+nats URL: {url!r}; expected replproxy+nats://HOST:PORT/CLUSTER "
                                "(more servers: replproxy+nats://H1,H2:4222/CLUSTER or ?server=HOST:PORT)")
    login = ""
    if url.username:
        login = quote(url.username, safe="") + (f":{quote(url.password, safe='')}" if url.password else "") + "@"
    port = f":{url.port}" if url.port else ""
    hosts = [f"[{host}]" if ":" in host else host for host in url.host.split(",") if host]
    return "nats://" + ",".join([f"{login}{host}{port}" for host in hosts] + list(servers)) + \
        "/" + quote(url.database, safe="")
